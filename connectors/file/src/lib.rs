//! A connector that keeps records in a folder of files, one file per kind
//! (`contacts.csv`, `customers.csv`, `vendors.csv`, `bank_accounts.csv`, or `.jsonl`).
//!
//! Config: `type = "file"`, settings `{"path": "<folder>", "format": "csv" | "jsonl"}`.
//!
//! Every read is a full listing; a big CSV file is listed a page at a time (pieces of
//! about 8 MiB, parsed on the machine's cores), so a run never holds all its records
//! at once. Every write re-reads the file, applies the operations and replaces the file
//! atomically (a big CSV file: through a journal beside it, folded into the file in one
//! such rewrite, `csv/journal.rs`), keeping what the file was: a symbolic link stays a
//! link (its target is replaced), and mode, owner, group, line ends and byte order mark
//! stay as found. A fingerprint (length and hash of the file's bytes)
//! lets the engine skip reading a file that did not change since the last run. Columns (CSV) and keys (JSON Lines) that are not
//! fields of the kind are never exposed but are kept on every rewrite. A record's
//! version is a hash of its whole row, so any edit to the file changes it.
//!
//! A write holds the folder's lock file (`.tandem-write.lock`) from its read to its
//! rename, so that two processes writing one folder (a worker that was stopped and
//! resumes beside the one that took over from it) apply their writes one after the
//! other instead of the later rename undoing the other's.
//!
//! File IO is blocking and done inline: reads and writes are whole-file operations
//! that the engine awaits one at a time anyway, and this keeps the crate free of any
//! particular async runtime.

mod atomic;
mod csv;
mod error;
mod id_index;
mod id_list;
mod jsonl;
mod link;
mod lock;
mod pieces;
mod row;
mod table;

use std::collections::HashMap;
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

use crate::error::FileError;

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

/// When writes to a CSV file go through a journal beside it (`csv/journal.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Journal {
    /// For files of [`JOURNAL_FROM_BYTES`] or more, but not for a write that would
    /// fill a journal by itself.
    #[default]
    Auto,
    /// For files of any size and writes of any size.
    Always,
    /// Never: every write rewrites the file.
    Never,
}

impl Journal {
    /// The size from which a file is written through a journal.
    fn files_from(self) -> u64 {
        match self {
            Journal::Auto => JOURNAL_FROM_BYTES,
            Journal::Always => 0,
            Journal::Never => u64::MAX,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: PathBuf,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    journal: Journal,
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
        let connector = FileConnector::new(context.resolve(&settings.path), settings.format);
        Ok(Arc::new(
            connector.journaling_from(settings.journal.files_from()),
        ))
    }
}

/// Records kept in a folder of CSV or JSON Lines files.
///
/// A handle on the folder's [`Files`]: a write is carried out on a thread of the
/// runtime's blocking pool, which takes a handle of its own, so that the run's own
/// thread goes on (the engine plans its next range of hubs meanwhile) and the
/// runtime's threads are never held by file I/O.
#[derive(Debug, Clone)]
pub struct FileConnector(Arc<Files>);

impl std::ops::Deref for FileConnector {
    type Target = Files;

