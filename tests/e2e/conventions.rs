//! Operator conventions: `init`, completions and the man page, exit codes, `plan`'s
//! markers, cap and `--detailed-exitcode`, reading the state while a sync holds it,
//! `runs`, logs as JSON lines, and progress as plain lines off a terminal.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use serde_json::Value;
use tandem_state::LockMode;

use crate::support::{Deployment, stderr, stdout};

fn deployment() -> Deployment {
    let d = Deployment::new();
    d.write(
        "crm/contacts.csv",
        "id,name,email,vat_registration_no\nC1,Acme,a@acme.example,BE0111\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,email,vat_registration_no\nK1,Acme,a@acme.example,BE0111\nK2,Beta,b@beta.example,\n",
    );
    d
}

#[test]
fn init_writes_a_config_that_checks_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tandem.toml");
    let tandem = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = tandem(&["init", "--contacts", "file", "--accounts", "file"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("[relations.CUST]") && written.contains("# "),
        "{written}"
    );
    assert!(dir.path().join("crm").is_dir() && dir.path().join("erp").is_dir());

    let out = tandem(&["check"]);
    assert!(
        out.status.success(),
        "the starter config checks:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("is ready"), "{}", stdout(&out));

    fs::write(&config, "# mine\n").unwrap();
    let out = tandem(&["init", "--accounts", "tryton"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        "# mine\n",
        "left as it was"
    );

    // The other types make configs that load: `check` gets as far as the connectors.
    fs::remove_file(&config).unwrap();
    let out = tandem(&["init", "--contacts", "carddav", "--accounts", "tryton"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--json")
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("CARDDAV_PASSWORD", "x")
        .env("TRYTON_PASSWORD", "x")
        .env("TANDEM__CONNECTORS__CRM__URL", "http://127.0.0.1:9/")
        .env("TANDEM__CONNECTORS__ERP__URL", "http://127.0.0.1:9/")
        .env("TANDEM__CONNECTORS__ERP__RETRY__ATTEMPTS", "1")
        .env("TANDEM__CONNECTORS__CRM__RETRY__ATTEMPTS", "1")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("a check report, not a config error: {}", stderr(&out)));
    assert_eq!(report["checks"][0]["check"], "state", "{report}");
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "connector"),
        "{report}"
    );
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let d = Deployment::new();
    let bash = d.ok(&["completions", "bash"]);
    assert!(
        bash.contains("_tandem()") && bash.contains("conflicts") && bash.contains("migrate"),
        "{bash}"
    );
    let zsh = d.ok(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef tandem"), "{zsh}");
    let fish = d.ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c tandem"), "{fish}");
    let man = d.ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH tandem"),
        "{man}"
    );
    for command in ["SYNC", "PLAN", "RUNS", "INIT", "STATUS", "MIGRATE"] {
        assert!(
            man.contains(&format!("TANDEM {command}")),
            "man page lacks {command}"
        );
    }
    assert!(
        man.contains("detailed\\-exitcode"),
        "subcommand options are in it"
    );
    assert_eq!(d.tandem(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let d = deployment();
    let out = d.tandem(&["sync", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-option"));
    assert!(out.stdout.is_empty(), "nothing on stdout without --json");
    assert_eq!(d.tandem(&["link", "CUST"]).status.code(), Some(2));
    let out = d.tandem(&["--json", "links", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(2), "options at odds: a usage error");
    assert!(
        stdout(&out).contains("different formats"),
        "{}",
        stdout(&out)
    );
    assert_eq!(d.tandem(&["--help"]).status.code(), Some(0));
    let help = d.ok(&["sync", "--help"]);
    assert!(
        help.contains("3  `sync`"),
        "the exit codes are in the help: {help}"
    );
}

#[test]
fn plan_marks_caps_and_exits_2_on_changes_when_asked() {
    let d = Deployment::new();
    // 250 customers without a contact: 250 contacts to create (R6).
    let mut customers = String::from("id,name\n");
    for i in 0..250 {
        let _ = writeln!(customers, "K{i:03},Customer {i}");
    }
    d.write("erp/customers.csv", &customers);
    d.write("crm/contacts.csv", "id,name\n");

    let capped = d.ok(&["plan"]);
    assert!(
        capped.contains("\n  + CUST for customer K000: \"Customer 0\""),
        "{capped}"
    );
    assert_eq!(
        capped.matches("\n  + ").count(),
        200,
        "the first 200 actions"
    );
    assert!(
        capped.contains("... and 50 more actions (`tandem plan --all` lists every one)"),
        "{capped}"
    );
    assert!(!capped.contains('\x1b'), "no colour off a terminal");
    let all = d.ok(&["plan", "--all"]);
    assert_eq!(all.matches("\n  + ").count(), 250);

    let out = d.tandem(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "changes: exit 2");
    d.sync();
    let out = d.tandem(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // A change and a drop: `~` and `-`.
    d.set_cell("erp/customers.csv", "K001", "name", "Renamed");
    d.remove_row("erp/customers.csv", "K002");
    let plan = d.ok(&["plan"]);
    assert!(plan.contains("\n  ~ contact "), "{plan}");
    assert!(plan.contains("\n  - CUST contact "), "{plan}");
}

#[test]
fn status_links_log_conflicts_and_runs_work_while_a_sync_holds_the_state() {
    let d = deployment();
    d.sync();
    // What a running sync holds: the lock, alone, and a run it began.
    let mut held = d.open_state(LockMode::Exclusive);
    held.begin_run("sync").unwrap();
    let status = d.ok(&["status"]);
    assert!(status.contains("A sync is running now"), "{status}");
    assert_eq!(d.json(&["status"])["sync_running"], true);
    assert!(d.ok(&["links"]).contains("K1"));
    assert!(d.ok(&["log", "C1"]).contains("linked"));
    assert!(d.ok(&["conflicts"]).contains("No open conflicts"));
    assert!(d.ok(&["runs"]).contains("sync"));
    assert!(d.ok(&["resolve", "C1", "CUST"]).contains("K1"));
    // Writers still wait their turn.
    let out = d.tandem(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in use by another tandem process"));
    assert_eq!(d.json(&["runs"])[0]["status"], "running");
    drop(held);
    // Its process is gone: the run it left is one that died.
    let status = d.json(&["status"]);
    assert_eq!(status["sync_running"], false);
    assert_eq!(status["runs"][0]["status"], "interrupted", "{status}");
}

#[test]
fn runs_show_lists_the_records_a_run_touched() {
    let d = deployment();
    d.sync();
    d.set_cell("erp/customers.csv", "K1", "name", "Acme NV");
    d.sync();
    let runs = d.ok(&["runs"]);
    assert!(runs.contains("run  mode  status"), "{runs}");
    let second = d.ok(&["runs", "show", "2"]);
    assert!(second.contains("Run 2: sync ok"), "{second}");
    assert!(
        second.contains("CUST  C1       K1       updated"),
        "{second}"
    );
    assert!(!second.contains("linked"), "only what run 2 did: {second}");
    let first = d.ok(&["runs", "show", "1"]);
    assert!(first.contains("linked"), "{first}");
    let out = d.tandem(&["runs", "show", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no run 9 (the last is run 2)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn log_format_json_prints_one_object_a_line_with_the_run_id() {
    let d = deployment();
    let out = d.tandem(&["--log-format", "json", "sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 6, "{lines:?}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "{key} in {line}");
        }
    }
    let read = lines
        .iter()
        .find(|l| l["message"] == "read" && l["kind"] == "contacts")
        .expect("a read line");
    assert_eq!(read["run"], 1, "{read}");
    assert_eq!(read["connector"], "crm");
    assert_eq!(read["records"], 1);
    assert_eq!(read["target"], "tandem_engine::read");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "applied" && l["run"] == 1)
    );
    // The report on stdout is unchanged.
    assert!(stdout(&out).contains("sync finished"));

    // A failed record is a line with its ids (a person without a company cannot be a
    // vendor, R3).
    let d = Deployment::new();
    d.write(
        "crm/contacts.csv",
        "id,contact_type,company_id,name,business_relations\nC3,person,,Piet,VEND\n",
    );
    let out = d.tandem(&["--log-format", "json", "sync"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let failed: Value = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["message"] == "record failed")
        .unwrap_or_else(|| panic!("a `record failed` line in {}", stderr(&out)));
    assert_eq!(failed["contact_id"], "C3", "{failed}");
    assert_eq!(failed["code"], "VEND");
    assert_eq!(failed["run"], 1);
    assert!(
        failed["error"].as_str().unwrap().contains("company"),
        "{failed}"
    );
}

#[test]
fn progress_off_a_terminal_is_plain_lines() {
    let d = deployment();
    let out = d.tandem(&["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for line in [
        "reading connector=erp kind=customers",
        "read connector=crm kind=contacts records=1 changed=1",
        "planned ",
        "applying",
        "applied run=1 writes=",
    ] {
        assert!(err.contains(line), "`{line}` in:\n{err}");
    }
    assert!(
        !err.contains('\x1b') && !err.contains('\r'),
        "no bars or colour: {err:?}"
    );
    assert!(
        !err.contains("tandem_progress"),
        "progress events are for bars only"
    );
}

#[test]
fn ctrl_c_stops_a_sync_with_one_line_and_the_next_sync_finishes_the_work() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let d = Deployment::new();
    let (mut contacts, mut customers) = (
        String::from("id,name,email\n"),
        String::from("id,name,email\n"),
    );
    for i in 0..15_000 {
        let _ = writeln!(contacts, "C{i},Company {i},c{i}@example.com");
        let _ = writeln!(customers, "K{i},Company {i},c{i}@example.com");
    }
    d.write("crm/contacts.csv", &contacts);
    d.write("erp/customers.csv", &customers);

    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(d.path("tandem.toml"))
        .arg("sync")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_lines = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Under way: it has begun reading (15,000 records a side take it seconds more).
    while !seen.contains("reading") {
        assert!(stderr_lines.read_line(&mut seen).unwrap() > 0, "{seen}");
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    stderr_lines.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("interrupted: stopping now") && seen.contains("Nothing is lost"),
        "{seen}"
    );
    assert!(
        !seen.contains("sync finished"),
        "it stopped before the end: {seen}"
    );

    let report = d.sync();
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    assert_eq!(
        d.links().len(),
        15_000,
        "the next sync links every pair once"
    );
    assert_eq!(d.sync()["writes"], 0, "and leaves nothing to do");
}
