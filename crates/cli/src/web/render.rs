//! The status page's HTML: pure functions from what the state holds to markup. maud
//! escapes every interpolated value, so partner data (names, ids, errors quoting
//! records) can never become markup; only the constant style sheet is passed through.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use tandem_model::Value;
use tandem_state::{
    ConflictEntry, Interaction, Link, PendingCreate, PendingLink, RefusedRequest, RunRecord,
};

use crate::inspect::{details, summary_counts};

/// At most this many rows of one list on the overview: a state with thousands of
/// conflicts or parked records still gives a page a browser shows.
pub(crate) const SHOWN: usize = 200;

/// The note under a list cut at [`SHOWN`].
fn more(total: usize, command: &str) -> Markup {
    html! {
        @if total > SHOWN {
            p.more { "The first " (SHOWN) " of " (total) "; " code { (command) } " lists them all." }
        }
    }
}

/// What the overview shows, read from the state in one go.
#[derive(Debug, Default)]
pub(crate) struct Overview {
    /// The state file, as configured (a path: urls with passwords are not shown).
    pub state_path: String,
    /// False when there is no state file yet.
    pub state_exists: bool,
    pub runs: Vec<RunRecord>,
    pub parked_links: Vec<Link>,
    pub parked_creates: Vec<PendingCreate>,
    pub parked_refused: Vec<RefusedRequest>,
    pub parked_pending_links: Vec<PendingLink>,
    pub refused: Vec<RefusedRequest>,
    pub pending_links: Vec<PendingLink>,
    pub pending_creates: Vec<PendingCreate>,
    pub conflicts: Vec<ConflictEntry>,
    /// Why the service is not ready (`/readyz`); empty when it is.
    pub not_ready: Vec<String>,
}

/// The account kind of each configured relation code, for labels (`customer`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Kinds(pub Vec<(String, &'static str)>);

impl Kinds {
    pub(crate) fn of(&self, code: &str) -> &'static str {
        self.0
            .iter()
            .find(|(c, _)| c == code)
            .map_or("account", |(_, k)| k)
    }

    pub(crate) fn codes(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(c, _)| c.as_str())
    }
}

