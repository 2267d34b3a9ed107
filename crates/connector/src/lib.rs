//! The contract between the engine and the systems it synchronises.
//!
//! A connector adapts one external system to the common model of `tandem-model`:
//! it lists records (a full listing, or the changes since a [`Cursor`]) and applies
//! [`WriteOp`]s, reporting one [`WriteOutcome`] per operation. The engine only ever
//! sees `dyn Connector`; which concrete connectors exist is decided by whoever fills
//! the [`Registry`] (the `tandem` binary).
//!
//! With the cargo feature `http`, the module `http` is the HTTP layer every HTTP
//! connector shares (HTTPS, `ca_file`, timeouts, retries, rate limits, redaction).
//!
//! With the cargo feature `testkit`, the module `testkit` runs the standard contract
//! tests (the conformance kit) against any connector instance, for use in its tests.

mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod memory;
mod registry;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;

use serde::{Deserialize, Serialize};
use tandem_model::{EntityKind, Fields, Timestamp};

pub use error::ConnectorError;
pub use registry::{BuildContext, ConnectorFactory, Registry, parse_settings};

/// What a connector can do. The engine plans by these, so they must be honest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The record kinds this connector holds.
    pub kinds: Vec<EntityKind>,
    /// Whether `read` with a cursor returns only changes (with tombstones). When false,
    /// every read is a full listing and the engine diffs it against content hashes.
    pub incremental: bool,
    /// Whether the connector accepts creates and updates.
    pub write: bool,
    /// Whether the connector accepts deletes.
    pub delete: bool,
    /// The most operations one `write` call accepts.
    pub max_batch: usize,
}

impl Capabilities {
    pub fn holds(&self, kind: EntityKind) -> bool {
        self.kinds.contains(&kind)
    }
}

/// Where an incremental read resumes; opaque to everyone but the connector that made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a page of records is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Listing {
    /// Every live record of the kind, over all pages of this read. Once the last page
    /// has arrived, a record that is not in the listing has been deleted (R16).
    Full,
    /// Only records changed since the cursor, deletes as tombstones.
    Changes,
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub records: Vec<tandem_model::Record>,
    pub listing: Listing,
    /// Pass this cursor to the next `read`: for the next page while `has_more`, or
    /// for the next run's changes after the last page.
    pub cursor: Option<Cursor>,
    pub has_more: bool,
}

/// A change set for an update: `Null` clears a field, anything else sets it. Fields
/// not named are left as they are.
pub use tandem_model::Changes;

/// One write operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    /// Create a record. Without `id` the connector assigns one; with it (an id
    /// [`Connector::new_id`] gave) the record is made under exactly that id, or the
    /// create fails with [`ConnectorError::Conflict`] when a record has it already.
    Create {
        fields: Fields,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Change some fields of a record. With `version`, the connector refuses the write
    /// with [`ConnectorError::Conflict`] when the record changed since that version.
    Update {
        id: String,
        version: Option<String>,
        changes: Changes,
    },
    /// Delete a record, with the same version check as updates.
    Delete { id: String, version: Option<String> },
}

impl WriteOp {
    /// A create whose id the connector assigns.
    pub fn create(fields: Fields) -> WriteOp {
        WriteOp::Create { fields, id: None }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            WriteOp::Create { .. } => None,
            WriteOp::Update { id, .. } | WriteOp::Delete { id, .. } => Some(id),
        }
    }
}

/// What a successful write left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The record's id (newly assigned for a create).
    pub id: String,
    /// The record's version after the write.
    pub version: Option<String>,
    pub modified_at: Option<Timestamp>,
}

/// The outcome of one [`WriteOp`], in the order of the ops.
pub type WriteOutcome = Result<Written, ConnectorError>;

/// An external system adapted to the common model.
///
/// Implementations must be honest about [`Capabilities`], return exactly one outcome
/// per op in op order, and never report success for a write that did not happen.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    fn capabilities(&self) -> Capabilities;

    /// Verifies that the system is reachable and the settings work.
    async fn check(&self) -> Result<(), ConnectorError>;

    /// Reads one page of `kind`. Without a cursor, or when the connector is not
    /// incremental, the pages form a full listing.
    async fn read(&self, kind: EntityKind, cursor: Option<&Cursor>)
    -> Result<Page, ConnectorError>;

    /// Applies up to `capabilities().max_batch` operations on records of `kind`.
    /// An `Err` means none of them was applied.
    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError>;

    /// The records of `kind` with these ids, as a read would return them; ids that do
    /// not exist are left out. The engine asks for the records a run needs and a
    /// change-reading connector did not send (a write to retry, a record named by an
    /// operator, an intent a run cut short left). The default walks a full listing;
    /// a connector that can fetch by id should.
    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<tandem_model::Record>, ConnectorError> {
        let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.read(kind, cursor.as_ref()).await?;
            out.extend(
                page.records
                    .into_iter()
                    .filter(|r| !r.deleted && wanted.contains(r.id.as_str())),
            );
            cursor = page.cursor;
            if !page.has_more || out.len() == wanted.len() {
                return Ok(out);
            }
        }
    }

    /// An id for a record of `kind` not made yet, when this connector lets the caller
    /// choose ids: a [`WriteOp::Create`] carrying it makes the record under exactly
    /// that id. The engine writes the id down with the create before sending it, so
    /// that a run cut short after the create finds the record by its id, however the
    /// user edited it since (R18). The default, `None`, means the connector assigns
    /// ids as it creates, and the engine finds such a record again by the values it
    /// was sent.
    fn new_id(&self, _kind: EntityKind) -> Option<String> {
        None
    }

    /// A token for the current records of `kind`, when the connector can tell cheaply
    /// (a file's content hash): two equal tokens promise that a full read would return
    /// exactly the same records, so the engine may skip reading. Taking a fingerprint
    /// also starts the record of this instance's own writes (see
    /// [`Connector::fingerprint_after_own_writes`]). The default, `None`, means the
    /// connector cannot tell, and every run reads.
    async fn fingerprint(&self, _kind: EntityKind) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }

    /// The fingerprint of `kind` now, if everything that changed it since the
    /// fingerprint `since` was taken are writes made through this instance (none
    /// counts); `None` when anything else may have changed it. The engine remembers
    /// it, so that the next run skips reading what only its own writes changed.
    async fn fingerprint_after_own_writes(
        &self,
        _kind: EntityKind,
        _since: &str,
    ) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }
}
