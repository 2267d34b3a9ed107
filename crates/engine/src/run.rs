//! A run: read every side, load what the state knows about what was read, plan, and
//! (for `sync`) apply the plan (see `apply/`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tandem_connector::Connector;
use tandem_model::EntityKind;
use tandem_state::{Link, StateStore};

use crate::pending::Pending;
use tracing::{Instrument, info};

use crate::apply::{FromInput, apply};
pub(crate) use crate::error::EngineError;
use crate::matching::Ambiguity;
use crate::plan::{AccountInput, Directives, Plan, PlanInput, Planning};
pub(crate) use crate::read::{
    DeleteGuard, RECHECK, ScopeRead, UNKNOWN_KEYS, WRITTEN_UNREAD, match_keys, record_hash,
    record_hash_of,
};
use crate::read::{
    FirstPass, HowToRead, Needed, Prefetch, Sides, SpillAt, StoredKeys, Wake, account_key_fields,
    contact_key_fields, fetch_missing, gone_if_missing, read_scope, second_pass, unchanged, wakes,
};
use crate::relation::Relations;
pub(crate) use crate::report::rejections;
pub(crate) use crate::report::{Failure, RunReport};

/// Runs plans and syncs for one deployment.
pub struct Engine<'a> {
    pub(crate) relations: Relations,
    pub(crate) connectors: HashMap<String, Arc<dyn Connector>>,
    pub(crate) state: &'a mut dyn StateStore,
    /// Read every scope even when its fingerprint says nothing changed.
    pub(crate) full_read: bool,
    /// How many deletes a full listing may imply (R16).
    pub(crate) delete_guard: DeleteGuard,
    /// Asks the run to stop at the next safe point (`tandem run`, on a signal).
    pub(crate) stop: crate::stop::StopFlag,
    /// The connectors whose scopes are read (`tandem run` polls some only).
    pub(crate) scopes: crate::stop::ScopeFilter,
    /// The share of the work this engine carries out (`tandem run --worker`).
    pub(crate) partition: crate::Partition,
    /// Hubs a sync plans and carries out at a time ([`Planning`]); `usize::MAX`: all.
    pub(crate) hubs_per_range: usize,
    /// When set, the hubs per range are worked out from it once the head is planned.
    pub(crate) memory_budget: Option<crate::MemoryBudget>,
    /// Where the records a budgeted sync reads are kept ([`Engine::set_spill_folder`]).
    pub(crate) spill_folder: std::path::PathBuf,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("relations", &self.relations)
            .finish_non_exhaustive()
    }
}

/// How a run's hubs are planned: all at once (`tandem plan`), or a range at a time
/// when a sync is set to ([`Engine::per_range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hubs {
    AtOnce,
    InRanges,
}

/// A run's plan as far as it is made before anything is written: its head, and its
/// hubs too when it is made in one piece (a `plan`, or a worker's partition).
pub(crate) struct Prepared {
    pub plan: Plan,
    pub contacts: ScopeRead,
    pub accounts: Vec<ScopeRead>,
    /// Pairs and creates parked before this run, per relation.
    pub parked_before: Vec<ParkedCount>,
    /// Per relation: the ambiguous matches remembered, and whether this run's
    /// matching was complete enough to replace them.
    pub ambiguities: Vec<StoredAmbiguities>,
    /// What this run leaves to other partitions.
    pub cut: crate::partition::Cut,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct StoredAmbiguities {
    pub complete: bool,
    /// As the state holds them, for a complete matching to compare with what it
    /// found; none for a relation that did not match (they went to the report).
    pub stored: Option<serde_json::Value>,
}

/// What the first and second pass read, beside the plan's input.
pub(crate) struct ReadRest {
    pub contacts: ScopeRead,
    pub accounts: Vec<ScopeRead>,
    pub parked_before: Vec<ParkedCount>,
    pub wakes: Vec<Wake>,
}

/// Parked work of one relation (R17).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ParkedCount {
    pub links: u64,
    pub creates: u64,
}

