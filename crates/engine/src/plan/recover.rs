//! Creates an earlier run started, found again before matching (R18).

use super::*;

impl<'a> Planner<'a> {
    /// Creates an earlier run started and may have made (R18): the record created is an
    /// unlinked record holding exactly the fields sent. It is linked before matching
    /// runs, starting from the fields sent as its baseline, so an edit made to either
    /// side since is merged three-way instead of being overwritten by `initial`.
    pub(super) fn recover(&mut self, r: usize) {
        let input = self.input;
        let code = self.relations.relations[r].code.as_str();
        let kind = self.relations.relations[r].kind;
        let wanted: Vec<&'a PendingCreate> = input
            .pending
            .iter()
            .filter(|p| p.code == code && p.side != PENDING_LINK && !p.parked)
            .filter(|p| p.error.is_none() && !p.fields.is_empty())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let pool_contacts: Vec<&'a Record> = input
            .contacts
            .values()
            .filter(|c| !c.deleted && may_hold(c, kind) && !self.is_linked(r, &c.id))
            .collect();
        let pool_accounts: Vec<&'a Record> = self
            .accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted && !self.linked_accounts[r].contains(a.id.as_str()))
            .collect();
        let contacts = SentIndex::new(&pool_contacts, wanted.iter().map(|p| &p.fields));
        let accounts = SentIndex::new(&pool_accounts, wanted.iter().map(|p| &p.fields));
        for p in wanted {
            let (contact, account) = if p.side == "contact" {
                let Some((a, _)) = self.accounts(r).records.get_key_value(&p.source_id) else {
                    continue;
                };
                if self.linked_accounts[r].contains(a.as_str()) {
                    continue;
                }
                match contacts.found(&p.fields, |c| !self.is_linked(r, &c.id)) {
                    Some(c) => (c.id.as_str(), a.as_str()),
                    None => continue,
                }
            } else {
                let Some((c, _)) = input.contacts.get_key_value(&p.source_id) else {
                    continue;
                };
                if self.is_linked(r, c) {
                    continue;
                }
                let free = |a: &Record| !self.linked_accounts[r].contains(a.id.as_str());
                match accounts.found(&p.fields, free) {
                    Some(a) => (c.as_str(), a.id.as_str()),
                    None => continue,
                }
            };
            self.linked_accounts[r].insert(account);
            self.new_links
                .entry(contact)
                .or_default()
                .push((r, account, NewLink::Recovered));
            self.starts.insert((r, contact), &p.fields);
            self.plan.counts[r].linked += 1;
            self.plan
                .done_pending
                .push((p.code.clone(), p.side.clone(), p.source_id.clone()));
        }
    }
}

/// The records of a pool by the value of one pivot field of the creates looked for, so
/// finding 25,000 creates again costs a lookup each, not a walk of the pool each.
pub(super) struct SentIndex<'r> {
    by_pivot: HashMap<(String, String), Vec<&'r Record>>,
}

impl<'r> SentIndex<'r> {
    fn new<'s>(pool: &[&'r Record], sent: impl Iterator<Item = &'s Fields>) -> SentIndex<'r> {
        let names: BTreeSet<&str> = sent.filter_map(|f| pivot(f).map(|(n, _)| n)).collect();
        let mut by_pivot: HashMap<(String, String), Vec<&'r Record>> = HashMap::new();
        for record in pool {
            for name in &names {
                if let Some(value) = record.fields.get(name) {
                    by_pivot
                        .entry(((*name).to_owned(), value.to_cell()))
                        .or_default()
                        .push(record);
                }
            }
        }
        SentIndex { by_pivot }
    }

    /// The one record accepted by `free` that holds every value of `sent`; `None` when
    /// there is none, or more than one (never a guess).
    fn found(&self, sent: &Fields, free: impl Fn(&Record) -> bool) -> Option<&'r Record> {
        let (name, value) = pivot(sent)?;
        let candidates = self.by_pivot.get(&(name.to_owned(), value.to_cell()))?;
        let mut found = candidates
            .iter()
            .filter(|r| free(r) && same_fields(&r.fields, sent));
        match (found.next(), found.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

/// The field a create is looked up by: its name, or its first field.
pub(super) fn pivot(sent: &Fields) -> Option<(&str, &Value)> {
    sent.get(field::NAME)
        .map(|v| (field::NAME, v))
        .or_else(|| sent.iter().next().map(|(n, v)| (n.as_str(), v)))
}

/// Whether `record` holds exactly the values of `sent` (a create's fields).
pub(super) fn same_fields(record: &Fields, sent: &Fields) -> bool {
    sent.iter()
        .all(|(name, value)| record.value(name.as_str()) == value)
}
