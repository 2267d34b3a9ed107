//! Applying write operations to a file loaded in memory, independent of its format.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use tandem_connector::{Changes, ConnectorError, WriteOp, WriteOutcome, Written};
use tandem_model::{EntityKind, FieldName, Fields, Timestamp, Value, field};

use crate::error::{FIX_DUPLICATE, FileError};

/// A whole file of one kind, loaded for writing. Rows are addressed by index; removed
/// rows keep their index (as a hole) so earlier lookups stay valid within one call.
pub(crate) trait Table {
    /// The row holding `id`, if it is live.
    fn find(&self, id: &str) -> Option<usize>;
    /// The ids of all live rows.
    fn ids(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// The row's version: a hash of its full content, unknown columns included.
    fn version(&self, row: usize) -> String;
    /// Whether rows carry a `modified_at` column that writes must stamp.
    fn stamps_modified_at(&self) -> bool;
    fn insert(
        &mut self,
        id: String,
        fields: &Fields,
        stamp: Option<Timestamp>,
    ) -> Result<usize, ConnectorError>;
    fn update(
        &mut self,
        row: usize,
        changes: &Changes,
        stamp: Option<Timestamp>,
    ) -> Result<(), ConnectorError>;
    fn remove(&mut self, row: usize);
    /// Where new ids start: past every id the table holds.
    fn id_allocator(&self, kind: EntityKind) -> IdAllocator {
        IdAllocator::new(kind, self.ids())
    }
}

/// How a text file is laid out byte for byte, kept on every rewrite: Excel writes a
/// byte order mark and Windows programs end lines with CR LF, and a file that changes
/// style on every sync shows every line as changed to the programs that read it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TextStyle {
    /// Whether the file starts with a UTF-8 byte order mark.
    pub(crate) bom: bool,
    /// Whether the first line ends with CR LF rather than LF.
    pub(crate) crlf: bool,
}

/// The UTF-8 byte order mark.
pub(crate) const BOM: &[u8] = b"\xef\xbb\xbf";

impl TextStyle {
    /// Looks at the start of the file and rewinds. A first line longer than what is
    /// looked at counts as LF.
    pub(crate) fn sniff(file: &mut File) -> io::Result<TextStyle> {
        let mut head = Vec::with_capacity(4096);
        (&mut *file).take(1 << 16).read_to_end(&mut head)?;
        file.rewind()?;
        let crlf = head
            .iter()
            .position(|&b| b == b'\n')
            .is_some_and(|end| end > 0 && head[end - 1] == b'\r');
        Ok(TextStyle {
            bom: head.starts_with(BOM),
            crlf,
        })
    }

    /// The bytes that end a line.
    pub(crate) fn line_end(self) -> &'static [u8] {
        if self.crlf { b"\r\n" } else { b"\n" }
    }

    /// Writes what comes before the first line.
    pub(crate) fn write_start(self, out: &mut impl Write) -> io::Result<()> {
        if self.bom { out.write_all(BOM) } else { Ok(()) }
    }
}

/// Applies `ops` in order, one outcome per op. Returns whether any op succeeded, i.e.
/// whether the file must be saved.
pub(crate) fn apply(
    table: &mut impl Table,
    kind: EntityKind,
    ops: Vec<WriteOp>,
) -> (Vec<WriteOutcome>, bool) {
    // One stamp per call: every row touched by the same write carries the same time.
    let stamp = table.stamps_modified_at().then(Timestamp::now);
    // Made only for a write that creates (finding the highest id walks every row),
    // before any op: new ids continue past every id the file held, one this write
    // deletes included, so that no id is handed out twice in one write (the streamed
    // write, which meets deletes as it goes, does the same).
    let creates = ops.iter().any(|op| matches!(op, WriteOp::Create { .. }));
    let mut ids = creates.then(|| table.id_allocator(kind));
    let mut changed = false;
    let outcomes = ops
        .into_iter()
        .map(|op| {
            let outcome = apply_one(table, kind, op, stamp, &mut ids);
            changed |= outcome.is_ok();
            outcome
        })
        .collect();
    (outcomes, changed)
}

