//! A model-based test of the engine: random sequences of user edits, creates and
//! deletes on both sides, rejected writes and runs cut short at every failpoint,
//! followed by fault-free runs; then the invariants of DESIGN.md must hold (R2, R6, R7,
//! R9, R12, R14, R15, R17, R18, R19).
//!
//! The world: contacts in a CRM, customers (`CUST`, contacts created for them, R6) and
//! vendors (`VEND`, no creates) in an ERP, both in-memory connectors, either full
//! listings or change-reading (a parameter of the case), and a SQLite state in a
//! temporary folder (or a PostgreSQL database, under `TANDEM_TEST_STATE_URL`). A crash is a panic at a failpoint (`failpoint::arm_panic`); the
//! state is then dropped and opened again, as by a new process.
//!
//! The model keeps what the user did (every edit with its step) and what the state
//! said after every run, and checks at the end:
//! 1. every linked pair agrees on every shared field, unless a manual conflict is open
//!    for that field;
//! 2. one link per code on each side (R2); no contact is created twice for one account
//!    and no account is created at all (no contact asks for one); every contact the
//!    engine created belongs to an account (but for the known limits of R18 that
//!    ARCHITECTURE.md names, each excused where the model sees it happen);
//! 3. no edit is lost: a field of a pair edited on one side only since the pair's last
//!    clean run (no failure, no intent, not parked) ends with that value on both sides;
//!    edited on both sides, it ends with the policy's winner (`contact_wins`,
//!    `account_wins`), an open conflict (`manual`) or either value (`newest`, or a run
//!    cut short in between, after which R18 lets an edit made after the crash win);
//! 4. a further run writes nothing (R14).
//!
//! Also: every customer whose contact the test did not delete has a contact (R6), one
//! whose contact it deleted gets no new one (R12), and a contact lists exactly the
//! codes it holds (R9).
//!
//! A failing case prints its minimal steps and the trace of the runs; proptest keeps
//! its seed in `model.proptest-regressions`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use tandem_connector::Connector;
use tandem_connector::memory::MemoryConnector;
use tandem_engine::{
    ConflictPolicy, ContactsConfig, Engine, EngineError, MatchTier, Partition, RelationConfig,
    Relations, RetryTarget, RunReport, SyncConfig, failpoint,
};
use tandem_model::{EntityKind, Fields, Record, Value};
use tandem_state::testsupport::TestState;
use tandem_state::{Link, LockMode, StateStore};

/// The shared fields the test edits.
const FIELDS: [&str; 4] = ["phone", "email", "city", "name"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Contact,
    Customer,
    Vendor,
}

impl Side {
    fn kind(self) -> EntityKind {
        match self {
            Side::Contact => EntityKind::Contact,
            Side::Customer => EntityKind::Customer,
            Side::Vendor => EntityKind::Vendor,
        }
    }

    /// The prefix of ids the test gives; the connectors number their own creates
    /// `C<n>` and `K<n>`.
    fn prefix(self) -> &'static str {
        match self {
            Side::Contact => "uc",
            Side::Customer => "uk",
            Side::Vendor => "uv",
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Sets one of [`FIELDS`] of a record to a value never used before, or clears it.
    Edit {
        side: Side,
        pick: Index,
        field: usize,
        clear: bool,
    },
    /// A new record; `like` copies the VAT number (`true`) or e-mail of any record, so
    /// that it matches (or makes a match ambiguous).
    Create {
        side: Side,
        like: Option<(Index, bool)>,
    },
    Delete {
        side: Side,
        pick: Index,
    },
    /// The next `syncs` runs' writes to this record fail.
    Reject {
        side: Side,
        pick: Index,
        syncs: u8,
    },
    Sync,
    /// A run that panics the `nth` time it passes `failpoint::POINTS[point]`.
    Crash {
        point: usize,
        nth: usize,
    },
}

#[derive(Debug, Clone)]
struct Case {
    incremental: bool,
    cust: ConflictPolicy,
    vend: ConflictPolicy,
    /// Every run lets deletes through (`--allow-deletes`); otherwise the delete guard
    /// may refuse a run, which must then write nothing.
    allow_deletes: bool,
    setup: Vec<Step>,
    steps: Vec<Step>,
    /// Each sync is a round of this many partitions' runs, in an order that turns with
    /// the step (`tandem run --worker` with `[state] partitions`); 1: one whole run.
    partitions: u32,
    /// Hubs a run plans and carries out at a time (`[sync] hubs_per_range`).
    hubs_per_range: usize,
    /// Every run keeps the records it read in a file mapped into memory (a memory
    /// budget they pass: `[sync] memory_budget`, `spill.rs`).
    spill: bool,
    /// Both systems take the ids the engine chooses for what it creates
    /// (`Connector::new_id`): a create cut short is found again by its id.
    chosen_ids: bool,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![
        2 => Just(Side::Contact),
        2 => Just(Side::Customer),
        1 => Just(Side::Vendor),
    ]
}

fn create() -> impl Strategy<Value = Step> {
    (
        side(),
        proptest::option::weighted(0.4, (any::<Index>(), any::<bool>())),
    )
        .prop_map(|(side, like)| Step::Create { side, like })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (side(), any::<Index>(), 0..FIELDS.len(), proptest::bool::weighted(0.15))
            .prop_map(|(side, pick, field, clear)| Step::Edit { side, pick, field, clear }),
        2 => create(),
        1 => (side(), any::<Index>()).prop_map(|(side, pick)| Step::Delete { side, pick }),
        1 => (side(), any::<Index>(), 1..3u8)
            .prop_map(|(side, pick, syncs)| Step::Reject { side, pick, syncs }),
        3 => Just(Step::Sync),
        2 => (0..failpoint::POINTS.len(), 1..3usize)
            .prop_map(|(point, nth)| Step::Crash { point, nth }),
    ]
}

fn policy() -> impl Strategy<Value = ConflictPolicy> {
    prop_oneof![
        Just(ConflictPolicy::ContactWins),
        Just(ConflictPolicy::AccountWins),
        Just(ConflictPolicy::Newest),
        Just(ConflictPolicy::Manual),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        policy(),
        prop_oneof![
            Just(ConflictPolicy::ContactWins),
            Just(ConflictPolicy::Manual)
        ],
        any::<bool>(),
        proptest::collection::vec(create(), 4..10),
        proptest::collection::vec(step(), 1..30),
    )
        .prop_map(
            |(incremental, cust, vend, allow_deletes, setup, steps)| Case {
                incremental,
                cust,
                vend,
                allow_deletes,
                setup,
                steps,
                partitions: 1,
                hubs_per_range: usize::MAX,
                spill: false,
                chosen_ids: false,
            },
        )
}

/// A [`case`] whose systems take the ids the engine chooses for the records it creates.
fn chosen_ids_case() -> impl Strategy<Value = Case> {
    case().prop_map(|case| Case {
        chosen_ids: true,
        ..case
    })
}

/// A [`case`] whose runs keep the records they read in a file.
fn spilled_case() -> impl Strategy<Value = Case> {
    case().prop_map(|case| Case {
        spill: true,
        ..case
    })
}

/// A [`case`] whose runs plan and carry out one or two hubs at a time: every run of
/// more hubs goes range by range, a crash may cut it short between ranges.
fn ranged_case() -> impl Strategy<Value = Case> {
    (case(), 1..=2usize).prop_map(|(case, hubs_per_range)| Case {
        hubs_per_range,
        ..case
    })
}

/// A [`case`] whose syncs are rounds of two or three partitions' runs.
fn partitioned_case() -> impl Strategy<Value = Case> {
    (case(), 2..=3u32).prop_map(|(case, partitions)| Case { partitions, ..case })
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Stopped by the delete guard (R16).
    Refused,
    /// Panicked at a failpoint.
    Crashed,
}

#[derive(Debug, Clone)]
struct Snapshot {
    step: usize,
    outcome: Outcome,
    /// The links in the state after the run.
    links: Vec<Link>,
}

impl Snapshot {
    fn link(&self, code: &str, contact: &str) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| l.code == code && l.contact_id == contact)
    }
}

#[derive(Debug, Clone)]
struct Edit {
    step: usize,
    id: String,
    field: &'static str,
    value: Option<String>,
}

/// A contact the engine created (R6), with the customers it can stand for (their
/// shared fields equal the contact's when it was first seen).
#[derive(Debug, Clone)]
struct Created {
    step: usize,
    sources: Vec<String>,
    /// The shared fields it was created with.
    sent: Fields,
}

struct World {
    /// Partitions per sync ([`Case::partitions`]).
    partitions: u32,
    hubs_per_range: usize,
    /// [`Case::spill`].
    spill: bool,
    /// [`Case::chosen_ids`].
    chosen_ids: bool,
    crm: Arc<MemoryConnector>,
    erp: Arc<MemoryConnector>,
    relations: Relations,
    state: Option<Box<dyn StateStore>>,
    /// Where the state lives: reopened there after a crash.
    state_place: TestState,
    allow_deletes: bool,
    _dir: tempfile::TempDir,
    /// Makes every value and id unique.
    next: u64,
    step: usize,
    edits: Vec<Edit>,
    snapshots: Vec<Snapshot>,
    /// Records whose writes fail, with the runs left.
    rejected: BTreeMap<(EntityKind, String), u8>,
    /// Contacts the test deleted: step, and the customers they stood for.
    deleted_contacts: Vec<(usize, String, Vec<String>)>,
    /// Customers whose contact the test deleted while their stored hash was 0 (to be
    /// looked at again, as after every update Tandem makes) or their link had an
    /// intent or a failure (read again by the next run): engine bug 1.
    rechecked_when_deleted: BTreeSet<String>,
    /// Customers whose contact, created by a run cut short before linking it, the test
    /// deleted: engine bug 4.
    unlinked_creation_deleted: BTreeSet<String>,
    /// Contacts created by a run cut short before linking them, then edited by the test
    /// in every value that finds a create again (name, e-mail, VAT number, phone, city)
    /// while unlinked, where the connector assigns ids: nothing ties them to their
    /// create but their kind, as to a request (R5), so they read as requests and their
    /// customers get another contact: a known limit of R18 (ARCHITECTURE.md).
    unrecognisable: BTreeSet<String>,
    /// Contacts that held (or were created for) an account the test deleted.
    lost_customer: BTreeSet<String>,
    created: BTreeMap<String, Created>,
    /// Accounts any run reported as matching ambiguously (R4): they get no contact.
    ambiguous: BTreeSet<String>,
    /// Contacts the last run reported as perhaps made by a create cut short, which
    /// cannot be told from a request (R18): they wait, listing the code they were
    /// created with and holding no link, for an operator.
    waiting: BTreeSet<String>,
    trace: Vec<String>,
}

fn relation(kind: EntityKind, create_contacts: bool, conflict: ConflictPolicy) -> RelationConfig {
    RelationConfig {
        match_tiers: vec![
            MatchTier::Fields(vec!["vat_registration_no".into()]),
            MatchTier::Fields(vec!["email".into()]),
        ],
        create_contacts,
        conflict,
        ..RelationConfig::new(kind, "erp")
    }
}

