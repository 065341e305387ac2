//! The write path: routing around the outbox, and replaying what it queued.

mod replay;

pub(crate) use replay::{route, run_replayer};
