//! The business-relation rules (R3, R5, R9, R10, R11, R15, R17) through the binary, on
//! the file connector. Each test writes its own small config and CSV files.

use serde_json::json;

use crate::support::{Deployment, cell, counts, row_where, rows};

/// Customers and vendors on `erp`, matched by VAT number; customers made from contacts
/// get a template chosen by country.
const CONFIG: &str = r#"
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
templates = [
    { when = { country_code = "BE" }, fields = { x_payment_terms = "30D", language_code = "nl" } },
    { when = { country_code = "GB" }, fields = { x_payment_terms = "60D", language_code = "en" } },
]

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
template = { x_payment_terms = "14D" }
"#;

fn deployment(contacts: &str) -> Deployment {
    let d = Deployment::with_config(CONFIG);
    d.write("crm/contacts.csv", contacts);
    d
}

/// The codes in a contact's `business_relations` cell.
fn codes(d: &Deployment, contact: &str) -> Vec<String> {
    cell(&d.read("crm/contacts.csv"), contact, "business_relations")
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn has_link(d: &Deployment, code: &str, contact: &str) -> Option<String> {
    d.links()
        .into_iter()
        .find(|(c, k, _)| c == code && k == contact)
        .map(|(_, _, account)| account)
}

#[test]
fn r3_a_person_asking_for_cust_makes_its_company_the_customer() {
    let d = deployment(
        "\
id,contact_type,company_id,name,country_code,business_relations
C1,company,,Acme NV,BE,
C2,person,C1,Jan Peeters,BE,CUST
",
    );
    let report = d.sync();
    let create = &report["plan"]["account_creates"][0];
    assert_eq!(create["contact_id"], "C1", "{report}");
    assert_eq!(create["requested_by"], "C2");
    let account = has_link(&d, "CUST", "C1").expect("the company holds the relation");
    assert!(has_link(&d, "CUST", "C2").is_none(), "never the person");
    let customers = d.read("erp/customers.csv");
    assert_eq!(
        cell(&customers, &account, "name").as_deref(),
        Some("Acme NV")
    );
    assert_eq!(rows(&customers).len(), 1);
    assert_eq!(codes(&d, "C1"), ["CUST"], "R9 on the company");
    // The next run has nothing left to do for the person's request.
    let again = d.sync();
    assert_eq!(again["writes"], 0, "{again}");
    assert_eq!(rows(&d.read("erp/customers.csv")).len(), 1);
}

#[test]
fn r3_a_person_without_company_may_be_a_customer_but_not_a_vendor() {
    let d = deployment(
        "\
id,contact_type,company_id,name,country_code,business_relations
C3,person,,Piet Janssens,BE,VEND
C4,person,,Els Peeters,BE,CUST
",
    );
    let report = d.json_exit(&["sync"], 3);
    let failure = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "VEND")
        .unwrap_or_else(|| panic!("the vendor request fails: {report}"));
    assert_eq!(failure["contact_id"], "C3");
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.contains("C3") && error.contains("no company"),
        "{error}"
    );
    assert_eq!(counts(&report, "VEND")["failed"], 1);
    assert!(
        rows(&d.read("erp/vendors.csv")).is_empty(),
        "no vendor for a person"
    );
    // A lone person may be a customer, and holds the link itself.
    let account = has_link(&d, "CUST", "C4").expect("a customer for the lone person");
    assert_eq!(
        cell(&d.read("erp/customers.csv"), &account, "name").as_deref(),
        Some("Els Peeters")
    );

    // The human report gives the reason too.
    let text = d.fails(&["sync"], 3);
    assert!(text.contains("Requests refused"), "{text}");
    assert!(text.contains("VEND contact C3"), "{text}");
    assert!(text.contains("vendors need a company contact"), "{text}");
}

