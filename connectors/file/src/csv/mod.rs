//! CSV files: a header row naming `id` and the columns, one record per row.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use csv::{ErrorKind, ReaderBuilder, StringRecord, Terminator, WriterBuilder};
use tandem_connector::{Changes, ConnectorError};
use tandem_model::{EntityKind, FieldName, Fields, Record, Timestamp, Value, field};

use crate::error::{FileError, header_error, line_error};
use crate::id_index::IdIndex;
use crate::id_list::IdList;
use crate::link;
use crate::pieces::{self, Cut};
use crate::row::{Row, RowBuilder, TooLong};
use crate::table::{self, Table, TextStyle, version_of};

mod journal;
mod journaled;
mod splice;
mod stream;
#[cfg(test)]
mod testgen;

pub(crate) use journal::{Journal, path_of as journal_path, recover};
pub(crate) use journaled::{columns_for, write_journaled};
pub(crate) use splice::{RowIndex, Splice, write as splice};
pub(crate) use stream::write as stream;

/// A file a write saved: the fingerprint of its bytes and where its rows start.
pub(crate) type Saved = (String, RowIndex);

const BUFFER: usize = 1 << 16;
/// What is wrong with a row that does not fit a [`Row`].
const TOO_LONG: &str = "a row may hold at most 4 GiB";

/// What a column holds.
#[derive(Debug, Clone)]
enum Column {
    Id,
    ModifiedAt,
    Text(FieldName),
    /// `business_relations`: a `;`-separated list.
    List(FieldName),
    /// Not ours: never exposed, kept as it is.
    Unknown,
}

impl Column {
    fn new(kind: EntityKind, name: &str) -> Column {
        match name {
            "id" => Column::Id,
            "modified_at" => Column::ModifiedAt,
            field::BUSINESS_RELATIONS if kind == EntityKind::Contact => {
                Column::List(FieldName::new(name))
            }
            _ if table::is_field(kind, name) => Column::Text(FieldName::new(name)),
            _ => Column::Unknown,
        }
    }

    fn field(&self) -> Option<&FieldName> {
        match self {
            Column::Text(name) | Column::List(name) => Some(name),
            _ => None,
        }
    }
}

/// How the columns of a file map to a record.
#[derive(Debug, Clone)]
struct Layout {
    kind: EntityKind,
    headers: StringRecord,
    /// The columns the file has: every row of it is this wide. A write may add
    /// columns after them; rows are then padded.
    width: usize,
    /// The byte order mark and line ends found. The reader skips a byte order mark; the
    /// writer puts back both.
    style: TextStyle,
    columns: Vec<Column>,
    id: usize,
    modified_at: Option<usize>,
    /// The field columns in name order: filling the fields of a record in their own
    /// order is the cheapest way to fill them.
    by_name: Vec<usize>,
}

impl Layout {
    /// The layout of a file that does not exist yet: just the `id` column.
    fn fresh(kind: EntityKind) -> Layout {
        Layout {
            kind,
            headers: StringRecord::from(vec!["id"]),
            width: 1,
            style: TextStyle::default(),
            columns: vec![Column::Id],
            id: 0,
            modified_at: None,
            by_name: Vec::new(),
        }
    }

    fn new(
        path: &Path,
        kind: EntityKind,
        headers: &StringRecord,
        style: TextStyle,
    ) -> Result<Layout, ConnectorError> {
        let mut columns = Vec::with_capacity(headers.len());
        for (i, name) in headers.iter().enumerate() {
            let column = Column::new(kind, name);
            // Unknown columns may repeat (they are kept by position); ours may not, or
            // the record would be ambiguous.
            if !matches!(column, Column::Unknown) && headers.iter().take(i).any(|n| n == name) {
                return Err(header_error(path, format!("duplicate column `{name}`")));
            }
            columns.push(column);
        }
        let id = columns
            .iter()
            .position(|c| matches!(c, Column::Id))
            .ok_or_else(|| header_error(path, "no `id` column"))?;
        let modified_at = columns.iter().position(|c| matches!(c, Column::ModifiedAt));
        let mut by_name: Vec<usize> = (0..columns.len())
            .filter(|&i| columns[i].field().is_some())
            .collect();
        by_name.sort_by(|&a, &b| columns[a].field().cmp(&columns[b].field()));
        Ok(Layout {
            kind,
            headers: headers.clone(),
            width: headers.len(),
            style,
            columns,
            id,
            modified_at,
            by_name,
        })
    }

    /// The column of field `name`, added at the end if the file has none yet.
    fn column_for(&mut self, name: &FieldName) -> usize {
        if let Some(i) = self.columns.iter().position(|c| c.field() == Some(name)) {
            return i;
        }
        self.headers.push_field(name.as_str());
        self.columns.push(Column::new(self.kind, name.as_str()));
        let added = self.columns.len() - 1;
        self.by_name.push(added);
        self.by_name
            .sort_by(|&a, &b| self.columns[a].field().cmp(&self.columns[b].field()));
        added
    }

