//! Opening the state a config url names, whichever store holds it: `sqlite://<path>`
//! is a [`SqliteState`], `postgres://` and `postgresql://` a PostgreSQL database. The
//! command line opens every state through these functions and works on the
//! [`StateStore`] they return, so a store is chosen here and nowhere else.

use std::path::Path;
use std::time::Duration;

use crate::{LockMode, SqliteState, StateError, StateStore};

/// The stores a state url can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `sqlite://<path>`: a file, a relative path taken from the base folder.
    Sqlite,
    /// `postgres://` or `postgresql://`: a database on a PostgreSQL server.
    Postgres,
}

impl StoreKind {
    /// The store `url` names, by its scheme (in any case).
    pub fn of_url(url: &str) -> Result<StoreKind, StateError> {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(StoreKind::Sqlite),
            Some("postgres" | "postgresql") => Ok(StoreKind::Postgres),
            _ => Err(StateError::UnsupportedUrl {
                url: redact_url(url),
            }),
        }
    }
}

/// How a command means to use the state it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Created if missing, migrated, and held with the lock `mode`: commands that
    /// write.
    Lock(LockMode),
    /// An existing state with a shared lock; a missing one is an empty state that
    /// creates nothing ([`open_url_existing`]).
    Existing,
    /// Read only, no lock, beside a running sync; a missing state is empty and nothing
    /// is created ([`open_url_read_only`]).
    ReadOnly,
}

/// Opens (creating it if missing) the state named by a config url, locks it with
/// `mode`, and brings its schema up to date. A relative SQLite path is taken from
/// `base_dir` (usually the config file's folder).
pub fn open_url(
    url: &str,
    base_dir: &Path,
    mode: LockMode,
) -> Result<Box<dyn StateStore>, StateError> {
    open(url, base_dir, Access::Lock(mode))
}

/// [`open_url`] with a lease lifetime for a store that locks with a lease
/// (PostgreSQL, `[state] lease`); SQLite's lock is the open file and has none.
pub fn open_url_with_lease(
    url: &str,
    base_dir: &Path,
    mode: LockMode,
    lease: Duration,
) -> Result<Box<dyn StateStore>, StateError> {
    open_with(url, base_dir, Access::Lock(mode), lease)
}

/// Opens the state named by a config url if it exists, with a shared lock; otherwise
/// returns an empty state and creates nothing (no file, folder, database or table),
/// for commands that must not leave a state behind (`plan`, `check`).
pub fn open_url_existing(url: &str, base_dir: &Path) -> Result<Box<dyn StateStore>, StateError> {
    open(url, base_dir, Access::Existing)
}

/// Opens the state named by a config url for reading only, without waiting for or
/// taking its lock, so that it works while a sync holds it; every write through it
/// fails. A missing state is empty, and nothing is created.
pub fn open_url_read_only(url: &str, base_dir: &Path) -> Result<Box<dyn StateStore>, StateError> {
    open(url, base_dir, Access::ReadOnly)
}

/// Opens the state named by `url` for `access`, in the store its scheme names.
pub fn open(url: &str, base_dir: &Path, access: Access) -> Result<Box<dyn StateStore>, StateError> {
    open_with(url, base_dir, access, crate::postgres::LEASE_TTL)
}

/// [`open`] with the lifetime of a PostgreSQL state's lease.
fn open_with(
    url: &str,
    base_dir: &Path,
    access: Access,
    lease: Duration,
) -> Result<Box<dyn StateStore>, StateError> {
    match StoreKind::of_url(url)? {
        StoreKind::Sqlite => {
            let state = match access {
                Access::Lock(mode) => SqliteState::open_url(url, base_dir, mode)?,
                Access::Existing => SqliteState::open_url_existing(url, base_dir)?,
                Access::ReadOnly => SqliteState::open_url_read_only(url, base_dir)?,
            };
            Ok(Box::new(state))
        }
        StoreKind::Postgres => open_postgres(url, access, lease),
    }
}

/// The PostgreSQL state store: the one place that opens it. A database without a
/// state yet, opened to read, is an empty stand-in, as a missing SQLite file is.
fn open_postgres(
    url: &str,
    access: Access,
    lease: Duration,
) -> Result<Box<dyn StateStore>, StateError> {
    match crate::PgState::open_for(url, access, lease)? {
        Some(state) => Ok(Box::new(state)),
        None => Ok(Box::new(SqliteState::stand_in(Path::new(&redact_url(
            url,
        )))?)),
    }
}

