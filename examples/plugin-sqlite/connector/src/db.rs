//! The database file: its schema, its rows and its change log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value as Json};
use tandem_connector::{ConnectorError, Cursor, Listing, Page, WriteOp, WriteOutcome, Written};
use tandem_model::{EntityKind, FieldName, Fields, Record, Timestamp, Value, field};

/// How long a write waits for another connection's lock before giving up with a
/// transient error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One table per kind, plus the change log every write appends to.
fn schema() -> String {
    let mut sql = String::new();
    for kind in EntityKind::ALL {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id TEXT PRIMARY KEY NOT NULL,
                fields TEXT NOT NULL DEFAULT '{{}}',
                extra TEXT NOT NULL DEFAULT '{{}}',
                version INTEGER NOT NULL DEFAULT 1,
                modified_at TEXT
            );\n",
            kind.plural()
        ));
    }
    sql.push_str(
        "CREATE TABLE IF NOT EXISTS changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS changes_by_kind ON changes (kind, seq);\n",
    );
    sql
}

/// A database file opened directly, as the application that owns it would. The
/// connector works through one; tests and examples use one to seed records and to
/// change them behind the connector's back.
///
/// Every change made through it is versioned and logged like a change made by the
/// connector, so incremental reads see it.
#[derive(Debug)]
pub struct Database {
    conn: Connection,
    path: PathBuf,
}

