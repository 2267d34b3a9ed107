//! The Tryton connector against a real `trytond` (see `testsupport`): the conformance
//! kit for customers, vendors and bank accounts, and the mapping of data made in
//! Tryton itself.

use serde_json::{Value as Json, json};
use tandem_connector::testkit::{Options, UnknownField, check_conformance};
use tandem_connector::{BuildContext, Connector, ConnectorFactory, Listing, WriteOp};
use tandem_connector_tryton::testsupport::TrytonServer;
use tandem_connector_tryton::{Client, Secret, Settings, TrytonConnector, TrytonConnectorFactory};
use tandem_model::{EntityKind, Fields, Value, field};

fn connector(server: &TrytonServer, batch: usize) -> std::sync::Arc<dyn Connector> {
    let mut settings = server.settings();
    settings["batch_size"] = json!(batch);
    TrytonConnectorFactory
        .build(
            settings,
            &BuildContext {
                base_dir: std::env::temp_dir(),
            },
        )
        .unwrap()
}

fn client(server: &TrytonServer) -> Client {
    let mut http = tandem_connector_tryton::rpc::default_http();
    http.ca_file = server.ca_file().map(ToOwned::to_owned);
    Client::with_http(
        &server.url(),
        "tandem",
        "admin",
        Secret::new(server.password.clone()).into(),
        http,
    )
    .unwrap()
}

/// A valid Belgian VAT number, different for every `n`.
pub fn be_vat(n: u32) -> String {
    let base = 4_000_000 + u64::from(n) * 13;
    format!("BE{base:08}{:02}", 97 - base % 97)
}

/// A valid Belgian IBAN (bank code 096), different for every `n`.
pub fn be_iban(n: u32) -> String {
    let account = 960_000_000_u64 + u64::from(n);
    let national = match account % 97 {
        0 => 97,
        r => r,
    };
    let bban = format!("{account:010}{national:02}");
    // Check digits: BBAN + "BE00" with letters as numbers (B = 11, E = 14), mod 97.
    let digits = format!("{bban}111400");
    let rem = digits
        .bytes()
        .fold(0u64, |acc, d| (acc * 10 + u64::from(d - b'0')) % 97);
    format!("BE{:02}{bban}", 98 - rem)
}

fn sample(kind: EntityKind, v: u32) -> Fields {
    let pick = |options: &[&str]| options[v as usize % options.len()].to_owned();
    if kind == EntityKind::BankAccount {
        // An update changes the account's own numbers only: its name (which makes a
        // bank for the account when it is created), address, communication and BIC are
        // its bank's, never written by an update, so they are the same in every variant
        // (see `a_bank_accounts_bank_is_read_and_never_written_by_an_update`).
        return Fields::new()
            .with(field::NAME, "Conformance Bank")
            .with(field::IBAN, be_iban(v))
            .with(field::BANK_ACCOUNT_NO, format!("ACC-{v:06}"));
    }
    let f = Fields::new()
        .with(field::NAME, format!("Conformance {kind} {v}"))
        .with(field::ADDRESS, format!("{v} Sample Street"))
        .with(field::ADDRESS_2, format!("Floor {v}"))
        .with(field::CITY, format!("Sample City {v}"))
        .with(field::POST_CODE, format!("{}", 1000 + v))
        .with(
            field::COUNTRY_CODE,
            pick(&["BE", "NL", "DE", "FR", "LU", "AT", "DK"]),
        )
        .with(field::PHONE, format!("+32 9 100 {v:04}"))
        .with(field::MOBILE_PHONE, format!("+32 470 20 {v:04}"))
        .with(field::FAX, format!("+32 9 300 {v:04}"))
        .with(field::EMAIL, format!("conformance{v}@example.invalid"))
        .with(field::HOME_PAGE, format!("https://example.invalid/{v}"))
        .with(field::LANGUAGE_CODE, pick(&["en", "fr", "de", "nl"]));
    f.with(field::VAT_REGISTRATION_NO, be_vat(v))
        .with(field::REGISTRATION_NO, format!("REG-{v}"))
}

/// A Skype contact mechanism, which the connector does not map, added in Tryton on the
/// party (or the bank's party) and checked after an update through the connector.
struct Skype(Client);