fn temp_dir() -> tempfile::TempDir {
    // A state in memory-backed storage when there is some: 500 cases of many runs.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// Failpoint panics are the crashes the test asks for: not worth a backtrace each.
fn quiet_failpoint_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with("failpoint ") {
                default(info);
            }
        }));
    });
}

/// Failpoints are armed for the whole process: under `cargo test`, whose tests share
/// one, a test takes them alone so that no other test's run meets its crash.
fn failpoints_alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    quiet_failpoint_panics();
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

impl World {
    fn new(case: &Case) -> World {
        let dir = temp_dir();
        let state_place = TestState::or_sqlite("sqlite://state.db", dir.path());
        let state = state_place.open(LockMode::Exclusive);
        let mut relations = BTreeMap::new();
        relations.insert(
            "CUST".to_string(),
            relation(EntityKind::Customer, true, case.cust),
        );
        relations.insert(
            "VEND".to_string(),
            relation(EntityKind::Vendor, false, case.vend),
        );
        let config = SyncConfig::new(
            ContactsConfig {
                connector: "crm".into(),
                preserve: None,
            },
            relations,
        )
        .unwrap();
        let chosen = |connector: MemoryConnector| match case.chosen_ids {
            true => connector.with_chosen_ids(),
            false => connector,
        };
        World {
            crm: Arc::new(chosen(
                MemoryConnector::new(&[EntityKind::Contact], case.incremental)
                    .with_page_size(3)
                    .with_id_prefix("C"),
            )),
            erp: Arc::new(chosen(
                MemoryConnector::new(
                    &[EntityKind::Customer, EntityKind::Vendor],
                    case.incremental,
                )
                .with_page_size(2)
                .with_id_prefix("K"),
            )),
            relations: Relations::from_config(&config).with_partitions(case.partitions),
            state: Some(state),
            state_place,
            allow_deletes: case.allow_deletes,
            partitions: case.partitions,
            hubs_per_range: case.hubs_per_range,
            spill: case.spill,
            chosen_ids: case.chosen_ids,
            _dir: dir,
            next: 0,
            step: 0,
            edits: Vec::new(),
            snapshots: Vec::new(),
            rejected: BTreeMap::new(),
            deleted_contacts: Vec::new(),
            lost_customer: BTreeSet::new(),
            rechecked_when_deleted: BTreeSet::new(),
            unlinked_creation_deleted: BTreeSet::new(),
            unrecognisable: BTreeSet::new(),
            created: BTreeMap::new(),
            ambiguous: BTreeSet::new(),
            waiting: BTreeSet::new(),
            trace: Vec::new(),
        }
    }

    fn state(&self) -> &dyn StateStore {
        self.state.as_deref().unwrap()
    }

    fn connector(&self, kind: EntityKind) -> &MemoryConnector {
        if kind == EntityKind::Contact {
            &self.crm
        } else {
            &self.erp
        }
    }

    fn connectors(&self) -> HashMap<String, Arc<dyn Connector>> {
        let mut map: HashMap<String, Arc<dyn Connector>> = HashMap::new();
        map.insert("crm".into(), self.crm.clone());
        map.insert("erp".into(), self.erp.clone());
        map
    }

