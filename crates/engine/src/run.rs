//! A run: read every side, load what the state knows about what was read, plan, and
//! (for `sync`) apply the plan (see `apply.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tandem_connector::{Connector, ConnectorError, Cursor, Listing};
use tandem_model::{EntityKind, Fields, Record};
use tandem_state::{Link, Scope, StateError, StateStore};
use tracing::info;

use crate::apply::apply;
use crate::matching::Ambiguity;
use crate::plan::{
    AccountInput, Directives, Plan, PlanInput, RelationCounts, lists_code, may_hold, plan,
};
use crate::relation::Relations;

/// Everything that stops a run as a whole. Record-level failures do not: they are
/// counted and reported in the [`RunReport`] (R17).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("connector `{connector}` is not configured (named by {by})")]
    UnknownConnector { connector: String, by: String },
    #[error("connector `{connector}` does not hold {kind}s (needed by {by})")]
    KindNotHeld {
        connector: String,
        kind: EntityKind,
        by: String,
    },
    #[error("reading {kind}s from connector `{connector}` failed: {source}")]
    Read {
        connector: String,
        kind: EntityKind,
        #[source]
        source: ConnectorError,
    },
    /// A completed full listing that would delete more of a scope's known records than
    /// the guard lets through, or all of them (R16); nothing was written.
    #[error(
        "a full listing would delete {deleted} of {known} known {} ({percent} %) from connector \
         `{connector}`{}; nothing was written. If these records really were deleted, run again \
         with --allow-deletes; the limit is [sync] max_delete_share (now {max_share})",
        kind.plural(),
        if *empty { " (it listed none at all: is the source missing, empty or misnamed?)" } else { "" },
        percent = deleted * 100 / (*known).max(1),
    )]
    TooManyDeletes {
        connector: String,
        kind: EntityKind,
        /// Known records absent from the listing.
        deleted: u64,
        /// Records of the scope the state knows (stored hashes).
        known: u64,
        /// The listing held no records at all.
        empty: bool,
        /// The configured limit, a share of `known`.
        max_share: f64,
    },
    /// An operator request (`link`, `create`, `unlink`, ...) that cannot be done;
    /// nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// One failed write or request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: String,
    pub contact_id: Option<String>,
    pub account_id: Option<String>,
    /// Where the write failed.
    pub side: crate::side::Side,
    pub error: String,
    /// Failed twice the same way: left alone until `tandem retry` (R17).
    pub parked: bool,
}

/// What a read found, per connector and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    pub connector: String,
    pub kind: EntityKind,
    pub records: u64,
    /// New or changed since the last run, or written by the last run without being
    /// read (looked at again).
    pub changed: u64,
    pub deleted: u64,
    /// Records this run looked at beyond reading: the changed ones, and unchanged ones
    /// matching or the run needed. A run without changes keeps none.
    pub in_play: u64,
    /// Not read at all: the connector's fingerprint is the one remembered at the end
    /// of the last run, so nothing changed (`--full-read` reads anyway).
    pub skipped: bool,
}

/// The result of `plan` or `sync`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run's id in the state; `None` for a plan.
    pub run_id: Option<i64>,
    pub mode: &'static str,
    pub read: Vec<ReadStats>,
    pub counts: Vec<RelationCounts>,
    /// Record writes planned (plan) or made (sync).
    pub writes: u64,
    pub ambiguous: Vec<Ambiguity>,
    pub failures: Vec<Failure>,
    /// The actions, in detail.
    pub plan: Plan,
}

impl RunReport {
    pub fn failed(&self) -> u64 {
        self.counts.iter().map(|c| c.failed).sum()
    }
}

/// The content hash remembered for a record: its fields and its version, so that
/// any change the system reports, even to data Tandem does not map, is noticed.
/// Never 0, which marks a record to be looked at again.
pub fn record_hash(fields: &Fields, version: Option<&str>) -> u64 {
    record_hash_of(fields.content_hash(), version)
}

/// [`record_hash`] from the fields' content hash.
pub(crate) fn record_hash_of(content_hash: u64, version: Option<&str>) -> u64 {
    let mut buf = content_hash.to_le_bytes().to_vec();
    buf.extend_from_slice(version.unwrap_or("").as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf).max(1)
}

/// Hash value that makes the next run look at a record again.
pub(crate) const RECHECK: u64 = 0;

