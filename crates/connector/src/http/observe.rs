//! A hook for whoever counts HTTP requests (`tandem run`'s `/metrics`): every request
//! a client sends, once its tries are over, is told to the observer set for the process.
//! Nothing is recorded when none is set.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One request, after its last try.
#[derive(Debug, Clone, Copy)]
pub struct RequestEvent<'a> {
    /// The client's label (`"CardDAV"`, `"Tryton"`).
    pub label: &'static str,
    /// `scheme://host:port` of the request: which server (and so which connector).
    pub origin: &'a str,
    /// From the first try to the end of the last, waits between tries included.
    pub elapsed: Duration,
    /// Tries made: 1 when the first one settled it.
    pub tries: u32,
    /// Whether a reply came (any status the client hands on); `false` when it gave up.
    pub ok: bool,
}

/// Receives every [`RequestEvent`]; must be quick (it runs on the request's task).
pub trait RequestObserver: Send + Sync {
    fn request(&self, event: &RequestEvent<'_>);
}

static OBSERVER: OnceLock<Arc<dyn RequestObserver>> = OnceLock::new();

/// Sets the process's observer; `false` if one was set already (it stays).
pub fn set_request_observer(observer: Arc<dyn RequestObserver>) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// Tells the observer, if any, about a request to `url` (its origin is worked out only
/// then).
pub(crate) fn observe(label: &'static str, url: &str, elapsed: Duration, tries: u32, ok: bool) {
    if let Some(observer) = OBSERVER.get() {
        observer.request(&RequestEvent {
            label,
            origin: &origin(url),
            elapsed,
            tries,
            ok,
        });
    }
}

/// `scheme://host:port` of `url`, or `""` when it has no host.
pub(crate) fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            _ => String::new(),
        },
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origin_keeps_scheme_host_and_port_only() {
        assert_eq!(
            origin("http://user@127.0.0.1:5232/a/b/?x=1"),
            "http://127.0.0.1:5232"
        );
        assert_eq!(origin("https://erp.example/"), "https://erp.example:443");
        assert_eq!(origin("not a url"), "");
    }
}
