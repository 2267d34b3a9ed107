//! Human output of plans and runs: a summary table per relation, the read stats, the
//! records that need a person (ambiguous matches, failures) and, for `plan`, every
//! action. `--json` bypasses all of this and prints the report itself.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use tandem_engine::ConflictPolicy;
use tandem_engine::RunReport;
use tandem_engine::Side;
use tandem_engine::plan::{FieldChange, NewLink, UnlinkReason};
use tandem_engine::relation::Relations;
use tandem_model::{EntityKind, Fields, Value};

/// The counters of a relation, in the order they are shown.
pub const COUNT_NAMES: [&str; 9] = [
    "linked",
    "created",
    "updated",
    "unchanged",
    "unlinked",
    "conflicts",
    "ambiguous",
    "failed",
    "parked",
];

/// How many actions a plan lists before it only counts the rest (`plan --all` lists
/// them all).
pub const PLAN_CAP: usize = 200;

/// How a report is shown.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// List every link, create, field change, conflict and unlink after the summary.
    pub actions: bool,
    /// At most this many actions, then a count of the rest.
    pub cap: Option<usize>,
    /// `+`/`~`/`-`/`!` markers in colour (a terminal without NO_COLOR).
    pub colour: bool,
}

/// Colour when stdout is a terminal and NO_COLOR (<https://no-color.org>) is not set
/// to something.
pub fn colour_on_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether a plan changes anything: writes, unlinks or conflicts (`plan
/// --detailed-exitcode`).
pub fn has_changes(report: &RunReport) -> bool {
    report.writes > 0
        || !report.plan.unlinks.is_empty()
        || report.plan.hubs.iter().any(|h| !h.conflicts.is_empty())
}

