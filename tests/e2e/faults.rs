//! The network as real servers make it: a proxy in front of the real Radicale and the
//! real trytond (`tandem_connector::http::testing::FaultProxy`) injects, on a fifth of
//! the requests chosen by a seeded generator, 429 with `Retry-After: 1`, 503, dropped
//! connections, slow replies, and replies dropped after the server acted. The same
//! scenario (customers in Tryton, some of them and a few requests for new customers in
//! the address book, `create_contacts = true`, edits on both sides between runs) runs
//! once without faults on fresh servers and once with them, syncing until a run ends
//! with nothing failed; both must end with the same cards, parties and links: no
//! duplicate, no lost update, every customer with its contact.
//!
//! The figures (runs, requests, faults, time against the fault-free run) are printed
//! (`--no-capture`). `TANDEM_FAULT_SEED` and `TANDEM_FAULT_SHARE` try another seed and
//! share; `TANDEM_FAULT_SEQUENTIAL=1` runs the two deployments one after the other, for
//! times that do not share the CPU. See docs/BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tandem_connector::http::testing::{Fault, FaultProxy, RandomFaults};
use tandem_connector::{BuildContext, Connector, WriteOp};
use tandem_connector_carddav::testsupport::{CardServer, PASSWORD, USER};
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_connector_tryton::{Settings, TrytonConnector};
use tandem_model::{EntityKind, Fields, Value, field};

use crate::flagship::{Book, company};
use crate::support::{Deployment, stderr, stdout};
use crate::tryton::{PARTY_FIELDS, Tryton, be_vat};

/// The seed of the faults, unless `TANDEM_FAULT_SEED` says otherwise.
const SEED: u64 = 14;
/// The share of requests that get a fault, unless `TANDEM_FAULT_SHARE` says otherwise.
const FAULT_SHARE: f64 = 0.2;
/// Runs a phase may take before the test gives up.
const MAX_RUNS: usize = 10;
/// Customers in Tryton at the start; the first [`MATCHED`] have a card.
const CUSTOMERS: u32 = 130;
const MATCHED: u32 = 40;
/// Cards that ask to become customers (`CATEGORIES:CUST`), matching none (R5).
const REQUESTS: u32 = 10;
/// Cards no relation wants: left alone.
const PRIVATE: u32 = 5;
/// Customers added in Tryton, and cards asking to become one, after the first phase.
const LATE_CUSTOMERS: u32 = 5;
const LATE_REQUESTS: u32 = 2;

/// `TANDEM_FAULT_SEED` and `TANDEM_FAULT_SHARE` try other seeds and shares.
fn from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn customer_name(i: u32) -> String {
    format!("Customer {i:03} NV")
}

fn customer_email(i: u32) -> String {
    format!("office@customer-{i:03}.example")
}

fn request_name(j: u32) -> String {
    format!("Newco {j:02} BV")
}

/// Customer `i` as Tryton holds it at the start: every third one known by VAT number,
/// every one with an address, a phone and an e-mail.
fn party_values(i: u32, customer: i64) -> Json {
    let mut party = json!({
        "name": customer_name(i),
        "categories": [["add", [customer]]],
        "addresses": [["create", [{"street_unstructured": format!("Stationsstraat {i}"),
                                   "city": "Gent", "postal_code": format!("{}", 9000 + i)}]]],
        "contact_mechanisms": [["create", [
            {"type": "phone", "value": format!("+32 9 {i:03} 00 00")},
            {"type": "email", "value": customer_email(i)}]]],
    });
    if i.is_multiple_of(3) {
        party["identifiers"] = json!([["create", [{"type": "eu_vat", "code": be_vat(i)}]]]);
    }
    party
}

/// The card of customer `i`: matched by VAT number or else by e-mail; every fourth one
/// with a phone of its own (the link starts from the card's values).
fn matching_card(i: u32) -> Fields {
    let mut card = company(&customer_name(i));
    card = match i % 3 {
        0 => card.with(field::VAT_REGISTRATION_NO, be_vat(i).as_str()),
        _ => card.with(field::EMAIL, customer_email(i).as_str()),
    };
    if i.is_multiple_of(4) {
        card = card.with(field::PHONE, format!("+32 470 {i:03} 000").as_str());
    }
    card
}

