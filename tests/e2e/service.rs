//! `tandem run`, the long-running service: it carries changes as they come, serves
//! health and metrics, takes operator decisions over HTTP, and stops on SIGTERM or
//! SIGINT with exit 0, leaving nothing lost or doubled for the next run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Deployment, cell};

/// A running `tandem run`, its stderr collected.
pub(crate) struct Service {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Service {
    pub(crate) fn start(d: &Deployment, env: &[(&str, &str)]) -> Service {
        Service::start_with(d, &["run"], env)
    }

    /// `tandem <args>` (`run` and its options), its stderr collected.
    pub(crate) fn start_with(d: &Deployment, args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("--config").arg(d.path("tandem.toml")).args(args);
        cmd.current_dir(std::env::temp_dir());
        cmd.env_remove("RUST_LOG").envs(env.iter().copied());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Service { child, log }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Panics with the log when `tandem run` has exited, so that a wait for what it
    /// should do fails with its reason instead of a timeout.
    pub(crate) fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            // The log thread reads the last lines after the exit.
            std::thread::sleep(Duration::from_millis(200));
            panic!("tandem run exited ({status}):\n{}", self.log());
        }
    }

    pub(crate) fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let started = Instant::now();
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tandem run exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < timeout,
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    /// Waits for the process to exit; `None` when it did not within `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The last lines of stderr.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then exit 0 within `timeout`.
    pub(crate) fn stop(&mut self, timeout: Duration) {
        self.signal("TERM");
        let status = self.wait(timeout);
        assert!(
            status.is_some_and(|s| s.success()),
            "tandem run did not exit 0 within {timeout:?} of SIGTERM ({status:?}):\n{}",
            self.log()
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port nobody listens on.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request: the status and the body.
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply[9..12].parse().unwrap();
    let (head, rest) = reply.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn unchunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        text = &rest[size + 2..];
    }
    out
}

/// Waits until `done` holds; panics with `what` after `timeout`.
pub(crate) fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "not within {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

const TOKEN: &str = "test-token-0123456789abcdef";

fn small_config(port: u16) -> String {
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["vat_registration_no"]]
conflict = "manual"

[service]
poll_interval = "200ms"
max_poll_interval = "1s"
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
"#
    )
}