/// A message at the top of a page, after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    Done(String),
    Failed(String),
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:80rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.empty{color:#888;font-style:italic}
.notice{padding:.5rem 1rem;border-radius:4px}
.done{background:#e6f4e6;border:1px solid #8c8}
.failed{background:#fbe9e9;border:1px solid #c88}
.status-failed,.status-partial,.status-interrupted{color:#a00;font-weight:bold}
form.inline{display:inline;margin:0}
td form{margin:.15rem 0}
code{background:#f3f3f3;padding:0 .2rem}
";

/// The frame of every page.
pub(crate) fn layout(title: &str, notice: Option<&Notice>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " - Tandem" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/" { "Status" }
                    a href="/#conflicts" { "Conflicts" }
                    a href="/#links" { "Links" }
                }
                h1 { (title) }
                @match notice {
                    Some(Notice::Done(text)) => p.notice.done role="status" id="notice" { (text) },
                    Some(Notice::Failed(text)) => p.notice.failed role="alert" id="notice" { (text) },
                    None => {},
                }
                (body)
            }
        }
    }
}

/// A field value for people: its text, or a marked `(empty)`.
fn value(v: &Value) -> Markup {
    if v.is_empty() {
        html! { span.empty { "(empty)" } }
    } else {
        html! { code { (v.to_cell()) } }
    }
}

fn contact_link(id: &str) -> Markup {
    html! { a href={ "/log?contact=" (query(id)) } { (id) } }
}

/// Percent-encodes a query value.
pub(crate) fn query(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `/`: runs, parked work, waiting work, open conflicts, and the search forms.
pub(crate) fn overview(o: &Overview, kinds: &Kinds, csrf: &str, notice: Option<&Notice>) -> Markup {
    let body = html! {
        @if o.not_ready.is_empty() {
            p id="health" { "Ready: every connector passed its last check or poll." }
        } @else {
            p.notice.failed id="health" { "Not ready: " (o.not_ready.join("; ")) ". The log says why." }
        }
        @if !o.state_exists {
            p.empty { "No state yet at " code { (o.state_path) } ": nothing has been synchronised." }
        }
        (runs(&o.runs))
        (parked(o, kinds))
        (conflicts(&o.conflicts, kinds, csrf))
        (waiting(o, kinds))
        (search_forms("", ""))
    };
    layout("Tandem status", notice, body)
}

fn runs(runs: &[RunRecord]) -> Markup {
    html! {
        h2 id="runs" { "Last runs" }
        @if runs.is_empty() {
            p.empty { "No runs yet." }
        } @else {
            table {
                tr { th { "run" } th { "mode" } th { "status" } th { "started" } th { "duration" } th { "writes" } th { "counts" } }
                @for r in runs {
                    tr {
                        td { (r.id) }
                        td { (r.mode) }
                        td class={ "status-" (r.status) } { (r.status) }
                        td { (r.started_at.to_string()) }
                        td {
                            @match r.finished_at {
                                Some(f) => (format!("{:.2} s", (f.0 - r.started_at.0) as f64 / 1000.0)),
                                None => "-",
                            }
                        }
                        td { (r.summary["writes"].as_u64().map_or_else(|| "-".to_owned(), |w| w.to_string())) }
                        td {
                            (summary_counts(&r.summary))
                            @if let Some(error) = r.summary["error"].as_str() {
                                br; span.status-failed { (error) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn parked(o: &Overview, kinds: &Kinds) -> Markup {
    let none = o.parked_links.is_empty()
        && o.parked_creates.is_empty()
        && o.parked_refused.is_empty()
        && o.parked_pending_links.is_empty();
    let no_error = "(no error recorded)";
    html! {
        h2 id="parked" { "Parked" }
        @if none {
            p.empty { "Nothing is parked." }
        } @else {
            p { "Failed twice with the same error (R17): left alone until retried with " code { "tandem retry CODE ID" } "." }
            table {
                tr { th { "what" } th { "error" } th { "failures" } th { "retry" } }
                @for l in o.parked_links.iter().take(SHOWN) {
                    tr {
                        td { (l.code) " contact " (contact_link(&l.contact_id)) " / " (kinds.of(&l.code)) " " (l.account_id) }
                        td { (l.last_error.as_deref().unwrap_or(no_error)) }
                        td { (l.failure_count) }
                        td { code { "tandem retry " (l.code) " " (l.contact_id) } }
                    }
                }
                @for p in o.parked_creates.iter().take(SHOWN) {
                    tr {
                        td { (create_label(kinds, p)) }
                        td { (p.error.as_deref().unwrap_or(no_error)) }
                        td { (p.failure_count) }
                        td { code { "tandem retry " (p.code) " " (p.source_id) } }
                    }
                }
                @for p in o.parked_refused.iter().take(SHOWN) {
                    tr {
                        td { (p.code) " request of contact " (contact_link(&p.contact_id)) " refused" }
                        td { (p.error) }
                        td { (p.failure_count) }
                        td { code { "tandem retry " (p.code) " " (p.contact_id) } }
                    }
                }
                @for p in o.parked_pending_links.iter().take(SHOWN) {
                    tr {
                        td { (p.code) " contact " (contact_link(&p.contact_id)) " / " (kinds.of(&p.code)) " " (p.account_id) " (not linked yet)" }
                        td { (p.error.as_deref().unwrap_or(no_error)) }
                        td { (p.failure_count) }
                        td { code { "tandem retry " (p.code) " " (p.contact_id) } }
                    }
                }
            }
            (more(
                [o.parked_links.len(), o.parked_creates.len(), o.parked_refused.len(), o.parked_pending_links.len()]
                    .into_iter().max().unwrap_or(0),
                "tandem status",
            ))
        }
    }
}

fn create_label(kinds: &Kinds, p: &PendingCreate) -> String {
    crate::inspect::create_text(kinds.of(&p.code), p)
}

fn conflicts(open: &[ConflictEntry], kinds: &Kinds, csrf: &str) -> Markup {
    html! {
        h2 id="conflicts" { "Open conflicts" }
        @if open.is_empty() {
            p.empty { "No open conflicts." }
        } @else {
            p { "Both sides changed these fields since the last sync, under the " code { "manual" } " policy (R15). "
                "A decision is written to both sides by the next sync, which closes the conflict." }
            table {
                tr { th { "id" } th { "pair" } th { "field" } th { "base" } th { "contact" } th { "account" } th { "settle" } }
                @for c in open.iter().take(SHOWN) {
                    tr id={ "conflict-" (c.id) } {
                        td { (c.id) }
                        td { (c.code) " contact " (contact_link(&c.contact_id)) " / " (kinds.of(&c.code)) " " (c.account_id) }
                        td { (c.field) }
                        td { (value(&c.base)) }
                        td { (value(&c.contact_value)) }
                        td { (value(&c.account_value)) }
                        td {
                            @if let Some(resolution) = &c.resolution {
                                p { "Settled: " (value(resolution)) ", written by the next sync." }
                            }
                            (settle_forms(c, csrf))
                        }
                    }
                }
            }
            (more(open.len(), "tandem conflicts"))
        }
    }
}

/// Two forms, so that Enter in the value field submits that value, never a side.
fn settle_forms(c: &ConflictEntry, csrf: &str) -> Markup {
    let action = format!("/conflicts/{}/settle", c.id);
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" name="take" value="contact" id={ "take-contact-" (c.id) } { "Take contact" }
            " "
            button type="submit" name="take" value="account" id={ "take-account-" (c.id) } { "Take account" }
        }
        form method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="take" value="value";
            input type="text" name="value" id={ "value-" (c.id) } aria-label="a value of your own" placeholder="a value of your own";
            " "
            button type="submit" id={ "take-value-" (c.id) } { "Take this value" }
        }
    }
}

fn waiting(o: &Overview, kinds: &Kinds) -> Markup {
    html! {
        h2 id="waiting" { "Waiting for the next run" }
        @if o.refused.is_empty() && o.pending_links.is_empty() && o.pending_creates.is_empty() {
            p.empty { "Nothing waits." }
        }
        @if !o.refused.is_empty() {
            h3 { "Refused requests" }
            p { "Asked again on the next run; parked after the same refusal twice." }
            ul {
                @for p in o.refused.iter().take(SHOWN) {
                    li { (p.code) " contact " (contact_link(&p.contact_id)) ": " (p.error) }
                }
            }
            (more(o.refused.len(), "tandem status"))
        }
        @if !o.pending_links.is_empty() {
            h3 { "Links not made yet" }
            p { "The next sync links them." }
            ul {
                @for p in o.pending_links.iter().take(SHOWN) {
                    li { (p.code) " contact " (contact_link(&p.contact_id)) " / " (kinds.of(&p.code)) " " (p.account_id)
                        @if let Some(e) = &p.error { ": " (e) } }
                }
            }
            (more(o.pending_links.len(), "tandem status"))
        }
        @if !o.pending_creates.is_empty() {
            h3 { "Pending creates" }
            p { "Not finished yet; the next sync completes or repairs them." }
            ul {
                @for p in o.pending_creates.iter().take(SHOWN) {
                    li { (create_label(kinds, p)) ": "
                        @match &p.error {
                            Some(e) => { "failed " (p.failure_count) " times: " (e) },
                            None => { "started by run " (p.run_id.map_or_else(|| "?".to_owned(), |r| r.to_string())) },
                        }
                    }
                }
            }
            (more(o.pending_creates.len(), "tandem status"))
        }
    }
}

/// The links search (by contact or account id) and the interaction log form: plain GET
/// forms, so a result is a URL to bookmark or share.
fn search_forms(id: &str, contact: &str) -> Markup {
    html! {
        h2 id="links" { "Links" }
        form method="get" action="/links" {
            label for="link-id" { "Contact or account id " }
            input type="search" name="id" id="link-id" value=(id) required;
            " "
            button type="submit" { "Find links" }
        }
        h2 id="log" { "Interaction log" }
        form method="get" action="/log" {
            label for="log-contact" { "Contact id " }
            input type="search" name="contact" id="log-contact" value=(contact) required;
            " "
            button type="submit" { "Show log" }
        }
    }
}

/// `/links?id=`: the links of a contact or an account.
pub(crate) fn links(id: &str, found: &[Link], kinds: &Kinds) -> Markup {
    let body = html! {
        @if found.is_empty() {
            p.empty { "No link has contact or account " code { (id) } "." }
        } @else {
            table {
                tr { th { "code" } th { "contact" } th { "account" } th { "linked" } th { "synced" } th { "failures" } th { "parked" } th { "last error" } th { "baseline" } }
                @for l in found {
                    tr {
                        td { (l.code) }
                        td { (contact_link(&l.contact_id)) }
                        td { (kinds.of(&l.code)) " " (l.account_id) }
                        td { (l.linked_at.to_string()) }
                        td { (l.synced_at.to_string()) }
                        td { (l.failure_count) }
                        td { (if l.parked { "yes" } else { "no" }) }
                        td { (l.last_error.as_deref().unwrap_or("")) }
                        td {
                            details {
                                summary { (l.baseline.len()) " fields" }
                                table {
                                    @for (name, v) in l.baseline.iter() {
                                        tr { td { (name.as_str()) } td { (value(v)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (search_forms(id, ""))
    };
    layout(&format!("Links of {id}"), None, body)
}

/// `/log?contact=`: a contact's interaction log (R11), oldest first.
pub(crate) fn log(contact: &str, entries: &[Interaction]) -> Markup {
    let body = html! {
        @if entries.is_empty() {
            p.empty { "No interactions logged for contact " code { (contact) } ": Tandem has done nothing to a relation of it (R11)." }
        } @else {
            table {
                tr { th { "at" } th { "run" } th { "code" } th { "account" } th { "action" } th { "source" } th { "details" } }
                @for e in entries {
                    tr {
                        td { (e.at.to_string()) }
                        td { (e.run_id.map_or_else(|| "-".to_owned(), |r| r.to_string())) }
                        td { (e.code) }
                        td { (e.account_id.as_deref().unwrap_or("-")) }
                        td { (e.action) }
                        td { (e.source) }
                        td { (details(e)) }
                    }
                }
            }
        }
        (search_forms("", contact))
    };
    layout(&format!("Interaction log of contact {contact}"), None, body)
}

/// A page that only says what went wrong, with the way back.
pub(crate) fn error(title: &str, message: &str) -> Markup {
    layout(
        title,
        Some(&Notice::Failed(message.to_owned())),
        html! { p { a href="/" { "Back to the status page" } } },
    )
}

/// The answer to a request without the token: a form that asks for it.
pub(crate) fn token_form(path: &str, query: &[&(String, String)], wrong: bool) -> Markup {
    let notice = wrong.then(|| Notice::Failed("That token is not the configured one.".to_owned()));
    let body = html! {
        p { "This listener requires the token of " code { "[service] token" } "." }
        form method="get" action=(path) {
            @for (name, value) in query.iter().map(|p| (&p.0, &p.1)) {
                input type="hidden" name=(name) value=(value);
            }
            label for="token" { "Token " }
            input type="password" name="token" id="token" autocomplete="current-password" required;
            " "
            button type="submit" { "Open" }
        }
    };
    layout("Token required", notice.as_ref(), body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tandem_model::{Fields, Timestamp};
    use tandem_state::{LinkedBy, Side};

    use super::*;

    const EVIL: &str = "<script>alert(1)</script>\"'&";

    fn kinds() -> Kinds {
        Kinds(vec![("CUST".into(), "customer"), ("VEND".into(), "vendor")])
    }

    fn conflict(id: i64) -> ConflictEntry {
        ConflictEntry {
            id,
            code: "CUST".into(),
            contact_id: "C1".into(),
            account_id: "K1".into(),
            field: "phone".into(),
            base: Value::text("+32 1"),
            contact_value: Value::text("+32 2"),
            account_value: Value::text(EVIL),
            opened_at: Timestamp(0),
            run_id: Some(2),
            resolution: None,
            closed_at: None,
        }
    }

    fn run(id: i64, status: &str, summary: serde_json::Value) -> RunRecord {
        RunRecord {
            id,
            mode: "sync".into(),
            started_at: Timestamp(1_000),
            finished_at: Some(Timestamp(3_500)),
            status: status.into(),
            summary,
        }
    }

    fn link(contact: &str, account: &str) -> Link {
        Link {
            code: "CUST".into(),
            contact_id: contact.into(),
            account_id: account.into(),
            baseline: Fields::default(),
            contact_version: None,
            account_version: None,
            last_error: Some(EVIL.into()),
            failure_count: 2,
            parked: true,
            linked_at: Timestamp(0),
            synced_at: Timestamp(0),
            intent: None,
        }
    }

    #[test]
    fn every_partner_value_is_escaped() {
        let o = Overview {
            state_exists: true,
            runs: vec![run(1, "failed", json!({"error": EVIL}))],
            parked_links: vec![link(EVIL, "K1")],
            refused: vec![RefusedRequest {
                code: "CUST".into(),
                contact_id: "C9".into(),
                error: EVIL.into(),
                run_id: None,
                failure_count: 1,
                parked: false,
                updated_at: Timestamp(0),
            }],
            conflicts: vec![conflict(3)],
            ..Overview::default()
        };
        let html = overview(&o, &kinds(), "tok", None).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"));
        // An id in a URL is percent-encoded, then escaped.
        assert!(
            html.contains("href=\"/log?contact=%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%27%26\""),
            "{html}"
        );
        let html = log(EVIL, &[]).into_string();
        assert!(!html.contains("<script>"), "{html}");
        let html = links(EVIL, &[link("C1", EVIL)], &kinds()).into_string();
        assert!(!html.contains("<script>"), "{html}");
        let html = error(EVIL, EVIL).into_string();
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn a_conflict_offers_both_sides_and_a_value_of_ones_own_with_the_csrf_token() {
        let o = Overview {
            state_exists: true,
            conflicts: vec![conflict(7)],
            ..Overview::default()
        };
        let html = overview(&o, &kinds(), "secret-csrf", None).into_string();
        assert!(
            html.contains("<td><code>+32 1</code></td>"),
            "the base: {html}"
        );
        assert!(
            html.contains("<td><code>+32 2</code></td>"),
            "the contact: {html}"
        );
        assert!(html.contains("CUST contact <a href=\"/log?contact=C1\">C1</a> / customer K1"));
        assert_eq!(
            html.matches("<form class=\"inline\" method=\"post\" action=\"/conflicts/7/settle\">")
                .count()
                + html
                    .matches("<form method=\"post\" action=\"/conflicts/7/settle\">")
                    .count(),
            2,
            "{html}"
        );
        assert_eq!(
            html.matches("<input type=\"hidden\" name=\"csrf\" value=\"secret-csrf\">")
                .count(),
            2,
            "every POST form carries the token"
        );
        for id in [
            "take-contact-7",
            "take-account-7",
            "take-value-7",
            "value-7",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(!html.contains("Settled:"));

        let mut settled = conflict(7);
        settled.resolution = Some(Value::text("+32 4"));
        let o = Overview {
            conflicts: vec![settled],
            ..Overview::default()
        };
        let notice = Notice::Done("Conflict 7 settled".into());
        let html = overview(&o, &kinds(), "t", Some(&notice)).into_string();
        assert!(html.contains("Settled: <code>+32 4</code>, written by the next sync."));
        assert!(html.contains(
            "<p class=\"notice done\" role=\"status\" id=\"notice\">Conflict 7 settled</p>"
        ));
        assert!(html.contains("No state yet at"), "an empty state says so");
    }

    #[test]
    fn runs_show_counts_durations_and_why_a_run_failed() {
        let o = Overview {
            state_exists: true,
            runs: vec![
                run(
                    2,
                    "ok",
                    json!({"writes": 3, "counts": [{"code": "CUST", "linked": 2, "updated": 1}]}),
                ),
                run(1, "failed", json!({"error": "connector erp: timed out"})),
            ],
            ..Overview::default()
        };
        let html = overview(&o, &kinds(), "t", None).into_string();
        assert!(
            html.contains("<td>2</td><td>sync</td><td class=\"status-ok\">ok</td><td>1970-01-01T00:00:01Z</td><td>2.50 s</td><td>3</td><td>CUST: 2 linked, 1 updated</td>"),
            "{html}"
        );
        assert!(
            html.contains(
                "error (below)<br><span class=\"status-failed\">connector erp: timed out</span>"
            ),
            "{html}"
        );
        assert!(html.contains("Nothing is parked."));
        assert!(html.contains("No open conflicts."));
        assert!(html.contains("Nothing waits."));
    }

    #[test]
    fn the_overview_says_whether_the_service_is_ready() {
        let html = overview(&Overview::default(), &kinds(), "t", None).into_string();
        assert!(
            html.contains("<p id=\"health\">Ready: every connector passed"),
            "{html}"
        );
        let o = Overview {
            not_ready: vec!["connector erp failed its last check or poll".into()],
            ..Overview::default()
        };
        let html = overview(&o, &kinds(), "t", None).into_string();
        assert!(
            html.contains("<p class=\"notice failed\" id=\"health\">Not ready: connector erp failed its last check or poll. The log says why.</p>"),
            "{html}"
        );
    }

    #[test]
    fn long_lists_are_cut_with_a_note() {
        let o = Overview {
            conflicts: (1..=SHOWN as i64 + 5).map(conflict).collect(),
            ..Overview::default()
        };
        let html = overview(&o, &kinds(), "t", None).into_string();
        assert!(html.contains("id=\"conflict-200\""));
        assert!(!html.contains("id=\"conflict-201\""));
        assert!(
            html.contains("The first 200 of 205; <code>tandem conflicts</code> lists them all."),
            "{html}"
        );
    }

    #[test]
    fn parked_and_waiting_work_is_listed_with_the_retry_command() {
        let pending_link = PendingLink {
            code: "VEND".into(),
            contact_id: "C4".into(),
            account_id: "V4".into(),
            by: LinkedBy::Operator,
            error: None,
            failure_count: 0,
            parked: false,
            updated_at: Timestamp(0),
        };
        let create = PendingCreate {
            code: "CUST".into(),
            side: Side::Account,
            source_id: "C5".into(),
            fields: Fields::default(),
            run_id: Some(4),
            error: None,
            failure_count: 0,
            parked: false,
            updated_at: Timestamp(0),
            record_id: Some("K-9".into()),
        };
        let o = Overview {
            state_exists: true,
            parked_links: vec![link("C1", "K1")],
            pending_links: vec![pending_link],
            pending_creates: vec![create],
            ..Overview::default()
        };
        let html = overview(&o, &kinds(), "t", None).into_string();
        assert!(html.contains("<code>tandem retry CUST C1</code>"), "{html}");
        assert!(html.contains("VEND contact <a href=\"/log?contact=C4\">C4</a> / vendor V4"));
        assert!(html.contains("CUST new customer for contact C5 (as K-9): started by run 4"));
    }

    #[test]
    fn the_log_and_the_links_show_their_entries() {
        let entry = Interaction {
            id: 1,
            at: Timestamp(0),
            run_id: Some(5),
            contact_id: "C1".into(),
            code: "CUST".into(),
            account_id: Some("K1".into()),
            action: "linked".into(),
            source: "match".into(),
            details: json!({"by": "match", "tier": 2}).into(),
        };
        let html = log("C1", &[entry]).into_string();
        assert!(
            html.contains("<td>5</td><td>CUST</td><td>K1</td><td>linked</td><td>match</td><td>by match tier 2</td>"),
            "{html}"
        );
        assert!(html.contains("value=\"C1\""), "the form keeps the contact");
        let html = log("C2", &[]).into_string();
        assert!(html.contains("No interactions logged for contact <code>C2</code>"));

        let html = links("K1", &[link("C1", "K1")], &kinds()).into_string();
        assert!(html.contains("<td>customer K1</td>"), "{html}");
        assert!(html.contains("<td>yes</td>"), "parked");
        let html = links("K9", &[], &kinds()).into_string();
        assert!(html.contains("No link has contact or account <code>K9</code>."));
    }

    #[test]
    fn the_token_form_asks_for_the_token_without_echoing_one() {
        let id = ("id".to_owned(), "K\"1".to_owned());
        let html = token_form("/links", &[&id], true).into_string();
        assert!(
            html.contains("<form method=\"get\" action=\"/links\"><input type=\"hidden\" name=\"id\" value=\"K&quot;1\">"),
            "the search asked for is kept: {html}"
        );
        assert!(html.contains("type=\"password\" name=\"token\""));
        assert!(html.contains("That token is not the configured one."));
    }
}
