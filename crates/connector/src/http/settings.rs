//! The settings every HTTP connector shares: `ca_file`, `connect_timeout`, `timeout`,
//! `retry` and `max_requests_per_second`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::{BuildContext, ConnectorError, parse_settings};

/// How often and how long a failed request is tried again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Tries in all, the first included: `1` never retries.
    pub attempts: u32,
    /// No new try starts later than this after the first one began.
    #[serde(deserialize_with = "duration")]
    pub max_elapsed: Duration,
    /// The wait before the first retry; it doubles for each further one (plus jitter).
    #[serde(deserialize_with = "duration")]
    pub min_delay: Duration,
    /// The longest wait between two tries, unless the server asks for more
    /// (`Retry-After`) and `max_elapsed` leaves room for it.
    #[serde(deserialize_with = "duration")]
    pub max_delay: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            attempts: 5,
            max_elapsed: Duration::from_secs(60),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The HTTP settings of one connector, with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// PEM file of the CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The longest a whole request may take, reply body included.
    pub timeout: Duration,
    pub retry: RetrySettings,
    /// `None`: no limit of Tandem's own.
    pub max_requests_per_second: Option<f64>,
}

impl HttpSettings {
    /// The keys [`HttpSettings::take_from`] takes out of a connector's settings.
    pub const KEYS: [&'static str; 5] = [
        "ca_file",
        "connect_timeout",
        "timeout",
        "retry",
        "max_requests_per_second",
    ];

    /// Defaults with these timeouts, the rest as documented.
    pub fn with_timeouts(connect_timeout: Duration, timeout: Duration) -> HttpSettings {
        HttpSettings {
            ca_file: None,
            connect_timeout,
            timeout,
            retry: RetrySettings::default(),
            max_requests_per_second: None,
        }
    }

    /// Takes the shared HTTP keys out of a connector's `settings` (so that the rest can
    /// be parsed with `deny_unknown_fields`) and reads them over `defaults`. A relative
    /// `ca_file` is resolved against the config file's folder.
    pub fn take_from(
        settings: &mut serde_json::Value,
        defaults: &HttpSettings,
        context: &BuildContext,
    ) -> Result<HttpSettings, ConnectorError> {
        let mut taken = serde_json::Map::new();
        if let Some(map) = settings.as_object_mut() {
            for key in Self::KEYS {
                if let Some(value) = map.remove(key) {
                    taken.insert(key.to_owned(), value);
                }
            }
        }
        let raw: Raw = parse_settings(serde_json::Value::Object(taken))?;
        let out = HttpSettings {
            ca_file: raw.ca_file.map(|p| context.resolve(&p)),
            connect_timeout: raw.connect_timeout.unwrap_or(defaults.connect_timeout),
            timeout: raw.timeout.unwrap_or(defaults.timeout),
            retry: raw.retry.unwrap_or_else(|| defaults.retry.clone()),
            max_requests_per_second: raw
                .max_requests_per_second
                .or(defaults.max_requests_per_second),
        };
        out.validate()?;
        Ok(out)
    }

    fn validate(&self) -> Result<(), ConnectorError> {
        if self.retry.attempts == 0 {
            return Err(ConnectorError::config(
                "`retry.attempts` must be at least 1 (1 means no retries)",
            ));
        }
        if self
            .max_requests_per_second
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(ConnectorError::config(
                "`max_requests_per_second` must be a number above 0 (leave it out for no limit)",
            ));
        }
        if self.retry.min_delay > self.retry.max_delay {
            return Err(ConnectorError::config(
                "`retry.min_delay` must not be longer than `retry.max_delay`",
            ));
        }
        Ok(())
    }
}

/// The keys as written; `None` keeps the connector's default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "positive_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    retry: Option<RetrySettings>,
    #[serde(default)]
    max_requests_per_second: Option<f64>,
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let value = duration(d)?;
    if value.is_zero() {
        return Err(de::Error::custom("must be longer than 0 s"));
    }
    Ok(Some(value))
}

/// A duration written as `"30s"`, `"2m"`, `"1m 30s"`, `"500ms"` or a number of seconds
/// (environment overrides may arrive as either).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as \"30s\", \"2m\" or a number of seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(v).map_err(|_| E::custom("not a duration in seconds"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        let v = v.trim();
        if let Ok(secs) = v.parse::<f64>() {
            return self.visit_f64(secs);
        }
        // The value is not quoted back: a message never shows a setting's value.
        humantime::parse_duration(v).map_err(|_| {
            E::custom(
                "not a duration: write it like \"30s\", \"2m\", \"500ms\" or a number of seconds",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> BuildContext {
        BuildContext {
            base_dir: PathBuf::from("/etc/tandem"),
        }
    }

    fn defaults() -> HttpSettings {
        HttpSettings::with_timeouts(Duration::from_secs(10), Duration::from_secs(120))
    }

    #[test]
    fn keys_are_taken_out_and_the_rest_is_left() {
        let mut settings = json!({
            "url": "https://x/", "ca_file": "ca.pem", "timeout": "2m",
            "connect_timeout": 5, "retry": {"attempts": 3, "max_elapsed": "1m 30s"},
            "max_requests_per_second": 2.5
        });
        let http = HttpSettings::take_from(&mut settings, &defaults(), &context()).unwrap();
        assert_eq!(settings, json!({"url": "https://x/"}));
        assert_eq!(http.ca_file, Some(PathBuf::from("/etc/tandem/ca.pem")));
        assert_eq!(http.timeout, Duration::from_secs(120));
        assert_eq!(http.connect_timeout, Duration::from_secs(5));
        assert_eq!(http.retry.attempts, 3);
        assert_eq!(http.retry.max_elapsed, Duration::from_secs(90));
        assert_eq!(http.retry.min_delay, RetrySettings::default().min_delay);
        assert_eq!(http.max_requests_per_second, Some(2.5));
    }

    #[test]
    fn defaults_apply_when_keys_are_missing() {
        let mut settings = json!({"url": "https://x/"});
        let http = HttpSettings::take_from(&mut settings, &defaults(), &context()).unwrap();
        assert_eq!(http, defaults());
    }

    #[test]
    fn bad_values_are_named_and_not_echoed() {
        for (settings, key) in [
            (json!({"timeout": "soon-ish"}), "`timeout`"),
            (json!({"timeout": 0}), "`timeout`"),
            (json!({"retry": {"attempts": 0}}), "`retry.attempts`"),
            (json!({"retry": {"attemps": 2}}), "attemps"),
            (
                json!({"max_requests_per_second": -1}),
                "`max_requests_per_second`",
            ),
        ] {
            let mut settings = settings;
            let e = HttpSettings::take_from(&mut settings, &defaults(), &context())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
            assert!(!e.contains("soon-ish"), "{e}");
        }
    }
}
