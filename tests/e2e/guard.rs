//! What keeps a run from losing what was synchronised: the delete guard (R16) and the
//! state file's checks.

use std::fs;

use crate::support::{Deployment, counts, stderr};

const CONTACTS: &str = "\
id,contact_type,company_id,name,post_code,city,phone,email,vat_registration_no
C1,company,,Acme NV,9000,Gent,+32 9 111,info@acme.be,BE0111
C2,company,,Beta BV,1000,Brussel,,sales@beta.be,
C3,person,C1,Jan Peeters,,,,jan@acme.be,
C4,company,,Gamma,2000,Antwerpen,,gamma@x.be,
";

const CUSTOMERS: &str = "\
id,name,post_code,city,phone,email,vat_registration_no
K1,ACME,9000,Gent,,info@acme.be,BE0111
K2,Beta,1000,Brussel,+32 2 222,SALES@beta.be,
K3,Delta,3000,Leuven,+32 16 333,,BE0333
K4,Gamma,2000,Antwerpen,,gamma@x.be,
";

const VENDORS: &str = "\
id,name,vat_registration_no,phone
V1,Acme,BE0111,
";

/// A deployment after its first sync: CUST links C1-K1, C2-K2, C4-K4 and a contact
/// created for K3; VEND links C1-V1.
fn synced(config: &str, env: &[(&str, &str)]) -> Deployment {
    seeded_and_synced(Deployment::with_config(config), env)
}

/// A deployment of `config` with the data files written, not synced.
fn seeded(config: &str) -> Deployment {
    let d = Deployment::with_config(config);
    seed(&d);
    d
}

fn seed(d: &Deployment) {
    d.write("crm/contacts.csv", CONTACTS);
    d.write("erp/customers.csv", CUSTOMERS);
    d.write("erp/vendors.csv", VENDORS);
}

/// [`synced`] for a deployment made already.
fn seeded_and_synced(d: Deployment, env: &[(&str, &str)]) -> Deployment {
    seed(&d);
    let out = d.tandem_env(&["sync"], env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.links().len(), 5, "{:?}", d.links());
    d
}

/// Runs `args` expecting exit code 1 and every part in stderr; returns stderr.
fn refused(d: &Deployment, args: &[&str], env: &[(&str, &str)], parts: &[&str]) -> String {
    let out = d.tandem_env(args, env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "tandem {args:?}:\n{err}");
    for part in parts {
        assert!(err.contains(part), "{part:?} not in:\n{err}");
    }
    err
}

const GUARD_HINTS: [&str; 2] = [
    "run again with --allow-deletes",
    "the limit is [sync] max_delete_share",
];

#[test]
fn r16_a_header_only_contacts_file_stops_the_sync_and_changes_nothing() {
    let d = synced(crate::support::CONFIG, &[]);
    let header = CONTACTS.lines().next().unwrap().to_owned() + "\n";
    d.write("crm/contacts.csv", &header);
    let files = d.snapshot();
    let links = d.links();
    let listed = d.ok(&["links"]);

    let mut parts = vec![
        "would delete 5 of 5 known contacts (100 %) from connector `crm`",
        "listed none at all",
        "nothing was written",
    ];
    parts.extend(GUARD_HINTS);
    refused(&d, &["sync"], &[], &parts);
    // `plan` shows the same refusal.
    refused(&d, &["plan"], &[], &parts);
    assert_eq!(d.snapshot(), files, "no file changed");
    assert_eq!(d.links(), links, "no link dropped");
    assert_eq!(d.ok(&["links"]), listed);

    // The refused run is on record.
    let status = d.ok(&["status"]);
    assert!(status.contains("failed"), "{status}");
    assert!(
        status.contains("failed: a full listing would delete 5 of 5 known contacts"),
        "{status}"
    );

    // Let through, the deletes are carried out: the links go, the accounts stay.
    let report = d.json(&["sync", "--allow-deletes"]);
    assert_eq!(counts(&report, "CUST")["unlinked"], 4, "{report}");
    assert_eq!(counts(&report, "VEND")["unlinked"], 1, "{report}");
    assert!(d.read("erp/customers.csv").contains("K1,"));
}

#[test]
fn r16_a_missing_file_a_dangling_symlink_or_an_empty_path_variable_stops_the_sync() {
    let config = crate::support::CONFIG.replace("path = \"erp\"", "path = \"${ERP_DIR}\"");
    let env = [("ERP_DIR", "erp")];
    let d = synced(&config, &env);
    let links = d.links();
    let mut parts = vec!["would delete 4 of 4 known customers (100 %) from connector `erp`"];
    parts.extend(GUARD_HINTS);

    // The variable set to "": a config mistake, stopped before anything is read.
    refused(
        &d,
        &["sync"],
        &[("ERP_DIR", "")],
        &["connectors.erp.path: environment variable `ERP_DIR` is set but empty"],
    );

    fs::rename(d.path("erp/customers.csv"), d.path("customers.csv.bak")).unwrap();
    refused(&d, &["sync"], &env, &parts);

    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(d.path("nowhere.csv"), d.path("erp/customers.csv")).unwrap();
        let link = [
            "customers.csv is a symbolic link to",
            "nowhere.csv, which does not exist",
            "then run again",
        ];
        refused(&d, &["sync"], &env, &link);
        fs::remove_file(d.path("erp/customers.csv")).unwrap();
    }
    assert_eq!(d.links(), links, "no link dropped");

    fs::rename(d.path("customers.csv.bak"), d.path("erp/customers.csv")).unwrap();
    let out = d.tandem_env(&["sync"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.links(), links);
}

