//! The example SQLite connector as a plugin:
//! `target/<profile>/libtandem_connector_sqlite_example_plugin.so`, loaded with
//! `type = "plugin"`, `path = ".../libtandem_connector_sqlite_example_plugin.so"`,
//! `settings = { path = "erp.db" }`.

tandem_plugin::export_connector!(tandem_connector_sqlite_example::SqliteConnectorFactory);