    fn deref(&self) -> &Files {
        &self.0
    }
}

/// The folder, and what a [`FileConnector`] remembers of its files between calls.
#[derive(Debug)]
pub struct Files {
    folder: PathBuf,
    format: Format,
    /// Writes read, change and replace a whole file; two at once would lose one.
    writing: Mutex<()>,
    /// Per kind: the fingerprint taken last, and the (before, after) fingerprints of
    /// every write through this instance since then.
    own_writes: Mutex<HashMap<EntityKind, OwnWrites>>,
    /// The JSON Lines file this instance saved last, still in memory with the
    /// fingerprint of the bytes it saved: the next write to the same file starts from
    /// it instead of parsing the file again (a run writes the contacts file twice:
    /// creates, then updates), as long as nobody else changed the file. Dropped when a
    /// run starts reading (`fingerprint`), so an idle connector holds nothing. A CSV
    /// file is never held: its writes stream it, or splice it by the index below.
    last_saved: Mutex<Option<SavedTable>>,
    /// Per kind, the CSV listing being read a page at a time (a big file's records are
    /// never all held at once), with the fingerprint the file had when the run began
    /// (none if this instance wrote it since); dropped at its last page or a new
    /// listing's start.
    listings: Mutex<HashMap<EntityKind, (csv::Listing, Option<String>)>>,
    /// Per kind, where each row of the file starts as the last complete listing read
    /// it, with the fingerprint it is of: a write of a few rows splices the file
    /// instead of parsing and writing all of it. Dropped when a run starts reading
    /// and by the write that uses it.
    indexes: Mutex<HashMap<EntityKind, (String, csv::RowIndex)>>,
    /// Per kind, the journal this instance's writes to a big CSV file go to
    /// (`csv/journal.rs`), folded into the file when anything else touches it.
    journals: Mutex<HashMap<EntityKind, csv::Journal>>,
    /// CSV files from this size on are written through a journal; from 0 (`journal =
    /// "always"`) even by a write that fills one by itself.
    journal_from: u64,
}

#[derive(Debug)]
struct SavedTable {
    kind: EntityKind,
    fingerprint: String,
    table: jsonl::JsonlTable,
}

#[derive(Debug)]
struct OwnWrites {
    since: String,
    writes: Vec<(String, String)>,
}

impl FileConnector {
    pub fn new(path: PathBuf, format: Format) -> FileConnector {
        FileConnector(Arc::new(Files {
            folder: path,
            format,
            writing: Mutex::new(()),
            own_writes: Mutex::new(HashMap::new()),
            last_saved: Mutex::new(None),
            listings: Mutex::new(HashMap::new()),
            indexes: Mutex::new(HashMap::new()),
            journals: Mutex::new(HashMap::new()),
            journal_from: JOURNAL_FROM_BYTES,
        }))
    }

