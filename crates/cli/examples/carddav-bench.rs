//! Benchmark: the first sync of N contacts in a real Radicale address book with N
//! customers in a file, as `tandem sync` runs it (CardDAV connector, file connector,
//! SQLite state), then a second sync with nothing changed.
//!
//! ```sh
//! eval "$(bash scripts/carddav-env)"
//! cargo run --release -p tandem-cli --example carddav-bench -- 2000 [max_concurrent_writes]
//! cargo run --release -p tandem-cli --example carddav-bench -- 2000 reads
//! ```
//!
//! The N company cards are written into Radicale's storage folder before it is read
//! (sending them one `PUT` at a time would take minutes and is not what is measured).
//! Of the N customers, a quarter match a card by VAT number, a quarter by e-mail, a
//! quarter by name and post code, and a quarter have no card: the first sync links
//! three quarters (each card gets `CUST` in its categories, R9: an update) and creates
//! a card for the rest. It prints the wall time of each sync, the time spent in the
//! CardDAV connector's calls (reads, writes, reads by id), and the card writes. With
//! `reads`, it times four full listings of the seeded book instead (the first one also
//! fills Radicale's cache), which is what the multiget batch size changes.

#[path = "support/timed.rs"]
mod timed;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_connector::{BuildContext, Connector, ConnectorFactory};
use tandem_connector_carddav::CarddavConnector;
use tandem_connector_carddav::testsupport::{CardServer, USER};
use tandem_connector_file::FileConnectorFactory;
use tandem_engine::{ContactsConfig, RelationConfig, SyncConfig};
use tandem_model::EntityKind;
use timed::Timed;

/// A valid Belgian VAT number, different for every `n`.
fn be_vat(n: usize) -> String {
    let base = 4_000_000 + n as u64 * 13;
    format!("BE{base:08}{:02}", 97 - base % 97)
}

/// Card `i` as a company vCard 3.0.
fn card(i: usize) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bench-{i}\r\nFN:Bench Partner {i}\r\n\
         ORG:Bench Partner {i}\r\nN:;;;;\r\nX-ADDRESSBOOKSERVER-KIND:org\r\n\
         ADR;TYPE=WORK:;;Benchstraat {i};Gent;;{};BE\r\nTEL;TYPE=WORK:+32 9 {:03} {:04}\r\n\
         EMAIL;TYPE=WORK:partner{i}@bench.example\r\n{}END:VCARD\r\n",
        1000 + i,
        i % 1000,
        i,
        // The VAT number where this card is to match by it.
        if i.is_multiple_of(4) {
            format!("X-TANDEM-VAT-REGISTRATION-NO:{}\r\n", be_vat(i))
        } else {
            String::new()
        }
    )
}

/// The customers: a quarter each matching by VAT, by e-mail, by name and post code, and
/// without a card.
fn customers(n: usize) -> String {
    let mut out =
        String::from("id,name,address,city,post_code,country_code,email,vat_registration_no\n");
    for i in 0..n {
        let (name, post_code, email, vat) = match i % 4 {
            0 => (format!("Customer {i}"), 5000 + i, String::new(), be_vat(i)),
            1 => (
                format!("Customer {i}"),
                5000 + i,
                format!("partner{i}@bench.example"),
                String::new(),
            ),
            2 => (
                format!("Bench Partner {i}"),
                1000 + i,
                String::new(),
                String::new(),
            ),
            _ => (
                format!("New Customer {i}"),
                7000 + i,
                String::new(),
                String::new(),
            ),
        };
        out.push_str(&format!(
            "K{i:05},{name},Klantenlaan {i},Gent,{post_code},BE,{email},{vat}\n"
        ));
    }
    out
}

struct Measured {
    wall: Duration,
    carddav: Duration,
    card_writes: u64,
    linked: u64,
    created: u64,
}

