//! Real plugin libraries loaded through the host: the file connector and the SQLite
//! example (examples/plugin-sqlite) as plugins, and one fixture per way a plugin can be
//! bad (tests/plugins/*). The libraries are built
//! by `cargo build` from the first test that needs them, so `cargo test -p
//! tandem-plugin` works on its own and never tests a stale library.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use tandem_connector::testkit::{Options, Status, check_conformance, unknown_field_with};
use tandem_connector::{
    BuildContext, Connector, ConnectorError, ConnectorFactory, Listing, WriteOp, WriteOutcome,
};
use tandem_model::{EntityKind, FieldName, Fields, Value};
use tandem_plugin::{ABI_VERSION, PluginError, PluginFactory};
use tempfile::TempDir;

const FILE_PLUGIN: &str = "tandem-connector-file-plugin";
const SQLITE_PLUGIN: &str = "tandem-connector-sqlite-example-plugin";
const PANICKING: &str = "tandem-test-plugin-panicking";
const WRONG_ABI: &str = "tandem-test-plugin-wrong-abi";
const NO_SYMBOLS: &str = "tandem-test-plugin-no-symbols";

// ----- building and finding the libraries -----

/// `target/<profile>`: the test binary lives in `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The library of a workspace package, built (or brought up to date) once per test
/// run with the same cargo, profile and target folder as this test.
fn library(package: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    logs();
    let profile_dir = profile_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.arg("build").arg("--quiet");
        for package in [FILE_PLUGIN, SQLITE_PLUGIN, PANICKING, WRONG_ABI, NO_SYMBOLS] {
            command.args(["-p", package]);
        }
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(profile) => {
                command.args(["--profile", profile]);
            }
            None => panic!("unexpected test binary location {}", profile_dir.display()),
        }
        command
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let status = command
            .status()
            .expect("cannot run cargo to build the plugins");
        assert!(status.success(), "building the test plugins failed");
    });
    let path = profile_dir.join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn context(base_dir: &Path) -> BuildContext {
    BuildContext {
        base_dir: base_dir.to_path_buf(),
    }
}

fn build(
    base_dir: &Path,
    settings: serde_json::Value,
) -> Result<Arc<dyn Connector>, ConnectorError> {
    logs();
    PluginFactory.build(settings, &context(base_dir))
}

fn config_message(result: Result<Arc<dyn Connector>, ConnectorError>) -> String {
    match result {
        Err(ConnectorError::Config { message }) => message,
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(connector) => panic!("expected a config error, got {connector:?}"),
    }
}

// ----- logs -----

/// Every line the host's `tracing` printed during this test run. Installed before
/// the first plugin is loaded, since the host tells a plugin its log level then.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(logs))
            .init();
        logs
    })
}

struct Capture(&'static Mutex<Vec<u8>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged_lines(containing: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(containing))
        .map(str::to_owned)
        .collect()
}

// ----- bad plugins: each gets a clear error, none crashes the host -----

