//! Writes to a big CSV file held in a journal beside it (`.contacts.csv.tandem-journal`)
//! and folded into the file in one rewrite: a run that writes a file in many calls (a
//! memory budget's ranges, each a call per kind) would otherwise rewrite all of it per
//! call. At ten million partners each rewrite of the contacts file moves a gigabyte,
//! and the ranges of a 4 GiB budget rewrote it thirty times.
//!
//! A write call appends the rows it writes anew (and the rows as it found them) to the
//! journal as one block (its length and hash first) and syncs it before it answers, so
//! a write the engine was told of is on disk. The journal's rows are in its own
//! columns, listed at its start: the file's, then any the write that began it adds
//! (the fold adds them to the file, each row it copies padded with empty cells). The file itself is left as it was until
//! the journal is folded: when the connector next reads, fingerprints or makes a write
//! the journal cannot take (a row it already holds, a new column), when the journal is
//! as big as the file, on `flush`, and when the connector is dropped. A call that
//! would fill a new journal by itself ([`Journal::would_fill`]: a run writing a file
//! in one call) begins none and rewrites the file at once.
//!
//! Invariants:
//! - While a journal is open, the file is exactly as it was when the journal began
//!   (checked by its identity, [`Identity`], at every call, under the folder's lock):
//!   the rows' places in [`RowIndex`] hold, so the fold needs no check.
//! - A row is in the journal at most once: a write touching a row the journal holds
//!   folds the journal first.
//! - A journal found on disk (a process stopped before its fold) is folded by checking
//!   each row: a row as the journal found it gets the journal's; a row already as the
//!   journal wrote it (the fold had renamed the file) is left; a row edited since keeps
//!   its edited cells and takes the journal's others (the next run sees the edit as
//!   one); a row removed since stays removed; a column added since keeps its cells. A
//!   block cut short (its hash does not match) ends the journal: its write never
//!   answered.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use tandem_connector::{ConnectorError, WriteOp};
use tandem_model::EntityKind;

use csv::StringRecord;

use super::Layout;
use super::splice::{RowIndex, Splices, Window, all_rows, splice_file};
use crate::error::FileError;
use crate::id_index::IdIndex;
use crate::id_list::IdList;
use crate::table::IdAllocator;

/// The first bytes of a journal.
const MAGIC: &[u8; 8] = b"TNDMJRN1";

/// A journal is folded once it holds this many bytes, or as many as its file if more.
const FOLD_FROM: u64 = if cfg!(test) { 1 } else { 64 << 20 };

/// The size at which a journal of the file `index` indexes is folded.
fn fold_from(index: &RowIndex) -> u64 {
    index.size.max(FOLD_FROM)
}

/// What an entry does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tag {
    /// The row of the file written anew.
    Update = 1,
    /// The row of the file removed.
    Delete = 2,
    /// A row added after the last.
    Create = 3,
}

impl Tag {
    fn of(byte: u8) -> Option<Tag> {
        match byte {
            1 => Some(Tag::Update),
            2 => Some(Tag::Delete),
            3 => Some(Tag::Create),
            _ => None,
        }
    }
}

/// The entries of one write call, written to the journal as they come (a range's
/// rows held whole took tens of MB beside the write): per entry its tag, the row of
/// the file it replaces (`u32::MAX` for a create), its id, the hash of the row's cells
/// as the write found it (`Layout::hash`, its version; 0 for a create) and its bytes
/// then (none for a create), and the row's bytes as written. The block's length and
/// hash go before its entries once they are all written.
pub(super) struct Block<'f> {
    out: io::BufWriter<&'f File>,
    /// Where the block starts in the journal.
    start: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    entry: Vec<u8>,
    appended: Appended,
}

/// What a block added to the journal: its bytes, the rows of the file it replaces or
/// removes, the ones it removes, and the ids it adds.
#[derive(Debug, Default)]
pub(super) struct Appended {
    len: u64,
    rows: Vec<usize>,
    removed: Vec<usize>,
    created: IdList,
}

impl Block<'_> {
    /// Writes the entry of the row `row` with `id`, which was `was` (its hash and
    /// bytes) and is written as `line`.
    pub(super) fn push(
        &mut self,
        tag: Tag,
        (row, id): (usize, &str),
        (base, was): (u64, &[u8]),
        line: &[u8],
    ) -> io::Result<()> {
        let row32 = match tag {
            Tag::Create => u32::MAX,
            _ => u32::try_from(row).expect("fewer than 2^32 rows in a file"),
        };
        let appended = &mut self.appended;
        match tag {
            Tag::Create => appended.created.push(id),
            Tag::Update => appended.rows.push(row),
            Tag::Delete => {
                appended.rows.push(row);
                appended.removed.push(row);
            }
        }
        let entry = &mut self.entry;
        entry.clear();
        entry.push(tag as u8);
        entry.extend_from_slice(&row32.to_le_bytes());
        put_bytes(entry, id.as_bytes());
        entry.extend_from_slice(&base.to_le_bytes());
        put_bytes(entry, was);
        put_bytes(entry, line);
        self.hasher.update(entry);
        appended.len += entry.len() as u64;
        self.out.write_all(entry)
    }

    /// Puts the block's length and hash before it and syncs it.
    pub(super) fn finish(self) -> io::Result<Appended> {
        let mut file = self
            .out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        let mut appended = self.appended;
        if appended.len == 0 {
            file.set_len(self.start)?;
            return Ok(appended);
        }
        let mut head = [0; 16];
        head[..8].copy_from_slice(&appended.len.to_le_bytes());
        head[8..].copy_from_slice(&self.hasher.digest().to_le_bytes());
        file.seek(io::SeekFrom::Start(self.start))?;
        file.write_all(&head)?;
        file.sync_data()?;
        appended.len += 16;
        Ok(appended)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a row of less than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What the system says of a file that changes with any write to it: its device and
/// inode (a rename puts another file there), length, and modification and change
/// times (the change time no program sets back).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    node: (u64, u64, i64, i64),
}

