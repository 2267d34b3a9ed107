//! The `[service]` section: how `tandem run` schedules its polls and runs, how it
//! stops, and where it listens (docs/guide/service.md lists every key).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::config::duration;

/// The `[service]` section; every key has a default, so the section may be absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// How often each connector is polled for changes while it has some.
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// The longest a quiet connector waits between polls (idle back-off).
    #[serde(default = "default_max_poll", deserialize_with = "duration")]
    pub max_poll_interval: Duration,
    /// Quiet polls in a row after which the interval starts to double.
    #[serde(default = "default_idle_polls")]
    pub idle_polls: u32,
    /// How often a run reads every scope completely (fingerprints ignored), so that
    /// deletes a listing shows are found (R16) whatever the polls saw.
    #[serde(default = "default_full_listing", deserialize_with = "duration")]
    pub full_listing_interval: Duration,
    /// After SIGTERM or SIGINT: how long the run in flight may take before it is
    /// stopped at its next safe point.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace_period: Duration,
    /// The HTTP listener (`/healthz`, `/readyz`, `/metrics`); none when absent.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The bearer token the listener asks for (required off loopback). Never logged.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// Per connector: its own poll intervals.
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorSchedule>,
}

/// `[service.connectors.<name>]`: a connector's own intervals, over the section's.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSchedule {
    #[serde(default, deserialize_with = "some_duration")]
    pub poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration")]
    pub max_poll_interval: Option<Duration>,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            poll_interval: default_poll(),
            max_poll_interval: default_max_poll(),
            idle_polls: default_idle_polls(),
            full_listing_interval: default_full_listing(),
            grace_period: default_grace(),
            listen: None,
            token: None,
            connectors: BTreeMap::new(),
        }
    }
}

impl ServiceConfig {
    /// The (poll, max poll) intervals of connector `name`.
    pub fn intervals(&self, name: &str) -> (Duration, Duration) {
        let own = self.connectors.get(name).copied().unwrap_or_default();
        let poll = own.poll_interval.unwrap_or(self.poll_interval);
        let max = own.max_poll_interval.unwrap_or(self.max_poll_interval);
        (poll, max.max(poll))
    }

    /// The section's mistakes, as (key, message); `connectors` are the configured
    /// connector names.
    pub fn check<'a>(
        &self,
        connectors: impl Iterator<Item = &'a String> + Clone,
    ) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let zero = "must be longer than 0, e.g. \"30s\"".to_owned();
        for (key, value) in [
            ("poll_interval", self.poll_interval),
            ("max_poll_interval", self.max_poll_interval),
            ("full_listing_interval", self.full_listing_interval),
        ] {
            if value.is_zero() {
                problems.push((format!("service.{key}"), zero.clone()));
            }
        }
        if self.max_poll_interval < self.poll_interval {
            problems.push((
                "service.max_poll_interval".to_owned(),
                "must not be shorter than poll_interval".to_owned(),
            ));
        }
        for (name, own) in &self.connectors {
            if !connectors.clone().any(|c| c == name) {
                problems.push((
                    format!("service.connectors.{name}"),
                    format!("no connector named `{name}` under [connectors]"),
                ));
            }
            if own.poll_interval.is_some_and(|d| d.is_zero()) {
                let key = format!("service.connectors.{name}.poll_interval");
                problems.push((key, zero.clone()));
            }
        }
        if let Some(token) = &self.token
            && token.expose_secret().trim().len() < 16
        {
            problems.push((
                "service.token".to_owned(),
                "is too short: use at least 16 random characters, e.g. from \
                 `openssl rand -hex 32`"
                    .to_owned(),
            ));
        }
        if let Some(listen) = self.listen
            && !listen.ip().is_loopback()
            && self.token.is_none()
        {
            problems.push((
                "service.listen".to_owned(),
                format!(
                    "{listen} is not a loopback address: set [service] token too, so that \
                     only callers with `Authorization: Bearer <token>` are answered"
                ),
            ));
        }
        problems
    }
}

fn default_poll() -> Duration {
    Duration::from_secs(30)
}

fn default_max_poll() -> Duration {
    Duration::from_secs(300)
}

fn default_idle_polls() -> u32 {
    10
}

fn default_full_listing() -> Duration {
    Duration::from_secs(3600)
}

fn default_grace() -> Duration {
    Duration::from_secs(25)
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceConfig, String> {
        toml::from_str::<ServiceConfig>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn defaults_and_per_connector_intervals() {
        let c = parse(
            "poll_interval = \"10s\"\n[connectors.book]\npoll_interval = \"2s\"\n\
             max_poll_interval = \"1m\"",
        )
        .unwrap();
        assert_eq!(
            c.intervals("book"),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
        assert_eq!(
            c.intervals("erp"),
            (Duration::from_secs(10), Duration::from_secs(300))
        );
        assert_eq!(c.grace_period, Duration::from_secs(25));
        assert_eq!(c.full_listing_interval, Duration::from_secs(3600));
        assert!(c.check([String::from("book")].iter()).is_empty());
    }

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        let e = parse("poll_interval = \"often\"").unwrap_err();
        assert!(e.contains("`often` is not a duration"), "{e}");
    }

    #[test]
    fn a_listener_off_loopback_needs_a_token() {
        let open = parse("listen = \"0.0.0.0:9465\"").unwrap();
        let problems = open.check(std::iter::empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "service.listen");
        let guarded = parse("listen = \"0.0.0.0:9465\"\ntoken = \"0123456789abcdef0123\"").unwrap();
        assert!(guarded.check(std::iter::empty()).is_empty());
        assert!(!format!("{guarded:?}").contains("0123456789abcdef"));
        let local = parse("listen = \"127.0.0.1:9465\"").unwrap();
        assert!(local.check(std::iter::empty()).is_empty());
    }

    #[test]
    fn unknown_connectors_and_short_intervals_are_mistakes() {
        let c = parse(
            "poll_interval = \"1m\"\nmax_poll_interval = \"10s\"\n[connectors.nope]\n\
             poll_interval = \"5s\"",
        )
        .unwrap();
        let keys: Vec<String> = c
            .check([String::from("book")].iter())
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            keys,
            ["service.max_poll_interval", "service.connectors.nope"]
        );
    }
}
