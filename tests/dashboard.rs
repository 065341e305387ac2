//! The dashboard and the alerts, proven on live data: a workload in this process (every kind
//! of event the library counts, with the demo's exporter setup on a free port) and the demo
//! itself (its own `/metrics`) are scraped every second by a private `prometheus`; then every
//! PromQL expression of `grafana/dashboards/tiered-cache.json` and `prometheus/alerts.yml` is
//! run through Prometheus's HTTP API and must return data (the alerts' 5 and 10 minute windows
//! cut to the history Prometheus holds: see `within_history`). Also `promtool check metrics` on
//! both scrapes, `promtool check config`, `check rules`, `test rules`, and the
//! docker-compose stack's files checked against each other.
//!
//! Needs `prometheus` and `promtool` (`scripts/ensure-prometheus.sh` installs them; the README's
//! test command runs it). Without them the live tests say so and pass, except under `CI=true`,
//! where they fail.

#[path = "support/exporter.rs"]
mod exporter;
mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::keys::{self, Keys};
use support::wire::{self, Message};
use support::RedisServer;
use tiered_cache::{NamespacePolicy, TieredCache};

const MS: fn(u64) -> Duration = Duration::from_millis;
/// How long the live test waits for every expression to return data once scrapes succeed.
const DATA_DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// `name` from `$ENV`, `PATH` or /usr/bin; `None` (with the reason printed) when missing
/// outside CI; a panic under `CI=true`.
fn tool(name: &str, env: &str) -> Option<PathBuf> {
    let found = std::env::var_os(env)
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var("PATH")
                .unwrap_or_default()
                .split(':')
                .map(|d| Path::new(d).join(name)),
        )
        .chain([Path::new("/usr/bin").join(name)])
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!(
            "{name} not found: run scripts/ensure-prometheus.sh (Debian: apt-get install \
             prometheus), the README's test command (./scripts/test.sh) does, or set {env}"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .proxy(None)
        .build()
        .into()
}

fn http_get(agent: &ureq::Agent, url: &str, query: &[(&str, &str)]) -> Result<String, String> {
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("GET {url}: {status}: {body}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions

/// Metric names the Metrics table of docs/observability.md documents (first column).
fn documented_metrics() -> BTreeSet<String> {
    let doc = read("docs/observability.md");
    let table = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/observability.md has a Metrics section")
        .split("\n## ")
        .next()
        .unwrap();
    let names: BTreeSet<String> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect();
    assert!(
        names.len() >= 10,
        "docs/observability.md Metrics table: {names:?}"
    );
    names
}

/// A histogram's series (`_bucket`, `_count`, `_sum`) under the histogram's own name.
fn base_name(series: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

/// The `tiered_cache_*` metric names an expression uses (histogram series by their
/// histogram's name).
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tiered_cache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(base_name(&tail[..end]).to_owned());
        rest = &tail[end..];
    }
    out
}

/// One PromQL expression to prove, and where it comes from.
#[derive(Debug, Clone)]
struct Expr {
    origin: String,
    promql: String,
    /// Dashboard panels must show some activity: at least one finite non-zero value. Alert
    /// conditions must simply hold (a non-empty result is a firing condition).
    needs_nonzero: bool,
    /// Alert conditions are evaluated over the history Prometheus holds ([`within_history`]):
    /// their windows (5 m, 10 m) are longer than the test.
    over_history: bool,
}

/// A PromQL duration (`30s`, `5m`, `1h30m`; units ms, s, m, h, d, w, y); `None` for
/// anything else.
fn promql_duration(d: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = d;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total += MS(n * ms);
        rest = &rest[unit..];
    }
    (!d.is_empty()).then_some(total)
}