#[test]
fn r5_a_contact_asking_for_cust_gets_a_customer_from_the_template_of_its_country() {
    let d = deployment(
        "\
id,contact_type,name,country_code,language_code,phone,business_relations
C1,company,Acme NV,BE,,+32 9 111,CUST
C2,company,Brit Ltd,GB,fr,,CUST
C3,company,Plain BV,NL,,,
",
    );
    let planned = d.json(&["plan"]);
    assert_eq!(counts(&planned, "CUST")["created"], 2, "{planned}");
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["created"], 2, "{report}");
    let customers = d.read("erp/customers.csv");
    assert_eq!(rows(&customers).len(), 2, "{customers}");

    let acme = row_where(&customers, "name", "Acme NV").expect("a customer for C1");
    assert_eq!(acme["x_payment_terms"], "30D", "the BE template");
    assert_eq!(acme["language_code"], "nl");
    assert_eq!(acme["phone"], "+32 9 111", "the contact's own fields");
    assert_eq!(has_link(&d, "CUST", "C1").as_deref(), Some(&*acme["id"]));

    let brit = row_where(&customers, "name", "Brit Ltd").expect("a customer for C2");
    assert_eq!(brit["x_payment_terms"], "60D", "the GB template");
    assert_eq!(
        brit["language_code"], "fr",
        "a template fills only empty fields"
    );
    assert!(has_link(&d, "CUST", "C3").is_none(), "C3 asked for nothing");

    // The template index is reported with the create.
    let templates: Vec<_> = report["plan"]["account_creates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["contact_id"].clone(), c["template"].clone()))
        .collect();
    assert!(
        templates.contains(&(json!("C1"), json!(0))),
        "{templates:?}"
    );
    assert!(
        templates.contains(&(json!("C2"), json!(1))),
        "{templates:?}"
    );
    assert_eq!(d.sync()["writes"], 0);
}

#[test]
fn r5_no_applicable_template_is_a_failure_naming_the_contact() {
    let d = deployment(
        "\
id,contact_type,name,country_code,business_relations
C1,company,Acme NV,BE,CUST
C9,company,Yankee Inc,US,CUST
",
    );
    let report = d.json_exit(&["sync"], 3);
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0]["contact_id"], "C9");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("C9") && error.contains("no template"),
        "{error}"
    );
    assert!(
        error.contains("US"),
        "names the value that decided: {error}"
    );
    let customers = d.read("erp/customers.csv");
    assert_eq!(rows(&customers).len(), 1, "only C1 got one: {customers}");
    assert!(row_where(&customers, "name", "Yankee Inc").is_none());
    assert!(has_link(&d, "CUST", "C9").is_none());
}

#[test]
fn r5_tandem_create_makes_a_customer_on_demand() {
    let d = deployment(
        "\
id,contact_type,name,country_code,business_relations
C1,company,Acme NV,BE,
",
    );
    assert_eq!(d.sync()["writes"], 0, "nobody asked for anything");
    let out = d.ok(&["create", "CUST", "--contact", "C1"]);
    assert!(out.contains("Accounts to create (R5)"), "{out}");
    assert!(out.contains("CUST customer for contact C1"), "{out}");
    let account = has_link(&d, "CUST", "C1").expect("linked to its new customer");
    let customers = d.read("erp/customers.csv");
    assert_eq!(
        cell(&customers, &account, "name").as_deref(),
        Some("Acme NV")
    );
    assert_eq!(
        cell(&customers, &account, "x_payment_terms").as_deref(),
        Some("30D")
    );
    assert_eq!(codes(&d, "C1"), ["CUST"], "R9");

    // Asking again is refused and writes nothing.
    let files = d.snapshot();
    let err = d.fails(&["create", "CUST", "--contact", "C1"], 1);
    assert!(err.contains("already has a CUST link"), "{err}");
    assert_eq!(files, d.snapshot());
    let err = d.fails(&["create", "CUST", "--contact", "C404"], 1);
    assert!(err.contains("C404") && err.contains("not found"), "{err}");
}