    /// The same connector, writing CSV files of `bytes` or more through a journal
    /// (the default is [`JOURNAL_FROM_BYTES`]; `u64::MAX`: never; 0: every write,
    /// even one that would fill a journal by itself).
    ///
    /// # Panics
    /// When the connector is shared already.
    #[must_use]
    pub fn journaling_from(mut self, bytes: u64) -> FileConnector {
        Arc::get_mut(&mut self.0)
            .expect("set before the connector is shared")
            .journal_from = bytes;
        self
    }
}

impl Files {
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
                "{} is not a folder; set the connector's `path` to the folder that holds \
                 the files, then run again",
                self.folder.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ConnectorError::config(format!(
                "folder {} does not exist; create it (or mount the share it is on) or set the \
                 connector's `path` to the folder that holds the files, then run again",
                self.folder.display()
            ))),
            Err(e) => Err(ConnectorError::fatal(format!(
                "cannot open folder {}: {e}; check that Tandem may open it, then run again",
                self.folder.display()
            ))),
        }
    }

    /// The length and xxh3 hash of the file's bytes (`none` for a missing file): any
    /// edit changes it, whatever the editor and the file times say.
    fn content_fingerprint(&self, kind: EntityKind) -> Result<String, ConnectorError> {
        self.check_folder()?;
        let path = self.file(kind);
        let Some(mut file) = link::open(&path)? else {
            return Ok("none".to_owned());
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            match io::Read::read(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FileError::read(&path, e).into()),
            }
        }
        Ok(fingerprint_of(len, hasher.digest()))
    }

    fn read_all(&self, kind: EntityKind) -> Result<Vec<Record>, ConnectorError> {
        self.check_folder()?;
        let path = self.file(kind);
        match self.format {
            Format::Csv => csv::read(&path, kind),
            Format::Jsonl => jsonl::read(&path, kind),
        }
    }

    /// A page of a CSV file's full listing: the whole file when it is small, else the
    /// next pieces of the listing `cursor` goes on with (none: a new listing).
    fn read_page(&self, kind: EntityKind, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        self.check_folder()?;
        let mut listings = self.listings.lock().unwrap_or_else(PoisonError::into_inner);
        if cursor.is_none() {
            // What the file held when the run began, if nothing since: the index the
            // listing leaves is of that content only if the fingerprint still holds.
            let began = (self.own_writes_lock().get(&kind))
                .filter(|own| own.writes.is_empty())
                .map(|own| own.since.clone());
            let listing = csv::Listing::open(&self.file(kind), kind)?;
            listings.insert(kind, (listing, began));
        }
        let (listing, _) = listings
            .get_mut(&kind)
            .filter(|(l, _)| cursor.is_none_or(|c| c.0 == l.position()))
            .ok_or_else(|| {
                ConnectorError::transient(format!(
                    "the listing of {} was started again by another read before this page; run \
                     again",
                    self.file(kind).display()
                ))
            })?;
        let records = listing.next_page();
        let more = !listing.is_done();
        let cursor = more.then(|| Cursor(listing.position()));
        if !more || records.is_err() {
            let done = listings.remove(&kind);
            if let (Some((listing, Some(began))), true) = (done, records.is_ok())
                && let Some(index) = listing.into_index()
            {
                self.indexes_lock().insert(kind, (began, index));
            }
        }
        Ok(Page {
            records: records?,
            listing: Listing::Full,
            cursor,
            has_more: more,
        })
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
        let _folder = lock::FolderLock::take(&self.folder)?;
        let path = self.file(kind);
        let ops = match self.take_journal(kind, &path)? {
            Some(journal) => match self.write_journaled(kind, &path, journal, ops)? {
                csv::Splice::Done(outcomes, _) => return Ok(outcomes),
                csv::Splice::NotHere(ops) => ops,
            },
            None => ops,
        };
        let before = self.content_fingerprint(kind)?;
        let (outcomes, after) = match self.format {
            Format::Csv => match self.begin_journal(kind, &path, &before, ops)? {
                csv::Splice::Done(outcomes, _) => return Ok(outcomes),
                csv::Splice::NotHere(ops) => self.write_csv(kind, &path, &before, ops)?,
            },
            Format::Jsonl => self.write_jsonl(kind, &path, &before, ops)?,
        };
        if let Some(own) = self.own_writes_lock().get_mut(&kind) {
            own.writes.push((before, after));
        }
        Ok(outcomes)
    }

    /// The journal of `kind` this instance keeps, if writes may go on in it: one that
    /// is full or whose file someone else changed is folded, and one a stopped process
    /// left is folded row by row. Called with the folder's lock held.
    fn take_journal(
        &self,
        kind: EntityKind,
        path: &Path,
    ) -> Result<Option<csv::Journal>, ConnectorError> {
        match self.journals_lock().remove(&kind) {
            Some(journal) if journal.still_of(path) && !journal.full() => Ok(Some(journal)),
            Some(journal) => self.fold(kind, path, journal).map(|()| None),
            None => self.recover(kind, path).map(|()| None),
        }
    }

    /// A write to the CSV file of `kind`, as `before`, through a new journal when the
    /// file is big, this run indexed it and the ops would not fill the journal alone;
    /// the ops back otherwise.
    fn begin_journal(
        &self,
        kind: EntityKind,
        path: &Path,
        before: &str,
        ops: Vec<WriteOp>,
    ) -> Result<csv::Splice, ConnectorError> {
        let mut indexes = self.indexes_lock();
        let index = match indexes.remove(&kind) {
            Some((of, index))
                if of == before
                    && index.size() >= self.journal_from
                    && (self.journal_from == 0 || !csv::Journal::would_fill(&index, &ops)) =>
            {
                index
            }
            other => {
                indexes.extend(other.map(|index| (kind, index)));
                return Ok(csv::Splice::NotHere(ops));
            }
        };
        drop(indexes);
        // With the columns the ops add: the first write of a first sync lists each
        // contact's codes (R9), often in a column the file lacks, and would otherwise
        // write the whole file at once.
        let columns = csv::columns_for(path, kind, &index, &ops)?;
        let journal = csv::Journal::begin_with(path, before.to_owned(), index, columns)?;
        self.write_journaled(kind, path, journal, ops)
    }

    /// A write to the CSV file of `kind` through `journal`, kept for the next write;
    /// the ops back, with the journal folded, when it cannot take them. After an
    /// error the journal is let go: the next call folds what it holds on disk.
    fn write_journaled(
        &self,
        kind: EntityKind,
        path: &Path,
        mut journal: csv::Journal,
        ops: Vec<WriteOp>,
    ) -> Result<csv::Splice, ConnectorError> {
        match csv::write_journaled(path, kind, &mut journal, ops)? {
            csv::Splice::Done(outcomes, _) => {
                self.journals_lock().insert(kind, journal);
                Ok(csv::Splice::Done(outcomes, None))
            }
            csv::Splice::NotHere(ops) => {
                self.fold(kind, path, journal)?;
                Ok(csv::Splice::NotHere(ops))
            }
        }
    }

    /// Folds `journal` into the CSV file of `kind`, which it began on: as this
    /// instance's own write when the file is as the journal found it, else row by
    /// row. Keeps the file's index for the next write. Called with the folder's lock
    /// held.
    fn fold(
        &self,
        kind: EntityKind,
        path: &Path,
        journal: csv::Journal,
    ) -> Result<(), ConnectorError> {
        if !journal.still_of(path) {
            drop(journal);
            return self.recover(kind, path);
        }
        let before = journal.base().to_owned();
        let (after, index) = journal.fold(path)?;
        if let Some(own) = self.own_writes_lock().get_mut(&kind) {
            own.writes.push((before, after.clone()));
        }
        self.indexes_lock().insert(kind, (after, index));
        Ok(())
    }

    /// Folds the journal a stopped process left beside the CSV file of `kind`, if
    /// any, and says what it did. Called with the folder's lock held.
    fn recover(&self, kind: EntityKind, path: &Path) -> Result<(), ConnectorError> {
        if self.format != Format::Csv {
            return Ok(());
        }
        let Some(done) = csv::recover(path, kind)? else {
            return Ok(());
        };
        let journal = csv::journal_path(path);
        tracing::info!(
            "{}: {} rows written from {}, left by a run that stopped before it was folded \
             into the file ({} were in the file already)",
            path.display(),
            done.applied,
            journal.display(),
            done.already
        );
        if done.kept > 0 {
            tracing::warn!(
                "{}: {} rows written by a run that stopped were edited or removed in the file \
                 since; the edited cells were kept (a removed row stays removed), and the \
                 next run takes them as edits",
                path.display(),
                done.kept
            );
        }
        if done.cut_short {
            tracing::warn!(
                "{}: the end of {} was cut short by the stop, in a write that had not \
                 answered: that write was not applied, and the next sync makes it again",
                path.display(),
                journal.display()
            );
        }
        Ok(())
    }

    /// Puts every write this instance holds in a journal into its file (a run does at
    /// its end; also done when the connector is let go).
    ///
    /// # Errors
    /// When a file cannot be written: the writes stay in the journal, for the next
    /// call or run.
    pub fn flush(&self) -> Result<(), ConnectorError> {
        let kinds: Vec<EntityKind> = self.journals_lock().keys().copied().collect();
        kinds.into_iter().try_for_each(|kind| self.settle(kind))
    }

    /// Folds the journal of `kind`, this instance's or one a stopped process left,
    /// before the file is read or its fingerprint taken.
    fn settle(&self, kind: EntityKind) -> Result<(), ConnectorError> {
        if self.format != Format::Csv {
            return Ok(());
        }
        let path = self.file(kind);
        let own = self.journals_lock().contains_key(&kind);
        if !own && fs::symlink_metadata(csv::journal_path(&path)).is_err() {
            return Ok(());
        }
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let _folder = lock::FolderLock::take(&self.folder)?;
        let journal = self.journals_lock().remove(&kind);
        match journal {
            Some(journal) => self.fold(kind, &path, journal),
            None => self.recover(kind, &path),
        }
    }

    /// A write to the JSON Lines file of `kind`, whose fingerprint is `before`: the file
    /// loaded (or kept from this instance's last write to it), changed and saved
    /// whole; kept for the next write.
    fn write_jsonl(
        &self,
        kind: EntityKind,
        path: &Path,
        before: &str,
        ops: Vec<WriteOp>,
    ) -> Result<(Vec<WriteOutcome>, String), ConnectorError> {
        let mut last_saved = self
            .last_saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let saved = (last_saved.take()).filter(|s| s.kind == kind && s.fingerprint == before);
        let mut table = match saved {
            Some(saved) => saved.table,
            None => jsonl::JsonlTable::load(path, kind)?,
        };
        let (outcomes, saved) = apply(&mut table, kind, ops)?;
        let after = saved.unwrap_or_else(|| before.to_owned());
        *last_saved = Some(SavedTable {
            kind,
            fingerprint: after.clone(),
            table,
        });
        Ok((outcomes, after))
    }

    /// A write to the CSV file of `kind`, whose fingerprint is `before`: spliced when
    /// it touches few rows of a big file this run indexed, else streamed through the
    /// whole file. Returns the outcomes and the file's fingerprint after; the file's
    /// index as written is kept, so that the run's next write to it can splice.
    fn write_csv(
        &self,
        kind: EntityKind,
        path: &Path,
        before: &str,
        ops: Vec<WriteOp>,
    ) -> Result<(Vec<WriteOutcome>, String), ConnectorError> {
        let index = self.row_index(kind, path, before, &ops)?;
        let ops = match &index {
            Some(of_before) => match csv::splice(path, kind, of_before, ops)? {
                csv::Splice::Done(outcomes, saved) => {
                    let index = index.expect("spliced by it");
                    let (after, index) = saved.unwrap_or_else(|| (before.to_owned(), index));
                    self.indexes_lock().insert(kind, (after.clone(), index));
                    return Ok((outcomes, after));
                }
                csv::Splice::NotHere(ops) => ops,
            },
            None => ops,
        };
        let (outcomes, saved) = csv::stream(path, kind, ops)?;
        // The index of the file as it is now, for the run's next write to it.
        let (after, index) = match (saved, index) {
            (Some((after, index)), _) => (after, Some(index)),
            (None, index) => (before.to_owned(), index),
        };
        if let Some(index) = index {
            self.indexes_lock().insert(kind, (after.clone(), index));
        }
        Ok((outcomes, after))
    }

    /// Where each row of the CSV file of `kind` starts, for a splice: the index this
    /// run's listing left, if the file is still as listed (`before`); for a file not
    /// listed since the last `fingerprint` call, a scan of it when `ops` are few for
    /// its size. `None` otherwise: the write goes the full way, as it does for a file
    /// edited since its listing.
    fn row_index(
        &self,
        kind: EntityKind,
        path: &Path,
        before: &str,
        ops: &[WriteOp],
    ) -> Result<Option<csv::RowIndex>, ConnectorError> {
        match self.indexes_lock().remove(&kind) {
            Some((of, index)) => Ok((of == before).then_some(index)),
            None => {
                let size = fingerprint_size(before);
                let few = size >= SCAN_FROM_BYTES && ops.len() as u64 * SCAN_BYTES_PER_OP <= size;
                if !few {
                    return Ok(None);
                }
                csv::RowIndex::scan(path, kind)
            }
        }
    }

    fn indexes_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<EntityKind, (String, csv::RowIndex)>> {
        self.indexes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn journals_lock(&self) -> std::sync::MutexGuard<'_, HashMap<EntityKind, csv::Journal>> {
        self.journals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn own_writes_lock(&self) -> std::sync::MutexGuard<'_, HashMap<EntityKind, OwnWrites>> {
        self.own_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies `ops` to a loaded file and saves it if any succeeded; returns the outcomes
/// and, if the file was saved, the fingerprint of what was saved.
fn apply(
    table: &mut jsonl::JsonlTable,
    kind: EntityKind,
    ops: Vec<WriteOp>,
) -> Result<(Vec<WriteOutcome>, Option<String>), ConnectorError> {
    let (outcomes, changed) = table::apply(table, kind, ops);
    let saved = match changed {
        true => Some(table.save()?),
        false => None,
    };
    Ok((outcomes, saved))
}

/// A file's fingerprint: its length and the xxh3 hash of its bytes.
pub(crate) fn fingerprint_of(len: u64, hash: u64) -> String {
    format!("{len}:{hash:016x}")
}

/// The size of the file a fingerprint is of (0 for a missing file).
fn fingerprint_size(fingerprint: &str) -> u64 {
    let size = fingerprint.split_once(':').map(|(size, _)| size);
    size.and_then(|size| size.parse().ok()).unwrap_or(0)
}

/// CSV files from this size on are written through a journal (`csv/journal.rs`): at
/// 100 bytes a row, about 80,000 rows. A write of a run's range costs a journal about
/// 1.3 µs a row it writes, a rewrite 0.25 µs a row of the file: the vendors of a
/// first sync at 1M (250,000 rows, 24 MB, 15,000 written per range) cost a third as
/// much through a journal.
pub const JOURNAL_FROM_BYTES: u64 = 8 << 20;

/// A file not listed this run is scanned for a splice from this size on (about the
/// 20,000 rows from which a splice pays)...
const SCAN_FROM_BYTES: u64 = 2 << 20;

/// ... when it has this many bytes per op or more: a splice pays for one op per eight
/// rows, which for rows of 256 bytes is one per 2 KiB. A file of longer rows may turn
/// out to have too few rows once scanned, and is then written the full way.
const SCAN_BYTES_PER_OP: u64 = 2 << 10;

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
            self.settle(kind)?;
            self.read_all(kind)?;
        }
        Ok(())
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        // On the pool, as a write: the engine takes one page while the next is parsed.
        let cursor = cursor.cloned();
        self.on_pool("the read of", move |files| {
            files.read_now(kind, cursor.as_ref())
        })
        .await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        self.on_pool("the write to", move |files| files.write_all(kind, ops))
            .await
    }

    async fn fingerprint(&self, kind: EntityKind) -> Result<Option<String>, ConnectorError> {
        self.settle(kind)?;
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        // A run starts reading: the table kept from the last run's writes, and the
        // index of the last listing, are let go.
        self.last_saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.indexes_lock().remove(&kind);
        let fingerprint = self.content_fingerprint(kind)?;
        self.own_writes_lock().insert(
            kind,
            OwnWrites {
                since: fingerprint.clone(),
                writes: Vec::new(),
            },
        );
        Ok(Some(fingerprint))
    }

    async fn fingerprint_after_own_writes(
        &self,
        kind: EntityKind,
        since: &str,
    ) -> Result<Option<String>, ConnectorError> {
        // Folding a journal rewrites the file: as a write, so that the engine's other
        // scopes are folded meanwhile.
        let since = since.to_owned();
        self.on_pool("the fingerprint of", move |files| {
            files.fingerprint_after_own_writes_now(kind, &since)
        })
        .await
    }
}

