//! Connectors in other languages (`type = "process"`): the Python example of
//! `examples/process-python` and the Node example of `examples/process-node` pass the
//! conformance kit through `tandem conformance` and sync with the file connector; a
//! child that dies on one record fails that record only (R17).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{Deployment, counts, repo_root, stderr, stdout};

/// A copy of `examples/<name>`. The Python example's command is pointed at the
/// repository's script, which finds the SDK next to it.
fn example(name: &str) -> Deployment {
    let d = Deployment::example(name);
    let config = d.read("tandem.toml");
    let script = repo_root().join("examples/process-python/sqlite_connector.py");
    let relative = "command = [\"python3\", \"sqlite_connector.py\"]";
    if name == "process-python" {
        assert!(config.contains(relative), "{config}");
        // A TOML literal string: no escapes, so any path without `'` fits.
        let absolute = format!("command = ['python3', '{}']", script.display());
        d.write("tandem.toml", &config.replace(relative, &absolute));
    }
    d
}

/// `tandem conformance --json --connector erp`, which must pass.
fn conformance_passes(d: &Deployment) -> Value {
    // Exit 0, and the report is what docs/json-output.md says.
    let report =
        crate::json_output::check(d, &["conformance", "--connector", "erp"], 0, "conformance");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["counts"]["failed"], 0, "{report:#}");
    let status = |name: &str, kind: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name && c["kind"] == kind)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    // The example holds customers and vendors: both exercised, the others refused.
    for kind in ["customer", "vendor"] {
        for name in [
            "batch",
            "paging",
            "round_trip_create",
            "round_trip_update",
            "stale_version",
            "invalid_field",
            "cursor",
            "not_found",
            "cleanup",
        ] {
            assert_eq!(
                status(name, kind).as_deref(),
                Some("passed"),
                "{name} [{kind}]: {report:#}"
            );
        }
    }
    assert_eq!(
        status("unheld_kind", "contact").as_deref(),
        Some("passed"),
        "{report:#}"
    );
    report
}

#[test]
fn the_python_example_passes_the_conformance_kit() {
    let d = example("process-python");
    let report = conformance_passes(&d);
    assert!(
        report["counts"]["passed"].as_u64().unwrap() >= 20,
        "{report:#}"
    );
    // It reads incrementally: its change feed, tombstones included, crosses the pipe.
    for kind in ["customer", "vendor"] {
        let changes = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "changes" && c["kind"] == kind)
            .unwrap_or_else(|| panic!("no changes check for {kind}: {report:#}"));
        assert_eq!(changes["status"], "passed", "{report:#}");
    }
    // The people-readable form lists the same checks, one a line.
    let out = d.tandem(&["conformance", "--connector", "erp", "--kind", "customer"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.starts_with("Conformance of connector erp:\n"),
        "{text}"
    );
    assert!(
        text.contains("  ok   round_trip_create [customer]"),
        "{text}"
    );
    assert!(!text.contains("[vendor]"), "{text}");
    assert!(text.contains(" passed, 0 failed, "), "{text}");
}

#[test]
fn the_node_example_passes_the_conformance_kit() {
    let d = example("process-node");
    conformance_passes(&d);
}

