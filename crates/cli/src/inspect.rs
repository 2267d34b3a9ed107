//! Commands that only read the state: `links`, `resolve`, `log`, `conflicts` (the
//! list) and `status`. They read without the lock (a running sync does not stop them)
//! and never create a state file: with no state yet they answer from an empty one.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde_json::json;
use tandem_state::{
    ConflictEntry, Interaction, LeaseRole, Link, LogEntry, PendingCreate, PendingLink,
    RefusedRequest, RunRecord, Side,
};

use crate::config::Config;
use crate::output::{json_show, plural, row, show, table};
use crate::{Cli, Format, configured, load, open_state_inspect, print_stdout, registry};

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    crate::json::print(value)
}

/// The account kind of a configured code, for messages (`customer`).
pub(crate) fn kind_name(config: &Config, code: &str) -> &'static str {
    config
        .sync
        .relations
        .iter()
        .find(|(c, _)| c == code)
        .map_or("account", |(_, r)| r.kind.as_str())
}

/// `tandem links [<CODE>] [--format table|csv|json]`.
pub(crate) fn links(cli: &Cli, code: Option<&str>, format: Format) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let state = open_state_inspect(&config)?;
    let links = state.links(code)?;
    if let Some(code) = code
        && links.is_empty()
    {
        // Links of a code no longer configured are still listed (R1 leaves them be);
        // a code that is neither is most likely a typo.
        configured(&config, code)?;
    }
    match format {
        Format::Json => crate::json::print_list("links", &links)?,
        Format::Csv => print_stdout(&links_csv(&links)?)?,
        Format::Table => {
            if links.is_empty() {
                let what = match code {
                    Some(code) => format!("No {code} links"),
                    None => "No links".to_owned(),
                };
                print_stdout(&format!("{what} yet: `tandem sync` makes them.\n"))?;
            } else {
                let mut rows = vec![row(&[
                    "code",
                    "contact_id",
                    "account_id",
                    "linked_at",
                    "synced_at",
                    "failure_count",
                    "parked",
                    "last_error",
                ])];
                rows.extend(links.iter().map(|l| link_cells(l).to_vec()));
                let mut out = String::new();
                table(&mut out, &rows);
                let _ = writeln!(out, "\n{}", plural(links.len() as u64, "link", "links"));
                print_stdout(&out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn link_cells(l: &Link) -> [String; 8] {
    [
        l.code.clone(),
        l.contact_id.clone(),
        l.account_id.clone(),
        l.linked_at.to_string(),
        l.synced_at.to_string(),
        l.failure_count.to_string(),
        l.parked.to_string(),
        l.last_error.clone().unwrap_or_default(),
    ]
}

fn links_csv(links: &[Link]) -> anyhow::Result<String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "code",
        "contact_id",
        "account_id",
        "linked_at",
        "synced_at",
        "failure_count",
        "parked",
        "last_error",
    ])?;
    for link in links {
        out.write_record(link_cells(link))?;
    }
    let bytes = out.into_inner().context("cannot write CSV")?;
    Ok(String::from_utf8(bytes)?)
}

/// `tandem resolve <CONTACT_ID> <CODE>` (R10).
pub(crate) fn resolve(cli: &Cli, contact_id: &str, code: &str) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    configured(&config, code)?;
    let state = open_state_inspect(&config)?;
    let kind = kind_name(&config, code);
    let Some(found) = tandem_engine::resolve(state.as_ref(), code, contact_id)? else {
        let company = state.company_of(contact_id)?;
        let via = match &company {
            Some(company) => format!(" (nor has its company {company})"),
            None => String::new(),
        };
        return Err(anyhow!(
            "contact {contact_id} has no {code} relation{via}: it is not linked to a {kind}; \
             `tandem link {code} <contact> <account>` or `tandem create {code} --contact <contact>` \
             makes one"
        ));
    };
    if cli.json {
        print_json(&json!({
            "contact_id": contact_id,
            "code": found.code,
            "kind": kind,
            "account_id": found.account_id,
            "holder_id": found.holder_id,
        }))?;
    } else if found.holder_id == contact_id {
        print_stdout(&format!("{}\n", found.account_id))?;
    } else {
        print_stdout(&format!(
            "{} (via company {})\n",
            found.account_id, found.holder_id
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem log <CONTACT_ID> [--limit N]` (R11).
pub(crate) fn log(cli: &Cli, contact_id: &str, limit: usize) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let state = open_state_inspect(&config)?;
    let entries = state.interactions(contact_id, limit)?;
    if cli.json {
        crate::json::print_list("entries", &entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        print_stdout(&format!(
            "No interactions logged for contact {contact_id}: Tandem has done nothing to a \
             relation of it (R11).\n"
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![row(&[
        "at", "run", "code", "account", "action", "source", "details",
    ])];
    for e in &entries {
        rows.push(log_cells(e));
    }
    let mut out = String::new();
    table(&mut out, &rows);
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn log_cells(e: &Interaction) -> Vec<String> {
    vec![
        e.at.to_string(),
        e.run_id.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        e.code.clone(),
        e.account_id.clone().unwrap_or_else(|| "-".to_owned()),
        e.action.clone(),
        e.source.clone(),
        details(e),
    ]
}

/// A compact rendering of an entry: fields old -> new, tier, reason, template,
/// conflict values, error. Details no known action has are shown as they are.
pub(crate) fn details(e: &Interaction) -> String {
    match e.entry() {
        Some(entry) => describe(&entry),
        None => match e.details.value() {
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        },
    }
}

fn describe(entry: &LogEntry) -> String {
    match entry {
        LogEntry::Linked {
            tier: Some(tier), ..
        } => format!("by match tier {tier}"),
        LogEntry::Linked { by, .. } => format!("by {by}"),
        LogEntry::Unlinked { reason } => match reason.as_str() {
            "contact_deleted" => "the contact was deleted (R12)",
            "account_deleted" => "the account was deleted (R13)",
            "operator" => "unlinked by an operator",
            other => other,
        }
        .to_owned(),
        LogEntry::Created {
            fields,
            template,
            requested_by,
        } => {
            let mut parts = Vec::new();
            if let Some(requested_by) = requested_by {
                parts.push(format!("requested by {requested_by}"));
            }
            if let Some(template) = template {
                parts.push(format!("template {template}"));
            }
            let shown: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k}={}", value_show(v)))
                .collect();
            parts.push(shown.join(", "));
            parts.join("; ")
        }
        LogEntry::Updated { account, contact } => {
            let mut parts = Vec::new();
            for (changes, label) in [(account, "to account"), (contact, "to contact")] {
                if !changes.is_empty() {
                    let shown: Vec<String> = changes.iter().map(change_show).collect();
                    parts.push(format!("{label}: {}", shown.join(", ")));
                }
            }
            parts.join("; ")
        }
        LogEntry::Conflict { .. } => conflict_show(entry),
        LogEntry::Resolved { field } => format!("{field} settled"),
        LogEntry::Failed { error, failures } | LogEntry::Parked { error, failures } => {
            format!("error (failure {failures}): {error}")
        }
        LogEntry::Retried {
            error: Some(error),
            failures,
        } => format!("error (failure {failures}): {error}"),
        LogEntry::Retried { error: None, .. } => String::new(),
    }
}

fn value_show(value: &tandem_model::Value) -> String {
    json_show(&serde_json::to_value(value).unwrap_or_default())
}

fn change_show(c: &tandem_state::Change) -> String {
    format!(
        "{} {} -> {}",
        c.field,
        value_show(&c.old),
        value_show(&c.new)
    )
}

fn conflict_show(entry: &LogEntry) -> String {
    let LogEntry::Conflict {
        field,
        base,
        contact,
        account,
        policy,
        winner,
        value,
    } = entry
    else {
        return String::new();
    };
    let mut text = format!("{field}: base {}", value_show(base));
    if let Some(v) = contact.as_ref().filter(|v| !v.is_empty()) {
        let _ = write!(text, ", contact {}", value_show(v));
    }
    let _ = write!(text, ", account {}", value_show(account));
    if winner == "manual" {
        let _ = write!(text, "; policy manual: waits in the conflict queue");
    } else {
        let _ = write!(
            text,
            "; policy {policy}: {winner} wins, {}",
            value_show(value)
        );
    }
    text
}

/// `tandem conflicts`: the open conflicts (R15).
pub(crate) fn conflicts(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let state = open_state_inspect(&config)?;
    let open = state.conflicts(true)?;
    if cli.json {
        crate::json::print_list("conflicts", &open)?;
        return Ok(ExitCode::SUCCESS);
    }
    if open.is_empty() {
        print_stdout("No open conflicts.\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![row(&[
        "id",
        "code",
        "contact",
        "account",
        "field",
        "base",
        "contact value",
        "account value",
        "resolution",
    ])];
    for c in &open {
        rows.push(conflict_cells(c));
    }
    let mut out = String::new();
    table(&mut out, &rows);
    let _ = write!(
        out,
        "\n{} waiting. Settle one with `tandem conflicts resolve <id> --take contact|account|<value>`;\n\
         the next `tandem sync` writes the chosen value to both sides and closes it.\n",
        plural(open.len() as u64, "conflict", "conflicts")
    );
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn conflict_cells(c: &ConflictEntry) -> Vec<String> {
    vec![
        c.id.to_string(),
        c.code.clone(),
        c.contact_id.clone(),
        c.account_id.clone(),
        c.field.clone(),
        show(&c.base),
        show(&c.contact_value),
        show(&c.account_value),
        match &c.resolution {
            Some(v) => format!("{} (next sync)", show(v)),
            None => "-".to_owned(),
        },
    ]
}

/// A run as `tandem status` shows it.
#[derive(Debug, Serialize)]
struct StatusRun {
    #[serde(flatten)]
    run: RunRecord,
    duration_ms: Option<i64>,
}

/// `tandem status`.
/// The processes holding leases, and with partitions those no worker runs.
fn processes(out: &mut String, leases: &[tandem_state::LeaseInfo], partitions: u32) {
    let missing: Vec<String> = (0..partitions)
        .filter(|_| partitions > 1)
        .map(|i| format!("partition {i}/{partitions}"))
        .filter(|name| !leases.iter().any(|l| &l.name == name))
        .collect();
    if leases.is_empty() && missing.is_empty() {
        return;
    }
    out.push_str("Processes (their leases, renewed every third of [state] lease):\n");
    let mut rows = vec![row(&["role", "process", "epoch", "lease left"])];
    for lease in leases {
        let role = match lease.role {
            LeaseRole::Partition => format!("runs {}", lease.name),
            role => role.says().to_owned(),
        };
        rows.push(vec![
            role,
            lease.owner.clone(),
            lease.epoch.to_string(),
            format!("{:.0} s", lease.expires_in_ms as f64 / 1000.0),
        ]);
    }
    for name in missing {
        let none = || "-".to_owned();
        rows.push(vec![format!("{name}: no worker"), none(), none(), none()]);
    }
    table(out, &rows);
}

pub(crate) fn status(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = load(cli, &registry())?;
    let state = open_state_inspect(&config)?;
    let sync_running = crate::runs::sync_running(state.as_ref())?;
    let runs: Vec<StatusRun> = state
        .runs(10)?
        .into_iter()
        .map(|mut run| {
            // A run still marked running while no sync holds the lock is one whose
            // process died.
            if run.status == "running" && !sync_running {
                run.status = "interrupted".to_owned();
            }
            StatusRun {
                duration_ms: run.finished_at.map(|f| f.0 - run.started_at.0),
                run,
            }
        })
        .collect();
    let parked_links = state.parked_links()?;
    let pending = tandem_engine::Pending::load(state.as_ref())?;
    let (parked_creates, creates): (Vec<PendingCreate>, Vec<PendingCreate>) =
        pending.creates.into_iter().partition(|p| p.parked);
    let (parked_refused, refused): (Vec<RefusedRequest>, Vec<RefusedRequest>) =
        pending.refused.into_iter().partition(|p| p.parked);
    let (parked_pending_links, pending_links): (Vec<PendingLink>, Vec<PendingLink>) =
        pending.links.into_iter().partition(|p| p.parked);
    let open_conflicts = state.conflicts(true)?;
    let leases = state.leases()?;

    if cli.json {
        print_json(&json!({
            "state": state.location(),
            "state_exists": state.exists(),
            "sync_running": sync_running,
            "leases": leases,
            "runs": runs,
            "parked": {
                "links": parked_links,
                "creates": parked_creates,
                "refused_requests": parked_refused,
                "pending_links": parked_pending_links,
            },
            "open_conflicts": open_conflicts.len(),
            "pending_creates": creates,
            "refused_requests": refused,
            "pending_links": pending_links,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }

    let mut out = String::new();
    if !state.exists() {
        let _ = writeln!(
            out,
            "No state yet at {}: nothing has been synchronised.",
            state.location()
        );
    }
    if sync_running {
        out.push_str(
            "A sync is running now: what follows is the state as its last commit left it.\n",
        );
    }
    processes(&mut out, &leases, config.state_partitions);
    if runs.is_empty() {
        out.push_str("No runs yet.\n");
    } else {
        out.push_str("Last runs:\n");
        let mut rows = vec![row(&[
            "run", "mode", "status", "started", "duration", "writes", "counts",
        ])];
        for r in &runs {
            rows.push(vec![
                r.run.id.to_string(),
                r.run.mode.clone(),
                r.run.status.clone(),
                r.run.started_at.to_string(),
                r.duration_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{:.2} s", ms as f64 / 1000.0),
                ),
                r.run.summary["writes"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |w| w.to_string()),
                summary_counts(&r.run.summary),
            ]);
        }
        table(&mut out, &rows);
        // Why the failed runs stopped: nothing else says it once their output is gone.
        for r in &runs {
            if let Some(error) = r.run.summary["error"].as_str() {
                let _ = writeln!(out, "run {} failed: {error}", r.run.id);
            }
        }
    }

    let parked = parked_links.len()
        + parked_creates.len()
        + parked_refused.len()
        + parked_pending_links.len();
    if parked == 0 {
        out.push_str("\nParked: none.\n");
    } else {
        let _ = writeln!(
            out,
            "\nParked, left alone until `tandem retry` (failed twice with the same error, R17):"
        );
        let no_error = "(no error recorded)";
        for l in &parked_links {
            let what = format!(
                "{} contact {} / {} {}",
                l.code,
                l.contact_id,
                kind_name(&config, &l.code),
                l.account_id
            );
            let error = l.last_error.as_deref().unwrap_or(no_error);
            parked_line(
                &mut out,
                &what,
                error,
                l.failure_count,
                &l.code,
                &l.contact_id,
            );
        }
        for p in &parked_creates {
            let error = p.error.as_deref().unwrap_or(no_error);
            let what = create_label(&config, p);
            parked_line(
                &mut out,
                &what,
                error,
                p.failure_count,
                &p.code,
                &p.source_id,
            );
        }
        for p in &parked_refused {
            let what = format!("{} request of contact {} refused", p.code, p.contact_id);
            parked_line(
                &mut out,
                &what,
                &p.error,
                p.failure_count,
                &p.code,
                &p.contact_id,
            );
        }
        for p in &parked_pending_links {
            let what = format!(
                "{} contact {} / {} {} (not linked yet)",
                p.code,
                p.contact_id,
                kind_name(&config, &p.code),
                p.account_id
            );
            let error = p.error.as_deref().unwrap_or(no_error);
            parked_line(
                &mut out,
                &what,
                error,
                p.failure_count,
                &p.code,
                &p.contact_id,
            );
        }
    }

    let _ = writeln!(
        out,
        "\nOpen conflicts: {}{}",
        open_conflicts.len(),
        if open_conflicts.is_empty() {
            ""
        } else {
            " (`tandem conflicts` lists them)"
        }
    );

    if !refused.is_empty() {
        out.push_str("\nRefused requests (asked again on the next run; parked after the same refusal twice):\n");
        for p in &refused {
            let _ = writeln!(out, "  {} contact {}: {}", p.code, p.contact_id, p.error);
        }
    }
    if !pending_links.is_empty() {
        out.push_str("\nLinks not made yet (the next sync links them):\n");
        for p in &pending_links {
            let _ = writeln!(
                out,
                "  {} contact {} / {} {}",
                p.code,
                p.contact_id,
                kind_name(&config, &p.code),
                p.account_id
            );
        }
    }
    if !creates.is_empty() {
        out.push_str(
            "\nPending creates (not finished yet; the next sync completes or repairs them):\n",
        );
        for p in &creates {
            let state = match &p.error {
                Some(e) => format!(
                    "failed {}: {e}",
                    plural(u64::from(p.failure_count), "time", "times")
                ),
                None => format!(
                    "started by run {}",
                    p.run_id.map_or_else(|| "?".to_owned(), |r| r.to_string())
                ),
            };
            let _ = writeln!(out, "  {}: {state}", create_label(&config, p));
        }
    }
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// One parked item of `tandem status`, with the command that puts it back.
fn parked_line(out: &mut String, what: &str, error: &str, failures: u32, code: &str, id: &str) {
    let failures = plural(u64::from(failures), "failure", "failures");
    let _ = writeln!(
        out,
        "  {what}: {error} ({failures}); retry: tandem retry {code} {id}"
    );
}

fn create_label(config: &Config, p: &PendingCreate) -> String {
    create_text(kind_name(config, &p.code), p)
}

/// `CUST new customer for contact C1`, `CUST new contact for customer K3`, `kind` the
/// relation's account kind; with ` (as <id>)` for a create sent with the id its record
/// gets (R18): where to look for it in its system. The status text's and the status
/// page's.
pub(crate) fn create_text(kind: &str, p: &PendingCreate) -> String {
    let what = if p.side == Side::Contact {
        format!("{} new contact for {kind} {}", p.code, p.source_id)
    } else {
        format!("{} new {kind} for contact {}", p.code, p.source_id)
    };
    match &p.record_id {
        Some(id) => format!("{what} (as {id})"),
        None => what,
    }
}

/// `CUST: 2 linked, 1 created; VEND: 1 linked` from a run's summary; the error of a
/// run that stopped.
pub(crate) fn summary_counts(summary: &serde_json::Value) -> String {
    // The error itself is printed under the table: it is too long for a cell.
    if summary["error"].is_string() {
        return "error (below)".to_owned();
    }
    let Some(counts) = summary["counts"].as_array() else {
        return "-".to_owned();
    };
    let names = crate::output::COUNT_NAMES;
    let shown: Vec<String> = counts
        .iter()
        .filter_map(|c| {
            let code = c["code"].as_str()?;
            let nonzero: Vec<String> = names
                .iter()
                .filter_map(|n| match c[*n].as_u64() {
                    Some(1) if *n == "conflicts" => Some("1 conflict".to_owned()),
                    Some(v) if v > 0 => Some(format!("{v} {n}")),
                    _ => None,
                })
                .collect();
            (!nonzero.is_empty()).then(|| format!("{code}: {}", nonzero.join(", ")))
        })
        .collect();
    if shown.is_empty() {
        "nothing".to_owned()
    } else {
        shown.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use tandem_model::Timestamp;

    use super::*;

    fn entry(action: &str, details: serde_json::Value) -> Interaction {
        Interaction {
            id: 0,
            at: Timestamp(0),
            run_id: None,
            contact_id: "C1".into(),
            code: "CUST".into(),
            account_id: None,
            action: action.into(),
            source: "match".into(),
            details: details.into(),
        }
    }

    #[test]
    fn details_show_changes_tiers_and_errors() {
        let d =
            json!({"account": [{"field": "phone", "old": null, "new": "+32 9"}], "contact": []});
        assert_eq!(
            details(&entry("updated", d)),
            "to account: phone (empty) -> \"+32 9\""
        );
        assert_eq!(
            details(&entry("linked", json!({"by": "match", "tier": 2}))),
            "by match tier 2"
        );
        assert_eq!(
            details(&entry("failed", json!({"error": "boom", "failures": 2}))),
            "error (failure 2): boom"
        );
        let conflict = json!({"field": "phone", "base": "a", "contact": "b", "account": "c",
            "policy": "manual", "winner": "manual", "value": "b"});
        assert_eq!(
            details(&entry("conflict", conflict)),
            "phone: base \"a\", contact \"b\", account \"c\"; policy manual: waits in the conflict queue"
        );
        assert_eq!(
            details(&entry("mystery", json!({"x": 1}))),
            "{\"x\":1}",
            "an unknown entry is shown as stored"
        );
    }

    #[test]
    fn summary_counts_skip_zeros() {
        let s = json!({"counts": [{"code": "CUST", "linked": 2, "created": 0, "failed": 1},
            {"code": "VEND", "linked": 0}]});
        assert_eq!(summary_counts(&s), "CUST: 2 linked, 1 failed");
        assert_eq!(summary_counts(&json!({"error": "x"})), "error (below)");
    }

    #[test]
    fn links_export_as_csv() {
        let link = Link {
            code: "CUST".into(),
            contact_id: "C1".into(),
            account_id: "K1".into(),
            baseline: Default::default(),
            contact_version: None,
            account_version: None,
            last_error: Some("a, \"b\"".into()),
            failure_count: 1,
            parked: false,
            linked_at: Timestamp(0),
            synced_at: Timestamp(1000),
            intent: None,
        };
        let text = links_csv(&[link]).unwrap();
        assert_eq!(
            text,
            "code,contact_id,account_id,linked_at,synced_at,failure_count,parked,last_error\n\
             CUST,C1,K1,1970-01-01T00:00:00Z,1970-01-01T00:00:01Z,1,false,\"a, \"\"b\"\"\"\n"
        );
    }
}
