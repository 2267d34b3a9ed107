//! Step 3: what the writes will do is written down first (R18), then contact updates
//! and account updates per relation, side by side when they go to different
//! connectors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tandem_connector::{Changes, Connector, ConnectorError, WriteOp, WriteOutcome};
use tandem_model::{EntityKind, Timestamp};
use tandem_state::{IntentBatch, Link, StateBatch, StateError, StateStore};

use super::{Applier, COMMIT_EVERY, Committer, commit_behind, send};
use crate::failpoint;
use crate::plan::{FieldChanges, HubPlan, PairPlan};
use crate::progress::Applying;
use crate::relation::Relations;
use crate::run::EngineError;
use crate::stop::StopFlag;

/// What a write came to, as settling needs it: the record's version after it, or the
/// error. Not the connector's whole answer (a [`WriteOutcome`]): a first sync at 1M
/// holds 1.6M of these until its links are stored, and the id an update answers is the
/// one it was sent; 24 bytes a write instead of 72 and the id's copy.
#[derive(Debug)]
pub(super) enum Landed {
    Written { version: Option<Box<str>> },
    Failed(Box<ConnectorError>),
}

impl Landed {
    fn of(outcome: WriteOutcome) -> Landed {
        match outcome {
            Ok(written) => Landed::Written {
                version: written.version.map(String::into_boxed_str),
            },
            Err(e) => Landed::Failed(Box::new(e)),
        }
    }
}

/// What every write of step 3 answered.
pub(super) struct Outcomes {
    /// By hub.
    pub contacts: Vec<Option<Landed>>,
    /// By pair, in hub order (`pair_offsets[hub] + pair`).
    pub accounts: Vec<Option<Landed>>,
    pub pair_offsets: Vec<usize>,
}

impl Outcomes {
    fn new(hubs: &[HubPlan]) -> Outcomes {
        let pair_offsets: Vec<usize> = hubs
            .iter()
            .scan(0, |next, hub| {
                let first = *next;
                *next += hub.pairs.len();
                Some(first)
            })
            .collect();
        let pairs = hubs.iter().map(|h| h.pairs.len()).sum();
        Outcomes {
            contacts: std::iter::repeat_with(|| None).take(hubs.len()).collect(),
            accounts: std::iter::repeat_with(|| None).take(pairs).collect(),
            pair_offsets,
        }
    }
}

fn to_changes(changes: &FieldChanges) -> Changes {
    changes.iter().map(|c| (c.field, c.new)).collect()
}

/// What one side's updates answered: where each goes in [`Outcomes`], and the
/// outcome.
type Answers<K> = Vec<(K, WriteOutcome)>;

/// A pair by (hub, pair) in the plan.
type PairKey = (usize, usize);

/// What the updates of one range need, apart from the [`Applier`]: the range before
/// is settled into the applier while they go out.
pub(super) struct Sends<'a> {
    relations: &'a Relations,
    connectors: &'a HashMap<String, Arc<dyn Connector>>,
    hubs: &'a [HubPlan],
    stop: StopFlag,
    progress: Arc<Applying>,
    started: Instant,
    /// Asks the state whether this process still holds it, before each call
    /// ([`super::send`]).
    lease: &'a dyn Fn() -> Result<(), StateError>,
}

/// What every update of a range answered, by hub and by relation.
pub(super) struct Answered {
    contacts: Answers<usize>,
    accounts: Vec<Answers<PairKey>>,
}