    /// A hash of every non-empty cell with its column name. Empty cells do not count,
    /// so adding a column leaves the versions of the other rows as they were. Stored
    /// versions depend on it: the bytes hashed must not change.
    fn hash<'a>(&self, row: impl Iterator<Item = &'a str>, buf: &mut Vec<u8>) -> u64 {
        buf.clear();
        for (name, cell) in self.headers.iter().zip(row) {
            if !cell.is_empty() {
                buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
                buf.extend_from_slice(name.as_bytes());
                buf.extend_from_slice(&(cell.len() as u64).to_le_bytes());
                buf.extend_from_slice(cell.as_bytes());
            }
        }
        xxhash_rust::xxh3::xxh3_64(buf)
    }

    /// [`Layout::hash`] of `row`, in a buffer kept per thread: a write asks it twice
    /// per row it changes, and a buffer made each time cost more than the hash.
    fn row_hash(&self, row: &Row) -> u64 {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| self.hash(row.iter(), buf))
    }

    /// The version of `row` ([`Layout::hash`] as text).
    fn version(&self, row: &Row) -> String {
        version_of(self.row_hash(row))
    }

    /// Whether a row whose [`Layout::row_hash`] is `hash` is at `version`, as
    /// `version == self.version(row)` says, without making the text of its version.
    fn is_at(hash: u64, version: &str) -> bool {
        let hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        version.len() == 16
            && version.as_bytes().iter().all(hex)
            && u64::from_str_radix(version, 16) == Ok(hash)
    }

    /// The row a create of `fields` as `id` writes, stamped `stamp` (empty for none).
    /// Every field must have its column already ([`Layout::column_for`]).
    fn new_row(
        &self,
        id: &str,
        fields: &Fields,
        stamp: &str,
        scratch: &mut RowBuilder,
    ) -> Result<Row, ConnectorError> {
        for column in &self.columns {
            match column {
                Column::Id => scratch.push(id),
                Column::ModifiedAt => scratch.push(stamp),
                Column::Text(name) | Column::List(name) => {
                    let cell = fields.get(name.as_str()).map(Value::cell);
                    scratch.push(&cell.unwrap_or_default());
                }
                Column::Unknown => scratch.push(""),
            }
        }
        (scratch.finish()).map_err(|TooLong| ConnectorError::invalid(Some(id), TOO_LONG))
    }

    /// `old` with `changes` made and `stamp` (if any) in `modified_at`; as wide as the
    /// layout. Every field set must have its column already.
    fn changed_row(
        &self,
        old: &Row,
        changes: &Changes,
        stamp: Option<&str>,
        scratch: &mut RowBuilder,
    ) -> Result<Row, ConnectorError> {
        // The old cells in turn: a row is shorter than the layout after a column was
        // added, and the cells it lacks are empty.
        let mut old_cells = old.iter();
        for column in &self.columns {
            let old_cell = old_cells.next().unwrap_or("");
            if let (Column::ModifiedAt, Some(stamp)) = (column, stamp) {
                scratch.push(stamp);
            } else if let Some(value) = column.field().and_then(|name| changes.get(name)) {
                scratch.push(&value.cell());
            } else {
                scratch.push(old_cell);
            }
        }
        (scratch.finish()).map_err(|TooLong| ConnectorError::invalid(Some(&old[self.id]), TOO_LONG))
    }
}

/// What [`scan`] read: per row what `each` made of it and its line.
struct Scanned<T> {
    rows: Vec<T>,
    lines: Vec<u64>,
}

/// Reads `path` strictly, calling `each` with every row, its line, its `modified_at`
/// and a scratch buffer. Returns the rows in file order, or `None` when the file is missing
/// or empty. A big file is cut into pieces parsed on the machine's cores (`pieces`):
/// what a run reads first is these files, and parsing them is most of it.
fn scan<T: Send>(
    path: &Path,
    kind: EntityKind,
    each: impl EachRow<T> + Sync,
) -> Result<Option<Scanned<T>>, ConnectorError> {
    let Some(pieces) = Pieces::open(path, kind, u64::MAX)? else {
        return Ok(None);
    };
    let Parsed { rows, lines, .. } = pieces.parse(0..pieces.starts.len(), &each)?;
    Ok(Some(Scanned { rows, lines }))
}

/// A CSV file opened once, its header read, and cut into pieces that parse on their
/// own: each starts where the reader of the whole file would start a record.
struct Pieces {
    path: PathBuf,
    file: File,
    size: u64,
    layout: Layout,
    /// Where each piece starts, the first just after the header; the last reads on to
    /// the end, as a read of the whole file would.
    starts: Vec<Cut>,
}