/// A card asking to become a customer; every other one without an e-mail, so that
/// no match rule could find its customer again if the create were lost.
fn requesting_card(name: &str, n: u32) -> Fields {
    let card = company(name)
        .with(field::ADDRESS, format!("Kerkstraat {n}").as_str())
        .with(field::CITY, "Brugge")
        .with(field::POST_CODE, "8000")
        .with(field::PHONE, format!("+32 50 {n:02} 00 00").as_str())
        .with(field::BUSINESS_RELATIONS, Value::list(vec!["CUST".into()]));
    match n % 2 {
        1 => card.with(
            field::EMAIL,
            format!("info@request-{n:02}.example").as_str(),
        ),
        _ => card,
    }
}

fn private_card(n: u32) -> Fields {
    company(&format!("Private Contact {n}"))
        .with(field::EMAIL, format!("me@private-{n}.example").as_str())
}

/// A Radicale and a trytond of their own, each behind a proxy, and clients that reach
/// them directly (to seed, edit and inspect them without faults).
struct Systems {
    _cards: CardServer,
    server: TrytonServer,
    book: Book,
    book_proxy: FaultProxy,
    book_url: String,
    erp_proxy: FaultProxy,
    tryton: Tryton,
    /// The id of Tryton's `Customer` category.
    customer_category: i64,
}

impl Systems {
    fn start(name: &str) -> Option<Systems> {
        let cards = CardServer::radicale()?;
        let server = TrytonServer::start()?;
        let (book, url) = Book::new_on(&cards, name);
        let book_proxy = FaultProxy::start(cards.port);
        let book_url = url.replace(&cards.base(), &book_proxy.url());
        let tryton = Tryton::new(&server);
        let customer_category = tryton.category("Customer");
        Some(Systems {
            erp_proxy: FaultProxy::start(server.port),
            _cards: cards,
            server,
            book,
            book_proxy,
            book_url,
            tryton,
            customer_category,
        })
    }

    /// Injects faults from now on, a stream of its own for each proxy. Whatever the
    /// seed, the first `create` and the first `write` Tryton runs lose their replies:
    /// Tryton's writes are not sent twice, so those are the faults the next run must
    /// recover from (R18), and few enough calls go to Tryton that a seed may miss them.
    fn inject_faults(&self, seed: u64) {
        let slow = Duration::from_millis(400);
        let share = from_env("TANDEM_FAULT_SHARE", FAULT_SHARE);
        let faults = |seed| Some(RandomFaults::mixed(seed, share, 1, slow));
        self.book_proxy.set_random(faults(seed));
        self.erp_proxy.set_random(faults(seed.wrapping_add(1)));
        for call in ["model.party.party.create", "model.party.party.write"] {
            self.erp_proxy.inject(call, Fault::DropAfterForward, 1);
        }
    }

    fn create_cards(&self, cards: Vec<Fields>) {
        let ops: Vec<WriteOp> = cards.into_iter().map(WriteOp::create).collect();
        for chunk in ops.chunks(tandem_connector_carddav::MAX_BATCH) {
            let written = self
                .book
                .rt
                .block_on(
                    self.book
                        .connector
                        .write(EntityKind::Contact, chunk.to_vec()),
                )
                .unwrap();
            assert!(written.iter().all(Result::is_ok), "{written:?}");
        }
    }

    fn create_parties(&self, numbers: impl Iterator<Item = u32>) {
        let values: Vec<Json> = numbers
            .map(|i| party_values(i, self.customer_category))
            .collect();
        self.tryton
            .call("party.party", "create", vec![json!(values)]);
    }

    /// The data both runs start from.
    fn seed_data(&self) {
        self.create_parties(1..=CUSTOMERS);
        let mut cards: Vec<Fields> = (1..=MATCHED).map(matching_card).collect();
        cards.extend((1..=REQUESTS).map(|j| requesting_card(&request_name(j), j)));
        cards.extend((1..=PRIVATE).map(private_card));
        self.create_cards(cards);
    }
}

/// A change a user makes on one side, to the card or the party named `name`.
#[derive(Debug, Clone)]
struct Edit {
    on_card: bool,
    name: String,
    field: &'static str,
    value: String,
}

fn on_card(name: String, field: &'static str, value: String) -> Edit {
    Edit {
        on_card: true,
        name,
        field,
        value,
    }
}

fn on_party(name: String, field: &'static str, value: String) -> Edit {
    Edit {
        on_card: false,
        name,
        field,
        value,
    }
}

