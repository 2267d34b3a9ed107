//! Config mistakes are errors that name the file and the key.

use crate::support::{CONFIG, Deployment, SQLITE_STATE_URL, counts, stderr, stdout};

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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
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
    d.write_config(&config);
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

/// `check` with `env`: the exit code and stderr.
fn check_with_env(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let d = Deployment::with_config(config);
    let out = d.tandem_env(&["check"], env);
    (out.status.code(), stderr(&out))
}

#[test]
fn an_unknown_override_is_blamed_on_its_variable_not_the_file() {
    let (code, err) = check_with_env(CONFIG, &[("TANDEM__BOGUS__X", "1")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("environment variable TANDEM__BOGUS__X: Tandem has no config section `bogus`"),
        "{err}"
    );
    assert!(!err.contains("tandem.toml"), "{err}");
}

#[test]
fn the_environment_cannot_add_a_relation() {
    let (code, err) = check_with_env(CONFIG, &[("TANDEM__RELATIONS__NEWC__KIND", "customer")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("TANDEM__RELATIONS__NEWC__KIND"), "{err}");
    assert!(err.contains("add [relations.NEWC] to the file"), "{err}");
}

#[test]
fn a_lowercase_override_changes_the_relation_the_file_spells_in_capitals() {
    let d = Deployment::new();
    d.write("erp/customers.csv", "id,name\nK1,Only Here\n");
    d.write("crm/contacts.csv", "id,name\n");
    let out = d.tandem_env(
        &["--json", "sync"],
        &[("tandem__relations__cust__create_contacts", "false")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts(&report, "CUST")["created"], 0);
    assert!(!d.read("crm/contacts.csv").contains("Only Here"));
}

#[test]
fn every_config_mistake_is_shown_with_its_line_or_variable() {
    let config = CONFIG
        .replacen("kind = \"customer\"", "kind = \"client\"", 1)
        .replacen("path = \"erp\"", "path = \"${TANDEM_TEST_UNSET_ERP}\"", 1);
    let (code, err) = check_with_env(
        &config,
        &[("TANDEM__RELATIONS__VEND__CONFLICT", "sometimes")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: 3 mistakes in the config:\n"),
        "{err}"
    );
    for needle in [
        "tandem.toml:11: connectors.erp.path: environment variable `TANDEM_TEST_UNSET_ERP` is not set",
        "tandem.toml:17: relations.CUST.kind: unknown variant `client`",
        "environment variable TANDEM__RELATIONS__VEND__CONFLICT: relations.VEND.conflict: unknown variant `sometimes`",
    ] {
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn a_secret_variable_that_is_set_but_empty_is_an_error() {
    let config = CONFIG.replacen("path = \"crm\"", "path = \"${TANDEM_TEST_EMPTY}\"", 1);
    let (code, err) = check_with_env(&config, &[("TANDEM_TEST_EMPTY", "")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "connectors.crm.path: environment variable `TANDEM_TEST_EMPTY` is set but empty"
        ),
        "{err}"
    );
}

#[test]
fn a_url_with_a_password_is_refused_without_showing_the_password() {
    let book = "\n[connectors.book]\ntype = \"carddav\"\nurl = \"https://bob:hunter2@dav.example.invalid/books/\"\n";
    let (code, err) = check_with_env(&format!("{CONFIG}{book}"), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "tandem.toml:29: connectors.book.url: the URL has a user name and password in it"
        ),
        "{err}"
    );
    assert!(
        err.contains("`username` and `password` = \"${VAR}\""),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    // The same from an override: its variable is named, its value is not shown.
    let book = "\n[connectors.book]\ntype = \"carddav\"\nurl = \"http://127.0.0.1:1/\"\n";
    let (code, err) = check_with_env(
        &format!("{CONFIG}{book}"),
        &[(
            "TANDEM__CONNECTORS__BOOK__URL",
            "https://bob:hunter2@dav.example.invalid/",
        )],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "environment variable TANDEM__CONNECTORS__BOOK__URL: connectors.book.url: the URL has"
        ),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_state_url_no_store_opens_is_refused_without_showing_its_password() {
    let unknown = "mysql://tandem:hunter2@db.example/tandem";
    let d = Deployment::on_sqlite(&CONFIG.replace(SQLITE_STATE_URL, unknown));
    for args in [&["sync"][..], &["plan"], &["status"], &["check"]] {
        let out = d.tandem(args);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(text.contains("state.url"), "names the key: {text}");
        assert!(
            text.contains("sqlite://") && text.contains("postgres://"),
            "names the stores there are: {text}"
        );
        assert!(text.contains("tandem:***@db.example"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "{args:?} shows the password: {text}"
        );
    }

    // A PostgreSQL state nobody listens for (port 1): refused, and no password shown.
    let postgres = "postgres://tandem:hunter2@127.0.0.1:1/tandem";
    let d = Deployment::on_sqlite(&CONFIG.replace(SQLITE_STATE_URL, postgres));
    for args in [&["sync"][..], &["plan"], &["status"], &["check"]] {
        let out = d.tandem(args);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            !text.contains("hunter2"),
            "{args:?} shows the password: {text}"
        );
    }
    assert!(!d.path(".tandem").exists(), "no SQLite state in its place");
}
