//! The embedded state: one SQLite file per deployment, next to a lock file that keeps
//! a second tandem process from using it at the same time.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::iter;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::types::{FromSql, ValueRef};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Params, Row, Statement,
    TransactionBehavior, ffi, params, params_from_iter,
};
use tandem_model::{Fields, Timestamp};

use tandem_model::Value;

use crate::codec;
use crate::open::redact_url;
use crate::transfer::ColumnType::{Any, Integer, Text};
use crate::transfer::{Column, ColumnType, StateTable, StoredValue};
use crate::{
    ConflictEntry, Intent, IntentBatch, Interaction, Link, LinkedBy, PendingCreate,
    PendingCreateBatch, PendingLink, RefusedRequest, RunRecord, Scope, Side, StateBatch,
    StateError, StateStore, StoredHashes,
};
use hash_pages::HashChange;

/// Schema migrations in order: step `i` takes a state from `PRAGMA user_version` `i`
/// to `i + 1`. Add a migration by appending it; never edit one that has shipped.
const MIGRATIONS: &[Migration] = &[
    Migration::sql(MIGRATION_1_INITIAL),
    Migration::sql(MIGRATION_2_BUSINESS_RULES),
    Migration::sql(MIGRATION_3_UNLINKED_PAIRS),
    Migration::sql(MIGRATION_4_FINGERPRINTS),
    Migration::sql(MIGRATION_5_INTENTS),
    Migration::sql(MIGRATION_6_PENDING_SPLIT),
    Migration::sql(MIGRATION_7_INTENT_BATCHES),
    Migration::sql(MIGRATION_8_COMPACT),
    Migration::sql(MIGRATION_9_CREATE_BATCHES),
    Migration {
        sql: MIGRATION_10_HASH_PAGES,
        then: Some(hash_pages::pack_hash_rows),
    },
    Migration::sql(MIGRATION_11_CREATED_IDS),
    Migration::sql(MIGRATION_12_BATCH_PARTS),
];

/// A schema migration: its SQL, then, for one that SQL alone cannot do, code run in
/// the same transaction.
pub(super) struct Migration {
    pub(super) sql: &'static str,
    then: Option<fn(&Connection) -> rusqlite::Result<()>>,
}

impl Migration {
    const fn sql(sql: &'static str) -> Migration {
        Migration { sql, then: None }
    }
}

/// Every table of the schema, as the last migration leaves it, in the order a copy
/// fills them (`tandem migrate`): a table before the tables whose rows refer to its
/// rows (runs before what a run did, scopes before their hashes). Columns are in the
/// schema's order. A migration that adds or changes a table changes it here too
/// (`state_tables_list_every_table_and_column_of_the_schema` fails until it does).
/// `record_hashes` is the one table SQLite keeps in another form: in pages
/// (`record_hash_pages`, migration 10), exported and imported as these rows.
pub const STATE_TABLES: &[StateTable] = &[
    StateTable {
        name: "runs",
        columns: &[
            col("id", Integer, false),
            col("mode", Text, false),
            col("started_at", Integer, false),
            col("finished_at", Integer, true),
            col("status", Text, false),
            col("summary", Text, true),
        ],
        primary_key: &["id"],
    },
    StateTable {
        name: "scopes",
        columns: &[
            col("id", Integer, false),
            col("connector", Text, false),
            col("kind", Text, false),
        ],
        primary_key: &["id"],
    },
    StateTable {
        name: "record_hashes",
        columns: &[
            col("scope", Integer, false),
            col("id", Text, false),
            col("hash", Integer, false),
            col("match_keys", Integer, true),
        ],
        primary_key: &["scope", "id"],
    },
    StateTable {
        name: "cursors",
        columns: &[
            col("connector", Text, false),
            col("kind", Text, false),
            col("cursor", Text, false),
        ],
        primary_key: &["connector", "kind"],
    },
    StateTable {
        name: "fingerprints",
        columns: &[
            col("connector", Text, false),
            col("kind", Text, false),
            col("fingerprint", Text, false),
        ],
        primary_key: &["connector", "kind"],
    },
    StateTable {
        name: "links",
        columns: &[
            col("code", Text, false),
            col("contact_id", Text, false),
            col("account_id", Text, false),
            col("baseline", Any, false),
            col("contact_version", Text, true),
            col("account_version", Text, true),
            col("last_error", Text, true),
            col("failure_count", Integer, false),
            col("linked_at", Integer, false),
            col("synced_at", Integer, false),
            col("parked", Integer, false),
            col("intent", Text, true),
        ],
        primary_key: &["code", "contact_id"],
    },
    StateTable {
        name: "link_counts",
        columns: &[col("code", Text, false), col("links", Integer, false)],
        primary_key: &["code"],
    },
    StateTable {
        name: "intent_batches",
        columns: &[
            col("id", Integer, false),
            col("run_id", Integer, false),
            col("links", Any, false),
            col("part", Integer, false),
        ],
        primary_key: &["id"],
    },
    StateTable {
        name: "pending_create_batches",
        columns: &[
            col("id", Integer, false),
            col("run_id", Integer, false),
            col("creates", Text, false),
            col("part", Integer, false),
        ],
        primary_key: &["id"],
    },
    StateTable {
        name: "interactions",
        columns: &[
            col("id", Integer, false),
            col("at", Integer, false),
            col("run_id", Integer, true),
            col("contact_id", Text, false),
            col("code", Text, false),
            col("account_id", Text, true),
            col("action", Text, false),
            col("source", Text, false),
            col("details", Text, false),
            col("next_action", Text, true),
            col("next_source", Text, true),
            col("next_details", Text, true),
        ],
        primary_key: &["id"],
    },
    StateTable {
        name: "conflicts",
        columns: &[
            col("id", Integer, false),
            col("code", Text, false),
            col("contact_id", Text, false),
            col("account_id", Text, false),
            col("field", Text, false),
            col("base", Text, false),
            col("contact_value", Text, false),
            col("account_value", Text, false),
            col("opened_at", Integer, false),
            col("run_id", Integer, true),
            col("resolution", Text, true),
            col("closed_at", Integer, true),
        ],
        primary_key: &["id"],
    },
    StateTable {
        name: "pending_creates",
        columns: &[
            col("code", Text, false),
            col("side", Text, false),
            col("source_id", Text, false),
            col("fields", Text, false),
            col("run_id", Integer, true),
            col("error", Text, true),
            col("failure_count", Integer, false),
            col("parked", Integer, false),
            col("updated_at", Integer, false),
            col("record_id", Text, true),
        ],
        primary_key: &["code", "side", "source_id"],
    },
    StateTable {
        name: "refused_requests",
        columns: &[
            col("code", Text, false),
            col("contact_id", Text, false),
            col("error", Text, false),
            col("run_id", Integer, true),
            col("failure_count", Integer, false),
            col("parked", Integer, false),
            col("updated_at", Integer, false),
        ],
        primary_key: &["code", "contact_id"],
    },
    StateTable {
        name: "pending_links",
        columns: &[
            col("code", Text, false),
            col("contact_id", Text, false),
            col("account_id", Text, false),
            col("tier", Integer, true),
            col("error", Text, true),
            col("failure_count", Integer, false),
            col("parked", Integer, false),
            col("updated_at", Integer, false),
        ],
        primary_key: &["code", "contact_id"],
    },
    StateTable {
        name: "unlinked_pairs",
        columns: &[
            col("code", Text, false),
            col("contact_id", Text, false),
            col("account_id", Text, false),
        ],
        primary_key: &["code", "contact_id", "account_id"],
    },
    StateTable {
        name: "contact_deleted",
        columns: &[col("code", Text, false), col("account_id", Text, false)],
        primary_key: &["code", "account_id"],
    },
    StateTable {
        name: "codes_lost",
        columns: &[col("code", Text, false), col("contact_id", Text, false)],
        primary_key: &["code", "contact_id"],
    },
    StateTable {
        name: "contact_companies",
        columns: &[
            col("contact_id", Text, false),
            col("company_id", Text, false),
        ],
        primary_key: &["contact_id"],
    },
    StateTable {
        name: "ambiguities",
        columns: &[col("code", Text, false), col("ambiguities", Text, false)],
        primary_key: &["code"],
    },
];

const fn col(name: &'static str, column_type: ColumnType, nullable: bool) -> Column {
    Column {
        name,
        column_type,
        nullable,
    }
}

/// The part of its run an intent batch or a create batch belongs to (R18): a run in
/// ranges stores the intents of a range while the links of the range before are being
/// stored, and a run stores the record of a batch of creates while the batch before is
/// being linked; each commit clears its own part's batches only. Batches stored before
/// are part 0.
const MIGRATION_12_BATCH_PARTS: &str = "
ALTER TABLE intent_batches ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pending_create_batches ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
";

/// The id a create was sent with, where its connector lets Tandem choose it (R18).
const MIGRATION_11_CREATED_IDS: &str = "
ALTER TABLE pending_creates ADD COLUMN record_id TEXT;
";

/// Content hashes packed in pages of about 64 entries (`sqlite/hash_pages.rs`): a
/// first sync of 1M partners stored 2.18M hash rows, a third of its state writer's
/// time. The rows are packed by `hash_pages::pack_hash_rows` after this SQL, which
/// drops `record_hashes`.
pub(super) const MIGRATION_10_HASH_PAGES: &str = "
CREATE TABLE record_hash_pages (
    scope    INTEGER NOT NULL,
    first_id TEXT NOT NULL,
    entries  INTEGER NOT NULL,
    rechecks INTEGER NOT NULL,
    page     BLOB NOT NULL,
    PRIMARY KEY (scope, first_id)
) STRICT;
CREATE INDEX record_hash_pages_recheck ON record_hash_pages (scope) WHERE rechecks > 0;
";

/// Creates written down before they are sent (R18) as one record per batch, as
/// intents are: a first sync sends hundreds of thousands, and a pending row each,
/// inserted and deleted again, cost about a second for 180,000. `creates` is a JSON
/// list of pending creates.
const MIGRATION_9_CREATE_BATCHES: &str = "
CREATE TABLE pending_create_batches (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  INTEGER NOT NULL,
    creates TEXT NOT NULL
) STRICT;
";

/// The compact state (issue 17). Baselines and intent batches are stored in a binary
/// form (`codec`) instead of JSON: their columns take any type, so rows written before
/// keep their JSON text, read as before, and are rewritten in the new form when they
/// next change. The log stores the entries a run makes for one pair at one time (a
/// new link and its first update, a create and its link) as one row: the second
/// entry's action, source and details in the `next_` columns, its id one above the
/// row's (ids are given by the store, which skips it). Link counts per code are kept
/// in a table instead of counted on every run.
const MIGRATION_8_COMPACT: &str = "
CREATE TABLE links_v8 (
    code            TEXT NOT NULL,
    contact_id      TEXT NOT NULL,
    account_id      TEXT NOT NULL,
    baseline        ANY NOT NULL,
    contact_version TEXT,
    account_version TEXT,
    last_error      TEXT,
    failure_count   INTEGER NOT NULL DEFAULT 0,
    linked_at       INTEGER NOT NULL,
    synced_at       INTEGER NOT NULL,
    parked          INTEGER NOT NULL DEFAULT 0,
    intent          TEXT,
    PRIMARY KEY (code, contact_id),
    UNIQUE (code, account_id)
) STRICT;
INSERT INTO links_v8 (code, contact_id, account_id, baseline, contact_version, account_version,
                      last_error, failure_count, linked_at, synced_at, parked, intent)
