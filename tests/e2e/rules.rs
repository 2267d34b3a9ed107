//! The domain rules through the binary, on the file connector.

use crate::support::{Deployment, cell, counts, row_where, rows, stderr};

const CONTACTS: &str = "\
id,contact_type,company_id,name,post_code,city,phone,email,vat_registration_no
C1,company,,Acme NV,9000,Gent,+32 9 111,info@acme.be,BE0111
C2,company,,Beta BV,1000,Brussel,,sales@beta.be,
C3,person,C1,Jan Peeters,,,,jan@acme.be,
C4,company,,Gamma,2000,Antwerpen,,dup@x.be,
C5,company,,Gamma Two,2000,Antwerpen,,dup@x.be,
";

const CUSTOMERS: &str = "\
id,name,post_code,city,phone,email,vat_registration_no,payment_terms
K1,ACME,9000,Gent,,info@acme.be,BE0111,30D
K2,Beta,1000,Brussel,+32 2 222,SALES@beta.be,,14D
K3,Delta,3000,Leuven,+32 16 333,,BE0333,30D
K4,Dup,,,,dup@x.be,,
";

const VENDORS: &str = "\
id,name,vat_registration_no,phone
V1,Acme,BE0111,
";

fn seeded() -> Deployment {
    let d = Deployment::new();
    d.write("crm/contacts.csv", CONTACTS);
    d.write("erp/customers.csv", CUSTOMERS);
    d.write("erp/vendors.csv", VENDORS);
    d
}

fn link(code: &str, contact: &str, account: &str) -> (String, String, String) {
    (code.into(), contact.into(), account.into())
}

#[test]
fn r4_match_tiers_link_existing_records_and_report_ambiguity() {
    let d = seeded();
    let report = d.sync();
    let cust = counts(&report, "CUST");
    assert_eq!(cust["linked"], 2, "{report}");
    assert_eq!(cust["ambiguous"], 1);
    let ambiguous = &report["ambiguous"][0];
    assert_eq!(ambiguous["account_ids"], serde_json::json!(["K4"]));
    assert_eq!(ambiguous["contact_ids"], serde_json::json!(["C4", "C5"]));
    let links = d.links();
    assert!(
        links.contains(&link("CUST", "C1", "K1")),
        "by VAT: {links:?}"
    );
    assert!(
        links.contains(&link("CUST", "C2", "K2")),
        "by e-mail, any case: {links:?}"
    );
    assert!(
        links.contains(&link("VEND", "C1", "V1")),
        "one contact, two relations: {links:?}"
    );
    assert!(
        !links.iter().any(|l| l.2 == "K4"),
        "ambiguous is never guessed"
    );

    // R4 initial = contact: the link starts from the contact; its empties are filled.
    let customers = d.read("erp/customers.csv");
    assert_eq!(cell(&customers, "K1", "name").as_deref(), Some("Acme NV"));
    assert_eq!(
        cell(&customers, "K1", "phone").as_deref(),
        Some("+32 9 111")
    );
    let contacts = d.read("crm/contacts.csv");
    assert_eq!(cell(&contacts, "C2", "phone").as_deref(), Some("+32 2 222"));
    // Columns Tandem does not know survive the rewrite.
    assert_eq!(
        cell(&customers, "K1", "payment_terms").as_deref(),
        Some("30D")
    );
    assert_eq!(
        cell(&customers, "K2", "payment_terms").as_deref(),
        Some("14D")
    );
}

#[test]
fn r6_unmatched_customer_gets_a_new_company_contact() {
    let d = seeded();
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["created"], 1);
    let contacts = d.read("crm/contacts.csv");
    let delta = row_where(&contacts, "name", "Delta").expect("a contact for Delta");
    assert_eq!(delta["contact_type"], "company");
    assert_eq!(delta["phone"], "+32 16 333");
    assert_eq!(delta["vat_registration_no"], "BE0333");
    assert!(d.links().contains(&link("CUST", &delta["id"], "K3")));
    // VEND does not create contacts; K4 is ambiguous and gets none either.
    assert_eq!(rows(&contacts).len(), 6);
}

