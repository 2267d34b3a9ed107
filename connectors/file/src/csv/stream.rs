//! A write that goes the full way (every row of the file read and written again)
//! without holding the file: it is read a page of pieces at a time, each piece on a
//! core of its own; the rows ops name are changed as they pass, the others copied byte
//! for byte; the new file is written piece after piece. Loading the whole file instead
//! held a table of it (about 450 MiB for a million contacts) at the peak of a first
//! sync.
//!
//! Ops apply as on a loaded table: the ops on one id to its row, in the order given;
//! creates after every row of the file. Two differences, both on purpose:
//! - The header comes first, so the columns a write adds are those of the fields its
//!   valid ops set, added before any row is written: a field set only by an op that
//!   then fails (a row not found, a stale version) gets its column too, empty. Empty
//!   cells count for no version, so no row's version changes by it.
//! - New ids continue past every id the file held before the write, including one the
//!   same write deletes: an id is never handed out twice in one write.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use csv::{ReaderBuilder, StringRecord};
use tandem_connector::{ConnectorError, WriteOp, WriteOutcome, Written};
use tandem_model::{EntityKind, Timestamp};

use super::{
    Layout, Pieces, RowIndex, Saved, TOO_LONG, Text, checked, csv_error, read_exact_at, threads,
};
use crate::atomic::Fingerprinting;
use crate::error::{FileError, line_error};
use crate::id_list::IdList;
use crate::row::{Row, RowBuilder, TooLong};
use crate::table::{self, IdAllocator, version_of};

/// No op after this one on the same id.
const LAST: usize = usize::MAX;

/// Where a removed row starts in the new file: nowhere.
const REMOVED: u64 = u64::MAX;

/// The pieces a write streams are about this long: it holds two per core (read and
/// written) and the outcomes of their rows. Pieces of 8 MiB held more than a table of
/// a file of 200,000 rows.
const PIECE_BYTES: u64 = 2 << 20;

/// Applies `ops` to the CSV file at `path`, reading and writing it a piece at a time.
/// Returns one outcome per op, and the fingerprint and index of the file written;
/// none when no op succeeded (the file is then left as it was).
pub(crate) fn write(
    path: &Path,
    kind: EntityKind,
    ops: Vec<WriteOp>,
) -> Result<(Vec<WriteOutcome>, Option<Saved>), ConnectorError> {
    let pieces = Pieces::open(path, kind, PIECE_BYTES)?;
    let layout = (pieces.as_ref()).map_or_else(|| Layout::fresh(kind), |p| p.layout.clone());
    let mut outcomes: Vec<Option<WriteOutcome>> = (0..ops.len()).map(|_| None).collect();
    let stream = Stream::new(path, layout, &ops, &mut outcomes);
    if stream.rows_named.is_empty() && stream.creates.is_empty() {
        return Ok((finish(outcomes, &ops), None));
    }
    let (mut stopped, mut index, mut unchanged) = (None, None, false);
    let saved = crate::atomic::replace(path, |out| {
        match stream.write_file(out, pieces.as_ref(), &mut outcomes) {
            Ok(Some(written)) => {
                index = Some(written);
                Ok(())
            }
            // Nothing succeeded: the new file is dropped, the old one stays.
            Ok(None) => {
                unchanged = true;
                Err(io::Error::other("no op succeeded"))
            }
            Err(Stop::Write(e)) => Err(e),
            Err(Stop::File(e)) => {
                stopped = Some(e);
                Err(io::Error::other("the file could not be read"))
            }
        }
    });
    if let Some(error) = stopped {
        return Err(error);
    }
    if unchanged {
        return Ok((finish(outcomes, &ops), None));
    }
    let saved = saved?;
    let index = index.expect("a file saved was written whole");
    Ok((finish(outcomes, &ops), Some((saved, index))))
}