    fn unique(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn records(&self, side: Side) -> Vec<Record> {
        self.connector(side.kind()).all(side.kind())
    }

    fn pick(&self, side: Side, pick: &Index) -> Option<Record> {
        let records = self.records(side);
        (!records.is_empty()).then(|| records[pick.index(records.len())].clone())
    }

    fn apply(&mut self, step: &Step) -> Result<(), String> {
        self.step += 1;
        match step {
            Step::Edit {
                side,
                pick,
                field,
                clear,
            } => {
                let Some(record) = self.pick(*side, pick) else {
                    return Ok(());
                };
                let field = FIELDS[*field];
                if *clear && record.fields.get(field).is_none() {
                    return Ok(()); // nothing to clear: not an edit
                }
                let value = (!clear).then(|| format!("{field}-{}", self.unique()));
                let mut fields = record.fields.clone();
                match &value {
                    Some(v) => fields.set(field, Value::text(v.as_str())),
                    None => {
                        fields.remove(field);
                    }
                }
                self.note_unrecognisable(&record.id, &fields);
                self.connector(record.kind)
                    .put(record.kind, &record.id, fields);
                self.trace.push(format!(
                    "{}: edit {} {field} = {value:?}",
                    self.step, record.id
                ));
                self.edits.push(Edit {
                    step: self.step,
                    id: record.id,
                    field,
                    value,
                });
            }
            Step::Create { side, like } => {
                let n = self.unique();
                let id = format!("{}{n}", side.prefix());
                let mut fields = Fields::new()
                    .with("name", format!("name-{n}"))
                    .with("phone", format!("phone-{n}"));
                if n.is_multiple_of(2) {
                    fields.set("city", Value::text(format!("city-{n}")));
                }
                if !n.is_multiple_of(3) {
                    fields.set("email", Value::text(format!("e{n}@example.com")));
                }
                if n % 2 == 1 {
                    fields.set("vat_registration_no", Value::text(format!("BE{n}")));
                }
                if let Some((pick, vat)) = like {
                    let mut all = self.records(Side::Contact);
                    all.extend(self.records(Side::Customer));
                    all.extend(self.records(Side::Vendor));
                    if !all.is_empty() {
                        let source = &all[pick.index(all.len())];
                        let field = if *vat { "vat_registration_no" } else { "email" };
                        match source.fields.get(field) {
                            Some(v) => fields.set(field, v.clone()),
                            None => {
                                fields.remove(field);
                            }
                        }
                    }
                }
                if *side == Side::Contact {
                    fields.set("contact_type", Value::text("company"));
                }
                self.trace
                    .push(format!("{}: create {id} {fields:?}", self.step));
                self.connector(side.kind()).put(side.kind(), &id, fields);
            }
            Step::Delete { side, pick } => {
                let Some(record) = self.pick(*side, pick) else {
                    return Ok(());
                };
                if record.kind != EntityKind::Contact {
                    let code = if record.kind == EntityKind::Customer {
                        "CUST"
                    } else {
                        "VEND"
                    };
                    self.lost_customer.extend(
                        self.state()
                            .links_of_accounts(code, &[record.id.as_str()])
                            .unwrap()
                            .into_iter()
                            .map(|l| l.contact_id),
                    );
                    // A contact created for it by a run cut short before linking it.
                    let created_for: Vec<String> = self
                        .created
                        .iter()
                        .filter(|(_, c)| c.sources.contains(&record.id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    self.lost_customer.extend(created_for);
                }
                if record.kind == EntityKind::Contact {
                    let mut customers: Vec<String> = self
                        .state()
                        .links(Some("CUST"))
                        .unwrap()
                        .into_iter()
                        .filter(|l| l.contact_id == record.id)
                        .map(|l| l.account_id)
                        .collect();
                    if let Some(created) = self.created.get(&record.id) {
                        if customers.is_empty() {
                            self.unlinked_creation_deleted
                                .extend(created.sources.iter().cloned());
                        }
                        customers.extend(created.sources.iter().cloned());
                    }
                    let hashes = self
                        .state()
                        .hashes(&tandem_state::Scope::new("erp", EntityKind::Customer))
                        .unwrap();
                    let pending: BTreeSet<String> = self
                        .state()
                        .links(Some("CUST"))
                        .unwrap()
                        .into_iter()
                        .filter(|l| l.intent.is_some() || l.failure_count > 0)
                        .map(|l| l.account_id)
                        .collect();
                    for customer in &customers {
                        if hashes.get(customer.as_str()).is_some_and(|h| *h == 0)
                            || pending.contains(customer)
                        {
                            self.rechecked_when_deleted.insert(customer.clone());
                        }
                    }
                    self.deleted_contacts
                        .push((self.step, record.id.clone(), customers));
                }
                self.trace
                    .push(format!("{}: delete {}", self.step, record.id));
                self.connector(record.kind).remove(record.kind, &record.id);
            }
            Step::Reject { side, pick, syncs } => {
                let Some(record) = self.pick(*side, pick) else {
                    return Ok(());
                };
                self.trace.push(format!(
                    "{}: reject writes to {} for {syncs} runs",
                    self.step, record.id
                ));
                self.connector(record.kind).reject_writes_to(
                    record.kind,
                    &record.id,
                    Some("rejected by the model test"),
                );
                self.rejected.insert((record.kind, record.id), *syncs);
            }
            Step::Sync => {
                self.sync(None)?;
            }
            Step::Crash { point, nth } => {
                self.sync(Some((failpoint::POINTS[*point], *nth)))?;
            }
        }
        Ok(())
    }

    /// One run, cut short at `crash` if it gets there. Records what the state holds
    /// afterwards.
    fn sync(&mut self, crash: Option<(&str, usize)>) -> Result<Option<RunReport>, String> {
        let connectors = self.connectors();
        let relations = self.relations.clone();
        let allow = self.allow_deletes;
        let state = self.state.as_deref_mut().unwrap();
        let rt = runtime();
        if let Some((point, nth)) = crash {
            failpoint::arm_panic(point, nth);
        }
        let (count, turn) = (self.partitions, self.step as u32);
        let (per_range, spill) = (self.hubs_per_range, self.spill);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async {
                let mut round: Option<RunReport> = None;
                let mut refused = None;
                for i in 0..count {
                    let partition = Partition::new((i + turn) % count, count).unwrap();
                    let before = state.links(None).unwrap();
                    let mut engine =
                        Engine::new(relations.clone(), connectors.clone(), &mut *state).unwrap();
                    engine.set_allow_deletes(allow);
                    engine.set_partition(partition);
                    engine.set_hubs_per_range(per_range);
                    if spill {
                        // A budget of a byte: every record read goes to the file; its
                        // ranges are the smallest, 10,000 hubs, more than a case has.
                        engine.set_memory_budget(tandem_engine::MemoryBudget::new(1));
                    }
                    let report = match engine.sync().await {
                        // Each partition judges the deletes among the records it knows:
                        // one may be refused after another went on.
                        Err(e @ EngineError::TooManyDeletes { .. }) if count > 1 => {
                            if state.links(None).unwrap() != before {
                                return Ok(Err(format!(
                                    "a run of {partition:?} the delete guard refused changed the links"
                                )));
                            }
                            refused = Some(e);
                            continue;
                        }
                        report => report?,
                    };
                    round = Some(match round {
                        None => report,
                        Some(mut all) => {
                            all.ambiguous.extend(report.ambiguous);
                            all.failures.extend(report.failures);
                            all.writes += report.writes;
                            all
                        }
                    });
                }
                if let Some(refused) = refused {
                    return Err(refused);
                }
                Ok(Ok(round.expect("at least one partition")))
            })
        }));
        failpoint::disarm();
        drop(rt);
        let before = self.snapshots.last().map(|s| s.links.clone());
        let (outcome, report) = match result {
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                if !message.starts_with("failpoint ") {
                    return Err(format!("step {}: the run panicked: {message}", self.step));
                }
                // A new process: the state is opened again.
                self.state = None;
                let state = self
                    .state_place
                    .open_for(tandem_state::Access::Lock(LockMode::Exclusive))
                    .map_err(|e| format!("the state does not open after a crash: {e}"))?;
                self.state = Some(state);
                (Outcome::Crashed, None)
            }
            Ok(Ok(Err(broken))) => return Err(format!("step {}: {broken}", self.step)),
            Ok(Ok(Ok(report))) => (Outcome::Ok, Some(report)),
            Ok(Err(EngineError::TooManyDeletes { .. })) if !allow => (Outcome::Refused, None),
            Ok(Err(e)) => return Err(format!("step {}: the run failed: {e}", self.step)),
        };
        let mut links = self.state().links(None).unwrap();
        links.sort_by(|a, b| (&a.code, &a.contact_id).cmp(&(&b.code, &b.contact_id)));
        // A round of partitions checks each refused run of its own.
        let whole = self.partitions == 1;
        if whole && outcome == Outcome::Refused && before.as_ref().is_some_and(|b| *b != links) {
            return Err(format!(
                "step {}: a run the delete guard refused changed the links",
                self.step
            ));
        }
        self.trace.push(format!(
            "{}: sync{} -> {outcome:?}{}; links {:?}",
            self.step,
            crash
                .map(|(p, n)| format!(" crashing at {p}:{n}"))
                .unwrap_or_default(),
            report
                .as_ref()
                .map(|r| format!(
                    " ({} writes, failures {:?})",
                    r.writes,
                    r.failures
                        .iter()
                        .map(|f| (&f.code, &f.contact_id, &f.account_id, f.parked))
                        .collect::<Vec<_>>()
                ))
                .unwrap_or_default(),
            links
                .iter()
                .map(|l| format!(
                    "{}:{}-{}{}{}{}",
                    l.code,
                    l.contact_id,
                    l.account_id,
                    if l.failure_count > 0 { " failed" } else { "" },
                    if l.parked { " parked" } else { "" },
                    if l.intent.is_some() { " intent" } else { "" },
                ))
                .collect::<Vec<_>>()
        ));
        if let Some(report) = &report {
            for a in &report.ambiguous {
                self.ambiguous.extend(a.account_ids.iter().cloned());
            }
            let cut_short = (report.ambiguous.iter())
                .filter(|a| a.fields == ["a create cut short"])
                .flat_map(|a| a.contact_ids.iter().cloned());
            self.waiting = cut_short.collect();
        }
        self.snapshots.push(Snapshot {
            step: self.step,
            outcome,
            links,
        });
        self.observe_created();
        // Rejections last a given number of runs.
        let mut lifted = Vec::new();
        for (key, left) in &mut self.rejected {
            *left -= 1;
            if *left == 0 {
                lifted.push(key.clone());
            }
        }
        for key in lifted {
            self.connector(key.0).reject_writes_to(key.0, &key.1, None);
            self.rejected.remove(&key);
        }
        Ok(report)
    }

    /// Notes the contacts the engine created since the last look, and which customers
    /// they can stand for.
    fn observe_created(&mut self) {
        let shared: Vec<&str> = self.relations.relations[0]
            .shared
            .iter()
            .map(|f| f.as_str())
            .collect();
        let customers = self.erp.all(EntityKind::Customer);
        for contact in self.crm.all(EntityKind::Contact) {
            if contact.id.starts_with(Side::Contact.prefix())
                || self.created.contains_key(&contact.id)
            {
                continue;
            }
            let sources = customers
                .iter()
                .filter(|c| c.fields.project(&shared) == contact.fields.project(&shared))
                .map(|c| c.id.clone())
                .collect();
            self.created.insert(
                contact.id,
                Created {
                    step: self.step,
                    sources,
                    sent: contact.fields.project(&shared),
                },
            );
        }
    }

    /// Lifts every injected fault, retries parked work and runs until settled; then
    /// checks the invariants.
    fn finish(&mut self) -> Result<(), String> {
        for (kind, id) in std::mem::take(&mut self.rejected).into_keys() {
            self.connector(kind).reject_writes_to(kind, &id, None);
        }
        failpoint::disarm();
        let final_step = self.step + 1;
        self.step = final_step;
        tandem_engine::retry(
            self.state.as_deref_mut().unwrap(),
            &self.relations,
            &RetryTarget::All,
        )
        .unwrap();
        self.allow_deletes = true;
        for _ in 0..2 {
            let report = self.sync(None)?.expect("a run without faults reports");
            if !report.failures.is_empty() {
                return Err(format!(
                    "a run without faults failed: {:?}",
                    report.failures
                ));
            }
        }
        let mut errors = Vec::new();
        self.check(final_step, &mut errors);
        let further = self.sync(None)?.unwrap();
        if further.writes != 0 {
            errors.push(format!(
                "(4) a further run wrote {} times: {:#?}",
                further.writes, further.plan
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    fn check(&self, final_step: usize, errors: &mut Vec<String>) {
        let state = self.state();
        let links = state.links(None).unwrap();
        let open: BTreeSet<(String, String, String)> = state
            .conflicts(true)
            .unwrap()
            .into_iter()
            .map(|c| (c.code, c.contact_id, c.field))
            .collect();
        let ever_conflicted: BTreeSet<(String, String)> = state
            .conflicts(false)
            .unwrap()
            .into_iter()
            .map(|c| (c.contact_id, c.field))
            .collect();
        let contacts: BTreeMap<String, Record> = self
            .crm
            .all(EntityKind::Contact)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let account = |code: &str, id: &str| {
            let kind = if code == "CUST" {
                EntityKind::Customer
            } else {
                EntityKind::Vendor
            };
            self.erp.get(kind, id)
        };

        // (2) one link per code on each side, both records there.
        let mut by_contact = BTreeSet::new();
        let mut by_account = BTreeSet::new();
        for l in &links {
            if !by_contact.insert((l.code.clone(), l.contact_id.clone())) {
                errors.push(format!(
                    "(2) contact {} has two {} links",
                    l.contact_id, l.code
                ));
            }
            if !by_account.insert((l.code.clone(), l.account_id.clone())) {
                errors.push(format!("(2) account {} has two contacts", l.account_id));
            }
            if !contacts.contains_key(&l.contact_id) || account(&l.code, &l.account_id).is_none() {
                errors.push(format!("(2) a link to a record that is gone: {l:?}"));
            }
            if l.parked || l.failure_count > 0 || l.intent.is_some() {
                errors.push(format!(
                    "a link not settled after runs without faults: {l:?}"
                ));
            }
        }
        // The account asked for by a contact the engine could not tell from a request.
        let asked_by_unrecognisable = |code: &str, account: &str| {
            (links.iter()).any(|l| {
                l.code == code
                    && l.account_id == account
                    && self.unrecognisable.contains(&l.contact_id)
            })
        };
        for (kind, code) in [(EntityKind::Customer, "CUST"), (EntityKind::Vendor, "VEND")] {
            for r in self.erp.all(kind) {
                if !r.id.starts_with("u") && !asked_by_unrecognisable(code, &r.id) {
                    errors.push(format!("(2) an account nobody asked for: {r:?}"));
                }
            }
        }
        // (2) no two contacts created for one customer; every created contact stood
        // for one.
        let mut per_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, created) in &self.created {
            match created.sources.as_slice() {
                [] => errors.push(format!(
                    "(2) contact {id}, created at step {}, stands for no customer",
                    created.step
                )),
                [one] => per_source.entry(one).or_default().push(id),
                _ => {}
            }
        }
        for (source, created) in &per_source {
            if created.len() > 1 && !self.known_limit(source) {
                errors.push(format!(
                    "(2) customer {source} got {} contacts: {created:?}",
                    created.len()
                ));
            }
        }
        for (id, created) in &self.created {
            if contacts.contains_key(id)
                && !self.waiting.contains(id)
                && !links
                    .iter()
                    .any(|l| l.code == "CUST" && &l.contact_id == id)
                && created
                    .sources
                    .iter()
                    .any(|s| self.erp.get(EntityKind::Customer, s).is_some())
            {
                errors.push(format!(
                    "(2) contact {id} created for {:?}, which is still there, holds no CUST link",
                    created.sources
                ));
            }
        }

        // R6 and R12.
        for customer in self.erp.all(EntityKind::Customer) {
            let deleted: Vec<usize> = self
                .deleted_contacts
                .iter()
                .filter(|(_, _, customers)| customers.contains(&customer.id))
                .map(|(step, _, _)| *step)
                .collect();
            let linked = links
                .iter()
                .any(|l| l.code == "CUST" && l.account_id == customer.id);
            if deleted.is_empty() && !linked && !self.ambiguous.contains(&customer.id) {
                errors.push(format!("(R6) customer {} has no contact", customer.id));
            }
            if let Some(first) = deleted.iter().min()
                && !self.known_limit(&customer.id)
            {
                for (id, created) in &self.created {
                    if created.step > *first && created.sources == [customer.id.clone()] {
                        errors.push(format!(
                            "(R12) customer {} got contact {id} at step {} after the test \
                             deleted its contact at step {first}",
                            customer.id, created.step
                        ));
                    }
                }
            }
        }

        // R9: a contact lists exactly the codes it holds; one waiting lists its own.
        for contact in contacts.values().filter(|c| !self.waiting.contains(&c.id)) {
            for code in ["CUST", "VEND"] {
                let holds = links
                    .iter()
                    .any(|l| l.code == code && l.contact_id == contact.id);
                if tandem_engine::plan::lists_code(contact, code) != holds {
                    errors.push(format!(
                        "(R9) contact {} holds {code}: {holds}, lists it: {:?}",
                        contact.id,
                        contact.fields.get("business_relations")
                    ));
                }
            }
        }

        for l in &links {
            let (Some(contact), Some(acct)) =
                (contacts.get(&l.contact_id), account(&l.code, &l.account_id))
            else {
                continue;
            };
            let relation = self
                .relations
                .relations
                .iter()
                .find(|r| r.code == l.code)
                .unwrap();
            // (1) the pair agrees on every shared field but open conflicts.
            for field in &relation.shared {
                let field = field.as_str();
                if open.contains(&(l.code.clone(), l.contact_id.clone(), field.to_owned())) {
                    continue;
                }
                if contact.fields.get(field) != acct.fields.get(field) {
                    errors.push(format!(
                        "(1) {} {} / {} disagree on {field}: {:?} / {:?}",
                        l.code,
                        l.contact_id,
                        l.account_id,
                        contact.fields.get(field),
                        acct.fields.get(field)
                    ));
                }
            }
            // (3) no edit lost.
            self.check_edits(
                l,
                relation.conflict,
                contact,
                &acct,
                &ever_conflicted,
                &open,
                final_step,
                errors,
            );
        }
    }

    /// Notes a contact a run cut short created and did not link, left by the edit to
    /// `fields` holding no value it was created with that finds a create again
    /// ([`World::unrecognisable`]).
    fn note_unrecognisable(&mut self, id: &str, fields: &Fields) {
        // Chosen ids find a create however edited.
        let Some(created) = self.created.get(id).filter(|_| !self.chosen_ids) else {
            return;
        };
        let linked = (self.state().links(Some("CUST")).unwrap().iter()).any(|l| l.contact_id == id);
        const FINDING: [&str; 5] = ["name", "email", "vat_registration_no", "phone", "city"];
        let holds_one = FINDING.iter().any(|name| {
            created
                .sent
                .get(name)
                .is_some_and(|v| fields.get(name) == Some(v))
        });
        if !linked && !holds_one {
            self.unrecognisable.insert(id.to_owned());
        }
    }

    /// The known limit of R12 over R6 (see
    /// `r18_a_contact_deleted_after_a_crashed_create_is_made_once_again`): the customer's
    /// contact, created by a run cut short before linking it, was deleted by the test;
    /// the next run creates it once again. Left out of the R12 check.
    fn known_limit(&self, customer: &str) -> bool {
        self.unlinked_creation_deleted.contains(customer)
            || (self.unrecognisable.iter())
                .any(|c| self.created.get(c).is_some_and(|c| c.sources == [customer]))
    }

    #[allow(clippy::too_many_arguments)]
    fn check_edits(
        &self,
        link: &Link,
        policy: ConflictPolicy,
        contact: &Record,
        account: &Record,
        ever_conflicted: &BTreeSet<(String, String)>,
        open: &BTreeSet<(String, String, String)>,
        final_step: usize,
        errors: &mut Vec<String>,
    ) {
        let code = link.code.as_str();
        let c = link.contact_id.as_str();
        let a = link.account_id.as_str();
        let during: Vec<&Snapshot> = self
            .snapshots
            .iter()
            .filter(|s| s.step < final_step)
            .collect();
        // The link held since snapshot `start`.
        let start = during
            .iter()
            .rposition(|s| s.link(code, c).is_none_or(|l| l.account_id != a))
            .map_or(0, |i| i + 1);
        if start >= during.len() {
            return; // linked by the final runs: nothing to hold it to
        }
        // Its last clean run, or else the run that made it.
        let clean = |l: &Link| l.failure_count == 0 && !l.parked && l.intent.is_none();
        let clean_run = |i: &usize| {
            during[*i].outcome == Outcome::Ok && clean(during[*i].link(code, c).unwrap())
        };
        let window = (start..during.len()).rev().find(clean_run).unwrap_or(start);
        // The last run clean for the whole hub, this pair made or not: an edit to
        // another account whose pair was failing or parked reaches this pair only when
        // that pair goes through, maybe after this pair's window, and beats a later
        // edit of the contact where that pair's policy says so (an edit made before
        // this pair was linked, too).
        let hub_clean = |s: &Snapshot| {
            s.outcome == Outcome::Ok && s.links.iter().filter(|l| l.contact_id == c).all(clean)
        };
        let hub_since = (during.iter().rev())
            .find(|s| hub_clean(s))
            .map_or(0, |s| s.step);
        let since = during[window].step;
        let crashed_since = during[window + 1..]
            .iter()
            .any(|s| s.outcome == Outcome::Crashed);
        // Every record of the hub since then.
        let mut hub: BTreeSet<String> = BTreeSet::from([c.to_owned()]);
        for s in &during[window..] {
            hub.extend(
                s.links
                    .iter()
                    .filter(|l| l.contact_id == c)
                    .map(|l| l.account_id.clone()),
            );
        }
        for l in self.state().links(None).unwrap() {
            if l.contact_id == c {
                hub.insert(l.account_id);
            }
        }
        // Accounts that joined the hub after the window: a new link fills the
        // contact's empty fields from the account (R4: empty values never overwrite
        // filled ones), so a field cleared since then may be filled again.
        let joined = hub.iter().any(|id| {
            id != c
                && during[window]
                    .links
                    .iter()
                    .all(|l| l.contact_id != c || &l.account_id != id)
        });
        for field in FIELDS {
            if ever_conflicted.contains(&(c.to_owned(), field.to_owned())) {
                continue;
            }
            let edits: Vec<&Edit> = self
                .edits
                .iter()
                .filter(|e| e.step > since && e.field == field && hub.contains(&e.id))
                .collect();
            // The value both sides agreed on at the window: a side whose last edit put it
            // back before any later run was, for a sync that compares states, not edited
            // at all. (A later run may have written the other value since: not then.)
            let agreed: Option<String> = during[window]
                .link(code, c)
                .and_then(|l| l.baseline.get(field).map(|v| v.to_cell()))
                .filter(|v| !v.is_empty());
            let last = |id: &str| {
                let edit = edits.iter().rev().find(|e| e.id == id)?;
                let no_run_between = during[window + 1..]
                    .iter()
                    .all(|s| s.step > edit.step || s.outcome == Outcome::Refused);
                let net = edit.value.as_ref().filter(|v| !v.is_empty());
                (!no_run_between || net != agreed.as_ref()).then_some(&edit.value)
            };
            let (on_contact, on_account) = (last(c), last(a));
            let step_of = |id: &str| edits.iter().rev().find(|e| e.id == id).map(|e| e.step);
            // A run that failed on the pair between the two sides' edits: the first edit
            // may have reached the other side before the second was made, which is then
            // the last edit there (R18: a landed write is known), or it may not have.
            let failed_between = match (step_of(c), step_of(a)) {
                (Some(x), Some(y)) => during[window..].iter().any(|s| {
                    s.step > x.min(y)
                        && s.step < x.max(y)
                        && s.link(code, c)
                            .is_some_and(|l| l.failure_count > 0 || l.intent.is_some())
                }),
                _ => false,
            };
            let held_back = self.edits.iter().any(|e| {
                e.step > hub_since
                    && e.field == field
                    && e.id != c
                    && e.id != a
                    && hub.contains(&e.id)
            });
            if held_back || edits.iter().any(|e| e.id != c && e.id != a) {
                continue; // another account of the hub was edited too
            }
            // A side put back to what it held before a write a crash cut short (R18),
            // that write's only field: nothing tells it from a side the write never
            // reached, which then gets the value agreed. (With more fields, the others
            // show whether the write landed: a write lands whole.)
            let intent = during[window].link(code, c).and_then(|l| l.intent.as_ref());
            let put_back = |written: &[(tandem_model::FieldName, Value)], v: &Option<String>| {
                matches!(written, [(name, before)] if name.as_str() == field
                    && Some(before.to_cell()).filter(|b| !b.is_empty()) == *v)
            };
            let expected: Vec<&Option<String>> = match (on_contact, on_account) {
                (None, None) => continue,
                (Some(v), None) if intent.is_some_and(|i| put_back(&i.contact, v)) => {
                    vec![v, &agreed]
                }
                (None, Some(v)) if intent.is_some_and(|i| put_back(&i.account, v)) => {
                    vec![v, &agreed]
                }
                (Some(v), None) | (None, Some(v)) => vec![v],
                // The same edit on both sides is no conflict (R14).
                (Some(cv), Some(av)) if cv == av => vec![cv],
                (Some(cv), Some(av)) => {
                    if crashed_since || failed_between || policy == ConflictPolicy::Newest {
                        vec![cv, av]
                    } else {
                        match policy {
                            ConflictPolicy::ContactWins => vec![cv],
                            ConflictPolicy::AccountWins => vec![av],
                            _ => {
                                if !open.contains(&(
                                    code.to_owned(),
                                    c.to_owned(),
                                    field.to_owned(),
                                )) {
                                    errors.push(format!(
                                        "(3) {code} {c} / {a}: {field} edited on both sides \
                                         since step {since} ({cv:?} / {av:?}) under `manual` \
                                         without a conflict"
                                    ));
                                }
                                continue;
                            }
                        }
                    }
                }
            };
            if joined && expected.contains(&&None) {
                continue;
            }
            let text = |r: &Record| r.fields.get(field).map(|v| v.to_cell());
            for (side, record) in [("contact", contact), ("account", account)] {
                let held = text(record);
                if !expected.contains(&&held) {
                    errors.push(format!(
                        "(3) {code} {c} / {a}: {field} on the {side} is {held:?}, expected one \
                         of {expected:?} (edits since step {since}: {:?})",
                        edits
                            .iter()
                            .map(|e| (e.step, &e.id, &e.value))
                            .collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
}

fn run_case(case: &Case) -> Result<(), String> {
    let _alone = failpoints_alone();
    let mut world = World::new(case);
    let outcome = (|| {
        for step in case.setup.iter().chain(&case.steps) {
            world.apply(step)?;
        }
        world.finish()
    })();
    outcome.map_err(|e| format!("{e}\n--- trace ---\n{}", world.trace.join("\n")))
}

/// The model's proptest settings: `default_cases` unless `PROPTEST_CASES` says (for a
/// quick look or a long hunt); failing seeds kept beside this file.
fn model_config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default_cases),
        max_shrink_iters: 10_000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(model_config(500))]

    #[test]
    fn model(case in case()) {
        let outcome = run_case(&case);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

proptest! {
    #![proptest_config(model_config(150))]

    /// The model with every sync a round of partitions' runs (`tandem run --worker`):
    /// the same invariants hold as for one whole run. A round is two or three runs:
    /// fewer cases.
    #[test]
    fn model_partitions(case in partitioned_case()) {
        let outcome = run_case(&case);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }

    /// The model with every run's records read back from a file mapped into memory
    /// (past a memory budget): the same invariants hold as for records on the heap.
    #[test]
    fn model_spilled(case in spilled_case()) {
        let outcome = run_case(&case);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }

    /// The model with systems that take the ids the engine chooses for what it
    /// creates: a create cut short is found again by its id, however edited since.
    #[test]
    fn model_chosen_ids(case in chosen_ids_case()) {
        let outcome = run_case(&case);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }

    /// The model with every run planned and carried out one or two hubs at a time
    /// (`[sync] hubs_per_range`): the same invariants hold as for a run in one piece.
    #[test]
    fn model_ranges(case in ranged_case()) {
        let outcome = run_case(&case);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

// Engine bugs the model found, minimised by hand from its failing cases: each failed
// before its fix. One is a known limit and asserts what Tandem guarantees instead.

/// A world without faults for the reproductions, default delete guard.
fn plain(incremental: bool) -> World {
    World::new(&plain_case(incremental))
}

/// The case of [`plain`]: one whole run a sync.
fn plain_case(incremental: bool) -> Case {
    Case {
        incremental,
        cust: ConflictPolicy::ContactWins,
        vend: ConflictPolicy::ContactWins,
        allow_deletes: false,
        setup: Vec::new(),
        steps: Vec::new(),
        partitions: 1,
        hubs_per_range: usize::MAX,
        spill: false,
        chosen_ids: false,
    }
}

/// Three customers, synced once (each got a contact, R6), and uk1's contact.
async fn three_customers_synced(incremental: bool) -> (World, String) {
    let mut w = plain(incremental);
    for n in 1..=3 {
        w.erp.put(
            EntityKind::Customer,
            &format!("uk{n}"),
            fields(&[("name", &format!("Customer {n}"))]),
        );
    }
    plain_sync(&mut w).await.unwrap();
    let contact = w.state().links_of_accounts("CUST", &["uk1"]).unwrap()[0]
        .contact_id
        .clone();
    (w, contact)
}

async fn plain_sync(w: &mut World) -> Result<RunReport, EngineError> {
    let connectors = w.connectors();
    let mut engine = Engine::new(
        w.relations.clone(),
        connectors,
        w.state.as_deref_mut().unwrap(),
    )
    .unwrap();
    engine.sync().await
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs.iter().fold(Fields::new(), |f, (k, v)| f.with(k, *v))
}

/// Was a bug (R12 over R6). A customer whose contact the user deleted gets a new contact
/// when the customer was also edited before the run that sees the delete (any shared
/// field; the same with full listings when deletes are let through). Deleted and
/// edited in different runs, it gets none, as it should. Found by the model (seed in
/// `model.proptest-regressions`: create a customer, sync, delete its contact, clear the
/// customer's name, sync): "customer uk2 got 2 contacts".
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r12_a_customer_edited_while_its_contact_is_deleted_gets_no_new_contact() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            fields(&[("name", "Acme"), ("email", "a@x.be")]),
        );
        plain_sync(&mut w).await.unwrap();
        let contact = w.state().links(Some("CUST")).unwrap()[0].contact_id.clone();
        w.crm.remove(EntityKind::Contact, &contact);
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            fields(&[("name", "Acme 2"), ("email", "a@x.be")]),
        );
        // The only contact is gone: the full listing is empty, let it through (R16).
        let connectors = w.connectors();
        let mut engine = Engine::new(
            w.relations.clone(),
            connectors,
            w.state.as_deref_mut().unwrap(),
        )
        .unwrap();
        engine.set_allow_deletes(true);
        let report = engine.sync().await.unwrap();
        let contacts: Vec<String> = w
            .crm
            .all(EntityKind::Contact)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            contacts,
            Vec::<String>::new(),
            "incremental: {incremental}: R12 wins over R6 {:#?}",
            report.plan
        );
    }
}

/// Was a bug, the common case: no edit to the customer at all. Tandem's own update of
/// the customer (a phone edited on the contact) leaves the customer's stored hash at 0
/// ("look at it again"); when the user then deletes the contact, the customer is in
/// play and gets a new contact.
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r12_a_customer_tandem_just_updated_gets_no_new_contact() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let (mut w, contact) = three_customers_synced(incremental).await;
        let mut edited = w.crm.get(EntityKind::Contact, &contact).unwrap().fields;
        edited.set("phone", Value::text("123"));
        w.crm.put(EntityKind::Contact, &contact, edited);
        assert_eq!(plain_sync(&mut w).await.unwrap().writes, 1);
        w.crm.remove(EntityKind::Contact, &contact);
        let report = plain_sync(&mut w).await.unwrap();
        assert_eq!(
            w.crm.all(EntityKind::Contact).len(),
            2,
            "incremental: {incremental}: R12 wins over R6 {:#?}",
            report.plan
        );
    }
}

/// Was a bug (R13, R9, R17). A customer is deleted; its contact must lose the code `CUST`
/// (R9), but that write fails once. The next run takes the code still listed on the
/// contact for a request (R5) and creates a new customer: the account the user deleted
/// comes back. Found by the model ("an account nobody asked for": delete a customer
/// while writes to its contact are rejected for one run, then sync twice).
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r13_a_deleted_account_is_not_created_again_when_removing_its_code_failed() {
    let _alone = failpoints_alone();
    for incremental in [true, false] {
        let (mut w, contact) = three_customers_synced(incremental).await;
        w.crm
            .reject_writes_to(EntityKind::Contact, &contact, Some("CRM is busy"));
        w.erp.remove(EntityKind::Customer, "uk1");
        let first = plain_sync(&mut w).await.unwrap();
        assert_eq!(first.failures.len(), 1, "{:?}", first.failures);
        w.crm.reject_writes_to(EntityKind::Contact, &contact, None);
        let second = plain_sync(&mut w).await.unwrap();
        let customers: Vec<String> = w
            .erp
            .all(EntityKind::Customer)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            customers,
            ["uk2", "uk3"],
            "incremental: {incremental}: the deleted customer came back {:#?}",
            second.plan
        );
        let codes = w
            .crm
            .get(EntityKind::Contact, &contact)
            .unwrap()
            .fields
            .get("business_relations")
            .cloned();
        assert_eq!(codes, None, "the contact lost the code (R9)");
    }
}

/// Was a bug (R18, R17). A run writes a contact's new city to the customer, but its write
/// to the contact (the customer's new phone) fails; the pair keeps what it had to do.
/// The user then clears the city on the customer, back to what it held before the
/// write. The next run takes the customer for one that never got the write and writes
/// the city again: the user's edit is reverted, on both sides. Found by the model (a
/// contact matched by e-mail while its writes are rejected, then the customer's city
/// cleared): "city on the account is Some(..), expected None".
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r18_an_edit_after_a_partly_failed_run_is_not_reverted() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let (mut w, contact) = three_customers_synced(incremental).await;
        let mut c = w.crm.get(EntityKind::Contact, &contact).unwrap().fields;
        c.set("city", Value::text("Gent"));
        w.crm.put(EntityKind::Contact, &contact, c);
        let mut k = w.erp.get(EntityKind::Customer, "uk1").unwrap().fields;
        k.set("phone", Value::text("123"));
        w.erp.put(EntityKind::Customer, "uk1", k);
        w.crm
            .reject_writes_to(EntityKind::Contact, &contact, Some("CRM is busy"));
        let partly = plain_sync(&mut w).await.unwrap();
        assert_eq!(partly.failures.len(), 1);
        let customer = w.erp.get(EntityKind::Customer, "uk1").unwrap().fields;
        assert_eq!(
            customer.text("city"),
            Some("Gent"),
            "the customer's write landed"
        );
        w.crm.reject_writes_to(EntityKind::Contact, &contact, None);
        // The user clears the city Tandem wrote to the customer.
        let mut k = customer;
        k.remove("city");
        w.erp.put(EntityKind::Customer, "uk1", k);
        plain_sync(&mut w).await.unwrap();
        let city = |r: Option<Record>| r.unwrap().fields.text("city").map(str::to_owned);
        assert_eq!(
            (
                city(w.crm.get(EntityKind::Contact, &contact)),
                city(w.erp.get(EntityKind::Customer, "uk1"))
            ),
            (None, None),
            "incremental: {incremental}: the user's last edit wins"
        );
    }
}

