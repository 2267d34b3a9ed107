//! Copying a state table by table (`tandem migrate`): rows out of a table in primary
//! key order, and rows into a table, with each column's values as [`StoredValue`]s.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgRow};

use super::lease::{self, Lease};
use super::read::get;
use super::{PgState, pg};
use crate::sqlite::{PackedLink, unpack};
use crate::transfer::{STATE_TABLES, StoredValue};
use crate::{StateError, codec};

/// Rows per page of an export, and per statement of an import.
const PAGE: usize = 5_000;

/// A page of an export: its rows, and the primary key of its last row.
struct Page {
    rows: Vec<Vec<StoredValue>>,
    last_key: Option<Vec<StoredValue>>,
}

/// A column of a state table: its name and PostgreSQL type.
struct Column {
    name: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Real,
    Text,
    Blob,
}

impl Kind {
    fn array(self) -> &'static str {
        match self {
            Kind::Integer => "bigint[]",
            Kind::Real => "double precision[]",
            Kind::Text => "text[]",
            Kind::Blob => "bytea[]",
        }
    }
}

/// `table` if it is a table of a state.
fn known(table: &str) -> Result<&'static str, StateError> {
    STATE_TABLES
        .iter()
        .find(|t| t.name == table)
        .map(|t| t.name)
        .ok_or_else(|| StateError::UnknownTable {
            table: table.to_owned(),
        })
}

impl PgState {
    /// Calls `each` with every row of `table`, in primary-key order, its columns in the
    /// schema's order; returns how many rows there were. Rows are read a page at a time
    /// (keyset paging), so `each` may use this store too; a copy runs under the lease,
    /// while no sync writes.
    pub fn export_table(
        &self,
        table: &str,
        each: &mut dyn FnMut(Vec<StoredValue>) -> Result<(), StateError>,
    ) -> Result<u64, StateError> {
        let table = known(table)?;
        let mut after: Option<Vec<StoredValue>> = None;
        let mut exported = 0;
        loop {
            let page = self.run(move |session| {
                session.on(async |conn, _| export_page(conn, table, after).await)
            })?;
            let full = page.rows.len() == PAGE;
            for row in page.rows {
                each(row)?;
                exported += 1;
            }
            match page.last_key {
                Some(key) if full => after = Some(key),
                _ => return Ok(exported),
            }
        }
    }

    /// Inserts `rows` (columns in the schema's order) into `table`, in one transaction
    /// fenced by the store's lease. Identity counters (runs, conflicts, scopes, intent
    /// batches) are moved past the ids imported. A JSON baseline or intent batch, as
    /// SQLite states before migration 8 hold, is stored in the binary form.
    pub fn import_rows(
        &mut self,
        table: &str,
        rows: Vec<Vec<StoredValue>>,
    ) -> Result<(), StateError> {
        let table = known(table)?;
        self.run(move |session| {
            let (leases, ttl) = (session.leases.clone(), session.ttl);
            session.on(async |conn, shown| import(conn, shown, &leases, ttl, table, rows).await)
        })
    }
}

async fn columns(conn: &mut PgConnection, table: &str) -> Result<Vec<Column>, StateError> {
    const ACTION: &str = "reading a table's columns";
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(pg(ACTION))?;
    found
        .into_iter()
        .map(|(name, data_type)| {
            let kind = match data_type.as_str() {
                "bigint" => Kind::Integer,
                "double precision" => Kind::Real,
                "text" => Kind::Text,
                "bytea" => Kind::Blob,
                other => {
                    return Err(StateError::Corrupt {
                        what: format!("column {name} of {table}"),
                        message: format!("of type {other}, which a state does not use"),
                    });
                }
            };
            Ok(Column { name, kind })
        })
        .collect()
}

/// The columns of `table`'s primary key, in order.
async fn primary_key(conn: &mut PgConnection, table: &str) -> Result<Vec<String>, StateError> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
         WHERE i.indrelid = $1::regclass AND i.indisprimary
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(pg("reading a table's primary key"))
}

fn value(row: &PgRow, index: usize, kind: Kind) -> Result<StoredValue, StateError> {
    const ACTION: &str = "exporting a table";
    let value = match kind {
        Kind::Integer => get::<Option<i64>>(row, index, ACTION)?.map(StoredValue::Integer),
        Kind::Real => get::<Option<f64>>(row, index, ACTION)?.map(StoredValue::Real),
        Kind::Text => get::<Option<String>>(row, index, ACTION)?.map(StoredValue::Text),
        Kind::Blob => get::<Option<Vec<u8>>>(row, index, ACTION)?.map(StoredValue::Blob),
    };
    Ok(value.unwrap_or(StoredValue::Null))
}

