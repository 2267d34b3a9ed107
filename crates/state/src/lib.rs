//! Deployment state: what Tandem remembers between runs.
//!
//! * links: which contact is which account under a relation code, with the last
//!   synchronised value of every shared field (the *baseline*, R14) and each side's
//!   version;
//! * cursors per connector and kind, and content hashes of records read from full
//!   listings (to notice what changed, and what disappeared, R16);
//! * runs with their counters;
//! * the interaction log (R11), the conflict queue (R15), pending creates (R5, R6),
//!   parked pairs (R17) and the company of each person contact (R3).
//!
//! [`StateStore`] is the interface; [`SqliteState`] the embedded default, [`PgState`]
//! the same state in PostgreSQL. [`open_url`] and its siblings open the state a config
//! url names in the store its scheme names (`sqlite://`, `postgres://`). Writes go in
//! [`StateBatch`]es, each one transaction, so a crash leaves either all or none of a
//! batch.

mod codec;
mod log;
mod open;
mod pending;
mod postgres;
mod sqlite;
mod stored_hashes;
#[cfg(test)]
mod testing;
#[cfg(feature = "testsupport")]
pub mod testsupport;
pub mod transfer;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tandem_model::{EntityKind, FieldName, Fields, Timestamp, Value};

pub use log::{Change, LogEntry};
pub use open::{
    Access, StoreKind, open, open_url, open_url_existing, open_url_read_only, open_url_with_lease,
    redact_url,
};
pub use pending::{LinkedBy, PendingCreate, PendingLink, RefusedRequest, Side};
pub use postgres::{LEASE_TTL, PARTITION_LEASE, PgState, STANDBY_LEASE};
pub use sqlite::{LockMode, SqliteState};
pub use stored_hashes::{StoredHashes, Take, Walk};

/// A business relation between one contact and one account (R2: at most one per code
/// and contact, and per code and account).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The relation code, e.g. `CUST`.
    pub code: String,
    pub contact_id: String,
    pub account_id: String,
    /// The last synchronised value of every shared field.
    pub baseline: Fields,
    pub contact_version: Option<String>,
    pub account_version: Option<String>,
    /// The error of the last sync of this pair, if it failed.
    pub last_error: Option<String>,
    /// How many runs in a row failed on this pair.
    pub failure_count: u32,
    /// Failed twice with the same error: left alone until retried by hand (R17).
    pub parked: bool,
    pub linked_at: Timestamp,
    pub synced_at: Timestamp,
    /// Writes a run was about to make to this pair when it stored `baseline` (R18);
    /// `None` once both sides hold the baseline.
    pub intent: Option<Intent>,
}

/// What a run is about to write to a linked pair (R18). It is stored with the baseline
/// the writes will leave, before any system is written to: for each field written to
/// a side, the value that side held before. A side that still holds that value did
/// not get the write and was not edited since, so it is taken to hold the baseline;
/// any other value is an edit, merged three-way against the baseline. Cleared when
/// both writes landed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<(FieldName, Value)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub account: Vec<(FieldName, Value)>,
}

impl Intent {
    /// The contact's value of `field` before the intended write, if one was intended.
    pub fn contact_before(&self, field: &str) -> Option<&Value> {
        before(&self.contact, field)
    }

    /// The account's value of `field` before the intended write, if one was intended.
    pub fn account_before(&self, field: &str) -> Option<&Value> {
        before(&self.account, field)
    }
}

fn before<'i>(values: &'i [(FieldName, Value)], field: &str) -> Option<&'i Value> {
    values
        .iter()
        .find(|(name, _)| name.as_str() == field)
        .map(|(_, v)| v)
}

/// Identifies where a cursor or hash belongs: a connector instance (its config name)
/// and a record kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub connector: String,
    pub kind: EntityKind,
}

impl Scope {
    pub fn new(connector: &str, kind: EntityKind) -> Scope {
        Scope {
            connector: connector.to_owned(),
            kind,
        }
    }
}

/// A run as recorded in the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    /// `sync` (plans do not record runs).
    pub mode: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// `running`, `ok`, `failed` (the run stopped early), `partial` (records failed), or
    /// `interrupted` (its process died: still `running` when the next run began).
    pub status: String,
    /// The run's counters and per-relation summary, as the engine reported them.
    pub summary: serde_json::Value,
}

