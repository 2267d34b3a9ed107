//! The operator commands through the binary: `link`, `unlink`, `links`, `status`,
//! `retry`.

use serde_json::json;

use crate::support::{CONFIG, Deployment, cell, counts, rows};

/// Nothing that match rules could pair: links are made by hand.
const CONTACTS: &str = "\
id,contact_type,company_id,name,phone
C1,company,,Acme NV,+32 9 111
C2,company,,Beta BV,
C3,person,C1,Jan Peeters,
";

const CUSTOMERS: &str = "\
id,name,phone,payment_terms
K1,ACME Corporation,,30D
K2,Beta,+32 2 222,14D
";

fn seeded() -> Deployment {
    // No create_contacts: unlinked customers stay unlinked until linked by hand.
    let d = Deployment::with_config(&CONFIG.replace("create_contacts = true\n", ""));
    d.write("crm/contacts.csv", CONTACTS);
    d.write("erp/customers.csv", CUSTOMERS);
    d
}

fn link(code: &str, contact: &str, account: &str) -> (String, String, String) {
    (code.into(), contact.into(), account.into())
}

#[test]
fn r4_link_by_hand_and_r2_refused_when_either_side_is_taken() {
    let d = seeded();
    assert_eq!(d.sync()["writes"], 0);
    let out = d.ok(&["link", "CUST", "C1", "K1"]);
    assert!(
        out.contains("CUST contact C1 <-> customer K1  (by an operator"),
        "{out}"
    );
    assert_eq!(d.links(), [link("CUST", "C1", "K1")]);
    // The new link starts from the contact (initial = contact) and fills empties.
    let customers = d.read("erp/customers.csv");
    assert_eq!(cell(&customers, "K1", "name").as_deref(), Some("Acme NV"));
    assert_eq!(
        cell(&customers, "K1", "phone").as_deref(),
        Some("+32 9 111")
    );
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "business_relations").as_deref(),
        Some("CUST"),
        "R9"
    );
    let log = d.json(&["log", "C1"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "linked" && e["source"] == "operator"),
        "{log}"
    );

    // R2: the account has a contact already; the contact has a CUST link already.
    let files = d.snapshot();
    let err = d.fails(&["link", "CUST", "C2", "K1"], 1);
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("customer K1 already belongs to another contact"),
        "{err}"
    );
    let err = d.fails(&["link", "CUST", "C1", "K2"], 1);
    assert!(err.contains("contact C1 already has a CUST link"), "{err}");
    // A person with a company links through the company (R3).
    let err = d.fails(&["link", "CUST", "C3", "K2"], 1);
    assert!(err.contains("link the company"), "{err}");
    let err = d.fails(&["link", "CUST", "C2", "K404"], 1);
    assert!(err.contains("customer K404 not found"), "{err}");
    let err = d.fails(&["link", "CUST", "C404", "K2"], 1);
    assert!(err.contains("contact C404 not found"), "{err}");
    let err = d.fails(&["link", "NOPE", "C2", "K2"], 1);
    assert!(err.contains("no relation `NOPE` is configured"), "{err}");
    assert_eq!(files, d.snapshot(), "a refused request writes nothing");
    assert_eq!(d.links(), [link("CUST", "C1", "K1")]);

    // JSON: the run report, with the link's kind.
    let report = d.json(&["link", "CUST", "C2", "K2"]);
    assert_eq!(counts(&report, "CUST")["linked"], 1, "{report}");
    let hub = report["plan"]["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["contact_id"] == "C2")
        .unwrap_or_else(|| panic!("a hub for C2: {report}"));
    let pair = &hub["pairs"][0];
    assert_eq!(pair["new_link"], json!({"by": "operator"}), "{report}");
    assert_eq!(d.links().len(), 2);
}

#[test]
fn unlink_drops_the_link_and_keeps_both_records() {
    let d = seeded();
    d.ok(&["link", "CUST", "C2", "K2"]);
    let out = d.ok(&["unlink", "CUST", "C2"]);
    assert!(out.contains("unlinked by an operator"), "{out}");
    assert!(d.links().is_empty());
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K2", "name").as_deref(),
        Some("Beta BV"),
        "the account stays"
    );
    let contacts = d.read("crm/contacts.csv");
    assert_eq!(cell(&contacts, "C2", "name").as_deref(), Some("Beta BV"));
    assert_eq!(
        cell(&contacts, "C2", "business_relations").as_deref(),
        Some(""),
        "the contact loses the code (R9)"
    );
    let log = d.json(&["log", "C2"]);
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "unlinked");
    assert_eq!(last["source"], "operator");
    assert_eq!(last["details"]["reason"], "operator");

    let err = d.fails(&["unlink", "CUST", "C2"], 1);
    assert!(err.contains("has no CUST link"), "{err}");
    // Not linked again by the next run: nothing matches them.
    assert_eq!(d.sync()["writes"], 0);
    assert!(d.links().is_empty());
}