impl Identity {
    fn of(path: &Path) -> io::Result<Identity> {
        let meta = fs::metadata(path)?;
        #[cfg(unix)]
        let node = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        Ok(Identity {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            node,
        })
    }
}

/// The journal of the file at `path`: hidden, beside it.
pub(crate) fn path_of(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = format!(".{}.tandem-journal", name.unwrap_or_default());
    path.with_file_name(name)
}

/// A journal this connector writes, with what it knows of its file.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes written and synced.
    len: u64,
    /// The file's fingerprint and identity when the journal began.
    base: String,
    identity: Identity,
    index: RowIndex,
    /// The columns of the rows the journal holds: the file's, then those the first
    /// write added (a first sync lists each contact's codes, R9, in a column the file
    /// may not have). The fold gives the file these columns.
    columns: StringRecord,
    /// Rows of the file the journal holds, and of them the ones it removes, one bit
    /// each.
    rows: Vec<u64>,
    removed: Vec<u64>,
    /// Ids the journal adds, in order, and by id.
    created: IdList,
    created_index: IdIndex,
    /// Whether it removes any row.
    removes_any: bool,
    /// The file's rows by id, and where its new ids start, made when a write first
    /// needs them and kept: a create call of a run in ranges would otherwise index
    /// every row of the file again.
    all: std::cell::OnceCell<IdIndex>,
    file_ids: std::cell::OnceCell<IdAllocator>,
}

impl Journal {
    /// A new journal for the file at `csv`, whose fingerprint is `base` and rows
    /// `index`, with the file's columns.
    #[cfg(test)]
    pub(crate) fn begin(
        csv: &Path,
        base: String,
        index: RowIndex,
    ) -> Result<Journal, ConnectorError> {
        let columns = index.headers.clone();
        Journal::begin_with(csv, base, index, columns)
    }

    /// A new journal for the file at `csv`, whose fingerprint is `base` and rows
    /// `index`, its rows in `columns`: the file's, then any it adds.
    pub(crate) fn begin_with(
        csv: &Path,
        base: String,
        index: RowIndex,
        columns: StringRecord,
    ) -> Result<Journal, ConnectorError> {
        debug_assert!(
            columns.len() >= index.headers.len()
                && columns.iter().zip(&index.headers).all(|(a, b)| a == b),
            "a journal's columns start with its file's"
        );
        let path = path_of(csv);
        let write_error = |e| ConnectorError::from(FileError::write(&path, &path, e));
        let identity = Identity::of(csv).map_err(|e| FileError::read(csv, e))?;
        let mut options = OpenOptions::new();
        // Not in append mode: a block's head is written after its entries.
        options.create_new(true).read(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(write_error)?;
        let headers: Vec<&str> = columns.iter().collect();
        let headers = serde_json::to_vec(&headers).expect("names serialize");
        let mut head = MAGIC.to_vec();
        put_bytes(&mut head, &headers);
        (file.write_all(&head).and_then(|()| file.sync_all())).map_err(write_error)?;
        crate::atomic::sync_folder(crate::error::folder(&path));
        let rows = vec![0; index.starts.len().div_ceil(64)];
        let removed = rows.clone();
        Ok(Journal {
            path,
            file,
            len: head.len() as u64,
            base,
            identity,
            index,
            columns,
            rows,
            removed,
            created: IdList::default(),
            created_index: IdIndex::default(),
            removes_any: false,
            all: std::cell::OnceCell::new(),
            file_ids: std::cell::OnceCell::new(),
        })
    }

    /// Whether the file at `csv` is still as when the journal began.
    pub(crate) fn still_of(&self, csv: &Path) -> bool {
        Identity::of(csv).is_ok_and(|now| now == self.identity)
    }

    /// Whether the journal is big enough to fold.
    pub(crate) fn full(&self) -> bool {
        self.len > fold_from(&self.index)
    }

    /// Whether a journal begun for `ops` alone would be full with them: each row
    /// they write anew goes in with the row as found, about twice a row of the file
    /// each. Such a call is written to the file at once: the journal would be folded
    /// before the next call anyway, and writing its rows there first cost a first
    /// sync of a million partners, which writes each file in one call, 3 to 4 s of
    /// its 21.
    pub(crate) fn would_fill(index: &RowIndex, ops: &[WriteOp]) -> bool {
        let rows = index.starts.len().max(1) as u64;
        let row_bytes = index.size.div_ceil(rows);
        let entries: u64 = (ops.iter())
            .map(|op| match op {
                WriteOp::Create { .. } => 1,
                WriteOp::Update { .. } | WriteOp::Delete { .. } => 2,
            })
            .sum();
        entries.saturating_mul(row_bytes) > fold_from(index)
    }

    /// The fingerprint of the file when the journal began, which it still has.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(super) fn index(&self) -> &RowIndex {
        &self.index
    }

    /// The columns of the rows it holds ([`Journal::begin_with`]).
    pub(super) fn columns(&self) -> &StringRecord {
        &self.columns
    }

    pub(super) fn holds_row(&self, row: usize) -> bool {
        bit(&self.rows, row)
    }

    pub(super) fn removes_row(&self, row: usize) -> bool {
        bit(&self.removed, row)
    }

    pub(super) fn created(&self) -> &IdList {
        &self.created
    }

    /// The place among the rows it adds of the one with `id`.
    pub(super) fn created_row(&self, id: &str) -> Option<usize> {
        (self.created_index).find(id, |k| self.created.get(k))
    }