impl FileConnector {
    /// `work` on a thread of the runtime's pool for blocking work, so that the
    /// runtime's other tasks go on meanwhile; in line outside a runtime (no pool to
    /// hand it to). `what` names the call in the error of one cancelled.
    async fn on_pool<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce(FileConnector) -> Result<T, ConnectorError> + Send + 'static,
    ) -> Result<T, ConnectorError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return work(self.clone());
        }
        let files = self.clone();
        match tokio::task::spawn_blocking(move || work(files)).await {
            Ok(answer) => answer,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ConnectorError::fatal(format!(
                "{what} {} was cancelled: {e}",
                self.folder.display()
            ))),
        }
    }

    /// [`Connector::read`] on this thread.
    fn read_now(&self, kind: EntityKind, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        if cursor.is_none() {
            self.settle(kind)?;
        }
        if self.format == Format::Csv {
            return self.read_page(kind, cursor);
        }
        Ok(Page {
            records: self.read_all(kind)?,
            listing: Listing::Full,
            cursor: None,
            has_more: false,
        })
    }

    /// [`Connector::fingerprint_after_own_writes`] on this thread.
    fn fingerprint_after_own_writes_now(
        &self,
        kind: EntityKind,
        since: &str,
    ) -> Result<Option<String>, ConnectorError> {
        self.settle(kind)?;
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = {
            let own = self.own_writes_lock();
            let Some(own) = own.get(&kind).filter(|o| o.since == since) else {
                return Ok(None);
            };
            // Each write must start where the one before ended: anything in between
            // was someone else's edit.
            let mut current = own.since.clone();
            for (before, after) in &own.writes {
                if *before != current {
                    return Ok(None);
                }
                current.clone_from(after);
            }
            current
        };
        let now = self.content_fingerprint(kind)?;
        Ok((now == expected).then_some(now))
    }
}

/// What a journal holds goes into its file when the connector is let go (the end of
/// a run, or of a run stopped by an error): the file is whole again for whoever reads
/// it next. A process killed before leaves the journal, folded by the next run.
impl Drop for Files {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(
                "{e}; the writes are kept in a journal beside the file (.<file>.tandem-journal) \
                 and go into the file on the next run"
            );
        }
    }
}

#[cfg(test)]
mod tests;
