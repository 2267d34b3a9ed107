//! What the contact shows after the run (R9), and what its writes mean for its other
//! links (R19).

use super::*;

impl<'a> Planner<'a> {
    /// R9: after the run, a contact's `business_relations` lists the codes it holds.
    /// Configured codes it holds are added, codes it lost are removed, codes it asks
    /// for stay until they are granted or refused; anything else in the field is left.
    pub(super) fn reflect_codes(&mut self) {
        let input = self.input;
        // Hubs by contact: a search per contact would make this quadratic.
        let mut hub_of: crate::IdMap<String, usize> = self
            .plan
            .hubs
            .iter()
            .enumerate()
            .map(|(i, h)| (h.contact_id.clone(), i))
            .collect();
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
            match hub_of.get(&contact.id).map(|&i| &mut self.plan.hubs[i]) {
                Some(hub) => {
                    for change in changes {
                        hub.contact_changes.retain(|c| c.field != change.field);
                        hub.contact_changes.push(change);
                    }
                }
                None => {
                    hub_of.insert(contact.id.clone(), self.plan.hubs.len());
                    self.plan.hubs.push(HubPlan {
                        contact_id: contact.id.clone(),
                        contact_version: contact.version.clone(),
                        contact_changes: changes,
                        pairs: Vec::new(),
                        conflicts: Vec::new(),
                        contact_after_hash: None,
                        other_links: Vec::new(),
                    });
                }
            }
        }
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
    fn own_field_changes(&mut self, contact: &Record) -> Vec<FieldChange> {
        let current = listed_codes(contact);
        let wanted = self.codes_after(&contact.id, &current);
        let lost = self
            .lost_codes
            .get(contact.id.as_str())
            .into_iter()
            .flatten();
        for code in lost.filter(|code| !wanted.contains(code)) {
            self.plan
                .codes_removed
                .push((code.clone(), contact.id.clone()));
        }
        let mut changes = Vec::new();
        if wanted != current {
            changes.push(FieldChange {
                field: FieldName::new(field::BUSINESS_RELATIONS),
                old: contact.fields.value(field::BUSINESS_RELATIONS).clone(),
                new: Value::list(wanted),
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
    /// it lost, plus the codes it holds.
    fn codes_after(&self, contact_id: &str, current: &[String]) -> Vec<String> {
        let code = |r: usize| self.relations.relations[r].code.clone();
        let mut held: BTreeSet<String> = BTreeSet::new();
        held.extend(
            self.by_contact
                .get(contact_id)
                .into_iter()
                .flatten()
                .map(|(r, _)| code(*r)),
        );
        held.extend(
            self.new_links
                .get(contact_id)
                .into_iter()
                .flatten()
                .map(|(r, _, _)| code(*r)),
        );
        held.extend(
            self.gained_codes
                .get(contact_id)
                .into_iter()
                .flatten()
                .cloned(),
        );
        let lost = self.lost_codes.get(contact_id);
        let mut wanted: Vec<String> = Vec::new();
        for code in current {
            let configured = self.relations.index_of(code).is_some();
            // Held, or still asked for (not just lost); other codes are left.
            let keep =
                !configured || held.contains(code) || !lost.is_some_and(|l| l.contains(code));
            if keep && !wanted.contains(code) {
                wanted.push(code.clone());
            }
        }
        for code in held {
            if !wanted.contains(&code) {
                wanted.push(code);
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
                let mut after = contact.fields.clone();
                for change in &hub.contact_changes {
                    after.set(change.field.clone(), change.new.clone());
                }
                hub.contact_after_hash = Some(after.content_hash());
            }
        }
    }
}
