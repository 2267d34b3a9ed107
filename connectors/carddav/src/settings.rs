//! The settings of `type = "carddav"`.

use std::time::Duration;

use serde::Deserialize;
use tandem_connector::http::{Auth, HttpSettings, SecretString};
use tandem_connector::{BuildContext, ConnectorError, parse_settings};

/// Writes in flight at once by default: enough to hide a slow server's latency and
/// keep it busy while Tandem reads the card of the next update, few enough not to
/// crowd it (Radicale takes a lock per write anyway). Measured in docs/BENCHMARKS.md.
pub const DEFAULT_CONCURRENT_WRITES: usize = 8;

/// A slow server may take a while to connect; a write to a large book takes long on
/// Radicale (it scans the book for UID clashes), so a request may take two minutes.
fn defaults() -> HttpSettings {
    HttpSettings::with_timeouts(Duration::from_secs(10), Duration::from_secs(120))
}

fn default_concurrent_writes() -> usize {
    DEFAULT_CONCURRENT_WRITES
}

/// The keys of the connector's own; the shared HTTP keys are taken out first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Own {
    url: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default = "default_concurrent_writes")]
    max_concurrent_writes: usize,
}

/// Everything a connector is built from.
#[derive(Debug)]
pub struct Settings {
    pub url: String,
    pub auth: Auth,
    pub http: HttpSettings,
    pub max_concurrent_writes: usize,
}

impl Settings {
    pub fn parse(
        mut settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Settings, ConnectorError> {
        let http = HttpSettings::take_from(&mut settings, &defaults(), context)?;
        let own: Own = parse_settings(settings)?;
        if own.max_concurrent_writes == 0 {
            return Err(ConnectorError::config(
                "`max_concurrent_writes` must be at least 1",
            ));
        }
        let auth = match (own.username, own.password, own.token) {
            (None, None, None) => Auth::None,
            (Some(user), password, None) => Auth::Basic { user, password },
            (None, None, Some(token)) => Auth::Bearer(token),
            (None, Some(_), None) => {
                return Err(ConnectorError::config(
                    "`password` is set but `username` is not",
                ));
            }
            (_, _, Some(_)) => {
                return Err(ConnectorError::config(
                    "set either `token` (bearer) or `username` and `password` (basic), not both",
                ));
            }
        };
        Ok(Settings {
            url: own.url,
            auth,
            http,
            max_concurrent_writes: own.max_concurrent_writes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(settings: serde_json::Value) -> Result<Settings, ConnectorError> {
        let here = BuildContext {
            base_dir: std::env::temp_dir(),
        };
        Settings::parse(settings, &here)
    }

    #[test]
    fn eight_writes_at_once_by_default_and_the_bound_is_kept() {
        let s = parse(serde_json::json!({"url": "https://x/"})).unwrap();
        assert_eq!(s.max_concurrent_writes, 8);
        let s = parse(serde_json::json!({"url": "https://x/", "max_concurrent_writes": 2}));
        assert_eq!(s.unwrap().max_concurrent_writes, 2);
    }

    #[test]
    fn a_user_and_password_are_one_auth_for_basic_and_digest() {
        let s = parse(serde_json::json!({"url": "https://x/", "username": "u", "password": "p"}));
        assert!(matches!(s.unwrap().auth, Auth::Basic { .. }));
    }
}
