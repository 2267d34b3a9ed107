//! Tandem's connector for tables in PostgreSQL, MariaDB/MySQL and SQLite
//! (`type = "sql"`).
//!
//! One table per record kind, one row per record: the `id` column is the record's id,
//! a column mapping names the column of each canonical field (or `x_` extra), and
//! columns not mapped are never read or written. Reads are full listings in key order
//! with keyset paging, or changes: rows newer than the last read by an `updated_at`
//! column (with an overlap window and de-duplication), or the entries of a change table
//! filled by triggers that `tandem sql install-triggers` installs ([`SqlConnector::
//! install_triggers`]), deletes included. A version column (an integer counter,
//! PostgreSQL's `xmin`, or `updated_at`) makes updates and deletes refuse rows that
//! changed since they were read. One write call is one transaction; each operation runs
//! in a savepoint of its own, so one bad record does not undo the others.
//!
//! The driver is sqlx's runtime query API through its `Any` driver: every value crosses
//! as text (cast in SQL), which keeps one code path for the three databases.

mod dialect;
mod settings;
#[cfg(feature = "testsupport")]
pub mod testsupport;
mod triggers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use secrecy::{ExposeSecret, SecretString};

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tandem_connector::{
    BuildContext, Capabilities, Changes, Connector, ConnectorError, ConnectorFactory, Cursor,
    Listing, Page, WriteOp, WriteOutcome, Written, parse_settings,
};
use tandem_model::{EntityKind, Fields, Record, Timestamp, Value, field};
use tokio::sync::OnceCell;

pub use dialect::Dialect;
pub use settings::{ChangeSource, KindSettings, Settings};

/// Builds `type = "sql"` connectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct SqlConnectorFactory;

impl ConnectorFactory for SqlConnectorFactory {
    fn type_name(&self) -> &'static str {
        "sql"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(SqlConnector::from_settings(settings, context)?))
    }
}

/// How a row's version is read and checked.
#[derive(Debug, Clone)]
enum Version {
    None,
    /// An integer column every write increments.
    Counter(String),
    /// PostgreSQL's `xmin` system column.
    Xmin,
    /// The `updated_at` column, set on every write.
    UpdatedAt(String),
}

/// One kind's table, its names quoted for the dialect.
#[derive(Debug)]
struct Table {
    kind: EntityKind,
    /// As configured, for messages and the change table.
    name: String,
    quoted: String,
    id_column: String,
    id: String,
    /// (field, column name as configured, quoted column)
    columns: Vec<(String, String, String)>,
    version: Version,
    updated_at: Option<String>,
    changes: ChangeSource,
    overlap_micros: i64,
    idempotency_key: Option<String>,
    /// PostgreSQL only: column -> type, to cast text parameters to the column's type.
    pg_types: OnceCell<HashMap<String, String>>,
}

/// A connector on one database.
#[derive(Debug)]
pub struct SqlConnector {
    /// Made on first use: the pool needs the async runtime, which building a connector
    /// does not.
    pool: OnceLock<AnyPool>,
    url: SecretString,
    max_connections: u32,
    dialect: Dialect,
    batch_size: usize,
    page_size: usize,
    change_table: String,
    tables: BTreeMap<EntityKind, Table>,
    /// The URL's password, removed from any message that might echo it.
    password: Option<String>,
}

/// Where a read resumes (serialised into the opaque [`Cursor`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "read", rename_all = "snake_case")]
enum Position {
    /// Inside a full listing: after this id; `mark` is where changes start afterwards.
    Full {
        after: Option<String>,
        mark: Option<Box<Position>>,
    },
    /// Changes from the change table after entry `seq`.
    Triggers { seq: i64 },
    /// Changes by `updated_at`: rows from `since` minus the overlap, less those in
    /// `seen` (id, time) already returned; `after` continues a read in progress.
    UpdatedAt {
        since: i64,
        seen: Vec<(String, i64)>,
        after: Option<(i64, String)>,
    },
}

