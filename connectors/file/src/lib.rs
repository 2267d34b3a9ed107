//! A connector that keeps records in a folder of files, one file per kind
//! (`contacts.csv`, `customers.csv`, `vendors.csv`, `bank_accounts.csv`, or `.jsonl`).
//!
//! Config: `type = "file"`, settings `{"path": "<folder>", "format": "csv" | "jsonl"}`.
//!
//! Every read is a full listing. Every write re-reads the file, applies the operations
//! and replaces the file atomically. Columns (CSV) and keys (JSON Lines) that are not
//! fields of the kind are never exposed but are kept on every rewrite. A record's
//! version is a hash of its whole row, so any edit to the file changes it.
//!
//! File IO is blocking and done inline: reads and writes are whole-file operations
//! that the engine awaits one at a time anyway, and this keeps the crate free of any
//! particular async runtime.

mod atomic;
mod csv;
mod jsonl;
mod table;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Listing, Page,
    WriteOp, WriteOutcome, parse_settings,
};
use tandem_model::{EntityKind, Record};

use crate::table::Table;

/// The format of the files in the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Csv,
    Jsonl,
}

impl Format {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: PathBuf,
    #[serde(default)]
    format: Format,
}

/// Builds [`FileConnector`]s for `type = "file"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileConnectorFactory;

impl ConnectorFactory for FileConnectorFactory {
    fn type_name(&self) -> &'static str {
        "file"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings: Settings = parse_settings(settings)?;
        Ok(Arc::new(FileConnector::new(
            context.resolve(&settings.path),
            settings.format,
        )))
    }
}

/// Records kept in a folder of CSV or JSON Lines files.
#[derive(Debug)]
pub struct FileConnector {
    folder: PathBuf,
    format: Format,
    /// Writes read, change and replace a whole file; two at once would lose one.
    writing: Mutex<()>,
}

impl FileConnector {
    pub fn new(path: PathBuf, format: Format) -> FileConnector {
        FileConnector {
            folder: path,
            format,
            writing: Mutex::new(()),
        }
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The file that holds records of `kind`, e.g. `<folder>/bank_accounts.csv`.
    pub fn file(&self, kind: EntityKind) -> PathBuf {
        self.folder
            .join(format!("{}.{}", kind.plural(), self.format.extension()))
    }

    /// A missing folder is an error, not an empty set: an empty full listing would
    /// tell the engine that every record was deleted.
    fn check_folder(&self) -> Result<(), ConnectorError> {
        match fs::metadata(&self.folder) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(ConnectorError::config(format!(
                "{} is not a folder",
                self.folder.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ConnectorError::config(format!(
                "folder {} does not exist",
                self.folder.display()
            ))),
            Err(e) => Err(table::io_error("cannot open folder", &self.folder, e)),
        }
    }

    fn read_all(&self, kind: EntityKind) -> Result<Vec<Record>, ConnectorError> {
        self.check_folder()?;
        let path = self.file(kind);
        match self.format {
            Format::Csv => csv::read(&path, kind),
            Format::Jsonl => jsonl::read(&path, kind),
        }
    }

    fn write_all(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        self.check_folder()?;
        // A panic in another write left no half-written file behind (the rename is
        // atomic), so the lock is still good.
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.file(kind);
        match self.format {
            Format::Csv => apply(csv::CsvTable::load(&path, kind)?, kind, ops),
            Format::Jsonl => apply(jsonl::JsonlTable::load(&path, kind)?, kind, ops),
        }
    }
}

fn apply(
    mut table: impl Table,
    kind: EntityKind,
    ops: Vec<WriteOp>,
) -> Result<Vec<WriteOutcome>, ConnectorError> {
    let (outcomes, changed) = table::apply(&mut table, kind, ops);
    if changed {
        table.save()?;
    }
    Ok(outcomes)
}

#[async_trait::async_trait]
impl Connector for FileConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: EntityKind::ALL.to_vec(),
            incremental: false,
            write: true,
            delete: true,
            // Every write call rewrites the whole file, so fewer, larger calls are better.
            max_batch: 1_000_000,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.check_folder()?;
        for kind in EntityKind::ALL {
            self.read_all(kind)?;
        }
        Ok(())
    }

    async fn read(
        &self,
        kind: EntityKind,
        _cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        Ok(Page {
            records: self.read_all(kind)?,
            listing: Listing::Full,
            cursor: None,
            has_more: false,
        })
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        self.write_all(kind, ops)
    }
}

#[cfg(test)]
mod tests;
