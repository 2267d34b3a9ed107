//! The vocabulary shared by the planner, the apply step and the report.

use serde::Serialize;

/// Which record of a pair: the contact or the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Contact,
    Account,
}

impl Side {
    /// As the state and the log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Contact => "contact",
            Side::Account => "account",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who won a conflict (R15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Winner {
    /// The contact's value stands.
    Contact,
    /// The account of this relation code won.
    Account(String),
    /// Nobody yet: the field waits in the conflict queue (`manual`).
    Manual,
}

impl Winner {
    /// As the log and the report spell it: `contact`, the relation code, or `manual`.
    pub fn as_str(&self) -> &str {
        match self {
            Winner::Contact => "contact",
            Winner::Account(code) => code,
            Winner::Manual => "manual",
        }
    }
}

impl Serialize for Winner {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Winner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Side {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
