//! Matching (R4) and the requests and creates that follow from it (R5, R6).

use super::request::already_held;
use super::*;

impl<'a> Planner<'a> {
    /// Match unlinked records (R4); recover creates cut short; create contacts for
    /// unmatched accounts (R6) and accounts for contacts that ask (R5).
    pub(super) fn match_and_create(&mut self, r: usize) {
        self.recover(r);
        let input = self.input;
        let relation = &self.relations.relations[r];
        // A contact whose link to an account keeps failing waits for `tandem retry`.
        let waiting: BTreeSet<&str> = input
            .pending
            .iter()
            .filter(|p| p.code == relation.code && p.side == PENDING_LINK)
            .map(|p| p.source_id.as_str())
            .collect();
        let pool_contacts: Vec<&Record> = input
            .contacts
            .values()
            .filter(|c| {
                !c.deleted
                    && may_hold(c, relation.kind)
                    && !self.is_linked(r, &c.id)
                    && !waiting.contains(c.id.as_str())
            })
            .collect();
        let pool_accounts: Vec<&Record> = self
            .accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted && !self.linked_accounts[r].contains(a.id.as_str()))
            .collect();
        let outcome = match_records(
            &relation.code,
            &relation.tiers,
            &pool_contacts,
            &pool_accounts,
        );
        let mut outcome = outcome;
        // Pairs an operator unlinked stay apart, whatever the match rules say.
        let apart: BTreeSet<(&str, &str)> = input
            .unlinked_pairs
            .iter()
            .filter(|(code, _, _)| *code == relation.code)
            .map(|(_, c, a)| (c.as_str(), a.as_str()))
            .collect();
        if !apart.is_empty() {
            outcome
                .matches
                .retain(|(c, a, _)| !apart.contains(&(c.as_str(), a.as_str())));
        }
        // Looked up, never walked: hash sets.
        let mut matched_contacts: crate::IdSet<&str> = crate::IdSet::default();
        let mut taken_accounts: crate::IdSet<&str> = crate::IdSet::default();
        for (contact_id, account_id, tier) in &outcome.matches {
            let (c, _) = input
                .contacts
                .get_key_value(contact_id)
                .expect("matched from the pool");
            let (a, _) = self
                .accounts(r)
                .records
                .get_key_value(account_id)
                .expect("matched from the pool");
            matched_contacts.insert(c);
            taken_accounts.insert(a);
            self.new_links
                .entry(c)
                .or_default()
                .push((r, a, NewLink::Match { tier: *tier }));
        }
        self.plan.counts[r].linked += outcome.matches.len() as u64;
        self.plan.counts[r].ambiguous += outcome.ambiguous.len() as u64;
        let ambiguous_contacts: crate::IdSet<String> = outcome
            .ambiguous
            .iter()
            .flat_map(|a| a.contact_ids.clone())
            .collect();
        self.plan.ambiguous.extend(outcome.ambiguous);

        // Creates an earlier run started: the record it created is an unlinked record
        // with exactly the fields sent, found again instead of created twice.
        let mut pending_for: BTreeMap<(&str, &str), &PendingCreate> = BTreeMap::new();
        for p in input.pending.iter().filter(|p| p.code == relation.code) {
            pending_for.insert((p.side.as_str(), p.source_id.as_str()), p);
        }
        let unmatched_accounts = outcome.unmatched_accounts;
        if !pending_for.is_empty() {
            for p in pending_for.values().filter(|p| p.side != PENDING_LINK) {
                let done = match p.side.as_str() {
                    "contact" => {
                        self.linked_accounts[r].contains(p.source_id.as_str())
                            || taken_accounts.contains(p.source_id.as_str())
                    }
                    _ => self.is_linked(r, &p.source_id),
                };
                // Its source is gone only when this run saw it deleted: a source not
                // read this run (an unchanged file that was skipped) still wants it.
                let source_deleted = match p.side.as_str() {
                    "contact" => self.accounts(r).deleted.contains(&p.source_id),
                    _ => input.deleted_contacts.contains(&p.source_id),
                };
                if done || source_deleted {
                    self.plan.done_pending.push((
                        p.code.clone(),
                        p.side.clone(),
                        p.source_id.clone(),
                    ));
                }
            }
        }