#[test]
fn r9_contact_lists_its_codes_and_a_deleted_customer_takes_only_cust_off() {
    let d = deployment(
        "\
id,contact_type,name,vat_registration_no,business_relations
C1,company,Acme NV,BE0111,VIP
C2,company,Beta BV,BE0222,
",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Acme,BE0111\n",
    );
    d.write(
        "erp/vendors.csv",
        "id,name,vat_registration_no\nV1,Acme,BE0111\n",
    );
    d.sync();
    let mut held = codes(&d, "C1");
    held.sort();
    assert_eq!(held, ["CUST", "VEND", "VIP"]);
    assert!(codes(&d, "C2").is_empty(), "no relation, no code");

    // The only customer: a listing without any is let through explicitly (R16).
    d.remove_row("erp/customers.csv", "K1");
    let report = d.json(&["sync", "--allow-deletes"]);
    assert_eq!(counts(&report, "CUST")["unlinked"], 1, "{report}");
    let mut held = codes(&d, "C1");
    held.sort();
    assert_eq!(held, ["VEND", "VIP"], "CUST is gone, the rest stays");
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "name").as_deref(),
        Some("Acme NV"),
        "the contact stays (R13)"
    );
    assert_eq!(d.sync()["writes"], 0);
}

#[test]
fn r10_resolve_a_company_and_a_person_through_its_company() {
    let d = deployment(
        "\
id,contact_type,company_id,name,vat_registration_no
C1,company,,Acme NV,BE0111
C2,person,C1,Jan Peeters,
C3,company,,Loner BV,
",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Acme,BE0111\n",
    );
    d.sync();
    assert_eq!(d.ok(&["resolve", "C1", "CUST"]), "K1\n");
    assert_eq!(d.ok(&["resolve", "C2", "CUST"]), "K1 (via company C1)\n");
    let json = d.json(&["resolve", "C2", "CUST"]);
    assert_eq!(json["account_id"], "K1");
    assert_eq!(json["holder_id"], "C1");
    assert_eq!(json["contact_id"], "C2");
    let err = d.fails(&["resolve", "C3", "CUST"], 1);
    assert!(
        err.contains("C3") && err.contains("no CUST relation"),
        "{err}"
    );
    let err = d.fails(&["resolve", "C1", "VEND"], 1);
    assert!(err.contains("no VEND relation"), "{err}");
    let err = d.fails(&["resolve", "C1", "NOPE"], 1);
    assert!(err.contains("no relation `NOPE` is configured"), "{err}");
}

#[test]
fn r11_log_shows_linked_created_updated_conflict_and_unlinked() {
    let config = CONFIG.replace(
        "match = [[\"vat_registration_no\"]]\ntemplates",
        "match = [[\"vat_registration_no\"]]\ncreate_contacts = true\nconflict = \"account_wins\"\ntemplates",
    );
    assert_ne!(config, CONFIG);
    let d = Deployment::with_config(&config);
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no,phone\nC1,company,Acme NV,BE0111,\nC9,company,Nobody,,\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,phone\nK1,Acme,BE0111,+32 9 111\nK2,Delta,BE0333,\n",
    );
    d.sync();
    // An edit on the account side, then a conflict on the name.
    d.set_cell("erp/customers.csv", "K1", "phone", "+32 9 999");
    d.sync();
    d.set_cell("erp/customers.csv", "K1", "name", "Acme Corp");
    d.set_cell("crm/contacts.csv", "C1", "name", "Acme Group");
    d.sync();
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "name").as_deref(),
        Some("Acme Corp"),
        "account_wins"
    );
    d.remove_row("erp/customers.csv", "K1");
    d.sync();

    let entries = d.json(&["log", "C1"]);
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in ["linked", "updated", "conflict", "unlinked"] {
        assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
    }
    for e in entries.as_array().unwrap() {
        assert_eq!(e["code"], "CUST");
        assert!(e["run_id"].as_i64().is_some(), "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(!e["source"].as_str().unwrap().is_empty(), "{e}");
    }
    let unlinked = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "unlinked")
        .unwrap();
    assert_eq!(unlinked["details"]["reason"], "account_deleted");

    let text = d.ok(&["log", "C1"]);
    assert!(
        text.contains("phone \"+32 9 111\" -> \"+32 9 999\""),
        "old and new values: {text}"
    );
    assert!(text.contains("by match tier 1"), "{text}");
    assert!(text.contains("account_wins: CUST wins"), "{text}");
    assert!(text.contains("the account was deleted"), "{text}");
    // --limit keeps the newest.
    let last = d.json(&["log", "C1", "--limit", "1"]);
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["action"], "unlinked");

    // A contact created from an account has its `created` entry.
    let delta = row_where(&d.read("crm/contacts.csv"), "name", "Delta").unwrap();
    let created = d.json(&["log", &delta["id"]]);
    assert!(
        created
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "created" && e["account_id"] == "K2"),
        "{created}"
    );
    // No relation, no entry.
    assert_eq!(d.json(&["log", "C9"]), json!([]));
    assert!(d.ok(&["log", "C9"]).contains("No interactions"));
}

