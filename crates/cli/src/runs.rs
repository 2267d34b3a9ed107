//! `tandem runs` (the recent runs) and `tandem runs show <ID>` (what one run did to
//! which records: its interaction log entries, R11, and its failures). Read without
//! the lock, like `tandem status`, so they work while a sync runs.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::anyhow;
use serde_json::json;
use tandem_state::{RunRecord, StateStore};

use crate::inspect::details;
use crate::output::{plural, row, table};
use crate::{Cli, load, open_state_inspect, print_stdout, registry};

/// `tandem runs [--limit N]`.
pub fn list(cli: &Cli, limit: usize) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let state = open_state_inspect(&config)?;
    let sync_running = sync_running(state.as_ref())?;
    let runs: Vec<RunRecord> = state
        .runs(limit)?
        .into_iter()
        .map(|run| shown_status(run, sync_running))
        .collect();
    if cli.json {
        crate::json::print(&json!({ "runs": runs }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        print_stdout("No runs yet: `tandem sync` makes the first.\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![row(&[
        "run", "mode", "status", "started", "duration", "writes", "failed",
    ])];
    for r in &runs {
        rows.push(vec![
            r.id.to_string(),
            r.mode.clone(),
            r.status.clone(),
            r.started_at.to_string(),
            duration(r),
            number(&r.summary["writes"]),
            r.summary["failures"]
                .as_array()
                .map_or_else(|| "-".to_owned(), |f| f.len().to_string()),
        ]);
    }
    let mut out = String::new();
    table(&mut out, &rows);
    out.push_str("\n`tandem runs show <run>` lists the records a run touched.\n");
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `tandem runs show <ID> [--limit N]`.
pub fn show(cli: &Cli, id: i64, limit: usize) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let state = open_state_inspect(&config)?;
    let sync_running = sync_running(state.as_ref())?;
    let Some(run) = state.run(id)? else {
        let last = state.runs(1)?.first().map(|r| r.id);
        return Err(anyhow!(
            "{}: there is no run {id}{}; `tandem runs` lists them",
            state.location(),
            match last {
                Some(last) => format!(" (the last is run {last})"),
                None => " (no run yet)".to_owned(),
            }
        ));
    };
    let run = shown_status(run, sync_running);
    let (entries, total) = state.run_interactions(id, limit)?;
    if cli.json {
        crate::json::print(&json!({
            "run": run,
            "records_total": total,
            "records": entries,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "Run {id}: {} {}, started {}, {}; {} written\n",
        run.mode,
        run.status,
        run.started_at,
        duration(&run),
        plural(
            run.summary["writes"].as_u64().unwrap_or(0),
            "record",
            "records"
        ),
    );
    if let Some(error) = run.summary["error"].as_str() {
        let _ = writeln!(out, "It stopped: {error}");
    }
    if entries.is_empty() {
        out.push_str("\nIt touched no related record (nothing in the interaction log).\n");
    } else {
        out.push('\n');
        let mut rows = vec![row(&[
            "at", "code", "contact", "account", "action", "source", "details",
        ])];
        for e in &entries {
            rows.push(vec![
                e.at.to_string(),
                e.code.clone(),
                e.contact_id.clone(),
                e.account_id.clone().unwrap_or_else(|| "-".to_owned()),
                e.action.clone(),
                e.source.clone(),
                details(e),
            ]);
        }
        table(&mut out, &rows);
        if total > entries.len() as u64 {
            let _ = writeln!(
                out,
                "\n... and {} (--limit shows more)",
                plural(total - entries.len() as u64, "more entry", "more entries")
            );
        }
    }
    if let Some(failures) = run.summary["failures"].as_array().filter(|f| !f.is_empty()) {
        out.push_str("\nFailed records:\n");
        for f in failures {
            let id_of = |key: &str| f[key].as_str().map(str::to_owned);
            let record = match (id_of("contact_id"), id_of("account_id")) {
                (Some(c), Some(a)) => format!("contact {c} / account {a}"),
                (Some(c), None) => format!("contact {c}"),
                (None, Some(a)) => format!("account {a}"),
                (None, None) => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {} {record}: {}",
                f["code"].as_str().unwrap_or("-"),
                f["error"].as_str().unwrap_or("(no error recorded)")
            );
        }
    }
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether a sync is running now: the last run is marked running and a process holds
/// the lock. The lock is only probed then: a probe holds it for an instant, and a sync
/// starting in that instant would find the state in use.
pub(crate) fn sync_running(state: &dyn StateStore) -> anyhow::Result<bool> {
    let last_running = state
        .runs(1)?
        .first()
        .is_some_and(|r| r.status == "running");
    Ok(last_running && state.writer_active())
}

/// A run still marked running while no sync holds the lock: its process died.
fn shown_status(mut run: RunRecord, sync_running: bool) -> RunRecord {
    if run.status == "running" && !sync_running {
        "interrupted".clone_into(&mut run.status);
    }
    run
}

fn duration(run: &RunRecord) -> String {
    run.finished_at.map_or_else(
        || "-".to_owned(),
        |f| format!("{:.2} s", (f.0 - run.started_at.0) as f64 / 1000.0),
    )
}

fn number(value: &serde_json::Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "-".to_owned(), |n| n.to_string())
}
