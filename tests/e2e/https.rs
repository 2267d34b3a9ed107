//! `tandem sync` over HTTPS: a real Radicale and a real trytond, each serving a
//! certificate issued by a private CA the test makes, trusted through `ca_file` in
//! tandem.toml. Without the right CA a run stops with an error that names the connector
//! and `ca_file`, exits non-zero and writes nothing.

use std::path::Path;

use serde_json::{Value as Json, json};
use tandem_connector_carddav::testsupport::CardServer;
use tandem_connector_tryton::Client;
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_model::field;

use crate::flagship::{Book, company, relations, text};
use crate::support::{Deployment, stderr, stdout};
use crate::tryton::{PARTY_FIELDS, Tryton, be_vat};

/// Which CA each connector is told to trust.
#[derive(Clone, Copy)]
struct Trust<'a> {
    book: Option<&'a Path>,
    erp: Option<&'a Path>,
}

fn ca_line(ca: Option<&Path>) -> String {
    ca.map(|p| format!("ca_file = \"{}\"", p.display()))
        .unwrap_or_default()
}

fn config(book: &str, server: &TrytonServer, trust: Trust) -> String {
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.book]
type = "carddav"
url = "{book}"
username = "{user}"
password = "${{CARDDAV_PASSWORD}}"
{book_ca}

[connectors.erp]
type = "tryton"
url = "{url}"
database = "{DATABASE}"
user = "admin"
password = "${{TRYTON_PASSWORD}}"
{erp_ca}

[contacts]
connector = "book"

[relations.CUST]
kind = "customer"
connector = "erp"
create_contacts = true
match = [["vat_registration_no"], ["email"]]
fields = {PARTY_FIELDS}
template = {{ language_code = "en" }}
"#,
        user = tandem_connector_carddav::testsupport::USER,
        url = server.url(),
        book_ca = ca_line(trust.book),
        erp_ca = ca_line(trust.erp),
    )
}

/// Both servers over HTTPS, each with a CA of its own; `None` when the environment is
/// missing (skipped locally).
fn tls_servers() -> Option<(CardServer, TrytonServer)> {
    let cards = CardServer::radicale_tls()?;
    let server = TrytonServer::start_tls()?;
    Some((cards, server))
}

/// Tryton's JSON-RPC over HTTPS, trusting the server's CA.
fn tryton(server: &TrytonServer) -> Tryton {
    let mut http = tandem_connector_tryton::rpc::default_http();
    http.ca_file = server.ca_file().map(ToOwned::to_owned);
    let password = server.password.clone().into();
    Tryton {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        rpc: Client::with_http(&server.url(), DATABASE, "admin", password, http).unwrap(),
    }
}

/// `tandem --json <args>` with both passwords in the environment.
fn tandem(d: &Deployment, server: &TrytonServer, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    d.tandem_env(
        &all,
        &[
            ("TRYTON_PASSWORD", &server.password),
            (
                "CARDDAV_PASSWORD",
                tandem_connector_carddav::testsupport::PASSWORD,
            ),
        ],
    )
}

/// A sync that must succeed with nothing failed; its report.
fn sync(d: &Deployment, server: &TrytonServer) -> Json {
    let out = tandem(d, server, &["sync"]);
    assert!(
        out.status.success(),
        "tandem sync failed ({:?}):\n{}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failures"], json!([]), "{report}");
    report
}

fn customer_ids(tryton: &Tryton) -> Vec<i64> {
    let customer = tryton.category("Customer");
    let ids = tryton.call(
        "party.party",
        "search",
        vec![
            json!([["categories", "=", customer]]),
            json!(0),
            Json::Null,
            Json::Null,
        ],
    );
    serde_json::from_value(ids).unwrap()
}

