//! The Prometheus exporter the demo and `tests/dashboard.rs` install: `/metrics` over HTTP on
//! the given address. Shared (`#[path]`-included) so the test proves the demo's setup.
#![allow(dead_code)]

use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;

/// Where the demo serves `/metrics` unless `METRICS_ADDR` says otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9898";

/// Histogram buckets, in seconds, from 1 µs to 10 s (1-2.5-5 steps). The library itself emits
/// counters and gauges only; these apply to any latency histogram recorded next to it, so an
/// L1 hit (hundreds of nanoseconds to a few µs) does not land in the first bucket with
/// everything else.
pub const LATENCY_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global `metrics` recorder with an HTTP listener on `addr` (call inside a Tokio
/// runtime, before building any cache: handles are resolved at `build()`).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("could not serve metrics on {addr}: {e}"))
}
