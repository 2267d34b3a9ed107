//! A write of a few rows to a big CSV file that this run's listing has just read: the
//! rows the write touches are parsed and written anew, every other byte of the file is
//! copied as it is. A full rewrite parses the whole file again and writes every row of
//! it: at a million rows, about a second for a handful of edits.
//!
//! The listing leaves where each row starts ([`RowIndex`]), tagged by the connector
//! with the fingerprint the file had when the run began; a write splices only a file
//! that still has it. Each row a write touches is parsed from its place and must hold
//! the id the listing found there, or the write is done the full way.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use csv::{ReaderBuilder, StringRecord};
use tandem_connector::{ConnectorError, WriteOp, WriteOutcome};
use tandem_model::EntityKind;

use super::{Column, CsvTable, Layout, TOO_LONG, line_error, read_exact_at};
use crate::atomic::Fingerprinting;
use crate::id_index::IdIndex;
use crate::id_list::IdList;
use crate::link;
use crate::row::{Row, TooLong};
use crate::table::{self, Table, TextStyle};

/// Files with fewer rows are rewritten: it costs little, and a rewrite is the path
/// every write takes.
const SPLICE_FROM: usize = 20_000;

/// Where every row of a CSV file starts, as a full listing read it.
#[derive(Debug, PartialEq)]
pub(crate) struct RowIndex {
    pub(super) headers: StringRecord,
    pub(super) style: TextStyle,
    pub(super) size: u64,
    /// Every row's id, in file order.
    pub(super) ids: IdList,
    pub(super) starts: Vec<u64>,
}

impl RowIndex {
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn id(&self, i: usize) -> &str {
        self.ids.get(i)
    }

    /// The size of the file it is of.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether `ops` are few enough for a splice to pay: a write that touches a good
    /// share of the rows costs about a rewrite anyway. Creates touch no row: they are
    /// added after the last.
    fn worth_it(&self, ops: &[WriteOp]) -> bool {
        let touching = ops
            .iter()
            .filter(|op| !matches!(op, WriteOp::Create { .. }));
        self.len() >= SPLICE_FROM && touching.count() * 8 <= self.len()
    }
}

/// The index of a file a splice writes, made as it is written: each row copied moves
/// by what the rows rewritten before it grew or shrank by, each row written anew
/// starts where it is written. The next write of the run splices with it instead of
/// reading the whole file again.
struct NextIndex {
    ids: IdList,
    starts: Vec<u64>,
}

