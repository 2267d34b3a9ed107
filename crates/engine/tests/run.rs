//! The engine end to end on in-memory connectors and a real state (SQLite, or
//! PostgreSQL under `TANDEM_TEST_STATE_URL`: `tandem_state::testsupport`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tandem_connector::Connector;
use tandem_connector::memory::MemoryConnector;
use tandem_engine::{
    ContactsConfig, Engine, EngineError, MatchTier, RelationConfig, Relations, RunReport,
    SyncConfig,
};
use tandem_model::{EntityKind, Fields, Value};
use tandem_state::testsupport::TestState;
use tandem_state::{LockMode, StateStore};

struct World {
    crm: Arc<MemoryConnector>,
    erp: Arc<MemoryConnector>,
    relations: Relations,
    /// Dropped before the place it lives in.
    state: Box<dyn StateStore>,
    _state_place: TestState,
}

fn relation(kind: EntityKind, create_contacts: bool) -> RelationConfig {
    RelationConfig {
        match_tiers: vec![
            MatchTier::Fields(vec!["vat_registration_no".into()]),
            MatchTier::Fields(vec!["email".into()]),
        ],
        create_contacts,
        ..RelationConfig::new(kind, "erp")
    }
}

fn world(incremental: bool) -> World {
    let state_place = TestState::new();
    let state = state_place.open(LockMode::Exclusive);
    let mut relations = BTreeMap::new();
    relations.insert("CUST".to_string(), relation(EntityKind::Customer, true));
    relations.insert("VEND".to_string(), relation(EntityKind::Vendor, false));
    let config = SyncConfig::new(
        ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        },
        relations,
    )
    .unwrap();
    World {
        crm: Arc::new(
            MemoryConnector::new(&[EntityKind::Contact], incremental)
                .with_page_size(3)
                .with_id_prefix("C"),
        ),
        erp: Arc::new(
            MemoryConnector::new(&[EntityKind::Customer, EntityKind::Vendor], incremental)
                .with_page_size(2)
                .with_id_prefix("K"),
        ),
        relations: Relations::from_config(&config),
        state,
        _state_place: state_place,
    }
}

impl World {
    fn connectors(&self) -> HashMap<String, Arc<dyn Connector>> {
        let mut map: HashMap<String, Arc<dyn Connector>> = HashMap::new();
        map.insert("crm".into(), self.crm.clone());
        map.insert("erp".into(), self.erp.clone());
        map
    }

    async fn sync(&mut self) -> RunReport {
        let connectors = self.connectors();
        let mut engine =
            Engine::new(self.relations.clone(), connectors, self.state.as_mut()).unwrap();
        engine.sync().await.unwrap()
    }

    /// A sync with the delete guard set by `guard` (R16).
    async fn sync_guarded(
        &mut self,
        guard: impl FnOnce(&mut Engine<'_>),
    ) -> Result<RunReport, EngineError> {
        let connectors = self.connectors();
        let mut engine =
            Engine::new(self.relations.clone(), connectors, self.state.as_mut()).unwrap();
        guard(&mut engine);
        engine.sync().await
    }

    /// A sync that lets every delete through (`--allow-deletes`).
    async fn sync_allowing_deletes(&mut self) -> RunReport {
        self.sync_guarded(|e| e.set_allow_deletes(true))
            .await
            .unwrap()
    }

    async fn plan(&mut self) -> RunReport {
        let connectors = self.connectors();
        let mut engine =
            Engine::new(self.relations.clone(), connectors, self.state.as_mut()).unwrap();
        engine.plan().await.unwrap()
    }

    fn seed(&self) {
        let f =
            |pairs: &[(&str, &str)]| pairs.iter().fold(Fields::new(), |f, (k, v)| f.with(k, *v));
        self.crm.put(
            EntityKind::Contact,
            "C1",
            f(&[
                ("name", "Acme"),
                ("vat_registration_no", "BE1"),
                ("phone", "1"),
            ]),
        );
        self.crm.put(
            EntityKind::Contact,
            "C2",
            f(&[("name", "Beta"), ("email", "info@beta.be")]),
        );
        self.crm
            .put(EntityKind::Contact, "C3", f(&[("name", "Gamma")]));
        self.erp.put(
            EntityKind::Customer,
            "K1",
            f(&[("name", "ACME NV"), ("vat_registration_no", "BE1")]),
        );
        self.erp.put(
            EntityKind::Customer,
            "K2",
            f(&[("name", "Beta BV"), ("email", "INFO@beta.be")]),
        );
        self.erp.put(
            EntityKind::Customer,
            "K3",
            f(&[("name", "Delta"), ("city", "Gent")]),
        );
        self.erp.put(
            EntityKind::Vendor,
            "V1",
            f(&[("name", "Acme"), ("vat_registration_no", "BE1")]),
        );
    }
}

fn text(c: &MemoryConnector, kind: EntityKind, id: &str, field: &str) -> Option<String> {
    c.get(kind, id)
        .and_then(|r| r.fields.text(field).map(str::to_owned))
}

/// How many contacts a run read as changed, and how many it had in play.
fn contacts_changed_and_in_play(report: &RunReport) -> (u64, u64) {
    let contacts = (report.read.iter())
        .find(|r| r.kind == EntityKind::Contact)
        .expect("contacts are read");
    (contacts.changed, contacts.in_play)
}

fn count(report: &RunReport, code: &str) -> tandem_engine::plan::RelationCounts {
    report
        .counts
        .iter()
        .find(|c| c.code == code)
        .unwrap()
        .clone()
}

async fn first_sync_links_creates_and_settles(incremental: bool) {
    let mut w = world(incremental);
    w.seed();
    let planned = w.plan().await;
    let report = w.sync().await;
    assert_eq!(
        planned.counts, report.counts,
        "plan and sync report the same actions"
    );
    assert_eq!(planned.writes, report.writes);
    let cust = count(&report, "CUST");
    assert_eq!((cust.linked, cust.created, cust.failed), (2, 1, 0));
    assert_eq!(count(&report, "VEND").linked, 1);
    // R4: the link starts from the contact's values.
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K1", "name").as_deref(),
        Some("Acme")
    );
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K1", "phone").as_deref(),
        Some("1")
    );
    // R6: Delta got a company contact.
    let created: Vec<_> = w
        .crm
        .all(EntityKind::Contact)
        .into_iter()
        .filter(|c| c.fields.text("name") == Some("Delta"))
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].fields.text("city"), Some("Gent"));
    assert_eq!(created[0].fields.text("contact_type"), Some("company"));
    assert_eq!(w.state.count_links("CUST").unwrap(), 3);
    // The new contact's link starts from the account's shared fields alone, not from
    // the contact type and code the create added.
    let link = w
        .state
        .links_of_accounts("CUST", &["K3"])
        .unwrap()
        .remove(0);
    let shared = Fields::new().with("city", "Gent").with("name", "Delta");
    assert_eq!(link.baseline, shared);

    // R14: the next run finds the values it wrote and writes nothing.
    let second = w.sync().await;
    assert_eq!(second.writes, 0, "{:#?}", second.plan);
    assert_eq!(count(&second, "CUST").unchanged, 3);
    let third = w.sync().await;
    assert_eq!(third.writes, 0);
}

