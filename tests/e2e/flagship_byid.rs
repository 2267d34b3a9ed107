//! The flagship pair (a real Radicale, a real Tryton) in the situations where a run
//! needs records that a change-reading connector did not send: a write to retry,
//! records to match against, records named by an operator, a party that holds two
//! roles. Both connectors read changes only, so each of these goes through
//! `Connector::read_ids` or a full listing the engine asks for.

use serde_json::{Value as Json, json};
use tandem_connector_carddav::testsupport::CardServer;
use tandem_connector_tryton::testsupport::TrytonServer;
use tandem_model::field;

use crate::flagship::{Book, Run, company, config, relations, text};
use crate::support::counts;
use crate::tryton::{Tryton, be_vat};

/// Both servers, or `None` when the environment is missing (skipped locally).
fn servers() -> Option<(CardServer, TrytonServer)> {
    let cards = CardServer::radicale()?;
    let server = TrytonServer::start()?;
    Some((cards, server))
}

/// The VAT numbers (`eu_vat` identifiers) of a party.
fn vat_numbers(tryton: &Tryton, party: i64) -> Vec<String> {
    let rows = tryton.call(
        "party.identifier",
        "search_read",
        vec![
            json!([["party", "=", party], ["type", "=", "eu_vat"]]),
            json!(0),
            Json::Null,
            Json::Null,
            json!(["code"]),
        ],
    );
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_owned())
        .collect()
}

/// R17 on real systems: Tryton refuses a VAT number with wrong check digits. The
/// failure is reported, tried again by the next run although nothing changed (the
/// card is read by id: Radicale's sync-collection no longer lists it), parked after
/// the same error twice, shown by `tandem status`, and `tandem retry --all` puts it
/// back.
#[test]
fn r17_a_write_tryton_refuses_is_retried_parked_and_put_back() {
    let Some((cards, server)) = servers() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "refused");
    let tryton = Tryton::new(&server);
    let customer = tryton.category("Customer");
    let acme = tryton.create(
        "party.party",
        json!({"name": "Acme NV", "categories": [["add", [customer]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(1)}]]]}),
    );
    let c_acme = book.create(
        company("Acme NV")
            .with(field::VAT_REGISTRATION_NO, be_vat(1).as_str())
            .with(field::PHONE, "+32 9 100 00 01"),
    );
    let run = Run::new(&config(&url, &cards, &server), &url, &cards, &server);
    run.sync();
    assert_eq!(run.link("CUST", &c_acme), Some(acme.to_string()));

    // Check digits that do not add up: Tryton refuses the identifier.
    book.update(&c_acme, &[(field::VAT_REGISTRATION_NO, "BE0000000001")]);
    let first = run.tandem_exit(&["sync"], 3);
    let failures = first["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{first}");
    assert_eq!(failures[0]["code"], "CUST", "{first}");
    assert_eq!(failures[0]["contact_id"], c_acme.as_str(), "{first}");
    assert_eq!(failures[0]["account_id"], acme.to_string(), "{first}");
    assert_eq!(
        failures[0]["parked"], false,
        "first failure: retried next run"
    );
    let error = failures[0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("BE0000000001"), "Tryton's reason: {error}");
    assert_eq!(counts(&first, "CUST")["failed"], 1, "{first}");

    // Nothing changed anywhere: the run tries again, and parks it (same error twice).
    let second = run.tandem_exit(&["sync"], 3);
    assert_eq!(counts(&second, "CUST")["failed"], 1, "retried: {second}");
    assert_eq!(second["failures"][0]["parked"], true, "{second}");
    assert_eq!(second["failures"][0]["error"], error.as_str(), "{second}");

    // Parked: left alone, the run is clean.
    let third = run.tandem(&["sync"]);
    assert_eq!(counts(&third, "CUST")["parked"], 1, "{third}");
    assert_eq!(counts(&third, "CUST")["failed"], 0, "{third}");
    assert_eq!(third["writes"], 0, "{third}");
    let status = run.tandem(&["status"]);
    let parked = status["parked"]["links"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{status}");
    assert_eq!(parked[0]["contact_id"], c_acme.as_str(), "{status}");
    assert_eq!(parked[0]["account_id"], acme.to_string(), "{status}");
    assert_eq!(vat_numbers(&tryton, acme), [be_vat(1)]);

    // Put right on the card: the parked pair still waits for the operator.
    book.update(&c_acme, &[(field::VAT_REGISTRATION_NO, be_vat(7).as_str())]);
    let waiting = run.tandem(&["sync"]);
    assert_eq!(counts(&waiting, "CUST")["parked"], 1, "{waiting}");
    assert_eq!(vat_numbers(&tryton, acme), [be_vat(1)]);

    // Retried by hand: the change goes through.
    assert_eq!(run.tandem(&["retry", "--all"]), json!({"retried": 1}));
    let report = run.sync();
    assert_eq!(counts(&report, "CUST")["updated"], 1, "{report}");
    assert_eq!(counts(&report, "CUST")["parked"], 0, "{report}");
    assert_eq!(vat_numbers(&tryton, acme), [be_vat(7)]);
    assert_eq!(run.tandem(&["status"])["parked"]["links"], json!([]));
    assert_eq!(run.sync()["writes"], 0);
}

