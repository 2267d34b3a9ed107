//! The LDAP connector against a real OpenLDAP slapd (see `testsupport`): the
//! conformance kit with content synchronisation, deletes as tombstones, paged listings
//! without syncprov, conflicts, StartTLS and LDAPS, and authentication errors.

use std::collections::HashSet;
use std::sync::Arc;

use ldap3::{Mod, Scope, SearchEntry};
use serde_json::json;
use tandem_connector::testkit::{Options, UnknownField, check_conformance, sample_fields};
use tandem_connector::{
    BuildContext, Connector, ConnectorError, ConnectorFactory, Listing, Page, WriteOp,
};
use tandem_connector_ldap::testsupport::{self, BASE_DN, Slapd};
use tandem_connector_ldap::{LdapConnector, LdapConnectorFactory};
use tandem_model::{EntityKind, Fields, Value, field};

/// The attributes of the fields the default mapping leaves out, for the kit.
fn kit_settings(server: &Slapd) -> serde_json::Value {
    let mut settings = server.settings();
    settings["attributes"] = json!({
        "name_2": "displayName",
        "company_id": "departmentNumber",
        "x_conformance_note": "description",
        "x_conformance_rating": "employeeNumber",
        "x_conformance_since": "employeeType",
    });
    settings["page_size"] = json!(4);
    settings
}

const KIT_FIELDS: &[&str] = &[
    field::NAME,
    field::NAME_2,
    field::ADDRESS,
    field::CITY,
    field::POST_CODE,
    field::COUNTY,
    field::COUNTRY_CODE,
    field::PHONE,
    field::MOBILE_PHONE,
    field::FAX,
    field::EMAIL,
    field::HOME_PAGE,
    field::LANGUAGE_CODE,
    field::COMPANY_ID,
    field::FIRST_NAME,
    field::SURNAME,
    field::JOB_TITLE,
    field::BUSINESS_RELATIONS,
    "x_conformance_note",
    "x_conformance_rating",
    "x_conformance_since",
];

/// The kit's sample restricted to the mapped fields, all of one contact type.
fn sample_of(kind: EntityKind, variant: u32, contact_type: &str) -> Fields {
    let all = sample_fields(kind, variant);
    let mut fields = Fields::new();
    for (name, value) in all.iter() {
        if KIT_FIELDS.contains(&name.as_str()) {
            fields.set(name.as_str(), value.clone());
        }
    }
    fields.set(field::CONTACT_TYPE, Value::text(contact_type));
    fields
}

fn persons(kind: EntityKind, variant: u32) -> Fields {
    sample_of(kind, variant, "person")
}

fn companies(kind: EntityKind, variant: u32) -> Fields {
    let mut fields = sample_of(kind, variant, "company");
    fields.remove(field::COMPANY_ID);
    fields
}

fn build(settings: serde_json::Value) -> Arc<dyn Connector> {
    LdapConnectorFactory
        .build(
            settings,
            &BuildContext {
                base_dir: std::env::temp_dir(),
            },
        )
        .unwrap()
}

/// An attribute Tandem does not map (`roomNumber`), set by another application.
struct RoomNumber {
    url: String,
}

impl RoomNumber {
    async fn admin(&self) -> ldap3::Ldap {
        let (conn, mut ldap) = ldap3::LdapConnAsync::new(&self.url).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(testsupport::ADMIN_DN, testsupport::ADMIN_PASSWORD)
            .await
            .unwrap()
            .success()
            .unwrap();
        ldap
    }

    async fn entry(&self, id: &str) -> Result<SearchEntry, String> {
        let mut ldap = self.admin().await;
        let (entries, _) = ldap
            .search(
                BASE_DN,
                Scope::Subtree,
                &format!("(entryUUID={id})"),
                vec!["roomNumber"],
            )
            .await
            .map_err(|e| e.to_string())?
            .success()
            .map_err(|e| e.to_string())?;
        entries
            .into_iter()
            .next()
            .map(SearchEntry::construct)
            .ok_or_else(|| format!("no entry {id}"))
    }
}

