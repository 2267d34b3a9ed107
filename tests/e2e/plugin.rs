//! Connectors loaded at run time (`type = "plugin"`): the SQLite example of
//! `examples/plugin-sqlite`, as its README runs it, and plugin paths that are wrong.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tandem_connector::Connector as _;
use tandem_connector_sqlite_example::SqliteConnector;
use tandem_model::EntityKind;

use crate::support::{CONFIG, Deployment, counts, stderr, stdout};

const SQLITE_PLUGIN: &str = "tandem-connector-sqlite-example-plugin";

/// The example plugin's library, in the folder of the `tandem` binary under test
/// (`target/<profile>`). Built (or brought up to date) once per test run with the same
/// cargo, profile and target folder, so a stale library is never tested.
fn sqlite_plugin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_tandem"))
        .parent()
        .unwrap()
        .to_path_buf();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", SQLITE_PLUGIN]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(profile) => {
                command.args(["--profile", profile]);
            }
            None => panic!("unexpected binary location {}", profile_dir.display()),
        }
        command
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let status = command
            .status()
            .expect("cannot run cargo to build the example plugin");
        assert!(status.success(), "building {SQLITE_PLUGIN} failed");
    });
    let path = profile_dir.join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        SQLITE_PLUGIN.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A copy of `examples/plugin-sqlite` whose config loads the freshly built library by
/// its absolute path.
fn sqlite_example() -> (Deployment, PathBuf) {
    let library = sqlite_plugin();
    let d = Deployment::example("plugin-sqlite");
    let _ = std::fs::remove_file(d.path("erp.db"));
    let config = d.read("tandem.toml");
    let relative = "path = \"../../target/debug/libtandem_connector_sqlite_example_plugin.so\"";
    assert!(config.contains(relative), "{config}");
    // A TOML literal string: no escapes, so any path without `'` fits.
    let absolute = format!("path = '{}'", library.display());
    d.write("tandem.toml", &config.replace(relative, &absolute));
    (d, library)
}

/// The accounts of `kind` in the example's database, as (id, name, x_payment_terms),
/// read with the connector compiled in.
fn accounts(d: &Deployment, kind: EntityKind) -> Vec<(String, String, String)> {
    let connector = SqliteConnector::open(d.path("erp.db")).unwrap();
    let page = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(connector.read(kind, None))
        .unwrap();
    assert!(!page.has_more);
    page.records
        .iter()
        .map(|r| {
            let text = |name: &str| r.fields.text(name).unwrap_or_default().to_owned();
            (r.id.clone(), text("name"), text("x_payment_terms"))
        })
        .collect()
}

