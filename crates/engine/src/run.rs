//! A run: read every side, load what the state knows about what was read, plan, and
//! (for `sync`) apply the plan in batches and remember the outcome.
//!
//! Order of a sync, so that a crash at any point loses nothing: writes to the
//! systems first, then the links and baselines they produced, then the content hashes
//! and cursors that let the next run skip what is settled. A baseline is only stored
//! after both sides hold it, so an interrupted run is finished by the next one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tandem_connector::{Changes, Connector, ConnectorError, Cursor, Listing, WriteOp, WriteOutcome};
use tandem_model::{EntityKind, Fields, Record, Timestamp};
use tandem_state::{Link, Scope, StateBatch, StateError, StateStore};
use tracing::info;

use crate::matching::Ambiguity;
use crate::plan::{FieldChange, Plan, PlanInput, RelationCounts, may_hold, plan};
use crate::relation::Relations;

/// Everything that stops a run as a whole. Record-level failures do not: they are
/// counted and reported in the [`RunReport`] (R17).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("connector `{connector}` is not configured (named by {by})")]
    UnknownConnector { connector: String, by: String },
    #[error("connector `{connector}` does not hold {kind}s (needed by {by})")]
    KindNotHeld { connector: String, kind: EntityKind, by: String },
    #[error("reading {kind}s from connector `{connector}` failed: {source}")]
    Read {
        connector: String,
        kind: EntityKind,
        #[source]
        source: ConnectorError,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// One failed write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: String,
    pub contact_id: Option<String>,
    pub account_id: String,
    /// `contact` or `account`: where the write failed.
    pub side: &'static str,
    pub error: String,
}

/// What a read found, per connector and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    pub connector: String,
    pub kind: EntityKind,
    pub records: u64,
    /// New or changed since the last run.
    pub changed: u64,
    pub deleted: u64,
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
    let mut buf = fields.content_hash().to_le_bytes().to_vec();
    buf.extend_from_slice(version.unwrap_or("").as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf).max(1)
}

/// Hash value that makes the next run look at a record again.
const RECHECK: u64 = 0;
/// State changes per transaction while applying.
const COMMIT_EVERY: usize = 20_000;

struct ScopeRead {
    scope: Scope,
    records: BTreeMap<String, Record>,
    deleted: BTreeSet<String>,
    /// Hash of each record kept in `records`, as read.
    hashes: HashMap<String, u64>,
    cursor: Option<Cursor>,
    stats: ReadStats,
}

/// Runs plans and syncs for one deployment.
pub struct Engine<'a> {
    relations: Relations,
    connectors: HashMap<String, Arc<dyn Connector>>,
    state: &'a mut dyn StateStore,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("relations", &self.relations).finish_non_exhaustive()
    }
}

