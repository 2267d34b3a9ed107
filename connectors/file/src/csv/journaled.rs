//! A write to a big CSV file held in its journal ([`Journal`]): the rows the ops name
//! are found by the journal's index of the file, read from their places, changed as the
//! full-way write changes rows ([`Stream`]: the same checks, the same versions) and
//! appended to the journal with the bytes they had. Nothing else of the file is read.
//!
//! A write of a memory budget's range names some 60,000 rows. Loading them into a
//! table of their own and applying the ops through it (a map of the ids named, a
//! version made as text twice per row, the bytes copied for the journal) took 2.4 µs
//! per op, four times the full-way write's cost per row; this takes the rows as the
//! full-way write does.

use std::io;
use std::path::Path;

use csv::{ReaderBuilder, StringRecord};
use tandem_connector::{ConnectorError, WriteOp, WriteOutcome};
use tandem_model::EntityKind;

use super::journal::{Appended, Journal, Tag};
use super::splice::{Splice, Window, fits_columns};
use super::stream::{Fate, Stream};
use super::{Layout, Text};
use crate::error::FileError;
use crate::row::{Row, RowBuilder};
use crate::table::IdAllocator;

/// Applies `ops` to the file at `path`, which is as `journal` found it, by adding the
/// rows they write to the journal; the ops back when it cannot take them (see
/// [`write`]). On an error the journal may hold part of the write, and must be folded
/// as one a stopped process left.
pub(crate) fn write_journaled(
    path: &Path,
    kind: EntityKind,
    journal: &mut Journal,
    ops: Vec<WriteOp>,
) -> Result<Splice, ConnectorError> {
    match write(path, kind, journal, &ops)? {
        None => Ok(Splice::NotHere(ops)),
        Some((outcomes, appended)) => {
            if let Some(appended) = appended {
                journal.appended(appended);
            }
            Ok(Splice::Done(outcomes, None))
        }
    }
}

/// What [`write`] did: the outcomes, and what it added to the journal (none when no
/// op succeeded).
pub(super) type Journaled = (Vec<WriteOutcome>, Option<Appended>);

/// A row of the file the write changed: its place, its hash and bytes as found, and
/// what it came to.
struct Changed {
    row: usize,
    base: u64,
    was: Vec<u8>,
    fate: Fate,
}

/// The columns of the file `index` lists with those `ops` add, in the order a write
/// of the whole file adds them: what a journal begun for them holds its rows in.
pub(crate) fn columns_for(
    path: &Path,
    kind: EntityKind,
    index: &super::RowIndex,
    ops: &[WriteOp],
) -> Result<StringRecord, ConnectorError> {
    let layout = Layout::new(path, kind, &index.headers, index.style)?;
    let mut outcomes: Vec<Option<WriteOutcome>> = (0..ops.len()).map(|_| None).collect();
    Ok(Stream::new(path, layout, ops, &mut outcomes).layout.headers)
}

/// Applies `ops` to the file at `path`, which is as `journal` found it; `None` when
/// the journal cannot take them: an op names a row the journal holds or adds, sets a
/// field the journal has no column for, or a row is not where the listing found it.
pub(super) fn write(
    path: &Path,
    kind: EntityKind,
    journal: &Journal,
    ops: &[WriteOp],
) -> Result<Option<Journaled>, ConnectorError> {
    let index = journal.index();
    if index.starts.len() != index.len() {
        return Ok(None);
    }
    let layout = Layout::new(path, kind, journal.columns(), index.style)?;
    if !fits_columns(&layout, ops) {
        return Ok(None);
    }
    let Some(file) = crate::link::open(path)? else {
        return Ok(None);
    };
    let size = (file.metadata()).map_err(|e| FileError::read(path, e))?;
    if size.len() != index.size {
        return Ok(None);
    }
    let mut outcomes: Vec<Option<WriteOutcome>> = (0..ops.len()).map(|_| None).collect();
    let stream = Stream::new(path, layout, ops, &mut outcomes);
    let Some(named) = rows_named(&stream, journal, &mut outcomes) else {
        return Ok(None);
    };
    let mut window = Window::new(file, index.size);
    let Some(changed) = change_rows(path, &stream, (index, &mut window), named, &mut outcomes)?
    else {
        return Ok(None);
    };
    let created = create_rows(&stream, journal, &mut outcomes);
    let outcomes: Vec<WriteOutcome> = (outcomes.into_iter())
        .map(|o| o.expect("every op has its outcome"))
        .collect();
    if !outcomes.iter().any(Result::is_ok) {
        return Ok(Some((outcomes, None)));
    }
    let journal_path = super::journal::path_of(path);
    let appended = append(journal, &stream.layout, &changed, &created)
        .map_err(|e| FileError::write(&journal_path, &journal_path, e))?;
    Ok(Some((outcomes, Some(appended))))
}

