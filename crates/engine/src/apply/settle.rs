//! Step 4: links, baselines, the interaction log (R11), conflicts (R15), failures and
//! parking (R17), from the outcomes of the writes. Committed on a helper thread while
//! the next batch is built.

use tandem_connector::ConnectorError;
use tandem_model::Timestamp;
use tandem_state::{Change, ConflictEntry, Intent, Link, LogEntry};

use super::write::{Landed, Outcomes, link_of};
use super::{Applier, Committer, Failed};
use crate::plan::{FieldChange, FieldChanges, HubPlan, NewLink, PairPlan, PairWas};
use crate::run::{EngineError, Failure, RECHECK, WRITTEN_UNREAD, record_hash_of};
use crate::side::{Side, Winner};

/// The error of a write, if it failed, and the record's version after it: the new one
/// when it succeeded, `before` when it failed or nothing was written.
fn error_and_version(
    result: Option<&Landed>,
    before: &Option<String>,
) -> (Option<WriteError>, Option<String>) {
    match result {
        Some(Landed::Failed(e)) => (Some(WriteError::of(e)), before.clone()),
        Some(Landed::Written { version }) => (None, version.as_deref().map(str::to_owned)),
        None => (None, before.clone()),
    }
}

/// A write that failed, as the report and the state keep it.
#[derive(Debug, Clone)]
struct WriteError {
    text: String,
    /// The server could not take it now (rate limited, unavailable): no fault of the
    /// record, so it is never parked (R17).
    passing: bool,
}

impl WriteError {
    fn of(e: &ConnectorError) -> WriteError {
        WriteError {
            text: e.to_string(),
            passing: e.is_retryable(),
        }
    }
}

/// A pair's versions after the run's writes, and which writes failed.
struct Versions {
    contact_version: Option<String>,
    account_version: Option<String>,
    /// The write of the account was sent (so the record changed).
    account_written: bool,
    contact_failed: bool,
    account_failed: bool,
    /// The hash of the account's match keys as read, if it was.
    account_keys: Option<u64>,
}

