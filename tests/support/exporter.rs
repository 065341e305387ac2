//! The Prometheus exporter the demo and `tests/dashboard.rs` install: `/metrics` over HTTP on
//! the given address. Shared (`#[path]`-included) so the test proves the demo's setup.
#![allow(dead_code)]

use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;

/// Where the demo serves `/metrics` unless `METRICS_ADDR` says otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9898";

/// Histogram buckets, in seconds, from 1 µs to 10 s (1-2.5-5 steps), for the library's
/// latency and invalidation lag histograms: an L1 hit (hundreds of nanoseconds to a few µs)
/// does not land in the first bucket with everything else.
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
        .map_err(|e| format!("could not serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

/// `# HELP` text for the library's metrics (the Metrics table in docs/observability.md), as
/// (name, help).
pub const DESCRIBED: &[(&str, &str)] = &[
    ("tiered_cache_requests_total", "Lookups per tier (l1, l2, loader) and result (hit, miss, error)."),
    ("tiered_cache_decode_errors_total", "Values in Redis that could not be decoded (served as misses)."),
    ("tiered_cache_l2_errors_total", "Failed Redis calls by kind (skipped, timeout, connection, server)."),
    ("tiered_cache_fills_total", "Loaded values written back to Redis (stored) or refused because the key changed while loading."),
    ("tiered_cache_invalidations_total", "Invalidations sent, applied from other nodes, or reported by CLIENT TRACKING (tracked)."),
    ("tiered_cache_loads_coalesced_total", "get_or_load calls that shared another caller's load (single flight)."),
    ("tiered_cache_stale_served_total", "Stale values served by fail-safe."),
    ("tiered_cache_loader_timeouts_total", "Loads past the soft or the hard timeout."),
    ("tiered_cache_refreshes_total", "Refresh-ahead loads started or failed."),
    ("tiered_cache_fleet_locks_total", "Fleet-wide single flight: lock acquired, another node's value waited for, or gave up waiting."),
    ("tiered_cache_l1_bypass_total", "Reads that skipped L1 while the bus could not vouch for the staleness bound."),
    ("tiered_cache_l1_bypassed", "1 while L1 is bypassed (the bus cannot vouch for the staleness bound)."),
    ("tiered_cache_bus_events_total", "Invalidation bus subscriber events (subscribed, disconnected, own_skipped, malformed, gap, resync)."),
    ("tiered_cache_request_duration_seconds", "Latency per tier: l2 one Redis read (or a batch's MGET) with its decode, loader one loader call (every call), l1 a hit (1 lookup in 64 timed)."),
    ("tiered_cache_invalidation_lag_seconds", "Receiver's wall clock minus the publisher's, per message from another node applied (as good as clock sync; negative skew counts as 0)."),
    ("tiered_cache_invalidations_coalesced_total", "Keys beyond the first carried by one applied invalidation message."),
    ("tiered_cache_invalidations_lost_total", "Invalidation messages known lost (holes in the version sequence; each caused a resync)."),
    ("tiered_cache_l1_bypass_seconds_total", "Time spent with L1 bypassed, in whole seconds."),
    ("tiered_cache_l1_entries", "L1 entries (approximate), refreshed about once a second."),
    ("tiered_cache_l1_weighted_size", "L1's summed weight: bytes under l1_max_bytes, else entries."),
    ("tiered_cache_bus_connected", "1 while the invalidation subscriber is listening."),
    ("tiered_cache_bus_epoch", "Epoch of Redis's version counter this node follows."),
    ("tiered_cache_breaker_state", "The breaker in front of Redis: 0 closed, 1 half-open, 2 open."),
    ("tiered_cache_breaker_transitions_total", "Breaker transitions by target state."),
    ("tiered_cache_outbox_total", "Writes and invalidations queued while Redis was unreachable, and their fate."),
    ("tiered_cache_outbox_entries", "Outbox entries queued or being replayed."),
];

/// Registers the `# HELP` lines of [`DESCRIBED`] with the installed recorder.
pub fn describe() {
    for (name, help) in DESCRIBED {
        if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
        } else if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}