impl SqlConnector {
    /// Builds a connector from its config settings; no connection is made until the
    /// first call.
    pub fn from_settings(
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<SqlConnector, ConnectorError> {
        let settings: Settings = parse_settings(settings)?;
        settings.validate()?;
        let (dialect, mut url) = Dialect::from_url(settings.url())?;
        if dialect == Dialect::Sqlite {
            url = resolve_sqlite_path(&url, context);
        }
        let password = url_password(&url);
        sqlx::any::install_default_drivers();
        // Parsed now, so a bad URL is a config error at build time; connected later.
        url.parse::<sqlx::any::AnyConnectOptions>().map_err(|e| {
            ConnectorError::config(format!(
                "`url`: {}",
                redact(&e.to_string(), password.as_deref())
            ))
        })?;
        let tables = settings
            .kinds
            .iter()
            .map(|(kind, k)| (*kind, Table::new(dialect, *kind, k)))
            .collect();
        Ok(SqlConnector {
            pool: OnceLock::new(),
            url: SecretString::from(url),
            max_connections: settings.max_connections.max(1),
            dialect,
            batch_size: settings.batch_size,
            page_size: settings.page_size,
            change_table: settings.change_table.clone(),
            tables,
            password,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The connection pool (made on first use, inside the async runtime); for tests
    /// and tools that look at the database behind the connector.
    pub fn pool(&self) -> &AnyPool {
        self.pool.get_or_init(|| {
            AnyPoolOptions::new()
                .max_connections(self.max_connections)
                .acquire_timeout(std::time::Duration::from_secs(30))
                .connect_lazy(self.url.expose_secret())
                .expect("the url was parsed when the connector was built")
        })
    }

    fn table(&self, kind: EntityKind) -> Result<&Table, ConnectorError> {
        self.tables.get(&kind).ok_or_else(|| {
            ConnectorError::config(format!(
                "this SQL connector holds no {}: add [connectors.<name>.kinds.{kind}] with its table",
                kind.plural()
            ))
        })
    }

    /// A database error as a connector error: what failed, where, never the password.
    fn error(&self, e: sqlx::Error, table: &Table, id: Option<&str>) -> ConnectorError {
        let place = match id {
            Some(id) => format!("table `{}`, row {id}", table.name),
            None => format!("table `{}`", table.name),
        };
        classify(e, &place, self.password.as_deref(), id)
    }

    /// The parameter placeholder for `column` of `table`: cast to the column's type on
    /// PostgreSQL, which does not convert text parameters by itself.
    async fn param(&self, table: &Table, column: &str, n: usize) -> Result<String, ConnectorError> {
        if self.dialect != Dialect::Postgres {
            return Ok(self.dialect.param(n));
        }
        let types = self.pg_types(table).await?;
        Ok(match types.get(column) {
            Some(ty) => format!("CAST(${n} AS {ty})"),
            None => format!("${n}"),
        })
    }

    /// Whether `id` can be a key of `table` at all: PostgreSQL refuses to compare an
    /// integer column with text that is no integer, where the others just find no row.
    async fn possible_id(&self, table: &Table, id: &str) -> Result<bool, ConnectorError> {
        if self.dialect != Dialect::Postgres {
            return Ok(true);
        }
        let types = self.pg_types(table).await?;
        Ok(match types.get(&table.id_column).map(String::as_str) {
            Some("smallint" | "integer" | "bigint") => id.trim().parse::<i64>().is_ok(),
            Some("uuid") => id.len() >= 32 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            _ => true,
        })
    }

    async fn pg_types<'t>(
        &self,
        table: &'t Table,
    ) -> Result<&'t HashMap<String, String>, ConnectorError> {
        table
            .pg_types
            .get_or_try_init(|| async {
                let rows = sqlx::query(
                    "SELECT CAST(a.attname AS TEXT), format_type(a.atttypid, a.atttypmod) \
                     FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                     AND a.attnum > 0 AND NOT a.attisdropped",
                )
                .bind(table.name.clone())
                .fetch_all(self.pool())
                .await
                .map_err(|e| self.error(e, table, None))?;
                if rows.is_empty() {
                    return Err(ConnectorError::config(format!(
                        "table `{}` ({}s) does not exist in the database",
                        table.name, table.kind
                    )));
                }
                let mut types = HashMap::new();
                for row in rows {
                    let name: String = row.try_get(0).map_err(|e| self.error(e, table, None))?;
                    let ty: String = row.try_get(1).map_err(|e| self.error(e, table, None))?;
                    types.insert(name, ty);
                }
                Ok(types)
            })
            .await
    }

    /// `SELECT` list of a record: id, mapped columns, version, modification time.
    fn select_list(&self, table: &Table) -> String {
        let d = self.dialect;
        let mut list = vec![d.text(&table.id)];
        list.extend(table.columns.iter().map(|(_, _, q)| d.text(q)));
        list.push(self.version_expr(table).unwrap_or_else(|| "NULL".into()));
        list.push(match &table.updated_at {
            Some(u) => d.epoch_micros(u),
            None => "NULL".into(),
        });
        // Aliases of their own: PostgreSQL names `CAST(id AS TEXT)` `id`, and an
        // `ORDER BY id` would then sort the text, not the key.
        list.iter()
            .enumerate()
            .map(|(i, expr)| format!("{expr} AS tandem_c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `RETURNING` / read-back list after a write: id, version, modification time.
    fn written_list(&self, table: &Table) -> String {
        let d = self.dialect;
        format!(
            "{}, {}, {}",
            d.text(&table.id),
            self.version_expr(table).unwrap_or_else(|| "NULL".into()),
            table
                .updated_at
                .as_ref()
                .map(|u| d.epoch_micros(u))
                .unwrap_or_else(|| "NULL".into())
        )
    }

    fn version_expr(&self, table: &Table) -> Option<String> {
        let d = self.dialect;
        match &table.version {
            Version::None => None,
            Version::Counter(c) | Version::UpdatedAt(c) => Some(d.text(c)),
            Version::Xmin => Some(d.text("xmin")),
        }
    }

    fn record(&self, table: &Table, row: &AnyRow) -> Result<Record, ConnectorError> {
        let get = |i: usize| -> Result<Option<String>, ConnectorError> {
            row.try_get::<Option<String>, _>(i)
                .map_err(|e| self.error(e, table, None))
        };
        let id = get(0)?.ok_or_else(|| {
            ConnectorError::fatal(format!(
                "table `{}`: a row has no id in column `{}`",
                table.name, table.id_column
            ))
        })?;
        let mut fields = Fields::with_capacity(table.columns.len());
        for (i, (name, _, _)) in table.columns.iter().enumerate() {
            if let Some(text) = get(i + 1)?
                && !text.is_empty()
            {
                fields.set(name.as_str(), field_value(name, text));
            }
        }
        let n = table.columns.len();
        let version = get(n + 1)?;
        let micros: Option<i64> = row
            .try_get::<Option<i64>, _>(n + 2)
            .map_err(|e| self.error(e, table, Some(&id)))?;
        let mut record = Record::new(table.kind, id, fields);
        record.version = version;
        record.modified_at = micros.map(|us| Timestamp(us.div_euclid(1000)));
        Ok(record)
    }

    fn written(&self, table: &Table, row: &AnyRow) -> Result<Written, ConnectorError> {
        let id: Option<String> = row.try_get(0).map_err(|e| self.error(e, table, None))?;
        let id = id.unwrap_or_default();
        let version: Option<String> = row
            .try_get(1)
            .map_err(|e| self.error(e, table, Some(&id)))?;
        let micros: Option<i64> = row
            .try_get(2)
            .map_err(|e| self.error(e, table, Some(&id)))?;
        Ok(Written {
            id,
            version,
            modified_at: micros.map(|us| Timestamp(us.div_euclid(1000))),
        })
    }

    /// Where changes start once a full listing now beginning has ended.
    async fn change_mark(&self, table: &Table) -> Result<Option<Position>, ConnectorError> {
        match table.changes {
            ChangeSource::Full => Ok(None),
            ChangeSource::Triggers => {
                let sql = format!(
                    "SELECT CAST(COALESCE(MAX(seq), 0) AS {}) FROM {} WHERE table_name = {}",
                    self.bigint(),
                    self.dialect.quote(&self.change_table),
                    self.dialect.param(1)
                );
                let seq: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(table.name.clone())
                    .fetch_one(self.pool())
                    .await
                    .map_err(|e| self.triggers_error(e, table))?;
                Ok(Some(Position::Triggers { seq }))
            }
            ChangeSource::UpdatedAt => {
                let column = table.updated_at.as_deref().unwrap_or("NULL");
                let epoch = self.dialect.epoch_micros(column);
                let sql = format!("SELECT MAX({epoch}) FROM {}", table.quoted);
                let since: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(self.pool())
                    .await
                    .map_err(|e| self.error(e, table, None))?;
                let since = since.unwrap_or(0);
                // The rows the first overlap window will return again, as the listing
                // about to start shows them: not changes.
                let sql = format!(
                    "SELECT {}, {epoch} FROM {} WHERE {epoch} >= {}",
                    self.dialect.text(&table.id),
                    table.quoted,
                    self.dialect.int_param(1)
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind((since - table.overlap_micros).to_string())
                    .fetch_all(self.pool())
                    .await
                    .map_err(|e| self.error(e, table, None))?;
                let mut seen = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: String = row.try_get(0).map_err(|e| self.error(e, table, None))?;
                    let time: i64 = row.try_get(1).map_err(|e| self.error(e, table, None))?;
                    seen.push((id, time));
                }
                seen.sort();
                Ok(Some(Position::UpdatedAt {
                    since,
                    seen,
                    after: None,
                }))
            }
        }
    }

    fn bigint(&self) -> &'static str {
        match self.dialect {
            Dialect::MySql => "SIGNED",
            Dialect::Postgres => "BIGINT",
            Dialect::Sqlite => "INTEGER",
        }
    }

    fn triggers_error(&self, e: sqlx::Error, table: &Table) -> ConnectorError {
        match self.error(e, table, None) {
            ConnectorError::Config { message } => ConnectorError::config(format!(
                "{message}; `changes = \"triggers\"` reads the change table `{}`: run `tandem sql install-triggers` first",
                self.change_table
            )),
            other => other,
        }
    }

    async fn read_full(
        &self,
        table: &Table,
        after: Option<String>,
        mark: Option<Box<Position>>,
    ) -> Result<Page, ConnectorError> {
        let mark = match (after.is_none(), mark) {
            (true, _) => self.change_mark(table).await?.map(Box::new),
            (false, mark) => mark,
        };
        let mut sql = format!("SELECT {} FROM {}", self.select_list(table), table.quoted);
        let mut binds = Vec::new();
        if let Some(after) = &after {
            let p = self.param(table, &table.id_column, 1).await?;
            sql.push_str(&format!(" WHERE {} > {p}", table.id));
            binds.push(after.clone());
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT {}",
            table.id,
            self.page_size + 1
        ));
        let query = bound(sql, binds);
        let rows = query
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.error(e, table, None))?;
        let has_more = rows.len() > self.page_size;
        let records = rows
            .iter()
            .take(self.page_size)
            .map(|row| self.record(table, row))
            .collect::<Result<Vec<_>, _>>()?;
        let cursor = if has_more {
            let after = records.last().map(|r| r.id.clone());
            Some(encode(&Position::Full { after, mark }))
        } else {
            mark.map(|m| encode(&m))
        };
        Ok(Page {
            records,
            listing: Listing::Full,
            cursor,
            has_more,
        })
    }

    async fn read_triggers(&self, table: &Table, seq: i64) -> Result<Page, ConnectorError> {
        let d = self.dialect;
        let sql = format!(
            "SELECT CAST(seq AS {}), row_id FROM {} WHERE table_name = {} AND seq > {} \
             ORDER BY seq LIMIT {}",
            self.bigint(),
            d.quote(&self.change_table),
            d.param(1),
            d.int_param(2),
            self.page_size
        );
        let entries = sqlx::query(AssertSqlSafe(sql))
            .bind(table.name.clone())
            .bind(seq.to_string())
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.triggers_error(e, table))?;
        let has_more = entries.len() == self.page_size;
        let mut last = seq;
        let mut ids: Vec<String> = Vec::new();
        let mut unique = HashSet::new();
        for entry in &entries {
            last = entry
                .try_get::<i64, _>(0)
                .map_err(|e| self.triggers_error(e, table))?;
            let id: String = entry
                .try_get(1)
                .map_err(|e| self.triggers_error(e, table))?;
            if unique.insert(id.clone()) {
                ids.push(id);
            }
        }
        // The rows as they are now: an id whose row is gone was deleted.
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let found = self.fetch_ids(table, &id_refs).await?;
        let mut by_id: HashMap<String, Record> =
            found.into_iter().map(|r| (r.id.clone(), r)).collect();
        let records = ids
            .into_iter()
            .map(|id| {
                by_id
                    .remove(&id)
                    .unwrap_or_else(|| Record::tombstone(table.kind, id))
            })
            .collect();
        Ok(Page {
            records,
            listing: Listing::Changes,
            cursor: Some(encode(&Position::Triggers { seq: last })),
            has_more,
        })
    }

    async fn read_updated_at(
        &self,
        table: &Table,
        since: i64,
        seen: Vec<(String, i64)>,
        after: Option<(i64, String)>,
    ) -> Result<Page, ConnectorError> {
        let d = self.dialect;
        let Some(column) = &table.updated_at else {
            return Err(ConnectorError::config(format!(
                "table `{}`: `changes = \"updated_at\"` needs `updated_at`",
                table.name
            )));
        };
        let epoch = d.epoch_micros(column);
        let select = format!(
            "SELECT {}, {epoch} FROM {}",
            self.select_list(table),
            table.quoted
        );
        let mut binds = Vec::new();
        let filter = match &after {
            None => {
                binds.push((since - table.overlap_micros).to_string());
                format!("{epoch} >= {}", d.int_param(1))
            }
            Some((time, id)) => {
                binds.push(time.to_string());
                binds.push(time.to_string());
                binds.push(id.clone());
                let id_param = self.param(table, &table.id_column, 3).await?;
                format!(
                    "({epoch} > {} OR ({epoch} = {} AND {} > {id_param}))",
                    d.int_param(1),
                    d.int_param(2),
                    table.id
                )
            }
        };
        let sql = format!(
            "{select} WHERE {filter} ORDER BY {epoch}, {} LIMIT {}",
            table.id, self.page_size
        );
        let query = bound(sql, binds);
        let rows = query
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.error(e, table, None))?;
        let has_more = rows.len() == self.page_size;
        let seen_set: HashSet<(String, i64)> = seen.iter().cloned().collect();
        let time_at = table.columns.len() + 3;
        let mut newest = since;
        let mut all = seen;
        let mut records = Vec::new();
        let mut last = None;
        for row in &rows {
            let record = self.record(table, row)?;
            let time: Option<i64> = row
                .try_get(time_at)
                .map_err(|e| self.error(e, table, Some(&record.id)))?;
            let time = time.unwrap_or(0);
            newest = newest.max(time);
            last = Some((time, record.id.clone()));
            let key = (record.id.clone(), time);
            if !seen_set.contains(&key) {
                all.push(key);
                records.push(record);
            }
        }
        // Remember what the next overlap window will return again.
        let window_start = newest - table.overlap_micros;
        all.retain(|(_, t)| *t >= window_start);
        all.sort();
        all.dedup();
        let position = Position::UpdatedAt {
            since: newest,
            seen: all,
            after: if has_more { last } else { None },
        };
        Ok(Page {
            records,
            listing: Listing::Changes,
            cursor: Some(encode(&position)),
            has_more,
        })
    }

