//! Matching (R4) and the requests and creates that follow from it (R5, R6).

use super::recover::recoverable;
use super::request::already_held;
use super::*;
use crate::matching::MatchOutcome;

/// What matching one relation found.
struct Matched<'a> {
    contacts: crate::IdSet<crate::HashedId<'a>>,
    accounts: crate::IdSet<crate::HashedId<'a>>,
    /// Contacts in an ambiguous match: never given a new account instead (R4).
    ambiguous: crate::IdSet<String>,
    unmatched_accounts: Vec<String>,
}

impl<'a> Planner<'a> {
    /// Matching (R4) of every relation, each on a thread of its own when the machine
    /// has several cores: matching is most of planning a first sync, and one relation's
    /// matching reads nothing another's changes. Not when creates cut short are to be
    /// found again first (`recover`): those link records before matching, and their
    /// plan entries keep the relations' order.
    pub(super) fn match_side_by_side(&self) -> Vec<Option<MatchOutcome<'a>>> {
        let n = self.relations.relations.len();
        let recovering = self.input.pending.creates.iter().any(recoverable);
        if n < 2 || self.threads < 2 || recovering {
            return (0..n).map(|_| None).collect();
        }
        let outcome =
            |r: usize| (!self.is_quiet(r)).then(|| self.match_outcome(r, &self.waiting(r)));
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..n).map(|r| scope.spawn(move || outcome(r))).collect();
            let first = outcome(0);
            std::iter::once(first)
                .chain(others.into_iter().map(|t| {
                    t.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                }))
                .collect()
        })
    }

    /// Recover creates cut short; match unlinked records (R4), or take the matches
    /// `premade` by [`Planner::match_side_by_side`]; create contacts for unmatched
    /// accounts (R6) and accounts for contacts that ask (R5). Nothing for a quiet
    /// relation ([`PlanInput::quiet`]): a request, a pending create or an operator's
    /// wakes it.
    pub(super) fn match_and_create(&mut self, r: usize, premade: Option<MatchOutcome<'a>>) {
        if self.is_quiet(r) {
            return;
        }
        self.recover(r);
        let code = self.relations.relations[r].code.as_str();
        let waiting = self.waiting(r);
        let outcome = premade.unwrap_or_else(|| self.match_outcome(r, &waiting));
        let matched = self.take_matches(r, outcome);
        self.drop_done_pending(r, &matched.accounts);
        let requests = self.requests(r, &waiting);
        let to_create: Vec<(&'a str, Option<&'a str>)> = requests
            .into_iter()
            .filter(|(holder, _)| {
                !matched.contacts.contains(&crate::HashedId::of(holder))
                    && !matched.ambiguous.contains(*holder)
                    && !self.request_parked(code, holder)
            })
            .collect();
        self.create_contacts(r, matched.unmatched_accounts, &matched.accounts);
        for (holder, requested_by) in to_create {
            self.create_account(r, holder, requested_by);
        }
    }

    /// Contacts whose link to an account keeps failing: they wait for `tandem retry`.
    fn waiting(&self, r: usize) -> BTreeSet<&'a str> {
        let code = self.relations.relations[r].code.as_str();
        (self.input.pending.links.iter())
            .filter(|p| p.code == code)
            .map(|p| p.contact_id.as_str())
            .collect()
    }

    /// R4: the unlinked records of both sides matched by the relation's tiers; pairs an
    /// operator unlinked stay apart, whatever the match rules say.
    fn match_outcome(&self, r: usize, waiting: &BTreeSet<&'a str>) -> MatchOutcome<'a> {
        let input = self.input;
        let relation = &self.relations.relations[r];
        let pool_contacts: Vec<&PackedRecord> = input
            .contacts
            .values()
            .filter(|c| {
                !c.deleted()
                    && may_hold(*c, relation.kind)
                    && !self.is_linked(r, c.id())
                    && !waiting.contains(c.id())
            })
            .collect();
        let pool_accounts: Vec<&PackedRecord> = self
            .accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted() && !self.linked_accounts[r].contains(a.id()))
            .collect();
        let mut outcome = match_records(
            &relation.code,
            &relation.tiers,
            (&pool_contacts, &pool_accounts),
            self.threads,
        );
        let apart: BTreeSet<(&str, &str)> = input
            .unlinked_pairs
            .iter()
            .filter(|(code, _, _)| *code == relation.code)
            .map(|(_, c, a)| (c.as_str(), a.as_str()))
            .collect();
        if !apart.is_empty() {
            outcome
                .matches
                .retain(|(c, a, _)| !apart.contains(&(*c, *a)));
        }
        outcome
    }

    /// The links `outcome` makes, and what it leaves to creates.
    fn take_matches(&mut self, r: usize, outcome: MatchOutcome<'a>) -> Matched<'a> {
        // Looked up, never walked: hash sets.
        let mut matched = Matched {
            contacts: crate::IdSet::default(),
            accounts: crate::IdSet::default(),
            ambiguous: outcome
                .ambiguous
                .iter()
                .flat_map(|a| a.contact_ids.clone())
                .collect(),
            unmatched_accounts: outcome.unmatched_accounts,
        };
        // Borrowed from the records matched, as the links keep them.
        matched.contacts.reserve(outcome.matches.len());
        matched.accounts.reserve(outcome.matches.len());
        self.new_links.reserve(outcome.matches.len());
        for (c, a, tier) in outcome.matches {
            matched.contacts.insert(crate::HashedId::of(c));
            matched.accounts.insert(crate::HashedId::of(a));
            self.add_new_link(c, r, a, NewLink::Match { tier });
        }
        self.plan.ambiguous.extend(outcome.ambiguous);
        matched
    }

    /// Pending creates that are done: their source holds the relation now, or was
    /// deleted. A source not read this run (an unchanged file that was skipped) still
    /// wants its create.
    fn drop_done_pending(&mut self, r: usize, taken: &crate::IdSet<crate::HashedId<'_>>) {
        let input = self.input;
        let code = self.relations.relations[r].code.as_str();
        for p in input.pending.creates.iter().filter(|p| p.code == code) {
            let source = p.source_id.as_str();
            let done = match p.side {
                Side::Contact => {
                    self.linked_accounts[r].contains(source)
                        || taken.contains(&crate::HashedId::of(source))
                        || self.accounts(r).deleted.contains(source)
                }
                Side::Account => self.contact_is_done(r, source),
            };
            if done {
                let key = (p.code.clone(), p.side, p.source_id.clone());
                self.plan.done_pending.creates.push(key);
            }
        }
        for p in input.pending.refused.iter().filter(|p| p.code == code) {
            if self.contact_is_done(r, &p.contact_id) {
                let key = (p.code.clone(), p.contact_id.clone());
                self.plan.done_pending.refused.push(key);
            }
        }
    }

    /// A contact's request is done when it holds the relation or was deleted.
    fn contact_is_done(&self, r: usize, contact: &str) -> bool {
        self.is_linked(r, contact) || self.input.deleted_contacts.contains(contact)
    }

    /// R5: contacts that ask for this relation, by their business_relations field or by
    /// `tandem create`, as (holder, the person who asked for it). A person asks on
    /// behalf of its company (R3).
    fn requests(
        &mut self,
        r: usize,
        waiting: &BTreeSet<&'a str>,
    ) -> BTreeMap<&'a str, Option<&'a str>> {
        let input = self.input;
        let code = self.relations.relations[r].code.as_str();
        let mut requesters: BTreeMap<&'a str, Option<&'a str>> = BTreeMap::new();
        let operator_requests: Vec<&str> = input
            .directives
            .create
            .iter()
            .filter(|(c, _)| c == code)
            .map(|(_, c)| c.as_str())
            .collect();
        for contact in input.contacts.values().filter(|c| !c.deleted()) {
            let id = contact.id();
            let by_operator = operator_requests.contains(&id);
            let lost = self.lost_codes.get(id);
            let listed = lists_code(contact, code) && !lost.is_some_and(|l| l.contains(code));
            // Refused twice the same way: left alone until `tandem retry` (R17); a link
            // waiting to be retried is not a request for a new account.
            let parked = self.request_parked(code, id);
            let recovering = self.recovery_waiting.contains(&(r, id));
            if !(by_operator || listed) || parked || waiting.contains(id) || recovering {
                continue;
            }
            match self.holder(r, contact) {
                Ok(None) if by_operator => {
                    self.reject(code, id, already_held(contact, code));
                }
                Ok(None) => {}
                Ok(Some(holder)) => {
                    let asked_by = (holder != id).then_some(id);
                    requesters.entry(holder).or_insert(asked_by);
                }
                Err(error) => self.reject(code, id, error),
            }
        }
        for id in operator_requests {
            if !input.contacts.contains_key(id) {
                self.reject(code, id, format!("contact {id} not found"));
            }
        }
        requesters
    }

    /// R5: a new account for `holder` from the relation's template; the template fills
    /// only what is empty, and shared fields it fills reach the contact too.
    fn create_account(&mut self, r: usize, holder: &'a str, requested_by: Option<&'a str>) {
        let relation = &self.relations.relations[r];
        let contact = (self.input.contacts.get(holder)).expect("a holder is a read contact");
        let template = match relation.template_for(contact) {
            Ok(t) => t,
            Err(error) => {
                self.reject(&relation.code, requested_by.unwrap_or(holder), error);
                return;
            }
        };
        let mut baseline = contact.fields().project(&names(&relation.shared));
        let mut fields = baseline.clone();
        let mut fills = Vec::new();
        for (name, value) in template.into_iter().flat_map(|t| &t.fields) {
            if fields.get(name.as_str()).is_none() {
                fields.set(name.clone(), value.clone());
                if relation.shared.contains(name) {
                    // Both sides will hold it: the link starts from it.
                    baseline.set(name.clone(), value.clone());
                    fills.push((name.clone(), value.clone()));
                }
            }
        }
        // The contact is still to receive the fills: each was empty before (R18).
        let intent = Intent {
            contact: fills
                .iter()
                .map(|(name, _)| (name.clone(), Value::Null))
                .collect(),
            account: Vec::new(),
        };
        self.template_fills.entry(holder).or_default().extend(fills);
        self.gained_codes
            .entry(holder)
            .or_default()
            .insert(relation.code.clone());
        self.plan.account_creates.push(AccountCreate {
            code: relation.code.clone(),
            relation: r,
            contact_id: holder.to_owned(),
            requested_by: requested_by.map(str::to_owned),
            contact_version: contact.version().map(str::to_owned),
            fields,
            template: template.map(|t| t.index),
            baseline,
            intent,
        });
    }
}
