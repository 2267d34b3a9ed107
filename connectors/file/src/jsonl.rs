//! JSON Lines files: one JSON object per line, with `id` and field keys.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::error::Category;
use serde_json::{Map, Value as Json};
use tandem_connector::{Changes, ConnectorError};
use tandem_model::{EntityKind, FieldName, Fields, Record, Timestamp, Value, field};

use crate::error::{FileError, line_error};
use crate::link;
use crate::table::{self, BOM, Table, TextStyle, version_of};

/// One parsed line.
struct Line<'a> {
    number: u64,
    /// Bytes read up to the end of the line.
    offset: u64,
    /// The line as stored, without its line break: the version hashes it, and
    /// unchanged rows are written back as they were.
    text: &'a str,
    id: String,
    fields: Fields,
    modified_at: Option<Timestamp>,
    has_modified_at: bool,
}

/// Reads `path` strictly, calling `each` with every non-blank line. Returns the
/// file's byte order mark and line ends, or `None` when the file does not exist.
fn scan(
    path: &Path,
    kind: EntityKind,
    mut each: impl FnMut(Line<'_>) -> Result<(), ConnectorError>,
) -> Result<Option<TextStyle>, ConnectorError> {
    let Some(mut file) = link::open(path)? else {
        return Ok(None);
    };
    let read_error = |e| ConnectorError::from(FileError::read(path, e));
    let style = TextStyle::sniff(&mut file).map_err(read_error)?;
    // A byte order mark is not JSON: start after it.
    if style.bom {
        file.seek(SeekFrom::Start(BOM.len() as u64))
            .map_err(read_error)?;
    }
    // Line by line into one reused buffer: the file is never held whole in memory.
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(1024);
    let mut offset = 0;
    for number in 1.. {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(n) => offset += n as u64,
            Err(e) => return Err(read_error(e)),
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|e| {
            line_error(
                path,
                number,
                format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
            )
        })?;
        let line = parse_line(kind, number, offset, text)
            .map_err(|message| line_error(path, number, message))?;
        each(line)?;
    }
    Ok(Some(style))
}

fn parse_line(kind: EntityKind, number: u64, offset: u64, text: &str) -> Result<Line<'_>, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let row = RowSeed(kind)
        .deserialize(&mut deserializer)
        .and_then(|row| deserializer.end().map(|()| row))
        .map_err(json_error)?;
    let id = match row.id {
        None => return Err("no `id`".to_owned()),
        Some(Json::String(id)) if id.trim().is_empty() => return Err("empty id".to_owned()),
        Some(Json::String(id)) => id,
        Some(Json::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err("`id` must be a string".to_owned()),
    };
    let modified_at = match &row.modified_at {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(Json::String(s)) => {
            Some(Timestamp::parse(s.as_str()).map_err(|e| format!("`modified_at`: {e}"))?)
        }
        Some(_) => return Err("`modified_at` must be an RFC 3339 string".to_owned()),
    };
    Ok(Line {
        number,
        offset,
        text,
        id,
        fields: row.fields,
        modified_at,
        has_modified_at: row.modified_at.is_some(),
    })
}

/// A line as parsed in one pass: fields straight into [`Value`]s, unknown keys skipped
/// (they stay in the stored line), so no intermediate JSON tree is built.
struct Row {
    id: Option<Json>,
    modified_at: Option<Json>,
    fields: Fields,
}

struct RowSeed(EntityKind);

impl<'de> DeserializeSeed<'de> for RowSeed {
    type Value = Row;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Row, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed {
    type Value = Row;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        let mut row = Row {
            id: None,
            modified_at: None,
            fields: Fields::new(),
        };
        while let Some(key) = map.next_key_seed(KeySeed(self.0))? {
            match key {
                Key::Id => row.id = Some(map.next_value()?),
                Key::ModifiedAt => row.modified_at = Some(map.next_value()?),
                Key::Field(name) => {
                    let value = map
                        .next_value::<Value>()
                        .map_err(|e| de::Error::custom(format!("`{name}`: {e}")))?;
                    let value = match value {
                        // A contact's relations may be written as one `;`-separated string.
                        Value::Text(s) if name.as_str() == field::BUSINESS_RELATIONS => {
                            table::split_list(&s)
                        }
                        value => value,
                    };
                    row.fields.set(name, value);
                }
                Key::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

enum Key {
    Id,
    ModifiedAt,
    Field(FieldName),
    Other,
}

/// Classifies a key without allocating (canonical names are `'static`).
struct KeySeed(EntityKind);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "id" => Key::Id,
            "modified_at" => Key::ModifiedAt,
            _ if table::is_field(self.0, key) => Key::Field(FieldName::new(key)),
            _ => Key::Other,
        })
    }
}

/// serde_json says where in the line; the line is ours to name.
fn json_error(error: serde_json::Error) -> String {
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let at = match error.column() {
        0 => String::new(),
        column => format!(" (column {column})"),
    };
    match error.classify() {
        // Well-formed JSON of the wrong shape.
        Category::Data => format!("{message}{at}"),
        Category::Syntax | Category::Eof | Category::Io => format!("invalid JSON: {message}{at}"),
    }
}

