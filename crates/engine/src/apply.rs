//! Applying a plan, in an order that loses nothing when the process dies at any point:
//!
//! 1. links whose side is gone or that an operator dropped (state only);
//! 2. creates, each one written down as *pending* before the remote call and linked
//!    right after it, so a crash in between is repaired by the next run (the record
//!    is found again by its fields) instead of creating a duplicate;
//! 3. contact updates, then account updates per relation;
//! 4. links, baselines, the interaction log (R11), failures and parking (R17);
//! 5. content hashes and cursors last.
//!
//! A baseline is only stored after both sides hold it, so an update that was cut
//! short is seen again, and finished, by the next run.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use tandem_connector::{Changes, Connector, ConnectorError, WriteOp, WriteOutcome};
use tandem_model::{EntityKind, Fields, Timestamp};
use tandem_state::{
    ConflictEntry, Details, Intent, Interaction, Link, PendingCreate, StateBatch, StateError,
    StateStore,
};
use tracing::info;

use crate::failpoint;
use crate::plan::{FieldChange, NewLink, PENDING_LINK, UnlinkReason};
use crate::run::{
    Engine, EngineError, Failure, Prepared, RECHECK, RunReport, record_hash, record_hash_of,
    rejections,
};

/// State changes per transaction while applying.
const COMMIT_EVERY: usize = 20_000;

fn batch_len(batch: &StateBatch) -> usize {
    batch.upsert_links.len()
        + batch.set_hashes.len()
        + batch.delete_hashes.len()
        + batch.delete_links.len()
        + batch.interactions.len()
}

fn to_changes(changes: &[FieldChange]) -> Changes {
    changes
        .iter()
        .map(|c| (c.field.clone(), c.new.clone()))
        .collect()
}

/// The details of an `updated` entry: the changes each side received.
#[derive(serde::Serialize)]
struct UpdatedDetails<'a> {
    account: &'a [FieldChange],
    contact: Vec<&'a FieldChange>,
}

/// The details of a `linked` entry not made by matching or by hand.
#[derive(serde::Serialize)]
struct LinkedBy {
    by: &'static str,
}

/// The details of a `created` entry for a contact made from an account (R6).
#[derive(serde::Serialize)]
struct CreatedDetails<'a> {
    fields: &'a Fields,
}

