//! Applying a plan, in an order that loses nothing when the process dies at any point:
//!
//! 1. requests the plan refused, and links whose side is gone or that an operator
//!    dropped (state only; `unlink.rs`);
//! 2. creates, each one written down as *pending* before the remote call and linked
//!    right after it, so a crash in between is repaired by the next run (the record
//!    is found again by its fields) instead of creating a duplicate (`create.rs`);
//! 3. intents (in a plan made whole, stored while the first creates are sent), then
//!    contact updates and account updates per relation (`write.rs`; the two sides
//!    side by side when their connectors differ);
//! 4. links, baselines, the interaction log (R11), failures and parking (R17)
//!    (`settle.rs`);
//! 5. content hashes, cursors and fingerprints last (`finish.rs`).
//!
//! A pair's writes are written down (R18) before they are sent, with the baseline
//! they will leave; the next run finishes what a crash cut short.

mod create;
mod finish;
mod settle;
mod unlink;
mod write;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tandem_connector::{Connector, ConnectorError, WriteOp, WriteOutcome};
use tandem_model::{EntityKind, Timestamp};
use tandem_state::{
    Interaction, Link, LogEntry, PendingCreate, RefusedRequest, StateBatch, StateError, StateStore,
};
use tracing::info;

use crate::overlap::Pump;
use crate::pending::Pending;
use crate::plan::{HubRange, PairWas, Plan, Planning};
use crate::relation::Relations;
use crate::run::{Engine, EngineError, Failure, Prepared, RunReport, ScopeRead, rejections};
use crate::side::Side;

/// State changes per transaction while applying.
const COMMIT_EVERY: usize = 20_000;

/// A pending create by (code, side created, source id), as the state keys it.
type PendingKey = (String, Side, String);

/// What earlier runs left unfinished, as the run found it, by key.
#[derive(Debug, Default)]
struct Previous {
    creates: HashMap<PendingKey, PendingCreate>,
    /// Refused requests by (code, contact id).
    refused: HashMap<(String, String), RefusedRequest>,
    /// Pending links of an older state, by (code, contact id).
    links: HashSet<(String, String)>,
}

impl Previous {
    fn of(pending: &Pending) -> Previous {
        Previous {
            creates: (pending.creates.iter())
                .map(|p| ((p.code.clone(), p.side, p.source_id.clone()), p.clone()))
                .collect(),
            refused: (pending.refused.iter())
                .map(|p| ((p.code.clone(), p.contact_id.clone()), p.clone()))
                .collect(),
            links: (pending.links.iter())
                .map(|p| (p.code.clone(), p.contact_id.clone()))
                .collect(),
        }
    }
}

/// Everything the steps of one apply share.
struct Applier<'e> {
    relations: &'e Relations,
    connectors: &'e HashMap<String, Arc<dyn Connector>>,
    log: Log,
    plan: Plan,
    contacts: ScopeRead,
    accounts: Vec<ScopeRead>,
    /// Pending creates, refused requests and links as the run found them.
    previous: Previous,
    batch: StateBatch,
    failures: Vec<Failure>,
    writes: u64,
    /// Contacts to look at again next run although nobody edits them.
    recheck_contacts: Vec<String>,
    /// Links made by creating an account for a contact, by contact: a write to that
    /// contact later in the run gives them its new version (R19).
    created_links: HashMap<String, Vec<Link>>,
    /// Contacts whose write failed this run.
    contact_write_failed: crate::IdSet<String>,
    started: std::time::Instant,
    /// Checked between write batches (the safe points).
    stop: crate::StopFlag,
    /// Writes sent of those planned, for the progress events; shared with the
    /// updates of a range sent while the range before is settled.
    progress: Arc<crate::progress::Applying>,
    /// What this run left to other partitions.
    cut: crate::partition::Cut,
    /// The hubs the report shows, with what they settled: at most as many as one
    /// range holds, so that a run planned range by range holds no whole plan.
    reported: HubRange,
    /// Hubs carried out and not in `reported`.
    hubs_left_out: u64,
    /// Whether the intents of the hubs to carry out next are stored already: a plan
    /// made whole stores them while its creates are sent (`create::send_creates`), a
    /// run in ranges while the range before is sent (`Applier::between_sends`).
    intents_stored: bool,
    /// Whether the plan holds the range to carry out first: a plan made whole's hubs,
    /// from the start (`Applier::hold`), or the first range of a run in ranges,
    /// planned while its creates went out (`create::send_creates`).
    range_held: bool,
    /// The part of the run whose intents were stored last: 0 for those of a plan made
    /// whole, then one per range (`IntentBatch::part`), so that a range's links
    /// clear its own intents and not those of the range sent after it.
    part: i64,
    /// The part of the run whose creates were written down last
    /// (`PendingCreateBatch::part`), one per batch: a batch's record is cleared once
    /// its creates are linked, while the next batch's is kept.
    create_part: i64,
    /// A range's hubs in a run in ranges, else `usize::MAX`: how many hubs the report
    /// shows at most, and how many creates go per call at most, so that the create
    /// step holds no more than a range does (a budget's run at 10M took 4.6 GB over
    /// what it held sending its 1.8M creates in one call).
    per_range: usize,
}