/// The outcomes, an op no row answered being for a row the file does not hold.
fn finish(outcomes: Vec<Option<WriteOutcome>>, ops: &[WriteOp]) -> Vec<WriteOutcome> {
    let not_found = |op: &WriteOp| match op {
        WriteOp::Update { id, .. } | WriteOp::Delete { id, .. } => {
            ConnectorError::NotFound { id: id.clone() }
        }
        WriteOp::Create { .. } => unreachable!("every valid create has an outcome"),
    };
    let answered = outcomes.into_iter().zip(ops);
    answered
        .map(|(outcome, op)| outcome.unwrap_or_else(|| Err(not_found(op))))
        .collect()
}

/// Why a write stopped before the new file was complete.
enum Stop {
    /// Writing the new file failed.
    Write(io::Error),
    /// The file to change could not be read, or is not a valid file of its kind.
    File(ConnectorError),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Write(e)
    }
}

impl From<ConnectorError> for Stop {
    fn from(e: ConnectorError) -> Stop {
        Stop::File(e)
    }
}

/// A write under way: the ops, and the file's layout with the columns they add. A
/// write held in a journal changes its rows through it too (`journaled`).
pub(super) struct Stream<'o> {
    path: &'o Path,
    ops: &'o [WriteOp],
    pub(super) layout: Layout,
    /// The first and the last op on each id an update or delete names; `next[op]` the
    /// op after `op` on the same id, or [`LAST`].
    pub(super) rows_named: HashMap<&'o str, (usize, usize), foldhash::fast::RandomState>,
    next: Vec<usize>,
    /// The valid creates, in order.
    pub(super) creates: Vec<usize>,
    /// One stamp per write, as `modified_at` is written, if the file has the column.
    stamp: Option<(Timestamp, String)>,
}

impl<'o> Stream<'o> {
    /// Checks each op's field names (an op that fails gets its outcome here) and adds
    /// a column for each field the others set.
    pub(super) fn new(
        path: &'o Path,
        mut layout: Layout,
        ops: &'o [WriteOp],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Stream<'o> {
        let kind = layout.kind;
        let mut rows_named: HashMap<&str, (usize, usize), _> =
            HashMap::with_capacity_and_hasher(ops.len(), Default::default());
        let mut next = vec![LAST; ops.len()];
        let mut creates = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let (id, named) = match op {
                WriteOp::Create { fields, .. } => (
                    None,
                    table::check_names(kind, None, fields.iter().map(|(n, _)| n)),
                ),
                WriteOp::Update { id, changes, .. } => {
                    (Some(id), table::check_names(kind, Some(id), changes.keys()))
                }
                WriteOp::Delete { id, .. } => (Some(id), Ok(())),
            };
            if let Err(e) = named {
                outcomes[i] = Some(Err(e));
                continue;
            }
            match op {
                WriteOp::Create { fields, .. } => {
                    fields
                        .iter()
                        .for_each(|(name, _)| _ = layout.column_for(name));
                    creates.push(i);
                }
                WriteOp::Update { changes, .. } => {
                    // Clearing a field the file has no column for changes nothing.
                    let set = changes.iter().filter(|(_, value)| !value.is_empty());
                    set.for_each(|(name, _)| _ = layout.column_for(name));
                }
                WriteOp::Delete { .. } => {}
            }
            if let Some(id) = id {
                // The first op on the id, and the last so far: the next one chains on.
                let (_, last) = rows_named.entry(id.as_str()).or_insert((i, i));
                if *last != i {
                    next[*last] = i;
                    *last = i;
                }
            }
        }
        let stamp = layout.modified_at.map(|_| {
            let now = Timestamp::now();
            (now, now.to_string())
        });
        Stream {
            path,
            ops,
            layout,
            rows_named,
            next,
            creates,
            stamp,
        }
    }