SELECT code, contact_id, account_id, baseline, contact_version, account_version,
       last_error, failure_count, linked_at, synced_at, parked, intent
FROM links ORDER BY code, contact_id;
DROP TABLE links;
ALTER TABLE links_v8 RENAME TO links;
CREATE INDEX links_parked ON links (code, contact_id) WHERE parked <> 0;
CREATE INDEX links_intent ON links (code, contact_id) WHERE intent IS NOT NULL;

CREATE TABLE link_counts (
    code  TEXT NOT NULL PRIMARY KEY,
    links INTEGER NOT NULL
) WITHOUT ROWID, STRICT;
INSERT INTO link_counts (code, links) SELECT code, COUNT(*) FROM links GROUP BY code;

CREATE TABLE intent_batches_v8 (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    links  ANY NOT NULL
) STRICT;
INSERT INTO intent_batches_v8 (id, run_id, links) SELECT id, run_id, links FROM intent_batches;
DROP TABLE intent_batches;
ALTER TABLE intent_batches_v8 RENAME TO intent_batches;

-- Content hashes by scope number instead of by connector and kind names, repeated on
-- two million rows and compared at every step down the tree; with the hash of a
-- record's match keys as the run that stored its content hash read it (NULL or 0:
-- unknown), so that an edit that leaves them does not wake matching.
CREATE TABLE scopes (
    id        INTEGER PRIMARY KEY,
    connector TEXT NOT NULL,
    kind      TEXT NOT NULL,
    UNIQUE (connector, kind)
) STRICT;
INSERT INTO scopes (connector, kind)
SELECT DISTINCT connector, kind FROM record_hashes ORDER BY connector, kind;
CREATE TABLE record_hashes_v8 (
    scope      INTEGER NOT NULL,
    id         TEXT NOT NULL,
    hash       INTEGER NOT NULL,
    match_keys INTEGER,
    PRIMARY KEY (scope, id)
) WITHOUT ROWID, STRICT;
INSERT INTO record_hashes_v8 (scope, id, hash)
SELECT s.id, r.id, r.hash FROM record_hashes r
JOIN scopes s ON s.connector = r.connector AND s.kind = r.kind
ORDER BY s.id, r.id;
DROP TABLE record_hashes;
ALTER TABLE record_hashes_v8 RENAME TO record_hashes;
CREATE INDEX record_hashes_recheck ON record_hashes (scope) WHERE hash = 0;

ALTER TABLE interactions ADD COLUMN next_action TEXT;
ALTER TABLE interactions ADD COLUMN next_source TEXT;
ALTER TABLE interactions ADD COLUMN next_details TEXT;
";

/// Intents stored one record per batch of links (R18): a first sync that writes a
/// million pairs stores 50 records before its writes, not a million rows twice.
const MIGRATION_7_INTENT_BATCHES: &str = "
CREATE TABLE intent_batches (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    links  TEXT NOT NULL
) STRICT;
";

/// Pending creates, refused requests and pending links each get their own table: they
/// shared `pending_creates`, told apart by `side = 'link'` and by empty `fields`.
const MIGRATION_6_PENDING_SPLIT: &str = "
CREATE TABLE refused_requests (
    code          TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    error         TEXT NOT NULL,
    run_id        INTEGER,
    failure_count INTEGER NOT NULL DEFAULT 0,
    parked        INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (code, contact_id)
) WITHOUT ROWID, STRICT;

INSERT INTO refused_requests
SELECT code, source_id, COALESCE(error, ''), run_id, failure_count, parked, updated_at
FROM pending_creates WHERE side = 'account' AND fields = '{}';
DELETE FROM pending_creates WHERE side = 'account' AND fields = '{}';

CREATE TABLE pending_links (
    code          TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    tier          INTEGER,
    error         TEXT,
    failure_count INTEGER NOT NULL DEFAULT 0,
    parked        INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (code, contact_id)
) WITHOUT ROWID, STRICT;

-- `tier` is NULL for a pair linked by `tandem link`.
INSERT INTO pending_links
SELECT code, source_id, json_extract(fields, '$.account_id'),
       CASE WHEN json_extract(fields, '$.by') = 'operator' THEN NULL
            ELSE COALESCE(CAST(json_extract(fields, '$.tier') AS INTEGER), 0) END,
       error, failure_count, parked, updated_at
FROM pending_creates WHERE side = 'link' AND json_extract(fields, '$.account_id') IS NOT NULL;
DELETE FROM pending_creates WHERE side = 'link';
";

/// Durable intents (R18): a link stored before a run writes to its records carries
/// what it is about to write, until the writes landed.
const MIGRATION_5_INTENTS: &str = "
ALTER TABLE links ADD COLUMN intent TEXT;

-- Few links have an unfinished intent (a run cut short, a failed write): a partial
-- index lists them without a scan.
CREATE INDEX links_intent ON links (code, contact_id) WHERE intent IS NOT NULL;

-- Accounts whose contact the user deleted (R12): no new contact is created for them
-- (R6) unless asked with `tandem create-contact`.
CREATE TABLE contact_deleted (
    code       TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (code, account_id)
) STRICT, WITHOUT ROWID;

-- Codes a contact lost (R13, an unlink) that are still to be taken off its
-- business-relation field (R9): while it lists them, they are not requests (R5).
CREATE TABLE codes_lost (
    code       TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    PRIMARY KEY (code, contact_id)
) STRICT, WITHOUT ROWID;
";

/// Fingerprints of scopes that did not change since the end of the last run, and a
/// quick way to see whether a scope has records to look at again.
const MIGRATION_4_FINGERPRINTS: &str = "
CREATE TABLE fingerprints (
    connector   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (connector, kind)
) WITHOUT ROWID, STRICT;

-- Records marked to be looked at again (hash 0) are few: a partial index finds them
-- without a scan.
CREATE INDEX record_hashes_recheck ON record_hashes (connector, kind) WHERE hash = 0;

-- The ambiguous matches of each relation as its last matching found them, reported
-- again while nothing of the relation changes (and no matching runs).
CREATE TABLE ambiguities (
    code        TEXT NOT NULL PRIMARY KEY,
    ambiguities TEXT NOT NULL
) WITHOUT ROWID, STRICT;
";

const MIGRATION_1_INITIAL: &str = "
CREATE TABLE links (
    code            TEXT NOT NULL,
    contact_id      TEXT NOT NULL,
    account_id      TEXT NOT NULL,
    baseline        TEXT NOT NULL,
    contact_version TEXT,
    account_version TEXT,
    last_error      TEXT,
    failure_count   INTEGER NOT NULL DEFAULT 0,
    linked_at       INTEGER NOT NULL,
    synced_at       INTEGER NOT NULL,
    PRIMARY KEY (code, contact_id),
    UNIQUE (code, account_id)
) STRICT;

CREATE TABLE record_hashes (
    connector TEXT NOT NULL,
    kind      TEXT NOT NULL,
    id        TEXT NOT NULL,
    hash      INTEGER NOT NULL,
    PRIMARY KEY (connector, kind, id)
) WITHOUT ROWID, STRICT;

CREATE TABLE cursors (
    connector TEXT NOT NULL,
    kind      TEXT NOT NULL,
    cursor    TEXT NOT NULL,
    PRIMARY KEY (connector, kind)
) WITHOUT ROWID, STRICT;

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    mode        TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    status      TEXT NOT NULL,
    summary     TEXT
) STRICT;
";

/// Parked links (R17), the interaction log (R11), the conflict queue (R15), pending
/// creates (R5, R6) and the company of each person contact (R3).
const MIGRATION_3_UNLINKED_PAIRS: &str = "
-- Pairs an operator unlinked: match rules must not link them again.
CREATE TABLE unlinked_pairs (
    code       TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (code, contact_id, account_id)
) STRICT, WITHOUT ROWID;
";

const MIGRATION_2_BUSINESS_RULES: &str = "
ALTER TABLE links ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;

-- Few links are parked: a partial index lists them without a scan, and costs nothing
-- for the others.
CREATE INDEX links_parked ON links (code, contact_id) WHERE parked <> 0;

-- `begin_run` looks for runs a dead process left running.
CREATE INDEX runs_running ON runs (id) WHERE status = 'running';

CREATE TABLE interactions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    run_id     INTEGER,
    contact_id TEXT NOT NULL,
    code       TEXT NOT NULL,
    account_id TEXT,
    action     TEXT NOT NULL,
    source     TEXT NOT NULL,
    details    TEXT NOT NULL
) STRICT;

CREATE INDEX interactions_by_contact ON interactions (contact_id, id);

CREATE TABLE conflicts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    code          TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    field         TEXT NOT NULL,
    base          TEXT NOT NULL,
    contact_value TEXT NOT NULL,
    account_value TEXT NOT NULL,
    opened_at     INTEGER NOT NULL,
    run_id        INTEGER,
    resolution    TEXT,
    closed_at     INTEGER
) STRICT;

-- At most one open conflict per pair and field; closed ones are history.
CREATE UNIQUE INDEX conflicts_open ON conflicts (code, contact_id, field)
    WHERE closed_at IS NULL;

CREATE TABLE pending_creates (
    code          TEXT NOT NULL,
    side          TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    fields        TEXT NOT NULL,
    run_id        INTEGER,
    error         TEXT,
    failure_count INTEGER NOT NULL DEFAULT 0,
    parked        INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (code, side, source_id)
) STRICT;

CREATE TABLE contact_companies (
    contact_id TEXT NOT NULL PRIMARY KEY,
    company_id TEXT NOT NULL
) WITHOUT ROWID, STRICT;
";

/// How many ids go into one `IN (...)` lookup; well under SQLite's variable limit.
const LOOKUP_CHUNK: usize = 500;

const LINK_COLUMNS: &str = "code, contact_id, account_id, baseline, contact_version, \
                            account_version, last_error, failure_count, linked_at, synced_at, \
                            parked, intent";

/// Stores a new link; a link of the same (code, contact) is left to [`UPDATE_LINK`].
/// Inserting and updating are two statements so that the store knows which one it
/// did: it keeps the count of links per code (`link_counts`).
const INSERT_LINK: &str = "
INSERT INTO links (code, contact_id, account_id, baseline, contact_version, account_version,
                   last_error, failure_count, linked_at, synced_at, parked, intent)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
ON CONFLICT (code, contact_id) DO NOTHING";

/// Refreshes a link whose account did not change. Leaving `account_id` out of the
/// `SET` spares the (code, account) index on the common path. Same parameters.
const UPDATE_LINK: &str = "
UPDATE links SET
    baseline = ?4,
    contact_version = ?5,
    account_version = ?6,
    last_error = ?7,
    failure_count = ?8,
    linked_at = ?9,
    synced_at = ?10,
    parked = ?11,
    intent = ?12
WHERE code = ?1 AND contact_id = ?2 AND account_id = ?3";

/// Replaces a link whose contact now has another account under the same code: what
/// [`UPDATE_LINK`] leaves alone. Same parameters.
const MOVE_LINK: &str = "
UPDATE links SET
    account_id = ?3,
    baseline = ?4,
    contact_version = ?5,
    account_version = ?6,
    last_error = ?7,
    failure_count = ?8,
    linked_at = ?9,
    synced_at = ?10,
    parked = ?11,
    intent = ?12
WHERE code = ?1 AND contact_id = ?2";

/// The number of the scope `?1`, `?2` (connector, kind): none for a scope that never
/// had a hash.
const SCOPE_ID: &str = "(SELECT id FROM scopes WHERE connector = ?1 AND kind = ?2)";

