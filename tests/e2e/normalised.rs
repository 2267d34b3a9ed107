//! R20 and the bank account's bank, through the `tandem` binary with a real Radicale
//! and a real Tryton: cards as address books export them (the ADR country a name, a
//! VAT number as typed) reach Tryton as codes and compact numbers, and the next run
//! finds nothing to do; a link to a bank account never renames the bank.

use serde_json::{Value as Json, json};
use tandem_connector::http::Method;
use tandem_connector_carddav::testsupport::CardServer;
use tandem_connector_tryton::testsupport::TrytonServer;
use tandem_model::{Value, field};

use crate::flagship::{Book, Run, company, config, text};
use crate::support::{Deployment, counts};
use crate::tryton::{BANK_FIELDS, Tryton};

/// A card as Apple Contacts exports a company: vCard 3.0, the country a name.
fn exported(uid: &str, name: &str, street: &str, city: &str, code: &str, country: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//macOS 14.0//EN\r\nN:;;;;\r\n\
         FN:{name}\r\nORG:{name};\r\nX-ABShowAs:COMPANY\r\n\
         item1.ADR;type=WORK;type=pref:;;{street};{city};;{code};{country}\r\n\
         item1.X-ABADR:ch\r\nCATEGORIES:CUST\r\nUID:{uid}\r\nEND:VCARD\r\n"
    )
}

struct World {
    cards: CardServer,
    server: TrytonServer,
    book: Book,
    url: String,
    tryton: Tryton,
}

fn world(name: &str) -> Option<World> {
    let cards = CardServer::radicale()?;
    let server = TrytonServer::start()?;
    let (book, url) = Book::new_on(&cards, name);
    let tryton = Tryton::new(&server);
    Some(World {
        cards,
        server,
        book,
        url,
        tryton,
    })
}

impl World {
    fn put(&self, uid: &str, card: &str) {
        let href = format!("{}{uid}.vcf", self.url);
        let status = self.book.rt.block_on(async {
            self.cards
                .http(Method::PUT, &href)
                .header("Content-Type", "text/vcard; charset=utf-8")
                .header("If-None-Match", "*")
                .body(card.to_owned())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "PUT {href}: {status}");
    }

    fn get(&self, uid: &str) -> String {
        let href = format!("{}{uid}.vcf", self.url);
        self.book.rt.block_on(async {
            let resp = self.cards.http(Method::GET, &href).send().await.unwrap();
            resp.text().await.unwrap()
        })
    }

    fn run(&self, config: String) -> Run<'_> {
        Run {
            d: Deployment::with_config(&config),
            cards: &self.cards,
            server: &self.server,
            card_password: self.cards.settings(&self.url)["password"]
                .as_str()
                .unwrap()
                .to_owned(),
        }
    }

    /// The country code of a party's first address.
    fn country_of(&self, party: &str) -> Json {
        let party: i64 = party.parse().unwrap();
        let read = self.tryton.call(
            "party.party",
            "read",
            vec![json!([party]), json!(["addresses.country.code"])],
        );
        read[0]["addresses."][0]["country."]["code"].clone()
    }

    fn vat_codes(&self, party: &str) -> Json {
        let party: i64 = party.parse().unwrap();
        let read = self.tryton.call(
            "party.party",
            "read",
            vec![json!([party]), json!(["identifiers.code"])],
        );
        json!(
            read[0]["identifiers."]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["code"].clone())
                .collect::<Vec<_>>()
        )
    }
}