#[tokio::test]
async fn r14_second_run_writes_nothing_full_listing() {
    first_sync_links_creates_and_settles(false).await;
}

#[tokio::test]
async fn r14_second_run_writes_nothing_incremental() {
    first_sync_links_creates_and_settles(true).await;
}

#[tokio::test]
async fn r7_phone_changed_on_customer_reaches_contact_and_vendor_in_one_run() {
    for incremental in [false, true] {
        let mut w = world(incremental);
        w.seed();
        w.sync().await;
        let mut k1 = w.erp.get(EntityKind::Customer, "K1").unwrap().fields;
        k1.set("phone", Value::text("+32 9 999"));
        w.erp.put(EntityKind::Customer, "K1", k1);
        let report = w.sync().await;
        assert_eq!(report.writes, 2, "contact and vendor");
        assert_eq!(
            text(&w.crm, EntityKind::Contact, "C1", "phone").as_deref(),
            Some("+32 9 999")
        );
        assert_eq!(
            text(&w.erp, EntityKind::Vendor, "V1", "phone").as_deref(),
            Some("+32 9 999")
        );
        assert_eq!(w.sync().await.writes, 0);
    }
}

#[tokio::test]
async fn r16_incomplete_full_listing_deletes_nothing() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    w.erp.put(
        EntityKind::Customer,
        "K4",
        Fields::new().with("name", "Epsilon"),
    );
    w.erp.remove(EntityKind::Customer, "K2");
    // The listing breaks after its first page: nothing may be taken for deleted.
    w.erp.fail_reads_after(Some(1));
    let connectors = w.connectors();
    let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
    let err = engine.sync().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("reading customers from connector `erp` failed"),
        "{err}"
    );
    assert_eq!(w.state.count_links("CUST").unwrap(), 3);
    // Once the listing completes, the missing customer is a delete (R13).
    w.erp.fail_reads_after(None);
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").unlinked, 1);
    let accounts: Vec<String> = w
        .state
        .links(Some("CUST"))
        .unwrap()
        .into_iter()
        .map(|l| l.account_id)
        .collect();
    assert!(!accounts.contains(&"K2".to_string()), "{accounts:?}");
    assert!(accounts.contains(&"K4".to_string()), "{accounts:?}");
    assert!(
        w.crm.get(EntityKind::Contact, "C2").is_some(),
        "the contact stays"
    );
}

#[tokio::test]
async fn r16_records_missing_from_a_change_page_are_not_deleted() {
    let mut w = world(true);
    w.seed();
    w.sync().await;
    // Only C1 changes; everything else is absent from the change pages.
    let mut c1 = w.crm.get(EntityKind::Contact, "C1").unwrap().fields;
    c1.set("email", Value::text("acme@x.be"));
    w.crm.put(EntityKind::Contact, "C1", c1);
    let report = w.sync().await;
    assert_eq!(report.counts.iter().map(|c| c.unlinked).sum::<u64>(), 0);
    assert_eq!(w.state.count_links("CUST").unwrap(), 3);
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K1", "email").as_deref(),
        Some("acme@x.be")
    );
    // A tombstone is a delete (R12): the contact's links go, the accounts stay.
    w.crm.remove(EntityKind::Contact, "C1");
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").unlinked, 1);
    assert_eq!(count(&report, "VEND").unlinked, 1);
    assert!(w.erp.get(EntityKind::Customer, "K1").is_some());
}

#[tokio::test]
async fn r17_a_failing_record_does_not_stop_the_run() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    for (id, phone) in [("C1", "2"), ("C2", "3")] {
        let mut fields = w.crm.get(EntityKind::Contact, id).unwrap().fields;
        fields.set("phone", Value::text(phone));
        w.crm.put(EntityKind::Contact, id, fields);
    }
    w.erp.reject_writes_to(
        EntityKind::Customer,
        "K1",
        Some("phone number rejected by the ERP"),
    );
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").failed, 1);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].account_id.as_deref(), Some("K1"));
    assert!(
        report.failures[0].error.contains("phone number rejected"),
        "{:?}",
        report.failures
    );
    // The other pairs went through: C2's customer and C1's vendor.
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K2", "phone").as_deref(),
        Some("3")
    );
    assert_eq!(
        text(&w.erp, EntityKind::Vendor, "V1", "phone").as_deref(),
        Some("2")
    );
    let link = w
        .state
        .links_of_accounts("CUST", &["K1"])
        .unwrap()
        .remove(0);
    assert_eq!(link.failure_count, 1);
    assert!(link.last_error.unwrap().contains("phone number rejected"));

    // Retried on the next run; the same error twice parks the pair (R17).
    let again = w.sync().await;
    assert_eq!(count(&again, "CUST").failed, 1);
    assert_eq!(count(&again, "CUST").parked, 1);
    assert!(again.failures[0].parked);
    let link = w
        .state
        .links_of_accounts("CUST", &["K1"])
        .unwrap()
        .remove(0);
    assert!(link.parked);

    // Parked: left alone, even once the ERP would accept it...
    w.erp.reject_writes_to(EntityKind::Customer, "K1", None);
    let quiet = w.sync().await;
    assert_eq!(quiet.failed(), 0);
    assert_eq!(quiet.writes, 0);
    assert_eq!(count(&quiet, "CUST").parked, 1);
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K1", "phone").as_deref(),
        Some("1")
    );

    // ...until retried by hand.
    let retried = tandem_engine::retry(
        w.state.as_mut(),
        &w.relations,
        &tandem_engine::RetryTarget::All,
    )
    .unwrap();
    assert_eq!(retried, 1);
    let fixed = w.sync().await;
    assert_eq!(fixed.failed(), 0);
    assert_eq!(count(&fixed, "CUST").parked, 0);
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K1", "phone").as_deref(),
        Some("2")
    );
    let link = w
        .state
        .links_of_accounts("CUST", &["K1"])
        .unwrap()
        .remove(0);
    assert_eq!(
        (link.failure_count, link.last_error, link.parked),
        (0, None, false)
    );
    assert_eq!(w.sync().await.writes, 0);
    let log = w.state.interactions("C1", 100).unwrap();
    let actions: Vec<&str> = log
        .iter()
        .filter(|i| i.code == "CUST")
        .map(|i| i.action.as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["linked", "updated", "failed", "parked", "updated"],
        "{log:#?}"
    );
}

#[tokio::test]
async fn r10_a_contact_resolves_to_its_account_and_a_person_through_its_company() {
    let mut w = world(false);
    w.seed();
    w.crm.put(
        EntityKind::Contact,
        "P1",
        Fields::new()
            .with("name", "Jan Peeters")
            .with("contact_type", "person")
            .with("company_id", "C1"),
    );
    w.sync().await;
    let company = tandem_engine::resolve(w.state.as_ref(), "CUST", "C1")
        .unwrap()
        .unwrap();
    assert_eq!(
        (company.account_id.as_str(), company.holder_id.as_str()),
        ("K1", "C1")
    );
    let person = tandem_engine::resolve(w.state.as_ref(), "VEND", "P1")
        .unwrap()
        .unwrap();
    assert_eq!(
        (person.account_id.as_str(), person.holder_id.as_str()),
        ("V1", "C1")
    );
    assert_eq!(
        tandem_engine::resolve(w.state.as_ref(), "VEND", "C2").unwrap(),
        None
    );
}

