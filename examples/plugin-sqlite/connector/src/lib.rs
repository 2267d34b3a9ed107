//! An example connector for a system Tandem does not build in: records kept in a
//! SQLite database file. It is written like any third-party connector, against
//! `tandem-connector` only, so that it can be compiled into a binary or wrapped as a
//! plugin unchanged.
//!
//! Config: `type = "sqlite-example"`, settings `{"path": "<file.db>"}` (relative to the
//! config file). The file and its tables are created when missing; its folder must
//! exist.
//!
//! # The database
//!
//! One table per kind (`contacts`, `customers`, `vendors`, `bank_accounts`), each with
//!
//! - `id TEXT PRIMARY KEY`: ids the connector gives out are a kind prefix and a
//!   sequence number (`K12`), never reused;
//! - `fields TEXT`: a JSON object of the record's fields (canonical names and `x_`
//!   extras; values as `tandem-model` writes them, dates as `{"date": "YYYY-MM-DD"}`).
//!   Keys that are not fields of the kind are not exposed and are kept on updates;
//! - `extra TEXT`: a JSON value the connector never maps or changes, for the data of
//!   other applications;
//! - `version INTEGER`: incremented by every change, checked by updates and deletes;
//! - `modified_at TEXT`: RFC 3339 time of the last change;
//!
//! and a change log, `changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind, id,
//! deleted)`, that every write appends to in the same transaction.
//!
//! # Reads
//!
//! Incremental, with tombstones. A read without cursor is a full listing, paged by id;
//! its last page returns `changes:<seq>`, the last change before the listing began.
//! A read from `changes:<seq>` returns each record changed since, once, as it is now
//! (a tombstone when its row is gone), paged in the order of the changes.
//!
//! Like the file connector, it does its (blocking, local) IO inline.

mod db;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Page, WriteOp,
    WriteOutcome, parse_settings,
};
use tandem_model::EntityKind;

pub use db::Database;

/// The `type` of this connector in a config.
pub const TYPE_NAME: &str = "sqlite-example";

/// Records per page, unless [`SqliteConnector::with_page_size`] says otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: PathBuf,
}

/// Builds [`SqliteConnector`]s for `type = "sqlite-example"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteConnectorFactory;

impl ConnectorFactory for SqliteConnectorFactory {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings: Settings = parse_settings(settings)?;
        Ok(Arc::new(SqliteConnector::open(
            context.resolve(&settings.path),
        )?))
    }
}

/// Records in a SQLite database file; see the crate docs.
#[derive(Debug)]
pub struct SqliteConnector {
    db: Mutex<Database>,
    path: PathBuf,
    page_size: usize,
}

impl SqliteConnector {
    /// Opens (and if needed creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteConnector, ConnectorError> {
        let db = Database::open(path)?;
        Ok(SqliteConnector {
            path: db.path().to_owned(),
            db: Mutex::new(db),
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Serves reads in pages of `page_size` records (at least 1).
    pub fn with_page_size(mut self, page_size: usize) -> SqliteConnector {
        self.page_size = page_size.max(1);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> MutexGuard<'_, Database> {
        // Every change runs in a transaction that a panic rolls back, so the
        // connection is still good.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Connector for SqliteConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: EntityKind::ALL.to_vec(),
            incremental: true,
            write: true,
            delete: true,
            max_batch: 500,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.db().check()
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        self.db().read(kind, cursor, self.page_size)
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        self.db().write(kind, ops)
    }
}

#[cfg(test)]
mod tests;