/// `promql` with every range window longer than `history` cut to `history` (whole seconds,
/// rounded up): the expression as it evaluates once Prometheus holds as much history as the
/// window, the workload having run as it does now throughout.
///
/// The caller passes a `history` reaching back several scrape intervals past the first
/// sample. Such a window selects the same samples as a longer one, and Prometheus
/// extrapolates them the same way (half an interval at the start, either way), so the cut
/// changes nothing for `increase()`, ratios of rates or quantiles. It changes the divisor of
/// a bare `rate()`, which over a window longer than the series counts the time before the
/// first scrape as time the counter stood still. Evaluated verbatim,
/// `rate(tiered_cache_l1_bypass_seconds_total[10m]) > 0.10` (TieredCacheBusDegraded)
/// therefore cannot hold before 10 % of 10 minutes, 60 s of bypass time, have been scraped,
/// however bypassed the node is: waiting 60 s for it raced the test's own clock.
fn within_history(promql: &str, history: Duration) -> String {
    let secs = history.as_secs() + u64::from(history.subsec_nanos() > 0);
    let mut out = String::with_capacity(promql.len());
    let mut rest = promql;
    let mut quote: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match (quote, c) {
            (Some(_), '\\') => {
                out.push(c);
                if let Some(e) = rest.chars().next() {
                    out.push(e);
                    rest = &rest[e.len_utf8()..];
                }
                continue;
            }
            (Some(q), _) if c == q => quote = None,
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '[') => {
                let end = rest
                    .find(']')
                    .expect("unclosed range in an alert expression");
                let window = promql_duration(rest[..end].trim()).unwrap_or_else(|| {
                    panic!(
                        "alert expression range [{}] is not a plain duration (a subquery?): \
                         teach within_history about it: {promql}",
                        &rest[..end]
                    )
                });
                if window > Duration::from_secs(secs) {
                    out.push_str(&format!("[{secs}s]"));
                } else {
                    out.push('[');
                    out.push_str(&rest[..=end]);
                }
                rest = &rest[end + 1..];
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

#[test]
fn alert_windows_are_cut_to_the_history_prometheus_holds() {
    let h = Duration::from_millis(74_200);
    assert_eq!(
        within_history("sum(rate(m{a=~\"x[0-9]\"}[10m])) > 0.10", h),
        "sum(rate(m{a=~\"x[0-9]\"}[75s])) > 0.10"
    );
    assert_eq!(
        within_history("increase(m[1m]) > 3", h),
        "increase(m[1m]) > 3"
    );
    assert_eq!(
        within_history("rate(m[1h30m]) / rate(n[75s])", h),
        "rate(m[75s]) / rate(n[75s])"
    );
    assert_eq!(promql_duration("1h30m"), Some(Duration::from_secs(5_400)));
    assert_eq!(promql_duration("250ms"), Some(MS(250)));
    assert_eq!(promql_duration("5m:1m"), None);
    assert_eq!(promql_duration(""), None);
    // The committed alert windows are all plain durations.
    for e in alert_exprs() {
        within_history(&e.promql, h);
    }
}

/// Grafana's variables as the test sets them: every instance and namespace, 1 m rate windows
/// (scrapes every second).
fn grafana_to_promql(expr: &str) -> String {
    let q = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1m")
        .replace("$namespace", ".*")
        .replace("$instance", ".*");
    // `label_values(selector, label)` is Grafana's, not PromQL: the same series, counted.
    if let Some(inner) = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        return format!("count by ({}) ({})", label.trim(), selector.trim());
    }
    assert!(
        !q.contains('$'),
        "unknown Grafana variable left in a dashboard expression: {q}"
    );
    q
}

fn dashboard_exprs() -> Vec<Expr> {
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/tiered-cache.json"))
        .expect("dashboard is JSON");
    let mut out = Vec::new();
    fn walk(panels: &Value, out: &mut Vec<Expr>) {
        for p in panels.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("every target has an expr");
                out.push(Expr {
                    origin: format!(
                        "dashboard panel {:?} target {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    promql: grafana_to_promql(expr),
                    needs_nonzero: true,
                    over_history: false,
                });
            }
        }
    }
    walk(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("query variable");
            out.push(Expr {
                origin: format!("dashboard variable {}", v["name"]),
                promql: grafana_to_promql(q),
                needs_nonzero: false,
                over_history: false,
            });
        }
    }
    assert!(out.len() >= 20, "the dashboard lost its panels: {out:?}");
    out
}

fn alert_exprs() -> Vec<Expr> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("prometheus/alerts.yml")).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("named rule");
            out.push(Expr {
                origin: format!("alert {name}"),
                promql: r["expr"].as_str().expect("expr").trim().to_owned(),
                needs_nonzero: false,
                over_history: true,
            });
        }
    }
    assert!(out.len() >= 9, "alerts.yml lost its rules: {out:?}");
    out
}