/// Renders `report` as `view` says.
pub fn report(report: &RunReport, relations: &Relations, view: View, elapsed: Duration) -> String {
    let mut out = String::new();
    let kind_of = |code: &str| {
        relations
            .relations
            .iter()
            .find(|r| r.code == code)
            .map(|r| r.kind)
    };

    let mut header = vec!["relation"];
    header.extend(COUNT_NAMES);
    let mut rows = vec![row(&header)];
    for c in &report.counts {
        let name = match kind_of(&c.code) {
            Some(kind) => format!("{} ({})", c.code, kind.plural()),
            None => c.code.clone(),
        };
        rows.push(vec![
            name,
            c.linked.to_string(),
            c.created.to_string(),
            c.updated.to_string(),
            c.unchanged.to_string(),
            c.unlinked.to_string(),
            c.conflicts.to_string(),
            c.ambiguous.to_string(),
            c.failed.to_string(),
            c.parked.to_string(),
        ]);
    }
    table(&mut out, &rows);

    out.push('\n');
    let mut rows = vec![row(&["read", "kind", "records", "changed", "deleted"])];
    for r in &report.read {
        rows.push(vec![
            r.connector.clone(),
            r.kind.plural().to_owned(),
            if r.skipped {
                "unchanged, not read".to_owned()
            } else {
                r.records.to_string()
            },
            r.changed.to_string(),
            r.deleted.to_string(),
        ]);
    }
    table(&mut out, &rows);

    if !report.ambiguous.is_empty() {
        out.push_str(
            "\nAmbiguous matches, not linked (make the values unique, or link by hand):\n",
        );
        for a in &report.ambiguous {
            let kind = kind_of(&a.code).map_or("accounts", EntityKind::plural);
            let _ = writeln!(
                out,
                "  {} tier {} ({}): contacts {} / {kind} {}",
                a.code,
                a.tier,
                a.fields
                    .iter()
                    .zip(&a.values)
                    .map(|(f, v)| format!("{f} {v:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                a.contact_ids.join(", "),
                a.account_ids.join(", "),
            );
        }
    }

    let rejected: Vec<_> = report
        .plan
        .rejected
        .iter()
        .map(|r| {
            let parked = report.failures.iter().any(|f| {
                f.parked && f.code == r.code && f.contact_id.as_deref() == Some(&r.contact_id)
            });
            (r, parked)
        })
        .collect();
    if !rejected.is_empty() {
        out.push_str("\nRequests refused (counted as failed; asked again on the next run):\n");
        for (r, parked) in &rejected {
            let _ = writeln!(
                out,
                "  {} contact {}: {}{}",
                r.code,
                r.contact_id,
                r.error,
                if *parked { PARKED } else { "" }
            );
        }
    }

    let failures: Vec<_> = report
        .failures
        .iter()
        .filter(|f| {
            !report.plan.rejected.iter().any(|r| {
                r.code == f.code
                    && f.contact_id.as_deref() == Some(&r.contact_id)
                    && r.error == f.error
            })
        })
        .collect();
    if !failures.is_empty() {
        out.push_str(
            "\nFailed records (retried on the next run; parked after the same error twice):\n",
        );
        for f in failures {
            let kind = kind_of(&f.code).map_or("account", EntityKind::as_str);
            let what = match (&f.contact_id, &f.account_id) {
                (None, Some(account)) => {
                    format!("{} new contact for {kind} {account}: create failed", f.code)
                }
                (Some(contact), None) if f.side == Side::Account => {
                    format!("{} new {kind} for contact {contact}: create failed", f.code)
                }
                (Some(contact), None) if f.code.is_empty() => {
                    format!("contact {contact}: contact write failed")
                }
                (Some(contact), None) => format!("{} contact {contact}: failed", f.code),
                (Some(contact), Some(account)) => format!(
                    "{} contact {contact} / {kind} {account}: {} write failed",
                    f.code, f.side
                ),
                (None, None) => format!("{}: {} write failed", f.code, f.side),
            };
            let _ = writeln!(
                out,
                "  {what}: {}{}",
                f.error,
                if f.parked { PARKED } else { "" }
            );
        }
    }

    let waiting = report
        .plan
        .hubs
        .iter()
        .flat_map(|h| &h.conflicts)
        .filter(|c| c.winner == tandem_engine::Winner::Manual)
        .count();
    if waiting > 0 {
        let _ = writeln!(
            out,
            "\n{} the conflict queue (R15, policy manual): `tandem conflicts` lists them.",
            if waiting == 1 {
                "1 field waits in".to_owned()
            } else {
                format!("{waiting} fields wait in")
            }
        );
    }

    if view.actions {
        let mut list = Actions {
            out: &mut out,
            left: view.cap.unwrap_or(usize::MAX),
            skipped: 0,
            colour: view.colour,
        };
        plan_actions(&mut list, report, relations);
        let left_out = [
            (
                report.plan.creates_left_out,
                "more record",
                "more records",
                "creates",
            ),
            (
                report.plan.hubs_left_out,
                "more contact",
                "more contacts",
                "updates",
            ),
        ];
        for (count, one, many, what) in left_out.into_iter().filter(|l| l.0 > 0) {
            let _ = writeln!(
                list.out,
                "\n... and the {what} of {} not listed: the run went range by range \
                 ([sync] hubs_per_range); `tandem runs show {}` lists every record it touched",
                plural(count, one, many),
                report.run_id.unwrap_or_default(),
            );
        }
        if list.skipped > 0 {
            let skipped = list.skipped;
            let _ = writeln!(
                out,
                "\n... and {} (`tandem plan --all` lists every one)",
                plural(skipped as u64, "more action", "more actions")
            );
        }
    }

    out.push('\n');
    out.push_str(&final_line(report, elapsed));
    out.push('\n');
    out
}

const PARKED: &str = " (parked until `tandem retry`)";

fn final_line(report: &RunReport, elapsed: Duration) -> String {
    let ambiguous = report.ambiguous.len();
    let failed = report.failed();
    let mut notes = Vec::new();
    if ambiguous > 0 {
        notes.push(plural(
            ambiguous as u64,
            "ambiguous match",
            "ambiguous matches",
        ));
    }
    if failed > 0 {
        notes.push(format!("{failed} failed"));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join(", "))
    };
    let secs = elapsed.as_secs_f64();
    match report.run_id {
        Some(run) => format!(
            "sync {}: {} written{notes} (run {run}, {secs:.2} s)",
            if failed > 0 {
                "finished with failures"
            } else {
                "finished"
            },
            plural(report.writes, "record", "records"),
        ),
        None => format!(
            "plan: sync would write {}{notes}; nothing was written ({secs:.2} s)",
            plural(report.writes, "record", "records"),
        ),
    }
}

fn plan_actions(list: &mut Actions<'_>, report: &RunReport, relations: &Relations) {
    let plan = &report.plan;
    let relation = |code: &str| relations.relations.iter().find(|r| r.code == code);
    let kind = |code: &str| relation(code).map_or("account", |r| r.kind.as_str());

    let links: Vec<_> = plan
        .hubs
        .iter()
        .flat_map(|h| h.pairs.iter().map(move |p| (h, p)))
        .filter_map(|(h, p)| Some((h, p, p.new_link?)))
        .collect();
    let has_links = !links.is_empty();
    if has_links {
        list.heading("Links to make (R4):");
        for (hub, pair, how) in links {
            let how = match how {
                NewLink::Match { tier } => {
                    let fields = relation(&pair.code)
                        .and_then(|r| r.tiers.get(tier - 1))
                        .map(|t| {
                            t.fields
                                .iter()
                                .map(|f| f.as_str())
                                .collect::<Vec<_>>()
                                .join(" + ")
                        })
                        .unwrap_or_default();
                    format!("match tier {tier}: {fields}")
                }
                NewLink::Operator => "by an operator: tandem link".to_owned(),
                NewLink::Recovered => {
                    "recovered: created by an earlier run that was cut short".to_owned()
                }
            };
            list.action(
                Marker::Add,
                format!(
                    "{} contact {} <-> {} {}  ({how})",
                    pair.code,
                    hub.contact_id,
                    kind(&pair.code),
                    pair.account_id,
                ),
            );
        }
    }

    if !plan.account_creates.is_empty() {
        list.heading("Accounts to create (R5):");
        for c in &plan.account_creates {
            let asked = match &c.requested_by {
                Some(person) => format!(", asked by person {person}"),
                None => String::new(),
            };
            let template = match c.template {
                Some(t) => format!(", template {t}"),
                None => String::new(),
            };
            list.action(
                Marker::Add,
                format!(
                    "{} {} for contact {}{asked}{template}: {}",
                    c.code,
                    kind(&c.code),
                    c.contact_id,
                    fields(&c.fields)
                ),
            );
        }
    }

    if !plan.creates.is_empty() {
        list.heading("Contacts to create (R6):");
        for c in &plan.creates {
            list.action(
                Marker::Add,
                format!(
                    "{} for {} {}: {}",
                    c.code,
                    kind(&c.code),
                    c.account_id,
                    fields(&c.fields.unpack())
                ),
            );
        }
    }

    let has_changes = plan.hubs.iter().any(|h| {
        !h.contact_changes.is_empty() || h.pairs.iter().any(|p| !p.account_changes.is_empty())
    });
    if has_changes {
        list.heading("Field changes (old -> new):");
        for hub in &plan.hubs {
            if !hub.contact_changes.is_empty()
                && list.action(Marker::Change, format!("contact {}", hub.contact_id))
            {
                changes(list.out, &hub.contact_changes.to_vec());
            }
            for pair in hub.pairs.iter().filter(|p| !p.account_changes.is_empty()) {
                let header = format!(
                    "{} {} ({}, contact {})",
                    kind(&pair.code),
                    pair.account_id,
                    pair.code,
                    hub.contact_id
                );
                if list.action(Marker::Change, header) {
                    changes(list.out, &pair.account_changes.to_vec());
                }
            }
        }
    }

    let conflicts: Vec<_> = plan
        .hubs
        .iter()
        .flat_map(|h| h.conflicts.iter().map(move |c| (h, c)))
        .collect();
    let conflicts_empty = conflicts.is_empty();
    if !conflicts.is_empty() {
        list.heading("Conflicts, both sides changed since the last sync (R15):");
        for (hub, c) in conflicts {
            let header = format!(
                "contact {}, {} (was {}):",
                hub.contact_id,
                c.field,
                show(&c.base)
            );
            if !list.action(Marker::Conflict, header) {
                continue;
            }
            let out = &mut *list.out;
            if let Some(v) = &c.contact {
                let _ = writeln!(out, "      contact {}: {}", hub.contact_id, show(v));
            }
            for (code, account, v) in &c.accounts {
                let _ = writeln!(out, "      {code} {} {account}: {}", kind(code), show(v));
            }
            if c.winner == tandem_engine::Winner::Manual {
                let _ = writeln!(
                    out,
                    "      -> waits in the conflict queue (policy manual): tandem conflicts"
                );
            } else {
                let policy = relation_policy(c.winner.as_str(), &c.accounts, c.policy);
                let _ = writeln!(
                    out,
                    "      -> {} wins{policy}: {}",
                    c.winner,
                    show(&c.value)
                );
            }
        }
    }

    if !plan.unlinks.is_empty() {
        list.heading("Links to drop:");
        for u in &plan.unlinks {
            let reason = match u.reason {
                UnlinkReason::ContactDeleted => "the contact was deleted; the account stays (R12)",
                UnlinkReason::AccountDeleted => "the account was deleted; the contact stays (R13)",
                UnlinkReason::Operator => "unlinked by an operator; both records stay",
            };
            list.action(
                Marker::Remove,
                format!(
                    "{} contact {} <-> {} {}: {reason}",
                    u.code,
                    u.contact_id,
                    kind(&u.code),
                    u.account_id
                ),
            );
        }
    }

    if !has_links
        && plan.creates.is_empty()
        && plan.account_creates.is_empty()
        && !has_changes
        && conflicts_empty
        && plan.unlinks.is_empty()
        && plan.rejected.is_empty()
    {
        list.out
            .push_str("\nNothing to do: every linked pair is in step.\n");
    }
}

/// What an action does, as its marker says: `+` makes, `~` changes, `-` drops, `!`
/// needs a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Add,
    Change,
    Remove,
    Conflict,
}