#[test]
fn a_path_that_does_not_exist_is_named() {
    let dir = TempDir::new().unwrap();
    let message = config_message(build(
        dir.path(),
        json!({"path": "plugins/libnothing.so", "settings": {}}),
    ));
    let expected = dir.path().join("plugins/libnothing.so");
    assert_eq!(
        message,
        format!("`path`: plugin {} does not exist", expected.display())
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("libnotes.so");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(
            b"These are notes, not machine code. They are long enough to be read as a header.\n",
        )
        .unwrap();
    let message = config_message(build(dir.path(), json!({"path": "libnotes.so"})));
    let prefix = format!(
        "`path`: plugin {} is not a loadable library: ",
        path.display()
    );
    assert!(message.starts_with(&prefix), "{message}");
    // The loader's own reason follows.
    assert!(message.len() > prefix.len(), "{message}");
    #[cfg(target_os = "linux")]
    assert!(message.ends_with("invalid ELF header"), "{message}");

    let error = tandem_plugin::describe(&path).unwrap_err();
    assert!(
        matches!(error, PluginError::NotALibrary { .. }),
        "{error:?}"
    );
}

#[test]
fn a_library_without_the_symbols_is_not_a_plugin() {
    let path = library(NO_SYMBOLS);
    let message = config_message(build(Path::new("/"), json!({"path": path})));
    assert_eq!(
        message,
        format!(
            "`path`: plugin {} does not export the symbol `tandem_plugin_abi_version`: is this \
             a Tandem plugin? It must be built with tandem_plugin::export_connector!",
            path.display()
        )
    );
}

#[test]
fn another_abi_version_is_refused_before_anything_else_is_called() {
    let path = library(WRONG_ABI);
    // The fixture's function table aborts the process if the host asks for it: the
    // test would die instead of failing.
    let message = config_message(build(Path::new("/"), json!({"path": path})));
    assert_eq!(
        message,
        format!(
            "`path`: plugin {} speaks plugin ABI version 999, this tandem speaks version \
             {ABI_VERSION}: rebuild the plugin against tandem-plugin {}",
            path.display(),
            tandem_plugin::VERSION
        )
    );
    assert_eq!(
        tandem_plugin::describe(&path).unwrap_err(),
        PluginError::AbiMismatch {
            path: path.clone(),
            found: 999,
            expected: ABI_VERSION
        }
    );
}

#[test]
fn settings_the_plugin_rejects_are_named_by_key() {
    let dir = TempDir::new().unwrap();
    let path = library(FILE_PLUGIN);
    let message = config_message(build(
        dir.path(),
        json!({"path": path, "settings": {"path": ".", "formt": "csv"}}),
    ));
    assert!(
        message.starts_with("`settings.formt`: unknown field `formt`"),
        "{message}"
    );
    assert!(message.ends_with(&format!("(rejected by plugin {})", path.display())));

    // A setting the plugin misses, and one the plugin block itself does not know.
    let message = config_message(build(dir.path(), json!({"path": path, "settings": {}})));
    assert!(
        message.starts_with("`settings`: plugin ") && message.contains("missing field `path`"),
        "{message}"
    );
    let message = config_message(build(
        dir.path(),
        json!({"path": path, "setting": {"path": "."}}),
    ));
    assert!(
        message.starts_with("`setting`: unknown field `setting`"),
        "{message}"
    );
}

#[tokio::test]
async fn a_panicking_plugin_answers_every_call_with_an_error() {
    let path = library(PANICKING);
    let connector = build(Path::new("/"), json!({"path": path})).unwrap();
    assert_eq!(connector.capabilities().kinds, vec![EntityKind::Customer]);

    for _ in 0..2 {
        let error = connector.check().await.unwrap_err();
        let ConnectorError::Fatal { message } = &error else {
            panic!("expected a fatal error, got {error:?}");
        };
        assert!(message.starts_with("plugin panicked at "), "{message}");
        assert!(message.contains("boom in check"), "{message}");
        assert!(
            message.ends_with("(libtandem_test_plugin_panicking.so)"),
            "{message}"
        );
    }
    let error = connector
        .read(EntityKind::Customer, None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("boom in read"), "{error}");
    let error = connector
        .write(EntityKind::Customer, vec![WriteOp::create(Fields::new())])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("boom in write"), "{error}");

    // A panic while building is a config error naming the plugin.
    let message = config_message(build(
        Path::new("/"),
        json!({"path": path, "settings": {"panic_in_build": true}}),
    ));
    assert!(
        message.starts_with(&format!(
            "plugin {} failed to start: plugin panicked at ",
            path.display()
        )) && message.ends_with("boom in build"),
        "{message}"
    );

    // And the host is still here, with a connector that still answers.
    assert!(connector.check().await.is_err());
}

#[tokio::test]
async fn plugin_logs_reach_the_host() {
    let path = library(PANICKING);
    let connector = build(Path::new("/"), json!({"path": path})).unwrap();
    let _ = connector.read(EntityKind::Customer, None).await;

    let built = logged_lines("building the panicking connector");
    assert!(
        built.iter().any(|l| l.contains("INFO")
            && l.contains("tandem_plugin")
            && l.contains("plugin=tandem_test_plugin_panicking")
            && l.contains("panic_in_build=false")),
        "{built:?}"
    );
    let warned = logged_lines("about to panic");
    assert!(
        warned
            .iter()
            .any(|l| l.contains("WARN") && l.contains("call=read")),
        "{warned:?}"
    );
    // The panic itself is in the log too, at debug level: the call's error reports it.
    let panicked = logged_lines("panicked at ");
    assert!(
        panicked
            .iter()
            .any(|l| l.contains("DEBUG") && l.contains("boom in read")),
        "{panicked:?}"
    );
}

