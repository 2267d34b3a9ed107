//! Step 5: what was read and not otherwise settled is remembered as seen, the deleted
//! forgotten; then cursors, ambiguities and fingerprints, last; then the report.

use std::future::Future;

use tandem_connector::ConnectorError;
use tandem_state::StateStore;
use tracing::{info, warn};

use super::Applier;
use crate::matching::Ambiguity;
use crate::partition::Seen;
use crate::plan::PlanInput;
use crate::read::Change;
use crate::run::{EngineError, ParkedCount, RECHECK, RunReport, ScopeRead, StoredAmbiguities};

/// A scope's fingerprint after the run's writes, by its place among the reads (the
/// contacts', then each relation's accounts').
type Fingerprinted = (usize, Result<Option<String>, ConnectorError>);

/// The company of every contact that changed (R3, R10), `None` for one that is no
/// person (any more), left out when the state holds no company to forget
/// (`companies_stored`: a first sync of a million companies held a million `None`s
/// through its writes). A list, not a map: each contact is in it once, and a first sync
/// may list a million. In id order: when most contacts changed, the records are walked in
/// their order and the changed looked up, not each changed one searched for in the
/// tree of records (a second at a million), and the state gets them in key order.
pub(super) fn person_companies(
    contacts: &ScopeRead,
    input: &PlanInput,
    companies_stored: bool,
) -> Vec<(String, Option<String>)> {
    use tandem_model::{PackedRecord, field::COMPANY_ID};
    // Asked before whether the contact changed: it reads the record at hand, while
    // whether it changed is a lookup by id (a first sync of a million companies, with
    // none stored, spent a quarter of a second on those lookups).
    let to_store = |contact: &PackedRecord| companies_stored || contact.text(COMPANY_ID).is_some();
    let company = |contact: &PackedRecord| {
        (
            contact.id().to_owned(),
            contact.text(COMPANY_ID).map(str::to_owned),
        )
    };
    let changed = contacts.changed().count();
    if changed * 8 < input.contacts.len() {
        let mut ids: Vec<&str> = contacts.changed().map(|(id, _)| id).collect();
        ids.sort_unstable();
        return ids
            .into_iter()
            .filter_map(|id| input.contacts.get(id).filter(|c| to_store(c)).map(company))
            .collect();
    }
    input
        .contacts
        .values()
        .filter(|contact| to_store(contact) && contacts.is_changed(contact.id()))
        .map(company)
        .collect()
}

