//! The bus's own thread: a current-thread Tokio runtime for the subscriber, the heartbeat,
//! external-write tracking and the primary's watcher, so invalidations are applied and
//! freshness is proven whatever the application's runtime is doing (a request handler that
//! does not yield for a second on a current-thread runtime is common in trading services).
//! Its Redis calls take the tier's bus connection, opened on this thread (see
//! `l2::topology::Live::pool`).

use crate::error::{Error, Result};
use std::future::Future;

/// The running thread; stopped (its tasks dropped) when this is dropped.
pub(crate) struct BusRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BusRuntime {
    /// Starts the thread. The runtime is built on it (and so dropped there), never on the
    /// caller's, which is inside an async context where dropping a runtime panics.
    pub(crate) fn start() -> Result<Self> {
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tiered-cache-bus".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("tiered-cache-bus-blocking")
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(ready.send(Err(e.to_string()))),
                };
                crate::l2::topology::mark_bus_thread();
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Ends when `stop` is sent or dropped; the runtime and its tasks go with it.
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| Error::Config(format!("the bus thread could not start: {e}")))?;
        let handle = (handle.recv())
            .map_err(|_| "the bus thread ended at start".to_string())
            .and_then(|built| built)
            .map_err(|e| Error::Config(format!("the bus runtime could not start: {e}")))?;
        Ok(Self {
            handle,
            stop: Some(stop),
        })
    }

    /// Runs `task` on the bus's thread.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for BusRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
