//! When `tandem run` polls which connector, and when it syncs: pure logic over
//! `Instant`s, so that it is tested without waiting.
//!
//! Each connector has its own poll interval. A poll that finds nothing counts as quiet;
//! after `idle_polls` quiet polls in a row the connector's interval doubles per poll, up
//! to its maximum. A change anywhere (a poll that found one, a sync that wrote) brings
//! every connector back to its base interval. A poll that found a change asks for a
//! sync at once; a full read comes due every `full_listing_interval`. A sync that
//! failed is tried again after a wait that doubles per failure, up to the largest
//! maximum interval.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::config::ServiceConfig;

/// What the loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A sync of every scope; `full`: every scope read completely.
    Sync { full: bool },
    /// A poll (a plan that writes nothing) of these connectors' scopes.
    Poll(BTreeSet<String>),
    /// Nothing before this instant.
    Wait(Instant),
}

#[derive(Debug, Clone)]
struct Poller {
    base: Duration,
    max: Duration,
    current: Duration,
    quiet: u32,
    next: Instant,
}

#[derive(Debug)]
pub struct Schedule {
    pollers: BTreeMap<String, Poller>,
    idle_polls: u32,
    full_every: Duration,
    next_full: Instant,
    sync_due: bool,
    sync_failures: u32,
    sync_not_before: Instant,
}

impl Schedule {
    /// A schedule for `connectors` that starts with a sync (which catches up with
    /// what happened while Tandem was not running).
    pub fn new<'a>(
        config: &ServiceConfig,
        connectors: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Schedule {
        let pollers = connectors
            .into_iter()
            .map(|name| {
                let (base, max) = config.intervals(name);
                let poller = Poller {
                    base,
                    max,
                    current: base,
                    quiet: 0,
                    next: now + base,
                };
                (name.to_owned(), poller)
            })
            .collect();
        Schedule {
            pollers,
            idle_polls: config.idle_polls,
            full_every: config.full_listing_interval,
            next_full: now + config.full_listing_interval,
            sync_due: true,
            sync_failures: 0,
            sync_not_before: now,
        }
    }

    pub fn next(&self, now: Instant) -> Next {
        let full = now >= self.next_full;
        if self.sync_due || full {
            return match now >= self.sync_not_before {
                true => Next::Sync { full },
                false => Next::Wait(self.sync_not_before),
            };
        }
        let due: BTreeSet<String> = (self.pollers.iter())
            .filter(|(_, p)| p.next <= now)
            .map(|(name, _)| name.clone())
            .collect();
        if !due.is_empty() {
            return Next::Poll(due);
        }
        let soonest = self.pollers.values().map(|p| p.next).min();
        Next::Wait(soonest.map_or(self.next_full, |t| t.min(self.next_full)))
    }

    /// A sync is wanted as soon as may be (a poll found a change, an operator
    /// decided a conflict).
    pub fn sync_soon(&mut self) {
        self.sync_due = true;
    }

    /// The polls of `polled` are over; `changed`: one of them found a change.
    pub fn polled(&mut self, polled: &BTreeSet<String>, changed: bool, now: Instant) {
        if changed {
            self.active(now);
            self.sync_due = true;
        }
        let idle_polls = self.idle_polls;
        for name in polled {
            let Some(p) = self.pollers.get_mut(name) else {
                continue;
            };
            if !changed {
                p.quiet = p.quiet.saturating_add(1);
                if p.quiet > idle_polls {
                    p.current = (p.current * 2).min(p.max);
                }
            }
            p.next = now + p.current;
        }
    }

    /// A sync ended: `ok` whether it completed, `wrote` whether it wrote anything.
    pub fn synced(&mut self, full: bool, ok: bool, wrote: bool, now: Instant) {
        if !ok {
            self.sync_failures = self.sync_failures.saturating_add(1);
            let longest = self.pollers.values().map(|p| p.max).max();
            let longest = longest.unwrap_or(self.full_every);
            let base = self.pollers.values().map(|p| p.base).min();
            let base = base.unwrap_or(longest);
            let doubling = 1u32 << (self.sync_failures - 1).min(16);
            let wait = base.saturating_mul(doubling).min(longest);
            self.sync_not_before = now + wait;
            return;
        }
        self.sync_failures = 0;
        self.sync_due = false;
        if full {
            self.next_full = now + self.full_every;
        }
        if wrote {
            self.active(now);
        }
    }