#[tokio::test]
async fn r11_every_action_on_a_pair_is_logged_and_nothing_else() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    let mut k1 = w.erp.get(EntityKind::Customer, "K1").unwrap().fields;
    k1.set("phone", Value::text("+32 9 999"));
    w.erp.put(EntityKind::Customer, "K1", k1);
    w.sync().await;
    // The only vendor: a full listing without any is let through explicitly (R16).
    w.erp.remove(EntityKind::Vendor, "V1");
    w.sync_allowing_deletes().await;

    let log = w.state.interactions("C1", 100).unwrap();
    let entries: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|i| (i.code.as_str(), i.action.as_str(), i.source.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("CUST", "linked", "match"),
            ("CUST", "updated", "contact"),
            ("VEND", "linked", "match"),
            ("VEND", "updated", "contact"),
            ("CUST", "updated", "account"),
            ("VEND", "updated", "contact"),
            ("VEND", "unlinked", "account"),
        ]
    );
    let update = &log[4];
    let details = update.details.value();
    assert_eq!(details["contact"][0]["field"], "phone");
    assert_eq!(details["contact"][0]["new"], "+32 9 999");
    assert!(log.iter().all(|i| i.run_id.is_some()));
    // C3 ("Gamma") has no relation: no entry.
    assert!(w.state.interactions("C3", 100).unwrap().is_empty());
}

#[tokio::test]
async fn r15_a_manual_conflict_waits_across_runs_without_losing_either_value() {
    let mut w = world(false);
    w.relations.relations[0].conflict = tandem_engine::ConflictPolicy::Manual;
    assert_eq!(w.relations.relations[0].code, "CUST");
    w.seed();
    w.sync().await;
    let mut c1 = w.crm.get(EntityKind::Contact, "C1").unwrap().fields;
    c1.set("phone", Value::text("contact-side"));
    w.crm.put(EntityKind::Contact, "C1", c1);
    let mut k1 = w.erp.get(EntityKind::Customer, "K1").unwrap().fields;
    k1.set("phone", Value::text("account-side"));
    w.erp.put(EntityKind::Customer, "K1", k1);
    for _ in 0..3 {
        let report = w.sync().await;
        assert_eq!(count(&report, "CUST").conflicts, 1);
        assert_eq!(
            text(&w.crm, EntityKind::Contact, "C1", "phone").as_deref(),
            Some("contact-side")
        );
        assert_eq!(
            text(&w.erp, EntityKind::Customer, "K1", "phone").as_deref(),
            Some("account-side")
        );
        assert_eq!(w.state.conflicts(true).unwrap().len(), 1);
    }
    let id = w.state.conflicts(true).unwrap()[0].id;
    tandem_engine::resolve_conflict(
        w.state.as_mut(),
        &w.relations,
        id,
        &tandem_engine::Take::Account,
    )
    .unwrap();
    w.sync().await;
    assert_eq!(
        text(&w.crm, EntityKind::Contact, "C1", "phone").as_deref(),
        Some("account-side")
    );
    // The vendor, under contact_wins, took the contact's change and now the decision.
    assert_eq!(
        text(&w.erp, EntityKind::Vendor, "V1", "phone").as_deref(),
        Some("account-side")
    );
    assert!(w.state.conflicts(true).unwrap().is_empty());
    assert_eq!(w.sync().await.writes, 0);
}

#[tokio::test]
async fn r4_a_run_without_changes_keeps_no_record_in_play() {
    // C3 and the vendor-less contacts stay unlinked: a quiet run must not match them again.
    for incremental in [false, true] {
        let mut w = world(incremental);
        w.seed();
        w.sync().await;
        w.sync().await;
        let report = w.sync().await;
        assert_eq!(report.writes, 0);
        for read in &report.read {
            assert_eq!(
                read.in_play, 0,
                "{} {}s in play on a quiet run (incremental: {incremental})",
                read.connector, read.kind
            );
        }
        // A change brings only what the relation needs back into play.
        w.erp.put(
            EntityKind::Vendor,
            "V9",
            Fields::new()
                .with("name", "Zeta")
                .with("email", "z@zeta.be"),
        );
        let report = w.sync().await;
        let vendors = report
            .read
            .iter()
            .find(|r| r.kind == EntityKind::Vendor)
            .unwrap();
        assert_eq!(vendors.in_play, 1);
    }
}

#[tokio::test]
async fn r4_a_contact_leaving_an_ambiguity_lets_the_other_match_without_being_edited() {
    // Full listings: the contact that did not change is read again once the relation
    // has something to match.
    let mut w = world(false);
    let f = |pairs: &[(&str, &str)]| pairs.iter().fold(Fields::new(), |f, (k, v)| f.with(k, *v));
    w.crm.put(
        EntityKind::Contact,
        "C1",
        f(&[("name", "Acme"), ("email", "office@acme.be")]),
    );
    w.crm.put(
        EntityKind::Contact,
        "C2",
        f(&[("name", "Acme Gent"), ("email", "office@acme.be")]),
    );
    w.erp.put(
        EntityKind::Vendor,
        "V1",
        f(&[("name", "ACME"), ("email", "office@acme.be")]),
    );
    let report = w.sync().await;
    assert_eq!(count(&report, "VEND").ambiguous, 1);
    // A quiet run matches nothing, and still reports the ambiguity it stands on.
    let report = w.sync().await;
    assert_eq!(count(&report, "VEND").linked, 0);
    assert_eq!(count(&report, "VEND").ambiguous, 1, "{report:#?}");
    assert_eq!(report.ambiguous.len(), 1);
    assert_eq!(report.ambiguous[0].contact_ids, ["C1", "C2"]);

    w.crm.put(
        EntityKind::Contact,
        "C1",
        f(&[("name", "Acme"), ("email", "sales@acme.be")]),
    );
    let report = w.sync().await;
    assert_eq!(count(&report, "VEND").linked, 1, "{report:#?}");
    let links = w.state.links(Some("VEND")).unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        (links[0].contact_id.as_str(), links[0].account_id.as_str()),
        ("C2", "V1")
    );
}