/// A range whose updates were sent, to settle: its hubs, what each write answered,
/// and the part of the run its intents were stored under.
struct Sent {
    range: HubRange,
    outcomes: write::Outcomes,
    part: i64,
}

/// What the apply takes from the plan's input, so that a plan made whole lets the
/// records go before anything is written.
pub(crate) struct FromInput {
    previous: Previous,
    person_companies: Vec<(String, Option<String>)>,
}

impl FromInput {
    /// `companies_stored`: whether the state holds the company of any contact, so that
    /// a contact that is no person may have one to forget.
    pub(crate) fn of(
        input: &crate::plan::PlanInput,
        contacts: &ScopeRead,
        companies_stored: bool,
    ) -> FromInput {
        FromInput {
            previous: Previous::of(&input.pending),
            person_companies: finish::person_companies(contacts, input, companies_stored),
        }
    }
}

/// Carries out `prepared`, then the hubs `planning` has left, a range at a time: each
/// range's updates are written and its links stored before the next is planned.
pub(crate) async fn apply(
    engine: &mut Engine<'_>,
    run_id: i64,
    prepared: Prepared,
    from_input: FromInput,
    planning: Option<&mut Planning<'_>>,
) -> Result<RunReport, EngineError> {
    let tag = engine.fingerprint_tag();
    let Engine {
        relations,
        connectors,
        state,
        stop,
        ..
    } = engine;
    let Prepared {
        mut plan,
        contacts,
        accounts,
        parked_before,
        ambiguities,
        cut,
    } = prepared;
    let FromInput {
        previous,
        person_companies,
    } = from_input;
    // The hubs planned with the head (a plan made whole) are the one range; counted.
    let whole = planning.as_ref().is_none_or(|p| p.is_done());
    let planned = whole.then(|| plan.take_range());
    let mut applier = Applier {
        relations,
        connectors,
        log: Log {
            run_id,
            now: Timestamp::now(),
        },
        failures: rejections(&plan),
        plan,
        contacts,
        accounts,
        previous,
        batch: StateBatch::default(),
        writes: 0,
        recheck_contacts: Vec::new(),
        created_links: HashMap::new(),
        contact_write_failed: crate::IdSet::default(),
        started: std::time::Instant::now(),
        stop: stop.clone(),
        progress: Arc::default(),
        cut,
        reported: HubRange::default(),
        hubs_left_out: 0,
        per_range: planning.as_ref().map_or(usize::MAX, |p| p.per_range()),
        intents_stored: false,
        range_held: false,
        part: 0,
        create_part: 0,
    };
    info!(run = run_id, "applying");
    // The writes known now: the head's, and the hubs' of a plan made whole; each range
    // planned later adds its own.
    let planned_writes = planned
        .as_ref()
        .map_or(0, |r| crate::plan::hub_writes(&r.hubs));
    let known = applier.plan.write_count() + planned_writes;
    applier.progress = Arc::new(crate::progress::Applying::new(known as u64));
    let next = planned.map(|range| applier.hold(range));
    applier.refusals();
    applier.unlinks();
    applier.commit(&mut **state)?;
    crate::failpoint::hit("after_unlinks");
    // Stored before the hashes that make the next run quiet: a quiet run reports them.
    applier.remember_ambiguities(&ambiguities);
    let mut planning = planning;
    let first = (applier.creates(&mut **state, planning.as_deref_mut())).await?;
    applier.step("after_creates");
    // A range held (its hubs in the plan) is carried out first.
    let next = next.or_else(|| applier.range_held.then(HubRange::default));
    let last = (applier.carry_out_all(&mut **state, next, planning, first)).await?;
    (applier.finish(&mut **state, last, person_companies, &tag)).await?;
    crate::progress::apply_end(applier.progress.done(), applier.progress.total());
    applier.report(&**state, &parked_before)
}