#[async_trait::async_trait]
impl UnknownField for RoomNumber {
    async fn inject(&self, _: EntityKind, id: &str) -> Result<(), String> {
        let dn = self.entry(id).await?.dn;
        let mut ldap = self.admin().await;
        ldap.modify(&dn, vec![Mod::Add("roomNumber", HashSet::from(["B-204"]))])
            .await
            .map_err(|e| e.to_string())?
            .success()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn verify(&self, _: EntityKind, id: &str) -> Result<(), String> {
        let entry = self.entry(id).await?;
        match entry.attrs.get("roomNumber") {
            Some(v) if v == &vec!["B-204".to_owned()] => Ok(()),
            other => Err(format!("roomNumber is {other:?}")),
        }
    }
}

async fn conformance_on(server: &Slapd, settings: serde_json::Value) {
    let connector = build(settings);
    for sample in [persons as fn(EntityKind, u32) -> Fields, companies] {
        let options = Options {
            max_batch: 10,
            sample,
            unknown_field: Some(Box::new(RoomNumber { url: server.url() })),
            ..Options::default()
        };
        let report = check_conformance(connector.as_ref(), &options).await;
        if !report.passed() {
            eprintln!("{}", server.log());
        }
        eprintln!("{report}");
        report.assert_passed();
    }
}

/// The whole contract against slapd with syncprov: persons and companies.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_with_content_synchronisation() {
    let Some(server) = Slapd::start() else {
        return;
    };
    conformance_on(&server, kit_settings(&server)).await;
}

/// The whole contract against slapd without syncprov: full listings in pages.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_with_paged_listings() {
    let Some(server) = Slapd::start_with(testsupport::Options {
        syncprov: false,
        ..Default::default()
    }) else {
        return;
    };
    let mut settings = kit_settings(&server);
    settings["sync"] = json!("paged");
    conformance_on(&server, settings).await;
}

async fn read_all(c: &dyn Connector, cursor: Option<&tandem_connector::Cursor>) -> Page {
    c.read(EntityKind::Contact, cursor).await.unwrap()
}

fn person(name: &str) -> Fields {
    let mut f = Fields::new();
    f.set(field::CONTACT_TYPE, Value::text("person"));
    f.set(field::NAME, Value::text(name));
    f.set(
        field::SURNAME,
        Value::text(name.rsplit(' ').next().unwrap()),
    );
    f.set(
        field::EMAIL,
        Value::text(format!("{}@example.org", name.replace(' ', "."))),
    );
    f
}

async fn create(c: &dyn Connector, fields: Fields) -> (String, Option<String>) {
    let w = c
        .write(EntityKind::Contact, vec![WriteOp::create(fields)])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    (w.id, w.version)
}

async fn dn_of(server: &Slapd, uuid: &str) -> String {
    let mut ldap = server.admin().await;
    let (entries, _) = ldap
        .search(
            BASE_DN,
            Scope::Subtree,
            &format!("(entryUUID={uuid})"),
            vec!["1.1"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    SearchEntry::construct(entries.into_iter().next().expect("the entry")).dn
}

/// Deletes made by others arrive as tombstones through the RFC 4533 cookie, changes as
/// records, and a read from the last cookie brings nothing.
#[tokio::test(flavor = "multi_thread")]
async fn deletes_arrive_as_tombstones_by_content_synchronisation() {
    let Some(server) = Slapd::start() else {
        return;
    };
    let c = LdapConnector::from_settings(server.settings()).unwrap();
    let (ada, _) = create(&c, person("Ada Lovelace")).await;
    let (bob, _) = create(&c, person("Bob Builder")).await;
    let (cyd, _) = create(&c, person("Cyd Charisse")).await;
    let first = read_all(&c, None).await;
    assert_eq!(first.listing, Listing::Full);
    assert_eq!(c.synchronises(), Some(true));
    let ids: HashSet<&str> = first.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        HashSet::from([ada.as_str(), bob.as_str(), cyd.as_str()])
    );

    // Behind the connector's back: delete Bob, change Cyd's phone.
    let mut admin = server.admin().await;
    admin
        .delete(&dn_of(&server, &bob).await)
        .await
        .unwrap()
        .success()
        .unwrap();
    admin
        .modify(
            &dn_of(&server, &cyd).await,
            vec![Mod::Replace(
                "telephoneNumber",
                HashSet::from(["+32 9 555 0101"]),
            )],
        )
        .await
        .unwrap()
        .success()
        .unwrap();

    let changes = read_all(&c, first.cursor.as_ref()).await;
    assert_eq!(changes.listing, Listing::Changes);
    let tombstones: Vec<&str> = changes
        .records
        .iter()
        .filter(|r| r.deleted)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(tombstones, vec![bob.as_str()]);
    let changed: Vec<_> = changes.records.iter().filter(|r| !r.deleted).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].id, cyd);
    assert_eq!(
        changed[0].fields.get(field::PHONE),
        Some(&Value::text("+32 9 555 0101"))
    );

    let quiet = read_all(&c, changes.cursor.as_ref()).await;
    assert_eq!(quiet.listing, Listing::Changes);
    assert!(quiet.records.is_empty(), "{:?}", quiet.records);
}