impl<'a> Engine<'a> {
    pub fn new(
        relations: Relations,
        connectors: HashMap<String, Arc<dyn Connector>>,
        state: &'a mut dyn StateStore,
    ) -> Result<Engine<'a>, EngineError> {
        let engine = Engine {
            relations,
            connectors,
            state,
            full_read: false,
            delete_guard: DeleteGuard::default(),
            stop: crate::stop::StopFlag::default(),
            scopes: crate::stop::ScopeFilter::default(),
            partition: crate::Partition::whole(),
            hubs_per_range: usize::MAX,
            memory_budget: None,
            spill_folder: std::env::temp_dir(),
        };
        engine.connector(
            &engine.relations.contacts_connector,
            EntityKind::Contact,
            "contacts.connector",
        )?;
        for r in &engine.relations.relations {
            engine.connector(
                &r.connector,
                r.kind,
                &format!("relations.{}.connector", r.code),
            )?;
        }
        Ok(engine)
    }

    pub(crate) fn connector(
        &self,
        name: &str,
        kind: EntityKind,
        by: &str,
    ) -> Result<&Arc<dyn Connector>, EngineError> {
        let connector = self
            .connectors
            .get(name)
            .ok_or_else(|| EngineError::UnknownConnector {
                connector: name.to_owned(),
                by: by.to_owned(),
            })?;
        if !connector.capabilities().holds(kind) {
            return Err(EngineError::KindNotHeld {
                connector: name.to_owned(),
                kind,
                by: by.to_owned(),
            });
        }
        Ok(connector)
    }

    /// Carries out only `partition`'s share of each run (`crate::partition`).
    pub fn set_partition(&mut self, partition: crate::Partition) {
        self.partition = partition;
        self.relations = self.relations.clone().with_partitions(partition.count());
    }

    /// How many hubs a sync plans and carries out at a time: its plan is held a range
    /// at a time, not whole (at least 1; unbounded by default: a file connector
    /// rewrites its file once per range, so ranges trade time for memory). A worker's
    /// partition is planned whole.
    pub fn set_hubs_per_range(&mut self, hubs: usize) {
        self.hubs_per_range = hubs.max(1);
    }

    /// Works out the hubs per range of each sync from `budget` once its head is planned
    /// (`[sync] memory_budget`), in place of [`Engine::set_hubs_per_range`]. A worker's
    /// partition is planned whole.
    pub fn set_memory_budget(&mut self, budget: crate::MemoryBudget) {
        self.memory_budget = Some(budget);
    }

    /// Where a sync with a memory budget keeps the records it read, in an unnamed file
    /// mapped into memory (`[sync] spill_folder`; the system's temporary folder by
    /// default): a folder on a disk, not one held in memory (tmpfs).
    pub fn set_spill_folder(&mut self, folder: std::path::PathBuf) {
        self.spill_folder = folder;
    }

    /// Where the records of the next scope read go, and from how many of its bytes on,
    /// when earlier scopes hold `held` bytes of records: with a memory budget only, past
    /// its share for records while reading ([`crate::budget::READING_SHARE`]).
    fn spill_at(&self, held: usize) -> Option<SpillAt<'_>> {
        let budget = self.memory_budget?;
        Some(SpillAt {
            folder: &self.spill_folder,
            after_bytes: budget.records_on_heap_while_read().saturating_sub(held),
        })
    }

    /// Where the records read stay: the rest in a file past the memory budget
    /// ([`Engine::spill_the_rest`]), those on the heap laid there in id order
    /// ([`crate::Records::lay_in_order`]).
    fn place_records(
        &self,
        accounts: &mut [ScopeRead],
        contacts: &mut ScopeRead,
    ) -> Result<(), EngineError> {
        if let Some(budget) = self.memory_budget {
            budget.reached(crate::budget::MemoryStep::Planning);
        }
        self.spill_the_rest(accounts, contacts)?;
        (accounts.iter_mut().map(|a| &mut a.records))
            .chain([&mut contacts.records])
            .for_each(crate::Records::lay_in_order);
        Ok(())
    }

    /// Once every scope is read, the records still on the heap go to a file too if
    /// all of them pass the budget's share ([`crate::budget::RECORDS_SHARE`]; the
    /// scopes read first stayed under the share while reading).
    fn spill_the_rest(
        &self,
        accounts: &mut [ScopeRead],
        contacts: &mut ScopeRead,
    ) -> Result<(), EngineError> {
        let Some(budget) = self.memory_budget else {
            return Ok(());
        };
        let mut all: Vec<&mut crate::Records> = (accounts.iter_mut().map(|a| &mut a.records))
            .chain([&mut contacts.records])
            .collect();
        let held: usize = all.iter().map(|r| r.byte_len()).sum();
        if held <= budget.records_on_heap() || all.iter().all(|r| r.heap_bytes() == 0) {
            return Ok(());
        }
        let error = EngineError::spill(&self.spill_folder);
        tracing::debug!(bytes = held, "the records read go to a file");
        let mut spill = crate::spill::Spill::new(&self.spill_folder).map_err(&error)?;
        for records in all.iter_mut().filter(|r| r.heap_bytes() > 0) {
            records.spill_to(&mut spill).map_err(&error)?;
            records.let_go_pages();
        }
        Ok(())
    }

    /// Reads every scope even when its connector's fingerprint says nothing changed
    /// since the last run (`tandem sync --full-read`).
    pub fn set_full_read(&mut self, full_read: bool) {
        self.full_read = full_read;
    }

    /// The share of a scope's known records a full listing may delete before the run
    /// stops (`[sync] max_delete_share`, R16); clamped to 0..=1.
    pub fn set_max_delete_share(&mut self, share: f64) {
        self.delete_guard.max_share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
    }

    /// Lets a full listing delete any share of its scope (`--allow-deletes`).
    pub fn set_allow_deletes(&mut self, allow: bool) {
        self.delete_guard.allow = allow;
    }

    /// What ties a remembered fingerprint to this deployment: the relations as
    /// configured and the Tandem version (a change to either reads everything again).
    pub(crate) fn fingerprint_tag(&self) -> String {
        let config = format!("{}:{:?}", env!("CARGO_PKG_VERSION"), self.relations);
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(config.as_bytes()))
    }

    /// What `sync` would do now; writes nothing anywhere.
    pub async fn plan(&mut self) -> Result<RunReport, EngineError> {
        self.plan_with(Directives::default()).await
    }

    /// What `sync_with(directives)` would do now; writes nothing anywhere.
    pub async fn plan_with(&mut self, directives: Directives) -> Result<RunReport, EngineError> {
        let (input, rest) = self.read_input(directives).await?;
        let relations = self.relations.clone();
        let (prepared, _) = self.plan_head(&relations, &input, rest, Hubs::AtOnce)?;
        let writes = prepared.plan.write_count() as u64;
        let mut counts = prepared.plan.counts.clone();
        for (c, parked) in counts.iter_mut().zip(&prepared.parked_before) {
            c.set_parked(parked.links + parked.creates, parked.links);
        }
        let failures = rejections(&prepared.plan);
        Ok(RunReport {
            run_id: None,
            mode: crate::report::RunMode::Plan,
            read: std::iter::once(&prepared.contacts)
                .chain(&prepared.accounts)
                .map(|s| s.stats.clone())
                .collect(),
            counts,
            writes,
            ambiguous: prepared.plan.ambiguous.clone(),
            failures,
            plan: prepared.plan,
        })
    }

    /// Reads, plans and applies.
    pub async fn sync(&mut self) -> Result<RunReport, EngineError> {
        self.sync_with(Directives::default()).await
    }

    /// A sync that also carries out operator requests. A request that cannot be done
    /// stops the run before anything is written.
    ///
    /// Every sync is recorded in the state's runs, a failed one too (a read error, a
    /// refused request, too many deletes), with its status and error.
    pub async fn sync_with(&mut self, directives: Directives) -> Result<RunReport, EngineError> {
        let run_id = self.state.begin_run(&self.partition.run_mode())?;
        // Every event of the run carries its id (`--log-format json` shows it).
        let span = tracing::info_span!("run", run = run_id);
        let report = self.run_sync(run_id, directives).instrument(span).await;
        match &report {
            Ok(report) => {
                let status = if report.failed() > 0 { "partial" } else { "ok" };
                let summary = serde_json::json!({
                    "counts": report.counts,
                    "writes": report.writes,
                    "ambiguous": report.ambiguous.len(),
                    "failures": report.failures,
                });
                self.state.finish_run(run_id, status, &summary)?;
            }
            Err(EngineError::Stopped) => {
                let summary = serde_json::json!({ "error": EngineError::Stopped.to_string() });
                let _ = self.state.finish_run(run_id, "stopped", &summary);
            }
            Err(e) => {
                let summary = serde_json::json!({ "error": e.to_string() });
                // The run's own error is what the user needs to see.
                let _ = self.state.finish_run(run_id, "failed", &summary);
            }
        }
        report
    }

    /// The body of [`Engine::sync_with`], under the run `run_id`.
    async fn run_sync(
        &mut self,
        run_id: i64,
        directives: Directives,
    ) -> Result<RunReport, EngineError> {
        let operator = !directives.is_empty();
        let taken_up = self.state.unpack_intents()?;
        if taken_up > 0 {
            info!(
                links = taken_up,
                "taking up the intents of a run cut short (R18)"
            );
        }
        self.look_again_if_stale(run_id)?;
        let (input, rest) = self.read_input(directives).await?;
        let relations = self.relations.clone();
        let (prepared, mut planning) = self.plan_head(&relations, &input, rest, Hubs::InRanges)?;
        let refused = (prepared.plan.rejected.iter())
            .find(|r| operator && is_directive(&input.directives, r));
        if let Some(rejection) = refused {
            return Err(EngineError::Refused(format!(
                "{}: {}",
                rejection.code, rejection.error
            )));
        }
        if self.stop.is_stopped() {
            return Err(EngineError::Stopped);
        }
        let companies_stored = self.state.holds_companies()?;
        let from_input = FromInput::of(&input, &prepared.contacts, companies_stored);
        if planning.is_done() {
            // Planned whole: the records go before anything is written.
            drop(planning);
            let_go(input);
            return apply(self, run_id, prepared, from_input, None).await;
        }
        let report = apply(self, run_id, prepared, from_input, Some(&mut planning)).await;
        drop(planning);
        let_go(input);
        report
    }

    /// Hubs per range for a run with `hubs` hubs to merge, from `input`: a partition's
    /// plan is cut whole (`Partition::cut`); else as many as the memory budget leaves
    /// room for, or `[sync] hubs_per_range`.
    fn per_range(&self, hubs: usize, input: &PlanInput) -> usize {
        if !self.partition.is_whole() {
            return usize::MAX;
        }
        let largest = (input.accounts.iter())
            .map(|a| a.records.len())
            .fold(input.contacts.len(), usize::max);
        // What is held once matched, less the records' pages the head read.
        input.let_go_pages();
        let in_file = input.records_in_files();
        if in_file > 0 {
            info!(
                "{} MiB of the records read are in a file in {}, read as planning needs them",
                in_file >> 20,
                self.spill_folder.display()
            );
        }
        (self.memory_budget)
            .and_then(|budget| budget.hubs_per_range(hubs, largest))
            .unwrap_or(self.hubs_per_range)
    }

    /// Plans the head of a run from what was read ([`Planning`]), and its hubs too when
    /// they fit in one range ([`Engine::per_range`]); the hubs left come from the
    /// [`Planning`] returned.
    fn plan_head<'i>(
        &mut self,
        relations: &'i Relations,
        input: &'i PlanInput,
        rest: ReadRest,
        hubs: Hubs,
    ) -> Result<(Prepared, Planning<'i>), EngineError> {
        let started = std::time::Instant::now();
        let threads = crate::parallel::cores();
        let (mut planning, mut plan) = Planning::start(relations, input, threads, usize::MAX);
        // Worked out once the head is planned: a budget looks at what the run holds then.
        if hubs == Hubs::InRanges {
            planning.set_per_range(self.per_range(planning.hubs_left(), input));
        }
        // A run of one range is planned whole: its records go before anything is written.
        if planning.hubs_left() <= planning.per_range() {
            planning.rest_into(&mut plan);
        }
        let mut ambiguities = self.standing_ambiguities(&rest.wakes, &mut plan)?;
        let cut = self.cut(&mut plan, &input.links, &mut ambiguities);
        // The standing ambiguities are the plan's too.
        plan.counts = plan.derive_counts(relations, &input.link_counts);
        log_planned(&plan, started.elapsed());
        let prepared = Prepared {
            plan,
            contacts: rest.contacts,
            accounts: rest.accounts,
            parked_before: rest.parked_before,
            ambiguities,
            cut,
        };
        Ok((prepared, planning))
    }

    /// Reads every side for a plan: what changed, and what the plan needs besides.
    async fn read_input(
        &mut self,
        directives: Directives,
    ) -> Result<(PlanInput, ReadRest), EngineError> {
        let relations = self.relations.clone();
        let link_counts = self.per_relation(|code| self.state.count_links(code))?;
        let any_links = link_counts.iter().any(|n| *n > 0);
        let pending = Pending::load(&*self.state)?;
        let mut needed = Needed::of(&relations, &directives, &*self.state, &pending)?;
        if self.partition.is_matcher() && !self.partition.is_whole() {
            needed.marked_by_others(&relations, &*self.state, self.partition)?;
        }
        // First pass: keep what changed and what the run needs; unchanged records
        // stream by. Accounts first: a deleted account's contact must be read to lose
        // the code (R9).
        let mut ahead = self.read_ahead().await?;
        let mut accounts = self.read_accounts(&needed.accounts, &mut ahead).await?;
        for (read, known) in accounts.iter_mut().zip(&needed.linked_accounts) {
            gone_if_missing(read, known);
        }
        let mut wanted_contacts = needed.contacts;
        let account_links = self.links_of_accounts(&accounts, any_links, &mut wanted_contacts)?;
        let held = accounts.iter().map(|a| a.records.byte_len()).sum();
        let mut contacts = self.read_contacts(&wanted_contacts, ahead, held).await?;
        self.place_records(&mut accounts, &mut contacts)?;
        gone_if_missing(&mut contacts, &needed.linked_contacts);
        let contact_links = match any_links {
            true => self.state.links_of_contacts(&ids_of(&contacts))?,
            false => Vec::new(),
        };
        let keys = StoredKeys::load(&*self.state, &accounts, &contacts)?;
        let first = FirstPass {
            accounts: &accounts,
            contacts: &contacts,
            account_links: &account_links,
            contact_links: &contact_links,
            keys: &keys,
        };
        crate::progress::plan_start();
        let wakes = wakes(&relations, &directives, &pending, &first);
        let freed = freed_accounts(&relations, &contacts, &contact_links);
        drop(contact_links);
        let sides = self.sides()?;
        let match_only = second_pass(
            &*self.state,
            &relations,
            &sides,
            &wakes,
            &freed,
            &mut accounts,
            &mut contacts,
        )
        .await?;
        log_active(&relations, &wakes);
        let links = self.links_in_play(account_links, &contacts, any_links)?;
        let parked_before = self.parked_before(&pending)?;
        // The records move into the plan input; nothing is held twice.
        let input = PlanInput {
            contacts: std::mem::take(&mut contacts.records),
            deleted_contacts: contacts.deleted.clone(),
            match_only,
            quiet: wakes.iter().map(|w| *w == Wake::Quiet).collect(),
            accounts: accounts
                .iter_mut()
                .map(|a| AccountInput {
                    records: std::mem::take(&mut a.records),
                    deleted: a.deleted.clone(),
                })
                .collect(),
            links,
            link_counts,
            conflicts: self.state.conflicts(true)?,
            pending,
            unlinked_pairs: self.unlinked_pairs()?,
            contact_deleted: self.per_relation(|code| self.state.contact_deleted(code))?,
            codes_lost: self.state.codes_lost()?,
            directives,
        };
        let rest = ReadRest {
            contacts,
            accounts,
            parked_before,
            wakes,
        };
        Ok((input, rest))
    }

    /// After a run of another cut of the work (workers with partitions beside runs of
    /// the whole deployment, or another count), every record this engine's view knows
    /// is marked to be looked at again, once: compared with the baselines, not with
    /// hashes that run may have made stale (`Partition::view_is_stale`).
    fn look_again_if_stale(&mut self, run_id: i64) -> Result<(), EngineError> {
        // The run before this one tells, nearly always (a deployment that never used
        // partitions: its last run was a whole one); runs of another cut are rare, so a
        // window of runs back is enough when it does not.
        const WINDOW: usize = 200;
        let stale = match self.partition.view_is_stale(&self.state.runs(2)?, run_id) {
            Some(stale) => stale,
            None => (self.partition)
                .view_is_stale(&self.state.runs(WINDOW)?, run_id)
                .unwrap_or(false),
        };
        if !stale {
            return Ok(());
        }
        let contacts = (&self.relations.contacts_connector, EntityKind::Contact);
        let accounts = self
            .relations
            .relations
            .iter()
            .map(|r| (&r.connector, r.kind));
        let mut batch = tandem_state::StateBatch::default();
        for (connector, kind) in std::iter::once(contacts).chain(accounts) {
            let scope = self.partition.scope(connector, kind);
            for (id, hash) in self.state.hashes(&scope)? {
                if hash != RECHECK {
                    batch.set_hashes.push((scope.clone(), id.into(), RECHECK));
                }
            }
        }
        info!(
            records = batch.set_hashes.len(),
            "another cut of the work ran since this one last did: every record it knows \
             is looked at again"
        );
        self.state.commit(batch)?;
        Ok(())
    }

    /// Keeps this engine's partition's share of `plan` (`crate::partition`).
    fn cut(
        &self,
        plan: &mut Plan,
        links: &[Link],
        ambiguities: &mut [StoredAmbiguities],
    ) -> crate::partition::Cut {
        if !self.partition.is_matcher() {
            // Ambiguities are the matcher's to remember.
            ambiguities.iter_mut().for_each(|a| a.complete = false);
        }
        self.partition.cut(plan, links)
    }

    /// `get` of every relation's code, in config order.
    fn per_relation<T>(
        &self,
        get: impl Fn(&str) -> Result<T, tandem_state::StateError>,
    ) -> Result<Vec<T>, EngineError> {
        let values = self.relations.relations.iter().map(|r| get(&r.code));
        Ok(values.collect::<Result<_, _>>()?)
    }

    /// The first pass over every relation's accounts.
    async fn read_accounts(
        &self,
        wanted: &[HashSet<String>],
        ahead: &mut Prefetch,
    ) -> Result<Vec<ScopeRead>, EngineError> {
        let tag = self.fingerprint_tag();
        let mut accounts = Vec::new();
        for (r, relation) in self.relations.relations.iter().enumerate() {
            let connector = self.connector(&relation.connector, relation.kind, "relation")?;
            let wanted = &wanted[r];
            if let Some(left_out) = self.left_out(&relation.connector, relation.kind, wanted)? {
                accounts.push(left_out);
                continue;
            }
            let scope = self.partition.scope(&relation.connector, relation.kind);
            let mut read = read_scope(
                &*self.state,
                &relation.connector,
                &**connector,
                relation.kind,
                HowToRead {
                    skip_tag: (!self.full_read && wanted.is_empty()).then_some(tag.as_str()),
                    guard: self.delete_guard,
                    key_fields: account_key_fields(&self.relations, r),
                    fingerprint: ahead.fingerprint(&scope),
                    hashes: ahead.take(&scope),
                    scope,
                    spill: self.spill_at(accounts.iter().map(|a| a.records.byte_len()).sum()),
                },
                |a| wanted.contains(a.id.as_str()),
            )
            .await?;
            let rechecks_gone = self.rechecks_gone();
            fetch_missing(&*self.state, &**connector, &mut read, wanted, rechecks_gone).await?;
            accounts.push(read);
        }
        Ok(accounts)
    }

    /// Starts loading ahead the stored hashes of the scopes read by full listing that
    /// are not unchanged since the last run (as far as can be told before reading), in
    /// the order they are read, but the first, which is needed at once; with the
    /// fingerprints taken to tell.
    async fn read_ahead(&self) -> Result<Prefetch, EngineError> {
        let tag = self.fingerprint_tag();
        let skip_tag = (!self.full_read).then_some(tag.as_str());
        let accounts = self.relations.relations.iter();
        let sides = (accounts.map(|r| (r.connector.as_str(), r.kind))).chain([(
            self.relations.contacts_connector.as_str(),
            EntityKind::Contact,
        )]);
        let (mut scopes, mut fingerprints) = (Vec::new(), HashMap::new());
        for (name, kind) in sides {
            let Some(connector) = self.connectors.get(name) else {
                continue;
            };
            if !self.scopes.reads(name) || connector.capabilities().incremental {
                continue;
            }
            let scope = self.partition.scope(name, kind);
            // A failing fingerprint is taken again by the scope's read, which says why.
            let Ok(fingerprint) = connector.fingerprint(kind).await else {
                continue;
            };
            if !unchanged(&*self.state, &scope, skip_tag, fingerprint.as_deref())? {
                scopes.push(scope.clone());
            }
            fingerprints.insert(scope, fingerprint);
        }
        scopes.dedup();
        let scopes = scopes.into_iter().skip(1).collect();
        Ok(Prefetch::start(&*self.state, scopes).with_fingerprints(fingerprints))
    }

    /// The links of the accounts read, by (code, contact); the contact of a deleted
    /// account is wanted, to lose the code (R9, R13).
    fn links_of_accounts(
        &self,
        accounts: &[ScopeRead],
        any_links: bool,
        wanted_contacts: &mut HashSet<String>,
    ) -> Result<BTreeMap<(String, String), Link>, EngineError> {
        let mut links = BTreeMap::new();
        if !any_links {
            return Ok(links);
        }
        for (r, read) in accounts.iter().enumerate() {
            let code = &self.relations.relations[r].code;
            for link in self.state.links_of_accounts(code, &ids_of(read))? {
                if read.deleted.contains(&link.account_id) {
                    wanted_contacts.insert(link.contact_id.clone());
                }
                links.insert((link.code.clone(), link.contact_id.clone()), link);
            }
        }
        Ok(links)
    }

    /// The first pass over the contacts.
    /// Takes the last of the hashes loaded `ahead`: what is left of them goes here.
    async fn read_contacts(
        &self,
        wanted: &HashSet<String>,
        mut ahead: Prefetch,
        held: usize,
    ) -> Result<ScopeRead, EngineError> {
        let tag = self.fingerprint_tag();
        let name = &self.relations.contacts_connector;
        let connector = self.connector(name, EntityKind::Contact, "contacts.connector")?;
        if let Some(left_out) = self.left_out(name, EntityKind::Contact, wanted)? {
            return Ok(left_out);
        }
        let scope = self.partition.scope(name, EntityKind::Contact);
        let mut contacts = read_scope(
            &*self.state,
            name,
            &**connector,
            EntityKind::Contact,
            HowToRead {
                skip_tag: (!self.full_read && wanted.is_empty()).then_some(tag.as_str()),
                guard: self.delete_guard,
                key_fields: contact_key_fields(&self.relations),
                fingerprint: ahead.fingerprint(&scope),
                hashes: ahead.take(&scope),
                scope,
                spill: self.spill_at(held),
            },
            |c| wanted.contains(&c.id),
        )
        .await?;
        let rechecks_gone = self.rechecks_gone();
        fetch_missing(
            &*self.state,
            &**connector,
            &mut contacts,
            wanted,
            rechecks_gone,
        )
        .await?;
        Ok(contacts)
    }

    /// Whether a record marked to be looked at again that a change-reading connector no
    /// longer has is deleted (`fetch_missing`): in a partition's view, whose deleted
    /// records stay so marked until the matcher unlinks them.
    fn rechecks_gone(&self) -> bool {
        !self.partition.is_whole()
    }

    fn sides(&self) -> Result<Sides<'_>, EngineError> {
        let name = &self.relations.contacts_connector;
        let contacts = self.connector(name, EntityKind::Contact, "contacts.connector")?;
        let accounts = self
            .relations
            .relations
            .iter()
            .map(|r| self.connector(&r.connector, r.kind, "relation").cloned())
            .collect::<Result<_, _>>()?;
        Ok(Sides {
            accounts,
            contacts: &**contacts,
        })
    }

    /// Every link touching what is in play, and every link of those contacts (the
    /// invariant of [`PlanInput::links`]).
    fn links_in_play(
        &self,
        mut links: BTreeMap<(String, String), Link>,
        contacts: &ScopeRead,
        any_links: bool,
    ) -> Result<Vec<Link>, EngineError> {
        if any_links {
            let mut ids: BTreeSet<&str> = ids_of(contacts).into_iter().collect();
            ids.extend(links.keys().map(|(_, contact_id)| contact_id.as_str()));
            // A person asks through its company (R3), which may not be in play.
            let companies = contacts
                .records
                .values()
                .filter_map(|c| c.text(tandem_model::field::COMPANY_ID));
            ids.extend(companies);
            let ids: Vec<&str> = ids.into_iter().collect();
            for link in self.state.links_of_contacts(&ids)? {
                links.insert((link.code.clone(), link.contact_id.clone()), link);
            }
        }
        Ok(links.into_values().collect())
    }

    fn unlinked_pairs(&self) -> Result<Vec<(String, String, String)>, EngineError> {
        let mut pairs = Vec::new();
        for r in &self.relations.relations {
            for (contact, account) in self.state.unlinked_pairs(&r.code)? {
                pairs.push((r.code.clone(), contact, account));
            }
        }
        Ok(pairs)
    }

    /// Pairs and creates parked before this run, per relation (R17).
    fn parked_before(&self, pending: &Pending) -> Result<Vec<ParkedCount>, EngineError> {
        let parked = self.state.parked_links()?;
        Ok(self
            .relations
            .relations
            .iter()
            .map(|r| ParkedCount {
                links: parked.iter().filter(|l| l.code == r.code).count() as u64,
                creates: pending.parked_in(&r.code),
            })
            .collect())
    }

    /// A quiet relation matched nothing this run: its ambiguous matches are the ones
    /// its last matching found, still standing, and reported as such. A matching, which
    /// sees every unlinked record of both sides, replaces them.
    fn standing_ambiguities(
        &self,
        wakes: &[Wake],
        plan: &mut Plan,
    ) -> Result<Vec<StoredAmbiguities>, EngineError> {
        let mut ambiguities = Vec::new();
        for (r, relation) in self.relations.relations.iter().enumerate() {
            // Matching read every unlinked record of both sides (`second_pass`).
            let complete = wakes[r] != Wake::Quiet;
            let stored = match complete {
                // Compared with what the matching found.
                true => self.state.ambiguities(&relation.code)?,
                // Reported as they stand: thousands at a million partners, on every run.
                false => {
                    plan.ambiguous.extend(self.standing(&relation.code)?);
                    None
                }
            };
            ambiguities.push(StoredAmbiguities { complete, stored });
        }
        Ok(ambiguities)
    }

    /// The ambiguous matches relation `code` stands on, read from the stored text
    /// straight into their type. Text that does not read so is read as any stored
    /// JSON is: an error when it is no JSON, none when it is other JSON.
    fn standing(&self, code: &str) -> Result<Vec<Ambiguity>, EngineError> {
        let Some(text) = self.state.ambiguities_text(code)? else {
            return Ok(Vec::new());
        };
        if let Ok(standing) = serde_json::from_str(&text) {
            return Ok(standing);
        }
        let stored = self.state.ambiguities(code)?;
        Ok(stored
            .and_then(|json| serde_json::from_value(json).ok())
            .unwrap_or_default())
    }
}