const MANUAL: &str = r#"
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
"#;

fn linked_pair(config: &str) -> Deployment {
    let d = Deployment::with_config(config);
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no,phone,email\nC1,company,Acme NV,BE0111,+32 1,a@acme.be\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,phone,email\nK1,Acme NV,BE0111,+32 1,a@acme.be\n",
    );
    d.sync();
    assert_eq!(d.links().len(), 1);
    d
}

#[test]
fn r15_manual_conflict_waits_in_the_queue_until_resolved() {
    let d = linked_pair(MANUAL);
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 2");
    d.set_cell("erp/customers.csv", "K1", "phone", "+32 3");
    d.set_cell("erp/customers.csv", "K1", "email", "info@acme.be");
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["conflicts"], 1, "{report}");
    // The other field goes on synchronising; the conflicting one waits.
    let contacts = d.read("crm/contacts.csv");
    assert_eq!(
        cell(&contacts, "C1", "email").as_deref(),
        Some("info@acme.be")
    );
    assert_eq!(cell(&contacts, "C1", "phone").as_deref(), Some("+32 2"));
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "phone").as_deref(),
        Some("+32 3")
    );

    let open = d.json(&["conflicts"]);
    let open = open.as_array().unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    let c = &open[0];
    assert_eq!(c["field"], "phone");
    assert_eq!(c["base"], "+32 1");
    assert_eq!(c["contact_value"], "+32 2");
    assert_eq!(c["account_value"], "+32 3");
    assert_eq!(c["contact_id"], "C1");
    assert_eq!(c["account_id"], "K1");
    let text = d.ok(&["conflicts"]);
    for needle in ["phone", "\"+32 1\"", "\"+32 2\"", "\"+32 3\"", "K1"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // It stays in the queue run after run, and nothing is written meanwhile.
    let files = d.snapshot();
    let again = d.sync();
    assert_eq!(again["writes"], 0, "{again}");
    assert_eq!(files, d.snapshot());
    assert_eq!(d.json(&["conflicts"]).as_array().unwrap().len(), 1);
    assert!(
        d.ok(&["status"]).contains("Open conflicts: 1"),
        "status counts it"
    );

    let id = c["id"].as_i64().unwrap().to_string();
    let out = d.ok(&["conflicts", "resolve", &id, "--take", "account"]);
    assert!(
        out.contains("\"+32 3\""),
        "says what will be written: {out}"
    );
    let report = d.sync();
    assert!(report["writes"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "phone").as_deref(),
        Some("+32 3")
    );
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "phone").as_deref(),
        Some("+32 3")
    );
    assert_eq!(d.json(&["conflicts"]), json!([]), "closed");
    assert_eq!(d.sync()["writes"], 0);
    // Every conflict is logged (R15, R11).
    let log = d.json(&["log", "C1"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "conflict" && e["details"]["field"] == "phone"),
        "{log}"
    );
}

#[test]
fn r15_conflicts_resolve_takes_a_value_of_the_operators_own() {
    let d = linked_pair(MANUAL);
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 2");
    d.set_cell("erp/customers.csv", "K1", "phone", "+32 3");
    d.sync();
    let id = d.json(&["conflicts"])[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let err = d.fails(&["conflicts", "resolve", "999", "--take", "contact"], 1);
    assert!(err.contains("no open conflict with id 999"), "{err}");
    d.ok(&["conflicts", "resolve", &id, "--take", "+32 4"]);
    d.sync();
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "phone").as_deref(),
        Some("+32 4")
    );
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "phone").as_deref(),
        Some("+32 4")
    );
    assert_eq!(d.json(&["conflicts"]), json!([]));
}

