//! What a plan or a sync reports: per relation counts, reads, failures, the plan.

use serde::Serialize;
use tandem_model::EntityKind;

use crate::matching::Ambiguity;
use crate::plan::{Plan, RelationCounts};
use crate::side::Side;

/// One failed write or request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: String,
    pub contact_id: Option<String>,
    pub account_id: Option<String>,
    /// Where the write failed.
    pub side: Side,
    pub error: String,
    /// Failed twice the same way: left alone until `tandem retry` (R17).
    pub parked: bool,
}

/// What a read found, per connector and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    pub connector: String,
    pub kind: EntityKind,
    pub records: u64,
    /// New or changed since the last run, or written by the last run without being
    /// read (looked at again).
    pub changed: u64,
    pub deleted: u64,
    /// Records this run looked at beyond reading: the changed ones, and unchanged ones
    /// matching or the run needed. A run without changes keeps none.
    pub in_play: u64,
    /// Not read at all: the connector's fingerprint is the one remembered at the end
    /// of the last run, so nothing changed (`--full-read` reads anyway).
    pub skipped: bool,
}

/// The result of `plan` or `sync`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run's id in the state; `None` for a plan.
    pub run_id: Option<i64>,
    pub mode: RunMode,
    pub read: Vec<ReadStats>,
    pub counts: Vec<RelationCounts>,
    /// Record writes planned (plan) or made (sync).
    pub writes: u64,
    pub ambiguous: Vec<Ambiguity>,
    pub failures: Vec<Failure>,
    /// The actions, in detail.
    pub plan: Plan,
}

impl RunReport {
    pub fn failed(&self) -> u64 {
        self.counts.iter().map(|c| c.failed).sum()
    }
}

/// What a run did: planned only (`tandem plan`, nothing written) or synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    Plan,
    Sync,
}

impl RunMode {
    /// As the state's runs and the report spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Plan => "plan",
            RunMode::Sync => "sync",
        }
    }
}

/// Rejected requests, as failures of the report.
pub(crate) fn rejections(plan: &Plan) -> Vec<Failure> {
    plan.rejected
        .iter()
        .map(|r| Failure {
            code: r.code.clone(),
            contact_id: Some(r.contact_id.clone()),
            account_id: None,
            side: Side::Contact,
            error: r.error.clone(),
            parked: false,
        })
        .collect()
}