/// Was a bug (R18). A first sync links a contact to a customer by VAT number and writes
/// the contact's name, phone and e-mail to the customer; it is cut short once that
/// write answered, before it stored the link. The user clears the e-mail on the
/// customer, back to what it held before the write. The next run took the customer
/// for one the write never reached, since its e-mail held the old value, and wrote the
/// e-mail again: the user's edit was reverted on both sides. A write to a record lands
/// whole: the name and phone it holds show that it landed, so the e-mail is an edit.
/// Found by the model (`model_partitions`: "email on the account is Some(..), expected
/// None").
#[test]
fn r18_a_value_put_back_after_a_crashed_write_is_not_written_again() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        let contact = [
            ("contact_type", "company"),
            ("name", "Acme"),
            ("phone", "+32 9 111 11 11"),
            ("email", "info@acme.example"),
            ("vat_registration_no", "BE0123456749"),
        ];
        w.crm.put(EntityKind::Contact, "uc1", fields(&contact));
        let customer = [("name", "ACME NV"), ("vat_registration_no", "BE0123456749")];
        w.erp.put(EntityKind::Customer, "uk1", fields(&customer));
        w.sync(Some(("after_account_updates", 1))).unwrap();
        let mut k = w.erp.get(EntityKind::Customer, "uk1").unwrap().fields;
        assert_eq!(
            k.text("email"),
            Some("info@acme.example"),
            "the write landed"
        );
        k.remove("email");
        w.erp.put(EntityKind::Customer, "uk1", k);
        w.sync(None).unwrap();
        let email = |r: Option<Record>| r.unwrap().fields.text("email").map(str::to_owned);
        assert_eq!(
            (
                email(w.crm.get(EntityKind::Contact, "uc1")),
                email(w.erp.get(EntityKind::Customer, "uk1"))
            ),
            (None, None),
            "incremental: {incremental}: the user's clearing wins"
        );
        let name = w.erp.get(EntityKind::Customer, "uk1").unwrap().fields;
        assert_eq!(
            name.text("name"),
            Some("Acme"),
            "incremental: {incremental}"
        );
    }
}