#[test]
fn r15_policy_per_field_via_conflict_fields() {
    let config = MANUAL.replace(
        "conflict = \"manual\"",
        "conflict = \"contact_wins\"\nconflict_fields = { phone = \"account_wins\", email = \"manual\" }",
    );
    let d = linked_pair(&config);
    for (field, contact, account) in [
        ("name", "Acme Group", "Acme Corp"),
        ("phone", "+32 2", "+32 3"),
        ("email", "c@acme.be", "k@acme.be"),
    ] {
        d.set_cell("crm/contacts.csv", "C1", field, contact);
        d.set_cell("erp/customers.csv", "K1", field, account);
    }
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["conflicts"], 3, "{report}");
    let contacts = d.read("crm/contacts.csv");
    let customers = d.read("erp/customers.csv");
    // name: the relation's policy, contact_wins.
    assert_eq!(
        cell(&customers, "K1", "name").as_deref(),
        Some("Acme Group")
    );
    assert_eq!(cell(&contacts, "C1", "name").as_deref(), Some("Acme Group"));
    // phone: account_wins for this field.
    assert_eq!(cell(&contacts, "C1", "phone").as_deref(), Some("+32 3"));
    assert_eq!(cell(&customers, "K1", "phone").as_deref(), Some("+32 3"));
    // email: manual for this field, both keep their value and it waits.
    assert_eq!(cell(&contacts, "C1", "email").as_deref(), Some("c@acme.be"));
    assert_eq!(
        cell(&customers, "K1", "email").as_deref(),
        Some("k@acme.be")
    );
    let open = d.json(&["conflicts"]);
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["field"], "email");
}

/// Makes every write of `erp/vendors.csv` fail while reads go on: the file moves to a
/// name so long that no temporary file fits beside it, and a link takes its place
/// (Tandem writes through links). Works as root too, unlike a read-only folder.
fn break_vendor_writes(d: &Deployment) {
    let long = format!("vendors.csv.{}", "x".repeat(240));
    std::fs::rename(d.path("erp/vendors.csv"), d.path(&format!("erp/{long}"))).unwrap();
    std::os::unix::fs::symlink(&long, d.path("erp/vendors.csv")).unwrap();
}

/// Undoes [`break_vendor_writes`].
fn mend_vendor_writes(d: &Deployment) {
    let long = format!("vendors.csv.{}", "x".repeat(240));
    std::fs::remove_file(d.path("erp/vendors.csv")).unwrap();
    std::fs::rename(d.path(&format!("erp/{long}")), d.path("erp/vendors.csv")).unwrap();
}

#[test]
fn r17_a_record_failing_twice_the_same_way_is_parked_until_retried() {
    let d = Deployment::with_config(CONFIG);
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no,phone\nC1,company,Acme NV,BE0111,\nC2,company,Beta BV,BE0222,\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,phone\nK1,Acme NV,BE0111,\n",
    );
    d.write(
        "erp/vendors.csv",
        "id,name,vat_registration_no,phone\nV1,Beta BV,BE0222,\n",
    );
    d.sync();
    assert_eq!(d.links().len(), 2);

    // From now on every write of vendors.csv fails the same way (its temporary file
    // cannot be created), while customers.csv and contacts.csv take writes.
    break_vendor_writes(&d);
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 1");
    d.set_cell("crm/contacts.csv", "C2", "phone", "+32 2");

    let first = d.json_exit(&["sync"], 3);
    let failures = first["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{first}");
    assert_eq!(failures[0]["code"], "VEND");
    assert_eq!(failures[0]["contact_id"], "C2");
    assert_eq!(failures[0]["account_id"], "V1");
    assert_eq!(
        failures[0]["parked"], false,
        "first failure: retried next run"
    );
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("vendors.csv"),
        "{first}"
    );
    assert_eq!(
        counts(&first, "CUST")["updated"],
        1,
        "the others go through"
    );
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "phone").as_deref(),
        Some("+32 1")
    );

    let second = d.fails(&["sync"], 3);
    assert!(
        second.contains("(parked until `tandem retry`)"),
        "same error twice: parked: {second}"
    );
    // Parked: left alone, the run is clean again.
    let third = d.json(&["sync"]);
    assert_eq!(counts(&third, "VEND")["parked"], 1, "{third}");
    assert_eq!(counts(&third, "VEND")["failed"], 0, "{third}");

    let status = d.json(&["status"]);
    let parked = status["parked"]["links"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{status}");
    assert_eq!(parked[0]["contact_id"], "C2");
    assert_eq!(parked[0]["account_id"], "V1");
    let text = d.ok(&["status"]);
    assert!(text.contains("VEND contact C2 / vendor V1"), "{text}");
    assert!(text.contains("tandem retry VEND C2"), "{text}");
    let csv = d.ok(&["links", "VEND", "--format", "csv"]);
    let link = &rows(&csv)[0];
    assert_eq!(link["parked"], "true", "{csv}");
    assert_eq!(link["failure_count"], "2", "{csv}");
    assert!(link["last_error"].contains("vendors.csv"), "{csv}");
    let log = d.json(&["log", "C2"]);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"failed") && actions.contains(&"parked"),
        "{actions:?}"
    );

    // Fixed and retried by hand: the change goes through.
    mend_vendor_writes(&d);
    assert_eq!(
        cell(&d.read("erp/vendors.csv"), "V1", "phone").as_deref(),
        Some(""),
        "nothing reached the vendor while parked"
    );
    let out = d.ok(&["retry", "--all"]);
    assert!(out.contains("Put back 1"), "{out}");
    let report = d.sync();
    assert_eq!(counts(&report, "VEND")["updated"], 1, "{report}");
    assert_eq!(counts(&report, "VEND")["parked"], 0, "{report}");
    assert_eq!(
        cell(&d.read("erp/vendors.csv"), "V1", "phone").as_deref(),
        Some("+32 2")
    );
    assert_eq!(d.json(&["status"])["parked"]["links"], json!([]));
    assert_eq!(d.sync()["writes"], 0);
}

