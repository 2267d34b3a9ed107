//! The file connector as a plugin: `target/<profile>/libtandem_connector_file_plugin.so`,
//! loaded with `type = "plugin"`, `path = ".../libtandem_connector_file_plugin.so"`,
//! `settings = { path = "<folder>", format = "csv" }`.

tandem_plugin::export_connector!(tandem_connector_file::FileConnectorFactory);