    /// The file's rows by id.
    pub(super) fn all_rows(&self) -> &IdIndex {
        self.all.get_or_init(|| all_rows(&self.index))
    }

    /// Where new ids start, when the journal can tell without walking every id: it
    /// removes no row (a rewrite would hand out the id of a removed row that had the
    /// highest number again). Past the last id it added, else past the file's.
    pub(super) fn id_allocator(&self, kind: EntityKind) -> Option<IdAllocator> {
        if self.removes_any {
            return None;
        }
        Some(match self.created.len() {
            0 => (self.file_ids)
                .get_or_init(|| IdAllocator::new(kind, self.index.ids.iter()))
                .clone(),
            n => IdAllocator::new(kind, std::iter::once(self.created.get(n - 1))),
        })
    }

    /// A new block at the end of the journal. On an error while it is written the
    /// journal may end in a part of it, so it takes no more: the caller drops it, and
    /// the fold of what is on disk ([`recover`]) ends before that part.
    pub(super) fn block(&self) -> io::Result<Block<'_>> {
        let mut file = &self.file;
        file.seek(io::SeekFrom::Start(self.len))?;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0; 16])?;
        Ok(Block {
            out,
            start: self.len,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            entry: Vec::new(),
            appended: Appended::default(),
        })
    }

    /// Takes in what a block, finished, added.
    pub(super) fn appended(&mut self, block: Appended) {
        self.len += block.len;
        for row in block.rows {
            self.rows[row / 64] |= 1 << (row % 64);
        }
        for row in block.removed {
            self.removed[row / 64] |= 1 << (row % 64);
            self.removes_any = true;
        }
        for id in block.created.iter() {
            self.created.push(id);
            let (created, k) = (&self.created, self.created.len() - 1);
            self.created_index.insert(id, k, |k| created.get(k));
        }
    }

    /// Writes the journal's rows into the file at `csv`, which is as the journal found
    /// it, and removes the journal. Returns the file's fingerprint and index.
    pub(crate) fn fold(self, csv: &Path) -> Result<(String, RowIndex), ConnectorError> {
        let mut replaced: Vec<(usize, Option<Line>)> = Vec::new();
        let mut added = Vec::with_capacity(self.created.len());
        let ids = self.created.iter();
        entries(&self.path, |entry| match entry.tag {
            Tag::Update => replaced.push((entry.row as usize, Some(entry.line()))),
            Tag::Delete => replaced.push((entry.row as usize, None)),
            Tag::Create => added.push(entry.line()),
        })?;
        replaced.sort_unstable_by_key(|(row, _)| *row);
        let added: Vec<(&str, Line)> = ids.zip(added).collect();
        let splices = Splices {
            replaced: &replaced,
            added: &added,
            wider: (self.columns.len() > self.index.headers.len()).then_some(&self.columns),
        };
        let saved = write(csv, &self.path, &self.index, &splices)?;
        remove(&self.path)?;
        Ok(saved)
    }
}

fn bit(bits: &[u64], row: usize) -> bool {
    bits[row / 64] & (1 << (row % 64)) != 0
}

/// One entry of a journal as read back.
struct Entry<'b> {
    tag: Tag,
    row: u32,
    id: &'b str,
    base: u64,
    /// The row's bytes before the write.
    was: &'b [u8],
    /// Where the row's bytes are in the journal.
    at: u64,
    bytes: &'b [u8],
}

impl Entry<'_> {
    /// The row's bytes, where they are in the journal.
    fn line(&self) -> Line {
        Line::Journal(self.at, u32::try_from(self.bytes.len()).unwrap_or(u32::MAX))
    }
}

/// Where a row a fold writes comes from: the journal's bytes, or bytes made for a file
/// whose columns changed since the journal began.
enum Line {
    Journal(u64, u32),
    Made(Vec<u8>),
}

/// The columns of the file when the journal at `path` began; `None` for a journal
/// that does not start as one.
fn headers_of(path: &Path) -> Result<Option<StringRecord>, ConnectorError> {
    let read_error = |e| ConnectorError::from(FileError::read(path, e));
    let mut file = io::BufReader::new(File::open(path).map_err(read_error)?);
    Ok(read_head(&mut file).map(|(headers, _)| headers))
}

/// The magic bytes and the columns at the start of a journal, and their length.
fn read_head(file: &mut impl Read) -> Option<(StringRecord, u64)> {
    let mut magic = [0; 8];
    file.read_exact(&mut magic).ok()?;
    let mut len = [0; 4];
    file.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len);
    let mut names = vec![0; len as usize];
    file.read_exact(&mut names).ok()?;
    let names: Vec<String> = serde_json::from_slice(&names).ok()?;
    let head = MAGIC.len() as u64 + 4 + u64::from(len);
    (&magic == MAGIC).then(|| (StringRecord::from(names), head))
}

/// Calls `each` with every entry of the journal at `path`, block by block, up to the
/// first block cut short or damaged. Returns whether one was.
fn entries(path: &Path, mut each: impl FnMut(Entry<'_>)) -> Result<bool, ConnectorError> {
    let read_error = |e| ConnectorError::from(FileError::read(path, e));
    let mut file = io::BufReader::new(File::open(path).map_err(read_error)?);
    let Some((_, head)) = read_head(&mut file) else {
        return Ok(true);
    };
    let (mut at, mut block) = (head, Vec::new());
    loop {
        let mut head = [0; 16];
        match file.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(read_error(e)),
        }
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let hash = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
        block.clear();
        let read = (&mut file).take(len).read_to_end(&mut block);
        read.map_err(read_error)?;
        if block.len() as u64 != len || xxhash_rust::xxh3::xxh3_64(&block) != hash {
            return Ok(true);
        }
        if !decode(&block, at + 16, &mut each) {
            return Ok(true);
        }
        at += 16 + len;
    }
}

