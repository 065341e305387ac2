//! A value type whose decoding can be held at a gate: it runs exactly between a read from
//! Redis and the L1 insert, so a test can force an invalidation into that window without any
//! test-only hook in the library (the technique of `tests/race.rs`).
#![allow(dead_code)]

use super::{eventually, PATIENCE};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Tests sharing the gate run one at a time (`cargo test` runs a file's tests in one process).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Default)]
struct State {
    armed: bool,
    reading: bool,
    released: bool,
}

static GATE: Mutex<State> = Mutex::new(State {
    armed: false,
    reading: false,
    released: false,
});
static GATE_CV: Condvar = Condvar::new();

/// A number whose first decoding after [`arm`] waits at the gate until [`release`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gated(pub u64);

impl<'de> Deserialize<'de> for Gated {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        let mut g = GATE.lock().unwrap();
        if g.armed {
            g.armed = false;
            g.reading = true;
            GATE_CV.notify_all();
            // Hand this worker's queued tasks (the connections' drivers) to another thread.
            let timed_out = tokio::task::block_in_place(|| {
                let (_g, t) = GATE_CV
                    .wait_timeout_while(g, Duration::from_secs(10), |g| !g.released)
                    .unwrap();
                t.timed_out()
            });
            assert!(!timed_out, "gate never released");
        }
        Ok(Gated(v))
    }
}

/// The next decoding will wait at the gate.
pub fn arm() {
    *GATE.lock().unwrap() = State {
        armed: true,
        ..Default::default()
    };
}

/// Waits until a reader is held at the gate.
pub async fn wait_reading() {
    eventually(
        "the reader is between its Redis read and its L1 insert",
        PATIENCE,
        || async { GATE.lock().unwrap().reading },
    )
    .await;
}

/// Lets the held reader go on.
pub fn release() {
    GATE.lock().unwrap().released = true;
    GATE_CV.notify_all();
}