#[tokio::test]
async fn a_slow_plugin_call_does_not_block_the_host_runtime() {
    let path = library(PANICKING);
    let connector = build(
        Path::new("/"),
        json!({"path": path, "settings": {"slow_check_ms": 200}}),
    )
    .unwrap();
    // One thread for the host runtime (`#[tokio::test]`): if the call blocked it, the
    // other task could not run until the call was over.
    let done = AtomicBool::new(false);
    let (result, turns) = tokio::join!(
        async {
            let result = connector.check().await;
            done.store(true, Ordering::SeqCst);
            result
        },
        async {
            let mut turns = 0_u64;
            while !done.load(Ordering::SeqCst) {
                turns += 1;
                tokio::task::yield_now().await;
            }
            turns
        }
    );
    result.unwrap();
    assert!(turns > 0, "the host runtime was blocked during the call");
}

// ----- the file connector as a plugin -----

fn text(s: &str) -> Value {
    Value::text(s)
}

fn customer(name: &str, city: &str) -> Fields {
    Fields::new()
        .with("name", text(name))
        .with("city", text(city))
        .with("x_score", Value::Number(0.1 + 0.2))
        .with("x_since", Value::date("2024-02-29").unwrap())
}

fn outcome_ids(outcomes: &[WriteOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| o.as_ref().unwrap().id.clone())
        .collect()
}

#[tokio::test]
async fn the_file_connector_works_the_same_as_a_plugin() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let settings = json!({"path": "data", "format": "jsonl"});
    let plugin = build(
        dir.path(),
        json!({"path": library(FILE_PLUGIN), "settings": settings}),
    )
    .unwrap();
    let builtin = tandem_connector_file::FileConnectorFactory
        .build(settings, &context(dir.path()))
        .unwrap();
    assert_eq!(plugin.capabilities(), builtin.capabilities());
    plugin.check().await.unwrap();

    // Written through the plugin, read back by both: the same records, the same
    // versions, typed values intact.
    let created = plugin
        .write(
            EntityKind::Customer,
            vec![
                WriteOp::create(customer("Acme", "Gent")),
                WriteOp::create(customer("Bolt", "Brugge")),
            ],
        )
        .await
        .unwrap();
    let ids = outcome_ids(&created);
    let from_plugin = plugin.read(EntityKind::Customer, None).await.unwrap();
    let from_builtin = builtin.read(EntityKind::Customer, None).await.unwrap();
    assert_eq!(from_plugin, from_builtin);
    assert_eq!(from_plugin.listing, Listing::Full);
    assert_eq!(from_plugin.records.len(), 2);
    assert_eq!(from_plugin.records[0].fields, customer("Acme", "Gent"));
    assert_eq!(
        from_plugin.records[0].version,
        created[0].as_ref().unwrap().version
    );

    // Written by the built-in connector, read by the plugin.
    let version = from_plugin.records[1].version.clone();
    let updated = builtin
        .write(
            EntityKind::Customer,
            vec![WriteOp::Update {
                id: ids[1].clone(),
                version: version.clone(),
                changes: [(FieldName::new("city"), text("Oostende"))].into(),
            }],
        )
        .await
        .unwrap();
    let after = plugin.read(EntityKind::Customer, None).await.unwrap();
    assert_eq!(after.records[1].fields.text("city"), Some("Oostende"));
    assert_eq!(
        after.records[1].version,
        updated[0].as_ref().unwrap().version
    );

    // Errors cross the boundary typed, one outcome per op, the other ops applied.
    let outcomes = plugin
        .write(
            EntityKind::Customer,
            vec![
                WriteOp::Update {
                    id: ids[1].clone(),
                    version,
                    changes: [(FieldName::new("city"), text("Knokke"))].into(),
                },
                WriteOp::Delete {
                    id: "K404".into(),
                    version: None,
                },
                WriteOp::Delete {
                    id: ids[0].clone(),
                    version: None,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes[0],
        Err(ConnectorError::Conflict { id: ids[1].clone() })
    );
    assert_eq!(
        outcomes[1],
        Err(ConnectorError::NotFound { id: "K404".into() })
    );
    assert_eq!(outcomes[2].as_ref().unwrap().id, ids[0]);
    let last = builtin.read(EntityKind::Customer, None).await.unwrap();
    assert_eq!(last.records.len(), 1);
    assert_eq!(last, plugin.read(EntityKind::Customer, None).await.unwrap());

    // Record errors of other kinds too.
    let error = plugin
        .write(
            EntityKind::Customer,
            vec![WriteOp::create(Fields::new().with("nonsense", text("x")))],
        )
        .await
        .unwrap()
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(error, ConnectorError::InvalidRecord { .. }),
        "{error:?}"
    );
    // And errors of the whole call.
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let error = plugin.check().await.unwrap_err();
    assert_eq!(error, builtin.check().await.unwrap_err());
    assert!(matches!(error, ConnectorError::Config { .. }), "{error:?}");
}