#[test]
fn r14_second_run_writes_nothing_and_plan_matches_sync() {
    let d = seeded();
    let planned = d.json(&["plan"]);
    let before = d.snapshot();
    assert_eq!(before, d.snapshot(), "plan writes nothing");
    let report = d.sync();
    assert_eq!(planned["counts"], report["counts"]);
    assert_eq!(planned["writes"], report["writes"]);
    assert!(report["writes"].as_u64().unwrap() > 0);

    let files = d.snapshot();
    let second = d.sync();
    assert_eq!(second["writes"], 0, "{second}");
    assert_eq!(files, d.snapshot(), "the second run rewrote a file");
    assert_eq!(counts(&second, "CUST")["unchanged"], 3);
    assert_eq!(counts(&second, "CUST")["updated"], 0);
}

#[test]
fn r7_phone_changed_on_customer_reaches_contact_and_vendor() {
    let d = seeded();
    d.sync();
    let customers = d
        .read("erp/customers.csv")
        .replace("+32 9 111", "+32 9 999");
    d.write("erp/customers.csv", &customers);
    let report = d.sync();
    assert_eq!(report["writes"], 2, "{report}");
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "phone").as_deref(),
        Some("+32 9 999")
    );
    assert_eq!(
        cell(&d.read("erp/vendors.csv"), "V1", "phone").as_deref(),
        Some("+32 9 999")
    );
    assert_eq!(d.sync()["writes"], 0);
}

#[test]
fn r7_contact_edit_reaches_customer_and_vendor() {
    let d = seeded();
    d.sync();
    let contacts = d
        .read("crm/contacts.csv")
        .replace("Acme NV", "Acme Group NV");
    d.write("crm/contacts.csv", &contacts);
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["updated"], 1);
    assert_eq!(counts(&report, "VEND")["updated"], 1);
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "name").as_deref(),
        Some("Acme Group NV")
    );
    assert_eq!(
        cell(&d.read("erp/vendors.csv"), "V1", "name").as_deref(),
        Some("Acme Group NV")
    );
}

#[test]
fn r13_deleted_customer_drops_its_link_and_keeps_the_contact() {
    let d = seeded();
    d.sync();
    let customers: String = d
        .read("erp/customers.csv")
        .lines()
        .filter(|l| !l.starts_with("K2,"))
        .map(|l| format!("{l}\n"))
        .collect();
    d.write("erp/customers.csv", &customers);
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["unlinked"], 1);
    assert!(!d.links().iter().any(|l| l.2 == "K2"));
    assert!(
        cell(&d.read("crm/contacts.csv"), "C2", "name").is_some(),
        "the contact stays"
    );
}

#[test]
fn r12_deleted_contact_drops_its_links_and_keeps_the_accounts() {
    let d = seeded();
    d.sync();
    let contacts: String = d
        .read("crm/contacts.csv")
        .lines()
        .filter(|l| !l.starts_with("C1,"))
        .map(|l| format!("{l}\n"))
        .collect();
    d.write("crm/contacts.csv", &contacts);
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["unlinked"], 1);
    assert_eq!(counts(&report, "VEND")["unlinked"], 1);
    assert!(!d.links().iter().any(|l| l.1 == "C1"));
    assert!(cell(&d.read("erp/customers.csv"), "K1", "name").is_some());
    assert!(cell(&d.read("erp/vendors.csv"), "V1", "name").is_some());
}