    async fn fetch_ids(&self, table: &Table, ids: &[&str]) -> Result<Vec<Record>, ConnectorError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut possible = Vec::with_capacity(ids.len());
        for id in ids {
            if self.possible_id(table, id).await? {
                possible.push(*id);
            }
        }
        let ids = &possible;
        for chunk in ids.chunks(500) {
            let mut params = Vec::with_capacity(chunk.len());
            for n in 1..=chunk.len() {
                params.push(self.param(table, &table.id_column, n).await?);
            }
            if params.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT {} FROM {} WHERE {} IN ({}) ORDER BY {}",
                self.select_list(table),
                table.quoted,
                table.id,
                params.join(", "),
                table.id
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind((*id).to_owned());
            }
            let rows = query
                .fetch_all(self.pool())
                .await
                .map_err(|e| self.error(e, table, None))?;
            for row in &rows {
                out.push(self.record(table, row)?);
            }
        }
        Ok(out)
    }

    /// Runs one operation inside the batch's transaction.
    async fn apply(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        op: &WriteOp,
    ) -> Result<Written, ConnectorError> {
        match op {
            WriteOp::Create { fields, .. } => self.create(conn, table, fields).await,
            WriteOp::Update {
                id,
                version,
                changes,
            } => {
                self.update(conn, table, id, version.as_deref(), changes)
                    .await
            }
            WriteOp::Delete { id, version } => {
                self.delete(conn, table, id, version.as_deref()).await
            }
        }
    }

    async fn create(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        fields: &Fields,
    ) -> Result<Written, ConnectorError> {
        let d = self.dialect;
        let key = table
            .idempotency_key
            .as_ref()
            .map(|_| format!("{:016x}", fields.content_hash()));
        if let (Some(column), Some(key)) = (&table.idempotency_key, &key) {
            let p = self.param(table, column, 1).await?;
            let sql = format!(
                "SELECT {} FROM {} WHERE {} = {p}",
                self.written_list(table),
                table.quoted,
                d.quote(column)
            );
            let existing = sqlx::query(AssertSqlSafe(sql))
                .bind(key.clone())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.error(e, table, None))?;
            if let Some(row) = existing {
                // A create that was carried out before (its reply lost): the same row.
                return self.written(table, &row);
            }
        }
        let mut columns = Vec::new();
        let mut values = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        for (name, column, quoted) in &table.columns {
            if let Some(value) = fields.get(name)
                && !value.is_empty()
            {
                binds.push(value.to_cell());
                columns.push(quoted.clone());
                values.push(self.param(table, column, binds.len()).await?);
            }
        }
        if let Version::Counter(c) = &table.version {
            columns.push(c.clone());
            values.push("1".into());
        }
        if let Some(u) = &table.updated_at {
            columns.push(u.clone());
            values.push(d.now().into());
        }
        if let (Some(column), Some(key)) = (&table.idempotency_key, key) {
            binds.push(key);
            columns.push(d.quote(column));
            values.push(self.param(table, column, binds.len()).await?);
        }
        let mut sql = if columns.is_empty() {
            d.insert_defaults(&table.quoted)
        } else {
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                table.quoted,
                columns.join(", "),
                values.join(", ")
            )
        };
        if d.returning() {
            sql.push_str(&format!(" RETURNING {}", self.written_list(table)));
            let query = bound(sql, binds);
            let row = query
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.error(e, table, None))?;
            return self.written(table, &row);
        }
        let query = bound(sql, binds);
        let done = query
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e, table, None))?;
        let id = match done.last_insert_id() {
            Some(id) if id > 0 => id.to_string(),
            _ => {
                return Err(ConnectorError::config(format!(
                    "table `{}`: the database gave no id for a new row; Tandem creates rows on {} only in tables whose `{}` column is AUTO_INCREMENT",
                    table.name,
                    d.name(),
                    table.id_column
                )));
            }
        };
        self.read_back(conn, table, &id).await?.ok_or_else(|| {
            ConnectorError::transient(format!(
                "table `{}`: row {id} vanished right after its insert",
                table.name
            ))
        })
    }

    /// The id, version and time of row `id`, inside the transaction.
    async fn read_back(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        id: &str,
    ) -> Result<Option<Written>, ConnectorError> {
        if !self.possible_id(table, id).await? {
            return Ok(None);
        }
        let p = self.param(table, &table.id_column, 1).await?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = {p}",
            self.written_list(table),
            table.quoted,
            table.id
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.error(e, table, Some(id)))?;
        row.map(|row| self.written(table, &row)).transpose()
    }

    /// Why a write that matched no row failed: the row is gone, or its version moved.
    async fn missed(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        id: &str,
    ) -> Result<ConnectorError, ConnectorError> {
        Ok(match self.read_back(conn, table, id).await? {
            Some(_) => ConnectorError::Conflict { id: id.to_owned() },
            None => ConnectorError::NotFound { id: id.to_owned() },
        })
    }

    async fn update(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        id: &str,
        version: Option<&str>,
        changes: &Changes,
    ) -> Result<Written, ConnectorError> {
        let d = self.dialect;
        if !self.possible_id(table, id).await? {
            return Err(ConnectorError::NotFound { id: id.to_owned() });
        }
        let mut sets = Vec::new();
        let mut binds: Vec<Option<String>> = Vec::new();
        for (name, value) in changes {
            let Some((_, column, quoted)) =
                table.columns.iter().find(|(f, _, _)| f == name.as_str())
            else {
                continue;
            };
            if value.is_empty() {
                sets.push(format!("{quoted} = NULL"));
            } else {
                binds.push(Some(value.to_cell()));
                sets.push(format!(
                    "{quoted} = {}",
                    self.param(table, column, binds.len()).await?
                ));
            }
        }
        let version_check = self.version_expr(table).zip(version);
        if sets.is_empty() {
            // Nothing this table holds changes: the row as it is, if the version holds.
            let current = self.read_back(conn, table, id).await?;
            return match current {
                None => Err(ConnectorError::NotFound { id: id.to_owned() }),
                Some(w) if version_check.is_some() && w.version.as_deref() != version => {
                    Err(ConnectorError::Conflict { id: id.to_owned() })
                }
                Some(w) => Ok(w),
            };
        }
        if let Version::Counter(c) = &table.version {
            sets.push(format!("{c} = {c} + 1"));
        }
        if let Some(u) = &table.updated_at {
            sets.push(format!("{u} = {}", d.now()));
        }
        binds.push(Some(id.to_owned()));
        let mut sql = format!(
            "UPDATE {} SET {} WHERE {} = {}",
            table.quoted,
            sets.join(", "),
            table.id,
            self.param(table, &table.id_column, binds.len()).await?
        );
        if let Some((expr, v)) = &version_check {
            binds.push(Some((*v).to_owned()));
            sql.push_str(&format!(" AND {expr} = {}", d.param(binds.len())));
        }
        if d.returning() {
            sql.push_str(&format!(" RETURNING {}", self.written_list(table)));
            let query = bound(sql, binds);
            let row = query
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.error(e, table, Some(id)))?;
            return match row {
                Some(row) => self.written(table, &row),
                None => Err(self.missed(conn, table, id).await?),
            };
        }
        let query = bound(sql, binds);
        let done = query
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e, table, Some(id)))?;
        if done.rows_affected() == 0 {
            // MySQL counts changed rows, not matched ones: a row written with the values
            // it had (and no version column to bump) matched without changing.
            let unchanged_ok = version_check.is_none()
                && matches!(table.version, Version::None)
                && table.updated_at.is_none();
            let current = self.read_back(conn, table, id).await?;
            return match current {
                Some(w) if unchanged_ok => Ok(w),
                Some(_) => Err(ConnectorError::Conflict { id: id.to_owned() }),
                None => Err(ConnectorError::NotFound { id: id.to_owned() }),
            };
        }
        self.read_back(conn, table, id)
            .await?
            .ok_or_else(|| ConnectorError::NotFound { id: id.to_owned() })
    }

    async fn delete(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        id: &str,
        version: Option<&str>,
    ) -> Result<Written, ConnectorError> {
        let d = self.dialect;
        if !self.possible_id(table, id).await? {
            return Err(ConnectorError::NotFound { id: id.to_owned() });
        }
        let mut sql = format!(
            "DELETE FROM {} WHERE {} = {}",
            table.quoted,
            table.id,
            self.param(table, &table.id_column, 1).await?
        );
        let mut binds = vec![id.to_owned()];
        if let (Some(expr), Some(v)) = (self.version_expr(table), version) {
            binds.push(v.to_owned());
            sql.push_str(&format!(" AND {expr} = {}", d.param(2)));
        }
        let query = bound(sql, binds);
        let done = query
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e, table, Some(id)))?;
        if done.rows_affected() == 0 {
            return Err(self.missed(conn, table, id).await?);
        }
        Ok(Written {
            id: id.to_owned(),
            version: None,
            modified_at: None,
        })
    }

    /// Installs the change table and, on every table with `changes = "triggers"`, the
    /// triggers that record inserts, updates and deletes in it. Idempotent: triggers
    /// that exist are replaced. Returns what was installed, one line each.
    pub async fn install_triggers(&self) -> Result<Vec<String>, ConnectorError> {
        let tables: Vec<&Table> = self
            .tables
            .values()
            .filter(|t| t.changes == ChangeSource::Triggers)
            .collect();
        if tables.is_empty() {
            return Err(ConnectorError::config(
                "no kind of this connector has `changes = \"triggers\"`; set it on the kinds whose changes the triggers should record",
            ));
        }
        let mut statements = triggers::change_table(self.dialect, &self.change_table);
        let mut done = vec![format!("change table `{}`", self.change_table)];
        for table in &tables {
            statements.extend(triggers::table_triggers(
                self.dialect,
                &self.change_table,
                &table.name,
                &table.id_column,
            ));
            done.push(format!(
                "triggers on `{}` ({}s) recording inserts, updates and deletes",
                table.name, table.kind
            ));
        }
        // One connection, one transaction where the database has transactional DDL:
        // all triggers or none.
        let table = tables[0];
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|e| self.error(e, table, None))?;
        for statement in &statements {
            let result = if self.dialect == Dialect::MySql {
                // Text protocol: MySQL refuses `CREATE TRIGGER` as a prepared statement.
                sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                    .execute(&mut *tx)
                    .await
            } else {
                sqlx::query(AssertSqlSafe(statement.clone()))
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
            };
            result.map_err(|e| self.error(e, table, None))?;
        }
        tx.commit().await.map_err(|e| self.error(e, table, None))?;
        Ok(done)
    }
}