#[test]
fn https_radicale_and_tryton_sync_through_ca_file() {
    let Some((cards, server)) = tls_servers() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "tls");
    let tryton = tryton(&server);
    let customer = tryton.category("Customer");
    let acme = tryton.create(
        "party.party",
        json!({"name": "Acme NV", "categories": [["add", [customer]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(1)}]]]}),
    );
    tryton.create(
        "party.party",
        json!({"name": "Brightline Studio", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "hello@brightline.example"}]]]}),
    );
    let c_acme = book.create(
        company("Acme NV")
            .with(field::VAT_REGISTRATION_NO, be_vat(1).as_str())
            .with(field::PHONE, "+32 9 100 00 01"),
    );
    let c_newco = book.create(company("Newco Ltd").with(
        field::BUSINESS_RELATIONS,
        tandem_model::Value::list(vec!["CUST".into()]),
    ));
    let trust = Trust {
        book: cards.ca_file(),
        erp: server.ca_file(),
    };
    let d = Deployment::with_config(&config(&url, &server, trust));
    let out = tandem(&d, &server, &["check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    sync(&d, &server);
    let links = d.links();
    assert_eq!(links.len(), 3, "{links:?}");
    assert!(links.contains(&("CUST".into(), c_acme.clone(), acme.to_string())));
    let newco = links
        .iter()
        .find(|l| l.1 == c_newco)
        .expect("Newco got a customer");
    assert_eq!(tryton.party(&newco.2)["name"], "Newco Ltd");
    let bright = book
        .by_name("Brightline Studio")
        .expect("a card for Brightline");
    assert!(relations(&bright.fields).contains(&"CUST".into()));
    assert_eq!(
        Tryton::mechanism(&tryton.party(&acme.to_string()), "phone").as_deref(),
        Some("+32 9 100 00 01"),
        "the card's phone reached Tryton over HTTPS"
    );

    // Both ways, and then a run writes nothing.
    book.update(&c_acme, &[(field::PHONE, "+32 9 100 99 99")]);
    tryton.call(
        "party.party",
        "write",
        vec![
            json!([newco.2.parse::<i64>().unwrap()]),
            json!({"name": "Newco Limited"}),
        ],
    );
    sync(&d, &server);
    assert_eq!(
        Tryton::mechanism(&tryton.party(&acme.to_string()), "phone").as_deref(),
        Some("+32 9 100 99 99")
    );
    assert_eq!(
        text(&book.card(&c_newco).unwrap(), field::NAME).as_deref(),
        Some("Newco Limited")
    );
    assert_eq!(sync(&d, &server)["writes"], 0);
}

/// What a run must leave untouched: every card's version, the customers, the links.
#[derive(Debug, PartialEq)]
struct Footprint {
    cards: Vec<(String, Option<String>)>,
    customers: Vec<i64>,
    links: usize,
}

fn untouched(book: &Book, tryton: &Tryton, d: &Deployment) -> Footprint {
    let links = if d.state_exists() { d.links().len() } else { 0 };
    Footprint {
        cards: book.versions(),
        customers: customer_ids(tryton),
        links,
    }
}

#[test]
fn a_certificate_not_from_the_trusted_ca_names_the_connector_and_ca_file() {
    let Some((cards, server)) = tls_servers() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "wrong-ca");
    let tryton = tryton(&server);
    let customer = tryton.category("Customer");
    tryton.create(
        "party.party",
        json!({"name": "Acme NV", "categories": [["add", [customer]]]}),
    );
    book.create(company("Newco Ltd").with(
        field::BUSINESS_RELATIONS,
        tandem_model::Value::list(vec!["CUST".into()]),
    ));
    let (book_ca, erp_ca) = (cards.ca_file(), server.ca_file());
    // No ca_file (the system's roots), and the other server's CA.
    let cases = [
        (
            "book",
            Trust {
                book: None,
                erp: erp_ca,
            },
        ),
        (
            "book",
            Trust {
                book: erp_ca,
                erp: erp_ca,
            },
        ),
        (
            "erp",
            Trust {
                book: book_ca,
                erp: None,
            },
        ),
        (
            "erp",
            Trust {
                book: book_ca,
                erp: book_ca,
            },
        ),
    ];
    for (wrong, trust) in cases {
        let d = Deployment::with_config(&config(&url, &server, trust));
        let before = untouched(&book, &tryton, &d);
        let out = tandem(&d, &server, &["sync"]);
        let shown = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !out.status.success() && out.status.code() != Some(3),
            "a sync without the right CA for `{wrong}` must stop ({:?}):\n{shown}",
            out.status.code()
        );
        assert!(
            shown.contains(&format!("`{wrong}`")) || shown.contains(&format!("connectors.{wrong}")),
            "the error names the connector `{wrong}`:\n{shown}"
        );
        assert!(
            shown.contains("`ca_file`"),
            "the error names `ca_file`:\n{shown}"
        );
        assert_eq!(
            untouched(&book, &tryton, &d),
            before,
            "nothing written:\n{shown}"
        );
        let out = tandem(&d, &server, &["check"]);
        let shown = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.contains("`ca_file`"),
            "`tandem check` names `ca_file`:\n{shown}"
        );
    }
}