fn apply_one(
    table: &mut impl Table,
    kind: EntityKind,
    op: WriteOp,
    stamp: Option<Timestamp>,
    ids: &mut Option<IdAllocator>,
) -> WriteOutcome {
    match op {
        WriteOp::Create { fields, .. } => {
            check_names(kind, None, fields.iter().map(|(name, _)| name))?;
            let ids = ids
                .as_mut()
                .expect("made before the ops of a write that creates");
            let id = ids.next(|id| table.find(id).is_some());
            let row = table.insert(id.clone(), &fields, stamp)?;
            Ok(Written {
                id,
                version: Some(table.version(row)),
                modified_at: stamp,
            })
        }
        WriteOp::Update {
            id,
            version,
            changes,
        } => {
            check_names(kind, Some(&id), changes.keys())?;
            let row = locate(table, &id, version.as_deref())?;
            table.update(row, &changes, stamp)?;
            Ok(Written {
                version: Some(table.version(row)),
                id,
                modified_at: stamp,
            })
        }
        WriteOp::Delete { id, version } => {
            let row = locate(table, &id, version.as_deref())?;
            table.remove(row);
            Ok(Written {
                id,
                version: None,
                modified_at: None,
            })
        }
    }
}

/// Finds the row of `id` and checks that it is still at the expected version.
fn locate(table: &impl Table, id: &str, expected: Option<&str>) -> Result<usize, ConnectorError> {
    let row = table
        .find(id)
        .ok_or_else(|| ConnectorError::NotFound { id: id.to_owned() })?;
    match expected {
        Some(expected) if expected != table.version(row) => {
            Err(ConnectorError::Conflict { id: id.to_owned() })
        }
        _ => Ok(row),
    }
}

/// Refuses fields the file could store but would never read back as fields: anything
/// that is neither canonical for the kind nor an `x_` extra (this includes `id` and
/// `modified_at`, which are not fields).
pub(crate) fn check_names<'a>(
    kind: EntityKind,
    id: Option<&str>,
    mut names: impl Iterator<Item = &'a FieldName>,
) -> Result<(), ConnectorError> {
    match names.find(|name| !is_field(kind, name.as_str())) {
        Some(name) => Err(ConnectorError::invalid(
            id,
            format!("`{name}` is not a field of a {kind}; use a canonical name or an x_ extra"),
        )),
        None => Ok(()),
    }
}

/// Whether a column or key of a file of `kind` is exposed as a field.
pub(crate) fn is_field(kind: EntityKind, name: &str) -> bool {
    field::is_canonical_for(kind, name) || field::is_extra(name)
}

/// How many rows to read before guessing how many a file holds.
pub(crate) const SAMPLE_ROWS: usize = 1000;

/// Guesses the rows in a file of `size` bytes whose first [`SAMPLE_ROWS`] rows took
/// `sampled` bytes, so that a read can reserve once instead of growing a vector of a
/// million records step by step. An eighth more, so that a guess just short does not
/// double the vector.
pub(crate) fn expected_rows(size: u64, sampled: u64) -> usize {
    let expected = size / (sampled / SAMPLE_ROWS as u64).max(1);
    usize::try_from(expected + expected / 8).unwrap_or(0)
}

/// A `;`-separated list cell: `A; B;;C` -> `[A, B, C]`.
pub(crate) fn split_list(cell: &str) -> Value {
    Value::list(
        cell.split(';')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// The version string of a row with content hash `hash`.
pub(crate) fn version_of(hash: u64) -> String {
    // By hand: `format!` costs more than the rest of a row's hashing.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..16)
        .rev()
        .map(|i| char::from(HEX[(hash >> (i * 4)) as usize & 0xf]))
        .collect()
}

/// Hands out ids for created rows: the highest numbered id plus one, in its style
/// (`C0009` -> `C0010`), or `<kind prefix>0001` when no id ends in digits.
#[derive(Debug, Clone)]
pub(crate) struct IdAllocator {
    prefix: String,
    next: u64,
    width: usize,
}

impl IdAllocator {
    pub(crate) fn new<'a>(kind: EntityKind, ids: impl Iterator<Item = &'a str>) -> IdAllocator {
        let mut best: Option<(&str, u64, usize)> = None;
        for id in ids {
            let digits = id.bytes().rev().take_while(u8::is_ascii_digit).count();
            let (prefix, number) = id.split_at(id.len() - digits);
            // Ids with too many digits for a u64 are not part of the sequence.
            let Ok(n) = number.parse::<u64>() else {
                continue;
            };
            if best.is_none_or(|(_, max, _)| n > max) {
                best = Some((prefix, n, digits));
            }
        }
        match best {
            Some((prefix, max, width)) => IdAllocator {
                prefix: prefix.to_owned(),
                next: max.saturating_add(1),
                width,
            },
            None => IdAllocator {
                prefix: kind_prefix(kind).to_owned(),
                next: 1,
                width: 4,
            },
        }
    }

    /// The next id that `taken` does not claim.
    pub(crate) fn next(&mut self, taken: impl Fn(&str) -> bool) -> String {
        loop {
            let id = format!("{}{:0width$}", self.prefix, self.next, width = self.width);
            self.next = self.next.saturating_add(1);
            if !taken(&id) {
                return id;
            }
        }
    }
}

fn kind_prefix(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Contact => "C",
        EntityKind::Customer => "K",
        EntityKind::Vendor => "V",
        EntityKind::BankAccount => "B",
    }
}

