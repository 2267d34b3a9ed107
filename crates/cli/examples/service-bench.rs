//! Benchmark: how soon `tandem run` carries a change between a real Radicale and a
//! real Tryton, and what an idle `tandem run` costs.
//!
//! ```sh
//! eval "$(bash scripts/tryton-env)"; eval "$(bash scripts/carddav-env)"
//! cargo build --release -p tandem-cli
//! cargo run --release -p tandem-cli --example service-bench -- [changes] [poll_interval] [partners]
//! ```
//!
//! Defaults: 50 changes, `poll_interval = "2s"` (no idle back-off: the maximum is the
//! same), 20 linked partners. Each change is made at a random moment of the poll
//! cycle (a seeded pseudo-random wait of up to one interval before it). Starts its own Radicale and trytond
//! (`testsupport`), links `partners` cards to customers by VAT number, starts the
//! release `tandem run` next to this example, then changes one partner's phone at a
//! time, alternately on the card and on the Tryton party, and times until the other
//! side holds it (checked every 25 ms). Prints the median, 95th percentile and maximum
//! per direction and overall, then the CPU time (user + system, `/proc/<pid>/stat`) an
//! idle `tandem run` uses over one minute.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tandem_connector::{Changes, Connector, WriteOp};
use tandem_connector_carddav::CarddavConnector;
use tandem_connector_carddav::testsupport::CardServer;
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_connector_tryton::{Client, Secret};
use tandem_model::{EntityKind, FieldName, Fields, Record, Value, field};

const PARTY_FIELDS: &str = r#"["name", "phone", "email", "vat_registration_no"]"#;

fn be_vat(n: usize) -> String {
    let base = 4_000_000 + n as u64 * 13;
    format!("BE{base:08}{:02}", 97 - base % 97)
}

struct Sides {
    rt: tokio::runtime::Runtime,
    book: CarddavConnector,
    tryton: Client,
}

impl Sides {
    fn cards(&self) -> Vec<Record> {
        let page = self
            .rt
            .block_on(self.book.read(EntityKind::Contact, None))
            .unwrap();
        page.records
    }

    fn card_phone(&self, id: &str) -> Option<String> {
        let card = self.cards().into_iter().find(|r| r.id == id)?;
        card.fields.get(field::PHONE).map(Value::to_string)
    }

    fn set_card_phone(&self, id: &str, phone: &str) {
        let changes: Changes = [(FieldName::from(field::PHONE), Value::from(phone))]
            .into_iter()
            .collect();
        let op = WriteOp::Update {
            id: id.into(),
            version: None,
            changes,
        };
        let written = self
            .rt
            .block_on(self.book.write(EntityKind::Contact, vec![op]));
        written.unwrap().remove(0).unwrap();
    }

    fn call(&self, model: &str, method: &str, params: Vec<Json>) -> Json {
        self.rt
            .block_on(self.tryton.model(model, method, params))
            .unwrap_or_else(|e| panic!("{model}.{method}: {e:?}"))
    }

    fn phone_mechanism(&self, party: i64) -> Json {
        let domain = json!([["party", "=", party], ["type", "=", "phone"]]);
        self.call(
            "party.contact_mechanism",
            "search",
            vec![domain, json!(0), Json::Null, Json::Null],
        )
    }

    fn party_phone(&self, party: i64) -> Option<String> {
        let ids = self.phone_mechanism(party);
        let read = self.call(
            "party.contact_mechanism",
            "read",
            vec![ids, json!(["value"])],
        );
        read[0]["value"].as_str().map(str::to_owned)
    }

    fn set_party_phone(&self, party: i64, phone: &str) {
        let ids = self.phone_mechanism(party);
        self.call(
            "party.contact_mechanism",
            "write",
            vec![ids, json!({"value": phone})],
        );
    }
}

/// The release `tandem` next to this example (`target/release/examples/..`).
fn tandem_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tandem");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p tandem-cli` first",
        bin.display()
    );
    bin
}

fn config(book: &str, cards: &CardServer, server: &TrytonServer, poll: &str) -> String {
    let user = cards.settings(book)["username"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
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
"#,
        url = server.url()
    )
}

/// Waits until `done`; the time it took.
fn time_until(mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "a change never arrived"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, mut latencies: Vec<Duration>, poll: Duration) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (median, p95, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        latencies[latencies.len() - 1],
    );
    println!(
        "{what:<18} n={:<3} median {:>6.0} ms  p95 {:>6.0} ms  max {:>6.0} ms  (p95 = {:.2} poll intervals)",
        latencies.len(),
        ms(median),
        ms(p95),
        ms(max),
        p95.as_secs_f64() / poll.as_secs_f64()
    );
}