impl Applier<'_> {
    /// A plan made whole's one range, held in the plan from the start of the apply so
    /// that its intents can be stored while the creates go out
    /// (`create::send_creates`); what is left to carry out of it is empty.
    fn hold(&mut self, range: HubRange) -> HubRange {
        self.plan.absorb(range);
        self.range_held = true;
        HubRange::default()
    }

    /// The next range's hubs, planned and counted.
    fn plan_next(&mut self, planning: &mut Planning<'_>) -> Option<HubRange> {
        let started = std::time::Instant::now();
        let range = planning.next_range()?;
        self.count_range(&range, planning, started.elapsed());
        Some(range)
    }

    /// A range planned: its hubs counted, its writes added to the progress total.
    fn count_range(&mut self, range: &HubRange, planning: &Planning<'_>, took: Duration) {
        crate::plan::add_hub_counts(&mut self.plan.counts, &range.hubs, self.relations);
        (self.progress).plan_more(crate::plan::hub_writes(&range.hubs) as u64);
        tracing::debug!(
            hubs = range.hubs.len(),
            left = planning.hubs_left(),
            ms = took.as_millis() as u64,
            "range planned"
        );
    }

    /// Steps 3 and 4 for every range: `next`, then those `planning` has left; after
    /// `first`, the range carried out with the last creates (`create::create_all`),
    /// and the range planned after it. A range's links are stored while the next
    /// range's updates go out. Returns the last range sent, to settle
    /// (`Applier::finish`).
    async fn carry_out_all(
        &mut self,
        state: &mut dyn StateStore,
        next: Option<HubRange>,
        mut planning: Option<&mut Planning<'_>>,
        first: Option<(Sent, Option<HubRange>)>,
    ) -> Result<Option<Sent>, EngineError> {
        let (mut written, mut next) = match first {
            Some((sent, planned)) => (Some(sent), planned),
            None => (None, next),
        };
        while let Some(range) = next
            .take()
            .or_else(|| self.plan_next(planning.as_deref_mut()?))
        {
            let ahead = planning.as_deref_mut().filter(|p| !p.is_done());
            let before = written.take();
            let (range, planned) = self.carry_out(state, range, before, ahead, None).await?;
            (written, next) = (Some(range), planned);
        }
        Ok(written)
    }

    /// One range's hubs: intents, unless stored already, then updates (step 3). While
    /// the updates go out, the last `creates` are linked, the range `before` is
    /// settled (step 4) and, with `ahead`, the next range is planned, its intents
    /// stored, and returned counted. Holds two ranges' plans at once, as the range
    /// sent and the range settled or planned.
    async fn carry_out(
        &mut self,
        state: &mut dyn StateStore,
        range: HubRange,
        before: Option<Sent>,
        ahead: Option<&mut Planning<'_>>,
        creates: Option<create::SentCreates<'_, '_>>,
    ) -> Result<(Sent, Option<HubRange>), EngineError> {
        // Between ranges is a safe point: everything before is stored.
        if self.stop.is_stopped() {
            if let Some(creates) = creates {
                self.link_creates(state, creates)?;
            }
            if let Some(before) = before {
                self.settle_range(state, before, false)?;
            }
            return Err(EngineError::Stopped);
        }
        // A plan made whole is held in the plan from the start (`Applier::hold`).
        self.plan.absorb(range);
        let range = self.plan.take_range();
        self.store_intents(state, &range.hubs)?;
        let part = self.part;
        // The updates ask for the lease apart from the state, which stores the range
        // before while they go out.
        let lease = state.lease_check();
        let lease = || lease.confirm();
        let (answered, between) = {
            let sends = self.sends(&range.hubs, &lease);
            let sending = std::pin::pin!(sends.send());
            self.between_sends(state, sending, (creates, before), ahead)
                .await
        };
        let next = between?;
        let outcomes = self.landed(&range.hubs, answered?)?;
        Ok((
            Sent {
                range,
                outcomes,
                part,
            },
            next,
        ))
    }

    /// What is done while a range's updates go out (`sending`): the last creates
    /// linked and the range `before` settled, then, with `ahead`, the next range
    /// planned and its intents stored, so that its updates can follow these at once.
    /// The updates are polled again once the range before is settled, so that a
    /// connector's next call (the next relation's) goes out while the next range is
    /// planned: polled only after, it went out once the plan was made, 30 to 60 ms a
    /// range of a first sync at 1M with the file connector's calls waiting on it.
    /// Returns what the updates answered, and the next range.
    async fn between_sends<F>(
        &mut self,
        state: &mut dyn StateStore,
        sending: Pin<&mut F>,
        (creates, before): (Option<create::SentCreates<'_, '_>>, Option<Sent>),
        ahead: Option<&mut Planning<'_>>,
    ) -> (F::Output, Result<Option<HubRange>, EngineError>)
    where
        F: Future,
    {
        // Runs until the first wait (a file connector writes on a thread of its own).
        let mut sending = Pump::start(sending).await;
        let linked = match creates {
            Some(creates) => self.link_creates(state, creates),
            None => Ok(()),
        };
        let next = linked.and_then(|()| {
            self.settle_and_plan(state, before, ahead, false, &mut || sending.poll())
        });
        sending.poll();
        self.intents_stored = matches!(next, Ok(Some(_)));
        (sending.finish().await, next)
    }

    /// Step 4 for a range sent: its links stored, its intents cleared; `last` when no
    /// range comes after it. Its hubs go to the report as far as it has room.
    fn settle_range(
        &mut self,
        state: &mut dyn StateStore,
        sent: Sent,
        last: bool,
    ) -> Result<(), EngineError> {
        self.settle_and_plan(state, Some(sent), None, last, &mut || ())
            .map(drop)
    }

    /// The range `before` settled (see [`Applier::settle_range`]), then, with `ahead`,
    /// the next range planned and its intents stored (R18), all through one state
    /// writer: the next range is planned while the writer stores the last batches of
    /// the range before, instead of after. `between` is called once the range before
    /// is settled.
    fn settle_and_plan(
        &mut self,
        state: &mut dyn StateStore,
        before: Option<Sent>,
        ahead: Option<&mut Planning<'_>>,
        last: bool,
        between: &mut dyn FnMut(),
    ) -> Result<Option<HubRange>, EngineError> {
        let settled = before.is_some();
        let mut next = None;
        commit_behind(state, |committer| {
            if let Some(sent) = before {
                self.plan.absorb(sent.range);
                self.settle(committer, sent.outcomes, sent.part, last)?;
                // Let go before the next range is planned: two ranges' plans at most.
                self.report_range();
            }
            between();
            next = ahead.and_then(|planning| self.plan_next(planning));
            let Some(range) = &next else { return Ok(()) };
            self.part += 1;
            write::send_intents(committer, &range.hubs, self.relations, &self.log, self.part)
        })?;
        if settled {
            crate::failpoint::hit("after_link_commit");
            self.step("after_link_commit");
        }
        if next.is_some() {
            crate::failpoint::hit("after_intent_commit");
        }
        Ok(next)
    }

    /// The hubs of the range settled go to the report as far as it has room.
    fn report_range(&mut self) {
        let mut range = self.plan.take_range();
        let room = self.per_range.saturating_sub(self.reported.hubs.len());
        self.hubs_left_out += range.hubs.len().saturating_sub(room) as u64;
        range.hubs.truncate(room);
        self.reported.hubs.append(&mut range.hubs);
        self.reported
            .close_conflicts
            .append(&mut range.close_conflicts);
        self.reported.codes_removed.append(&mut range.codes_removed);
    }

    fn commit(&mut self, state: &mut dyn StateStore) -> Result<(), EngineError> {
        state.commit(std::mem::take(&mut self.batch))?;
        Ok(())
    }

    /// A link made by the matcher belongs from now on to the partition of its contact:
    /// both records are marked to be looked at again in that partition's view, in the
    /// commit that stores the link, so that the partition knows them however its view
    /// stood (a record created by a run cut short before it ever ran, then deleted,
    /// must show as deleted to it, not as a record to write to).
    fn hand_over(&mut self, r: usize, contact_id: &str, account_id: &str) {
        let Some(holder) = self.cut.holder_of(contact_id) else {
            return;
        };
        let (contacts, accounts) = (&self.contacts, &self.accounts[r]);
        let contact_scope = holder.scope(&contacts.stats.connector, EntityKind::Contact);
        let account_scope = holder.scope(&accounts.stats.connector, accounts.scope.kind);
        let marks = &mut self.batch.set_hashes;
        marks.push((contact_scope, contact_id.to_owned(), crate::run::RECHECK));
        marks.push((account_scope, account_id.to_owned(), crate::run::RECHECK));
    }

    /// Step timings in the log (`tandem_engine::apply=debug`).
    fn step(&mut self, step: &'static str) {
        self.progress.advance(0, step);
        tracing::debug!(
            ms = self.started.elapsed().as_millis() as u64,
            step,
            "applying"
        );
    }

    fn connector(&self, name: &str) -> Arc<dyn Connector> {
        self.connectors[name].clone()
    }

    /// The connector and kind of one side of relation `r`.
    fn side_connector(&self, side: Side, r: usize) -> (Arc<dyn Connector>, EntityKind) {
        match side {
            Side::Contact => (
                self.connector(&self.relations.contacts_connector),
                EntityKind::Contact,
            ),
            Side::Account => {
                let relation = &self.relations.relations[r];
                (self.connector(&relation.connector), relation.kind)
            }
        }
    }

    /// A new entry for the interaction log of this run.
    fn log(
        &mut self,
        contact_id: &str,
        code: &str,
        account_id: Option<&str>,
        source: &str,
        entry: &LogEntry,
    ) {
        let entry = self.log.entry(contact_id, code, account_id, source, entry);
        self.batch.interactions.push(entry);
    }
}