impl Applier<'_> {
    /// The range of hubs in the plan, whose intents are those of `part`; `last` when
    /// no range comes after it: the pending entries the run is done with go then.
    /// Its batches go to `committer`: stored once the committer's
    /// [`commit_behind`](super::commit_behind) returns.
    pub(super) fn settle(
        &mut self,
        committer: &Committer,
        mut outcomes: Outcomes,
        part: i64,
        last: bool,
    ) -> Result<(), EngineError> {
        let hubs = std::mem::take(&mut self.plan.hubs);
        let built = (|| {
            for (h, hub) in hubs.iter().enumerate() {
                self.settle_hub(h, hub, &mut outcomes);
                committer.send_full(&mut self.batch)?;
            }
            self.close_conflicts();
            if last {
                self.done_pending();
            }
            // Every link of the range is stored now: its intents are done with, and
            // those of the range sent after it are not.
            (self.batch.clear_intent_batches).push((self.log.run_id, part));
            committer.send(std::mem::take(&mut self.batch))
        })();
        self.plan.hubs = hubs;
        built
    }

    fn settle_hub(&mut self, h: usize, hub: &HubPlan, outcomes: &mut Outcomes) {
        let contact_result = outcomes.contacts[h].take();
        let (contact_error, contact_version) =
            error_and_version(contact_result.as_ref(), &hub.contact_version);
        let mut hub_failed = contact_error.is_some();
        if let Some(error) = &contact_error
            && hub.pairs.is_empty()
        {
            // Only the contact's own field (R9) was to change: report, retry next run.
            self.failures.push(Failure {
                code: String::new(),
                contact_id: Some(hub.contact_id.clone()),
                account_id: None,
                side: Side::Contact,
                error: error.text.clone(),
                parked: false,
            });
        }
        self.log_conflicts(hub);
        for (p, pair) in hub.pairs.iter().enumerate() {
            let read = self.accounts[pair.relation].settle(&pair.account_id);
            let account_result = outcomes.accounts[outcomes.pair_offsets[h] + p].take();
            let (account_error, account_version) =
                error_and_version(account_result.as_ref(), &pair.account_version);
            let written = Versions {
                contact_version: contact_version.clone(),
                account_version,
                account_written: account_result.is_some(),
                contact_failed: contact_error.is_some(),
                account_failed: account_error.is_some(),
                account_keys: read.map(|seen| seen.keys),
            };
            match (account_error, &contact_error) {
                (None, None) => self.pair_done(hub, pair, written),
                (Some(error), _) => {
                    hub_failed = true;
                    self.pair_failed(hub, pair, &written, error, Side::Account);
                }
                (None, Some(error)) => {
                    hub_failed = true;
                    self.pair_failed(hub, pair, &written, error.clone(), Side::Contact);
                }
            }
        }
        match &contact_result {
            Some(Landed::Written { version }) => self.own_contact_write(hub, version.as_deref()),
            Some(Landed::Failed(_)) => {
                self.contact_write_failed.insert(hub.contact_id.clone());
            }
            None => {}
        }
        self.settle_contact_hash(hub, contact_result.is_some(), &contact_version, hub_failed);
    }

    /// Every conflict is logged, whatever the policy (R15); `manual` ones wait in the
    /// queue.
    fn log_conflicts(&mut self, hub: &HubPlan) {
        for conflict in &hub.conflicts {
            for (code, account_id, account_value) in &conflict.accounts {
                let entry = LogEntry::Conflict {
                    field: conflict.field.to_string(),
                    base: conflict.base.clone(),
                    contact: conflict.contact.clone(),
                    account: account_value.clone(),
                    policy: conflict.policy.as_str().to_owned(),
                    winner: conflict.winner.as_str().to_owned(),
                    value: conflict.value.clone(),
                };
                self.log(&hub.contact_id, code, Some(account_id), "both", &entry);
                if conflict.winner == Winner::Manual {
                    self.batch.upsert_conflicts.push(ConflictEntry {
                        id: 0,
                        code: code.clone(),
                        contact_id: hub.contact_id.clone(),
                        account_id: account_id.clone(),
                        field: conflict.field.to_string(),
                        base: conflict.base.clone(),
                        contact_value: conflict.value.clone(),
                        account_value: account_value.clone(),
                        opened_at: self.log.now,
                        run_id: Some(self.log.run_id),
                        resolution: None,
                        closed_at: None,
                    });
                }
            }
        }
    }

    /// Both sides hold the pair's new baseline: the link stores it, its intent done.
    fn pair_done(&mut self, hub: &HubPlan, pair: &PairPlan, written: Versions) {
        let scope = self.accounts[pair.relation].scope.clone();
        let hash = match (pair.account_after_hash, written.account_written) {
            (Some(after), _) => Some(record_hash_of(after, written.account_version.as_deref())),
            // Written without having been read: compared anew when next read.
            (None, true) => Some(WRITTEN_UNREAD),
            (None, false) => None,
        };
        match (hash, written.account_keys) {
            (Some(hash), Some(keys)) => {
                let id = pair.account_id.clone();
                self.batch.set_hash_with_keys(scope, id, hash, keys);
            }
            (Some(hash), None) => {
                self.batch
                    .set_hashes
                    .push((scope, pair.account_id.clone(), hash));
            }
            (None, _) => {}
        }
        self.batch.upsert_links.push(Link {
            contact_version: written.contact_version,
            account_version: written.account_version,
            last_error: None,
            failure_count: 0,
            parked: false,
            synced_at: self.log.now,
            ..link_of(hub, pair, self.log.now)
        });
        if let Some(how) = pair.new_link {
            self.hand_over(pair.relation, &hub.contact_id, &pair.account_id);
            self.log_new_link(hub, pair, how);
        }
        if pair.updated {
            self.log_update(hub, pair);
        }
    }

    fn log_new_link(&mut self, hub: &HubPlan, pair: &PairPlan, how: NewLink) {
        // A link that failed in an older state, remembered as pending, is done now.
        let key = (pair.code.clone(), hub.contact_id.clone());
        if self.previous.links.contains(&key) {
            self.batch.delete_pending_links.push(key);
        }
        self.request_granted(&pair.code, &hub.contact_id);
        if how == NewLink::Operator {
            self.batch.unlinked_pairs.push((
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
        let account = Some(pair.account_id.as_str());
        self.log(&hub.contact_id, &pair.code, account, source, &how.entry());
    }

    fn log_update(&mut self, hub: &HubPlan, pair: &PairPlan) {
        let from_account: Vec<FieldChange> = hub
            .contact_changes
            .iter()
            .filter(|c| pair.from_account.contains(&c.field))
            .collect();
        let source = match (pair.account_changes.is_empty(), from_account.is_empty()) {
            (false, true) => "contact",
            (true, false) => "account",
            _ => "both",
        };
        let entry = LogEntry::Updated {
            account: pair.account_changes.iter().map(change).collect(),
            contact: from_account.into_iter().map(change).collect(),
        };
        let account = Some(pair.account_id.as_str());
        self.log(&hub.contact_id, &pair.code, account, source, &entry);
    }

    /// A write of the pair failed on `side`. An existing link keeps its old baseline, so
    /// the next run sees the same changes again; a new link stays with the baseline it
    /// starts from and what it still has to write (R18). Twice the same way parks it.
    fn pair_failed(
        &mut self,
        hub: &HubPlan,
        pair: &PairPlan,
        written: &Versions,
        error: WriteError,
        side: Side,
    ) {
        let passing = error.passing;
        let error = error.text;
        let r = pair.relation;
        let was = match (&pair.previous, pair.updated) {
            (Some(_), true) => PairWas::Updated,
            (Some(_), false) => PairWas::Unchanged,
            (None, written) => PairWas::New { written },
        };
        let scope = self.accounts[r].scope.clone();
        self.batch
            .set_hashes
            .push((scope, pair.account_id.clone(), RECHECK));
        let failure = Failure {
            code: pair.code.clone(),
            contact_id: Some(hub.contact_id.clone()),
            account_id: Some(pair.account_id.clone()),
            side,
            error: error.clone(),
            parked: false,
        };
        let previous =
            (pair.previous.as_deref()).map(|l| (l.failure_count, l.last_error.as_deref()));
        let (count, parked) = self.fail(Failed::Pair(r, was, passing), previous, failure);
        if pair.new_link.is_some() {
            self.hand_over(r, &hub.contact_id, &pair.account_id);
        }
        self.batch.upsert_links.push(Link {
            contact_version: written.contact_version.clone(),
            account_version: written.account_version.clone(),
            last_error: Some(error.clone()),
            failure_count: count,
            parked,
            ..after_failure(hub, pair, written, self.relations, self.log.now)
        });
        let entry = match parked {
            true => LogEntry::Parked {
                error: error.clone(),
                failures: count,
            },
            false => LogEntry::Failed {
                error: error.clone(),
                failures: count,
            },
        };
        let account = Some(pair.account_id.as_str());
        self.log(&hub.contact_id, &pair.code, account, side.as_str(), &entry);
    }

    /// R19: a contact Tandem wrote has a new version; every link of it learns it, also
    /// the links the hub did not merge and those made by creating an account for it this
    /// run (whose wait for the contact's template fills ends with this write).
    fn own_contact_write(&mut self, hub: &HubPlan, version: Option<&str>) {
        for link in &hub.other_links {
            let link = self.carried_to(link, &hub.contact_changes);
            self.batch.upsert_links.push(Link {
                contact_version: version.map(str::to_owned),
                ..link
            });
        }
        let created = self.created_links.remove(&hub.contact_id);
        for link in created.into_iter().flatten() {
            if hub.pairs.iter().any(|p| p.code == link.code) {
                continue;
            }
            self.batch.upsert_links.push(Link {
                contact_version: version.map(str::to_owned),
                intent: None,
                synced_at: self.log.now,
                ..link
            });
        }
    }

    /// R19 for a link the hub did not merge (a parked one): a value Tandem wrote into
    /// the contact is Tandem's own write, not the contact's edit. Where the link agreed
    /// with the contact before the write, the value becomes the link's baseline and is
    /// intended for its account (R18): the account still holding the old value gets it
    /// when the link is next merged, and an edit the account got meanwhile wins, as the
    /// only edit there is. Left as it was, the value met the account's edit at the
    /// retry as a competing contact edit, and the policy could drop the user's edit.
    /// Where the link still intends a write for the contact that the contact had not
    /// got, the contact now holding Tandem's value still waits for it: that value
    /// becomes what the intent says the contact held before (R18). Left as it was, the
    /// contact's new value read as the user's edit of it, and an edit the account got
    /// before the link was parked was overwritten by the value another relation
    /// brought (found by the model).
    fn carried_to(&self, link: &Link, changes: &FieldChanges) -> Link {
        let mut link = link.clone();
        let Some(r) = self.relations.index_of(&link.code) else {
            return link;
        };
        let relation = &self.relations.relations[r];
        for change in changes.iter() {
            let field = &change.field;
            let waiting = (link.intent.as_mut())
                .and_then(|i| i.contact.iter_mut().find(|(name, _)| name == field))
                .filter(|(_, before)| *before == change.old);
            if let Some((_, before)) = waiting {
                *before = change.new;
                continue;
            }
            let carried = relation.shared.contains(field) && !relation.preserve.contains(field);
            if !carried || link.baseline.value(field.as_str()) != &change.old {
                continue;
            }
            let intent = link.intent.get_or_insert_with(Intent::default);
            if intent.account_before(field.as_str()).is_none() {
                intent.account.push((field.clone(), change.old));
            }
            link.baseline.set(change.field, change.new);
        }
        link
    }

    /// The contact's hash after the run. A failure, or a field waiting in the conflict
    /// queue, makes both records be read again next run, so neither side's value is
    /// mistaken for the baseline.
    fn settle_contact_hash(
        &mut self,
        hub: &HubPlan,
        written: bool,
        version: &Option<String>,
        failed: bool,
    ) {
        let read = self.contacts.settle(&hub.contact_id);
        let waiting = hub.conflicts.iter().any(|c| c.winner == Winner::Manual);
        for conflict in hub.conflicts.iter().filter(|c| c.winner == Winner::Manual) {
            for (code, account_id, _) in &conflict.accounts {
                if let Some(r) = self.relations.index_of(code) {
                    self.accounts[r].settle(account_id);
                    let scope = self.accounts[r].scope.clone();
                    self.batch
                        .set_hashes
                        .push((scope, account_id.clone(), RECHECK));
                }
            }
        }
        let look_again = failed || waiting || (written && self.gives_new_match_keys(hub));
        let hash = match (hub.contact_after_hash, look_again) {
            (_, true) => Some(RECHECK),
            (Some(after), false) => Some(record_hash_of(after, version.as_deref())),
            (None, false) if written => Some(WRITTEN_UNREAD),
            (None, false) => read.map(|seen| seen.hash),
        };
        let keys = read.map(|seen| seen.keys);
        let scope = self.contacts.scope.clone();
        let id = hub.contact_id.clone();
        match (hash, keys) {
            (Some(hash), Some(keys)) => self.batch.set_hash_with_keys(scope, id, hash, keys),
            (Some(hash), None) => self.batch.set_hashes.push((scope, id, hash)),
            (None, _) => {}
        }
    }

    /// Whether this run wrote into the contact a field a relation it holds no link of
    /// matches on (a VAT number a vendor brought, R7). Matching never saw that value:
    /// the contact is looked at again next run, as new, so the relation matches it (R4)
    /// instead of waiting for a user's edit.
    fn gives_new_match_keys(&self, hub: &HubPlan) -> bool {
        let held = |code: &str| {
            hub.pairs.iter().any(|p| p.code == code)
                || hub.other_links.iter().any(|l| l.code == code)
        };
        let unlinked = (self.relations.relations.iter()).filter(|r| !held(&r.code));
        let tiers: Vec<&crate::relation::Tier> = unlinked.flat_map(|r| &r.tiers).collect();
        // Each change unpacked once (a first sync settles 805,000 hubs at 1M).
        !tiers.is_empty()
            && (hub.contact_changes.iter()).any(|c| {
                (tiers.iter()).any(|tier| {
                    tier.fields.contains(&c.field)
                        && !crate::matching::same_key_value(tier, &c.field, &c.old, &c.new)
                })
            })
    }

    /// Open conflicts settled by this range, and the lost codes its writes took off.
    fn close_conflicts(&mut self) {
        let closed = std::mem::take(&mut self.plan.close_conflicts);
        for (code, contact_id, field) in &closed {
            self.batch.close_conflicts.push((
                code.clone(),
                contact_id.clone(),
                field.clone(),
                self.log.now,
            ));
            let entry = LogEntry::Resolved {
                field: field.clone(),
            };
            self.log(contact_id, code, None, "operator", &entry);
        }
        self.plan.close_conflicts = closed;
        // A lost code is off the contact's field once its write landed (R9).
        for (code, contact_id) in &self.plan.codes_removed {
            if !self.contact_write_failed.contains(contact_id) {
                let mark = (code.clone(), contact_id.clone(), false);
                self.batch.codes_lost.push(mark);
            }
        }
    }

    /// Pending creates, refused requests and links this run is done with.
    fn done_pending(&mut self) {
        let done = self.plan.done_pending.clone();
        self.batch.delete_pending.extend(done.creates);
        self.batch.delete_refused.extend(done.refused);
        self.batch.delete_pending_links.extend(done.links);
    }
}

/// What a pair keeps after a write failed (R17, R18): the new baseline, and as its
/// intent what each side held before the writes that failed. A side that still holds
/// that stands for the baseline and gets the write again next run; a side the run did
/// write holds the baseline, so an edit back to its old value is an edit, and Tandem's
/// own write is never taken for the contact's change (R19). An edit made to the failed
/// side meanwhile is merged against the baseline.
fn after_failure(
    hub: &HubPlan,
    pair: &PairPlan,
    written: &Versions,
    relations: &crate::relation::Relations,
    now: Timestamp,
) -> Link {
    let relation = &relations.relations[pair.relation];
    let intent = pair.intent(hub, relation).map(|intent| Intent {
        contact: if written.contact_failed {
            intent.contact
        } else {
            Vec::new()
        },
        account: if written.account_failed {
            intent.account
        } else {
            Vec::new()
        },
    });
    Link {
        intent: intent.filter(|i| !i.contact.is_empty() || !i.account.is_empty()),
        ..link_of(hub, pair, now)
    }
}

/// A change as the log keeps it.
fn change(c: FieldChange) -> Change {
    Change {
        field: c.field.to_string(),
        old: c.old,
        new: c.new,
    }
}
