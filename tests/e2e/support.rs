use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tandem_state::testsupport::TestState;
use tandem_state::{Access, LockMode, StateStore, StoreKind};

/// A deployment in a temporary folder.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    /// The state its config names: `.tandem/state.db` in `dir`, or a database of its
    /// own on the PostgreSQL server of `TANDEM_TEST_STATE_URL`.
    pub state: TestState,
}

/// The state url of [`CONFIG`] and of the examples' configs.
pub const SQLITE_STATE_URL: &str = "sqlite://.tandem/state.db";

pub const CONFIG: &str = r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
create_contacts = true
match = [["vat_registration_no"], ["email"], ["name", "post_code"]]

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
"#;

impl Deployment {
    /// A deployment with [`CONFIG`] and no data.
    pub fn new() -> Deployment {
        Deployment::with_config(CONFIG)
    }

    /// A deployment with `config`, whose `[state] url` is replaced by the test's state
    /// when that is PostgreSQL.
    pub fn with_config(config: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let state = TestState::or_sqlite(SQLITE_STATE_URL, dir.path());
        Deployment::with_state(dir, state, config)
    }

    /// A deployment with `config` on its SQLite state whatever the test's store: for
    /// tests of what only a state file can go through.
    pub fn on_sqlite(config: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let state = TestState::sqlite(SQLITE_STATE_URL, dir.path());
        Deployment::with_state(dir, state, config)
    }

    /// A deployment with `config` on a new database of the PostgreSQL server at
    /// `server`, whatever the test's store: for workers, which share a state.
    pub fn on_postgres(config: &str, server: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let state = TestState::on_server(server, dir.path());
        Deployment::with_state(dir, state, config)
    }

    fn with_state(dir: tempfile::TempDir, state: TestState, config: &str) -> Deployment {
        fs::create_dir_all(dir.path().join("crm")).unwrap();
        fs::create_dir_all(dir.path().join("erp")).unwrap();
        let d = Deployment { dir, state };
        d.write_config(config);
        d
    }

    /// A copy of an example folder from the repository.
    pub fn example(name: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let state = TestState::or_sqlite(SQLITE_STATE_URL, dir.path());
        copy_dir(&repo_root().join("examples").join(name), dir.path());
        let _ = fs::remove_dir_all(dir.path().join(".tandem"));
        let d = Deployment { dir, state };
        d.write_config(&d.read("tandem.toml"));
        d
    }

