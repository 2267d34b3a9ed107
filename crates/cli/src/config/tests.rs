use super::*;

/// Line 2: `[connectors.crm]`, 6: `[connectors.erp]`, 10: `[contacts]`, 13:
/// `[relations.CUST]`, 16: its `match`.
const BASE: &str = r#"
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
match = [["email"]]
"#;

const FILE: &str = "examples/x/tandem.toml";

/// A stand-in for the connectors' factories, so that these tests do not depend on
/// the connector features the binary is built with.
struct FileLike(&'static str);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "only the parsing matters")]
struct FileLikeSettings {
    path: String,
    format: Option<String>,
    password: Option<String>,
}

impl tandem_connector::ConnectorFactory for FileLike {
    fn type_name(&self) -> &'static str {
        self.0
    }

    fn build(
        &self,
        settings: serde_json::Value,
        _: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let _: FileLikeSettings = tandem_connector::parse_settings(settings)?;
        Err(ConnectorError::fatal("not a real connector"))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    for type_name in ["file", "carddav", "tryton"] {
        registry.register(Box::new(FileLike(type_name)));
    }
    registry
}

/// Loads `text` as if it were the file `examples/x/tandem.toml`.
fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::from_text(
        FILE.into(),
        PathBuf::from("examples/x"),
        text,
        &Env::from_pairs(env),
        &registry(),
    )
}

fn load_err(text: &str, env: &[(&str, &str)]) -> String {
    load(text, env).unwrap_err().to_string()
}

fn relation<'a>(config: &'a Config, code: &str) -> &'a RelationConfig {
    &config
        .sync
        .relations
        .iter()
        .find(|(c, _)| c == code)
        .unwrap()
        .1
}

fn with(replace: &str, by: &str) -> String {
    assert!(BASE.contains(replace), "{replace}");
    BASE.replacen(replace, by, 1)
}

#[test]
fn loads_a_minimal_config_with_defaults() {
    let config = load(BASE, &[]).unwrap();
    assert_eq!(config.state_url, "sqlite://.tandem/state.db");
    assert_eq!(config.connectors["crm"].type_name, "file");
    assert_eq!(config.connectors["crm"].settings["path"], "crm");
    assert!(!config.connectors["crm"].settings.contains_key("type"));
    assert_eq!(config.sync.contacts.connector, "crm");
    assert_eq!(relation(&config, "CUST").kind.as_str(), "customer");
}

#[test]
fn r16_max_delete_share_defaults_to_half_and_takes_numbers_from_0_to_1() {
    assert_eq!(load(BASE, &[]).unwrap().run.max_delete_share, 0.5);
    let config = load(&format!("{BASE}\n[sync]\nmax_delete_share = 1\n"), &[]).unwrap();
    assert_eq!(config.run.max_delete_share, 1.0);
    let config = load(BASE, &[("TANDEM__SYNC__MAX_DELETE_SHARE", "0.25")]).unwrap();
    assert_eq!(config.run.max_delete_share, 0.25);
    let config = load(BASE, &[("TANDEM__SYNC__MAX_DELETE_SHARE", "1")]).unwrap();
    assert_eq!(config.run.max_delete_share, 1.0);
    for bad in ["1.5", "-0.1", "nan"] {
        let e = load_err(&format!("{BASE}\n[sync]\nmax_delete_share = {bad}\n"), &[]);
        assert!(
            e.starts_with(&format!(
                "{FILE}:19: sync.max_delete_share: must be a number from 0 to 1"
            )),
            "{e}"
        );
    }
    assert_eq!(
        load_err(BASE, &[("TANDEM__SYNC__MAX_DELETE_SHARE", "half")]),
        "environment variable TANDEM__SYNC__MAX_DELETE_SHARE: sync.max_delete_share: \
         expects a number, e.g. 0.25"
    );
    let e = load_err(BASE, &[("TANDEM__SYNC__MAX_DELETE_SHARE", "1.5")]);
    assert!(
        e.starts_with(
            "environment variable TANDEM__SYNC__MAX_DELETE_SHARE: sync.max_delete_share: \
             must be a number from 0 to 1"
        ),
        "{e}"
    );
    let e = load_err(&format!("{BASE}\n[sync]\nmax_deletes = 3\n"), &[]);
    assert!(
        e.starts_with(&format!("{FILE}:19: sync: unknown field `max_deletes`")),
        "{e}"
    );
}