fn batch_len(batch: &StateBatch) -> usize {
    batch.upsert_links.len()
        + batch.set_hashes.len()
        + batch.delete_hashes.len()
        + batch.delete_links.len()
        + batch.interactions.len()
}

/// Writes `ops`, turning an error for the whole call into one error per op.
///
/// The caller asks the state first whether this process still holds it
/// (`StateStore::confirm_lease`): a worker that stalled past its lease and was taken
/// over stops there, before its write could undo the newer holder's (the run ends as
/// after a crash; R18 recovers its intents). Borrows no state, so that the state can
/// be written while the connector writes.
async fn send(connector: &dyn Connector, kind: EntityKind, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
    let n = ops.len();
    tracing::debug!(%kind, ops = n, "sending writes");
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

impl Applier<'_> {
    /// A contact's request refused in an earlier run is granted: it gets the account.
    fn request_granted(&mut self, code: &str, contact_id: &str) {
        let key = (code.to_owned(), contact_id.to_owned());
        if self.previous.refused.contains_key(&key) {
            self.batch.delete_refused.push(key);
        }
    }
}

/// What failed, as the counts know it.
#[derive(Debug, Clone, Copy)]
enum Failed {
    /// A pair's write, in relation `r`; whether the error was passing (the server's
    /// state, not the record's: rate limited, unavailable), which never parks.
    Pair(usize, PairWas, bool),
    /// A create, in relation `r`; whether the error was passing.
    Create(usize, bool),
    /// A request the plan refused: the plan counted it already.
    Request,
}