impl<'e> Applier<'e> {
    /// The updates of `hubs`, to send with [`Sends::send`]: they borrow nothing of the
    /// applier.
    pub(super) fn sends<'a>(
        &self,
        hubs: &'a [HubPlan],
        lease: &'a dyn Fn() -> Result<(), StateError>,
    ) -> Sends<'a>
    where
        'e: 'a,
    {
        Sends {
            relations: self.relations,
            connectors: self.connectors,
            hubs,
            stop: self.stop.clone(),
            progress: self.progress.clone(),
            started: self.started,
            lease,
        }
    }

    /// Stores the intents of `hubs` unless stored already (a plan made whole stores
    /// them while its creates are sent): before any of their updates is sent (R18).
    pub(super) fn store_intents(
        &mut self,
        state: &mut dyn StateStore,
        hubs: &[HubPlan],
    ) -> Result<(), EngineError> {
        if std::mem::take(&mut self.intents_stored) {
            return Ok(());
        }
        self.part += 1;
        commit_intents(state, hubs, self.relations, &self.log, self.part)?;
        failpoint::hit("after_intent_commit");
        Ok(())
    }

    /// What the updates of `hubs` answered, counted and kept for settling; the step's
    /// end, unless a stop was asked for.
    pub(super) fn landed(
        &mut self,
        hubs: &[HubPlan],
        answered: Answered,
    ) -> Result<Outcomes, EngineError> {
        let mut outcomes = Outcomes::new(hubs);
        for (hub, outcome) in answered.contacts {
            self.writes += u64::from(outcome.is_ok());
            outcomes.contacts[hub] = Some(Landed::of(outcome));
        }
        if self.side_by_side() {
            // Sent side by side, the contacts' step ends with the accounts'; sent one
            // after the other, it ended between the two (`Sends::send`).
            self.stopped()?;
            failpoint::hit("after_contact_updates");
            self.step("after_contact_updates");
        }
        for ((h, p), outcome) in answered.accounts.into_iter().flatten() {
            self.writes += u64::from(outcome.is_ok());
            outcomes.accounts[outcomes.pair_offsets[h] + p] = Some(Landed::of(outcome));
        }
        self.stopped()?;
        failpoint::hit("after_account_updates");
        self.step("after_account_updates");
        Ok(outcomes)
    }

    fn side_by_side(&self) -> bool {
        side_by_side(self.relations)
    }

    /// A stop asked for during the updates ends the run here: the intents of the
    /// updates not sent are stored, and the next run takes them up (R18).
    fn stopped(&self) -> Result<(), EngineError> {
        stopped(&self.stop)
    }
}

/// Whether the contact and account updates go out side by side: only when no
/// relation's accounts share the contacts' connector (a connector takes one call at a
/// time). A run made whole holds both sides' ops and answers at once, as a range
/// does: the memory budget counts a hub's writes on both sides.
fn side_by_side(relations: &Relations) -> bool {
    let contacts = &relations.contacts_connector;
    (relations.relations.iter()).all(|r| &r.connector != contacts)
}

fn stopped(stop: &StopFlag) -> Result<(), EngineError> {
    match stop.is_stopped() {
        true => Err(EngineError::Stopped),
        false => Ok(()),
    }
}

impl Sends<'_> {
    /// Contact updates, then account updates per relation; side by side when they go
    /// to different connectors.
    pub(super) async fn send(&self) -> Result<Answered, EngineError> {
        if side_by_side(self.relations) {
            let both =
                futures_util::future::join(self.contact_updates(), self.all_account_updates());
            let (contacts, accounts) = both.await;
            return Ok(Answered {
                contacts: contacts?,
                accounts: accounts?,
            });
        }
        let contacts = self.contact_updates().await?;
        stopped(&self.stop)?;
        failpoint::hit("after_contact_updates");
        self.progress.advance(0, "after_contact_updates");
        tracing::debug!(
            ms = self.started.elapsed().as_millis() as u64,
            step = "after_contact_updates",
            "applying"
        );
        let accounts = self.all_account_updates().await?;
        Ok(Answered { contacts, accounts })
    }

    fn connector(&self, name: &str) -> Arc<dyn Connector> {
        self.connectors[name].clone()
    }

    /// Contact updates; ops are built batch by batch from the plan, so a million
    /// updates are not held twice.
    async fn contact_updates(&self) -> Result<Answers<usize>, EngineError> {
        let connector = self.connector(&self.relations.contacts_connector);
        let max = connector.capabilities().max_batch.max(1);
        let hubs: Vec<usize> = (0..self.hubs.len())
            .filter(|&i| !self.hubs[i].contact_changes.is_empty())
            .collect();
        let mut answers = Answers::new();
        for chunk in hubs.chunks(max) {
            if self.stop.is_stopped() {
                break;
            }
            let ops = chunk
                .iter()
                .map(|&i| {
                    let h = &self.hubs[i];
                    WriteOp::Update {
                        id: h.contact_id.clone(),
                        version: h.contact_version.clone(),
                        changes: to_changes(&h.contact_changes),
                    }
                })
                .collect();
            (self.lease)()?;
            let sent = send(&*connector, EntityKind::Contact, ops).await;
            self.progress.advance(chunk.len(), "contact updates");
            answers.extend(chunk.iter().copied().zip(sent));
        }
        Ok(answers)
    }

    /// Every relation's account updates, in config order; after a stop is asked for,
    /// none is sent.
    async fn all_account_updates(&self) -> Result<Vec<Answers<PairKey>>, EngineError> {
        let mut all = Vec::new();
        for r in 0..self.relations.relations.len() {
            all.push(self.account_updates(r).await?);
        }
        Ok(all)
    }

    /// The account updates of relation `r`.
    async fn account_updates(&self, r: usize) -> Result<Answers<PairKey>, EngineError> {
        let keys: Vec<PairKey> = self
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
        let mut answers = Answers::new();
        if keys.is_empty() {
            return Ok(answers);
        }
        let relation = &self.relations.relations[r];
        let connector = self.connector(&relation.connector);
        let max = connector.capabilities().max_batch.max(1);
        for chunk in keys.chunks(max) {
            if self.stop.is_stopped() {
                break;
            }
            let ops = chunk
                .iter()
                .map(|&(h, p)| {
                    let pair = &self.hubs[h].pairs[p];
                    WriteOp::Update {
                        id: pair.account_id.clone(),
                        version: pair.account_version.clone(),
                        changes: to_changes(&pair.account_changes),
                    }
                })
                .collect();
            (self.lease)()?;
            let sent = send(&*connector, relation.kind, ops).await;
            self.progress.advance(chunk.len(), "account updates");
            answers.extend(chunk.iter().copied().zip(sent));
        }
        Ok(answers)
    }
}

