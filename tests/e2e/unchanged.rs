//! Files that did not change since the end of the last sync are not read again; what
//! the engine needs from them is still read (the fingerprint is a promise about the
//! records, not a reason to miss a match or a record waiting to be looked at again).

use serde_json::Value;

use crate::support::{Deployment, cell, counts};

const CONTACTS: &str = "\
id,contact_type,name,post_code,phone,email,vat_registration_no
C0001,company,Acme NV,9000,+32 9 111,info@acme.be,BE0111
";

const CUSTOMERS: &str = "\
id,name,post_code,phone,email,vat_registration_no
K0001,Acme,9000,,info@acme.be,BE0111
";

const VENDORS: &str = "\
id,name,vat_registration_no,phone
V0002,Gamma Supplies,BE0333,+32 3 333
";

fn read_of<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["read"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no read of {kind}: {report}"))
}

fn deployment() -> Deployment {
    let d = Deployment::new();
    d.write("crm/contacts.csv", CONTACTS);
    d.write("erp/customers.csv", CUSTOMERS);
    d.write("erp/vendors.csv", VENDORS);
    d
}

#[test]
fn a_second_sync_reads_no_file_that_only_tandem_changed() {
    let d = deployment();
    let first = d.sync();
    assert!(first["writes"].as_u64().unwrap() > 0, "{first}");
    // The first sync wrote to the contacts (codes) and customers; those writes were
    // its own, so the next run has nothing to read.
    let second = d.sync();
    assert_eq!(second["writes"], 0, "{second}");
    for kind in ["contact", "customer", "vendor"] {
        assert_eq!(read_of(&second, kind)["skipped"], true, "{kind}: {second}");
    }
    let human = d.ok(&["sync"]);
    assert!(human.contains("unchanged, not read"), "{human}");

    // --full-read reads everything, and finds nothing to do.
    let full = d.json(&["sync", "--full-read"]);
    assert_eq!(full["writes"], 0, "{full}");
    for kind in ["contact", "customer", "vendor"] {
        assert_eq!(read_of(&full, kind)["skipped"], false, "{kind}: {full}");
    }
}

#[test]
fn an_edited_file_is_read_and_its_change_flows() {
    let d = deployment();
    d.sync();
    d.set_cell("erp/customers.csv", "K0001", "phone", "+32 9 999");
    let report = d.sync();
    assert_eq!(read_of(&report, "customer")["skipped"], false, "{report}");
    assert_eq!(read_of(&report, "vendor")["skipped"], true, "{report}");
    assert_eq!(counts(&report, "CUST")["updated"], 1, "{report}");
    let contacts = d.read("crm/contacts.csv");
    assert_eq!(
        cell(&contacts, "C0001", "phone").as_deref(),
        Some("+32 9 999")
    );
    // The same bytes written back by hand are still a change Tandem has not seen.
    d.set_cell("erp/customers.csv", "K0001", "phone", "+32 9 111");
    let report = d.sync();
    assert_eq!(read_of(&report, "customer")["skipped"], false, "{report}");
    assert_eq!(counts(&report, "CUST")["updated"], 1, "{report}");
}

#[test]
fn a_new_contact_matches_an_account_in_a_file_that_did_not_change() {
    let d = deployment();
    d.sync();
    assert!(d.links().iter().all(|l| l.0 != "VEND"));
    let contacts = d.read("crm/contacts.csv");
    let header = contacts.lines().next().unwrap();
    let row: Vec<&str> = header
        .split(',')
        .map(|column| match column {
            "id" => "C0009",
            "contact_type" => "company",
            "name" => "Gamma Supplies",
            "vat_registration_no" => "BE0333",
            _ => "",
        })
        .collect();
    d.write(
        "crm/contacts.csv",
        &format!("{contacts}{}\n", row.join(",")),
    );
    let report = d.sync();
    assert_eq!(counts(&report, "VEND")["linked"], 1, "{report}");
    assert!(
        d.links()
            .contains(&("VEND".to_owned(), "C0009".to_owned(), "V0002".to_owned())),
        "{:?}",
        d.links()
    );
}

#[test]
fn a_record_waiting_to_be_looked_at_again_is_read_in_an_unchanged_file() {
    let d = deployment();
    d.sync();
    // Unlinking by hand marks the customer to be looked at again: the next run must
    // read the customers although their file did not change (and keeps the pair
    // apart, R4), then the run after reads nothing.
    d.ok(&["unlink", "CUST", "C0001"]);
    let report = d.sync();
    let customers = read_of(&report, "customer");
    assert_eq!(customers["skipped"], false, "{report}");
    assert_eq!(customers["in_play"], 1, "{report}");
    assert_eq!(counts(&report, "CUST")["linked"], 0, "{report}");
    let report = d.sync();
    assert_eq!(read_of(&report, "customer")["skipped"], true, "{report}");
}
