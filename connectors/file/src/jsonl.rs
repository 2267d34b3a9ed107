//! JSON Lines files: one JSON object per line, with `id` and field keys.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use tandem_connector::{Changes, ConnectorError};
use tandem_model::{EntityKind, FieldName, Fields, Record, Timestamp, Value, field};

use crate::table::{self, Table, io_error, line_error, version_of};

/// One parsed line.
struct Line<'a> {
    number: u64,
    /// The line as stored, without its line break: the version hashes it, and
    /// unchanged rows are written back as they were.
    text: &'a str,
    id: String,
    fields: Fields,
    modified_at: Option<Timestamp>,
    has_modified_at: bool,
}

/// Reads `path` strictly, calling `each` with every non-blank line. Returns false
/// when the file does not exist.
fn scan(
    path: &Path,
    kind: EntityKind,
    mut each: impl FnMut(Line<'_>) -> Result<(), ConnectorError>,
) -> Result<bool, ConnectorError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("cannot read", path, e)),
    };
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = i as u64 + 1;
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
        each(parse_line(kind, number, text).map_err(|message| line_error(path, number, message))?)?;
    }
    Ok(true)
}

fn parse_line(kind: EntityKind, number: u64, text: &str) -> Result<Line<'_>, String> {
    let object = match serde_json::from_str::<Json>(text).map_err(json_error)? {
        Json::Object(object) => object,
        _ => return Err("expected a JSON object".to_owned()),
    };
    let id = match object.get("id") {
        None => return Err("no `id`".to_owned()),
        Some(Json::String(id)) if id.trim().is_empty() => return Err("empty id".to_owned()),
        Some(Json::String(id)) => id.clone(),
        Some(Json::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err("`id` must be a string".to_owned()),
    };
    let has_modified_at = object.contains_key("modified_at");
    let modified_at = match object.get("modified_at") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(Json::String(s)) => {
            Some(Timestamp::parse(s).map_err(|e| format!("`modified_at`: {e}"))?)
        }
        Some(_) => return Err("`modified_at` must be an RFC 3339 string".to_owned()),
    };
    let mut fields = Fields::new();
    for (key, value) in object {
        if !table::is_field(kind, &key) {
            continue;
        }
        let value: Value = serde_json::from_value(value).map_err(|e| format!("`{key}`: {e}"))?;
        let value = match value {
            // A contact's relations may be written as one `;`-separated string.
            Value::Text(s) if kind == EntityKind::Contact && key == field::BUSINESS_RELATIONS => {
                Value::List(
                    s.split(';')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
            value => value,
        };
        fields.set(FieldName::new(&key), value);
    }
    Ok(Line {
        number,
        text,
        id,
        fields,
        modified_at,
        has_modified_at,
    })
}

/// serde_json says where in the line; the line is ours to name.
fn json_error(error: serde_json::Error) -> String {
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    format!("invalid JSON: {message} (column {})", error.column())
}

/// Every record of the file at `path`; a missing file holds none.
pub(crate) fn read(path: &Path, kind: EntityKind) -> Result<Vec<Record>, ConnectorError> {
    let mut records = Vec::new();
    let mut lines = Vec::new();
    scan(path, kind, |line| {
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
    index: HashMap<String, usize>,
    stamps: bool,
}

impl JsonlTable {
    pub(crate) fn load(path: &Path, kind: EntityKind) -> Result<JsonlTable, ConnectorError> {
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        let mut lines = Vec::new();
        let mut stamps = false;
        scan(path, kind, |line| {
            rows.push(Some(line.text.to_owned()));
            ids.push(line.id);
            lines.push(line.number);
            stamps |= line.has_modified_at;
            Ok(())
        })?;
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
        })
    }

    fn object(&self, row: usize) -> Result<Map<String, Json>, ConnectorError> {
        let text = self.rows[row].as_deref().unwrap_or_default();
        serde_json::from_str(text)
            .map_err(|e| ConnectorError::fatal(format!("{}: {e}", self.path.display())))
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

    fn save(&self) -> Result<(), ConnectorError> {
        crate::atomic::replace(&self.path, |file| {
            let mut out = BufWriter::with_capacity(1 << 16, file);
            for row in self.rows.iter().flatten() {
                out.write_all(row.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()
        })
    }
}