/// The link a pair of the plan ends with: its new baseline, with the versions as
/// read and without an intent.
pub(super) fn link_of(hub: &HubPlan, pair: &PairPlan, now: Timestamp) -> Link {
    let previous = pair.previous.as_deref();
    Link {
        code: pair.code.clone(),
        contact_id: hub.contact_id.clone(),
        account_id: pair.account_id.clone(),
        baseline: pair.baseline.unpack(),
        contact_version: hub.contact_version.clone(),
        account_version: pair.account_version.clone(),
        last_error: previous.and_then(|l| l.last_error.clone()),
        failure_count: previous.map_or(0, |l| l.failure_count),
        parked: false,
        linked_at: previous.map_or(now, |l| l.linked_at),
        synced_at: previous.map_or(now, |l| l.synced_at),
        intent: None,
    }
}

/// R18: before any update is sent, every pair that will be written is stored with the
/// baseline the writes will leave and what each side held before, as one intent batch
/// per [`COMMIT_EVERY`] pairs. A run cut short leaves these batches; the next one makes
/// them link rows, reads both records and finishes the writes, or merges an edit made
/// meanwhile against that baseline. This run clears them once its links are stored.
pub(super) fn commit_intents(
    state: &mut dyn StateStore,
    hubs: &[HubPlan],
    relations: &Relations,
    log: &super::Log,
    part: i64,
) -> Result<(), EngineError> {
    commit_behind(state, |committer| {
        send_intents(committer, hubs, relations, log, part)
    })
}

/// The intents of `hubs` (see [`commit_intents`]), handed to `committer`.
pub(super) fn send_intents(
    committer: &Committer,
    hubs: &[HubPlan],
    relations: &Relations,
    log: &super::Log,
    part: i64,
) -> Result<(), EngineError> {
    // Sized up front: a batch's links are large, and growing copies them.
    let capacity = hubs.len().min(COMMIT_EVERY) + 1;
    let mut links = Vec::with_capacity(capacity);
    let send = |links: Vec<Link>| {
        let batch = IntentBatch {
            run_id: log.run_id,
            part,
            links,
        };
        committer.send(StateBatch {
            intent_batches: vec![batch],
            ..StateBatch::default()
        })
    };
    for hub in hubs {
        for pair in &hub.pairs {
            let relation = &relations.relations[pair.relation];
            if let Some(intent) = pair.intent(hub, relation) {
                let intent = Some(intent);
                links.push(Link {
                    intent,
                    ..link_of(hub, pair, log.now)
                });
            }
        }
        if links.len() >= COMMIT_EVERY {
            send(std::mem::replace(&mut links, Vec::with_capacity(capacity)))?;
        }
    }
    if links.is_empty() {
        return Ok(());
    }
    send(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first sync at 1M holds one per write (1.6M) until its links are stored.
    #[test]
    fn a_landed_write_takes_24_bytes() {
        assert_eq!(size_of::<Option<Landed>>(), 24);
        assert!(size_of::<Option<WriteOutcome>>() >= 64);
    }
}
