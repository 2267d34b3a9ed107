//! Canonical field names and the per-kind field sets (R8).

use crate::EntityKind;

pub const NAME: &str = "name";
pub const NAME_2: &str = "name_2";
pub const ADDRESS: &str = "address";
pub const ADDRESS_2: &str = "address_2";
pub const CITY: &str = "city";
pub const POST_CODE: &str = "post_code";
pub const COUNTY: &str = "county";
pub const COUNTRY_CODE: &str = "country_code";
pub const PHONE: &str = "phone";
pub const MOBILE_PHONE: &str = "mobile_phone";
pub const FAX: &str = "fax";
pub const EMAIL: &str = "email";
pub const HOME_PAGE: &str = "home_page";
pub const VAT_REGISTRATION_NO: &str = "vat_registration_no";
pub const REGISTRATION_NO: &str = "registration_no";
pub const CURRENCY_CODE: &str = "currency_code";
pub const LANGUAGE_CODE: &str = "language_code";
pub const SALESPERSON_CODE: &str = "salesperson_code";
pub const TERRITORY_CODE: &str = "territory_code";

pub const CONTACT_TYPE: &str = "contact_type";
pub const COMPANY_ID: &str = "company_id";
pub const FIRST_NAME: &str = "first_name";
pub const SURNAME: &str = "surname";
pub const JOB_TITLE: &str = "job_title";
pub const BUSINESS_RELATIONS: &str = "business_relations";

pub const IBAN: &str = "iban";
pub const SWIFT_CODE: &str = "swift_code";
pub const BANK_ACCOUNT_NO: &str = "bank_account_no";
pub const BANK_BRANCH_NO: &str = "bank_branch_no";

/// Every canonical name: those of every kind, then those of contacts only, then those
/// of bank accounts only (the lists below are its parts).
const ALL: [&str; 29] = [
    NAME,
    NAME_2,
    ADDRESS,
    ADDRESS_2,
    CITY,
    POST_CODE,
    COUNTY,
    COUNTRY_CODE,
    PHONE,
    MOBILE_PHONE,
    FAX,
    EMAIL,
    HOME_PAGE,
    VAT_REGISTRATION_NO,
    REGISTRATION_NO,
    CURRENCY_CODE,
    LANGUAGE_CODE,
    SALESPERSON_CODE,
    TERRITORY_CODE,
    CONTACT_TYPE,
    COMPANY_ID,
    FIRST_NAME,
    SURNAME,
    JOB_TITLE,
    BUSINESS_RELATIONS,
    IBAN,
    SWIFT_CODE,
    BANK_ACCOUNT_NO,
    BANK_BRANCH_NO,
];

/// Fields every kind can carry.
pub const COMMON: &[&str] = ALL.split_at(19).0;

/// Fields only contacts carry.
pub const CONTACT_ONLY: &[&str] = ALL.split_at(19).1.split_at(6).0;

/// Fields only bank accounts carry.
pub const BANK_ONLY: &[&str] = ALL.split_at(25).1;

/// Returns the `'static` canonical spelling of `name` if it is a canonical field of any
/// kind. Connector-specific extras (`x_<name>`) are not canonical.
pub fn canonical(name: &str) -> Option<&'static str> {
    canonical_slot(name).copied()
}

/// The static slot of `name`'s canonical spelling, which a [`crate::FieldName`] points
/// to (one slot per name, so names compare by address).
pub(crate) fn canonical_slot(name: &str) -> Option<&'static &'static str> {
    SLOTS.iter().find(|f| **f == name)
}

/// The position of a canonical slot in [`SLOTS`] (what a packed field set stores
/// instead of the name), found by address.
pub(crate) fn slot_index(slot: &'static &'static str) -> Option<u8> {
    (SLOTS.iter())
        .position(|s| std::ptr::eq(s, slot))
        .map(|i| i as u8)
}

/// Every canonical name, each in one slot. A `static`, not the `const` lists: only a
/// static has one address.
pub(crate) static SLOTS: [&str; 29] = ALL;

