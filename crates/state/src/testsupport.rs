//! The state a test runs on (cargo feature `testsupport`), so that one test suite runs
//! on every store.
//!
//! By default a test gets a SQLite file, as a deployment would. When
//! `TANDEM_TEST_STATE_URL` names a PostgreSQL server (`postgres://tandem@127.0.0.1:PORT/`,
//! as `scripts/test` exports for its second pass), each [`TestState`] is a database of
//! its own on that server, created with a unique name by PostgreSQL's `createdb` (from
//! `$TANDEM_POSTGRES_BIN`, else the `PATH`) and dropped with the value.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Access, LockMode, StateError, StateStore, StoreKind, open, redact_url};

/// The variable naming the PostgreSQL server tests keep their states on.
pub const STATE_URL_VAR: &str = "TANDEM_TEST_STATE_URL";

/// Where one test keeps its state: a SQLite file, or a fresh PostgreSQL database.
/// Dropping it drops the database (the SQLite file goes with its folder).
#[derive(Debug)]
pub struct TestState {
    url: String,
    base_dir: PathBuf,
    database: Option<Database>,
    _dir: Option<tempfile::TempDir>,
}

/// A database this process created on the test server.
#[derive(Debug)]
struct Database {
    /// The server's url with the database to connect to while creating and dropping.
    maintenance_url: String,
    name: String,
}

impl TestState {
    /// A fresh state: the file `state.db` in a new temporary folder, or a new database
    /// on the server of `TANDEM_TEST_STATE_URL`.
    ///
    /// # Panics
    /// When no temporary folder or database can be made.
    // No `Default`: making a state may make a database, which `new` says better.
    #[allow(clippy::new_without_default)]
    pub fn new() -> TestState {
        let dir = tempfile::tempdir().expect("a temporary folder for the state");
        let mut state = TestState::or_sqlite("sqlite://state.db", dir.path());
        state._dir = Some(dir);
        state
    }

    /// The state at `sqlite_url` (a relative path taken from `base_dir`, which the
    /// caller keeps), or a new database on the server of `TANDEM_TEST_STATE_URL`.
    ///
    /// # Panics
    /// When the variable holds no PostgreSQL url, or the database cannot be created.
    pub fn or_sqlite(sqlite_url: &str, base_dir: &Path) -> TestState {
        let server = std::env::var(STATE_URL_VAR)
            .ok()
            .filter(|url| !url.is_empty());
        let Some(server) = server else {
            return TestState::sqlite(sqlite_url, base_dir);
        };
        let database = Database::create(&server, None);
        TestState {
            url: with_database(&server, &database.name),
            base_dir: base_dir.to_owned(),
            database: Some(database),
            _dir: None,
        }
    }

    /// A new database on the PostgreSQL server at `server` (a url naming any of its
    /// databases), whatever `TANDEM_TEST_STATE_URL` says: for a test of what only a
    /// shared state can do (several workers).
    ///
    /// # Panics
    /// When `server` is no PostgreSQL url, or the database cannot be created.
    pub fn on_server(server: &str, base_dir: &Path) -> TestState {
        let database = Database::create(server, None);
        TestState {
            url: with_database(server, &database.name),
            base_dir: base_dir.to_owned(),
            database: Some(database),
            _dir: None,
        }
    }

    /// The SQLite state at `sqlite_url` whatever `TANDEM_TEST_STATE_URL` says: for a
    /// test of what only a file can go through (a file of 0 bytes, a lock file).
    pub fn sqlite(sqlite_url: &str, base_dir: &Path) -> TestState {
        TestState {
            url: sqlite_url.to_owned(),
            base_dir: base_dir.to_owned(),
            database: None,
            _dir: None,
        }
    }

    /// A copy of this state for a copy of its test's folder at `base_dir`: on
    /// PostgreSQL a new database made from this one (no connection to it may be open);
    /// on SQLite the same url taken from `base_dir`, where the caller copied the file.
    ///
    /// # Panics
    /// When the database cannot be copied.
    pub fn copy_to(&self, base_dir: &Path) -> TestState {
        let (url, database) = match &self.database {
            None => (self.url.clone(), None),
            Some(source) => {
                let copy = Database::create(&source.maintenance_url, Some(&source.name));
                (with_database(&self.url, &copy.name), Some(copy))
            }
        };
        TestState {
            url,
            base_dir: base_dir.to_owned(),
            database,
            _dir: None,
        }
    }