impl Pieces {
    /// Opens `path` and cuts it into a piece per core, or more pieces of about
    /// `piece_bytes` each; `None` when the file is missing or has no header.
    fn open(
        path: &Path,
        kind: EntityKind,
        piece_bytes: u64,
    ) -> Result<Option<Pieces>, ConnectorError> {
        let Some(mut file) = link::open(path)? else {
            return Ok(None);
        };
        let style = TextStyle::sniff(&mut file).map_err(|e| FileError::read(path, e))?;
        let size = file.metadata().map_err(|e| FileError::read(path, e))?.len();
        let mut reader = ReaderBuilder::new()
            .flexible(false)
            .buffer_capacity(BUFFER)
            .from_reader(At::new(&file, 0, u64::MAX));
        let headers = reader.headers().map_err(|e| csv_error(path, None, e, 0))?;
        if headers.is_empty() {
            return Ok(None);
        }
        let layout = Layout::new(path, kind, headers, style)?;
        // Where the reader stands after the header: its first record, as a reader of
        // the whole file counts bytes and lines.
        let position = reader.position();
        let first = Cut {
            offset: position.byte(),
            line: position.line(),
        };
        drop(reader);
        let wanted = size.div_ceil(piece_bytes).max(threads() as u64);
        let cuts = match cfg!(unix) {
            true => pieces::cuts(At::new(&file, 0, size), size, wanted),
            false => Ok(Vec::new()),
        }
        .map_err(|e| FileError::read(path, e))?;
        let starts = std::iter::once(first)
            .chain(cuts.into_iter().filter(|c| c.offset > first.offset))
            .collect();
        Ok(Some(Pieces {
            path: path.to_owned(),
            file,
            size,
            layout,
            starts,
        }))
    }

    /// The rows of the pieces `range`, parsed side by side, in file order. The first
    /// piece's rows are reserved for the whole range: the others are appended to them
    /// without growing it.
    fn parse<T: Send>(
        &self,
        range: std::ops::Range<usize>,
        each: &(impl EachRow<T> + Sync),
    ) -> Result<Parsed<T>, ConnectorError> {
        let piece = Piece {
            path: &self.path,
            layout: &self.layout,
            each,
            rows: PhantomData,
        };
        let (starts, file, size) = (&self.starts, &self.file, self.size);
        let end = |i: usize| starts.get(i + 1).map_or(size, |c| c.offset);
        let first = range.start;
        let whole = end(range.end.saturating_sub(1)).saturating_sub(starts[first].offset);
        let parts: Vec<_> = std::thread::scope(|scope| {
            let parts: Vec<_> = range
                .map(|i| {
                    let piece = &piece;
                    let reserve = if i == first {
                        whole
                    } else {
                        end(i) - starts[i].offset
                    };
                    let to = starts.get(i + 1).map_or(u64::MAX, |c| c.offset);
                    scope.spawn(move || piece.read_from(starts[i], to, reserve, file))
                })
                .collect();
            parts
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut parts = parts.into_iter();
        let mut parsed = match parts.next() {
            Some(first) => first?,
            None => Parsed::default(),
        };
        for part in parts {
            let more = part?;
            parsed.rows.extend(more.rows);
            parsed.lines.extend(more.lines);
            parsed.starts.extend(more.starts);
        }
        Ok(parsed)
    }
}

/// Rows parsed in file order, with each one's line (for errors) and the byte of the
/// file it starts at.
struct Parsed<T> {
    rows: Vec<T>,
    lines: Vec<u64>,
    starts: Vec<u64>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Parsed<T> {
        Parsed {
            rows: Vec::new(),
            lines: Vec::new(),
            starts: Vec::new(),
        }
    }
}

/// What a scan makes of each row: from the file's layout, the row, its line and the
/// file's modification time, with a scratch buffer.
trait EachRow<T>:
    Fn(&Layout, &StringRecord, u64, Option<Timestamp>, &mut Vec<u8>) -> Result<T, ConnectorError>
{
}

impl<T, F> EachRow<T> for F where
    F: Fn(
        &Layout,
        &StringRecord,
        u64,
        Option<Timestamp>,
        &mut Vec<u8>,
    ) -> Result<T, ConnectorError>
{
}

/// One piece of a file being scanned, and what to make of its rows (of type `T`).
struct Piece<'a, T, F> {
    path: &'a Path,
    layout: &'a Layout,
    each: &'a F,
    /// Ties `T` to the piece, so that its impl can bound `F` by [`EachRow`].
    rows: PhantomData<fn() -> T>,
}

impl<T, F: EachRow<T>> Piece<'_, T, F> {
    /// The rows from `cut` to `end`, on a reader of their own: no header, and the
    /// width of each row checked against the header's here (the reader would hold it
    /// against the piece's first row).
    fn read_from(
        &self,
        cut: Cut,
        end: u64,
        reserve: u64,
        file: &File,
    ) -> Result<Parsed<T>, ConnectorError> {
        let mut reader = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(BUFFER)
            .from_reader(At::new(file, cut.offset, end));
        self.read(&mut reader, cut, reserve)
    }