#[test]
fn r1_a_kind_without_a_code_is_not_synchronised() {
    let config = crate::support::CONFIG
        .split("[relations.VEND]")
        .next()
        .unwrap()
        .to_owned();
    let d = Deployment::with_config(&config);
    d.write("crm/contacts.csv", CONTACTS);
    d.write("erp/customers.csv", CUSTOMERS);
    d.write("erp/vendors.csv", VENDORS);
    let report = d.sync();
    assert!(
        report["counts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["code"] != "VEND")
    );
    assert_eq!(d.read("erp/vendors.csv"), VENDORS, "vendors untouched");
    assert!(!d.links().iter().any(|l| l.0 == "VEND"));
}

#[test]
fn r16_malformed_csv_names_file_and_line_and_changes_nothing() {
    let d = seeded();
    d.sync();
    let files = d.snapshot();
    let links = d.links();
    // A row with a missing cell: were it read as a listing without K2, K2 would be
    // taken for deleted.
    let broken = d
        .read("erp/customers.csv")
        .replacen("\nK2,", "\nK2,Beta\nK9,", 1);
    d.write("erp/customers.csv", &broken);
    let out = d.tandem(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("customers.csv"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(d.links(), links, "state untouched");
    for (name, bytes) in files {
        if !name.ends_with("customers.csv") {
            assert_eq!(std::fs::read(&name).unwrap(), bytes, "{name} changed");
        }
    }
    assert_eq!(
        d.read("erp/customers.csv"),
        broken,
        "the bad file is left for the user to fix"
    );
}

#[test]
fn bad_utf8_names_file_and_line() {
    let d = seeded();
    let mut bytes = CONTACTS.as_bytes().to_vec();
    let at = CONTACTS.find("Gamma Two").unwrap();
    bytes[at + 1] = 0xff;
    std::fs::write(d.path("crm/contacts.csv"), &bytes).unwrap();
    let out = d.tandem(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("contacts.csv"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(d.links().is_empty(), "nothing linked");
    assert_eq!(d.read("erp/customers.csv"), CUSTOMERS);
}

#[test]
fn a_second_sync_on_the_same_state_fails_at_once() {
    let d = seeded();
    d.sync();
    let _held = d.open_state(tandem_state::LockMode::Exclusive);
    let started = std::time::Instant::now();
    let out = d.tandem(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by another tandem process"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "it must not wait"
    );
}

#[test]
fn jsonl_files_sync_like_csv() {
    let config =
        crate::support::CONFIG.replace("path = \"crm\"", "path = \"crm\"\nformat = \"jsonl\"");
    let d = Deployment::with_config(&config);
    d.write(
        "crm/contacts.jsonl",
        "{\"id\":\"C1\",\"name\":\"Acme NV\",\"vat_registration_no\":\"BE0111\",\"x_rating\":5,\"tags\":[\"a\"]}\n",
    );
    d.write("erp/customers.csv", CUSTOMERS);
    d.sync();
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "name").as_deref(),
        Some("Acme NV")
    );
    let contacts = d.read("crm/contacts.jsonl");
    assert!(
        contacts.contains("\"tags\":[\"a\"]"),
        "unknown keys survive: {contacts}"
    );
    assert!(
        contacts.contains("Delta"),
        "a contact was created for K3: {contacts}"
    );
    assert_eq!(d.sync()["writes"], 0);
}

#[test]
fn r2_a_contact_holds_one_link_per_code_and_an_account_one_contact() {
    let d = seeded();
    d.sync();
    let links = d.links();
    // C1 is customer and vendor at once: two codes, one link each.
    let of_c1: Vec<&str> = links
        .iter()
        .filter(|l| l.1 == "C1")
        .map(|l| l.0.as_str())
        .collect();
    assert_eq!(of_c1, vec!["CUST", "VEND"]);
    for (i, a) in links.iter().enumerate() {
        for b in &links[i + 1..] {
            assert!(!(a.0 == b.0 && a.1 == b.1), "two {} links for {}", a.0, a.1);
            assert!(
                !(a.0 == b.0 && a.2 == b.2),
                "two contacts for {} {}",
                a.0,
                a.2
            );
        }
    }
    // A second contact for K1, or a second customer for C1, is refused.
    let out = d.tandem(&["link", "CUST", "C4", "K1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already belongs to another contact"),
        "{}",
        stderr(&out)
    );
    let out = d.tandem(&["link", "CUST", "C1", "K4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already has a CUST link"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.links(), links);
}

#[test]
fn r8_field_sets_and_preserve_lists_per_kind() {
    let config = format!(
        "{}\n[relations.BANK]\nkind = \"bank_account\"\nconnector = \"erp\"\nmatch = [[\"name\"]]\n",
        crate::support::CONFIG
    );
    let d = Deployment::with_config(&config);
    d.write(
        "crm/contacts.csv",
        "id,name,email,vat_registration_no,currency_code\nC1,Acme NV,info@acme.be,BE0111,USD\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,currency_code\nK1,Acme,BE0111,EUR\n",
    );
    d.write(
        "erp/bank_accounts.csv",
        "id,name,iban\nB1,Acme NV,BE71096123456769\n",
    );
    d.sync();
    let contacts = d.read("crm/contacts.csv");
    let banks = d.read("erp/bank_accounts.csv");
    let customers = d.read("erp/customers.csv");
    // Bank accounts share no VAT number; the IBAN is the bank account's alone.
    assert_eq!(cell(&banks, "B1", "vat_registration_no"), None, "{banks}");
    assert_eq!(cell(&banks, "B1", "email").as_deref(), Some("info@acme.be"));
    assert_eq!(cell(&contacts, "C1", "iban"), None, "{contacts}");
    // Customers preserve currency_code: the ERP's value wins and is never overwritten.
    assert_eq!(
        cell(&customers, "K1", "currency_code").as_deref(),
        Some("EUR")
    );
    assert_eq!(
        cell(&contacts, "C1", "currency_code").as_deref(),
        Some("EUR")
    );
    let edited = d.read("crm/contacts.csv").replace("EUR", "GBP");
    d.write("crm/contacts.csv", &edited);
    d.sync();
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "currency_code").as_deref(),
        Some("EUR")
    );
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "currency_code").as_deref(),
        Some("EUR")
    );
    assert_eq!(d.sync()["writes"], 0);
}