/// R4 against an unchanged side: a customer created in Tryton after the first sync
/// matches a card nobody touched (by e-mail) and is linked to it, instead of getting a
/// card of its own (CUST numbers contacts here); the same with `--full-read`.
#[test]
fn r4_a_new_customer_is_linked_to_an_unchanged_card() {
    let Some((cards, server)) = servers() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "match");
    let tryton = Tryton::new(&server);
    let customer = tryton.category("Customer");
    let c_zeta = book.create(company("Zeta SA").with(field::EMAIL, "info@zeta.example"));
    let c_omega = book.create(company("Omega AG").with(field::EMAIL, "hello@omega.example"));
    let config = config(&url, &cards, &server).replace(
        "[relations.CUST]\nkind = \"customer\"\n",
        "[relations.CUST]\nkind = \"customer\"\ncreate_contacts = true\n",
    );
    assert!(config.contains("create_contacts = true\nconnector = \"erp\"\nmatch"));
    let run = Run::new(&config, &url, &cards, &server);
    run.sync();
    assert_eq!(
        run.sync()["writes"],
        0,
        "the cards are unchanged from now on"
    );

    let zeta = tryton.create(
        "party.party",
        json!({"name": "Zeta SA", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "info@zeta.example"}]]]}),
    );
    let report = run.sync();
    assert_eq!(
        run.link("CUST", &c_zeta),
        Some(zeta.to_string()),
        "{report}"
    );
    assert_eq!(counts(&report, "CUST")["linked"], 1, "{report}");
    assert_eq!(
        counts(&report, "CUST")["created"],
        0,
        "no card of its own: {report}"
    );
    assert_eq!(book.all().len(), 2, "no new card");
    assert!(relations(&book.card(&c_zeta).unwrap()).contains(&"CUST".into()));

    let omega = tryton.create(
        "party.party",
        json!({"name": "Omega AG", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "hello@omega.example"}]]]}),
    );
    let report = run.tandem(&["sync", "--full-read"]);
    assert_eq!(report["failures"], json!([]), "{report}");
    assert_eq!(
        run.link("CUST", &c_omega),
        Some(omega.to_string()),
        "{report}"
    );
    assert_eq!(counts(&report, "CUST")["created"], 0, "{report}");
    assert_eq!(book.all().len(), 2, "no new card");
    assert_eq!(run.sync()["writes"], 0);
}

