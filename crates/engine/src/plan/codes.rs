//! What the contact shows after the run (R9), and what its writes mean for its other
//! links (R19).

use std::borrow::Cow;

use super::*;

impl<'a> Planner<'a> {
    /// R9: after the run, a contact's `business_relations` lists the codes it holds.
    /// Configured codes it holds are added, codes it lost are removed, codes it asks
    /// for stay until they are granted or refused; anything else in the field is left.
    /// For the contacts whose ids lie in `[from, to)` (`None`: open), the range of the
    /// hubs in the plan.
    pub(super) fn reflect_codes(&mut self, (from, to): (Option<&str>, Option<&str>)) {
        let input = self.input;
        let contacts: Vec<&'a PackedRecord> = (input.contacts.between(from, to))
            .filter(|c| !input.deleted_contacts.contains(c.id()) && self.touched(c.id()))
            .collect();
        // Hubs and contacts are both in id order: each contact's hub is found by moving
        // on through the hubs, not looked up in a map of a million ids.
        debug_assert!(
            self.plan
                .hubs
                .is_sorted_by(|a, b| a.contact_id < b.contact_id)
        );
        let mut next = 0;
        let mut new_hubs = Vec::new();
        // Each contact's own changes depend on it alone: worked out on the cores a block
        // at a time (a million at once held 120 MiB more), then taken in id order, as
        // on one core.
        for block in contacts.chunks(OWN_CHANGES_BLOCK) {
            let owns = self.on_cores(block, |contact| self.own_field_changes(contact));
            for (contact, own) in block.iter().zip(owns) {
                self.plan.codes_removed.extend(own.codes_removed);
                next = self.take_own_changes(next, contact, own.changes, &mut new_hubs);
            }
        }
        if !new_hubs.is_empty() {
            // Two runs in id order, merged by the sort; skipped without new hubs (a
            // first sync), where the sort's buffer of half the hubs was 64 MiB at 1M.
            self.plan.hubs.reserve_exact(new_hubs.len());
            self.plan.hubs.extend(new_hubs);
            self.plan
                .hubs
                .sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
        }
    }

    /// Adds a contact's own changes to its hub, found from hub `next` on, or to a new
    /// hub of its own; the hub to look on from for the next contact.
    fn take_own_changes(
        &mut self,
        mut next: usize,
        contact: &PackedRecord,
        changes: Vec<FieldChange>,
        new_hubs: &mut Vec<HubPlan>,
    ) -> usize {
        if changes.is_empty() {
            return next;
        }
        // A step or two, in order: both lists are in id order and `next` only moves on,
        // so the walk is one pass over the hubs. A binary search over the rest instead
        // read about twenty hubs' ids per contact, each a cache miss (1.7 s at 1M).
        let id = contact.id();
        let hubs = &self.plan.hubs;
        while hubs.get(next).is_some_and(|h| h.contact_id.as_str() < id) {
            next += 1;
        }
        match (self.plan.hubs.get_mut(next)).filter(|h| h.contact_id == id) {
            Some(hub) => hub.contact_changes = hub.contact_changes.with(&changes),
            None => {
                new_hubs.push(HubPlan {
                    contact_id: id.to_owned(),
                    contact_version: contact.version().map(str::to_owned),
                    contact_changes: changes.into(),
                    pairs: Vec::new(),
                    conflicts: Vec::new(),
                    contact_after_hash: None,
                    other_links: Vec::new(),
                });
            }
        }
        next
    }

    /// Whether the run may change the contact's own fields: a contact read only as a
    /// match candidate was settled when it was last read, unless this run links it,
    /// drops one of its links or creates for it.
    fn touched(&self, contact_id: &str) -> bool {
        !self.input.match_only.contains(contact_id)
            || self.new_links.has(contact_id)
            || self.lost_codes.contains_key(contact_id)
            || self.gained_codes.contains_key(contact_id)
            || self.template_fills.contains_key(contact_id)
    }

