//! Moving a deployment's state from one store to another (`tandem migrate`), table by
//! table through [`StateStore::export_table`] and [`StateStore::import_rows`], which
//! every store implements over the same tables and columns ([`STATE_TABLES`]). The
//! copy itself ([`copy_state`]) knows no store.

use xxhash_rust::xxh3::Xxh3;

use crate::{StateError, StateStore};

pub use crate::sqlite::STATE_TABLES;

/// One stored value, as any store can hold it: the SQLite storage classes, which the
/// other stores map to their own types (INTEGER to BIGINT, BLOB to BYTEA, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl StoredValue {
    /// What kind of value it is, for messages (never the value: it may be long).
    pub fn type_name(&self) -> &'static str {
        match self {
            StoredValue::Null => "null",
            StoredValue::Integer(_) => "an integer",
            StoredValue::Real(_) => "a real number",
            StoredValue::Text(_) => "text",
            StoredValue::Blob(_) => "a blob",
        }
    }
}

/// The type a column declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Real,
    Text,
    Blob,
    /// Baselines and intent batches: declared `ANY` in SQLite, where rows written
    /// before migration 8 hold JSON text and later ones the binary form (`codec`).
    /// Always exported as a blob in the binary form, so another store needs only a
    /// blob column (BYTEA); imported as text or blob.
    Any,
}

/// A column of a state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub column_type: ColumnType,
    pub nullable: bool,
}

/// A table of the state, with its columns in the schema's order and its primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTable {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub primary_key: &'static [&'static str],
}

impl StateTable {
    /// The table named `name`, which must be one of [`STATE_TABLES`].
    pub fn named(name: &str) -> Result<&'static StateTable, StateError> {
        STATE_TABLES
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| StateError::UnknownTable {
                table: name.to_owned(),
            })
    }
}

/// Rows handed to [`StateStore::import_rows`] at a time: one transaction each.
pub const COPY_CHUNK_ROWS: usize = 10_000;

/// What went wrong while copying a state.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source failed: {0}")]
    Source(#[source] StateError),
    #[error("the target failed: {0}")]
    Target(#[source] StateError),
    /// The copy began, and stopped: the target holds part of the state.
    #[error(
        "{cause}, while copying table {table}; the target holds part of the copy: delete it \
         (or empty it), then migrate again"
    )]
    Stopped {
        table: &'static str,
        #[source]
        cause: Box<CopyError>,
    },
    #[error(
        "the source has schema version {source_version} and the target {target_version}; \
         open both with the same tandem, which brings each to its schema first"
    )]
    SchemaVersions {
        source_version: i64,
        target_version: i64,
    },
    #[error(
        "the target is not empty: table {table} holds {rows} rows; nothing was copied. \
         Migrate into a new, empty state (delete the target, or give another --to)"
    )]
    TargetNotEmpty { table: &'static str, rows: u64 },
    #[error(
        "the copy of table {table} differs from the source: {difference}. The target holds \
         a partial copy: delete it, then migrate again"
    )]
    Mismatch {
        table: &'static str,
        difference: String,
    },
}

/// The rows copied into one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCopied {
    pub table: &'static str,
    pub rows: u64,
}