impl Skype {
    async fn party(&self, kind: EntityKind, id: &str) -> Result<i64, String> {
        let id: i64 = id.parse().map_err(|_| format!("id {id}"))?;
        if kind != EntityKind::BankAccount {
            return Ok(id);
        }
        let rows = self
            .0
            .model(
                "bank.account",
                "read",
                vec![json!([id]), json!(["bank.party"])],
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
        rows[0]["bank."]["party"]
            .as_i64()
            .ok_or_else(|| format!("bank account {id} has no bank party: {rows}"))
    }
}

#[async_trait::async_trait]
impl UnknownField for Skype {
    async fn inject(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        let party = self.party(kind, id).await?;
        self.0
            .model(
                "party.contact_mechanism",
                "create",
                vec![json!([{"party": party, "type": "skype", "value": format!("skype-{id}")}])],
            )
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }

    async fn verify(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        let party = self.party(kind, id).await?;
        let found = self
            .0
            .model(
                "party.contact_mechanism",
                "search_count",
                vec![json!([
                    ["party", "=", party],
                    ["type", "=", "skype"],
                    ["value", "=", format!("skype-{id}")]
                ])],
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
        if found == json!(1) {
            Ok(())
        } else {
            Err(format!("the Skype mechanism of {id} is gone ({found})"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tryton_connector_conforms() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    conforms_on(&server).await;
}

/// The whole contract through `https://`, the server's certificate from a private CA
/// named in `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tryton_connector_conforms_over_https() {
    let Some(server) = TrytonServer::start_tls() else {
        return;
    };
    assert!(server.url().starts_with("https://"));
    conforms_on(&server).await;
}

async fn conforms_on(server: &TrytonServer) {
    let connector = connector(server, 7);
    let options = Options {
        sample,
        max_batch: 7,
        unknown_field: Some(Box::new(Skype(client(server)))),
        ..Options::default()
    };
    let report = check_conformance(connector.as_ref(), &options).await;
    if !report.passed() {
        eprintln!(
            "{}",
            server
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    report.assert_passed();
    for kind in [
        EntityKind::Customer,
        EntityKind::Vendor,
        EntityKind::BankAccount,
    ] {
        for name in [
            "round_trip_create",
            "round_trip_update",
            "stale_version",
            "unknown_fields",
            "invalid_field",
            "read_ids",
            "changes",
            "cursor",
            "delete",
            "not_found",
        ] {
            assert_eq!(
                report.get(name, Some(kind)).map(|c| c.status),
                Some(tandem_connector::testkit::Status::Passed),
                "{name} [{kind}]\n{report}"
            );
        }
    }
}

async fn full(
    connector: &dyn Connector,
    kind: EntityKind,
) -> (Vec<tandem_model::Record>, tandem_connector::Cursor) {
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let page = connector.read(kind, cursor.as_ref()).await.unwrap();
        assert_eq!(page.listing, Listing::Full);
        records.extend(page.records);
        cursor = page.cursor;
        if !page.has_more {
            return (records, cursor.unwrap());
        }
    }
}

/// `read_ids` reads by id with the kind's domain, `batch_size` ids per call: parties
/// without the kind's category, deactivated parties, unknown ids and ids that are no
/// number are left out; what it returns equals the full listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ids_reads_only_records_of_the_kind() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let rpc = client(&server);
    let mut settings = server.settings();
    settings["batch_size"] = json!(2);
    let connector =
        TrytonConnector::new(serde_json::from_value::<Settings>(settings).unwrap()).unwrap();
    let category = |name: &'static str| {
        let rpc = &rpc;
        async move {
            rpc.model(
                "party.category",
                "search",
                vec![json!([["name", "=", name]]), json!(0), json!(1), Json::Null],
            )
            .await
            .unwrap()[0]
                .as_i64()
                .unwrap()
        }
    };
    let (customer, supplier) = (category("Customer").await, category("Supplier").await);
    let ids = rpc
        .model(
            "party.party",
            "create",
            vec![json!([
                {"name": "Both Ltd", "categories": [["add", [customer, supplier]]],
                 "contact_mechanisms": [["create", [{"type": "email", "value": "both@example.com"}]]]},
                {"name": "Only Customer", "categories": [["add", [customer]]]},
                {"name": "Only Supplier", "categories": [["add", [supplier]]]},
                {"name": "Nobody"},
                {"name": "Former Customer", "categories": [["add", [customer]]]},
                {"name": "Third Customer", "categories": [["add", [customer]]]}
            ])],
        )
        .await
        .unwrap();
    let id = |i: usize| ids[i].as_i64().unwrap().to_string();
    let (both, customer_only, supplier_only, nobody, former, third) =
        (id(0), id(1), id(2), id(3), id(4), id(5));
    // Deleted as the connector deletes: deactivated.
    rpc.model(
        "party.party",
        "write",
        vec![json!([ids[4]]), json!({"active": false})],
    )
    .await
    .unwrap();
    let sorted = |mut rs: Vec<tandem_model::Record>| {
        rs.sort_by(|a, b| a.id.cmp(&b.id));
        rs
    };
    for (kind, asked, want) in [
        (
            EntityKind::Customer,
            vec![
                both.as_str(),
                "not-a-number",
                supplier_only.as_str(),
                nobody.as_str(),
                former.as_str(),
                "999999",
                customer_only.as_str(),
                third.as_str(),
                both.as_str(),
            ],
            vec![&both, &customer_only, &third],
        ),
        (
            EntityKind::Vendor,
            vec![
                both.as_str(),
                customer_only.as_str(),
                supplier_only.as_str(),
                "-1",
            ],
            vec![&both, &supplier_only],
        ),
    ] {
        let (listing, _) = full(&connector, kind).await;
        let calls = connector.client().stats.calls();
        let found = sorted(connector.read_ids(kind, &asked).await.unwrap());
        let calls = connector.client().stats.calls() - calls;
        let expected = sorted(
            listing
                .into_iter()
                .filter(|r| want.contains(&&r.id))
                .collect(),
        );
        assert_eq!(expected.len(), want.len());
        assert_eq!(found, expected, "{kind}");
        // One search_read per batch of (numeric, distinct) ids, nothing else.
        let numeric = asked
            .iter()
            .filter(|i| i.parse::<i64>().is_ok_and(|n| n > 0))
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        assert!(calls <= numeric.div_ceil(2), "{kind}: {calls} calls");
    }
    assert!(
        connector
            .read_ids(EntityKind::BankAccount, &["999999", "x"])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        connector
            .read_ids(EntityKind::Contact, &[both.as_str()])
            .await
            .is_err()
    );
}

/// Data made in Tryton: one party both customer and supplier, changes made to child
/// records directly, a category removed, a party deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tryton_data_maps_and_changes_are_found() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let rpc = client(&server);
    let connector = connector(&server, 2);
    let cats = rpc
        .model(
            "party.category",
            "search_read",
            vec![json!([]), json!(0), Json::Null, Json::Null, json!(["name"])],
        )
        .await
        .unwrap();
    let cat = |name: &str| {
        cats.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (customer, supplier) = (cat("Customer"), cat("Supplier"));
    let ids = rpc
        .model(
            "party.party",
            "create",
            vec![json!([
                {"name": "Both Ltd", "categories": [["add", [customer, supplier]]],
                 "contact_mechanisms": [["create", [{"type": "email", "value": "both@example.com"},
                                                     {"type": "skype", "value": "both.sk"}]]],
                 "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(1)}]]]},
                {"name": "Only Customer", "categories": [["add", [customer]]]},
                {"name": "Only Supplier", "categories": [["add", [supplier]]]},
                {"name": "Nobody"}
            ])],
        )
        .await
        .unwrap();
    let id = |i: usize| ids[i].as_i64().unwrap();

    let (customers, c_cursor) = full(connector.as_ref(), EntityKind::Customer).await;
    let (vendors, v_cursor) = full(connector.as_ref(), EntityKind::Vendor).await;
    let names = |rs: &[tandem_model::Record]| {
        let mut n: Vec<String> = rs
            .iter()
            .map(|r| r.fields.text(field::NAME).unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&customers), ["Both Ltd", "Only Customer"]);
    assert_eq!(names(&vendors), ["Both Ltd", "Only Supplier"]);
    let both = customers
        .iter()
        .find(|r| r.id == id(0).to_string())
        .unwrap();
    assert_eq!(both.fields.text(field::EMAIL), Some("both@example.com"));
    assert_eq!(
        both.fields.text(field::VAT_REGISTRATION_NO),
        Some(be_vat(1).as_str())
    );
    assert!(both.modified_at.is_some());

    // Nothing changed: nothing returned.
    let page = connector
        .read(EntityKind::Customer, Some(&c_cursor))
        .await
        .unwrap();
    assert_eq!(page.listing, Listing::Changes);
    assert!(page.records.is_empty(), "{:?}", page.records);

    // A contact mechanism written directly (the party's write_date does not move), a
    // category removed, a party deleted, a new customer.
    let mechanism = rpc
        .model(
            "party.contact_mechanism",
            "search",
            vec![
                json!([["party", "=", id(0)], ["type", "=", "email"]]),
                json!(0),
                Json::Null,
                Json::Null,
            ],
        )
        .await
        .unwrap();
    rpc.model(
        "party.contact_mechanism",
        "write",
        vec![mechanism.clone(), json!({"value": "new@example.com"})],
    )
    .await
    .unwrap();
    rpc.model(
        "party.party",
        "write",
        vec![
            json!([id(2)]),
            json!({"categories": [["remove", [supplier]]]}),
        ],
    )
    .await
    .unwrap();
    rpc.model("party.party", "delete", vec![json!([id(1)])])
        .await
        .unwrap();
    let new = rpc
        .model(
            "party.party",
            "create",
            vec![json!([{"name": "Late Customer", "categories": [["add", [customer]]]}])],
        )
        .await
        .unwrap()[0]
        .as_i64()
        .unwrap();

    let page = connector
        .read(EntityKind::Customer, Some(&c_cursor))
        .await
        .unwrap();
    let mut seen: Vec<(String, bool)> = page
        .records
        .iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    seen.sort();
    let mut want = vec![
        (id(0).to_string(), false),
        (id(1).to_string(), true),
        (new.to_string(), false),
    ];
    want.sort();
    assert_eq!(seen, want);
    let changed = page
        .records
        .iter()
        .find(|r| r.id == id(0).to_string())
        .unwrap();
    assert_eq!(changed.fields.text(field::EMAIL), Some("new@example.com"));
    // Read again from the new cursor: the overlap window is read again, but nothing
    // comes twice.
    let again = connector
        .read(EntityKind::Customer, page.cursor.as_ref())
        .await
        .unwrap();
    assert!(again.records.is_empty(), "{:?}", again.records);

    let page = connector
        .read(EntityKind::Vendor, Some(&v_cursor))
        .await
        .unwrap();
    let mut seen: Vec<(String, bool)> = page
        .records
        .iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    seen.sort();
    let mut want = vec![(id(0).to_string(), false), (id(2).to_string(), true)];
    want.sort();
    assert_eq!(
        seen, want,
        "the supplier that lost its category is a tombstone"
    );

    // An update through the connector keeps the Skype mechanism and the other role.
    let both = connector
        .read(EntityKind::Vendor, None)
        .await
        .unwrap()
        .records;
    let both = both.iter().find(|r| r.id == id(0).to_string()).unwrap();
    let mut changes = tandem_connector::Changes::new();
    changes.insert("phone".into(), Value::text("+32 9 999 99 99"));
    changes.insert("county".into(), Value::Null);
    let out = connector
        .write(
            EntityKind::Vendor,
            vec![WriteOp::Update {
                id: both.id.clone(),
                version: both.version.clone(),
                changes,
            }],
        )
        .await
        .unwrap();
    out[0].as_ref().unwrap();
    let party = rpc
        .model(
            "party.party",
            "read",
            vec![
                json!([id(0)]),
                json!(["categories", "contact_mechanisms.type"]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(party[0]["categories"].as_array().unwrap().len(), 2);
    let types: Vec<&str> = party[0]["contact_mechanisms."]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"skype") && types.contains(&"phone"),
        "{types:?}"
    );

    // Deleting the vendor keeps the customer; Tryton's user errors are per record.
    let out = connector
        .write(
            EntityKind::Vendor,
            vec![
                WriteOp::Delete {
                    id: id(0).to_string(),
                    version: None,
                },
                WriteOp::create(
                    Fields::new()
                        .with("name", "Bad VAT")
                        .with("vat_registration_no", "BE0000000001"),
                ),
            ],
        )
        .await
        .unwrap();
    out[0].as_ref().unwrap();
    assert!(
        matches!(
            &out[1],
            Err(tandem_connector::ConnectorError::InvalidRecord { .. })
        ),
        "{:?}",
        out[1]
    );
    let customers = full(connector.as_ref(), EntityKind::Customer).await.0;
    assert!(customers.iter().any(|r| r.id == id(0).to_string()));
    assert!(
        !full(connector.as_ref(), EntityKind::Vendor)
            .await
            .0
            .iter()
            .any(|r| r.id == id(0).to_string())
    );
}

fn set(pairs: &[(&'static str, &str)]) -> tandem_connector::Changes {
    let mut changes = tandem_connector::Changes::new();
    for (name, value) in pairs {
        changes.insert(tandem_model::FieldName::new(name), Value::text(*value));
    }
    changes
}

async fn update(
    connector: &dyn Connector,
    kind: EntityKind,
    record: &tandem_model::Record,
    changes: tandem_connector::Changes,
) -> Result<tandem_connector::Written, tandem_connector::ConnectorError> {
    let op = WriteOp::Update {
        id: record.id.clone(),
        version: record.version.clone(),
        changes,
    };
    connector.write(kind, vec![op]).await.unwrap().remove(0)
}

/// A party that is both customer and vendor, updated under both roles with the versions
/// read at the start of a run (as the engine does when a contact linked to both
/// changes): the second write is no conflict, though the first changed the party. A
/// field changed in Tryton to something else than what is written still is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_roles_updated_in_one_run_are_no_conflict() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let connector = connector(&server, 10);
    let fields = Fields::new()
        .with(field::NAME, "Both Roles Ltd")
        .with(field::PHONE, "+32 9 100 0001")
        .with(field::CITY, "Ghent");
    let created = connector
        .write(EntityKind::Customer, vec![WriteOp::create(fields.clone())])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    // The supplier role: the same party gets the supplier category.
    let rpc = client(&server);
    let supplier = rpc
        .model(
            "party.category",
            "search",
            vec![
                json!([["name", "=", "Supplier"]]),
                json!(0),
                json!(1),
                Json::Null,
            ],
        )
        .await
        .unwrap();
    let party: i64 = created.id.parse().unwrap();
    rpc.model(
        "party.party",
        "write",
        vec![json!([party]), json!({"categories": [["add", supplier]]})],
    )
    .await
    .unwrap();

    // The run reads both roles first.
    let (customers, _) = full(connector.as_ref(), EntityKind::Customer).await;
    let (vendors, _) = full(connector.as_ref(), EntityKind::Vendor).await;
    let customer = customers.iter().find(|r| r.id == created.id).unwrap();
    let vendor = vendors.iter().find(|r| r.id == created.id).unwrap();

    // Then writes the same change under both roles, with those versions.
    let phone = [(field::PHONE, "+32 9 100 0002")];
    update(
        connector.as_ref(),
        EntityKind::Customer,
        customer,
        set(&phone),
    )
    .await
    .unwrap();
    let written = update(connector.as_ref(), EntityKind::Vendor, vendor, set(&phone))
        .await
        .unwrap();
    // A field the other write did not touch is no conflict either.
    update(
        connector.as_ref(),
        EntityKind::Vendor,
        vendor,
        set(&[(field::CITY, "Bruges")]),
    )
    .await
    .unwrap();
    let (vendors, _) = full(connector.as_ref(), EntityKind::Vendor).await;
    let now = vendors.iter().find(|r| r.id == created.id).unwrap();
    assert_eq!(now.fields.text(field::PHONE), Some("+32 9 100 0002"));
    assert_eq!(now.fields.text(field::CITY), Some("Bruges"));
    assert_ne!(written.version, vendor.version);

    // A real conflict: the phone changed (by the first write) to something other than
    // what a write with the old version sends.
    let e = update(
        connector.as_ref(),
        EntityKind::Vendor,
        vendor,
        set(&[(field::PHONE, "+32 9 100 0003")]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, tandem_connector::ConnectorError::Conflict { .. }),
        "{e:?}"
    );
    // And a delete with a version older than any change.
    let e = connector
        .write(
            EntityKind::Vendor,
            vec![WriteOp::Delete {
                id: vendor.id.clone(),
                version: vendor.version.clone(),
            }],
        )
        .await
        .unwrap()
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(e, tandem_connector::ConnectorError::Conflict { .. }),
        "{e:?}"
    );
    let (vendors, _) = full(connector.as_ref(), EntityKind::Vendor).await;
    let after = vendors.iter().find(|r| r.id == created.id).unwrap();
    assert_eq!(after.fields.text(field::PHONE), Some("+32 9 100 0002"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_and_never_shown() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let mut settings = server.settings();
    settings["password"] = json!("not-the-password-42");
    let connector = TrytonConnectorFactory
        .build(
            settings,
            &BuildContext {
                base_dir: std::env::temp_dir(),
            },
        )
        .unwrap();
    let e = connector.check().await.unwrap_err();
    assert!(
        matches!(e, tandem_connector::ConnectorError::Auth { .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("not-the-password-42"));
    assert!(!format!("{connector:?}").contains("not-the-password-42"));
}

/// A bank, its party and two accounts at it, made in Tryton itself.
struct Bank {
    party: i64,
    bank: i64,
    accounts: [i64; 2],
}

async fn a_bank(rpc: &Client) -> Bank {
    let create = |model: &'static str, values: Json| async move {
        rpc.model(model, "create", vec![json!([values])])
            .await
            .unwrap()[0]
            .as_i64()
            .unwrap()
    };
    let party = create(
        "party.party",
        json!({"name": "Banque de Credit, Geneve",
               "addresses": [["create", [{"street_unstructured": "Rue du Rhone 1", "city": "Geneve", "postal_code": "1204"}]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "desk@bcg.example"}]]]}),
    )
    .await;
    let bank = create("bank", json!({"party": party, "bic": "GEBABEBB"})).await;
    let mut accounts = [0; 2];
    for (i, account) in accounts.iter_mut().enumerate() {
        *account = create(
            "bank.account",
            json!({"bank": bank, "numbers": [["create", [{"type": "iban", "number": be_iban(100 + i as u32)}]]]}),
        )
        .await;
    }
    Bank {
        party,
        bank,
        accounts,
    }
}

/// Issue 15, failure 7: the bank account's name is its bank's, shared by every account
/// at that bank. An update never writes what is the bank's (a change to it is refused
/// with the reason, a value the bank holds passes); the account's own numbers are
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_accounts_bank_is_read_and_never_written_by_an_update() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let connector = connector(&server, 10);
    let rpc = client(&server);
    let bank = a_bank(&rpc).await;
    let kind = EntityKind::BankAccount;
    let bank_party = || async {
        rpc.model(
            "party.party",
            "read",
            vec![json!([bank.party]), json!(["name", "write_date"])],
        )
        .await
        .unwrap()[0]
            .clone()
    };
    let before = bank_party().await;
    let (accounts, _) = full(connector.as_ref(), kind).await;
    let first = accounts
        .iter()
        .find(|r| r.id == bank.accounts[0].to_string())
        .unwrap();
    // Read: the bank's party and BIC.
    assert_eq!(
        first.fields.text(field::NAME),
        Some("Banque de Credit, Geneve")
    );
    assert_eq!(first.fields.text(field::CITY), Some("Geneve"));
    assert_eq!(first.fields.text(field::SWIFT_CODE), Some("GEBABEBB"));

    // A card's name over the bank's: refused, naming the fields and the bank.
    for changes in [
        set(&[(field::NAME, "BCG Geneva desk")]),
        set(&[(field::CITY, "Lausanne"), (field::IBAN, &be_iban(7))]),
        set(&[(field::SWIFT_CODE, "KREDBEBB")]),
    ] {
        let e = update(connector.as_ref(), kind, first, changes)
            .await
            .unwrap_err();
        assert!(
            matches!(e, tandem_connector::ConnectorError::InvalidRecord { .. })
                && e.to_string()
                    .contains("its bank's (`Banque de Credit, Geneve`)"),
            "{e}"
        );
    }
    // The account's own numbers are written; values the bank holds pass unwritten.
    update(
        connector.as_ref(),
        kind,
        first,
        set(&[
            (field::NAME, "Banque de Credit, Geneve"),
            (field::EMAIL, "desk@bcg.example"),
            (field::IBAN, &be_iban(7)),
            (field::BANK_ACCOUNT_NO, "ACC-7"),
        ]),
    )
    .await
    .unwrap();

    assert_eq!(
        bank_party().await,
        before,
        "the bank's party was never written"
    );
    let bic = rpc
        .model("bank", "read", vec![json!([bank.bank]), json!(["bic"])])
        .await
        .unwrap();
    assert_eq!(bic[0]["bic"], "GEBABEBB");
    let (accounts, _) = full(connector.as_ref(), kind).await;
    let id = |n: usize| bank.accounts[n].to_string();
    let first = accounts.iter().find(|r| r.id == id(0)).unwrap();
    assert_eq!(first.fields.text(field::IBAN), Some(be_iban(7).as_str()));
    assert_eq!(first.fields.text(field::BANK_ACCOUNT_NO), Some("ACC-7"));
    let second = accounts.iter().find(|r| r.id == id(1)).unwrap();
    assert_eq!(
        second.fields.text(field::NAME),
        Some("Banque de Credit, Geneve")
    );
}

/// R20 against a real Tryton: a country name is written as its code, a VAT number
/// compact (what Tryton's own search finds), and both read back as no change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_country_names_and_vat_numbers_reach_tryton_normalised() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let connector = connector(&server, 10);
    let rpc = client(&server);
    let typed = Fields::new()
        .with(field::NAME, "Normalised NV")
        .with(field::COUNTRY_CODE, "Schweiz")
        .with(field::VAT_REGISTRATION_NO, "nl 0044 95445 b01");
    let created = connector
        .write(
            EntityKind::Customer,
            vec![
                WriteOp::create(typed),
                WriteOp::create(
                    Fields::new()
                        .with(field::NAME, "Lost Land Ltd")
                        .with(field::COUNTRY_CODE, "Atlantis"),
                ),
            ],
        )
        .await
        .unwrap();
    let id = created[0].as_ref().unwrap().id.clone();
    // A name no table knows is refused with the reason, never dropped.
    let e = created[1].as_ref().unwrap_err();
    assert!(
        e.to_string().contains("Tryton has no country `Atlantis`"),
        "{e}"
    );
    let found = rpc
        .model(
            "party.party",
            "search",
            vec![
                json!([["identifiers.code", "=", "NL004495445B01"]]),
                json!(0),
                Json::Null,
                Json::Null,
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        found,
        json!([id.parse::<i64>().unwrap()]),
        "found by the compact number"
    );
    let (customers, _) = full(connector.as_ref(), EntityKind::Customer).await;
    let read = customers.iter().find(|r| r.id == id).unwrap();
    assert_eq!(read.fields.text(field::COUNTRY_CODE), Some("CH"));
    assert_eq!(
        read.fields.text(field::VAT_REGISTRATION_NO),
        Some("NL004495445B01")
    );
    // "Germany" over "CH": a change, written as DE.
    update(
        connector.as_ref(),
        EntityKind::Customer,
        read,
        set(&[(field::COUNTRY_CODE, "Germany")]),
    )
    .await
    .unwrap();
    let (customers, _) = full(connector.as_ref(), EntityKind::Customer).await;
    let read = customers.iter().find(|r| r.id == id).unwrap();
    assert_eq!(read.fields.text(field::COUNTRY_CODE), Some("DE"));
}

#[test]
fn samples_are_valid() {
    assert_eq!(be_iban(0).len(), 16);
    // Known-good IBAN from Tryton's own checks.
    let digits = |s: &str| {
        let moved = format!("{}{}", &s[4..], &s[..4]);
        moved.chars().fold(0u64, |acc, c| {
            let v = c.to_digit(36).unwrap() as u64;
            if v >= 10 {
                (acc * 100 + v) % 97
            } else {
                (acc * 10 + v) % 97
            }
        })
    };
    assert_eq!(digits("BE71096123456769"), 1);
    assert_eq!(digits(&be_iban(5)), 1);
}