    /// Every connector back to its base interval.
    fn active(&mut self, now: Instant) {
        for p in self.pollers.values_mut() {
            p.quiet = 0;
            p.current = p.base;
            p.next = p.next.min(now + p.base);
        }
    }

    /// The interval connector `name` is polled at now.
    pub fn interval(&self, name: &str) -> Option<Duration> {
        self.pollers.get(name).map(|p| p.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServiceConfig {
        let mut c = ServiceConfig {
            poll_interval: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(60),
            idle_polls: 2,
            full_listing_interval: Duration::from_secs(3600),
            ..ServiceConfig::default()
        };
        c.connectors.insert(
            "book".to_owned(),
            super::super::config::ConnectorSchedule {
                poll_interval: Some(Duration::from_secs(5)),
                max_poll_interval: None,
            },
        );
        c
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn starts_with_a_sync_then_polls_each_connector_on_its_own_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), ["book", "erp"], t0);
        assert_eq!(s.next(t0), Next::Sync { full: false });
        s.synced(false, true, false, t0);
        assert_eq!(s.next(t0), Next::Wait(t0 + Duration::from_secs(5)));
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(s.next(t5), Next::Poll(set(&["book"])));
        s.polled(&set(&["book"]), false, t5);
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(s.next(t10), Next::Poll(set(&["book", "erp"])));
    }

    #[test]
    fn quiet_polls_back_off_to_the_maximum_and_a_change_brings_them_back() {
        let mut now = Instant::now();
        let mut s = Schedule::new(&config(), ["erp"], now);
        s.synced(false, true, false, now);
        let mut intervals = Vec::new();
        for _ in 0..6 {
            s.polled(&set(&["erp"]), false, now);
            intervals.push(s.interval("erp").unwrap().as_secs());
            now += s.interval("erp").unwrap();
        }
        assert_eq!(intervals, [10, 10, 20, 40, 60, 60]);
        s.polled(&set(&["erp"]), true, now);
        assert_eq!(s.interval("erp"), Some(Duration::from_secs(10)));
        assert_eq!(
            s.next(now),
            Next::Sync { full: false },
            "a change is synced at once"
        );
    }

    #[test]
    fn a_sync_that_wrote_wakes_every_connector() {
        let now = Instant::now();
        let mut s = Schedule::new(&config(), ["book", "erp"], now);
        for _ in 0..5 {
            s.polled(&set(&["book", "erp"]), false, now);
        }
        assert_eq!(s.interval("erp"), Some(Duration::from_secs(60)));
        s.synced(false, true, true, now);
        assert_eq!(s.interval("erp"), Some(Duration::from_secs(10)));
        assert_eq!(s.interval("book"), Some(Duration::from_secs(5)));
        assert_eq!(s.next(now), Next::Wait(now + Duration::from_secs(5)));
    }

    #[test]
    fn the_full_listing_comes_due_on_its_own_schedule() {
        let now = Instant::now();
        let mut s = Schedule::new(&config(), ["erp"], now);
        s.synced(false, true, false, now);
        let later = now + Duration::from_secs(3600);
        assert_eq!(s.next(later), Next::Sync { full: true });
        s.synced(true, true, false, later);
        assert_eq!(s.next(later), Next::Poll(set(&["erp"])));
        s.polled(&set(&["erp"]), false, later);
        let next_full = later + Duration::from_secs(3600);
        assert_eq!(
            s.next(next_full - Duration::from_secs(1)),
            Next::Poll(set(&["erp"]))
        );
        assert_eq!(s.next(next_full), Next::Sync { full: true });
    }

    #[test]
    fn a_failed_sync_is_tried_again_after_a_growing_wait() {
        let now = Instant::now();
        let mut s = Schedule::new(&config(), ["erp"], now);
        s.synced(false, false, false, now);
        assert_eq!(s.next(now), Next::Wait(now + Duration::from_secs(10)));
        let t = now + Duration::from_secs(10);
        assert_eq!(s.next(t), Next::Sync { full: false });
        s.synced(false, false, false, t);
        assert_eq!(s.next(t), Next::Wait(t + Duration::from_secs(20)));
    }
}
