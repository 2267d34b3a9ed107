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

impl PartialEq<&str> for Side {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