    /// The state's url, for a config's `[state] url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The folder a relative SQLite path is taken from.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The store that holds the state.
    pub fn kind(&self) -> StoreKind {
        match self.database {
            Some(_) => StoreKind::Postgres,
            None => StoreKind::Sqlite,
        }
    }

    /// Opens the state for `access`, as `tandem` does.
    pub fn open_for(&self, access: Access) -> Result<Box<dyn StateStore>, StateError> {
        open(&self.url, &self.base_dir, access)
    }

    /// Opens the state to write it, with the lock `mode`.
    ///
    /// # Panics
    /// When it does not open.
    pub fn open(&self, mode: LockMode) -> Box<dyn StateStore> {
        self.open_for(Access::Lock(mode))
            .unwrap_or_else(|e| panic!("cannot open the test state {}: {e}", self.shown()))
    }

    fn shown(&self) -> String {
        redact_url(&self.url)
    }
}

impl Database {
    /// Creates a database with a name no other test uses: empty, or a copy of
    /// `template`.
    fn create(server: &str, template: Option<&str>) -> Database {
        match StoreKind::of_url(server) {
            Ok(StoreKind::Postgres) => {}
            _ => panic!(
                "{STATE_URL_VAR} is `{}`: it must name a PostgreSQL server, \
                 postgres://<user>@<host>:<port>/",
                redact_url(server)
            ),
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "tandem_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let maintenance_url = if database_of(server).is_empty() {
            with_database(server, "postgres")
        } else {
            server.to_owned()
        };
        let database = Database {
            maintenance_url,
            name,
        };
        let options: Vec<String> = template
            .map(|t| format!("--template={t}"))
            .into_iter()
            .collect();
        let out = database
            .command("createdb", &options)
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb ({e}); {}", where_programs_are()));
        assert!(
            out.status.success(),
            "createdb {} on {} failed: {}",
            database.name,
            redact_url(server),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        database
    }

    /// `program --maintenance-db=<url> <options> <name>`, a client program of
    /// PostgreSQL.
    fn command(&self, program: &str, options: &[String]) -> Command {
        let program = match std::env::var_os("TANDEM_POSTGRES_BIN") {
            Some(bin) => Path::new(&bin).join(program),
            None => PathBuf::from(program),
        };
        let mut cmd = Command::new(program);
        cmd.arg(format!("--maintenance-db={}", self.maintenance_url))
            .args(options)
            .arg(&self.name);
        cmd
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort: the test server is thrown away at the end anyway. `--force`
        // ends connections a failed test left open.
        let options = ["--if-exists".to_owned(), "--force".to_owned()];
        let _ = self.command("dropdb", &options).output();
    }
}

fn where_programs_are() -> String {
    match std::env::var("TANDEM_POSTGRES_BIN") {
        Ok(bin) => format!("TANDEM_POSTGRES_BIN is {bin}"),
        Err(_) => "set TANDEM_POSTGRES_BIN (`eval \"$(bash scripts/sql-env)\"`)".to_owned(),
    }
}

/// The database part of a PostgreSQL url (between the host and the query).
fn database_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    rest.split_once('/').map_or("", |(_, database)| database)
}

/// `url` naming the database `name` instead of its own, with its query kept.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query
        .split_once('/')
        .map_or(before_query, |(authority, _)| authority);
    match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_database_url_keeps_the_server_and_its_options() {
        assert_eq!(
            with_database("postgres://tandem@127.0.0.1:5433/", "t1"),
            "postgres://tandem@127.0.0.1:5433/t1"
        );
        assert_eq!(
            with_database("postgresql://u:pw@h:1/postgres?sslmode=disable", "t2"),
            "postgresql://u:pw@h:1/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t3"), "postgres://h/t3");
        assert_eq!(database_of("postgres://h:1/"), "");
        assert_eq!(database_of("postgres://h:1"), "");
        assert_eq!(database_of("postgres://h:1/db?x=1"), "db");
    }
}
