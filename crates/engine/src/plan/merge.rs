//! The contact as the hub: each contact merged with all its links at once (R7, R8, R14,
//! R15).

use super::*;
use crate::side::Winner;

impl<'a> Planner<'a> {
    /// Every contact with a link or a new link that involves a record read this run,
    /// in id order: the hubs to merge.
    pub(super) fn hub_ids(&self) -> Vec<&'a str> {
        let input = self.input;
        let mut hub_ids: BTreeSet<&'a str> = self.new_links.contacts().collect();
        for (contact_id, links) in &self.by_contact {
            if (input.contacts.contains_key(contact_id) && !input.match_only.contains(*contact_id))
                || links
                    .iter()
                    .any(|(r, l)| self.accounts(*r).records.contains_key(&l.account_id))
            {
                hub_ids.insert(contact_id);
            }
        }
        hub_ids.into_iter().collect()
    }

    /// The hubs of `hub_ids`, merged, into the plan.
    pub(super) fn merge_hubs(
        &mut self,
        hub_ids: &[&'a str],
        open_conflicts: &HashMap<&'a str, Vec<&'a ConflictEntry>>,
    ) {
        // Each hub is merged on its own (pure, no shared state): on the cores.
        let parts: Vec<Vec<Option<Merged>>> = self.on_cores_in_parts(hub_ids, |contact_id| {
            self.merge_one(contact_id, open_conflicts)
        });
        // Sized once: growing by doubling would hold up to twice the hubs while copying.
        // Each part is let go once moved on: the merged hubs are held twice at most
        // part by part, not whole.
        let hubs = parts.iter().flatten().flatten();
        self.plan
            .hubs
            .reserve_exact(hubs.filter(|m| m.hub.is_some()).count());
        for merged in parts.into_iter().flatten().flatten() {
            self.plan.close_conflicts.extend(merged.closed);
            let Some(hub) = merged.hub else { continue };
            self.plan.hubs.push(hub);
        }
    }

    /// One contact with all its pairs, merged; `None` when it has no pair.
    pub(super) fn merge_one(
        &self,
        contact_id: &str,
        open_conflicts: &HashMap<&str, Vec<&ConflictEntry>>,
    ) -> Option<Merged> {
        let input = self.input;
        // Each account unpacked for this hub's merge alone: the run holds records packed.
        let unpacked =
            |r: usize, id: &str| self.accounts(r).records.get(id).map(PackedRecord::unpack);
        let mut pairs: Vec<PairInput> = Vec::new();
        for (r, link) in self.by_contact.get(contact_id).into_iter().flatten() {
            if link.parked {
                continue;
            }
            pairs.push(PairInput {
                relation: *r,
                account_id: &link.account_id,
                account: unpacked(*r, &link.account_id),
                link: Some(link),
                base: Some(&link.baseline),
                new_link: None,
            });
        }
        for (r, account_id, how) in self.new_links.of(contact_id) {
            pairs.push(PairInput {
                relation: *r,
                account_id,
                account: unpacked(*r, account_id),
                link: None,
                base: self.starts.get(&(*r, contact_id)).copied(),
                new_link: Some(*how),
            });
        }
        if pairs.is_empty() {
            return None;
        }
        pairs.sort_by_key(|p| p.relation);
        let contact = input.contacts.get(contact_id).map(PackedRecord::unpack);
        let open = open_conflicts
            .get(contact_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let first = pairs[0].relation;
        let merged;
        let universe: &[&FieldName] = match pairs.iter().all(|p| p.relation == first) {
            true => &self.shared_sorted[first],
            false => {
                let relations = &self.relations.relations;
                merged = universe(pairs.iter().map(|p| &relations[p.relation]));
                &merged
            }
        };
        Some(merge_hub(
            self.relations,
            contact_id,
            contact.as_ref(),
            &pairs,
            open,
            universe,
        ))
    }
}

/// The shared fields of `relations`, each once, in name order: what a hub of pairs of
/// those relations merges.
pub(super) fn universe<'r>(
    relations: impl IntoIterator<Item = &'r Relation>,
) -> Vec<&'r FieldName> {
    let mut fields: Vec<&FieldName> = (relations.into_iter())
        .flat_map(|r| r.shared.iter())
        .collect();
    fields.sort_unstable();
    fields.dedup();
    fields
}