/// Edits made right after the first run, whatever it managed: to the seeded records
/// and to the customers made for requests, on both sides, four of them on the same
/// field of both sides (`contact_wins` settles those).
fn edits_after_first_run() -> Vec<Edit> {
    let mut edits = Vec::new();
    for i in 1..=6 {
        let phone = format!("+32 470 99 00 {i:02}");
        edits.push(on_card(customer_name(i), field::PHONE, phone));
    }
    // Customer 8's card had a phone of its own, written to Tryton by the first run
    // (whose first `write` lost its reply when faults are on): edited again there.
    edits.push(on_party(
        customer_name(8),
        field::PHONE,
        "+32 9 008 77 77".into(),
    ));
    for i in (31..=36).chain(101..=106) {
        edits.push(on_party(customer_name(i), field::CITY, "Leuven".into()));
    }
    for i in [9, 15, 21] {
        let (card, party) = (
            format!("sales@c{i}.example"),
            format!("billing@c{i}.example"),
        );
        edits.push(on_card(customer_name(i), field::EMAIL, card));
        edits.push(on_party(customer_name(i), field::EMAIL, party));
    }
    // Customers the first run made for requests (its first `create` lost its reply
    // when faults are on): found again with the edits made since on either side.
    for j in 1..=3 {
        let phone = format!("+32 50 99 00 {j:02}");
        edits.push(on_card(request_name(j), field::PHONE, phone));
    }
    edits.push(on_party(request_name(7), field::CITY, "Oostende".into()));
    edits.push(on_card(
        request_name(8),
        field::PHONE,
        "+32 50 88 00 01".into(),
    ));
    edits.push(on_party(
        request_name(8),
        field::PHONE,
        "+32 50 88 00 02".into(),
    ));
    edits
}

/// Edits made once the first phase settled: to records Tandem made (cards for
/// customers, customers for cards), and one more field edited on both sides.
fn edits_after_settling() -> Vec<Edit> {
    let mut edits = Vec::new();
    for i in 50..=54 {
        let phone = format!("+32 2 555 00 {i:02}");
        edits.push(on_card(customer_name(i), field::PHONE, phone));
    }
    for j in 4..=6 {
        let name = format!("Newco {j:02} Group");
        edits.push(on_party(request_name(j), field::NAME, name));
    }
    edits.push(on_card(
        customer_name(12),
        field::PHONE,
        "+32 9 012 11 11".into(),
    ));
    edits.push(on_party(
        customer_name(12),
        field::PHONE,
        "+32 9 012 22 22".into(),
    ));
    edits
}

impl Systems {
    fn apply(&self, edits: &[Edit]) {
        let cards: BTreeMap<String, String> = self
            .book
            .all()
            .into_iter()
            .map(|r| (r.fields.text(field::NAME).unwrap().to_owned(), r.id))
            .collect();
        let parties = self.party_ids();
        for edit in edits {
            let missing = || format!("nothing named {} to edit", edit.name);
            if edit.on_card {
                let id = cards
                    .get(&edit.name)
                    .unwrap_or_else(|| panic!("{}", missing()));
                self.book.update(id, &[(edit.field, edit.value.as_str())]);
            } else {
                let party = parties
                    .get(&edit.name)
                    .unwrap_or_else(|| panic!("{}", missing()));
                self.edit_party(party[0], edit.field, &edit.value);
            }
        }
    }

    fn edit_party(&self, party: i64, name: &str, value: &str) {
        let first = |model: &str, domain: Json| {
            let ids = self.tryton.call(
                model,
                "search",
                vec![domain, json!(0), json!(1), Json::Null],
            );
            ids[0].as_i64().unwrap()
        };
        let (model, id, values) = match name {
            field::NAME => ("party.party", party, json!({"name": value})),
            field::CITY => (
                "party.address",
                first("party.address", json!([["party", "=", party]])),
                json!({"city": value}),
            ),
            field::PHONE | field::EMAIL => (
                "party.contact_mechanism",
                first(
                    "party.contact_mechanism",
                    json!([["party", "=", party], ["type", "=", name]]),
                ),
                json!({"value": value}),
            ),
            other => panic!("no edit of {other} in Tryton"),
        };
        self.tryton.call(model, "write", vec![json!([id]), values]);
    }