pub(crate) struct ScopeRead {
    pub scope: Scope,
    pub records: BTreeMap<String, Record>,
    pub deleted: BTreeSet<String>,
    /// Hash of each record kept in `records`, as read.
    pub hashes: crate::IdMap<String, u64>,
    /// Records whose hash differed from the stored one.
    pub changed: crate::IdSet<String>,
    pub cursor: Option<Cursor>,
    /// The connector's fingerprint taken before reading, if it gives one.
    pub fingerprint: Option<String>,
    pub stats: ReadStats,
}

impl ScopeRead {
    /// Nothing read yet.
    fn empty(scope: Scope, fingerprint: Option<String>) -> ScopeRead {
        let stats = ReadStats {
            connector: scope.connector.clone(),
            kind: scope.kind,
            records: 0,
            changed: 0,
            deleted: 0,
            in_play: 0,
            skipped: false,
        };
        ScopeRead {
            scope,
            records: BTreeMap::new(),
            deleted: BTreeSet::new(),
            hashes: crate::IdMap::default(),
            changed: crate::IdSet::default(),
            cursor: None,
            fingerprint,
            stats,
        }
    }
}

/// Runs plans and syncs for one deployment.
pub struct Engine<'a> {
    pub(crate) relations: Relations,
    pub(crate) connectors: HashMap<String, Arc<dyn Connector>>,
    pub(crate) state: &'a mut dyn StateStore,
    /// Read every scope even when its fingerprint says nothing changed.
    pub(crate) full_read: bool,
    /// How many deletes a full listing may imply (R16).
    pub(crate) delete_guard: DeleteGuard,
}

/// What stops a run whose full listing would delete too much (R16): more than
/// `max_share` of a scope's known records, or all of them (an empty listing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteGuard {
    /// A share of the known records, from 0 to 1.
    pub max_share: f64,
    /// Let every delete through (`--allow-deletes`).
    pub allow: bool,
}

impl DeleteGuard {
    /// The default limit: half of a scope's known records.
    pub const DEFAULT_MAX_SHARE: f64 = 0.5;

    /// Whether deleting `deleted` of `known` records, from a listing of `listed`
    /// records, must stop the run. Nothing known, nothing guarded.
    pub fn refuses(&self, deleted: u64, known: u64, listed: u64) -> bool {
        !self.allow
            && deleted > 0
            && known > 0
            && (listed == 0 || deleted as f64 > self.max_share * known as f64)
    }

    /// [`DeleteGuard::refuses`] as the error that stops the run, naming the scope.
    fn check(
        &self,
        scope: &Scope,
        deleted: u64,
        known: u64,
        listed: u64,
    ) -> Result<(), EngineError> {
        if !self.refuses(deleted, known, listed) {
            return Ok(());
        }
        Err(EngineError::TooManyDeletes {
            connector: scope.connector.clone(),
            kind: scope.kind,
            deleted,
            known,
            empty: listed == 0,
            max_share: self.max_share,
        })
    }
}