#[test]
fn r17_a_refused_request_is_parked_and_retried_one_by_one() {
    let d = deployment(
        "\
id,contact_type,name,country_code,business_relations
C9,company,Yankee Inc,US,CUST
",
    );
    d.fails(&["sync"], 3);
    d.fails(&["sync"], 3);
    let status = d.json(&["status"]);
    let refused = status["parked"]["refused_requests"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{status}");
    assert_eq!(refused[0]["code"], "CUST");
    assert_eq!(refused[0]["contact_id"], "C9");
    assert!(
        d.ok(&["status"])
            .contains("CUST request of contact C9 refused: no template"),
        "status names it"
    );
    // The contact is fixed; the parked request waits for the operator.
    d.set_cell("crm/contacts.csv", "C9", "country_code", "BE");
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["created"], 0, "{report}");
    assert_eq!(counts(&report, "CUST")["parked"], 1, "{report}");
    let err = d.fails(&["retry", "VEND", "C9"], 1);
    assert!(err.contains("nothing parked for VEND C9"), "{err}");
    assert!(d.ok(&["retry", "CUST", "C9"]).contains("Put back 1"));
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["created"], 1, "{report}");
    assert!(has_link(&d, "CUST", "C9").is_some());
}

#[test]
fn read_only_commands_never_create_a_state_file() {
    let d = deployment(
        "\
id,contact_type,name,vat_registration_no,business_relations
C1,company,Acme NV,BE0111,CUST
",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Acme,BE0111\n",
    );
    let files = d.snapshot();
    let planned = d.json(&["plan"]);
    assert_eq!(counts(&planned, "CUST")["linked"], 1, "{planned}");
    assert!(d.ok(&["plan"]).contains("nothing was written"));
    d.ok(&["check"]);
    d.ok(&["links"]);
    d.ok(&["links", "CUST", "--format", "csv"]);
    d.ok(&["log", "C1"]);
    d.ok(&["conflicts"]);
    d.ok(&["status"]);
    d.fails(&["resolve", "C1", "CUST"], 1);
    assert!(
        !d.path(".tandem").exists() && !d.state_exists(),
        "a read-only command created the state"
    );
    assert_eq!(files, d.snapshot(), "nothing was written");
    let status = d.json(&["status"]);
    assert_eq!(status["state_exists"], false);
    assert_eq!(status["runs"], json!([]));
}

// Regressions: scenarios that once went wrong.