    /// The rows `reader` reads from `cut` on (its lines and bytes counted from there);
    /// room is reserved once for the rows of `len` bytes.
    fn read(
        &self,
        reader: &mut csv::Reader<At<'_>>,
        cut: Cut,
        len: u64,
    ) -> Result<Parsed<T>, ConnectorError> {
        let (path, layout) = (self.path, self.layout);
        let lines_before = cut.line - 1;
        let (mut rows, mut lines, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        let mut buf = Vec::with_capacity(512);
        let mut row = StringRecord::new();
        while reader
            .read_record(&mut row)
            .map_err(|e| csv_error(path, Some(&layout.headers), e, lines_before))?
        {
            if rows.len() == table::SAMPLE_ROWS {
                let sampled = row.position().map_or(0, csv::Position::byte);
                let expected = table::expected_rows(len, sampled);
                rows.reserve(expected);
                lines.reserve(expected);
                starts.reserve(expected);
            }
            let (line, modified_at) = checked(path, layout, &row, lines_before)?;
            rows.push((self.each)(layout, &row, line, modified_at, &mut buf)?);
            lines.push(line);
            starts.push(cut.offset + row.position().map_or(0, csv::Position::byte));
        }
        Ok(Parsed {
            rows,
            lines,
            starts,
        })
    }
}

/// Checks `row`, read by a reader that started `lines_before` lines down the file, as
/// every read of the file does: as wide as the header, an id, a `modified_at` that
/// parses. Returns its line and its `modified_at`.
fn checked(
    path: &Path,
    layout: &Layout,
    row: &StringRecord,
    lines_before: u64,
) -> Result<(u64, Option<Timestamp>), ConnectorError> {
    let line = lines_before + row.position().map_or(0, csv::Position::line);
    if row.len() != layout.width {
        let (expected, found) = (layout.width, row.len());
        let error = format!("expected {expected} fields, found {found}");
        return Err(line_error(path, line, error));
    }
    if row[layout.id].trim().is_empty() {
        return Err(line_error(path, line, "empty id"));
    }
    let modified_at = match layout.modified_at.map(|i| &row[i]) {
        None | Some("") => None,
        Some(text) => Some(
            Timestamp::parse(text)
                .map_err(|e| line_error(path, line, format!("column `modified_at`: {e}")))?,
        ),
    };
    Ok((line, modified_at))
}

/// Reads a file from `pos` up to `end` by positional reads, which leave the file's
/// own offset alone: the pieces of one open file are read side by side, all from the
/// file opened once (a file replaced meanwhile is not mixed in).
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> At<'a> {
    fn new(file: &'a File, pos: u64, end: u64) -> At<'a> {
        At { file, pos, end }
    }
}

impl io::Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = read_at(self.file, &mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, pos)
}

/// Elsewhere a file is read in one piece ([`scan`] makes no cuts), from its start.
#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(pos))?;
    file.read(buf)
}

/// Fills `buf` from `file` at `at`.
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match read_at(file, &mut buf[done..], at + done as u64)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(())
}

/// `error` of a reader that started `lines_before` lines down the file.
fn csv_error(
    path: &Path,
    headers: Option<&StringRecord>,
    error: csv::Error,
    lines_before: u64,
) -> ConnectorError {
    // Errors in the header row carry no position.
    let line = lines_before + error.position().map_or(1, csv::Position::line);
    match error.into_kind() {
        ErrorKind::Io(e) => FileError::read(path, e).into(),
        ErrorKind::Utf8 { err, .. } => {
            let column = match headers.and_then(|h| h.get(err.field())) {
                Some(name) => format!("`{name}`"),
                None => format!("{}", err.field() + 1),
            };
            line_error(path, line, format!("invalid UTF-8 in column {column}"))
        }
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => line_error(
            path,
            line,
            format!("expected {expected_len} fields, found {len}"),
        ),
        // Seeking and serde are not used here.
        other => line_error(path, line, format!("{other:?}")),
    }
}

/// Every record of the file at `path`; a missing file holds none.
pub(crate) fn read(path: &Path, kind: EntityKind) -> Result<Vec<Record>, ConnectorError> {
    let Some(Scanned { rows, lines, .. }) = scan(path, kind, record_of(kind))? else {
        return Ok(Vec::new());
    };
    table::check_unique(path, rows.iter().map(|r| r.id.as_str()), &lines)?;
    Ok(rows)
}

/// What a row of a file of `kind` is as a record.
fn record_of(kind: EntityKind) -> impl EachRow<Record> + Sync {
    move |layout, row, _, modified_at, buf| {
        let mut fields = Fields::with_capacity(layout.by_name.len());
        for &i in &layout.by_name {
            match (&layout.columns[i], &row[i]) {
                (_, "") => {}
                (Column::Text(name), cell) => fields.set(name.clone(), Value::text(cell)),
                (Column::List(name), cell) => fields.set(name.clone(), table::split_list(cell)),
                _ => {}
            }
        }
        Ok(Record {
            id: row[layout.id].to_owned(),
            kind,
            fields,
            version: Some(version_of(layout.hash(row.iter(), buf))),
            modified_at,
            deleted: false,
        })
    }
}