impl Database {
    /// Opens the database at `path`, creating the file and its tables if needed. The
    /// folder must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Database, ConnectorError> {
        let path = path.as_ref().to_owned();
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !folder.is_dir()
        {
            return Err(ConnectorError::config(format!(
                "folder {} of the database does not exist",
                folder.display()
            )));
        }
        let conn = Connection::open(&path).map_err(|e| {
            ConnectorError::config(format!("cannot open database {}: {e}", path.display()))
        })?;
        let db = Database { conn, path };
        db.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db.error(e))?;
        db.conn.execute_batch(&schema()).map_err(|e| {
            if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
                ConnectorError::config(format!("{} is not a SQLite database", db.path.display()))
            } else {
                db.error(e)
            }
        })?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inserts record `id` or replaces its fields (its unmapped `extra` data stays).
    pub fn put(
        &mut self,
        kind: EntityKind,
        id: &str,
        fields: &Fields,
    ) -> Result<(), ConnectorError> {
        let json = fields_json(fields)?;
        let now = Timestamp::now().to_string();
        self.change(kind, id, |conn, table| {
            conn.execute(
                &format!(
                    "INSERT INTO {table} (id, fields, version, modified_at) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (id) DO UPDATE SET fields = excluded.fields,
                         version = version + 1, modified_at = excluded.modified_at"
                ),
                params![id, json, now],
            )
        })
        .map(drop)
    }

    /// Replaces the data record `id` keeps that the connector does not map (`extra`).
    pub fn set_extra(
        &mut self,
        kind: EntityKind,
        id: &str,
        extra: &serde_json::Value,
    ) -> Result<(), ConnectorError> {
        let now = Timestamp::now().to_string();
        let changed = self.change(kind, id, |conn, table| {
            conn.execute(
                &format!(
                    "UPDATE {table} SET extra = ?2, version = version + 1, modified_at = ?3
                     WHERE id = ?1"
                ),
                params![id, extra.to_string(), now],
            )
        })?;
        if changed == 0 {
            return Err(ConnectorError::NotFound { id: id.to_owned() });
        }
        Ok(())
    }

    /// The unmapped data of record `id`, or `None` when there is no such record.
    pub fn extra(
        &self,
        kind: EntityKind,
        id: &str,
    ) -> Result<Option<serde_json::Value>, ConnectorError> {
        let text: Option<String> = self
            .conn
            .query_row(
                &format!("SELECT extra FROM {} WHERE id = ?1", kind.plural()),
                [id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))?;
        text.map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| bad_row(&self.path, kind, id, format!("`extra` is not JSON: {e}")))
        })
        .transpose()
    }

    /// Deletes record `id`; false when there was none.
    pub fn remove(&mut self, kind: EntityKind, id: &str) -> Result<bool, ConnectorError> {
        let removed = self.change(kind, id, |conn, table| {
            conn.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])
        })?;
        Ok(removed > 0)
    }

    /// Runs `edit` on the table of `kind` and logs a change of `id` when it touched a
    /// row (a delete when the row is gone afterwards), in one transaction.
    fn change(
        &mut self,
        kind: EntityKind,
        id: &str,
        edit: impl FnOnce(&Connection, &str) -> rusqlite::Result<usize>,
    ) -> Result<usize, ConnectorError> {
        let path = self.path.clone();
        let error = |e| sql_error(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let touched = edit(&tx, kind.plural()).map_err(error)?;
        if touched > 0 {
            let exists = exists(&tx, kind, id).map_err(error)?;
            log_change(&tx, kind, id, !exists).map_err(error)?;
        }
        tx.commit().map_err(error)?;
        Ok(touched)
    }

    fn error(&self, error: rusqlite::Error) -> ConnectorError {
        sql_error(&self.path, error)
    }

    /// Verifies that every table can be read.
    pub(crate) fn check(&self) -> Result<(), ConnectorError> {
        for table in EntityKind::ALL
            .iter()
            .map(|k| k.plural())
            .chain(["changes"])
        {
            self.conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get::<_, i64>(0)
                })
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// One page of `kind`; see the crate docs for the cursors.
    pub(crate) fn read(
        &mut self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
        page_size: usize,
    ) -> Result<Page, ConnectorError> {
        let position = Position::parse(cursor)?;
        let path = self.path.clone();
        let error = |e| sql_error(&path, e);
        let table = kind.plural();
        let limit = i64::try_from(page_size.saturating_add(1)).unwrap_or(i64::MAX);
        // One read transaction: the snapshot and the page agree.
        let tx = self.conn.transaction().map_err(error)?;
        let page = match position {
            Position::Full { snapshot, after } => {
                let snapshot = match snapshot {
                    Some(snapshot) => snapshot,
                    None => last_seq(&tx).map_err(error)?,
                };
                let mut statement = tx
                    .prepare(&format!(
                        "SELECT id, fields, version, modified_at FROM {table}
                         WHERE id > ?1 ORDER BY id LIMIT ?2"
                    ))
                    .map_err(error)?;
                let rows = statement
                    .query_map(params![after, limit], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .map_err(error)?
                    .collect::<rusqlite::Result<Vec<(String, String, i64, Option<String>)>>>()
                    .map_err(error)?;
                let mut records = rows
                    .into_iter()
                    .map(|(id, fields, version, modified_at)| {
                        record(&path, kind, id, &fields, version, modified_at)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let has_more = records.len() > page_size;
                records.truncate(page_size);
                let cursor = match records.last() {
                    Some(last) if has_more => format!("full:{snapshot}:{}", last.id),
                    // The next read asks for the changes made since this one began.
                    _ => format!("changes:{snapshot}"),
                };
                Page {
                    records,
                    listing: Listing::Full,
                    cursor: Some(Cursor(cursor)),
                    has_more,
                }
            }
            Position::Changes { since } => {
                // Each id once, at its latest change; live rows as they are now, and
                // ids without a row as tombstones.
                let mut statement = tx
                    .prepare(&format!(
                        "SELECT l.id, l.last, t.fields, t.version, t.modified_at
                         FROM (SELECT id, MAX(seq) AS last FROM changes
                               WHERE kind = ?1 AND seq > ?2 AND id <> '' GROUP BY id) AS l
                         LEFT JOIN {table} AS t ON t.id = l.id
                         ORDER BY l.last LIMIT ?3"
                    ))
                    .map_err(error)?;
                type Row = (String, i64, Option<String>, Option<i64>, Option<String>);
                let mut rows = statement
                    .query_map(params![kind.as_str(), since, limit], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    })
                    .map_err(error)?
                    .collect::<rusqlite::Result<Vec<Row>>>()
                    .map_err(error)?;
                let has_more = rows.len() > page_size;
                rows.truncate(page_size);
                let last = rows.last().map_or(since, |row| row.1);
                let records = rows
                    .into_iter()
                    .map(|(id, _, fields, version, modified_at)| match fields {
                        Some(fields) => {
                            record(&path, kind, id, &fields, version.unwrap_or(0), modified_at)
                        }
                        None => Ok(Record::tombstone(kind, id)),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Page {
                    records,
                    listing: Listing::Changes,
                    cursor: Some(Cursor(format!("changes:{last}"))),
                    has_more,
                }
            }
        };
        tx.commit().map_err(error)?;
        Ok(page)
    }

    /// Applies `ops` in one transaction, each op in a savepoint of its own: a failing
    /// op changes nothing and the others go on.
    pub(crate) fn write(
        &mut self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let path = self.path.clone();
        let error = |e| sql_error(&path, e);
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let now = Timestamp::now();
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let savepoint = tx.savepoint().map_err(error)?;
            let outcome = apply(&savepoint, &path, kind, op, now);
            if outcome.is_ok() {
                savepoint.commit().map_err(error)?;
            }
            // Dropped without a commit, the savepoint rolls back.
            outcomes.push(outcome);
        }
        tx.commit().map_err(error)?;
        Ok(outcomes)
    }
}

/// Where a read resumes.
#[derive(Debug)]
enum Position {
    /// A full listing: records with an id above `after`. `snapshot` is the last change
    /// before the listing began (`None` on its first page).
    Full {
        snapshot: Option<i64>,
        after: String,
    },
    /// The changes logged after `since`.
    Changes { since: i64 },
}

impl Position {
    /// Cursors are `full:<snapshot>:<after id>` within a full listing and
    /// `changes:<seq>` after one.
    fn parse(cursor: Option<&Cursor>) -> Result<Position, ConnectorError> {
        let Some(cursor) = cursor else {
            return Ok(Position::Full {
                snapshot: None,
                after: String::new(),
            });
        };
        let mut parts = cursor.0.splitn(3, ':');
        let parsed = match (parts.next(), parts.next(), parts.next()) {
            (Some("full"), Some(snapshot), Some(after)) => {
                snapshot.parse().ok().map(|snapshot| Position::Full {
                    snapshot: Some(snapshot),
                    after: after.to_owned(),
                })
            }
            (Some("changes"), Some(since), None) => {
                since.parse().ok().map(|since| Position::Changes { since })
            }
            _ => None,
        };
        parsed.ok_or_else(|| {
            ConnectorError::config(format!(
                "`{cursor}` is not a cursor of the sqlite-example connector"
            ))
        })
    }
}

/// A prefix per kind for the ids the connector gives out.
fn prefix(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Contact => "C",
        EntityKind::Customer => "K",
        EntityKind::Vendor => "V",
        EntityKind::BankAccount => "B",
    }
}

fn apply(
    conn: &Connection,
    path: &Path,
    kind: EntityKind,
    op: WriteOp,
    now: Timestamp,
) -> WriteOutcome {
    let table = kind.plural();
    let error = |e| sql_error(path, e);
    match op {
        WriteOp::Create { fields, .. } => {
            check_names(kind, None, fields.iter().map(|(name, _)| name))?;
            let id = new_id(conn, kind).map_err(error)?;
            conn.execute(
                &format!(
                    "INSERT INTO {table} (id, fields, extra, version, modified_at)
                     VALUES (?1, ?2, '{{}}', 1, ?3)"
                ),
                params![id, fields_json(&fields)?, now.to_string()],
            )
            .map_err(error)?;
            Ok(Written {
                id,
                version: Some("1".to_owned()),
                modified_at: Some(now),
            })
        }
        WriteOp::Update {
            id,
            version,
            changes,
        } => {
            check_names(kind, Some(&id), changes.keys())?;
            let (fields, current) = conn
                .query_row(
                    &format!("SELECT fields, version FROM {table} WHERE id = ?1"),
                    [&id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
                )
                .optional()
                .map_err(error)?
                .ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
            check_version(&id, version.as_deref(), current)?;
            // Keys that are not fields stay as they are.
            let mut object = parse_object(path, kind, &id, &fields)?;
            for (name, value) in &changes {
                if value.is_empty() {
                    object.remove(name.as_str());
                } else {
                    object.insert(name.to_string(), to_json(value)?);
                }
            }
            let next = current + 1;
            conn.execute(
                &format!(
                    "UPDATE {table} SET fields = ?2, version = ?3, modified_at = ?4 WHERE id = ?1"
                ),
                params![id, Json::Object(object).to_string(), next, now.to_string()],
            )
            .map_err(error)?;
            log_change(conn, kind, &id, false).map_err(error)?;
            Ok(Written {
                id,
                version: Some(next.to_string()),
                modified_at: Some(now),
            })
        }
        WriteOp::Delete { id, version } => {
            let current: i64 = conn
                .query_row(
                    &format!("SELECT version FROM {table} WHERE id = ?1"),
                    [&id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(error)?
                .ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
            check_version(&id, version.as_deref(), current)?;
            conn.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [&id])
                .map_err(error)?;
            log_change(conn, kind, &id, true).map_err(error)?;
            Ok(Written {
                id,
                version: None,
                modified_at: None,
            })
        }
    }
}

/// A new id, never given out before: the sequence number of the change that logs the
/// create. The change is logged here.
fn new_id(conn: &Connection, kind: EntityKind) -> rusqlite::Result<String> {
    loop {
        conn.execute(
            "INSERT INTO changes (kind, id, deleted) VALUES (?1, '', 0)",
            [kind.as_str()],
        )?;
        let seq = conn.last_insert_rowid();
        let id = format!("{}{seq}", prefix(kind));
        if exists(conn, kind, &id)? {
            // Taken by a record made outside the connector; AUTOINCREMENT never hands
            // out this number again.
            conn.execute("DELETE FROM changes WHERE seq = ?1", [seq])?;
            continue;
        }
        conn.execute(
            "UPDATE changes SET id = ?1 WHERE seq = ?2",
            params![id, seq],
        )?;
        return Ok(id);
    }
}

fn exists(conn: &Connection, kind: EntityKind, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE id = ?1)",
            kind.plural()
        ),
        [id],
        |row| row.get(0),
    )
}

fn log_change(
    conn: &Connection,
    kind: EntityKind,
    id: &str,
    deleted: bool,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO changes (kind, id, deleted) VALUES (?1, ?2, ?3)",
        params![kind.as_str(), id, deleted],
    )
    .map(drop)
}

