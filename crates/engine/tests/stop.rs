//! What `tandem run` asks of the engine: a run that stops at a safe point on request,
//! and a plan that reads only some connectors (a poll).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tandem_connector::memory::MemoryConnector;
use tandem_connector::{
    Capabilities, Connector, ConnectorError, Cursor, Page, WriteOp, WriteOutcome,
};
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
        let crm = self.crm.clone();
        self.engine_with_crm(crm)
    }

    /// An engine whose contacts connector is `crm`.
    fn engine_with_crm(&mut self, crm: Arc<dyn Connector>) -> Engine<'_> {
        let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
        connectors.insert("crm".into(), crm);
        connectors.insert("erp".into(), self.erp.clone());
        Engine::new(self.relations.clone(), connectors, self.state.as_mut()).unwrap()
    }

    /// A sync in ranges of one hub, asked to stop once the contacts connector's `nth`
    /// write call is made: it stops.
    async fn stopped_in_ranges_at_crm_write(&mut self, nth: usize) {
        let stop = StopFlag::new();
        let crm = Arc::new(StopAtWrite {
            inner: self.crm.clone(),
            stop: stop.clone(),
            nth,
            calls: AtomicUsize::new(0),
        });
        let mut engine = self.engine_with_crm(crm);
        engine.set_hubs_per_range(1);
        engine.set_stop_flag(stop);
        assert!(matches!(engine.sync().await, Err(EngineError::Stopped)));
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

/// A connector that asks the run to stop once its `nth` write call is made.
#[derive(Debug)]
struct StopAtWrite {
    inner: Arc<MemoryConnector>,
    stop: StopFlag,
    nth: usize,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Connector for StopAtWrite {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        self.inner.read(kind, cursor).await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let written = self.inner.write(kind, ops).await;
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            self.stop.stop();
        }
        written
    }
}

/// In ranges of one hub, a range's links are stored while the next range's updates go
/// out. A stop asked for during range 2's updates: range 1 is stored, its intents
/// cleared; ranges 2 and 3 keep theirs (range 3's stored ahead, while range 2's
/// updates went out), and the next run finishes both (R18).
#[tokio::test]
async fn r18_a_stop_while_a_range_is_sent_stores_the_range_before_and_keeps_the_intents_after() {
    let mut w = world();
    w.linked().await;
    w.crm
        .put(EntityKind::Contact, "C3", company("Gamma", "BE03", "+32 3"));
    w.erp.put(
        EntityKind::Customer,
        "K3",
        company("Gamma", "BE03", "+32 3"),
    );
    w.engine().sync().await.unwrap();
    for (id, vat, name) in [
        ("K1", "BE01", "Acme"),
        ("K2", "BE02", "Beta"),
        ("K3", "BE03", "Gamma"),
    ] {
        w.erp
            .put(EntityKind::Customer, id, company(name, vat, "+32 9"));
    }
    w.stopped_in_ranges_at_crm_write(2).await;
    let phones = |crm: &MemoryConnector| -> Vec<Option<Value>> {
        let of = |id| phone(crm, EntityKind::Contact, id);
        ["C1", "C2", "C3"].into_iter().map(of).collect()
    };
    let (new, old) = (Some(Value::from("+32 9")), Some(Value::from("+32 3")));
    assert_eq!(
        phones(&w.crm),
        [new.clone(), new.clone(), old],
        "ranges 1 and 2 sent"
    );
    let intents: Vec<String> = (w.state.links_with_intent().unwrap().into_iter())
        .map(|l| l.contact_id)
        .collect();
    assert_eq!(
        intents,
        ["C2", "C3"],
        "range 1's intents cleared, not the others'"
    );

    w.engine().sync().await.unwrap();
    assert_eq!(phones(&w.crm), [new.clone(), new.clone(), new]);
    assert!(w.state.links_with_intent().unwrap().is_empty());
    assert_eq!(w.engine().sync().await.unwrap().writes, 0);
}

/// In ranges, the first range is planned and its intents stored while the first
/// creates go out, as a plan made whole stores its hubs' intents (R18). A stop asked
/// for during that create: the new contact is linked, range 1 holds its intents and
/// no update went out; the next run finishes the work.
#[tokio::test]
async fn r18_a_run_in_ranges_stores_its_first_range_while_its_creates_go_out() {
    let mut w = world();
    w.linked().await;
    for (id, vat, name) in [("K1", "BE01", "Acme"), ("K2", "BE02", "Beta")] {
        w.erp
            .put(EntityKind::Customer, id, company(name, vat, "+32 9"));
    }
    w.erp.put(
        EntityKind::Customer,
        "K4",
        company("Delta", "BE04", "+32 4"),
    );
    w.stopped_in_ranges_at_crm_write(1).await;
    let phones = |crm: &MemoryConnector| -> Vec<Option<Value>> {
        let of = |id| phone(crm, EntityKind::Contact, id);
        ["C1", "C2"].into_iter().map(of).collect()
    };
    let old = [Some(Value::from("+32 1")), Some(Value::from("+32 2"))];
    assert_eq!(phones(&w.crm), old, "no update sent");
    assert_eq!(w.crm.all(EntityKind::Contact).len(), 3, "the new contact");
    let intents: Vec<String> = (w.state.links_with_intent().unwrap().into_iter())
        .map(|l| l.contact_id)
        .collect();
    assert_eq!(intents, ["C1"], "range 1 stored while the create went out");

    w.engine().sync().await.unwrap();
    let new = Some(Value::from("+32 9"));
    assert_eq!(phones(&w.crm), [new.clone(), new]);
    assert_eq!(w.crm.all(EntityKind::Contact).len(), 3, "created once");
    assert!(w.state.links_with_intent().unwrap().is_empty());
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