/// One entry of a contact's interaction log (R11): something Tandem did to a related
/// pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Assigned by the store; ignored when appending.
    pub id: i64,
    pub at: Timestamp,
    /// The run that did it; `None` for operator commands outside a run.
    pub run_id: Option<i64>,
    pub contact_id: String,
    pub code: String,
    pub account_id: Option<String>,
    /// `linked`, `created`, `updated`, `conflict`, `unlinked`, `failed`, `parked`,
    /// `retried`, `resolved`.
    pub action: String,
    /// Where the action came from: `contact`, `account`, `match`, `operator`, ...
    pub source: String,
    /// Action-specific details: fields with old and new values, tier, reason, error.
    pub details: Details,
}

/// The details of a log entry as JSON text: rendered once, when the entry is made, and
/// stored as it is. A run logs millions of entries; building a `serde_json::Value` tree
/// for each, then rendering and freeing it while committing, was a fifth of the
/// commit's time. Readers that look inside parse it ([`Details::value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details(String);

impl Details {
    /// `details` rendered as JSON.
    pub fn of(details: &impl Serialize) -> Details {
        // The engine's details are plain data (strings, numbers, lists, maps with
        // string keys), which always render.
        Details(serde_json::to_string(details).unwrap_or_else(|_| "null".to_owned()))
    }

    /// Text read back from the store, checked to be JSON.
    fn from_stored(text: String) -> Details {
        Details(text)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The details as a JSON value.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for Details {
    fn from(value: serde_json::Value) -> Details {
        Details(value.to_string())
    }
}

/// Written as the JSON value it holds, as before details were kept as text.
impl Serialize for Details {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Details, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Details::from)
    }
}

/// A field both sides changed under the `manual` policy, waiting for a decision (R15).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictEntry {
    /// Assigned by the store; ignored when upserting.
    pub id: i64,
    pub code: String,
    pub contact_id: String,
    pub account_id: String,
    pub field: String,
    pub base: Value,
    pub contact_value: Value,
    pub account_value: Value,
    pub opened_at: Timestamp,
    pub run_id: Option<i64>,
    /// The value chosen by `tandem conflicts resolve`, applied by the next run.
    pub resolution: Option<Value>,
    /// When the resolution was applied; the entry is closed then.
    pub closed_at: Option<Timestamp>,
}

/// Links a run is about to write, with their intents (R18), stored together.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentBatch {
    pub run_id: i64,
    /// The part of the run the links belong to: a run in ranges stores the intents of
    /// a range while the links of the range before are still being stored, and clears
    /// each range's intents by its part alone ([`StateBatch::clear_intent_batches`]).
    pub part: i64,
    pub links: Vec<Link>,
}

/// Creates a run is about to send (R18), written down together: one record for a
/// batch of creates instead of a pending row each, inserted and deleted again.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCreateBatch {
    pub run_id: i64,
    /// The part of the run the creates belong to: a run stores the record of its next
    /// batch of creates while the batch before is being linked, and clears each batch's
    /// record by its part alone ([`StateBatch::clear_pending_create_batches`]).
    pub part: i64,
    pub creates: Vec<PendingCreate>,
}