/// The pieces a listing reads a page at a time are about this long: a page holds a
/// piece's records per core, not the whole file's.
const PIECE_BYTES: u64 = 8 << 20;

/// A file read a page at a time: cut into pieces of about [`PIECE_BYTES`] where the
/// reader of the whole file would start a record, each page a piece per core, parsed
/// side by side from the one file opened (a file replaced meanwhile is not mixed in).
/// Ids are checked for duplicates over the whole file once its last page is read.
pub(crate) struct Listing {
    kind: EntityKind,
    /// `None` for a missing or empty file: one page, of no records.
    pieces: Option<Pieces>,
    /// The next piece to read.
    next: usize,
    /// Every id read so far, its line, and the byte of the file its row starts at.
    ids: IdList,
    lines: Vec<u64>,
    starts: Vec<u64>,
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing")
            .field("path", &self.pieces.as_ref().map(|p| &p.path))
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Listing {
    /// Opens the file at `path` for a full listing of records of `kind`.
    pub(crate) fn open(path: &Path, kind: EntityKind) -> Result<Listing, ConnectorError> {
        Ok(Listing {
            kind,
            pieces: Pieces::open(path, kind, PIECE_BYTES)?,
            next: 0,
            ids: IdList::default(),
            lines: Vec::new(),
            starts: Vec::new(),
        })
    }

    /// Whether every piece was read.
    pub(crate) fn is_done(&self) -> bool {
        self.next >= self.pieces.as_ref().map_or(0, |p| p.starts.len())
    }

    /// Where the next page starts, as the listing's cursor names it.
    pub(crate) fn position(&self) -> String {
        let pieces = self.pieces.as_ref().map_or(0, |p| p.starts.len());
        format!("piece {} of {pieces}", self.next)
    }

    /// The records of the next page: the next piece per core, in file order. After the
    /// last one, a duplicate id anywhere in the file is an error.
    pub(crate) fn next_page(&mut self) -> Result<Vec<Record>, ConnectorError> {
        let Some(pieces) = &self.pieces else {
            return Ok(Vec::new());
        };
        let range = self.next..(self.next + threads()).min(pieces.starts.len());
        self.next = range.end;
        let Parsed {
            rows: records,
            lines,
            starts,
        } = pieces.parse(range, &record_of(self.kind))?;
        for record in &records {
            self.ids.push(&record.id);
        }
        self.lines.extend(lines);
        self.starts.extend(starts);
        if self.is_done() {
            table::check_unique(&pieces.path, self.ids.iter(), &self.lines)?;
        }
        Ok(records)
    }
}

impl Listing {
    /// Where each row of the file starts, once every piece was read: what a write of a
    /// few rows splices the file by ([`splice`]). `None` for a missing or empty file.
    pub(crate) fn into_index(self) -> Option<RowIndex> {
        let pieces = self.pieces?;
        Some(RowIndex {
            headers: pieces.layout.headers,
            style: pieces.layout.style,
            size: pieces.size,
            ids: self.ids,
            starts: self.starts,
        })
    }
}

impl RowIndex {
    /// Where every row of the file at `path` starts, and its id, from a scan on the
    /// machine's cores that makes no records: for a write of a few rows to a big file
    /// this run did not list (a scope skipped because it did not change). The same
    /// index a complete listing leaves; `None` for a missing or empty file.
    pub(crate) fn scan(path: &Path, kind: EntityKind) -> Result<Option<RowIndex>, ConnectorError> {
        let Some(pieces) = Pieces::open(path, kind, u64::MAX)? else {
            return Ok(None);
        };
        let id_of = |layout: &Layout, row: &StringRecord, _, _, _: &mut Vec<u8>| {
            Ok(row[layout.id].to_owned())
        };
        let Parsed {
            rows,
            lines,
            starts,
        } = pieces.parse(0..pieces.starts.len(), &id_of)?;
        table::check_unique(&pieces.path, rows.iter().map(String::as_str), &lines)?;
        let mut ids = IdList::with_capacity(rows.len(), rows.iter().map(String::len).sum());
        rows.iter().for_each(|id| ids.push(id));
        Ok(Some(RowIndex {
            headers: pieces.layout.headers,
            style: pieces.layout.style,
            size: pieces.size,
            ids,
            starts,
        }))
    }
}

/// The threads a file is parsed on: the machine's cores, at most four.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A CSV file loaded for writing.
#[derive(Debug)]
pub(crate) struct CsvTable {
    path: PathBuf,
    layout: Layout,
    /// Rows may be shorter than the header after a column was added; the missing
    /// cells are empty and are written out as such.
    rows: Vec<Option<Row>>,
    /// Rows by id: a million ids are indexed per write that loads the file.
    index: IdIndex,
    /// Where inserted and updated rows are put together.
    scratch: RowBuilder,
}

impl CsvTable {
    /// The whole file, loaded: what the streamed and spliced writes are tested against.
    #[cfg(test)]
    pub(crate) fn load(path: &Path, kind: EntityKind) -> Result<CsvTable, ConnectorError> {
        let to_row = |_: &Layout, row: &StringRecord, line, _, _: &mut Vec<u8>| {
            let lens = row.as_byte_record().iter().map(<[u8]>::len);
            Row::new(row.as_slice(), lens).map_err(|TooLong| line_error(path, line, TOO_LONG))
        };
        let (layout, rows, lines) = match Pieces::open(path, kind, u64::MAX)? {
            Some(pieces) => {
                let Parsed { rows, lines, .. } = pieces.parse(0..pieces.starts.len(), &to_row)?;
                (pieces.layout, rows.into_iter().map(Some).collect(), lines)
            }
            None => (Layout::fresh(kind), Vec::new(), Vec::new()),
        };
        let id = layout.id;
        let mut index = IdIndex::with_capacity(rows.len());
        let mut repeated = false;
        for i in 0..rows.len() {
            let id_of = |i| id_at(&rows, id, i);
            repeated |= index.insert(id_of(i), i, id_of).is_some();
        }
        if repeated {
            // Which id, and on which lines, for the error.
            table::check_unique(path, rows.iter().flatten().map(|r| &r[id]), &lines)?;
        }
        Ok(CsvTable {
            path: path.to_owned(),
            layout,
            rows,
            index,
            scratch: RowBuilder::default(),
        })
    }