impl Marker {
    fn sign(self) -> char {
        match self {
            Marker::Add => '+',
            Marker::Change => '~',
            Marker::Remove => '-',
            Marker::Conflict => '!',
        }
    }

    /// The ANSI colour: green, yellow, red, magenta.
    fn colour(self) -> &'static str {
        match self {
            Marker::Add => "32",
            Marker::Change => "33",
            Marker::Remove => "31",
            Marker::Conflict => "35",
        }
    }
}

/// The action list of a plan, capped: past the cap, actions are only counted.
struct Actions<'a> {
    out: &'a mut String,
    left: usize,
    skipped: usize,
    colour: bool,
}

impl Actions<'_> {
    /// A section's heading, when some of its actions will be listed.
    fn heading(&mut self, text: &str) {
        if self.left > 0 {
            let _ = write!(self.out, "\n{text}\n");
        }
    }

    /// Lists one action, or counts it past the cap; whether it was listed (its detail
    /// lines follow it then).
    fn action(&mut self, marker: Marker, text: String) -> bool {
        if self.left == 0 {
            self.skipped += 1;
            return false;
        }
        self.left -= 1;
        let sign = marker.sign();
        let _ = if self.colour {
            writeln!(self.out, "  \x1b[{}m{sign}\x1b[0m {text}", marker.colour())
        } else {
            writeln!(self.out, "  {sign} {text}")
        };
        true
    }
}