    /// A copy of this deployment, its state included, to run apart from it.
    pub fn copy(&self) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(self.dir.path(), dir.path());
        let state = self.state.copy_to(dir.path());
        let d = Deployment { dir, state };
        d.write_config(&d.read("tandem.toml"));
        d
    }

    /// Writes `tandem.toml`: `config`, its state url replaced by the test's state when
    /// that is PostgreSQL (and a `[state]` table added when it has none).
    pub fn write_config(&self, config: &str) {
        self.write("tandem.toml", &on_test_state(config, &self.state));
    }

    /// Whether the state exists (a read-only command creates none).
    pub fn state_exists(&self) -> bool {
        self.state
            .open_for(Access::ReadOnly)
            .unwrap_or_else(|e| panic!("cannot read the state: {e}"))
            .exists()
    }

    /// Opens the test's state as `tandem` would, with the lock `mode`.
    pub fn open_state(&self, mode: LockMode) -> Box<dyn StateStore> {
        self.state.open(mode)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        fs::write(self.path(rel), content).unwrap();
    }

    /// Replaces a file whole, as an editor that saves by renaming does: a process
    /// reading it meanwhile (a worker) sees the old content or the new, never an
    /// empty or a half-written file.
    pub fn replace(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        let staged = path.with_extension("staged");
        fs::write(&staged, content).unwrap();
        fs::rename(&staged, &path).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Runs `tandem --config <dir>/tandem.toml <args>` from another directory, so
    /// relative paths must resolve against the config file.
    pub fn tandem(&self, args: &[&str]) -> Output {
        self.tandem_env(args, &[])
    }

    pub fn tandem_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("--config").arg(self.path("tandem.toml")).args(args);
        cmd.current_dir(std::env::temp_dir());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env_remove("RUST_LOG");
        cmd.output().unwrap()
    }

    /// Runs a command with `--json` that must succeed, and returns its report. The
    /// output must carry `format_version` 1; a list (`links`, `log`, `conflicts`,
    /// `plugins`: an object with the version and one list) is returned as the list.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.tandem(&all);
        assert!(
            out.status.success(),
            "tandem {args:?} failed:\n{}",
            stderr(&out)
        );
        let value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        unversioned(value)
    }

    pub fn sync(&self) -> Value {
        self.json(&["sync"])
    }

    /// Runs a command with `--json` that must exit with `code`, and returns its output
    /// as JSON (e.g. a `sync` whose records failed exits with 3 and still reports).
    pub fn json_exit(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.tandem(&all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tandem {args:?}:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        unversioned(
            serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(&out))),
        )
    }

    /// Runs a command that must succeed, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.tandem(args);
        assert!(
            out.status.success(),
            "tandem {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs a command that must fail with exit code `code`, and returns its stdout and
    /// stderr together.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.tandem(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tandem {args:?}:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        format!("{}{}", stdout(&out), stderr(&out))
    }

    /// Removes the row of `id` from the CSV file `rel`.
    pub fn remove_row(&self, rel: &str, id: &str) {
        let kept: String = self
            .read(rel)
            .lines()
            .filter(|l| !l.starts_with(&format!("{id},")))
            .map(|l| format!("{l}\n"))
            .collect();
        self.write(rel, &kept);
    }

    /// Sets `column` of the row `id` in the CSV file `rel` (the column must exist).
    pub fn set_cell(&self, rel: &str, id: &str, column: &str, value: &str) {
        let text = self.read(rel);
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let at = headers
            .iter()
            .position(|h| h == column)
            .unwrap_or_else(|| panic!("{rel} has no column {column}"));
        let id_at = headers.iter().position(|h| h == "id").unwrap();
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(&headers).unwrap();
        let mut found = false;
        for record in reader.records() {
            let record = record.unwrap();
            let mut cells: Vec<String> = record.iter().map(str::to_owned).collect();
            cells.resize(headers.len(), String::new());
            if cells[id_at] == id {
                cells[at] = value.to_owned();
                found = true;
            }
            writer.write_record(&cells).unwrap();
        }
        assert!(found, "{rel} has no row {id}");
        self.write(
            rel,
            &String::from_utf8(writer.into_inner().unwrap()).unwrap(),
        );
    }

    /// Every file of the deployment but the state, as (name, bytes).
    pub fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["crm", "erp"] {
            let mut entries: Vec<_> = fs::read_dir(self.path(sub))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for p in entries {
                out.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
        }
        out
    }

    /// The links in the state, as (code, contact id, account id), sorted.
    pub fn links(&self) -> Vec<(String, String, String)> {
        let state = self.open_state(LockMode::Shared);
        state
            .links(None)
            .unwrap()
            .into_iter()
            .map(|l| (l.code, l.contact_id, l.account_id))
            .collect()
    }
}

/// `config` on the test's state: unchanged on SQLite; on PostgreSQL, the `[state]`
/// table's url is the test's database (the table is added when there is none).
fn on_test_state(config: &str, state: &TestState) -> String {
    if state.kind() == StoreKind::Sqlite {
        return config.to_owned();
    }
    let url_line = format!("url = \"{}\"", state.url());
    let mut in_state = false;
    let mut has_state = false;
    let mut out: Vec<&str> = Vec::new();
    for line in config.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_state = trimmed == "[state]";
        }
        let is_url = trimmed
            .strip_prefix("url")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if in_state && is_url {
            continue;
        }
        out.push(line);
        if in_state && trimmed == "[state]" {
            out.push(&url_line);
            has_state = true;
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    if !has_state {
        // At the end, so that the lines an error names stay where they were.
        text.push_str(&format!("\n[state]\n{url_line}\n"));
    }
    text
}

/// `--json` output without its `format_version` (which must be 1); the list of a
/// list command.
pub fn unversioned(mut value: Value) -> Value {
    assert!(value.is_object(), "--json output is an object: {value}");
    let object = value.as_object_mut().unwrap();
    assert_eq!(
        object.remove("format_version"),
        Some(Value::from(1)),
        "--json output carries format_version 1"
    );
    if object.len() == 1
        && let Some(list) = object.values().next().filter(|v| v.is_array())
    {
        return list.clone();
    }
    value
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The counts of relation `code` in a report.
pub fn counts(report: &Value, code: &str) -> Value {
    report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == code)
        .unwrap_or_else(|| panic!("no counts for {code} in {report}"))
        .clone()
}

/// A CSV file as rows of (column, value) maps keyed by id.
pub fn rows(csv_text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The value of `column` in the row with `id`.
pub fn cell(csv_text: &str, id: &str, column: &str) -> Option<String> {
    rows(csv_text)
        .into_iter()
        .find(|r| r.get("id").map(String::as_str) == Some(id))
        .and_then(|r| r.get(column).cloned())
}

/// The row whose `column` is `value`.
pub fn row_where(
    csv_text: &str,
    column: &str,
    value: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    rows(csv_text)
        .into_iter()
        .find(|r| r.get(column).map(String::as_str) == Some(value))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}