    /// The codes the contact lists after the run (R9) and the template values it
    /// receives from an account created for it (R5), as changes; and the configured
    /// codes it no longer lists.
    fn own_field_changes(&self, contact: &'a PackedRecord) -> OwnChanges {
        let current = listed_code_refs(contact);
        let wanted = self.codes_after(contact.id(), &current);
        let lost = self.lost_codes.get(contact.id()).into_iter().flatten();
        let codes_removed = lost
            .filter(|code| !wanted.iter().any(|w| w == code.as_str()))
            .map(|code| (code.clone(), contact.id().to_owned()))
            .collect();
        let mut changes = Vec::new();
        if wanted != current {
            changes.push(FieldChange {
                field: FieldName::new(field::BUSINESS_RELATIONS),
                old: (contact.get(&contact_fields::BUSINESS_RELATIONS)).unwrap_or(Value::Null),
                new: Value::list(wanted.into_iter().map(Cow::into_owned).collect()),
            });
        }
        let fills = self.template_fills.get(contact.id());
        for (name, value) in fills.into_iter().flatten() {
            if contact.get(name).is_none() && !changes.iter().any(|c| &c.field == name) {
                changes.push(FieldChange {
                    field: name.clone(),
                    old: Value::Null,
                    new: value.clone(),
                });
            }
        }
        OwnChanges {
            changes,
            codes_removed,
        }
    }

    /// The codes a contact lists after the run: what it listed, less configured codes
    /// it lost, plus the codes it holds. Borrowed: asked for every contact of a run.
    fn codes_after(&self, contact_id: &str, current: &[Cow<'a, str>]) -> Vec<Cow<'a, str>> {
        let relations: &'a Relations = self.relations;
        let code = |r: usize| relations.relations[r].code.as_str();
        let mut held: Vec<&'a str> = Vec::new();
        held.extend((self.by_contact.get(contact_id).into_iter().flatten()).map(|(r, _)| code(*r)));
        held.extend((self.new_links.of(contact_id).iter()).map(|(r, _, _)| code(*r)));
        // Gained codes are configured ones: borrowed from the relation of the same code.
        let gained = self.gained_codes.get(contact_id).into_iter().flatten();
        held.extend(gained.filter_map(|c| relations.index_of(c).map(code)));
        held.sort_unstable();
        held.dedup();
        let lost = self.lost_codes.get(contact_id);
        let mut wanted: Vec<Cow<'a, str>> = Vec::new();
        for listed in current {
            let configured = relations.index_of(listed).is_some();
            // Held, or still asked for (not just lost); other codes are left.
            let keep = !configured
                || held.contains(&listed.as_ref())
                || !lost.is_some_and(|l| l.contains(listed.as_ref()));
            if keep && !wanted.contains(listed) {
                wanted.push(listed.clone());
            }
        }
        for code in held {
            if !wanted.iter().any(|w| w == code) {
                wanted.push(Cow::Borrowed(code));
            }
        }
        wanted
    }

    /// R19: every link of a contact this run writes to learns the contact's new version,
    /// also the links the hub does not merge (parked, or unchanged while only the
    /// contact's own fields change).
    pub(super) fn other_links(&mut self) {
        for hub in self.plan.hubs.iter_mut() {
            if hub.contact_changes.is_empty() {
                continue;
            }
            for (_, link) in self
                .by_contact
                .get(hub.contact_id.as_str())
                .into_iter()
                .flatten()
            {
                if !hub.pairs.iter().any(|p| p.code == link.code) {
                    hub.other_links.push((*link).clone());
                }
            }
        }
    }

    /// The content hash of every contact read this run as it will be after its writes
    /// (merge and R9 together), computed once all of them are planned.
    pub(super) fn hash_contacts_after(&mut self) {
        let contacts = &self.input.contacts;
        let hashes = self.on_cores(&self.plan.hubs, |hub| {
            let contact = contacts.get(&hub.contact_id)?;
            let changes = hub.contact_changes.to_vec();
            Some(contact.content_hash_after(changes.iter().map(|c| (&c.field, &c.new))))
        });
        for (hub, hash) in self.plan.hubs.iter_mut().zip(hashes) {
            hub.contact_after_hash = hash;
        }
    }
}

/// Contacts whose own changes are worked out at once (see `reflect_codes`).
const OWN_CHANGES_BLOCK: usize = 5 * PARALLEL_HUBS;

/// What a contact's own fields receive this run (R9, R5), and the configured codes it
/// stops listing.
struct OwnChanges {
    changes: Vec<FieldChange>,
    codes_removed: Vec<(String, String)>,
}