/// Writes `ops`, turning an error for the whole call into one error per op.
async fn write_all(
    connector: &dyn Connector,
    kind: EntityKind,
    ops: Vec<WriteOp>,
) -> Vec<WriteOutcome> {
    let n = ops.len();
    match connector.write(kind, ops).await {
        Ok(outcomes) if outcomes.len() == n => outcomes,
        Ok(outcomes) => {
            let message = format!(
                "the connector answered {} outcomes for {n} writes",
                outcomes.len()
            );
            (0..n)
                .map(|_| Err(ConnectorError::fatal(message.clone())))
                .collect()
        }
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

/// The error of a write, if it failed, and the record's version after it: the new one
/// when it succeeded, `before` when it failed or nothing was written.
fn error_and_version(
    result: &Option<WriteOutcome>,
    before: &Option<String>,
) -> (Option<String>, Option<String>) {
    match result {
        Some(Err(e)) => (Some(e.to_string()), before.clone()),
        Some(Ok(written)) => (None, written.version.clone()),
        None => (None, before.clone()),
    }
}

/// R17: the failure count after `error`, and whether the pair is parked now (the
/// same error as last time).
fn next_failure(previous_error: Option<&str>, previous_count: u32, error: &str) -> (u32, bool) {
    (
        previous_count + 1,
        previous_count >= 1 && previous_error == Some(error),
    )
}

/// Runs `build`, which hands batches to a [`Committer`]; each is committed on a helper
/// thread while `build` goes on with the next. Batches are committed in the order sent,
/// each in its own transaction, exactly as if committed in line; everything sent is
/// committed when this returns. The first failed commit stops the building (its next
/// send fails) and is the error returned.
fn commit_behind(
    state: &mut dyn StateStore,
    build: impl FnOnce(&Committer) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    std::thread::scope(|scope| {
        // One batch waits while one is committed: memory stays at three batches.
        let (sender, receiver) = std::sync::mpsc::sync_channel::<StateBatch>(1);
        let writer = scope.spawn(move || -> Result<(), StateError> {
            let mut busy = std::time::Duration::ZERO;
            for batch in receiver {
                let t = std::time::Instant::now();
                state.commit(batch)?;
                busy += t.elapsed();
            }
            tracing::debug!(busy_ms = busy.as_millis() as u64, "state writer");
            Ok(())
        });
        let t = std::time::Instant::now();
        let built = build(&Committer { sender });
        tracing::debug!(build_ms = t.elapsed().as_millis() as u64, "state builder");
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A failed commit closed the channel: its error explains the failed send.
        written?;
        built
    })
}

/// Hands batches to the helper thread of [`commit_behind`].
struct Committer {
    sender: std::sync::mpsc::SyncSender<StateBatch>,
}

impl Committer {
    fn send(&self, batch: StateBatch) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.sender
            .send(batch)
            // Only a failed commit ends the writer early; `commit_behind` returns its
            // error instead of this one.
            .map_err(|_| EngineError::Refused("the state writer stopped".to_owned()))
    }
}

struct Log {
    run_id: i64,
    now: Timestamp,
}

impl Log {
    fn entry(
        &self,
        contact_id: &str,
        code: &str,
        account_id: Option<&str>,
        action: &str,
        source: &str,
        details: Details,
    ) -> Interaction {
        Interaction {
            id: 0,
            at: self.now,
            run_id: Some(self.run_id),
            contact_id: contact_id.to_owned(),
            code: code.to_owned(),
            account_id: account_id.map(str::to_owned),
            action: action.to_owned(),
            source: source.to_owned(),
            details,
        }
    }
}

/// One create, contact (R6) or account (R5), as the apply loop needs it.
struct CreateJob {
    code: String,
    relation: usize,
    /// `contact` (a contact from an account) or `account` (an account from a contact).
    side: &'static str,
    source_id: String,
    source_version: Option<String>,
    fields: Fields,
    baseline: Fields,
    /// What the source still has to receive once the record exists (R18).
    intent: Option<Intent>,
    /// A contact asked for by `tandem create-contact`: the account's contact may have
    /// been deleted before (R12), which no longer holds once it has a new one.
    asked: bool,
    details: Details,
}

pub(crate) async fn apply(
    engine: &mut Engine<'_>,
    run_id: i64,
    prepared: Prepared,
) -> Result<RunReport, EngineError> {
    let Prepared {
        input,
        mut plan,
        contacts,
        accounts,
        parked_before,
        ambiguities,
    } = prepared;
    let previous_pending: HashMap<(String, String, String), PendingCreate> = input
        .pending
        .iter()
        .map(|p| {
            (
                (p.code.clone(), p.side.clone(), p.source_id.clone()),
                p.clone(),
            )
        })
        .collect();
    // The company of every contact that changed (R3, R10); `None` for companies.
    let person_companies: HashMap<String, Option<String>> = contacts
        .changed
        .iter()
        .filter_map(|id| input.contacts.get(id))
        .map(|c| {
            (
                c.id.clone(),
                c.fields
                    .text(tandem_model::field::COMPANY_ID)
                    .map(str::to_owned),
            )
        })
        .collect();
    // Freeing millions of records takes seconds: done on another thread while the
    // writes go on (nothing below needs them).
    if input.contacts.len() > 10_000 {
        std::thread::spawn(move || drop(input));
    } else {
        drop(input);
    }
    let log = Log {
        run_id,
        now: Timestamp::now(),
    };
    let now = log.now;
    let relations = engine.relations.clone();
    let contacts_connector = engine.connectors[&relations.contacts_connector].clone();
    let mut batch = StateBatch::default();
    let mut failures = rejections(&plan);
    let mut writes = 0u64;
    // Records whose hash is settled by the plan's outcome; the rest keep their read hash.
    let mut settled_contacts: crate::IdSet<String> = crate::IdSet::default();
    let mut recheck_contacts: Vec<String> = Vec::new();
    let mut settled_accounts: Vec<crate::IdSet<String>> =
        vec![crate::IdSet::default(); accounts.len()];
    // Links made by creating an account for a contact, by contact: a write to that
    // contact later in the run gives them its new version (R19).
    let mut created_links: HashMap<String, Vec<Link>> = HashMap::new();
    info!(run = run_id, "applying");
    let started = std::time::Instant::now();

    // Requests refused by the plan fail like writes do: twice the same way parks them.
    for rejection in &plan.rejected {
        let key = (
            rejection.code.clone(),
            "account".to_owned(),
            rejection.contact_id.clone(),
        );
        let previous = previous_pending.get(&key);
        let (count, parked) = next_failure(
            previous.and_then(|p| p.error.as_deref()),
            previous.map_or(0, |p| p.failure_count),
            &rejection.error,
        );
        batch.upsert_pending.push(PendingCreate {
            code: rejection.code.clone(),
            side: "account".to_owned(),
            source_id: rejection.contact_id.clone(),
            fields: Fields::new(),
            run_id: Some(run_id),
            error: Some(rejection.error.clone()),
            failure_count: count,
            parked,
            updated_at: now,
        });
        if let Some(f) = failures.iter_mut().find(|f| {
            f.code == rejection.code && f.contact_id.as_ref() == Some(&rejection.contact_id)
        }) {
            f.parked = parked;
        }
        if !parked {
            // Looked at again next run, even if nobody edits it (R17).
            settled_contacts.insert(rejection.contact_id.clone());
            recheck_contacts.push(rejection.contact_id.clone());
        }
    }

    // 1. Links whose contact or account is gone, or that an operator dropped.
    for unlink in &plan.unlinks {
        batch
            .delete_links
            .push((unlink.code.clone(), unlink.contact_id.clone()));
        // The side that stays is unlinked now: looked at again next run, so matching
        // (R4) and R6 see it even if nobody edits it. Records in play this run were.
        let r = relations.index_of(&unlink.code);
        if unlink.reason != UnlinkReason::AccountDeleted
            && let Some(r) = r
            && !accounts[r].hashes.contains_key(&unlink.account_id)
        {
            batch.set_hashes.push((
                accounts[r].scope.clone(),
                unlink.account_id.clone(),
                RECHECK,
            ));
        }
        if unlink.reason != UnlinkReason::ContactDeleted
            && !contacts.hashes.contains_key(&unlink.contact_id)
        {
            recheck_contacts.push(unlink.contact_id.clone());
        }
        let source = match unlink.reason {
            UnlinkReason::ContactDeleted => {
                // The user deleted the contact: the account gets no new one unless
                // asked (R12 over R6).
                if r.is_some_and(|r| relations.relations[r].create_contacts) {
                    batch.contact_deleted.push((
                        unlink.code.clone(),
                        unlink.account_id.clone(),
                        true,
                    ));
                }
                "contact"
            }
            UnlinkReason::AccountDeleted => "account",
            UnlinkReason::Operator => {
                // Match rules must not link the pair again (R4).
                batch.unlinked_pairs.push((
                    unlink.code.clone(),
                    unlink.contact_id.clone(),
                    unlink.account_id.clone(),
                    true,
                ));
                "operator"
            }
        };
        batch.interactions.push(log.entry(
            &unlink.contact_id,
            &unlink.code,
            Some(&unlink.account_id),
            "unlinked",
            source,
            Details::of(&json!({ "reason": unlink.reason })),
        ));
    }
    engine.state.commit(std::mem::take(&mut batch))?;
    failpoint::hit("after_unlinks");

    // 2. Creates: contacts for accounts (R6), then accounts for contacts (R5).
    let mut jobs: Vec<CreateJob> = plan
        .creates
        .iter()
        .map(|c| CreateJob {
            code: c.code.clone(),
            relation: c.relation,
            side: "contact",
            source_id: c.account_id.clone(),
            source_version: c.account_version.clone(),
            fields: c.fields.clone(),
            baseline: c.baseline.clone(),
            intent: None,
            asked: c.asked,
            details: Details::of(&CreatedDetails { fields: &c.fields }),
        })
        .collect();
    jobs.extend(plan.account_creates.iter().map(|c| CreateJob {
        code: c.code.clone(),
        relation: c.relation,
        side: "account",
        source_id: c.contact_id.clone(),
        source_version: c.contact_version.clone(),
        fields: c.fields.clone(),
        baseline: c.baseline.clone(),
        intent: (!c.intent.contact.is_empty()).then(|| c.intent.clone()),
        asked: false,
        details: Details::of(
            &json!({ "fields": c.fields, "template": c.template, "requested_by": c.requested_by }),
        ),
    }));
    for side in ["contact", "account"] {
        for r in 0..relations.relations.len() {
            let group: Vec<&CreateJob> = jobs
                .iter()
                .filter(|j| j.side == side && j.relation == r)
                .collect();
            if group.is_empty() {
                continue;
            }
            let relation = &relations.relations[r];
            let (connector, kind) = if side == "contact" {
                (contacts_connector.clone(), EntityKind::Contact)
            } else {
                (
                    engine.connectors[&relation.connector].clone(),
                    relation.kind,
                )
            };
            let max = connector.capabilities().max_batch.max(1);
            for chunk in group.chunks(max) {
                // Written down first: a crash after the remote create is repaired, not repeated.
                for job in chunk {
                    let previous = previous_pending.get(&(
                        job.code.clone(),
                        side.to_owned(),
                        job.source_id.clone(),
                    ));
                    batch.upsert_pending.push(PendingCreate {
                        code: job.code.clone(),
                        side: side.to_owned(),
                        source_id: job.source_id.clone(),
                        fields: job.fields.clone(),
                        run_id: Some(run_id),
                        error: None,
                        failure_count: previous.map_or(0, |p| p.failure_count),
                        parked: false,
                        updated_at: now,
                    });
                }
                engine.state.commit(std::mem::take(&mut batch))?;
                failpoint::hit(&format!("before_{side}_create"));
                let ops = chunk
                    .iter()
                    .map(|j| WriteOp::Create {
                        fields: j.fields.clone(),
                    })
                    .collect();
                let outcomes = write_all(&*connector, kind, ops).await;
                failpoint::hit(&format!("after_{side}_create"));
                for (job, outcome) in chunk.iter().zip(outcomes) {
                    let key = (job.code.clone(), side.to_owned(), job.source_id.clone());
                    match outcome {
                        Ok(written) => {
                            writes += 1;
                            let new_hash = record_hash(&job.fields, written.version.as_deref());
                            let (contact_id, account_id, contact_version, account_version) =
                                if side == "contact" {
                                    settled_accounts[r].insert(job.source_id.clone());
                                    let read_hash = accounts[r]
                                        .hashes
                                        .get(&job.source_id)
                                        .copied()
                                        .unwrap_or(RECHECK);
                                    batch.set_hashes.push((
                                        contacts.scope.clone(),
                                        written.id.clone(),
                                        new_hash,
                                    ));
                                    batch.set_hashes.push((
                                        accounts[r].scope.clone(),
                                        job.source_id.clone(),
                                        read_hash,
                                    ));
                                    (
                                        written.id.clone(),
                                        job.source_id.clone(),
                                        written.version.clone(),
                                        job.source_version.clone(),
                                    )
                                } else {
                                    batch.set_hashes.push((
                                        accounts[r].scope.clone(),
                                        written.id.clone(),
                                        new_hash,
                                    ));
                                    (
                                        job.source_id.clone(),
                                        written.id.clone(),
                                        job.source_version.clone(),
                                        written.version.clone(),
                                    )
                                };
                            let link = Link {
                                code: job.code.clone(),
                                contact_id: contact_id.clone(),
                                account_id: account_id.clone(),
                                baseline: job.baseline.clone(),
                                contact_version,
                                account_version,
                                last_error: None,
                                failure_count: 0,
                                parked: false,
                                linked_at: now,
                                synced_at: now,
                                intent: job.intent.clone(),
                            };
                            if job.asked {
                                batch.contact_deleted.push((
                                    job.code.clone(),
                                    job.source_id.clone(),
                                    false,
                                ));
                            }
                            if side == "account" {
                                created_links
                                    .entry(contact_id.clone())
                                    .or_default()
                                    .push(link.clone());
                            }
                            batch.upsert_links.push(link);
                            batch.delete_pending.push(key);
                            batch.interactions.push(log.entry(
                                &contact_id,
                                &job.code,
                                Some(&account_id),
                                "created",
                                side,
                                job.details.clone(),
                            ));
                            batch.interactions.push(log.entry(
                                &contact_id,
                                &job.code,
                                Some(&account_id),
                                "linked",
                                side,
                                Details::of(&LinkedBy { by: "create" }),
                            ));
                        }
                        Err(e) => {
                            let error = e.to_string();
                            let previous = previous_pending.get(&key);
                            let (count, parked) = next_failure(
                                previous.and_then(|p| p.error.as_deref()),
                                previous.map_or(0, |p| p.failure_count),
                                &error,
                            );
                            plan.counts[r].created -= 1;
                            plan.counts[r].failed += 1;
                            if side == "contact" {
                                settled_accounts[r].insert(job.source_id.clone());
                                batch.set_hashes.push((
                                    accounts[r].scope.clone(),
                                    job.source_id.clone(),
                                    RECHECK,
                                ));
                            }
                            batch.upsert_pending.push(PendingCreate {
                                code: job.code.clone(),
                                side: side.to_owned(),
                                source_id: job.source_id.clone(),
                                fields: job.fields.clone(),
                                run_id: Some(run_id),
                                error: Some(error.clone()),
                                failure_count: count,
                                parked,
                                updated_at: now,
                            });
                            let (contact_id, account_id) = if side == "contact" {
                                (None, Some(job.source_id.clone()))
                            } else {
                                (Some(job.source_id.clone()), None)
                            };
                            failures.push(Failure {
                                code: job.code.clone(),
                                contact_id,
                                account_id,
                                side,
                                error,
                                parked,
                            });
                        }
                    }
                }
                engine.state.commit(std::mem::take(&mut batch))?;
                failpoint::hit(&format!("after_{side}_create_commit"));
            }
        }
    }

    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        step = "after_creates",
        "applying"
    );
    // 3. What the writes will do, written down first (R18); then contact updates, then
    //    account updates per relation.
    commit_intents(&mut *engine.state, &plan, now)?;
    failpoint::hit("after_intent_commit");
    let max = contacts_connector.capabilities().max_batch.max(1);
    // Ops are built chunk by chunk from the plan: a million updates are not held twice.
    let contact_hubs: Vec<usize> = plan
        .hubs
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.contact_changes.is_empty())
        .map(|(i, _)| i)
        .collect();
    // Indexed by hub (contacts) and by pair in hub order (accounts).
    let mut contact_results: Vec<Option<WriteOutcome>> = std::iter::repeat_with(|| None)
        .take(plan.hubs.len())
        .collect();
    for chunk in contact_hubs.chunks(max) {
        let ops = chunk
            .iter()
            .map(|&i| {
                let h = &plan.hubs[i];
                WriteOp::Update {
                    id: h.contact_id.clone(),
                    version: h.contact_version.clone(),
                    changes: to_changes(&h.contact_changes),
                }
            })
            .collect();
        let outcomes = write_all(&*contacts_connector, EntityKind::Contact, ops).await;
        for (hub, outcome) in chunk.iter().zip(outcomes) {
            writes += u64::from(outcome.is_ok());
            contact_results[*hub] = Some(outcome);
        }
    }
    failpoint::hit("after_contact_updates");
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        step = "after_contact_updates",
        "applying"
    );
    let pair_offsets: Vec<usize> = plan
        .hubs
        .iter()
        .scan(0, |next, hub| {
            let first = *next;
            *next += hub.pairs.len();
            Some(first)
        })
        .collect();
    let pair_count = plan.hubs.iter().map(|h| h.pairs.len()).sum();
    let mut account_results: Vec<Option<WriteOutcome>> =
        std::iter::repeat_with(|| None).take(pair_count).collect();
    for (r, relation) in relations.relations.iter().enumerate() {
        let keys: Vec<(usize, usize)> = plan
            .hubs
            .iter()
            .enumerate()
            .flat_map(|(h, hub)| {
                hub.pairs
                    .iter()
                    .enumerate()
                    .map(move |(p, pair)| ((h, p), pair))
            })
            .filter(|(_, pair)| pair.relation == r && !pair.account_changes.is_empty())
            .map(|(key, _)| key)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let connector = engine.connectors[&relation.connector].clone();
        let max = connector.capabilities().max_batch.max(1);
        for chunk in keys.chunks(max) {
            let ops = chunk
                .iter()
                .map(|&(h, p)| {
                    let pair = &plan.hubs[h].pairs[p];
                    WriteOp::Update {
                        id: pair.account_id.clone(),
                        version: pair.account_version.clone(),
                        changes: to_changes(&pair.account_changes),
                    }
                })
                .collect();
            let outcomes = write_all(&*connector, relation.kind, ops).await;
            for (key, outcome) in chunk.iter().zip(outcomes) {
                writes += u64::from(outcome.is_ok());
                account_results[pair_offsets[key.0] + key.1] = Some(outcome);
            }
        }
    }
    failpoint::hit("after_account_updates");
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        step = "after_account_updates",
        "applying"
    );

    // 4. Links, baselines, the log and hashes from the outcomes.
    let pending_links: HashSet<(&str, &str)> = previous_pending
        .keys()
        .filter(|(_, side, _)| side == PENDING_LINK)
        .map(|(code, _, contact)| (code.as_str(), contact.as_str()))
        .collect();
    // Committed on a helper thread while the next batch is built.
    commit_behind(&mut *engine.state, |committer| {
        for (h, hub) in plan.hubs.iter().enumerate() {
            let contact_result = contact_results[h].take();
            let (contact_error, contact_version) =
                error_and_version(&contact_result, &hub.contact_version);
            let mut hub_failed = contact_error.is_some();
            if let Some(error) = &contact_error
                && hub.pairs.is_empty()
            {
                // Only the contact's own field (R9) was to change: report, retry next run.
                failures.push(Failure {
                    code: String::new(),
                    contact_id: Some(hub.contact_id.clone()),
                    account_id: None,
                    side: "contact",
                    error: error.clone(),
                    parked: false,
                });
            }
            for conflict in &hub.conflicts {
                for (code, account_id, account_value) in &conflict.accounts {
                    batch.interactions.push(log.entry(
                        &hub.contact_id,
                        code,
                        Some(account_id),
                        "conflict",
                        "both",
                        Details::of(&json!({
                            "field": conflict.field,
                            "base": conflict.base,
                            "contact": conflict.contact,
                            "account": account_value,
                            "policy": conflict.policy,
                            "winner": conflict.winner,
                            "value": conflict.value,
                        })),
                    ));
                    if conflict.winner == "manual" {
                        batch.upsert_conflicts.push(ConflictEntry {
                            id: 0,
                            code: code.clone(),
                            contact_id: hub.contact_id.clone(),
                            account_id: account_id.clone(),
                            field: conflict.field.to_string(),
                            base: conflict.base.clone(),
                            contact_value: conflict.value.clone(),
                            account_value: account_value.clone(),
                            opened_at: now,
                            run_id: Some(run_id),
                            resolution: None,
                            closed_at: None,
                        });
                    }
                }
            }
            for (p, pair) in hub.pairs.iter().enumerate() {
                let r = pair.relation;
                settled_accounts[r].insert(pair.account_id.clone());
                let account_result = account_results[pair_offsets[h] + p].take();
                let (account_error, account_version) =
                    error_and_version(&account_result, &pair.account_version);
                let scope = accounts[r].scope.clone();
                match account_error.clone().or_else(|| contact_error.clone()) {
                    None => {
                        let hash = match (pair.account_after_hash, &account_result) {
                            (Some(after), _) => {
                                Some(record_hash_of(after, account_version.as_deref()))
                            }
                            // Written without having been read: look again next run.
                            (None, Some(_)) => Some(RECHECK),
                            (None, None) => None,
                        };
                        if let Some(hash) = hash {
                            batch
                                .set_hashes
                                .push((scope, pair.account_id.clone(), hash));
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
                            parked: false,
                            linked_at: pair.previous.as_ref().map(|l| l.linked_at).unwrap_or(now),
                            synced_at: now,
                            intent: None,
                        });
                        if let Some(how) = pair.new_link {
                            // A link that failed in an earlier run is done now.
                            if pending_links
                                .contains(&(pair.code.as_str(), hub.contact_id.as_str()))
                            {
                                batch.delete_pending.push((
                                    pair.code.clone(),
                                    PENDING_LINK.to_owned(),
                                    hub.contact_id.clone(),
                                ));
                            }
                            if how == NewLink::Operator {
                                batch.unlinked_pairs.push((
                                    pair.code.clone(),
                                    hub.contact_id.clone(),
                                    pair.account_id.clone(),
                                    false,
                                ));
                            }
                            let source = match how {
                                NewLink::Operator => "operator",
                                NewLink::Match { .. } | NewLink::Recovered => "match",
                            };
                            batch.interactions.push(log.entry(
                                &hub.contact_id,
                                &pair.code,
                                Some(&pair.account_id),
                                "linked",
                                source,
                                Details::of(&how),
                            ));
                        }
                        if pair.updated {
                            let from_account: Vec<&FieldChange> = hub
                                .contact_changes
                                .iter()
                                .filter(|c| pair.from_account.contains(&c.field))
                                .collect();
                            let source =
                                match (pair.account_changes.is_empty(), from_account.is_empty()) {
                                    (false, true) => "contact",
                                    (true, false) => "account",
                                    _ => "both",
                                };
                            batch.interactions.push(log.entry(
                                &hub.contact_id,
                                &pair.code,
                                Some(&pair.account_id),
                                "updated",
                                source,
                                Details::of(&UpdatedDetails {
                                    account: &pair.account_changes,
                                    contact: from_account,
                                }),
                            ));
                        }
                    }
                    Some(error) => {
                        hub_failed = true;
                        plan.counts[r].failed += 1;
                        if pair.previous.is_some() {
                            if pair.updated {
                                plan.counts[r].updated -= 1;
                            } else {
                                plan.counts[r].unchanged =
                                    plan.counts[r].unchanged.saturating_sub(1);
                            }
                        } else {
                            plan.counts[r].linked -= 1;
                        }
                        batch
                            .set_hashes
                            .push((scope, pair.account_id.clone(), RECHECK));
                        let mut parked = false;
                        // The old baseline stays, so the next run sees the same changes
                        // again; a new link is not made until its first sync succeeds.
                        if let Some(previous) = &pair.previous {
                            let (count, now_parked) = next_failure(
                                previous.last_error.as_deref(),
                                previous.failure_count,
                                &error,
                            );
                            parked = now_parked;
                            batch.upsert_links.push(Link {
                                contact_version: contact_version.clone(),
                                account_version,
                                last_error: Some(error.clone()),
                                failure_count: count,
                                parked,
                                ..(**previous).clone()
                            });
                            batch.interactions.push(log.entry(
                                &hub.contact_id,
                                &pair.code,
                                Some(&pair.account_id),
                                if parked { "parked" } else { "failed" },
                                if account_error.is_some() {
                                    "account"
                                } else {
                                    "contact"
                                },
                                Details::of(&json!({ "error": error, "failures": count })),
                            ));
                        }
                        if pair.previous.is_none() {
                            // A new link stays, with the baseline it starts from and
                            // what it still has to write: the next run finishes it
                            // instead of matching or creating anew (R18).
                            let (count, now_parked) = next_failure(None, 0, &error);
                            parked = now_parked;
                            batch.upsert_links.push(Link {
                                last_error: Some(error.clone()),
                                failure_count: count,
                                parked,
                                ..intended_link(hub, pair, now)
                            });
                            batch.interactions.push(log.entry(
                                &hub.contact_id,
                                &pair.code,
                                Some(&pair.account_id),
                                "failed",
                                if account_error.is_some() {
                                    "account"
                                } else {
                                    "contact"
                                },
                                Details::of(&json!({ "error": error, "failures": count })),
                            ));
                        }
                        failures.push(Failure {
                            code: pair.code.clone(),
                            contact_id: Some(hub.contact_id.clone()),
                            account_id: Some(pair.account_id.clone()),
                            side: if account_error.is_some() {
                                "account"
                            } else {
                                "contact"
                            },
                            error,
                            parked,
                        });
                    }
                }
            }
            if let Some(Ok(written)) = &contact_result {
                own_contact_write(&mut batch, hub, &mut created_links, written, now);
            }
            settled_contacts.insert(hub.contact_id.clone());
            // A field waiting in the conflict queue: both records are read again every run,
            // so neither side's value is mistaken for the baseline.
            let waiting = hub.conflicts.iter().any(|c| c.winner == "manual");
            for conflict in hub.conflicts.iter().filter(|c| c.winner == "manual") {
                for (code, account_id, _) in &conflict.accounts {
                    if let Some(r) = relations.index_of(code) {
                        settled_accounts[r].insert(account_id.clone());
                        batch.set_hashes.push((
                            accounts[r].scope.clone(),
                            account_id.clone(),
                            RECHECK,
                        ));
                    }
                }
            }
            let contact_hash = match (hub.contact_after_hash, hub_failed || waiting) {
                (_, true) => Some(RECHECK),
                (Some(after), false) => Some(record_hash_of(after, contact_version.as_deref())),
                (None, false) if contact_result.is_some() => Some(RECHECK),
                (None, false) => contacts.hashes.get(&hub.contact_id).copied(),
            };
            if let Some(hash) = contact_hash {
                batch
                    .set_hashes
                    .push((contacts.scope.clone(), hub.contact_id.clone(), hash));
            }
            if batch_len(&batch) >= COMMIT_EVERY {
                committer.send(std::mem::take(&mut batch))?;
            }
        }
        for (code, contact_id, field) in &plan.close_conflicts {
            batch
                .close_conflicts
                .push((code.clone(), contact_id.clone(), field.clone(), now));
            batch.interactions.push(log.entry(
                contact_id,
                code,
                None,
                "resolved",
                "operator",
                Details::of(&json!({ "field": field })),
            ));
        }
        for key in &plan.done_pending {
            batch.delete_pending.push(key.clone());
        }
        committer.send(std::mem::take(&mut batch))?;
        Ok(())
    })?;
    failpoint::hit("after_link_commit");
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        step = "after_link_commit",
        "applying"
    );

    // 5. What was read and not otherwise settled: remember it as seen; forget the
    //    deleted; then the cursors.
    commit_behind(&mut *engine.state, |committer| {
        for (id, company) in person_companies {
            batch.set_companies.push((id, company));
        }
        for id in &contacts.deleted {
            batch.set_companies.push((id.clone(), None));
        }
        for (read, settled) in std::iter::once((&contacts, &settled_contacts))
            .chain(accounts.iter().zip(&settled_accounts))
        {
            for (id, hash) in &read.hashes {
                // An unchanged record's stored hash is already this one.
                if !settled.contains(id) && read.changed.contains(id) {
                    batch
                        .set_hashes
                        .push((read.scope.clone(), id.clone(), *hash));
                }
                if batch_len(&batch) >= COMMIT_EVERY {
                    committer.send(std::mem::take(&mut batch))?;
                }
            }
            for id in &read.deleted {
                batch.delete_hashes.push((read.scope.clone(), id.clone()));
            }
        }
        for id in recheck_contacts {
            batch.set_hashes.push((contacts.scope.clone(), id, RECHECK));
        }
        committer.send(std::mem::take(&mut batch))?;
        Ok(())
    })?;
    failpoint::hit("before_cursor_commit");
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        step = "before_cursor_commit",
        "applying"
    );
    for read in std::iter::once(&contacts).chain(&accounts) {
        if let Some(cursor) = &read.cursor {
            batch
                .set_cursors
                .push((read.scope.clone(), cursor.0.clone()));
        }
    }
    // The ambiguous matches of every relation matched this run, reported again by
    // the runs that leave it quiet.
    for (relation, known) in relations.relations.iter().zip(&ambiguities) {
        if !known.complete {
            continue;
        }
        let found: Vec<&crate::matching::Ambiguity> = plan
            .ambiguous
            .iter()
            .filter(|a| a.code == relation.code)
            .collect();
        let found = serde_json::json!(found);
        if known.stored.as_ref() != Some(&found) {
            batch.set_ambiguities.push((relation.code.clone(), found));
        }
    }
    // Remembered last, with the cursors: a scope that only this run's own writes
    // changed is not read by the next run while its fingerprint stays the same.
    // Anything else forgets it, so the next run reads.
    let tag = engine.fingerprint_tag();
    for read in std::iter::once(&contacts).chain(&accounts) {
        let Some(since) = &read.fingerprint else {
            continue;
        };
        let connector = &engine.connectors[&read.scope.connector];
        let now = connector
            .fingerprint_after_own_writes(read.scope.kind, since)
            .await
            .ok()
            .flatten();
        batch.set_fingerprints.push((
            read.scope.clone(),
            now.map(|fingerprint| format!("{tag}:{fingerprint}")),
        ));
    }
    engine.state.commit(batch)?;

    let parked_now = engine.state.parked_links()?;
    let pending_now = engine.state.pending_creates()?;
    for (r, counts) in plan.counts.iter_mut().enumerate() {
        let code = &relations.relations[r].code;
        counts.parked = (parked_now.iter().filter(|l| &l.code == code).count()
            + pending_now
                .iter()
                .filter(|p| &p.code == code && p.parked)
                .count()) as u64;
        counts.unchanged = counts.unchanged.saturating_sub(parked_before[r].links);
    }
    info!(
        run = run_id,
        writes,
        failed = failures.len(),
        ms = started.elapsed().as_millis() as u64,
        "applied"
    );
    Ok(RunReport {
        run_id: Some(run_id),
        mode: "sync",
        read: std::iter::once(&contacts)
            .chain(&accounts)
            .map(|s| s.stats.clone())
            .collect(),
        counts: plan.counts.clone(),
        writes,
        ambiguous: plan.ambiguous.clone(),
        failures,
        plan,
    })
}