    fn row(&self, row: usize) -> &Row {
        self.rows[row].as_ref().expect("index only names live rows")
    }

    /// A table of no rows yet, of a file laid out as `layout`, with room for `rows`.
    fn with_capacity(path: &Path, layout: Layout, rows: usize) -> CsvTable {
        CsvTable {
            path: path.to_owned(),
            layout,
            rows: Vec::with_capacity(rows),
            index: IdIndex::with_capacity(rows),
            scratch: RowBuilder::default(),
        }
    }

    /// Adds `row` as it is; returns where it is.
    fn push(&mut self, row: Row) -> usize {
        let at = self.rows.len();
        self.rows.push(Some(row));
        let (rows, id) = (&self.rows, self.layout.id);
        self.index
            .insert(id_at(rows, id, at), at, |i| id_at(rows, id, i));
        at
    }
}

/// The id (in column `id`) of row `i` of `rows`; "" for a removed row, which the index
/// no longer names.
fn id_at(rows: &[Option<Row>], id: usize, i: usize) -> &str {
    rows[i].as_ref().map_or("", |row| &row[id])
}

impl Table for CsvTable {
    fn find(&self, id: &str) -> Option<usize> {
        self.index
            .find(id, |i| id_at(&self.rows, self.layout.id, i))
    }

    fn ids(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        let id = self.layout.id;
        Box::new(self.rows.iter().flatten().map(move |row| &row[id]))
    }

    fn version(&self, row: usize) -> String {
        self.layout.version(self.row(row))
    }

    fn stamps_modified_at(&self) -> bool {
        self.layout.modified_at.is_some()
    }

    fn insert(
        &mut self,
        id: String,
        fields: &Fields,
        stamp: Option<Timestamp>,
    ) -> Result<usize, ConnectorError> {
        for (name, _) in fields {
            self.layout.column_for(name);
        }
        let stamp = stamp.map(|t| t.to_string()).unwrap_or_default();
        let row = self
            .layout
            .new_row(&id, fields, &stamp, &mut self.scratch)?;
        Ok(self.push(row))
    }

    fn update(
        &mut self,
        row: usize,
        changes: &Changes,
        stamp: Option<Timestamp>,
    ) -> Result<(), ConnectorError> {
        for (name, value) in changes {
            // Clearing a field the file has no column for changes nothing.
            if !value.is_empty() {
                self.layout.column_for(name);
            }
        }
        let stamp = stamp.map(|t| t.to_string());
        let old = self.rows[row].as_ref().expect("index only names live rows");
        let new = (self.layout).changed_row(old, changes, stamp.as_deref(), &mut self.scratch)?;
        self.rows[row] = Some(new);
        Ok(())
    }