/// R12 wins over R6, through the binary: the customer whose contact the user deleted
/// gets no new contact (CUST numbers contacts), on this run and the next; `tandem
/// create-contact` asks for one, and is refused for an account that has one.
#[test]
fn r12_a_deleted_contact_is_not_created_again_unless_asked() {
    let d = seeded();
    d.sync();
    d.remove_row("crm/contacts.csv", "C2");
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["unlinked"], 1, "{report}");
    assert_eq!(counts(&report, "CUST")["created"], 0, "{report}");
    let quiet = d.sync();
    assert_eq!(
        quiet["writes"], 0,
        "a sync after that writes nothing: {quiet}"
    );
    assert!(!d.read("crm/contacts.csv").contains("Beta"));

    let refused = d.fails(&["create-contact", "CUST", "--account", "K1"], 1);
    assert!(refused.contains("K1 already has a contact"), "{refused}");
    let out = d.ok(&["--json", "create-contact", "CUST", "--account", "K2"]);
    assert!(
        out.contains("\"created\": 1") || out.contains("\"created\":1"),
        "{out}"
    );
    let created = row_where(&d.read("crm/contacts.csv"), "name", "Beta BV").expect("a new contact");
    let id = created["id"].clone();
    assert!(
        d.links().contains(&link("CUST", &id, "K2")),
        "{:?}",
        d.links()
    );
    assert_eq!(d.sync()["writes"], 0);
}

/// A person's refused request names its company, which holds the relation (R3).
#[test]
fn r3_a_persons_request_for_its_companys_relation_names_the_company() {
    let d = seeded();
    d.sync();
    let err = d.fails(&["create", "VEND", "--contact", "C3"], 1);
    assert!(err.contains("person of company C1"), "{err}");
    assert!(err.contains("C1, which already has a VEND link"), "{err}");
}
