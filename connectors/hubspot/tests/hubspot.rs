//! The HubSpot connector against the local CRM server written to HubSpot's developer
//! documentation (tests/servers/hubspot): the conformance kit, and the behaviours
//! HubSpot makes a client deal with.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as Json, json};
use tandem_connector::testkit::{Options as KitOptions, UnknownField, check_conformance};
use tandem_connector::{
    BuildContext, Connector, ConnectorError, ConnectorFactory, Listing, WriteOp,
};
use tandem_connector_hubspot::HubSpotConnectorFactory;
use tandem_fake_hubspot::{Budget, HubSpotServer, Options};
use tandem_model::{EntityKind, Fields, Value, field};

fn connector(server: &HubSpotServer, extra: Json) -> Arc<dyn Connector> {
    let mut settings = json!({"token": server.token(), "url": server.url(),
        "retry": {"attempts": 8, "min_delay": "50ms", "max_delay": "1s"}});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        settings[k] = v;
    }
    HubSpotConnectorFactory
        .build(
            settings,
            &BuildContext {
                base_dir: std::env::temp_dir(),
            },
        )
        .unwrap()
}

/// Companies: a person's variant would need a company to belong to (see
/// `persons_carry_their_company`).
fn sample(_kind: EntityKind, v: u32) -> Fields {
    let pick = |options: &[&str]| options[v as usize % options.len()].to_owned();
    Fields::new()
        .with(field::CONTACT_TYPE, "company")
        .with(field::NAME, format!("Conformance Company {v}"))
        .with(field::ADDRESS, format!("{v} Sample Street"))
        .with(field::ADDRESS_2, format!("Floor {v}"))
        .with(field::CITY, format!("Sample City {v}"))
        .with(field::COUNTY, format!("County {v}"))
        .with(field::POST_CODE, format!("{}", 1000 + v))
        .with(field::COUNTRY_CODE, pick(&["BE", "NL", "DE", "FR"]))
        .with(field::PHONE, format!("+32 9 100 {v:04}"))
        .with(field::HOME_PAGE, format!("https://example.invalid/{v}"))
        .with("x_industry", format!("Industry {v}"))
        .with(
            field::BUSINESS_RELATIONS,
            Value::list(if v.is_multiple_of(2) {
                vec!["CUST".into()]
            } else {
                vec!["CUST".into(), "VEND".into()]
            }),
        )
}

/// `description`, which the connector does not map, set in HubSpot and checked after an
/// update through the connector.
struct Description(Arc<HubSpotServer>);

#[async_trait::async_trait]
impl UnknownField for Description {
    async fn inject(&self, _kind: EntityKind, id: &str) -> Result<(), String> {
        let n = id.strip_prefix("company-").ok_or("not a company")?;
        self.0
            .edit("companies", n, json!({"description": "kept by Tandem"}));
        Ok(())
    }