    fn remove(&mut self, row: usize) {
        if let Some(old) = self.rows[row].take() {
            self.index.remove(&old[self.layout.id], row);
        }
    }
}

/// Text of CSV rows: rows formatted by one CSV writer into a buffer its owner also
/// copies bytes into, and sends or takes (a CSV writer lends out no mutable access to
/// what it writes to). A writer per row allocated its 64 KiB buffer each time.
pub(super) struct Text {
    csv: csv::Writer<Staged>,
    staged: Staged,
}

/// A buffer a CSV writer writes into and its owner sends from.
#[derive(Clone, Default)]
struct Staged(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl io::Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Text {
    /// Text in the style of a file, room made for `capacity` bytes.
    pub(super) fn new(style: TextStyle, capacity: usize) -> Text {
        let staged = Staged::default();
        staged.0.borrow_mut().reserve(capacity);
        Text {
            csv: WriterBuilder::new()
                .terminator(terminator(style))
                .from_writer(staged.clone()),
            staged,
        }
    }

    /// The bytes held.
    pub(super) fn len(&self) -> u64 {
        self.staged.0.borrow().len() as u64
    }

    /// The bytes held, to add to.
    pub(super) fn bytes(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        self.staged.0.borrow_mut()
    }

    /// Writes a record of `cells`.
    pub(super) fn record<'a>(&mut self, cells: impl Iterator<Item = &'a str>) -> io::Result<()> {
        self.csv.write_record(cells)?;
        // Into the buffer, so that `len` counts it.
        self.csv.flush()
    }

    /// Writes `row`, padded with empty cells to `width`.
    pub(super) fn row(&mut self, row: &Row, width: usize) -> io::Result<()> {
        let padding = std::iter::repeat_n("", width - row.len());
        self.record(row.iter().chain(padding))
    }

    /// Sends the bytes held to `out` once they are a megabyte, or all of them.
    pub(super) fn send<W: io::Write + ?Sized>(&mut self, out: &mut W, all: bool) -> io::Result<()> {
        let mut staged = self.staged.0.borrow_mut();
        if all || staged.len() >= SENT_AT {
            out.write_all(&staged)?;
            staged.clear();
        }
        Ok(())
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        drop(self.csv);
        std::rc::Rc::try_unwrap(self.staged.0)
            .map(std::cell::RefCell::into_inner)
            .unwrap_or_else(|shared| shared.borrow().clone())
    }
}

/// The line end rows are written with: the file's own.
fn terminator(style: TextStyle) -> Terminator {
    match style.crlf {
        true => Terminator::CRLF,
        false => Terminator::Any(b'\n'),
    }
}

/// Formatted rows a [`Text`] sends at once.
const SENT_AT: usize = 1 << 20;

/// The oracle's side of a table loaded whole: saved whole.
#[cfg(test)]
impl CsvTable {
    /// Rewrites the file atomically; returns the fingerprint of what it wrote.
    pub(crate) fn save(&self) -> Result<String, ConnectorError> {
        crate::atomic::replace(&self.path, |file| {
            self.layout.style.write_start(file)?;
            self.write_rows(&mut *file, &self.rows, true)
        })
    }

    /// Writes `rows` as CSV to `out`, after the header row if `header`; short rows
    /// padded with empty cells.
    fn write_rows(
        &self,
        out: impl io::Write,
        rows: &[Option<Row>],
        header: bool,
    ) -> io::Result<()> {
        let width = self.layout.headers.len();
        let mut out = WriterBuilder::new()
            .buffer_capacity(BUFFER)
            .terminator(terminator(self.layout.style))
            .from_writer(out);
        if header {
            out.write_record(&self.layout.headers)?;
        }
        for row in rows.iter().flatten() {
            let padding = std::iter::repeat_n("", width - row.len());
            out.write_record(row.iter().chain(padding))?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tandem_model::Fields;

    use super::*;

    /// A row's version as it was computed before rows were kept as [`Row`]s: from a
    /// `StringRecord`, zipped with the header. Stored versions depend on it.
    fn old_version(headers: &StringRecord, row: &StringRecord) -> String {
        let mut buf = Vec::new();
        for (name, cell) in headers.iter().zip(row.iter()) {
            if !cell.is_empty() {
                buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
                buf.extend_from_slice(name.as_bytes());
                buf.extend_from_slice(&(cell.len() as u64).to_le_bytes());
                buf.extend_from_slice(cell.as_bytes());
            }
        }
        version_of(xxhash_rust::xxh3::xxh3_64(&buf))
    }

    fn cells(table: &CsvTable, row: usize) -> StringRecord {
        table.row(row).iter().collect()
    }

    /// A file big enough to be parsed in pieces, with quoted line ends, quotes inside
    /// unquoted fields, CR LF and empty lines near every cut.
    fn big_file(dir: &Path, tail: &str) -> PathBuf {
        let path = dir.join("contacts.csv");
        let mut text = String::from("id,name,notes\r\n");
        let mut i = 0;
        while (text.len() as u64) < pieces::PARALLEL_FROM * 2 {
            text.push_str(&format!(
                "C{i},\"Ann \"\"{i}\"\"\nLee\",say \"hi\r\n\nD{i},,\"a,\r\nb\"\n"
            ));
            i += 1;
        }
        text.push_str(tail);
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_file_read_in_pieces_is_the_file_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = big_file(dir.path(), "");
        let records = read(&path, EntityKind::Contact).unwrap();
        let mut reader = ReaderBuilder::new().from_path(&path).unwrap();
        let headers = reader.headers().unwrap().clone();
        let whole: Vec<StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), whole.len());
        for (record, row) in records.iter().zip(&whole) {
            assert_eq!(record.id, row[0]);
            assert_eq!(
                record.fields.text("name"),
                Some(&row[1]).filter(|n| !n.is_empty())
            );
            assert_eq!(
                record.version.as_deref(),
                Some(&*old_version(&headers, row))
            );
        }
        let table = CsvTable::load(&path, EntityKind::Contact).unwrap();
        for (i, row) in whole.iter().enumerate() {
            assert_eq!(cells(&table, i), *row);
        }
    }