/// Issue 15, failure 3: "Germany" and "Schweiz" in a card's ADR become DE and CH in
/// Tryton; the cards keep their names (nothing is written back), a second run writes
/// nothing; a name no table knows is reported with Tryton's refusal, never dropped.
#[test]
fn r20_cards_with_country_names_sync_to_tryton_as_country_codes() {
    let Some(w) = world("countries") else {
        return;
    };
    w.put(
        "alpen",
        &exported(
            "alpen",
            "Alpen AG",
            "Bahnhofstrasse 1",
            "Zürich",
            "8001",
            "Schweiz",
        ),
    );
    w.put(
        "rhein",
        &exported(
            "rhein",
            "Rhein GmbH",
            "Rheinufer 2",
            "Köln",
            "50667",
            "Germany",
        ),
    );
    w.put(
        "lost",
        &exported(
            "lost",
            "Lost Land Ltd",
            "1 Sunken Road",
            "Poseidonia",
            "0",
            "Atlantis",
        ),
    );
    let run = w.run(config(&w.url, &w.cards, &w.server));
    let first = run.tandem_exit(&["sync"], 3);
    assert_eq!(counts(&first, "CUST")["created"], 2, "{first}");
    let contact = |name: &str| w.book.by_name(name).unwrap().id;
    let alpen = run
        .link("CUST", &contact("Alpen AG"))
        .expect("Alpen AG linked");
    let rhein = run
        .link("CUST", &contact("Rhein GmbH"))
        .expect("Rhein GmbH linked");
    assert_eq!(w.country_of(&alpen), "CH");
    assert_eq!(w.country_of(&rhein), "DE");

    // Atlantis: refused by Tryton with a reason that names it, the card untouched.
    let failures = first["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{first}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("Tryton has no country `Atlantis`"),
        "{error}"
    );
    assert!(w.get("lost").contains(";Atlantis"), "{}", w.get("lost"));

    // The cards keep the names their users wrote; the second run has nothing to write.
    let versions = w.book.versions();
    let second = run.tandem_exit(&["sync"], 3);
    assert_eq!(counts(&second, "CUST")["updated"], 0, "{second}");
    assert_eq!(w.book.versions(), versions, "no card written again");
    assert!(
        w.get("alpen").contains(";8001;Schweiz"),
        "{}",
        w.get("alpen")
    );
    assert!(
        w.get("rhein").contains(";50667;Germany"),
        "{}",
        w.get("rhein")
    );
}

/// Issue 15, failure 6: a VAT number typed on a card matches the compact one in
/// Tryton, and neither side is written a respelling.
#[test]
fn r20_a_vat_number_as_typed_matches_the_compact_one_in_tryton() {
    let Some(w) = world("vat") else {
        return;
    };
    let customer = w.tryton.category("Customer");
    let party = w.tryton.create(
        "party.party",
        json!({"name": "Polder BV", "categories": [["add", [customer]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": "NL004495445B01"}]]]}),
    );
    let card = w.book.create(
        company("Polder BV").with(field::VAT_REGISTRATION_NO, Value::text("nl 0044 95445 b01")),
    );
    let run = w.run(config(&w.url, &w.cards, &w.server));
    let first = run.sync();
    assert_eq!(run.link("CUST", &card), Some(party.to_string()), "{first}");
    let versions = w.book.versions();
    let second = run.sync();
    assert_eq!(second["writes"], 0, "{second}");
    assert_eq!(w.book.versions(), versions);
    assert_eq!(w.vat_codes(&party.to_string()), json!(["NL004495445B01"]));
    assert_eq!(
        text(&w.book.card(&card).unwrap(), field::VAT_REGISTRATION_NO).as_deref(),
        Some("nl 0044 95445 b01")
    );
}

/// Issue 15, failure 7: linking a bank account never renames its bank; with the bank's
/// fields preserved (as the Tryton examples configure), the bank's values reach the
/// card instead.
#[test]
fn a_link_to_a_tryton_bank_account_never_renames_the_bank() {
    let Some(w) = world("bank") else {
        return;
    };
    let bank_party = w.tryton.create(
        "party.party",
        json!({"name": "Banque de Credit, Geneve",
               "contact_mechanisms": [["create", [{"type": "email", "value": "desk@bcg.example"}]]]}),
    );
    let bank = w
        .tryton
        .create("bank", json!({"party": bank_party, "bic": "GEBABEBB"}));
    let account = w.tryton.create(
        "bank.account",
        json!({"bank": bank, "numbers": [["create", [{"type": "iban", "number": "BE71096123456769"}]]]}),
    );
    let card = w
        .book
        .create(company("BCG Geneva desk").with(field::EMAIL, Value::text("desk@bcg.example")));
    let config = format!(
        "{}preserve = {BANK_FIELDS}\n",
        config(&w.url, &w.cards, &w.server)
    );
    let run = w.run(config);
    let first = run.sync();
    assert_eq!(
        run.link("BANK", &card),
        Some(account.to_string()),
        "{first}"
    );
    let party = w.tryton.party(&bank_party.to_string());
    assert_eq!(party["name"], "Banque de Credit, Geneve");
    assert_eq!(
        text(&w.book.card(&card).unwrap(), field::NAME).as_deref(),
        Some("Banque de Credit, Geneve"),
        "the bank's name reaches the card"
    );
    let second = run.sync();
    assert_eq!(second["writes"], 0, "{second}");
}
