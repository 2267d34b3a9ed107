//! Step 1: requests the plan refused (R17), and links whose contact or account is gone
//! or that an operator dropped (R12, R13).

use tandem_state::{LogEntry, RefusedRequest};

use super::{Applier, Failed};
use crate::plan::{Unlink, UnlinkReason};
use crate::report::Failure;
use crate::run::{RECHECK, UNKNOWN_KEYS};
use crate::side::Side;

impl Applier<'_> {
    /// Requests refused by the plan fail like writes do: twice the same way parks them.
    pub(super) fn refusals(&mut self) {
        let rejected = std::mem::take(&mut self.plan.rejected);
        for rejection in &rejected {
            let key = (rejection.code.clone(), rejection.contact_id.clone());
            let previous =
                (self.previous.refused.get(&key)).map(|p| (p.failure_count, Some(p.error.clone())));
            let failure = Failure {
                code: rejection.code.clone(),
                contact_id: Some(rejection.contact_id.clone()),
                account_id: None,
                side: Side::Contact,
                error: rejection.error.clone(),
                parked: false,
            };
            let previous = previous.as_ref().map(|(n, e)| (*n, e.as_deref()));
            let (count, parked) = self.fail(Failed::Request, previous, failure);
            self.batch.upsert_refused.push(RefusedRequest {
                code: rejection.code.clone(),
                contact_id: rejection.contact_id.clone(),
                error: rejection.error.clone(),
                run_id: Some(self.log.run_id),
                failure_count: count,
                parked,
                updated_at: self.log.now,
            });
            if !parked {
                // Looked at again next run, even if nobody edits it (R17).
                self.contacts.settle(&rejection.contact_id);
                self.recheck_contacts.push(rejection.contact_id.clone());
            }
        }
        self.plan.rejected = rejected;
    }

    /// Links whose contact or account is gone, or that an operator dropped.
    pub(super) fn unlinks(&mut self) {
        let unlinks = std::mem::take(&mut self.plan.unlinks);
        for unlink in &unlinks {
            self.batch
                .delete_links
                .push((unlink.code.clone(), unlink.contact_id.clone()));
            self.look_again_at_what_stays(unlink);
            self.forget_match_keys(unlink);
            let source = self.remember_why(unlink);
            let entry = LogEntry::Unlinked {
                reason: unlink.reason.as_str().to_owned(),
            };
            let account = Some(unlink.account_id.as_str());
            self.log(&unlink.contact_id, &unlink.code, account, source, &entry);
        }
        self.plan.unlinks = unlinks;
        for (code, contact_id) in &self.plan.new_lost_codes {
            let mark = (code.clone(), contact_id.clone(), true);
            self.batch.codes_lost.push(mark);
        }
    }

    /// The side that stays is unlinked now: looked at again next run, so matching (R4)
    /// sees it even if nobody edits it. Records in play this run were.
    fn look_again_at_what_stays(&mut self, unlink: &Unlink) {
        if unlink.reason != UnlinkReason::AccountDeleted
            && let Some(r) = self.relations.index_of(&unlink.code)
            && !self.accounts[r].hashes.contains_key(&unlink.account_id)
        {
            self.batch.set_hashes.push((
                self.accounts[r].scope.clone(),
                unlink.account_id.clone(),
                RECHECK,
            ));
        }
        if unlink.reason != UnlinkReason::ContactDeleted
            && !self.contacts.hashes.contains_key(&unlink.contact_id)
        {
            self.recheck_contacts.push(unlink.contact_id.clone());
        }
    }

    /// The records the unlink frees were not matched under its relation when they were
    /// read (they were linked): their match keys are stored as unknown, so their next
    /// edit lets matching see them.
    fn forget_match_keys(&mut self, unlink: &Unlink) {
        if let Some(seen) = self.contacts.hashes.get_mut(&unlink.contact_id) {
            seen.keys = UNKNOWN_KEYS;
        }
        if let Some(r) = self.relations.index_of(&unlink.code)
            && let Some(seen) = self.accounts[r].hashes.get_mut(&unlink.account_id)
        {
            seen.keys = UNKNOWN_KEYS;
        }
    }

    /// The contact is to lose the code (R9) until a write to it lands: remembered, so a
    /// code still listed after a failed or cut-short write is not a request (R5).
    fn code_lost(&mut self, unlink: &Unlink) {
        let mark = (unlink.code.clone(), unlink.contact_id.clone(), true);
        self.batch.codes_lost.push(mark);
    }

    /// What later runs must remember of an unlink; the log's source of the entry.
    fn remember_why(&mut self, unlink: &Unlink) -> &'static str {
        match unlink.reason {
            UnlinkReason::ContactDeleted => {
                // The user deleted the contact: the account gets no new one unless
                // asked (R12 over R6).
                let numbers_contacts = self
                    .relations
                    .index_of(&unlink.code)
                    .is_some_and(|r| self.relations.relations[r].create_contacts);
                if numbers_contacts {
                    self.batch.contact_deleted.push((
                        unlink.code.clone(),
                        unlink.account_id.clone(),
                        true,
                    ));
                }
                "contact"
            }
            UnlinkReason::AccountDeleted => {
                self.code_lost(unlink);
                "account"
            }
            UnlinkReason::Operator => {
                self.code_lost(unlink);
                // Match rules must not link the pair again (R4).
                self.batch.unlinked_pairs.push((
                    unlink.code.clone(),
                    unlink.contact_id.clone(),
                    unlink.account_id.clone(),
                    true,
                ));
                "operator"
            }
        }
    }
}