/// ` (CUST conflict = newest)`: the relation and the policy that decided.
fn relation_policy(
    winner: &str,
    accounts: &[(String, String, Value)],
    policy: ConflictPolicy,
) -> String {
    let code = if winner == "contact" {
        accounts.first().map(|(code, _, _)| code.as_str())
    } else {
        Some(winner)
    };
    let policy = serde_json::to_value(policy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match code {
        Some(code) => format!(" ({code} conflict = {policy})"),
        None => format!(" (conflict = {policy})"),
    }
}

fn changes(out: &mut String, changes: &[FieldChange]) {
    for c in changes {
        let _ = writeln!(
            out,
            "      {}: {} -> {}",
            c.field,
            show(&c.old),
            show(&c.new)
        );
    }
}

/// `"Acme" (city="Gent", ...)`: the name first, since that is how people find it.
fn fields(fields: &Fields) -> String {
    let rest = fields
        .iter()
        .filter(|(name, _)| name.as_str() != tandem_model::field::NAME)
        .map(|(name, value)| format!("{name}={}", show(value)))
        .collect::<Vec<_>>()
        .join(", ");
    match fields.get(tandem_model::field::NAME) {
        Some(name) => format!("{} ({rest})", show(name)),
        None => rest,
    }
}

/// A value for people: quoted text, `(empty)` for nothing.
pub(crate) fn show(value: &Value) -> String {
    if value.is_empty() {
        "(empty)".to_owned()
    } else {
        format!("{:?}", value.to_cell())
    }
}

/// A JSON value (as stored in the interaction log) for people, like [`show`].
pub(crate) fn json_show(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "(empty)".to_owned(),
        serde_json::Value::String(s) if s.is_empty() => "(empty)".to_owned(),
        serde_json::Value::String(s) => format!("{s:?}"),
        serde_json::Value::Array(items) if items.is_empty() => "(empty)".to_owned(),
        serde_json::Value::Array(items) => format!(
            "{:?}",
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(";")
        ),
        serde_json::Value::Object(map) => match map.get("date").and_then(|d| d.as_str()) {
            Some(date) => format!("{date:?}"),
            None => value.to_string(),
        },
        other => other.to_string(),
    }
}

pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(crate) fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Aligned columns: text columns left, number columns right (headers follow their
/// column).
pub(crate) fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let cells = |i: usize| rows.iter().filter_map(move |r| r.get(i));
    let widths: Vec<usize> = (0..columns)
        .map(|i| cells(i).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> = (0..columns)
        .map(|i| i > 0 && cells(i).skip(1).all(|c| c.parse::<u64>().is_ok()))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let width = widths[i];
            let gap = if i == 0 { "" } else { "  " };
            let _ = if numeric[i] {
                write!(line, "{gap}{cell:>width$}")
            } else {
                write!(line, "{gap}{cell:<width$}")
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_numbers_right() {
        let mut out = String::new();
        table(
            &mut out,
            &[
                row(&["relation", "linked"]),
                row(&["CUST (customers)", "12"]),
            ],
        );
        assert_eq!(out, "relation          linked\nCUST (customers)      12\n");
    }

    #[test]
    fn actions_are_marked_coloured_on_request_and_capped() {
        let mut out = String::new();
        let mut list = Actions {
            out: &mut out,
            left: 2,
            skipped: 0,
            colour: false,
        };
        list.heading("Links to make (R4):");
        assert!(list.action(Marker::Add, "CUST contact C1 <-> customer K1".into()));
        assert!(list.action(Marker::Change, "contact C2".into()));
        assert!(
            !list.action(Marker::Remove, "CUST contact C3".into()),
            "past the cap"
        );
        list.heading("Links to drop:");
        assert_eq!(list.skipped, 1);
        assert_eq!(
            out, "\nLinks to make (R4):\n  + CUST contact C1 <-> customer K1\n  ~ contact C2\n",
            "no heading for a section with nothing listed"
        );

        let mut out = String::new();
        let mut list = Actions {
            out: &mut out,
            left: usize::MAX,
            skipped: 0,
            colour: true,
        };
        list.action(Marker::Remove, "x".into());
        list.action(Marker::Conflict, "y".into());
        assert_eq!(out, "  \x1b[31m-\x1b[0m x\n  \x1b[35m!\x1b[0m y\n");
    }

    /// A run in ranges lists one range's worth and says how many more it left out,
    /// of creates and of updates alike.
    #[test]
    fn a_ranged_run_names_the_creates_and_updates_it_does_not_list() {
        let mut plan = tandem_engine::plan::Plan::default();
        (plan.hubs_left_out, plan.creates_left_out) = (5, 1);
        let run = RunReport {
            run_id: Some(7),
            mode: tandem_engine::RunMode::Sync,
            read: Vec::new(),
            counts: Vec::new(),
            writes: 0,
            ambiguous: Vec::new(),
            failures: Vec::new(),
            plan,
        };
        let relations = Relations {
            contacts_connector: "crm".into(),
            contact_preserve: Vec::new(),
            relations: Vec::new(),
            partitions: 1,
        };
        let view = View {
            actions: true,
            cap: None,
            colour: false,
        };
        let out = report(&run, &relations, view, Duration::from_secs(1));
        let line = |what: &str, count: &str| {
            format!(
                "... and the {what} of {count} not listed: the run went range by range \
                 ([sync] hubs_per_range); `tandem runs show 7` lists every record it touched\n"
            )
        };
        assert!(out.contains(&line("creates", "1 more record")), "{out}");
        assert!(out.contains(&line("updates", "5 more contacts")), "{out}");
    }

    #[test]
    fn values_are_quoted_and_empty_is_named() {
        assert_eq!(show(&Value::text("+32 9")), "\"+32 9\"");
        assert_eq!(show(&Value::Null), "(empty)");
        assert_eq!(
            show(&Value::list(vec!["CUST".into(), "VEND".into()])),
            "\"CUST;VEND\""
        );
    }
}
