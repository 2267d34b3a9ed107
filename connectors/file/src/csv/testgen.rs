//! Generated CSV files and writes to them, for the tests that hold the spliced and
//! streamed writes to a table loaded whole.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tandem_connector::{Changes, WriteOp};
use tandem_model::{EntityKind, FieldName, Fields, Value};

use super::{Listing, RowIndex};

pub(super) const CELLS: &[&str] = &[
    "",
    "plain",
    "with,comma",
    "say \"hi\"",
    "two\nlines",
    "cr\r\nlf",
    "  spaced ",
    "Grüße",
];

/// How a generated file is laid out.
#[derive(Debug, Clone)]
pub(super) struct Style {
    pub(super) bom: bool,
    pub(super) crlf: bool,
    /// Rows followed by an empty line.
    pub(super) blank_after: Vec<usize>,
    pub(super) last_newline: bool,
}

/// A CSV file of `rows` (`id,name,city,notes`, `notes` a column Tandem does not
/// know), its cells from [`CELLS`].
pub(super) fn file_text(rows: &[(usize, [usize; 3])], style: &Style) -> String {
    let end = if style.crlf { "\r\n" } else { "\n" };
    // As the CSV writer quotes: a file written by Tandem reads back unchanged.
    let quote = |cell: &str| match cell.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", cell.replace('"', "\"\"")),
        false => cell.to_owned(),
    };
    let mut text = String::new();
    if style.bom {
        text.push('\u{feff}');
    }
    text.push_str("id,name,city,notes");
    for (n, (id, cells)) in rows.iter().enumerate() {
        text.push_str(end);
        if style.blank_after.contains(&n) {
            text.push_str(end);
        }
        text.push_str(&format!("C{id}"));
        for &c in cells {
            text.push(',');
            text.push_str(&quote(CELLS[c]));
        }
    }
    if style.last_newline {
        text.push_str(end);
    }
    text
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Update {
        row: usize,
        versioned: bool,
        name: Option<usize>,
        city: Option<usize>,
        /// A field the file has no column for.
        email: Option<usize>,
    },
    Delete {
        row: usize,
    },
    Create {
        name: usize,
        city: usize,
        email: Option<usize>,
    },
}

/// An op on the file's columns.
pub(super) fn op() -> impl Strategy<Value = Op> {
    op_of(Just(None).boxed())
}

/// An op that may also set `email`, a field the file has no column for.
pub(super) fn op_adding_columns() -> impl Strategy<Value = Op> {
    let rarely = prop_oneof![3 => Just(None), 1 => (0..CELLS.len()).prop_map(Some)];
    op_of(rarely.boxed())
}

fn op_of(email: BoxedStrategy<Option<usize>>) -> impl Strategy<Value = Op> {
    let cell = 0..CELLS.len();
    let maybe = proptest::option::of(cell.clone());
    prop_oneof![
        (
            0..40usize,
            any::<bool>(),
            maybe.clone(),
            maybe,
            email.clone()
        )
            .prop_map(|(row, versioned, name, city, email)| Op::Update {
                row,
                versioned,
                name,
                city,
                email,
            }),
        (0..40usize).prop_map(|row| Op::Delete { row }),
        (cell.clone(), cell, email).prop_map(|(name, city, email)| Op::Create {
            name,
            city,
            email
        }),
    ]
}

pub(super) fn style() -> impl Strategy<Value = Style> {
    let blank = proptest::collection::vec(0..30usize, 0..3);
    (any::<bool>(), any::<bool>(), blank, any::<bool>()).prop_map(
        |(bom, crlf, blank_after, last_newline)| Style {
            bom,
            crlf,
            blank_after,
            last_newline,
        },
    )
}

/// The write ops of `ops` against a file whose rows have `ids`; a row past the
/// last names an id the file does not hold.
pub(super) fn write_ops(
    ops: &[Op],
    ids: &[String],
    versions: &HashMap<String, String>,
) -> Vec<WriteOp> {
    let id = |row: usize| {
        ids.get(row)
            .cloned()
            .unwrap_or_else(|| "C999999".to_owned())
    };
    let op = |op: &Op| match op {
        Op::Update {
            row,
            versioned,
            name,
            city,
            email,
        } => {
            let mut changes = Changes::new();
            for (field, cell) in [("name", name), ("city", city), ("email", email)] {
                if let Some(c) = cell {
                    changes.insert(FieldName::new(field), Value::text(CELLS[*c]));
                }
            }
            let id = id(*row);
            let version =
                versioned.then(|| versions.get(&id).cloned().unwrap_or_else(|| "stale".into()));
            WriteOp::Update {
                id,
                version,
                changes,
            }
        }
        Op::Delete { row } => WriteOp::Delete {
            id: id(*row),
            version: None,
        },
        Op::Create { name, city, email } => {
            let fields = Fields::new()
                .with("name", CELLS[*name])
                .with("city", CELLS[*city]);
            WriteOp::create(match email {
                Some(email) => fields.with("email", CELLS[*email]),
                None => fields,
            })
        }
    };
    ops.iter().map(op).collect()
}

/// The write ops of `ops` against the contacts file at `path` as it is now: the ids
/// and versions a run read.
pub(super) fn ops_on(path: &Path, ops: &[Op]) -> Vec<WriteOp> {
    let rows = super::read(path, EntityKind::Contact).unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let versions = (rows.iter())
        .map(|r| (r.id.clone(), r.version.clone().unwrap_or_default()))
        .collect();
    write_ops(ops, &ids, &versions)
}

pub(super) fn index_of(path: &Path) -> RowIndex {
    let mut listing = Listing::open(path, EntityKind::Contact).unwrap();
    while !listing.is_done() {
        listing.next_page().unwrap();
    }
    listing.into_index().unwrap()
}

/// The same file in two folders: one to splice, one to rewrite.
pub(super) fn twins(text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = ["spliced", "rewritten"]
        .iter()
        .map(|name| {
            let folder = dir.path().join(name);
            fs::create_dir_all(&folder).unwrap();
            let path = folder.join("contacts.csv");
            fs::write(&path, text).unwrap();
            path
        })
        .collect();
    (dir, paths[0].clone(), paths[1].clone())
}

/// Up to 30 rows of distinct ids, their cells drawn from [`CELLS`].
pub(super) fn rows() -> impl Strategy<Value = Vec<(usize, [usize; 3])>> {
    let cells = [0..CELLS.len(), 0..CELLS.len(), 0..CELLS.len()];
    proptest::collection::vec((0..100_000usize, cells), 1..30).prop_map(|rows| {
        let mut seen = std::collections::HashSet::new();
        rows.into_iter()
            .filter(|(id, _)| seen.insert(*id))
            .collect()
    })
}