impl NextIndex {
    fn with_capacity(rows: usize, id_bytes: usize) -> NextIndex {
        NextIndex {
            ids: IdList::with_capacity(rows, id_bytes),
            starts: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, id: &str, start: u64) {
        self.ids.push(id);
        self.starts.push(start);
    }

    /// Rows `rows` of `index`, in bytes copied from `from` in the old file to `to` in
    /// the new. After a row written anew (`after_written`), the first of them starts
    /// exactly at `to`: its old start may lie in the line end of the row before.
    fn copied(
        &mut self,
        index: &RowIndex,
        rows: std::ops::Range<usize>,
        (from, to): (u64, u64),
        after_written: bool,
    ) {
        for (k, i) in rows.enumerate() {
            let start = match k == 0 && after_written {
                true => to,
                false => index.starts[i] - from + to,
            };
            self.push(index.id(i), start);
        }
    }

    fn finish(self, index: &RowIndex, headers: &StringRecord, size: u64) -> RowIndex {
        RowIndex {
            headers: headers.clone(),
            style: index.style,
            size,
            ids: self.ids,
            starts: self.starts,
        }
    }
}

/// What became of a write offered to [`write`].
pub(crate) enum Splice {
    /// Done: the outcomes, and the fingerprint and index of the file saved (none if
    /// no op succeeded).
    Done(Vec<WriteOutcome>, Option<super::Saved>),
    /// A splice does not apply (too many ops, a small file, a new column, a row not
    /// where the listing found it): the ops, to be written the full way.
    NotHere(Vec<WriteOp>),
}

/// Applies `ops` to the file at `path` by splicing it along `index`, which the caller
/// vouches is of the file as it is.
pub(crate) fn write(
    path: &Path,
    kind: EntityKind,
    index: &RowIndex,
    ops: Vec<WriteOp>,
) -> Result<Splice, ConnectorError> {
    match index.worth_it(&ops) {
        true => write_any(path, kind, index, ops),
        false => Ok(Splice::NotHere(ops)),
    }
}

/// [`write`] whatever the number of rows and ops.
fn write_any(
    path: &Path,
    kind: EntityKind,
    index: &RowIndex,
    ops: Vec<WriteOp>,
) -> Result<Splice, ConnectorError> {
    let Some(mut spliced) = Spliced::of_file(path, kind, index, &ops)? else {
        return Ok(Splice::NotHere(ops));
    };
    let (outcomes, changed) = table::apply(&mut spliced, kind, ops);
    let saved = match changed {
        true => Some(spliced.splice_into_file()?),
        false => None,
    };
    Ok(Splice::Done(outcomes, saved))
}

/// Whether every field `ops` set has a column already: a new column changes every row.
pub(super) fn fits_columns(layout: &Layout, ops: &[WriteOp]) -> bool {
    let has = |name: &tandem_model::FieldName| {
        (layout.columns.iter()).any(|c: &Column| c.field() == Some(name))
    };
    ops.iter().all(|op| match op {
        WriteOp::Create { fields, .. } => fields.iter().all(|(name, _)| has(name)),
        WriteOp::Update { changes, .. } => changes
            .iter()
            .all(|(name, value)| value.is_empty() || has(name)),
        WriteOp::Delete { .. } => true,
    })
}

/// The file as a write sees it: the rows it touches parsed into a table of their own
/// (`touched`), the others left where they are. Rows are numbered as in the file, rows
/// inserted after the last.
struct Spliced<'i> {
    /// The file as listed, read through a buffer in file order.
    file: RefCell<Window>,
    index: &'i RowIndex,
    /// The row of each id an update or delete names, or `None` when no row has it:
    /// found in one pass over the ids, without indexing them all.
    named: HashMap<String, Option<usize>, foldhash::fast::RandomState>,
    /// Every row by its id, made when an id no op names is asked for (a create's).
    all: std::cell::OnceCell<IdIndex>,
    /// The rows touched and inserted, and which row of the file each is.
    touched: CsvTable,
    row_of: Vec<usize>,
    /// Rows of the file that are in `touched`, by their number.
    parsed: BTreeMap<usize, usize>,
    /// One CSV reader for every row parsed, fed each row's bytes: building a reader
    /// per row was a third of a first sync's CPU when each write touched 100,000 rows.
    reader: csv::Reader<io::Cursor<Vec<u8>>>,
}

