//! What an entry of the interaction log says (R11): one type, written by the engine
//! and read by `tandem log`, stored as the action and its details (JSON).

use serde::{Deserialize, Serialize};
use tandem_model::{Fields, Value};

use crate::{Details, Interaction};

/// A field's value before and after a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

/// One action Tandem took on a related pair, with what the log keeps of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum LogEntry {
    /// A link made: `by` a match tier (`match`, with its tier), an `operator`, a create
    /// found again (`recovered`) or a `create`.
    Linked {
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<usize>,
    },
    /// A record created from the other: its fields, and for an account the template
    /// rule used and the person who asked (R3, R5).
    Created {
        fields: Fields,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
    },
    /// The changes each side received.
    Updated {
        #[serde(default)]
        account: Vec<Change>,
        #[serde(default)]
        contact: Vec<Change>,
    },
    /// Both sides changed a field (R15): the values, the policy and who won.
    Conflict {
        field: String,
        base: Value,
        #[serde(default)]
        contact: Option<Value>,
        account: Value,
        policy: String,
        winner: String,
        value: Value,
    },
    /// The link was dropped: `contact_deleted`, `account_deleted` or `operator`.
    Unlinked { reason: String },
    /// A write failed (R17); `failures` in a row.
    Failed { error: String, failures: u32 },
    /// Failed twice the same way: left alone until `tandem retry` (R17).
    Parked { error: String, failures: u32 },
    /// Put back by `tandem retry`.
    Retried {
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        failures: u32,
    },
    /// A conflict decided by an operator, applied.
    Resolved { field: String },
}

impl LogEntry {
    /// The action, as the log's `action` column spells it.
    pub fn action(&self) -> &'static str {
        match self {
            LogEntry::Linked { .. } => "linked",
            LogEntry::Created { .. } => "created",
            LogEntry::Updated { .. } => "updated",
            LogEntry::Conflict { .. } => "conflict",
            LogEntry::Unlinked { .. } => "unlinked",
            LogEntry::Failed { .. } => "failed",
            LogEntry::Parked { .. } => "parked",
            LogEntry::Retried { .. } => "retried",
            LogEntry::Resolved { .. } => "resolved",
        }
    }

    /// The details kept beside the action: the entry without its tag.
    ///
    /// Rendered straight to text, the tag cut off: serde writes an internally tagged
    /// enum's tag first. (Going through a `serde_json::Value` to drop the tag built and
    /// freed a map per entry, most of the log's cost on a big run.)
    pub fn details(&self) -> Details {
        let mut text = serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned());
        let tag = format!("{{\"action\":\"{}\"", self.action());
        match text.as_bytes().get(tag.len()) {
            Some(b',') if text.starts_with(&tag) => text.replace_range(1..=tag.len(), ""),
            Some(b'}') if text.starts_with(&tag) => text.replace_range(1..tag.len(), ""),
            _ => {
                // Not the expected layout: drop the tag the slow way.
                let mut value: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                if let Some(map) = value.as_object_mut() {
                    map.remove("action");
                }
                return Details::from(value);
            }
        }
        Details(text)
    }
}

impl Interaction {
    /// What the entry says; `None` for details no known action has (written by
    /// another version).
    pub fn entry(&self) -> Option<LogEntry> {
        let mut value = self.details.value();
        let map = value.as_object_mut()?;
        map.insert("action".to_owned(), self.action.clone().into());
        serde_json::from_value(value).ok()
    }
}

/// A row of the interaction log as a store reads it (its `LOG_COLUMNS`): one entry,
/// and a second entry of the same pair and run when `next` is set, stored with the
/// next id. Both stores read their rows into this, so the row's form lives here.
pub(crate) struct LogRow {
    pub id: i64,
    pub at: i64,
    pub run_id: Option<i64>,
    pub contact_id: String,
    pub code: String,
    pub account_id: Option<String>,
    pub action: String,
    pub source: String,
    pub details: String,
    /// The second entry's action, source and details.
    pub next: Option<(String, Option<String>, String)>,
}

impl LogRow {
    /// The entries of the row, their details checked to be JSON (so that readers can
    /// take the text for JSON).
    pub(crate) fn into_entries(self) -> Result<Vec<Interaction>, crate::StateError> {
        let details = |text: String, id: i64| {
            serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
                crate::StateError::Corrupt {
                    what: format!("details of interaction {id}"),
                    message: e.to_string(),
                }
            })?;
            Ok::<_, crate::StateError>(Details::from_stored(text))
        };
        let first = Interaction {
            id: self.id,
            at: tandem_model::Timestamp(self.at),
            run_id: self.run_id,
            contact_id: self.contact_id,
            code: self.code,
            account_id: self.account_id,
            action: self.action,
            source: self.source,
            details: details(self.details, self.id)?,
        };
        let Some((action, source, text)) = self.next else {
            return Ok(vec![first]);
        };
        let second = Interaction {
            id: self.id + 1,
            action,
            source: source.unwrap_or_default(),
            details: details(text, self.id + 1)?,
            ..first.clone()
        };
        Ok(vec![first, second])
    }
}

#[cfg(test)]
mod tests {
    use tandem_model::{Fields, Value};

    use super::*;

    /// The details as they were kept before: the entry as a JSON value without its tag.
    fn untagged(entry: &LogEntry) -> serde_json::Value {
        let mut value = serde_json::to_value(entry).unwrap();
        value.as_object_mut().unwrap().remove("action");
        value
    }

    #[test]
    fn details_are_the_entry_without_its_tag() {
        let entries = [
            LogEntry::Linked {
                by: "match".into(),
                tier: Some(2),
            },
            LogEntry::Created {
                fields: Fields::new().with("name", "Acme").with("action", "x"),
                template: None,
                requested_by: None,
            },
            LogEntry::Updated {
                account: vec![Change {
                    field: "phone".into(),
                    old: Value::Null,
                    new: Value::text("+32 9 \"1\""),
                }],
                contact: Vec::new(),
            },
            LogEntry::Unlinked {
                reason: "operator".into(),
            },
            LogEntry::Resolved {
                field: "action".into(),
            },
        ];
        for entry in entries {
            let details = entry.details();
            assert_eq!(details.value(), untagged(&entry), "{}", details.as_str());
            let back = Interaction {
                id: 0,
                at: tandem_model::Timestamp(0),
                run_id: None,
                contact_id: "C1".into(),
                code: "CUST".into(),
                account_id: None,
                action: entry.action().to_owned(),
                source: "match".into(),
                details,
            };
            assert_eq!(back.entry(), Some(entry));
        }
    }
}