/// A known limit of R12 over R6 (R18). A run creates a contact for a customer (R6)
/// and is cut short before it links it (failpoint `after_contact_create`); the user
/// deletes that contact before the next run. Nothing the next run can read tells this
/// apart from a create that never reached the CRM (a crash at `before_contact_create`):
/// the contact's id was lost with the process, and no listing ever held it. The next
/// run therefore creates the contact (once): nothing is lost, nothing duplicated.
/// Found by the model ("customer uk1 got 2 contacts", before the creates were found
/// again exactly once).
#[test]
fn r18_a_contact_deleted_after_a_crashed_create_is_made_once_again() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        w.allow_deletes = true;
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            fields(&[("name", "Acme"), ("email", "a@x.be")]),
        );
        w.sync(Some(("after_contact_create", 1))).unwrap();
        assert_eq!(w.snapshots[0].outcome, Outcome::Crashed);
        let created = w.crm.all(EntityKind::Contact);
        assert_eq!(created.len(), 1, "the contact was created before the crash");
        w.crm.remove(EntityKind::Contact, &created[0].id);
        w.sync(None).unwrap();
        w.sync(None).unwrap();
        let contacts = w.crm.all(EntityKind::Contact);
        assert_eq!(
            contacts.len(),
            1,
            "incremental: {incremental}: made once again"
        );
        let links = w.state().links(Some("CUST")).unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(
            (links[0].contact_id.as_str(), links[0].account_id.as_str()),
            (contacts[0].id.as_str(), "uk1")
        );
    }
}

/// Was a bug (R12, R16, R18). The first run matches a contact to a customer and is cut
/// short after storing its intents (`after_intent_commit`), before any hash of the
/// contact was stored. The user deletes the contact. The next runs never notice the
/// delete (a full listing only deletes what has a stored hash): the link to the gone
/// contact stays, and the customer never gets a contact (R6). Found by the model ("a
/// link to a record that is gone").
#[test]
fn r12_a_contact_deleted_after_a_crashed_first_run_loses_its_link() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        w.allow_deletes = true;
        put_acme_pair(&mut w);
        w.crm.put(
            EntityKind::Contact,
            "uc2",
            fields(&[("name", "Beta"), ("contact_type", "company")]),
        );
        w.sync(Some(("after_intent_commit", 1))).unwrap();
        assert_eq!(w.snapshots[0].outcome, Outcome::Crashed);
        w.crm.remove(EntityKind::Contact, "uc1");
        w.sync(None).unwrap();
        w.sync(None).unwrap();
        let links = w.state().links(Some("CUST")).unwrap();
        assert!(
            links.iter().all(|l| l.contact_id != "uc1"),
            "incremental: {incremental}: the deleted contact's link stays: {links:?}"
        );
    }
}

