//! The invalidation log: every message a drawn version publishes is also appended, by the same
//! script, to a capped stream beside the meta hash (see `scripts::PREAMBLE`), its entry id the
//! version. Pub/sub is at-most-once; the log lets a node that missed messages (a gap, a
//! reconnect) read them back and evict what they name, keeping the rest of its L1, instead of
//! clearing it all. Whatever the log cannot vouch for (trimmed, evicted, an entry too large to
//! keep, a version never logged) the reader reports incomplete, and the node clears L1 as before.

use super::{L2Result, L2Tier};

/// The largest message the log keeps whole, in bytes: a larger one (a long batch) is logged
/// empty, and a replay across it clears L1 instead. Bounds the log to `entries × 4 KiB`.
pub(crate) const ENTRY_MAX: usize = 4096;

/// The one field of an entry, holding the message (the scripts spell it too).
pub(crate) const FIELD: &str = "m";

/// Entries read per round trip.
const PAGE: usize = 512;

/// What the log holds of a run of versions.
#[derive(Debug)]
pub(crate) enum Logged {
    /// Every message of the run, in version order.
    Complete(Vec<Vec<u8>>),
    /// The log cannot vouch for the run; why.
    Incomplete(&'static str),
}

impl L2Tier {
    /// The messages of versions `after + 1 ..= through`, if the log holds every one of them.
    pub(crate) async fn logged(&self, after: u64, through: u64) -> L2Result<Logged> {
        let wanted = through.saturating_sub(after);
        if wanted == 0 {
            return Ok(Logged::Complete(Vec::new()));
        }
        if self.log_len == 0 {
            return Ok(Logged::Incomplete("no log"));
        }
        if wanted > self.log_len as u64 {
            return Ok(Logged::Incomplete("longer than the log"));
        }
        let key = &self.keys.log_key();
        let mut out = Vec::with_capacity(wanted as usize);
        let mut next = after + 1;
        while next <= through {
            let page: Vec<(String, Vec<Vec<u8>>)> = self
                .call(None, |mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg(format!("{next}-0"))
                        .arg(format!("{through}-0"))
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if page.is_empty() {
                return Ok(Logged::Incomplete("not in the log"));
            }
            for (id, fields) in page {
                if entry_version(&id) != Some(next) {
                    return Ok(Logged::Incomplete("not in the log"));
                }
                match <[Vec<u8>; 2]>::try_from(fields) {
                    Ok([name, body]) if name == FIELD.as_bytes() && !body.is_empty() => {
                        out.push(body)
                    }
                    Ok([name, _]) if name == FIELD.as_bytes() => {
                        return Ok(Logged::Incomplete("too large"))
                    }
                    _ => return Ok(Logged::Incomplete("unreadable")),
                }
                next += 1;
            }
        }
        Ok(Logged::Complete(out))
    }
}

/// The version an entry id (`{version}-0`) stands for.
fn entry_version(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_ids_are_versions() {
        assert_eq!(super::entry_version("42-0"), Some(42));
        assert_eq!(super::entry_version("42-1"), None);
        assert_eq!(super::entry_version("x-0"), None);
    }
}