/// The rows of the file the ops name, in file order, each with its first op; the ops
/// on an id no row has get their outcome. `None` when an op names a row the journal
/// holds (written anew or removed) or adds: the file has it as it was.
fn rows_named(
    stream: &Stream<'_>,
    journal: &Journal,
    outcomes: &mut [Option<WriteOutcome>],
) -> Option<Vec<(usize, usize)>> {
    let (index, all) = (journal.index(), journal.all_rows());
    let mut named = Vec::with_capacity(stream.rows_named.len());
    for (id, &(first, _)) in &stream.rows_named {
        match all.find(id, |i| index.id(i)) {
            Some(row) if journal.holds_row(row) => return None,
            Some(row) => named.push((row, first)),
            None if journal.created_row(id).is_some() => return None,
            None => stream.not_found(first, outcomes),
        }
    }
    // In file order, so that the rows are read through the window front to back.
    named.sort_unstable();
    Some(named)
}

/// Each row of `named` read, checked to be the row listed there, and changed by its
/// ops; `None` when one is not (the file changed since it was listed).
fn change_rows(
    path: &Path,
    stream: &Stream<'_>,
    (index, window): (&super::RowIndex, &mut Window),
    named: Vec<(usize, usize)>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<Option<Vec<Changed>>, ConnectorError> {
    let read_error = |e| ConnectorError::from(FileError::read(path, e));
    // One reader for every row, fed each row's bytes: a reader per row cost more than
    // the row.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(io::Cursor::new(Vec::new()));
    let (mut record, mut more) = (StringRecord::new(), StringRecord::new());
    let (mut scratch, mut done) = (RowBuilder::default(), Vec::new());
    let mut changed = Vec::with_capacity(named.len());
    for (row, first) in named {
        *reader.get_mut().get_mut() = window.row_bytes(index, row).map_err(read_error)?;
        reader
            .seek(csv::Position::new())
            .map_err(|e| read_error(io::Error::other(e)))?;
        // Exactly one row, and no error: else the file changed since it was listed.
        let one = reader.read_record(&mut record);
        let after = reader.read_record(&mut more);
        let layout = &stream.layout;
        if !matches!((one, after), (Ok(true), Ok(false)))
            || record.len() != index.headers.len()
            || record.get(layout.id) != Some(index.id(row))
        {
            return Ok(None);
        }
        // As wide as the journal's rows: a column it adds is empty in the file. Empty
        // cells leave the row's hash, its version, as it was.
        for _ in record.len()..layout.headers.len() {
            record.push_field("");
        }
        let lens = record.as_byte_record().iter().map(<[u8]>::len);
        let found = Row::new(record.as_slice(), lens)
            .map_err(|_| crate::error::line_error(path, 0, super::TOO_LONG))?;
        let base = layout.row_hash(&found);
        done.clear();
        let fate = stream.apply_to((found, Some(base)), first, &mut done, &mut scratch);
        for (op, outcome) in done.drain(..) {
            outcomes[op] = Some(outcome);
        }
        if !matches!(fate, Fate::Kept) {
            let was = std::mem::take(reader.get_mut().get_mut());
            changed.push(Changed {
                row,
                base,
                was,
                fate,
            });
        }
    }
    Ok(Some(changed))
}

/// The rows the creates add, each with a new id past every id the file and the
/// journal hold, as a rewrite hands them out.
fn create_rows(
    stream: &Stream<'_>,
    journal: &Journal,
    outcomes: &mut [Option<WriteOutcome>],
) -> Vec<Row> {
    if stream.creates.is_empty() {
        return Vec::new();
    }
    let (index, all, kind) = (journal.index(), journal.all_rows(), stream.layout.kind);
    let mut ids = journal.id_allocator(kind).unwrap_or_else(|| {
        let listed = (0..index.len())
            .filter(|&i| !journal.removes_row(i))
            .map(|i| index.id(i));
        IdAllocator::new(kind, listed.chain(journal.created().iter()))
    });
    // A row the journal removed frees its id, as a rewrite after the fold would.
    let taken = |id: &str| {
        all.find(id, |i| index.id(i))
            .is_some_and(|i| !journal.removes_row(i))
            || journal.created_row(id).is_some()
    };
    let mut scratch = RowBuilder::default();
    let mut created = Vec::with_capacity(stream.creates.len());
    for &op in &stream.creates {
        let id = ids.next(taken);
        let (row, outcome) = stream.create(op, id, &mut scratch);
        created.extend(row);
        outcomes[op] = Some(outcome);
    }
    created
}

/// Appends the rows changed and created to the journal as one block.
fn append(
    journal: &Journal,
    layout: &Layout,
    changed: &[Changed],
    created: &[Row],
) -> io::Result<Appended> {
    let index = journal.index();
    let width = layout.headers.len();
    let mut block = journal.block()?;
    // One buffer for every row's text, emptied after each.
    let mut text = Text::new(layout.style, 0);
    for c in changed {
        let tag = match &c.fate {
            Fate::Written(row) => {
                text.row(row, width)?;
                Tag::Update
            }
            _ => Tag::Delete,
        };
        let mut line = text.bytes();
        block.push(tag, (c.row, index.id(c.row)), (c.base, &c.was), &line)?;
        line.clear();
    }
    for row in created {
        text.row(row, width)?;
        let mut line = text.bytes();
        block.push(Tag::Create, (usize::MAX, &row[layout.id]), (0, &[]), &line)?;
        line.clear();
    }
    block.finish()
}
