//! Single flight: concurrent `get_or_load` calls for one key in one process run the loader
//! once and share its result or its error.
//!
//! The first caller registers a flight and spawns the load as a task that owns it (the leader);
//! every caller, the first included, then waits on the flight. A caller that is cancelled
//! therefore never cancels the others' load. If the loader panics, the leader's guard removes
//! the flight without a result and the waiters go round again: one of them starts a new
//! flight with its own loader, so nothing is wedged. A leader may hand out an interim outcome
//! (a stale value at the soft timeout) and go on loading. This
//! is the in-process half of stampede protection; across nodes it is an efficiency aid only,
//! never a correctness mechanism (coherence does not depend on it).

use crate::error::Error;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::any::Any;
use std::sync::Arc;
use tokio::sync::watch;

/// What a finished flight hands its waiters: the value (type-erased; `None` for a "not
/// found") or the shared error.
pub(crate) type Outcome = Result<Option<Arc<dyn Any + Send + Sync>>, Error>;

type Slot = watch::Receiver<Option<Outcome>>;

/// The flights in progress for one namespace, by key.
#[derive(Default)]
pub(crate) struct Flights {
    inflight: Arc<DashMap<String, Slot>>,
}

/// The caller's role for one key.
pub(crate) enum Role {
    /// Start the load, owning this; then wait on the slot like everyone else.
    Leader(Leader, Slot),
    /// Wait for the leader's outcome.
    Waiter(Slot),
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role {
        if let Some(slot) = self.inflight.get(key) {
            return Role::Waiter(slot.clone());
        }
        match self.inflight.entry(key.to_owned()) {
            Entry::Occupied(e) => Role::Waiter(e.get().clone()),
            Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(None);
                e.insert(rx.clone());
                let leader = Leader {
                    flights: self.inflight.clone(),
                    key: key.to_owned(),
                    tx: Some(tx),
                };
                Role::Leader(leader, rx)
            }
        }
    }

    /// Detaches the flight of `key`, if any: its load may have read the source before an
    /// invalidation of the key, so callers arriving from now on must not share it. Its own
    /// waiters (who asked before the invalidation) still get its outcome.
    pub(crate) fn detach(&self, key: &str) {
        self.inflight.remove(key);
    }

    /// Detaches every flight (a whole-namespace invalidation).
    pub(crate) fn detach_all(&self) {
        self.inflight.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.len()
    }
}

/// Holds a flight open; dropping it without `finish` (cancellation, panic) releases the
/// waiters to try again.
pub(crate) struct Leader {
    flights: Arc<DashMap<String, Slot>>,
    key: String,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Leader {
    /// Hands the waiters an outcome now while the load goes on; callers arriving later get it
    /// too, until [`finish`](Self::finish).
    pub(crate) fn interim(&self, outcome: Outcome) {
        if let Some(tx) = &self.tx {
            tx.send_replace(Some(outcome));
        }
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            // Remove first: a caller arriving from now on starts afresh (and will find the
            // value in L1 if it was cached); the waiters already holding the slot get this.
            self.release(&tx);
            tx.send_replace(Some(outcome));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.release(&tx);
        }
    }
}

impl Leader {
    /// Removes this flight from the map, unless an invalidation already detached it and a
    /// newer flight for the key took its place.
    fn release(&self, tx: &watch::Sender<Option<Outcome>>) {
        self.flights
            .remove_if(&self.key, |_, slot| slot.same_channel(&tx.subscribe()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_leader_releases_its_waiters() {
        let f = Flights::default();
        let Role::Leader(leader, _) = f.join("k") else {
            panic!("first is leader")
        };
        let Role::Waiter(slot) = f.join("k") else {
            panic!("second waits")
        };
        drop(leader);
        assert!(wait(slot).await.is_none());
        assert_eq!(f.len(), 0);
        assert!(matches!(f.join("k"), Role::Leader(..)));
    }

    #[tokio::test]
    async fn waiters_get_the_outcome() {
        let f = Flights::default();
        let Role::Leader(leader, _) = f.join("k") else {
            panic!()
        };
        let Role::Waiter(slot) = f.join("k") else {
            panic!()
        };
        leader.finish(Ok(Some(Arc::new(5u32))));
        let v = wait(slot).await.unwrap().unwrap().unwrap();
        assert_eq!(*v.downcast::<u32>().unwrap(), 5);
        assert_eq!(f.len(), 0);
    }
}