const SET_CURSOR: &str = "
INSERT INTO cursors (connector, kind, cursor) VALUES (?1, ?2, ?3)
ON CONFLICT (connector, kind) DO UPDATE SET cursor = excluded.cursor";

// Lookups go through the (code, contact) and (code, account) indexes that R2 needs
// anyway, one code at a time: a third index on contact_id would slow every insert.
static LINKS_OF_CONTACTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {LINK_COLUMNS} FROM links WHERE code = ? AND contact_id IN ({})",
        placeholders(LOOKUP_CHUNK)
    )
});

static LINKS_OF_ACCOUNTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {LINK_COLUMNS} FROM links WHERE code = ? AND account_id IN ({})",
        placeholders(LOOKUP_CHUNK)
    )
});

/// The distinct codes, one index seek each rather than a scan of every link.
const CODES: &str = "
WITH RECURSIVE codes (code) AS (
    SELECT min(code) FROM links
    UNION ALL
    SELECT (SELECT min(code) FROM links WHERE code > codes.code) FROM codes
    WHERE codes.code IS NOT NULL
)
SELECT code FROM codes WHERE code IS NOT NULL";

/// How a process holds the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Alone: for commands that write (`sync`).
    Exclusive,
    /// Alongside other shared holders, never alongside an exclusive one: for commands
    /// that only read (`plan`, status). Writes are not refused, but two shared holders
    /// writing at once would wait on each other.
    Shared,
}

/// The SQLite [`StateStore`].
///
/// The lock on `<path>.lock` is taken before the database is opened and held until
/// the value is dropped, so two syncs can never interleave their batches.
#[derive(Debug)]
pub struct SqliteState {
    // Fields drop in order: the checkpointer stops, then the database is closed (and
    // its WAL checkpointed) before the lock is released.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    path: PathBuf,
    /// `None` for an in-memory state, which no other process can see.
    lock: Option<File>,
}