/// Runs as a service on files: a change to a file reaches the other side without any
/// command, the listener answers health, readiness and metrics (which parse as
/// Prometheus text), the token guards them, and a conflict settled over HTTP is
/// written by the next run.
#[test]
fn run_carries_changes_serves_metrics_and_settles_conflicts_over_http() {
    let port = free_port();
    let d = Deployment::with_config(&small_config(port));
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,phone,email,vat_registration_no\n\
         C1,company,Acme NV,+32 9 111,info@acme.be,BE0111\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,phone,email,vat_registration_no\nK1,Acme NV,+32 9 111,info@acme.be,BE0111\n",
    );
    d.sync();
    // The same field changed on both sides under `manual`: a conflict waits.
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 9 222");
    d.set_cell("erp/customers.csv", "K1", "phone", "+32 9 333");
    d.sync();
    let conflicts = d.json(&["conflicts"]);
    let id = conflicts[0]["id"].as_i64().unwrap();

    let mut service = Service::start(&d, &[]);
    service.wait_for_log("listening on", Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "/healthz answers", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(
        http(port, "GET", "/healthz", None, None),
        (200, "ok\n".to_owned())
    );
    wait_until(Duration::from_secs(30), "/readyz says ready", || {
        http(port, "GET", "/readyz", None, None).0 == 200
    });
    let (status, _) = http(port, "GET", "/metrics", None, None);
    assert_eq!(status, 401, "the token guards /metrics");
    let (status, _) = http(
        port,
        "GET",
        "/metrics",
        Some("wrong-token-0123456789"),
        None,
    );
    assert_eq!(status, 401);

    // A change in one file reaches the other, with no command.
    d.set_cell("erp/customers.csv", "K1", "email", "sales@acme.be");
    wait_until(
        Duration::from_secs(30),
        "the e-mail reaches the contact",
        || cell(&d.read("crm/contacts.csv"), "C1", "email").as_deref() == Some("sales@acme.be"),
    );

    // The conflict, settled over HTTP, is written to both sides by the next run.
    let (status, body) = http(
        port,
        "POST",
        &format!("/conflicts/{id}/resolve"),
        Some(TOKEN),
        Some(r#"{"take": "account"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let entry: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(entry["field"], "phone", "{entry}");
    wait_until(
        Duration::from_secs(30),
        "the decided phone reaches the contact",
        || cell(&d.read("crm/contacts.csv"), "C1", "phone").as_deref() == Some("+32 9 333"),
    );
    let (status, body) = http(
        port,
        "POST",
        "/conflicts/99999/resolve",
        Some(TOKEN),
        Some(r#"{"take": "contact"}"#),
    );
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(
        port,
        "POST",
        &format!("/conflicts/{id}/resolve"),
        None,
        Some(r#"{"take": "contact"}"#),
    );
    assert_eq!(status, 401, "decisions need the token");

    // A few quiet polls more.
    let polls_now = || {
        let (_, text) = http(port, "GET", "/metrics", Some(TOKEN), None);
        sample(
            &parse_metrics(&text),
            "tandem_runs_total",
            &[("mode", "poll")],
        )
    };
    let before = polls_now();
    wait_until(Duration::from_secs(30), "three more polls", || {
        polls_now() >= before + 3.0
    });
    let (status, text) = http(port, "GET", "/metrics", Some(TOKEN), None);
    assert_eq!(status, 200);
    let metrics = parse_metrics(&text);
    let syncs_ok = sample(
        &metrics,
        "tandem_runs_total",
        &[("mode", "sync"), ("outcome", "ok")],
    );
    assert!(
        syncs_ok >= 2.0,
        "at least the first sync and one per change:\n{text}"
    );
    let polls = sample(
        &metrics,
        "tandem_runs_total",
        &[("mode", "poll"), ("outcome", "ok")],
    );
    assert!(polls >= 1.0, "{text}");
    let written = sample(
        &metrics,
        "tandem_records_written_total",
        &[("connector", "crm"), ("kind", "contacts")],
    );
    assert!(written >= 2.0, "the e-mail and the decided phone:\n{text}");
    assert_eq!(
        sample(&metrics, "tandem_open_conflicts", &[("code", "CUST")]),
        0.0
    );
    assert!(
        sample(
            &metrics,
            "tandem_last_success_timestamp_seconds",
            &[("connector", "erp"), ("kind", "customers")]
        ) > 1.7e9
    );

    service.stop(Duration::from_secs(10));
    assert!(!service.log().contains(TOKEN), "the token is never logged");
    // Polls write nothing: the state's runs are the two syncs before and the service's
    // syncs, however many polls there were.
    let runs = d.json(&["status"])["runs"].as_array().unwrap().len() as f64;
    let syncs: f64 = ["ok", "partial", "failed"]
        .iter()
        .map(|o| {
            sample(
                &metrics,
                "tandem_runs_total",
                &[("mode", "sync"), ("outcome", o)],
            )
        })
        .sum();
    assert!(
        runs <= (2.0 + syncs + 1.0).min(10.0),
        "{runs} runs for {syncs} syncs"
    );
    // Nothing waits: the service left the deployment settled.
    assert_eq!(d.sync()["writes"], 0);
    assert_eq!(d.json(&["conflicts"]), json!([]));
}

/// The samples of a Prometheus text exposition, parsed by a Prometheus parser.
pub(crate) fn parse_metrics(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{text}"));
    assert!(!scrape.samples.is_empty(), "{text}");
    scrape.samples
}

/// The value of the sample `name` with `labels` (0 when there is none).
pub(crate) fn sample(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

pub(crate) const LARGE_CONFIG: &str = r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
create_contacts = true
match = [["vat_registration_no"]]

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]

[service]
poll_interval = "1s"
grace_period = "60s"
"#;

/// A first sync with work on every step: `n` contacts, each matching a customer by
/// VAT number with a phone to carry over, `n` customers without a contact (a contact
/// is created for each), and `n / 10` vendors.
pub(crate) fn large(n: usize) -> Deployment {
    large_in(Deployment::with_config(LARGE_CONFIG), n)
}

/// [`large`]'s data, written into `d`.
pub(crate) fn large_in(d: Deployment, n: usize) -> Deployment {
    let mut contacts = String::from("id,contact_type,name,post_code,vat_registration_no\n");
    let mut customers = String::from("id,name,post_code,phone,vat_registration_no\n");
    let mut vendors = String::from("id,name,vat_registration_no\n");
    for i in 0..n {
        contacts.push_str(&format!(
            "C{i:06},company,Company {i},{},BE{i:010}\n",
            1000 + i % 9000
        ));
        customers.push_str(&format!(
            "K{i:06},Company {i},{},+32 2 {i:06},BE{i:010}\n",
            1000 + i % 9000
        ));
        customers.push_str(&format!(
            "N{i:06},Newco {i},{},+32 3 {i:06},\n",
            1000 + i % 9000
        ));
        if i % 10 == 0 {
            vendors.push_str(&format!("V{i:06},Company {i},BE{i:010}\n"));
        }
    }
    d.write("crm/contacts.csv", &contacts);
    d.write("erp/customers.csv", &customers);
    d.write("erp/vendors.csv", &vendors);
    d
}

/// Each data file's content by name, and the links.
pub(crate) type Outcome = (BTreeMap<String, String>, Vec<(String, String, String)>);

/// The data files and the links a deployment ends with.
pub(crate) fn outcome(d: &Deployment) -> Outcome {
    let files = ["crm/contacts.csv", "erp/customers.csv", "erp/vendors.csv"]
        .iter()
        .map(|f| (f.to_string(), d.read(f)))
        .collect();
    (files, d.links())
}

pub(crate) fn last_run_status(d: &Deployment) -> String {
    let status = d.json(&["status"]);
    let runs = status["runs"].as_array().unwrap();
    let last = runs.iter().max_by_key(|r| r["id"].as_i64()).unwrap();
    last["status"].as_str().unwrap().to_owned()
}

pub(crate) const LARGE: usize = 15_000;

/// SIGTERM during a large first run: the run finishes, the state is committed, the
/// process exits 0 within the grace period, and nothing is left to do.
#[test]
fn sigterm_lets_the_run_in_flight_finish_and_exits_0() {
    let d = large(LARGE);
    let reference = d.copy();
    let writes = reference.sync()["writes"].as_u64().unwrap();
    assert!(
        writes >= 2 * LARGE as u64,
        "creates and updates: {writes} writes"
    );

    let mut service = Service::start(&d, &[]);
    service.wait_for_log("running:", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    service.stop(Duration::from_secs(65));
    let log = service.log();
    assert!(
        log.contains("SIGTERM: stopping once the run in flight is done"),
        "{log}"
    );
    assert!(
        log.contains("sync run 1:"),
        "the run in flight completed:\n{log}"
    );
    assert!(signalled.elapsed() < Duration::from_secs(60));
    assert_eq!(last_run_status(&d), "ok");
    assert_eq!(d.sync()["writes"], 0, "nothing left for the next run");
    assert_eq!(outcome(&d), outcome(&reference));
}

/// A second signal stops the run in flight at its next safe point: the process exits 0
/// at once, the run is recorded as stopped, and the next run finishes the work with
/// nothing lost or doubled (the same files and links as an uninterrupted run).
#[test]
fn a_second_signal_stops_at_a_safe_point_and_the_next_run_finishes_the_work() {
    let d = large(LARGE);
    let reference = d.copy();
    reference.sync();

    let mut service = Service::start(&d, &[]);
    service.wait_for_log("running:", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    service.signal("TERM");
    service.wait_for_log("SIGTERM: stopping", Duration::from_secs(10));
    let signalled = Instant::now();
    service.signal("INT");
    let status = service.wait(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        service.log()
    );
    let log = service.log();
    assert!(
        log.contains("SIGINT again: stopping at the next safe point"),
        "{log}"
    );
    assert!(log.contains("the run stopped at a safe point"), "{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "stopped at the next safe point, not at the end of the run ({:?})",
        signalled.elapsed()
    );
    assert_eq!(last_run_status(&d), "stopped");

    let writes = d.sync()["writes"].as_u64().unwrap();
    assert!(writes > 0, "the stopped run left work for the next one");
    assert_eq!(d.sync()["writes"], 0);
    assert_eq!(outcome(&d), outcome(&reference));
}

/// `tandem run` against a real Radicale and a real trytond.
#[cfg(all(feature = "connector-tryton", feature = "connector-carddav"))]
pub(crate) mod servers {
    use std::time::Duration;

    use serde_json::{Value as Json, json};
    use tandem_connector_carddav::testsupport::CardServer;
    use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
    use tandem_model::field;

    use super::{Service, free_port, http, parse_metrics, sample, wait_until};
    use crate::flagship::{Book, company, text};
    use crate::support::Deployment;
    use crate::tryton::{PARTY_FIELDS, Tryton, be_vat};

    /// Contacts in a Radicale address book, customers in Tryton, polled every
    /// `poll`.
    pub(crate) fn config(
        book: &str,
        cards: &CardServer,
        server: &TrytonServer,
        poll: &str,
        port: u16,
    ) -> String {
        let settings = cards.settings(book);
        let user = settings["username"].as_str().unwrap_or_default();
        format!(
            r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.book]
type = "carddav"
url = "{book}"
username = "{user}"
password = "${{CARDDAV_PASSWORD}}"

[connectors.erp]
type = "tryton"
url = "{url}"
database = "{DATABASE}"
user = "admin"
password = "${{TRYTON_PASSWORD}}"

[contacts]
connector = "book"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["vat_registration_no"]]
fields = {PARTY_FIELDS}

[service]
poll_interval = "{poll}"
max_poll_interval = "{poll}"
listen = "127.0.0.1:{port}"
"#,
            url = server.url()
        )
    }

    /// The phone mechanism of party `party`, set to `phone`.
    pub(crate) fn set_party_phone(tryton: &Tryton, party: i64, phone: &str) {
        let ids = tryton.call(
            "party.contact_mechanism",
            "search",
            vec![
                json!([["party", "=", party], ["type", "=", "phone"]]),
                json!(0),
                Json::Null,
                Json::Null,
            ],
        );
        tryton.call(
            "party.contact_mechanism",
            "write",
            vec![ids, json!({"value": phone})],
        );
    }

    pub(crate) fn party_phone(tryton: &Tryton, party: i64) -> Option<String> {
        Tryton::mechanism(&tryton.party(&party.to_string()), "phone")
    }

    /// The done-when of the service: changes cross both ways while it runs, SIGTERM
    /// stops it with exit 0, and a change made while it was down is carried when it
    /// runs again; a sync after it has nothing left to do.
    #[test]
    fn radicale_and_tryton_stay_in_step_while_tandem_runs() {
        let Some(cards) = CardServer::radicale() else {
            return;
        };
        let Some(server) = TrytonServer::start() else {
            return;
        };
        let (book, url) = Book::new_on(&cards, "service");
        let tryton = Tryton::new(&server);
        let customer = tryton.category("Customer");
        let acme = tryton.create(
            "party.party",
            json!({"name": "Acme NV", "categories": [["add", [customer]]],
                   "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(1)}]]],
                   "contact_mechanisms": [["create", [{"type": "phone", "value": "+32 9 100 00 01"}]]]}),
        );
        let card =
            book.create(company("Acme NV").with(field::VAT_REGISTRATION_NO, be_vat(1).as_str()));
        let port = free_port();
        let d = Deployment::with_config(&config(&url, &cards, &server, "1s", port));
        let password = cards.settings(&url)["password"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let env = [
            ("TRYTON_PASSWORD", server.password.as_str()),
            ("CARDDAV_PASSWORD", password.as_str()),
        ];
        let card_phone = || text(&book.card(&card).unwrap(), field::PHONE);
        let timeout = Duration::from_secs(60);

        let mut service = Service::start(&d, &env);
        wait_until(timeout, "the link fills the card's phone", || {
            service.assert_running();
            card_phone().as_deref() == Some("+32 9 100 00 01")
        });
        book.update(&card, &[(field::PHONE, "+32 9 100 00 02")]);
        wait_until(timeout, "a card's phone reaches Tryton", || {
            party_phone(&tryton, acme).as_deref() == Some("+32 9 100 00 02")
        });
        set_party_phone(&tryton, acme, "+32 9 100 00 03");
        wait_until(timeout, "a party's phone reaches the card", || {
            card_phone().as_deref() == Some("+32 9 100 00 03")
        });
        let (status, text) = http(port, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let metrics = parse_metrics(&text);
        for connector in ["book", "erp"] {
            let requests = sample(
                &metrics,
                "tandem_http_requests_total",
                &[("connector", connector), ("outcome", "ok")],
            );
            assert!(requests > 0.0, "{connector} requests counted:\n{text}");
        }
        assert_eq!(http(port, "GET", "/readyz", None, None).0, 200);
        service.stop(Duration::from_secs(30));
        assert!(
            !service.log().contains(&server.password),
            "no secret in the log"
        );

        // Changed while nothing runs: carried by the next start.
        book.update(&card, &[(field::PHONE, "+32 9 100 00 04")]);
        let mut service = Service::start(&d, &env);
        wait_until(
            timeout,
            "a change made while stopped reaches Tryton",
            || party_phone(&tryton, acme).as_deref() == Some("+32 9 100 00 04"),
        );
        service.stop(Duration::from_secs(30));
        let out = d.tandem_env(&["--json", "sync"], &env);
        assert!(out.status.success(), "{}", crate::support::stderr(&out));
        let report: Json = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["writes"], 0, "nothing was left undone");
        assert_eq!(d.links().len(), 1);
    }
}

/// A connector that cannot be read makes the service not ready (and says which), the
/// service keeps going and retries, becomes ready once the connector can be read
/// again, and still stops with exit 0.
#[test]
fn a_failing_connector_makes_the_service_not_ready_until_it_recovers() {
    let port = free_port();
    let d = Deployment::with_config(&small_config(port));
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no\nC1,company,Acme NV,BE0111\n",
    );
    // A line that cannot be read: the connector fails its check and every read.
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,email\n\"K1,Acme NV,BE0111,info@acme.be\n",
    );
    let mut service = Service::start(&d, &[]);
    service.wait_for_log("listening on", Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "/readyz says not ready", || {
        http(port, "GET", "/readyz", None, None).0 == 503
    });
    let (_, body) = http(port, "GET", "/readyz", None, None);
    assert!(body.contains("connector erp"), "{body}");
    assert_eq!(http(port, "GET", "/healthz", None, None).0, 200);
    // The service keeps trying, and counts each run that failed. (Not ready comes from
    // the connector's check, which may come before the first run.)
    let failed_runs = || {
        let (_, text) = http(port, "GET", "/metrics", Some(TOKEN), None);
        if !text.contains("tandem_runs_total") {
            return 0.0; // no run has finished yet
        }
        let metrics = parse_metrics(&text);
        let failed: f64 = ["poll", "sync"]
            .iter()
            .map(|m| {
                sample(
                    &metrics,
                    "tandem_runs_total",
                    &[("mode", m), ("outcome", "failed")],
                )
            })
            .sum();
        failed
    };
    wait_until(Duration::from_secs(30), "a failed run is counted", || {
        failed_runs() >= 1.0
    });

    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,email\nK1,Acme NV,BE0111,info@acme.be\n",
    );
    wait_until(Duration::from_secs(30), "the service recovers", || {
        cell(&d.read("crm/contacts.csv"), "C1", "email").as_deref() == Some("info@acme.be")
    });
    wait_until(Duration::from_secs(30), "/readyz says ready", || {
        http(port, "GET", "/readyz", None, None).0 == 200
    });
    assert!(failed_runs() >= 1.0, "the failed runs are still counted");
    service.stop(Duration::from_secs(10));
    assert!(service.log().contains("warning:"), "{}", service.log());
}
