//! Cursors and Tryton's timestamps.
//!
//! Tryton keeps no tombstones and stamps records with the start time of the
//! transaction that wrote them. A cursor therefore carries:
//! - `T`: the largest timestamp seen (the server's clock, never ours);
//! - `W`: the records seen with a timestamp within the overlap window before `T`, with
//!   a hash of what was read, so that the window can be read again (a transaction that
//!   started before `T` may commit after it) without returning them twice;
//! - `I`: every id of the listing, to find deletes by difference.
//!
//! Between the pages of a full listing it also carries `L`, the last id read.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};
use tandem_connector::{ConnectorError, Cursor};

/// Microseconds since 1970-01-01T00:00:00 of Tryton's naive (UTC) datetimes.
pub type Micros = i64;

/// How far before the newest timestamp seen a read from a cursor looks again.
pub const OVERLAP_MICROS: Micros = 120 * 1_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The last id read, between the pages of a full listing.
    pub last_id: Option<i64>,
    pub newest: Option<Micros>,
    /// id -> (timestamp, hash of the record as read)
    pub window: BTreeMap<i64, (Micros, u64)>,
    pub ids: BTreeSet<i64>,
}

impl State {
    /// Whether this is the cursor between two pages of a full listing.
    pub fn is_paging(&self) -> bool {
        self.last_id.is_some()
    }

    /// Notes a record read with its newest timestamp and hash.
    pub fn saw(&mut self, id: i64, ts: Option<Micros>, hash: u64) {
        if let Some(ts) = ts {
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
            self.window.insert(id, (ts, hash));
        }
    }

    /// Whether `id` was already returned with exactly this content.
    pub fn already_seen(&self, id: i64, hash: u64) -> bool {
        self.window.get(&id).is_some_and(|(_, h)| *h == hash)
    }

    /// Drops window entries older than the overlap before the newest timestamp.
    pub fn prune(&mut self) {
        if let Some(newest) = self.newest {
            self.window
                .retain(|_, (ts, _)| *ts > newest - OVERLAP_MICROS);
        }
    }

    /// Where a read from this cursor starts looking for changes.
    pub fn since(&self) -> Option<Micros> {
        self.newest.map(|n| n - OVERLAP_MICROS)
    }

    pub fn encode(&self) -> Cursor {
        let mut out = String::from("tryton1");
        if let Some(last) = self.last_id {
            out.push_str(&format!(";L={last}"));
        }
        if let Some(t) = self.newest {
            out.push_str(&format!(";T={t}"));
        }
        out.push_str(";W=");
        let window: Vec<String> = self
            .window
            .iter()
            .map(|(id, (ts, h))| format!("{id}:{ts}:{h:x}"))
            .collect();
        out.push_str(&window.join(","));
        out.push_str(";I=");
        out.push_str(&encode_ranges(&self.ids));
        Cursor(out)
    }

    pub fn decode(cursor: &Cursor) -> Result<State, ConnectorError> {
        let bad = || {
            ConnectorError::config(format!(
                "the stored Tryton cursor `{}` cannot be read; reset the connector's cursor \
                 for a full listing",
                cursor.0.chars().take(60).collect::<String>()
            ))
        };
        let mut parts = cursor.0.split(';');
        if parts.next() != Some("tryton1") {
            return Err(bad());
        }
        let mut state = State::default();
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(bad)?;
            match key {
                "L" => state.last_id = Some(value.parse().map_err(|_| bad())?),
                "T" => state.newest = Some(value.parse().map_err(|_| bad())?),
                "W" => {
                    for entry in value.split(',').filter(|e| !e.is_empty()) {
                        let mut bits = entry.split(':');
                        let (Some(id), Some(ts), Some(h), None) =
                            (bits.next(), bits.next(), bits.next(), bits.next())
                        else {
                            return Err(bad());
                        };
                        state.window.insert(
                            id.parse().map_err(|_| bad())?,
                            (
                                ts.parse().map_err(|_| bad())?,
                                u64::from_str_radix(h, 16).map_err(|_| bad())?,
                            ),
                        );
                    }
                }
                "I" => state.ids = decode_ranges(value).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        }
        Ok(state)
    }
}