/// User + system CPU time of `pid`, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let hz: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let changes: usize = args.next().map_or(50, |a| a.parse().expect("changes"));
    let poll_text = args.next().unwrap_or_else(|| "2s".to_owned());
    let partners: usize = args.next().map_or(20, |a| a.parse().expect("partners"));
    let poll = humantime::parse_duration(&poll_text).expect("poll_interval");
    let cards = CardServer::radicale().expect("run `eval \"$(bash scripts/carddav-env)\"` first");
    let server = TrytonServer::start().expect("run `eval \"$(bash scripts/tryton-env)\"` first");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let book_url = rt.block_on(cards.new_book("service-bench"));
    let sides = Sides {
        book: CarddavConnector::from_settings(cards.settings(&book_url)).unwrap(),
        tryton: Client::new(
            &server.url(),
            DATABASE,
            "admin",
            Secret::new(server.password.clone()),
        )
        .unwrap(),
        rt,
    };
    let customer = sides.call(
        "party.category",
        "search",
        vec![
            json!([["name", "=", "Customer"]]),
            json!(0),
            json!(1),
            Json::Null,
        ],
    )[0]
    .as_i64()
    .unwrap();
    let mut pairs = Vec::new();
    for i in 0..partners {
        let party = sides.call(
            "party.party",
            "create",
            vec![json!([{"name": format!("Bench Partner {i}"), "categories": [["add", [customer]]],
                "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(i)}]]],
                "contact_mechanisms": [["create", [{"type": "phone", "value": format!("+32 9 000 {i:04}")}]]]}])],
        )[0]
        .as_i64()
        .unwrap();
        let fields = Fields::new()
            .with(field::CONTACT_TYPE, "company")
            .with(field::NAME, format!("Bench Partner {i}").as_str())
            .with(field::VAT_REGISTRATION_NO, be_vat(i).as_str());
        let op = WriteOp::create(fields);
        let written = sides
            .rt
            .block_on(sides.book.write(EntityKind::Contact, vec![op]));
        pairs.push((written.unwrap().remove(0).unwrap().id, party));
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tandem.toml"),
        config(&book_url, &cards, &server, &poll_text),
    )
    .unwrap();
    let password = cards.settings(&book_url)["password"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let child = Command::new(tandem_binary())
        .arg("--config")
        .arg(dir.path().join("tandem.toml"))
        .arg("run")
        .env("TRYTON_PASSWORD", &server.password)
        .env("CARDDAV_PASSWORD", &password)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let first_card = pairs[0].0.clone();
    let linked = time_until(|| sides.card_phone(&first_card).is_some());
    println!(
        "{partners} partners linked and filled in {:.1} s; poll_interval {poll_text}, {changes} changes",
        linked.as_secs_f64()
    );

    let (mut to_tryton, mut to_card) = (Vec::new(), Vec::new());
    // Changes come at random moments of the poll cycle, as people make them: a change
    // made right after the last one landed would always wait a whole interval.
    let mut seed: u64 = 0x5eed_1234_abcd_0042;
    for n in 0..changes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(poll.mul_f64((seed % 1000) as f64 / 1000.0));
        let (card, party) = &pairs[n % partners];
        let phone = format!("+32 9 {n:03} {:04}", n % partners);
        if n % 2 == 0 {
            sides.set_card_phone(card, &phone);
            to_tryton.push(time_until(|| {
                sides.party_phone(*party).as_deref() == Some(phone.as_str())
            }));
        } else {
            sides.set_party_phone(*party, &phone);
            to_card.push(time_until(|| {
                sides.card_phone(card).as_deref() == Some(phone.as_str())
            }));
        }
    }
    let all: Vec<Duration> = to_tryton.iter().chain(&to_card).copied().collect();
    report("card -> Tryton", to_tryton, poll);
    report("Tryton -> card", to_card, poll);
    report("both", all, poll);

    // Idle: settle, then one minute without changes.
    std::thread::sleep(poll * 3);
    let pid = running.0.id();
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(60));
    let used = cpu_time(pid) - before;
    println!(
        "idle tandem run (polls every {poll_text}, no back-off): {:.2} s CPU per minute ({:.2} % of one core)",
        used.as_secs_f64(),
        used.as_secs_f64() / 60.0 * 100.0
    );
}
