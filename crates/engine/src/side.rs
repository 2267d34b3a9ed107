//! The vocabulary shared by the planner, the apply step and the report.

use serde::Serialize;

pub use tandem_state::Side;

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
