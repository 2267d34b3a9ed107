//! `tandem link` (R4, explicitly) and links of an earlier run to try again (R17).

use super::*;

impl<'a> Planner<'a> {
    /// `tandem link <CODE> <contact> <account>` (R4, explicitly), and links whose first
    /// sync failed in an earlier run, tried again (R17).
    pub(super) fn operator_links(&mut self) {
        let input = self.input;
        for (code, _) in &input.directives.create {
            if self.relations.index_of(code).is_none() {
                let contact = input
                    .directives
                    .create
                    .iter()
                    .find(|(c, _)| c == code)
                    .map(|(_, k)| k.clone())
                    .unwrap_or_default();
                self.reject(
                    code,
                    &contact,
                    format!("no relation `{code}` is configured"),
                );
            }
        }
        let retried: Vec<(String, String, String, NewLink)> = input
            .pending
            .iter()
            .filter(|p| p.side == PENDING_LINK && !p.parked)
            .filter_map(|p| {
                let account = p.fields.text("account_id")?.to_owned();
                let how = match p.fields.text("by") {
                    Some("operator") => NewLink::Operator,
                    _ => NewLink::Match {
                        tier: p
                            .fields
                            .text("tier")
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0),
                    },
                };
                Some((p.code.clone(), p.source_id.clone(), account, how))
            })
            .collect();
        let requested = input
            .directives
            .link
            .iter()
            .map(|(code, contact, account)| {
                (
                    code.clone(),
                    contact.clone(),
                    account.clone(),
                    NewLink::Operator,
                )
            });
        let directives = input.directives.link.len();
        for (n, (code, contact_id, account_id, how)) in requested.chain(retried).enumerate() {
            let by_operator = n < directives;
            let Some(r) = self.relations.index_of(&code) else {
                if by_operator {
                    self.reject(
                        &code,
                        &contact_id,
                        format!("no relation `{code}` is configured"),
                    );
                }
                continue;
            };
            let kind = self.relations.relations[r].kind;
            let error = match (
                input.contacts.get_key_value(&contact_id),
                self.accounts(r).records.get_key_value(&account_id),
            ) {
                (None, _) => Some(format!("contact {contact_id} not found")),
                (_, None) => Some(format!("{kind} {account_id} not found")),
                (Some((_, c)), _) if !may_hold(c, kind) => {
                    Some(match c.fields.text(field::COMPANY_ID) {
                        Some(company) => format!(
                            "contact {contact_id} is a person of company {company}: link the company, which holds the relation (R3)"
                        ),
                        None => format!(
                            "contact {contact_id} is a person without a company; {kind}s need a company contact (R3)"
                        ),
                    })
                }
                (Some(_), Some(_)) if self.is_linked(r, &contact_id) => Some(format!(
                    "contact {contact_id} already has a {code} link (R2); unlink it first"
                )),
                (Some(_), Some(_)) if self.linked_accounts[r].contains(account_id.as_str()) => {
                    Some(format!(
                        "{kind} {account_id} already belongs to another contact (R2); unlink it first"
                    ))
                }
                (Some((c, _)), Some((a, _))) => {
                    self.linked_accounts[r].insert(a);
                    self.new_links.entry(c).or_default().push((r, a, how));
                    self.plan.counts[r].linked += 1;
                    None
                }
            };
            match error {
                Some(error) if by_operator => self.reject(&code, &contact_id, error),
                // A retried link that no longer makes sense is dropped; matching decides anew.
                Some(_) => self.plan.done_pending.push((
                    code.clone(),
                    PENDING_LINK.to_owned(),
                    contact_id.clone(),
                )),
                None => {}
            }
        }
    }
}