/// Calls `each` with the entries of `block`, which starts at `at` in its journal;
/// false when it does not decode.
fn decode(block: &[u8], at: u64, each: &mut impl FnMut(Entry<'_>)) -> bool {
    let mut pos = 0;
    let take = |pos: &mut usize, n: usize| {
        let bytes = block.get(*pos..*pos + n)?;
        *pos += n;
        Some(bytes)
    };
    let u32_at = |pos: &mut usize| Some(u32::from_le_bytes(take(pos, 4)?.try_into().ok()?));
    while pos < block.len() {
        let entry = (|| {
            let tag = Tag::of(take(&mut pos, 1)?[0])?;
            let row = u32_at(&mut pos)?;
            let id_len = u32_at(&mut pos)? as usize;
            let id = std::str::from_utf8(take(&mut pos, id_len)?).ok()?;
            let base = u64::from_le_bytes(take(&mut pos, 8)?.try_into().ok()?);
            let was_len = u32_at(&mut pos)? as usize;
            let was = take(&mut pos, was_len)?;
            let len = u32_at(&mut pos)? as usize;
            let start = pos;
            let bytes = take(&mut pos, len)?;
            Some(Entry {
                tag,
                row,
                id,
                base,
                was,
                at: at + start as u64,
                bytes,
            })
        })();
        match entry {
            Some(entry) => each(entry),
            None => return false,
        }
    }
    true
}

/// Splices the file at `csv`, listed as `index`, with rows read from the journal at
/// `journal` ([`Splices::wider`]: the columns it gains).
fn write(
    csv: &Path,
    journal: &Path,
    index: &RowIndex,
    splices: &Splices<'_, Line>,
) -> Result<(String, RowIndex), ConnectorError> {
    let read_error = |e| ConnectorError::from(FileError::read(csv, e));
    let lines = File::open(journal).map_err(|e| FileError::read(journal, e))?;
    let mut lines = Lines::new(lines).map_err(|e| FileError::read(journal, e))?;
    let file = crate::link::open(csv)?.ok_or_else(|| read_error(io::ErrorKind::NotFound.into()))?;
    let mut window = Window::new(file, index.size);
    splice_file(csv, index, &mut window, splices, |line, text| {
        let mut bytes = text.bytes();
        match line {
            Line::Journal(at, len) => {
                bytes.extend_from_slice(lines.get(*at, *len)?);
                Ok(())
            }
            Line::Made(made) => {
                bytes.extend_from_slice(made);
                Ok(())
            }
        }
    })
}

/// The rows of a journal as a fold takes them, in the order of the file's rows: in
/// journal order for a file written front to back in ranges (the contacts), from
/// all over it for the others. A row that follows the last read comes with the next
/// [`LINES_AHEAD`] bytes, any other is read alone: a read call per row cost seconds
/// at a million rows, and a map of the journal counted in the process's memory.
struct Lines {
    file: File,
    size: u64,
    buf: Vec<u8>,
    /// Where the buffer's bytes start in the journal.
    start: u64,
}

/// What a read of rows that follow each other takes at once.
const LINES_AHEAD: u64 = 256 << 10;

impl Lines {
    fn new(file: File) -> io::Result<Lines> {
        let size = file.metadata()?.len();
        Ok(Lines {
            file,
            size,
            buf: Vec::new(),
            start: 0,
        })
    }

    /// The `len` bytes at `at`.
    fn get(&mut self, at: u64, len: u32) -> io::Result<&[u8]> {
        let (end, held) = (at + u64::from(len), self.start + self.buf.len() as u64);
        if at < self.start || end > held {
            let follows = at >= held && at - held < LINES_AHEAD;
            let want = match follows {
                true => (end - at)
                    .max(LINES_AHEAD)
                    .min(self.size.saturating_sub(at)),
                false => end - at,
            };
            self.buf
                .resize(usize::try_from(want).unwrap_or(usize::MAX), 0);
            self.start = at;
            if let Err(e) = super::read_exact_at(&self.file, &mut self.buf, at) {
                self.buf.clear();
                return Err(e);
            }
        }
        let from = usize::try_from(at - self.start).unwrap_or(usize::MAX);
        self.buf
            .get(from..from + len as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the journal got shorter"))
    }
}

/// Removes the journal at `path`, once what it held is in its file.
fn remove(path: &Path) -> Result<(), ConnectorError> {
    fs::remove_file(path).map_err(|e| FileError::write(path, path, e))?;
    crate::atomic::sync_folder(crate::error::folder(path));
    Ok(())
}

/// What folding a journal found on disk did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The file's fingerprint after, if it was written.
    pub(crate) saved: Option<String>,
    /// Rows written from the journal.
    pub(crate) applied: usize,
    /// Rows the file already held as the journal wrote them.
    pub(crate) already: usize,
    /// Rows edited (or removed) in the file since the journal wrote them: their
    /// edited cells kept (a removed row stays removed).
    pub(crate) kept: usize,
    /// Whether the journal ended in a block cut short.
    pub(crate) cut_short: bool,
}

/// Folds the journal of the file at `csv` that a stopped process left, row by row
/// (see the module's invariants); `None` when there is none.
pub(crate) fn recover(csv: &Path, kind: EntityKind) -> Result<Option<Recovered>, ConnectorError> {
    let path = path_of(csv);
    if fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let Some(index) = RowIndex::scan(csv, kind)? else {
        return Err(ConnectorError::fatal(format!(
            "{} holds rows Tandem wrote to {} before a run was stopped, and {} is gone or \
             empty; restore the file, then run again (the rows are added to it)",
            path.display(),
            csv.display(),
            csv.display()
        )));
    };
    let Some(headers) = headers_of(&path)? else {
        // Cut short as it began: it holds no write.
        remove(&path)?;
        return Ok(Some(Recovered {
            cut_short: true,
            ..Recovered::default()
        }));
    };
    let mut recovery = Recovery::new(csv, kind, &index, &headers)?;
    recovery.done.cut_short = entries(&path, |entry| recovery.take(&entry))?;
    recovery.finish(csv, &path).map(Some)
}

/// A journal a stopped process left, checked row by row against the file.
struct Recovery<'i> {
    index: &'i RowIndex,
    by_id: IdIndex,
    window: Option<Window>,
    /// The columns when the journal began, and now, and whether they are the same.
    then: Layout,
    now: Layout,
    same_columns: bool,
    /// The columns the file is written with: its own, then those only the journal
    /// has (added by the write that began it), which keep the journal's cells.
    out: StringRecord,
    done: Recovered,
    replaced: Vec<(usize, Option<Line>)>,
    added: Vec<(String, Line)>,
    /// Rows the journal removes: a create after may take the id.
    removed: std::collections::HashSet<usize>,
    failed: Option<io::Error>,
    buf: Vec<u8>,
}