struct Prepared {
    input: PlanInput,
    plan: Plan,
    contacts: ScopeRead,
    accounts: Vec<ScopeRead>,
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
        };
        engine.connector(&engine.relations.contacts_connector, EntityKind::Contact, "contacts.connector")?;
        for r in &engine.relations.relations {
            engine.connector(&r.connector, r.kind, &format!("relations.{}.connector", r.code))?;
        }
        Ok(engine)
    }

    fn connector(&self, name: &str, kind: EntityKind, by: &str) -> Result<&Arc<dyn Connector>, EngineError> {
        let connector = self.connectors.get(name).ok_or_else(|| EngineError::UnknownConnector {
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

    /// What `sync` would do now; writes nothing anywhere.
    pub async fn plan(&mut self) -> Result<RunReport, EngineError> {
        let prepared = self.prepare().await?;
        let writes = prepared.plan.write_count() as u64;
        Ok(RunReport {
            run_id: None,
            mode: "plan",
            read: std::iter::once(&prepared.contacts)
                .chain(&prepared.accounts)
                .map(|s| s.stats.clone())
                .collect(),
            counts: prepared.plan.counts.clone(),
            writes,
            ambiguous: prepared.plan.ambiguous.clone(),
            failures: Vec::new(),
            plan: prepared.plan,
        })
    }

    /// Reads, plans and applies.
    pub async fn sync(&mut self) -> Result<RunReport, EngineError> {
        let prepared = self.prepare().await?;
        let run_id = self.state.begin_run("sync")?;
        let report = self.apply(run_id, prepared).await;
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

    async fn prepare(&mut self) -> Result<Prepared, EngineError> {
        let relations = &self.relations;
        // Which records are linked, to keep unlinked ones in play for matching.
        let mut linked_contacts = Vec::new();
        let mut linked_accounts = Vec::new();
        let mut link_counts = Vec::new();
        for r in &relations.relations {
            let (contacts, accounts) = self.state.linked_ids(&r.code)?;
            link_counts.push(accounts.len() as u64);
            linked_contacts.push(contacts);
            linked_accounts.push(accounts);
        }

        let contacts_name = relations.contacts_connector.clone();
        let contacts_connector = self.connector(&contacts_name, EntityKind::Contact, "contacts.connector")?.clone();
        let kinds: Vec<EntityKind> = relations.relations.iter().map(|r| r.kind).collect();
        let contacts = read_scope(&*self.state, &contacts_name, &*contacts_connector, EntityKind::Contact, |c| {
            kinds
                .iter()
                .zip(&linked_contacts)
                .any(|(kind, linked)| may_hold(c, *kind) && !linked.contains(&c.id))
        })
        .await?;
        let mut accounts = Vec::new();
        for (r, relation) in relations.relations.iter().enumerate() {
            let connector = self.connector(&relation.connector, relation.kind, "relation")?.clone();
            let linked = &linked_accounts[r];
            let read = read_scope(&*self.state, &relation.connector, &*connector, relation.kind, |a| {
                !linked.contains(&a.id)
            })
            .await?;
            accounts.push(read);
        }
        drop(linked_contacts);
        drop(linked_accounts);

        // Every link touching what is in play, and every link of those contacts.
        let mut links: BTreeMap<(String, String), Link> = BTreeMap::new();
        if link_counts.iter().any(|n| *n > 0) {
            let ids: Vec<&str> = contacts
                .records
                .keys()
                .chain(&contacts.deleted)
                .map(String::as_str)
                .collect();
            for link in self.state.links_of_contacts(&ids)? {
                links.insert((link.code.clone(), link.contact_id.clone()), link);
            }
            let mut more_contacts: BTreeSet<String> = BTreeSet::new();
            for (r, read) in accounts.iter().enumerate() {
                let ids: Vec<&str> = read.records.keys().chain(&read.deleted).map(String::as_str).collect();
                for link in self.state.links_of_accounts(&relations.relations[r].code, &ids)? {
                    if !contacts.records.contains_key(&link.contact_id) {
                        more_contacts.insert(link.contact_id.clone());
                    }
                    links.insert((link.code.clone(), link.contact_id.clone()), link);
                }
            }
            let ids: Vec<&str> = more_contacts.iter().map(String::as_str).collect();
            for link in self.state.links_of_contacts(&ids)? {
                links.insert((link.code.clone(), link.contact_id.clone()), link);
            }
        }

        // The records move into the plan input; nothing is held twice.
        let mut contacts = contacts;
        let input = PlanInput {
            contacts: std::mem::take(&mut contacts.records),
            deleted_contacts: contacts.deleted.clone(),
            accounts: accounts
                .iter_mut()
                .map(|a| crate::plan::AccountInput {
                    records: std::mem::take(&mut a.records),
                    deleted: a.deleted.clone(),
                })
                .collect(),
            links: links.into_values().collect(),
            link_counts,
        };
        let plan = plan(relations, &input);
        info!(
            hubs = plan.hubs.len(),
            creates = plan.creates.len(),
            unlinks = plan.unlinks.len(),
            writes = plan.write_count(),
            "planned"
        );
        Ok(Prepared {
            input,
            plan,
            contacts,
            accounts,
        })
    }

    async fn apply(&mut self, run_id: i64, prepared: Prepared) -> Result<RunReport, EngineError> {
        let Prepared {
            input,
            mut plan,
            contacts,
            accounts,
        } = prepared;
        drop(input);
        let now = Timestamp::now();
        let relations = self.relations.clone();
        let contacts_connector = self.connectors[&relations.contacts_connector].clone();
        let mut batch = StateBatch::default();
        let mut failures = Vec::new();
        let mut writes = 0u64;
        // Records whose hash is settled by the plan's outcome; the rest keep their read hash.
        let mut settled_contacts: HashSet<String> = HashSet::new();
        let mut settled_accounts: Vec<HashSet<String>> = vec![HashSet::new(); accounts.len()];
        info!(run = run_id, "applying");

        // 1. Links whose contact or account is gone (R12, R13), first: the account of
        //    a dropped link may get a new contact below (R6).
        for unlink in &plan.unlinks {
            batch.delete_links.push((unlink.code.clone(), unlink.contact_id.clone()));
        }
        self.state.commit(std::mem::take(&mut batch))?;

        // 2. Contacts for accounts without one (R6); each batch's links are stored
        //    right after it, so a later failure cannot orphan the new contacts.
        let max = contacts_connector.capabilities().max_batch.max(1);
        for chunk in plan.creates.chunks(max) {
            let ops = chunk
                .iter()
                .map(|c| WriteOp::Create { fields: c.fields.clone() })
                .collect();
            let outcomes = write_all(&*contacts_connector, EntityKind::Contact, ops).await;
            for (create, outcome) in chunk.iter().zip(outcomes) {
                let r = create.relation;
                settled_accounts[r].insert(create.account_id.clone());
                let account_scope = &accounts[r].scope;
                match outcome {
                    Ok(written) => {
                        writes += 1;
                        batch.set_hashes.push((
                            contacts.scope.clone(),
                            written.id.clone(),
                            record_hash(&create.fields, written.version.as_deref()),
                        ));
                        let read_hash = accounts[r].hashes.get(&create.account_id).copied().unwrap_or(RECHECK);
                        batch.set_hashes.push((account_scope.clone(), create.account_id.clone(), read_hash));
                        batch.upsert_links.push(Link {
                            code: create.code.clone(),
                            contact_id: written.id,
                            account_id: create.account_id.clone(),
                            baseline: create.baseline.clone(),
                            contact_version: written.version,
                            account_version: create.account_version.clone(),
                            last_error: None,
                            failure_count: 0,
                            linked_at: now,
                            synced_at: now,
                        });
                    }
                    Err(e) => {
                        plan.counts[r].created -= 1;
                        plan.counts[r].failed += 1;
                        batch.set_hashes.push((account_scope.clone(), create.account_id.clone(), RECHECK));
                        failures.push(Failure {
                            code: create.code.clone(),
                            contact_id: None,
                            account_id: create.account_id.clone(),
                            side: "contact",
                            error: e.to_string(),
                        });
                    }
                }
            }
            self.state.commit(std::mem::take(&mut batch))?;
        }

        // 3. Contact updates, then account updates per relation.
        let contact_ops: Vec<(usize, WriteOp)> = plan
            .hubs
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.contact_changes.is_empty())
            .map(|(i, h)| {
                (
                    i,
                    WriteOp::Update {
                        id: h.contact_id.clone(),
                        version: h.contact_version.clone(),
                        changes: to_changes(&h.contact_changes),
                    },
                )
            })
            .collect();
        let mut contact_results: HashMap<usize, WriteOutcome> = HashMap::new();
        for chunk in contact_ops.chunks(max) {
            let ops = chunk.iter().map(|(_, op)| op.clone()).collect();
            let outcomes = write_all(&*contacts_connector, EntityKind::Contact, ops).await;
            for ((hub, _), outcome) in chunk.iter().zip(outcomes) {
                writes += u64::from(outcome.is_ok());
                contact_results.insert(*hub, outcome);
            }
        }
        let mut account_results: HashMap<(usize, usize), WriteOutcome> = HashMap::new();
        for (r, relation) in relations.relations.iter().enumerate() {
            let ops: Vec<((usize, usize), WriteOp)> = plan
                .hubs
                .iter()
                .enumerate()
                .flat_map(|(h, hub)| hub.pairs.iter().enumerate().map(move |(p, pair)| ((h, p), pair)))
                .filter(|(_, pair)| pair.relation == r && !pair.account_changes.is_empty())
                .map(|(key, pair)| {
                    (
                        key,
                        WriteOp::Update {
                            id: pair.account_id.clone(),
                            version: pair.account_version.clone(),
                            changes: to_changes(&pair.account_changes),
                        },
                    )
                })
                .collect();
            if ops.is_empty() {
                continue;
            }
            let connector = self.connectors[&relation.connector].clone();
            let max = connector.capabilities().max_batch.max(1);
            for chunk in ops.chunks(max) {
                let batch_ops = chunk.iter().map(|(_, op)| op.clone()).collect();
                let outcomes = write_all(&*connector, relation.kind, batch_ops).await;
                for ((key, _), outcome) in chunk.iter().zip(outcomes) {
                    writes += u64::from(outcome.is_ok());
                    account_results.insert(*key, outcome);
                }
            }
        }

        // 4. Links, baselines and hashes from the outcomes.
        for (h, hub) in plan.hubs.iter().enumerate() {
            let contact_result = contact_results.remove(&h);
            let contact_error = match &contact_result {
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            let contact_version = match &contact_result {
                Some(Ok(w)) => w.version.clone(),
                _ => hub.contact_version.clone(),
            };
            let mut hub_failed = contact_error.is_some();
            for (p, pair) in hub.pairs.iter().enumerate() {
                let r = pair.relation;
                settled_accounts[r].insert(pair.account_id.clone());
                let account_result = account_results.remove(&(h, p));
                let account_error = match &account_result {
                    Some(Err(e)) => Some(e.to_string()),
                    _ => None,
                };
                let account_version = match &account_result {
                    Some(Ok(w)) => w.version.clone(),
                    _ => pair.account_version.clone(),
                };
                let scope = accounts[r].scope.clone();
                let error = account_error.clone().or_else(|| contact_error.clone());
                match error {
                    None => {
                        let hash = match (&pair.account_after, &account_result) {
                            (Some(after), _) => record_hash(after, account_version.as_deref()),
                            // Written without having been read: look again next run.
                            (None, Some(_)) => RECHECK,
                            (None, None) => accounts[r].hashes.get(&pair.account_id).copied().unwrap_or(RECHECK),
                        };
                        if pair.account_after.is_some() || account_result.is_some() {
                            batch.set_hashes.push((scope, pair.account_id.clone(), hash));
                        }
                        batch.upsert_links.push(Link {
                            code: pair.code.clone(),
                            contact_id: hub.contact_id.clone(),
                            account_id: pair.account_id.clone(),
                            baseline: pair.baseline.clone(),
                            contact_version: contact_version.clone(),
                            account_version,
                            last_error: None,
                            failure_count: 0,
                            linked_at: pair.previous.as_ref().map(|l| l.linked_at).unwrap_or(now),
                            synced_at: now,
                        });
                    }
                    Some(error) => {
                        hub_failed = true;
                        plan.counts[r].failed += 1;
                        if pair.previous.is_some() {
                            if pair.updated {
                                plan.counts[r].updated -= 1;
                            } else {
                                plan.counts[r].unchanged = plan.counts[r].unchanged.saturating_sub(1);
                            }
                        } else {
                            plan.counts[r].linked -= 1;
                        }
                        batch.set_hashes.push((scope, pair.account_id.clone(), RECHECK));
                        failures.push(Failure {
                            code: pair.code.clone(),
                            contact_id: Some(hub.contact_id.clone()),
                            account_id: pair.account_id.clone(),
                            side: if account_error.is_some() { "account" } else { "contact" },
                            error: error.clone(),
                        });
                        // The old baseline stays, so the next run sees the same changes
                        // again; a new link is not made until its first sync succeeds.
                        if let Some(previous) = &pair.previous {
                            batch.upsert_links.push(Link {
                                contact_version: contact_version.clone(),
                                account_version,
                                last_error: Some(error),
                                failure_count: previous.failure_count + 1,
                                ..previous.clone()
                            });
                        }
                    }
                }
            }
            settled_contacts.insert(hub.contact_id.clone());
            let contact_hash = match (&hub.contact_after, hub_failed) {
                (_, true) => Some(RECHECK),
                (Some(after), false) => Some(record_hash(after, contact_version.as_deref())),
                (None, false) if contact_result.is_some() => Some(RECHECK),
                (None, false) => None,
            };
            if let Some(hash) = contact_hash {
                batch.set_hashes.push((contacts.scope.clone(), hub.contact_id.clone(), hash));
            }
            if batch_len(&batch) >= COMMIT_EVERY {
                self.state.commit(std::mem::take(&mut batch))?;
            }
        }

        // 5. What was read and not otherwise settled: remember it as seen; forget
        //    the deleted.
        for read in std::iter::once((&contacts, &settled_contacts)).chain(accounts.iter().zip(&settled_accounts)) {
            let (read, settled) = read;
            for (id, hash) in &read.hashes {
                if !settled.contains(id) {
                    batch.set_hashes.push((read.scope.clone(), id.clone(), *hash));
                }
                if batch_len(&batch) >= COMMIT_EVERY {
                    self.state.commit(std::mem::take(&mut batch))?;
                }
            }
            for id in &read.deleted {
                batch.delete_hashes.push((read.scope.clone(), id.clone()));
            }
            if let Some(cursor) = &read.cursor {
                batch.set_cursors.push((read.scope.clone(), cursor.0.clone()));
            }
        }
        self.state.commit(batch)?;

        info!(run = run_id, writes, failed = failures.len(), "applied");
        Ok(RunReport {
            run_id: Some(run_id),
            mode: "sync",
            read: std::iter::once(&contacts).chain(&accounts).map(|s| s.stats.clone()).collect(),
            counts: plan.counts.clone(),
            writes,
            ambiguous: plan.ambiguous.clone(),
            failures,
            plan,
        })
    }
}

fn batch_len(batch: &StateBatch) -> usize {
    batch.upsert_links.len() + batch.set_hashes.len() + batch.delete_hashes.len() + batch.delete_links.len()
}

fn to_changes(changes: &[FieldChange]) -> Changes {
    changes.iter().map(|c| (c.field.clone(), c.new.clone())).collect()
}

/// Writes `ops`, turning an error for the whole call into one error per op.
async fn write_all(connector: &dyn Connector, kind: EntityKind, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
    let n = ops.len();
    match connector.write(kind, ops).await {
        Ok(outcomes) if outcomes.len() == n => outcomes,
        Ok(outcomes) => {
            let message = format!("the connector answered {} outcomes for {n} writes", outcomes.len());
            (0..n).map(|_| Err(ConnectorError::fatal(message.clone()))).collect()
        }
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

/// Reads all pages of one connector and kind. Keeps the records that changed since
/// the last run, plus the unchanged ones `keep` asks for; finds deletes from
/// tombstones, and from a full listing only once it completed (R16).
async fn read_scope(
    state: &dyn StateStore,
    connector_name: &str,
    connector: &dyn Connector,
    kind: EntityKind,
    keep: impl Fn(&Record) -> bool,
) -> Result<ScopeRead, EngineError> {
    let scope = Scope::new(connector_name, kind);
    let mut stored = state.hashes(&scope)?;
    let incremental = connector.capabilities().incremental;
    let mut cursor = if incremental {
        state.cursor(&scope)?.map(Cursor)
    } else {
        None
    };
    let mut out = ScopeRead {
        scope,
        records: BTreeMap::new(),
        deleted: BTreeSet::new(),
        hashes: HashMap::new(),
        cursor: None,
        stats: ReadStats {
            connector: connector_name.to_owned(),
            kind,
            records: 0,
            changed: 0,
            deleted: 0,
        },
    };
    info!(connector = connector_name, kind = kind.plural(), "reading");
    let listing = loop {
        let page = connector
            .read(kind, cursor.as_ref())
            .await
            .map_err(|source| EngineError::Read {
                connector: connector_name.to_owned(),
                kind,
                source,
            })?;
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
                out.hashes.insert(record.id.clone(), hash);
                out.records.insert(record.id.clone(), record);
            }
        }
        cursor = page.cursor;
        if !page.has_more {
            break page.listing;
        }
    };
    if listing == Listing::Full {
        // Seen before, absent from a completed full listing: deleted.
        out.deleted.extend(stored.into_keys());
    }
    out.stats.deleted = out.deleted.len() as u64;
    out.cursor = if incremental { cursor } else { None };
    info!(
        connector = connector_name,
        kind = kind.plural(),
        records = out.stats.records,
        changed = out.stats.changed,
        deleted = out.stats.deleted,
        "read"
    );
    Ok(out)
}
