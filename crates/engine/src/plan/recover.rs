//! Creates an earlier run started, found again before matching (R18).

use super::*;
use tandem_model::normalise::Comparison;

/// Whether `p` is a create an earlier run started and may have made (R18), to be found
/// again before matching: not parked, not failed for sure, with the fields it sent.
pub(super) fn recoverable(p: &PendingCreate) -> bool {
    !p.parked && p.error.is_none() && !p.fields.is_empty()
}

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
            .creates
            .iter()
            .filter(|p| p.code == code && recoverable(p))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let pool_contacts: Vec<&'a PackedRecord> = input
            .contacts
            .values()
            .filter(|c| !c.deleted() && may_hold(*c, kind) && !self.is_linked(r, c.id()))
            .collect();
        let pool_accounts: Vec<&'a PackedRecord> = self
            .accounts(r)
            .records
            .values()
            .filter(|a| !a.deleted() && !self.linked_accounts[r].contains(a.id()))
            .collect();
        // A contact that asked this run's crashed predecessor for an account is no
        // record a create made for another.
        let asking: HashSet<&str> = (wanted.iter())
            .filter(|p| p.side == Side::Account)
            .map(|p| p.source_id.as_str())
            .collect();
        // Creates sent with their record's id are found by it, the others by their values.
        let by_values = || wanted.iter().filter(|p| p.record_id.is_none());
        let contacts = SentIndex::new(&pool_contacts, by_values().map(|p| &p.fields));
        let accounts = SentIndex::new(&pool_accounts, by_values().map(|p| &p.fields));
        let indexes = (&contacts, &accounts, &asking);
        // By their kind only once every create found by its values is linked: those
        // are no other create's candidates. A create sent with its id is found by it
        // or not at all.
        let unfound: Vec<&'a PendingCreate> = (wanted.into_iter())
            .filter(|p| !self.recover_one(r, p, indexes, Look::Values))
            .filter(|p| p.record_id.is_none())
            .collect();
        for p in unfound {
            self.recover_one(r, p, indexes, Look::Kind);
        }
    }

    /// The record the create `p` made, looked for `look`'s way: linked when found,
    /// waited on when several may be it. False when none was found; true when it was
    /// linked or waits, or needs no looking for (its source is gone or linked).
    fn recover_one(
        &mut self,
        r: usize,
        p: &'a PendingCreate,
        (contacts, accounts, asking): (&SentIndex<'a>, &SentIndex<'a>, &HashSet<&str>),
        look: Look,
    ) -> bool {
        let input = self.input;
        let kind = self.relations.relations[r].kind;
        let (contact, account) = if p.side == Side::Contact {
            let Some((a, _)) = self.accounts(r).records.get_key_value(&p.source_id) else {
                self.source_gone(r, p, contacts);
                return true;
            };
            if self.linked_accounts[r].contains(a) {
                return true;
            }
            let free = |c: &PackedRecord| {
                may_hold(c, kind) && !self.is_linked(r, c.id()) && !asking.contains(c.id())
            };
            let found = match &p.record_id {
                Some(id) => found_by_id(&input.contacts, id, free),
                None => contacts.found(&p.fields, free, look),
            };
            match found {
                Found::One(c) => (c.id(), a),
                Found::Several(candidates) => {
                    self.recovery_waits(r, p, &candidates, (&[], &[a]));
                    return true;
                }
                Found::None => return false,
            }
        } else {
            let Some((c, _)) = input.contacts.get_key_value(&p.source_id) else {
                return true;
            };
            if self.is_linked(r, c) {
                return true;
            }
            let free = |a: &PackedRecord| !self.linked_accounts[r].contains(a.id());
            let found = match &p.record_id {
                Some(id) => found_by_id(&self.accounts(r).records, id, free),
                None => accounts.found(&p.fields, free, look),
            };
            match found {
                Found::One(a) => (c, a.id()),
                Found::Several(candidates) => {
                    self.recovery_waits(r, p, &candidates, (&[c], &[]));
                    return true;
                }
                Found::None => return false,
            }
        };
        self.linked_accounts[r].insert(account);
        self.add_new_link(contact, r, account, NewLink::Recovered);
        self.starts.insert((r, contact), &p.fields);
        let key = (p.code.clone(), p.side, p.source_id.clone());
        self.plan.done_pending.creates.push(key);
        true
    }
}