/// Copies the WAL into the database file on a thread and connection of its own, after
/// each commit, so that the writer does not: a first sync of a million partners spent
/// about 3 s of its state commits in checkpoints (docs/BENCHMARKS.md).
///
/// SQLite lets a passive checkpoint run beside the writer and readers, and copies only
/// committed pages. The writer keeps its own automatic checkpoint
/// (`wal_autocheckpoint`) as a backstop: it copies what this one has not (little, when
/// this one keeps up) and skips while this one runs. A checkpoint that fails here
/// is left to that backstop and to the checkpoint when the state is closed.
#[derive(Debug)]
struct Checkpointer {
    /// A pending nudge is enough: nudges while a checkpoint runs fold into one.
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// `None` when a second connection cannot be opened: the writer checkpoints alone.
    fn start(path: &Path) -> Option<Checkpointer> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).ok()?;
        conn.busy_timeout(Duration::from_secs(1)).ok()?;
        let (wake, nudges) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("tandem-checkpoint".to_owned())
            .spawn(move || {
                for () in nudges {
                    // (busy, frames in the WAL, frames copied): nothing to act on.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .ok()?;
        Some(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    fn nudge(&self) {
        if let Some(wake) = &self.wake {
            // Full: a checkpoint is already due, and will copy this commit too.
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Waits for a checkpoint under way: the writer's close then checkpoints the rest.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteState {
    /// Opens (creating it and its folder if needed) the state at `path`, locks it, and
    /// brings its schema up to date. Fails at once with [`StateError::Locked`] when
    /// another process holds a conflicting lock.
    ///
    /// Only a missing file is created, and whole: the schema is written to a temporary
    /// file renamed into place, so a run cut short never leaves an empty state behind.
    /// An existing file that is not a Tandem state (empty, not SQLite, or SQLite with
    /// other tables) is refused with [`StateError::NotAState`] and left as it is.
    pub fn open(path: &Path, mode: LockMode) -> Result<SqliteState, StateError> {
        let shown = path.display().to_string();
        let open_error = |message: String| StateError::Open {
            path: shown.clone(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| {
                open_error(format!(
                    "cannot create the folder {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let lock = lock(path, mode)?;
        match fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(StateError::NotAState {
                    path: shown,
                    reason: "the file is empty (0 bytes)".to_owned(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path, &shown)?,
            Err(e) => return Err(open_error(e.to_string())),
        }
        // No SQLITE_OPEN_URI: the path is a file name, whatever it looks like. No
        // SQLITE_OPEN_CREATE: the file exists now, and one that went away in between
        // must not come back empty.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|e| open_error(e.to_string()))?;
        // Before `configure`, which changes the file (journal mode).
        check_tandem_schema(&conn, &shown)?;
        configure(&conn).map_err(|e| open_error(e.to_string()))?;
        migrate(&mut conn, &shown)?;
        let checkpointer = (mode == LockMode::Exclusive)
            .then(|| Checkpointer::start(path))
            .flatten();
        Ok(SqliteState {
            checkpointer,
            conn,
            path: path.to_owned(),
            lock: Some(lock),
        })
    }

    /// Opens the state at `path` if the file exists, like [`SqliteState::open`];
    /// otherwise returns an empty state in memory, creating no file or folder, for
    /// commands that must not leave a state behind (`plan`, status, ...). Its
    /// [`path`](SqliteState::path) is where the file would be.
    pub fn open_existing(path: &Path, mode: LockMode) -> Result<SqliteState, StateError> {
        let shown = path.display().to_string();
        match fs::metadata(path) {
            Ok(_) => SqliteState::open(path, mode),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SqliteState::stand_in(path),
            Err(e) => Err(StateError::Open {
                path: shown,
                message: e.to_string(),
            }),
        }
    }

    /// An empty state in memory standing in for the state at `location`, which does not
    /// exist yet: reads find nothing, and nothing is created anywhere.
    pub(crate) fn stand_in(location: &Path) -> Result<SqliteState, StateError> {
        let shown = location.display().to_string();
        let open_error = |message: String| StateError::Open {
            path: shown.clone(),
            message: format!("cannot create an empty state in memory: {message}"),
        };
        let mut conn = Connection::open_in_memory().map_err(|e| open_error(e.to_string()))?;
        configure(&conn).map_err(|e| open_error(e.to_string()))?;
        migrate(&mut conn, &shown)?;
        Ok(SqliteState {
            checkpointer: None,
            conn,
            path: location.to_owned(),
            lock: None,
        })
    }

    /// Opens the state named by a config url, `sqlite://<path>`; a relative path is
    /// taken from `base_dir` (usually the config file's folder).
    pub fn open_url(url: &str, base_dir: &Path, mode: LockMode) -> Result<SqliteState, StateError> {
        SqliteState::open(&url_path(url, base_dir)?, mode)
    }

    /// [`SqliteState::open_existing`] for a config url: an existing state is opened
    /// with [`LockMode::Shared`]; a missing one is an empty state in memory, and no file,
    /// lock file or folder is created.
    pub fn open_url_existing(url: &str, base_dir: &Path) -> Result<SqliteState, StateError> {
        SqliteState::open_existing(&url_path(url, base_dir)?, LockMode::Shared)
    }

    /// The database file; for a state in memory, where the file would be.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the state lives in memory only (see [`SqliteState::open_existing`]).
    pub fn is_in_memory(&self) -> bool {
        // A state opened read-only has a file but holds no lock.
        self.lock.is_none() && self.conn.path().is_none_or(str::is_empty)
    }

    /// What `pick` takes from the hash and match keys stored for each of `ids` in
    /// `scope`; keys `None` where unknown (0 is stored for keys a run did not know).
    fn stored_of<T>(
        &self,
        scope: &Scope,
        ids: &[&str],
        pick: impl Fn(u64, Option<u64>) -> Option<T>,
    ) -> Result<HashMap<String, T>, StateError> {
        match known_scope(&self.conn, scope)? {
            Some(number) => hash_pages::lookup(&self.conn, number, ids, |hash, keys| {
                pick(hash, keys.filter(|k| *k != 0))
            }),
            None => Ok(HashMap::new()),
        }
    }

    /// The codes that have links.
    fn codes(&self) -> Result<Vec<String>, StateError> {
        self.conn
            .prepare_cached(CODES)
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .map_err(sql_error(READING_LINKS))
    }

    /// Links whose contact (or account) is in `ids`, under any of `codes`, by running
    /// `sql` (`code = ? AND <id> IN (...)`) per chunk of ids and code. Ordered by id,
    /// then code.
    fn links_by_ids(
        &self,
        sql: &str,
        codes: &[String],
        ids: &[&str],
        id_of: fn(&Link) -> &str,
    ) -> Result<Vec<Link>, StateError> {
        let mut ids = ids.to_vec();
        // Sorted ids walk the index in order; duplicates would return a link twice.
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        if ids.is_empty() || codes.is_empty() {
            return Ok(out);
        }
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(sql_error(READING_LINKS))?;
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let start = out.len();
            for code in codes {
                // Padding the last chunk with a repeated id keeps one statement for
                // every chunk; `IN` ignores the duplicates.
                let padding = iter::repeat(chunk[chunk.len() - 1]);
                let values = chunk.iter().copied().chain(padding).take(LOOKUP_CHUNK);
                let params = iter::once(code.as_str()).chain(values);
                query_links(&mut stmt, params_from_iter(params), &mut out)?;
            }
            // Chunks come in id order, so sorting within each orders the whole.
            out[start..].sort_unstable_by(|a, b| {
                (id_of(a), a.code.as_str()).cmp(&(id_of(b), b.code.as_str()))
            });
        }
        Ok(out)
    }
}

const READING_LINKS: &str = "reading links";

impl SqliteState {
    /// Applies `batch` in one transaction ([`StateStore::commit`]).
    fn commit_batch(&mut self, batch: &StateBatch) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        // IMMEDIATE takes the write lock up front instead of failing halfway through.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error("starting a transaction"))?;
        delete_links(&tx, &batch.delete_links)?;
        upsert_links(&tx, &batch.upsert_links)?;
        delete_hashes(&tx, &batch.delete_hashes)?;
        set_hashes(&tx, &batch.set_hashes, &batch.set_match_keys)?;
        set_cursors(&tx, &batch.set_cursors)?;
        set_fingerprints(&tx, &batch.set_fingerprints)?;
        set_ambiguities(&tx, &batch.set_ambiguities)?;
        append_interactions(&tx, &batch.interactions)?;
        upsert_conflicts(&tx, &batch.upsert_conflicts)?;
        resolve_conflicts(&tx, &batch.resolve_conflicts)?;
        close_conflicts(&tx, &batch.close_conflicts)?;
        upsert_pending(&tx, &batch.upsert_pending)?;
        delete_pending(&tx, &batch.delete_pending)?;
        store_create_batches(
            &tx,
            &batch.pending_create_batches,
            &batch.clear_pending_create_batches,
        )?;
        upsert_refused(&tx, &batch.upsert_refused)?;
        delete_by_code_and_contact(&tx, "refused_requests", &batch.delete_refused)?;
        delete_by_code_and_contact(&tx, "pending_links", &batch.delete_pending_links)?;
        store_intent_batches(&tx, &batch.intent_batches, &batch.clear_intent_batches)?;
        set_companies(&tx, &batch.set_companies)?;
        set_unlinked_pairs(&tx, &batch.unlinked_pairs)?;
        set_contact_deleted(&tx, &batch.contact_deleted)?;
        set_codes_lost(&tx, &batch.codes_lost)?;
        // Any early return above drops `tx`, which rolls the whole batch back.
        tx.commit().map_err(sql_error("committing a batch"))?;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.nudge();
        }
        Ok(())
    }
}

impl StateStore for SqliteState {
    /// The database file; for a state in memory, where the file would be.
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn exists(&self) -> bool {
        !self.is_in_memory()
    }

    /// Whether another process holds the lock file alone.
    fn writer_active(&self) -> bool {
        self.lock_held_by_writer()
    }

    /// Ordered by contact id, then code.
    fn links_of_contacts(&self, contact_ids: &[&str]) -> Result<Vec<Link>, StateError> {
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let codes = self.codes()?;
        self.links_by_ids(&LINKS_OF_CONTACTS, &codes, contact_ids, |link| {
            &link.contact_id
        })
    }

    /// Ordered by account id.
    fn links_of_accounts(&self, code: &str, account_ids: &[&str]) -> Result<Vec<Link>, StateError> {
        let codes = [code.to_owned()];
        self.links_by_ids(&LINKS_OF_ACCOUNTS, &codes, account_ids, |link| {
            &link.account_id
        })
    }

    fn links(&self, code: Option<&str>) -> Result<Vec<Link>, StateError> {
        let filter = if code.is_some() {
            "WHERE code = ?1"
        } else {
            ""
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LINK_COLUMNS} FROM links {filter} ORDER BY code, contact_id"
            ))
            .map_err(sql_error(READING_LINKS))?;
        let mut out = Vec::new();
        query_links(&mut stmt, params_from_iter(code), &mut out)?;
        let in_flight = intent_batch_links(&self.conn)?;
        Ok(overlay(out, in_flight, |l| {
            code.is_none_or(|c| l.code == c)
        }))
    }

    fn linked_ids(&self, code: &str) -> Result<(HashSet<String>, HashSet<String>), StateError> {
        const ACTION: &str = "reading linked ids";
        let n = usize::try_from(self.count_links(code)?).unwrap_or(0);
        let mut contacts = HashSet::with_capacity(n);
        let mut accounts = HashSet::with_capacity(n);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT contact_id, account_id FROM links WHERE code = ?1")
            .map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([code]).map_err(sql_error(ACTION))?;
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            contacts.insert(row.get(0).map_err(sql_error(ACTION))?);
            accounts.insert(row.get(1).map_err(sql_error(ACTION))?);
        }
        Ok((contacts, accounts))
    }

    fn count_links(&self, code: &str) -> Result<u64, StateError> {
        const ACTION: &str = "counting links";
        let n: i64 = self
            .conn
            .prepare_cached("SELECT links FROM link_counts WHERE code = ?1")
            .and_then(|mut stmt| stmt.query_row([code], |row| row.get(0)).optional())
            .map_err(sql_error(ACTION))?
            .unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn parked_links(&self) -> Result<Vec<Link>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LINK_COLUMNS} FROM links WHERE parked <> 0 ORDER BY code, contact_id"
            ))
            .map_err(sql_error(READING_LINKS))?;
        let mut out = Vec::new();
        query_links(&mut stmt, [], &mut out)?;
        Ok(out)
    }

    fn links_with_intent(&self) -> Result<Vec<Link>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LINK_COLUMNS} FROM links WHERE intent IS NOT NULL \
                 ORDER BY code, contact_id"
            ))
            .map_err(sql_error(READING_LINKS))?;
        let mut out = Vec::new();
        query_links(&mut stmt, [], &mut out)?;
        let in_flight = intent_batch_links(&self.conn)?;
        Ok(overlay(out, in_flight, |_| true))
    }

    fn interactions(&self, contact_id: &str, limit: usize) -> Result<Vec<Interaction>, StateError> {
        const ACTION: &str = "reading the interaction log";
        // The newest `limit` rows by the (contact_id, id) index, then oldest first; a
        // row holds one or two entries, so `limit` rows hold at least `limit` entries.
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} \
                 FROM (SELECT * FROM interactions WHERE contact_id = ?1 \
                       ORDER BY id DESC LIMIT ?2) \
                 ORDER BY id"
            ))
            .map_err(sql_error(ACTION))?;
        let rows_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(params![contact_id, rows_limit])
            .map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            out.extend(log_entries(row, ACTION)?);
        }
        // The newest `limit` entries.
        let extra = out.len().saturating_sub(limit);
        out.drain(..extra);
        Ok(out)
    }

    fn conflicts(&self, open_only: bool) -> Result<Vec<ConflictEntry>, StateError> {
        const ACTION: &str = "reading conflicts";
        let filter = if open_only {
            "WHERE closed_at IS NULL"
        } else {
            ""
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, code, contact_id, account_id, field, base, contact_value, \
                 account_value, opened_at, run_id, resolution, closed_at \
                 FROM conflicts {filter} ORDER BY id"
            ))
            .map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            let id: i64 = get(row, 0, ACTION)?;
            let value = |index: usize, what: &str| -> Result<Option<Value>, StateError> {
                get::<Option<String>>(row, index, ACTION)?
                    .map(|text| {
                        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                            what: format!("{what} of conflict {id}"),
                            message: e.to_string(),
                        })
                    })
                    .transpose()
            };
            let required = |index: usize, what: &str| -> Result<Value, StateError> {
                value(index, what)?.ok_or_else(|| StateError::Corrupt {
                    what: format!("{what} of conflict {id}"),
                    message: "missing".to_owned(),
                })
            };
            out.push(ConflictEntry {
                id,
                code: get(row, 1, ACTION)?,
                contact_id: get(row, 2, ACTION)?,
                account_id: get(row, 3, ACTION)?,
                field: get(row, 4, ACTION)?,
                base: required(5, "base value")?,
                contact_value: required(6, "contact value")?,
                account_value: required(7, "account value")?,
                opened_at: Timestamp(get(row, 8, ACTION)?),
                run_id: get(row, 9, ACTION)?,
                resolution: value(10, "resolution")?,
                closed_at: get::<Option<i64>>(row, 11, ACTION)?.map(Timestamp),
            });
        }
        Ok(out)
    }

    fn pending_creates(&self) -> Result<Vec<PendingCreate>, StateError> {
        const ACTION: &str = "reading pending creates";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT code, side, source_id, fields, run_id, error, failure_count, parked, \
                 updated_at, record_id FROM pending_creates ORDER BY code, side, source_id",
            )
            .map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            let code: String = get(row, 0, ACTION)?;
            let side: String = get(row, 1, ACTION)?;
            let source_id: String = get(row, 2, ACTION)?;
            let what = || format!("the pending {code} {side} create from {source_id}");
            let fields: String = get(row, 3, ACTION)?;
            let fields = serde_json::from_str(&fields).map_err(|e| StateError::Corrupt {
                what: format!("fields of {}", what()),
                message: e.to_string(),
            })?;
            let side = Side::parse(&side).ok_or_else(|| StateError::Corrupt {
                what: format!("side of {}", what()),
                message: "neither `contact` nor `account`".to_owned(),
            })?;
            out.push(PendingCreate {
                fields,
                run_id: get(row, 4, ACTION)?,
                error: get(row, 5, ACTION)?,
                failure_count: get(row, 6, ACTION)?,
                parked: get(row, 7, ACTION)?,
                updated_at: Timestamp(get(row, 8, ACTION)?),
                record_id: get(row, 9, ACTION)?,
                code,
                side,
                source_id,
            });
        }
        Ok(crate::pending::overlay_creates(
            out,
            create_batch_entries(&self.conn)?,
        ))
    }

    fn refused_requests(&self) -> Result<Vec<RefusedRequest>, StateError> {
        const ACTION: &str = "reading refused requests";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT code, contact_id, error, run_id, failure_count, parked, updated_at \
                 FROM refused_requests ORDER BY code, contact_id",
            )
            .map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            out.push(RefusedRequest {
                code: get(row, 0, ACTION)?,
                contact_id: get(row, 1, ACTION)?,
                error: get(row, 2, ACTION)?,
                run_id: get(row, 3, ACTION)?,
                failure_count: get(row, 4, ACTION)?,
                parked: get(row, 5, ACTION)?,
                updated_at: Timestamp(get(row, 6, ACTION)?),
            });
        }
        Ok(out)
    }

    fn pending_links(&self) -> Result<Vec<PendingLink>, StateError> {
        const ACTION: &str = "reading pending links";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT code, contact_id, account_id, tier, error, failure_count, parked, \
                 updated_at FROM pending_links ORDER BY code, contact_id",
            )
            .map_err(sql_error(ACTION))?;
        let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            let tier: Option<i64> = get(row, 3, ACTION)?;
            out.push(PendingLink {
                code: get(row, 0, ACTION)?,
                contact_id: get(row, 1, ACTION)?,
                account_id: get(row, 2, ACTION)?,
                by: tier.map_or(LinkedBy::Operator, |tier| LinkedBy::Match {
                    tier: usize::try_from(tier).unwrap_or(0),
                }),
                error: get(row, 4, ACTION)?,
                failure_count: get(row, 5, ACTION)?,
                parked: get(row, 6, ACTION)?,
                updated_at: Timestamp(get(row, 7, ACTION)?),
            });
        }
        Ok(out)
    }

    fn unlinked_pairs(&self, code: &str) -> Result<Vec<(String, String)>, StateError> {
        const ACTION: &str = "reading the pairs unlinked by hand";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT contact_id, account_id FROM unlinked_pairs WHERE code = ?1 \
                 ORDER BY contact_id, account_id",
            )
            .map_err(sql_error(ACTION))?;
        let rows = stmt
            .query_map([code], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sql_error(ACTION))?;
        rows.collect::<Result<_, _>>().map_err(sql_error(ACTION))
    }

    fn codes_lost(&self) -> Result<Vec<(String, String)>, StateError> {
        const ACTION: &str = "reading the codes contacts lost";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT code, contact_id FROM codes_lost ORDER BY code, contact_id")
            .map_err(sql_error(ACTION))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sql_error(ACTION))?;
        rows.collect::<Result<_, _>>().map_err(sql_error(ACTION))
    }

    fn contact_deleted(&self, code: &str) -> Result<HashSet<String>, StateError> {
        const ACTION: &str = "reading the accounts whose contact was deleted";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT account_id FROM contact_deleted WHERE code = ?1")
            .map_err(sql_error(ACTION))?;
        let rows = stmt
            .query_map([code], |row| row.get(0))
            .map_err(sql_error(ACTION))?;
        rows.collect::<Result<_, _>>().map_err(sql_error(ACTION))
    }

    fn company_of(&self, contact_id: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT company_id FROM contact_companies WHERE contact_id = ?1")
            .and_then(|mut stmt| stmt.query_row([contact_id], |row| row.get(0)).optional())
            .map_err(sql_error("reading the company of a contact"))
    }

    fn holds_companies(&self) -> Result<bool, StateError> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM contact_companies)")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(sql_error("reading whether any contact has a company"))
    }

    fn cursor(&self, scope: &Scope) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT cursor FROM cursors WHERE connector = ?1 AND kind = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![scope.connector, scope.kind.as_str()], |row| {
                    row.get(0)
                })
                .optional()
            })
            .map_err(sql_error("reading a cursor"))
    }

    fn hashes_of(&self, scope: &Scope, ids: &[&str]) -> Result<HashMap<String, u64>, StateError> {
        self.stored_of(scope, ids, |hash, _| Some(hash))
    }

    /// One page lookup for both: at a million records each id's page is read and
    /// decoded, and asking twice did it twice.
    fn hashes_and_keys_of(
        &self,
        scope: &Scope,
        ids: &[&str],
    ) -> Result<HashMap<String, (u64, Option<u64>)>, StateError> {
        self.stored_of(scope, ids, |hash, keys| Some((hash, keys)))
    }

    fn match_keys_of(
        &self,
        scope: &Scope,
        ids: &[&str],
    ) -> Result<HashMap<String, u64>, StateError> {
        self.stored_of(scope, ids, |_, keys| keys)
    }

    fn fingerprint(&self, scope: &Scope) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT fingerprint FROM fingerprints WHERE connector = ?1 AND kind = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![scope.connector, scope.kind.as_str()], |row| {
                    row.get(0)
                })
                .optional()
            })
            .map_err(sql_error("reading a fingerprint"))
    }

    fn ambiguities(&self, code: &str) -> Result<Option<serde_json::Value>, StateError> {
        let text = self.ambiguities_text(code)?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StateError::Corrupt {
                what: format!("ambiguous matches of {code}"),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    fn ambiguities_text(&self, code: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT ambiguities FROM ambiguities WHERE code = ?1")
            .and_then(|mut stmt| stmt.query_row([code], |row| row.get(0)).optional())
            .map_err(sql_error("reading ambiguous matches"))
    }

    fn has_rechecks(&self, scope: &Scope) -> Result<bool, StateError> {
        let Some(number) = known_scope(&self.conn, scope)? else {
            return Ok(false);
        };
        self.conn
            .prepare_cached("SELECT 1 FROM record_hash_pages WHERE scope = ?1 AND rechecks > 0")
            .and_then(|mut stmt| stmt.exists([number]))
            .map_err(sql_error("looking for records to look at again"))
    }

    fn rechecks(&self, scope: &Scope) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        if let Some(number) = known_scope(&self.conn, scope)? {
            hash_pages::each_entry(&self.conn, number, true, |id, hash, _| {
                if hash == hash_pages::RECHECK {
                    ids.push(id.to_owned());
                }
            })?;
        }
        Ok(ids)
    }

    fn reader(&self) -> Option<Box<dyn StateStore + Send>> {
        if self.is_in_memory() {
            return None;
        }
        let reader = SqliteState::open_read_only_at(&self.path).ok()??;
        Some(Box::new(reader))
    }

    fn hashes(&self, scope: &Scope) -> Result<StoredHashes, StateError> {
        let Some(number) = known_scope(&self.conn, scope)? else {
            return Ok(StoredHashes::default());
        };
        let mut out = StoredHashes::with_capacity(hash_pages::count(&self.conn, number)?);
        hash_pages::each_entry(&self.conn, number, false, |id, hash, _| {
            out.insert(id.into(), hash);
        })?;
        Ok(out)
    }

    /// Applies the batch in one transaction: deleted links, upserted links, deleted
    /// hashes, set hashes, cursors, interactions, upserted, resolved and closed
    /// conflicts, upserted and deleted pending creates, companies, in that order. R2 is
    /// checked link by link, so to move an account to another contact, delete its old
    /// link in the same batch.
    ///
    /// An upserted conflict is always open: it is inserted with its `opened_at` and
    /// `resolution` (its `closed_at` is ignored), or updates the open conflict of the
    /// same (code, contact, field), whose `opened_at` and resolution stay. Resolving a
    /// conflict that does not exist or is closed fails the batch with
    /// [`StateError::UnknownConflict`].
    fn commit(&mut self, batch: StateBatch) -> Result<(), StateError> {
        self.commit_batch(&batch)
    }

    fn commit_and_return(&mut self, batch: StateBatch) -> Result<StateBatch, StateError> {
        self.commit_batch(&batch).map(|()| batch)
    }

    fn unpack_intents(&mut self) -> Result<u64, StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error("starting a transaction"))?;
        let links = intent_batch_links(&tx)?;
        let mut unpacked = 0;
        for link in &links {
            match upsert_links(&tx, std::slice::from_ref(link)) {
                Ok(()) => unpacked += 1,
                // Another contact holds the account now: that link is the newer one.
                Err(StateError::AccountTaken { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        tx.execute("DELETE FROM intent_batches", [])
            .map_err(sql_error("forgetting intents taken up"))?;
        upsert_pending(&tx, &create_batch_entries(&tx)?)?;
        tx.execute("DELETE FROM pending_create_batches", [])
            .map_err(sql_error("forgetting creates taken up"))?;
        tx.commit()
            .map_err(sql_error("committing intents taken up"))?;
        Ok(unpacked)
    }

    /// Also marks every earlier run still `running` as `interrupted`: its process died
    /// without finishing it. Runs are begun under the exclusive lock, so none of them
    /// can really be running.
    fn begin_run(&mut self, mode: &str) -> Result<i64, StateError> {
        const ACTION: &str = "recording the start of a run";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error(ACTION))?;
        tx.prepare_cached("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
            .and_then(|mut stmt| stmt.execute([]))
            .map_err(sql_error(ACTION))?;
        let id = tx
            .prepare_cached(
                "INSERT INTO runs (mode, started_at, status) VALUES (?1, ?2, 'running')",
            )
            .and_then(|mut stmt| stmt.insert(params![mode, Timestamp::now().0]))
            .map_err(sql_error(ACTION))?;
        tx.commit().map_err(sql_error(ACTION))?;
        Ok(id)
    }

    fn finish_run(
        &mut self,
        run_id: i64,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<(), StateError> {
        const ACTION: &str = "recording the end of a run";
        let summary = summary.to_string();
        let updated = self
            .conn
            .prepare_cached(
                "UPDATE runs SET finished_at = ?2, status = ?3, summary = ?4 WHERE id = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![run_id, Timestamp::now().0, status, summary]))
            .map_err(sql_error(ACTION))?;
        if updated == 0 {
            return Err(StateError::Sqlite {
                action: ACTION,
                source: rusqlite::Error::QueryReturnedNoRows,
            });
        }
        Ok(())
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        const ACTION: &str = "reading runs";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, mode, started_at, finished_at, status, summary FROM runs \
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(sql_error(ACTION))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query([limit]).map_err(sql_error(ACTION))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
            let id: i64 = get(row, 0, ACTION)?;
            let summary = match get::<Option<String>>(row, 5, ACTION)? {
                None => serde_json::Value::Null,
                Some(text) => serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                    what: format!("summary of run {id}"),
                    message: e.to_string(),
                })?,
            };
            out.push(RunRecord {
                id,
                mode: get(row, 1, ACTION)?,
                started_at: Timestamp(get(row, 2, ACTION)?),
                finished_at: get::<Option<i64>>(row, 3, ACTION)?.map(Timestamp),
                status: get(row, 4, ACTION)?,
                summary,
            });
        }
        Ok(out)
    }

    fn schema_version(&self) -> Result<i64, StateError> {
        self.schema_version_of_file()
    }

    fn export_table(
        &self,
        table: &str,
        each: &mut dyn FnMut(Vec<StoredValue>) -> Result<(), StateError>,
    ) -> Result<u64, StateError> {
        self.export(table, each)
    }

    fn import_rows(&mut self, table: &str, rows: Vec<Vec<StoredValue>>) -> Result<(), StateError> {
        self.import(table, rows)
    }

    fn run(&self, id: i64) -> Result<Option<RunRecord>, StateError> {
        self.run_by_id(id)
    }

    fn run_interactions(
        &self,
        run_id: i64,
        limit: usize,
    ) -> Result<(Vec<Interaction>, u64), StateError> {
        self.interactions_of_run(run_id, limit)
    }
}

/// The file named by a config url, `sqlite://<path>`; a relative path is taken from
/// `base_dir`.
fn url_path(url: &str, base_dir: &Path) -> Result<PathBuf, StateError> {
    const SCHEME: &str = "sqlite://";
    let rest = url
        .get(..SCHEME.len())
        .filter(|scheme| scheme.eq_ignore_ascii_case(SCHEME))
        .map(|_| &url[SCHEME.len()..])
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| StateError::UnsupportedUrl {
            url: redact_url(url),
        })?;
    // `join` keeps an absolute path as it is.
    Ok(base_dir.join(rest))
}

