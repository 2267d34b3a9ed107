//! Crash consistency: a sync killed at any write point is finished by the next run,
//! with the same files and links as a run that was never interrupted: no duplicate
//! record, no lost update, no dangling link.

use crate::support::{Deployment, stderr};

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
create_contacts = true
match = [["vat_registration_no"], ["email"]]
template = { x_payment_terms = "30D" }

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
"#;

const CONTACTS: &str = "\
id,contact_type,company_id,name,post_code,phone,email,vat_registration_no,business_relations
C0001,company,,Acme NV,9000,+32 9 111,info@acme.be,BE0111,
C0002,company,,Beta BV,1000,,sales@beta.be,,
";

const CUSTOMERS: &str = "\
id,name,post_code,phone,email,vat_registration_no
K0001,Acme,9000,,info@acme.be,BE0111
K0002,Beta,1000,+32 2 222,sales@beta.be,
";

const VENDORS: &str = "\
id,name,vat_registration_no,phone
V0001,Acme,BE0111,
V0002,Gamma Supplies,BE0333,+32 3 333
";

/// A deployment after a first sync, with changes waiting that make the next run
/// touch every write point: contact and account creates, updates both ways, a new
/// link by matching, and the cursor.
fn prepared(config: &str) -> Deployment {
    let d = Deployment::with_config(config);
    d.write("crm/contacts.csv", CONTACTS);
    d.write("erp/customers.csv", CUSTOMERS);
    d.write("erp/vendors.csv", VENDORS);
    d.sync();

    let customers = d
        .read("erp/customers.csv")
        .replace("+32 2 222", "+32 2 999")
        + "K0003,Delta,3000,,,\n";
    d.write("erp/customers.csv", &customers);
    let contacts = d.read("crm/contacts.csv");
    let header = contacts.lines().next().unwrap().to_owned();
    let contacts = contacts.replace("info@acme.be", "hello@acme.be");
    let row = |values: &[(&str, &str)]| {
        header
            .split(',')
            .map(|col| {
                values
                    .iter()
                    .find(|(k, _)| *k == col)
                    .map_or("", |(_, v)| *v)
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let contacts = format!(
        "{contacts}{}\n{}\n",
        row(&[
            ("id", "C0003"),
            ("contact_type", "company"),
            ("name", "Epsilon"),
            ("business_relations", "CUST")
        ]),
        row(&[
            ("id", "C0004"),
            ("contact_type", "company"),
            ("name", "Gamma Supplies"),
            ("vat_registration_no", "BE0333")
        ]),
    );
    d.write("crm/contacts.csv", &contacts);
    d
}

/// Each data file's name and content, and the links.
type Outcome = (Vec<(String, String)>, Vec<(String, String, String)>);

/// The files and the links a deployment ends with.
fn outcome(d: &Deployment) -> Outcome {
    let files = ["crm/contacts.csv", "erp/customers.csv", "erp/vendors.csv"]
        .iter()
        .map(|f| (f.to_string(), d.read(f)))
        .collect();
    (files, d.links())
}

/// [`CONFIG`] with every CSV write held in the file connector's journal until the run
/// folds it (files of 32 MiB or more by default): a kill leaves the writes it made
/// in the journals, not in the files.
fn journaled() -> String {
    let journaled = CONFIG.replace(
        "type = \"file\"\n",
        "type = \"file\"\njournal = \"always\"\n",
    );
    assert_eq!(journaled.matches("journal").count(), 2);
    journaled
}

#[test]
fn a_sync_killed_at_any_write_point_is_finished_by_the_next_run() {
    killed_at_every_point_and_finished(CONFIG);
}

#[test]
fn a_sync_killed_with_writes_in_journals_is_finished_by_the_next_run() {
    killed_at_every_point_and_finished(&journaled());
}

/// In ranges of one hub: a kill between two ranges, or in the middle of one, leaves
/// the ranges before it stored and the rest to the next run.
#[test]
fn a_sync_in_ranges_killed_at_any_write_point_is_finished_by_the_next_run() {
    killed_at_every_point_and_finished(&format!("{CONFIG}\n[sync]\nhubs_per_range = 1\n"));
}

fn killed_at_every_point_and_finished(config: &str) {
    let start = prepared(config);

    let reference = start.copy();
    let report = reference.sync();
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    let counts = &report["counts"];
    assert!(
        report["writes"].as_u64().unwrap() >= 6,
        "a representative run: {report}"
    );
    assert!(
        counts.to_string().contains("\"created\":2"),
        "one contact and one account created: {counts}"
    );
    assert_eq!(reference.sync()["writes"], 0);
    let expected = outcome(&reference);
    assert!(
        expected.0[1].1.contains("Epsilon"),
        "the account created from the contact: {:?}",
        expected.0[1]
    );
    assert!(
        expected.0[0].1.contains("Delta"),
        "the contact created from the customer: {:?}",
        expected.0[0]
    );

    let mut journals_left = Vec::new();
    for point in tandem_engine::failpoint::POINTS {
        let d = start.copy();
        let out = d.tandem_env(&["sync"], &[("TANDEM_FAILPOINT", point)]);
        assert!(
            !out.status.success(),
            "{point}: the run was not interrupted"
        );
        assert!(
            stderr(&out).contains(&format!("failpoint {point} reached")),
            "{point}: {}",
            stderr(&out)
        );
        if journals(&d).next().is_some() {
            journals_left.push(*point);
        }

        let rerun = d.sync();
        assert_eq!(rerun["failures"], serde_json::json!([]), "{point}: {rerun}");
        let settled = d.sync();
        assert_eq!(
            settled["writes"], 0,
            "{point}: the run after the repair still wrote: {settled}"
        );
        let got = outcome(&d);
        assert_eq!(got.1, expected.1, "{point}: links differ");
        for ((name, want), (_, have)) in expected.0.iter().zip(&got.0) {
            assert_eq!(have, want, "{point}: {name} differs");
        }
        assert_eq!(journals(&d).next(), None, "{point}: a journal was left");
        let status = d.tandem(&["--json", "status"]);
        if status.status.success() {
            let text = String::from_utf8_lossy(&status.stdout);
            assert!(
                text.contains("interrupted"),
                "{point}: the killed run is marked interrupted: {text}"
            );
        }
    }
    // With journals, the runs killed after their updates left them to the next run.
    let journaled = config.contains("journal = \"always\"");
    let expected: &[&str] = match journaled {
        true => &["after_contact_updates", "after_account_updates"],
        false => &[],
    };
    assert!(
        expected.iter().all(|point| journals_left.contains(point)),
        "journals were left after {journals_left:?}"
    );
    assert_eq!(journaled, !journals_left.is_empty(), "{journals_left:?}");
}

/// The journals left beside the data files.
fn journals(d: &Deployment) -> impl Iterator<Item = String> {
    [
        "crm/.contacts.csv",
        "erp/.customers.csv",
        "erp/.vendors.csv",
    ]
    .into_iter()
    .map(|file| format!("{file}.tandem-journal"))
    .filter(|journal| d.path(journal).exists())
}

/// R18: an edit made on the account after a run was killed, wherever it was killed,
/// survives the run that finishes the work: Tandem's half-done write to the contact is
/// not mistaken for the contact's own edit, which would win the conflict and revert it.
#[test]
fn r18_an_edit_made_after_a_crash_is_not_reverted() {
    an_edit_after_a_crash_is_not_reverted(CONFIG);
}

/// The same with the writes the killed run made still in the journals: the edit is
/// made to the file, which does not have them yet.
#[test]
fn r18_an_edit_made_after_a_crash_with_writes_in_journals_is_not_reverted() {
    an_edit_after_a_crash_is_not_reverted(&journaled());
}

fn an_edit_after_a_crash_is_not_reverted(config: &str) {
    let start = prepared(config);
    for point in tandem_engine::failpoint::POINTS {
        let d = start.copy();
        let out = d.tandem_env(&["sync"], &[("TANDEM_FAILPOINT", point)]);
        assert!(
            !out.status.success(),
            "{point}: the run was not interrupted"
        );
        let customers = d.read("erp/customers.csv");
        let edited = customers
            .lines()
            .map(|line| {
                if line.starts_with("K0002,") {
                    line.replace("+32 2 999", "+32 2 555")
                        .replace("+32 2 222", "+32 2 555")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        assert!(edited.contains("+32 2 555"), "{point}: {customers}");
        d.write("erp/customers.csv", &edited);
        let rerun = d.sync();
        assert_eq!(rerun["failures"], serde_json::json!([]), "{point}: {rerun}");
        assert_eq!(d.sync()["writes"], 0, "{point}: not settled");
        let contact = d
            .read("crm/contacts.csv")
            .lines()
            .find(|l| l.starts_with("C0002,"))
            .unwrap()
            .to_owned();
        assert!(contact.contains("+32 2 555"), "{point}: {contact}");
        assert!(
            d.read("erp/customers.csv").contains("+32 2 555"),
            "{point}: the edit was reverted"
        );
    }
}
