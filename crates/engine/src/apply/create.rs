//! Step 2: creates, contacts for accounts (R6) then accounts for contacts (R5). Each
//! batch is written down as pending (one record) before the remote call and linked
//! right after it, so a crash in between is repaired by the next run instead of
//! creating a duplicate (R18).

use std::borrow::Cow;

use tandem_connector::{Connector, ConnectorError, WriteOp, WriteOutcome, Written};
use tandem_model::{EntityKind, Fields, PackedFields};
use tandem_state::{Intent, Link, LogEntry, PendingCreate, PendingCreateBatch, StateStore};

use super::{Applier, COMMIT_EVERY, Failed, PendingKey, Sent, commit_behind, send, write};
use crate::failpoint;
use crate::overlap::Pump;
use crate::plan::{AccountCreate, ContactCreate, HubRange, Planning};
use crate::run::{EngineError, Failure, RECHECK, ScopeRead, match_keys, record_hash};
use crate::side::Side;

/// One create, contact (R6) or account (R5), as the apply step needs it: borrowed
/// from the plan, which the run's report shows.
struct CreateJob<'p> {
    code: &'p str,
    relation: usize,
    /// The side created: a contact from an account, or an account from a contact.
    side: Side,
    source_id: &'p str,
    source_version: Option<&'p str>,
    fields: JobFields<'p>,
    baseline: Baseline<'p>,
    /// What the source still has to receive once the record exists (R18).
    intent: Option<&'p Intent>,
    /// A contact asked for by `tandem create-contact`: the account's contact may have
    /// been deleted before (R12), which no longer holds once it has a new one.
    asked: bool,
    /// For the log's `created` entry of an account: the template rule used and who
    /// asked (R3, R5).
    template: Option<usize>,
    requested_by: Option<&'p str>,
}

/// A create's fields: a new contact's held packed by the plan, unpacked a batch at a
/// time as it is sent (at 10M, all 1.8M at once took 4.6 GB over what the run held).
#[derive(Clone, Copy)]
enum JobFields<'p> {
    Packed(&'p PackedFields),
    Plain(&'p Fields),
}

impl<'p> JobFields<'p> {
    fn unpacked(self) -> Cow<'p, Fields> {
        match self {
            JobFields::Packed(fields) => Cow::Owned(fields.unpack()),
            JobFields::Plain(fields) => Cow::Borrowed(fields),
        }
    }
}

/// What a create's link starts from.
#[derive(Clone, Copy)]
enum Baseline<'p> {
    /// Held by the create.
    Held(&'p Fields),
    /// A new contact's: the account's shared fields, as sent (the two fields a create
    /// adds are contact fields, never shared with an account), worked out when its
    /// link is made.
    OfContact(&'p crate::relation::Relation),
}

impl CreateJob<'_> {
    /// What its link starts from, given the `fields` it was sent with.
    fn baseline(&self, fields: &Fields) -> Fields {
        match self.baseline {
            Baseline::Held(fields) => fields.clone(),
            Baseline::OfContact(relation) => fields.project(&crate::plan::names(&relation.shared)),
        }
    }

    /// The log's `created` entry, made when it is logged: held for every create of a
    /// run, it was a third copy of each one's fields.
    fn entry(&self, fields: &Fields) -> LogEntry {
        LogEntry::Created {
            fields: fields.clone(),
            template: self.template,
            requested_by: self.requested_by.map(str::to_owned),
        }
    }

    fn pending_key(&self) -> PendingKey {
        (self.code.to_owned(), self.side, self.source_id.to_owned())
    }
}

/// The plan's creates as jobs, borrowed from it.
fn create_jobs<'p>(
    contacts: &'p [ContactCreate],
    accounts: &'p [AccountCreate],
    relations: &'p crate::relation::Relations,
) -> Vec<CreateJob<'p>> {
    let contacts = contacts.iter().map(|c| CreateJob {
        code: &c.code,
        relation: c.relation,
        side: Side::Contact,
        source_id: &c.account_id,
        source_version: c.account_version.as_deref(),
        fields: JobFields::Packed(&c.fields),
        baseline: Baseline::OfContact(&relations.relations[c.relation]),
        intent: None,
        asked: c.asked,
        template: None,
        requested_by: None,
    });
    let accounts = accounts.iter().map(|c| CreateJob {
        code: &c.code,
        relation: c.relation,
        side: Side::Account,
        source_id: &c.contact_id,
        source_version: c.contact_version.as_deref(),
        fields: JobFields::Plain(&c.fields),
        baseline: Baseline::Held(&c.baseline),
        intent: (!c.intent.contact.is_empty()).then_some(&c.intent),
        asked: false,
        template: c.template,
        requested_by: c.requested_by.as_deref(),
    });
    contacts.chain(accounts).collect()
}