/// State changes that belong together; applied in one transaction.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StateBatch {
    /// Inserted or replaced by (code, contact_id).
    pub upsert_links: Vec<Link>,
    /// (code, contact_id)
    pub delete_links: Vec<(String, String)>,
    pub set_hashes: Vec<(Scope, String, u64)>,
    /// (i, keys): the hash of the match keys of the record of `set_hashes[i]`, as the
    /// run read it (0: unknown), stored with its content hash; in `i` order. A hash set
    /// without one keeps the keys stored before.
    pub set_match_keys: Vec<(usize, u64)>,
    pub delete_hashes: Vec<(Scope, String)>,
    pub set_cursors: Vec<(Scope, String)>,
    /// Sets (or with `None` forgets) the fingerprint of a scope.
    pub set_fingerprints: Vec<(Scope, Option<String>)>,
    /// Replaces the ambiguous matches remembered for a relation code (a JSON list).
    pub set_ambiguities: Vec<(String, serde_json::Value)>,
    /// Appended to the interaction log.
    pub interactions: Vec<Interaction>,
    /// Open conflicts by (code, contact_id, field): a new one is inserted, an open one
    /// gets the new values (its resolution, if any, is kept).
    pub upsert_conflicts: Vec<ConflictEntry>,
    /// Sets the resolution of the conflict with this id.
    pub resolve_conflicts: Vec<(i64, Value)>,
    /// Closes the open conflict of (code, contact_id, field) at the given time.
    pub close_conflicts: Vec<(String, String, String, Timestamp)>,
    /// Inserted or replaced by (code, side, source_id).
    pub upsert_pending: Vec<PendingCreate>,
    /// (code, side created, source_id)
    pub delete_pending: Vec<(String, Side, String)>,
    /// Creates about to be sent, one record per batch. They read as pending creates
    /// (in place of a pending row of the same key) until the run that stored them
    /// clears them, having stored what each create came to; a run cut short leaves
    /// them to the next, which makes them pending rows
    /// ([`StateStore::unpack_intents`]).
    pub pending_create_batches: Vec<PendingCreateBatch>,
    /// (run, part) whose create batches are done with: what each create came to is
    /// stored. The batches of the run's other parts stay.
    pub clear_pending_create_batches: Vec<(i64, i64)>,
    /// Inserted or replaced by (code, contact_id).
    pub upsert_refused: Vec<RefusedRequest>,
    /// (code, contact_id)
    pub delete_refused: Vec<(String, String)>,
    /// (code, contact_id): links of an older state whose first sync is done.
    pub delete_pending_links: Vec<(String, String)>,
    /// Links with the intent a run is about to carry out (R18), stored as one record per
    /// batch: far cheaper than a row each, for a first sync that writes every pair. The
    /// next run makes them link rows ([`StateStore::unpack_intents`]) unless the run
    /// that stored them clears them once its links are stored.
    pub intent_batches: Vec<IntentBatch>,
    /// (run, part) whose intent batches are done with: their links are stored. The
    /// batches of the run's other parts stay.
    pub clear_intent_batches: Vec<(i64, i64)>,
    /// Person contact -> its company contact (R3, R10); `None` forgets the contact.
    pub set_companies: Vec<(String, Option<String>)>,
    /// (code, contact, account, unlinked): a pair an operator unlinked (`true`), which
    /// match rules must not link again, or a pair linked by hand again (`false`).
    pub unlinked_pairs: Vec<(String, String, String, bool)>,
    /// (code, account, deleted): an account whose contact the user deleted (`true`),
    /// which gets no new contact unless asked (R12 over R6), or one asked for (`false`).
    pub contact_deleted: Vec<(String, String, bool)>,
    /// (code, contact, lost): a code the contact lost that is still to be taken off its
    /// business-relation field (`true`, R9), or taken off now (`false`).
    pub codes_lost: Vec<(String, String, bool)>,
}

impl StateBatch {
    /// Sets the content hash of a record with the hash of its match keys as read.
    pub fn set_hash_with_keys(&mut self, scope: Scope, id: String, hash: u64, keys: u64) {
        self.set_match_keys.push((self.set_hashes.len(), keys));
        self.set_hashes.push((scope, id, hash));
    }

    /// Empties the batch, keeping the room of the lists a run's batches fill by the
    /// thousand (links, hashes, the log), so that its next batch fills them without
    /// growing them again (a batch holds 20,000 rows). The other lists start anew.
    pub fn clear(&mut self) {
        fn emptied<T>(list: &mut Vec<T>) -> Vec<T> {
            let mut list = std::mem::take(list);
            list.clear();
            list
        }
        *self = StateBatch {
            upsert_links: emptied(&mut self.upsert_links),
            set_hashes: emptied(&mut self.set_hashes),
            set_match_keys: emptied(&mut self.set_match_keys),
            interactions: emptied(&mut self.interactions),
            ..StateBatch::default()
        };
    }