#[test]
fn conformance_of_an_unknown_connector_is_a_usage_error() {
    let d = example("process-node");
    let out = d.tandem(&["conformance", "--connector", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("connector `nope` is not in"),
        "{}",
        stderr(&out)
    );
}

/// A field of the accounts in the Python example's database, by account name.
fn erp_field(d: &Deployment, kind: &str, name: &str, field: &str) -> Option<String> {
    let query = "import json, sqlite3, sys\n\
         db = sqlite3.connect(sys.argv[1])\n\
         for (fields,) in db.execute(\"SELECT fields FROM records WHERE kind = ?\", (sys.argv[2],)):\n\
         \x20   f = json.loads(fields)\n\
         \x20   if f.get('name') == sys.argv[3]: print(f.get(sys.argv[4], ''))\n";
    let out = Command::new("python3")
        .args(["-c", query])
        .arg(d.path("erp.db"))
        .args([kind, name, field])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let text = text.trim_end();
    (!text.is_empty()).then(|| text.to_owned())
}

#[test]
fn the_python_example_syncs_end_to_end_with_the_file_connector() {
    let d = example("process-python");
    let out = d.tandem(&["--json", "sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["failures"], serde_json::json!([]), "{first}");
    assert_eq!(counts(&first, "CUST")["created"], 2, "{first}");
    assert_eq!(counts(&first, "VEND")["created"], 2, "{first}");
    // The child's stderr is in tandem's log, under the connector's name.
    let log = stderr(&out);
    assert!(
        log.lines()
            .any(|l| l.contains("serving ") && l.contains("erp.db") && l.contains("connector=erp")),
        "{log}"
    );
    assert_eq!(
        erp_field(&d, "customer", "Acme Trading NV", "x_payment_terms").as_deref(),
        Some("30D")
    );
    assert_eq!(
        erp_field(&d, "vendor", "Nordwind GmbH", "x_payment_terms").as_deref(),
        Some("60D")
    );

    // Nothing to do the second time: no echo of its own writes (R14).
    let second = d.sync();
    assert_eq!(second["writes"], 0, "{second}");

    // An edit on the contact reaches the customer through the child (R7).
    d.set_cell("crm/contacts.csv", "C0001", "phone", "+32 9 999 99 99");
    let third = d.sync();
    assert_eq!(counts(&third, "CUST")["updated"], 1, "{third}");
    assert_eq!(
        erp_field(&d, "customer", "Acme Trading NV", "phone").as_deref(),
        Some("+32 9 999 99 99")
    );
    assert_eq!(d.sync()["writes"], 0);
}

/// Processes whose command line holds `marker`.
fn processes_running(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = entry.path().join("cmdline");
        if let Ok(bytes) = std::fs::read(&cmdline)
            && String::from_utf8_lossy(&bytes).contains(marker)
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn r17_a_child_that_dies_on_one_record_fails_that_record_only() {
    let d = example("process-python");
    let script = repo_root().join("tests/process/crash_on_name.py");
    assert!(Path::new(&script).is_file());
    let config = d.read("tandem.toml");
    let start = config.find("command = [").unwrap();
    let end = start + config[start..].find('\n').unwrap();
    let crashing = config.replace(
        &config[start..end],
        &format!(
            "command = ['python3', '{}']\nenv = {{ CRASH_ON = \"Brightline Studio\", PYTHONDONTWRITEBYTECODE = \"1\" }}",
            script.display()
        ),
    );
    // One create per call, so that the crash takes one record with it.
    let crashing = crashing.replace(
        "settings = { path = \"erp.db\", kinds = [\"customer\", \"vendor\"] }",
        "settings = { path = \"erp.db\", kinds = [\"customer\", \"vendor\"], max_batch = 1 }",
    );
    let crashing = crashing.replace("env = { PYTHONDONTWRITEBYTECODE = \"1\" }\n", "");
    d.write("tandem.toml", &crashing);

    let report = d.json_exit(&["sync"], 3);
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report:#}");
    let failure = failures[0].to_string();
    assert!(
        failure.contains(
            "process connector `erp` failed in call `write customer (1 ops)`: the child exited (exit status: 1)"
        ),
        "{failure}"
    );
    // The other records went on, through a restarted child.
    assert_eq!(counts(&report, "CUST")["created"], 1, "{report:#}");
    assert_eq!(counts(&report, "VEND")["created"], 2, "{report:#}");
    assert!(erp_field(&d, "customer", "Acme Trading NV", "name").is_some());
    assert_eq!(erp_field(&d, "customer", "Brightline Studio", "name"), None);
    // Tandem has exited: no child of it is left.
    assert_eq!(
        processes_running(&script.display().to_string()),
        Vec::<String>::new()
    );

    // Without the crash, the next run creates the record that failed.
    d.write("tandem.toml", &crashing.replace("CRASH_ON", "NO_CRASH"));
    let retried = d.sync();
    assert_eq!(retried["failures"], serde_json::json!([]), "{retried:#}");
    assert_eq!(counts(&retried, "CUST")["created"], 1, "{retried:#}");
    assert!(erp_field(&d, "customer", "Brightline Studio", "name").is_some());
}

#[test]
fn tandem_plugins_lists_process_connectors_with_what_they_say() {
    let d = example("process-python");
    let plugins = d.json(&["plugins"]);
    let erp = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["connector"] == "erp")
        .unwrap_or_else(|| panic!("{plugins:#}"));
    assert_eq!(erp["error"], Value::Null, "{erp:#}");
    assert_eq!(
        erp["info"]["name"], "tandem-example-sqlite-python",
        "{erp:#}"
    );
    assert_eq!(erp["info"]["abi_version"], 1, "{erp:#}");
    assert_eq!(
        erp["info"]["capabilities"]["kinds"],
        serde_json::json!(["customer", "vendor"]),
        "{erp:#}"
    );
    // A program that does not exist is an error naming the key, and the exit code says so.
    let config = d
        .read("tandem.toml")
        .replace("'python3'", "'no-such-python'");
    d.write("tandem.toml", &config);
    let out = d.fails(&["plugins"], 1);
    assert!(
        out.contains("error: connectors.erp.command: cannot start no-such-python"),
        "{out}"
    );
}

#[test]
fn relative_paths_resolve_from_the_config_file_wherever_tandem_starts() {
    let d = example("process-node");
    let parent = d.dir.path().parent().unwrap();
    let folder = d.dir.path().file_name().unwrap();
    // `--config <folder>/tandem.toml`, relative to where tandem runs.
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(Path::new(folder).join("tandem.toml"))
        .args(["--json", "sync"])
        .current_dir(parent)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts(&report, "CUST")["created"], 2, "{report}");
    // The child was told the config's folder as an absolute path, and wrote there.
    assert!(d.path("erp.json").is_file(), "{}", stderr(&out));
    assert!(
        !d.path(&Path::new(folder).join("erp.json").to_string_lossy())
            .exists()
    );
}