    /// Writes the new file to `out`: the header, the file's rows a page of pieces at a
    /// time, then the creates. Its index, or `None` when no op succeeded.
    fn write_file(
        &self,
        out: &mut Fingerprinting<'_>,
        pieces: Option<&Pieces>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<Option<RowIndex>, Stop> {
        self.layout.style.write_start(out)?;
        let mut header = self.text(0);
        header.record(self.layout.headers.iter())?;
        out.write_all(&header.into_bytes())?;
        let (mut rows, mut held) = (Rows::default(), Vec::new());
        if let Some(pieces) = pieces {
            let count = pieces.starts.len();
            for page in (0..count).step_by(threads()) {
                let parts = self.page(pieces, page..(page + threads()).min(count));
                for part in parts {
                    rows.append(part?, out, outcomes)?;
                }
            }
            held = table::unique_id_hashes(self.path, rows.ids(), &rows.lines)?;
        }
        self.write_creates(out, &mut rows, &held, outcomes)?;
        if !outcomes.iter().flatten().any(Result::is_ok) {
            return Ok(None);
        }
        Ok(Some(rows.into_index(&self.layout, out.written())))
    }

    /// The pieces `range`, each read, changed and written out on a thread of its own.
    fn page(&self, pieces: &Pieces, range: std::ops::Range<usize>) -> Vec<Result<Part, Stop>> {
        side_by_side(range.map(|i| move || self.piece(pieces, i)))
    }

    /// Piece `i` of the file: its rows read, changed as the ops say and written.
    fn piece(&self, pieces: &Pieces, i: usize) -> Result<Part, Stop> {
        let (path, layout) = (self.path, &self.layout);
        let cut = pieces.starts[i];
        let end = pieces.starts.get(i + 1).map_or(pieces.size, |c| c.offset);
        let mut bytes = vec![0; usize::try_from(end - cut.offset).unwrap_or(usize::MAX)];
        read_exact_at(&pieces.file, &mut bytes, cut.offset)
            .map_err(|e| ConnectorError::from(FileError::read(path, e)))?;
        let mut reader = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&bytes[..]);
        let mut text = self.text(bytes.len() * 9 / 8);
        let mut part = Part::default();
        let mut scratch = RowBuilder::default();
        let (mut row, mut pending) = (StringRecord::new(), None);
        let lines_before = cut.line - 1;
        while reader
            .read_record(&mut row)
            .map_err(|e| csv_error(path, Some(&layout.headers), e, lines_before))?
        {
            let (line, _) = checked(path, layout, &row, lines_before)?;
            // A row's bytes run to where the next starts: blank lines after it go with
            // it when it is copied, and are dropped when it is written anew. A reader
            // counts a row from where it began looking for it, which after a CR LF is
            // the LF: no row starts with a line end (empty lines are no rows).
            let mut start = row.position().map_or(0, csv::Position::byte) as usize;
            start += bytes[start..]
                .iter()
                .take_while(|&&b| is_line_end(b))
                .count();
            if let Some((from, fate)) = pending.take() {
                self.emit(&mut text, &mut part, &bytes[from..start], fate)?;
            }
            part.rows.push(&row[layout.id], line);
            let fate = match self.rows_named.get(&row[layout.id]) {
                Some(&(first, _)) => {
                    self.apply(&row, line, first, &mut part.outcomes, &mut scratch)?
                }
                None => Fate::Kept,
            };
            pending = Some((start, fate));
        }
        if let Some((from, fate)) = pending {
            self.emit(&mut text, &mut part, &bytes[from..], fate)?;
        }
        part.text = text.into_bytes();
        Ok(part)
    }

    /// The ops on the row `row` (from `first` on), in order; what the row comes to.
    fn apply(
        &self,
        row: &StringRecord,
        line: u64,
        first: usize,
        outcomes: &mut Vec<(usize, WriteOutcome)>,
        scratch: &mut RowBuilder,
    ) -> Result<Fate, ConnectorError> {
        let lens = row.as_byte_record().iter().map(<[u8]>::len);
        let row = Row::new(row.as_slice(), lens)
            .map_err(|TooLong| line_error(self.path, line, TOO_LONG))?;
        Ok(self.apply_to((row, None), first, outcomes, scratch))
    }

