//! Where a test's state lives, so that one test runs on every store.

use tandem_test_databases::PostgresServer;
use tempfile::TempDir;

use crate::{LockMode, PgState, SqliteState, StateStore};

/// A fresh, empty state: an SQLite file in a folder of its own, or a database of its
/// own on a real PostgreSQL server.
#[derive(Debug)]
pub(crate) enum Place {
    Sqlite(TempDir),
    Postgres {
        url: String,
        /// Kept to the end of the test, when it stops.
        #[expect(dead_code, reason = "held for its drop")]
        server: PostgresServer,
    },
}

impl Place {
    pub(crate) fn sqlite() -> Place {
        Place::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A new database on a new server; `None` (after saying why) when PostgreSQL is
    /// not installed and `CI` is not set.
    pub(crate) fn postgres() -> Option<Place> {
        let server = PostgresServer::start()?;
        let url = server.create_database();
        Some(Place::Postgres { url, server })
    }

    /// Opens the state for writing, as a sync does.
    pub(crate) fn open(&self) -> Box<dyn StateStore> {
        match self {
            Place::Sqlite(dir) => Box::new(
                SqliteState::open(&dir.path().join("state.db"), LockMode::Exclusive).unwrap(),
            ),
            Place::Postgres { url, .. } => {
                Box::new(PgState::open_url(url, LockMode::Exclusive).unwrap())
            }
        }
    }
}

/// Runs a test on a fresh state in each store: `<name>::sqlite` on an SQLite file,
/// `<name>::postgres` on a database of a real PostgreSQL server.
macro_rules! both_stores {
    ($name:ident, |$place:ident| $body:block) => {
        mod $name {
            use super::*;

            fn body($place: &$crate::testing::Place) $body

            #[test]
            fn sqlite() {
                body(&$crate::testing::Place::sqlite());
            }

            #[test]
            fn postgres() {
                if let Some(place) = $crate::testing::Place::postgres() {
                    body(&place);
                }
            }
        }
    };
}
pub(crate) use both_stores;
