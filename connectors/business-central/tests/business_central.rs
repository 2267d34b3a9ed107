//! The Business Central connector against the local API server written to Microsoft's
//! documentation (tests/servers/business-central): the conformance kit for every
//! kind, and the behaviours Business Central makes a client deal with.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as Json, json};
use tandem_connector::http::testing::{Fault, FaultProxy};
use tandem_connector::testkit::{Options as KitOptions, UnknownField, check_conformance};
use tandem_connector::{
    BuildContext, Connector, ConnectorError, ConnectorFactory, Listing, WriteOp,
};
use tandem_connector_business_central::BusinessCentralConnectorFactory;
use tandem_fake_business_central::{BcServer, Budget, Options};
use tandem_model::{EntityKind, Fields, Value, field};

fn build(settings: Json) -> Result<Arc<dyn Connector>, ConnectorError> {
    BusinessCentralConnectorFactory.build(
        settings,
        &BuildContext {
            base_dir: std::env::temp_dir(),
        },
    )
}

fn connector(server: &BcServer, extra: Json) -> Arc<dyn Connector> {
    let mut settings = server.oauth_settings();
    // Quick retries: the tests meet 429s on purpose.
    settings["retry"] = json!({"attempts": 8, "min_delay": "50ms", "max_delay": "1s"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        settings[k] = v;
    }
    build(settings).unwrap()
}

fn sample(kind: EntityKind, v: u32) -> Fields {
    let pick = |options: &[&str]| options[v as usize % options.len()].to_owned();
    let mut f = Fields::new().with(field::NAME, format!("Conformance {kind} {v}"));
    if kind == EntityKind::BankAccount {
        // The kit's `unknown_fields` check writes "updated <id>" (44 characters) into
        // the first field: IBAN takes 50, account number (30) and currency (10) would
        // be refused, as Business Central does; `on_premises_…` reads those two.
        return f.with(field::IBAN, format!("BE68539007{v:06}"));
    }
    f = f
        .with(field::ADDRESS, format!("{v} Sample Street"))
        .with(field::ADDRESS_2, format!("Floor {v}"))
        .with(field::CITY, format!("Sample City {v}"))
        .with(field::COUNTY, format!("County {v}"))
        .with(field::POST_CODE, format!("{}", 1000 + v))
        .with(field::COUNTRY_CODE, pick(&["BE", "NL", "DE", "FR"]))
        .with(field::PHONE, format!("+32 9 100 {v:04}"))
        .with(field::EMAIL, format!("conformance{v}@example.invalid"))
        .with(field::HOME_PAGE, format!("https://example.invalid/{v}"))
        .with(
            field::VAT_REGISTRATION_NO,
            format!("BE0{}", 400_000_000 + v),
        );
    match kind {
        EntityKind::Contact => f
            .with(field::CONTACT_TYPE, pick(&["company", "person"]))
            .with(field::MOBILE_PHONE, format!("+32 470 20 {v:04}"))
            .with(field::JOB_TITLE, format!("Title {v}")),
        EntityKind::Customer => f
            .with(field::CURRENCY_CODE, pick(&["EUR", "USD", "GBP"]))
            .with(field::SALESPERSON_CODE, format!("SP{v}"))
            .with(
                "x_payment_terms_id",
                format!("00000000-0000-0000-0000-{:012}", v + 1),
            ),
        _ => f
            .with(field::CURRENCY_CODE, pick(&["EUR", "USD", "GBP"]))
            .with(
                "x_payment_terms_id",
                format!("00000000-0000-0000-0000-{:012}", v + 1),
            ),
    }
}

/// A property the connector does not map, set in Business Central and checked after an
/// update through the connector.
struct Unmapped(Arc<BcServer>);

fn unmapped(kind: EntityKind) -> (&'static str, &'static str, Json) {
    match kind {
        EntityKind::Customer => ("customers", "creditLimit", json!(12500)),
        EntityKind::Vendor => ("vendors", "irs1099Code", json!("MISC-07")),
        EntityKind::Contact => ("contacts", "privacyBlocked", json!(true)),
        EntityKind::BankAccount => ("bankAccounts", "intercompanyEnabled", json!(true)),
    }
}

#[async_trait::async_trait]
impl UnknownField for Unmapped {
    async fn inject(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        let (set, prop, value) = unmapped(kind);
        self.0.edit(set, id, json!({ prop: value }));
        Ok(())
    }

    async fn verify(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        let (set, prop, value) = unmapped(kind);
        let entity = self.0.get(set, id).ok_or("the record is gone")?;
        if entity[prop] == value {
            Ok(())
        } else {
            Err(format!("{prop} is {} instead of {value}", entity[prop]))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_business_central_connector_conforms() {
    // Token renewal has a test of its own (`tokens_are_renewed_…`).
    let server = Arc::new(BcServer::start(Options::default()));
    // Pages of 7 exercise the server's next links; no limit of Tandem's own, so that
    // the kit's few hundred requests take no 20 s.
    let c = connector(
        &server,
        json!({"page_size": 7, "max_requests_per_second": 1000}),
    );
    let options = KitOptions {
        sample,
        max_batch: 20,
        unknown_field: Some(Box::new(Unmapped(server.clone()))),
        ..KitOptions::default()
    };
    let report = check_conformance(c.as_ref(), &options).await;
    println!("{report}");
    report.assert_passed();
    for kind in EntityKind::ALL {
        assert_eq!(
            report.get("paging", Some(kind)).map(|c| c.status),
            Some(tandem_connector::testkit::Status::Passed),
            "{kind}"
        );
    }
    let stats = server.stats();
    assert!(stats.batches > 0, "{stats:?}");
    assert_eq!(stats.throttled, 0, "{stats:?}");
}

async fn full(
    c: &dyn Connector,
    kind: EntityKind,
) -> (Vec<tandem_model::Record>, tandem_connector::Cursor) {
    let page = c.read(kind, None).await.unwrap();
    assert_eq!(page.listing, Listing::Full);
    assert!(!page.has_more);
    (page.records, page.cursor.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_come_once_with_the_overlap_and_deletes_from_the_id_listing() {
    let server = BcServer::start(Options::default());
    let c = connector(&server, json!({"page_size": 2}));
    let a = server.insert("customers", json!({"displayName": "Acme NV"}));
    let b = server.insert("customers", json!({"displayName": "Beta BV"}));
    let gone = server.insert("customers", json!({"displayName": "Gone Ltd"}));
    let (records, cursor) = full(c.as_ref(), EntityKind::Customer).await;
    assert_eq!(records.len(), 3);

    // Nothing changed: the overlap reads the three again, and none is returned twice.
    let page = c.read(EntityKind::Customer, Some(&cursor)).await.unwrap();
    assert_eq!(page.listing, Listing::Changes);
    assert!(page.records.is_empty(), "{:?}", page.records);

    server.edit("customers", &b, json!({"phoneNumber": "+32 9 222 22 22"}));
    server.remove("customers", &gone);
    let c_id = server.insert("customers", json!({"displayName": "Gamma SA"}));
    let page = c
        .read(EntityKind::Customer, page.cursor.as_ref())
        .await
        .unwrap();
    let mut seen: Vec<(String, bool)> = page
        .records
        .iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    seen.sort();
    let mut want = vec![(b.clone(), false), (gone, true), (c_id, false)];
    want.sort();
    assert_eq!(seen, want);
    let beta = page.records.iter().find(|r| r.id == b).unwrap();
    assert_eq!(beta.fields.text(field::PHONE), Some("+32 9 222 22 22"));
    assert!(!page.records.iter().any(|r| r.id == a));

    let page = c
        .read(EntityKind::Customer, page.cursor.as_ref())
        .await
        .unwrap();
    assert!(page.records.is_empty(), "{:?}", page.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_etag_is_a_conflict_and_writes_nothing() {
    let server = BcServer::start(Options::default());
    let c = connector(&server, json!({}));
    let id = server.insert("vendors", json!({"displayName": "Nordwind GmbH"}));
    let (records, _) = full(c.as_ref(), EntityKind::Vendor).await;
    let version = records[0].version.clone();
    server.edit_before_next_write("vendors", &id, json!({"email": "office@nordwind.example"}));
    let changes = [(field::PHONE.into(), Value::text("+49 40 123"))]
        .into_iter()
        .collect();
    let out = c
        .write(
            EntityKind::Vendor,
            vec![WriteOp::Update {
                id: id.clone(),
                version,
                changes,
            }],
        )
        .await
        .unwrap();
    assert_eq!(out[0], Err(ConnectorError::Conflict { id: id.clone() }));
    let entity = server.get("vendors", &id).unwrap();
    assert_eq!(entity["phoneNumber"], "");
    assert_eq!(entity["email"], "office@nordwind.example");
    assert_eq!(server.stats().conflicts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_budget_are_answered_429_and_retried() {
    let server = BcServer::start(Options {
        budget: Some(Budget {
            requests: 3,
            window: Duration::from_millis(400),
        }),
        ..Options::default()
    });
    let c = connector(&server, json!({"page_size": 2}));
    for n in 0..9 {
        server.insert("customers", json!({"displayName": format!("Customer {n}")}));
    }
    let (records, _) = full(c.as_ref(), EntityKind::Customer).await;
    assert_eq!(records.len(), 9);
    let ops = (0..5)
        .map(|n| WriteOp::create(Fields::new().with(field::NAME, format!("New {n}"))))
        .collect();
    let out = c.write(EntityKind::Customer, ops).await.unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(server.list("customers").len(), 14);
    assert!(server.stats().throttled > 0, "{:?}", server.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_when_they_expire_or_are_refused() {
    let server = BcServer::start(Options {
        token_lifetime: Duration::from_secs(1),
        ..Options::default()
    });
    let c = connector(&server, json!({}));
    server.insert("customers", json!({"displayName": "Acme NV"}));
    full(c.as_ref(), EntityKind::Customer).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    full(c.as_ref(), EntityKind::Customer).await;
    assert_eq!(server.stats().tokens_issued, 2);
    server.revoke_tokens();
    full(c.as_ref(), EntityKind::Customer).await;
    let stats = server.stats();
    assert_eq!(stats.tokens_issued, 3, "{stats:?}");
    assert_eq!(stats.expired_tokens, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_an_auth_error_that_never_shows_it() {
    let server = BcServer::start(Options::default());
    let secret = "not-the-secret-7Qx~";
    let c = connector(&server, json!({"client_secret": secret}));
    let e = c.check().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("client_secret"), "{text}");
    assert!(!text.contains(secret), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_premises_servers_take_basic_auth_with_an_access_key() {
    let key = "WebServiceAccessKey+42/abc";
    let server = BcServer::start(Options {
        basic: Some(("TANDEM".into(), key.into())),
        ..Options::default()
    });
    server.insert(
        "bankAccounts",
        json!({"displayName": "Giro", "iban": "BE71096123456769",
               "bankAccountNumber": "096-1234567-69", "currencyCode": "EUR"}),
    );
    let settings = json!({"url": server.api_url(), "company": "CRONUS Test",
                          "username": "TANDEM", "access_key": key});
    let c = build(settings.clone()).unwrap();
    c.check().await.unwrap();
    let (records, _) = full(c.as_ref(), EntityKind::BankAccount).await;
    let f = &records[0].fields;
    assert_eq!(f.text(field::IBAN), Some("BE71096123456769"));
    assert_eq!(f.text(field::BANK_ACCOUNT_NO), Some("096-1234567-69"));
    assert_eq!(f.text(field::CURRENCY_CODE), Some("EUR"));
    assert_eq!(server.stats().tokens_issued, 0);

    let mut wrong = settings;
    wrong["access_key"] = json!("wrong-key-9");
    let e = build(wrong).unwrap().check().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-key-9"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_reply_was_lost_makes_no_second_record() {
    let server = BcServer::start(Options::default());
    let port: u16 = server
        .host_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(port);
    let proxied = proxy.url().trim_end_matches('/').to_owned();
    let c = connector(&server, json!({"api_host": proxied, "login_host": proxied}));
    c.check().await.unwrap();
    proxy.inject("$batch", Fault::DropAfterForward, 1);
    let ops = (0..3)
        .map(|n| WriteOp::create(Fields::new().with(field::NAME, format!("Once {n}"))))
        .collect();
    let out = c.write(EntityKind::Customer, ops).await.unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(proxy.injected().len(), 1);
    assert_eq!(server.list("customers").len(), 3, "one record per create");
    assert_eq!(server.stats().batches, 2, "the batch was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_name_their_company_by_id_and_a_batch_holds_at_most_100() {
    let server = BcServer::start(Options::default());
    let c = connector(&server, json!({}));
    let company = server.insert(
        "contacts",
        json!({"type": "Company", "displayName": "Acme NV"}),
    );
    let ops: Vec<WriteOp> = (0..100)
        .map(|n| {
            WriteOp::create(
                Fields::new()
                    .with(field::CONTACT_TYPE, "person")
                    .with(field::NAME, format!("Person {n}"))
                    .with(field::COMPANY_ID, company.as_str()),
            )
        })
        .collect();
    let batches = server.stats().batches;
    let out = c.write(EntityKind::Contact, ops).await.unwrap();
    assert!(
        out.iter().all(Result::is_ok),
        "{:?}",
        out.iter().find(|o| o.is_err())
    );
    assert_eq!(server.stats().batches, batches + 1);
    let person = server
        .get("contacts", &out[0].as_ref().unwrap().id)
        .unwrap();
    assert_eq!(person["companyName"], "Acme NV");
    // A fresh connector learns the number from the server.
    let fresh = connector(&server, json!({}));
    let records = fresh
        .read_ids(EntityKind::Contact, &[out[5].as_ref().unwrap().id.as_str()])
        .await
        .unwrap();
    assert_eq!(
        records[0].fields.text(field::COMPANY_ID),
        Some(company.as_str())
    );
    assert_eq!(records[0].fields.text(field::CONTACT_TYPE), Some("person"));
}
