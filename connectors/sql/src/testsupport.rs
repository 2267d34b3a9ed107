//! The database servers of the tests (cargo feature `testsupport`), from
//! `tandem-test-databases`; re-exported so that this crate's users keep their paths.

pub use tandem_test_databases::{MariadbServer, POSTGRES_USER, PostgresServer};
