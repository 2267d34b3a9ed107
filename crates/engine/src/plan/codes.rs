//! What the contact shows after the run (R9), and what its writes mean for its other
//! links (R19).

use std::borrow::Cow;

use super::*;

impl<'a> Planner<'a> {
    /// R9: after the run, a contact's `business_relations` lists the codes it holds.
    /// Configured codes it holds are added, codes it lost are removed, codes it asks
    /// for stay until they are granted or refused; anything else in the field is left.
    pub(super) fn reflect_codes(&mut self) {
        let input = self.input;
        // Hubs and contacts are both in id order: each contact's hub is found by moving
        // on through the hubs, not looked up in a map of a million ids.
        debug_assert!(
            self.plan
                .hubs
                .is_sorted_by(|a, b| a.contact_id < b.contact_id)
        );
        let mut next = 0;
        let mut new_hubs = Vec::new();
        for contact in input
            .contacts
            .values()
            .filter(|c| !input.deleted_contacts.contains(&c.id))
        {
            if !self.touched(&contact.id) {
                continue;
            }
            let changes = self.own_field_changes(contact);
            if changes.is_empty() {
                continue;
            }
            let rest = &self.plan.hubs[next..];
            next += rest.partition_point(|h| h.contact_id < contact.id);
            match (self.plan.hubs.get_mut(next)).filter(|h| h.contact_id == contact.id) {
                Some(hub) => {
                    for change in changes {
                        hub.contact_changes.retain(|c| c.field != change.field);
                        hub.contact_changes.push(change);
                    }
                }
                None => new_hubs.push(HubPlan {
                    contact_id: contact.id.clone(),
                    contact_version: contact.version.clone(),
                    contact_changes: changes,
                    pairs: Vec::new(),
                    conflicts: Vec::new(),
                    contact_after_hash: None,
                    other_links: Vec::new(),
                }),
            }
        }
        self.plan.hubs.extend(new_hubs);
        self.plan
            .hubs
            .sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
    }

    /// Whether the run may change the contact's own fields: a contact read only as a
    /// match candidate was settled when it was last read, unless this run links it,
    /// drops one of its links or creates for it.
    fn touched(&self, contact_id: &str) -> bool {
        !self.input.match_only.contains(contact_id)
            || self.new_links.contains_key(contact_id)
            || self.lost_codes.contains_key(contact_id)
            || self.gained_codes.contains_key(contact_id)
            || self.template_fills.contains_key(contact_id)
    }

    /// The codes the contact lists after the run (R9) and the template values it
    /// receives from an account created for it (R5), as changes.
    fn own_field_changes(&mut self, contact: &'a Record) -> Vec<FieldChange> {
        let current = listed_code_refs(contact);
        let wanted = self.codes_after(&contact.id, &current);
        let lost = self
            .lost_codes
            .get(contact.id.as_str())
            .into_iter()
            .flatten();
        for code in lost.filter(|code| !wanted.iter().any(|w| w == code.as_str())) {
            self.plan
                .codes_removed
                .push((code.clone(), contact.id.clone()));
        }
        let mut changes = Vec::new();
        if wanted != current {
            changes.push(FieldChange {
                field: FieldName::new(field::BUSINESS_RELATIONS),
                old: contact.fields.value(field::BUSINESS_RELATIONS).clone(),
                new: Value::list(wanted.into_iter().map(Cow::into_owned).collect()),
            });
        }
        let fills = self.template_fills.get(contact.id.as_str());
        for (name, value) in fills.into_iter().flatten() {
            if contact.fields.get(name.as_str()).is_none()
                && !changes.iter().any(|c| &c.field == name)
            {
                changes.push(FieldChange {
                    field: name.clone(),
                    old: Value::Null,
                    new: value.clone(),
                });
            }
        }
        changes
    }

    /// The codes a contact lists after the run: what it listed, less configured codes
    /// it lost, plus the codes it holds. Borrowed: asked for every contact of a run.
    fn codes_after(&self, contact_id: &str, current: &[Cow<'a, str>]) -> Vec<Cow<'a, str>> {
        let relations: &'a Relations = self.relations;
        let code = |r: usize| relations.relations[r].code.as_str();
        let mut held: Vec<&'a str> = Vec::new();
        held.extend((self.by_contact.get(contact_id).into_iter().flatten()).map(|(r, _)| code(*r)));
        held.extend(
            (self.new_links.get(contact_id).into_iter().flatten()).map(|(r, _, _)| code(*r)),
        );
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
        for hub in &mut self.plan.hubs {
            if let Some(contact) = self.input.contacts.get(&hub.contact_id) {
                let changes = hub.contact_changes.iter().map(|c| (&c.field, &c.new));
                hub.contact_after_hash = Some(contact.fields.content_hash_after(changes));
            }
        }
    }
}