/// The last sequence number given out (0 when none was).
fn last_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
        [],
        |row| row.get(0),
    )
}

fn check_version(id: &str, expected: Option<&str>, current: i64) -> Result<(), ConnectorError> {
    match expected {
        Some(expected) if expected.parse::<i64>().ok() != Some(current) => {
            Err(ConnectorError::Conflict { id: id.to_owned() })
        }
        _ => Ok(()),
    }
}

/// Whether `name` is exposed as a field of records of `kind`.
fn is_field(kind: EntityKind, name: &str) -> bool {
    field::is_canonical_for(kind, name) || field::is_extra(name)
}

/// Refuses names that would be stored but never read back as fields.
fn check_names<'a>(
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

fn to_json(value: &Value) -> Result<Json, ConnectorError> {
    serde_json::to_value(value)
        .map_err(|e| ConnectorError::fatal(format!("cannot serialise a field as JSON: {e}")))
}

fn fields_json(fields: &Fields) -> Result<String, ConnectorError> {
    serde_json::to_string(fields)
        .map_err(|e| ConnectorError::fatal(format!("cannot serialise fields as JSON: {e}")))
}

fn parse_object(
    path: &Path,
    kind: EntityKind,
    id: &str,
    text: &str,
) -> Result<Map<String, Json>, ConnectorError> {
    serde_json::from_str(text).map_err(|e| {
        bad_row(
            path,
            kind,
            id,
            format!("`fields` is not a JSON object: {e}"),
        )
    })
}