/// Whether `name` is a canonical field of records of `kind`.
pub fn is_canonical_for(kind: EntityKind, name: &str) -> bool {
    COMMON.contains(&name)
        || (kind == EntityKind::Contact && CONTACT_ONLY.contains(&name))
        || (kind == EntityKind::BankAccount && BANK_ONLY.contains(&name))
}

/// Whether `name` is a connector-specific extra field (`x_<name>`).
pub fn is_extra(name: &str) -> bool {
    name.len() > 2 && name.starts_with("x_")
}

/// The fields a contact shares with an account of `kind`: what sync compares and
/// carries between the two (R8). Fields only one side has are never in the set.
pub fn shared(kind: EntityKind) -> &'static [&'static str] {
    match kind {
        EntityKind::Contact => &[],
        EntityKind::Customer | EntityKind::Vendor => COMMON,
        // Bank accounts carry no VAT or registration number and no commercial codes.
        EntityKind::BankAccount => &[
            NAME,
            NAME_2,
            ADDRESS,
            ADDRESS_2,
            CITY,
            POST_CODE,
            COUNTY,
            COUNTRY_CODE,
            PHONE,
            MOBILE_PHONE,
            FAX,
            EMAIL,
            HOME_PAGE,
            LANGUAGE_CODE,
        ],
    }
}

/// The default preserve list of `kind`: shared fields that sync never overwrites on a
/// record of this kind. The record owns them: its value flows to the other side, and
/// the other side's edits are not written back into it (R8).
pub fn preserve(kind: EntityKind) -> &'static [&'static str] {
    match kind {
        EntityKind::Contact | EntityKind::BankAccount => &[],
        // The ERP owns the commercial terms of a customer or vendor.
        EntityKind::Customer | EntityKind::Vendor => {
            &[CURRENCY_CODE, SALESPERSON_CODE, TERRITORY_CODE]
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lists_of_names_are_the_parts_of_all() {
        assert_eq!(COMMON.last(), Some(&TERRITORY_CODE));
        assert_eq!(
            CONTACT_ONLY,
            [
                CONTACT_TYPE,
                COMPANY_ID,
                FIRST_NAME,
                SURNAME,
                JOB_TITLE,
                BUSINESS_RELATIONS
            ]
        );
        assert_eq!(
            BANK_ONLY,
            [IBAN, SWIFT_CODE, BANK_ACCOUNT_NO, BANK_BRANCH_NO]
        );
        assert_eq!(
            COMMON.len() + CONTACT_ONLY.len() + BANK_ONLY.len(),
            SLOTS.len()
        );
    }

    use super::*;

    #[test]
    fn r8_bank_accounts_share_no_vat_number() {
        assert!(!shared(EntityKind::BankAccount).contains(&VAT_REGISTRATION_NO));
        assert!(shared(EntityKind::Customer).contains(&VAT_REGISTRATION_NO));
        assert!(shared(EntityKind::Vendor).contains(&VAT_REGISTRATION_NO));
    }

    #[test]
    fn r8_one_sided_fields_are_never_shared() {
        for kind in EntityKind::ALL {
            for field in shared(kind) {
                assert!(!CONTACT_ONLY.contains(field), "{field} shared for {kind}");
                assert!(!BANK_ONLY.contains(field), "{field} shared for {kind}");
            }
            for field in preserve(kind) {
                assert!(
                    kind == EntityKind::Contact || shared(kind).contains(field),
                    "preserved {field} of {kind} is not shared"
                );
            }
        }
    }

    #[test]
    fn canonical_names_are_recognised() {
        assert_eq!(canonical("iban"), Some(IBAN));
        assert_eq!(canonical("business_relations"), Some(BUSINESS_RELATIONS));
        assert_eq!(canonical("x_rating"), None);
        assert!(is_extra("x_rating"));
        assert!(!is_extra("x_"));
        assert!(is_canonical_for(EntityKind::BankAccount, IBAN));
        assert!(!is_canonical_for(EntityKind::Customer, IBAN));
        assert!(!is_canonical_for(EntityKind::Customer, FIRST_NAME));
    }
}
