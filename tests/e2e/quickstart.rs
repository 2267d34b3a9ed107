//! The quickstart of the README, on a copy of `examples/quickstart`.

use crate::support::{Deployment, cell, counts};

#[test]
fn quickstart_syncs_and_settles() {
    let d = Deployment::example("quickstart");
    let planned = d.json(&["plan"]);
    let first = d.sync();
    assert_eq!(planned["counts"], first["counts"], "plan and sync agree");
    let cust = counts(&first, "CUST");
    assert!(cust["linked"].as_u64().unwrap() >= 3, "{first}");
    assert!(cust["created"].as_u64().unwrap() >= 1, "{first}");
    assert!(
        !first["ambiguous"].as_array().unwrap().is_empty(),
        "{first}"
    );
    assert!(
        counts(&first, "VEND")["linked"].as_u64().unwrap() >= 1,
        "{first}"
    );

    let files = d.snapshot();
    let second = d.sync();
    assert_eq!(second["writes"], 0, "{second}");
    assert_eq!(files, d.snapshot());

    // A change on either side flows to the other.
    let customers = d.read("erp/customers.csv");
    let linked = d.links().into_iter().find(|l| l.0 == "CUST").unwrap();
    let old_phone = cell(&customers, &linked.2, "phone").unwrap_or_default();
    let mut lines: Vec<String> = customers.lines().map(str::to_owned).collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let phone_col = header
        .iter()
        .position(|h| *h == "phone")
        .expect("customers have a phone column");
    for line in lines.iter_mut().skip(1) {
        let mut cells: Vec<String> = line.split(',').map(str::to_owned).collect();
        if cells[0] == linked.2 {
            cells[phone_col] = "+32 9 000 00 00".into();
            *line = cells.join(",");
        }
    }
    d.write("erp/customers.csv", &(lines.join("\n") + "\n"));
    d.sync();
    assert_ne!(old_phone, "+32 9 000 00 00");
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), &linked.1, "phone").as_deref(),
        Some("+32 9 000 00 00")
    );
    assert_eq!(d.sync()["writes"], 0);
}

#[test]
fn business_rules_example_syncs_and_settles() {
    let d = Deployment::example("business-rules");
    let planned = d.json(&["plan"]);
    let first = d.sync();
    assert_eq!(planned["counts"], first["counts"], "plan and sync agree");
    assert!(
        !first["plan"]["account_creates"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{first}"
    );
    assert_eq!(first["failures"], serde_json::json!([]), "{first}");
    let files = d.snapshot();
    assert_eq!(d.sync()["writes"], 0);
    assert_eq!(files, d.snapshot());
}