impl Table {
    fn new(dialect: Dialect, kind: EntityKind, k: &KindSettings) -> Table {
        let version = match k.version.as_deref() {
            Some("xmin") if dialect == Dialect::Postgres => Version::Xmin,
            Some(c) => Version::Counter(dialect.quote(c)),
            None => match &k.updated_at {
                Some(u) => Version::UpdatedAt(dialect.quote(u)),
                None => Version::None,
            },
        };
        Table {
            kind,
            name: k.table.clone(),
            quoted: dialect.quote(&k.table),
            id_column: k.id.clone(),
            id: dialect.quote(&k.id),
            columns: k
                .columns
                .iter()
                .map(|(f, c)| (f.clone(), c.clone(), dialect.quote(c)))
                .collect(),
            version,
            updated_at: k.updated_at.as_ref().map(|u| dialect.quote(u)),
            changes: k.changes,
            overlap_micros: k.overlap.as_micros().min(i64::MAX as u128) as i64,
            idempotency_key: k.idempotency_key.clone(),
            pg_types: OnceCell::new(),
        }
    }
}

#[async_trait::async_trait]
impl Connector for SqlConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: self.tables.keys().copied().collect(),
            incremental: self
                .tables
                .values()
                .all(|t| t.changes != ChangeSource::Full),
            write: true,
            delete: true,
            max_batch: self.batch_size,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        for table in self.tables.values() {
            let sql = format!(
                "SELECT {} FROM {} WHERE 1 = 0",
                self.select_list(table),
                table.quoted
            );
            sqlx::query(AssertSqlSafe(sql))
                .fetch_all(self.pool())
                .await
                .map_err(|e| self.error(e, table, None))?;
            if table.changes == ChangeSource::Triggers {
                self.change_mark(table).await?;
            }
            if self.dialect == Dialect::Postgres {
                self.pg_types(table).await?;
            }
        }
        Ok(())
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        let table = self.table(kind)?;
        let position = match cursor {
            None => None,
            Some(c) => Some(serde_json::from_str::<Position>(&c.0).map_err(|_| {
                ConnectorError::config(format!(
                    "the stored cursor of the {} table `{}` is not one this connector made; reset the connector's cursor",
                    kind, table.name
                ))
            })?),
        };
        match (table.changes, position) {
            (_, None) => self.read_full(table, None, None).await,
            (_, Some(Position::Full { after, mark })) => self.read_full(table, after, mark).await,
            (ChangeSource::Triggers, Some(Position::Triggers { seq })) => {
                self.read_triggers(table, seq).await
            }
            (ChangeSource::UpdatedAt, Some(Position::UpdatedAt { since, seen, after })) => {
                self.read_updated_at(table, since, seen, after).await
            }
            // The settings changed since the cursor was made: start over with a listing.
            (_, Some(_)) => self.read_full(table, None, None).await,
        }
    }

    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        let table = self.table(kind)?;
        let unique: Vec<&str> = {
            let mut seen = HashSet::new();
            ids.iter().copied().filter(|id| seen.insert(*id)).collect()
        };
        self.fetch_ids(table, &unique).await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let table = self.table(kind)?;
        if ops.len() > self.batch_size {
            return Err(ConnectorError::config(format!(
                "{} operations in one call; this connector takes at most {} (`batch_size`)",
                ops.len(),
                self.batch_size
            )));
        }
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|e| self.error(e, table, None))?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in &ops {
            if let Err(e) = check_names(kind, op) {
                outcomes.push(Err(e));
                continue;
            }
            self.savepoint(&mut tx, "SAVEPOINT tandem_op", table)
                .await?;
            match self.apply(&mut tx, table, op).await {
                Ok(written) => {
                    self.savepoint(&mut tx, "RELEASE SAVEPOINT tandem_op", table)
                        .await?;
                    outcomes.push(Ok(written));
                }
                Err(e) if e.is_record_error() => {
                    self.savepoint(&mut tx, "ROLLBACK TO SAVEPOINT tandem_op", table)
                        .await?;
                    outcomes.push(Err(e));
                }
                // The connection or the configuration: nothing of the batch is kept.
                Err(e) => return Err(e),
            }
        }
        tx.commit().await.map_err(|e| self.error(e, table, None))?;
        Ok(outcomes)
    }
}