/// The link a pair of the plan is about to have: its new baseline and what the run
/// writes, with the versions as read.
fn intended_link(hub: &crate::plan::HubPlan, pair: &crate::plan::PairPlan, now: Timestamp) -> Link {
    let previous = pair.previous.as_deref();
    Link {
        code: pair.code.clone(),
        contact_id: hub.contact_id.clone(),
        account_id: pair.account_id.clone(),
        baseline: pair.baseline.clone(),
        contact_version: hub.contact_version.clone(),
        account_version: pair.account_version.clone(),
        last_error: previous.and_then(|l| l.last_error.clone()),
        failure_count: previous.map_or(0, |l| l.failure_count),
        parked: false,
        linked_at: previous.map_or(now, |l| l.linked_at),
        synced_at: previous.map_or(now, |l| l.synced_at),
        intent: pair.intent.clone(),
    }
}

/// R18: before any update is sent, every pair that will be written is stored with the
/// baseline the writes will leave and what each side held before. A run cut short
/// leaves these rows; the next one reads both records and finishes the writes, or
/// merges an edit made meanwhile against that baseline.
fn commit_intents(
    state: &mut dyn StateStore,
    plan: &crate::plan::Plan,
    now: Timestamp,
) -> Result<(), EngineError> {
    commit_behind(state, |committer| {
        let mut batch = StateBatch::default();
        for hub in &plan.hubs {
            for pair in hub.pairs.iter().filter(|p| p.intent.is_some()) {
                batch.upsert_links.push(intended_link(hub, pair, now));
            }
            if batch.upsert_links.len() >= COMMIT_EVERY {
                committer.send(std::mem::take(&mut batch))?;
            }
        }
        committer.send(batch)
    })
}

/// R19: a contact Tandem wrote has a new version; every link of it learns it, also the
/// links the hub did not merge and those made by creating an account for it this run
/// (whose wait for the contact's template fills ends with this write).
fn own_contact_write(
    batch: &mut StateBatch,
    hub: &crate::plan::HubPlan,
    created_links: &mut HashMap<String, Vec<Link>>,
    written: &tandem_connector::Written,
    now: Timestamp,
) {
    for link in &hub.other_links {
        batch.upsert_links.push(Link {
            contact_version: written.version.clone(),
            ..link.clone()
        });
    }
    for link in created_links.remove(&hub.contact_id).into_iter().flatten() {
        if hub.pairs.iter().any(|p| p.code == link.code) {
            continue;
        }
        batch.upsert_links.push(Link {
            contact_version: written.version.clone(),
            intent: None,
            synced_at: now,
            ..link
        });
    }
}
