//! Contacts created for accounts (R6).

use super::*;

impl<'a> Planner<'a> {
    /// Contacts created this run for one relation may match accounts of another that
    /// matched nothing (a party that is customer and supplier): those accounts are
    /// looked at again next run, which matches them against the new contacts.
    pub(super) fn recheck_for_new_contacts(&mut self) {
        let left = std::mem::take(&mut self.left_unmatched);
        // Per relation, once: asked per account, the search of every create was a
        // product of the two counts.
        let others_create: Vec<bool> = (0..self.relations.relations.len())
            .map(|r| self.plan.creates.iter().any(|c| c.relation != r))
            .collect();
        for (r, account_id) in left {
            if others_create[r] {
                self.plan.recheck_accounts.push((r, account_id));
            }
        }
    }

    /// The keys, on relation `r`'s tiers, of the contacts this run creates for other
    /// relations' accounts (R6): empty when `r` creates no contacts, or has no
    /// `unmatched` account to create one for.
    /// Hashed as they are (`IdSet`): the keys are hashes already, and a first sync at
    /// 1M puts 400,000 in.
    fn keys_of_new_contacts(&self, r: usize, unmatched: &[String]) -> crate::IdSet<(usize, u128)> {
        let relation = &self.relations.relations[r];
        if !relation.create_contacts || unmatched.is_empty() {
            return crate::IdSet::default();
        }
        let others: Vec<&ContactCreate> = (self.plan.creates.iter())
            .filter(|c| c.relation != r)
            .collect();
        // Made on the cores: each create's fields unpacked into a record of its own.
        let keys = self.on_cores_in_parts(&others, |create| {
            let contact = Record::new(EntityKind::Contact, "", create.fields.unpack());
            crate::matching::tier_keys(&relation.tiers, &contact)
        });
        keys.into_iter().flatten().flatten().collect()
    }

    /// Whether account `account_id` of relation `r` matches, on one of `r`'s tiers, a
    /// contact this run creates for another relation (`new_keys`): a party that is
    /// customer and supplier. It gets no contact of its own; it is looked at again next
    /// run (`recheck_for_new_contacts`), which matches it to the new contact (R4), or
    /// creates one if nothing matches then. Two relations creating side by side made
    /// two contacts for one partner.
    fn matches_a_new_contact(
        &self,
        r: usize,
        account_id: &str,
        new_keys: &crate::IdSet<(usize, u128)>,
    ) -> bool {
        if new_keys.is_empty() {
            return false;
        }
        let Some(account) = self.accounts(r).records.get(account_id) else {
            return false;
        };
        let tiers = &self.relations.relations[r].tiers;
        (crate::matching::tier_keys(tiers, account).iter()).any(|k| new_keys.contains(k))
    }

    /// R6: a new company contact for every unmatched account of a relation that numbers
    /// contacts, but not for one whose contact the user deleted (R12), unless asked by
    /// `tandem create-contact`, which works for any relation. Each account is decided
    /// and its contact's fields made on the cores (they read the plan, which nothing
    /// changes meanwhile), then taken into the plan in order: a first sync at 1M
    /// decides 180,000, nearly half of its links-and-creates step, on one core.
    pub(super) fn create_contacts(
        &mut self,
        r: usize,
        unmatched: Vec<String>,
        taken: &crate::IdSet<crate::HashedId<'_>>,
    ) {
        let relation = &self.relations.relations[r];
        let asked: BTreeSet<&str> = self
            .input
            .directives
            .create_contact
            .iter()
            .filter(|(code, _)| *code == relation.code)
            .map(|(_, a)| a.as_str())
            .collect();
        let new_keys = self.keys_of_new_contacts(r, &unmatched);
        let decide =
            |account_id: &String| self.contact_create(r, account_id, &asked, &new_keys, taken);
        let decided = self.on_cores_in_parts(&unmatched, decide);
        // One create each, but for a few held back: grown by doubling, the list held
        // up to twice the room it needs until the run ends (7 MB of 36,000 creates).
        if relation.create_contacts {
            self.plan.creates.reserve_exact(unmatched.len());
        }
        for (account_id, decided) in unmatched.into_iter().zip(decided.into_iter().flatten()) {
            match decided {
                ContactCreateIs::Taken => {}
                ContactCreateIs::Left => self.left_unmatched.push((r, account_id)),
                ContactCreateIs::Made(made) => {
                    let (account_version, fields, asked) = *made;
                    self.plan.creates.push(ContactCreate {
                        code: relation.code.clone(),
                        relation: r,
                        account_id,
                        account_version,
                        fields,
                        asked,
                    });
                }
            }
        }
        for account_id in asked {
            if !self
                .plan
                .creates
                .iter()
                .any(|c| c.relation == r && c.account_id == account_id)
            {
                let error = if self.linked_accounts[r].contains(account_id) {
                    format!("{} {account_id} already has a contact (R2)", relation.kind)
                } else {
                    format!("{} {account_id} not found", relation.kind)
                };
                self.reject(&relation.code, account_id, error);
            }
        }
    }
}

/// What becomes of an unmatched account ([`Planner::create_contacts`]).
enum ContactCreateIs {
    /// Taken by a match: nothing.
    Taken,
    /// Left unmatched: looked at again next run.
    Left,
    /// A contact made for it: the account's version, the contact's fields, whether an
    /// operator asked.
    Made(Box<(Option<String>, PackedFields, bool)>),
}

impl Planner<'_> {
    /// R6 for one unmatched account of relation `r`: whether it gets a contact.
    fn contact_create(
        &self,
        r: usize,
        account_id: &str,
        asked: &BTreeSet<&str>,
        new_keys: &crate::IdSet<(usize, u128)>,
        taken: &crate::IdSet<crate::HashedId<'_>>,
    ) -> ContactCreateIs {
        let relation = &self.relations.relations[r];
        let by_operator = asked.contains(account_id);
        // Its contact was deleted (R12), or a create cut short may have made it (R18).
        let deleted = self.input.contact_deleted.get(r);
        let held_back = deleted.is_some_and(|d| d.contains(account_id))
            || self.contact_deleted_now.contains(&(r, account_id))
            || self.recovery_waiting.contains(&(r, account_id))
            || self.matches_a_new_contact(r, account_id, new_keys);
        let wanted = by_operator
            || (relation.create_contacts
                && !held_back
                && !self.create_parked(&relation.code, Side::Contact, account_id));
        if taken.contains(&crate::HashedId::of(account_id)) {
            return ContactCreateIs::Taken;
        }
        if !wanted {
            return ContactCreateIs::Left;
        }
        let account = (self.accounts(r).records.get(account_id))
            .expect("unmatched accounts are read accounts");
        let mut fields = account.fields().project(&names(&relation.shared));
        fields.set(
            field::CONTACT_TYPE,
            Value::text(ContactType::Company.as_str()),
        );
        fields.set(
            field::BUSINESS_RELATIONS,
            Value::list(vec![relation.code.clone()]),
        );
        let version = account.version().map(str::to_owned);
        // Held until the run ends, for each of what may be 100,000s of creates.
        ContactCreateIs::Made(Box::new((
            version,
            PackedFields::pack(&fields),
            by_operator,
        )))
    }
}