    /// Every party, active or not, by name: its ids.
    fn party_ids(&self) -> BTreeMap<String, Vec<i64>> {
        let rows = self.tryton.call(
            "party.party",
            "search_read",
            vec![
                json!([["active", "in", [true, false]]]),
                json!(0),
                Json::Null,
                Json::Null,
                json!(["name"]),
            ],
        );
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for row in rows.as_array().unwrap() {
            let name = row["name"].as_str().unwrap().to_owned();
            out.entry(name)
                .or_default()
                .push(row["id"].as_i64().unwrap());
        }
        out
    }

    /// The parties that are customers, as the Tryton connector reads them.
    fn customers(&self) -> Vec<tandem_model::Record> {
        let context = BuildContext {
            base_dir: std::env::temp_dir(),
        };
        let settings = Settings::parse(self.server.settings(), &context).unwrap();
        let connector = TrytonConnector::new(settings).unwrap();
        let mut records = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .book
                .rt
                .block_on(connector.read(EntityKind::Customer, cursor.as_ref()))
                .unwrap();
            records.extend(page.records);
            cursor = page.cursor;
            if !page.has_more {
                return records;
            }
        }
    }
}

/// Every card, customer and link, by name (ids differ between two deployments).
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Each card name: the fields of every card of that name.
    cards: BTreeMap<String, Vec<Fields>>,
    /// Each customer name: the fields of every customer of that name, without
    /// `x_code` (Tryton's sequence numbers parties in the order they were made).
    customers: BTreeMap<String, Vec<Fields>>,
    /// Each party name, customer or not, active or not: how many parties have it.
    parties: BTreeMap<String, usize>,
    /// (code, card name, customer name)
    links: BTreeSet<(String, String, String)>,
}

fn by_name(
    records: Vec<tandem_model::Record>,
) -> (BTreeMap<String, Vec<Fields>>, BTreeMap<String, String>) {
    let mut fields: BTreeMap<String, Vec<Fields>> = BTreeMap::new();
    let mut names = BTreeMap::new();
    for record in records {
        let name = record.fields.text(field::NAME).unwrap_or("").to_owned();
        names.insert(record.id, name.clone());
        let kept = record.fields.iter().filter(|(n, _)| n.as_str() != "x_code");
        fields
            .entry(name)
            .or_default()
            .push(kept.map(|(n, v)| (n.clone(), v.clone())).collect());
    }
    (fields, names)
}

fn outcome(sys: &Systems, d: &Deployment) -> Outcome {
    let (cards, card_names) = by_name(sys.book.all());
    let (customers, customer_names) = by_name(sys.customers());
    let name = |names: &BTreeMap<String, String>, id: &str| {
        names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("<no record {id}>"))
    };
    let links = d
        .links()
        .into_iter()
        .map(|(code, contact, account)| {
            (
                code,
                name(&card_names, &contact),
                name(&customer_names, &account),
            )
        })
        .collect();
    let parties = sys
        .party_ids()
        .into_iter()
        .map(|(n, ids)| (n, ids.len()))
        .collect();
    Outcome {
        cards,
        customers,
        parties,
        links,
    }
}

fn config(sys: &Systems) -> String {
    // Quick retries: the waits the test cares about are the server's `Retry-After`.
    let retry =
        r#"retry = { attempts = 6, min_delay = "50ms", max_delay = "1s", max_elapsed = "30s" }"#;
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.book]
type = "carddav"
url = "{book}"
username = "{USER}"
password = "${{CARDDAV_PASSWORD}}"
timeout = "10s"
{retry}

[connectors.erp]
type = "tryton"
url = "{erp}"
database = "{DATABASE}"
user = "admin"
password = "${{TRYTON_PASSWORD}}"
timeout = "10s"
{retry}

[contacts]
connector = "book"

[relations.CUST]
kind = "customer"
connector = "erp"
create_contacts = true
match = [["vat_registration_no"], ["email"]]
fields = {PARTY_FIELDS}
conflict = "contact_wins"
template = {{ language_code = "en" }}
"#,
        book = sys.book_url,
        erp = sys.erp_proxy.url(),
    )
}

