//! Which failed tries are tried again, and after how long.

use std::time::{Duration, SystemTime};

use backon::ExponentialBuilder;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::RetrySettings;

/// Why one try failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection was made: the server never saw the request.
    NotSent(String),
    /// The connection broke or timed out after the request went out: the server may
    /// have acted on it.
    Lost { reason: String, timed_out: bool },
    /// TLS refused the server (or the server refused us): retrying cannot help.
    Tls(String),
    /// The request could not be built (a header value that is none).
    Invalid(String),
    /// A status that asks to try again (408, 423, 429, 5xx).
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
}

impl Failure {
    /// Whether to try again: always when the server certainly did not act on the
    /// request, otherwise only when it may be sent twice (`safe`).
    pub(crate) fn retryable(&self, safe: bool) -> bool {
        match self {
            Failure::Tls(_) | Failure::Invalid(_) => false,
            Failure::NotSent(_) => true,
            Failure::Lost { .. } | Failure::Status { .. } => safe || !self.maybe_acted(),
        }
    }

    /// Whether the server may have acted on the request. 429 and 503 say it did not
    /// (nginx's `limit_req` answers 503 too), nor does 423 (WebDAV: the resource is
    /// locked, as Xandikos answers a write while another is stored in the same book);
    /// a 500, 502 or 504 may come after it did.
    pub(crate) fn maybe_acted(&self) -> bool {
        match self {
            Failure::NotSent(_) | Failure::Tls(_) | Failure::Invalid(_) => false,
            Failure::Lost { .. } => true,
            Failure::Status { status, .. } => !matches!(status.as_u16(), 423 | 429 | 503),
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Statuses that are worth another try.
pub(crate) fn is_retry_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 423 | 429 | 500 | 502 | 503 | 504)
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date (a date in the
/// past asks for no wait).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with full jitter for the tries after the first.
pub(crate) fn backoff(settings: &RetrySettings, attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_factor(2.0)
        .with_min_delay(settings.min_delay)
        .with_max_delay(settings.max_delay)
        .with_max_times(attempts.saturating_sub(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(RETRY_AFTER, earlier.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn only_what_the_server_did_not_act_on_is_retried_when_unsafe() {
        let status = |s: u16| Failure::Status {
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
            body: vec![],
        };
        assert!(Failure::NotSent("refused".into()).retryable(false));
        assert!(status(429).retryable(false));
        assert!(status(503).retryable(false));
        assert!(
            status(423).retryable(false),
            "locked: not stored, try again"
        );
        assert!(!status(500).retryable(false));
        assert!(!status(504).retryable(false));
        let lost = Failure::Lost {
            reason: "reset".into(),
            timed_out: false,
        };
        assert!(!lost.retryable(false));
        assert!(lost.retryable(true));
        assert!(status(502).retryable(true));
        assert!(!Failure::Tls("unknown issuer".into()).retryable(true));
    }
}