/// Copies every table of `from` into `to`, which must hold no rows, in
/// [`STATE_TABLES`] order and in chunks of [`COPY_CHUNK_ROWS`], then checks that each
/// table of `to` holds as many rows as the source's, with the same [`table_checksum`].
/// `progress(table, rows)` is called after each chunk with the rows copied so far into
/// `table`, and once with 0 when a table begins.
///
/// Both stores must be at the same schema version (each opened with its migrations
/// applied). Rows keep their ids, so a store's next id continues after the copied ones.
pub fn copy_state(
    from: &dyn StateStore,
    to: &mut dyn StateStore,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Vec<TableCopied>, CopyError> {
    let source_version = from.schema_version().map_err(CopyError::Source)?;
    let target_version = to.schema_version().map_err(CopyError::Target)?;
    if source_version != target_version {
        return Err(CopyError::SchemaVersions {
            source_version,
            target_version,
        });
    }
    for table in STATE_TABLES {
        let rows = to
            .export_table(table.name, &mut |_| Ok(()))
            .map_err(CopyError::Target)?;
        if rows > 0 {
            return Err(CopyError::TargetNotEmpty {
                table: table.name,
                rows,
            });
        }
    }

    let mut copied = Vec::with_capacity(STATE_TABLES.len());
    for table in STATE_TABLES {
        let rows = copy_table(from, to, table.name, progress).map_err(|cause| match cause {
            CopyError::Mismatch { .. } => cause,
            cause => CopyError::Stopped {
                table: table.name,
                cause: Box::new(cause),
            },
        })?;
        copied.push(TableCopied {
            table: table.name,
            rows,
        });
    }
    Ok(copied)
}

/// Copies `table` in chunks and checks the copy; returns the rows copied.
fn copy_table(
    from: &dyn StateStore,
    to: &mut dyn StateStore,
    table: &'static str,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<u64, CopyError> {
    progress(table, 0);
    let mut checksum = TableChecksum::default();
    let mut chunk = Vec::with_capacity(COPY_CHUNK_ROWS);
    let mut done = 0;
    // A failed import ends the export with its error; `target_failed` says that
    // the error came from the target.
    let mut target_failed = false;
    let exported = from.export_table(table, &mut |row| {
        checksum.add(&row);
        chunk.push(row);
        if chunk.len() == COPY_CHUNK_ROWS {
            let rows = std::mem::replace(&mut chunk, Vec::with_capacity(COPY_CHUNK_ROWS));
            done += rows.len() as u64;
            if let Err(e) = to.import_rows(table, rows) {
                target_failed = true;
                return Err(e);
            }
            progress(table, done);
        }
        Ok(())
    });
    let exported = match exported {
        Err(e) if target_failed => return Err(CopyError::Target(e)),
        exported => exported.map_err(CopyError::Source)?,
    };
    if !chunk.is_empty() {
        done += chunk.len() as u64;
        to.import_rows(table, chunk).map_err(CopyError::Target)?;
        progress(table, done);
    }
    verify(&*to, table, exported, checksum.value())?;
    Ok(exported)
}

/// Checks that `table` of `to` holds `rows` rows with the checksum `checksum`.
fn verify(
    to: &dyn StateStore,
    table: &'static str,
    rows: u64,
    checksum: u128,
) -> Result<(), CopyError> {
    let (copied_rows, copied_checksum) = table_checksum(to, table).map_err(CopyError::Target)?;
    if copied_rows != rows {
        return Err(CopyError::Mismatch {
            table,
            difference: format!("the source has {rows} rows, the target {copied_rows}"),
        });
    }
    if copied_checksum != checksum {
        return Err(CopyError::Mismatch {
            table,
            difference: format!(
                "the rows' checksums differ (source {checksum:032x}, target \
                 {copied_checksum:032x}): a value changed on the way"
            ),
        });
    }
    Ok(())
}

/// The number of rows of `table` in `store`, and a checksum over them: equal for two
/// stores holding the same rows, whatever order each lists them in (another store may
/// sort text by another collation).
pub fn table_checksum(store: &dyn StateStore, table: &str) -> Result<(u64, u128), StateError> {
    let mut checksum = TableChecksum::default();
    let rows = store.export_table(table, &mut |row| {
        checksum.add(&row);
        Ok(())
    })?;
    Ok((rows, checksum.value()))
}

/// The sum of a 128-bit hash of each row: independent of row order, and a row that is
/// missing, repeated or changed changes it.
#[derive(Default)]
struct TableChecksum {
    sum: u128,
    hasher: Xxh3,
}

impl TableChecksum {
    fn add(&mut self, row: &[StoredValue]) {
        let hasher = &mut self.hasher;
        hasher.reset();
        hasher.update(&(row.len() as u64).to_le_bytes());
        for value in row {
            // A tag and a length before each value: no two rows encode alike.
            match value {
                StoredValue::Null => hasher.update(&[0]),
                StoredValue::Integer(i) => {
                    hasher.update(&[1]);
                    hasher.update(&i.to_le_bytes());
                }
                StoredValue::Real(r) => {
                    hasher.update(&[2]);
                    hasher.update(&r.to_bits().to_le_bytes());
                }
                StoredValue::Text(text) => {
                    hasher.update(&[3]);
                    hasher.update(&(text.len() as u64).to_le_bytes());
                    hasher.update(text.as_bytes());
                }
                StoredValue::Blob(bytes) => {
                    hasher.update(&[4]);
                    hasher.update(&(bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                }
            }
        }
        self.sum = self.sum.wrapping_add(hasher.digest128());
    }

    fn value(&self) -> u128 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tandem_model::{EntityKind, Fields, Timestamp, Value};

    use super::*;
    use crate::{
        ConflictEntry, Details, IntentBatch, Interaction, Link, LockMode, PendingCreate,
        RefusedRequest, Scope, Side, SqliteState, StateBatch,
    };

    fn open(path: &Path) -> SqliteState {
        SqliteState::open(path, LockMode::Exclusive).unwrap()
    }

    fn link(code: &str, contact: &str, account: &str) -> Link {
        Link {
            code: code.into(),
            contact_id: contact.into(),
            account_id: account.into(),
            baseline: Fields::new().with("name", format!("Name of {contact}").as_str()),
            contact_version: Some(format!("cv-{contact}")),
            account_version: None,
            last_error: None,
            failure_count: 0,
            parked: false,
            linked_at: Timestamp(1_700_000_000_000),
            synced_at: Timestamp(1_700_000_000_500),
            intent: None,
        }
    }

    /// A state holding a row in every kind of table, and `hashes` content hashes.
    fn filled(path: &Path, hashes: usize) -> SqliteState {
        let mut state = open(path);
        let run = state.begin_run("sync").unwrap();
        let scope = Scope::new("crm", EntityKind::Contact);
        let mut parked = link("VEND", "C2", "V1");
        parked.parked = true;
        parked.failure_count = 2;
        parked.last_error = Some("disk full".into());
        let entry = |action: &str, at: i64| Interaction {
            id: 0,
            at: Timestamp(at),
            run_id: Some(run),
            contact_id: "C1".into(),
            code: "CUST".into(),
            account_id: Some("K1".into()),
            action: action.into(),
            source: "match".into(),
            details: Details::of(&serde_json::json!({ "tier": 1 })),
        };
        let mut batch = StateBatch {
            upsert_links: vec![link("CUST", "C1", "K1"), parked],
            set_cursors: vec![(scope.clone(), "cursor-1".into())],
            set_fingerprints: vec![(scope.clone(), Some("fp".into()))],
            set_ambiguities: vec![("CUST".into(), serde_json::json!([["C7", "C8"]]))],
            // Two entries of one pair at one time share a row.
            interactions: vec![
                entry("linked", 5),
                entry("updated", 5),
                entry("conflict", 6),
            ],
            upsert_conflicts: vec![ConflictEntry {
                id: 0,
                code: "CUST".into(),
                contact_id: "C1".into(),
                account_id: "K1".into(),
                field: "phone".into(),
                base: Value::from("+32 1"),
                contact_value: Value::from("+32 2"),
                account_value: Value::from("+32 3"),
                opened_at: Timestamp(6),
                run_id: Some(run),
                resolution: None,
                closed_at: None,
            }],
            upsert_pending: vec![PendingCreate {
                code: "CUST".into(),
                side: Side::Account,
                source_id: "C5".into(),
                fields: Fields::new().with("name", "Five"),
                run_id: Some(run),
                error: Some("refused".into()),
                failure_count: 2,
                parked: true,
                updated_at: Timestamp(7),
                // Sent with the id its connector let Tandem choose (R18).
                record_id: Some("K-5".into()),
            }],
            upsert_refused: vec![RefusedRequest {
                code: "VEND".into(),
                contact_id: "C9".into(),
                error: "no template".into(),
                run_id: Some(run),
                failure_count: 1,
                parked: false,
                updated_at: Timestamp(8),
            }],
            set_companies: vec![("P1".into(), Some("C1".into()))],
            unlinked_pairs: vec![("CUST".into(), "C3".into(), "K3".into(), true)],
            contact_deleted: vec![("CUST".into(), "K4".into(), true)],
            codes_lost: vec![("VEND".into(), "C3".into(), true)],
            // A run cut short after storing its intents (R18) and its creates.
            intent_batches: vec![IntentBatch {
                run_id: run,
                // A later part of the run (R18): copied with its part.
                part: 2,
                links: vec![link("CUST", "C6", "K6")],
            }],
            pending_create_batches: vec![crate::PendingCreateBatch {
                run_id: run,
                part: 3,
                creates: vec![PendingCreate {
                    code: "VEND".into(),
                    side: Side::Contact,
                    source_id: "V7".into(),
                    fields: Fields::new().with("name", "Seven"),
                    run_id: Some(run),
                    error: None,
                    failure_count: 0,
                    parked: false,
                    updated_at: Timestamp(9),
                    record_id: Some("C-7.vcf".into()),
                }],
            }],
            ..StateBatch::default()
        };
        for i in 0..hashes {
            batch.set_hash_with_keys(scope.clone(), format!("C{i:06}"), i as u64 + 1, 9);
        }
        state.commit(batch).unwrap();
        state
            .finish_run(run, "ok", &serde_json::json!({ "writes": 3 }))
            .unwrap();
        state
    }

    fn rows(state: &dyn StateStore, table: &str) -> Vec<Vec<StoredValue>> {
        let mut rows = Vec::new();
        state
            .export_table(table, &mut |row| {
                rows.push(row);
                Ok(())
            })
            .unwrap();
        rows
    }

    fn paths() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.db");
        let target = dir.path().join("target/state.db");
        (dir, source, target)
    }

    #[test]
    fn a_copy_holds_every_row_of_every_table_in_chunks_and_ids_go_on_after_it() {
        let (_dir, source_path, target_path) = paths();
        let source = filled(&source_path, 2 * COPY_CHUNK_ROWS + 1);
        let mut target = open(&target_path);
        let mut seen = Vec::new();
        let copied = copy_state(&source, &mut target, &mut |table, rows| {
            seen.push((table.to_owned(), rows));
        })
        .unwrap();

        let names: Vec<&str> = copied.iter().map(|c| c.table).collect();
        let order: Vec<&str> = STATE_TABLES.iter().map(|t| t.name).collect();
        assert_eq!(names, order);
        let hashes = copied.iter().find(|c| c.table == "record_hashes").unwrap();
        assert_eq!(hashes.rows, 2 * COPY_CHUNK_ROWS as u64 + 1);
        let hash_progress: Vec<u64> = seen
            .iter()
            .filter(|(t, _)| t == "record_hashes")
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            hash_progress,
            [0, 10_000, 20_000, 20_001],
            "chunks of 10,000"
        );
        for table in STATE_TABLES {
            assert_eq!(
                rows(&source, table.name),
                rows(&target, table.name),
                "{}",
                table.name
            );
            // Only migration 6 writes pending links (from an older state).
            assert!(
                table.name == "pending_links" || !rows(&target, table.name).is_empty(),
                "the state fills {}",
                table.name
            );
        }
        assert_eq!(target.links(None).unwrap(), source.links(None).unwrap());
        assert_eq!(
            target.conflicts(false).unwrap(),
            source.conflicts(false).unwrap()
        );
        assert_eq!(
            target.interactions("C1", 10).unwrap(),
            source.interactions("C1", 10).unwrap()
        );
        assert_eq!(target.count_links("CUST").unwrap(), 1);

        // The target goes on where the source stopped.
        let last_run = source.runs(1).unwrap()[0].id;
        assert_eq!(target.begin_run("sync").unwrap(), last_run + 1);
    }

    /// A state copied into PostgreSQL and from there into a new SQLite file holds, in
    /// every table, the rows it started with; PostgreSQL answers every read as the
    /// source did, and its ids go on after the copied ones.
    #[test]
    fn a_state_goes_to_postgres_and_back_unchanged() {
        let Some(server) = tandem_test_databases::PostgresServer::start() else {
            return;
        };
        for fixture in [false, true] {
            let (_dir, source_path, target_path) = paths();
            let source = if fixture {
                std::fs::write(
                    &source_path,
                    include_bytes!("../tests/fixtures/state-v7.db"),
                )
                .unwrap();
                open(&source_path)
            } else {
                filled(&source_path, 2 * COPY_CHUNK_ROWS + 1)
            };
            let url = server.create_database();
            let mut postgres = crate::PgState::open_url(&url, LockMode::Exclusive).unwrap();
            copy_state(&source, &mut postgres, &mut |_, _| {}).unwrap();
            let mut back = open(&target_path);
            copy_state(&postgres, &mut back, &mut |_, _| {}).unwrap();
            for table in STATE_TABLES {
                assert_eq!(
                    rows(&source, table.name),
                    rows(&back, table.name),
                    "{} (v7 fixture: {fixture})",
                    table.name
                );
            }
            assert_eq!(postgres.links(None).unwrap(), source.links(None).unwrap());
            assert_eq!(
                postgres.conflicts(false).unwrap(),
                source.conflicts(false).unwrap()
            );
            assert_eq!(
                postgres.pending_creates().unwrap(),
                source.pending_creates().unwrap()
            );
            assert_eq!(
                postgres.links_with_intent().unwrap(),
                source.links_with_intent().unwrap()
            );
            for code in ["CUST", "VEND"] {
                assert_eq!(
                    postgres.unlinked_pairs(code).unwrap(),
                    source.unlinked_pairs(code).unwrap()
                );
            }
            for contact in ["C1", "C0001", "C0002", "C0003", "C0004"] {
                assert_eq!(
                    postgres.interactions(contact, 100).unwrap(),
                    source.interactions(contact, 100).unwrap(),
                    "{contact}"
                );
            }
            assert_eq!(postgres.runs(100).unwrap(), source.runs(100).unwrap());
            let last_run = source.runs(1).unwrap().first().map_or(0, |r| r.id);
            assert_eq!(postgres.begin_run("sync").unwrap(), last_run + 1);
        }
    }

    #[test]
    fn a_target_holding_any_row_is_refused_and_left_unchanged() {
        let (_dir, source_path, target_path) = paths();
        let source = filled(&source_path, 3);
        let mut target = open(&target_path);
        target
            .commit(StateBatch {
                codes_lost: vec![("CUST".into(), "C1".into(), true)],
                ..StateBatch::default()
            })
            .unwrap();
        let before: Vec<_> = STATE_TABLES.iter().map(|t| rows(&target, t.name)).collect();
        let err = copy_state(&source, &mut target, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(
                err,
                CopyError::TargetNotEmpty {
                    table: "codes_lost",
                    rows: 1
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("empty state"),
            "says what to do: {err}"
        );
        let after: Vec<_> = STATE_TABLES.iter().map(|t| rows(&target, t.name)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn a_state_of_schema_7_is_copied_once_migrated() {
        let (_dir, source_path, target_path) = paths();
        std::fs::write(
            &source_path,
            include_bytes!("../tests/fixtures/state-v7.db"),
        )
        .unwrap();
        let source = open(&source_path);
        let mut target = open(&target_path);
        assert_eq!(
            source.schema_version().unwrap(),
            target.schema_version().unwrap()
        );
        let copied = copy_state(&source, &mut target, &mut |_, _| {}).unwrap();
        let count = |table: &str| copied.iter().find(|c| c.table == table).unwrap().rows;
        assert_eq!(count("links"), 7);
        assert!(count("interactions") > 0 && count("conflicts") == 1);
        assert_eq!(count("intent_batches"), 1, "the cut-short run's intents");
        // JSON text of rows written before migration 8 arrives in the binary form.
        let texts = |path: &Path| -> i64 {
            rusqlite::Connection::open(path)
                .unwrap()
                .query_row(
                    "SELECT (SELECT count(*) FROM links WHERE typeof(baseline) = 'text') + \
                     (SELECT count(*) FROM intent_batches WHERE typeof(links) = 'text')",
                    [],
                    |row| row.get(0),
                )
                .unwrap()
        };
        assert!(texts(&source_path) > 0, "the v7 state holds JSON");
        assert_eq!(texts(&target_path), 0);
        assert_eq!(target.links(None).unwrap(), source.links(None).unwrap());
        assert_eq!(
            target.links_with_intent().unwrap(),
            source.links_with_intent().unwrap()
        );
        assert_eq!(
            target.unlinked_pairs("CUST").unwrap(),
            source.unlinked_pairs("CUST").unwrap()
        );
        assert_eq!(target.unlinked_pairs("CUST").unwrap().len(), 1);
        for contact in ["C0001", "C0002", "C0003", "C0004"] {
            assert_eq!(
                target.interactions(contact, 100).unwrap(),
                source.interactions(contact, 100).unwrap(),
                "{contact}"
            );
        }
    }

    #[test]
    fn a_copy_that_stops_halfway_names_the_table_and_says_to_start_over() {
        let (_dir, source_path, target_path) = paths();
        let source = filled(&source_path, 3);
        // Text that is not UTF-8, which no store can take as text.
        rusqlite::Connection::open(&source_path)
            .unwrap()
            .execute(
                "INSERT INTO cursors VALUES ('erp', 'customer', CAST(x'ff' AS TEXT))",
                [],
            )
            .unwrap();
        let mut target = open(&target_path);
        let err = copy_state(&source, &mut target, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(&err, CopyError::Stopped { table: "cursors", cause }
                if matches!(**cause, CopyError::Source(StateError::Corrupt { .. }))),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("cursors") && message.contains("delete it"),
            "{message}"
        );
        assert_eq!(
            rows(&target, "runs"),
            rows(&source, "runs"),
            "copied before"
        );
    }

    #[test]
    fn a_checksum_ignores_row_order_and_sees_a_changed_missing_or_repeated_row() {
        let sum = |rows: &[Vec<StoredValue>]| {
            let mut checksum = TableChecksum::default();
            for row in rows {
                checksum.add(row);
            }
            checksum.value()
        };
        let a = vec![StoredValue::Integer(1), StoredValue::Text("x".into())];
        let b = vec![StoredValue::Integer(2), StoredValue::Null];
        let both = sum(&[a.clone(), b.clone()]);
        assert_eq!(both, sum(&[b.clone(), a.clone()]));
        assert_ne!(both, sum(std::slice::from_ref(&a)));
        assert_ne!(both, sum(&[a.clone(), b.clone(), b.clone()]));
        let text_as_blob = vec![StoredValue::Integer(1), StoredValue::Blob(b"x".to_vec())];
        assert_ne!(both, sum(&[text_as_blob, b]));
    }
}
