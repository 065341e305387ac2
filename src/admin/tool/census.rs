//! [`Admin::census`] and [`Admin::known_namespaces`]: one `SCAN` of the prefix, each key
//! classified by the library's key layout, plus the meta hash (version, epoch, floors).

use super::{check_namespace, Admin};
use crate::error::Result;
use crate::key::{KeySpace, SEPARATOR};
use std::collections::BTreeMap;

impl Admin {
    /// The cheap proofs that Redis knows a namespace, first: its floor in the meta hash, or any
    /// value key (a `SCAN` of the namespace's pattern that stops at the first key found).
    pub(super) async fn has_trace_of(&self, namespace: &str) -> Result<bool> {
        let floor = KeySpace::floor_field(namespace);
        let meta = self.link.meta().await.map_err(|e| e.into_error("admin"))?;
        if meta.iter().any(|(field, _)| *field == floor) {
            return Ok(true);
        }
        let pattern = self.keys().value_key(namespace, "*");
        let mut cursor = 0;
        loop {
            let page = self
                .link
                .scan(cursor, &pattern)
                .await
                .map_err(|e| e.into_error("admin"))?;
            if !page.keys.is_empty() {
                return Ok(true);
            }
            cursor = page.cursor;
            if cursor == 0 {
                return Ok(false);
            }
        }
    }

    /// One full `SCAN` of the prefix plus the meta hash; keeps up to `sample` value keys per
    /// namespace.
    pub(super) async fn scan_all(&self, sample: usize) -> Result<Census> {
        let mut by_ns: BTreeMap<String, NamespaceCensus> = BTreeMap::new();
        let mut census = Census::default();
        let pattern = format!("{}{SEPARATOR}*", self.prefix);
        let mut cursor = 0;
        loop {
            let page = self
                .link
                .scan(cursor, &pattern)
                .await
                .map_err(|e| e.into_error("census"))?;
            for key in page.keys {
                match classify(&self.prefix, &key) {
                    Class::Value(ns) => {
                        let entry = by_ns.entry(ns.to_owned()).or_insert_with(|| named(ns));
                        entry.keys += 1;
                        if entry.samples.len() < sample {
                            entry.samples.push(key.clone());
                        }
                    }
                    Class::Internal(ns, kind) => {
                        census.internal_keys += 1;
                        if let Some(ns) = ns {
                            let entry = by_ns.entry(ns.to_owned()).or_insert_with(|| named(ns));
                            entry.tag_sets += u64::from(kind == "tag");
                        }
                    }
                    Class::Other => census.other_keys += 1,
                }
            }
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        let meta = self.link.meta().await.map_err(|e| e.into_error("census"))?;
        for (field, value) in meta {
            let number = value.parse::<u64>().ok();
            match field.split_once(SEPARATOR) {
                Some(("floor", ns)) if check_namespace(ns).is_ok() => {
                    by_ns
                        .entry(ns.to_owned())
                        .or_insert_with(|| named(ns))
                        .floor = number;
                }
                _ if field == KeySpace::VERSION_FIELD => census.version = number,
                _ if field == KeySpace::EPOCH_FIELD => census.epoch = number,
                _ if field == KeySpace::ROLLBACK_FLOOR_FIELD => census.rollback_floor = number,
                _ => {}
            }
        }
        census.namespaces = by_ns.into_values().collect();
        Ok(census)
    }
}

fn named(ns: &str) -> NamespaceCensus {
    NamespaceCensus {
        name: ns.to_owned(),
        ..NamespaceCensus::default()
    }
}

/// What a Redis key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
enum Class<'a> {
    /// `{prefix}:{ns}:{key}`.
    Value(&'a str),
    /// `{prefix}:_tc:...`: bookkeeping, of a namespace for tag sets, tag floors, its tag
    /// registry and locks.
    Internal(Option<&'a str>, &'a str),
    /// Anything else (not written by the library).
    Other,
}

fn classify<'a>(prefix: &str, key: &'a str) -> Class<'a> {
    let Some(rest) = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(SEPARATOR))
    else {
        return Class::Other;
    };
    let Some((ns, rest)) = rest.split_once(SEPARATOR) else {
        return Class::Other;
    };
    if ns == "_tc" {
        let mut parts = rest.splitn(3, SEPARATOR);
        let kind = parts.next().unwrap_or("");
        let owner = match (kind, parts.next(), parts.next()) {
            ("tag" | "tagfloor" | "lock", Some(ns), Some(_)) if check_namespace(ns).is_ok() => {
                Some(ns)
            }
            ("tags", Some(ns), None) if check_namespace(ns).is_ok() => Some(ns),
            _ => None,
        };
        return Class::Internal(owner, kind);
    }
    match check_namespace(ns) {
        Ok(()) => Class::Value(ns),
        Err(_) => Class::Other,
    }
}

/// Key counts and memory per namespace, from [`Admin::census`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Census {
    /// Per namespace, sorted by name.
    pub namespaces: Vec<NamespaceCensus>,
    /// The crate's own bookkeeping keys (`{prefix}:_tc:...`), not counted in any namespace.
    pub internal_keys: u64,
    /// Keys under the prefix that the library did not write (no namespace part).
    pub other_keys: u64,
    /// The shared version counter: how many writes and invalidations were published.
    pub version: Option<u64>,
    /// The counter's incarnation (changes when Redis was flushed or restarted empty).
    pub epoch: Option<u64>,
    /// The floor of every namespace set when Redis's history was found to have gone back
    /// (a restore, a lagging replica promoted, the meta hash lost); `None` if never.
    pub rollback_floor: Option<u64>,
}

impl Census {
    /// One namespace's figures.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceCensus> {
        self.namespaces.iter().find(|n| n.name == name)
    }
}

/// One namespace's keys in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceCensus {
    /// The namespace.
    pub name: String,
    /// Value keys (live values, cached "not found"s and tombstones alike).
    pub keys: u64,
    /// The version of its last whole-namespace invalidation, if any.
    pub floor: Option<u64>,
    /// Tag sets (one per tag with values written since its last invalidation).
    pub tag_sets: u64,
    /// Keys measured with `MEMORY USAGE`.
    pub memory_sampled_keys: u64,
    /// Their total, in bytes.
    pub memory_sampled_bytes: u64,
    /// The sample scaled to every key of the namespace; `None` when nothing was sampled.
    pub memory_estimate_bytes: Option<u64>,
    pub(super) samples: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_their_layout() {
        assert_eq!(classify("v1", "v1:rate:CNGN:USD"), Class::Value("rate"));
        assert_eq!(classify("v1", "v1:_tc:meta"), Class::Internal(None, "meta"));
        assert_eq!(
            classify("v1", "v1:_tc:tags:rate"),
            Class::Internal(Some("rate"), "tags")
        );
        assert_eq!(
            classify("v1", "v1:_tc:tag:rate:W1"),
            Class::Internal(Some("rate"), "tag")
        );
        assert_eq!(
            classify("v1", "v1:_tc:lock:quote:a:b"),
            Class::Internal(Some("quote"), "lock")
        );
        assert_eq!(classify("v1", "v10:rate:x"), Class::Other);
        assert_eq!(classify("v1", "v1:plain"), Class::Other);
        assert_eq!(classify("v1", "v1:bad ns:x"), Class::Other);
    }
}
