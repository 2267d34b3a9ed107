//! `tandem link` (R4, explicitly) and links of an earlier run to try again (R17).

use super::*;

/// A link to make: (code, contact id, account id, how).
type Wanted = (String, String, String, NewLink);

impl<'a> Planner<'a> {
    /// `tandem link <CODE> <contact> <account>` (R4, explicitly), and links whose first
    /// sync failed in an earlier run (remembered the old way), tried again (R17).
    pub(super) fn operator_links(&mut self) {
        self.refuse_unconfigured_creates();
        let input = self.input;
        let requested = input
            .directives
            .link
            .iter()
            .map(|(code, contact, account)| {
                let how = NewLink::Operator;
                (code.clone(), contact.clone(), account.clone(), how)
            });
        let directives = input.directives.link.len();
        let wanted: Vec<Wanted> = requested.chain(retried_links(input)).collect();
        for (n, (code, contact_id, account_id, how)) in wanted.into_iter().enumerate() {
            let by_operator = n < directives;
            let error = match self.relations.index_of(&code) {
                None if by_operator => Some(format!("no relation `{code}` is configured")),
                None => continue,
                Some(r) => self.link_by_hand(r, &contact_id, &account_id, how),
            };
            match error {
                Some(error) if by_operator => self.reject(&code, &contact_id, error),
                // A retried link that no longer makes sense is dropped; matching decides anew.
                Some(_) => self.plan.done_pending.links.push((code, contact_id)),
                None => {}
            }
        }
    }

    fn refuse_unconfigured_creates(&mut self) {
        for (code, contact) in &self.input.directives.create {
            if self.relations.index_of(code).is_none() {
                let error = format!("no relation `{code}` is configured");
                self.reject(code, contact, error);
            }
        }
    }

    /// Links `contact_id` to `account_id` under relation `r`; the reason when it cannot
    /// (R2, R3, a record not found).
    fn link_by_hand(
        &mut self,
        r: usize,
        contact_id: &str,
        account_id: &str,
        how: NewLink,
    ) -> Option<String> {
        let (code, kind) = (
            &self.relations.relations[r].code,
            self.relations.relations[r].kind,
        );
        let contact = self.input.contacts.get_key_value(contact_id);
        let account = self.accounts(r).records.get_key_value(account_id);
        let (Some((c, contact)), Some((a, _))) = (contact, account) else {
            return Some(match contact {
                None => format!("contact {contact_id} not found"),
                Some(_) => format!("{kind} {account_id} not found"),
            });
        };
        if !may_hold(contact, kind) {
            return Some(match contact.text(field::COMPANY_ID) {
                Some(company) => format!(
                    "contact {contact_id} is a person of company {company}: link the company, which holds the relation (R3)"
                ),
                None => format!(
                    "contact {contact_id} is a person without a company; {kind}s need a company contact (R3)"
                ),
            });
        }
        if self.is_linked(r, contact_id) {
            return Some(format!(
                "contact {contact_id} already has a {code} link (R2); unlink it first"
            ));
        }
        if self.linked_accounts[r].contains(account_id) {
            return Some(format!(
                "{kind} {account_id} already belongs to another contact (R2); unlink it first"
            ));
        }
        self.linked_accounts[r].insert(a);
        self.add_new_link(c, r, a, how);
        None
    }
}

/// Links whose first sync failed in a run before links were stored with their intent
/// (an older state's pending links), tried again.
fn retried_links(input: &PlanInput) -> impl Iterator<Item = Wanted> + '_ {
    input.pending.links.iter().filter(|p| !p.parked).map(|p| {
        let how = match p.by {
            LinkedBy::Operator => NewLink::Operator,
            LinkedBy::Match { tier } => NewLink::Match { tier },
        };
        (
            p.code.clone(),
            p.contact_id.clone(),
            p.account_id.clone(),
            how,
        )
    })
}
