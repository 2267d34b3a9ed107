//! Links whose side is gone or that an operator dropped (R12, R13).

use super::*;

impl<'a> Planner<'a> {
    /// Links whose contact or account is gone, or that an operator dropped; index
    /// the rest. Links of codes no longer configured are left alone (R1).
    pub(super) fn unlink_and_index(&mut self) {
        let input = self.input;
        for link in &input.links {
            let Some(r) = self.relations.index_of(&link.code) else {
                continue;
            };
            let reason = if input.deleted_contacts.contains(&link.contact_id) {
                Some(UnlinkReason::ContactDeleted)
            } else if self.accounts(r).deleted.contains(&link.account_id) {
                Some(UnlinkReason::AccountDeleted)
            } else if input
                .directives
                .unlink
                .iter()
                .any(|(code, contact)| *code == link.code && *contact == link.contact_id)
            {
                Some(UnlinkReason::Operator)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.plan.unlinks.push(Unlink {
                    code: link.code.clone(),
                    contact_id: link.contact_id.clone(),
                    account_id: link.account_id.clone(),
                    reason,
                });
                if reason == UnlinkReason::ContactDeleted {
                    self.contact_deleted_now
                        .insert((r, link.account_id.as_str()));
                }
                if reason != UnlinkReason::ContactDeleted {
                    self.lost_codes
                        .entry(&link.contact_id)
                        .or_default()
                        .insert(link.code.clone());
                }
                continue;
            }
            self.linked_accounts[r].insert(&link.account_id);
            self.by_contact
                .entry(&link.contact_id)
                .or_default()
                .push((r, link));
        }
        for (code, contact) in &input.directives.unlink {
            if !self
                .plan
                .unlinks
                .iter()
                .any(|u| &u.code == code && &u.contact_id == contact)
            {
                self.reject(
                    code,
                    contact,
                    format!("contact {contact} has no {code} link to remove"),
                );
            }
        }
    }
}
