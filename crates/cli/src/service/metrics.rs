//! `/metrics`: what `tandem run` did, in the Prometheus text format
//! (prometheus-client). Every series is listed with its meaning in
//! docs/guide/service.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tandem_engine::{Relations, RunReport, Side};
use tandem_model::EntityKind;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// How a run or poll ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed; every record written.
    Ok,
    /// Completed; some records failed (R17).
    Partial,
    /// Stopped as a whole (a read error, the delete guard, ...).
    Failed,
    /// Stopped on a signal at a safe point.
    Stopped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
        }
    }
}

/// Every series, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<Labels, Counter>,
    run_seconds: HistogramFamily,
    read: Family<Labels, Counter>,
    changed: Family<Labels, Counter>,
    written: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    parked: Family<Labels, Gauge>,
    conflicts: Family<Labels, Gauge>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    poll_interval: Family<Labels, Gauge<f64, AtomicU64>>,
    http_seconds: HistogramFamily,
    http_requests: Family<Labels, Counter>,
    http_retries: Family<Labels, Counter>,
}

fn run_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.002, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
        let m = Metrics {
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(run_buckets),
            read: Family::default(),
            changed: Family::default(),
            written: Family::default(),
            failures: Family::default(),
            parked: Family::default(),
            conflicts: Family::default(),
            last_success: Family::default(),
            poll_interval: Family::default(),
            http_seconds: Family::new_with_constructor(http_buckets),
            http_requests: Family::default(),
            http_retries: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "runs",
            "Runs by mode (poll, sync, full) and outcome",
            m.runs.clone(),
        );
        r.register(
            "run_duration_seconds",
            "How long runs took, by mode",
            m.run_seconds.clone(),
        );
        r.register(
            "records_read",
            "Records read, per connector and kind",
            m.read.clone(),
        );
        r.register(
            "records_changed",
            "Records read that were new, changed or deleted since the last run, per connector and kind",
            m.changed.clone(),
        );
        r.register(
            "records_written",
            "Records created or updated by syncs, per connector and kind",
            m.written.clone(),
        );
        r.register(
            "record_failures",
            "Records whose write or request failed (R17), per relation code",
            m.failures.clone(),
        );
        r.register(
            "parked",
            "Pairs and creates parked until `tandem retry`, per relation code",
            m.parked.clone(),
        );
        r.register(
            "open_conflicts",
            "Conflicts waiting for a decision (R15), per relation code",
            m.conflicts.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When a sync last read the scope and completed (Unix time), per connector and kind",
            m.last_success.clone(),
        );
        r.register(
            "poll_interval_seconds",
            "The interval a connector is polled at now (grows while it is quiet)",
            m.poll_interval.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP requests of HTTP connectors, retries included, per connector",
            m.http_seconds.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests per connector and outcome (ok: a reply came; failed: gave up)",
            m.http_requests.clone(),
        );
        r.register(
            "http_retries",
            "HTTP tries beyond the first, per connector",
            m.http_retries.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn run(&self, mode: &'static str, outcome: Outcome, took: Duration) {
        let labels = vec![
            ("mode", mode.to_owned()),
            ("outcome", outcome.as_str().to_owned()),
        ];
        self.runs.get_or_create(&labels).inc();
        let labels = vec![("mode", mode.to_owned())];
        self.run_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// What a sync (`write`) or a poll read and, for a sync, wrote.
    pub fn report(&self, report: &RunReport, relations: &Relations, write: bool) {
        for read in &report.read {
            let labels = scope(&read.connector, read.kind);
            self.read.get_or_create(&labels).inc_by(read.records);
            if write {
                let changed = read.changed + read.deleted;
                self.changed.get_or_create(&labels).inc_by(changed);
            }
        }
        if !write {
            return;
        }
        for ((connector, kind), n) in written(report, relations) {
            self.written
                .get_or_create(&scope(&connector, kind))
                .inc_by(n);
        }
        for counts in &report.counts {
            let labels = vec![("code", counts.code.clone())];
            self.failures.get_or_create(&labels).inc_by(counts.failed);
            self.parked.get_or_create(&labels).set(counts.parked as i64);
        }
        let now = unix_now();
        for read in &report.read {
            let labels = scope(&read.connector, read.kind);
            self.last_success.get_or_create(&labels).set(now);
        }
    }

    /// Open conflicts per code, as the state holds them after a run.
    pub fn conflicts(&self, per_code: &BTreeMap<String, u64>) {
        for (code, n) in per_code {
            let labels = vec![("code", code.clone())];
            self.conflicts.get_or_create(&labels).set(*n as i64);
        }
    }

    pub fn poll_interval(&self, connector: &str, interval: Duration) {
        let labels = vec![("connector", connector.to_owned())];
        self.poll_interval
            .get_or_create(&labels)
            .set(interval.as_secs_f64());
    }

    #[cfg_attr(
        not(any(
            feature = "connector-tryton",
            feature = "connector-carddav",
            feature = "connector-business-central",
            feature = "connector-hubspot"
        )),
        allow(dead_code, reason = "no HTTP connector in this build")
    )]
    pub fn http(&self, connector: &str, took: Duration, tries: u32, ok: bool) {
        let labels = vec![("connector", connector.to_owned())];
        self.http_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.http_retries
            .get_or_create(&labels)
            .inc_by(u64::from(tries.saturating_sub(1)));
        let outcome = if ok { "ok" } else { "failed" };
        let labels = vec![
            ("connector", connector.to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        self.http_requests.get_or_create(&labels).inc();
    }
}

fn scope(connector: &str, kind: EntityKind) -> Labels {
    vec![
        ("connector", connector.to_owned()),
        ("kind", kind.plural().to_owned()),
    ]
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Records a sync wrote, per (connector, kind): the creates and updates it planned,
/// less those that failed.
fn written(report: &RunReport, relations: &Relations) -> BTreeMap<(String, EntityKind), u64> {
    let contacts = (relations.contacts_connector.clone(), EntityKind::Contact);
    let account = |r: usize| {
        let relation = &relations.relations[r];
        (relation.connector.clone(), relation.kind)
    };
    let mut sent: BTreeMap<(String, EntityKind), u64> = BTreeMap::new();
    let plan = &report.plan;
    for hub in &plan.hubs {
        if !hub.contact_changes.is_empty() {
            *sent.entry(contacts.clone()).or_default() += 1;
        }
        for pair in hub.pairs.iter().filter(|p| !p.account_changes.is_empty()) {
            *sent.entry(account(pair.relation)).or_default() += 1;
        }
    }
    for _ in &plan.creates {
        *sent.entry(contacts.clone()).or_default() += 1;
    }
    for create in &plan.account_creates {
        *sent.entry(account(create.relation)).or_default() += 1;
    }
    for failure in &report.failures {
        let key = match failure.side {
            Side::Contact => contacts.clone(),
            Side::Account => match relations
                .relations
                .iter()
                .position(|r| r.code == failure.code)
            {
                Some(r) => account(r),
                None => continue,
            },
        };
        if let Some(n) = sent.get_mut(&key) {
            *n = n.saturating_sub(1);
        }
    }
    sent
}

/// Counts the HTTP connectors' requests under the name of the connector whose `url`
/// has the request's origin.
#[derive(Debug)]
#[cfg_attr(
    not(any(
        feature = "connector-tryton",
        feature = "connector-carddav",
        feature = "connector-business-central",
        feature = "connector-hubspot"
    )),
    allow(dead_code, reason = "no HTTP connector in this build")
)]
pub struct HttpCounter {
    pub metrics: Arc<Metrics>,
    /// (origin, connector name).
    pub origins: Vec<(String, String)>,
}

#[cfg(any(
    feature = "connector-tryton",
    feature = "connector-carddav",
    feature = "connector-business-central",
    feature = "connector-hubspot"
))]
impl tandem_connector::http::RequestObserver for HttpCounter {
    fn request(&self, event: &tandem_connector::http::RequestEvent<'_>) {
        let name = (self.origins.iter())
            .find(|(origin, _)| origin == event.origin)
            .map_or(event.origin, |(_, name)| name.as_str());
        self.metrics
            .http(name, event.elapsed, event.tries, event.ok);
    }
}
