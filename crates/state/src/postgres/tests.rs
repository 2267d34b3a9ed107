//! PostgreSQL-only tests.
