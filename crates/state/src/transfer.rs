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
    /// Text or blob: baselines and intent batches, binary since migration 8, JSON text
    /// in rows written before.
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
    #[error("writing the target failed: {0}")]
    Target(#[source] StateError),
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
        progress(table.name, 0);
        let mut checksum = TableChecksum::default();
        let mut chunk = Vec::with_capacity(COPY_CHUNK_ROWS);
        let mut done = 0;
        // A failed import ends the export with its error; `target_failed` says that
        // the error came from the target.
        let mut target_failed = false;
        let exported = from.export_table(table.name, &mut |row| {
            checksum.add(&row);
            chunk.push(row);
            if chunk.len() == COPY_CHUNK_ROWS {
                let rows = std::mem::replace(&mut chunk, Vec::with_capacity(COPY_CHUNK_ROWS));
                done += rows.len() as u64;
                if let Err(e) = to.import_rows(table.name, rows) {
                    target_failed = true;
                    return Err(e);
                }
                progress(table.name, done);
            }
            Ok(())
        });
        let exported = match exported {
            Err(e) if target_failed => return Err(CopyError::Target(e)),
            exported => exported.map_err(CopyError::Source)?,
        };
        if !chunk.is_empty() {
            done += chunk.len() as u64;
            to.import_rows(table.name, chunk)
                .map_err(CopyError::Target)?;
            progress(table.name, done);
        }
        verify(&*to, table.name, exported, checksum.value())?;
        copied.push(TableCopied {
            table: table.name,
            rows: exported,
        });
    }
    Ok(copied)
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