    #[test]
    fn errors_in_a_later_piece_name_the_line_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let whole_lines = |path: &Path| {
            fs::read(path)
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        };
        let path = big_file(dir.path(), "X1,a\n");
        let line = whole_lines(&path);
        let error = read(&path, EntityKind::Contact).unwrap_err().to_string();
        assert!(error.contains(&format!("line {line}")), "{error}");
        assert!(error.contains("expected 3 fields, found 2"), "{error}");
        let path = big_file(dir.path(), "C0,again,\n");
        let line = whole_lines(&path);
        let error = read(&path, EntityKind::Contact).unwrap_err().to_string();
        assert!(error.contains(&format!("line {line}")), "{error}");
        // An error the csv reader finds itself (not UTF-8) counts lines the same way.
        let path = big_file(dir.path(), "X2,a,b\n");
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 4;
        bytes[at] = 0xff;
        fs::write(&path, bytes).unwrap();
        let line = whole_lines(&path);
        let error = read(&path, EntityKind::Contact).unwrap_err().to_string();
        assert!(
            error.contains(&format!("line {line}: invalid UTF-8")),
            "{error}"
        );
    }

    /// `is_at` answers as comparing with the text of the row's version does, for
    /// texts that are not quite a version too.
    #[test]
    fn a_row_is_at_its_version_and_no_other_text() {
        let layout = Layout::fresh(EntityKind::Contact);
        let row = Row::new("C1", [2].into_iter()).unwrap();
        let version = layout.version(&row);
        let hash = layout.row_hash(&row);
        assert!(Layout::is_at(hash, &version));
        let upper = version.to_uppercase();
        let short = version.trim_start_matches('0').to_owned() + "x";
        for other in [
            upper.as_str(),
            &short,
            "",
            "not a version at all",
            &version[1..],
        ] {
            assert_eq!(Layout::is_at(hash, other), other == version, "{other}");
        }
        let plus = format!("+{}", &version[1..]);
        assert!(!Layout::is_at(hash, &plus));
    }

    #[test]
    fn versions_are_those_of_a_string_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.csv");
        let content = "id,name,notes,extra\n\
            C1,\"Ann \"\"Nan\"\" Lee\",\"a, b\",\n\
            C2,,,\n\
            C3,Zoë 日本,\"line\nbreak\",🙂\n";
        fs::write(&path, content).unwrap();
        let mut table = CsvTable::load(&path, EntityKind::Contact).unwrap();
        let mut reader = ReaderBuilder::new().from_path(&path).unwrap();
        let headers = reader.headers().unwrap().clone();
        let records: Vec<StringRecord> = reader.records().map(Result::unwrap).collect();
        let mut versions = Vec::new();
        for (i, record) in records.iter().enumerate() {
            assert_eq!(cells(&table, i), *record);
            assert_eq!(table.version(i), old_version(&headers, record));
            versions.push(table.version(i));
        }
        // A new column leaves the other rows short, at their old versions.
        let mut fields = Fields::default();
        fields.set(FieldName::new("email"), Value::text("d@x.be"));
        fields.set(FieldName::new("name"), Value::text("Dé, \"D\""));
        let added = table.insert("C4".into(), &fields, None).unwrap();
        assert_eq!(table.row(0).len(), 4);
        let headers = table.layout.headers.clone();
        for i in 0..=added {
            assert_eq!(table.version(i), old_version(&headers, &cells(&table, i)));
        }
        for (i, version) in versions.iter().enumerate() {
            assert_eq!(table.version(i), *version);
        }
        let changes = [
            (FieldName::new("name"), Value::text("")),
            (FieldName::new("email"), Value::text("c3@x.be")),
        ];
        let changes = changes.into_iter().collect();
        table.update(2, &changes, None).unwrap();
        assert_eq!(table.version(2), old_version(&headers, &cells(&table, 2)));
        versions.push(table.version(added));
        versions.push(table.version(2));
        // As computed before rows were kept as `Row`s.
        let golden = [
            "d33023ab9fef9788",
            "0ddb590118f3fb63",
            "74834327ba54c387",
            "af5c943a7fd0eb9d",
            "247c88cdfada2413",
        ];
        assert_eq!(versions, golden);
        // Short rows are padded with empty cells.
        table.remove(1);
        assert_eq!(table.ids().collect::<Vec<_>>(), ["C1", "C3", "C4"]);
        assert_eq!(
            ["C1", "C2", "C3", "C4"].map(|id| table.find(id)),
            [Some(0), None, Some(2), Some(added)]
        );
        table.save().unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "id,name,notes,extra,email\n\
             C1,\"Ann \"\"Nan\"\" Lee\",\"a, b\",,\n\
             C3,,\"line\nbreak\",🙂,c3@x.be\n\
             C4,\"Dé, \"\"D\"\"\",,,d@x.be\n"
        );
    }
}
