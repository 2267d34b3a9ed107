use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong talking to an external system, typed so the engine can
/// decide: retry later, report a conflict (R15), fail one record (R17) or stop.
///
/// Messages are for people: they say what and where (file and line, record id) and
/// never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum ConnectorError {
    #[error("rate limited{}", retry_after_text(*.retry_after_ms))]
    RateLimited { retry_after_ms: Option<u64> },
    #[error("temporary failure: {message}")]
    Transient { message: String },
    #[error("record {id} changed since it was read (version conflict)")]
    Conflict { id: String },
    #[error("record {id} not found")]
    NotFound { id: String },
    #[error("invalid record{}: {message}", id_text(.id))]
    InvalidRecord { id: Option<String>, message: String },
    #[error("authentication failed: {message}")]
    Auth { message: String },
    #[error("configuration error: {message}")]
    Config { message: String },
    #[error("{message}")]
    Fatal { message: String },
}

fn retry_after_text(ms: Option<u64>) -> String {
    ms.map(|ms| format!(", retry after {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_default()
}

fn id_text(id: &Option<String>) -> String {
    id.as_ref().map(|id| format!(" {id}")).unwrap_or_default()
}

impl ConnectorError {
    pub fn transient(message: impl Into<String>) -> Self {
        ConnectorError::Transient {
            message: message.into(),
        }
    }
    pub fn invalid(id: Option<&str>, message: impl Into<String>) -> Self {
        ConnectorError::InvalidRecord {
            id: id.map(str::to_owned),
            message: message.into(),
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        ConnectorError::Config {
            message: message.into(),
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        ConnectorError::Fatal {
            message: message.into(),
        }
    }

    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        ConnectorError::RateLimited {
            retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
        }
    }

    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. } | ConnectorError::Transient { .. }
        )
    }

    /// Whether a write that failed with this error may still have been carried out: a
    /// transient failure (a reply lost after the server acted, a timeout) leaves it
    /// unknown. Every other error says it was not (rate limited, refused, not allowed).
    pub fn may_have_acted(&self) -> bool {
        matches!(self, ConnectorError::Transient { .. })
    }

    /// Whether the error concerns one record only (the run goes on without it, R17),
    /// rather than the connection or the configuration.
    pub fn is_record_error(&self) -> bool {
        matches!(
            self,
            ConnectorError::Conflict { .. }
                | ConnectorError::NotFound { .. }
                | ConnectorError::InvalidRecord { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_and_where() {
        assert_eq!(
            ConnectorError::invalid(Some("C7"), "name is required").to_string(),
            "invalid record C7: name is required"
        );
        assert_eq!(
            ConnectorError::rate_limited(Some(Duration::from_millis(1500))).to_string(),
            "rate limited, retry after 1.5 s"
        );
        assert!(ConnectorError::transient("timeout").is_retryable());
        assert!(ConnectorError::Conflict { id: "K1".into() }.is_record_error());
        assert!(!ConnectorError::fatal("disk full").is_record_error());
    }

    #[test]
    fn errors_cross_a_json_boundary_intact() {
        let e = ConnectorError::NotFound { id: "K9".into() };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"error":"not_found","id":"K9"}"#);
        assert_eq!(serde_json::from_str::<ConnectorError>(&json).unwrap(), e);
    }
}