/// Without syncprov, `auto` lists the directory whole with paged results (RFC 2696)
/// on every read, pages smaller than the directory.
#[tokio::test(flavor = "multi_thread")]
async fn paged_listing_without_syncprov() {
    let Some(server) = Slapd::start_with(testsupport::Options {
        syncprov: false,
        ..Default::default()
    }) else {
        return;
    };
    let mut settings = server.settings();
    settings["page_size"] = json!(3);
    let c = LdapConnector::from_settings(settings).unwrap();
    let mut created = HashSet::new();
    for i in 0..8 {
        created.insert(create(&c, person(&format!("Person {i}"))).await.0);
    }
    let page = read_all(&c, None).await;
    assert_eq!(c.synchronises(), Some(false));
    assert_eq!(page.listing, Listing::Full);
    assert!(!page.has_more);
    let ids: HashSet<String> = page.records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, created);
    // The next read is a full listing again, without the deleted entry.
    let gone = created.iter().next().unwrap().clone();
    let w = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Delete {
                id: gone.clone(),
                version: None,
            }],
        )
        .await
        .unwrap();
    assert!(w[0].is_ok());
    let again = read_all(&c, page.cursor.as_ref()).await;
    assert_eq!(again.listing, Listing::Full);
    assert_eq!(again.records.len(), 7);
    assert!(again.records.iter().all(|r| r.id != gone));
}

/// A modify carries an assertion on entryCSN: an entry changed by someone else since
/// it was read is a conflict, and the write changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_entry_is_a_conflict() {
    let Some(server) = Slapd::start() else {
        return;
    };
    let c = LdapConnector::from_settings(server.settings()).unwrap();
    let (id, version) = create(&c, person("Dora Explorer")).await;
    let version = version.expect("entryCSN as the version");
    let mut admin = server.admin().await;
    admin
        .modify(
            &dn_of(&server, &id).await,
            vec![Mod::Replace("title", HashSet::from(["Captain"]))],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let mut changes = tandem_connector::Changes::new();
    changes.insert(field::JOB_TITLE.into(), Value::text("Engineer"));
    let outcome = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Update {
                id: id.clone(),
                version: Some(version.clone()),
                changes: changes.clone(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcome[0], Err(ConnectorError::Conflict { id: id.clone() }));
    let now = c.read_ids(EntityKind::Contact, &[&id]).await.unwrap();
    assert_eq!(
        now[0].fields.get(field::JOB_TITLE),
        Some(&Value::text("Captain"))
    );
    // With the current version the update goes through and reports the new version.
    let current = now[0].version.clone();
    let outcome = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Update {
                id: id.clone(),
                version: current.clone(),
                changes,
            }],
        )
        .await
        .unwrap();
    let written = outcome[0].clone().unwrap();
    assert_ne!(written.version, current);
    let now = c.read_ids(EntityKind::Contact, &[&id]).await.unwrap();
    assert_eq!(now[0].version, written.version);
    assert_eq!(
        now[0].fields.get(field::JOB_TITLE),
        Some(&Value::text("Engineer"))
    );
    // A delete with the old version is a conflict too.
    let outcome = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Delete {
                id: id.clone(),
                version: Some(version),
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcome[0], Err(ConnectorError::Conflict { id }));
}

/// Renaming: a changed name renames the entry (its RDN is cn), the id stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_name_renames_the_entry_and_keeps_its_id() {
    let Some(server) = Slapd::start() else {
        return;
    };
    let c = LdapConnector::from_settings(server.settings()).unwrap();
    let (id, version) = create(&c, person("Eve Online")).await;
    assert!(dn_of(&server, &id).await.starts_with("cn=Eve Online,"));
    let mut changes = tandem_connector::Changes::new();
    changes.insert(field::NAME.into(), Value::text("Eve Offline, Jr."));
    changes.insert(field::CITY.into(), Value::text("Ghent"));
    let w = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Update {
                id: id.clone(),
                version,
                changes,
            }],
        )
        .await
        .unwrap();
    assert_eq!(w[0].as_ref().unwrap().id, id);
    let dn = dn_of(&server, &id).await;
    assert!(dn.starts_with("cn=Eve Offline"), "{dn}");
    let now = c.read_ids(EntityKind::Contact, &[&id]).await.unwrap();
    assert_eq!(
        now[0].fields.get(field::NAME),
        Some(&Value::text("Eve Offline, Jr."))
    );
    assert_eq!(now[0].fields.get(field::CITY), Some(&Value::text("Ghent")));
    assert_eq!(now[0].version, w[0].as_ref().unwrap().version);
}

async fn tls_round_trip(server: &Slapd, settings: serde_json::Value, name: &str) {
    let c = build(settings);
    c.check().await.unwrap();
    let (id, _) = create(c.as_ref(), person(name)).await;
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert!(page.records.iter().any(|r| r.id == id), "{}", server.log());
}