#[test]
fn links_list_and_export_as_csv_and_json() {
    let d = seeded();
    d.write(
        "erp/vendors.csv",
        "id,name,vat_registration_no\nV1,Beta,BE0222\n",
    );
    d.ok(&["link", "CUST", "C1", "K1"]);
    d.ok(&["link", "CUST", "C2", "K2"]);
    d.ok(&["link", "VEND", "C2", "V1"]);

    let csv = d.ok(&["links", "--format", "csv"]);
    assert!(
        csv.starts_with(
            "code,contact_id,account_id,linked_at,synced_at,failure_count,parked,last_error\n"
        ),
        "{csv}"
    );
    let listed: Vec<(String, String, String)> = rows(&csv)
        .into_iter()
        .map(|r| {
            (
                r["code"].clone(),
                r["contact_id"].clone(),
                r["account_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            link("CUST", "C1", "K1"),
            link("CUST", "C2", "K2"),
            link("VEND", "C2", "V1")
        ]
    );
    let first = &rows(&csv)[0];
    assert_eq!(first["parked"], "false");
    assert_eq!(first["failure_count"], "0");
    assert!(first["linked_at"].ends_with('Z'), "RFC 3339: {first:?}");

    let vend = rows(&d.ok(&["links", "VEND", "--format", "csv"]));
    assert_eq!(vend.len(), 1);
    assert_eq!(vend[0]["account_id"], "V1");

    let json = d.json(&["links", "CUST"]);
    let json = json.as_array().unwrap();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["contact_id"], "C1");
    assert_eq!(json[0]["baseline"]["name"], "Acme NV", "with the baseline");
    assert_eq!(
        d.ok(&["links", "CUST", "--format", "json"]),
        d.ok(&["--json", "links", "CUST"])
    );

    let table = d.ok(&["links"]);
    assert!(table.contains("VEND  C2"), "{table}");
    assert!(table.contains("3 links"), "{table}");
    let err = d.fails(&["links", "NOPE"], 1);
    assert!(err.contains("no relation `NOPE` is configured"), "{err}");
    let err = d.fails(&["--json", "links", "--format", "csv"], 2);
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn status_shows_the_last_runs_and_what_waits() {
    let d = seeded();
    d.ok(&["link", "CUST", "C1", "K1"]);
    d.sync();
    let status = d.json(&["status"]);
    let runs = status["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{status}");
    assert_eq!(runs[0]["id"], 2, "newest first");
    assert_eq!(runs[0]["status"], "ok");
    assert_eq!(runs[0]["mode"], "sync");
    assert!(runs[0]["duration_ms"].as_i64().is_some(), "{status}");
    let first_counts = runs[1]["summary"]["counts"].as_array().unwrap();
    let cust = first_counts.iter().find(|c| c["code"] == "CUST").unwrap();
    assert_eq!(cust["linked"], 1);
    assert_eq!(status["open_conflicts"], 0);
    assert_eq!(status["parked"]["links"], json!([]));
    assert_eq!(status["pending_creates"], json!([]));
    assert_eq!(status["state_exists"], true);

    let text = d.ok(&["status"]);
    assert!(text.contains("Last runs:"), "{text}");
    assert!(text.contains("CUST: 1 linked"), "{text}");
    assert!(text.contains("Parked: none."), "{text}");
    assert!(text.contains("Open conflicts: 0"), "{text}");

    // A run whose process died shows as interrupted.
    {
        let mut state = d.open_state(tandem_state::LockMode::Exclusive);
        state.begin_run("sync").unwrap();
    }
    let status = d.json(&["status"]);
    assert_eq!(status["runs"][0]["status"], "interrupted", "{status}");
    assert!(d.ok(&["status"]).contains("interrupted"));
}

#[test]
fn retry_needs_all_or_a_code_and_an_id() {
    let d = seeded();
    d.sync();
    // Usage errors exit with 2, clap's convention.
    let err = d.fails(&["retry"], 2);
    assert!(err.contains("--all"), "{err}");
    let err = d.fails(&["retry", "CUST"], 2);
    assert!(err.contains("<ID>"), "{err}");
    let err = d.fails(&["retry", "--all", "CUST", "C1"], 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = d.fails(&["retry", "CUST", "C1"], 1);
    assert!(err.contains("nothing parked for CUST C1"), "{err}");
    assert!(d.ok(&["retry", "--all"]).contains("Nothing is parked"));
    assert_eq!(d.json(&["retry", "--all"]), json!({"retried": 0}));
}