        // Contacts that ask for this relation (R5): by their business_relations field
        // or by `tandem create`. A person asks on behalf of its company (R3).
        let mut requesters: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        let operator_requests: Vec<&str> = input
            .directives
            .create
            .iter()
            .filter(|(code, _)| *code == relation.code)
            .map(|(_, c)| c.as_str())
            .collect();
        for contact in input.contacts.values().filter(|c| !c.deleted) {
            let by_operator = operator_requests.contains(&contact.id.as_str());
            let listed = lists_code(contact, &relation.code)
                && !self
                    .lost_codes
                    .get(contact.id.as_str())
                    .is_some_and(|l| l.contains(&relation.code));
            if !by_operator && !listed {
                continue;
            }
            // Refused twice the same way: left alone until `tandem retry` (R17); a link
            // waiting to be retried is not a request for a new account.
            if pending_for
                .get(&("account", contact.id.as_str()))
                .is_some_and(|p| p.parked)
                || waiting.contains(contact.id.as_str())
            {
                continue;
            }
            match self.holder(r, contact) {
                Ok(None) => {
                    if by_operator {
                        let error = already_held(contact, &relation.code);
                        self.reject(&relation.code, &contact.id, error);
                    }
                }
                Ok(Some(holder)) => {
                    requesters
                        .entry(holder)
                        .or_insert((holder != contact.id).then_some(contact.id.as_str()));
                }
                Err(error) => self.reject(&relation.code, &contact.id, error),
            }
        }
        for id in operator_requests {
            if !input.contacts.contains_key(id) {
                self.reject(&relation.code, id, format!("contact {id} not found"));
            }
        }
        let mut to_create: Vec<(&str, Option<&str>)> = Vec::new();
        for (holder, requested_by) in requesters {
            if matched_contacts.contains(holder) || ambiguous_contacts.contains(holder) {
                continue;
            }
            if pending_for
                .get(&("account", holder))
                .is_some_and(|p| p.parked)
            {
                continue;
            }
            to_create.push((holder, requested_by));
        }

        self.create_contacts(r, unmatched_accounts, &taken_accounts, &pending_for);

        for (holder, requested_by) in to_create {
            let contact = &input.contacts[holder];
            let template = match relation.template_for(contact) {
                Ok(t) => t,
                Err(error) => {
                    self.reject(&relation.code, requested_by.unwrap_or(holder), error);
                    continue;
                }
            };
            let mut baseline = contact.fields.project(&names(&relation.shared));
            let mut fields = baseline.clone();
            if let Some(t) = template {
                for (name, value) in &t.fields {
                    if fields.get(name.as_str()).is_none() {
                        fields.set(name.clone(), value.clone());
                        if relation.shared.contains(name) {
                            // Both sides will hold it: the link starts from it.
                            baseline.set(name.clone(), value.clone());
                            self.template_fills
                                .entry(holder)
                                .or_default()
                                .push((name.clone(), value.clone()));
                        }
                    }
                }
            }
            self.gained_codes
                .entry(holder)
                .or_default()
                .insert(relation.code.clone());
            let intent = Intent {
                contact: self
                    .template_fills
                    .get(holder)
                    .into_iter()
                    .flatten()
                    .map(|(name, _)| (name.clone(), Value::Null))
                    .collect(),
                account: Vec::new(),
            };
            self.plan.account_creates.push(AccountCreate {
                code: relation.code.clone(),
                relation: r,
                contact_id: holder.to_owned(),
                requested_by: requested_by.map(str::to_owned),
                contact_version: contact.version.clone(),
                fields,
                template: template.map(|t| t.index),
                baseline,
                intent,
            });
            self.plan.counts[r].created += 1;
        }
    }
}