/// The failure count and the error of the last attempt, as the state holds them.
type Attempts<'a> = Option<(u32, Option<&'a str>)>;

impl Applier<'_> {
    /// R17, the one place a failure is handled: counted, parked when it is the same
    /// error as last time, and reported. Returns the new failure count and whether it
    /// is parked now, for the state row the caller stores.
    fn fail(
        &mut self,
        failed: Failed,
        previous: Attempts<'_>,
        mut failure: Failure,
    ) -> (u32, bool) {
        let (previous_count, previous_error) = previous.unwrap_or((0, None));
        let count = previous_count + 1;
        let passing = matches!(failed, Failed::Pair(_, _, true) | Failed::Create(_, true));
        let same_again = previous_count >= 1 && previous_error == Some(failure.error.as_str());
        let parked = same_again && !passing;
        failure.parked = parked;
        // One line per failed record, with its ids, for logs read by machines.
        info!(
            code = failure.code,
            contact_id = failure.contact_id,
            account_id = failure.account_id,
            side = %failure.side,
            parked,
            error = failure.error,
            "record failed"
        );
        match failed {
            Failed::Pair(r, was, _) => self.plan.counts[r].pair_failed(was),
            Failed::Create(r, _) => self.plan.counts[r].create_failed(),
            Failed::Request => {
                // Reported from the plan already: only whether it is parked is new.
                let reported = self
                    .failures
                    .iter_mut()
                    .find(|f| f.code == failure.code && f.contact_id == failure.contact_id);
                if let Some(reported) = reported {
                    reported.parked = parked;
                }
                return (count, parked);
            }
        }
        self.failures.push(failure);
        (count, parked)
    }
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
        // Up to four batches wait while one is committed (a range's settling makes about
        // a dozen, of a few MB each): the builder finishes ahead of the writer and goes on
        // to plan the next range while the last ones are stored (`settle_and_plan`).
        let (sender, receiver) = std::sync::mpsc::sync_channel::<StateBatch>(4);
        let (give_back, committed) = std::sync::mpsc::channel::<StateBatch>();
        // Named, so that a profile tells its time from the builder's.
        let writer = std::thread::Builder::new().name("tandem-state".to_owned());
        let writer = writer.spawn_scoped(scope, move || -> Result<(), StateError> {
            let mut busy = Duration::ZERO;
            for batch in receiver {
                let t = std::time::Instant::now();
                let done = state.commit_and_return(batch)?;
                busy += t.elapsed();
                // Dropped by the builder, which made it; a builder gone drops it here.
                _ = give_back.send(done);
            }
            tracing::debug!(busy_ms = busy.as_millis() as u64, "state writer");
            Ok(())
        });
        // As `scope.spawn` would: a process that cannot start a thread cannot run.
        let writer = writer.expect("the system could not start the state writer thread");
        let t = std::time::Instant::now();
        let committer = Committer { sender, committed };
        let built = build(&committer);
        tracing::debug!(build_ms = t.elapsed().as_millis() as u64, "state builder");
        // The writer ends once the last batch is in.
        let Committer { sender, committed } = committer;
        drop(sender);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        committed.try_iter().for_each(drop);
        // A failed commit closed the channel: its error explains the failed send.
        written?;
        built
    })
}