impl Default for DeleteGuard {
    fn default() -> DeleteGuard {
        DeleteGuard {
            max_share: DeleteGuard::DEFAULT_MAX_SHARE,
            allow: false,
        }
    }
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("relations", &self.relations)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Prepared {
    pub input: PlanInput,
    pub plan: Plan,
    pub contacts: ScopeRead,
    pub accounts: Vec<ScopeRead>,
    /// Pairs and creates parked before this run, per relation.
    pub parked_before: Vec<ParkedCount>,
    /// Per relation: the ambiguous matches remembered, and whether this run's
    /// matching was complete enough to replace them.
    pub ambiguities: Vec<StoredAmbiguities>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct StoredAmbiguities {
    pub complete: bool,
    pub stored: Option<serde_json::Value>,
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
        let prepared = self.prepare(directives).await?;
        let writes = prepared.plan.write_count() as u64;
        let mut counts = prepared.plan.counts.clone();
        for (c, parked) in counts.iter_mut().zip(&prepared.parked_before) {
            c.parked = parked.links + parked.creates;
            // Parked pairs are neither updated nor unchanged.
            c.unchanged = c.unchanged.saturating_sub(parked.links);
        }
        let failures = rejections(&prepared.plan);
        Ok(RunReport {
            run_id: None,
            mode: "plan",
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
        let run_id = self.state.begin_run("sync")?;
        let report = self.run_sync(run_id, directives).await;
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
        let prepared = self.prepare(directives).await?;
        if operator
            && let Some(rejection) = prepared
                .plan
                .rejected
                .iter()
                .find(|r| is_directive(&prepared.input.directives, r))
        {
            return Err(EngineError::Refused(format!(
                "{}: {}",
                rejection.code, rejection.error
            )));
        }
        apply(self, run_id, prepared).await
    }

    async fn prepare(&mut self, directives: Directives) -> Result<Prepared, EngineError> {
        let relations = self.relations.clone();
        let mut link_counts = Vec::new();
        for r in &relations.relations {
            link_counts.push(self.state.count_links(&r.code)?);
        }
        let any_links = link_counts.iter().any(|n| *n > 0);
        let tag = self.fingerprint_tag();
        let pending = self.state.pending_creates()?;
        let needed = Needed::of(&relations, &directives, &*self.state, &pending)?;
        let wanted_accounts = &needed.accounts;

        // First pass: keep what changed and what the run needs; unchanged records
        // stream by. Accounts first: a deleted account's contact must be read to lose
        // the code (R9).
        let mut accounts = Vec::new();
        for (r, relation) in relations.relations.iter().enumerate() {
            let connector = self
                .connector(&relation.connector, relation.kind, "relation")?
                .clone();
            let wanted = &wanted_accounts[r];
            let mut read = read_scope(
                &*self.state,
                &relation.connector,
                &*connector,
                relation.kind,
                (!self.full_read && wanted.is_empty()).then_some(tag.as_str()),
                self.delete_guard,
                |a| wanted.contains(a.id.as_str()),
            )
            .await?;
            fetch_missing(&*self.state, &*connector, &mut read, wanted).await?;
            accounts.push(read);
        }
        let mut account_links: BTreeMap<(String, String), Link> = BTreeMap::new();
        let mut wanted_contacts: HashSet<String> = needed.contacts;
        if any_links {
            for (r, read) in accounts.iter().enumerate() {
                let ids: Vec<&str> = read
                    .records
                    .keys()
                    .chain(&read.deleted)
                    .map(String::as_str)
                    .collect();
                for link in self
                    .state
                    .links_of_accounts(&relations.relations[r].code, &ids)?
                {
                    if read.deleted.contains(&link.account_id) {
                        wanted_contacts.insert(link.contact_id.clone());
                    }
                    account_links.insert((link.code.clone(), link.contact_id.clone()), link);
                }
            }
        }
        let contacts_name = relations.contacts_connector.clone();
        let contacts_connector = self
            .connector(&contacts_name, EntityKind::Contact, "contacts.connector")?
            .clone();
        let mut contacts = read_scope(
            &*self.state,
            &contacts_name,
            &*contacts_connector,
            EntityKind::Contact,
            (!self.full_read && wanted_contacts.is_empty()).then_some(tag.as_str()),
            self.delete_guard,
            |c| wanted_contacts.contains(&c.id),
        )
        .await?;
        fetch_missing(
            &*self.state,
            &*contacts_connector,
            &mut contacts,
            &wanted_contacts,
        )
        .await?;

        // Which relations need matching this run. Unchanged unlinked records were
        // matched when they were last read, and nothing can pair them now unless
        // something of the relation changed: an unlinked record, a dropped link, an
        // operator request, a pending create. A quiet relation keeps no unchanged
        // record in play, so a run without changes costs the reading.
        let contact_links: Vec<Link> = if any_links {
            let ids: Vec<&str> = contacts
                .records
                .keys()
                .chain(&contacts.deleted)
                .map(String::as_str)
                .collect();
            self.state.links_of_contacts(&ids)?
        } else {
            Vec::new()
        };
        let mut active = Vec::new();
        for (r, relation) in relations.relations.iter().enumerate() {
            let code = relation.code.as_str();
            let accounts_linked: HashSet<&str> = account_links
                .values()
                .filter(|l| l.code == code)
                .map(|l| l.account_id.as_str())
                .collect();
            let contacts_linked: HashSet<&str> = contact_links
                .iter()
                .filter(|l| l.code == code)
                .map(|l| l.contact_id.as_str())
                .collect();
            let read = &accounts[r];
            let by_operator = directives.link.iter().any(|(c, _, _)| c == code)
                || directives.create.iter().any(|(c, _)| c == code)
                || directives.unlink.iter().any(|(c, _)| c == code)
                || directives.create_contact.iter().any(|(c, _)| c == code);
            let pending_here = pending.iter().any(|p| p.code == code && !p.parked);
            // A delete, linked or not, may end an ambiguity: matched again.
            let account_side = read
                .changed
                .iter()
                .any(|id| !accounts_linked.contains(id.as_str()))
                || !read.deleted.is_empty();
            let contact_side = contacts
                .changed
                .iter()
                .filter_map(|id| contacts.records.get(id))
                .any(|c| {
                    (may_hold(c, relation.kind) && !contacts_linked.contains(c.id.as_str()))
                        || lists_code(c, code)
                })
                || !contacts.deleted.is_empty();
            active.push(by_operator || pending_here || account_side || contact_side);
        }
        drop(contact_links);

        // Second pass, for relations that need matching: the unchanged unlinked records
        // of full listings, which the first pass let go by. A change-reading connector
        // sends only what changed; matching sees what it sent.
        let contacts_full = !contacts_connector.capabilities().incremental;
        let mut linked_contacts: Vec<Option<HashSet<String>>> = vec![None; accounts.len()];
        for (r, relation) in relations.relations.iter().enumerate() {
            if !active[r] {
                continue;
            }
            let connector = self
                .connector(&relation.connector, relation.kind, "relation")?
                .clone();
            // Records the first pass let go by (or did not read at all).
            let passed = |read: &ScopeRead| {
                read.stats.skipped || read.stats.records > read.records.len() as u64
            };
            let accounts_skipped = passed(&accounts[r]);
            let contacts_skipped = passed(&contacts);
            // A change-reading connector sent only what changed: its unchanged unlinked
            // records are read from a full listing, or a new record on the other side
            // could not match them (and would get a duplicate, R6).
            let accounts_full = !connector.capabilities().incremental;
            let accounts_again = !accounts_full || accounts_skipped;
            if !accounts_again && (contacts_full && !contacts_skipped) {
                continue;
            }
            let (linked_here, linked_accounts) = self.state.linked_ids(&relation.code)?;
            linked_contacts[r] = Some(linked_here);
            if accounts_again {
                let read = &mut accounts[r];
                let more = read_more(&relation.connector, &*connector, relation.kind, |a| {
                    !read.records.contains_key(&a.id) && !linked_accounts.contains(&a.id)
                })
                .await?;
                add_in_play(read, more);
            }
        }
        let mut match_only = HashSet::new();
        if linked_contacts.iter().any(Option::is_some) {
            let kinds: Vec<EntityKind> = relations.relations.iter().map(|r| r.kind).collect();
            let more = read_more(
                &contacts_name,
                &*contacts_connector,
                EntityKind::Contact,
                |c| {
                    !contacts.records.contains_key(&c.id)
                        && linked_contacts.iter().zip(&kinds).any(|(linked, kind)| {
                            linked
                                .as_ref()
                                .is_some_and(|l| may_hold(c, *kind) && !l.contains(&c.id))
                        })
                },
            )
            .await?;
            match_only.extend(more.iter().map(|c| c.id.clone()));
            add_in_play(&mut contacts, more);
        }
        drop(linked_contacts);
        info!(
            active = ?relations
                .relations
                .iter()
                .zip(&active)
                .filter(|(_, a)| **a)
                .map(|(r, _)| r.code.as_str())
                .collect::<Vec<_>>(),
            "relations to match"
        );

        // Every link touching what is in play, and every link of those contacts.
        let mut links = account_links;
        if any_links {
            let mut ids: BTreeSet<&str> = contacts
                .records
                .keys()
                .chain(&contacts.deleted)
                .map(String::as_str)
                .collect();
            for (_, contact_id) in links.keys() {
                ids.insert(contact_id);
            }
            // A person asks through its company (R3), which may not be in play.
            for contact in contacts.records.values() {
                if let Some(company) = contact.fields.text(tandem_model::field::COMPANY_ID) {
                    ids.insert(company);
                }
            }
            let ids: Vec<&str> = ids.into_iter().collect();
            let more = self.state.links_of_contacts(&ids)?;
            for link in more {
                links.insert((link.code.clone(), link.contact_id.clone()), link);
            }
        }
        let mut unlinked_pairs = Vec::new();
        for r in &relations.relations {
            for (contact, account) in self.state.unlinked_pairs(&r.code)? {
                unlinked_pairs.push((r.code.clone(), contact, account));
            }
        }
        let parked = self.state.parked_links()?;
        let parked_before = relations
            .relations
            .iter()
            .map(|r| ParkedCount {
                links: parked.iter().filter(|l| l.code == r.code).count() as u64,
                creates: pending
                    .iter()
                    .filter(|p| p.code == r.code && p.parked)
                    .count() as u64,
            })
            .collect();

        // The records move into the plan input; nothing is held twice.
        let input = PlanInput {
            contacts: std::mem::take(&mut contacts.records),
            deleted_contacts: contacts.deleted.clone(),
            match_only,
            accounts: accounts
                .iter_mut()
                .map(|a| AccountInput {
                    records: std::mem::take(&mut a.records),
                    deleted: a.deleted.clone(),
                })
                .collect(),
            links: links.into_values().collect(),
            link_counts,
            conflicts: self.state.conflicts(true)?,
            pending,
            unlinked_pairs,
            contact_deleted: relations
                .relations
                .iter()
                .map(|r| self.state.contact_deleted(&r.code))
                .collect::<Result<_, _>>()?,
            directives,
        };
        let started = std::time::Instant::now();
        let mut plan = plan(&relations, &input);
        // A quiet relation matched nothing this run: its ambiguous matches are the ones
        // its last complete matching found, still standing, and reported as such.
        let mut ambiguities = Vec::new();
        for (r, relation) in relations.relations.iter().enumerate() {
            let stored = self.state.ambiguities(&relation.code)?;
            if !active[r] {
                let standing: Vec<Ambiguity> = stored
                    .clone()
                    .and_then(|json| serde_json::from_value(json).ok())
                    .unwrap_or_default();
                plan.counts[r].ambiguous += standing.len() as u64;
                plan.ambiguous.extend(standing);
            }
            // Only a matching that saw every unlinked record of both sides (full
            // listings) knows all of them; a change-reading side shows only some.
            let complete = active[r]
                && contacts_full
                && !self
                    .connector(&relation.connector, relation.kind, "relation")?
                    .capabilities()
                    .incremental;
            ambiguities.push(StoredAmbiguities { complete, stored });
        }
        info!(
            ms = started.elapsed().as_millis() as u64,
            hubs = plan.hubs.len(),
            creates = plan.creates.len() + plan.account_creates.len(),
            unlinks = plan.unlinks.len(),
            writes = plan.write_count(),
            "planned"
        );
        Ok(Prepared {
            input,
            plan,
            contacts,
            accounts,
            parked_before,
            ambiguities,
        })
    }
}

/// Records a run needs whether or not they changed: named by an operator, or with
/// work left over from an earlier run (an intent a run cut short, a create or link to
/// try again, a record marked to be looked at again).
struct Needed {
    /// Per relation, account ids.
    accounts: Vec<HashSet<String>>,
    contacts: HashSet<String>,
}

impl Needed {
    fn of(
        relations: &Relations,
        directives: &Directives,
        state: &dyn StateStore,
        pending: &[tandem_state::PendingCreate],
    ) -> Result<Needed, EngineError> {
        let mut needed = Needed {
            accounts: vec![HashSet::new(); relations.relations.len()],
            contacts: HashSet::new(),
        };
        let mut account = |code: &str, id: &str| {
            if let Some(r) = relations.index_of(code) {
                needed.accounts[r].insert(id.to_owned());
            }
        };
        for (code, _, a) in &directives.link {
            account(code, a);
        }
        for (code, a) in &directives.create_contact {
            account(code, a);
        }
        let links = state.links_with_intent()?;
        for link in &links {
            account(&link.code, &link.account_id);
        }
        for p in pending.iter().filter(|p| !p.parked) {
            match p.side.as_str() {
                "contact" => account(&p.code, &p.source_id),
                crate::plan::PENDING_LINK => {
                    if let Some(a) = p.fields.text("account_id") {
                        account(&p.code, a);
                    }
                }
                _ => {}
            }
        }
        needed.contacts.extend(
            (directives.link.iter().map(|(_, c, _)| c))
                .chain(directives.create.iter().map(|(_, c)| c))
                .chain(directives.unlink.iter().map(|(_, c)| c))
                .chain(links.iter().map(|l| &l.contact_id))
                .chain(
                    pending
                        .iter()
                        .filter(|p| !p.parked && p.side != "contact")
                        .map(|p| &p.source_id),
                )
                .cloned(),
        );
        Ok(needed)
    }
}

/// A change-reading connector sends what changed; the records the run needs beyond
/// that (`wanted`, and those marked to be looked at again) are read by id. A full
/// listing already held every record there is.
async fn fetch_missing(
    state: &dyn StateStore,
    connector: &dyn Connector,
    read: &mut ScopeRead,
    wanted: &HashSet<String>,
) -> Result<(), EngineError> {
    if !connector.capabilities().incremental || read.stats.skipped {
        return Ok(());
    }
    let rechecks = state.rechecks(&read.scope)?;
    let missing: BTreeSet<&str> = wanted
        .iter()
        .chain(&rechecks)
        .map(String::as_str)
        .filter(|id| !read.records.contains_key(*id) && !read.deleted.contains(*id))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = missing.into_iter().collect();
    let (connector_name, kind) = (read.scope.connector.clone(), read.scope.kind);
    let records = connector
        .read_ids(kind, &ids)
        .await
        .map_err(read_error(&connector_name, kind))?;
    let stored = state.hashes_of(&read.scope, &ids)?;
    info!(
        connector = connector_name,
        kind = kind.plural(),
        asked = ids.len(),
        found = records.len(),
        "read by id: records the run needs"
    );
    for record in records {
        let hash = record_hash(&record.fields, record.version.as_deref());
        if stored.get(&record.id) != Some(&hash) {
            read.changed.insert(record.id.clone());
        }
        read.hashes.insert(record.id.clone(), hash);
        read.records.insert(record.id.clone(), record);
    }
    read.stats.in_play = read.records.len() as u64;
    Ok(())
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

/// Rejected requests, as failures of the report.
pub(crate) fn rejections(plan: &Plan) -> Vec<Failure> {
    plan.rejected
        .iter()
        .map(|r| Failure {
            code: r.code.clone(),
            contact_id: Some(r.contact_id.clone()),
            account_id: None,
            side: crate::side::Side::Contact,
            error: r.error.clone(),
            parked: false,
        })
        .collect()
}

/// A failed read of `kind` from `connector_name`, as the engine reports it.
fn read_error(connector_name: &str, kind: EntityKind) -> impl Fn(ConnectorError) -> EngineError {
    move |source| EngineError::Read {
        connector: connector_name.to_owned(),
        kind,
        source,
    }
}

/// Reads all pages of one connector and kind. Keeps the records that changed since
/// the last run, plus the unchanged ones `keep` asks for; finds deletes from
/// tombstones, and from a full listing only once it completed (R16), as far as
/// `guard` lets them through.
async fn read_scope(
    state: &dyn StateStore,
    connector_name: &str,
    connector: &dyn Connector,
    kind: EntityKind,
    skip_tag: Option<&str>,
    guard: DeleteGuard,
    keep: impl Fn(&Record) -> bool,
) -> Result<ScopeRead, EngineError> {
    let scope = Scope::new(connector_name, kind);
    // A fingerprint equal to the one remembered at the end of the last run (with the
    // same configuration) means the records are those the state describes: nothing to
    // read, unless some record waits to be looked at again.
    let fingerprint = connector
        .fingerprint(kind)
        .await
        .map_err(read_error(connector_name, kind))?;
    let unchanged = match (skip_tag, &fingerprint) {
        (Some(tag), Some(fingerprint)) => {
            state.fingerprint(&scope)? == Some(format!("{tag}:{fingerprint}"))
                && !state.has_rechecks(&scope)?
        }
        _ => false,
    };
    if unchanged {
        info!(
            connector = connector_name,
            kind = kind.plural(),
            "not read: unchanged since the last run"
        );
        let mut out = ScopeRead::empty(scope, fingerprint);
        out.stats.skipped = true;
        return Ok(out);
    }
    let incremental = connector.capabilities().incremental;
    // A full listing is compared with every stored hash (what is missing is deleted);
    // changes only with the hashes of the records they bring.
    let mut stored = if incremental {
        HashMap::new()
    } else {
        state.hashes(&scope)?
    };
    let mut loaded_all = !incremental;
    // Records of the scope the state knows: what a full listing is held against.
    let mut known = stored.len() as u64;
    let mut cursor = if incremental {
        state.cursor(&scope)?.map(Cursor)
    } else {
        None
    };
    let mut out = ScopeRead::empty(scope, fingerprint);
    info!(connector = connector_name, kind = kind.plural(), "reading");
    let started = std::time::Instant::now();
    let mut kept: Vec<Record> = Vec::new();
    let listing = loop {
        let page = connector
            .read(kind, cursor.as_ref())
            .await
            .map_err(read_error(connector_name, kind))?;
        if incremental && page.listing == Listing::Changes {
            let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
            stored.extend(state.hashes_of(&out.scope, &ids)?);
        } else if incremental && !loaded_all {
            // A full listing from a change-reading connector (first run, or a token it
            // rejected): compare with everything, so missing records are deletes.
            stored = state.hashes(&out.scope)?;
            known = stored.len() as u64;
            loaded_all = true;
        }
        for record in page.records {
            if record.deleted {
                stored.remove(&record.id);
                out.deleted.insert(record.id);
                continue;
            }
            out.stats.records += 1;
            let hash = record_hash(&record.fields, record.version.as_deref());
            let changed = stored.remove(&record.id) != Some(hash);
            out.stats.changed += u64::from(changed);
            if changed || keep(&record) {
                if changed {
                    out.changed.insert(record.id.clone());
                }
                out.hashes.insert(record.id.clone(), hash);
                kept.push(record);
            }
        }
        cursor = page.cursor;
        if !page.has_more {
            break page.listing;
        }
    };
    // Built at once from the kept records: a sorted bulk build instead of a search per
    // insert. A record sent twice keeps its last copy, as an insert would.
    out.records = kept.into_iter().map(|r| (r.id.clone(), r)).collect();
    if listing == Listing::Full {
        // Seen before, absent from a completed full listing: deleted, unless that is
        // too many to believe.
        guard.check(&out.scope, stored.len() as u64, known, out.stats.records)?;
        out.deleted.extend(stored.into_keys());
    }
    out.stats.deleted = out.deleted.len() as u64;
    out.stats.in_play = out.records.len() as u64;
    out.cursor = if incremental { cursor } else { None };
    info!(
        connector = connector_name,
        kind = kind.plural(),
        records = out.stats.records,
        changed = out.stats.changed,
        deleted = out.stats.deleted,
        kept = out.records.len(),
        ms = started.elapsed().as_millis() as u64,
        "read"
    );
    Ok(out)
}

/// Puts records of a second pass in play, with their hashes (they did not change).
fn add_in_play(read: &mut ScopeRead, records: Vec<Record>) {
    info!(
        connector = read.stats.connector,
        kind = read.stats.kind.plural(),
        records = records.len(),
        "read again: unlinked records for matching"
    );
    for record in records {
        let hash = record_hash(&record.fields, record.version.as_deref());
        read.hashes.insert(record.id.clone(), hash);
        read.records.insert(record.id.clone(), record);
    }
    read.stats.in_play = read.records.len() as u64;
}

/// Reads a full listing again and returns the records `keep` asks for; nothing else
/// (hashes, deletes, cursors) is looked at.
async fn read_more(
    connector_name: &str,
    connector: &dyn Connector,
    kind: EntityKind,
    keep: impl Fn(&Record) -> bool,
) -> Result<Vec<Record>, EngineError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = connector
            .read(kind, cursor.as_ref())
            .await
            .map_err(read_error(connector_name, kind))?;
        out.extend(page.records.into_iter().filter(|r| !r.deleted && keep(r)));
        cursor = page.cursor;
        if !page.has_more {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeleteGuard;

    #[test]
    fn r16_the_guard_counts_shares_of_known_records() {
        let half = DeleteGuard::default();
        assert!(!half.refuses(1, 2, 1), "50 % is not over half");
        assert!(half.refuses(2, 3, 1), "66 % is");
        assert!(!half.refuses(0, 3, 3));
        assert!(!half.refuses(0, 0, 0), "nothing known, nothing guarded");
        let all = DeleteGuard {
            max_share: 1.0,
            allow: false,
        };
        assert!(!all.refuses(3, 3, 2), "all known replaced by others");
        assert!(all.refuses(3, 3, 0), "an empty listing is always stopped");
        let allowed = DeleteGuard {
            max_share: 0.0,
            allow: true,
        };
        assert!(!allowed.refuses(3, 3, 0));
    }
}