#[test]
fn the_sqlite_example_plugin_syncs_and_settles() {
    let (d, library) = sqlite_example();
    assert!(!d.path("erp.db").exists());

    let first = d.sync();
    assert_eq!(first["failures"], serde_json::json!([]), "{first}");
    assert_eq!(counts(&first, "CUST")["created"], 2, "{first}");
    assert_eq!(counts(&first, "VEND")["created"], 2, "{first}");
    assert_eq!(first["writes"], 4, "{first}");

    // The connector created the database on first use; the accounts the contacts asked
    // for are in it, filled from the templates.
    let customers = accounts(&d, EntityKind::Customer);
    let vendors = accounts(&d, EntityKind::Vendor);
    let names = |accounts: &[(String, String, String)], terms: &str| {
        assert!(accounts.iter().all(|a| a.2 == terms), "{accounts:?}");
        let mut names: Vec<String> = accounts.iter().map(|a| a.1.clone()).collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&customers, "30D"),
        ["Acme Trading NV", "Brightline Studio"]
    );
    assert_eq!(
        names(&vendors, "60D"),
        ["Brightline Studio", "Nordwind GmbH"]
    );

    // Linked to the contacts that asked; the others are left alone.
    let id_of = |accounts: &[(String, String, String)], name: &str| {
        accounts.iter().find(|a| a.1 == name).unwrap().0.clone()
    };
    let mut expected = vec![
        (
            "CUST".to_owned(),
            "C0001".to_owned(),
            id_of(&customers, "Acme Trading NV"),
        ),
        (
            "CUST".to_owned(),
            "C0002".to_owned(),
            id_of(&customers, "Brightline Studio"),
        ),
        (
            "VEND".to_owned(),
            "C0002".to_owned(),
            id_of(&vendors, "Brightline Studio"),
        ),
        (
            "VEND".to_owned(),
            "C0003".to_owned(),
            id_of(&vendors, "Nordwind GmbH"),
        ),
    ];
    expected.sort();
    assert_eq!(d.links(), expected);
    let links = d.ok(&["links"]);
    assert!(links.contains("4 links"), "{links}");

    // The second run writes nothing, anywhere.
    let contacts = d.read("crm/contacts.csv");
    let second = d.sync();
    assert_eq!(second["writes"], 0, "{second}");
    assert_eq!(counts(&second, "CUST")["unchanged"], 2, "{second}");
    assert_eq!(d.read("crm/contacts.csv"), contacts);
    assert_eq!(accounts(&d, EntityKind::Customer), customers);
    assert_eq!(accounts(&d, EntityKind::Vendor), vendors);

    // `tandem plugins` names the library and what it says about itself.
    let listed = d.ok(&["plugins"]);
    for needle in [
        "erp",
        SQLITE_PLUGIN,
        env!("CARGO_PKG_VERSION"),
        "sqlite-example",
        "contact,customer,vendor,bank_account",
        "incremental, write, delete, batch 500",
    ] {
        assert!(listed.contains(needle), "expected `{needle}` in:\n{listed}");
    }
    let listed = d.json(&["plugins"]);
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    let entry = &entries[0];
    assert_eq!(entry["connector"], "erp");
    assert_eq!(entry["error"], serde_json::Value::Null);
    assert_eq!(entry["path"], library.display().to_string());
    let info = &entry["info"];
    assert_eq!(info["name"], SQLITE_PLUGIN);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["abi_version"], 1);
    assert_eq!(info["type_name"], "sqlite-example");
    assert_eq!(
        info["capabilities"]["kinds"],
        serde_json::json!(["contact", "customer", "vendor", "bank_account"])
    );
    assert_eq!(info["capabilities"]["incremental"], true);
    assert_eq!(info["capabilities"]["write"], true);
    assert_eq!(info["capabilities"]["delete"], true);

    // `tandem check` loads it and reaches the database.
    let checked = d.ok(&["check"]);
    assert!(
        checked.contains("ok      connector erp (plugin)"),
        "{checked}"
    );
    let checked = d.json(&["check"]);
    assert_eq!(checked["ok"], true, "{checked}");
}

/// [`CONFIG`] with the ERP as a plugin at `path`.
fn plugin_config(path: &str) -> String {
    let file = "[connectors.erp]\ntype = \"file\"\npath = \"erp\"\n";
    assert!(CONFIG.contains(file));
    CONFIG.replace(
        file,
        &format!(
            "[connectors.erp]\ntype = \"plugin\"\npath = \"{path}\"\nsettings = {{ path = \"erp.db\" }}\n"
        ),
    )
}

/// Every command that builds connectors fails with exit code 1 and `message` naming
/// `connectors.erp.path`; none crashes.
fn refused(d: &Deployment, message: &str) {
    for args in [&["check"][..], &["sync"], &["plan"], &["plugins"]] {
        let out = d.tandem(args);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "tandem {args:?}:\n{text}");
        assert!(
            text.contains(&format!("connectors.erp.path: {message}")),
            "tandem {args:?}: expected `connectors.erp.path: {message}` in:\n{text}"
        );
        assert!(!text.contains("panicked"), "tandem {args:?}:\n{text}");
    }
    let checked = d.json_exit(&["check"], 1);
    assert_eq!(checked["ok"], false, "{checked}");
    let listed = d.json_exit(&["plugins"], 1);
    let error = listed[0]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("connectors.erp.path: "), "{listed}");
    assert!(!d.path("erp.db").exists());
}

#[test]
fn a_plugin_path_that_does_not_exist_is_named() {
    let d = Deployment::with_config(&plugin_config("plugins/libacme.so"));
    let missing = d.dir.path().join("plugins/libacme.so");
    refused(&d, &format!("plugin {} does not exist", missing.display()));
    // `check` names the config file and the line too.
    let out = d.fails(&["check"], 1);
    assert!(
        out.contains("tandem.toml:11: connectors.erp.path: plugin "),
        "{out}"
    );
}

#[test]
fn a_plugin_path_to_a_text_file_is_not_a_library() {
    let d = Deployment::with_config(&plugin_config("notes.so"));
    d.write(
        "notes.so",
        "These are notes, not machine code. They are long enough to be read as a header.\n",
    );
    let notes = d.dir.path().join("notes.so");
    refused(
        &d,
        &format!("plugin {} is not a loadable library: ", notes.display()),
    );
}