impl<'i> Spliced<'i> {
    /// The file at `path`, listed as `index`, for `ops`; `None` when a splice does not
    /// apply: the index is not of the file, or `ops` add a column.
    fn of_file(
        path: &Path,
        kind: EntityKind,
        index: &'i RowIndex,
        ops: &[WriteOp],
    ) -> Result<Option<Spliced<'i>>, ConnectorError> {
        if index.starts.len() != index.len() {
            return Ok(None);
        }
        let layout = Layout::new(path, kind, &index.headers, index.style)?;
        if !fits_columns(&layout, ops) {
            return Ok(None);
        }
        let Some(file) = link::open(path)? else {
            return Ok(None);
        };
        let size = file
            .metadata()
            .map_err(|e| crate::error::FileError::read(path, e))?;
        if size.len() != index.size {
            return Ok(None);
        }
        Spliced::open(path, file, index, layout, ops)
    }

    /// Parses the rows `ops` name; `None` when one is not where the listing found it.
    fn open(
        path: &Path,
        file: File,
        index: &'i RowIndex,
        layout: Layout,
        ops: &[WriteOp],
    ) -> Result<Option<Spliced<'i>>, ConnectorError> {
        // Sized for every op up front: grown by doubling, the tables rehashed each
        // row's id again, read from rows all over the heap.
        let mut named: HashMap<String, Option<usize>, _> =
            HashMap::with_capacity_and_hasher(ops.len(), Default::default());
        for op in ops {
            if let WriteOp::Update { id, .. } | WriteOp::Delete { id, .. } = op {
                named.insert(id.clone(), None);
            }
        }
        if !named.is_empty() {
            for i in 0..index.len() {
                if let Some(row @ None) = named.get_mut(index.id(i)) {
                    *row = Some(i);
                }
            }
        }
        let mut spliced = Spliced {
            file: RefCell::new(Window::new(file, index.size)),
            index,
            named,
            all: std::cell::OnceCell::new(),
            // Each op touches or adds one row at most.
            touched: CsvTable::with_capacity(path, layout, ops.len()),
            row_of: Vec::new(),
            parsed: BTreeMap::new(),
            reader: ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(io::Cursor::new(Vec::new())),
        };
        // In file order, so that the rows are read through the window front to back.
        let mut rows: Vec<usize> = (spliced.named.values()).filter_map(|&row| row).collect();
        rows.sort_unstable();
        for i in rows {
            if !spliced.parse(path, i)? {
                return Ok(None);
            }
        }
        Ok(Some(spliced))
    }

    /// The row of the file holding `id` as listed.
    fn in_file(&self, id: &str) -> Option<usize> {
        match self.named.get(id) {
            Some(&row) => row,
            None => {
                let all = self.all.get_or_init(|| all_rows(self.index));
                all.find(id, |i| self.index.id(i))
            }
        }
    }

    /// Parses row `i` of the file into `touched`; false when its bytes are not one row
    /// of the listed id.
    fn parse(&mut self, path: &Path, i: usize) -> Result<bool, ConnectorError> {
        let read_error = |e| crate::error::FileError::read(path, e);
        let bytes = (self.file.get_mut().row_bytes(self.index, i)).map_err(read_error)?;
        *self.reader.get_mut().get_mut() = bytes;
        // Back to the start of the bytes, with the reader's state reset.
        let reader = &mut self.reader;
        reader
            .seek(csv::Position::new())
            .map_err(|e| read_error(io::Error::other(e)))?;
        let mut row = StringRecord::new();
        // Exactly one row, and no error: else the file changed since it was indexed.
        let one = reader.read_record(&mut row);
        let more = reader.read_record(&mut StringRecord::new());
        if !matches!((one, more), (Ok(true), Ok(false))) {
            return Ok(false);
        }
        let layout = &self.touched.layout;
        if row.len() != layout.headers.len() || row.get(layout.id) != Some(self.index.id(i)) {
            return Ok(false);
        }
        let lens = row.as_byte_record().iter().map(<[u8]>::len);
        let row =
            Row::new(row.as_slice(), lens).map_err(|TooLong| line_error(path, 0, TOO_LONG))?;
        let at = self.touched.push(row);
        self.row_of.push(i);
        self.parsed.insert(i, at);
        Ok(true)
    }

    /// Where row `row` (numbered as in the file) is in `touched`. Every row an op
    /// names was parsed when the file was opened; the others are only found (a new
    /// id must not be taken), never read or written.
    fn at(&self, row: usize) -> usize {
        match row < self.index.len() {
            true => *(self.parsed.get(&row)).expect("a row an op names is parsed at open"),
            false => self.parsed.len() + (row - self.index.len()),
        }
    }

    /// Writes the file: its bytes up to each touched row, the row anew (none for a
    /// removed one), the bytes after the last, then the inserted rows. Returns its
    /// fingerprint and its index.
    fn splice_into_file(&self) -> Result<(String, RowIndex), ConnectorError> {
        let layout = &self.touched.layout;
        let (id, width) = (layout.id, layout.headers.len());
        let rows = &self.touched.rows;
        let replaced: Vec<(usize, Option<usize>)> = (self.parsed.iter())
            .map(|(&i, &at)| (i, rows[at].is_some().then_some(at)))
            .collect();
        let added: Vec<(&str, usize)> = (self.parsed.len()..rows.len())
            .filter_map(|at| rows[at].as_ref().map(|row| (&row[id], at)))
            .collect();
        let mut file = self.file.borrow_mut();
        let splices = Splices {
            replaced: &replaced,
            added: &added,
            wider: None,
        };
        splice_file(
            &self.touched.path,
            self.index,
            &mut file,
            &splices,
            |&at, text| {
                let row = rows[at].as_ref().expect("only rows kept are written");
                text.row(row, width)
            },
        )
    }
}