/// Hands batches to the helper thread of [`commit_behind`], and drops those it gave
/// back committed.
struct Committer {
    sender: std::sync::mpsc::SyncSender<StateBatch>,
    committed: std::sync::mpsc::Receiver<StateBatch>,
}

impl Committer {
    fn send(&self, batch: StateBatch) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.committed.try_iter().for_each(drop);
        self.sender
            .send(batch)
            // Only a failed commit ends the writer early; `commit_behind` returns its
            // error instead of this one.
            .map_err(|_| EngineError::Refused("the state writer stopped".to_owned()))
    }

    /// Sends `batch` once it holds enough for a transaction of its own, and goes on in
    /// a batch given back committed, emptied: its lists are grown already.
    fn send_full(&self, batch: &mut StateBatch) -> Result<(), EngineError> {
        if batch_len(batch) >= COMMIT_EVERY {
            let mut next = self.committed.try_recv().unwrap_or_default();
            next.clear();
            self.send(std::mem::replace(batch, next))?;
        }
        Ok(())
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
        source: &str,
        entry: &LogEntry,
    ) -> Interaction {
        Interaction {
            id: 0,
            at: self.now,
            run_id: Some(self.run_id),
            contact_id: contact_id.to_owned(),
            code: code.to_owned(),
            account_id: account_id.map(str::to_owned),
            action: entry.action().to_owned(),
            source: source.to_owned(),
            details: entry.details(),
        }
    }
}
