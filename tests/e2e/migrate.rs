//! `tandem migrate`: a state filled by real syncs moves to another store with every
//! link, baseline, log entry, conflict and parked record, and the next sync on the
//! copy has nothing to do.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use tandem_model::EntityKind;
use tandem_state::{LockMode, Scope, SqliteState, StateStore};

use crate::json_output::check;
use crate::support::{Deployment, repo_root, rows, stderr, stdout};

/// Customers matched by VAT number under the `manual` policy (a conflict waits),
/// made for Belgian contacts that ask; vendors made from a template.
const CONFIG: &str = r#"
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
match = [["vat_registration_no"]]
conflict = "manual"
create_contacts = true
templates = [{ when = { country_code = "BE" }, fields = { x_payment_terms = "30D" } }]

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
template = { x_payment_terms = "14D" }
"#;

/// Runs `tandem <args>` in the deployment's folder, without a config.
fn tandem_in(d: &Deployment, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .current_dir(d.path(""))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn migrate_ok(d: &Deployment, from: &str, to: &str) -> String {
    let out = tandem_in(d, &["migrate", "--from", from, "--to", to]);
    assert!(
        out.status.success(),
        "migrate failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Points the config at another state.
fn use_state(d: &Deployment, url: &str) {
    let config = d
        .read("tandem.toml")
        .lines()
        .map(|l| {
            if l.starts_with("url = ") {
                format!("url = \"{url}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    d.write("tandem.toml", &config);
}

/// Makes every write of `erp/vendors.csv` fail while reads go on (as in
/// business_rules.rs): a name too long for a temporary file beside it.
fn break_vendor_writes(d: &Deployment) {
    let long = format!("vendors.csv.{}", "x".repeat(240));
    std::fs::rename(d.path("erp/vendors.csv"), d.path(&format!("erp/{long}"))).unwrap();
    std::os::unix::fs::symlink(&long, d.path("erp/vendors.csv")).unwrap();
}

fn mend_vendor_writes(d: &Deployment) {
    let long = format!("vendors.csv.{}", "x".repeat(240));
    std::fs::remove_file(d.path("erp/vendors.csv")).unwrap();
    std::fs::rename(d.path(&format!("erp/{long}")), d.path("erp/vendors.csv")).unwrap();
}

/// A deployment whose state holds links with baselines, log entries, an open
/// conflict, an operator unlink, a parked refused request, a parked pending create,
/// companies, cursors, hashes, fingerprints and runs, all made by `tandem` itself.
fn lived_in() -> Deployment {
    let d = Deployment::on_sqlite(CONFIG);
    d.write(
        "crm/contacts.csv",
        "id,contact_type,company_id,name,vat_registration_no,country_code,phone,business_relations\n\
         C1,company,,Acme NV,BE0111,BE,+32 1,\n\
         C2,company,,Beta BV,BE0222,BE,,\n\
         C3,company,,Gamma NV,BE0333,BE,,\n\
         C4,person,C1,Jan Peeters,,BE,,\n\
         C9,company,,Yankee Inc,,US,,CUST\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,phone\n\
         K1,Acme NV,BE0111,+32 1\n\
         K3,Gamma NV,BE0333,\n\
         K5,Delta BV,BE0555,\n",
    );
    d.write(
        "erp/vendors.csv",
        "id,name,vat_registration_no\nV2,Beta BV,BE0222\n",
    );
    // Links by VAT number, a contact for K5, C9's request refused (no US template).
    d.fails(&["sync"], 3);
    // An unlink runs a sync, which refuses C9 again: parked.
    d.fails(&["unlink", "CUST", "C3"], 3);
    // Both sides change the phone: a manual conflict.
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 2");
    d.set_cell("erp/customers.csv", "K1", "phone", "+32 3");
    d.sync();
    // A vendor create that fails twice: a parked pending create.
    let contacts = d.read("crm/contacts.csv");
    d.write(
        "crm/contacts.csv",
        &format!("{contacts}C7,company,,Epsilon NV,BE0777,BE,,VEND\n"),
    );
    break_vendor_writes(&d);
    d.fails(&["sync"], 3);
    d.fails(&["sync"], 3);
    mend_vendor_writes(&d);
    // Settled: what is left waits for an operator.
    assert_eq!(d.sync()["writes"], 0);
    d
}

/// Everything the engine can read from a state file, as text to compare.
fn reads(path: &Path, contacts: &[String]) -> Vec<String> {
    reads_of(
        &SqliteState::open(path, LockMode::Shared).unwrap(),
        contacts,
    )
}

/// Everything the engine can read from a state, as text to compare.
fn reads_of(state: &dyn StateStore, contacts: &[String]) -> Vec<String> {
    let mut out = vec![
        format!("links {:?}", state.links(None).unwrap()),
        format!("parked links {:?}", state.parked_links().unwrap()),
        format!("intents {:?}", state.links_with_intent().unwrap()),
        format!("conflicts {:?}", state.conflicts(false).unwrap()),
        format!("pending creates {:?}", state.pending_creates().unwrap()),
        format!("refused {:?}", state.refused_requests().unwrap()),
        format!("pending links {:?}", state.pending_links().unwrap()),
        format!("codes lost {:?}", state.codes_lost().unwrap()),
        format!("runs {:?}", state.runs(1000).unwrap()),
    ];
    for code in ["CUST", "VEND"] {
        let (contacts, accounts) = state.linked_ids(code).unwrap();
        let sorted = |set: std::collections::HashSet<String>| {
            let mut v: Vec<String> = set.into_iter().collect();
            v.sort();
            v
        };
        out.push(format!(
            "{code}: {} links, contacts {:?}, accounts {:?}, unlinked {:?}, deleted {:?}, \
             ambiguities {:?}",
            state.count_links(code).unwrap(),
            sorted(contacts),
            sorted(accounts),
            state.unlinked_pairs(code).unwrap(),
            sorted(state.contact_deleted(code).unwrap()),
            state.ambiguities(code).unwrap(),
        ));
    }
    for contact in contacts {
        out.push(format!(
            "{contact}: log {:?}, company {:?}",
            state.interactions(contact, 10_000).unwrap(),
            state.company_of(contact).unwrap(),
        ));
    }
    for (connector, kind) in [
        ("crm", EntityKind::Contact),
        ("erp", EntityKind::Customer),
        ("erp", EntityKind::Vendor),
    ] {
        let scope = Scope::new(connector, kind);
        let hashes: BTreeMap<String, u64> = (state.hashes(&scope).unwrap().into_iter())
            .map(|(id, hash)| (id.into(), hash))
            .collect();
        let ids: Vec<&str> = hashes.keys().map(String::as_str).collect();
        let keys: BTreeMap<String, u64> = state
            .match_keys_of(&scope, &ids)
            .unwrap()
            .into_iter()
            .collect();
        out.push(format!(
            "{connector} {kind:?}: cursor {:?}, fingerprint {:?}, rechecks {:?}, hashes {hashes:?}, \
             match keys {keys:?}",
            state.cursor(&scope).unwrap(),
            state.fingerprint(&scope).unwrap(),
            state.rechecks(&scope).unwrap(),
        ));
    }
    out
}

fn contact_ids(d: &Deployment) -> Vec<String> {
    rows(&d.read("crm/contacts.csv"))
        .into_iter()
        .map(|r| r["id"].clone())
        .collect()
}

#[test]
fn migrate_keeps_every_link_baseline_log_entry_conflict_and_parked_record_and_the_next_sync_writes_nothing()
 {
    let d = lived_in();
    let source = d.path(".tandem/state.db");
    let contacts = contact_ids(&d);
    let before = reads(&source, &contacts);
    {
        let state = SqliteState::open(&source, LockMode::Shared).unwrap();
        assert!(
            !state.conflicts(true).unwrap().is_empty(),
            "an open conflict"
        );
        assert!(
            state.pending_creates().unwrap().iter().any(|p| p.parked),
            "a parked pending create"
        );
        assert!(
            state.refused_requests().unwrap().iter().any(|r| r.parked),
            "a parked refused request"
        );
        assert_eq!(state.unlinked_pairs("CUST").unwrap().len(), 1);
        assert_eq!(state.company_of("C4").unwrap().as_deref(), Some("C1"));
    }

    // Relative paths resolve from the current folder; the target's folder is made.
    let out = migrate_ok(&d, "sqlite://.tandem/state.db", "sqlite://moved/state.db");
    assert!(out.contains("links"), "a line per table: {out}");
    assert!(out.contains("url = \"sqlite://moved/state.db\""), "{out}");
    let target = d.path("moved/state.db");
    assert_eq!(reads(&target, &contacts), before);
    assert_eq!(
        reads(&source, &contacts),
        before,
        "the source is left as it was"
    );

    // The copy carries on where the source stopped: nothing to write, nothing twice.
    use_state(&d, "sqlite://moved/state.db");
    let files = d.snapshot();
    let report = d.sync();
    assert_eq!(report["writes"], 0, "{report}");
    assert_eq!(files, d.snapshot(), "no system was written to");
    let runs = SqliteState::open(&target, LockMode::Shared)
        .unwrap()
        .runs(1000)
        .unwrap();
    let source_runs = SqliteState::open(&source, LockMode::Shared)
        .unwrap()
        .runs(1000)
        .unwrap();
    assert_eq!(runs.len(), source_runs.len() + 1);
    assert_eq!(runs[0].id, source_runs[0].id + 1, "run ids go on");
    let conflicts = d.json(&["conflicts"]);
    assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");
}

/// The lived-in state moves to PostgreSQL and back through the binary: the same reads
/// from each, the next sync on PostgreSQL writes nothing, and the way back gives the
/// state as PostgreSQL holds it.
#[test]
fn migrate_moves_a_state_to_postgres_and_back() {
    let Some(server) = tandem_connector_sql::testsupport::PostgresServer::start() else {
        return;
    };
    let d = lived_in();
    let contacts = contact_ids(&d);
    let before = reads(&d.path(".tandem/state.db"), &contacts);
    let postgres = server.create_database();
    let out = migrate_ok(&d, "sqlite://.tandem/state.db", &postgres);
    assert!(out.contains("links"), "a line per table: {out}");
    {
        let state = tandem_state::PgState::open_url(&postgres, LockMode::Shared).unwrap();
        assert_eq!(reads_of(&state, &contacts), before);
    }

    use_state(&d, &postgres);
    let files = d.snapshot();
    let report = d.sync();
    assert_eq!(report["writes"], 0, "{report}");
    assert_eq!(files, d.snapshot(), "no system was written to");
    let conflicts = d.json(&["conflicts"]);
    assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");

    // Back into a new file: the state as the run on PostgreSQL left it.
    let on_postgres = {
        let state = tandem_state::PgState::open_url(&postgres, LockMode::Shared).unwrap();
        reads_of(&state, &contacts)
    };
    assert_ne!(on_postgres, before, "the run on PostgreSQL is in its state");
    migrate_ok(&d, &postgres, "sqlite://back/state.db");
    assert_eq!(reads(&d.path("back/state.db"), &contacts), on_postgres);
}

#[test]
fn migrate_into_a_state_that_holds_rows_is_refused_and_leaves_it_unchanged() {
    let d = lived_in();
    let other = Deployment::on_sqlite(CONFIG);
    other.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no\nC1,company,Other NV,BE0999\n",
    );
    other.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Other,BE0999\n",
    );
    other.sync();
    let target = other.path(".tandem/state.db");
    let before = reads(&target, &["C1".to_owned()]);
    let bytes = std::fs::read(&target).unwrap();

    let to = format!("sqlite://{}", target.display());
    let out = tandem_in(
        &d,
        &[
            "migrate",
            "--from",
            "sqlite://.tandem/state.db",
            "--to",
            &to,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&to), "names the target: {err}");
    assert!(
        err.contains("not empty") && err.contains("nothing was copied"),
        "{err}"
    );
    assert!(err.contains("empty state"), "says what to do: {err}");
    assert_eq!(reads(&target, &["C1".to_owned()]), before);
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
}

#[test]
fn migrate_moves_a_state_of_schema_7() {
    let d = Deployment::on_sqlite(CONFIG);
    std::fs::create_dir_all(d.path("old")).unwrap();
    std::fs::copy(
        repo_root().join("crates/state/tests/fixtures/state-v7.db"),
        d.path("old/state.db"),
    )
    .unwrap();
    let out = tandem_in(
        &d,
        &[
            "--json",
            "migrate",
            "--from",
            "sqlite://old/state.db",
            "--to",
            "sqlite://new.db",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let links = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "links")
        .unwrap();
    assert_eq!(links["rows"], 7, "{report}");
    let contacts: Vec<String> = (1..=8).map(|i| format!("C{i:04}")).collect();
    assert_eq!(
        reads(&d.path("new.db"), &contacts),
        reads(&d.path("old/state.db"), &contacts)
    );
}

#[test]
fn migrate_refuses_a_source_a_sync_holds_and_hides_passwords() {
    let d = lived_in();
    let held = SqliteState::open(&d.path(".tandem/state.db"), LockMode::Exclusive).unwrap();
    let out = tandem_in(
        &d,
        &[
            "migrate",
            "--from",
            "sqlite://.tandem/state.db",
            "--to",
            "sqlite://new.db",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("sqlite://.tandem/state.db") && err.contains("stop the service"),
        "{err}"
    );
    drop(held);

    let out = tandem_in(
        &d,
        &[
            "--json",
            "migrate",
            "--from",
            "sqlite://.tandem/state.db",
            "--to",
            "postgres://tandem:s3cret@db.example/tandem",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("s3cret"), "{all}");
    assert!(
        all.contains("postgres://tandem:***@db.example/tandem"),
        "{all}"
    );

    let same = tandem_in(
        &d,
        &[
            "migrate",
            "--from",
            "sqlite://.tandem/state.db",
            "--to",
            "sqlite://./.tandem/state.db",
        ],
    );
    assert_eq!(same.status.code(), Some(2), "{}", stderr(&same));
}

#[test]
fn migrate_json_output_matches_its_schema() {
    let d = lived_in();
    let to = format!("sqlite://{}", d.path("copy.db").display());
    let from = format!("sqlite://{}", d.path(".tandem/state.db").display());
    let report = check(&d, &["migrate", "--from", &from, "--to", &to], 0, "migrate");
    assert_eq!(report["to"], to.as_str());
    let tables = report["tables"].as_array().unwrap();
    assert_eq!(tables.len(), tandem_state::transfer::STATE_TABLES.len());
    let sum: u64 = tables.iter().map(|t| t["rows"].as_u64().unwrap()).sum();
    assert_eq!(report["rows"], sum);
    check(&d, &["migrate", "--from", &from, "--to", &to], 1, "error");
}