/// `1-5,7,9-12`
pub fn encode_ranges(ids: &BTreeSet<i64>) -> String {
    let mut out = Vec::new();
    let mut iter = ids.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

pub fn decode_ranges(text: &str) -> Option<BTreeSet<i64>> {
    let mut ids = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 10_000_000 {
                    return None;
                }
                ids.extend(a..=b);
            }
            None => {
                ids.insert(part.parse().ok()?);
            }
        }
    }
    Some(ids)
}

/// A Tryton `{"__class__": "datetime", ...}` as microseconds since the epoch.
pub fn datetime_micros(value: &Json) -> Option<Micros> {
    if value.get("__class__")?.as_str()? != "datetime" {
        return None;
    }
    let field = |name: &str| value.get(name).and_then(Json::as_i64).unwrap_or(0);
    let days = days_from_civil(field("year"), field("month"), field("day"));
    Some(
        ((days * 24 + field("hour")) * 60 + field("minute")) * 60_000_000
            + field("second") * 1_000_000
            + field("microsecond"),
    )
}

/// Microseconds since the epoch as a Tryton datetime.
pub fn micros_datetime(micros: Micros) -> Json {
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    let (year, month, day) = civil_from_days(days);
    json!({
        "__class__": "datetime",
        "year": year, "month": month, "day": day,
        "hour": rest / 3_600_000_000,
        "minute": rest / 60_000_000 % 60,
        "second": rest / 1_000_000 % 60,
        "microsecond": rest % 1_000_000,
    })
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_round_trip() {
        let dt = json!({"__class__": "datetime", "year": 2026, "month": 2, "day": 28,
                        "hour": 23, "minute": 59, "second": 58, "microsecond": 118029});
        let micros = datetime_micros(&dt).unwrap();
        assert_eq!(micros_datetime(micros), dt);
        let epoch = json!({"__class__": "datetime", "year": 1970, "month": 1, "day": 1,
                           "hour": 0, "minute": 0, "second": 0, "microsecond": 0});
        assert_eq!(datetime_micros(&epoch), Some(0));
        assert_eq!(
            datetime_micros(
                &json!({"__class__": "datetime", "year": 2024, "month": 5, "day": 1,
                                    "hour": 12, "minute": 0, "second": 0, "microsecond": 0})
            ),
            Some(1_714_564_800_000_000)
        );
    }

    #[test]
    fn id_lists_compress_to_ranges() {
        let ids: BTreeSet<i64> = [1, 2, 3, 5, 7, 8, 100].into_iter().collect();
        assert_eq!(encode_ranges(&ids), "1-3,5,7-8,100");
        assert_eq!(decode_ranges("1-3,5,7-8,100").unwrap(), ids);
        assert_eq!(decode_ranges("").unwrap(), BTreeSet::new());
        assert!(decode_ranges("3-1").is_none());
    }

    #[test]
    fn cursors_round_trip_and_dedupe_the_overlap() {
        let mut state = State {
            ids: [1, 2, 3].into_iter().collect(),
            ..State::default()
        };
        state.saw(2, Some(10 * OVERLAP_MICROS), 0xabc);
        state.saw(3, Some(OVERLAP_MICROS), 0xdef);
        state.prune();
        assert_eq!(state.window.len(), 1, "3 is outside the overlap window");
        let back = State::decode(&state.encode()).unwrap();
        assert_eq!(back, state);
        assert!(back.already_seen(2, 0xabc));
        assert!(!back.already_seen(2, 0xabd));
        assert_eq!(back.since(), Some(9 * OVERLAP_MICROS));
        assert!(State::decode(&Cursor("garbage".into())).is_err());
    }
}