    pub fn is_empty(&self) -> bool {
        self.upsert_links.is_empty()
            && self.delete_links.is_empty()
            && self.set_hashes.is_empty()
            && self.delete_hashes.is_empty()
            && self.set_cursors.is_empty()
            && self.set_fingerprints.is_empty()
            && self.set_ambiguities.is_empty()
            && self.interactions.is_empty()
            && self.upsert_conflicts.is_empty()
            && self.resolve_conflicts.is_empty()
            && self.close_conflicts.is_empty()
            && self.upsert_pending.is_empty()
            && self.delete_pending.is_empty()
            && self.pending_create_batches.is_empty()
            && self.clear_pending_create_batches.is_empty()
            && self.upsert_refused.is_empty()
            && self.delete_refused.is_empty()
            && self.delete_pending_links.is_empty()
            && self.intent_batches.is_empty()
            && self.clear_intent_batches.is_empty()
            && self.set_companies.is_empty()
            && self.unlinked_pairs.is_empty()
            && self.contact_deleted.is_empty()
            && self.codes_lost.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state {path} is in use by another tandem process (lock file {path}.lock); \
         wait for that run to finish, or stop it, then try again"
    )]
    Locked { path: String },
    #[error("cannot open the state {path}: {message}")]
    Open { path: String, message: String },
    /// An existing file that is not a Tandem state: opening it as a new one would
    /// forget every link and every operator decision.
    #[error(
        "the state {path} is not a Tandem state: {reason}; nothing was changed. Restore it \
         from a backup, or point [state] url elsewhere; to start over, delete it (a new state \
         forgets every link, unlink and conflict decision)"
    )]
    NotAState { path: String, reason: String },
    #[error(
        "the state {path} has schema version {found}, newer than this tandem knows ({known}); \
         use a newer tandem"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("state storage failed while {action}: {source}")]
    Sqlite {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state storage failed while {action}: {source}")]
    Postgres {
        action: &'static str,
        /// Never holds the url: sqlx's errors name the server's message, not the
        /// connection string, and connection errors are `Open` with the url redacted.
        #[source]
        source: sqlx::Error,
    },
    /// Another process holds the state's lease (PostgreSQL): it is syncing.
    #[error(
        "the state {path} is in use by another tandem process ({owner}); its lease `{name}` \
         expires at {expires_at} unless renewed; wait for that run to finish, or stop it, \
         then try again"
    )]
    Leased {
        path: String,
        name: String,
        owner: String,
        expires_at: String,
    },
    /// The lease this store held was taken over (it expired: the process stalled for
    /// longer than its lifetime); the batch was not applied.
    #[error(
        "the state {path} was taken over by another process: this process's lease `{name}` \
         (epoch {epoch}) expired and is no longer held, so nothing was written; run again"
    )]
    LeaseLost {
        path: String,
        name: String,
        epoch: i64,
    },
    /// R2: the account already has a contact under this code.
    #[error(
        "cannot link account {account_id} to contact {contact_id} under {code}: the account is \
         already linked to contact {linked_contact}, and an account has at most one contact per \
         relation code (R2)"
    )]
    AccountTaken {
        code: String,
        account_id: String,
        contact_id: String,
        linked_contact: String,
    },
    /// A resolution for a conflict that does not exist or is already closed.
    #[error("there is no open conflict with id {id}; `tandem conflicts` lists the open ones")]
    UnknownConflict { id: i64 },
    #[error("the state holds a malformed value ({what}): {message}")]
    Corrupt { what: String, message: String },
    #[error(
        "unsupported state url `{url}`; use sqlite://<path> (a file) or \
         postgres://<user>@<host>/<database> (PostgreSQL)"
    )]
    UnsupportedUrl { url: String },
    /// A table name that is none of [`transfer::STATE_TABLES`].
    #[error("the state has no table `{table}`")]
    UnknownTable { table: String },
    /// A row handed to [`StateStore::import_rows`] that does not fit its table.
    #[error("cannot store a row in table {table}: {message}")]
    BadRow { table: String, message: String },
}

/// A lease some process holds on the state (PostgreSQL): who, with which epoch, and
/// for how much longer unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    pub name: String,
    /// What holding this lease means.
    pub role: LeaseRole,
    pub owner: String,
    pub epoch: i64,
    pub expires_in_ms: i64,
}

/// What a lease says of its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseRole {
    /// The lease `state`: this process writes the state and syncs.
    Holder,
    /// A worker waiting to take the state over (`tandem run --worker`).
    Standby,
    /// A worker running one partition of the work (`partition <index>/<count>`).
    Partition,
}

