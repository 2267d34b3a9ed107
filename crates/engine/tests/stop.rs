//! What `tandem run` asks of the engine: a run that stops at a safe point on request,
//! and a plan that reads only some connectors (a poll).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tandem_connector::Connector;
use tandem_connector::memory::MemoryConnector;
use tandem_engine::{
    ContactsConfig, Engine, EngineError, MatchTier, RelationConfig, Relations, StopFlag, SyncConfig,
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

fn world() -> World {
    let state_place = TestState::new();
    let state = state_place.open(LockMode::Exclusive);
    let relation = RelationConfig {
        match_tiers: vec![MatchTier::Fields(vec!["vat_registration_no".into()])],
        create_contacts: true,
        ..RelationConfig::new(EntityKind::Customer, "erp")
    };
    let contacts = ContactsConfig {
        connector: "crm".into(),
        preserve: None,
    };
    let config =
        SyncConfig::new(contacts, BTreeMap::from([("CUST".to_owned(), relation)])).unwrap();
    World {
        crm: Arc::new(MemoryConnector::new(&[EntityKind::Contact], true).with_id_prefix("C")),
        erp: Arc::new(MemoryConnector::new(&[EntityKind::Customer], true).with_id_prefix("K")),
        relations: Relations::from_config(&config),
        state,
        _state_place: state_place,
    }
}

fn company(name: &str, vat: &str, phone: &str) -> Fields {
    Fields::new()
        .with("contact_type", "company")
        .with("name", name)
        .with("vat_registration_no", vat)
        .with("phone", phone)
}

fn phone(connector: &MemoryConnector, kind: EntityKind, id: &str) -> Option<Value> {
    connector.get(kind, id)?.fields.get("phone").cloned()
}

impl World {
    fn engine(&mut self) -> Engine<'_> {
        let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
        connectors.insert("crm".into(), self.crm.clone());
        connectors.insert("erp".into(), self.erp.clone());
        Engine::new(self.relations.clone(), connectors, self.state.as_mut()).unwrap()
    }

    /// Two linked pairs and one customer without a contact.
    async fn linked(&mut self) {
        self.crm
            .put(EntityKind::Contact, "C1", company("Acme", "BE01", "+32 1"));
        self.crm
            .put(EntityKind::Contact, "C2", company("Beta", "BE02", "+32 2"));
        self.erp
            .put(EntityKind::Customer, "K1", company("Acme", "BE01", "+32 1"));
        self.erp
            .put(EntityKind::Customer, "K2", company("Beta", "BE02", "+32 2"));
        self.engine().sync().await.unwrap();
    }
}

#[tokio::test]
async fn a_stop_asked_for_before_the_writes_writes_nothing_and_the_next_run_does_the_work() {
    let mut w = world();
    w.linked().await;
    w.erp
        .put(EntityKind::Customer, "K1", company("Acme", "BE01", "+32 9"));
    w.erp.put(
        EntityKind::Customer,
        "K3",
        company("Gamma", "BE03", "+32 3"),
    );
    let stop = StopFlag::new();
    stop.stop();
    let mut engine = w.engine();
    engine.set_stop_flag(stop);
    assert!(matches!(engine.sync().await, Err(EngineError::Stopped)));
    drop(engine);
    assert_eq!(
        phone(&w.crm, EntityKind::Contact, "C1"),
        Some(Value::from("+32 1"))
    );
    assert_eq!(
        w.crm.all(EntityKind::Contact).len(),
        2,
        "no contact created"
    );
    let runs = w.state.runs(1).unwrap();
    assert_eq!(runs[0].status, "stopped");

    let report = w.engine().sync().await.unwrap();
    assert_eq!(report.writes, 2, "the phone and the new contact");
    assert_eq!(
        phone(&w.crm, EntityKind::Contact, "C1"),
        Some(Value::from("+32 9"))
    );
    assert_eq!(w.crm.all(EntityKind::Contact).len(), 3);
    assert_eq!(w.engine().sync().await.unwrap().writes, 0);
}

#[tokio::test]
async fn a_plan_limited_to_one_connector_reads_only_its_changes() {
    let mut w = world();
    w.linked().await;
    w.crm
        .put(EntityKind::Contact, "C2", company("Beta", "BE02", "+32 7"));
    w.erp
        .put(EntityKind::Customer, "K1", company("Acme", "BE01", "+32 8"));

    let mut engine = w.engine();
    engine.set_read_connectors(Some(BTreeSet::from(["erp".to_owned()])));
    let report = engine.plan().await.unwrap();
    let read: Vec<(&str, u64, bool)> = (report.read.iter())
        .map(|r| (r.connector.as_str(), r.changed, r.skipped))
        .collect();
    assert_eq!(read, [("crm", 0, true), ("erp", 1, false)]);
    assert_eq!(report.writes, 1, "the customer's phone, to the contact");
    drop(engine);

    // A plan writes nothing: the sync after it reads both sides' changes.
    w.engine().sync().await.unwrap();
    assert_eq!(
        phone(&w.crm, EntityKind::Contact, "C1"),
        Some(Value::from("+32 8"))
    );
    assert_eq!(
        phone(&w.erp, EntityKind::Customer, "K2"),
        Some(Value::from("+32 7"))
    );
    assert_eq!(w.engine().sync().await.unwrap().writes, 0);
}
