//! The invalidation log: every message a drawn version publishes is also appended, by the same
//! script, to a capped stream beside the meta hash (see `scripts::PREAMBLE`), its entry id the
//! version. Pub/sub is at-most-once; the log lets a node that missed messages (a gap, a
//! reconnect) read them back and evict what they name, keeping the rest of its L1, instead of
//! clearing it all. Whatever the log cannot vouch for (trimmed, evicted, an entry too large to
//! keep, a version never logged) the reader reports incomplete, and the node clears L1 as before.

use super::{L2Result, L2Tier};

/// The largest message the log keeps whole, in bytes: a larger one (a long batch) keeps only
/// its header (`wire::HEADER`), and a replay across it clears L1 instead. Bounds the log to
/// `entries × 4 KiB`.
pub(crate) const ENTRY_MAX: usize = 4096;

/// The field of an entry holding a whole message (the scripts spell it too).
pub(crate) const FIELD: &str = "m";
/// The field of an entry holding only a message's header.
const HEAD_FIELD: &str = "h";

/// One entry of the log.
#[derive(Debug)]
pub(crate) enum Entry {
    /// The message, whole.
    Whole(Vec<u8>),
    /// Only the message's header: it was too large to keep.
    Head(Vec<u8>),
}

impl Entry {
    /// The bytes kept: the whole message, or its header.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Entry::Whole(b) | Entry::Head(b) => b,
        }
    }
}

/// Entries read per round trip.
const PAGE: usize = 512;

/// What the log holds of a run of versions.
#[derive(Debug)]
pub(crate) enum Logged {
    /// Every entry of the run, in version order.
    Complete(Vec<Entry>),
    /// The log cannot vouch for the run; why.
    Incomplete(&'static str),
}

impl L2Tier {
    /// The messages of versions `first ..= through`, if the log holds every one of them.
    pub(crate) async fn logged(&self, first: u64, through: u64) -> L2Result<Logged> {
        let wanted = (through + 1).saturating_sub(first);
        if wanted == 0 || first == 0 {
            return Ok(Logged::Incomplete("no such versions"));
        }
        if self.log_len == 0 {
            return Ok(Logged::Incomplete("no log"));
        }
        if wanted > self.log_len as u64 {
            return Ok(Logged::Incomplete("longer than the log"));
        }
        let key = &self.keys.log_key();
        let mut out = Vec::with_capacity(wanted as usize);
        let mut next = first;
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
                    Ok([name, body]) if name == FIELD.as_bytes() => out.push(Entry::Whole(body)),
                    Ok([name, head]) if name == HEAD_FIELD.as_bytes() => {
                        out.push(Entry::Head(head))
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
    fn the_scripts_keep_the_wire_header() {
        // `scripts::PREAMBLE`'s `publish` keeps 35 bytes of a message too large to log.
        assert_eq!(crate::wire::HEADER, 35);
    }

    #[test]
    fn entry_ids_are_versions() {
        assert_eq!(super::entry_version("42-0"), Some(42));
        assert_eq!(super::entry_version("42-1"), None);
        assert_eq!(super::entry_version("x-0"), None);
    }
}