/// A batch of creates sent, to link: the jobs, the fields and ids they were sent with,
/// what each came to, and the part of the run their record was stored under.
pub(super) struct SentCreates<'j, 'p> {
    chunk: &'j [&'j CreateJob<'p>],
    fields: Vec<Cow<'p, Fields>>,
    ids: Vec<Option<String>>,
    outcomes: Vec<WriteOutcome>,
    part: i64,
}

/// Keeps the first `cap` of `creates`; how many it let go.
fn left_out<T>(creates: &mut Vec<T>, cap: usize) -> u64 {
    let out = creates.len().saturating_sub(cap);
    if out > 0 {
        creates.truncate(cap);
        creates.shrink_to_fit();
    }
    out as u64
}

/// `creates` as records of 20,000: one record of 180,000 held its JSON three times
/// over while it was stored.
fn batches_of(run_id: i64, part: i64, mut creates: Vec<PendingCreate>) -> Vec<PendingCreateBatch> {
    let mut batches = Vec::new();
    while !creates.is_empty() {
        let rest = creates.split_off(creates.len().min(COMMIT_EVERY));
        batches.push(PendingCreateBatch {
            run_id,
            part,
            creates,
        });
        creates = rest;
    }
    batches
}

impl Applier<'_> {
    /// The plan's creates; with `planning`, the first range of hubs is planned and its
    /// intents stored while the first batch goes out (`send_creates`). A range held
    /// (`Applier::range_held`: a plan made whole's, or the one planned then) is carried
    /// out while the last batch is linked, and returned with the range planned after it.
    pub(super) async fn creates(
        &mut self,
        state: &mut dyn StateStore,
        planning: Option<&mut Planning<'_>>,
    ) -> Result<Option<(Sent, Option<HubRange>)>, EngineError> {
        // Taken out while they are carried out, put back for the report.
        let (mut contacts, mut accounts) = (
            std::mem::take(&mut self.plan.creates),
            std::mem::take(&mut self.plan.account_creates),
        );
        let relations = self.relations;
        let jobs = create_jobs(&contacts, &accounts, relations);
        let done = self.create_all(state, &jobs, planning).await;
        drop(jobs);
        // A baseline is what a create's link starts from, stored with the link by now;
        // the report does not show it (a new contact's is never held apart).
        accounts.iter_mut().for_each(|c| c.baseline = Fields::new());
        // A run planned range by range holds no whole plan until its end: its report
        // shows as many creates as hubs (180,000 new contacts' fields at 1M took about
        // 100 MB through every range).
        let cap = self.per_range;
        self.plan.creates_left_out = left_out(&mut contacts, cap) + left_out(&mut accounts, cap);
        (self.plan.creates, self.plan.account_creates) = (contacts, accounts);
        done
    }

    /// `jobs` in their groups, each in chunks of its connector's batch size, or of a
    /// range's hubs in a run in ranges. A batch's creates are linked while the next
    /// batch is sent, the last batch's while the range held goes out (see
    /// [`Applier::creates`]).
    async fn create_all(
        &mut self,
        state: &mut dyn StateStore,
        jobs: &[CreateJob<'_>],
        mut planning: Option<&mut Planning<'_>>,
    ) -> Result<Option<(Sent, Option<HubRange>)>, EngineError> {
        let groups = Self::create_groups(jobs, self.relations.relations.len());
        let mut sent = None;
        for group in &groups {
            let (connector, kind) = self.side_connector(group[0].side, group[0].relation);
            let max = (connector.capabilities().max_batch.max(1)).min(self.per_range);
            for chunk in group.chunks(max) {
                let before = sent.take();
                let ahead = planning.as_deref_mut().filter(|_| before.is_none());
                let chunk = self.create_chunk(state, (&*connector, kind), chunk, before, ahead);
                sent = Some(chunk.await?);
            }
        }
        let Some(sent) = sent else { return Ok(None) };
        if !self.range_held {
            return self.link_creates(state, sent).map(|()| None);
        }
        let ahead = planning.filter(|p| !p.is_done());
        let range = HubRange::default();
        (self.carry_out(state, range, None, ahead, Some(sent)).await).map(Some)
    }

    /// The creates sent together: every relation's new contacts in one group, since
    /// they go to the one contacts scope (a file connector rewrites its file once per
    /// write, not once per relation); then each relation's new accounts. Within a
    /// group, relations keep config order.
    fn create_groups<'j, 'p>(
        jobs: &'j [CreateJob<'p>],
        relations: usize,
    ) -> Vec<Vec<&'j CreateJob<'p>>> {
        let of = |side: Side, r: usize| {
            jobs.iter()
                .filter(move |j| j.side == side && j.relation == r)
        };
        let contacts = (0..relations).flat_map(|r| of(Side::Contact, r)).collect();
        let accounts = (0..relations).map(|r| of(Side::Account, r).collect());
        std::iter::once(contacts)
            .chain(accounts)
            .filter(|group: &Vec<&CreateJob>| !group.is_empty())
            .collect()
    }

    /// One batch of creates of one side and relation: written down, then sent while
    /// the batch `before` is linked (and, with `ahead`, the first range planned).
    /// Returns what it sent and what each create came to.
    async fn create_chunk<'j, 'p>(
        &mut self,
        state: &mut dyn StateStore,
        (connector, kind): (&dyn Connector, EntityKind),
        chunk: &'j [&'j CreateJob<'p>],
        before: Option<SentCreates<'j, 'p>>,
        ahead: Option<&mut Planning<'_>>,
    ) -> Result<SentCreates<'j, 'p>, EngineError> {
        if self.stop.is_stopped() {
            if let Some(before) = before {
                self.link_creates(state, before)?;
            }
            return Err(EngineError::Stopped);
        }
        let side = chunk[0].side;
        let fields: Vec<Cow<'p, Fields>> = chunk.iter().map(|j| j.fields.unpacked()).collect();
        let ids = self.write_down(state, connector, kind, chunk, &fields)?;
        failpoint::hit(&format!("before_{side}_create"));
        let ops = (fields.iter().zip(&ids))
            .map(|(f, id)| WriteOp::Create {
                fields: f.as_ref().clone(),
                id: id.clone(),
            })
            .collect();
        let outcomes = self
            .send_creates(state, (connector, kind, ops), before, ahead)
            .await?;
        self.progress.advance(chunk.len(), "creates");
        failpoint::hit(&format!("after_{side}_create"));
        Ok(SentCreates {
            chunk,
            fields,
            ids,
            outcomes,
            part: self.create_part,
        })
    }

    /// Writes the creates of `chunk` down first, as one record of their own part: a
    /// crash after the remote create is repaired, not repeated. Returns the id each
    /// is sent with, where the connector lets Tandem choose it.
    fn write_down(
        &mut self,
        state: &mut dyn StateStore,
        connector: &dyn Connector,
        kind: EntityKind,
        chunk: &[&CreateJob<'_>],
        fields: &[Cow<'_, Fields>],
    ) -> Result<Vec<Option<String>>, EngineError> {
        let side = chunk[0].side;
        let mut creates = Vec::with_capacity(chunk.len());
        let mut ids = Vec::with_capacity(chunk.len());
        for (job, fields) in chunk.iter().zip(fields) {
            let previous = self.previous.creates.get(&job.pending_key());
            let id = record_id(previous, connector, kind);
            ids.push(id.clone());
            creates.push(PendingCreate {
                code: job.code.to_owned(),
                side,
                source_id: job.source_id.to_owned(),
                fields: fields.as_ref().clone(),
                run_id: Some(self.log.run_id),
                error: None,
                failure_count: previous.map_or(0, |p| p.failure_count),
                parked: false,
                updated_at: self.log.now,
                record_id: id,
            });
            if side == Side::Account {
                // A request refused before is granted now.
                self.request_granted(job.code, job.source_id);
            }
        }
        self.create_part += 1;
        let batches = batches_of(self.log.run_id, self.create_part, creates);
        (self.batch.pending_create_batches).extend(batches);
        self.commit(state)?;
        Ok(ids)
    }

    /// What each create of a batch sent came to: links, hashes and log entries, stored
    /// on a helper thread a transaction at a time while the next is built; the record
    /// of the batch goes with the last, once what each create came to is stored. A
    /// crash before finds the creates linked so far done (R18).
    pub(super) fn link_creates(
        &mut self,
        state: &mut dyn StateStore,
        sent: SentCreates<'_, '_>,
    ) -> Result<(), EngineError> {
        let side = sent.chunk[0].side;
        commit_behind(state, |committer| {
            let creates = (sent.chunk.iter()).zip(&sent.fields).zip(sent.ids);
            for (((job, fields), id), outcome) in creates.zip(sent.outcomes) {
                match outcome {
                    Ok(written) => self.created(job, fields, &written),
                    Err(e) => self.create_failed(job, fields, id, &e),
                }
                committer.send_full(&mut self.batch)?;
            }
            (self.batch.clear_pending_create_batches).push((self.log.run_id, sent.part));
            committer.send(std::mem::take(&mut self.batch))
        })?;
        failpoint::hit(&format!("after_{side}_create_commit"));
        Ok(())
    }

    /// Sends creates `ops`. While a connector writes them, the state's writer is idle:
    /// the batch sent `before` is linked, then the intents of the hubs the plan holds
    /// (a plan made whole holds them from the start) are stored, if not yet, since they
    /// need only be stored before the updates go out (R18). The first sync at 1M stored
    /// 805,000 in 0.8 s after its creates had gone out. A run in ranges plans its first
    /// range here (`ahead`) and holds it as a plan made whole holds its hubs: the first
    /// batch has nothing before it to link, and the range would otherwise be planned
    /// once every create is linked, with the connector idle.
    async fn send_creates(
        &mut self,
        state: &mut dyn StateStore,
        (connector, kind, ops): (&dyn Connector, EntityKind, Vec<WriteOp>),
        before: Option<SentCreates<'_, '_>>,
        ahead: Option<&mut Planning<'_>>,
    ) -> Result<Vec<WriteOutcome>, EngineError> {
        state.confirm_lease()?;
        let sending = std::pin::pin!(send(connector, kind, ops));
        // Runs until the first wait (a file connector writes on a thread of its own).
        let sending = Pump::start(sending).await;
        let linked = match before {
            Some(before) => self.link_creates(state, before),
            None => Ok(()),
        };
        if let Some(planning) = ahead.filter(|_| !self.range_held && linked.is_ok())
            && let Some(range) = self.plan_next(planning)
        {
            self.plan.absorb(range);
            self.range_held = true;
        }
        let intents = !self.intents_stored && !self.plan.hubs.is_empty() && linked.is_ok();
        let stored = match intents {
            true => write::commit_intents(state, &self.plan.hubs, self.relations, &self.log, 0),
            false => Ok(()),
        };
        let outcomes = sending.finish().await;
        // Its creates are written down: the next run finds them again (R18).
        linked?;
        stored?;
        if intents {
            self.intents_stored = true;
            failpoint::hit("after_intent_commit");
        }
        Ok(outcomes)
    }

    /// A create that happened: its link, hashes and log entries.
    fn created(&mut self, job: &CreateJob<'_>, fields: &Fields, written: &Written) {
        let r = job.relation;
        self.writes += 1;
        let new_hash = record_hash(fields, written.version.as_deref());
        // Stored with the match keys of the fields it was created with: an edit of it
        // that leaves them wakes no matching (R4). Other relations match it anew
        // through their accounts marked to be looked at again (`recheck_accounts`).
        let created = |read: &ScopeRead| match_keys(fields, &read.key_fields);
        let (contact_id, account_id, contact_version, account_version) = match job.side {
            Side::Contact => {
                let read = self.accounts[r].settle(job.source_id);
                let (scope, keys) = (self.contacts.scope.clone(), created(&self.contacts));
                (self.batch).set_hash_with_keys(scope, written.id.clone(), new_hash, keys);
                let scope = self.accounts[r].scope.clone();
                let source = job.source_id.to_owned();
                match read {
                    Some(seen) => self
                        .batch
                        .set_hash_with_keys(scope, source, seen.hash, seen.keys),
                    None => self.batch.set_hashes.push((scope, source, RECHECK)),
                }
                let source_version = job.source_version.map(str::to_owned);
                let versions = (written.version.clone(), source_version);
                (
                    written.id.clone(),
                    job.source_id.to_owned(),
                    versions.0,
                    versions.1,
                )
            }
            Side::Account => {
                let (scope, keys) = (self.accounts[r].scope.clone(), created(&self.accounts[r]));
                (self.batch).set_hash_with_keys(scope, written.id.clone(), new_hash, keys);
                let source_version = job.source_version.map(str::to_owned);
                let versions = (source_version, written.version.clone());
                (
                    job.source_id.to_owned(),
                    written.id.clone(),
                    versions.0,
                    versions.1,
                )
            }
        };
        self.hand_over(r, &contact_id, &account_id);
        let link = Link {
            code: job.code.to_owned(),
            contact_id: contact_id.clone(),
            account_id: account_id.clone(),
            baseline: job.baseline(fields),
            contact_version,
            account_version,
            last_error: None,
            failure_count: 0,
            parked: false,
            linked_at: self.log.now,
            synced_at: self.log.now,
            intent: job.intent.cloned(),
        };
        if job.asked {
            let mark = (job.code.to_owned(), job.source_id.to_owned(), false);
            self.batch.contact_deleted.push(mark);
        }
        if job.side == Side::Account {
            let links = self.created_links.entry(contact_id.clone()).or_default();
            links.push(link.clone());
        }
        self.batch.upsert_links.push(link);
        // A pending row left by an earlier run that failed this create.
        if self.previous.creates.contains_key(&job.pending_key()) {
            self.batch.delete_pending.push(job.pending_key());
        }
        let (code, side) = (job.code, job.side.as_str());
        let account = Some(account_id.as_str());
        self.log(&contact_id, code, account, side, &job.entry(fields));
        let by = LogEntry::Linked {
            by: "create".to_owned(),
            tier: None,
        };
        self.log(&contact_id, code, account, side, &by);
    }

    /// A create that failed: counted, remembered, parked the second time (R17). One
    /// that may have made its record all the same stays pending without an error, as
    /// a create a crash cut short: the next run finds its record before it creates
    /// anything (R18). So does one refused because its chosen id is taken: the
    /// record there is most likely an earlier attempt's (a retry after a lost reply).
    fn create_failed(
        &mut self,
        job: &CreateJob<'_>,
        fields: &Fields,
        record_id: Option<String>,
        e: &ConnectorError,
    ) {
        let r = job.relation;
        let error = e.to_string();
        let previous = (self.previous.creates.get(&job.pending_key()))
            .map(|p| (p.failure_count, p.error.clone()));
        let (contact_id, account_id) = match job.side {
            Side::Contact => (None, Some(job.source_id.to_owned())),
            Side::Account => (Some(job.source_id.to_owned()), None),
        };
        let failure = Failure {
            code: job.code.to_owned(),
            contact_id,
            account_id,
            side: job.side,
            error: error.clone(),
            parked: false,
        };
        let previous = previous.as_ref().map(|(n, e)| (*n, e.as_deref()));
        let (count, parked) = self.fail(Failed::Create(r, e.is_retryable()), previous, failure);
        if job.side == Side::Contact {
            self.accounts[r].settle(job.source_id);
            self.batch.set_hashes.push((
                self.accounts[r].scope.clone(),
                job.source_id.to_owned(),
                RECHECK,
            ));
        }
        self.batch.upsert_pending.push(PendingCreate {
            code: job.code.to_owned(),
            side: job.side,
            source_id: job.source_id.to_owned(),
            fields: fields.clone(),
            run_id: Some(self.log.run_id),
            error: (!may_have_made(e, record_id.is_some())).then_some(error),
            failure_count: count,
            parked,
            updated_at: self.log.now,
            record_id,
        });
    }
}

/// The id a create is to make its record under, where `connector` lets the engine
/// choose it (R18): the one its `previous` attempt was sent with (a record made by it
/// would have been found by it, so none has it), else a new one. None where the
/// connector assigns ids, whatever an earlier attempt was sent with (the config may
/// have changed since).
fn record_id(
    previous: Option<&PendingCreate>,
    connector: &dyn Connector,
    kind: EntityKind,
) -> Option<String> {
    let fresh = connector.new_id(kind)?;
    Some(previous.and_then(|p| p.record_id.clone()).unwrap_or(fresh))
}

/// Whether a create that failed with `e` may have made its record all the same: a
/// reply lost, or, for a create sent with its id, that id taken.
fn may_have_made(e: &ConnectorError, sent_with_id: bool) -> bool {
    e.may_have_acted() || (sent_with_id && matches!(e, ConnectorError::Conflict { .. }))
}

#[cfg(test)]
mod tests {
    use tandem_model::Timestamp;

    use super::*;

    #[test]
    fn creates_are_written_down_in_records_of_twenty_thousand_in_order() {
        let create = |i: usize| PendingCreate {
            code: "VEND".into(),
            side: Side::Contact,
            source_id: format!("V{i:06}"),
            fields: Fields::new(),
            run_id: Some(7),
            error: None,
            failure_count: 0,
            parked: false,
            updated_at: Timestamp(0),
            record_id: None,
        };
        let creates: Vec<PendingCreate> = (0..2 * COMMIT_EVERY + 1).map(create).collect();
        let batches = batches_of(7, 2, creates.clone());
        let sizes: Vec<usize> = batches.iter().map(|b| b.creates.len()).collect();
        assert_eq!(sizes, [COMMIT_EVERY, COMMIT_EVERY, 1]);
        assert!(batches.iter().all(|b| (b.run_id, b.part) == (7, 2)));
        let back: Vec<PendingCreate> = batches.into_iter().flat_map(|b| b.creates).collect();
        assert_eq!(back, creates);
        assert!(batches_of(7, 2, Vec::new()).is_empty());
    }
}
