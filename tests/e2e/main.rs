//! End-to-end tests: the `tandem` binary on real files and a real SQLite state.
//!
//! Each test builds a deployment in a temporary folder (a `tandem.toml`, a `crm`
//! folder of contacts and an `erp` folder of accounts), runs the binary and checks the
//! files it leaves behind. Tests are named after the rule they guard (`r7_...`).

mod browser;
mod support;

#[cfg(all(
    feature = "connector-business-central",
    feature = "connector-carddav",
    feature = "connector-tryton"
))]
mod business_central;

mod business_rules;
mod config;
mod conventions;
mod crash;
mod deploy;
#[cfg(all(feature = "connector-tryton", feature = "connector-carddav"))]
mod faults;
#[cfg(all(feature = "connector-tryton", feature = "connector-carddav"))]
mod flagship;
#[cfg(all(feature = "connector-tryton", feature = "connector-carddav"))]
mod flagship_byid;
mod guard;
#[cfg(all(feature = "connector-tryton", feature = "connector-carddav"))]
mod https;
#[cfg(all(feature = "connector-hubspot", feature = "connector-tryton"))]
mod hubspot;
mod json_output;
#[cfg(all(feature = "connector-tryton", feature = "connector-ldap"))]
mod ldap;
mod migrate;
mod normalised;
mod operator;
mod plugin;
mod process;
mod quickstart;
mod rules;
mod service;
#[cfg(all(
    feature = "connector-sql",
    feature = "connector-carddav",
    feature = "connector-tryton"
))]
mod sql;
mod status_page;
#[cfg(feature = "connector-tryton")]
mod tryton;
mod unchanged;
mod workers;