/// `url` with its password masked, in the user part (`user:***@`) and in a
/// `password=` query parameter, fit for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@` ends the user part even when an unescaped password holds `@`, `/` or
    // `?`: masking too much is better than showing a password. A password is what
    // follows the user's first `:`; a user alone is shown.
    let (user_part, after) = match rest.rfind('@') {
        Some(at) => {
            let user_part = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{}@", &rest[..at]),
            };
            (user_part, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let after = match after.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{scheme}://{user_part}{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@host:5432/db"),
            "postgres://u:***@host:5432/db"
        );
        assert_eq!(
            redact_url("postgresql://u:secret@host?sslmode=require&password=secret"),
            "postgresql://u:***@host?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://host/db?PASSWORD=secret"),
            "postgres://host/db?PASSWORD=***"
        );
        assert_eq!(
            redact_url("postgres://u:@host/db"),
            "postgres://u:***@host/db",
            "an empty password is still a password"
        );
        assert_eq!(redact_url("postgres://u@host/db"), "postgres://u@host/db");
        assert_eq!(
            redact_url("postgres://u:p/a?s@s@host/db"),
            "postgres://u:***@host/db",
            "an unescaped password"
        );
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        assert_eq!(redact_url("state.db"), "state.db");
    }

    #[test]
    fn a_sqlite_url_opens_a_sqlite_state_in_every_access() {
        let dir = tempfile::tempdir().unwrap();
        let missing = open_url_existing("sqlite://state.db", dir.path()).unwrap();
        assert!(!missing.exists(), "an empty stand-in");
        drop(missing);
        let missing = open_url_read_only("SQLite://state.db", dir.path()).unwrap();
        assert!(!missing.exists());
        drop(missing);
        assert!(!dir.path().join("state.db").exists(), "nothing created");

        let mut state = open_url("sqlite://state.db", dir.path(), LockMode::Exclusive).unwrap();
        assert!(state.exists());
        assert_eq!(
            state.location(),
            dir.path().join("state.db").display().to_string()
        );
        let run = state.begin_run("sync").unwrap();
        let reader = open_url_read_only("sqlite://state.db", dir.path()).unwrap();
        assert!(reader.writer_active(), "the sync holds the state");
        assert_eq!(reader.run(run).unwrap().unwrap().status, "running");
        drop(state);
        assert!(!reader.writer_active());

        let locked = open_url("sqlite://state.db", dir.path(), LockMode::Shared).unwrap();
        let second = open_url("sqlite://state.db", dir.path(), LockMode::Exclusive);
        assert!(
            matches!(second, Err(StateError::Locked { .. })),
            "a shared holder keeps a sync out"
        );
        drop(locked);
    }

    #[test]
    fn postgres_urls_reach_the_postgres_store_without_showing_the_password() {
        let dir = tempfile::tempdir().unwrap();
        // Port 1 refuses at once: whatever the store makes of the url, it fails.
        for url in [
            "postgres://tandem:hunter2@127.0.0.1:1/tandem",
            "postgresql://tandem:hunter2@127.0.0.1:1/tandem",
            "POSTGRES://tandem@127.0.0.1:1/tandem?password=hunter2",
        ] {
            assert_eq!(StoreKind::of_url(url).unwrap(), StoreKind::Postgres);
            for access in [
                Access::Lock(LockMode::Exclusive),
                Access::Existing,
                Access::ReadOnly,
            ] {
                let err = match open(url, dir.path(), access) {
                    Ok(_) => panic!("{url}: no server listens on port 1"),
                    Err(err) => err,
                };
                assert!(
                    !matches!(err, StateError::UnsupportedUrl { .. }),
                    "{url}: {err}"
                );
                assert!(!err.to_string().contains("hunter2"), "{err}");
                assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
            }
        }
        assert!(
            dir.path().read_dir().unwrap().next().is_none(),
            "nothing created"
        );
    }

    #[test]
    fn other_schemes_are_refused_naming_both_stores() {
        let dir = tempfile::tempdir().unwrap();
        for url in ["mysql://u:hunter2@db/tandem", "state.db", "sqlite:x.db", ""] {
            let err = match open_url(url, dir.path(), LockMode::Exclusive) {
                Ok(_) => panic!("{url} opened"),
                Err(err) => err,
            };
            assert!(
                matches!(err, StateError::UnsupportedUrl { .. }),
                "{url}: {err}"
            );
            let message = err.to_string();
            assert!(
                message.contains("sqlite://") && message.contains("postgres://"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
        assert!(dir.path().read_dir().unwrap().next().is_none());
    }
}
