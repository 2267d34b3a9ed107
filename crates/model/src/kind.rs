use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kinds of record Tandem synchronises. Contacts live on the contact side; the
/// other three are *accounts* on an ERP side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Contact,
    Customer,
    Vendor,
    BankAccount,
}

impl EntityKind {
    pub const ALL: [EntityKind; 4] = [
        EntityKind::Contact,
        EntityKind::Customer,
        EntityKind::Vendor,
        EntityKind::BankAccount,
    ];

    /// The singular snake_case name used in config and output (`bank_account`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Contact => "contact",
            EntityKind::Customer => "customer",
            EntityKind::Vendor => "vendor",
            EntityKind::BankAccount => "bank_account",
        }
    }

    /// The plural name used for collections, e.g. file names (`bank_accounts`).
    pub fn plural(self) -> &'static str {
        match self {
            EntityKind::Contact => "contacts",
            EntityKind::Customer => "customers",
            EntityKind::Vendor => "vendors",
            EntityKind::BankAccount => "bank_accounts",
        }
    }

    /// Customers, vendors and bank accounts are accounts; contacts are not.
    pub fn is_account(self) -> bool {
        self != EntityKind::Contact
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown record kind `{0}`; expected one of: contact, customer, vendor, bank_account")]
pub struct ParseKindError(pub String);

impl FromStr for EntityKind {
    type Err = ParseKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntityKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s || k.plural() == s)
            .ok_or_else(|| ParseKindError(s.to_owned()))
    }
}

/// Whether a contact is a company or a person (field `contact_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactType {
    Company,
    Person,
}

impl ContactType {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactType::Company => "company",
            ContactType::Person => "person",
        }
    }

    /// Reads the `contact_type` field value; anything but `person` is a company,
    /// because relations belong to companies and that is the safe default.
    pub fn from_field(value: Option<&str>) -> ContactType {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("person") => ContactType::Person,
            _ => ContactType::Company,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_singular_and_plural_names() {
        for kind in EntityKind::ALL {
            assert_eq!(kind.as_str().parse::<EntityKind>().unwrap(), kind);
            assert_eq!(kind.plural().parse::<EntityKind>().unwrap(), kind);
        }
        let err = "customers2".parse::<EntityKind>().unwrap_err();
        assert!(err.to_string().contains("customers2"));
    }

    #[test]
    fn only_contacts_are_not_accounts() {
        assert!(!EntityKind::Contact.is_account());
        assert!(EntityKind::Customer.is_account());
        assert!(EntityKind::BankAccount.is_account());
    }

    #[test]
    fn contact_type_defaults_to_company() {
        assert_eq!(ContactType::from_field(None), ContactType::Company);
        assert_eq!(
            ContactType::from_field(Some(" Person ")),
            ContactType::Person
        );
        assert_eq!(
            ContactType::from_field(Some("company")),
            ContactType::Company
        );
    }
}