#[tokio::test]
async fn r12_the_account_of_a_deleted_contact_gets_no_new_contact_unless_asked() {
    // CUST creates contacts (R6), but the user deleted this customer's contact: R12
    // wins, on this run and every later one, until `tandem create-contact`.
    let mut w = world(false);
    w.seed();
    w.sync().await;
    let link = w
        .state
        .links(Some("CUST"))
        .unwrap()
        .into_iter()
        .find(|l| l.account_id == "K1")
        .unwrap();
    w.crm.remove(EntityKind::Contact, &link.contact_id);
    let contacts = w.crm.all(EntityKind::Contact).len();
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").unlinked, 1);
    for _ in 0..2 {
        let quiet = w.sync().await;
        assert_eq!(count(&quiet, "CUST").created, 0, "{quiet:#?}");
        assert_eq!(quiet.writes, 0, "a sync after a sync writes nothing");
    }
    assert_eq!(w.crm.all(EntityKind::Contact).len(), contacts);

    let connectors = w.connectors();
    let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
    let asked = engine
        .sync_with(tandem_engine::Directives {
            create_contact: vec![("CUST".into(), "K1".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(count(&asked, "CUST").created, 1, "{asked:#?}");
    let links = w.state.links(Some("CUST")).unwrap();
    assert!(links.iter().any(|l| l.account_id == "K1"));
    assert_eq!(w.sync().await.writes, 0);
}

fn contacts_named(w: &World, name: &str) -> usize {
    w.crm
        .all(EntityKind::Contact)
        .into_iter()
        .filter(|c| c.fields.text("name") == Some(name))
        .count()
}

/// A matched pair whose first write fails keeps its link (with what it still has to
/// write): the next runs neither match it anew nor create a second contact for the
/// account, even when nothing is read again but by id (R18, R17).
async fn failed_first_write_keeps_the_link(incremental: bool) {
    let mut w = world(incremental);
    w.seed();
    // C2 matches K2 by e-mail; the link starts from the contact's name.
    w.erp
        .reject_writes_to(EntityKind::Customer, "K2", Some("ERP is busy"));
    let first = w.sync().await;
    assert_eq!(count(&first, "CUST").failed, 1);
    let link = w.state.links_of_accounts("CUST", &["K2"]).unwrap();
    assert_eq!(
        link.len(),
        1,
        "the link is stored although its write failed"
    );
    assert_eq!(link[0].contact_id, "C2");
    assert!(link[0].intent.is_some());
    assert_eq!(contacts_named(&w, "Beta BV"), 0);

    let second = w.sync().await;
    assert_eq!(count(&second, "CUST").created, 0, "{second:#?}");
    assert_eq!(contacts_named(&w, "Beta BV"), 0, "no second contact");
    let link = &w.state.links_of_accounts("CUST", &["K2"]).unwrap()[0];
    assert!(
        link.parked,
        "the same error twice parks the pair: {link:?} {second:#?}"
    );
    assert_eq!(w.sync().await.writes, 0, "parked: left alone");

    w.erp.reject_writes_to(EntityKind::Customer, "K2", None);
    tandem_engine::retry(
        w.state.as_mut(),
        &w.relations,
        &tandem_engine::RetryTarget::All,
    )
    .unwrap();
    let fixed = w.sync().await;
    assert_eq!(fixed.failed(), 0, "{fixed:#?}");
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K2", "name").as_deref(),
        Some("Beta")
    );
    let link = &w.state.links_of_accounts("CUST", &["K2"]).unwrap()[0];
    assert!(link.intent.is_none() && !link.parked && link.failure_count == 0);
    assert_eq!(w.sync().await.writes, 0);
    assert_eq!(w.crm.all(EntityKind::Contact).len(), 4);
}

#[tokio::test]
async fn r18_a_failed_first_write_keeps_the_link_full_listing() {
    failed_first_write_keeps_the_link(false).await;
}

#[tokio::test]
async fn r18_a_failed_first_write_keeps_the_link_change_reading() {
    failed_first_write_keeps_the_link(true).await;
}

/// Tandem writes a contact for one link (its codes change when its vendor is
/// deleted); the contact's other link learns the new version, so the next write for
/// that link is not refused as someone else's change.
async fn own_writes_are_no_conflicts(incremental: bool) {
    let mut w = world(incremental);
    w.seed();
    // A second vendor, so deleting one is not refused by the delete guard (R16).
    w.erp.put(
        EntityKind::Vendor,
        "V2",
        Fields::new()
            .with("name", "Zeta")
            .with("vat_registration_no", "BE9"),
    );
    w.sync().await;
    let c1 = w.state.links_of_accounts("CUST", &["K1"]).unwrap()[0]
        .contact_id
        .clone();
    w.erp.remove(EntityKind::Vendor, "V1");
    let unlinked = w.sync().await;
    assert_eq!(count(&unlinked, "VEND").unlinked, 1);
    let written = w.crm.get(EntityKind::Contact, &c1).unwrap().version;
    let link = &w.state.links_of_accounts("CUST", &["K1"]).unwrap()[0];
    assert_eq!(
        link.contact_version, written,
        "R19: every link knows the write"
    );

    let mut k1 = w.erp.get(EntityKind::Customer, "K1").unwrap().fields;
    k1.set("phone", Value::text("77"));
    w.erp.put(EntityKind::Customer, "K1", k1);
    let report = w.sync().await;
    assert_eq!(report.failed(), 0, "{:?}", report.failures);
    assert_eq!(
        text(&w.crm, EntityKind::Contact, &c1, "phone").as_deref(),
        Some("77")
    );
}

#[tokio::test]
async fn r19_own_writes_are_no_conflicts_full_listing() {
    own_writes_are_no_conflicts(false).await;
}

#[tokio::test]
async fn r19_own_writes_are_no_conflicts_change_reading() {
    own_writes_are_no_conflicts(true).await;
}

/// With change-reading connectors a new account still matches a contact that did not
/// change (and gets no duplicate contact, R6).
#[tokio::test]
async fn r4_a_new_account_matches_an_unchanged_contact_of_a_change_reading_connector() {
    let mut w = world(true);
    w.seed();
    w.crm.put(
        EntityKind::Contact,
        "C4",
        Fields::new()
            .with("name", "Epsilon")
            .with("email", "hello@epsilon.example"),
    );
    w.sync().await;
    w.sync().await;
    w.erp.put(
        EntityKind::Customer,
        "K4",
        Fields::new()
            .with("name", "Epsilon SA")
            .with("email", "hello@epsilon.example"),
    );
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").linked, 1, "{report:#?}");
    assert_eq!(count(&report, "CUST").created, 0);
    let link = &w.state.links_of_accounts("CUST", &["K4"]).unwrap()[0];
    assert_eq!(link.contact_id, "C4");
}

/// Every stored hash of a scope, sorted: what a refused run must leave as it was.
fn stored_hashes(w: &World, connector: &str, kind: EntityKind) -> Vec<(String, u64)> {
    let mut hashes: Vec<(String, u64)> = w
        .state
        .hashes(&tandem_state::Scope::new(connector, kind))
        .unwrap()
        .into_iter()
        .map(|(id, hash)| (id.into(), hash))
        .collect();
    hashes.sort();
    hashes
}

#[tokio::test]
async fn r16_an_empty_listing_stops_the_run_before_anything_is_written() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    let links = w.state.links(None).unwrap();
    let hashes = stored_hashes(&w, "erp", EntityKind::Customer);
    let contacts = w.crm.all(EntityKind::Contact);
    for id in ["K1", "K2", "K3"] {
        w.erp.remove(EntityKind::Customer, id);
    }

    // `plan` shows the same refusal.
    let connectors = w.connectors();
    let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
    let err = engine.plan().await.unwrap_err();
    assert!(matches!(err, EngineError::TooManyDeletes { .. }), "{err}");

    // Even a limit of 1 lets no empty listing through.
    let err = w
        .sync_guarded(|e| e.set_max_delete_share(1.0))
        .await
        .unwrap_err();
    match &err {
        EngineError::TooManyDeletes {
            connector,
            kind,
            deleted,
            known,
            empty,
            ..
        } => assert_eq!(
            (connector.as_str(), *kind, *deleted, *known, *empty),
            ("erp", EntityKind::Customer, 3, 3, true)
        ),
        other => panic!("{other}"),
    }
    let message = err.to_string();
    for part in [
        "would delete 3 of 3 known customers (100 %) from connector `erp`",
        "--allow-deletes",
        "[sync] max_delete_share",
    ] {
        assert!(message.contains(part), "{message}");
    }
    assert_eq!(w.state.links(None).unwrap(), links, "links untouched");
    assert_eq!(stored_hashes(&w, "erp", EntityKind::Customer), hashes);
    assert_eq!(
        w.crm.all(EntityKind::Contact),
        contacts,
        "contacts untouched"
    );
    // The refused run is recorded as failed, with its error.
    let run = w.state.runs(1).unwrap().remove(0);
    assert_eq!(run.status, "failed");
    assert!(
        run.summary["error"]
            .as_str()
            .unwrap()
            .contains("would delete 3 of 3"),
        "{:?}",
        run.summary
    );

    // Let through, the deletes are carried out: the links go, the contacts stay (R13).
    let report = w.sync_allowing_deletes().await;
    assert_eq!(count(&report, "CUST").unlinked, 3);
    assert_eq!(w.state.count_links("CUST").unwrap(), 0);
    assert!(w.crm.get(EntityKind::Contact, "C1").is_some());
    assert_eq!(w.sync().await.writes, 0, "nothing left to delete");
}

#[tokio::test]
async fn r16_a_share_over_the_limit_stops_the_run_and_one_under_it_goes_through() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    let links = w.state.links(None).unwrap();
    // 2 of 3 known customers (66 %) is over the default half.
    w.erp.remove(EntityKind::Customer, "K1");
    w.erp.remove(EntityKind::Customer, "K2");
    let err = w.sync_guarded(|_| {}).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("would delete 2 of 3 known customers (66 %) from connector `erp`"),
        "{message}"
    );
    assert!(!message.contains("listed none"), "{message}");
    assert_eq!(w.state.links(None).unwrap(), links, "links untouched");
    // A limit of 0.7 lets it through.
    let report = w
        .sync_guarded(|e| e.set_max_delete_share(0.7))
        .await
        .unwrap();
    assert_eq!(count(&report, "CUST").unlinked, 2);

    // 1 of 4 known contacts is under the limit: no flag needed (R12).
    let known = w.crm.all(EntityKind::Contact).len();
    assert!(known >= 4, "{known}");
    w.crm.remove(EntityKind::Contact, "C3");
    let report = w.sync().await;
    assert_eq!(report.read[0].deleted, 1);
}

#[tokio::test]
async fn r16_the_contact_side_is_guarded_too() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    let links = w.state.links(None).unwrap();
    for contact in w.crm.all(EntityKind::Contact) {
        w.crm.remove(EntityKind::Contact, &contact.id);
    }
    let err = w.sync_guarded(|_| {}).await.unwrap_err();
    assert!(
        matches!(
            &err,
            EngineError::TooManyDeletes { connector, kind: EntityKind::Contact, empty: true, .. }
                if connector == "crm"
        ),
        "{err}"
    );
    assert_eq!(w.state.links(None).unwrap(), links);
    // A limit of 0 refuses any delete from a listing.
    w.crm.put(
        EntityKind::Contact,
        "C1",
        Fields::new().with("name", "Acme"),
    );
    let err = w
        .sync_guarded(|e| e.set_max_delete_share(0.0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::TooManyDeletes { empty: false, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn r16_tombstones_and_unknown_scopes_are_not_guarded() {
    // Tombstones are deletes the connector vouches for.
    let mut w = world(true);
    w.seed();
    w.sync().await;
    for id in ["K1", "K2", "K3"] {
        w.erp.remove(EntityKind::Customer, id);
    }
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").unlinked, 3);

    // An empty listing of a scope the state knows nothing of deletes nothing.
    let mut w = world(false);
    w.crm.put(
        EntityKind::Contact,
        "C1",
        Fields::new().with("name", "Acme"),
    );
    let report = w.sync().await;
    assert_eq!(report.writes, 0);
}

#[tokio::test]
async fn r17_a_busy_server_never_parks_a_record() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    let mut fields = w.crm.get(EntityKind::Contact, "C1").unwrap().fields;
    fields.set("phone", Value::text("2"));
    w.crm.put(EntityKind::Contact, "C1", fields);
    w.erp.make_unavailable(EntityKind::Customer, "K1", true);
    // The same passing error run after run: failed and tried again, never parked.
    for _ in 0..3 {
        let report = w.sync().await;
        assert_eq!(count(&report, "CUST").failed, 1, "{:?}", report.failures);
        assert_eq!(count(&report, "CUST").parked, 0);
        assert!(!report.failures[0].parked);
    }
    let link = w
        .state
        .links_of_accounts("CUST", &["K1"])
        .unwrap()
        .remove(0);
    assert_eq!((link.failure_count, link.parked), (3, false));
    // Once the server takes it, the edit lands.
    w.erp.make_unavailable(EntityKind::Customer, "K1", false);
    let report = w.sync().await;
    assert_eq!(report.failed(), 0);
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K1", "phone").as_deref(),
        Some("2")
    );
}

/// A connector that makes its creates but loses the replies of the first `lose` of
/// them: what a server does when the connection breaks after it acted. It remembers
/// how many creates each write call carried.
#[derive(Debug)]
struct LosesCreateReplies {
    inner: Arc<MemoryConnector>,
    lose: std::sync::atomic::AtomicUsize,
    creates_per_call: std::sync::Mutex<Vec<usize>>,
}

impl LosesCreateReplies {
    fn new(inner: Arc<MemoryConnector>, lose: usize) -> LosesCreateReplies {
        LosesCreateReplies {
            inner,
            lose: lose.into(),
            creates_per_call: std::sync::Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl Connector for LosesCreateReplies {
    fn capabilities(&self) -> tandem_connector::Capabilities {
        self.inner.capabilities()
    }

    async fn check(&self) -> Result<(), tandem_connector::ConnectorError> {
        self.inner.check().await
    }

    fn new_id(&self, kind: EntityKind) -> Option<String> {
        self.inner.new_id(kind)
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&tandem_connector::Cursor>,
    ) -> Result<tandem_connector::Page, tandem_connector::ConnectorError> {
        self.inner.read(kind, cursor).await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<tandem_connector::WriteOp>,
    ) -> Result<Vec<tandem_connector::WriteOutcome>, tandem_connector::ConnectorError> {
        use std::sync::atomic::Ordering;
        let creates: Vec<bool> = ops
            .iter()
            .map(|op| matches!(op, tandem_connector::WriteOp::Create { .. }))
            .collect();
        let created = creates.iter().filter(|c| **c).count();
        if created > 0 {
            self.creates_per_call.lock().unwrap().push(created);
        }
        let mut outcomes = self.inner.write(kind, ops).await?;
        for (outcome, create) in outcomes.iter_mut().zip(creates) {
            let lost = create
                && (self.lose)
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if lost {
                *outcome = Err(tandem_connector::ConnectorError::transient(
                    "the connection broke before a complete reply",
                ));
            }
        }
        Ok(outcomes)
    }
}

/// Contact C9 asks for a customer (R5); the first sync makes it in the ERP, but the
/// reply is lost. The connectors that lose it, and the customer made.
async fn a_request_whose_create_reply_is_lost(
    w: &mut World,
) -> (HashMap<String, Arc<dyn Connector>>, tandem_model::Record) {
    // Nothing a match rule could find it by: only the create's own record says it.
    let asks = Fields::new()
        .with("name", "Newco")
        .with("city", "Brugge")
        .with("phone", "050")
        .with("business_relations", Value::list(vec!["CUST".into()]));
    w.crm.put(EntityKind::Contact, "C9", asks);
    let lossy = Arc::new(LosesCreateReplies::new(w.erp.clone(), 1));
    let mut connectors = w.connectors();
    connectors.insert("erp".into(), lossy);
    let first = sync_with(w, &connectors).await;
    assert_eq!(count(&first, "CUST").failed, 1, "{:?}", first.failures);
    let mut made = w.erp.all(EntityKind::Customer);
    assert_eq!(made.len(), 1, "made, although the reply was lost");
    (connectors, made.remove(0))
}

#[tokio::test]
async fn r18_a_create_whose_reply_was_lost_is_found_again_with_the_edit_made_since() {
    let mut w = world(false);
    let (connectors, made) = a_request_whose_create_reply_is_lost(&mut w).await;
    // Edited in the ERP before the next run: merged, not overwritten by `initial`.
    let id = made.id.clone();
    let mut fields = made.fields.clone();
    fields.set("city", Value::text("Oostende"));
    w.erp.put(EntityKind::Customer, &id, fields);

    let second = sync_with(&mut w, &connectors).await;
    assert_eq!(second.failed(), 0, "{:?}", second.failures);
    assert_eq!(
        w.erp.all(EntityKind::Customer).len(),
        1,
        "no second customer"
    );
    let link = w.state.links_of_accounts("CUST", &[&id]).unwrap();
    assert_eq!(link[0].contact_id, "C9");
    assert_eq!(
        text(&w.crm, EntityKind::Contact, "C9", "city").as_deref(),
        Some("Oostende"),
        "the edit made since reached the contact, not overwritten"
    );
    assert_eq!(sync_with(&mut w, &connectors).await.writes, 0);
}

/// A run planned range by range holds no whole plan: its report lists one range's
/// worth of hubs and of creates, says how many it left out, and counts every one.
#[tokio::test]
async fn a_run_in_ranges_reports_a_range_of_creates_and_hubs_and_counts_all() {
    let mut w = world(false);
    w.seed();
    let f = |name: &str| Fields::new().with("name", name);
    for (id, name) in [("K4", "Epsilon"), ("K5", "Zeta")] {
        w.erp.put(EntityKind::Customer, id, f(name));
    }
    let whole = w.plan().await;
    let connectors = w.connectors();
    let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
    engine.set_hubs_per_range(1);
    let report = engine.sync().await.unwrap();
    assert_eq!(report.counts, whole.counts);
    assert_eq!(count(&report, "CUST").created, 3);
    assert_eq!(report.plan.creates.len(), 1);
    assert_eq!(report.plan.creates_left_out, 2);
    assert_eq!(report.plan.hubs.len(), 1);
    assert_eq!(
        report.plan.hubs_left_out as usize,
        whole.plan.hubs.len() - 1
    );
    // Every create was carried out, listed or not.
    for name in ["Delta", "Epsilon", "Zeta"] {
        assert_eq!(contacts_named(&w, name), 1, "{name}");
    }
    let json = serde_json::to_value(&report.plan).unwrap();
    assert_eq!(json["creates_left_out"], 2);
    assert!(whole.plan.creates_left_out == 0 && whole.plan.creates.len() == 3);
}

async fn sync_with(w: &mut World, connectors: &HashMap<String, Arc<dyn Connector>>) -> RunReport {
    let mut engine =
        Engine::new(w.relations.clone(), connectors.clone(), w.state.as_mut()).unwrap();
    engine.sync().await.unwrap()
}

/// Was a bug (issue 17): an account left unlinked by an ambiguous match, edited where no
/// match rule looks, woke no matching, and was then matched against the few contacts in
/// play alone: it matched none of them and got a new contact (R6), a duplicate of the
/// two it is ambiguous with. A relation with nothing to match matches nothing (R4).
#[tokio::test]
async fn r4_an_ambiguous_account_edited_where_no_rule_looks_gets_no_contact() {
    let mut w = world(false);
    let f = |pairs: &[(&str, &str)]| pairs.iter().fold(Fields::new(), |f, (k, v)| f.with(k, *v));
    for (id, name) in [("C1", "Acme"), ("C2", "Acme Gent")] {
        let fields = f(&[("name", name), ("email", "office@acme.be")]);
        w.crm.put(EntityKind::Contact, id, fields);
    }
    let account = |city: &str| {
        f(&[
            ("name", "ACME"),
            ("email", "office@acme.be"),
            ("city", city),
        ])
    };
    w.erp.put(EntityKind::Customer, "K1", account("Gent"));
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").ambiguous, 1);
    w.sync().await;

    w.erp.put(EntityKind::Customer, "K1", account("Brugge"));
    let report = w.sync().await;
    assert_eq!(count(&report, "CUST").created, 0, "{report:#?}");
    assert_eq!(w.crm.all(EntityKind::Contact).len(), 2);
    assert_eq!(count(&report, "CUST").ambiguous, 1, "{report:#?}");
    assert!(w.state.links(Some("CUST")).unwrap().is_empty());
}

/// Was a bug (issue 17): a contact Tandem created was stored without its match keys,
/// so any edit of it made every relation it is not linked under read and match all its
/// unlinked records again (at 1M contacts, 1,000 edited rows took 18 s). It is stored
/// with the keys of the fields it was created with.
#[tokio::test]
async fn r4_an_edit_of_a_contact_tandem_created_that_leaves_its_match_keys_wakes_no_matching() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    w.sync().await;
    let links = w.state.links(Some("CUST")).unwrap();
    let created = links.iter().find(|l| l.account_id == "K3").unwrap();
    let created = created.contact_id.clone();
    let mut fields = w.crm.get(EntityKind::Contact, &created).unwrap().fields;
    fields.set("phone", Value::text("+32 9 456"));
    w.crm.put(EntityKind::Contact, &created, fields);
    let report = w.sync().await;
    assert_eq!(contacts_changed_and_in_play(&report), (1, 1));
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K3", "phone").as_deref(),
        Some("+32 9 456")
    );
}

/// Was a bug (issue 17): one edit of a contact that matters to no match rule made
/// every relation the contact is not linked under read and match all its unlinked
/// records again. The match keys stored with each record's hash (R4) tell such an
/// edit from one that can pair the record anew, which still does.
#[tokio::test]
async fn r4_an_edit_that_leaves_the_match_keys_wakes_no_matching_one_that_changes_them_does() {
    edits_wake_matching_only_when_their_match_keys_change(false).await;
}

/// The same through change-reading connectors, whose changed records' stored keys are
/// looked up with their hashes as the changes are read.
#[tokio::test]
async fn r4_a_change_read_that_leaves_the_match_keys_wakes_no_matching_one_that_changes_them_does()
{
    edits_wake_matching_only_when_their_match_keys_change(true).await;
}

async fn edits_wake_matching_only_when_their_match_keys_change(incremental: bool) {
    let mut w = world(incremental);
    w.seed();
    let f = |pairs: &[(&str, &str)]| pairs.iter().fold(Fields::new(), |f, (k, v)| f.with(k, *v));
    w.erp.put(
        EntityKind::Vendor,
        "V2",
        f(&[("name", "Zeta"), ("email", "z@zeta.be")]),
    );
    w.sync().await;
    // C2 is linked under CUST only, C3 under nothing, V2 to nobody.
    assert_eq!(count(&w.sync().await, "VEND").linked, 0);

    // A phone number is no match key: only the edited contact is in play.
    let mut c2 = w.crm.get(EntityKind::Contact, "C2").unwrap().fields;
    c2.set("phone", Value::text("+32 9 123"));
    w.crm.put(EntityKind::Contact, "C2", c2);
    let report = w.sync().await;
    assert_eq!(contacts_changed_and_in_play(&report), (1, 1));
    assert_eq!(count(&report, "VEND").linked, 0);
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K2", "phone").as_deref(),
        Some("+32 9 123")
    );

    // An e-mail is one: the contact is matched again, and pairs with the vendor.
    let mut c3 = w.crm.get(EntityKind::Contact, "C3").unwrap().fields;
    c3.set("email", Value::text("z@zeta.be"));
    w.crm.put(EntityKind::Contact, "C3", c3);
    let report = w.sync().await;
    assert_eq!(count(&report, "VEND").linked, 1, "{:?}", report.counts);
    let vend = w.state.links(Some("VEND")).unwrap();
    assert!(
        vend.iter()
            .any(|l| l.contact_id == "C3" && l.account_id == "V2"),
        "{vend:?}"
    );
}

/// Was a bug (issue 17): a contact Tandem wrote without having read it (an account's
/// edit carried to it in a run that did not read it) was marked to be looked at again
/// as if it were new, so the next run woke every relation it is not linked under and
/// read and matched all their unlinked records (at 1M, 11.6 s after 1,000 edited rows).
/// It is marked as written unread: compared anew when next read, matched only if its
/// match keys changed (R4).
#[tokio::test]
async fn r4_a_contact_written_unread_is_looked_at_again_without_waking_matching() {
    let mut w = world(false);
    w.seed();
    w.sync().await;
    w.sync().await;
    let edit_k2 = |w: &World, city: &str| {
        let mut k2 = w.erp.get(EntityKind::Customer, "K2").unwrap().fields;
        k2.set("city", Value::text(city));
        w.erp.put(EntityKind::Customer, "K2", k2);
    };
    edit_k2(&w, "Gent");
    w.sync().await;
    assert_eq!(
        text(&w.crm, EntityKind::Contact, "C2", "city").as_deref(),
        Some("Gent")
    );
    let report = w.sync().await;
    assert_eq!(contacts_changed_and_in_play(&report), (1, 1));

    // Written unread, then put back to exactly what it held before: still an edit (R14).
    let before = w.crm.get(EntityKind::Contact, "C2").unwrap().fields;
    edit_k2(&w, "Brugge");
    w.sync().await;
    assert_eq!(
        text(&w.crm, EntityKind::Contact, "C2", "city").as_deref(),
        Some("Brugge")
    );
    w.crm.put(EntityKind::Contact, "C2", before);
    w.sync().await;
    assert_eq!(
        text(&w.erp, EntityKind::Customer, "K2", "city").as_deref(),
        Some("Gent")
    );
}

/// Was a bug: an unlinked account whose e-mail is edited to an unchanged contact's,
/// both read through change-reading connectors. The contact was not among the changes,
/// and matched against the changes alone the account matched nothing: the link was
/// missed (and a relation that creates contacts would have made a duplicate, R6).
/// Matching reads every unlinked record of both sides (R4).
#[tokio::test]
async fn r4_an_account_edited_to_match_an_unchanged_contact_of_a_change_reading_crm_links_to_it() {
    let mut w = world(true);
    let f = |pairs: &[(&str, &str)]| pairs.iter().fold(Fields::new(), |f, (k, v)| f.with(k, *v));
    w.crm.put(
        EntityKind::Contact,
        "C1",
        f(&[("name", "Acme"), ("email", "office@acme.be")]),
    );
    w.erp.put(
        EntityKind::Vendor,
        "V1",
        f(&[("name", "Other"), ("email", "info@other.be")]),
    );
    w.sync().await;
    w.sync().await;
    assert!(w.state.links(Some("VEND")).unwrap().is_empty());

    w.erp.put(
        EntityKind::Vendor,
        "V1",
        f(&[("name", "Other"), ("email", "office@acme.be")]),
    );
    let report = w.sync().await;
    assert_eq!(count(&report, "VEND").linked, 1, "{report:#?}");
    assert_eq!(w.crm.all(EntityKind::Contact).len(), 1);
}

/// `n` contacts and `n` customers that match by VAT number, each customer with a phone
/// its contact lacks: `n` hubs, each with a write.
fn matching_pairs(w: &World, n: usize) {
    for i in 0..n {
        let vat = format!("BE{i:010}");
        let contact = Fields::new()
            .with("name", format!("Company {i}").as_str())
            .with("vat_registration_no", vat.as_str());
        w.crm.put(EntityKind::Contact, &format!("C{i:05}"), contact);
        let customer = Fields::new()
            .with("name", format!("Company {i}").as_str())
            .with("vat_registration_no", vat.as_str())
            .with("phone", format!("+32 2 {i:06}").as_str());
        w.erp
            .put(EntityKind::Customer, &format!("K{i:05}"), customer);
    }
}

/// `[sync] memory_budget`: with no room left over what the run holds once matched,
/// the hubs go in ranges of the smallest size; with room for all, at once. Either
/// way the systems end as a run made whole leaves them.
#[tokio::test]
async fn a_memory_budget_plans_the_hubs_in_the_ranges_it_leaves_room_for() {
    use tandem_engine::budget::{BYTES_BESIDE_HUBS, BYTES_PER_HUB, MIN_HUBS_PER_RANGE};
    const MIB: u64 = 1 << 20;
    let hubs = 2 * MIN_HUBS_PER_RANGE + MIN_HUBS_PER_RANGE / 2;
    let mut whole = world(false);
    matching_pairs(&whole, hubs);
    let expected = whole.sync().await;
    assert_eq!(expected.plan.hubs.len(), hubs);
    // Held: 100 MiB, from a budget of 100 MiB (ranges of the smallest size), then
    // of 100 MiB, what a run holds beside its hubs and room for every hub.
    for (budget, per_range) in [
        (100 * MIB, MIN_HUBS_PER_RANGE),
        (
            100 * MIB + BYTES_BESIDE_HUBS + hubs as u64 * BYTES_PER_HUB,
            hubs,
        ),
    ] {
        let mut w = world(false);
        matching_pairs(&w, hubs);
        let connectors = w.connectors();
        let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
        let held = || Some(100 * MIB);
        engine.set_memory_budget(tandem_engine::MemoryBudget::new(budget).measured_by(held));
        let report = engine.sync().await.unwrap();
        assert_eq!(report.plan.hubs.len(), per_range, "budget {budget}");
        assert_eq!(report.plan.hubs_left_out as usize, hubs - per_range);
        assert_eq!(report.counts, expected.counts);
        for kind in [EntityKind::Contact, EntityKind::Customer] {
            let connector = if kind == EntityKind::Contact {
                &w.crm
            } else {
                &w.erp
            };
            let twin = if kind == EntityKind::Contact {
                &whole.crm
            } else {
                &whole.erp
            };
            assert_eq!(connector.all(kind), twin.all(kind), "{kind}");
        }
    }
}

/// A sync with a memory budget tells the allocator where it is: the records read
/// (the head is planned next), then the head planned, before it measures what the
/// process holds, so that memory kept for reuse is given back before it is measured.
#[tokio::test]
async fn a_memory_budget_tells_the_allocator_its_steps_before_it_measures() {
    use std::sync::Mutex;
    use tandem_engine::MemoryStep;
    /// Each step told, and whether the process's memory was measured before it.
    static TOLD: Mutex<Vec<(MemoryStep, bool)>> = Mutex::new(Vec::new());
    static MEASURED: Mutex<bool> = Mutex::new(false);
    let mut w = world(false);
    matching_pairs(&w, 30);
    let connectors = w.connectors();
    let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
    let budget = tandem_engine::MemoryBudget::new(1 << 30)
        .measured_by(|| {
            *MEASURED.lock().unwrap() = true;
            Some(1 << 20)
        })
        .telling(|step| {
            let measured = *MEASURED.lock().unwrap();
            TOLD.lock().unwrap().push((step, measured));
        });
    engine.set_memory_budget(budget);
    let report = engine.sync().await.unwrap();
    assert_eq!(report.plan.hubs.len(), 30);
    assert_eq!(
        *TOLD.lock().unwrap(),
        [(MemoryStep::Planning, false), (MemoryStep::Ranges, false)]
    );
    assert!(*MEASURED.lock().unwrap(), "the budget never measured");
}

/// A sync whose records pass their share of its memory budget keeps them in an
/// unnamed file in its spill folder, mapped into memory: the systems end as without a
/// budget, and a folder it cannot write to stops the run before anything is written,
/// naming the folder and the setting. Records far under the share stay on the heap:
/// the folder is not touched.
#[tokio::test]
async fn a_memory_budget_keeps_the_records_read_in_the_spill_folder() {
    let hubs = 300;
    let mut whole = world(false);
    matching_pairs(&whole, hubs);
    let expected = whole.sync().await;
    let folder = tempfile::tempdir().unwrap();
    let missing = folder.path().join("missing");
    let (small, large) = (30 << 10, 1 << 30);
    for (budget, spill_folder, works) in [
        (large, missing.clone(), true),
        (small, missing.clone(), false),
        (small, folder.path().to_owned(), true),
    ] {
        let mut w = world(false);
        matching_pairs(&w, hubs);
        let before = (
            w.crm.all(EntityKind::Contact),
            w.erp.all(EntityKind::Customer),
        );
        let connectors = w.connectors();
        let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
        engine.set_memory_budget(tandem_engine::MemoryBudget::new(budget));
        engine.set_spill_folder(spill_folder);
        match engine.sync().await {
            Ok(report) => {
                assert!(works);
                assert_eq!(report.counts, expected.counts);
                assert_eq!(report.failed(), 0);
                for kind in [EntityKind::Contact, EntityKind::Customer] {
                    let (connector, twin) = match kind {
                        EntityKind::Contact => (&w.crm, &whole.crm),
                        _ => (&w.erp, &whole.erp),
                    };
                    assert_eq!(connector.all(kind), twin.all(kind), "{kind}");
                }
            }
            Err(e) => {
                assert!(!works, "{e}");
                let text = e.to_string();
                assert!(text.contains(&missing.display().to_string()), "{text}");
                assert!(text.contains("[sync] spill_folder"), "{text}");
                let after = (
                    w.crm.all(EntityKind::Contact),
                    w.erp.all(EntityKind::Customer),
                );
                assert_eq!(after, before, "nothing written");
            }
        }
    }
    // The file has no name: nothing is left in the folder.
    assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 0);
}

/// In a run in ranges the creates go a range's hubs per call, so that the create step
/// holds no more than a range does (a memory budget holds through it); a run made
/// whole sends as many as the connector takes (the memory connector, 500). Either way
/// every account gets its one contact (R6).
#[tokio::test]
async fn creates_go_a_range_at_a_time_in_a_run_in_ranges() {
    const PER_RANGE: usize = 200;
    let (hubs, lone) = (2 * PER_RANGE + 10, 2 * PER_RANGE + PER_RANGE / 2);
    for per_range in [PER_RANGE, usize::MAX] {
        let mut w = world(false);
        matching_pairs(&w, hubs);
        for i in 0..lone {
            let customer = Fields::new().with("name", format!("Lone {i}").as_str());
            w.erp
                .put(EntityKind::Customer, &format!("L{i:05}"), customer);
        }
        let crm = Arc::new(LosesCreateReplies::new(w.crm.clone(), 0));
        let mut connectors = w.connectors();
        connectors.insert("crm".into(), crm.clone());
        let mut engine = Engine::new(w.relations.clone(), connectors, w.state.as_mut()).unwrap();
        engine.set_hubs_per_range(per_range);
        let report = engine.sync().await.unwrap();
        assert_eq!(report.failed(), 0);
        let calls = crm.creates_per_call.lock().unwrap().clone();
        let expected = match per_range {
            PER_RANGE => vec![PER_RANGE, PER_RANGE, PER_RANGE / 2],
            _ => vec![lone],
        };
        assert_eq!(calls, expected, "ranges of {per_range}");
        assert_eq!(w.crm.all(EntityKind::Contact).len(), hubs + lone);
        assert_eq!(w.state.links(Some("CUST")).unwrap().len(), hubs + lone);
    }
}

/// R18 with ids the engine chooses, on the account side: a contact asks for a customer
/// (R5), the ERP makes it but the reply is lost, and the user edits every value of it
/// before the next run. Found by the values sent it would not be (a second customer);
/// written down with the id it was sent with, it is found by that id and linked.
#[tokio::test]
async fn r18_an_account_created_under_a_chosen_id_is_found_by_it_however_edited() {
    for incremental in [false, true] {
        let mut w = world(incremental);
        w.erp = Arc::new(
            MemoryConnector::new(&[EntityKind::Customer, EntityKind::Vendor], incremental)
                .with_id_prefix("K")
                .with_chosen_ids(),
        );
        let (connectors, made) = a_request_whose_create_reply_is_lost(&mut w).await;
        let id = made.id.clone();
        assert_eq!(id, "K-1", "the id chosen");
        let edited = Fields::new()
            .with("name", "Newco Holding")
            .with("city", "Oostende")
            .with("phone", "059");
        w.erp.put(EntityKind::Customer, &id, edited);

        let second = sync_with(&mut w, &connectors).await;
        assert_eq!(second.failed(), 0, "{:?}", second.failures);
        let context = format!("incremental: {incremental}");
        assert_eq!(
            w.erp.all(EntityKind::Customer).len(),
            1,
            "{context}: no second customer"
        );
        let link = w.state.links_of_accounts("CUST", &[&id]).unwrap();
        assert_eq!(link.len(), 1, "{context}");
        assert_eq!(link[0].contact_id, "C9", "{context}");
        assert_eq!(
            text(&w.crm, EntityKind::Contact, "C9", "city").as_deref(),
            Some("Oostende"),
            "{context}: the edit made since reached the contact"
        );
        assert_eq!(sync_with(&mut w, &connectors).await.writes, 0, "{context}");
    }
}