/// R18 in ranges: the first range's links clear the run's intents, and the second
/// range's are stored after them, before its updates. A run in ranges of one hub cut
/// short once the second range's updates went out leaves that range's intent (had it
/// been cleared with the first range's, the next run would have nothing to finish
/// against), and the next run finishes the write.
#[test]
fn r18_in_ranges_a_range_s_intents_outlive_the_links_of_the_range_before() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = World::new(&Case {
            hubs_per_range: 1,
            ..plain_case(incremental)
        });
        put_acme_pair(&mut w);
        put_pair(&mut w, ("uc2", "Beta", "b@x.be"), ("uk2", "Beta BV"));
        w.sync(Some(("after_contact_updates", 2))).unwrap();
        assert_eq!(w.snapshots[0].outcome, Outcome::Crashed);
        let intents = w.state().links_with_intent().unwrap();
        assert!(
            intents.iter().any(|l| l.account_id == "uk2"),
            "incremental: {incremental}: the second range's intent is gone: {intents:?}"
        );
        w.sync(None).unwrap();
        assert_eq!(
            w.state().links_with_intent().unwrap(),
            [],
            "incremental: {incremental}: the next run left intents"
        );
        let links = w.state().links(Some("CUST")).unwrap();
        assert_eq!(links.len(), 2, "incremental: {incremental}: {links:?}");
    }
}

/// Contact uc1 and customer uk1, which match by e-mail and differ in name: a first
/// run links them and writes a name.
fn put_acme_pair(w: &mut World) {
    put_pair(w, ("uc1", "Acme", "a@x.be"), ("uk1", "Acme NV"));
}

/// A company contact (id, name, e-mail) and a customer (id, name) with its e-mail:
/// they match by e-mail and differ in name.
fn put_pair(w: &mut World, (contact_id, name, email): (&str, &str, &str), customer: (&str, &str)) {
    let contact = [
        ("name", name),
        ("email", email),
        ("contact_type", "company"),
    ];
    w.crm.put(EntityKind::Contact, contact_id, fields(&contact));
    let (customer_id, customer_name) = customer;
    let customer = [("name", customer_name), ("email", email)];
    w.erp
        .put(EntityKind::Customer, customer_id, fields(&customer));
}

/// R18 with the intents stored while the creates go out (a plan made whole). A run
/// that links a contact to a customer and creates a contact for another customer is
/// cut short once both its intents are stored and its create has gone out, before
/// the create is linked. The user then edits the linked customer. The next run finds
/// the create again (no twin), carries out the intended write, and keeps the edit.
#[test]
fn r18_a_run_cut_short_while_its_creates_went_out_leaves_intents_and_creates_to_finish() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        put_acme_pair(&mut w);
        w.erp.put(
            EntityKind::Customer,
            "uk2",
            fields(&[("name", "Beta"), ("city", "Gent")]),
        );
        w.sync(Some(("after_intent_commit", 1))).unwrap();
        assert_eq!(w.snapshots[0].outcome, Outcome::Crashed);
        assert_eq!(
            w.crm.all(EntityKind::Contact).len(),
            2,
            "incremental: {incremental}: the create went out before the crash"
        );
        let intents = w.state().links_with_intent().unwrap();
        assert_eq!(
            intents
                .iter()
                .map(|l| l.account_id.as_str())
                .collect::<Vec<_>>(),
            ["uk1"],
            "incremental: {incremental}: the intent of the matched pair is stored"
        );
        let pending = w.state().pending_creates().unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|p| p.source_id.as_str())
                .collect::<Vec<_>>(),
            ["uk2"],
            "incremental: {incremental}: the create is written down, not linked"
        );
        let mut edited = w.erp.all(EntityKind::Customer)[0].fields.clone();
        edited.set("phone", Value::text("+32 9 123 45 67"));
        w.erp.put(EntityKind::Customer, "uk1", edited);
        w.sync(None).unwrap();
        w.sync(None).unwrap();
        let contacts = w.crm.all(EntityKind::Contact);
        let uc1 = contacts.iter().find(|c| c.id == "uc1").unwrap();
        assert_eq!(
            (contacts.len(), w.erp.all(EntityKind::Customer).len()),
            (2, 2),
            "incremental: {incremental}: no twin, no account made"
        );
        assert_eq!(
            uc1.fields.text("phone"),
            Some("+32 9 123 45 67"),
            "incremental: {incremental}: the edit made after the crash crossed"
        );
        let linked = w.state().links(Some("CUST")).unwrap();
        assert_eq!(linked.len(), 2, "incremental: {incremental}: {linked:?}");
        assert!(linked.iter().all(|l| l.intent.is_none()), "{linked:?}");
    }
}

/// Was a bug (R18, R6, R5). A run creates a contact for a customer and is cut short before
/// it links it (`after_contact_create`). The user edits that contact (any shared
/// field). The next run no longer recognises it as the create it sent (it looks for the
/// exact fields sent), creates a second contact for the customer, and takes the code
/// `CUST` listed on the first for a request: a new customer is created for it too.
/// Found by the model ("customer uk4 got 2 contacts", "an account nobody asked for").
#[test]
fn r18_a_contact_edited_after_a_crashed_create_is_not_duplicated() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            fields(&[("name", "Acme"), ("city", "Gent")]),
        );
        w.sync(Some(("after_contact_create", 1))).unwrap();
        let created = w.crm.all(EntityKind::Contact);
        assert_eq!(created.len(), 1, "the contact was created before the crash");
        let mut edited = created[0].fields.clone();
        edited.set("city", Value::text("Brugge"));
        w.crm.put(EntityKind::Contact, &created[0].id, edited);
        w.sync(None).unwrap();
        let contacts = w.crm.all(EntityKind::Contact).len();
        let customers = w.erp.all(EntityKind::Customer).len();
        assert_eq!(
            (contacts, customers),
            (1, 1),
            "incremental: {incremental}: no duplicate contact, no new customer"
        );
    }
}

/// Was a bug (R18, R6, R5). A run creates contacts for two customers and is cut short
/// before it links them; the user edits one contact's name and phone, every value that
/// tells it apart, and leaves its city and kind. The next run found it by none of its
/// values, created a second contact for its customer and took the code `CUST` the
/// first lists for a request, creating a customer for it. It cannot be told from a
/// request a user made (R5), so it is not linked by a guess: it waits, reported, its
/// customer gets no twin and its code no account, until an operator links them.
/// Found by the model (two contacts for uk6, "an account nobody asked for").
#[test]
fn r18_a_contact_edited_in_every_telling_value_after_a_crashed_create_waits_for_an_operator() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        for (id, name, phone) in [
            ("uk1", "Acme", "+32 9 111 11 11"),
            ("uk2", "Beta", "+32 9 222 22 22"),
        ] {
            let sent = [("name", name), ("phone", phone), ("city", "Gent")];
            w.erp.put(EntityKind::Customer, id, fields(&sent));
        }
        w.sync(Some(("after_contact_create", 1))).unwrap();
        let created = w.crm.all(EntityKind::Contact);
        assert_eq!(
            created.len(),
            2,
            "the contacts were created before the crash"
        );
        let edited = created
            .iter()
            .find(|c| c.fields.text("name") == Some("Acme"))
            .unwrap();
        edit_contact(
            &w,
            edited,
            [("name", "Acme Holding"), ("phone", "+32 9 999 99 99")],
        );
        for run in 0..2 {
            let report = w.sync(None).unwrap().unwrap();
            let case = format!("incremental: {incremental}, run {run}");
            let contacts = w.crm.all(EntityKind::Contact).len();
            let customers = w.erp.all(EntityKind::Customer).len();
            assert_eq!(
                (contacts, customers),
                (2, 2),
                "{case}: no twin, no new customer"
            );
            let waiting: Vec<_> = (report.ambiguous.iter())
                .filter(|a| a.contact_ids.contains(&edited.id))
                .collect();
            assert_eq!(
                waiting.len(),
                1,
                "{case}: the contact is reported: {report:?}"
            );
            assert_eq!(
                waiting[0].account_ids,
                ["uk1"],
                "{case}: {:?}",
                report.ambiguous
            );
            let links = w.state().links(None).unwrap();
            assert_eq!(
                links.len(),
                1,
                "{case}: Beta's contact is linked: {links:?}"
            );
        }
    }
}

/// Customer uk1 (name, e-mail, phone and `extra`), and the world after a sync cut short
/// once it created uk1's contact (returned), before it linked it.
fn created_then_cut_short(incremental: bool, extra: (&str, &str)) -> (World, Record) {
    let mut w = plain(incremental);
    let sent = [
        ("name", "Acme"),
        ("email", "info@acme.example"),
        ("phone", "+32 9 111 11 11"),
        extra,
    ];
    w.erp.put(EntityKind::Customer, "uk1", fields(&sent));
    w.sync(Some(("after_contact_create", 1))).unwrap();
    let mut created = w.crm.all(EntityKind::Contact);
    assert_eq!(created.len(), 1, "the contact was created before the crash");
    (w, created.remove(0))
}

/// The user edits `contact` in the CRM.
fn edit_contact<const N: usize>(w: &World, contact: &Record, edits: [(&str, &str); N]) {
    let mut edited = contact.fields.clone();
    for (field, value) in edits {
        edited.set(field, Value::text(value));
    }
    w.crm.put(EntityKind::Contact, &contact.id, edited);
}

/// Was a bug (R18, R6, R5). Like `r18_a_contact_edited_after_a_crashed_create_is_not_duplicated`,
/// but the user edits the contact's name and e-mail:
/// half of what the create sent. The next run did not recognise it (the name or all
/// values but one had to be left), created a twin for the customer and took the code
/// the first lists for a request, creating a customer for it. It is found by its kind
/// and the values it kept (phone, city), linked, and its edits reach the customer.
/// Found by the model (seed 7bc0cec2).
#[test]
fn r18_a_contact_created_by_a_crashed_run_and_edited_in_half_its_values_is_linked() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let (mut w, created) = created_then_cut_short(incremental, ("city", "Gent"));
        edit_contact(
            &w,
            &created,
            [("name", "Acme Holding"), ("email", "hello@acme.example")],
        );
        w.sync(None).unwrap();
        let contacts = w.crm.all(EntityKind::Contact);
        let customers = w.erp.all(EntityKind::Customer);
        assert_eq!(
            (contacts.len(), customers.len()),
            (1, 1),
            "incremental: {incremental}: no twin, no new customer"
        );
        let links = w.state().links(Some("CUST")).unwrap();
        assert_eq!(links.len(), 1, "incremental: {incremental}: {links:?}");
        assert_eq!(
            (links[0].contact_id.as_str(), links[0].account_id.as_str()),
            (created.id.as_str(), "uk1")
        );
        assert_eq!(
            customers[0].fields.text("name"),
            Some("Acme Holding"),
            "incremental: {incremental}: the contact's edit reached the customer"
        );
    }
}

