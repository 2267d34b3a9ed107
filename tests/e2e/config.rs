//! Config mistakes are errors that name the file and the key.

use crate::support::{CONFIG, Deployment, counts, stderr};

fn fails_with(config: &str, needles: &[&str]) {
    let d = Deployment::with_config(config);
    let out = d.tandem(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // `check` reports a connector's failure on its own line of the report.
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(err.contains("tandem.toml"), "names the file: {err}");
    for needle in needles {
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn unknown_key_is_named() {
    fails_with(
        &CONFIG.replace(
            "create_contacts = true",
            "create_contacts = true\nconflcit = \"newest\"",
        ),
        &["relations.CUST", "conflcit"],
    );
}

#[test]
fn unknown_connector_type_is_named() {
    fails_with(
        &CONFIG.replacen("type = \"file\"", "type = \"ftp\"", 1),
        &["connectors.crm", "ftp"],
    );
}

#[test]
fn relation_on_a_missing_connector_is_named() {
    fails_with(
        &CONFIG.replace(
            "connector = \"erp\"\ncreate_contacts",
            "connector = \"erp2\"\ncreate_contacts",
        ),
        &["relations.CUST.connector", "erp2"],
    );
}

#[test]
fn unknown_connector_setting_is_named() {
    fails_with(
        &CONFIG.replacen("path = \"crm\"", "path = \"crm\"\nformt = \"csv\"", 1),
        &["connectors.crm", "formt"],
    );
}

#[test]
fn missing_secret_variable_is_named_without_values() {
    let config = CONFIG.replacen("path = \"crm\"", "path = \"${TANDEM_TEST_UNSET_DIR}\"", 1);
    fails_with(&config, &["connectors.crm.path", "TANDEM_TEST_UNSET_DIR"]);
}

#[test]
fn check_reports_every_connector() {
    let d = Deployment::new();
    let out = d.tandem(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("crm") && text.contains("erp"), "{text}");

    std::fs::remove_dir_all(d.path("erp")).unwrap();
    let out = d.tandem(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains("erp"), "{all}");
}

#[test]
fn environment_overrides_and_variables_apply() {
    let d = Deployment::new();
    std::fs::create_dir_all(d.path("erp-other")).unwrap();
    d.write("erp-other/customers.csv", "id,name\nK1,Only Here\n");
    d.write("crm/contacts.csv", "id,name\n");
    let config = CONFIG.replacen("path = \"crm\"", "path = \"${TANDEM_TEST_CRM}\"", 1);
    d.write("tandem.toml", &config);
    let out = d.tandem_env(
        &["--json", "sync"],
        &[
            ("TANDEM__CONNECTORS__ERP__PATH", "erp-other"),
            ("TANDEM_TEST_CRM", "crm"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts(&report, "CUST")["created"], 1);
    assert!(d.read("crm/contacts.csv").contains("Only Here"));
}