fn sql_error(action: &'static str) -> impl Fn(rusqlite::Error) -> StateError {
    move |source| StateError::Sqlite { action, source }
}

fn get<T: FromSql>(row: &Row<'_>, index: usize, action: &'static str) -> Result<T, StateError> {
    row.get(index).map_err(sql_error(action))
}

fn placeholders(n: usize) -> String {
    let mut s = "?,".repeat(n);
    s.pop();
    s
}

/// Takes the lock on `<path>.lock`, without waiting.
fn lock(path: &Path, mode: LockMode) -> Result<File, StateError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| StateError::Open {
            path: path.display().to_string(),
            message: format!("cannot open the lock file {}: {e}", lock_path.display()),
        })?;
    let locked = match mode {
        LockMode::Exclusive => file.try_lock(),
        LockMode::Shared => file.try_lock_shared(),
    };
    match locked {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StateError::Locked {
            path: path.display().to_string(),
        }),
        Err(TryLockError::Error(e)) => Err(StateError::Open {
            path: path.display().to_string(),
            message: format!("cannot lock {}: {e}", lock_path.display()),
        }),
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // The lock file already keeps writers apart; this only covers shared holders
    // racing to set up a new file, so a long wait would just hide a stuck process.
    conn.busy_timeout(Duration::from_secs(1))?;
    // Takes effect only on a new file. 4 KiB, SQLite's default: a run that changes a
    // few records writes one page per B-tree it touches for each of them, to the WAL
    // and again at the checkpoint, so the page size is what a change costs. With 16 KiB
    // pages an incremental run of 1,000 changes over a million links took 0.31 s
    // instead of 0.24 s, while bulk commits gained little in a real initial sync
    // (docs/BENCHMARKS.md).
    conn.pragma_update(None, "page_size", 4096)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Big batches touch many pages: up to 16 MiB of cache (allocated only as
    // needed) instead of the 2 MiB default. 64 MiB made no run faster (a first sync
    // of 1M partners took as long, its commits are in key order) and was held to the
    // end of every big run (docs/BENCHMARKS.md).
    conn.pragma_update(None, "cache_size", -16384)?;
    // Reading through a memory map saves copying each page out of the OS cache:
    // reading a million links takes 40% less time. Only reads use it.
    conn.pragma_update(None, "mmap_size", 1 << 30)?;
    // A checkpoint every 64 MiB of WAL instead of every 4 MiB: a first sync writes
    // hundreds of MiB, and each checkpoint waits for the disk (fsync). 300k partners'
    // state rows took 6.6 and 4.2 s against 9.6 and 5.1 s (`state-floor`, alternated);
    // a small run checkpoints when the state is closed, as before.
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// Creates a new state at `path` (which does not exist): the schema is written to a
/// temporary file next to it, which is then renamed into place.
fn create(path: &Path, shown: &str) -> Result<(), StateError> {
    let open_error = |message: String| StateError::Open {
        path: shown.to_owned(),
        message,
    };
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".new-{}", std::process::id()));
    let temporary = PathBuf::from(name);
    let remove = |file: &Path| {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let _ = fs::remove_file(PathBuf::from(name));
        }
    };
    // A file of that name is what a process with this id left when it died.
    remove(&temporary);
    let created = (|| {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&temporary, flags)
            .map_err(|e| open_error(format!("cannot create {}: {e}", temporary.display())))?;
        configure(&conn).map_err(|e| open_error(e.to_string()))?;
        migrate(&mut conn, shown)?;
        // Closing checkpoints the write-ahead log into the file.
        conn.close()
            .map_err(|(_, e)| open_error(format!("cannot create {}: {e}", temporary.display())))?;
        File::open(&temporary)
            .and_then(|file| file.sync_all())
            .and_then(|()| fs::rename(&temporary, path))
            .map_err(|e| {
                open_error(format!(
                    "cannot move the new state {} into place: {e}",
                    temporary.display()
                ))
            })
    })();
    if created.is_err() {
        remove(&temporary);
    }
    created
}