pub(super) struct PairInput<'a> {
    relation: usize,
    account_id: &'a str,
    /// Unpacked for the merge (`merge_one`).
    account: Option<Record>,
    link: Option<&'a Link>,
    /// What both sides are taken to have agreed on: the link's baseline, or for a
    /// recovered create the fields it sent; `None` for a new link (R4's `initial`).
    base: Option<&'a Fields>,
    new_link: Option<NewLink>,
}

pub(super) struct Merged {
    hub: Option<HubPlan>,
    /// Open conflicts of this hub that are settled: (code, contact id, field).
    closed: Vec<(String, String, String)>,
}

/// Merges one contact with all its pairs, field by field over `universe` (their
/// relations' shared fields, in name order).
pub(super) fn merge_hub<'p>(
    relations: &'p Relations,
    contact_id: &'p str,
    contact: Option<&'p Record>,
    pairs: &'p [PairInput<'p>],
    open: &'p [&'p ConflictEntry],
    universe: &[&FieldName],
) -> Merged {
    let view = HubView {
        relations,
        contact_id,
        contact,
        pairs,
        open,
    };
    let mut out = HubMerge::new(pairs.iter().map(|p| &relations.relations[p.relation]));
    for f in universe {
        view.merge_field(f, &mut out);
    }
    view.close_settled(&mut out);
    view.finish(out)
}

/// What a field's merge lists per pair of its hub: a hub has a pair or two, so the
/// list is kept inline instead of allocated for every field of every hub (eight
/// million times in a first sync at 1M).
type Pairs<T> = smallvec::SmallVec<[T; 4]>;

/// One hub's inputs, as the merge of every field reads them. Values are borrowed from
/// the records and links; only what is written or remembered is copied.
struct HubView<'p> {
    relations: &'p Relations,
    contact_id: &'p str,
    contact: Option<&'p Record>,
    pairs: &'p [PairInput<'p>],
    open: &'p [&'p ConflictEntry],
}

/// What the merge of a hub builds, field by field; per pair where it is a `Vec`.
struct HubMerge {
    contact_changes: Vec<FieldChange>,
    account_changes: Vec<Vec<FieldChange>>,
    baselines: Vec<Fields>,
    /// Fields each pair's account brought to the contact.
    from_account: Vec<Vec<FieldName>>,
    conflicts: Vec<Conflict>,
    /// Open conflicts of this hub that are settled: (code, contact id, field).
    closed: Vec<(String, String, String)>,
    /// (pair, field) whose change waits for a decision (manual policy).
    open_manual: BTreeSet<(usize, FieldName)>,
}

impl HubMerge {
    /// For pairs of `relations`, in order.
    fn new<'r>(relations: impl ExactSizeIterator<Item = &'r Relation>) -> HubMerge {
        let pairs = relations.len();
        HubMerge {
            contact_changes: Vec::new(),
            account_changes: vec![Vec::new(); pairs],
            // A pair's baseline holds at most its relation's shared fields: sized once
            // instead of grown field by field.
            baselines: relations
                .map(|r| Fields::with_capacity(r.shared.len()))
                .collect(),
            from_account: vec![Vec::new(); pairs],
            conflicts: Vec::new(),
            closed: Vec::new(),
            open_manual: BTreeSet::new(),
        }
    }
}

/// The value one field ends with, and the pairs whose change to it waits (manual).
struct Decision<'p> {
    value: &'p Value,
    held: Vec<usize>,
}