/// StartTLS on ldap:// and LDAPS, both trusting the test's CA through `ca_file`;
/// without it the certificate is refused with a message naming `ca_file`.
#[tokio::test(flavor = "multi_thread")]
async fn starttls_and_ldaps_with_a_private_ca() {
    let Some(server) = Slapd::start_with(testsupport::Options {
        tls: true,
        ..Default::default()
    }) else {
        return;
    };
    let ca = server.ca_file().unwrap().to_path_buf();
    let mut starttls = server.settings();
    starttls["starttls"] = json!(true);
    starttls["ca_file"] = json!(ca);
    tls_round_trip(&server, starttls, "Tess Starttls").await;

    let mut ldaps = server.settings();
    ldaps["url"] = json!(server.ldaps_url().unwrap());
    ldaps["ca_file"] = json!(ca);
    tls_round_trip(&server, ldaps.clone(), "Tess Ldaps").await;

    // Another CA: the server's certificate is not trusted.
    let other = tandem_connector::http::testing::TestCa::new("Someone else")
        .write_files(&server.dir().join("other"))
        .or_else(|_| {
            std::fs::create_dir_all(server.dir().join("other"))?;
            tandem_connector::http::testing::TestCa::new("Someone else")
                .write_files(&server.dir().join("other"))
        })
        .unwrap();
    ldaps["ca_file"] = json!(other.ca);
    let err = build(ldaps).check().await.unwrap_err();
    assert!(err.to_string().contains("ca_file"), "{err}");
    assert!(!err.is_retryable(), "{err:?}");
}

/// A wrong password is an authentication error that names the bind DN, never the
/// password.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_an_auth_error_without_the_password() {
    let Some(server) = Slapd::start() else {
        return;
    };
    let mut settings = server.settings();
    settings["password"] = json!("not-the-password-42");
    let err = build(settings).check().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(testsupport::BIND_DN), "{text}");
    assert!(!text.contains("not-the-password-42"), "{text}");
}

/// A size limit that cuts the listing short is an error that says how to lift it, never
/// a short listing (which would read as deletes).
#[tokio::test(flavor = "multi_thread")]
async fn a_size_limit_is_an_error_that_says_what_to_do() {
    let Some(server) = Slapd::start_with(testsupport::Options {
        size_limit: Some(3),
        ..Default::default()
    }) else {
        return;
    };
    for sync in ["auto", "paged"] {
        let mut settings = server.settings();
        settings["sync"] = json!(sync);
        settings["page_size"] = json!(2);
        let c = LdapConnector::from_settings(settings).unwrap();
        if sync == "auto" {
            for i in 0..5 {
                create(&c, person(&format!("Limited {i}"))).await;
            }
        }
        let err = c.read(EntityKind::Contact, None).await.unwrap_err();
        assert!(
            matches!(err, ConnectorError::Config { .. }),
            "{sync}: {err:?}"
        );
        assert!(err.to_string().contains("size limit"), "{sync}: {err}");
    }
}

/// `check` binds and reads the base entry: a base DN that does not exist is a
/// configuration error naming `base_dn`.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_base_dn_is_named() {
    let Some(server) = Slapd::start() else {
        return;
    };
    build(server.settings()).check().await.unwrap();
    let mut settings = server.settings();
    settings["base_dn"] = json!("ou=nowhere,dc=example,dc=org");
    let err = build(settings).check().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("`base_dn`"), "{err}");
}

/// Without a session log, syncprov answers a refresh from a cookie with its present
/// phase: the connector reads everything again as a full listing, so a delete is still
/// seen (missing from a completed listing, R16) and nothing else is lost.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_log_a_refresh_is_a_full_listing() {
    let Some(server) = Slapd::start_with(testsupport::Options {
        session_log: false,
        ..Default::default()
    }) else {
        return;
    };
    let c = LdapConnector::from_settings(server.settings()).unwrap();
    let (kept, _) = create(&c, person("Kim Kept")).await;
    let (gone, _) = create(&c, person("Guy Gone")).await;
    let first = read_all(&c, None).await;
    assert_eq!(first.listing, Listing::Full);
    let mut admin = server.admin().await;
    admin
        .delete(&dn_of(&server, &gone).await)
        .await
        .unwrap()
        .success()
        .unwrap();
    let next = read_all(&c, first.cursor.as_ref()).await;
    assert_eq!(next.listing, Listing::Full);
    let ids: Vec<&str> = next.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec![kept.as_str()]);
    assert!(next.records.iter().all(|r| !r.deleted));
}