impl Applier<'_> {
    /// Hashes of what was read and not settled by the plan, the deleted forgotten, and
    /// the company of each person.
    pub(super) fn remember_reads(
        &mut self,
        state: &mut dyn StateStore,
        person_companies: Vec<(String, Option<String>)>,
    ) -> Result<(), EngineError> {
        super::commit_behind(state, |committer| {
            let batch = &mut self.batch;
            // The matcher's alone among partitions: it sees every contact's change,
            // and two partitions reading one contact at two times could store its
            // company in the wrong order.
            if self.cut.stores_companies() {
                batch.set_companies.extend(person_companies);
                for id in &self.contacts.deleted {
                    batch.set_companies.push((id.clone(), None));
                }
            }
            let codes = (self.relations.relations.iter()).map(|r| Some(r.code.as_str()));
            let reads = std::iter::once((None, &self.contacts)).chain(codes.zip(&self.accounts));
            for (code, read) in reads {
                for (id, seen) in &read.hashes {
                    // An unchanged record's stored hash is already this one.
                    if !seen.settled && seen.change != Change::Unchanged {
                        remember(&self.cut, batch, (code, read), id, seen);
                    }
                    committer.send_full(batch)?;
                }
                for id in &read.deleted {
                    let scope = read.scope.clone();
                    match self.cut.forgets(code, id) {
                        true => batch.delete_hashes.push((scope, id.clone())),
                        // Its unlink is the matcher's: looked at again, found gone.
                        false => batch.set_hashes.push((scope, id.clone(), RECHECK)),
                    }
                }
            }
            for id in std::mem::take(&mut self.recheck_contacts) {
                batch
                    .set_hashes
                    .push((self.contacts.scope.clone(), id, RECHECK));
            }
            for (r, id) in &self.plan.recheck_accounts {
                let scope = self.accounts[*r].scope.clone();
                batch.set_hashes.push((scope, id.clone(), RECHECK));
            }
            committer.send(std::mem::take(batch))
        })
    }

    /// The range sent `last` settled, what was read remembered; then cursors and
    /// fingerprints, in the run's last commit. The connectors are asked for their
    /// fingerprints first: the run's writes are done, and a file connector folds the
    /// writes it held in a journal into each file while the last range is stored
    /// (after it, the files of a first sync at 1M took 0.3 to 0.6 s more).
    pub(super) async fn finish(
        &mut self,
        state: &mut dyn StateStore,
        last: Option<super::Sent>,
        person_companies: Vec<(String, Option<String>)>,
        tag: &str,
    ) -> Result<(), EngineError> {
        let asked = std::pin::pin!(self.ask_fingerprints());
        let asked = crate::overlap::Pump::start(asked).await;
        if let Some(last) = last {
            self.settle_range(state, last, true)?;
        }
        self.remember_reads(state, person_companies)?;
        crate::failpoint::hit("before_cursor_commit");
        self.step("before_cursor_commit");
        for read in std::iter::once(&self.contacts).chain(&self.accounts) {
            if let Some(cursor) = &read.cursor {
                let cursor = (read.scope.clone(), cursor.0.clone());
                self.batch.set_cursors.push(cursor);
            }
        }
        let answers = asked.finish().await;
        self.remember_fingerprints(tag, answers);
        self.commit(state)
    }

    /// The ambiguous matches of every relation matched completely this run, reported
    /// again by the runs that leave it quiet.
    pub(super) fn remember_ambiguities(&mut self, ambiguities: &[StoredAmbiguities]) {
        for (relation, known) in self.relations.relations.iter().zip(ambiguities) {
            if !known.complete {
                continue;
            }
            let found: Vec<&Ambiguity> = self
                .plan
                .ambiguous
                .iter()
                .filter(|a| a.code == relation.code)
                .collect();
            let found = serde_json::json!(found);
            if known.stored.as_ref() != Some(&found) {
                let remembered = (relation.code.clone(), found);
                self.batch.set_ambiguities.push(remembered);
            }
        }
    }

    /// Every scope's fingerprint now, asked of its connector at once, for what it was
    /// when read (scopes without one are not asked). Owns what it asks with, so that
    /// the run goes on while the connectors answer.
    fn ask_fingerprints(&self) -> impl Future<Output = Vec<Fingerprinted>> + use<> {
        let reads = std::iter::once(&self.contacts).chain(&self.accounts);
        let asked: Vec<_> = (reads.enumerate())
            .filter_map(|(at, read)| {
                let since = read.fingerprint.clone()?;
                let connector = self.connectors[&read.stats.connector].clone();
                let kind = read.scope.kind;
                Some(async move {
                    let now = connector.fingerprint_after_own_writes(kind, &since).await;
                    (at, now)
                })
            })
            .collect();
        futures_util::future::join_all(asked)
    }

    /// Remembered last, with the cursors: a scope that only this run's own writes
    /// changed is not read by the next run while its fingerprint stays the same.
    /// Anything else forgets it, so the next run reads. Asked of every scope at once:
    /// a file connector puts the writes it held in a journal into each file here, and
    /// the files of a first sync at 1M took 0.8 s one after the other.
    fn remember_fingerprints(&mut self, tag: &str, answers: Vec<Fingerprinted>) {
        let reads: Vec<&ScopeRead> = std::iter::once(&self.contacts)
            .chain(&self.accounts)
            .collect();
        for (at, now) in answers {
            let read = reads[at];
            let kind = read.scope.kind;
            // Not knowing only costs the next run a full read; said, not hidden.
            let now = match now {
                Ok(now) => now,
                Err(e) => {
                    warn!(
                        connector = %read.stats.connector,
                        kind = kind.plural(),
                        "{e}; the next run reads these records in full"
                    );
                    None
                }
            };
            let fingerprint = now.map(|fingerprint| format!("{tag}:{fingerprint}"));
            self.batch
                .set_fingerprints
                .push((read.scope.clone(), fingerprint));
        }
    }

    /// The run's report, with what is parked now.
    pub(super) fn report(
        self,
        state: &dyn StateStore,
        parked_before: &[ParkedCount],
    ) -> Result<RunReport, EngineError> {
        let parked_now = state.parked_links()?;
        let pending_now = crate::pending::Pending::load(state)?;
        let mut plan = self.plan;
        plan.absorb(self.reported);
        plan.hubs_left_out = self.hubs_left_out;
        for (r, counts) in plan.counts.iter_mut().enumerate() {
            let code = &self.relations.relations[r].code;
            let links = parked_now.iter().filter(|l| &l.code == code).count() as u64;
            counts.set_parked(links + pending_now.parked_in(code), parked_before[r].links);
        }
        info!(
            run = self.log.run_id,
            writes = self.writes,
            failed = self.failures.len(),
            ms = self.started.elapsed().as_millis() as u64,
            "applied"
        );
        Ok(RunReport {
            run_id: Some(self.log.run_id),
            mode: crate::report::RunMode::Sync,
            read: std::iter::once(&self.contacts)
                .chain(&self.accounts)
                .map(|s| s.stats.clone())
                .collect(),
            counts: plan.counts.clone(),
            writes: self.writes,
            ambiguous: plan.ambiguous.clone(),
            failures: self.failures,
            plan,
        })
    }
}

/// Remembers a changed record `id` of `read` (relation `code`, `None` for contacts) as
/// this run's cut of the work says ([`crate::partition::Cut::remembers`]).
fn remember(
    cut: &crate::partition::Cut,
    batch: &mut tandem_state::StateBatch,
    (code, read): (Option<&str>, &ScopeRead),
    id: &str,
    seen: &crate::read::Seen,
) {
    let scope = read.scope.clone();
    let seen_here = match cut.remembers(code, id) {
        Seen::AsRead => true,
        Seen::HandedOver { to, again_here } => {
            let theirs = to.scope(&read.stats.connector, scope.kind);
            batch.set_hashes.push((theirs, id.to_owned(), RECHECK));
            !again_here
        }
    };
    match seen_here {
        true => batch.set_hash_with_keys(scope, id.to_owned(), seen.hash, seen.keys),
        false => batch.set_hashes.push((scope, id.to_owned(), RECHECK)),
    }
}