/// The first [`PAGE`] rows of `table` after the primary key `after`, in key order.
async fn export_page(
    conn: &mut PgConnection,
    table: &'static str,
    after: Option<Vec<StoredValue>>,
) -> Result<Page, StateError> {
    const ACTION: &str = "exporting a table";
    let columns = columns(conn, table).await?;
    let key = primary_key(conn, table).await?;
    let key_at: Vec<(usize, Kind)> = key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .map(|i| (i, columns[i].kind))
        .collect();
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let filter = match &after {
        None => String::new(),
        Some(_) => {
            let params: Vec<String> = (key_at.iter().enumerate())
                .map(|(n, (_, kind))| {
                    format!("${}::{}", n + 1, kind.array().trim_end_matches("[]"))
                })
                .collect();
            format!("WHERE ({}) > ({})", key.join(", "), params.join(", "))
        }
    };
    let sql = format!(
        "SELECT {} FROM {table} {filter} ORDER BY {} LIMIT {PAGE}",
        names.join(", "),
        key.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for value in after.into_iter().flatten() {
        query = match value {
            StoredValue::Integer(i) => query.bind(i),
            StoredValue::Text(t) => query.bind(t),
            StoredValue::Real(r) => query.bind(r),
            StoredValue::Blob(b) => query.bind(b),
            StoredValue::Null => query.bind(None::<i64>),
        };
    }
    let fetched = query.fetch_all(&mut *conn).await.map_err(pg(ACTION))?;
    let rows = fetched
        .iter()
        .map(|row| {
            (columns.iter().enumerate())
                .map(|(i, c)| value(row, i, c.kind))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let last_key = rows
        .last()
        .map(|row| key_at.iter().map(|(i, _)| row[*i].clone()).collect());
    Ok(Page { rows, last_key })
}

/// `text`, a JSON baseline or JSON intent batch of an older SQLite state, in the
/// binary form this store keeps; `None` for any other column.
fn binary_of_json(table: &str, column: &str, text: &str) -> Option<Result<Vec<u8>, String>> {
    match (table, column) {
        ("links", "baseline") => Some(
            serde_json::from_str::<tandem_model::Fields>(text)
                .map(|fields| {
                    let mut out = Vec::new();
                    codec::encode_fields(&mut out, &fields);
                    out
                })
                .map_err(|e| e.to_string()),
        ),
        ("intent_batches", "links") => Some(
            serde_json::from_str::<Vec<PackedLink>>(text)
                .map(|links| {
                    let links: Vec<_> = links.into_iter().map(unpack).collect();
                    codec::encode_links(&links)
                })
                .map_err(|e| e.to_string()),
        ),
        _ => None,
    }
}

/// One column's values as the array its type takes.
enum Array {
    Integer(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
    Blob(Vec<Option<Vec<u8>>>),
}

fn arrays(
    table: &str,
    columns: &[Column],
    rows: &[Vec<StoredValue>],
) -> Result<Vec<Array>, StateError> {
    let mut arrays: Vec<Array> = columns
        .iter()
        .map(|c| match c.kind {
            Kind::Integer => Array::Integer(Vec::with_capacity(rows.len())),
            Kind::Real => Array::Real(Vec::with_capacity(rows.len())),
            Kind::Text => Array::Text(Vec::with_capacity(rows.len())),
            Kind::Blob => Array::Blob(Vec::with_capacity(rows.len())),
        })
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let bad = |column: &str, message: String| StateError::Corrupt {
            what: format!("column {column} of row {} imported into {table}", n + 1),
            message,
        };
        if row.len() != columns.len() {
            return Err(bad(
                "(all)",
                format!("{} values for {} columns", row.len(), columns.len()),
            ));
        }
        for ((column, array), value) in columns.iter().zip(&mut arrays).zip(row) {
            let mismatch = || {
                bad(
                    &column.name,
                    format!("{value:?} in a {:?} column", column.kind),
                )
            };
            match (array, value) {
                (Array::Integer(a), StoredValue::Null) => a.push(None),
                (Array::Integer(a), StoredValue::Integer(i)) => a.push(Some(*i)),
                (Array::Real(a), StoredValue::Null) => a.push(None),
                (Array::Real(a), StoredValue::Real(r)) => a.push(Some(*r)),
                #[expect(clippy::cast_precision_loss, reason = "SQLite's own conversion")]
                (Array::Real(a), StoredValue::Integer(i)) => a.push(Some(*i as f64)),
                (Array::Text(a), StoredValue::Null) => a.push(None),
                (Array::Text(a), StoredValue::Text(t)) => a.push(Some(t.clone())),
                (Array::Blob(a), StoredValue::Null) => a.push(None),
                (Array::Blob(a), StoredValue::Blob(b)) => a.push(Some(b.clone())),
                (Array::Blob(a), StoredValue::Text(t)) => {
                    let binary = binary_of_json(table, &column.name, t)
                        .ok_or_else(mismatch)?
                        .map_err(|e| bad(&column.name, e))?;
                    a.push(Some(binary));
                }
                _ => return Err(mismatch()),
            }
        }
    }
    Ok(arrays)
}

async fn import(
    conn: &mut PgConnection,
    shown: &str,
    leases: &[Lease],
    ttl: Duration,
    table: &'static str,
    rows: Vec<Vec<StoredValue>>,
) -> Result<(), StateError> {
    const ACTION: &str = "importing rows";
    let columns = columns(conn, table).await?;
    let mut tx = conn.begin().await.map_err(pg(ACTION))?;
    lease::fence(&mut tx, shown, leases, ttl).await?;
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let params: Vec<String> = (columns.iter().enumerate())
        .map(|(i, c)| format!("${}::{}", i + 1, c.kind.array()))
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT * FROM unnest({})",
        names.join(", "),
        params.join(", ")
    );
    for chunk in rows.chunks(PAGE) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for array in arrays(table, &columns, chunk)? {
            query = match array {
                Array::Integer(a) => query.bind(a),
                Array::Real(a) => query.bind(a),
                Array::Text(a) => query.bind(a),
                Array::Blob(a) => query.bind(a),
            };
        }
        query.execute(&mut *tx).await.map_err(pg(ACTION))?;
    }
    if matches!(table, "runs" | "conflicts" | "scopes" | "intent_batches") {
        // The next id given is above every id imported.
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                           GREATEST((SELECT max(id) FROM {table}), 1))"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(pg(ACTION))?;
    }
    tx.commit().await.map_err(pg(ACTION))
}
