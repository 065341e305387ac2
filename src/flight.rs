//! Single flight: concurrent `get_or_load` calls for one key in one process run the loader
//! once and share its result or its error.
//!
//! The first caller (the leader) registers a flight and loads; later callers wait on it. If the
//! leader is cancelled or its loader panics, its guard removes the flight without a result and
//! the waiters go round again: one of them becomes the new leader, so nothing is wedged. This
//! is the in-process half of stampede protection; across nodes it is an efficiency aid only,
//! never a correctness mechanism (coherence does not depend on it).

use crate::error::Error;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::any::Any;
use std::sync::Arc;
use tokio::sync::watch;

/// What a finished flight hands its waiters: the value (type-erased) or the shared error.
pub(crate) type Outcome = Result<Arc<dyn Any + Send + Sync>, Error>;

type Slot = watch::Receiver<Option<Outcome>>;

/// The flights in progress for one namespace, by key.
#[derive(Default)]
pub(crate) struct Flights {
    inflight: DashMap<String, Slot>,
}

/// The caller's role for one key.
pub(crate) enum Role<'a> {
    /// Load, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait for the leader's outcome.
    Waiter(Slot),
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        match self.inflight.entry(key.to_owned()) {
            Entry::Occupied(e) => Role::Waiter(e.get().clone()),
            Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(None);
                e.insert(rx);
                Role::Leader(Leader {
                    flights: self,
                    key: key.to_owned(),
                    tx: Some(tx),
                })
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inflight.len()
    }
}

/// Holds a flight open; dropping it without `finish` (cancellation, panic) releases the
/// waiters to try again.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Leader<'_> {
    pub(crate) fn finish(mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            // Remove first: a caller arriving from now on starts afresh (and will find the
            // value in L1 if it was cached); the waiters already holding the slot get this.
            self.flights.inflight.remove(&self.key);
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            self.flights.inflight.remove(&self.key);
        }
    }
}

/// Waits for a leader. `None` when it went away without an outcome: try again.
pub(crate) async fn wait(mut slot: Slot) -> Option<Outcome> {
    loop {
        if let Some(outcome) = slot.borrow_and_update().clone() {
            return Some(outcome);
        }
        if slot.changed().await.is_err() {
            // The sender is gone; it may have sent just before dropping.
            return slot.borrow().clone();
        }
    }
}

/// Runs `lead` under single flight for `key`: the first caller runs it, the others share its
/// outcome; a waiter whose leader was cancelled or panicked goes round again and may lead
/// itself. `coalesced` counts the callers that shared. The value type must be the one pinned
/// for the namespace the flights belong to. (The same loop as `Namespace::load_once`, for
/// callers with another miss path: see `tags.rs`.)
pub(crate) async fn run<V, Fut>(
    flights: &Flights,
    coalesced: &crate::metrics::Tally,
    key: String,
    lead: impl FnOnce(String) -> Fut,
) -> Result<Arc<V>, Error>
where
    V: Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Arc<V>, Error>>,
{
    loop {
        match flights.join(&key) {
            Role::Leader(leader) => {
                let outcome = lead(key).await;
                leader.finish(outcome.clone().map(|v| v as Arc<dyn Any + Send + Sync>));
                return outcome;
            }
            Role::Waiter(slot) => {
                coalesced.inc();
                match wait(slot).await {
                    Some(Ok(v)) => return Ok(v.downcast::<V>().expect("pinned type")),
                    Some(Err(e)) => return Err(e),
                    None => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_leader_releases_its_waiters() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join("k") else {
            panic!("first is leader")
        };
        let Role::Waiter(slot) = f.join("k") else {
            panic!("second waits")
        };
        drop(leader);
        assert!(wait(slot).await.is_none());
        assert_eq!(f.len(), 0);
        assert!(matches!(f.join("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn waiters_get_the_outcome() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join("k") else {
            panic!()
        };
        let Role::Waiter(slot) = f.join("k") else {
            panic!()
        };
        leader.finish(Ok(Arc::new(5u32)));
        let v = wait(slot).await.unwrap().unwrap();
        assert_eq!(*v.downcast::<u32>().unwrap(), 5);
        assert_eq!(f.len(), 0);
    }
}