impl LeaseRole {
    /// The role of the lease named `name`.
    pub fn of(name: &str) -> LeaseRole {
        if name.starts_with(STANDBY_LEASE) {
            LeaseRole::Standby
        } else if name.starts_with(PARTITION_LEASE) {
            LeaseRole::Partition
        } else {
            LeaseRole::Holder
        }
    }

    /// For people: `holds the state`, `stands by`.
    pub fn says(self) -> &'static str {
        match self {
            LeaseRole::Holder => "holds the state",
            LeaseRole::Standby => "stands by",
            LeaseRole::Partition => "runs a partition",
        }
    }
}

/// The state of one deployment. Implementations must keep R2 as an invariant:
/// a second link for the same (code, contact) replaces the first, and a link whose
/// (code, account) is already taken by another contact is refused.
pub trait StateStore: Send {
    /// Where the state lives, to show the user: the file's path, or the database's
    /// url without its password ([`redact_url`]).
    fn location(&self) -> String;
    /// Whether the state exists: `false` for the empty stand-in that
    /// [`open_url_existing`] and [`open_url_read_only`] return when there is no state
    /// yet (nothing was created, and writes to it are lost).
    fn exists(&self) -> bool;
    /// Whether another process holds the state to write it: a sync is running. For a
    /// state opened with [`open_url_read_only`], which holds no lock itself.
    fn writer_active(&self) -> bool;

    /// The links of the given contacts, all codes.
    fn links_of_contacts(&self, contact_ids: &[&str]) -> Result<Vec<Link>, StateError>;
    /// The links of the given accounts under `code`.
    fn links_of_accounts(&self, code: &str, account_ids: &[&str]) -> Result<Vec<Link>, StateError>;
    /// Every link under `code`, or under every code, ordered by code and contact id.
    fn links(&self, code: Option<&str>) -> Result<Vec<Link>, StateError>;
    /// The contact ids and the account ids linked under `code`.
    fn linked_ids(&self, code: &str) -> Result<(HashSet<String>, HashSet<String>), StateError>;
    fn count_links(&self, code: &str) -> Result<u64, StateError>;

    /// Links with `parked` set, ordered by code and contact id.
    fn parked_links(&self) -> Result<Vec<Link>, StateError>;
    /// Links with an intent a run left unfinished (R18), ordered by code and contact.
    fn links_with_intent(&self) -> Result<Vec<Link>, StateError>;

    /// The interaction log of a contact, oldest first; at most the `limit` newest.
    fn interactions(&self, contact_id: &str, limit: usize) -> Result<Vec<Interaction>, StateError>;
    /// Conflicts ordered by id; only open ones (`closed_at` unset) when `open_only`.
    fn conflicts(&self, open_only: bool) -> Result<Vec<ConflictEntry>, StateError>;
    /// Every pending create, ordered by (code, side, source_id).
    fn pending_creates(&self) -> Result<Vec<PendingCreate>, StateError>;
    /// Every refused request, ordered by (code, contact_id).
    fn refused_requests(&self) -> Result<Vec<RefusedRequest>, StateError>;
    /// Links an older state left to retry, ordered by (code, contact_id).
    fn pending_links(&self) -> Result<Vec<PendingLink>, StateError>;
    /// The (contact, account) pairs an operator unlinked under `code`.
    fn unlinked_pairs(&self, code: &str) -> Result<Vec<(String, String)>, StateError>;
    /// (code, contact) of the codes contacts lost that are still to be taken off their
    /// business-relation field (R9).
    fn codes_lost(&self) -> Result<Vec<(String, String)>, StateError>;
    /// The accounts under `code` whose contact the user deleted (R12).
    fn contact_deleted(&self, code: &str) -> Result<HashSet<String>, StateError>;
    /// The company contact of a person contact, as last read.
    fn company_of(&self, contact_id: &str) -> Result<Option<String>, StateError>;
    /// Whether any contact has a company stored (R3): a run against a state holding
    /// none has none to forget (a first sync of a million companies forgot a million).
    fn holds_companies(&self) -> Result<bool, StateError>;