/// Was a bug (R18, R12, R5). A run creates a contact for a customer and is cut short
/// before it links it; the user deletes the customer and edits the contact's name and
/// phone. The next run did not recognise the contact as the create it sent (an edited
/// name and one more value), took the code `CUST` it lists for a request and created a
/// customer again, the one the user had deleted, as a new record. The contact is
/// found by what it still holds (its kind, VAT number and e-mail) and loses the code,
/// as it would have had the run linked it. Found by the model (seed efb46fa5).
#[test]
fn r18_a_contact_created_for_a_customer_deleted_since_loses_its_code_though_edited() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let vat = ("vat_registration_no", "BE0123456749");
        let (mut w, created) = created_then_cut_short(incremental, vat);
        w.erp.remove(EntityKind::Customer, "uk1");
        edit_contact(
            &w,
            &created,
            [("name", "Acme Holding"), ("phone", "+32 9 222 22 22")],
        );
        w.sync(None).unwrap();
        let customers = w.erp.all(EntityKind::Customer);
        assert!(
            customers.is_empty(),
            "incremental: {incremental}: no customer comes back: {customers:?}"
        );
        let contact = &w.crm.all(EntityKind::Contact)[0];
        assert!(
            !tandem_engine::plan::lists_code(contact, "CUST"),
            "incremental: {incremental}: the contact lost the code: {contact:?}"
        );
    }
}

/// Was a bug (R15): a new link whose first write failed until it was parked, then
/// edited on both sides (the contact's edit carried to its other link meanwhile), was
/// retried and the account's edit overwrote the contact's without asking the policy:
/// under `manual` no conflict, under `contact_wins` the contact's edit lost. Found by
/// the model (seed b69353ec in `model.proptest-regressions`).
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r15_a_retried_link_edited_on_both_sides_is_settled_by_its_policy() {
    let _alone = failpoints_alone();
    for (policy, expected) in [
        (ConflictPolicy::Manual, ["email-8", "email-7", "email-8"]),
        (ConflictPolicy::ContactWins, ["email-8"; 3]),
        (ConflictPolicy::AccountWins, ["email-7"; 3]),
    ] {
        let mut w = World::new(&Case {
            incremental: false,
            cust: policy,
            vend: ConflictPolicy::ContactWins,
            allow_deletes: false,
            setup: Vec::new(),
            steps: Vec::new(),
            partitions: 1,
            hubs_per_range: usize::MAX,
            spill: false,
            chosen_ids: false,
        });
        let mail = ("email", "e2@example.com");
        w.crm.put(
            EntityKind::Contact,
            "uc4",
            fields(&[("name", "name-4"), ("contact_type", "company"), mail]),
        );
        w.erp.put(
            EntityKind::Customer,
            "uk2",
            fields(&[("name", "name-2"), mail]),
        );
        w.erp.put(
            EntityKind::Vendor,
            "uv6",
            fields(&[("name", "name-6"), mail]),
        );
        w.erp
            .reject_writes_to(EntityKind::Customer, "uk2", Some("rejected by the test"));
        plain_sync(&mut w).await.unwrap();
        plain_sync(&mut w).await.unwrap();
        assert!(
            w.state().links(Some("CUST")).unwrap()[0].parked,
            "{policy:?}"
        );
        for (kind, id, value) in [
            (EntityKind::Customer, "uk2", "email-7"),
            (EntityKind::Contact, "uc4", "email-8"),
        ] {
            let connector = w.connector(kind);
            let mut f = connector.get(kind, id).unwrap().fields;
            f.set("email", Value::text(value));
            connector.put(kind, id, f);
        }
        plain_sync(&mut w).await.unwrap();
        w.erp.reject_writes_to(EntityKind::Customer, "uk2", None);
        tandem_engine::retry(
            w.state.as_deref_mut().unwrap(),
            &w.relations,
            &RetryTarget::All,
        )
        .unwrap();
        plain_sync(&mut w).await.unwrap();
        let email = |kind, id| {
            let record = w.connector(kind).get(kind, id).unwrap();
            record.fields.text("email").map(str::to_owned).unwrap()
        };
        assert_eq!(
            [
                email(EntityKind::Contact, "uc4"),
                email(EntityKind::Customer, "uk2"),
                email(EntityKind::Vendor, "uv6"),
            ],
            expected.map(str::to_owned),
            "{policy:?}"
        );
        let open: Vec<_> = (w.state().conflicts(true).unwrap().into_iter())
            .map(|c| (c.code, c.field))
            .collect();
        let queued = policy == ConflictPolicy::Manual;
        assert_eq!(
            open,
            if queued {
                vec![("CUST".to_owned(), "email".to_owned())]
            } else {
                vec![]
            },
            "{policy:?}"
        );
    }
}

/// One run of partition `index` of `count` (`tandem run --worker`), deletes let through.
async fn partition_sync(w: &mut World, index: u32, count: u32) -> RunReport {
    let connectors = w.connectors();
    let state = w.state.as_deref_mut().unwrap();
    let mut engine = Engine::new(w.relations.clone(), connectors, state).unwrap();
    engine.set_partition(Partition::new(index, count).unwrap());
    engine.set_allow_deletes(true);
    engine.sync().await.unwrap()
}

/// `n` rounds of a run of each of `count` partitions (one whole run each for 1): the
/// writes of each round.
async fn rounds(w: &mut World, count: u32, n: usize) -> Vec<u64> {
    let mut writes = Vec::new();
    for _ in 0..n {
        let mut round = 0;
        for index in 0..count {
            round += partition_sync(w, index, count).await.writes;
        }
        writes.push(round);
    }
    writes
}

/// Was a bug of partitions, found by `model_partitions`. A customer linked by the
/// matcher is deleted while its contact is edited; the partition holding the contact
/// ran first, and wrote the contact's edit to the deleted customer ("record uk1 not
/// found"): it had never remembered the customer (left to the matcher when it was
/// new), so the full listing without it said nothing. A partition now remembers every
/// record it reads (an unlinked one as read), and marks a deleted one whose unlink is
/// the matcher's to be looked at again until that unlink is done: a full listing
/// finds it missing again, a read by id finds it gone.
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn partitions_leave_a_deleted_account_to_the_matcher_and_write_nothing_to_it() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            fields(&[("name", "Acme"), ("email", "a@x.be")]),
        );
        // The contact the matcher creates for uk1 gets the first id.
        let contact = "C1";
        let count = (2..9)
            .find(|n| Partition::of_contact(contact, *n) != 0)
            .unwrap();
        let holder = Partition::of_contact(contact, count);
        for index in [holder, 0] {
            partition_sync(&mut w, index, count).await;
        }
        let links = w.state().links(Some("CUST")).unwrap();
        assert_eq!(links[0].contact_id, contact, "incremental: {incremental}");

        w.erp.remove(EntityKind::Customer, "uk1");
        w.crm.put(
            EntityKind::Contact,
            contact,
            fields(&[("name", "Acme"), ("email", "a@x.be"), ("phone", "+32 2 1")]),
        );
        for index in [holder, holder, 0] {
            let report = partition_sync(&mut w, index, count).await;
            assert!(
                report.failures.is_empty(),
                "incremental: {incremental}, partition {index}: {:?}",
                report.failures
            );
        }
        assert!(w.state().links(Some("CUST")).unwrap().is_empty());
    }
}

/// Was a bug (R19 over R15), found by the model (seed e2e40738 in `model.proptest-
/// regressions`). A customer's link is parked after writes to its contact failed
/// twice; the user edits the customer's e-mail; a new vendor then matches the contact
/// and brings its own e-mail into it (the contact had none). Retried by hand, the
/// parked pair took the vendor's value in the contact for a contact edit competing
/// with the customer's, and `contact_wins` overwrote the user's only edit. A value
/// Tandem writes into a contact is its own write: the parked link's baseline follows it
/// and the customer is meant to get it (R18), unless, as here, it was edited since.
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r19_a_value_tandem_carries_into_a_contact_does_not_beat_an_edit_of_a_parked_link() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        let company = [("contact_type", "company"), ("name", "Acme")];
        let vat = ("vat_registration_no", "BE3");
        w.crm.put(
            EntityKind::Contact,
            "uc1",
            fields(&[company[0], company[1], vat]),
        );
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            fields(&[("name", "Acme"), vat]),
        );
        plain_sync(&mut w).await.unwrap();
        // Writes to the contact fail twice: the customer's phone edits park the pair.
        w.crm
            .reject_writes_to(EntityKind::Contact, "uc1", Some("rejected by the test"));
        for phone in ["+32 1", "+32 2"] {
            let customer = fields(&[("name", "Acme"), vat, ("phone", phone)]);
            w.erp.put(EntityKind::Customer, "uk1", customer);
            plain_sync(&mut w).await.unwrap();
        }
        assert!(w.state().links(Some("CUST")).unwrap()[0].parked);
        w.crm.reject_writes_to(EntityKind::Contact, "uc1", None);
        let edited = fields(&[
            ("name", "Acme"),
            vat,
            ("phone", "+32 2"),
            ("email", "k@x.be"),
        ]);
        w.erp.put(EntityKind::Customer, "uk1", edited);
        let vendor = fields(&[("name", "Acme"), vat, ("email", "v@x.be")]);
        w.erp.put(EntityKind::Vendor, "uv1", vendor);
        plain_sync(&mut w).await.unwrap();
        retried_all_hold(&mut w, "email", "k@x.be", incremental).await;
    }
}

/// Two syncs of `w` whose writes to contact uc1 fail: its customer's pair is parked.
/// Writes to uc1 go through again after.
async fn parked_by_two_rejected_writes(w: &mut World) {
    w.crm
        .reject_writes_to(EntityKind::Contact, "uc1", Some("rejected by the test"));
    plain_sync(w).await.unwrap();
    plain_sync(w).await.unwrap();
    assert!(w.state().links(Some("CUST")).unwrap()[0].parked);
    w.crm.reject_writes_to(EntityKind::Contact, "uc1", None);
}

/// The parked links of `w` retried, two syncs: contact uc1, customer uk1 and vendor
/// uv1 all hold `value` in `field`.
async fn retried_all_hold(w: &mut World, field: &str, value: &str, incremental: bool) {
    tandem_engine::retry(
        w.state.as_deref_mut().unwrap(),
        &w.relations,
        &RetryTarget::All,
    )
    .unwrap();
    plain_sync(w).await.unwrap();
    plain_sync(w).await.unwrap();
    let held = |kind, id| {
        let record = w.connector(kind).get(kind, id).unwrap();
        record.fields.text(field).map(str::to_owned)
    };
    assert_eq!(
        [
            held(EntityKind::Contact, "uc1"),
            held(EntityKind::Customer, "uk1"),
            held(EntityKind::Vendor, "uv1"),
        ],
        [(); 3].map(|()| Some(value.to_owned())),
        "{field}, incremental: {incremental}"
    );
}

/// Found by the model (`model_chosen_ids`, the last case in its regressions). The user
/// edits a customer's e-mail; the write to its contact fails twice and the pair is
/// parked, its intent saying the contact, which had no e-mail, is still to get it. A
/// new vendor then matches the contact and brings its own e-mail into it. Retried, the
/// parked pair read the contact's new value as the user's edit of the contact, newer
/// than its baseline, and wrote it over the customer's edit. Tandem's own write is not
/// an edit: the contact still waits for the customer's value, which wins (R18, R19).
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r19_a_value_tandem_carries_into_a_contact_does_not_beat_the_write_a_parked_link_still_owes_it()
 {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = plain(incremental);
        let vat = ("vat_registration_no", "BE3");
        let contact = fields(&[("contact_type", "company"), ("name", "Acme"), vat]);
        w.crm.put(EntityKind::Contact, "uc1", contact);
        let customer =
            |more: &[(&str, &str)]| fields(&[&[("name", "Acme"), vat][..], more].concat());
        w.erp.put(EntityKind::Customer, "uk1", customer(&[]));
        plain_sync(&mut w).await.unwrap();
        // The customer's e-mail edited; writes to the contact fail twice: parked.
        w.erp.put(
            EntityKind::Customer,
            "uk1",
            customer(&[("email", "k@x.be")]),
        );
        parked_by_two_rejected_writes(&mut w).await;
        let vendor = fields(&[("name", "Acme"), vat, ("email", "v@x.be")]);
        w.erp.put(EntityKind::Vendor, "uv1", vendor);
        plain_sync(&mut w).await.unwrap();
        retried_all_hold(&mut w, "email", "k@x.be", incremental).await;
    }
}