/// What a scenario took.
#[derive(Debug, Default)]
struct Figures {
    /// For each phase, what each of its runs failed: the records, or `None` when the
    /// run stopped (a read that failed for good).
    phases: Vec<Vec<Option<usize>>>,
    /// Time spent in `tandem sync`.
    elapsed: Duration,
    book_requests: usize,
    erp_requests: usize,
    /// Faults injected, by kind.
    faults: BTreeMap<String, usize>,
    /// Faults injected into writes (CardDAV `PUT`, Tryton `create` and `write`), by
    /// system, call and kind: where a lost reply tests what the server did.
    write_faults: BTreeMap<String, usize>,
}

/// The call a write request makes, `None` for any other request.
fn write_call(system: &str, label: &str) -> Option<String> {
    if label.starts_with("PUT ") {
        return Some(format!("{system} PUT"));
    }
    let method = label.rsplit(' ').next()?;
    (method.ends_with(".create") || method.ends_with(".write"))
        .then(|| format!("{system} {}", method.rsplit('.').next().unwrap_or(method)))
}

impl Figures {
    fn runs(&self) -> Vec<usize> {
        self.phases.iter().map(Vec::len).collect()
    }

    fn summary(&self) -> String {
        let faults = match self.faults.values().sum::<usize>() {
            0 => "no faults".to_owned(),
            n => format!(
                "{n} faults ({}; on writes: {})",
                list(&self.faults),
                list(&self.write_faults)
            ),
        };
        let failed: Vec<String> = self
            .phases
            .iter()
            .map(|runs| {
                let each: Vec<String> = runs
                    .iter()
                    .map(|f| f.map_or("stopped".into(), |n| n.to_string()))
                    .collect();
                each.join(", ")
            })
            .collect();
        format!(
            "{} runs (records failed per run: {}), {} requests (CardDAV {}, Tryton {}), \
             {:.1} s in `tandem sync`, {faults}",
            self.runs().iter().sum::<usize>(),
            failed.join(" | "),
            self.book_requests + self.erp_requests,
            self.book_requests,
            self.erp_requests,
            self.elapsed.as_secs_f64(),
        )
    }
}

/// `key: count, ...`
fn list(counts: &BTreeMap<String, usize>) -> String {
    let items: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    items.join(", ")
}

/// One deployment of the scenario on `sys`.
struct Scenario<'a> {
    sys: &'a Systems,
    d: Deployment,
    figures: Figures,
}

impl Scenario<'_> {
    /// `tandem --json <args>`: its exit code and JSON report (the error object for a
    /// run that stopped).
    fn tandem(&mut self, args: &[&str]) -> (Option<i32>, Json) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let started = Instant::now();
        let out = self.d.tandem_env(
            &all,
            &[
                ("TRYTON_PASSWORD", &self.sys.server.password),
                ("CARDDAV_PASSWORD", PASSWORD),
            ],
        );
        if args == ["sync"] {
            self.figures.elapsed += started.elapsed();
        }
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
        // A run that stopped prints an error object (`{"error": ...}`) instead.
        if report.is_null() || report.get("error").is_some() {
            eprintln!(
                "tandem {args:?} ({:?}):\n{}{}",
                out.status.code(),
                stdout(&out),
                stderr(&out)
            );
        }
        (out.status.code(), report)
    }

    fn begin_phase(&mut self) {
        self.figures.phases.push(Vec::new());
    }

    /// One run of the current phase; its report, and whether it ended with nothing
    /// failed.
    fn sync(&mut self) -> (Json, bool) {
        let (code, report) = self.tandem(&["sync"]);
        let failed = report["failures"].as_array().map(Vec::len);
        let phase = self.figures.phases.last_mut().expect("a phase");
        phase.push(failed);
        (report, code == Some(0) && failed == Some(0))
    }

    /// Syncs until a run exits 0 with nothing failed, at most [`MAX_RUNS`] times.
    fn sync_until_settled(&mut self) {
        let mut last = Json::Null;
        for _ in 0..MAX_RUNS {
            let (report, settled) = self.sync();
            if settled {
                return;
            }
            last = report;
        }
        panic!(
            "no run of {MAX_RUNS} ended with nothing failed; the last report:\n{last:#}\n\
             status:\n{:#}\nlast faults:\n{}",
            self.tandem(&["status"]).1,
            self.last_faults()
        );
    }

    fn last_faults(&self) -> String {
        let mut lines = Vec::new();
        for (system, proxy) in [
            ("CardDAV", &self.sys.book_proxy),
            ("Tryton", &self.sys.erp_proxy),
        ] {
            let injected = proxy.injected();
            for f in injected.iter().rev().take(20).rev() {
                lines.push(format!(
                    "{system} #{} {}: {}",
                    f.request,
                    f.label,
                    f.fault.kind()
                ));
            }
        }
        lines.join("\n")
    }

    fn count_requests(&mut self) {
        self.figures.book_requests = self.sys.book_proxy.requests();
        self.figures.erp_requests = self.sys.erp_proxy.requests();
        for (system, proxy) in [
            ("CardDAV", &self.sys.book_proxy),
            ("Tryton", &self.sys.erp_proxy),
        ] {
            for f in proxy.injected() {
                *self.figures.faults.entry(f.fault.kind()).or_default() += 1;
                if let Some(call) = write_call(system, &f.label) {
                    let key = format!("{call} {}", f.fault.kind());
                    *self.figures.write_faults.entry(key).or_default() += 1;
                }
            }
        }
    }
}