/// What a splice writes in place of rows of a file, and after its last row: `T` says
/// how to write a row (its place among rows parsed, or in a journal).
pub(super) struct Splices<'s, T> {
    /// Rows of the file, in file order, each written anew or removed (`None`).
    pub(super) replaced: &'s [(usize, Option<T>)],
    /// Rows added after the last, with their ids.
    pub(super) added: &'s [(&'s str, T)],
    /// The columns the file is written with when it gains columns (the index's, then
    /// the new ones): its header is written anew, and each row copied gets an empty
    /// cell per new column before its line end. Rows written anew are as wide already.
    pub(super) wider: Option<&'s StringRecord>,
}

/// Writes the file at `path`, listed as `index` and read through `file`: its bytes up
/// to each replaced row, the row as `write` writes it (none for a removed one), the
/// bytes after the last, then the added rows. Returns its fingerprint and its index.
pub(super) fn splice_file<T>(
    path: &Path,
    index: &RowIndex,
    file: &mut Window,
    splices: &Splices<'_, T>,
    mut write: impl FnMut(&T, &mut super::Text) -> io::Result<()>,
) -> Result<(String, RowIndex), ConnectorError> {
    let rows = index.len() + splices.added.len();
    let mut next = NextIndex::with_capacity(rows, index.ids.bytes());
    let mut size = 0;
    file.block = COPY_BLOCK;
    let copying = RowCopy {
        index,
        pad: (splices.wider).map(|columns| vec![b','; columns.len() - index.headers.len()]),
    };
    let saved = crate::atomic::replace(path, |out| {
        let mut text = super::Text::new(index.style, 0);
        let mut ends_line = true;
        // Where the old file is copied from, and its next row not in `next`.
        let (mut pos, mut row) = (0, 0);
        if let Some(columns) = splices.wider {
            index.style.write_start(&mut *text.bytes())?;
            text.record(columns.iter())?;
            pos = match index.starts.first() {
                Some(&first) => file.first_byte(first)?,
                None => index.size,
            };
        }
        for (i, put) in splices.replaced {
            let (start, end) = file.range(index, *i)?;
            let copied = copying.rows(file, (out, &mut text), &mut next, row..*i, (pos, start))?;
            ends_line = copied.unwrap_or(ends_line);
            if let Some(put) = put {
                next.push(index.id(*i), out.written() + text.len());
                write(put, &mut text)?;
                text.send(out, false)?;
                ends_line = true;
            }
            (pos, row) = (end, i + 1);
        }
        let rest = (pos, index.size);
        let copied = copying.rows(file, (out, &mut text), &mut next, row..index.len(), rest)?;
        ends_line = copied.unwrap_or(ends_line);
        if !splices.added.is_empty() && !ends_line {
            text.bytes().extend_from_slice(index.style.line_end());
        }
        for (id, put) in splices.added {
            next.push(id, out.written() + text.len());
            write(put, &mut text)?;
            text.send(out, false)?;
        }
        text.send(out, true)?;
        size = out.written();
        Ok(())
    })?;
    let headers = splices.wider.unwrap_or(&index.headers);
    Ok((saved, next.finish(index, headers, size)))
}

/// How a splice copies the rows of the file it does not write anew.
struct RowCopy<'i> {
    index: &'i RowIndex,
    /// Put before each row's line end, when the file gains columns: a comma per column.
    pad: Option<Vec<u8>>,
}

