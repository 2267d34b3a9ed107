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
                    self.source_gone(r, p, &contacts);
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

impl<'a> Planner<'a> {
    /// A contact created for an account the user deleted before the create was linked:
    /// the contact stays and loses the code (R13), which it lists since its create.
    fn source_gone(&mut self, r: usize, p: &'a PendingCreate, contacts: &SentIndex<'a>) {
        if !self.accounts(r).deleted.contains(&p.source_id) {
            return;
        }
        if let Some(contact) = contacts.found(&p.fields, |c| !self.is_linked(r, &c.id)) {
            let code = self.relations.relations[r].code.clone();
            self.plan
                .new_lost_codes
                .push((code.clone(), contact.id.clone()));
            self.lost_codes.entry(&contact.id).or_default().insert(code);
        }
    }
}

/// The records of a pool by the values of a few fields of the creates looked for, so
/// finding 25,000 creates again costs a few lookups each, not a walk of the pool each.
pub(super) struct SentIndex<'r> {
    by_key: HashMap<(&'static str, String), Vec<&'r Record>>,
}

/// The fields a create is looked up by: any one of them left as sent finds it.
const KEYS: &[&str] = &[
    field::NAME,
    field::EMAIL,
    field::VAT_REGISTRATION_NO,
    field::PHONE,
    field::CITY,
];

/// Fields that say what a record created by Tandem is (R6): never edited away for it
/// to be found again.
const KIND_OF_RECORD: &[&str] = &[field::CONTACT_TYPE, field::BUSINESS_RELATIONS];

impl<'r> SentIndex<'r> {
    fn new<'s>(pool: &[&'r Record], sent: impl Iterator<Item = &'s Fields>) -> SentIndex<'r> {
        let sent: Vec<&Fields> = sent.collect();
        let keys: Vec<&'static str> = KEYS
            .iter()
            .copied()
            .filter(|k| sent.iter().any(|f| f.get(k).is_some()))
            .collect();
        let mut by_key: HashMap<(&'static str, String), Vec<&'r Record>> = HashMap::new();
        for record in pool {
            for key in &keys {
                if let Some(value) = record.fields.get(key) {
                    by_key
                        .entry((key, value.to_cell()))
                        .or_default()
                        .push(record);
                }
            }
        }
        SentIndex { by_key }
    }

    /// The one record accepted by `free` that holds every value of `sent`; failing
    /// that, the one that holds all of them but one (the user edited it since the
    /// create: merged against the fields sent). `None` when there is none, or more than
    /// one (never a guess).
    fn found(&self, sent: &Fields, free: impl Fn(&Record) -> bool) -> Option<&'r Record> {
        let mut candidates: Vec<&'r Record> = KEYS
            .iter()
            .filter_map(|key| {
                let value = sent.get(key)?;
                self.by_key.get(&(*key, value.to_cell()))
            })
            .flatten()
            .copied()
            .filter(|r| free(r))
            .collect();
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        candidates.dedup_by(|a, b| a.id == b.id);
        let exact = candidates
            .iter()
            .copied()
            .filter(|r| same_fields(&r.fields, sent));
        only(exact).or_else(|| {
            let near = candidates
                .iter()
                .copied()
                .filter(|r| nearly(&r.fields, sent));
            only(near)
        })
    }
}

/// The record when there is exactly one.
fn only<'r>(mut found: impl Iterator<Item = &'r Record>) -> Option<&'r Record> {
    match (found.next(), found.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Whether `record` holds every value of `sent` but one, and what a created record is
/// as sent; never for a create of fewer than three fields, where one is too many.
fn nearly(record: &Fields, sent: &Fields) -> bool {
    let kind_kept = KIND_OF_RECORD
        .iter()
        .all(|name| sent.get(name).is_none_or(|v| record.value(name) == v));
    let differing = sent
        .iter()
        .filter(|(name, value)| record.value(name.as_str()) != *value)
        .count();
    kind_kept && sent.len() >= 3 && differing <= 1
}

/// Whether `record` holds exactly the values of `sent` (a create's fields).
pub(super) fn same_fields(record: &Fields, sent: &Fields) -> bool {
    sent.iter()
        .all(|(name, value)| record.value(name.as_str()) == value)
}
