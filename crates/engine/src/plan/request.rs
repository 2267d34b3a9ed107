//! Who holds a relation a contact asks for (R3, R5).

use super::*;

impl<'a> Planner<'a> {
    /// Who holds relation `r` when `contact` asks for it (R3): `Ok(None)` when that
    /// contact already holds it.
    pub(super) fn holder(
        &self,
        r: usize,
        contact: &'a PackedRecord,
    ) -> Result<Option<&'a str>, String> {
        let relation = &self.relations.relations[r];
        let person =
            ContactType::from_field(contact.text(field::CONTACT_TYPE)) == ContactType::Person;
        let holder: &'a PackedRecord = match (person, contact.text(field::COMPANY_ID)) {
            (true, Some(company_id)) => match self.input.contacts.get(company_id) {
                Some(company) => company,
                // Not read this run: it did not change and holds all its codes.
                None if self
                    .by_contact
                    .get(company_id)
                    .is_some_and(|l| l.iter().any(|(lr, _)| *lr == r)) =>
                {
                    return Ok(None);
                }
                None => {
                    return Err(format!(
                        "person {} asks for {} through company {company_id}, which was not found",
                        contact.id(),
                        relation.code
                    ));
                }
            },
            (true, None) if relation.kind != EntityKind::Customer => {
                return Err(format!(
                    "person {} has no company; {}s need a company contact (R3): set the person's company_id or ask on the company",
                    contact.id(),
                    relation.kind
                ));
            }
            _ => contact,
        };
        if self.is_linked(r, holder.id()) {
            Ok(None)
        } else {
            Ok(Some(holder.id()))
        }
    }
}

/// Why a contact's request for `code` needs nothing: it, or for a person its company
/// (R3), already holds the relation.
pub(super) fn already_held(contact: &PackedRecord, code: &str) -> String {
    let person = ContactType::from_field(contact.text(field::CONTACT_TYPE)) == ContactType::Person;
    let id = contact.id();
    match contact.text(field::COMPANY_ID) {
        Some(company) if person => format!(
            "contact {id} is a person of company {company}, which already has a {code} link (R3): \
             `tandem resolve {id} {code}` names the account"
        ),
        _ => format!("contact {id} already has a {code} link (R2)"),
    }
}
