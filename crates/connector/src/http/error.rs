use std::time::Duration;

use crate::ConnectorError;

/// A request that failed for good (after its retries), typed for the connector.
///
/// Messages name the request and what to check; they never hold a secret (server text
/// in them went through the connector's [`Redactor`](super::Redactor)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{what}: cannot connect ({reason}){}; check `url` and that the server is running", tries(*.attempts))]
    Connect {
        what: String,
        reason: String,
        attempts: u32,
    },
    #[error("{what}: no complete reply within {} s (`timeout`){}", after.as_secs_f64(), tries(*.attempts))]
    Timeout {
        what: String,
        after: Duration,
        attempts: u32,
    },
    #[error("{what}: the connection broke before a complete reply ({reason}){}", tries(*.attempts))]
    Broken {
        what: String,
        reason: String,
        attempts: u32,
    },
    #[error("{what}: TLS: {reason}")]
    Tls { what: String, reason: String },
    #[error("{what}: the request could not be made: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{what}: HTTP {status}{}{}", text_part(.text), tries(*.attempts))]
    Status {
        what: String,
        status: u16,
        retry_after: Option<Duration>,
        /// The server's text, shortened and redacted.
        text: String,
        attempts: u32,
    },
}

fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} tries)")
    } else {
        String::new()
    }
}

fn text_part(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

impl HttpError {
    /// The error as the engine sees it: TLS problems are configuration (no retry will
    /// fix them), 429 is rate limited, everything else may pass later (transient).
    pub fn into_connector(self) -> ConnectorError {
        match self {
            HttpError::Tls { .. } => ConnectorError::config(self.to_string()),
            HttpError::Invalid { .. } => ConnectorError::fatal(self.to_string()),
            HttpError::Status {
                status: 429,
                retry_after,
                ..
            } => ConnectorError::rate_limited(retry_after),
            other => ConnectorError::transient(other.to_string()),
        }
    }

    /// Whether the server may have acted on the request before it failed.
    pub fn maybe_acted(&self) -> bool {
        match self {
            HttpError::Connect { .. } | HttpError::Tls { .. } | HttpError::Invalid { .. } => false,
            HttpError::Timeout { .. } | HttpError::Broken { .. } => true,
            HttpError::Status { status, .. } => !matches!(status, 429 | 503),
        }
    }
}

impl From<HttpError> for ConnectorError {
    fn from(e: HttpError) -> ConnectorError {
        e.into_connector()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_check() {
        let e = HttpError::Connect {
            what: "CardDAV PROPFIND https://x/".into(),
            reason: "Connection refused (os error 111)".into(),
            attempts: 5,
        };
        assert_eq!(
            e.to_string(),
            "CardDAV PROPFIND https://x/: cannot connect (Connection refused (os error 111)) \
             (after 5 tries); check `url` and that the server is running"
        );
        assert!(matches!(
            e.into_connector(),
            ConnectorError::Transient { .. }
        ));
        let e = HttpError::Status {
            what: "Tryton".into(),
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
            text: String::new(),
            attempts: 1,
        };
        assert_eq!(
            e.into_connector(),
            ConnectorError::rate_limited(Some(Duration::from_secs(2)))
        );
    }
}