    fn cursor(&self, scope: &Scope) -> Result<Option<String>, StateError>;
    /// The content hashes stored for the given ids of `scope` (ids without one are
    /// left out): what a change-reading connector's page needs, without loading all.
    fn hashes_of(&self, scope: &Scope, ids: &[&str]) -> Result<HashMap<String, u64>, StateError>;
    /// The match-key hashes stored for the given ids of `scope` (ids without one, or
    /// with an unknown one, are left out). A store that keeps none returns none: every
    /// record's keys are then unknown, and matching wakes as it would without them.
    fn match_keys_of(
        &self,
        scope: &Scope,
        ids: &[&str],
    ) -> Result<HashMap<String, u64>, StateError> {
        let _ = (scope, ids);
        Ok(HashMap::new())
    }
    /// The content hash and match-key hash stored for the given ids of `scope`, in one
    /// lookup: what a change-reading connector's page needs, with the keys its changed
    /// records are woken by (ids without a hash are left out; keys `None` when
    /// unknown). The default asks [`StateStore::hashes_of`] and
    /// [`StateStore::match_keys_of`].
    fn hashes_and_keys_of(
        &self,
        scope: &Scope,
        ids: &[&str],
    ) -> Result<HashMap<String, (u64, Option<u64>)>, StateError> {
        let mut keys = self.match_keys_of(scope, ids)?;
        Ok((self.hashes_of(scope, ids)?.into_iter())
            .map(|(id, hash)| {
                let keys = keys.remove(&id);
                (id, (hash, keys))
            })
            .collect())
    }
    /// All content hashes stored for `scope`, by record id.
    fn hashes(&self, scope: &Scope) -> Result<StoredHashes, StateError>;
    /// A second handle on this state that only reads, for another thread while this
    /// one goes on: the engine loads the stored hashes of a scope while it reads the
    /// one before. It sees what was committed when it reads. `None` (the default) where
    /// the store has none to give; the engine then loads them in line.
    fn reader(&self) -> Option<Box<dyn StateStore + Send>> {
        None
    }
    /// The connector's fingerprint of `scope` as of the end of the last run, when the
    /// stored hashes describe exactly those records.
    fn fingerprint(&self, scope: &Scope) -> Result<Option<String>, StateError>;
    /// Whether some record of `scope` is marked to be looked at again (hash 0).
    fn has_rechecks(&self, scope: &Scope) -> Result<bool, StateError>;
    /// The records of `scope` marked to be looked at again (hash 0).
    fn rechecks(&self, scope: &Scope) -> Result<Vec<String>, StateError>;
    /// The ambiguous matches of relation `code` as its last matching found them (a
    /// JSON list), if it ever matched.
    fn ambiguities(&self, code: &str) -> Result<Option<serde_json::Value>, StateError>;
    /// The same as JSON text, for a caller that reads it into types of its own: a
    /// JSON value of the thousands a million partners leave took as long again to
    /// build as the types.
    fn ambiguities_text(&self, code: &str) -> Result<Option<String>, StateError> {
        Ok(self.ambiguities(code)?.map(|json| json.to_string()))
    }

    /// Applies `batch` in one transaction.
    fn commit(&mut self, batch: StateBatch) -> Result<(), StateError>;

    /// [`StateStore::commit`], the batch given back (perhaps emptied): a caller that
    /// commits on a helper thread drops it on the thread that made it, where freeing
    /// its million strings costs least. At 1M, the helper thread of a first sync spent
    /// a seventh of its time freeing the batches another thread had made.
    fn commit_and_return(&mut self, batch: StateBatch) -> Result<StateBatch, StateError> {
        self.commit(batch).map(|()| StateBatch::default())
    }

    /// Makes the links of every stored intent batch link rows with their intents, and
    /// the creates of every stored create batch pending rows (in place of a row of the
    /// same key), in one transaction, and forgets the batches: what a run cut short left
    /// (R18). A link whose account another contact holds now is left out (R2). Returns
    /// how many links were taken up.
    fn unpack_intents(&mut self) -> Result<u64, StateError>;

