//! What differs between PostgreSQL, MariaDB/MySQL and SQLite in the SQL the connector
//! writes: quoting, placeholders, casts, "now", epoch times and `RETURNING`.

use tandem_connector::ConnectorError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// The database a URL names, and the URL as sqlx wants it (`mariadb://` is
    /// `mysql://` to the driver).
    pub fn from_url(url: &str) -> Result<(Dialect, String), ConnectorError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok((Dialect::Postgres, url.to_owned())),
            "mysql" => Ok((Dialect::MySql, url.to_owned())),
            "mariadb" => Ok((Dialect::MySql, format!("mysql{}", &url["mariadb".len()..]))),
            "sqlite" => Ok((Dialect::Sqlite, url.to_owned())),
            _ => Err(ConnectorError::config(
                "`url` must start with postgres://, mysql://, mariadb:// or sqlite://",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MariaDB/MySQL",
            Dialect::Sqlite => "SQLite",
        }
    }

    /// A quoted identifier; `schema.table` is quoted part by part. Names are checked
    /// plain identifiers (see `settings`), so quoting never needs escaping.
    pub fn quote(self, name: &str) -> String {
        let q = if self == Dialect::MySql { '`' } else { '"' };
        name.split('.')
            .map(|part| format!("{q}{part}{q}"))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The placeholder of parameter number `n` (1-based).
    pub fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".into(),
        }
    }

    /// A value read as text, whatever the column's type: every value crosses as text.
    pub fn text(self, expr: &str) -> String {
        match self {
            Dialect::MySql => format!("CAST({expr} AS CHAR)"),
            Dialect::Postgres | Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// The current time as the database writes it into a timestamp column, distinct
    /// for each statement.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "clock_timestamp()",
            Dialect::MySql => "NOW(6)",
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
        }
    }

    /// A timestamp column as microseconds since the Unix epoch (UTC), so that the
    /// connector can compare and window times without parsing each database's format.
    pub fn epoch_micros(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => {
                format!("CAST(ROUND(EXTRACT(EPOCH FROM {expr}) * 1000000) AS BIGINT)")
            }
            Dialect::MySql => format!("CAST(ROUND(UNIX_TIMESTAMP({expr}) * 1000000) AS SIGNED)"),
            // julianday is a double: round to milliseconds, which it holds exactly.
            Dialect::Sqlite => {
                format!(
                    "(CAST(ROUND((julianday({expr}) - 2440587.5) * 86400000) AS INTEGER) * 1000)"
                )
            }
        }
    }

    /// A parameter as an integer (bound as text, since every value crosses as text).
    pub fn int_param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("CAST(${n} AS BIGINT)"),
            Dialect::MySql => "CAST(? AS SIGNED)".into(),
            Dialect::Sqlite => "CAST(? AS INTEGER)".into(),
        }
    }

    /// Whether `INSERT`/`UPDATE`/`DELETE ... RETURNING` exist. MariaDB has it for
    /// `INSERT` and `DELETE` only and MySQL not at all, so MySQL-family databases read
    /// back with a `SELECT` in the same transaction.
    pub fn returning(self) -> bool {
        self != Dialect::MySql
    }

    /// `INSERT` of a row with every column at its default.
    pub fn insert_defaults(self, table: &str) -> String {
        match self {
            Dialect::MySql => format!("INSERT INTO {table} () VALUES ()"),
            Dialect::Postgres | Dialect::Sqlite => format!("INSERT INTO {table} DEFAULT VALUES"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_database() {
        assert_eq!(
            Dialect::from_url("mariadb://u@h/db").unwrap(),
            (Dialect::MySql, "mysql://u@h/db".into())
        );
        assert_eq!(
            Dialect::from_url("postgresql://h/db").unwrap().0,
            Dialect::Postgres
        );
        assert_eq!(
            Dialect::from_url("sqlite://x.db").unwrap().0,
            Dialect::Sqlite
        );
        let err = Dialect::from_url("oracle://scott:tiger@h/db").unwrap_err();
        assert!(!err.to_string().contains("tiger"), "{err}");
    }

    #[test]
    fn identifiers_are_quoted_per_part() {
        assert_eq!(
            Dialect::Postgres.quote("sales.customers"),
            "\"sales\".\"customers\""
        );
        assert_eq!(Dialect::MySql.quote("customers"), "`customers`");
    }
}