/// A row as a record: the keys of `fields` that are fields of the kind; the others,
/// and `extra`, are never exposed.
fn record(
    path: &Path,
    kind: EntityKind,
    id: String,
    text: &str,
    version: i64,
    modified_at: Option<String>,
) -> Result<Record, ConnectorError> {
    let object = parse_object(path, kind, &id, text)?;
    let mut fields = Fields::new();
    for (key, json) in object {
        if !is_field(kind, &key) {
            continue;
        }
        let value: Value = serde_json::from_value(json)
            .map_err(|e| bad_row(path, kind, &id, format!("field `{key}`: {e}")))?;
        let value = match value {
            // Relations may be stored as one `;`-separated string.
            Value::Text(text) if key == field::BUSINESS_RELATIONS => Value::list(
                text.split(';')
                    .map(str::trim)
                    .filter(|code| !code.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            value => value,
        };
        fields.set(key.as_str(), value);
    }
    let modified_at = match modified_at.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            Timestamp::parse(text)
                .map_err(|e| bad_row(path, kind, &id, format!("`modified_at`: {e}")))?,
        ),
    };
    Ok(Record {
        id,
        kind,
        fields,
        version: Some(version.to_string()),
        modified_at,
        deleted: false,
    })
}

/// A row the connector cannot read: `<db>: table <t>, id <id>: <message>`.
fn bad_row(path: &Path, kind: EntityKind, id: &str, message: String) -> ConnectorError {
    ConnectorError::fatal(format!(
        "{}: table {}, id {id}: {message}",
        path.display(),
        kind.plural()
    ))
}

/// A database that is busy is worth another try; anything else is not.
fn sql_error(path: &Path, error: rusqlite::Error) -> ConnectorError {
    let message = format!("{}: {error}", path.display());
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            ConnectorError::transient(message)
        }
        _ => ConnectorError::fatal(message),
    }
}