/// How a create cut short is looked for ([`SentIndex::found`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// By the values it sent.
    Values,
    /// By its kind alone ([`SentIndex::found_by_kind`]), once not found by its values.
    Kind,
}

impl<'a> Planner<'a> {
    /// A create cut short whose record cannot be told from others holding the same
    /// fields: reported, never guessed; its source gets no second record, and the
    /// candidates' own codes are no requests, until an operator links one (`tandem
    /// link`) or the records differ.
    fn recovery_waits(
        &mut self,
        r: usize,
        p: &'a PendingCreate,
        candidates: &[&'a PackedRecord],
        (contacts, accounts): (&[&'a str], &[&'a str]),
    ) {
        let code = &self.relations.relations[r].code;
        let mut contact_ids: Vec<String> = contacts.iter().map(|c| (*c).to_owned()).collect();
        let mut account_ids: Vec<String> = accounts.iter().map(|a| (*a).to_owned()).collect();
        for candidate in candidates {
            match candidate.kind() {
                EntityKind::Contact => contact_ids.push(candidate.id().to_owned()),
                _ => account_ids.push(candidate.id().to_owned()),
            }
        }
        for id in contacts
            .iter()
            .copied()
            .chain(candidates.iter().map(|c| c.id()))
        {
            self.recovery_waiting.insert((r, id));
        }
        for id in accounts {
            self.recovery_waiting.insert((r, id));
        }
        let name = p.fields.value(field::NAME).to_cell();
        self.plan.ambiguous.push(Ambiguity {
            code: code.clone(),
            tier: 0,
            fields: vec!["a create cut short".to_owned()],
            values: vec![name],
            contact_ids,
            account_ids,
        });
    }

    /// A contact created for an account the user deleted before the create was linked:
    /// the contact stays and loses the code (R13), which it lists since its create.
    fn source_gone(&mut self, r: usize, p: &'a PendingCreate, contacts: &SentIndex<'a>) {
        if !self.accounts(r).deleted.contains(&p.source_id) {
            return;
        }
        let free = |c: &PackedRecord| !self.is_linked(r, c.id());
        let found = match &p.record_id {
            Some(id) => found_by_id(&self.input.contacts, id, free),
            None => contacts.found(&p.fields, free, Look::Values),
        };
        if let Found::One(contact) = found {
            let code = self.relations.relations[r].code.clone();
            self.plan
                .new_lost_codes
                .push((code.clone(), contact.id().to_owned()));
            self.lost_codes
                .entry(contact.id())
                .or_default()
                .insert(code);
        }
    }
}

/// The records of a pool by the values of a few fields of the creates looked for, so
/// finding 25,000 creates again costs a few lookups each, not a walk of the pool each.
pub(super) struct SentIndex<'r> {
    by_key: HashMap<(&'static str, String), Vec<&'r PackedRecord>>,
    /// The records listing a code, by the same values, a city's too: what a contact a
    /// create made still is though all its telling values were edited
    /// ([`SentIndex::found_by_kind`]). Few: Tandem's own contacts not yet linked, and
    /// requests (R5).
    coded_by_key: HashMap<(&'static str, String), Vec<&'r PackedRecord>>,
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
    fn new<'s>(pool: &[&'r PackedRecord], sent: impl Iterator<Item = &'s Fields>) -> SentIndex<'r> {
        let sent: Vec<&Fields> = sent.collect();
        let keys: Vec<&'static str> = KEYS
            .iter()
            .copied()
            .filter(|k| sent.iter().any(|f| f.get(k).is_some()))
            .collect();
        let names: Vec<FieldName> = keys.iter().map(|k| FieldName::new(k)).collect();
        let mut by_key: HashMap<(&'static str, String), Vec<&'r PackedRecord>> = HashMap::new();
        let mut coded_by_key: HashMap<(&'static str, String), Vec<&'r PackedRecord>> =
            HashMap::new();
        let codes = FieldName::new(field::BUSINESS_RELATIONS);
        for record in pool {
            let coded = record.get(&codes).is_some_and(|v| !v.is_empty());
            for (key, name) in keys.iter().zip(&names) {
                if let Some(value) = record.get(name) {
                    let at = (*key, index_text(key, &value));
                    if coded {
                        coded_by_key.entry(at.clone()).or_default().push(*record);
                    }
                    by_key.entry(at).or_default().push(*record);
                }
            }
        }
        SentIndex {
            by_key,
            coded_by_key,
        }
    }

    /// The one record accepted by `free` that holds every value of `sent`; failing
    /// that, the one that holds all of them but one or its name and half of them (the
    /// user edited it since the create: merged against the fields sent); failing that,
    /// [`SentIndex::found_loosely`]. `None` when there is none, or more than one at the
    /// first step that finds any (never a guess). With [`Look::Kind`], by its kind
    /// alone.
    fn found(&self, sent: &Fields, free: impl Fn(&PackedRecord) -> bool, look: Look) -> Found<'r> {
        if look == Look::Kind {
            return self.found_by_kind(sent, &free);
        }
        let mut buckets: Vec<(&str, &[&'r PackedRecord])> = KEYS
            .iter()
            .filter_map(|&key| {
                let value = sent.get(key)?;
                let held = self.by_key.get(&(key, index_text(key, value)));
                Some((key, held.map_or(&[][..], Vec::as_slice)))
            })
            .collect();
        buckets.sort_by_key(|(_, b)| b.len());
        // A record found again holds every value sent but one at most (it is then in
        // one of the two smallest buckets: it misses one bucket at most), or kept its
        // name. Looking only there finds what the union of all buckets would, without
        // walking a bucket as large as a city's for each create.
        let named = buckets.iter().filter(|(key, _)| *key == field::NAME);
        let buckets = buckets
            .iter()
            .take(2)
            .chain(named)
            .map(|(_, bucket)| *bucket);
        // The few candidates are unpacked to be compared field by field.
        let candidates: Vec<(&'r PackedRecord, Fields)> = (distinct_free(buckets, &free))
            .into_iter()
            .map(|r| (r, r.fields()))
            .collect();
        let exact: Vec<&'r PackedRecord> = (candidates.iter())
            .filter(|(_, fields)| same_fields(fields, sent))
            .map(|(r, _)| *r)
            .collect();
        match Found::of(exact) {
            Found::None => {
                let near = (candidates.into_iter())
                    .filter(|(_, fields)| nearly(fields, sent))
                    .map(|(r, _)| r);
                match Found::of(near.collect()) {
                    Found::None => self.found_loosely(sent, &free),
                    found => found,
                }
            }
            found => found,
        }
    }
}

impl<'r> SentIndex<'r> {
    /// A record a create cut short made, edited since in its name and more (R18): the
    /// one still of the kind sent (contact type, codes) and holding at least half of
    /// the other values sent, among the records sharing an identifying value (not a
    /// city), each bucket of at most [`LOOSE_BUCKET`] records (a value shared more
    /// widely identifies nothing). Not found, a contact created for an account would
    /// get a twin and its listed code would read as a request (R5), creating an
    /// account; for an account the user deleted since, that account came back as a
    /// new one.
    fn found_loosely(&self, sent: &Fields, free: &impl Fn(&PackedRecord) -> bool) -> Found<'r> {
        let buckets = (IDENTIFYING.iter())
            .filter_map(|&key| {
                let value = sent.get(key)?;
                self.by_key.get(&(key, index_text(key, value)))
            })
            .filter(|bucket| bucket.len() <= LOOSE_BUCKET)
            .map(Vec::as_slice);
        let candidates = distinct_free(buckets, free);
        Found::of(
            candidates
                .into_iter()
                .filter(|r| half_kept(&r.fields(), sent))
                .collect(),
        )
    }

    /// A contact a create cut short made, edited since in every telling value but
    /// still of the kind sent (contact type, the codes it was created with) and
    /// holding one value sent, a city say (R18): never linked, since a request a user
    /// made (R5) may look the same, but waited on as an ambiguous find is
    /// ([`Found::Several`], even of one), so its account gets no twin and its listed
    /// code reads as no request until an operator links it (`tandem link`). Only for a
    /// create that sent codes (an account holds none), among at most [`LOOSE_BUCKET`]
    /// records listing a code and sharing the value. Found by the model ("customer uk6
    /// got 2 contacts", "an account nobody asked for").
    fn found_by_kind(&self, sent: &Fields, free: &impl Fn(&PackedRecord) -> bool) -> Found<'r> {
        if codes_in(sent.get(field::BUSINESS_RELATIONS)).is_empty() {
            return Found::None;
        }
        // A value many requests share identifies nothing: after a run cut short before
        // its creates went out, each would wait with every create of its city.
        let buckets = (KEYS.iter())
            .filter_map(|&key| {
                let value = sent.get(key)?;
                self.coded_by_key.get(&(key, index_text(key, value)))
            })
            .filter(|bucket| bucket.len() <= LOOSE_BUCKET);
        let candidates: Vec<&'r PackedRecord> = distinct_free(buckets.map(Vec::as_slice), free)
            .into_iter()
            .filter(|r| kind_kept(&r.fields(), sent))
            .collect();
        match candidates.is_empty() {
            true => Found::None,
            false => Found::Several(candidates),
        }
    }
}

/// The record a create sent with its id made (R18): the record of that id in `pool`,
/// if it is there. One that `free` does not let through (its user made it a person, or
/// linked it by hand) is no second record's cue: it waits as an ambiguous find would,
/// so its source gets no twin.
fn found_by_id<'r>(
    pool: &'r crate::Records,
    id: &str,
    free: impl Fn(&PackedRecord) -> bool,
) -> Found<'r> {
    match pool.get(id) {
        Some(record) if record.deleted() => Found::None,
        Some(record) if free(record) => Found::One(record),
        Some(record) => Found::Several(vec![record]),
        None => Found::None,
    }
}

/// The records of `buckets` that `free` lets through, each once, in id order.
fn distinct_free<'b, 'r: 'b>(
    buckets: impl Iterator<Item = &'b [&'r PackedRecord]>,
    free: &impl Fn(&PackedRecord) -> bool,
) -> Vec<&'r PackedRecord> {
    let mut candidates: Vec<&'r PackedRecord> =
        buckets.flatten().copied().filter(|r| free(r)).collect();
    candidates.sort_by(|a, b| a.id().cmp(b.id()));
    candidates.dedup_by(|a, b| a.id() == b.id());
    candidates
}