/// The scenario on `sys`: seeded data, a first run, edits, runs until settled; then
/// more customers, requests and edits, runs until settled.
fn run_scenario(sys: &Systems, faults: Option<u64>) -> (Outcome, Figures) {
    sys.seed_data();
    if let Some(seed) = faults {
        sys.inject_faults(seed);
    }
    let mut s = Scenario {
        sys,
        d: Deployment::with_config(&config(sys)),
        figures: Figures::default(),
    };
    s.begin_phase();
    // The first run gets what it gets; the edits come whatever it managed.
    let (first, settled) = s.sync();
    assert!(settled || faults.is_some(), "{first:#}");
    sys.apply(&edits_after_first_run());
    s.sync_until_settled();

    s.begin_phase();
    sys.create_parties(CUSTOMERS + 1..=CUSTOMERS + LATE_CUSTOMERS);
    let late = (1..=LATE_REQUESTS).map(|n| requesting_card(&format!("Latecomer {n} SA"), 90 + n));
    sys.create_cards(late.collect());
    sys.apply(&edits_after_settling());
    s.sync_until_settled();
    s.count_requests();

    // Settled means settled: without faults, a further run writes nothing.
    sys.book_proxy.set_random(None);
    sys.erp_proxy.set_random(None);
    let (code, quiet) = s.tandem(&["sync"]);
    assert_eq!((code, &quiet["writes"]), (Some(0), &json!(0)), "{quiet:#}");
    (outcome(sys, &s.d), s.figures)
}

/// (name, field) -> the value both sides of that pair must end with: the last edit,
/// the card's where both sides changed the field in the same phase (`contact_wins`),
/// under the pair's new name where it was renamed.
fn expected_values() -> BTreeMap<(String, &'static str), String> {
    let mut expected = BTreeMap::new();
    for phase in [edits_after_first_run(), edits_after_settling()] {
        // Party edits first, so that the card's edit of the same field wins.
        let (cards, parties): (Vec<Edit>, Vec<Edit>) = phase.into_iter().partition(|e| e.on_card);
        for edit in parties.into_iter().chain(cards) {
            expected.insert((edit.name, edit.field), edit.value);
        }
    }
    let renamed: BTreeMap<String, String> = expected
        .iter()
        .filter(|((_, f), _)| *f == field::NAME)
        .map(|((old, _), new)| (old.clone(), new.clone()))
        .collect();
    expected
        .into_iter()
        .map(|((name, f), v)| ((renamed.get(&name).cloned().unwrap_or(name), f), v))
        .collect()
}