#[test]
fn describe_tells_name_version_abi_and_kinds() {
    logs();
    let path = library(FILE_PLUGIN);
    let info = tandem_plugin::describe(&path).unwrap();
    assert_eq!(info.path, path);
    assert_eq!(info.name, "tandem-connector-file-plugin");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.abi_version, ABI_VERSION);
    assert_eq!(info.type_name, "file");
    assert_eq!(info.tandem_plugin_version, tandem_plugin::VERSION);
    assert_eq!(info.capabilities, None);

    let dir = TempDir::new().unwrap();
    let info = tandem_plugin::describe_configured(
        json!({"path": path, "settings": {"path": "."}}),
        &context(dir.path()),
    )
    .unwrap();
    assert_eq!(info.kinds(), Some(EntityKind::ALL.as_slice()));
    assert!(info.capabilities.unwrap().write);

    let found = tandem_plugin::discover(path.parent().unwrap()).unwrap();
    assert!(found.contains(&path), "{found:?}");
}

#[tokio::test]
async fn a_library_is_loaded_once_however_it_is_named() {
    let path = library(FILE_PLUGIN);
    let dir = TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let roundabout = path
        .parent()
        .unwrap()
        .join("deps")
        .join("..")
        .join(path.file_name().unwrap());
    let a = build(dir.path(), json!({"path": path, "settings": {"path": "a"}})).unwrap();
    let b = build(
        dir.path(),
        json!({"path": roundabout, "settings": {"path": "b"}}),
    )
    .unwrap();
    let canonical = path.canonicalize().unwrap();
    assert_eq!(
        tandem_plugin::loaded()
            .iter()
            .filter(|p| **p == canonical)
            .count(),
        1
    );

    // Two instances of one library, each with its own settings.
    a.write(
        EntityKind::Vendor,
        vec![WriteOp::create(
            Fields::new().with("name", text("Only in a")),
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        a.read(EntityKind::Vendor, None)
            .await
            .unwrap()
            .records
            .len(),
        1
    );
    assert!(
        b.read(EntityKind::Vendor, None)
            .await
            .unwrap()
            .records
            .is_empty()
    );
    drop(a);
    assert!(b.check().await.is_ok());
}

#[test]
fn calls_work_outside_of_a_tokio_runtime() {
    let dir = TempDir::new().unwrap();
    let connector = build(
        dir.path(),
        json!({"path": library(FILE_PLUGIN), "settings": {"path": "."}}),
    )
    .unwrap();
    // No runtime here: the call runs on this thread.
    let page = poll_once(connector.read(EntityKind::Contact, None)).unwrap();
    assert!(page.records.is_empty());
}

/// Polls a future that completes without waiting (a plugin call outside tokio does).
fn poll_once<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the call did not complete at once"),
    }
}

// ----- the conformance kit, through the plugin boundary -----

#[tokio::test]
async fn the_file_plugin_passes_the_conformance_kit_with_csv() {
    let dir = TempDir::new().unwrap();
    let connector = build(
        dir.path(),
        json!({"path": library(FILE_PLUGIN), "settings": {"path": ".", "format": "csv"}}),
    )
    .unwrap();
    check_conformance(connector.as_ref(), &Options::default())
        .await
        .assert_passed();
}

#[tokio::test]
async fn the_file_plugin_passes_the_conformance_kit_with_jsonl() {
    // Keys the connector does not map, added by another program, survive.
    let dir = TempDir::new().unwrap();
    let folder = dir.path().to_path_buf();
    let file = move |kind: EntityKind| folder.join(format!("{}.jsonl", kind.plural()));
    let inject_file = file.clone();
    let options = Options {
        unknown_field: Some(unknown_field_with(
            move |kind, id| {
                edit_line(&inject_file(kind), id, |object| {
                    object.insert("legacy".into(), json!({"kept": [1, 2]}));
                })
            },
            move |kind, id| {
                let text = std::fs::read_to_string(file(kind)).map_err(|e| e.to_string())?;
                let line = find_line(&text, id)?;
                match line.get("legacy") {
                    Some(value) if *value == json!({"kept": [1, 2]}) => Ok(()),
                    other => Err(format!("`legacy` of {id} is now {other:?}")),
                }
            },
        )),
        ..Options::default()
    };
    let connector = build(
        dir.path(),
        json!({"path": library(FILE_PLUGIN), "settings": {"path": ".", "format": "jsonl"}}),
    )
    .unwrap();
    let report = check_conformance(connector.as_ref(), &options).await;
    report.assert_passed();
    for kind in EntityKind::ALL {
        let check = report.get("unknown_fields", Some(kind)).unwrap();
        assert_eq!(check.status, Status::Passed, "{report}");
    }
}