/// Fails on the second occurrence of an id; `lines[i]` is the line of the i-th id.
pub(crate) fn check_unique<'a>(
    path: &Path,
    ids: impl Iterator<Item = &'a str>,
    lines: &[u64],
) -> Result<(), ConnectorError> {
    unique_id_hashes(path, ids, lines).map(drop)
}

/// [`check_unique`], returning the ids' hashes sorted, each with the id's position:
/// what a write that creates looks new ids up in.
///
/// Sorting hashes is much cheaper than a hash set of a million strings; equal ids have
/// equal hashes, so duplicates end up next to each other.
pub(crate) fn unique_id_hashes<'a>(
    path: &Path,
    ids: impl Iterator<Item = &'a str>,
    lines: &[u64],
) -> Result<Vec<(u64, usize)>, ConnectorError> {
    let ids: Vec<&str> = ids.collect();
    let mut hashes: Vec<(u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id_hash(id), i))
        .collect();
    hashes.sort_unstable();
    // The duplicate that comes first in the file, as (first occurrence, repeat).
    let mut found: Option<(usize, usize)> = None;
    for group in hashes.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        // Within a group indexes ascend, so the first match is the first occurrence.
        for (j, &(_, repeat)) in group.iter().enumerate().skip(1) {
            let first = group[..j]
                .iter()
                .map(|&(_, i)| i)
                .find(|&i| ids[i] == ids[repeat]);
            if let Some(first) = first
                && found.is_none_or(|(_, r)| repeat < r)
            {
                found = Some((first, repeat));
            }
        }
    }
    match found {
        Some((first, repeat)) => Err(FileError::Line {
            path: path.to_owned(),
            line: lines[repeat],
            problem: format!(
                "duplicate id `{}` (first on line {})",
                ids[repeat], lines[first]
            ),
            next: FIX_DUPLICATE,
        }
        .into()),
        None => Ok(hashes),
    }
}

/// The hash [`unique_id_hashes`] sorts an id by.
pub(crate) fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(kind: EntityKind, ids: &[&str]) -> String {
        IdAllocator::new(kind, ids.iter().copied()).next(|id| ids.contains(&id))
    }

    #[test]
    fn ids_continue_the_highest_numbered_sequence() {
        assert_eq!(next(EntityKind::Contact, &["C0009", "C0002"]), "C0010");
        assert_eq!(next(EntityKind::Contact, &["C9"]), "C10");
        assert_eq!(
            next(EntityKind::Customer, &["K7", "X-0100", "abc"]),
            "X-0101"
        );
        assert_eq!(next(EntityKind::Vendor, &["9999"]), "10000");
    }

    #[test]
    fn fresh_ids_use_the_kind_prefix() {
        assert_eq!(next(EntityKind::Contact, &[]), "C0001");
        assert_eq!(next(EntityKind::Customer, &["acme"]), "K0001");
        assert_eq!(next(EntityKind::Vendor, &[]), "V0001");
        assert_eq!(next(EntityKind::BankAccount, &[]), "B0001");
    }

    #[test]
    fn versions_are_16_hex_digits() {
        assert_eq!(version_of(0xfedc_ba98_7654_3210), "fedcba9876543210");
        assert_eq!(version_of(0xff), "00000000000000ff");
    }

    #[test]
    fn the_first_duplicate_in_the_file_is_reported() {
        let ids = ["a", "b", "c", "b", "a", "c"];
        let err =
            check_unique(Path::new("f.csv"), ids.into_iter(), &[2, 3, 4, 5, 6, 7]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.csv line 5: duplicate id `b` (first on line 3); \
             give one of the two rows another id or remove it, then run again"
        );
        assert!(check_unique(Path::new("f.csv"), ["a", "b"].into_iter(), &[2, 3]).is_ok());
    }

    #[test]
    fn taken_ids_are_skipped() {
        let mut ids = IdAllocator::new(EntityKind::Contact, std::iter::empty());
        assert_eq!(ids.next(|id| id == "C0001"), "C0002");
        assert_eq!(ids.next(|_| false), "C0003");
    }
}
