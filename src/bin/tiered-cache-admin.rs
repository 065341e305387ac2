//! `tiered-cache-admin`: look into, and act on, the Redis a fleet of `tiered-cache` nodes
//! shares. Output is JSON on stdout (one object; `watch`: one object per line). Exit codes:
//! 0 ok, 2 bad usage, 1 anything else, with one line on stderr saying what.
//!
//! Built with the `cli` feature: `cargo install tiered-cache --features cli`, or
//! `cargo run --features cli --bin tiered-cache-admin -- --help`.

use clap::{ArgGroup, Parser, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tiered_cache::admin::{BusEvent, Census, Inspection};
use tiered_cache::{Admin, BreakerState, Error, RedisInfo};

#[derive(Parser, Debug)]
#[command(name = "tiered-cache-admin", version, about)]
/// Inspect and manage the Redis shared by a fleet of tiered-cache nodes.
struct Cli {
    /// The Redis server, as the nodes are configured (`/N` selects database N). Without it, the
    /// nodes' `REDIS_*` variables are read as the library reads them (REDIS_URL, or
    /// REDIS_HOST/PORT/DB; REDIS_USERNAME, REDIS_PASSWORD, REDIS_SSL, REDIS_TLS_*), else
    /// redis://127.0.0.1:6379.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    url: Option<String>,
    /// The nodes' key prefix (`TieredCacheBuilder::prefix`).
    #[arg(long, default_value = tiered_cache::DEFAULT_PREFIX)]
    prefix: String,
    /// The longest one Redis command or connection attempt may take, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode the value stored under NAMESPACE KEY: version, flags, expiry, TTL, value.
    Inspect {
        /// The namespace.
        namespace: String,
        /// The key, in its string form (as `CacheKey` writes it).
        key: String,
    },
    /// Keys and memory per namespace (SCAN, sampled MEMORY USAGE), and Redis's own figures.
    Stats {
        /// Keys per namespace measured with MEMORY USAGE; the rest is extrapolated.
        #[arg(long, default_value_t = Admin::DEFAULT_MEMORY_SAMPLE)]
        sample: usize,
    },
    /// Invalidate a namespace or a tag on every node, through the library's invalidation path.
    #[command(group(ArgGroup::new("what").required(true).multiple(true).args(["namespace", "tag"])))]
    Flush {
        /// The namespace to invalidate (with --tag: where to invalidate the tag).
        #[arg(long)]
        namespace: Option<String>,
        /// The tag to invalidate (in every known namespace unless --namespace is given).
        #[arg(long)]
        tag: Option<String>,
        /// How long tag tombstones are kept: at least the namespaces' L2 TTL.
        #[arg(long, default_value_t = Admin::DEFAULT_TOMBSTONE_TTL.as_secs())]
        tombstone_ttl_secs: u64,
    },
    /// Print invalidations as they cross the bus, one JSON line each, with their lag.
    Watch {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds of listening (from the confirmed subscription).
        #[arg(long = "for", value_name = "SECS")]
        for_secs: Option<f64>,
        /// Print heartbeats too.
        #[arg(long)]
        heartbeats: bool,
    },
    /// PING, bus subscription, listeners, breaker. Exits 1 unless Redis answers and the
    /// subscription is confirmed.
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("could not start the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err((e, url)) => fail(&describe(&e, &url)),
    }
}

fn fail(message: &str) -> ExitCode {
    // One line, whatever the message holds.
    let line = message.replace(['\n', '\r'], " ");
    eprintln!("tiered-cache-admin: {line}");
    ExitCode::FAILURE
}

/// The error as the operator needs it; `url` is already redacted.
fn describe(e: &Error, url: &str) -> String {
    if e.is_unavailable() {
        return format!("cannot reach Redis at {url}: {e}");
    }
    e.to_string()
}

/// Runs the command; an error comes with where Redis was looked for (redacted).
async fn run(cli: Cli) -> Result<ExitCode, (Error, String)> {
    let admin = match &cli.url {
        Some(url) => Admin::new(url, &cli.prefix),
        None => Admin::from_env(&cli.prefix),
    };
    let admin = admin
        .and_then(|a| a.with_timeout(Duration::from_millis(cli.timeout_ms)))
        .map_err(|e| (e, "the configured Redis".to_owned()))?;
    let url = admin.url();
    execute(cli, admin).await.map_err(|e| (e, url))
}

async fn execute(cli: Cli, admin: Admin) -> tiered_cache::Result<ExitCode> {
    match cli.command {
        Command::Inspect { namespace, key } => {
            let seen = admin.inspect(&namespace, &key).await?;
            print(&inspection_json(&namespace, &key, &seen));
        }
        Command::Stats { sample } => {
            let admin = admin.with_memory_sample(sample);
            let census = admin.census().await?;
            let info = admin.redis_info().await?;
            print(&stats_json(&admin, &census, &info));
        }
        Command::Flush {
            namespace,
            tag,
            tombstone_ttl_secs,
        } => {
            let admin = admin.with_tombstone_ttl(Duration::from_secs(tombstone_ttl_secs));
            let out = match (tag, namespace) {
                (Some(tag), ns) => {
                    let keys = admin.flush_tag(&tag, ns.as_deref()).await?;
                    json!({ "flushed": "tag", "tag": tag, "namespace": ns, "keys": keys })
                }
                (None, Some(ns)) => {
                    admin.flush_namespace(&ns).await?;
                    json!({ "flushed": "namespace", "namespace": ns })
                }
                (None, None) => unreachable!("clap requires --namespace or --tag"),
            };
            print(&out);
        }
        Command::Watch {
            count,
            for_secs,
            heartbeats,
        } => watch(&admin, count, for_secs, heartbeats).await?,
        Command::Health => {
            let h = admin.health().await;
            print(&json!({
                "url": admin.url(),
                "redis_reachable": h.redis_reachable,
                "ping_ms": h.ping.map(|d| d.as_secs_f64() * 1000.0),
                "subscribed": h.subscribed,
                "listeners": h.listeners,
                "breaker": breaker_name(h.breaker),
            }));
            if !(h.redis_reachable && h.subscribed) {
                return Ok(fail(&format!(
                    "unhealthy: Redis at {} {}",
                    admin.url(),
                    if h.redis_reachable {
                        "answers PING but the bus subscription failed"
                    } else {
                        "does not answer"
                    }
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

fn breaker_name(b: BreakerState) -> &'static str {
    match b {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open",
        BreakerState::Open => "open",
        _ => "unknown",
    }
}

/// Prints one line per event until `count` events, `for_secs` seconds, or the connection is
/// lost (an error). Says on stderr when the subscription is confirmed: from then on nothing
/// published is missed.
async fn watch(
    admin: &Admin,
    count: Option<u64>,
    for_secs: Option<f64>,
    heartbeats: bool,
) -> tiered_cache::Result<()> {
    let span = match for_secs {
        Some(s) if s.is_finite() && (0.0..1e9).contains(&s) => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(Error::Config(format!(
                "--for {s}: expected a number of seconds"
            )))
        }
        None => None,
    };
    let mut watch = admin.watch().await?;
    eprintln!("watching {}", admin.channel());
    // Counted from the confirmed subscription: SECS of listening, whatever connecting took.
    let deadline = span.map(|s| Instant::now() + s);
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let next = async {
            if heartbeats {
                watch.next().await
            } else {
                watch.next_invalidation().await
            }
        };
        let event = match deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), next).await {
                Ok(event) => event?,
                Err(_) => break,
            },
            None => next.await?,
        };
        println!("{}", event_json(&event));
        seen += 1;
    }
    Ok(())
}

fn event_json(e: &BusEvent) -> Value {
    let targets: Vec<Value> = e
        .targets
        .iter()
        .map(|t| json!({ "namespace": t.namespace, "keys": t.keys }))
        .collect();
    json!({
        "kind": e.kind.as_str(),
        "origin": format!("{:016x}", e.origin),
        "version": e.version,
        "epoch": e.epoch,
        "targets": targets,
        "sent_ms": e.sent_ms,
        "sent_at": e.sent_ms.map(rfc3339),
        "received_ms": e.received_ms,
        "received_at": rfc3339(e.received_ms),
        // Receiver's clock minus the publisher's: as good as the hosts' clock sync.
        "lag_ms": e.lag.map(|l| l.as_millis() as u64),
    })
}

fn inspection_json(namespace: &str, key: &str, s: &Inspection) -> Value {
    json!({
        "redis_key": s.redis_key,
        "namespace": namespace,
        "key": key,
        "stored_bytes": s.stored_bytes,
        "format": s.format,
        "version": s.version,
        "flags": {
            "raw": s.flags.raw,
            "tombstone": s.flags.tombstone,
            "compressed": s.flags.compressed,
            "expiry": s.flags.expiry,
            "absent": s.flags.absent,
            "source": s.flags.source,
        },
        "source_version": s.source_version,
        // The envelope records when a value stops being fresh, not when it was written.
        "expires_at_ms": s.expires_at_ms,
        "expires_at": s.expires_at_ms.map(rfc3339),
        "ttl_ms": s.pttl.map(|d| d.as_millis() as u64),
        "value": s.value,
        "problem": s.problem,
    })
}

fn stats_json(admin: &Admin, c: &Census, info: &RedisInfo) -> Value {
    let namespaces: Vec<Value> = c
        .namespaces
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "keys": n.keys,
                "floor": n.floor,
                "tag_sets": n.tag_sets,
                "memory": {
                    "sampled_keys": n.memory_sampled_keys,
                    "sampled_bytes": n.memory_sampled_bytes,
                    "estimate_bytes": n.memory_estimate_bytes,
                },
            })
        })
        .collect();
    json!({
        "prefix": admin.prefix(),
        "namespaces": namespaces,
        "internal_keys": c.internal_keys,
        "other_keys": c.other_keys,
        "version": c.version,
        "epoch": c.epoch,
        "rollback_floor": c.rollback_floor,
        "redis": {
            "version": info.redis_version,
            "hit_ratio": info.hit_ratio(),
            "keyspace_hits": info.keyspace_hits,
            "keyspace_misses": info.keyspace_misses,
            "used_memory": info.used_memory,
            "maxmemory": info.maxmemory,
            "maxmemory_policy": info.maxmemory_policy,
            "evicted_keys": info.evicted_keys,
            "connected_clients": info.connected_clients,
            "slowlog_len": info.slowlog_len,
        },
    })
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn usage_is_checked_by_clap() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["x", "flush"]).is_err());
        assert!(Cli::try_parse_from(["x", "flush", "--tag", "W1", "--namespace", "rate"]).is_ok());
    }
}