impl SqlConnector {
    async fn savepoint(
        &self,
        conn: &mut AnyConnection,
        statement: &'static str,
        table: &Table,
    ) -> Result<(), ConnectorError> {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, table, None))
    }
}

/// A write may name canonical fields of the kind and `x_` extras; anything else is a
/// mistake worth reporting, not a field to drop.
fn check_names(kind: EntityKind, op: &WriteOp) -> Result<(), ConnectorError> {
    let names: Vec<&str> = match op {
        WriteOp::Create { fields, .. } => fields.iter().map(|(n, _)| n.as_str()).collect(),
        WriteOp::Update { changes, .. } => changes.keys().map(|n| n.as_str()).collect(),
        WriteOp::Delete { .. } => Vec::new(),
    };
    match names
        .into_iter()
        .find(|n| !field::is_canonical_for(kind, n) && !field::is_extra(n))
    {
        Some(name) => Err(ConnectorError::invalid(
            op.id(),
            format!("`{name}` is neither a canonical field of a {kind} nor an `x_` extra"),
        )),
        None => Ok(()),
    }
}

/// A column's text as a field value: lists (business relations) come back as lists.
fn field_value(name: &str, text: String) -> Value {
    if name == field::BUSINESS_RELATIONS {
        Value::list(
            text.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    } else {
        Value::text(text)
    }
}

fn encode(position: &Position) -> Cursor {
    Cursor(serde_json::to_string(position).expect("a cursor serialises"))
}

/// A relative SQLite path resolves against the config file's folder.
fn resolve_sqlite_path(url: &str, context: &BuildContext) -> String {
    let rest = &url["sqlite://".len()..];
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path.starts_with('/') || path.starts_with(':') {
        return url.to_owned();
    }
    let resolved = context.resolve(std::path::Path::new(path));
    match query {
        Some(q) => format!("sqlite://{}?{q}", resolved.display()),
        None => format!("sqlite://{}", resolved.display()),
    }
}

/// The password of `scheme://user:password@host/...`, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

fn redact(message: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() => message.replace(p, "[REDACTED]"),
        _ => message.to_owned(),
    }
}