/// Refuses a file that is not a Tandem state: not SQLite at all, or SQLite holding
/// tables without Tandem's schema version (another program's database). An SQLite
/// file without any table is taken as a new state.
fn check_tandem_schema(conn: &Connection, shown: &str) -> Result<(), StateError> {
    let not_a_state = |reason: String| StateError::NotAState {
        path: shown.to_owned(),
        reason,
    };
    let version = user_version(conn).map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => not_a_state("it is not an SQLite database".to_owned()),
        _ => StateError::Open {
            path: shown.to_owned(),
            message: e.to_string(),
        },
    })?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             ORDER BY name",
        )
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(sql_error("checking the state's schema"))?;
    let has = |name: &str| tables.iter().any(|t| t == name);
    if version == 0 && !tables.is_empty() {
        let mut shown_tables: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        if tables.len() > 5 {
            shown_tables.push("...");
        }
        return Err(not_a_state(format!(
            "it is an SQLite database of another program (tables {})",
            shown_tables.join(", ")
        )));
    }
    if version > 0 && !(has("links") && has("runs")) {
        return Err(not_a_state(format!(
            "it says schema version {version}, but lacks Tandem's tables"
        )));
    }
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies the migrations the file lacks, all in one transaction.
fn migrate(conn: &mut Connection, shown: &str) -> Result<(), StateError> {
    let known = MIGRATIONS.len() as i64;
    let open_error = |message: String| StateError::Open {
        path: shown.to_owned(),
        message,
    };
    let check = |found: i64| match found {
        found if found > known => Err(StateError::TooNew {
            path: shown.to_owned(),
            found,
            known,
        }),
        found if found < 0 => Err(open_error(format!("invalid schema version {found}"))),
        found => Ok(found),
    };
    let found = check(user_version(conn).map_err(|e| open_error(e.to_string()))?)?;
    if found == known {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| open_error(format!("cannot start the schema migration: {e}")))?;
    // Another process sharing the file may have migrated it while we waited.
    let found = check(user_version(&tx).map_err(|e| open_error(e.to_string()))?)?;
    for (step, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(migration.sql)
            .and_then(|()| migration.then.map_or(Ok(()), |then| then(&tx)))
            .map_err(|e| open_error(format!("schema migration {} failed: {e}", step + 1)))?;
    }
    tx.pragma_update(None, "user_version", known)
        .and_then(|()| tx.commit())
        .map_err(|e| open_error(format!("cannot finish the schema migration: {e}")))
}

fn query_links(
    stmt: &mut Statement<'_>,
    params: impl Params,
    out: &mut Vec<Link>,
) -> Result<(), StateError> {
    let mut rows = stmt.query(params).map_err(sql_error(READING_LINKS))?;
    while let Some(row) = rows.next().map_err(sql_error(READING_LINKS))? {
        out.push(link_from_row(row)?);
    }
    Ok(())
}

/// Reads a row selected with [`LINK_COLUMNS`].
fn link_from_row(row: &Row<'_>) -> Result<Link, StateError> {
    let code: String = get(row, 0, READING_LINKS)?;
    let contact_id: String = get(row, 1, READING_LINKS)?;
    let corrupt = |message: String| StateError::Corrupt {
        what: format!("baseline of the {code} link of contact {contact_id}"),
        message,
    };
    // The binary form since migration 8; JSON text in rows written before.
    let baseline = match row.get_ref(3).map_err(sql_error(READING_LINKS))? {
        ValueRef::Blob(bytes) => codec::decode_fields(bytes).map_err(corrupt)?,
        ValueRef::Text(text) => serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?,
        other => {
            return Err(corrupt(format!(
                "a baseline of type {:?}",
                other.data_type()
            )));
        }
    };
    Ok(Link {
        account_id: get(row, 2, READING_LINKS)?,
        baseline,
        contact_version: get(row, 4, READING_LINKS)?,
        account_version: get(row, 5, READING_LINKS)?,
        last_error: get(row, 6, READING_LINKS)?,
        failure_count: get(row, 7, READING_LINKS)?,
        linked_at: Timestamp(get(row, 8, READING_LINKS)?),
        synced_at: Timestamp(get(row, 9, READING_LINKS)?),
        parked: get(row, 10, READING_LINKS)?,
        intent: intent_from_row(row, &code, &contact_id)?,
        code,
        contact_id,
    })
}

fn intent_from_row(
    row: &Row<'_>,
    code: &str,
    contact_id: &str,
) -> Result<Option<Intent>, StateError> {
    let text: Option<String> = get(row, 11, READING_LINKS)?;
    text.map(|text| {
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            what: format!("intent of the {code} link of contact {contact_id}"),
            message: e.to_string(),
        })
    })
    .transpose()
}

fn delete_links(conn: &Connection, keys: &[(String, String)]) -> Result<(), StateError> {
    const ACTION: &str = "deleting links";
    if keys.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached("DELETE FROM links WHERE code = ?1 AND contact_id = ?2")
        .map_err(sql_error(ACTION))?;
    let mut counts = LinkCounts::default();
    for (code, contact_id) in keys {
        let deleted = stmt
            .execute([code, contact_id])
            .map_err(sql_error(ACTION))?;
        counts.add(code, -i64::try_from(deleted).unwrap_or(0));
    }
    counts.store(conn)
}