/// Found by the model (`model_chosen_ids`, a case in its regressions), which expected
/// the contact's last edit to win: it is the policy's call. A customer's pair is
/// parked with its intent still owing the contact the customer's city; the user edits
/// the customer's city, a new vendor brings its own city into the contact, and then the
/// user edits the contact's city. Retried, the customer's pair has both sides edited
/// since its baseline, and `account_wins` gives it the customer's city, though edited
/// before the contact's; Tandem writes that into the contact, and the vendor's pair
/// (`contact_wins`) carries it on as Tandem's own write (R19), so the hub agrees.
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r15_a_parked_pairs_account_edit_wins_over_a_later_contact_edit_under_account_wins_in_the_whole_hub()
 {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = World::new(&Case {
            cust: ConflictPolicy::AccountWins,
            ..plain_case(incremental)
        });
        let vat = ("vat_registration_no", "BE3");
        let contact = |more: &[(&str, &str)]| {
            fields(
                &[
                    &[("contact_type", "company"), ("name", "Acme"), vat][..],
                    more,
                ]
                .concat(),
            )
        };
        let account = |city: &str| fields(&[("name", "Acme"), vat, ("city", city)]);
        w.crm.put(EntityKind::Contact, "uc1", contact(&[]));
        w.erp.put(EntityKind::Customer, "uk1", account("Gent"));
        // The contact is to get the customer's city; its writes fail twice: parked.
        parked_by_two_rejected_writes(&mut w).await;
        w.erp.put(EntityKind::Customer, "uk1", account("Brugge"));
        w.erp.put(EntityKind::Vendor, "uv1", account("Antwerpen"));
        plain_sync(&mut w).await.unwrap();
        let mut edited = w.crm.get(EntityKind::Contact, "uc1").unwrap().fields;
        edited.set("city", Value::text("Leuven"));
        w.crm.put(EntityKind::Contact, "uc1", edited);
        retried_all_hold(&mut w, "city", "Brugge", incremental).await;
    }
}

/// Was a bug, found by `model_partitions` (a chain one round late). A contact holding
/// a customer and a vendor is deleted; a new contact shares the vendor's e-mail, and
/// the customer carries the vendor's VAT number (Tandem carried it, R7). The run that
/// unlinked them (R12) did not match the vendor: the second pass read only accounts
/// unlinked before the run. Once the new contact was linked to the vendor and given
/// its VAT number, no run matched the customer by it: the stored match keys were the
/// ones read before Tandem's write, and nothing woke the customers' matching (R4). Now
/// the accounts a deleted contact held are matched in the run that unlinks them, and a
/// contact Tandem writes a match key into, of a relation it holds no link of, is
/// looked at again next run. Whole runs and partitions settle alike, in two runs.
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r4_accounts_a_deleted_contact_held_match_as_soon_as_they_can() {
    let _alone = failpoints_alone();
    let names = |w: &World| -> Vec<String> {
        let links = w.state().links(None).unwrap();
        (links.iter())
            .map(|l| format!("{}:{}-{}", l.code, l.contact_id, l.account_id))
            .collect()
    };
    for (incremental, count) in [(false, 1), (true, 1), (false, 2), (true, 3)] {
        let context = format!("incremental: {incremental}, partitions: {count}");
        let mut w = World::new(&Case {
            partitions: count,
            ..plain_case(incremental)
        });
        let vat = ("vat_registration_no", "BE1");
        let vendor = fields(&[("name", "V"), ("email", "e1@x.be"), vat]);
        w.erp.put(EntityKind::Vendor, "uv1", vendor);
        let customer = fields(&[("name", "K"), ("email", "e1@x.be")]);
        w.erp.put(EntityKind::Customer, "uk2", customer);
        // A contact for the customer (R6), then the vendor matched to it by e-mail.
        rounds(&mut w, count, 2).await;
        assert_eq!(names(&w), ["CUST:C1-uk2", "VEND:C1-uv1"], "{context}");
        let customer = w.erp.get(EntityKind::Customer, "uk2").unwrap();
        assert_eq!(
            customer.fields.get("vat_registration_no"),
            Some(&"BE1".into())
        );

        let company = [("contact_type", "company"), ("name", "N")];
        let new = fields(&[company[0], company[1], ("email", "e1@x.be")]);
        w.crm.put(EntityKind::Contact, "uc12", new);
        let edited = fields(&[("name", "K"), ("email", "e13@x.be"), vat]);
        w.erp.put(EntityKind::Customer, "uk2", edited);
        w.crm.remove(EntityKind::Contact, "C1");
        let writes = rounds(&mut w, count, 3).await;
        assert_eq!(writes, [2, 2, 0], "{context}");
        assert_eq!(names(&w), ["CUST:uc12-uk2", "VEND:uc12-uv1"], "{context}");
    }
}

/// Was a duplicate (R6): a company that is customer and supplier, with no contact, got
/// two contacts when both relations number contacts, one for each, never merged. Now
/// the vendor waits a run and is matched to the contact made for the customer (R4);
/// with partitions too (creates are the matcher's).
#[tokio::test]
#[allow(
    clippy::await_holding_lock,
    reason = "a current-thread runtime: the guard only keeps other tests' failpoints out"
)]
async fn r6_a_partner_both_relations_number_gets_one_contact() {
    let _alone = failpoints_alone();
    for (incremental, count) in [(false, 1), (true, 1), (false, 2), (true, 2)] {
        let context = format!("incremental: {incremental}, partitions: {count}");
        let mut w = World::new(&Case {
            partitions: count,
            ..plain_case(incremental)
        });
        let mut relations = BTreeMap::new();
        for (code, kind) in [("CUST", EntityKind::Customer), ("VEND", EntityKind::Vendor)] {
            let relation = relation(kind, true, ConflictPolicy::ContactWins);
            relations.insert(code.to_string(), relation);
        }
        let contacts = ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        };
        let config = SyncConfig::new(contacts, relations).unwrap();
        w.relations = Relations::from_config(&config).with_partitions(count);
        let vat = ("vat_registration_no", "BE1");
        w.erp
            .put(EntityKind::Customer, "uk1", fields(&[("name", "K"), vat]));
        w.erp
            .put(EntityKind::Vendor, "uv1", fields(&[("name", "V"), vat]));
        let writes = rounds(&mut w, count, 3).await;
        assert_eq!(w.crm.all(EntityKind::Contact).len(), 1, "{context}");
        let links = w.state().links(None).unwrap();
        let pairs: Vec<(&str, &str)> = (links.iter())
            .map(|l| (l.code.as_str(), l.account_id.as_str()))
            .collect();
        assert_eq!(pairs, [("CUST", "uk1"), ("VEND", "uv1")], "{context}");
        assert_eq!(links[0].contact_id, links[1].contact_id, "{context}");
        assert_eq!(writes.last(), Some(&0), "{context}: {writes:?}");
    }
}

/// A world whose systems take the ids the engine chooses for what it creates.
fn chosen_ids(incremental: bool) -> World {
    World::new(&Case {
        chosen_ids: true,
        ..plain_case(incremental)
    })
}

/// R18 with ids the engine chooses: a run creates a contact for a customer and is cut
/// short before it links it; the user edits every value it was sent. Found by its
/// values, it would get a twin (the known limit found by the model with seed 777,
/// `docs/guide/operator-commands.md`); written down with the id it was created under,
/// it is found by that id, linked, and its edits reach the customer.
#[test]
fn r18_a_contact_created_under_a_chosen_id_is_found_by_it_however_edited() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = chosen_ids(incremental);
        let sent = [
            ("name", "Acme"),
            ("city", "Gent"),
            ("phone", "+32 9 111 11 11"),
        ];
        w.erp.put(EntityKind::Customer, "uk1", fields(&sent));
        w.sync(Some(("after_contact_create", 1))).unwrap();
        assert_eq!(w.snapshots[0].outcome, Outcome::Crashed);
        let created = w.crm.all(EntityKind::Contact);
        assert_eq!(created.len(), 1, "the contact was created before the crash");
        assert!(
            created[0].id.starts_with("C-"),
            "a chosen id: {}",
            created[0].id
        );
        let edits = [
            ("name", "Acme Holding"),
            ("city", "Brugge"),
            ("phone", "+32 50 22 22 22"),
        ];
        edit_contact(&w, &created[0], edits);
        w.sync(None).unwrap();
        w.sync(None).unwrap();
        let context = format!("incremental: {incremental}");
        let contacts = w.crm.all(EntityKind::Contact);
        let customers = w.erp.all(EntityKind::Customer);
        assert_eq!(
            (contacts.len(), customers.len()),
            (1, 1),
            "{context}: no twin, no new customer"
        );
        let links = w.state().links(Some("CUST")).unwrap();
        assert_eq!(links.len(), 1, "{context}: {links:?}");
        assert_eq!(
            (links[0].contact_id.as_str(), links[0].account_id.as_str()),
            (created[0].id.as_str(), "uk1"),
            "{context}"
        );
        for (field, value) in edits {
            assert_eq!(
                customers[0].fields.text(field),
                Some(value),
                "{context}: {field}"
            );
        }
        assert!(w.state().pending_creates().unwrap().is_empty(), "{context}");
    }
}

/// R18 with ids the engine chooses, the create lost before it reached the system
/// (`before_contact_create`): no record has the id written down, so the next run
/// creates the contact under that same id, once.
#[test]
fn r18_a_create_cut_short_before_it_was_sent_is_sent_again_under_its_id() {
    let _alone = failpoints_alone();
    for incremental in [false, true] {
        let mut w = chosen_ids(incremental);
        w.erp
            .put(EntityKind::Customer, "uk1", fields(&[("name", "Acme")]));
        w.sync(Some(("before_contact_create", 1))).unwrap();
        assert!(w.crm.all(EntityKind::Contact).is_empty());
        let pending = w.state().pending_creates().unwrap();
        assert_eq!(pending.len(), 1, "incremental: {incremental}");
        let id = pending[0]
            .record_id
            .clone()
            .expect("the create's id is written down");
        w.sync(None).unwrap();
        let contacts = w.crm.all(EntityKind::Contact);
        let ids: Vec<&str> = contacts.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, [id.as_str()], "incremental: {incremental}");
        let links = w.state().links(Some("CUST")).unwrap();
        assert_eq!(links.len(), 1, "incremental: {incremental}");
        assert_eq!(links[0].contact_id, id);
    }
}