impl RowCopy<'_> {
    /// Copies `rows`, which lie from `from` to `to` in the file, after what `text`
    /// holds, noting where each starts in `next`; whether they end a line (`None` when
    /// there are none). Without a pad in bulk; with one row by row, a row's cells
    /// before its line end (rows end in cells, never in a line end: a cell holding one
    /// is quoted) and the line end and blank lines after it.
    fn rows(
        &self,
        file: &mut Window,
        (out, text): (&mut Fingerprinting<'_>, &mut super::Text),
        next: &mut NextIndex,
        rows: std::ops::Range<usize>,
        (from, to): (u64, u64),
    ) -> io::Result<Option<bool>> {
        let index = self.index;
        let Some(pad) = &self.pad else {
            // After a row written anew, the first of these starts right where it ends.
            let at = out.written() + text.len();
            next.copied(index, rows.clone(), (from, at), rows.start > 0);
            return copy(file, out, text, (from, to));
        };
        let (mut last, mut bytes) = (None, Vec::new());
        for i in rows {
            next.push(index.id(i), out.written() + text.len());
            file.row_bytes_into(index, i, &mut bytes)?;
            let cells = bytes.len() - bytes.iter().rev().take_while(|b| is_line_end(**b)).count();
            let mut held = text.bytes();
            held.extend_from_slice(&bytes[..cells]);
            held.extend_from_slice(pad);
            held.extend_from_slice(&bytes[cells..]);
            drop(held);
            text.send(out, false)?;
            last = Some(cells < bytes.len());
        }
        Ok(last)
    }
}

fn is_line_end(byte: u8) -> bool {
    matches!(byte, b'\r' | b'\n')
}

/// Copies the file's bytes from `start` to `end` to `out`, after the rows `text`
/// holds (a short run of bytes joins them, a long one goes straight out); whether
/// they end a line (`None` when there are none). A system call per megabyte read,
/// not one per row: a write of 100,000 rows of a million made seven per row and
/// took half a second.
fn copy(
    file: &mut Window,
    out: &mut Fingerprinting<'_>,
    text: &mut super::Text,
    (start, end): (u64, u64),
) -> io::Result<Option<bool>> {
    let (mut at, mut last) = (start, None);
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX);
        let bytes = file.bytes(at, want)?;
        let Some(&end_byte) = bytes.last() else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was written",
            ));
        };
        match bytes.len() < SENT_STRAIGHT {
            true => text.bytes().extend_from_slice(bytes),
            false => {
                text.send(out, true)?;
                out.write_all(bytes)?;
            }
        }
        text.send(out, false)?;
        (at, last) = (at + bytes.len() as u64, Some(end_byte == b'\n'));
    }
    Ok(last)
}

/// The bytes a splice reads at a time around the rows it parses: rows a write touches
/// are often near each other.
const PARSE_BLOCK: usize = if cfg!(test) { 7 } else { 32 << 10 };

/// The bytes a splice reads at a time as it copies the file.
const COPY_BLOCK: usize = if cfg!(test) { 13 } else { 1 << 20 };

/// Copied bytes from this many on are written out at once, not gathered first.
const SENT_STRAIGHT: usize = if cfg!(test) { 5 } else { 64 << 10 };

/// A file read through one buffer of `block` bytes: what lies in the buffer is
/// served from memory, anything else refills it from there on.
pub(super) struct Window {
    file: File,
    /// The file's size as listed: no read goes past it.
    size: u64,
    buf: Vec<u8>,
    /// Where the buffer's bytes start in the file, and how many it holds.
    start: u64,
    len: usize,
    /// Bytes read at a time: [`PARSE_BLOCK`] while the rows are parsed, then
    /// [`COPY_BLOCK`] as the file is copied.
    block: usize,
}

impl Window {
    pub(super) fn new(file: File, size: u64) -> Window {
        Window {
            file,
            size,
            buf: Vec::new(),
            start: 0,
            len: 0,
            block: PARSE_BLOCK,
        }
    }