/// Sorts a database error into the connector's error kinds.
fn classify(
    e: sqlx::Error,
    place: &str,
    password: Option<&str>,
    id: Option<&str>,
) -> ConnectorError {
    let text = redact(&e.to_string(), password);
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = format!("{place}: {text}");
            let lower = text.to_ascii_lowercase();
            // SQLSTATE classes (PostgreSQL, MySQL's sqlstate) and MySQL's/SQLite's own codes.
            let auth = code.starts_with("28") || code == "1045" || code == "1044";
            let config = code.starts_with("42")
                || code == "3D000"
                || ["1049", "1054", "1146", "1142", "1143"].contains(&code.as_str())
                || lower.contains("no such table")
                || lower.contains("no such column");
            let transient = code.starts_with("40")
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || ["1205", "1213", "5", "6", "261", "517"].contains(&code.as_str());
            if auth {
                ConnectorError::Auth { message }
            } else if transient {
                ConnectorError::transient(message)
            } else if config {
                ConnectorError::config(message)
            } else {
                // Constraints, bad values for a column's type: this record only.
                ConnectorError::invalid(id, message)
            }
        }
        sqlx::Error::Configuration(_) => ConnectorError::config(format!("{place}: {text}")),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            ConnectorError::fatal(format!("{place}: a value could not be read: {text}"))
        }
        _ => ConnectorError::transient(format!("{place}: {text}")),
    }
}