/// Every record of the file at `path`; a missing file holds none.
pub(crate) fn read(path: &Path, kind: EntityKind) -> Result<Vec<Record>, ConnectorError> {
    let mut records = Vec::new();
    let mut lines = Vec::new();
    let size = fs::metadata(path).map_or(0, |m| m.len());
    scan(path, kind, |line| {
        if records.len() == table::SAMPLE_ROWS {
            let expected = table::expected_rows(size, line.offset);
            records.reserve(expected);
            lines.reserve(expected);
        }
        records.push(Record {
            id: line.id,
            kind,
            fields: line.fields,
            version: Some(version_of(xxhash_rust::xxh3::xxh3_64(line.text.as_bytes()))),
            modified_at: line.modified_at,
            deleted: false,
        });
        lines.push(line.number);
        Ok(())
    })?;
    table::check_unique(path, records.iter().map(|r| r.id.as_str()), &lines)?;
    Ok(records)
}

/// A JSON Lines file loaded for writing.
#[derive(Debug)]
pub(crate) struct JsonlTable {
    path: PathBuf,
    /// The stored lines; a changed row is serialised afresh.
    rows: Vec<Option<String>>,
    ids: Vec<String>,
    /// Hashed with foldhash: a million ids are indexed per write.
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    stamps: bool,
    /// The byte order mark and line ends found, put back on every rewrite.
    style: TextStyle,
}

impl JsonlTable {
    pub(crate) fn load(path: &Path, kind: EntityKind) -> Result<JsonlTable, ConnectorError> {
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        let mut lines = Vec::new();
        let mut stamps = false;
        let style = scan(path, kind, |line| {
            rows.push(Some(line.text.to_owned()));
            ids.push(line.id);
            lines.push(line.number);
            stamps |= line.has_modified_at;
            Ok(())
        })?
        .unwrap_or_default();
        table::check_unique(path, ids.iter().map(String::as_str), &lines)?;
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Ok(JsonlTable {
            path: path.to_owned(),
            rows,
            ids,
            index,
            stamps,
            style,
        })
    }

    fn object(&self, row: usize) -> Result<Map<String, Json>, ConnectorError> {
        let text = self.rows[row].as_deref().unwrap_or_default();
        serde_json::from_str(text)
            .map_err(|e| ConnectorError::fatal(format!("{}: {e}", self.path.display())))
    }

    /// Rewrites the file atomically; returns the fingerprint of what it wrote.
    pub(crate) fn save(&self) -> Result<String, ConnectorError> {
        let style = self.style;
        crate::atomic::replace(&self.path, |file| {
            let mut out = BufWriter::with_capacity(1 << 16, file);
            style.write_start(&mut out)?;
            for row in self.rows.iter().flatten() {
                out.write_all(row.as_bytes())?;
                out.write_all(style.line_end())?;
            }
            out.flush()
        })
    }
}

/// Serialises `object` on one line, `id` first so the file stays easy to scan.
fn to_line(object: &Map<String, Json>) -> Result<String, ConnectorError> {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let id = object.get_key_value("id");
    for (i, (key, value)) in id
        .into_iter()
        .chain(object.iter().filter(|(k, _)| *k != "id"))
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).map_err(serialise_error)?;
        out.push(b':');
        serde_json::to_writer(&mut out, value).map_err(serialise_error)?;
    }
    out.push(b'}');
    String::from_utf8(out).map_err(|e| ConnectorError::fatal(e.to_string()))
}

fn set(
    object: &mut Map<String, Json>,
    name: &FieldName,
    value: &Value,
) -> Result<(), ConnectorError> {
    if value.is_empty() {
        object.remove(name.as_str());
    } else {
        object.insert(
            name.to_string(),
            serde_json::to_value(value).map_err(serialise_error)?,
        );
    }
    Ok(())
}

fn serialise_error(error: serde_json::Error) -> ConnectorError {
    ConnectorError::fatal(format!("cannot serialise a record as JSON: {error}"))
}

impl Table for JsonlTable {
    fn find(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    fn ids(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(
            self.ids
                .iter()
                .zip(&self.rows)
                .filter(|(_, row)| row.is_some())
                .map(|(id, _)| id.as_str()),
        )
    }

    fn version(&self, row: usize) -> String {
        let text = self.rows[row].as_deref().unwrap_or_default();
        version_of(xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }

    fn stamps_modified_at(&self) -> bool {
        self.stamps
    }

    fn insert(
        &mut self,
        id: String,
        fields: &Fields,
        stamp: Option<Timestamp>,
    ) -> Result<usize, ConnectorError> {
        let mut object = Map::new();
        object.insert("id".to_owned(), Json::String(id.clone()));
        for (name, value) in fields {
            set(&mut object, name, value)?;
        }
        if let Some(stamp) = stamp {
            object.insert("modified_at".to_owned(), Json::String(stamp.to_string()));
        }
        self.rows.push(Some(to_line(&object)?));
        self.index.insert(id.clone(), self.ids.len());
        self.ids.push(id);
        Ok(self.rows.len() - 1)
    }

    fn update(
        &mut self,
        row: usize,
        changes: &Changes,
        stamp: Option<Timestamp>,
    ) -> Result<(), ConnectorError> {
        let mut object = self.object(row)?;
        for (name, value) in changes {
            set(&mut object, name, value)?;
        }
        if let Some(stamp) = stamp {
            object.insert("modified_at".to_owned(), Json::String(stamp.to_string()));
        }
        self.rows[row] = Some(to_line(&object)?);
        Ok(())
    }

    fn remove(&mut self, row: usize) {
        if self.rows[row].take().is_some() {
            self.index.remove(&self.ids[row]);
        }
    }
}