impl<'i> Recovery<'i> {
    fn new(
        csv: &Path,
        kind: EntityKind,
        index: &'i RowIndex,
        headers: &StringRecord,
    ) -> Result<Recovery<'i>, ConnectorError> {
        let window = crate::link::open(csv)?.map(|file| Window::new(file, index.size));
        let mut out = index.headers.clone();
        for name in headers.iter() {
            if !out.iter().any(|have| have == name) {
                out.push_field(name);
            }
        }
        Ok(Recovery {
            index,
            by_id: all_rows(index),
            window,
            then: Layout::new(csv, kind, headers, index.style)?,
            now: Layout::new(csv, kind, &index.headers, index.style)?,
            same_columns: *headers == index.headers,
            out,
            done: Recovered::default(),
            replaced: Vec::new(),
            added: Vec::new(),
            removed: std::collections::HashSet::new(),
            failed: None,
            buf: Vec::new(),
        })
    }

    /// Decides what becomes of the row of one entry. Rows compare by their cells
    /// ([`Layout::hash`], a row's version), so a column added since changes nothing.
    fn take(&mut self, entry: &Entry<'_>) {
        let found = self.by_id.find(entry.id, |i| self.index.id(i));
        // A create may take the id of a row the journal removed before it.
        let row = found.filter(|row| !self.removed.contains(row));
        let current = match row.map(|row| self.cells(row)).transpose() {
            Ok(current) => current,
            Err(e) => return self.failed = Some(e),
        };
        let now = (current.as_ref()).map(|cells| self.now.hash(cells.iter(), &mut self.buf));
        let written = parse_row(entry.bytes).unwrap_or_default();
        let wrote = self.then.hash(written.iter(), &mut self.buf);
        match (entry.tag, row.zip(current), now) {
            (Tag::Create, None, _) => {
                let line = self.line(entry, &written, None);
                self.added.push((entry.id.to_owned(), line));
            }
            (Tag::Delete, None, _) => self.done.already += 1,
            (Tag::Update | Tag::Create, Some(_), Some(now)) if now == wrote => {
                self.done.already += 1;
            }
            (Tag::Delete, Some((row, _)), Some(now)) if now == entry.base => {
                self.removed.insert(row);
                self.replaced.push((row, None));
            }
            (Tag::Update, Some((row, current)), Some(now)) => {
                let was = parse_row(entry.was).unwrap_or_default();
                let line = match now == entry.base {
                    true => self.line(entry, &written, Some(&current)),
                    false => {
                        self.done.kept += 1;
                        self.merged(&written, &was, &current)
                    }
                };
                self.replaced.push((row, Some(line)));
            }
            // Removed since, or made by someone else under the id, or edited and then
            // removed by the journal: the file's.
            _ => self.done.kept += 1,
        }
    }

    /// The row an entry writes: its bytes when the columns are as they were, else
    /// its cells laid out in the file's columns now, a column it did not know taking
    /// the file's cell (empty for a new row).
    fn line(
        &self,
        entry: &Entry<'_>,
        written: &StringRecord,
        current: Option<&StringRecord>,
    ) -> Line {
        if self.same_columns {
            return entry.line();
        }
        let empty = StringRecord::new();
        self.laid_out(|name| {
            cell(&self.then.headers, written, name)
                .or_else(|| cell(&self.now.headers, current.unwrap_or(&empty), name))
        })
    }

    /// A row edited in the file since the journal wrote it, cell by cell: a cell the
    /// edit left as the journal found it (`was`) takes the journal's, an edited one
    /// keeps the edit, which the next run then takes as one.
    fn merged(&self, written: &StringRecord, was: &StringRecord, current: &StringRecord) -> Line {
        self.laid_out(|name| {
            let now = cell(&self.now.headers, current, name);
            let before = cell(&self.then.headers, was, name);
            match now == before {
                true => cell(&self.then.headers, written, name).or(now),
                false => now,
            }
        })
    }

    /// A row in the columns written ([`Recovery::out`]), each cell as `value` gives
    /// it by name.
    fn laid_out<'c>(&self, value: impl Fn(&str) -> Option<&'c str>) -> Line {
        let cells: Vec<&str> = (self.out.iter())
            .map(|name| value(name).unwrap_or_default())
            .collect();
        let mut text = super::Text::new(self.index.style, 0);
        text.record(cells.into_iter())
            .expect("a record is written into memory");
        Line::Made(text.into_bytes())
    }

    /// The cells of row `row` of the file.
    fn cells(&mut self, row: usize) -> io::Result<StringRecord> {
        let window = self.window.as_mut().expect("a file with rows is open");
        let bytes = window.row_bytes(self.index, row)?;
        parse_row(&bytes).ok_or_else(|| io::Error::other("a row changed while it was read"))
    }

    /// Writes what was decided into the file and removes the journal.
    fn finish(mut self, csv: &Path, journal: &Path) -> Result<Recovered, ConnectorError> {
        if let Some(e) = self.failed {
            return Err(FileError::read(csv, e).into());
        }
        self.done.applied = self.replaced.len() + self.added.len();
        if self.done.applied > 0 {
            self.replaced.sort_unstable_by_key(|(row, _)| *row);
            let (ids, lines): (Vec<String>, Vec<Line>) = self.added.into_iter().unzip();
            let added: Vec<(&str, Line)> = ids.iter().map(String::as_str).zip(lines).collect();
            let splices = Splices {
                replaced: &self.replaced,
                added: &added,
                wider: (self.out.len() > self.index.headers.len()).then_some(&self.out),
            };
            let saved = write(csv, journal, self.index, &splices)?;
            self.done.saved = Some(saved.0);
        }
        remove(journal)?;
        Ok(self.done)
    }
}