fn store_intent_batches(
    conn: &Connection,
    batches: &[IntentBatch],
    cleared: &[(i64, i64)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing intents";
    for batch in batches {
        let links = codec::encode_links(&batch.links);
        conn.prepare_cached("INSERT INTO intent_batches (run_id, part, links) VALUES (?1, ?2, ?3)")
            .and_then(|mut stmt| stmt.execute(params![batch.run_id, batch.part, links]))
            .map_err(sql_error(ACTION))?;
    }
    // By part: the batches of the run's later parts stay until their links are stored.
    for (run_id, part) in cleared {
        conn.prepare_cached("DELETE FROM intent_batches WHERE run_id = ?1 AND part = ?2")
            .and_then(|mut stmt| stmt.execute([run_id, part]))
            .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

/// `stored` links with the `in_flight` links of intent batches that `keep` accepts in
/// place of the stored link of the same (code, contact): what the links are once the
/// next run takes the batches up. Ordered by code and contact id.
pub(crate) fn overlay(
    stored: Vec<Link>,
    in_flight: Vec<Link>,
    keep: impl Fn(&Link) -> bool,
) -> Vec<Link> {
    if in_flight.is_empty() {
        return stored;
    }
    let mut by_key: std::collections::BTreeMap<(String, String), Link> = stored
        .into_iter()
        .map(|l| ((l.code.clone(), l.contact_id.clone()), l))
        .collect();
    for link in in_flight.into_iter().filter(|l| keep(l)) {
        by_key.insert((link.code.clone(), link.contact_id.clone()), link);
    }
    by_key.into_values().collect()
}

/// A link in an intent batch as stored before migration 8 (still read): a JSON array,
/// without the keys a million links would repeat, and times as milliseconds.
pub(crate) type PackedLink = (
    String,
    String,
    String,
    Fields,
    Option<String>,
    Option<String>,
    Option<String>,
    u32,
    bool,
    i64,
    i64,
    Option<Intent>,
);

pub(crate) fn unpack(p: PackedLink) -> Link {
    let (code, contact_id, account_id, baseline, contact_version, account_version) =
        (p.0, p.1, p.2, p.3, p.4, p.5);
    Link {
        code,
        contact_id,
        account_id,
        baseline,
        contact_version,
        account_version,
        last_error: p.6,
        failure_count: p.7,
        parked: p.8,
        linked_at: Timestamp(p.9),
        synced_at: Timestamp(p.10),
        intent: p.11,
    }
}

/// The links of every stored intent batch, oldest first.
fn intent_batch_links(conn: &Connection) -> Result<Vec<Link>, StateError> {
    const ACTION: &str = "reading intents";
    let mut stmt = conn
        .prepare_cached("SELECT run_id, links FROM intent_batches ORDER BY id")
        .map_err(sql_error(ACTION))?;
    let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
        let run_id: i64 = get(row, 0, ACTION)?;
        let corrupt = |message: String| StateError::Corrupt {
            what: format!("intents of run {run_id}"),
            message,
        };
        // The binary form since migration 8; a JSON array of packed links before.
        match row.get_ref(1).map_err(sql_error(ACTION))? {
            ValueRef::Blob(bytes) => out.extend(codec::decode_links(bytes).map_err(corrupt)?),
            ValueRef::Text(text) => {
                let links: Vec<PackedLink> =
                    serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?;
                out.extend(links.into_iter().map(unpack));
            }
            other => return Err(corrupt(format!("a batch of type {:?}", other.data_type()))),
        }
    }
    Ok(out)
}

fn upsert_links(conn: &Connection, links: &[Link]) -> Result<(), StateError> {
    const ACTION: &str = "storing links";
    if links.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached(INSERT_LINK)
        .map_err(sql_error(ACTION))?;
    let mut update = conn
        .prepare_cached(UPDATE_LINK)
        .map_err(sql_error(ACTION))?;
    let mut moved = conn.prepare_cached(MOVE_LINK).map_err(sql_error(ACTION))?;
    // One buffer for every baseline instead of an allocation per link.
    let mut baseline = Vec::with_capacity(1024);
    let mut counts = LinkCounts::default();
    for link in links {
        let corrupt = |message: String| StateError::Corrupt {
            what: format!(
                "baseline of the {} link of contact {}",
                link.code, link.contact_id
            ),
            message,
        };
        baseline.clear();
        codec::encode_fields(&mut baseline, &link.baseline);
        let intent = match &link.intent {
            Some(intent) => {
                Some(serde_json::to_string(intent).map_err(|e| corrupt(e.to_string()))?)
            }
            None => None,
        };
        let values = params![
            link.code,
            link.contact_id,
            link.account_id,
            baseline,
            link.contact_version,
            link.account_version,
            link.last_error,
            link.failure_count,
            link.linked_at.0,
            link.synced_at.0,
            link.parked,
            intent,
        ];
        let stored = insert.execute(values).and_then(|inserted| {
            if inserted > 0 {
                counts.add(&link.code, 1);
                return Ok(inserted);
            }
            match update.execute(values)? {
                0 => moved.execute(values),
                n => Ok(n),
            }
        });
        if let Err(source) = stored {
            return Err(account_taken(conn, link, source));
        }
    }
    counts.store(conn)
}

/// Links added (or, negative, removed) per code by one statement group, added to
/// `link_counts` at its end: one row per code instead of a count of every link.
#[derive(Default)]
struct LinkCounts(Vec<(String, i64)>);

impl LinkCounts {
    fn add(&mut self, code: &str, n: i64) {
        match self.0.iter_mut().find(|(c, _)| c == code) {
            Some((_, count)) => *count += n,
            None => self.0.push((code.to_owned(), n)),
        }
    }

    fn store(self, conn: &Connection) -> Result<(), StateError> {
        const ACTION: &str = "counting links";
        for (code, n) in self.0.into_iter().filter(|(_, n)| *n != 0) {
            conn.prepare_cached(
                "INSERT INTO link_counts (code, links) VALUES (?1, ?2) \
                 ON CONFLICT (code) DO UPDATE SET links = links + excluded.links",
            )
            .and_then(|mut stmt| stmt.execute(params![code, n]))
            .map_err(sql_error(ACTION))?;
        }
        Ok(())
    }
}

/// Explains a refused link: with the (code, contact) conflict handled by the upsert,
/// a unique violation means another contact already holds the account (R2).
fn account_taken(conn: &Connection, link: &Link, source: rusqlite::Error) -> StateError {
    let unique_violation = source.sqlite_error().is_some_and(|e| {
        e.code == ErrorCode::ConstraintViolation && e.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
    });
    let holder = unique_violation
        .then(|| {
            conn.query_row(
                "SELECT contact_id FROM links WHERE code = ?1 AND account_id = ?2",
                [&link.code, &link.account_id],
                |row| row.get::<_, String>(0),
            )
            .ok()
        })
        .flatten();
    match holder {
        Some(linked_contact) => StateError::AccountTaken {
            code: link.code.clone(),
            account_id: link.account_id.clone(),
            contact_id: link.contact_id.clone(),
            linked_contact,
        },
        None => StateError::Sqlite {
            action: "storing links",
            source,
        },
    }
}

fn delete_hashes(conn: &Connection, keys: &[(Scope, String)]) -> Result<(), StateError> {
    let mut by_scope: Vec<(&Scope, Vec<(&str, HashChange)>)> = Vec::new();
    for (scope, id) in keys {
        hash_pages::group_of(&mut by_scope, scope).push((id, HashChange::Delete));
    }
    for (scope, changes) in by_scope {
        if let Some(number) = known_scope(conn, scope)? {
            hash_pages::apply(conn, number, changes)?;
        }
    }
    Ok(())
}

fn set_hashes(
    conn: &Connection,
    hashes: &[(Scope, String, u64)],
    keys: &[(usize, u64)],
) -> Result<(), StateError> {
    let mut keys = keys.iter().peekable();
    let mut by_scope: Vec<(&Scope, Vec<(&str, HashChange)>)> = Vec::new();
    for (i, (scope, id, hash)) in hashes.iter().enumerate() {
        while keys.next_if(|(k, _)| *k < i).is_some() {}
        let keys = keys.next_if(|(k, _)| *k == i).map(|(_, key)| *key);
        hash_pages::group_of(&mut by_scope, scope)
            .push((id, HashChange::Set { hash: *hash, keys }));
    }
    for (scope, changes) in by_scope {
        hash_pages::apply(conn, scope_number(conn, scope)?, changes)?;
    }
    Ok(())
}

/// The number of `scope` in `scopes`, given it on first use.
fn scope_number(conn: &Connection, scope: &Scope) -> Result<i64, StateError> {
    conn.prepare_cached(
        "INSERT INTO scopes (connector, kind) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )
    .and_then(|mut stmt| stmt.execute(params![scope.connector, scope.kind.as_str()]))
    .map_err(sql_error("numbering a scope"))?;
    known_scope(conn, scope)?.ok_or_else(|| StateError::Corrupt {
        what: format!("the scope of {} {}", scope.connector, scope.kind.as_str()),
        message: "numbered, then not found".to_owned(),
    })
}

/// The number of `scope`, if it ever had a hash.
fn known_scope(conn: &Connection, scope: &Scope) -> Result<Option<i64>, StateError> {
    conn.prepare_cached(&format!("SELECT {SCOPE_ID}"))
        .and_then(|mut stmt| {
            stmt.query_row(params![scope.connector, scope.kind.as_str()], |row| {
                row.get(0)
            })
        })
        .map_err(sql_error("numbering a scope"))
}

fn set_cursors(conn: &Connection, cursors: &[(Scope, String)]) -> Result<(), StateError> {
    const ACTION: &str = "storing cursors";
    if cursors.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(SET_CURSOR).map_err(sql_error(ACTION))?;
    for (scope, cursor) in cursors {
        stmt.execute(params![scope.connector, scope.kind.as_str(), cursor])
            .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn set_fingerprints(
    conn: &Connection,
    fingerprints: &[(Scope, Option<String>)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing fingerprints";
    for (scope, fingerprint) in fingerprints {
        let result = match fingerprint {
            Some(f) => conn
                .prepare_cached(
                    "INSERT INTO fingerprints (connector, kind, fingerprint) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (connector, kind) DO UPDATE SET fingerprint = excluded.fingerprint",
                )
                .and_then(|mut stmt| stmt.execute(params![scope.connector, scope.kind.as_str(), f])),
            None => conn
                .prepare_cached("DELETE FROM fingerprints WHERE connector = ?1 AND kind = ?2")
                .and_then(|mut stmt| stmt.execute(params![scope.connector, scope.kind.as_str()])),
        };
        result.map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn set_ambiguities(
    conn: &Connection,
    entries: &[(String, serde_json::Value)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing ambiguous matches";
    for (code, ambiguities) in entries {
        conn.prepare_cached(
            "INSERT INTO ambiguities (code, ambiguities) VALUES (?1, ?2) \
             ON CONFLICT (code) DO UPDATE SET ambiguities = excluded.ambiguities",
        )
        .and_then(|mut stmt| stmt.execute(params![code, ambiguities.to_string()]))
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

/// Log rows per `INSERT`: a statement per entry cost two fifths more, mostly for
/// what SQLite does once per statement (for an `AUTOINCREMENT` table, reading and
/// rewriting its `sqlite_sequence` row).
const LOG_ROWS: usize = 64;

/// Parameters of one log row.
const LOG_PARAMS: usize = 12;

const LOG_COLUMNS: &str = "id, at, run_id, contact_id, code, account_id, action, source, details, next_action, \
     next_source, next_details";

static APPEND_INTERACTIONS: LazyLock<String> = LazyLock::new(|| {
    let row = format!("({})", ["?"; LOG_PARAMS].join(", "));
    format!(
        "INSERT INTO interactions ({LOG_COLUMNS}) VALUES {}",
        vec![row; LOG_ROWS].join(", ")
    )
});

/// One row of the log: an entry, and the entry after it when both are about the same
/// pair at the same time in the same run (a new link and its first update, a create
/// and its link: a first sync makes two per pair), which takes the next id.
pub(crate) struct LogRow<'e> {
    pub(crate) id: i64,
    pub(crate) entry: &'e Interaction,
    pub(crate) next: Option<&'e Interaction>,
}

/// Whether `b` can share `a`'s row.
pub(crate) fn same_pair(a: &Interaction, b: &Interaction) -> bool {
    a.at == b.at
        && a.run_id == b.run_id
        && a.contact_id == b.contact_id
        && a.code == b.code
        && a.account_id == b.account_id
}

/// The id the next log entry gets: above every entry stored (the row of the highest id
/// may hold two entries). Entries are never deleted, so ids are never given twice.
fn next_log_id(conn: &Connection) -> Result<i64, StateError> {
    conn.prepare_cached(
        "SELECT id + 1 + (next_action IS NOT NULL) FROM interactions ORDER BY id DESC LIMIT 1",
    )
    .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)).optional())
    .map(|id| id.unwrap_or(1))
    .map_err(sql_error("appending to the interaction log"))
}

fn append_interactions(conn: &Connection, entries: &[Interaction]) -> Result<(), StateError> {
    const ACTION: &str = "appending to the interaction log";
    if entries.is_empty() {
        return Ok(());
    }
    let mut id = next_log_id(conn)?;
    let mut rows = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let entry = &entries[i];
        let next = entries.get(i + 1).filter(|next| same_pair(entry, next));
        rows.push(LogRow { id, entry, next });
        let span = 1 + usize::from(next.is_some());
        id += span as i64;
        i += span;
    }
    let mut chunks = rows.chunks_exact(LOG_ROWS);
    if rows.len() >= LOG_ROWS {
        let mut stmt = conn
            .prepare_cached(&APPEND_INTERACTIONS)
            .map_err(sql_error(ACTION))?;
        for chunk in chunks.by_ref() {
            for (i, row) in chunk.iter().enumerate() {
                bind_log_row(&mut stmt, LOG_PARAMS * i, row).map_err(sql_error(ACTION))?;
            }
            stmt.raw_execute().map_err(sql_error(ACTION))?;
        }
    }
    let rest = chunks.remainder();
    if rest.is_empty() {
        return Ok(());
    }
    let one = format!(
        "INSERT INTO interactions ({LOG_COLUMNS}) VALUES ({})",
        ["?"; LOG_PARAMS].join(", ")
    );
    let mut stmt = conn.prepare_cached(&one).map_err(sql_error(ACTION))?;
    for row in rest {
        bind_log_row(&mut stmt, 0, row).map_err(sql_error(ACTION))?;
        stmt.raw_execute().map_err(sql_error(ACTION))?;
    }
    Ok(())
}

/// Binds `row` to the parameters after `offset`.
fn bind_log_row(stmt: &mut Statement<'_>, offset: usize, row: &LogRow<'_>) -> rusqlite::Result<()> {
    let entry = row.entry;
    stmt.raw_bind_parameter(offset + 1, row.id)?;
    stmt.raw_bind_parameter(offset + 2, entry.at.0)?;
    stmt.raw_bind_parameter(offset + 3, entry.run_id)?;
    stmt.raw_bind_parameter(offset + 4, &entry.contact_id)?;
    stmt.raw_bind_parameter(offset + 5, &entry.code)?;
    stmt.raw_bind_parameter(offset + 6, &entry.account_id)?;
    stmt.raw_bind_parameter(offset + 7, &entry.action)?;
    stmt.raw_bind_parameter(offset + 8, &entry.source)?;
    stmt.raw_bind_parameter(offset + 9, entry.details.as_str())?;
    let next = row.next;
    stmt.raw_bind_parameter(offset + 10, next.map(|n| n.action.as_str()))?;
    stmt.raw_bind_parameter(offset + 11, next.map(|n| n.source.as_str()))?;
    stmt.raw_bind_parameter(offset + 12, next.map(|n| n.details.as_str()))
}

/// The entries of a log row selected with [`LOG_COLUMNS`] (and maybe more columns
/// after them): one, or two when it holds a second entry of the same pair.
pub(crate) fn log_entries(
    row: &Row<'_>,
    action: &'static str,
) -> Result<Vec<Interaction>, StateError> {
    let next = match get::<Option<String>>(row, 9, action)? {
        Some(next_action) => Some((
            next_action,
            get::<Option<String>>(row, 10, action)?,
            get::<String>(row, 11, action)?,
        )),
        None => None,
    };
    crate::log::LogRow {
        id: get(row, 0, action)?,
        at: get(row, 1, action)?,
        run_id: get(row, 2, action)?,
        contact_id: get(row, 3, action)?,
        code: get(row, 4, action)?,
        account_id: get(row, 5, action)?,
        action: get(row, 6, action)?,
        source: get(row, 7, action)?,
        details: get(row, 8, action)?,
        next,
    }
    .into_entries()
}

/// A field value as JSON text.
fn value_json(value: &Value, what: impl FnOnce() -> String) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Corrupt {
        what: what(),
        message: e.to_string(),
    })
}

/// Inserts a conflict, or refreshes the open one of the same (code, contact, field).
/// The conflict target names the partial index, so closed conflicts never collide.
const UPSERT_CONFLICT: &str = "
INSERT INTO conflicts (code, contact_id, field, account_id, base, contact_value, account_value,
                       opened_at, run_id, resolution)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (code, contact_id, field) WHERE closed_at IS NULL DO UPDATE SET
    account_id = excluded.account_id,
    base = excluded.base,
    contact_value = excluded.contact_value,
    account_value = excluded.account_value,
    run_id = excluded.run_id";

fn upsert_conflicts(conn: &Connection, entries: &[ConflictEntry]) -> Result<(), StateError> {
    const ACTION: &str = "storing conflicts";
    if entries.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(UPSERT_CONFLICT)
        .map_err(sql_error(ACTION))?;
    for entry in entries {
        let json = |value: &Value, what: &str| {
            value_json(value, || {
                format!(
                    "{what} of the {} conflict of contact {} on {}",
                    entry.code, entry.contact_id, entry.field
                )
            })
        };
        let resolution = entry
            .resolution
            .as_ref()
            .map(|value| json(value, "resolution"))
            .transpose()?;
        stmt.execute(params![
            entry.code,
            entry.contact_id,
            entry.field,
            entry.account_id,
            json(&entry.base, "base value")?,
            json(&entry.contact_value, "contact value")?,
            json(&entry.account_value, "account value")?,
            entry.opened_at.0,
            entry.run_id,
            resolution,
        ])
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn resolve_conflicts(conn: &Connection, resolutions: &[(i64, Value)]) -> Result<(), StateError> {
    const ACTION: &str = "resolving conflicts";
    if resolutions.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached("UPDATE conflicts SET resolution = ?2 WHERE id = ?1 AND closed_at IS NULL")
        .map_err(sql_error(ACTION))?;
    for (id, value) in resolutions {
        let value = value_json(value, || format!("resolution of conflict {id}"))?;
        if stmt
            .execute(params![id, value])
            .map_err(sql_error(ACTION))?
            == 0
        {
            return Err(StateError::UnknownConflict { id: *id });
        }
    }
    Ok(())
}

fn close_conflicts(
    conn: &Connection,
    keys: &[(String, String, String, Timestamp)],
) -> Result<(), StateError> {
    const ACTION: &str = "closing conflicts";
    if keys.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(
            "UPDATE conflicts SET closed_at = ?4 \
             WHERE code = ?1 AND contact_id = ?2 AND field = ?3 AND closed_at IS NULL",
        )
        .map_err(sql_error(ACTION))?;
    for (code, contact_id, field, at) in keys {
        stmt.execute(params![code, contact_id, field, at.0])
            .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

const UPSERT_PENDING: &str = "
INSERT INTO pending_creates (code, side, source_id, fields, run_id, error, failure_count,
                             parked, updated_at, record_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (code, side, source_id) DO UPDATE SET
    fields = excluded.fields,
    record_id = excluded.record_id,
    run_id = excluded.run_id,
    error = excluded.error,
    failure_count = excluded.failure_count,
    parked = excluded.parked,
    updated_at = excluded.updated_at";

fn upsert_pending(conn: &Connection, creates: &[PendingCreate]) -> Result<(), StateError> {
    const ACTION: &str = "storing pending creates";
    if creates.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(UPSERT_PENDING)
        .map_err(sql_error(ACTION))?;
    for create in creates {
        let fields = serde_json::to_string(&create.fields).map_err(|e| StateError::Corrupt {
            what: format!(
                "fields of the pending {} {} create from {}",
                create.code, create.side, create.source_id
            ),
            message: e.to_string(),
        })?;
        stmt.execute(params![
            create.code,
            create.side.as_str(),
            create.source_id,
            fields,
            create.run_id,
            create.error,
            create.failure_count,
            create.parked,
            create.updated_at.0,
            create.record_id,
        ])
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn store_create_batches(
    conn: &Connection,
    batches: &[PendingCreateBatch],
    cleared: &[(i64, i64)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing creates about to be sent";
    for batch in batches {
        let creates = crate::pending::encode_creates(batch)?;
        conn.prepare_cached(
            "INSERT INTO pending_create_batches (run_id, part, creates) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![batch.run_id, batch.part, creates]))
        .map_err(sql_error(ACTION))?;
    }
    // By part: the record of a batch sent after it stays until its creates are linked.
    for (run_id, part) in cleared {
        conn.prepare_cached("DELETE FROM pending_create_batches WHERE run_id = ?1 AND part = ?2")
            .and_then(|mut stmt| stmt.execute([run_id, part]))
            .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

/// The creates of every stored create batch, oldest first.
fn create_batch_entries(conn: &Connection) -> Result<Vec<PendingCreate>, StateError> {
    const ACTION: &str = "reading creates about to be sent";
    let mut stmt = conn
        .prepare_cached("SELECT run_id, creates FROM pending_create_batches ORDER BY id")
        .map_err(sql_error(ACTION))?;
    let mut rows = stmt.query([]).map_err(sql_error(ACTION))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error(ACTION))? {
        let run_id: i64 = get(row, 0, ACTION)?;
        let creates: String = get(row, 1, ACTION)?;
        out.extend(crate::pending::decode_creates(run_id, &creates)?);
    }
    Ok(out)
}

fn delete_pending(conn: &Connection, keys: &[(String, Side, String)]) -> Result<(), StateError> {
    const ACTION: &str = "deleting pending creates";
    if keys.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(
            "DELETE FROM pending_creates WHERE code = ?1 AND side = ?2 AND source_id = ?3",
        )
        .map_err(sql_error(ACTION))?;
    for (code, side, source_id) in keys {
        stmt.execute([code, side.as_str(), source_id])
            .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

const UPSERT_REFUSED: &str = "
INSERT INTO refused_requests (code, contact_id, error, run_id, failure_count, parked,
                              updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (code, contact_id) DO UPDATE SET
    error = excluded.error,
    run_id = excluded.run_id,
    failure_count = excluded.failure_count,
    parked = excluded.parked,
    updated_at = excluded.updated_at";

fn upsert_refused(conn: &Connection, requests: &[RefusedRequest]) -> Result<(), StateError> {
    const ACTION: &str = "storing refused requests";
    if requests.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(UPSERT_REFUSED)
        .map_err(sql_error(ACTION))?;
    for r in requests {
        stmt.execute(params![
            r.code,
            r.contact_id,
            r.error,
            r.run_id,
            r.failure_count,
            r.parked,
            r.updated_at.0,
        ])
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

/// Deletes rows of `table` (keyed by code and contact) by (code, contact_id).
fn delete_by_code_and_contact(
    conn: &Connection,
    table: &'static str,
    keys: &[(String, String)],
) -> Result<(), StateError> {
    const ACTION: &str = "deleting refused requests or pending links";
    if keys.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE code = ?1 AND contact_id = ?2"
        ))
        .map_err(sql_error(ACTION))?;
    for (code, contact_id) in keys {
        stmt.execute([code, contact_id])
            .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn set_companies(
    conn: &Connection,
    companies: &[(String, Option<String>)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing the companies of contacts";
    if companies.is_empty() {
        return Ok(());
    }
    let mut set = conn
        .prepare_cached(
            "INSERT INTO contact_companies (contact_id, company_id) VALUES (?1, ?2) \
             ON CONFLICT (contact_id) DO UPDATE SET company_id = excluded.company_id",
        )
        .map_err(sql_error(ACTION))?;
    // Forgotten contacts in runs, many to a statement: a first sync forgets the
    // company of every contact that is no person, a million statements at 1M. A run
    // is gathered only between two sets, so the order of the list is kept.
    let mut forgets: Vec<&str> = Vec::with_capacity(FORGET_ROWS);
    for (contact_id, company_id) in companies {
        match company_id {
            Some(company_id) => {
                forget_companies(conn, &mut forgets)?;
                set.execute([contact_id, company_id])
                    .map_err(sql_error(ACTION))?;
            }
            None => {
                forgets.push(contact_id);
                if forgets.len() == FORGET_ROWS {
                    forget_companies(conn, &mut forgets)?;
                }
            }
        }
    }
    forget_companies(conn, &mut forgets)
}

/// Contacts whose company is forgotten by one statement.
const FORGET_ROWS: usize = 64;

/// Forgets the companies of `contacts`, and empties the list.
fn forget_companies(conn: &Connection, contacts: &mut Vec<&str>) -> Result<(), StateError> {
    const ACTION: &str = "forgetting the companies of contacts";
    if contacts.is_empty() {
        return Ok(());
    }
    let sql = match contacts.len() {
        FORGET_ROWS => FORGET_COMPANIES.as_str(),
        n => &forget_companies_sql(n),
    };
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params_from_iter(contacts.iter())))
        .map_err(sql_error(ACTION))?;
    contacts.clear();
    Ok(())
}

static FORGET_COMPANIES: LazyLock<String> = LazyLock::new(|| forget_companies_sql(FORGET_ROWS));

fn forget_companies_sql(n: usize) -> String {
    format!(
        "DELETE FROM contact_companies WHERE contact_id IN ({})",
        vec!["?"; n].join(", ")
    )
}

fn set_codes_lost(conn: &Connection, marks: &[(String, String, bool)]) -> Result<(), StateError> {
    const ACTION: &str = "storing the codes contacts lost";
    if marks.is_empty() {
        return Ok(());
    }
    let mut add = conn
        .prepare_cached("INSERT OR IGNORE INTO codes_lost (code, contact_id) VALUES (?1, ?2)")
        .map_err(sql_error(ACTION))?;
    let mut remove = conn
        .prepare_cached("DELETE FROM codes_lost WHERE code = ?1 AND contact_id = ?2")
        .map_err(sql_error(ACTION))?;
    for (code, contact_id, lost) in marks {
        if *lost {
            add.execute([code, contact_id])
        } else {
            remove.execute([code, contact_id])
        }
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn set_contact_deleted(
    conn: &Connection,
    marks: &[(String, String, bool)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing the accounts whose contact was deleted";
    if marks.is_empty() {
        return Ok(());
    }
    let mut add = conn
        .prepare_cached("INSERT OR IGNORE INTO contact_deleted (code, account_id) VALUES (?1, ?2)")
        .map_err(sql_error(ACTION))?;
    let mut remove = conn
        .prepare_cached("DELETE FROM contact_deleted WHERE code = ?1 AND account_id = ?2")
        .map_err(sql_error(ACTION))?;
    for (code, account_id, deleted) in marks {
        if *deleted {
            add.execute([code, account_id])
        } else {
            remove.execute([code, account_id])
        }
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

fn set_unlinked_pairs(
    conn: &Connection,
    pairs: &[(String, String, String, bool)],
) -> Result<(), StateError> {
    const ACTION: &str = "storing the pairs unlinked by hand";
    if pairs.is_empty() {
        return Ok(());
    }
    let mut add = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO unlinked_pairs (code, contact_id, account_id) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql_error(ACTION))?;
    let mut remove = conn
        .prepare_cached(
            "DELETE FROM unlinked_pairs WHERE code = ?1 AND contact_id = ?2 AND account_id = ?3",
        )
        .map_err(sql_error(ACTION))?;
    for (code, contact_id, account_id, unlinked) in pairs {
        if *unlinked {
            add.execute([code, contact_id, account_id])
        } else {
            remove.execute([code, contact_id, account_id])
        }
        .map_err(sql_error(ACTION))?;
    }
    Ok(())
}

mod hash_pages;
mod read_only;
mod runs;
#[cfg(test)]
mod tests;
mod transfer;