    /// At most `want` bytes of the file from `at` on, at least one unless `at` is the
    /// end of the file as listed.
    pub(super) fn bytes(&mut self, at: u64, want: usize) -> io::Result<&[u8]> {
        if at >= self.size {
            return Ok(&[]);
        }
        if at < self.start || at >= self.start + self.len as u64 {
            let left = usize::try_from(self.size - at).unwrap_or(usize::MAX);
            self.len = left.min(self.block);
            self.buf.resize(self.len.max(self.buf.len()), 0);
            self.start = at;
            if let Err(e) = read_exact_at(&self.file, &mut self.buf[..self.len], at) {
                self.len = 0;
                return Err(match e.kind() {
                    io::ErrorKind::UnexpectedEof => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was written",
                    ),
                    _ => e,
                });
            }
        }
        let from = usize::try_from(at - self.start).unwrap_or(usize::MAX);
        let n = want.min(self.len - from);
        Ok(&self.buf[from..from + n])
    }

    /// The bytes of row `i` of `index`: from its first byte to the next row's (its
    /// line end and blank lines after it included), the last to the end of the file.
    pub(super) fn range(&mut self, index: &RowIndex, i: usize) -> io::Result<(u64, u64)> {
        let end = match index.starts.get(i + 1) {
            Some(&next) => self.first_byte(next)?,
            None => index.size,
        };
        Ok((self.first_byte(index.starts[i])?, end))
    }

    /// The bytes of row `i` of `index` ([`Window::range`]).
    pub(super) fn row_bytes(&mut self, index: &RowIndex, i: usize) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.row_bytes_into(index, i, &mut bytes)?;
        Ok(bytes)
    }

    /// The bytes of row `i` of `index` ([`Window::range`]), into `bytes`, emptied first.
    pub(super) fn row_bytes_into(
        &mut self,
        index: &RowIndex,
        i: usize,
        bytes: &mut Vec<u8>,
    ) -> io::Result<()> {
        let (start, end) = self.range(index, i)?;
        bytes.clear();
        bytes.reserve(usize::try_from(end - start).unwrap_or(0));
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at).unwrap_or(usize::MAX);
            let chunk = self.bytes(at, want)?;
            if chunk.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            bytes.extend_from_slice(chunk);
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// The first byte of the row the listing found at `at`: a reader counts a row from
    /// where it began looking for it, which after a CR LF is the LF (no row starts
    /// with a line end: empty lines are no rows).
    pub(super) fn first_byte(&mut self, mut at: u64) -> io::Result<u64> {
        loop {
            let bytes = self.bytes(at, 64)?;
            if bytes.is_empty() {
                return Ok(at);
            }
            match bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(skip) => return Ok(at + skip as u64),
                None => at += bytes.len() as u64,
            }
        }
    }
}

/// Every row of a file by its id (its ids are unique: the listing or scan that made
/// the index checked).
pub(super) fn all_rows(index: &RowIndex) -> IdIndex {
    let mut all = IdIndex::with_capacity(index.len());
    for i in 0..index.len() {
        all.insert(index.id(i), i, |i| index.id(i));
    }
    all
}

