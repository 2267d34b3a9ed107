//! The settings of a `type = "sql"` connector, as the config gives them.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tandem_connector::ConnectorError;
use tandem_model::{EntityKind, field};

/// `[connectors.<name>]` with `type = "sql"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `postgres://user:password@host:port/db?sslmode=require`,
    /// `mysql://user:password@host:port/db` (`mariadb://` too), or `sqlite://path`.
    /// A secret: it may hold a password, so it is never logged.
    pub url: SecretString,
    /// The most operations one write call (one transaction) carries. Default 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Rows per page of a read. Default 500.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Connections the connector keeps open at most. Default 4.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// The change table `tandem sql install-triggers` creates and its triggers fill.
    /// Default `tandem_changes`.
    #[serde(default = "default_change_table")]
    pub change_table: String,
    /// One table per record kind: `[connectors.<name>.kinds.customer]`.
    pub kinds: BTreeMap<EntityKind, KindSettings>,
}

/// How incremental reads find changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// Every read is a full listing; the engine diffs it (deletes from completed listings).
    #[default]
    Full,
    /// Rows whose `updated_at` is newer than the last read, with an overlap window.
    /// Hard deletes are not seen this way (see docs/connectors/sql.md).
    UpdatedAt,
    /// The change table that `tandem sql install-triggers` fills, deletes included.
    Triggers,
}

/// `[connectors.<name>.kinds.<kind>]`: the table that holds one record kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSettings {
    /// The table, optionally with its schema (`sales.customers`).
    pub table: String,
    /// The primary key column, the record's id. Default `id`.
    #[serde(default = "default_id")]
    pub id: String,
    /// Canonical field (or `x_` extra) -> column. Columns not named here are never
    /// read or written.
    pub columns: BTreeMap<String, String>,
    /// The version of a row: an integer column that every write increments (`version`),
    /// `xmin` (PostgreSQL's row version), or unset to use `updated_at` (when set) or no
    /// version at all (no conflict checks).
    #[serde(default)]
    pub version: Option<String>,
    /// A timestamp column set on every write; the record's modification time, its
    /// version without `version`, and the change marker of `changes = "updated_at"`.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// How incremental reads find changes: `full` (default), `updated_at`, `triggers`.
    #[serde(default)]
    pub changes: ChangeSource,
    /// How far back `changes = "updated_at"` reads again, for rows committed late with
    /// an earlier timestamp. Default 5s.
    #[serde(default = "default_overlap", with = "humantime_serde_compat")]
    pub overlap: Duration,
    /// A column that stores a key derived from a create's content; a create whose key is
    /// already there returns that row instead of inserting a second one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `overlap = "5s"` as a humantime duration.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|_| serde::de::Error::custom("expected a duration such as \"5s\" or \"2min\""))
    }
}

fn default_batch_size() -> usize {
    100
}
fn default_page_size() -> usize {
    500
}
fn default_max_connections() -> u32 {
    4
}
fn default_change_table() -> String {
    "tandem_changes".into()
}
fn default_id() -> String {
    "id".into()
}
fn default_overlap() -> Duration {
    Duration::from_secs(5)
}

impl Settings {
    /// Checks what serde cannot: sizes, names, the combinations of version and changes.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        if self.batch_size == 0 || self.page_size == 0 {
            return Err(ConnectorError::config(
                "`batch_size` and `page_size` must be at least 1",
            ));
        }
        if self.kinds.is_empty() {
            return Err(ConnectorError::config(
                "no `kinds`: name at least one table, e.g. [connectors.<name>.kinds.customer] table = \"customers\"",
            ));
        }
        check_identifier("change_table", &self.change_table)?;
        // Whether a connector reads changes is one answer for all its kinds.
        let full: Vec<String> = self
            .kinds
            .iter()
            .filter(|(_, k)| k.changes == ChangeSource::Full)
            .map(|(kind, _)| kind.to_string())
            .collect();
        if !full.is_empty() && full.len() < self.kinds.len() {
            return Err(ConnectorError::config(format!(
                "`kinds.{}.changes` is \"full\" while other kinds read changes: one connector reads all its kinds the same way; set `changes` on every kind, or use two connectors",
                full[0]
            )));
        }
        for (kind, k) in &self.kinds {
            let at = |key: &str| format!("kinds.{kind}.{key}");
            check_identifier(&at("table"), &k.table)?;
            check_identifier(&at("id"), &k.id)?;
            for (name, column) in &k.columns {
                if !field::is_canonical_for(*kind, name) && !field::is_extra(name) {
                    return Err(ConnectorError::config(format!(
                        "`{}`: `{name}` is neither a canonical field of a {kind} nor an `x_` extra",
                        at("columns")
                    )));
                }
                check_identifier(&at(&format!("columns.{name}")), column)?;
            }
            for (key, column) in [
                ("version", &k.version),
                ("updated_at", &k.updated_at),
                ("idempotency_key", &k.idempotency_key),
            ] {
                if let Some(column) = column {
                    check_identifier(&at(key), column)?;
                }
            }
            if k.changes == ChangeSource::UpdatedAt && k.updated_at.is_none() {
                return Err(ConnectorError::config(format!(
                    "`{}` is \"updated_at\" but `{}` names no column",
                    at("changes"),
                    at("updated_at")
                )));
            }
        }
        Ok(())
    }

    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// Names go into SQL text (quoted), so they are plain identifiers, optionally
/// schema-qualified: letters, digits, `_` and `$`, and one `.`.
fn check_identifier(key: &str, name: &str) -> Result<(), ConnectorError> {
    let ok = !name.is_empty()
        && name.split('.').count() <= 2
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        });
    if ok {
        Ok(())
    } else {
        Err(ConnectorError::config(format!(
            "`{key}` = `{name}` is not a plain table or column name (letters, digits, `_`, optionally `schema.table`)"
        )))
    }
}