#[test]
fn r16_a_share_under_the_limit_goes_through_and_the_limit_is_configured() {
    let d = synced(crate::support::CONFIG, &[]);
    // 1 of 4 known customers: under half, no flag needed.
    d.remove_row("erp/customers.csv", "K2");
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["unlinked"], 1, "{report}");

    // 2 of the 3 left (66 %) is over the default half...
    d.remove_row("erp/customers.csv", "K1");
    d.remove_row("erp/customers.csv", "K3");
    let mut parts = vec!["would delete 2 of 3 known customers (66 %) from connector `erp`"];
    parts.extend(GUARD_HINTS);
    refused(&d, &["sync"], &[], &parts);
    // ... and under a limit of 0.7.
    let out = d.tandem_env(&["sync"], &[("TANDEM__SYNC__MAX_DELETE_SHARE", "0.7")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        d.links()
            .iter()
            .filter(|l| l.0 == "CUST")
            .map(|l| l.2.as_str())
            .collect::<Vec<_>>(),
        ["K4"]
    );

    // A share out of range is a config error naming the key.
    refused(
        &d,
        &["sync"],
        &[("TANDEM__SYNC__MAX_DELETE_SHARE", "50")],
        &["sync.max_delete_share: must be a number from 0 to 1"],
    );
}

#[test]
fn a_zero_byte_state_is_refused_and_left_alone() {
    // A state file of 0 bytes: what only a file store can meet.
    let d = seeded_and_synced(Deployment::on_sqlite(crate::support::CONFIG), &[]);
    let state = d.path(".tandem/state.db");
    fs::write(&state, "").unwrap();
    let files = d.snapshot();
    for args in [&["sync"][..], &["plan"], &["status"], &["links"]] {
        refused(
            &d,
            args,
            &[],
            &[
                &state.display().to_string(),
                "is not a Tandem state: the file is empty (0 bytes)",
                "Restore it from a backup",
                "delete it",
            ],
        );
    }
    assert_eq!(
        fs::metadata(&state).unwrap().len(),
        0,
        "the state is untouched"
    );
    assert_eq!(d.snapshot(), files, "no file changed");
}

#[test]
fn a_sync_that_fails_is_recorded_and_shown_by_status() {
    let d = Deployment::new();
    d.write("crm/contacts.csv", CONTACTS);
    fs::remove_dir(d.path("erp")).unwrap();
    refused(&d, &["sync"], &[], &["does not exist"]);

    let status = d.json(&["status"]);
    let run = &status["runs"][0];
    assert_eq!(run["status"], "failed", "{status}");
    assert!(
        run["summary"]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{status}"
    );
    let shown = d.ok(&["status"]);
    assert!(shown.contains("run 1 failed: reading"), "{shown}");
    assert!(shown.contains("does not exist"), "{shown}");

    // The next run that works is recorded after it.
    fs::create_dir(d.path("erp")).unwrap();
    d.sync();
    let status = d.json(&["status"]);
    assert_eq!(status["runs"][0]["status"], "ok", "{status}");
    assert_eq!(status["runs"][1]["status"], "failed", "{status}");
}

/// A sync whose contacts with links outnumber `[sync] hubs_per_range` plans and writes
/// them a range at a time and ends where a sync in one piece ends; its report lists the
/// first range's updates and says how many it leaves out.
#[test]
fn a_sync_range_by_range_ends_where_a_sync_in_one_piece_ends() {
    let whole = synced(crate::support::CONFIG, &[]);
    let ranged = seeded(crate::support::CONFIG);
    let out = ranged.tandem_env(&["sync", "-v"], &[("TANDEM__SYNC__HUBS_PER_RANGE", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = crate::support::stdout(&out);
    assert!(
        shown.contains("more contacts not listed: the run went range by range"),
        "{shown}"
    );
    assert_eq!(ranged.links(), whole.links());
    let csv = |d: &Deployment, file: &str| fs::read_to_string(d.path(file)).unwrap();
    for file in ["crm/contacts.csv", "erp/customers.csv", "erp/vendors.csv"] {
        assert_eq!(csv(&ranged, file), csv(&whole, file), "{file}");
    }
    // Nothing left over: the next run in ranges writes nothing.
    let out = ranged.tandem_env(&["sync"], &[("TANDEM__SYNC__HUBS_PER_RANGE", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ranged.json(&["plan"])["writes"], 0);
}

/// `[sync] memory_budget` reaches the sync: the log says what the budget allowed once
/// the records were read and matched (a few hubs: at once), and the run ends as
/// without it.
#[test]
fn a_sync_with_a_memory_budget_says_what_it_chose() {
    let whole = synced(crate::support::CONFIG, &[]);
    let budgeted = seeded(crate::support::CONFIG);
    let budget = [("TANDEM__SYNC__MEMORY_BUDGET", "4 GiB")];
    let out = budgeted.tandem_env(&["sync", "-v"], &budget);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("memory budget 4096 MiB, "), "{log}");
    assert!(log.contains("MiB held once matched: "), "{log}");
    assert!(log.contains(" hubs at once"), "{log}");
    assert_eq!(budgeted.links(), whole.links());
}
