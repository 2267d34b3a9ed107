//! Step 3: what the writes will do is written down first (R18), then contact updates
//! and account updates per relation, side by side when they go to different
//! connectors.

use tandem_connector::{Changes, ConnectorError, WriteOp, WriteOutcome};
use tandem_model::{EntityKind, Timestamp};
use tandem_state::{IntentBatch, Link, StateBatch, StateStore};

use super::{Applier, COMMIT_EVERY, commit_behind, write_all};
use crate::failpoint;
use crate::plan::{FieldChanges, HubPlan, PairPlan, Plan};
use crate::relation::Relations;
use crate::run::EngineError;

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
    fn new(plan: &Plan) -> Outcomes {
        let pair_offsets: Vec<usize> = plan
            .hubs
            .iter()
            .scan(0, |next, hub| {
                let first = *next;
                *next += hub.pairs.len();
                Some(first)
            })
            .collect();
        let pairs = plan.hubs.iter().map(|h| h.pairs.len()).sum();
        Outcomes {
            contacts: std::iter::repeat_with(|| None)
                .take(plan.hubs.len())
                .collect(),
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

impl Applier<'_> {
    pub(super) async fn writes(
        &mut self,
        state: &mut dyn StateStore,
    ) -> Result<Outcomes, EngineError> {
        if !std::mem::take(&mut self.intents_stored) {
            commit_intents(state, &self.plan, self.relations, &self.log)?;
            failpoint::hit("after_intent_commit");
        }
        let mut outcomes = Outcomes::new(&self.plan);
        let state = &*state;
        let accounts = if self.side_by_side() {
            // Both sides at once: each goes to a connector of its own.
            let both = futures_util::future::join(
                self.contact_updates(state),
                self.all_account_updates(state),
            );
            let (contacts, accounts) = both.await;
            self.landed_contacts(contacts?, &mut outcomes)?;
            accounts?
        } else {
            let contacts = self.contact_updates(state).await?;
            self.landed_contacts(contacts, &mut outcomes)?;
            self.all_account_updates(state).await?
        };
        for answers in accounts {
            self.landed_accounts(answers, &mut outcomes);
        }
        self.stopped()?;
        failpoint::hit("after_account_updates");
        self.step("after_account_updates");
        Ok(outcomes)
    }

    /// Whether the contact and account updates go out side by side: only when no
    /// relation's accounts share the contacts' connector (a connector takes one call
    /// at a time). A run made whole holds both sides' ops and answers at once, as a
    /// range does: the memory budget counts a hub's writes on both sides.
    fn side_by_side(&self) -> bool {
        let contacts = &self.relations.contacts_connector;
        (self.relations.relations.iter()).all(|r| &r.connector != contacts)
    }

    /// A stop asked for during the updates ends the run here: the intents of the
    /// updates not sent are stored, and the next run takes them up (R18).
    fn stopped(&self) -> Result<(), EngineError> {
        match self.stop.is_stopped() {
            true => Err(EngineError::Stopped),
            false => Ok(()),
        }
    }

    /// Contact updates; ops are built batch by batch from the plan, so a million
    /// updates are not held twice.
    async fn contact_updates(&self, state: &dyn StateStore) -> Result<Answers<usize>, EngineError> {
        let connector = self.connector(&self.relations.contacts_connector);
        let max = connector.capabilities().max_batch.max(1);
        let hubs: Vec<usize> = (0..self.plan.hubs.len())
            .filter(|&i| !self.plan.hubs[i].contact_changes.is_empty())
            .collect();
        let mut answers = Answers::new();
        for chunk in hubs.chunks(max) {
            if self.stop.is_stopped() {
                break;
            }
            let ops = chunk
                .iter()
                .map(|&i| {
                    let h = &self.plan.hubs[i];
                    WriteOp::Update {
                        id: h.contact_id.clone(),
                        version: h.contact_version.clone(),
                        changes: to_changes(&h.contact_changes),
                    }
                })
                .collect();
            let sent = write_all(state, &*connector, EntityKind::Contact, ops).await?;
            self.progress.advance(chunk.len(), "contact updates");
            answers.extend(chunk.iter().copied().zip(sent));
        }
        Ok(answers)
    }

    /// What the contact updates answered, counted and kept for settling; the step's
    /// end, unless a stop was asked for.
    fn landed_contacts(
        &mut self,
        answers: Answers<usize>,
        outcomes: &mut Outcomes,
    ) -> Result<(), EngineError> {
        for (hub, outcome) in answers {
            self.writes += u64::from(outcome.is_ok());
            outcomes.contacts[hub] = Some(Landed::of(outcome));
        }
        self.stopped()?;
        failpoint::hit("after_contact_updates");
        self.step("after_contact_updates");
        Ok(())
    }

    /// Every relation's account updates, in config order; after a stop is asked for,
    /// none is sent.
    async fn all_account_updates(
        &self,
        state: &dyn StateStore,
    ) -> Result<Vec<Answers<PairKey>>, EngineError> {
        let mut all = Vec::new();
        for r in 0..self.relations.relations.len() {
            all.push(self.account_updates(state, r).await?);
        }
        Ok(all)
    }

    /// The account updates of relation `r`.
    async fn account_updates(
        &self,
        state: &dyn StateStore,
        r: usize,
    ) -> Result<Answers<PairKey>, EngineError> {
        let keys: Vec<PairKey> = self
            .plan
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
                    let pair = &self.plan.hubs[h].pairs[p];
                    WriteOp::Update {
                        id: pair.account_id.clone(),
                        version: pair.account_version.clone(),
                        changes: to_changes(&pair.account_changes),
                    }
                })
                .collect();
            let sent = write_all(state, &*connector, relation.kind, ops).await?;
            self.progress.advance(chunk.len(), "account updates");
            answers.extend(chunk.iter().copied().zip(sent));
        }
        Ok(answers)
    }

    /// What a relation's account updates answered, counted and kept for settling.
    fn landed_accounts(&mut self, answers: Answers<PairKey>, outcomes: &mut Outcomes) {
        for ((h, p), outcome) in answers {
            self.writes += u64::from(outcome.is_ok());
            outcomes.accounts[outcomes.pair_offsets[h] + p] = Some(Landed::of(outcome));
        }
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
    plan: &Plan,
    relations: &Relations,
    log: &super::Log,
) -> Result<(), EngineError> {
    commit_behind(state, |committer| {
        let mut links = Vec::new();
        let send = |links: Vec<Link>| {
            let batch = IntentBatch {
                run_id: log.run_id,
                links,
            };
            committer.send(StateBatch {
                intent_batches: vec![batch],
                ..StateBatch::default()
            })
        };
        for hub in &plan.hubs {
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
                send(std::mem::take(&mut links))?;
            }
        }
        if links.is_empty() {
            return Ok(());
        }
        send(links)
    })
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