/// R4 and R5 by hand on records that are not among the run's changes: `tandem link`
/// pairs an unchanged card with an unchanged customer, `tandem create` makes a
/// customer for an unchanged card.
#[test]
fn r4_r5_link_and_create_by_hand_on_unchanged_records() {
    let Some((cards, server)) = servers() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "byhand");
    let tryton = Tryton::new(&server);
    let customer = tryton.category("Customer");
    let lonely = tryton.create(
        "party.party",
        json!({"name": "Lonely Trading BV", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "erp@lonely.example"}]]]}),
    );
    let c_lonely = book.create(
        company("Lonely Trading BV")
            .with(field::EMAIL, "crm@lonely.example")
            .with(field::PHONE, "+32 9 777 00 01"),
    );
    let c_asker = book.create(
        company("Asker NV")
            .with(field::CITY, "Gent")
            .with(field::PHONE, "+32 9 777 00 02"),
    );
    let run = Run::new(&config(&url, &cards, &server), &url, &cards, &server);
    run.sync();
    assert_eq!(run.link("CUST", &c_lonely), None, "nothing matches");
    assert_eq!(run.sync()["writes"], 0, "nothing changes from now on");

    let report = run.tandem(&["link", "CUST", &c_lonely, &lonely.to_string()]);
    assert_eq!(report["failures"], json!([]), "{report}");
    assert_eq!(
        run.link("CUST", &c_lonely),
        Some(lonely.to_string()),
        "{report}"
    );
    // The pair starts from the card (initial = contact).
    let party = tryton.party(&lonely.to_string());
    assert_eq!(
        Tryton::mechanism(&party, "phone").as_deref(),
        Some("+32 9 777 00 01"),
        "{party}"
    );
    assert_eq!(
        Tryton::mechanism(&party, "email").as_deref(),
        Some("crm@lonely.example"),
        "{party}"
    );
    assert!(relations(&book.card(&c_lonely).unwrap()).contains(&"CUST".into()));

    let report = run.tandem(&["create", "CUST", "--contact", &c_asker]);
    assert_eq!(report["failures"], json!([]), "{report}");
    let made = run.link("CUST", &c_asker).expect("Asker got a customer");
    let party = tryton.party(&made);
    assert_eq!(party["name"], "Asker NV", "{party}");
    assert_eq!(party["lang."]["code"], "en", "the template: {party}");
    assert!(
        party["categories"]
            .as_array()
            .unwrap()
            .contains(&json!(customer))
    );
    assert_eq!(
        Tryton::mechanism(&party, "phone").as_deref(),
        Some("+32 9 777 00 02")
    );
    let card = book.card(&c_asker).unwrap();
    assert!(relations(&card).contains(&"CUST".into()), "{card:?}");
    assert_eq!(text(&card, field::CITY).as_deref(), Some("Gent"));
    assert_eq!(run.sync()["writes"], 0);
}

/// R2 and R6 with one party in two roles: a party created in Tryton as customer and
/// supplier gets one card (VEND numbers contacts), and that card holds CUST as well as
/// VEND: the customer matches the card by VAT number.
///
/// CUST matches in the run that sees the party before VEND's card exists; the
/// customer, left unmatched while another relation created a contact, is looked at
/// again by the next run, which matches it against the new card.
#[test]
fn r2_a_party_that_is_customer_and_supplier_is_linked_under_both_codes() {
    let Some((cards, server)) = servers() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "twofold");
    let tryton = Tryton::new(&server);
    let (customer, supplier) = (tryton.category("Customer"), tryton.category("Supplier"));
    let run = Run::new(&config(&url, &cards, &server), &url, &cards, &server);
    run.sync();

    let dual = tryton.create(
        "party.party",
        json!({"name": "Dual Trade NV", "categories": [["add", [customer, supplier]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(5)}]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "office@dual.example"}]]]}),
    );
    let first = run.sync();
    let card = book.by_name("Dual Trade NV").expect("VEND made a card");
    assert_eq!(
        run.link("VEND", &card.id),
        Some(dual.to_string()),
        "{first}"
    );
    assert_eq!(book.all().len(), 1, "one card for one party");
    let second = run.sync();
    let third = run.sync();
    assert_eq!(
        run.link("CUST", &card.id),
        Some(dual.to_string()),
        "the customer of the same party is linked to the card VEND made\n\
         first: {first}\nsecond: {second}\nthird: {third}"
    );
    let codes = relations(&book.card(&card.id).unwrap());
    assert!(
        codes.contains(&"CUST".into()) && codes.contains(&"VEND".into()),
        "{codes:?}"
    );
    assert_eq!(run.sync()["writes"], 0);
}
