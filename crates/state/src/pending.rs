//! Work a run could not finish and a later run takes up (R17, R18): creates written
//! down before the remote call, requests the plan refused, and links of an older state
//! whose first sync failed. Each is its own type and table: they are found, retried,
//! counted and parked the same way, but they mean different things.

use serde::{Deserialize, Serialize};
use tandem_model::{Fields, Timestamp};

/// Which record of a pair: the contact or the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Contact,
    Account,
}

impl Side {
    /// As the state and the log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Contact => "contact",
            Side::Account => "account",
        }
    }

    /// The side spelled `text`, as [`Side::as_str`] writes it.
    pub fn parse(text: &str) -> Option<Side> {
        match text {
            "contact" => Some(Side::Contact),
            "account" => Some(Side::Account),
            _ => None,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record Tandem is creating from another (R5, R6), written down before the remote
/// create so that a crash between the create and its link is repaired, not repeated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCreate {
    pub code: String,
    /// The side created: a contact from an account, or an account from a contact.
    pub side: Side,
    /// The id of the record it is created from.
    pub source_id: String,
    /// The fields sent to the create.
    pub fields: Fields,
    pub run_id: Option<i64>,
    /// The error of the last attempt, if it failed.
    pub error: Option<String>,
    pub failure_count: u32,
    /// Failed twice with the same error: not retried until retried by hand (R17).
    pub parked: bool,
    pub updated_at: Timestamp,
    /// The id the record is created under, chosen before it was sent, where its
    /// connector lets the caller choose ids (`Connector::new_id`): the record a create
    /// cut short made is then found by it, not by the values sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
}

/// A contact's request for an account (R5) or an operator's request that the plan
/// refused: the relation is held elsewhere, the company is ambiguous, the contact is
/// missing. Asked again each run until it is granted, withdrawn or parked (R17).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedRequest {
    pub code: String,
    /// The contact that asked (for a person, the request names its company).
    pub contact_id: String,
    pub error: String,
    pub run_id: Option<i64>,
    pub failure_count: u32,
    /// Refused twice the same way: not asked again until retried by hand (R17).
    pub parked: bool,
    pub updated_at: Timestamp,
}

/// How a pair came to be linked, as a [`PendingLink`] remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum LinkedBy {
    /// By a match tier (1-based) (R4).
    Match { tier: usize },
    /// By `tandem link`.
    Operator,
}

/// A pair an older state matched or linked whose first sync failed, stored before
/// links carried their intent (R18). Read and linked again by the next run; new runs
/// store such a pair as a link with an intent instead, so nothing writes these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingLink {
    pub code: String,
    pub contact_id: String,
    pub account_id: String,
    pub by: LinkedBy,
    pub error: Option<String>,
    pub failure_count: u32,
    pub parked: bool,
    pub updated_at: Timestamp,
}

/// A batch of creates as a create batch record holds it: a JSON list.
pub(crate) fn encode_creates(
    batch: &crate::PendingCreateBatch,
) -> Result<String, crate::StateError> {
    serde_json::to_string(&batch.creates).map_err(|e| crate::StateError::Corrupt {
        what: format!("the creates of run {}", batch.run_id),
        message: e.to_string(),
    })
}

/// The creates of a create batch record of run `run_id`.
pub(crate) fn decode_creates(
    run_id: i64,
    text: &str,
) -> Result<Vec<PendingCreate>, crate::StateError> {
    serde_json::from_str(text).map_err(|e| crate::StateError::Corrupt {
        what: format!("the creates run {run_id} was about to send"),
        message: e.to_string(),
    })
}

/// Pending rows with the creates of batch records (oldest first) in place of the rows
/// of the same key: what the pending creates are once the next run takes the batches
/// up. Ordered as the rows are: by code, side as spelled, and source id.
pub(crate) fn overlay_creates(
    rows: Vec<PendingCreate>,
    batched: Vec<PendingCreate>,
) -> Vec<PendingCreate> {
    if batched.is_empty() {
        return rows;
    }
    let key = |c: &PendingCreate| (c.code.clone(), c.side.as_str(), c.source_id.clone());
    let mut by_key: std::collections::BTreeMap<_, PendingCreate> =
        rows.into_iter().map(|c| (key(&c), c)).collect();
    for create in batched {
        by_key.insert(key(&create), create);
    }
    by_key.into_values().collect()
}