    fn begin_run(&mut self, mode: &str) -> Result<i64, StateError>;
    fn finish_run(
        &mut self,
        run_id: i64,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<(), StateError>;
    /// The most recent runs, newest first.
    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError>;

    /// The schema version of the stored tables: the number of migrations applied.
    fn schema_version(&self) -> Result<i64, StateError>;
    /// Calls `each` with every row of `table` (one of [`transfer::STATE_TABLES`]), in
    /// primary-key order, its values in the order of the table's columns (baselines and
    /// intent batches as blobs in the binary form, whatever form they are kept in);
    /// stops at the first error `each` returns, and returns that error as it is.
    /// Returns the number of rows.
    fn export_table(
        &self,
        table: &str,
        each: &mut dyn FnMut(Vec<transfer::StoredValue>) -> Result<(), StateError>,
    ) -> Result<u64, StateError>;
    /// Inserts `rows` (as [`StateStore::export_table`] gives them) into `table`, in one
    /// transaction: all or none. Ids are kept, and the ids the store gives afterwards
    /// (runs, log entries, conflicts, intent batches) continue after the highest one.
    fn import_rows(
        &mut self,
        table: &str,
        rows: Vec<Vec<transfer::StoredValue>>,
    ) -> Result<(), StateError>;
    /// The leases live now, by name: who holds the state to write it. A store that
    /// locks otherwise (SQLite's lock file) has none.
    fn leases(&self) -> Result<Vec<LeaseInfo>, StateError> {
        Ok(Vec::new())
    }
    /// Whether this store still holds what it locked the state with, asked before
    /// every write to a system: a process that stalled past its lease (stopped,
    /// suspended) and was taken over must not write to a system either, where no
    /// fence can stop it. [`StateError::LeaseLost`] when it was taken over. Asked
    /// through [`StateStore::lease_check`], the one a store overrides.
    fn confirm_lease(&self) -> Result<(), StateError> {
        self.lease_check().confirm()
    }
    /// What [`StateStore::confirm_lease`] asks, as a handle of its own that needs no
    /// borrow of the store: the engine asks it before each write to a system while the
    /// store is busy storing what the writes before answered. A lock that cannot be
    /// lost (SQLite's, held by the open file) is always held.
    fn lease_check(&self) -> LeaseCheck {
        LeaseCheck::held()
    }
    /// The run `id`, if the state has it.
    fn run(&self, id: i64) -> Result<Option<RunRecord>, StateError>;
    /// The interaction log entries of run `run_id` (R11), oldest first, at most
    /// `limit`; and how many it has in all (for `tandem runs show`).
    fn run_interactions(
        &self,
        run_id: i64,
        limit: usize,
    ) -> Result<(Vec<Interaction>, u64), StateError>;
}

/// Confirms that this process still holds the state's lease, from any thread, apart
/// from the store ([`StateStore::lease_check`]).
#[derive(Clone)]
pub struct LeaseCheck(Option<std::sync::Arc<LeaseConfirm>>);

type LeaseConfirm = dyn Fn() -> Result<(), StateError> + Send + Sync;

impl LeaseCheck {
    /// For a lock that cannot be lost: always held.
    pub fn held() -> LeaseCheck {
        LeaseCheck(None)
    }

    pub fn new(confirm: impl Fn() -> Result<(), StateError> + Send + Sync + 'static) -> Self {
        LeaseCheck(Some(std::sync::Arc::new(confirm)))
    }

    /// As [`StateStore::confirm_lease`].
    pub fn confirm(&self) -> Result<(), StateError> {
        self.0.as_ref().map_or(Ok(()), |confirm| confirm())
    }
}

impl std::fmt::Debug for LeaseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.0.is_some() {
            "asks the store"
        } else {
            "always held"
        };
        f.debug_tuple("LeaseCheck").field(&what).finish()
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_cleared_batch_is_empty_and_keeps_what_its_lists_allocated() {
        let mut batch = StateBatch::default();
        batch.set_hash_with_keys(Scope::new("erp", EntityKind::Customer), "K1".into(), 7, 9);
        batch.delete_links.push(("CUST".into(), "C1".into()));
        batch.codes_lost.push(("CUST".into(), "C1".into(), true));
        let capacity = batch.set_hashes.capacity();
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.set_match_keys.is_empty());
        assert_eq!(batch.set_hashes.capacity(), capacity);
    }
}