#[test]
fn env_overrides_an_existing_key_whatever_its_case() {
    let config = load(
        BASE,
        &[
            ("TANDEM__RELATIONS__CUST__CONNECTOR", "crm"),
            ("TANDEM__CONNECTORS__CRM__PATH", "elsewhere"),
        ],
    )
    .unwrap();
    assert_eq!(relation(&config, "CUST").connector, "crm");
    assert_eq!(config.connectors["crm"].settings["path"], "elsewhere");
    // No second, lowercased `crm` or `cust` entry appeared.
    assert_eq!(config.connectors.len(), 2);
    assert_eq!(config.sync.relations.len(), 1);
}

#[test]
fn relation_codes_from_the_environment_match_the_files_codes_whatever_their_case() {
    for var in [
        "TANDEM__RELATIONS__CUST__CONFLICT",
        "tandem__relations__cust__conflict",
        "Tandem__Relations__Cust__Conflict",
    ] {
        let config = load(BASE, &[(var, "newest")]).unwrap();
        assert_eq!(config.sync.relations.len(), 1, "{var}");
        let cust = relation(&config, "CUST");
        assert_eq!(
            cust.conflict,
            tandem_engine::ConflictPolicy::Newest,
            "{var}"
        );
    }
    // Two relations whose codes differ in case only: the code as spelt.
    let text = format!("{BASE}\n[relations.cust]\nkind = \"vendor\"\nconnector = \"erp\"\n");
    let config = load(&text, &[("TANDEM__RELATIONS__cust__CONFLICT", "manual")]).unwrap();
    assert_eq!(
        relation(&config, "cust").conflict,
        tandem_engine::ConflictPolicy::Manual
    );
    assert_eq!(
        relation(&config, "CUST").conflict,
        tandem_engine::ConflictPolicy::ContactWins
    );
}

#[test]
fn the_environment_cannot_add_a_relation_and_says_to_add_it_to_the_file() {
    assert_eq!(
        load_err(BASE, &[("TANDEM__RELATIONS__NEWC__KIND", "customer")]),
        "environment variable TANDEM__RELATIONS__NEWC__KIND: the config file has no relation \
         `NEWC` (the environment changes the relations the file has, it does not add one): \
         add [relations.NEWC] to the file"
    );
}

#[test]
fn the_environment_cannot_add_a_connector() {
    let e = load_err(BASE, &[("TANDEM__CONNECTORS__CRM2__PATH", "x")]);
    assert!(
        e.starts_with(
            "environment variable TANDEM__CONNECTORS__CRM2__PATH: the config file has no \
             connector `CRM2`"
        ),
        "{e}"
    );
    assert!(e.contains("add [connectors.CRM2] to the file"), "{e}");
}

#[test]
fn an_unknown_section_from_the_environment_is_blamed_on_the_variable_not_the_file() {
    let e = load_err(BASE, &[("TANDEM__BOGUS__X", "1")]);
    assert_eq!(
        e,
        "environment variable TANDEM__BOGUS__X: Tandem has no config section `bogus`; the \
         sections are state, connectors, contacts, relations, sync, service"
    );
    assert!(!e.contains("tandem.toml"), "{e}");
}

#[test]
fn an_unknown_key_from_the_environment_names_the_variable_and_the_known_keys() {
    let e = load_err(BASE, &[("TANDEM__RELATIONS__CUST__CONFLCIT", "newest")]);
    assert!(
        e.starts_with(
            "environment variable TANDEM__RELATIONS__CUST__CONFLCIT: relations.CUST: unknown \
             key `conflcit`, expected one of `kind`, `connector`,"
        ),
        "{e}"
    );
    let e = load_err(BASE, &[("TANDEM__STATE__PATH", "x")]);
    assert_eq!(
        e,
        "environment variable TANDEM__STATE__PATH: state: unknown key `path`, expected one \
         of `url`, `lease`, `partitions`"
    );
}