async fn run(
    config: &SyncConfig,
    connectors: &HashMap<String, Arc<dyn Connector>>,
    timed: &Timed,
    state_path: &std::path::Path,
) -> Measured {
    let s = timed::sync_timed(config, connectors, timed, state_path).await;
    Measured {
        wall: s.wall,
        carddav: s.in_connector,
        card_writes: s.writes,
        linked: s.linked,
        created: s.created,
    }
}

/// Radicale with book `bench` holding cards 0..n, written into its storage folder.
fn seeded_radicale(rt: &tokio::runtime::Runtime, n: usize) -> (CardServer, String) {
    let server = CardServer::radicale().expect("run `eval \"$(bash scripts/carddav-env)\"` first");
    let book = rt.block_on(server.new_book("bench"));
    let folder = server
        .storage()
        .join("collection-root")
        .join(USER)
        .join("bench");
    for i in 0..n {
        std::fs::write(folder.join(format!("bench-{i}.vcf")), card(i)).expect("a card");
    }
    (server, book)
}

/// `reads` full listings of the seeded book, each timed: what the multiget batch size
/// changes.
fn full_reads(rt: &tokio::runtime::Runtime, n: usize, reads: usize) {
    let (server, book) = seeded_radicale(rt, n);
    let c = CarddavConnector::from_settings(server.settings(&book)).unwrap();
    let batch = tandem_connector_carddav::MULTIGET_BATCH;
    for i in 0..reads {
        let started = Instant::now();
        let page = rt.block_on(c.read(EntityKind::Contact, None)).unwrap();
        assert_eq!(page.records.len(), n);
        let took = started.elapsed().as_secs_f64();
        println!("full listing {i} of {n} cards, multiget batch {batch}: {took:.2} s");
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().expect("N")).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let second = args.next();
    if second.as_deref() == Some("reads") {
        return full_reads(&rt, n, 4);
    }
    let writes: Option<usize> = second.map(|a| a.parse().expect("max_concurrent_writes"));
    let (server, book) = seeded_radicale(&rt, n);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("erp")).unwrap();
    std::fs::write(dir.path().join("erp/customers.csv"), customers(n)).unwrap();
    let context = BuildContext {
        base_dir: dir.path().to_owned(),
    };

    let mut settings = server.settings(&book);
    if let Some(w) = writes {
        settings["max_concurrent_writes"] = json!(w);
    }
    let timed = Timed::around(Arc::new(CarddavConnector::from_settings(settings).unwrap()));
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("crm".into(), timed.clone());
    connectors.insert(
        "erp".into(),
        FileConnectorFactory
            .build(json!({"path": "erp"}), &context)
            .unwrap(),
    );
    let relation: RelationConfig = serde_json::from_value(json!({
        "kind": "customer",
        "connector": "erp",
        "create_contacts": true,
        "match": [["vat_registration_no"], ["email"], ["name", "post_code"]],
    }))
    .unwrap();
    let config = SyncConfig::new(
        ContactsConfig {
            connector: "crm".into(),
            preserve: None,
        },
        BTreeMap::from([("CUST".to_owned(), relation)]),
    )
    .unwrap();
    let state_path = dir.path().join("state.db");
    let first = rt.block_on(run(&config, &connectors, &timed, &state_path));
    let second = rt.block_on(run(&config, &connectors, &timed, &state_path));
    assert_eq!(second.card_writes, 0, "nothing left to write");

    println!(
        "N = {n} cards x {n} customers, Radicale on 127.0.0.1, max_concurrent_writes {}, multiget batch {}",
        writes.map_or("default".to_owned(), |w| w.to_string()),
        tandem_connector_carddav::MULTIGET_BATCH
    );
    println!(
        "{:<7} {:>8} {:>9} {:>7} {:>12} {:>10}",
        "sync", "wall s", "CardDAV s", "linked", "cards made", "card writes"
    );
    for (name, m) in [("first", &first), ("second", &second)] {
        println!(
            "{:<7} {:>8.1} {:>9.1} {:>7} {:>12} {:>10}",
            name,
            m.wall.as_secs_f64(),
            m.carddav.as_secs_f64(),
            m.linked,
            m.created,
            m.card_writes
        );
    }
}