impl<'p> HubView<'p> {
    fn rel(&self, i: usize) -> &'p Relation {
        &self.relations.relations[self.pairs[i].relation]
    }

    /// Whether pair `i`'s values `a` and `b` of `f` are one (R20: VAT numbers,
    /// countries, e-mail domains, phones when asked, in any spelling). A system that
    /// stores its own spelling of a value Tandem wrote has not changed it (R14).
    fn same(&self, i: usize, f: &FieldName, a: &Value, b: &Value) -> bool {
        a == b || self.rel(i).comparison().same(f.as_str(), a, b)
    }

    /// [`HubView::same`] for values of the contact and of several pairs: phones as
    /// E.164 when any involved relation asks.
    fn same_in_hub(&self, involved: &[usize], f: &FieldName, a: &Value, b: &Value) -> bool {
        let asks = involved
            .iter()
            .find(|&&i| self.rel(i).phone_region.is_some());
        match asks.or(involved.first()) {
            Some(&i) => self.same(i, f, a, b),
            None => a == b,
        }
    }

    /// What pair `i`'s sides agreed on last (its baseline), `Null` for a new link.
    fn base(&self, i: usize, f: &FieldName) -> &'p Value {
        match self.pairs[i].base {
            Some(base) => base.value_named(f),
            None => &Value::Null,
        }
    }

    /// What pair `i`'s account holds; the baseline when it was not read this run (it
    /// did not change since it was synchronised).
    fn account_holds(&self, i: usize, f: &FieldName) -> &'p Value {
        match &self.pairs[i].account {
            Some(a) => a.fields.value_named(f),
            None => self.base(i, f),
        }
    }

    /// What pair `i`'s account stands for: a side still holding what it held before an
    /// intended write did not get it and was not edited, so it stands for the baseline
    /// (R18).
    fn account_value(&self, i: usize, f: &FieldName) -> &'p Value {
        let value = self.account_holds(i, f);
        let intent = self.pairs[i].link.and_then(|l| l.intent.as_ref());
        match intent.and_then(|intent| intent.account_before(f.as_str())) {
            Some(before)
                if self.pairs[i].account.is_some()
                    && before == value
                    && !self.landed(i, intent.map_or(&[], |i| &i.account), |f| {
                        self.account_holds(i, f)
                    }) =>
            {
                self.base(i, f)
            }
            _ => value,
        }
    }

    /// Whether pair `i`'s intended write to a side, `written` (each field with what
    /// the side held before), landed, the side holding `holds`: a write to a record
    /// lands whole (one request), so a field holding what it was to get, where it
    /// held something else before, shows that every field got its value, and one
    /// holding its old value again was edited back since (R18). Without that, a value
    /// the user put back after a run cut short wrote it was written over again. Found
    /// by the model (an account's e-mail cleared after a crash: "expected None").
    fn landed(
        &self,
        i: usize,
        written: &[(FieldName, Value)],
        holds: impl Fn(&FieldName) -> &'p Value,
    ) -> bool {
        written.iter().any(|(f, before)| {
            let value = holds(f);
            value != before && self.same(i, f, value, self.base(i, f))
        })
    }

    /// What the contact holds; when it was not read, the baseline of its first link
    /// (it did not change since it was synchronised). Looked up once per field: the
    /// merge and the writes both need it.
    fn contact_holds(&self, involved: &[usize], f: &FieldName) -> &'p Value {
        match self.contact {
            Some(c) => c.fields.value_named(f),
            None => involved
                .iter()
                .find(|&&i| self.pairs[i].base.is_some())
                .map_or(&Value::Null, |&i| self.base(i, f)),
        }
    }

    /// What the contact stands for, given what it `holds` (see
    /// [`HubView::account_value`]).
    fn contact_value(&self, involved: &[usize], f: &FieldName, holds: &'p Value) -> &'p Value {
        involved
            .iter()
            .find(|&&i| self.intent_not_landed(i, f, holds))
            .map_or(holds, |&i| self.base(i, f))
    }

    /// Whether the contact still holds what it held before pair `i`'s intended write
    /// (R18): the write did not land and the contact was not edited since.
    fn intent_not_landed(&self, i: usize, f: &FieldName, holds: &Value) -> bool {
        let intent = self.pairs[i].link.and_then(|l| l.intent.as_ref());
        let Some(contact) = self.contact else {
            return false;
        };
        intent.and_then(|intent| intent.contact_before(f.as_str())) == Some(holds)
            && !self.landed(i, intent.map_or(&[], |i| &i.contact), |f| {
                contact.fields.value_named(f)
            })
    }

    /// What the contact stands for as pair `i` sees it: its baseline when pair `i`'s
    /// own intended write did not land, else what it holds. Another pair's unlanded
    /// write says nothing about this pair's baseline.
    fn contact_for(&self, i: usize, f: &FieldName, holds: &'p Value) -> &'p Value {
        match self.intent_not_landed(i, f, holds) {
            true => self.base(i, f),
            false => holds,
        }
    }

    /// The contact's modification time (the `newest` policy).
    fn contact_modified(&self) -> Option<Timestamp> {
        self.contact.and_then(|c| c.modified_at)
    }

    fn account_modified(&self, i: usize) -> Option<Timestamp> {
        self.pairs[i].account.as_ref().and_then(|a| a.modified_at)
    }

    fn merge_field(&self, f: &FieldName, out: &mut HubMerge) {
        let involved: Pairs<usize> = (0..self.pairs.len())
            .filter(|&i| self.rel(i).shared.contains(f))
            .collect();
        let contact_holds = self.contact_holds(&involved, f);
        let contact_value = self.contact_value(&involved, f, contact_holds);
        let contact_owns = self.relations.contact_preserve.contains(f);
        let owner = involved
            .iter()
            .copied()
            .find(|&i| self.rel(i).preserve.contains(f));
        let decision = if let Some(resolved) = self.resolved(f, &involved, out) {
            Decision {
                value: resolved,
                held: Vec::new(),
            }
        } else if contact_owns {
            Decision {
                value: contact_value,
                held: Vec::new(),
            }
        } else if let Some(owner) = owner {
            Decision {
                value: self.owners_value(f, owner, contact_value, out),
                held: Vec::new(),
            }
        } else {
            let contact = (contact_holds, contact_value);
            let mut decision = self.three_way(f, &involved, contact, out);
            decision.value = self.start_new_links(f, &involved, decision.value, out);
            decision
        };
        for &i in &decision.held {
            out.open_manual.insert((i, f.clone()));
            out.conflicts.push(Conflict {
                field: f.clone(),
                base: self.base(i, f).clone(),
                contact: Some(decision.value.clone()),
                accounts: vec![(
                    self.rel(i).code.clone(),
                    self.pairs[i].account_id.to_owned(),
                    self.account_value(i, f).clone(),
                )],
                policy: ConflictPolicy::Manual,
                winner: Winner::Manual,
                value: decision.value.clone(),
            });
        }
        self.record(f, &involved, &decision, contact_owns, contact_holds, out);
    }

    /// A decision an operator took on an open conflict (`tandem conflicts resolve`).
    fn resolved(&self, f: &FieldName, involved: &[usize], out: &mut HubMerge) -> Option<&'p Value> {
        let name = f.as_str();
        let value = involved.iter().find_map(|&i| {
            self.open
                .iter()
                .find(|c| c.code == self.rel(i).code && c.field == name)
                .and_then(|c| c.resolution.as_ref())
        })?;
        for &i in involved {
            let code = &self.rel(i).code;
            if self.open.iter().any(|c| &c.code == code && c.field == name) {
                let closed = (code.clone(), self.contact_id.to_owned(), name.to_owned());
                out.closed.push(closed);
            }
            if self.same(i, f, self.account_value(i, f), value) {
                out.from_account[i].push(f.clone());
            }
        }
        Some(value)
    }

    /// Preserve lists make a side the owner of a field (R8): its value wins, but an
    /// empty one only when the owner cleared it (empty values never overwrite filled
    /// ones, R4).
    fn owners_value(
        &self,
        f: &FieldName,
        owner: usize,
        contact_value: &'p Value,
        out: &mut HubMerge,
    ) -> &'p Value {
        let a = self.account_value(owner, f);
        if a.is_empty() && self.base(owner, f).is_empty() {
            return contact_value;
        }
        if !self.same(owner, f, a, contact_value) {
            out.from_account[owner].push(f.clone());
        }
        a
    }

    /// Whether the contact changed since the baselines of the `existing` links.
    ///
    /// It changed when it differs from a link's baseline, each link seeing the contact
    /// as it stands for that link ([`HubView::contact_for`]). A link whose baseline lags
    /// (its last write failed, or a run left it unfinished) is not asked while a current
    /// one is: Tandem's own write to the contact for another link is not the contact's
    /// change (R19). (A field waiting for a decision keeps its old baseline on purpose:
    /// that link is current, and the conflict stays.) But a lagging link whose account
    /// was edited (it `proposes`) is asked too: when the contact moved since that link's
    /// baseline, whoever moved it, the two systems of that link hold two values since
    /// they last agreed (R15), and letting the account win outright would lose the
    /// contact's edit.
    fn contact_changed(
        &self,
        f: &FieldName,
        existing: &[usize],
        proposals: &[(usize, &'p Value)],
        holds: &'p Value,
    ) -> bool {
        let lagging = |i: usize| {
            self.pairs[i]
                .link
                .is_some_and(|l| l.failure_count > 0 || l.intent.is_some())
        };
        let moved = |i: usize| !self.same(i, f, self.contact_for(i, f, holds), self.base(i, f));
        let current: Vec<usize> = existing.iter().copied().filter(|&i| !lagging(i)).collect();
        let judges = if current.is_empty() {
            existing
        } else {
            &current
        };
        self.contact.is_some()
            && (judges.iter().any(|&i| moved(i))
                || proposals.iter().any(|&(i, _)| lagging(i) && moved(i)))
    }

    /// The contact and its existing links, a three-way merge against each baseline
    /// (R14): one change wins outright; the same change everywhere is no conflict;
    /// competing changes are settled by the policy (R15), or wait (manual).
    /// `contact` is what the contact holds and what it stands for (see
    /// [`HubView::contact_value`]).
    fn three_way(
        &self,
        f: &FieldName,
        involved: &[usize],
        contact: (&'p Value, &'p Value),
        out: &mut HubMerge,
    ) -> Decision<'p> {
        let (contact_holds, contact_value) = contact;
        let existing: Pairs<usize> = involved
            .iter()
            .copied()
            .filter(|&i| self.pairs[i].base.is_some())
            .collect();
        let mut proposals: Pairs<(usize, &'p Value)> = existing
            .iter()
            .map(|&i| (i, self.account_value(i, f)))
            .filter(|(i, v)| !self.same(*i, f, v, self.base(*i, f)))
            .collect();
        let contact_changed = self.contact_changed(f, &existing, &proposals, contact_holds);
        let agreed = |proposals: &[(usize, &Value)]| {
            let mut all = proposals
                .iter()
                .map(|(_, v)| *v)
                .chain(contact_changed.then_some(contact_value));
            let first = all.next();
            all.all(|v| first.is_some_and(|first| self.same_in_hub(involved, f, v, first)))
        };
        let mut held = Vec::new();
        if !agreed(&proposals) {
            // Competing changes: pairs under `manual` step aside and wait.
            held = proposals
                .iter()
                .filter(|(i, _)| self.rel(*i).policy(f) == ConflictPolicy::Manual)
                .map(|(i, _)| *i)
                .collect();
            proposals.retain(|(i, _)| !held.contains(i));
        }
        let value = if agreed(&proposals) {
            match proposals.first() {
                Some(&(_, v)) => {
                    for (j, w) in &proposals {
                        if self.same(*j, f, w, v) {
                            out.from_account[*j].push(f.clone());
                        }
                    }
                    v
                }
                None => contact_value,
            }
        } else {
            let base = existing.first().map_or(&Value::Null, |&i| self.base(i, f));
            let changes = Competing {
                base,
                contact: contact_changed.then_some(contact_value),
                proposals,
            };
            self.settle_competing(f, contact_value, &changes, out)
        };
        Decision { value, held }
    }

    /// Competing changes that do not wait: the policy picks the winner (R15); the
    /// conflict is logged either way.
    fn settle_competing(
        &self,
        f: &FieldName,
        contact_value: &'p Value,
        changes: &Competing<'p>,
        out: &mut HubMerge,
    ) -> &'p Value {
        let proposals = &changes.proposals;
        let newest = |candidates: &[&(usize, &'p Value)]| -> (usize, &'p Value) {
            let mut best = candidates[0];
            for c in &candidates[1..] {
                if self.account_modified(c.0) > self.account_modified(best.0) {
                    best = c;
                }
            }
            *best
        };
        let winner = if changes.contact.is_some() {
            let beating: Vec<&(usize, &Value)> = proposals
                .iter()
                .filter(|(i, v)| {
                    !self.same(*i, f, v, contact_value)
                        && account_beats_contact(
                            self.rel(*i).policy(f),
                            self.account_modified(*i),
                            self.contact_modified(),
                        )
                })
                .collect();
            (!beating.is_empty()).then(|| newest(&beating))
        } else {
            Some(newest(&proposals.iter().collect::<Vec<_>>()))
        };
        let (value, winner_name, policy) = match winner {
            Some((i, v)) => {
                out.from_account[i].push(f.clone());
                let code = self.rel(i).code.clone();
                (v, Winner::Account(code), self.rel(i).policy(f))
            }
            None => {
                let policy = proposals
                    .first()
                    .map(|(i, _)| self.rel(*i).policy(f))
                    .unwrap_or_default();
                (contact_value, Winner::Contact, policy)
            }
        };
        out.conflicts.push(Conflict {
            field: f.clone(),
            base: changes.base.clone(),
            contact: changes.contact.cloned(),
            accounts: proposals
                .iter()
                .map(|(i, v)| {
                    let code = self.rel(*i).code.clone();
                    (code, self.pairs[*i].account_id.to_owned(), (*v).clone())
                })
                .collect(),
            policy,
            winner: winner_name,
            value: value.clone(),
        });
        value
    }

    /// New links start from the contact's values or the account's (R4's `initial`); an
    /// empty value never overwrites a filled one.
    fn start_new_links(
        &self,
        f: &FieldName,
        involved: &[usize],
        mut value: &'p Value,
        out: &mut HubMerge,
    ) -> &'p Value {
        for &i in involved.iter().filter(|&&i| self.pairs[i].base.is_none()) {
            let a = self.account_value(i, f);
            let take_account = match self.rel(i).initial {
                InitialSide::Contact => value.is_empty() && !a.is_empty(),
                InitialSide::Account => !a.is_empty(),
            };
            if take_account && !self.same(i, f, a, value) {
                value = a;
                out.from_account[i].push(f.clone());
            }
        }
        value
    }

    /// The writes the decision needs (compared with what the sides hold, not with
    /// what they stand for) and each pair's new baseline.
    fn record(
        &self,
        f: &FieldName,
        involved: &[usize],
        decision: &Decision<'p>,
        contact_owns: bool,
        contact_holds: &'p Value,
        out: &mut HubMerge,
    ) {
        let value = decision.value;
        if !contact_owns && !self.same_in_hub(involved, f, value, contact_holds) {
            out.contact_changes.push(FieldChange {
                field: f.clone(),
                old: contact_holds.clone(),
                new: value.clone(),
            });
        }
        for &i in involved {
            let a = self.account_holds(i, f);
            let owns = self.rel(i).preserve.contains(f);
            let waits = decision.held.contains(&i);
            if !owns && !waits && !self.same(i, f, value, a) {
                out.account_changes[i].push(FieldChange {
                    field: f.clone(),
                    old: a.clone(),
                    new: value.clone(),
                });
            }
            // A waiting field keeps its old baseline, so the conflict stays visible.
            let new_base = match (waits, owns) {
                (true, _) => self.base(i, f),
                (false, true) => a,
                (false, false) => value,
            };
            // Baselines are built in name order: an append, not an insert.
            out.baselines[i].set(f.clone(), new_base.clone());
        }
    }

    /// Open manual conflicts that did not come up again are settled by themselves.
    fn close_settled(&self, out: &mut HubMerge) {
        for entry in self.open.iter().filter(|c| c.resolution.is_none()) {
            let still_open = out
                .open_manual
                .iter()
                .any(|(i, f)| self.rel(*i).code == entry.code && f.as_str() == entry.field);
            let in_hub = (0..self.pairs.len()).any(|i| self.rel(i).code == entry.code);
            if in_hub && !still_open {
                out.closed.push((
                    entry.code.clone(),
                    self.contact_id.to_owned(),
                    entry.field.clone(),
                ));
            }
        }
        out.closed.sort();
    }

    /// The contact's stored version: when it was not read, the newest link's.
    fn contact_version(&self) -> Option<String> {
        match self.contact {
            Some(c) => c.version.clone(),
            None => self
                .pairs
                .iter()
                .filter_map(|p| p.link)
                .max_by_key(|l| l.synced_at)
                .and_then(|l| l.contact_version.clone()),
        }
    }

    /// The hub's plan. What the plan keeps is held until the run ends, for every hub of
    /// the run: it is sized to what it holds, not to what pushing one by one grew it to
    /// (on a big run, fresh memory is a large part of planning's time).
    fn finish(&self, mut out: HubMerge) -> Merged {
        out.conflicts.shrink_to_fit();
        let contact_version = self.contact_version();
        // Sized to the hub's pairs: collecting from `filter_map` would start at four
        // pairs, three of them unused for most hubs of a big run.
        let mut pairs: Vec<PairPlan> = Vec::with_capacity(self.pairs.len());
        pairs.extend(
            (0..self.pairs.len()).filter_map(|i| self.pair_plan(i, &mut out, &contact_version)),
        );
        let hub =
            (!pairs.is_empty() || !out.contact_changes.is_empty() || !out.conflicts.is_empty())
                .then(|| HubPlan {
                    contact_id: self.contact_id.to_owned(),
                    contact_version,
                    contact_changes: out.contact_changes.into(),
                    pairs,
                    conflicts: out.conflicts,
                    contact_after_hash: None,
                    other_links: Vec::new(),
                });
        Merged {
            hub,
            closed: out.closed,
        }
    }

    /// Pair `i`'s plan; `None` when nothing about it changes.
    fn pair_plan(
        &self,
        i: usize,
        out: &mut HubMerge,
        contact_version: &Option<String>,
    ) -> Option<PairPlan> {
        let p = &self.pairs[i];
        let changes = std::mem::take(&mut out.account_changes[i]);
        let mut brought: Vec<FieldName> = std::mem::take(&mut out.from_account[i])
            .into_iter()
            .filter(|f| out.contact_changes.iter().any(|c| &c.field == f))
            .collect();
        brought.shrink_to_fit();
        let updated = !changes.is_empty() || !brought.is_empty();
        let account_version = match &p.account {
            Some(a) => a.version.clone(),
            None => p.link.and_then(|l| l.account_version.clone()),
        };
        let baseline = &out.baselines[i];
        let unchanged_link = p.link.is_some_and(|l| {
            l.baseline == *baseline
                && l.account_version == account_version
                && (self.contact.is_none() || &l.contact_version == contact_version)
                && l.failure_count == 0
                && l.intent.is_none()
        });
        if p.new_link.is_none() && !updated && out.contact_changes.is_empty() && unchanged_link {
            return None;
        }
        let account_after_hash = (p.account.as_ref()).map(|a| {
            let after = changes.iter().map(|c| (&c.field, &c.new));
            a.fields.content_hash_after(after)
        });
        Some(PairPlan {
            code: self.rel(i).code.clone(),
            relation: p.relation,
            account_id: p.account_id.to_owned(),
            account_version,
            new_link: p.new_link,
            account_changes: changes.into(),
            from_account: brought,
            updated,
            baseline: PackedFields::pack(baseline),
            previous: p.link.cloned().map(Box::new),
            account_after_hash,
        })
    }
}

/// Competing changes of one field since the baseline.
struct Competing<'p> {
    base: &'p Value,
    /// The contact's value, when the contact changed the field.
    contact: Option<&'p Value>,
    /// (pair, value) of each account that changed it and does not wait.
    proposals: Pairs<(usize, &'p Value)>,
}

pub(super) fn account_beats_contact(
    policy: ConflictPolicy,
    account: Option<Timestamp>,
    contact: Option<Timestamp>,
) -> bool {
    match policy {
        ConflictPolicy::ContactWins | ConflictPolicy::Manual => false,
        ConflictPolicy::AccountWins => true,
        ConflictPolicy::Newest => matches!((account, contact), (Some(a), Some(c)) if a > c),
    }
}