    /// [`Stream::apply`] to a row made already, with its [`Layout::row_hash`] when the
    /// caller has it.
    pub(super) fn apply_to(
        &self,
        (row, mut hash): (Row, Option<u64>),
        first: usize,
        outcomes: &mut Vec<(usize, WriteOutcome)>,
        scratch: &mut RowBuilder,
    ) -> Fate {
        let (mut live, mut changed) = (Some(row), false);
        let mut op = first;
        while op != LAST {
            let outcome = self.apply_one((&mut live, &mut hash), &self.ops[op], scratch);
            changed |= outcome.is_ok();
            outcomes.push((op, outcome));
            op = self.next[op];
        }
        match (live, changed) {
            (None, _) => Fate::Removed,
            (Some(row), true) => Fate::Written(row),
            (Some(_), false) => Fate::Kept,
        }
    }

    /// The ops on an id no row has (from `first` on): each finds no row.
    pub(super) fn not_found(&self, first: usize, outcomes: &mut [Option<WriteOutcome>]) {
        let mut scratch = RowBuilder::default();
        let mut op = first;
        while op != LAST {
            let outcome = self.apply_one((&mut None, &mut None), &self.ops[op], &mut scratch);
            outcomes[op] = Some(outcome);
            op = self.next[op];
        }
    }

    /// The row create `op` writes as `id`, and its outcome.
    pub(super) fn create(
        &self,
        op: usize,
        id: String,
        scratch: &mut RowBuilder,
    ) -> (Option<Row>, WriteOutcome) {
        let WriteOp::Create { fields, .. } = &self.ops[op] else {
            unreachable!("creates holds creates");
        };
        let (stamp, stamp_text) = match &self.stamp {
            Some((at, text)) => (Some(*at), text.as_str()),
            None => (None, ""),
        };
        match self.layout.new_row(&id, fields, stamp_text, scratch) {
            Ok(row) => {
                let version = Some(self.layout.version(&row));
                let written = Written {
                    version,
                    id,
                    modified_at: stamp,
                };
                (Some(row), Ok(written))
            }
            Err(e) => (None, Err(e)),
        }
    }

    /// One update or delete of the row `live` (`None` once removed), whose hash is
    /// `hash` when known: made at most once per row.
    fn apply_one(
        &self,
        (live, hash): (&mut Option<Row>, &mut Option<u64>),
        op: &WriteOp,
        scratch: &mut RowBuilder,
    ) -> WriteOutcome {
        let (WriteOp::Update { id, version, .. } | WriteOp::Delete { id, version }) = op else {
            unreachable!("only updates and deletes name rows");
        };
        let row = live
            .as_ref()
            .ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
        if let Some(version) = version {
            let at = *hash.get_or_insert_with(|| self.layout.row_hash(row));
            if !Layout::is_at(at, version) {
                return Err(ConnectorError::Conflict { id: id.clone() });
            }
        }
        let WriteOp::Update { changes, .. } = op else {
            *live = None;
            return Ok(Written {
                id: id.clone(),
                version: None,
                modified_at: None,
            });
        };
        let stamp = self.stamp.as_ref().map(|(_, text)| text.as_str());
        let new = self.layout.changed_row(row, changes, stamp, scratch)?;
        let new_hash = self.layout.row_hash(&new);
        *hash = Some(new_hash);
        *live = Some(new);
        let version = Some(version_of(new_hash));
        Ok(Written {
            id: id.clone(),
            version,
            modified_at: self.stamp.as_ref().map(|&(at, _)| at),
        })
    }

    /// Writes a row of the file whose bytes were `raw` as `fate` says.
    fn emit(&self, text: &mut Text, part: &mut Part, raw: &[u8], fate: Fate) -> io::Result<()> {
        let start = text.len();
        match fate {
            Fate::Removed => {
                part.rows.starts.push(REMOVED);
                return Ok(());
            }
            Fate::Kept if self.layout.width == self.layout.headers.len() => {
                text.bytes().extend_from_slice(raw);
            }
            Fate::Kept => {
                // The row's own bytes, then an empty cell per column added and the
                // file's line end (blank lines after the row are dropped).
                let len = raw.len() - raw.iter().rev().take_while(|&&b| is_line_end(b)).count();
                let added = self.layout.headers.len() - self.layout.width;
                let mut bytes = text.bytes();
                bytes.extend_from_slice(&raw[..len]);
                bytes.extend(std::iter::repeat_n(b',', added));
                bytes.extend_from_slice(self.layout.style.line_end());
            }
            Fate::Written(row) => text.row(&row, self.layout.headers.len())?,
        }
        part.rows.starts.push(start);
        part.ends_line = text.bytes().last() == Some(&b'\n');
        Ok(())
    }