#[test]
fn env_adds_a_new_key_lowercased() {
    let config = load(
        BASE,
        &[
            ("TANDEM__STATE__URL", "sqlite:///var/lib/tandem/state.db"),
            ("TANDEM__CONNECTORS__CRM__FORMAT", "jsonl"),
        ],
    )
    .unwrap();
    assert_eq!(config.state_url, "sqlite:///var/lib/tandem/state.db");
    assert_eq!(config.connectors["crm"].settings["format"], "jsonl");
}

#[test]
fn env_values_are_read_as_the_type_the_key_expects() {
    let config = load(
        BASE,
        &[
            ("TANDEM__RELATIONS__CUST__CREATE_CONTACTS", "TRUE"),
            (
                "TANDEM__RELATIONS__CUST__MATCH",
                r#"[["vat_registration_no"], ["email"]]"#,
            ),
            ("TANDEM__RELATIONS__CUST__PRESERVE", r#"["phone"]"#),
            (
                "TANDEM__RELATIONS__CUST__CONFLICT_FIELDS",
                r#"{ phone = "manual" }"#,
            ),
            ("TANDEM__RELATIONS__CUST__TEMPLATE__X_PAYMENT_TERMS", "14"),
            ("TANDEM__CONNECTORS__ERP__RETRIES", "42"),
            ("TANDEM__CONNECTORS__ERP__VERIFY", "false"),
            ("TANDEM__CONNECTORS__ERP__LABEL", "plain text"),
            ("TANDEM__CONNECTORS__ERP__CODE", r#""0042""#),
        ],
    )
    .unwrap();
    let cust = relation(&config, "CUST");
    assert!(cust.create_contacts);
    assert_eq!(cust.match_tiers.len(), 2);
    assert_eq!(cust.preserve.as_deref(), Some(&["phone".to_owned()][..]));
    assert_eq!(cust.conflict_fields.len(), 1);
    // A template value is text, even when it looks like a number.
    let template = format!("{:?}", cust.template);
    assert!(
        template.contains("x_payment_terms") && template.contains("\"14\""),
        "{template}"
    );
    let erp = &config.connectors["erp"].settings;
    assert_eq!(erp["retries"], 42);
    assert_eq!(erp["verify"], false);
    assert_eq!(erp["label"], "plain text");
    assert_eq!(erp["code"], "0042");
}

#[test]
fn env_keeps_text_keys_text() {
    let config = load(
        &with("path = \"erp\"", "path = \"erp\"\npassword = \"x\""),
        &[
            ("TANDEM__CONNECTORS__ERP__PASSWORD", "123456"),
            ("TANDEM__CONNECTORS__CRM__PATH", "2024"),
            ("TANDEM__STATE__URL", "true"),
        ],
    )
    .unwrap();
    assert_eq!(config.connectors["erp"].settings["password"], "123456");
    assert_eq!(config.connectors["crm"].settings["path"], "2024");
    assert_eq!(config.state_url, "true");
    // A secret the file does not have is text too: never a number an error would show.
    let config = load(
        BASE,
        &[
            ("TANDEM__CONNECTORS__ERP__PASSWORD", "123456"),
            ("TANDEM__CONNECTORS__ERP__API_TOKEN", "987654"),
        ],
    )
    .unwrap();
    assert_eq!(config.connectors["erp"].settings["password"], "123456");
    assert_eq!(config.connectors["erp"].settings["api_token"], "987654");
}

#[test]
fn an_environment_value_of_the_wrong_type_names_the_variable_and_the_type_but_not_the_value() {
    let cases = [
        (
            "TANDEM__RELATIONS__CUST__CREATE_CONTACTS",
            "expects true or false",
        ),
        (
            "TANDEM__RELATIONS__CUST__MATCH",
            "expects a list in TOML syntax",
        ),
        (
            "TANDEM__RELATIONS__CUST__TEMPLATE",
            "expects an inline table in TOML syntax",
        ),
        ("TANDEM__SYNC__MAX_DELETE_SHARE", "expects a number"),
    ];
    for (var, expected) in cases {
        let e = load_err(BASE, &[(var, "hunter2")]);
        assert!(
            e.starts_with(&format!("environment variable {var}: ")),
            "{e}"
        );
        assert!(e.contains(expected), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    // A connector setting the file has keeps the file's type.
    let e = load_err(
        &with("path = \"erp\"", "path = \"erp\"\nbatch_size = 100"),
        &[("TANDEM__CONNECTORS__ERP__BATCH_SIZE", "many")],
    );
    assert_eq!(
        e,
        "environment variable TANDEM__CONNECTORS__ERP__BATCH_SIZE: connectors.erp.batch_size: \
         expects a number, e.g. 0.25"
    );
}

#[test]
fn env_errors_name_the_variable_and_the_key() {
    let e = load_err(BASE, &[("TANDEM__RELATIONS__CUST__CONFLICT", "sometimes")]);
    assert!(
        e.starts_with(
            "environment variable TANDEM__RELATIONS__CUST__CONFLICT: relations.CUST.conflict: \
             unknown variant `sometimes`"
        ),
        "{e}"
    );
    assert_eq!(
        load_err(BASE, &[("TANDEM__CONTACTS__CONNECTOR__X", "1")]),
        "environment variable TANDEM__CONTACTS__CONNECTOR__X: contacts.connector: is text, not \
         a table: it has no key `x`"
    );
    assert_eq!(
        load_err(BASE, &[("TANDEM__CONNECTORS__CRM__PATH__X", "1")]),
        "environment variable TANDEM__CONNECTORS__CRM__PATH__X: connectors.crm.path: is text in \
         the config file, not a table: it has no key `x`"
    );
    let e = load_err(BASE, &[("TANDEM__STATE____URL", "x")]);
    assert!(
        e.contains("TANDEM__STATE____URL: a key segment is empty"),
        "{e}"
    );
    let e = load_err(BASE, &[("TANDEM__RELATIONS__CUST", "x")]);
    assert!(
        e.starts_with(
            "environment variable TANDEM__RELATIONS__CUST: relations.CUST: names a relation"
        ),
        "{e}"
    );
    let e = load_err(BASE, &[("TANDEM__CONNECTORS__CRM__TYPE", "ftp")]);
    assert!(
        e.starts_with(
            "environment variable TANDEM__CONNECTORS__CRM__TYPE: connectors.crm.type: unknown \
             connector type `ftp`"
        ),
        "{e}"
    );
}

#[test]
fn an_engine_check_on_a_key_set_by_the_environment_is_blamed_on_the_variable() {
    let e = load_err(
        BASE,
        &[("TANDEM__RELATIONS__CUST__MATCH", r#"[["vat_number"]]"#)],
    );
    assert!(
        e.starts_with(
            "environment variable TANDEM__RELATIONS__CUST__MATCH: relations.CUST.match[0]: \
             `vat_number` is not a field"
        ),
        "{e}"
    );
}

#[test]
fn an_empty_override_is_an_error() {
    assert_eq!(
        load_err(BASE, &[("TANDEM__RELATIONS__CUST__CONFLICT", "")]),
        "environment variable TANDEM__RELATIONS__CUST__CONFLICT: relations.CUST.conflict: is \
         set but empty; unset it to keep the file's value"
    );
}

#[test]
fn two_variables_for_one_key_are_an_error() {
    let e = load_err(
        BASE,
        &[
            ("TANDEM__SYNC__MAX_DELETE_SHARE", "0.1"),
            ("tandem__sync__max_delete_share", "0.2"),
        ],
    );
    assert_eq!(
        e,
        "environment variable TANDEM__SYNC__MAX_DELETE_SHARE: sets the same key as \
         tandem__sync__max_delete_share; keep one of them"
    );
}

#[test]
fn variables_are_substituted_in_strings() {
    let text = with(
        "path = \"erp\"",
        "path = \"${ERP_DIR}/data\"\npassword = \"${ERP_PASSWORD}\"\nnote = \"costs $$5, literal $${HOME}\"",
    );
    let config = load(
        &text,
        &[("ERP_DIR", "/srv/erp"), ("ERP_PASSWORD", "s3cret")],
    )
    .unwrap();
    let erp = &config.connectors["erp"].settings;
    assert_eq!(erp["path"], "/srv/erp/data");
    assert_eq!(erp["password"], "s3cret");
    assert_eq!(erp["note"], "costs $$5, literal ${HOME}");
}

#[test]
fn variables_set_by_env_overrides_are_substituted_too() {
    let config = load(
        BASE,
        &[
            ("TANDEM__CONNECTORS__CRM__TOKEN", "${CRM_TOKEN}"),
            ("CRM_TOKEN", "t0k"),
        ],
    )
    .unwrap();
    assert_eq!(config.connectors["crm"].settings["token"], "t0k");
    assert_eq!(
        load_err(BASE, &[("TANDEM__CONNECTORS__CRM__TOKEN", "${CRM_TOKEN}")]),
        "environment variable TANDEM__CONNECTORS__CRM__TOKEN: connectors.crm.token: \
         environment variable `CRM_TOKEN` is not set"
    );
}

#[test]
fn a_missing_variable_names_the_line_the_key_and_the_variable() {
    let text = with(
        "path = \"erp\"",
        "path = \"erp\"\npassword = \"${ERP_PASSWORD}\"",
    );
    assert_eq!(
        load_err(&text, &[]),
        format!(
            "{FILE}:9: connectors.erp.password: environment variable `ERP_PASSWORD` is not set"
        )
    );
    let text = with("[[\"email\"]]", "[[\"${TIER}\"]]");
    assert_eq!(
        load_err(&text, &[]),
        format!("{FILE}:16: relations.CUST.match[0][0]: environment variable `TIER` is not set")
    );
    let text = with("path = \"crm\"", "path = \"${CRM\"");
    assert!(load_err(&text, &[]).contains("connectors.crm.path: `${` without a closing `}`"));
}

#[test]
fn a_variable_that_is_set_but_empty_is_an_error_not_an_empty_string() {
    let text = with(
        "path = \"erp\"",
        "path = \"erp\"\npassword = \"${ERP_PASSWORD}\"",
    );
    assert_eq!(
        load_err(&text, &[("ERP_PASSWORD", "")]),
        format!(
            "{FILE}:9: connectors.erp.password: environment variable `ERP_PASSWORD` is set but \
             empty; give it a value, or write the value in the file"
        )
    );
}

#[test]
fn unknown_keys_are_named_at_their_line() {
    let text = with("match = [[\"email\"]]", "conflcit = \"newest\"");
    let e = load_err(&text, &[]);
    assert!(
        e.starts_with(&format!(
            "{FILE}:16: relations.CUST: unknown field `conflcit`, expected one of"
        )),
        "{e}"
    );
    let e = load_err(&format!("{BASE}\n[stat]\nurl = \"x\"\n"), &[]);
    assert!(
        e.starts_with(&format!(
            "{FILE}:18: stat: unknown section, expected one of `state`, `connectors`"
        )),
        "{e}"
    );
    let e = load_err(&with("kind = \"customer\"", "kind = \"client\""), &[]);
    assert!(
        e.starts_with(&format!(
            "{FILE}:14: relations.CUST.kind: unknown variant `client`"
        )),
        "{e}"
    );
}

#[test]
fn syntax_errors_give_line_and_column_without_the_line_itself() {
    let e = load_err("[state]\nurl = \"sqlite://x\npassword = 1\n", &[]);
    assert!(e.starts_with(&format!("{FILE}:2: ")), "{e}");
    assert!(e.contains("(column "), "{e}");
    assert!(!e.contains("sqlite://x"), "{e}");
}

#[test]
fn unknown_connector_type_lists_the_known_ones() {
    let text = with("type = \"file\"\npath = \"crm\"", "type = \"ftp\"");
    assert_eq!(
        load_err(&text, &[]),
        format!(
            "{FILE}:3: connectors.crm.type: unknown connector type `ftp`; this build knows: \
             file, carddav, tryton"
        )
    );
    let text = with("type = \"file\"\npath = \"crm\"", "path = \"crm\"");
    assert_eq!(
        load_err(&text, &[]),
        format!("{FILE}:2: connectors.crm: missing field `type`")
    );
}

#[test]
fn missing_connector_references_are_named() {
    let text = with("[connectors.erp]\ntype = \"file\"\npath = \"erp\"\n", "");
    assert_eq!(
        load_err(&text, &[]),
        format!("{FILE}:12: relations.CUST.connector: no connector named `erp` under [connectors]")
    );
    let text = with("connector = \"crm\"", "connector = \"addressbook\"");
    assert_eq!(
        load_err(&text, &[]),
        format!(
            "{FILE}:11: contacts.connector: no connector named `addressbook` under [connectors]"
        )
    );
}

#[test]
fn a_missing_contacts_section_is_named() {
    let text = with("[contacts]\nconnector = \"crm\"\n", "");
    let e = load_err(&text, &[]);
    assert!(
        e.starts_with(&format!("{FILE}: contacts: missing section: [contacts]")),
        "{e}"
    );
}

#[test]
fn engine_checks_give_the_line() {
    let text = with("[[\"email\"]]", "[[\"vat_number\"]]");
    let e = load_err(&text, &[]);
    assert!(
        e.starts_with(&format!(
            "{FILE}:16: relations.CUST.match[0]: `vat_number` is not a field"
        )),
        "{e}"
    );
}

#[test]
fn every_mistake_is_reported_not_just_the_first() {
    let text = with("kind = \"customer\"", "kind = \"client\"").replacen(
        "path = \"erp\"",
        "path = \"${ERP_DIR}\"",
        1,
    ) + "\n[stat]\nurl = \"x\"\n";
    let errors = load(
        &text,
        &[
            ("TANDEM__BOGUS__X", "1"),
            ("TANDEM__RELATIONS__NEWC__KIND", "customer"),
        ],
    )
    .unwrap_err();
    let shown: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    let starts = [
        format!("{FILE}:8: connectors.erp.path: environment variable `ERP_DIR` is not set"),
        format!("{FILE}:14: relations.CUST.kind: unknown variant `client`"),
        format!("{FILE}:18: stat: unknown section"),
        "environment variable TANDEM__BOGUS__X: ".to_owned(),
        "environment variable TANDEM__RELATIONS__NEWC__KIND: ".to_owned(),
    ];
    assert_eq!(shown.len(), starts.len(), "{shown:#?}");
    for (line, start) in shown.iter().zip(&starts) {
        assert!(
            line.starts_with(start.as_str()),
            "{line}\n  expected: {start}"
        );
    }
    let text = errors.to_string();
    assert!(text.starts_with("5 mistakes in the config:\n  "), "{text}");
    assert_eq!(text.lines().count(), 6, "{text}");
}

#[test]
fn a_mistake_in_one_relation_does_not_hide_one_in_another() {
    let text = with("[[\"email\"]]", "[[\"vat_number\"]]")
        + "\n[relations.VEND]\nkind = \"vendor\"\nconnector = \"erp\"\nfields = [\"colour\"]\n";
    let e = load_err(&text, &[]);
    assert!(e.starts_with("2 mistakes in the config:"), "{e}");
    assert!(
        e.contains(":16: relations.CUST.match[0]: `vat_number`"),
        "{e}"
    );
    assert!(e.contains(":21: relations.VEND.fields: `colour`"), "{e}");
}

#[test]
fn a_value_that_cannot_be_expanded_is_not_checked_further() {
    // The reference to a connector `${ERP}` is not reported: the variable is.
    let text = with("connector = \"erp\"", "connector = \"${ERP}\"");
    assert_eq!(
        load_err(&text, &[]),
        format!("{FILE}:15: relations.CUST.connector: environment variable `ERP` is not set")
    );
}

#[test]
fn a_url_with_a_password_is_refused_without_showing_it() {
    let text = with(
        "path = \"crm\"",
        "path = \"crm\"\nurl = \"https://bob:hunter2@dav.example/books/\"",
    );
    let e = load_err(&text, &[]);
    assert!(
        e.starts_with(&format!(
            "{FILE}:5: connectors.crm.url: the URL has a user name and password in it"
        )),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("bob"), "{e}");
    // The keys to use instead are those of the connector's type.
    let carddav = with(
        "type = \"file\"\npath = \"crm\"",
        "type = \"carddav\"\nurl = \"HTTP://bob:pw@dav.example\"",
    );
    assert!(load_err(&carddav, &[]).contains("set `username` and `password` = \"${VAR}\""));
    let tryton = with(
        "type = \"file\"\npath = \"erp\"",
        "type = \"tryton\"\nurl = \"https://:pw@erp.example:8000/\"",
    );
    assert!(load_err(&tryton, &[]).contains("set `user` and `password` = \"${VAR}\""));
}

#[test]
fn a_url_with_a_password_from_a_variable_is_refused_too() {
    let text = with(
        "path = \"crm\"",
        "path = \"crm\"\nurl = \"https://bob:${DAV_PASSWORD}@dav.example/\"",
    );
    let e = load_err(&text, &[("DAV_PASSWORD", "hunter2")]);
    assert!(
        e.starts_with(&format!("{FILE}:5: connectors.crm.url: the URL has")),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = load_err(
        BASE,
        &[(
            "TANDEM__CONNECTORS__CRM__URL",
            "https://bob:hunter2@dav.example/",
        )],
    );
    assert!(
        e.starts_with(
            "environment variable TANDEM__CONNECTORS__CRM__URL: connectors.crm.url: the URL has"
        ),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn urls_without_a_password_are_accepted() {
    for url in [
        "https://dav.example/books/",
        "https://bob@dav.example/books/",
        "http://dav.example/search?q=a:b@c",
        "http://[::1]:5232/bob/",
        "file:///srv/a:b@c",
    ] {
        let text = with(
            "path = \"crm\"",
            &format!("path = \"crm\"\nurl = \"{url}\""),
        );
        assert!(load(&text, &[]).is_ok(), "{url}");
    }
}

#[test]
fn connector_settings_errors_are_moved_onto_their_key_and_line() {
    let text = with(
        "path = \"crm\"",
        "path = \"crm\"\nformt = \"csv\"\npassword = \"hunter2\"",
    );
    let config = load(&text, &[]).unwrap();
    let e = config
        .build_connector("crm", &registry())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{FILE}:5: connectors.crm.formt: unknown field `formt`"
        )),
        "{e}"
    );
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn a_connector_setting_from_the_environment_is_blamed_on_the_variable() {
    let config = load(BASE, &[("TANDEM__CONNECTORS__CRM__FORMT", "csv")]).unwrap();
    let e = config
        .build_connector("crm", &registry())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "environment variable TANDEM__CONNECTORS__CRM__FORMT: connectors.crm.formt: unknown \
             field `formt`"
        ),
        "{e}"
    );
    // A setting the connector misses is blamed on the connector's table.
    let config = load(&with("path = \"crm\"\n", ""), &[]).unwrap();
    let e = config.build_connector("crm", &registry()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{FILE}:2: connectors.crm: missing field `path`")
    );
}

#[test]
fn the_environment_knows_every_key_of_the_sections_tandem_reads() {
    // serde lists the keys of a section in its "unknown field" message.
    let expected = |section: &str| {
        let text = match section {
            "relations.CUST" => with("match = [[\"email\"]]", "bogus = 1"),
            "contacts" => with("connector = \"crm\"", "connector = \"crm\"\nbogus = 1"),
            _ => format!("{BASE}\n[{section}]\nbogus = 1\n"),
        };
        let e = load_err(&text, &[]);
        let list = e.split("expected ").nth(1).unwrap_or_else(|| panic!("{e}"));
        let list = list.trim_start_matches("one of ").replace(" or ", ", ");
        let mut keys: Vec<String> = list
            .split(", ")
            .map(|k| {
                k.trim_matches(|c: char| c == '`' || c.is_whitespace())
                    .to_owned()
            })
            .collect();
        keys.sort();
        keys
    };
    let names = |keys: &[(&str, env::Expect)]| {
        let mut names: Vec<String> = keys.iter().map(|(k, _)| (*k).to_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(expected("relations.CUST"), names(env::RELATION_KEYS));
    assert_eq!(expected("contacts"), names(env::CONTACTS_KEYS));
    assert_eq!(expected("state"), names(env::STATE_KEYS));
    assert_eq!(expected("sync"), names(env::SYNC_KEYS));
}

#[test]
fn relative_paths_resolve_from_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    fs::write(&path, BASE).unwrap();
    let config = Config::load(&path, &Env::default(), &registry()).unwrap();
    assert_eq!(config.base_dir, dir.path());
    let e = Config::load(&dir.path().join("nope.toml"), &Env::default(), &registry())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read the config file"), "{e}");
    assert!(e.contains("--config"), "{e}");
}

#[test]
fn line_columns_count_characters() {
    assert_eq!(layers::line_column("ab\ncd", 0), (1, 1));
    assert_eq!(layers::line_column("ab\ncd", 4), (2, 2));
    assert_eq!(layers::line_column("é\nx", 3), (2, 1));
}

#[test]
fn hubs_per_range_is_unset_by_default_and_at_least_one() {
    assert_eq!(load(BASE, &[]).unwrap().run.hubs_per_range, None);
    let config = load(&format!("{BASE}\n[sync]\nhubs_per_range = 100000\n"), &[]).unwrap();
    assert_eq!(config.run.hubs_per_range, Some(100_000));
    let config = load(BASE, &[("TANDEM__SYNC__HUBS_PER_RANGE", "5000")]).unwrap();
    assert_eq!(config.run.hubs_per_range, Some(5_000));
    let e = load_err(&format!("{BASE}\n[sync]\nhubs_per_range = 0\n"), &[]);
    assert!(
        e.starts_with(&format!(
            "{FILE}:19: sync.hubs_per_range: must be at least 1"
        )),
        "{e}"
    );
}

#[test]
fn a_memory_budget_is_a_size_with_its_unit_and_not_set_with_hubs_per_range() {
    assert_eq!(load(BASE, &[]).unwrap().run.memory_budget, None);
    for (written, bytes) in [
        ("1 GiB", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("512 MiB", 512 << 20),
        ("800MB", 800_000_000),
        ("2 gib", 2 << 30),
    ] {
        let config = load(
            &format!("{BASE}\n[sync]\nmemory_budget = \"{written}\"\n"),
            &[],
        );
        assert_eq!(
            config.unwrap().run.memory_budget,
            Some(ByteSize(bytes)),
            "{written}"
        );
    }
    let config = load(BASE, &[("TANDEM__SYNC__MEMORY_BUDGET", "3 GiB")]).unwrap();
    assert_eq!(config.run.memory_budget, Some(ByteSize(3 << 30)));
    for wrong in ["1 gig", "GiB", "-1 GiB", "1e3 MiB"] {
        let e = load_err(
            &format!("{BASE}\n[sync]\nmemory_budget = \"{wrong}\"\n"),
            &[],
        );
        assert!(e.contains("sync.memory_budget"), "{e}");
        assert!(e.contains(&format!("`{wrong}` is not a size")), "{e}");
        assert!(e.contains("\"512 MiB\""), "{e}");
    }
    let both = format!("{BASE}\n[sync]\nhubs_per_range = 1000\nmemory_budget = \"1 GiB\"\n");
    let e = load_err(&both, &[]);
    assert!(
        e.contains("sync.memory_budget: is set with sync.hubs_per_range"),
        "{e}"
    );
}

#[test]
fn a_spill_folder_is_unset_by_default_and_taken_from_the_config_files_folder() {
    let config = load(BASE, &[]).unwrap();
    assert_eq!(config.run.spill_folder, None);
    assert_eq!(config.run.spill_folder_in(Path::new("/etc/tandem")), None);
    let config = load(
        &format!("{BASE}\n[sync]\nmemory_budget = \"1 GiB\"\nspill_folder = \"spill\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        config.run.spill_folder_in(Path::new("/etc/tandem")),
        Some(PathBuf::from("/etc/tandem/spill"))
    );
    let config = load(BASE, &[("TANDEM__SYNC__SPILL_FOLDER", "/var/tmp/tandem")]).unwrap();
    assert_eq!(
        config.run.spill_folder_in(Path::new("/etc/tandem")),
        Some(PathBuf::from("/var/tmp/tandem"))
    );
}
