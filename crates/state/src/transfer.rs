//! Rows of a state's tables as values any store can hold, for copying a state from one
//! store to another table by table (`tandem migrate`).

/// One column's value of a stored row: SQLite's storage classes, which PostgreSQL's
/// column types of the state map to (BIGINT, DOUBLE PRECISION, TEXT, BYTEA).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The tables of a state, in an order that copies them safely (none refers to
/// another by a foreign key, so any order would do). Leases and the schema version
/// belong to one store and are not copied.
pub const TABLES: &[&str] = &[
    "runs",
    "scopes",
    "links",
    "link_counts",
    "record_hashes",
    "cursors",
    "fingerprints",
    "ambiguities",
    "interactions",
    "conflicts",
    "pending_creates",
    "refused_requests",
    "pending_links",
    "intent_batches",
    "contact_companies",
    "unlinked_pairs",
    "contact_deleted",
    "codes_lost",
];