fn find_line(text: &str, id: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Map<_, _>>(line).ok())
        .find(|object| object.get("id") == Some(&json!(id)))
        .ok_or_else(|| format!("no line with id {id}"))
}

fn edit_line(
    path: &Path,
    id: &str,
    edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(
            |line| match serde_json::from_str::<serde_json::Map<_, _>>(line) {
                Ok(mut object) if object.get("id") == Some(&json!(id)) => {
                    found = true;
                    edit(&mut object);
                    serde_json::Value::Object(object).to_string()
                }
                _ => line.to_owned(),
            },
        )
        .collect();
    if !found {
        return Err(format!("no line with id {id} in {}", path.display()));
    }
    std::fs::write(path, lines.join("\n") + "\n").map_err(|e| e.to_string())
}

// ----- the example SQLite connector (examples/plugin-sqlite) as a plugin -----

/// What another application keeps on a record: the `extra` column the connector
/// never maps.
fn legacy(id: &str) -> serde_json::Value {
    json!({"legacy": {"owner": format!("owner of {id}"), "tags": [1, 2]}})
}

#[tokio::test]
async fn the_sqlite_example_plugin_passes_the_conformance_kit() {
    use tandem_connector_sqlite_example::Database;

    let dir = TempDir::new().unwrap();
    let db = dir.path().join("erp.db");
    // Records of someone else's: the kit must leave them alone.
    Database::open(&db)
        .unwrap()
        .put(
            EntityKind::Customer,
            "acme",
            &Fields::new().with("name", text("Acme")),
        )
        .unwrap();
    let (inject_db, verify_db) = (db.clone(), db.clone());
    let options = Options {
        unknown_field: Some(unknown_field_with(
            move |kind, id| {
                Database::open(&inject_db)
                    .and_then(|mut db| db.set_extra(kind, id, &legacy(id)))
                    .map_err(|e| e.to_string())
            },
            move |kind, id| {
                let extra = Database::open(&verify_db)
                    .and_then(|db| db.extra(kind, id))
                    .map_err(|e| e.to_string())?;
                match extra {
                    Some(extra) if extra == legacy(id) => Ok(()),
                    other => Err(format!("`extra` is {other:?}, not {}", legacy(id))),
                }
            },
        )),
        ..Options::default()
    };
    let path = library(SQLITE_PLUGIN);
    let connector = build(
        dir.path(),
        json!({"path": path, "settings": {"path": "erp.db"}}),
    )
    .unwrap();
    let builtin = tandem_connector_sqlite_example::SqliteConnectorFactory
        .build(json!({"path": "erp.db"}), &context(dir.path()))
        .unwrap();
    assert_eq!(connector.capabilities(), builtin.capabilities());
    assert!(connector.capabilities().incremental);

    let report = check_conformance(connector.as_ref(), &options).await;
    report.assert_passed();
    // Incremental reads, typed conflicts and unmapped data all crossed the boundary.
    for kind in EntityKind::ALL {
        for name in [
            "changes",
            "cursor",
            "stale_version",
            "unknown_fields",
            "invalid_field",
        ] {
            assert_eq!(
                report.get(name, Some(kind)).map(|c| c.status),
                Some(Status::Passed),
                "{name} [{kind}]\n{report}"
            );
        }
    }
    // Only the seeded record is left, and the plugin and the built-in connector read
    // the same database the same way.
    let from_plugin = connector.read(EntityKind::Customer, None).await.unwrap();
    let ids: Vec<&str> = from_plugin.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["acme"]);
    assert_eq!(
        from_plugin,
        builtin.read(EntityKind::Customer, None).await.unwrap()
    );

    let info = tandem_plugin::describe(&path).unwrap();
    assert_eq!(info.name, SQLITE_PLUGIN);
    assert_eq!(info.type_name, "sqlite-example");
    assert_eq!(info.abi_version, ABI_VERSION);
}