#[test]
fn r17_a_parked_refused_request_is_left_alone() {
    let d = deployment("id,contact_type,name,business_relations\nC3,person,Piet,VEND\n");
    d.fails(&["sync"], 3);
    let second = d.json_exit(&["sync"], 3);
    assert_eq!(second["failures"][0]["parked"], true, "{second}");
    // Parked: left alone until `tandem retry`, so the run is clean.
    let third = d.json(&["sync"]);
    assert_eq!(counts(&third, "VEND")["failed"], 0, "{third}");
    let status = d.json(&["status"]);
    assert_eq!(status["parked"]["refused_requests"][0]["failure_count"], 2);
    assert_eq!(status["parked"]["refused_requests"][0]["contact_id"], "C3");
    assert_eq!(
        status["parked"]["creates"],
        json!([]),
        "a refusal is no create"
    );
    let shown = d.ok(&["status"]);
    assert!(
        shown.contains("VEND request of contact C3 refused")
            && shown.contains("tandem retry VEND C3"),
        "{shown}"
    );
    // Retried by hand: asked again, refused again (nothing changed), not parked yet.
    assert!(d.ok(&["retry", "VEND", "C3"]).contains('1'));
    let fourth = d.json_exit(&["sync"], 3);
    assert_eq!(fourth["failures"][0]["parked"], false, "{fourth}");
}

#[test]
fn r17_a_new_link_failing_twice_is_parked() {
    let d = deployment("id,contact_type,name,vat_registration_no\nC1,company,Acme NV,BE0111\n");
    d.write(
        "erp/vendors.csv",
        "id,name,vat_registration_no\nV1,Acme,BE0111\n",
    );
    break_vendor_writes(&d);
    d.fails(&["sync"], 3);
    let second = d.json_exit(&["sync"], 3);
    assert_eq!(second["failures"][0]["parked"], true, "{second}");
}

#[test]
fn r9_a_failed_operator_link_does_not_turn_into_a_create() {
    let d = deployment("id,contact_type,name\nC2,company,Beta BV\n");
    d.write("erp/vendors.csv", "id,name\nV2,Beta\n");
    break_vendor_writes(&d);
    d.fails(&["link", "VEND", "C2", "V2"], 3);
    // The link stays, with its first write still to do (R18).
    let link = ("VEND".to_owned(), "C2".to_owned(), "V2".to_owned());
    assert_eq!(d.links(), vec![link.clone()]);
    mend_vendor_writes(&d);
    d.sync();
    assert_eq!(
        rows(&d.read("erp/vendors.csv")).len(),
        1,
        "no second vendor: {}",
        d.read("erp/vendors.csv")
    );
    assert_eq!(d.links(), vec![link]);
    assert!(
        d.read("erp/vendors.csv").contains("Beta BV"),
        "the write landed"
    );
}

#[test]
fn r4_an_operator_unlink_sticks() {
    let d = deployment("id,contact_type,name,vat_registration_no\nC1,company,Acme NV,BE0111\n");
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Acme,BE0111\n",
    );
    d.sync();
    d.ok(&["unlink", "CUST", "C1"]);
    d.sync();
    assert!(d.links().is_empty(), "linked again: {:?}", d.links());
}

#[test]
fn r17_parked_creates_do_not_reduce_unchanged_links() {
    let d = deployment(
        "id,contact_type,name,vat_registration_no,country_code,business_relations\n\
         C1,company,Acme NV,BE0111,BE,\nC9,company,Yankee Inc,,US,CUST\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Acme,BE0111\n",
    );
    d.fails(&["sync"], 3);
    d.fails(&["sync"], 3);
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["parked"], 1, "{report}");
    assert_eq!(counts(&report, "CUST")["unchanged"], 1, "{report}");
}

#[test]
fn r11_a_resolution_written_to_the_contact_is_logged_as_an_update() {
    let d = linked_pair(MANUAL);
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 2");
    d.set_cell("erp/customers.csv", "K1", "phone", "+32 3");
    d.sync();
    let id = d.json(&["conflicts"])[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    d.ok(&["conflicts", "resolve", &id, "--take", "account"]);
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["updated"], 1, "{report}");
    let log = d.json(&["log", "C1"]);
    let last_update = log
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "updated")
        .unwrap()
        .clone();
    assert_eq!(
        last_update["details"]["contact"][0]["new"], "+32 3",
        "{log}"
    );
}