/// No duplicates, every customer with its contact, and every edit on both sides.
fn check(outcome: &Outcome, run: &str) {
    let twice = |m: &BTreeMap<String, Vec<Fields>>| -> Vec<String> {
        m.iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert_eq!(
        twice(&outcome.cards),
        Vec::<String>::new(),
        "{run}: cards made twice"
    );
    assert_eq!(
        twice(&outcome.customers),
        Vec::<String>::new(),
        "{run}: customers made twice"
    );
    let parties: Vec<_> = outcome.parties.iter().filter(|(_, n)| **n > 1).collect();
    assert!(parties.is_empty(), "{run}: parties made twice: {parties:?}");
    let customers = CUSTOMERS + REQUESTS + LATE_CUSTOMERS + LATE_REQUESTS;
    assert_eq!(
        outcome.customers.len(),
        customers as usize,
        "{run}: customers"
    );
    assert_eq!(
        outcome.cards.len(),
        (customers + PRIVATE) as usize,
        "{run}: cards"
    );
    let linked: BTreeSet<&String> = outcome.links.iter().map(|(_, _, c)| c).collect();
    let unlinked: Vec<_> = outcome
        .customers
        .keys()
        .filter(|c| !linked.contains(c))
        .collect();
    assert!(
        unlinked.is_empty(),
        "{run}: customers without a contact: {unlinked:?}"
    );
    for (code, card, customer) in &outcome.links {
        assert_eq!(
            (code.as_str(), card),
            ("CUST", customer),
            "{run}: a link of two names"
        );
        let codes = outcome.cards[card][0]
            .get(field::BUSINESS_RELATIONS)
            .map(Value::to_string);
        assert!(
            codes.is_some_and(|c| c.contains("CUST")),
            "{run}: {card} does not show CUST"
        );
    }
    for ((name, f), value) in expected_values() {
        for (side, records) in [("card", &outcome.cards), ("customer", &outcome.customers)] {
            let held = records
                .get(&name)
                .and_then(|r| r[0].text(f).map(str::to_owned));
            assert_eq!(
                held.as_deref(),
                Some(value.as_str()),
                "{run}: {f} of the {side} {name}"
            );
        }
    }
}

/// The entries of two maps that differ, for a readable failure.
fn differences<V: PartialEq + std::fmt::Debug>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}:\n  fault-free: {:?}\n  faults:     {:?}",
                a.get(k),
                b.get(k)
            )
        })
        .collect()
}

fn assert_same(reference: &Outcome, outcome: &Outcome) {
    let mut diff = differences(&reference.cards, &outcome.cards);
    diff.extend(differences(&reference.customers, &outcome.customers));
    diff.extend(differences(&reference.parties, &outcome.parties));
    let extra: Vec<_> = reference
        .links
        .symmetric_difference(&outcome.links)
        .collect();
    assert!(
        diff.is_empty() && extra.is_empty(),
        "the run with faults ended unlike the fault-free one:\n{}\nlinks in one only: {extra:?}",
        diff.join("\n"),
    );
    assert_eq!(reference, outcome);
}

/// The scenario on servers of its own, without faults or with faults from `seed`;
/// `None` when the servers' environment is missing (skipped locally).
fn on_fresh_servers(faults: Option<u64>) -> Option<(Outcome, Figures)> {
    let name = if faults.is_some() { "faults" } else { "clean" };
    let sys = Systems::start(name)?;
    Some(run_scenario(&sys, faults))
}

/// The fault-free run and the run with faults, side by side: the one waits out
/// `Retry-After`s while the other works. `TANDEM_FAULT_SEQUENTIAL=1` runs them one
/// after the other, so that neither's time includes the other's load.
fn both_runs(seed: u64) -> Option<((Outcome, Figures), (Outcome, Figures))> {
    if std::env::var_os("TANDEM_FAULT_SEQUENTIAL").is_some_and(|v| v != "0") {
        return Some((on_fresh_servers(None)?, on_fresh_servers(Some(seed))?));
    }
    let joined = |h: std::thread::ScopedJoinHandle<'_, _>| {
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    };
    std::thread::scope(|s| {
        let clean = s.spawn(|| on_fresh_servers(None));
        let faulty = s.spawn(|| on_fresh_servers(Some(seed)));
        Some((joined(clean)?, joined(faulty)?))
    })
}

#[test]
fn a_fifth_of_requests_failing_ends_like_a_fault_free_run() {
    let seed = from_env("TANDEM_FAULT_SEED", SEED);
    let Some(((reference, clean), (outcome, faulty))) = both_runs(seed) else {
        return;
    };
    println!(
        "faults on {:.0} % of requests, seed {seed}:\n  fault-free:  {}\n  with faults: {}",
        from_env("TANDEM_FAULT_SHARE", FAULT_SHARE) * 100.0,
        clean.summary(),
        faulty.summary()
    );
    check(&reference, "fault-free");
    assert_eq!(
        clean.runs(),
        [2, 1],
        "fault-free: one run per phase after the edits"
    );
    check(&outcome, "with faults");
    assert_same(&reference, &outcome);
    assert!(
        faulty.faults.values().sum::<usize>() > 0,
        "no fault was injected"
    );
}