    async fn verify(&self, _kind: EntityKind, id: &str) -> Result<(), String> {
        let n = id.strip_prefix("company-").ok_or("not a company")?;
        let props = self.0.get("companies", n).ok_or("gone")?;
        match props.get("description").map(String::as_str) {
            Some("kept by Tandem") => Ok(()),
            other => Err(format!("description is {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubspot_connector_conforms() {
    conforms(json!({})).await;
}

/// Creates through `batch/upsert` on a unique key property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubspot_connector_conforms_with_upserts() {
    conforms(json!({"create_key_property": tandem_fake_hubspot::UNIQUE_KEY_PROPERTY})).await;
}

async fn conforms(extra: Json) {
    let server = Arc::new(HubSpotServer::start(Options::default()));
    let mut settings = json!({"max_requests_per_second": 200});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        settings[k] = v;
    }
    let c = connector(&server, settings);
    let options = KitOptions {
        sample,
        max_batch: 30,
        unknown_field: Some(Box::new(Description(server.clone()))),
        ..KitOptions::default()
    };
    let report = check_conformance(c.as_ref(), &options).await;
    println!("{report}");
    report.assert_passed();
    assert!(server.stats().searches > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persons_carry_their_company_and_changes_come_once() {
    let server = HubSpotServer::start(Options::default());
    let c = connector(&server, json!({}));
    let acme = server.insert("companies", json!({"name": "Acme NV"}), &[]);
    let beta = server.insert("companies", json!({"name": "Beta BV"}), &[]);
    let ann = server.insert(
        "contacts",
        json!({"firstname": "Ann", "lastname": "Peeters"}),
        &[&acme],
    );
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(page.listing, Listing::Full);
    let person = page
        .records
        .iter()
        .find(|r| r.id == format!("contact-{ann}"))
        .unwrap();
    assert_eq!(
        person.fields.text(field::COMPANY_ID),
        Some(format!("company-{acme}").as_str())
    );
    assert_eq!(person.fields.text(field::NAME), Some("Ann Peeters"));

    // Unchanged: the overlap returns nothing twice.
    let again = c
        .read(EntityKind::Contact, page.cursor.as_ref())
        .await
        .unwrap();
    assert!(again.records.is_empty(), "{:?}", again.records);

    // A person created with a company, another moved to Beta, a company archived.
    let out = c
        .write(
            EntityKind::Contact,
            vec![
                WriteOp::create(
                    Fields::new()
                        .with(field::CONTACT_TYPE, "person")
                        .with(field::NAME, "Jan Janssens")
                        .with(field::EMAIL, "jan@beta.example")
                        .with(field::COMPANY_ID, format!("company-{beta}")),
                ),
                WriteOp::Update {
                    id: format!("contact-{ann}"),
                    version: person.version.clone(),
                    changes: [(
                        field::COMPANY_ID.into(),
                        Value::text(format!("company-{beta}")),
                    )]
                    .into_iter()
                    .collect(),
                },
            ],
        )
        .await
        .unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let jan = out[0]
        .as_ref()
        .unwrap()
        .id
        .strip_prefix("contact-")
        .unwrap()
        .to_owned();
    assert_eq!(
        server.get("contacts", &jan).unwrap()["lastname"],
        "Janssens"
    );
    assert_eq!(server.companies_of(&jan), vec![beta.clone()]);
    assert_eq!(server.companies_of(&ann), vec![beta.clone()]);
    server.archive("companies", &acme);
    let changes = c
        .read(EntityKind::Contact, again.cursor.as_ref())
        .await
        .unwrap();
    let ids: Vec<(String, bool)> = changes
        .records
        .iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    assert!(ids.contains(&(format!("company-{acme}"), true)), "{ids:?}");
    assert!(ids.contains(&(format!("contact-{jan}"), false)), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_since_the_read_is_a_conflict_and_429s_are_waited_out() {
    let server = HubSpotServer::start(Options {
        budget: Some(Budget {
            requests: 3,
            window: Duration::from_millis(300),
        }),
        ..Options::default()
    });
    let c = connector(&server, json!({}));
    let id = server.insert(
        "companies",
        json!({"name": "Acme NV", "phone": "+32 9 100 00 01"}),
        &[],
    );
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    let version = page.records[0].version.clone();
    std::thread::sleep(Duration::from_millis(5));
    server.edit("companies", &id, json!({"city": "Gent"}));
    let out = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Update {
                id: format!("company-{id}"),
                version,
                changes: [(field::PHONE.into(), Value::text("+32 9 999"))]
                    .into_iter()
                    .collect(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Err(ConnectorError::Conflict {
            id: format!("company-{id}")
        })
    );
    assert_eq!(
        server.get("companies", &id).unwrap()["phone"],
        "+32 9 100 00 01"
    );
    // Past the budget (3 requests per 300 ms): answered 429, waited out.
    for _ in 0..3 {
        let page = c.read(EntityKind::Contact, None).await.unwrap();
        assert_eq!(page.records.len(), 1);
    }
    assert!(server.stats().throttled > 0, "{:?}", server.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_an_auth_error_that_never_shows_it() {
    let server = HubSpotServer::start(Options::default());
    let token = "pat-na1-wrong-0000";
    let c = connector(&server, json!({"token": token}));
    let e = c.check().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("`token`"), "{e}");
    assert!(!e.to_string().contains(token), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_unique_key_property_a_create_sent_twice_makes_one_record() {
    use tandem_connector::http::testing::{Fault, FaultProxy};
    let server = HubSpotServer::start(Options::default());
    let acme = server.insert("companies", json!({"name": "Acme NV"}), &[]);
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(port);
    let c = connector(
        &server,
        json!({"url": proxy.url().trim_end_matches('/'),
               "create_key_property": tandem_fake_hubspot::UNIQUE_KEY_PROPERTY}),
    );
    // The first upsert reaches HubSpot, its reply is lost; the batch is sent again.
    proxy.inject("batch/upsert", Fault::DropAfterForward, 1);
    let out = c
        .write(
            EntityKind::Contact,
            vec![
                WriteOp::create(
                    Fields::new()
                        .with(field::CONTACT_TYPE, "company")
                        .with(field::NAME, "Newco Ltd"),
                ),
                WriteOp::create(
                    Fields::new()
                        .with(field::CONTACT_TYPE, "person")
                        .with(field::NAME, "Ann Peeters")
                        .with(field::COMPANY_ID, format!("company-{acme}")),
                ),
            ],
        )
        .await
        .unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(proxy.injected().len(), 1, "a reply was lost");
    assert_eq!(server.ids("companies").len(), 2, "Acme and one Newco");
    assert_eq!(server.ids("contacts").len(), 1);
    let ann = out[1]
        .as_ref()
        .unwrap()
        .id
        .strip_prefix("contact-")
        .unwrap()
        .to_owned();
    assert_eq!(server.companies_of(&ann), vec![acme]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_keep_to_their_own_limit_of_four_a_second() {
    let server = HubSpotServer::start(Options {
        search_budget: Some(Budget {
            requests: 4,
            window: Duration::from_secs(1),
        }),
        ..Options::default()
    });
    let c = connector(&server, json!({"max_requests_per_second": 100}));
    let cursor = c.read(EntityKind::Contact, None).await.unwrap().cursor;
    for n in 0..450 {
        server.insert("companies", json!({"name": format!("Company {n}")}), &[]);
    }
    // 5 pages of companies and 1 of contacts: 6 searches, more than 4 in a second.
    let page = c.read(EntityKind::Contact, cursor.as_ref()).await.unwrap();
    assert_eq!(page.records.len(), 450);
    let stats = server.stats();
    assert_eq!(stats.searches, 6, "{stats:?}");
    assert_eq!(stats.throttled, 0, "{stats:?}");
}

/// A search reaches a capped number of results (10,000 at HubSpot; 300 here): a longer
/// one starts again from the last modification date read, and returns no record twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_past_the_result_cap_goes_on_from_the_last_date() {
    let server = HubSpotServer::start(Options {
        search_cap: 300,
        ..Options::default()
    });
    let c = connector(
        &server,
        json!({"search_cap": 300, "max_requests_per_second": 100}),
    );
    let cursor = c.read(EntityKind::Contact, None).await.unwrap().cursor;
    let mut ids = Vec::new();
    for n in 0..650 {
        ids.push(server.insert("companies", json!({"name": format!("Company {n}")}), &[]));
        if n % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let page = c.read(EntityKind::Contact, cursor.as_ref()).await.unwrap();
    let mut got: Vec<String> = page
        .records
        .iter()
        .map(|r| r.id.strip_prefix("company-").unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), 650, "no record twice, none missing");
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert!(server.stats().searches > 7, "{:?}", server.stats());
}