/// The cell of column `name` of a row whose columns are `headers`.
fn cell<'r>(headers: &StringRecord, row: &'r StringRecord, name: &str) -> Option<&'r str> {
    row.get(headers.iter().position(|h| h == name)?)
}

/// The cells of one row's bytes; `None` when they are not one row.
fn parse_row(bytes: &[u8]) -> Option<StringRecord> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut row = StringRecord::new();
    reader.read_record(&mut row).ok()?.then_some(row)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;
    use tandem_connector::{WriteOp, WriteOutcome};

    use super::super::splice::Splice;
    use super::super::testgen::{
        Op, file_text, index_of, op, op_adding_columns, ops_on, rows, style, twins,
    };
    use super::super::{CsvTable, columns_for, read, write_journaled};
    use super::*;
    use crate::table;

    const KIND: EntityKind = EntityKind::Contact;

    /// `ops` written the full way into `rewritten`: what they answer.
    fn rewrite(rewritten: &Path, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
        let mut table = CsvTable::load(rewritten, KIND).unwrap();
        let (outcomes, changed) = table::apply(&mut table, KIND, ops);
        if changed {
            table.save().unwrap();
        }
        outcomes
    }

    /// A journal of the file at `path` begun for `ops`, as the connector begins one:
    /// with the columns they add.
    fn begin_for(path: &Path, base: &str, ops: &[WriteOp]) -> Journal {
        let index = index_of(path);
        let columns = columns_for(path, KIND, &index, ops).unwrap();
        Journal::begin_with(path, base.into(), index, columns).unwrap()
    }

    /// Each of `writes` into a journal of `journaled` (begun for the first, folded and
    /// begun again when it cannot take one) and the full way into `rewritten`: both
    /// answer alike. Returns the journal, not folded.
    fn journal_and_rewrite(
        (journaled, rewritten): (&Path, &Path),
        writes: &[Vec<Op>],
    ) -> Result<Journal, TestCaseError> {
        let mut journal = None;
        for ops in writes {
            let ops = ops_on(rewritten, ops);
            let mut began = journal.unwrap_or_else(|| begin_for(journaled, "began", &ops));
            let mut done = write_journaled(journaled, KIND, &mut began, ops.clone()).unwrap();
            if let Splice::NotHere(ops) = done {
                began.fold(journaled).unwrap();
                began = begin_for(journaled, "again", &ops);
                done = write_journaled(journaled, KIND, &mut began, ops).unwrap();
            }
            journal = Some(began);
            let Splice::Done(outcomes, _) = done else {
                return Err(TestCaseError::fail("a fresh journal takes any write"));
            };
            let expected = rewrite(rewritten, ops);
            prop_assert_eq!(format!("{outcomes:?}"), format!("{expected:?}"));
        }
        Ok(journal.expect("at least one write"))
    }

    /// The two files read back alike, and byte for byte alike when the file was as
    /// Tandem writes one (no empty line, a line end after the last row) and both have
    /// the same columns (a journal, as a write of the whole file, takes the column of
    /// an op that failed; a table loaded whole does not).
    fn same_files(
        (journaled, rewritten): (&Path, &Path),
        tandem_style: bool,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            read(journaled, KIND).unwrap(),
            read(rewritten, KIND).unwrap()
        );
        let header = |path: &Path| {
            let text = fs::read(path).unwrap();
            text.split(|&b| b == b'\n').next().unwrap().to_vec()
        };
        if tandem_style && header(journaled) == header(rewritten) {
            prop_assert_eq!(fs::read(journaled).unwrap(), fs::read(rewritten).unwrap());
        }
        prop_assert!(!path_of(journaled).exists(), "the journal is removed");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// Writes held in a journal answer as full rewrites do, and once folded leave
        /// the file the rewrites leave, whatever the file's layout and the writes.
        #[test]
        fn writes_journaled_then_folded_read_back_as_rewrites(
            rows in rows(),
            style in style(),
            writes in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..5),
        ) {
            folded_as_rewrites(&rows, &style, &writes)?;
        }

        /// As above, with writes that add columns: a journal begun for a write that
        /// adds a column holds its rows in it, and its fold gives the file the column.
        #[test]
        fn writes_adding_columns_journaled_then_folded_read_back_as_rewrites(
            rows in rows(),
            style in style(),
            writes in proptest::collection::vec(
                proptest::collection::vec(op_adding_columns(), 1..6), 1..5),
        ) {
            folded_as_rewrites(&rows, &style, &writes)?;
        }

        /// A journal a stopped process left (never folded) is folded row by row by the
        /// next: the file ends as the rewrites left theirs, and a second look finds
        /// nothing left to do.
        #[test]
        fn a_journal_left_by_a_stopped_process_is_folded_by_the_next(
            rows in rows(),
            style in style(),
            writes in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..5),
        ) {
            recovered_as_rewrites(&rows, &style, &writes)?;
        }

        /// As above, with a journal holding a column its file lacks: the file gains it.
        #[test]
        fn a_journal_adding_columns_left_by_a_stopped_process_is_folded_with_them(
            rows in rows(),
            style in style(),
            writes in proptest::collection::vec(
                proptest::collection::vec(op_adding_columns(), 1..6), 1..5),
        ) {
            recovered_as_rewrites(&rows, &style, &writes)?;
        }
    }

    /// `writes` journaled into a file of `rows` laid out in `style` and folded: the
    /// file as the rewrites leave it, its fingerprint and index the fold's.
    fn folded_as_rewrites(
        rows: &[(usize, [usize; 3])],
        style: &super::super::testgen::Style,
        writes: &[Vec<Op>],
    ) -> Result<(), TestCaseError> {
        let (_dir, journaled, rewritten) = twins(&file_text(rows, style));
        let journal = journal_and_rewrite((&journaled, &rewritten), writes)?;
        // Untouched until the fold, but by a fold for a write the journal could not
        // take (which began the journal again on the file as folded).
        if journal.base() == "began" {
            prop_assert_eq!(
                fs::read_to_string(&journaled).unwrap(),
                file_text(rows, style)
            );
        }
        let (fingerprint, index) = journal.fold(&journaled).unwrap();
        let bytes = fs::read(&journaled).unwrap();
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        prop_assert_eq!(fingerprint, crate::fingerprint_of(bytes.len() as u64, hash));
        let listed = index_of(&journaled);
        prop_assert_eq!(
            (index.size(), &index.ids, &index.headers),
            (listed.size(), &listed.ids, &listed.headers)
        );
        same_files(
            (&journaled, &rewritten),
            style.blank_after.is_empty() && style.last_newline,
        )
    }

    /// `writes` journaled into a file of `rows` laid out in `style`, the journal left
    /// as a stopped process leaves it, then folded by the next: the file as the
    /// rewrites leave it, nothing kept from an edit, nothing left to do after.
    fn recovered_as_rewrites(
        rows: &[(usize, [usize; 3])],
        style: &super::super::testgen::Style,
        writes: &[Vec<Op>],
    ) -> Result<(), TestCaseError> {
        let (_dir, journaled, rewritten) = twins(&file_text(rows, style));
        drop(journal_and_rewrite((&journaled, &rewritten), writes)?);
        let done = recover(&journaled, KIND)
            .unwrap()
            .expect("a journal was left");
        prop_assert_eq!((done.kept, done.cut_short), (0, false));
        same_files(
            (&journaled, &rewritten),
            style.blank_after.is_empty() && style.last_newline,
        )?;
        prop_assert_eq!(recover(&journaled, KIND).unwrap(), None);
        Ok(())
    }

    fn contacts(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("contacts.csv");
        fs::write(&path, text).unwrap();
        path
    }

    fn update(id: &str, city: &str) -> WriteOp {
        let mut changes = tandem_connector::Changes::new();
        let name = tandem_model::FieldName::new("city");
        changes.insert(name, tandem_model::Value::text(city));
        WriteOp::Update {
            id: id.into(),
            version: None,
            changes,
        }
    }

    fn create(name: &str) -> WriteOp {
        WriteOp::create(tandem_model::Fields::new().with("name", name))
    }

    /// Writes `ops` into a new journal of `path` and leaves it unfolded, as a process
    /// stopped after the write answered does.
    fn journaled_and_stopped(path: &Path, writes: Vec<Vec<WriteOp>>) {
        let mut journal = Journal::begin(path, "began".into(), index_of(path)).unwrap();
        for ops in writes {
            let done = write_journaled(path, KIND, &mut journal, ops).unwrap();
            let Splice::Done(outcomes, None) = done else {
                panic!("journaled");
            };
            assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        }
    }

    const FILE: &str = "id,name,city\nC1,Acme,Gent\nC2,Beta,Gent\nC3,Cera,Gent\n";

    /// The file is left as it was until the fold.
    #[test]
    fn a_journaled_write_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = contacts(&dir, FILE);
        journaled_and_stopped(&path, vec![vec![update("C2", "Brugge"), create("Dee")]]);
        assert_eq!(fs::read_to_string(&path).unwrap(), FILE);
        assert!(path_of(&path).exists());
    }

    /// A process stopped after its fold renamed the file, before it removed the
    /// journal: the next finds every row in the file already, and adds none twice.
    #[test]
    fn a_fold_stopped_after_its_rename_adds_no_row_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = contacts(&dir, FILE);
        journaled_and_stopped(&path, vec![vec![update("C2", "Brugge"), create("Dee")]]);
        let left = fs::read(path_of(&path)).unwrap();
        recover(&path, KIND).unwrap().unwrap();
        let folded = fs::read_to_string(&path).unwrap();
        assert_eq!(
            folded,
            "id,name,city\nC1,Acme,Gent\nC2,Beta,Brugge\nC3,Cera,Gent\nC4,Dee,\n"
        );
        fs::write(path_of(&path), left).unwrap();
        let done = recover(&path, KIND).unwrap().unwrap();
        assert_eq!((done.applied, done.already, done.saved), (0, 2, None));
        assert_eq!(fs::read_to_string(&path).unwrap(), folded);
        assert!(!path_of(&path).exists());
    }

    /// `writes` journaled and left by a stopped process, the file then made `edited`,
    /// and the journal folded: what the fold did, and the file after.
    fn folded_after_an_edit(writes: Vec<Vec<WriteOp>>, edited: &str) -> (Recovered, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = contacts(&dir, FILE);
        journaled_and_stopped(&path, writes);
        fs::write(&path, edited).unwrap();
        let done = recover(&path, KIND).unwrap().unwrap();
        (done, fs::read_to_string(&path).unwrap())
    }

    /// A row edited in the file after the stop keeps the edit (the next run sees it as
    /// one) and takes the journal's other cells; the journal's other rows go in.
    #[test]
    fn a_row_edited_after_the_stop_keeps_the_edit() {
        let writes = vec![vec![update("C2", "Brugge"), update("C3", "Lier")]];
        let edited = FILE.replace("C2,Beta,Gent", "C2,Beta BV,Gent");
        let (done, file) = folded_after_an_edit(writes, &edited);
        assert_eq!((done.applied, done.kept), (2, 1));
        assert_eq!(
            file,
            "id,name,city\nC1,Acme,Gent\nC2,Beta BV,Brugge\nC3,Cera,Lier\n"
        );
    }

    /// A column added to the file after the stop (another program's): the journal's
    /// rows go in laid out in the file's columns, each keeping the file's cell of the
    /// new column; the new row gets an empty one.
    #[test]
    fn a_column_added_after_the_stop_is_kept_around_the_journals_rows() {
        let writes = vec![vec![update("C2", "Brugge"), create("Dee")]];
        let widened =
            "id,name,city,x_note\nC1,Acme,Gent,\nC2,Beta,Gent,\"call, first\"\nC3,Cera,Gent,\n";
        let (done, file) = folded_after_an_edit(writes, widened);
        assert_eq!((done.applied, done.kept), (2, 1));
        assert_eq!(
            file,
            "id,name,city,x_note\nC1,Acme,Gent,\nC2,Beta,Brugge,\"call, first\"\nC3,Cera,Gent,\nC4,Dee,,\n"
        );
    }

    /// A write cut short as it was appended never answered: its block is left out,
    /// the ones before it go in; whether the stop cut its last bytes or came before
    /// its head (written last: zeros).
    #[test]
    fn a_block_cut_short_is_left_out() {
        /// What a stop did to the journal, given where its second block starts.
        type Damage = fn(&mut Vec<u8>, usize);
        let cut_end: Damage = |bytes, _| bytes.truncate(bytes.len() - 3);
        let no_head: Damage = |bytes, second| bytes[second..second + 16].fill(0);
        for damage in [cut_end, no_head] {
            let dir = tempfile::tempdir().unwrap();
            let path = contacts(&dir, FILE);
            let mut journal = Journal::begin(&path, "began".into(), index_of(&path)).unwrap();
            write_journaled(&path, KIND, &mut journal, vec![update("C1", "Aalst")]).unwrap();
            let second = usize::try_from(fs::metadata(path_of(&path)).unwrap().len()).unwrap();
            write_journaled(&path, KIND, &mut journal, vec![update("C2", "Brugge")]).unwrap();
            drop(journal);
            let mut bytes = fs::read(path_of(&path)).unwrap();
            damage(&mut bytes, second);
            fs::write(path_of(&path), bytes).unwrap();
            let done = recover(&path, KIND).unwrap().unwrap();
            assert_eq!((done.applied, done.cut_short), (1, true));
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                "id,name,city\nC1,Acme,Aalst\nC2,Beta,Gent\nC3,Cera,Gent\n"
            );
        }
    }

    /// A write naming a row the journal holds, or one it adds, is not taken: the
    /// file has that row as it was.
    #[test]
    fn a_row_the_journal_holds_is_not_written_twice_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = contacts(&dir, FILE);
        let mut journal = Journal::begin(&path, "began".into(), index_of(&path)).unwrap();
        let ops = vec![update("C2", "Brugge"), create("Dee")];
        let done = write_journaled(&path, KIND, &mut journal, ops).unwrap();
        assert!(matches!(done, Splice::Done(..)));
        for again in [update("C2", "Lier"), update("C4", "Lier")] {
            let done = write_journaled(&path, KIND, &mut journal, vec![again]).unwrap();
            assert!(matches!(done, Splice::NotHere(ops) if ops.len() == 1));
        }
        // A create takes the next id after the ones the journal adds.
        let done = write_journaled(&path, KIND, &mut journal, vec![create("Eve")]).unwrap();
        let Splice::Done(outcomes, _) = done else {
            panic!("journaled");
        };
        assert_eq!(outcomes[0].as_ref().unwrap().id, "C5");
    }

    /// A row whose ops all failed (a stale version) is not put in the journal: a
    /// later write to it is taken, where a journal holding it would be folded first.
    #[test]
    fn a_row_whose_ops_all_failed_is_not_held_by_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = contacts(&dir, FILE);
        let mut journal = Journal::begin(&path, "began".into(), index_of(&path)).unwrap();
        let WriteOp::Update { id, changes, .. } = update("C2", "Brugge") else {
            unreachable!("an update");
        };
        let version = Some("0000000000000000".into());
        let stale = WriteOp::Update {
            id,
            version,
            changes,
        };
        let ops = vec![stale, update("C3", "Lier")];
        let Splice::Done(outcomes, _) = write_journaled(&path, KIND, &mut journal, ops).unwrap()
        else {
            panic!("journaled");
        };
        assert!(matches!(outcomes[0], Err(ConnectorError::Conflict { .. })));
        assert!(outcomes[1].is_ok());
        let again = vec![update("C2", "Aalst")];
        let done = write_journaled(&path, KIND, &mut journal, again).unwrap();
        assert!(matches!(done, Splice::Done(..)), "the row is not held");
        journal.fold(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "id,name,city\nC1,Acme,Gent\nC2,Beta,Aalst\nC3,Cera,Lier\n"
        );
    }
}