/// Frees what a run read: millions of records take seconds, on another thread.
fn let_go(input: PlanInput) {
    if input.contacts.len() > 10_000 {
        std::thread::spawn(move || drop(input));
    }
}

fn is_directive(directives: &Directives, rejection: &crate::plan::Rejection) -> bool {
    let (code, contact) = (&rejection.code, &rejection.contact_id);
    directives
        .link
        .iter()
        .any(|(c, k, _)| c == code && k == contact)
        || directives
            .create
            .iter()
            .any(|(c, k)| c == code && k == contact)
        || directives
            .unlink
            .iter()
            .any(|(c, k)| c == code && k == contact)
        || directives
            .create_contact
            .iter()
            .any(|(c, a)| c == code && a == contact)
}

/// Per relation, the accounts whose contact this run found deleted: their links drop
/// (R12), and they are matched in the same run like any unlinked account (R4).
fn freed_accounts(
    relations: &Relations,
    contacts: &ScopeRead,
    contact_links: &[Link],
) -> Vec<HashSet<String>> {
    let mut freed = vec![HashSet::new(); relations.relations.len()];
    let dropped = contact_links
        .iter()
        .filter(|l| contacts.deleted.contains(&l.contact_id));
    for link in dropped {
        if let Some(r) = relations.index_of(&link.code) {
            freed[r].insert(link.account_id.clone());
        }
    }
    freed
}

/// The ids of the records read and deleted.
fn ids_of(read: &ScopeRead) -> Vec<&str> {
    (read.records.keys())
        .chain(read.deleted.iter().map(String::as_str))
        .collect()
}

fn log_active(relations: &Relations, wakes: &[Wake]) {
    let codes: Vec<(&str, Wake)> = relations
        .relations
        .iter()
        .zip(wakes)
        .filter(|(_, w)| **w != Wake::Quiet)
        .map(|(r, w)| (r.code.as_str(), *w))
        .collect();
    info!(active = ?codes, "relations to match");
}

/// The `planned` line, and the progress event that ends planning.
fn log_planned(plan: &Plan, took: std::time::Duration) {
    info!(
        ms = took.as_millis() as u64,
        hubs = plan.hubs.len(),
        creates = plan.creates.len() + plan.account_creates.len(),
        unlinks = plan.unlinks.len(),
        writes = plan.write_count(),
        "planned"
    );
    crate::progress::plan_end(plan.write_count() as u64);
}