#[test]
fn every_expression_uses_documented_metrics_only() {
    let documented = documented_metrics();
    let mut bad = Vec::new();
    for e in dashboard_exprs().into_iter().chain(alert_exprs()) {
        let used = metrics_in(&e.promql);
        if used.is_empty() {
            bad.push(format!(
                "{}: uses no tiered_cache_ metric: {}",
                e.origin, e.promql
            ));
        }
        for m in used {
            if !documented.contains(&m) {
                bad.push(format!(
                    "{}: `{m}` is not in the README's Metrics table",
                    e.origin
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// promtool on the committed files, and the compose stack

#[test]
fn promtool_checks_the_rules_their_unit_tests_and_the_stack_config() {
    let Some(promtool) = tool("promtool", "PROMTOOL_BIN") else {
        return;
    };
    let alerts = repo().join("prometheus/alerts.yml");
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&alerts));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new(&promtool)
        .current_dir(repo().join("prometheus"))
        .args(["test", "rules", "alerts_test.yml"]));
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");

    // The compose stack's config, with the rules where compose mounts them pointed at the file.
    let cfg = read("prometheus/prometheus.yml");
    assert!(cfg.contains("/etc/prometheus/alerts.yml"), "{cfg}");
    let dir = tempdir("promcfg");
    let path = dir.0.join("prometheus.yml");
    std::fs::write(
        &path,
        cfg.replace("/etc/prometheus/alerts.yml", alerts.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&path));
    assert!(ok, "promtool check config:\n{out}");
    assert!(
        out.contains("rules found"),
        "the config loads the rules:\n{out}"
    );
}

fn yaml(rel: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strs(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| match s {
            serde_yaml::Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
        })
        .collect()
}

#[test]
fn the_compose_stack_is_consistent() {
    let c = yaml("docker-compose.yml");
    let s = &c["services"];
    for name in ["redis", "demo", "prometheus", "grafana"] {
        assert!(s[name].is_mapping(), "service {name} missing");
    }
    // Redis as the users' documents recommend for a cache.
    let cmd = strs(&s["redis"]["command"]).join(" ");
    for want in [
        "--maxmemory ",
        "--maxmemory-policy allkeys-lru",
        "--save  ",
        "--appendonly no",
    ] {
        assert!(cmd.contains(want), "redis command lacks `{want}`: {cmd}");
    }
    // Every bind mount's host side exists.
    for (name, svc) in s.as_mapping().unwrap() {
        for v in strs(&svc["volumes"]) {
            let host = v.split(':').next().unwrap();
            assert!(host.starts_with("./"), "{name:?}: bind mounts only: {v}");
            assert!(
                repo().join(host).exists(),
                "{name:?}: {host} does not exist"
            );
        }
    }
    // The demo: built here, on the stack's Redis, serving metrics to the network, held running.
    let demo = &s["demo"];
    let dockerfile = demo["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
    let df = read(dockerfile);
    assert!(
        df.contains("--example demo"),
        "{dockerfile} builds the demo"
    );
    let env = &demo["environment"];
    assert_eq!(env["REDIS_URL"].as_str(), Some("redis://redis:6379"));
    let metrics_addr = env["METRICS_ADDR"].as_str().unwrap();
    assert!(metrics_addr.starts_with("0.0.0.0:"), "{metrics_addr}");
    let hold: u64 = env["DEMO_HOLD_SECS"].as_str().unwrap().parse().unwrap();
    assert!(hold >= 600, "the demo must stay up for scrapes: {hold}");
    // Prometheus scrapes the demo there and loads the rules where compose mounts them.
    let port = metrics_addr.rsplit(':').next().unwrap();
    let prom = yaml("prometheus/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|j| j["static_configs"].as_sequence().unwrap().iter())
        .flat_map(|sc| strs(&sc["targets"]))
        .collect();
    assert!(
        targets.contains(&format!("demo:{port}")),
        "prometheus.yml scrapes demo:{port}: {targets:?}"
    );
    let mounts = strs(&s["prometheus"]["volumes"]);
    for rule in strs(&prom["rule_files"]) {
        assert!(
            mounts
                .iter()
                .any(|m| m.split(':').nth(1) == Some(rule.as_str())),
            "rule file {rule} is not mounted: {mounts:?}"
        );
    }
    // Grafana: the data source is the stack's Prometheus, under the uid the dashboard uses; the
    // dashboards provider reads where compose mounts grafana/dashboards.
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/tiered-cache.json")).unwrap();
    let ds_var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds_var["current"]["value"].as_str(), ds["uid"].as_str());
    let provider = yaml("grafana/provisioning/dashboards/dashboards.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let gmounts = strs(&s["grafana"]["volumes"]);
    assert!(
        gmounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.split(':').nth(1) == Some(path)),
        "grafana/dashboards mounted at {path}: {gmounts:?}"
    );
    assert!(
        gmounts
            .iter()
            .any(|m| m.starts_with("./grafana/provisioning:/etc/grafana/provisioning")),
        "{gmounts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The live proof

struct TempDir(PathBuf);

fn tempdir(what: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!(
        "tiered-cache-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The prefix of the workload's nodes.
const PREFIX: &str = "obs";

/// The Redis names of the workload's nodes.
fn obs_keys() -> Keys {
    keys::with_prefix(PREFIX)
}

/// Builds one node of the workload on `url` with prefix [`PREFIX`].
fn workload_node(url: &str, tracking: bool) -> TieredCache {
    TieredCache::builder()
        .redis_url(url)
        .prefix(PREFIX)
        .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
        // Fail-safe, soft and hard timeouts: short TTL so values go stale within the test.
        .namespace(
            "px",
            NamespacePolicy::new(MS(300))
                .fail_safe(Duration::from_secs(30))
                .fail_safe_throttle(MS(50))
                .soft_timeout(MS(30))
                .hard_timeout(MS(120)),
        )
        .namespace("hot", NamespacePolicy::new(MS(400)).refresh_ahead(0.5))
        .namespace(
            "fleet",
            NamespacePolicy::new(Duration::from_secs(60))
                .fleet_single_flight(Duration::from_secs(2)),
        )
        .heartbeat(MS(50))
        .l2_timeout(MS(200))
        .connect_timeout(MS(300))
        .breaker_cooldown(MS(100))
        .outbox_retry(MS(100))
        .subscriber_backoff(MS(100))
        .track_external_writes(tracking)
        .build()
        .expect("build")
}

type Res<T> = Result<T, std::io::Error>;

/// One round of every event the dashboard and the alerts look at. `c` is a cache whose Redis
/// is gone.
async fn round(i: u64, a: &TieredCache, b: &TieredCache, c: &TieredCache, redis: &RedisServer) {
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    // Hits on both tiers, loads and fills, invalidations sent and applied (and tracked on b).
    for k in 0..20 {
        let key = format!("k{k}");
        let _ = ra
            .get_or_load(&key, move || async move { Res::Ok(k) })
            .await;
        let _ = rb
            .get_or_load(&key, move || async move { Res::Ok(k) })
            .await;
    }
    let _ = ra.set(&format!("k{}", i % 20), i).await;
    // One message carrying three keys: two coalesced on b.
    let batch: Vec<String> = (0..3).map(|j| format!("k{}", (i + j) % 20)).collect();
    let _ = ra.batch().set(batch.iter().map(|k| (k.as_str(), i))).await;
    // A message from a node whose clock is 5 s behind (or whose delivery took that long): the
    // lag alert's condition, on a small share of the messages applied.
    lagged_message(redis, "rate", &format!("k{}", i % 20));
    let _ = ra
        .get_or_load(&format!("new{i}"), move || async move { Res::Ok(i) })
        .await;
    // Single flight in the process: three callers, one load.
    let slow = |v: u64| {
        move || async move {
            tokio::time::sleep(MS(30)).await;
            Res::Ok(v)
        }
    };
    let key = format!("flight{i}");
    let _ = tokio::join!(
        ra.get_or_load(&key, slow(1)),
        ra.get_or_load(&key, slow(1)),
        ra.get_or_load(&key, slow(1))
    );
    // A fill refused: the key is invalidated by b while a's load runs.
    let key = format!("race{i}");
    let (k2, rb2) = (key.clone(), rb.clone());
    let _ = tokio::join!(ra.get_or_load(&key, slow(2)), async move {
        tokio::time::sleep(MS(10)).await;
        let _ = rb2.invalidate(&k2).await;
    });
    // Undecodable bytes under a cache key.
    let junk = obs_keys().value_key("rate", &format!("junk{i}"));
    redis.cmd::<String>(&[b"SET", junk.as_bytes(), b"\x00junk"]);
    let _ = ra.get(&format!("junk{i}")).await;
    // Fleet-wide single flight: both nodes load one key at once.
    let (fa, fb) = (
        a.namespace::<str, u64>("fleet").unwrap(),
        b.namespace::<str, u64>("fleet").unwrap(),
    );
    let key = format!("f{i}");
    let _ = tokio::join!(fa.get_or_load(&key, slow(3)), fb.get_or_load(&key, slow(3)));
    // Refresh-ahead on a hot key.
    let hot = a.namespace::<str, u64>("hot").unwrap();
    for _ in 0..5 {
        let _ = hot
            .get_or_load("h", move || async move { Res::Ok(i) })
            .await;
        tokio::time::sleep(MS(50)).await;
    }
    // Fail-safe: a value goes stale, then the loader fails (stale served), then it is slow
    // past the soft timeout (stale served) and the hard one.
    let px = a.namespace::<str, u64>("px").unwrap();
    let key = format!("p{i}");
    let _ = px
        .get_or_load(&key, move || async move { Res::Ok(i) })
        .await;
    let stale_by = Instant::now() + Duration::from_secs(5);
    while px.get_local(&key).is_some() && Instant::now() < stale_by {
        tokio::time::sleep(MS(20)).await;
    }
    let _ = px
        .get_or_load(&key, || async {
            Res::<u64>::Err(std::io::Error::other("down"))
        })
        .await;
    tokio::time::sleep(MS(60)).await; // past the fail-safe throttle
    let _ = px
        .get_or_load(&key, || async {
            tokio::time::sleep(MS(500)).await;
            Res::Ok(0)
        })
        .await;
    // The dead Redis: bypassed L1, Redis errors, every read loaded, writes queued.
    let cold = c.namespace::<str, u64>("cold").unwrap();
    for k in 0..10u64 {
        let _ = cold
            .get_or_load(&format!("c{k}"), move || async move { Res::Ok(k) })
            .await;
    }
    let _ = cold.set(&format!("w{i}"), i).await;
    // The bus: a write whose message is lost (a gap), an unreadable message, a killed
    // subscriber connection, and a write made outside the library (tracked on b).
    // One per round: each makes the nodes resync, which would hide the next one's cause.
    let obs = obs_keys();
    match i % 3 {
        0 => redis.cmd::<u64>(&[
            b"HINCRBY",
            obs.meta_key().as_bytes(),
            keys::VERSION_FIELD.as_bytes(),
            b"1",
        ]) as i64,
        1 => redis.cmd::<i64>(&[
            b"PUBLISH",
            obs.channel().as_bytes(),
            &wire::from_a_newer_build(b"garbage"),
        ]),
        _ => redis.cmd::<i64>(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]),
    };
    let ext = obs.value_key("rate", &format!("ext{i}"));
    redis.cmd::<String>(&[b"SET", ext.as_bytes(), b"x"]);
}

/// Publishes an invalidation of `key` as another node would, stamped 5 s ago, at the current
/// version and epoch so the receivers apply it in sequence.
fn lagged_message(redis: &RedisServer, ns: &str, key: &str) {
    let obs = obs_keys();
    let meta = |f: &str| -> u64 {
        redis
            .cmd::<Option<u64>>(&[b"HGET", obs.meta_key().as_bytes(), f.as_bytes()])
            .unwrap_or(0)
    };
    let sent_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 5_000;
    let m = Message::keys(wire::FOREIGN_ORIGIN, ns, &[key])
        .sent_at(sent_ms)
        .assemble(meta(keys::VERSION_FIELD), meta(keys::EPOCH_FIELD));
    redis.cmd::<i64>(&[b"PUBLISH", obs.channel().as_bytes(), &m]);
}

#[test]
fn every_dashboard_and_alert_expression_returns_data_on_live_metrics() {
    let (Some(prometheus), Some(promtool)) = (
        tool("prometheus", "PROMETHEUS_BIN"),
        tool("promtool", "PROMTOOL_BIN"),
    ) else {
        return;
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The demo's exporter, in this process, before any cache is built.
    let workload_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    {
        let _g = rt.enter();
        exporter::install(workload_addr).expect("exporter");
    }
    let redis = Arc::new(RedisServer::start());
    let demo_redis = RedisServer::start();
    // The "cold" node's Redis: gone before the node starts, so the node never reaches Redis
    // (its namespace is bypassed from the start, and the gauge must say so).
    let mut cold_redis = RedisServer::start();
    cold_redis.kill();

    // The demo, held running, on its own Redis and metrics port.
    let demo_addr = format!("127.0.0.1:{}", free_port());
    let demo_bin = support::example_binary("demo");
    let tmp = tempdir("dashboard");
    let demo_log = std::fs::File::create(tmp.0.join("demo.log")).unwrap();
    let _demo = Proc(
        Command::new(&demo_bin)
            .env("REDIS_URL", demo_redis.url())
            .env("METRICS_ADDR", &demo_addr)
            .env("DEMO_READS", "300")
            .env("DEMO_HOLD_SECS", "120")
            .env_remove("RUST_LOG")
            .stdout(demo_log.try_clone().unwrap())
            .stderr(demo_log)
            .spawn()
            .expect("demo"),
    );

    // The workload: two nodes on Redis (b tracks external writes), one on nothing.
    let (a, b, c) = rt.block_on(async {
        let a = workload_node(&redis.url(), false);
        let b = workload_node(&redis.url(), true);
        let c = TieredCache::builder()
            .redis_url(cold_redis.url())
            .prefix("obs")
            .namespace("cold", NamespacePolicy::new(Duration::from_secs(60)))
            .heartbeat(MS(50))
            .l2_timeout(MS(100))
            .connect_timeout(MS(100))
            .breaker_cooldown(MS(100))
            .outbox_retry(MS(100))
            .subscriber_backoff(MS(100))
            .build()
            .unwrap();
        support::eventually("workload nodes subscribed", support::PATIENCE, || {
            let (a, b) = (a.clone(), b.clone());
            async move { a.is_subscribed() && b.is_subscribed() }
        })
        .await;
        (a, b, c)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let workload = {
        let (stop, rounds, redis) = (stop.clone(), rounds.clone(), redis.clone());
        rt.spawn(async move {
            let mut i = 0;
            while !stop.load(Relaxed) {
                round(i, &a, &b, &c, &redis).await;
                i += 1;
                rounds.store(i, Relaxed);
            }
        })
    };

    // Prometheus, scraping both every second, with the alert rules loaded.
    let prom_port = free_port();
    let config = tmp.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: workload\n    static_configs:\n      - targets: [\"{workload_addr}\"]\n  \
             - job_name: demo\n    static_configs:\n      - targets: [\"{demo_addr}\"]\n",
            repo().join("prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&config));
    assert!(ok, "promtool check config:\n{out}");
    let prom_log = std::fs::File::create(tmp.0.join("prometheus.log")).unwrap();
    // No sample is older than this: the history every alert window is cut to.
    let prom_started = Instant::now();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(prom_log.try_clone().unwrap())
            .stderr(prom_log)
            .spawn()
            .expect("prometheus"),
    );
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");
    let http = agent();
    let query = |q: &str| -> Result<Vec<Value>, String> {
        let body = http_get(&http, &format!("{api}/query"), &[("query", q)])?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    };
    let logs = || {
        format!(
            "--- prometheus log:\n{}\n--- demo log:\n{}",
            std::fs::read_to_string(tmp.0.join("prometheus.log")).unwrap_or_default(),
            std::fs::read_to_string(tmp.0.join("demo.log")).unwrap_or_default()
        )
    };

    // Scrapes succeed on both targets (polled: Prometheus starts, the demo starts).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = query("sum by (job) (up) == 1").unwrap_or_default();
        if up.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both targets up within 30 s: {up:?}\n{}",
            logs()
        );
        std::thread::sleep(MS(200));
    }
    let scraping = Instant::now();

    // Both /metrics endpoints pass promtool's lint (HELP text required for the described
    // metrics; a metric added later without one is reported, not failed).
    for (what, addr) in [
        ("workload", workload_addr.to_string()),
        ("demo", demo_addr.clone()),
    ] {
        let text = http_get(&http, &format!("http://{addr}/metrics"), &[]).unwrap();
        assert!(
            text.contains("tiered_cache_requests_total"),
            "{what}: {text}"
        );
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let described: BTreeSet<&str> = exporter::DESCRIBED.iter().map(|(n, _)| *n).collect();
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            match line.strip_suffix(" no help text") {
                Some(name) if !described.contains(name.trim()) => {
                    eprintln!("note: {what}: {line} (add it to exporter::DESCRIBED)")
                }
                _ => panic!("promtool check metrics on the {what}'s /metrics: {report}"),
            }
        }
    }

    // The alert rules are loaded and evaluate without error.
    let body = http_get(&http, &format!("{api}/rules"), &[]).unwrap();
    let rules: Value = serde_json::from_str(&body).unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_exprs().len(), "{body}");

    // Every expression: poll until each has returned data, or report those that never did.
    let emitted: BTreeSet<String> = query("count by (__name__) ({__name__=~\"tiered_cache_.+\"})")
        .unwrap()
        .iter()
        .filter_map(|s| {
            s["metric"]["__name__"]
                .as_str()
                .map(|n| base_name(n).to_owned())
        })
        .collect();
    let documented = documented_metrics();
    let mut pending: BTreeMap<String, (Expr, String)> = BTreeMap::new();
    let mut skipped = Vec::new();
    for e in dashboard_exprs().into_iter().chain(alert_exprs()) {
        let used = metrics_in(&e.promql);
        for m in &used {
            assert!(
                documented.contains(m),
                "{}: `{m}` is not documented",
                e.origin
            );
        }
        if used.iter().all(|m| emitted.contains(m)) {
            pending.insert(format!("{} | {}", e.origin, e.promql), (e, String::new()));
        } else {
            skipped.push(format!(
                "{} (documented but not emitted: {:?})",
                e.origin, used
            ));
        }
    }
    let total = pending.len();
    let deadline = Instant::now() + DATA_DEADLINE;
    while !pending.is_empty() && Instant::now() < deadline {
        // Back to Prometheus's start, and 10 scrape intervals more (see within_history).
        let history = prom_started.elapsed() + Duration::from_secs(10);
        pending.retain(|_, (e, last)| {
            let promql = if e.over_history {
                within_history(&e.promql, history)
            } else {
                e.promql.clone()
            };
            match query(&promql) {
                Err(err) => {
                    *last = format!("{promql}: {err}");
                    true
                }
                Ok(result) => {
                    let values: Vec<f64> = result
                        .iter()
                        .filter_map(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
                        .collect();
                    let done = if e.needs_nonzero {
                        values.iter().any(|v| v.is_finite() && *v != 0.0)
                    } else {
                        !result.is_empty()
                    };
                    *last = format!("{promql}: {result:?}");
                    !done
                }
            }
        });
        if !pending.is_empty() {
            std::thread::sleep(MS(500));
        }
    }
    stop.store(true, Relaxed);
    if let Err(e) = rt.block_on(workload) {
        panic!(
            "the workload failed after {} rounds: {e}",
            rounds.load(Relaxed)
        );
    }
    let failed: Vec<String> = pending
        .iter()
        .map(|(k, (_, last))| format!("{k}\n    last result: {last}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} expressions returned no data within {DATA_DEADLINE:?} of the first \
         scrape ({} workload rounds):\n{}\n{}",
        failed.len(),
        rounds.load(Relaxed),
        failed.join("\n"),
        logs()
    );
    // The demo served its own metrics the whole time, and they moved.
    let demo = query("sum(rate(tiered_cache_requests_total{job=\"demo\"}[1m])) > 0").unwrap();
    assert!(
        !demo.is_empty(),
        "the demo's lookups reached Prometheus\n{}",
        logs()
    );
    // A namespace that never reached Redis is bypassed from the start, and says so.
    let cold = query("tiered_cache_l1_bypassed{namespace=\"cold\"} == 1").unwrap();
    assert!(
        !cold.is_empty(),
        "the never-connected node's bypass gauge is 1\n{}",
        logs()
    );
    // Every metric the dashboard and the alerts use was emitted, so every expression ran.
    assert!(
        skipped.is_empty(),
        "expressions not checked live:\n{}",
        skipped.join("\n")
    );
    eprintln!(
        "{total} expressions returned data; {} s after the first scrape, {} s in all, {} workload rounds",
        scraping.elapsed().as_secs(),
        started.elapsed().as_secs(),
        rounds.load(Relaxed)
    );
}
