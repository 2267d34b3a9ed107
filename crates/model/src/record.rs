use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{EntityKind, Fields};

/// A record as an external system holds it, in the common model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The external system's id; opaque to Tandem.
    pub id: String,
    pub kind: EntityKind,
    #[serde(default)]
    pub fields: Fields,
    /// The system's version of the record (ETag, revision, ...); opaque. Updates carry
    /// it back so the system can refuse a write over a newer change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the system last modified the record, if it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<Timestamp>,
    /// A tombstone: the record was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl Record {
    pub fn new(kind: EntityKind, id: impl Into<String>, fields: Fields) -> Record {
        Record {
            id: id.into(),
            kind,
            fields,
            version: None,
            modified_at: None,
            deleted: false,
        }
    }

    /// A tombstone for a deleted record.
    pub fn tombstone(kind: EntityKind, id: impl Into<String>) -> Record {
        Record {
            deleted: true,
            ..Record::new(kind, id, Fields::new())
        }
    }
}

/// A point in time, milliseconds since the Unix epoch (UTC). Written as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")]
pub struct TimestampError(pub String);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_millis() as i64),
            Err(e) => Timestamp(-(e.duration().as_millis() as i64)),
        }
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// Parses RFC 3339 (`2024-05-01T12:00:00Z`, fractional seconds allowed) or a bare
    /// date (`2024-05-01`, midnight UTC).
    pub fn parse(s: &str) -> Result<Timestamp, TimestampError> {
        let s = s.trim();
        let full;
        let text = if s.len() == 10 {
            full = format!("{s}T00:00:00Z");
            &full
        } else {
            s
        };
        humantime::parse_rfc3339_weak(text)
            .map(Timestamp::from_system_time)
            .map_err(|_| TimestampError(s.to_owned()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(
                f,
                "{}",
                humantime::format_rfc3339_seconds(self.to_system_time())
            )
        } else {
            write!(
                f,
                "{}",
                humantime::format_rfc3339_millis(self.to_system_time())
            )
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(deserializer)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_as_rfc3339() {
        let t = Timestamp::parse("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2024-05-01T12:00:00Z");
        let ms = Timestamp::parse("2024-05-01T12:00:00.250Z").unwrap();
        assert_eq!(ms.0 - t.0, 250);
        assert_eq!(ms.to_string(), "2024-05-01T12:00:00.250Z");
        assert_eq!(
            Timestamp::parse("2024-05-01").unwrap().0,
            t.0 - 12 * 3600 * 1000
        );
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn records_serialise_compactly() {
        let r = Record::new(
            EntityKind::Customer,
            "K1",
            Fields::new().with("name", "Acme"),
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"id":"K1","kind":"customer","fields":{"name":"Acme"}}"#
        );
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let t = Record::tombstone(EntityKind::Contact, "C1");
        assert!(
            serde_json::to_string(&t)
                .unwrap()
                .contains(r#""deleted":true"#)
        );
    }
}