impl Table for Spliced<'_> {
    fn find(&self, id: &str) -> Option<usize> {
        if let Some(at) = self.touched.find(id) {
            return Some(self.row_of[at]);
        }
        // A row of the file not parsed: live unless parsed (and then found above, or
        // removed).
        (self.in_file(id)).filter(|&i| !self.parsed.contains_key(&i))
    }

    /// In file order, as a full rewrite's table gives them (new ids continue the
    /// sequence of the first id with the highest number).
    fn ids(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        let id = self.touched.layout.id;
        let listed = (0..self.index.len()).filter_map(move |i| match self.parsed.get(&i) {
            None => Some(self.index.id(i)),
            Some(&at) => self.touched.rows[at].as_ref().map(|row| &row[id]),
        });
        let inserted = self.touched.rows[self.parsed.len()..].iter().flatten();
        Box::new(listed.chain(inserted.map(move |row| &row[id])))
    }

    fn version(&self, row: usize) -> String {
        self.touched.version(self.at(row))
    }

    fn stamps_modified_at(&self) -> bool {
        self.touched.stamps_modified_at()
    }

    fn insert(
        &mut self,
        id: String,
        fields: &tandem_model::Fields,
        stamp: Option<tandem_model::Timestamp>,
    ) -> Result<usize, ConnectorError> {
        let at = self.touched.insert(id, fields, stamp)?;
        let row = self.index.len() + (at - self.parsed.len());
        self.row_of.push(row);
        Ok(row)
    }

    fn update(
        &mut self,
        row: usize,
        changes: &tandem_connector::Changes,
        stamp: Option<tandem_model::Timestamp>,
    ) -> Result<(), ConnectorError> {
        let at = self.at(row);
        self.touched.update(at, changes, stamp)
    }

    fn remove(&mut self, row: usize) {
        let at = self.at(row);
        self.touched.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;
    use tandem_connector::Changes;
    use tandem_model::{FieldName, Fields, Value};

    use super::super::testgen::{Op, file_text, index_of, op, rows, style, twins, write_ops};
    use super::super::{CsvTable, read};
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A spliced write answers as a full rewrite does and leaves a file that reads
        /// back as the rewritten one does, whatever the file's layout and the ops.
        #[test]
        fn a_spliced_write_reads_back_as_a_rewrite(
            rows in rows(),
            style in style(),
            ops in proptest::collection::vec(op(), 1..6),
        ) {
            let (_dir, spliced, rewritten) = twins(&file_text(&rows, &style));
            let before = read(&rewritten, EntityKind::Contact).unwrap();
            let ids: Vec<String> = before.iter().map(|r| r.id.clone()).collect();
            let versions = (before.iter())
                .map(|r| (r.id.clone(), r.version.clone().unwrap_or_default()))
                .collect();
            let ops = write_ops(&ops, &ids, &versions);

            let index = index_of(&spliced);
            let done = write_any(&spliced, EntityKind::Contact, &index, ops.clone()).unwrap();
            let Splice::Done(outcomes, _) = done else {
                panic!("a file as listed is spliced");
            };
            let mut table = CsvTable::load(&rewritten, EntityKind::Contact).unwrap();
            let (expected, changed) = table::apply(&mut table, EntityKind::Contact, ops);
            if changed {
                table.save().unwrap();
            }
            prop_assert_eq!(format!("{outcomes:?}"), format!("{expected:?}"));
            prop_assert_eq!(
                read(&spliced, EntityKind::Contact).unwrap(),
                read(&rewritten, EntityKind::Contact).unwrap()
            );
            // A file as Tandem writes it (no empty line, a line end after the last
            // row) comes out byte for byte as the rewrite writes it.
            if style.blank_after.is_empty() && style.last_newline {
                prop_assert_eq!(fs::read(&spliced).unwrap(), fs::read(&rewritten).unwrap());
            }
        }
    }

    /// `ops` spliced into `spliced` with `index` and written the full way into
    /// `rewritten`: both answer alike and read back alike. The index the splice left.
    fn splice_and_rewrite(
        (spliced, rewritten): (&Path, &Path),
        index: &RowIndex,
        ops: &[Op],
    ) -> Result<Option<RowIndex>, TestCaseError> {
        let before = read(rewritten, EntityKind::Contact).unwrap();
        let ids: Vec<String> = before.iter().map(|r| r.id.clone()).collect();
        let versions = (before.iter())
            .map(|r| (r.id.clone(), r.version.clone().unwrap_or_default()))
            .collect();
        let ops = write_ops(ops, &ids, &versions);
        let done = write_any(spliced, EntityKind::Contact, index, ops.clone()).unwrap();
        let Splice::Done(outcomes, saved) = done else {
            return Err(TestCaseError::fail("not spliced"));
        };
        let mut table = CsvTable::load(rewritten, EntityKind::Contact).unwrap();
        let (expected, changed) = table::apply(&mut table, EntityKind::Contact, ops);
        if changed {
            table.save().unwrap();
        }
        prop_assert_eq!(format!("{outcomes:?}"), format!("{expected:?}"));
        prop_assert_eq!(
            read(spliced, EntityKind::Contact).unwrap(),
            read(rewritten, EntityKind::Contact).unwrap()
        );
        Ok(saved.map(|(_, index)| index))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The index a splice leaves is the file's: writes spliced one after the other,
        /// each with the index the one before left, answer and read back as rewrites
        /// do, and none has to read the whole file again.
        #[test]
        fn writes_spliced_one_after_the_other_read_back_as_rewrites(
            rows in rows(),
            style in style(),
            writes in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 2..5),
        ) {
            let (_dir, spliced, rewritten) = twins(&file_text(&rows, &style));
            let mut index = index_of(&spliced);
            for ops in &writes {
                if let Some(next) = splice_and_rewrite((&spliced, &rewritten), &index, ops)? {
                    prop_assert_eq!(next.size, fs::metadata(&spliced).unwrap().len());
                    index = next;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A scan of a file that was not listed finds the rows where a complete listing
        /// of it does, whatever its layout.
        #[test]
        fn an_index_scanned_is_the_one_a_listing_leaves(rows in rows(), style in style()) {
            let (_dir, path, _) = twins(&file_text(&rows, &style));
            let scanned = RowIndex::scan(&path, EntityKind::Contact).unwrap().unwrap();
            prop_assert_eq!(scanned, index_of(&path));
        }
    }

    /// Rows the write does not touch keep their bytes, quotes and line ends included;
    /// the one it touches is written anew, and an added row starts on a line of its own
    /// although the file did not end with one. The fingerprint is the file's.
    #[test]
    fn untouched_rows_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.csv");
        let text =
            "id,name,city,notes\r\nC1,\"Acme\",Gent,\"x\"\r\nC2,Beta,Gent,y\r\nC3,\"Ce\",Gent,z";
        fs::write(&path, text).unwrap();
        let index = index_of(&path);
        let mut changes = Changes::new();
        changes.insert(FieldName::new("city"), Value::text("Brugge"));
        let ops = vec![
            WriteOp::Update {
                id: "C2".into(),
                version: None,
                changes,
            },
            WriteOp::create(Fields::new().with("name", "Dee")),
        ];
        let done = write_any(&path, EntityKind::Contact, &index, ops).unwrap();
        let Splice::Done(outcomes, saved) = done else {
            panic!("spliced");
        };
        let saved = saved.map(|(fingerprint, _)| fingerprint);
        assert!(outcomes.iter().all(Result::is_ok));
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(
            after,
            "id,name,city,notes\r\nC1,\"Acme\",Gent,\"x\"\r\nC2,Beta,Brugge,y\r\nC3,\"Ce\",Gent,z\r\nC4,Dee,,\r\n"
        );
        let hash = xxhash_rust::xxh3::xxh3_64(after.as_bytes());
        let fingerprint = crate::fingerprint_of(after.len() as u64, hash);
        assert_eq!(saved.as_deref(), Some(fingerprint.as_str()));
    }

    /// A row that is not where the listing found it (the file changed since) is not
    /// spliced: the write goes the full way, and the file is left as it is.
    #[test]
    fn a_row_moved_since_the_listing_is_not_spliced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.csv");
        fs::write(&path, "id,name\nC1,Acme\nC2,Beta\n").unwrap();
        let index = index_of(&path);
        fs::write(&path, "id,name\nC2,Beta\nC1,Acme\n").unwrap();
        let mut changes = Changes::new();
        changes.insert(FieldName::new("name"), Value::text("Acme NV"));
        let ops = vec![WriteOp::Update {
            id: "C1".into(),
            version: None,
            changes,
        }];
        let result = write_any(&path, EntityKind::Contact, &index, ops).unwrap();
        assert!(matches!(result, Splice::NotHere(ops) if ops.len() == 1));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "id,name\nC2,Beta\nC1,Acme\n"
        );
    }
}
