//! The cursor of a Business Central read.
//!
//! Business Central keeps no tombstones (delta links were removed in version 24) and
//! stamps each record with `lastModifiedDateTime` at its write, so a cursor carries:
//! - `newest`: the largest `lastModifiedDateTime` seen (the server's clock, never ours);
//! - `window`: the records seen within the overlap before `newest`, with a hash of their
//!   ETag, so that the overlap can be read again (a write stamped before `newest` may
//!   commit after the read) without returning them twice;
//! - `ids`: every id of the last complete listing, to find deletes by difference.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tandem_connector::{ConnectorError, Cursor};

const PREFIX: &str = "bc1:";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<i64>,
    /// id -> (lastModifiedDateTime in ms, hash of the ETag)
    #[serde(default)]
    pub window: BTreeMap<String, (i64, u64)>,
    #[serde(default)]
    pub ids: BTreeSet<String>,
}

pub fn etag_hash(etag: Option<&str>) -> u64 {
    xxhash_rust::xxh3::xxh3_64(etag.unwrap_or_default().as_bytes())
}

impl State {
    /// Notes a record read with its modification time and ETag hash.
    pub fn saw(&mut self, id: &str, modified: Option<i64>, hash: u64) {
        if let Some(ms) = modified {
            self.newest = Some(self.newest.map_or(ms, |n| n.max(ms)));
            self.window.insert(id.to_owned(), (ms, hash));
        }
    }

    /// Whether `id` was already returned with exactly this ETag.
    pub fn already_seen(&self, id: &str, hash: u64) -> bool {
        self.window.get(id).is_some_and(|(_, h)| *h == hash)
    }

    /// Drops window entries older than the overlap before the newest time.
    pub fn prune(&mut self, overlap_ms: i64) {
        if let Some(newest) = self.newest {
            self.window.retain(|_, (ms, _)| *ms > newest - overlap_ms);
        }
    }

    /// Where a read from this cursor starts looking for changes.
    pub fn since(&self, overlap_ms: i64) -> Option<i64> {
        self.newest.map(|n| n - overlap_ms)
    }

    pub fn encode(&self) -> Cursor {
        let json = serde_json::to_string(self).unwrap_or_default();
        Cursor(format!("{PREFIX}{json}"))
    }

    pub fn decode(cursor: &Cursor) -> Result<State, ConnectorError> {
        cursor
            .0
            .strip_prefix(PREFIX)
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| {
                ConnectorError::config(format!(
                    "the stored Business Central cursor `{}` cannot be read; reset the \
                     connector's cursor for a full listing",
                    cursor.0.chars().take(40).collect::<String>()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_dedupe_the_overlap() {
        let overlap = 300_000;
        let mut state = State::default();
        state.ids.extend(["a".to_owned(), "b".to_owned()]);
        state.saw("a", Some(10 * overlap), etag_hash(Some("W/\"1\"")));
        state.saw("b", Some(overlap), etag_hash(Some("W/\"2\"")));
        state.prune(overlap);
        assert_eq!(state.window.len(), 1, "b is outside the overlap window");
        let back = State::decode(&state.encode()).unwrap();
        assert_eq!(back, state);
        assert!(back.already_seen("a", etag_hash(Some("W/\"1\""))));
        assert!(!back.already_seen("a", etag_hash(Some("W/\"3\""))));
        assert_eq!(back.since(overlap), Some(9 * overlap));
        assert!(State::decode(&Cursor("tryton1;T=1".into())).is_err());
    }
}