/// The values that tell one partner from another: a city does not.
const IDENTIFYING: &[&str] = &[
    field::NAME,
    field::EMAIL,
    field::VAT_REGISTRATION_NO,
    field::PHONE,
];

/// The most records sharing one value that [`SentIndex::found_loosely`] looks at.
const LOOSE_BUCKET: usize = 64;

/// Whether `record` still is what a created record is (contact type, codes as sent)
/// and holds at least half of the other values `sent` (at least two).
fn half_kept(record: &Fields, sent: &Fields) -> bool {
    let values = sent
        .iter()
        .filter(|(name, _)| !KIND_OF_RECORD.contains(&name.as_str()));
    let (count, kept) = values.fold((0, 0), |(count, kept), (name, value)| {
        let held = still_holds(record, name.as_str(), value);
        (count + 1, kept + usize::from(held))
    });
    kind_kept(record, sent) && count >= 2 && kept * 2 >= count
}

/// Whether `record` still is what the create `sent` made: contact type and codes as
/// sent ([`KIND_OF_RECORD`]).
fn kind_kept(record: &Fields, sent: &Fields) -> bool {
    KIND_OF_RECORD
        .iter()
        .all(|name| sent.get(name).is_none_or(|v| still_holds(record, name, v)))
}

/// What looking for a create cut short found.
pub(super) enum Found<'r> {
    None,
    One(&'r PackedRecord),
    /// More than one record holds the fields sent: never a guess.
    Several(Vec<&'r PackedRecord>),
}

impl<'r> Found<'r> {
    fn of(mut records: Vec<&'r PackedRecord>) -> Found<'r> {
        match records.len() {
            0 => Found::None,
            1 => Found::One(records.remove(0)),
            _ => Found::Several(records),
        }
    }
}

/// How a value is found again: the system may store its own spelling of what was sent
/// (Tryton compacts VAT numbers, R20).
const SENT: Comparison = Comparison {
    exact: true,
    phone_region: None,
};

/// A value as the index holds it: normalised where its field has a form (R20).
fn index_text(name: &str, value: &Value) -> String {
    let mut buf = String::new();
    match value.as_text() {
        Some(text) if SENT.push_key(&mut buf, name, text, None) => buf,
        _ => value.to_cell(),
    }
}

/// Whether `record` is the create `sent` after an edit: what a created record is
/// (contact type, codes) as sent, and every value but one, or its name and at least
/// half of the values. Never for a create of fewer than three fields.
fn nearly(record: &Fields, sent: &Fields) -> bool {
    let differing = sent
        .iter()
        .filter(|(name, value)| !still_holds(record, name.as_str(), value))
        .count();
    let named = sent
        .get(field::NAME)
        .is_some_and(|name| record.value(field::NAME) == name);
    kind_kept(record, sent)
        && sent.len() >= 3
        && (differing <= 1 || (named && differing * 2 <= sent.len()))
}

/// Whether `record` holds exactly the values of `sent` (a create's fields).
pub(super) fn same_fields(record: &Fields, sent: &Fields) -> bool {
    sent.iter()
        .all(|(name, value)| still_holds(record, name.as_str(), value))
}

/// Whether `record` still holds the value `sent` gave the field `name`. The codes a
/// contact was created with may since have been joined by the codes of links a later
/// run made (R9: Tandem writes them itself), so those are held when every code sent is
/// still listed.
fn still_holds(record: &Fields, name: &str, sent: &Value) -> bool {
    if name == field::BUSINESS_RELATIONS {
        let held = codes_in(record.get(name));
        return codes_in(Some(sent)).iter().all(|code| held.contains(code));
    }
    SENT.same(name, record.value(name), sent)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use tandem_model::{EntityKind, Fields, Record};

    use super::*;

    /// Creates cut short are looked for among the records sharing their most telling
    /// values, not among every record of their city: finding 13,500 creates again in
    /// 118,000 contacts of a few cities took 35 s, one walk of a city per create.
    #[test]
    fn a_create_is_found_again_without_walking_the_records_of_its_city() {
        let records: Vec<Record> = (0..1_000)
            .map(|i| {
                let fields = Fields::new()
                    .with(field::NAME, format!("Company {i}").as_str())
                    .with(field::CITY, "Gent")
                    .with(field::VAT_REGISTRATION_NO, format!("BE{i:010}").as_str());
                Record::new(EntityKind::Contact, format!("C{i}"), fields)
            })
            .collect();
        let packed: Vec<Box<PackedRecord>> = records.iter().map(PackedRecord::pack).collect();
        let pool: Vec<&PackedRecord> = packed.iter().map(|p| &**p).collect();
        let sent = records[500].fields.clone();
        let index = SentIndex::new(&pool, std::iter::once(&sent));
        let looked_at = Cell::new(0);
        let found = index.found(
            &sent,
            |_| {
                looked_at.set(looked_at.get() + 1);
                true
            },
            Look::Values,
        );
        assert!(matches!(found, Found::One(r) if r.id() == "C500"));
        assert!(looked_at.get() <= 3, "looked at {}", looked_at.get());

        // Requests of its city (R5), more than a bucket: not waited on, nor walked.
        let requests: Vec<Record> = (0..1_000)
            .map(|i| {
                let fields = Fields::new()
                    .with(field::NAME, format!("Request {i}").as_str())
                    .with(field::PHONE, format!("+32 9 {i:06}").as_str())
                    .with(field::CITY, "Gent")
                    .with(field::BUSINESS_RELATIONS, "CUST");
                Record::new(EntityKind::Contact, format!("R{i}"), fields)
            })
            .collect();
        let packed: Vec<Box<PackedRecord>> = requests.iter().map(PackedRecord::pack).collect();
        let requests: Vec<&PackedRecord> = packed.iter().map(|p| &**p).collect();
        let asked = Fields::new()
            .with(field::NAME, "Created")
            .with(field::PHONE, "+32 9 999 99 99")
            .with(field::CITY, "Gent")
            .with(field::BUSINESS_RELATIONS, "CUST");
        let index = SentIndex::new(&requests, std::iter::once(&asked));
        looked_at.set(0);
        let counted = |_: &PackedRecord| {
            looked_at.set(looked_at.get() + 1);
            true
        };
        assert!(matches!(
            index.found(&asked, counted, Look::Kind),
            Found::None
        ));
        assert_eq!(looked_at.get(), 0, "a city's requests were walked");
        // A few: they wait, the create with them.
        let index = SentIndex::new(&requests[..3], std::iter::once(&asked));
        let found = index.found(&asked, |_| true, Look::Kind);
        assert!(matches!(found, Found::Several(r) if r.len() == 3));
        assert!(matches!(
            index.found(&asked, |_| true, Look::Values),
            Found::None
        ));

        // Its name edited since: still found, by its other values.
        let mut edited = sent.clone();
        edited.set(field::NAME, Value::text("Company 500 Ltd"));
        let index = SentIndex::new(&pool, std::iter::once(&edited));
        assert!(
            matches!(index.found(&edited, |_| true, Look::Values), Found::One(r) if r.id() == "C500")
        );
    }
}
