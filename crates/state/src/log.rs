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
    pub fn details(&self) -> Details {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.remove("action");
        }
        Details::from(value)
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