    /// Writes the creates after the file's rows, each with a new id: the ids handed
    /// out in order, the rows made and formatted in shares on the cores. `held`: the
    /// file's ids' hashes, sorted.
    fn write_creates(
        &self,
        out: &mut Fingerprinting<'_>,
        rows: &mut Rows,
        held: &[(u64, usize)],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> io::Result<()> {
        if self.creates.is_empty() {
            return Ok(());
        }
        if !rows.ends_line {
            out.write_all(self.layout.style.line_end())?;
        }
        let mut ids = self.new_ids(rows, held).into_iter();
        let share = self.creates.len().div_ceil(threads());
        let shares: Vec<(&[usize], Vec<String>)> = (self.creates.chunks(share))
            .map(|creates| (creates, ids.by_ref().take(creates.len()).collect()))
            .collect();
        let shares = shares.into_iter();
        let parts = side_by_side(shares.map(|(creates, ids)| move || self.created(creates, ids)));
        for part in parts {
            rows.append(part?, out, outcomes)?;
        }
        Ok(())
    }

    /// An id for each create, past every id the file held: a hash held counts as
    /// taken (the ids held are unique, so this is never wrong, only in a case of
    /// equal hashes one id further).
    fn new_ids(&self, rows: &Rows, held: &[(u64, usize)]) -> Vec<String> {
        let mut ids = IdAllocator::new(self.layout.kind, rows.ids());
        let taken = |id: &str| {
            let hash = table::id_hash(id);
            held.binary_search_by_key(&hash, |&(h, _)| h).is_ok()
        };
        self.creates.iter().map(|_| ids.next(taken)).collect()
    }

    /// The rows of `creates` as `ids`, formatted.
    fn created(&self, creates: &[usize], ids: Vec<String>) -> io::Result<Part> {
        let mut text = self.text(creates.len() * 128);
        let mut part = Part::default();
        let mut scratch = RowBuilder::default();
        for (&i, id) in creates.iter().zip(ids) {
            let (row, outcome) = self.create(i, id, &mut scratch);
            if let (Some(row), Ok(written)) = (row, &outcome) {
                part.rows.push(&written.id, 0);
                part.rows.starts.push(text.len());
                text.row(&row, self.layout.headers.len())?;
            }
            part.outcomes.push((i, outcome));
        }
        part.text = text.into_bytes();
        part.ends_line = true;
        Ok(part)
    }

    /// New text in the file's style, room made for `capacity` bytes.
    fn text(&self, capacity: usize) -> Text {
        Text::new(self.layout.style, capacity)
    }
}

/// Runs `jobs` on a thread each; their results in order.
fn side_by_side<T: Send>(jobs: impl Iterator<Item = impl FnOnce() -> T + Send>) -> Vec<T> {
    std::thread::scope(|scope| {
        let running: Vec<_> = jobs.map(|job| scope.spawn(job)).collect();
        (running.into_iter())
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn is_line_end(byte: u8) -> bool {
    matches!(byte, b'\r' | b'\n')
}

/// What an op left of a row of the file.
pub(super) enum Fate {
    /// As it was: its bytes are copied.
    Kept,
    Written(Row),
    Removed,
}

/// A piece written: its text, its rows and the outcomes of the ops on them.
struct Part {
    text: Vec<u8>,
    rows: Rows,
    outcomes: Vec<(usize, WriteOutcome)>,
    /// Whether the text ends a line (true for no text).
    ends_line: bool,
}

impl Default for Part {
    fn default() -> Part {
        Part {
            text: Vec::new(),
            rows: Rows::default(),
            outcomes: Vec::new(),
            ends_line: true,
        }
    }
}

/// Every row of the file in order, removed ones included, and the rows created: its
/// id, its line in the file (0 for a created row), and where it starts in the new
/// file ([`REMOVED`] for none).
struct Rows {
    ids: IdList,
    lines: Vec<u64>,
    starts: Vec<u64>,
    /// Whether what was written so far ends a line.
    ends_line: bool,
}

impl Default for Rows {
    fn default() -> Rows {
        Rows {
            ids: IdList::default(),
            lines: Vec::new(),
            starts: Vec::new(),
            ends_line: true,
        }
    }
}

impl Rows {
    fn push(&mut self, id: &str, line: u64) {
        self.ids.push(id);
        self.lines.push(line);
    }

    fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter()
    }

    /// Writes `part` to `out` and takes in its rows and outcomes.
    fn append(
        &mut self,
        part: Part,
        out: &mut Fingerprinting<'_>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> io::Result<()> {
        let at = out.written();
        let text = part.text;
        out.write_all(&text)?;
        let Rows {
            ids, lines, starts, ..
        } = part.rows;
        self.ids.append(ids);
        self.lines.extend(lines);
        let moved = |start| {
            if start == REMOVED {
                REMOVED
            } else {
                start + at
            }
        };
        self.starts.extend(starts.into_iter().map(moved));
        if !text.is_empty() {
            self.ends_line = part.ends_line;
        }
        for (op, outcome) in part.outcomes {
            outcomes[op] = Some(outcome);
        }
        Ok(())
    }

    /// The index of the new file: its rows that are not removed.
    fn into_index(self, layout: &Layout, size: u64) -> RowIndex {
        let mut index = RowIndex {
            headers: layout.headers.clone(),
            style: layout.style,
            size,
            ids: IdList::with_capacity(self.ids.len(), self.ids.bytes()),
            starts: Vec::with_capacity(self.starts.len()),
        };
        for (id, &start) in self.ids().zip(&self.starts) {
            if start != REMOVED {
                index.ids.push(id);
                index.starts.push(start);
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;
    use tandem_connector::Changes;
    use tandem_model::{FieldName, Fields, Value};

    use super::super::testgen::{
        file_text, index_of, op_adding_columns, ops_on, rows, style, twins,
    };
    use super::super::{CsvTable, read};
    use super::*;

    const CONTACT: EntityKind = EntityKind::Contact;

    /// `ops` streamed into `streamed` and applied to `loaded` as a table loaded whole
    /// and saved: both answer alike and read back alike, and the index the stream left
    /// is the one a listing of its file makes.
    fn stream_and_load(
        (streamed, loaded): (&Path, &Path),
        ops: &[WriteOp],
    ) -> Result<(), TestCaseError> {
        let (outcomes, saved) = write(streamed, CONTACT, ops.to_vec()).unwrap();
        let mut table = CsvTable::load(loaded, CONTACT).unwrap();
        let (expected, changed) = table::apply(&mut table, CONTACT, ops.to_vec());
        if changed {
            table.save().unwrap();
        }
        prop_assert_eq!(format!("{outcomes:?}"), format!("{expected:?}"));
        prop_assert_eq!(
            read(streamed, CONTACT).unwrap(),
            read(loaded, CONTACT).unwrap()
        );
        prop_assert_eq!(saved.is_some(), changed);
        if let Some((fingerprint, index)) = saved {
            let bytes = fs::read(streamed).unwrap();
            let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
            prop_assert_eq!(fingerprint, crate::fingerprint_of(bytes.len() as u64, hash));
            let listed = index_of(streamed);
            prop_assert!(
                first_bytes(&index, &bytes) == first_bytes(&listed, &bytes),
                "the index left is not the file's"
            );
        }
        Ok(())
    }

    /// What `index` says of a file of `bytes`: its header, size, and each row's id and
    /// first byte (a listing may name the LF of the CR LF before it).
    fn first_bytes(index: &RowIndex, bytes: &[u8]) -> (Vec<String>, u64, Vec<(String, u64)>) {
        let rows = (0..index.ids.len()).map(|i| {
            let mut at = index.starts[i] as usize;
            at += bytes[at..].iter().take_while(|&&b| is_line_end(b)).count();
            (index.ids.get(i).to_owned(), at as u64)
        });
        let headers = index.headers.iter().map(str::to_owned).collect();
        (headers, index.size, rows.collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A streamed write answers as a table loaded whole does and leaves a file that
        /// reads back as the table saved, whatever the file's layout and the ops
        /// (stale versions, rows not there, several ops on one row, columns added);
        /// writes one after the other too. A file as Tandem writes it comes out byte
        /// for byte as the table saves it, when both have the same columns.
        #[test]
        fn a_streamed_write_answers_and_reads_back_as_a_table_loaded_whole(
            rows in rows(),
            style in style(),
            writes in proptest::collection::vec(
                proptest::collection::vec(op_adding_columns(), 1..6), 1..4),
        ) {
            let (_dir, streamed, loaded) = twins(&file_text(&rows, &style));
            for ops in &writes {
                let ops = ops_on(&loaded, ops);
                stream_and_load((&streamed, &loaded), &ops)?;
            }
            let (streamed, loaded) = (fs::read(&streamed).unwrap(), fs::read(&loaded).unwrap());
            let header = |text: &[u8]| text.split(|&b| b == b'\n').next().unwrap().to_vec();
            if style.blank_after.is_empty() && style.last_newline && header(&streamed) == header(&loaded) {
                prop_assert!(streamed == loaded, "the bytes differ");
            }
        }
    }

    /// A file of many pieces (quoted line ends, CR LF, blank lines, a field that
    /// straddles where a cut could fall), written with ops on rows all over it, a
    /// column added and creates: it answers and reads back as a table loaded whole,
    /// every row no op names keeps its bytes, and the index left is the file's.
    #[test]
    fn a_file_of_many_pieces_streamed_reads_back_as_a_table_loaded_whole() {
        let text = big_text();
        let (_dir, streamed, loaded) = twins(&text);
        let rows = read(&loaded, CONTACT).unwrap();
        let pieces = Pieces::open(&streamed, CONTACT, PIECE_BYTES)
            .unwrap()
            .unwrap();
        assert!(
            pieces.starts.len() > 2 * threads(),
            "pieces on more than two pages"
        );
        let mut ops: Vec<WriteOp> = (rows.iter().step_by(997))
            .map(|r| update(&r.id, r.version.clone(), "name", "Bea\r\nBo"))
            .collect();
        ops.push(update("C7", None, "email", "c7@example.com"));
        ops.push(WriteOp::Delete {
            id: rows[rows.len() / 2].id.clone(),
            version: None,
        });
        ops.push(WriteOp::create(
            Fields::new().with("name", "New, \"quoted\""),
        ));
        ops.push(update("C3", Some("stale".into()), "name", "never"));
        stream_and_load((&streamed, &loaded), &ops).unwrap();
        // The rows no op names keep their bytes, an empty cell added to each (and the
        // blank line after C2 gone, the file's own line end after each).
        let after = fs::read_to_string(&streamed).unwrap();
        let kept = "\r\nC2,\"Ann \"\"2\"\"\nLee\",say \"hi,\r\nD2,,\"a,\r\nb\",\r\nC3,";
        assert!(after.contains(kept), "{}", &after[..300]);
    }

    fn update(id: &str, version: Option<String>, field: &str, value: &str) -> WriteOp {
        let mut changes = Changes::new();
        changes.insert(FieldName::new(field), Value::text(value));
        WriteOp::Update {
            id: id.to_owned(),
            version,
            changes,
        }
    }

    /// Five pieces of awkward CSV (on two cores, three pages): quoted quotes and line
    /// ends, CR LF, blank lines.
    fn big_text() -> String {
        let mut text = String::from("id,name,notes\r\n");
        let mut i = 0;
        while (text.len() as u64) < crate::pieces::PARALLEL_FROM + (1 << 20) {
            text.push_str(&format!(
                "C{i},\"Ann \"\"{i}\"\"\nLee\",say \"hi\r\n\r\nD{i},,\"a,\r\nb\"\n"
            ));
            i += 1;
        }
        text
    }
}