/// `sql` with `binds` bound to its parameters in order.
fn bound<T>(
    sql: String,
    binds: impl IntoIterator<Item = T>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>
where
    T: 'static + Send + sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    binds
        .into_iter()
        .fold(sqlx::query(AssertSqlSafe(sql)), |query, b| query.bind(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_found_and_redacted() {
        let url = "postgres://shop:s3cret@db.example:5432/shop?sslmode=require";
        let password = url_password(url);
        assert_eq!(password.as_deref(), Some("s3cret"));
        assert_eq!(
            redact(
                "cannot connect to postgres://shop:s3cret@db",
                password.as_deref()
            ),
            "cannot connect to postgres://shop:[REDACTED]@db"
        );
        assert_eq!(url_password("sqlite://data/shop.db"), None);
    }

    #[test]
    fn relative_sqlite_paths_resolve_against_the_config_folder() {
        let context = BuildContext {
            base_dir: "/etc/tandem".into(),
        };
        assert_eq!(
            resolve_sqlite_path("sqlite://shop.db?mode=rwc", &context),
            "sqlite:///etc/tandem/shop.db?mode=rwc"
        );
        assert_eq!(
            resolve_sqlite_path("sqlite:///var/shop.db", &context),
            "sqlite:///var/shop.db"
        );
    }

    #[test]
    fn settings_name_the_offending_key() {
        let context = BuildContext {
            base_dir: "/tmp".into(),
        };
        let err = SqlConnector::from_settings(
            serde_json::json!({
                "url": "sqlite://x.db",
                "kinds": {"customer": {"table": "customers", "columns": {"nmae": "name"}}}
            }),
            &context,
        )
        .unwrap_err();
        assert!(err.to_string().contains("kinds.customer.columns"), "{err}");
        assert!(err.to_string().contains("nmae"), "{err}");
        let err = SqlConnector::from_settings(
            serde_json::json!({
                "url": "sqlite://x.db",
                "kinds": {"customer": {"table": "customers; DROP TABLE x", "columns": {}}}
            }),
            &context,
        )
        .unwrap_err();
        assert!(err.to_string().contains("kinds.customer.table"), "{err}");
        let err = SqlConnector::from_settings(
            serde_json::json!({
                "url": "sqlite://x.db",
                "kinds": {"customer": {"table": "c", "columns": {}, "changes": "updated_at"}}
            }),
            &context,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("kinds.customer.updated_at"),
            "{err}"
        );
        let err = SqlConnector::from_settings(
            serde_json::json!({
                "url": "sqlite://x.db",
                "kinds": {
                    "customer": {"table": "c", "columns": {}, "changes": "triggers"},
                    "vendor": {"table": "v", "columns": {}}
                }
            }),
            &context,
        )
        .unwrap_err();
        assert!(err.to_string().contains("kinds.vendor.changes"), "{err}");
    }
}
