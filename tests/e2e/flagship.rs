//! The flagship: contacts in a real Radicale address book, customers, vendors and bank
//! accounts in a real Tryton, relation codes CUST, VEND and BANK, through the `tandem`
//! binary. Both servers are started per test by the connectors' `testsupport`
//! (`scripts/test` prepares them; skipped locally without them, failing under `CI=true`).
//! Cards are seeded and inspected through the CardDAV connector itself, Tryton through
//! its JSON-RPC client.

use serde_json::{Value as Json, json};
use tandem_connector::{Changes, Connector, WriteOp};
use tandem_connector_carddav::CarddavConnector;
use tandem_connector_carddav::testsupport::{CardServer, Flavor};
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_model::{EntityKind, FieldName, Fields, Record, Value, field};

use crate::support::{Deployment, counts, stderr, stdout};
use crate::tryton::{BANK_FIELDS, PARTY_FIELDS, Tryton, be_vat};

pub(crate) fn config(book: &str, cards: &CardServer, server: &TrytonServer) -> String {
    let settings = cards.settings(book);
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.book]
type = "carddav"
url = "{book}"
{credentials}

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
match = [["vat_registration_no"], ["email"]]
fields = {PARTY_FIELDS}
conflict = "contact_wins"
template = {{ language_code = "en" }}

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
create_contacts = true
fields = {PARTY_FIELDS}

[relations.BANK]
kind = "bank_account"
connector = "erp"
match = [["email"]]
fields = {BANK_FIELDS}
"#,
        credentials = settings["username"].as_str().map_or(String::new(), |user| {
            format!("username = \"{user}\"\npassword = \"${{CARDDAV_PASSWORD}}\"")
        }),
        url = server.url()
    )
}

/// The address book, through the CardDAV connector.
pub(crate) struct Book {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) connector: CarddavConnector,
}

impl Book {
    /// A new address book `name` on `cards`, the CardDAV connector on it, and its URL.
    pub(crate) fn new_on(cards: &CardServer, name: &str) -> (Book, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = rt.block_on(cards.new_book(name));
        let book = Book {
            connector: CarddavConnector::from_settings(cards.settings(&url)).unwrap(),
            rt,
        };
        (book, url)
    }

    pub(crate) fn write(&self, op: WriteOp) -> String {
        self.rt
            .block_on(self.connector.write(EntityKind::Contact, vec![op]))
            .unwrap()
            .remove(0)
            .unwrap()
            .id
    }

    pub(crate) fn create(&self, fields: Fields) -> String {
        self.write(WriteOp::create(fields))
    }

    pub(crate) fn update(&self, id: &str, changes: &[(&str, &str)]) {
        let changes: Changes = changes
            .iter()
            .map(|(k, v)| (FieldName::from(*k), Value::from(*v)))
            .collect();
        self.write(WriteOp::Update {
            id: id.into(),
            version: None,
            changes,
        });
    }

    pub(crate) fn delete(&self, id: &str) {
        self.write(WriteOp::Delete {
            id: id.into(),
            version: None,
        });
    }

    /// Every card, by a full listing.
    pub(crate) fn all(&self) -> Vec<Record> {
        let page = self
            .rt
            .block_on(self.connector.read(EntityKind::Contact, None))
            .unwrap();
        assert!(!page.has_more);
        page.records
    }

    pub(crate) fn card(&self, id: &str) -> Option<Fields> {
        self.all()
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.fields)
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<Record> {
        self.all()
            .into_iter()
            .find(|r| r.fields.get(field::NAME).map(Value::to_string).as_deref() == Some(name))
    }

    /// (id, version) of every card: what a run that writes nothing leaves unchanged.
    pub(crate) fn versions(&self) -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = self.all().into_iter().map(|r| (r.id, r.version)).collect();
        v.sort();
        v
    }
}

pub(crate) fn text(f: &Fields, name: &str) -> Option<String> {
    f.get(name).map(Value::to_string)
}

pub(crate) fn relations(f: &Fields) -> Vec<String> {
    match f.get(field::BUSINESS_RELATIONS) {
        Some(Value::List(l)) => l.to_vec(),
        Some(v) => v.to_string().split(';').map(str::to_owned).collect(),
        None => Vec::new(),
    }
}

pub(crate) fn company(name: &str) -> Fields {
    Fields::new()
        .with(field::CONTACT_TYPE, "company")
        .with(field::NAME, name)
}

pub(crate) struct Run<'a> {
    pub(crate) d: Deployment,
    pub(crate) cards: &'a CardServer,
    pub(crate) server: &'a TrytonServer,
    pub(crate) card_password: String,
}

impl<'a> Run<'a> {
    /// A deployment of `config` against the book at `url` on `cards` and `server`.
    pub(crate) fn new(
        config: &str,
        url: &str,
        cards: &'a CardServer,
        server: &'a TrytonServer,
    ) -> Run<'a> {
        Run {
            d: Deployment::with_config(config),
            cards,
            server,
            card_password: (cards.settings(url)["password"].as_str())
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

impl Run<'_> {
    pub(crate) fn tandem(&self, args: &[&str]) -> Json {
        self.tandem_exit(args, 0)
    }

    /// `tandem --json <args>`, which must exit with `code`; its JSON output.
    pub(crate) fn tandem_exit(&self, args: &[&str], code: i32) -> Json {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.d.tandem_env(
            &all,
            &[
                ("TRYTON_PASSWORD", &self.server.password),
                ("CARDDAV_PASSWORD", &self.card_password),
            ],
        );
        assert!(
            out.status.code() == Some(code),
            "tandem {args:?} did not exit with {code} ({:?}):\n{}{}\ncard server:\n{}\ntrytond:\n{}",
            out.status.code(),
            stdout(&out),
            stderr(&out),
            self.cards.log(),
            self.server
                .log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        crate::support::unversioned(serde_json::from_slice(&out.stdout).unwrap())
    }

    pub(crate) fn sync(&self) -> Json {
        let report = self.tandem(&["sync"]);
        assert_eq!(report["failures"], json!([]), "{report}");
        report
    }

    pub(crate) fn link(&self, code: &str, contact: &str) -> Option<String> {
        self.d
            .links()
            .into_iter()
            .find(|l| l.0 == code && l.1 == contact)
            .map(|l| l.2)
    }
}

fn first_address(tryton: &Tryton, party: i64) -> Json {
    let ids = tryton.call(
        "party.address",
        "search",
        vec![
            json!([["party", "=", party]]),
            json!(0),
            json!(1),
            Json::Null,
        ],
    );
    tryton.call(
        "party.address",
        "read",
        vec![ids, json!(["street", "city", "postal_code"])],
    )[0]
    .clone()
}

#[test]
fn radicale_contacts_and_tryton_accounts_stay_in_step() {
    contacts_and_tryton_accounts_stay_in_step(Flavor::Radicale);
}

/// Xandikos: no authentication, a sync token of its own making.
#[test]
fn xandikos_contacts_and_tryton_accounts_stay_in_step() {
    contacts_and_tryton_accounts_stay_in_step(Flavor::Xandikos);
}

/// SabreDAV 1.8: HTTP Digest, and no `sync-collection` (PROPFIND listings, ETags).
#[test]
fn sabredav_contacts_and_tryton_accounts_stay_in_step() {
    contacts_and_tryton_accounts_stay_in_step(Flavor::Sabredav);
}

/// The flagship scenario on one CardDAV server.
fn contacts_and_tryton_accounts_stay_in_step(flavor: Flavor) {
    let Some(cards) = CardServer::start(flavor) else {
        return;
    };
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "flagship");
    let tryton = Tryton::new(&server);
    let (customer, supplier) = (tryton.category("Customer"), tryton.category("Supplier"));

    // Tryton: a customer known by VAT, a party that is customer and vendor, a vendor
    // the address book does not know, and a bank account.
    let acme = tryton.create(
        "party.party",
        json!({"name": "Acme NV", "categories": [["add", [customer]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(1)}]]],
               "addresses": [["create", [{"street_unstructured": "Industrieweg 12", "city": "Gent", "postal_code": "9000"}]]],
               "contact_mechanisms": [["create", [{"type": "phone", "value": "+32 9 100 00 01"}]]]}),
    );
    let twofold = tryton.create(
        "party.party",
        json!({"name": "Twofold BV", "categories": [["add", [customer, supplier]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(4)}]]],
               "contact_mechanisms": [["create", [{"type": "phone", "value": "+32 9 400 00 04"}]]]}),
    );
    let nordwind = tryton.create(
        "party.party",
        json!({"name": "Nordwind GmbH", "categories": [["add", [supplier]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(3)}]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "office@nordwind.example"}]]]}),
    );
    let bank_party = tryton.create(
        "party.party",
        json!({"name": "Bank of Tests",
               "contact_mechanisms": [["create", [{"type": "email", "value": "desk@bank.example"}]]]}),
    );
    let bank = tryton.create("bank", json!({"party": bank_party, "bic": "GEBABEBB"}));
    let account = tryton.create(
        "bank.account",
        json!({"bank": bank, "numbers": [["create", [{"type": "iban", "number": "BE71096123456769"}]]]}),
    );

    // The address book: the same Acme, Twofold and bank, and Newco tagged CUST (and VIP, a
    // category that is not a relation code).
    let c_acme = book.create(
        company("Acme NV")
            .with(field::EMAIL, "info@acme.example")
            .with(field::VAT_REGISTRATION_NO, be_vat(1).as_str()),
    );
    let c_twofold =
        book.create(company("Twofold BV").with(field::VAT_REGISTRATION_NO, be_vat(4).as_str()));
    let c_bank = book.create(company("Bank of Tests").with(field::EMAIL, "desk@bank.example"));
    let c_newco = book.create(
        company("Newco Ltd")
            .with(field::ADDRESS, "Kerkstraat 1")
            .with(field::CITY, "Brugge")
            .with(field::POST_CODE, "8000")
            .with(field::PHONE, "+32 50 00 00 03")
            .with(field::EMAIL, "info@newco.example")
            .with(
                field::BUSINESS_RELATIONS,
                Value::list(vec!["CUST".into(), "VIP".into()]),
            ),
    );

    let run = Run::new(&config(&url, &cards, &server), &url, &cards, &server);
    run.tandem(&["check"]);
    let planned = run.tandem(&["plan"]);
    let first = run.sync();
    assert_eq!(planned["counts"], first["counts"], "plan and sync agree");

    // 1. Linked by match rules: VAT for customers and vendors, e-mail for the bank.
    assert_eq!(run.link("CUST", &c_acme), Some(acme.to_string()), "{first}");
    assert_eq!(
        run.link("CUST", &c_twofold),
        Some(twofold.to_string()),
        "{first}"
    );
    assert_eq!(
        run.link("VEND", &c_twofold),
        Some(twofold.to_string()),
        "{first}"
    );
    assert_eq!(
        run.link("BANK", &c_bank),
        Some(account.to_string()),
        "{first}"
    );
    let acme_card = book.card(&c_acme).unwrap();
    assert!(
        relations(&acme_card).contains(&"CUST".into()),
        "{acme_card:?}"
    );
    assert_eq!(
        text(&acme_card, field::PHONE).as_deref(),
        Some("+32 9 100 00 01")
    );
    let twofold_card = book.card(&c_twofold).unwrap();
    let codes = relations(&twofold_card);
    assert!(codes.contains(&"CUST".into()) && codes.contains(&"VEND".into()));
    assert!(relations(&book.card(&c_bank).unwrap()).contains(&"BANK".into()));

    // 2. A customer created in Tryton from the card tagged CUST, with the template.
    let newco = run.link("CUST", &c_newco).expect("Newco got a customer");
    let party = tryton.party(&newco);
    assert_eq!(party["name"], "Newco Ltd");
    assert_eq!(party["lang."]["code"], "en", "{party}");
    assert!(
        party["categories"]
            .as_array()
            .unwrap()
            .contains(&json!(customer))
    );
    assert_eq!(
        Tryton::mechanism(&party, "phone").as_deref(),
        Some("+32 50 00 00 03")
    );
    assert_eq!(counts(&first, "CUST")["created"], 1, "{first}");
    let newco_codes = relations(&book.card(&c_newco).unwrap());
    assert!(newco_codes.contains(&"VIP".into()), "{newco_codes:?}");

    // 3. A card created in the address book for the vendor the address book did not know.
    let nordwind_card = book
        .by_name("Nordwind GmbH")
        .expect("a card for the vendor");
    assert_eq!(
        text(&nordwind_card.fields, field::VAT_REGISTRATION_NO),
        Some(be_vat(3))
    );
    assert_eq!(
        text(&nordwind_card.fields, field::EMAIL).as_deref(),
        Some("office@nordwind.example")
    );
    assert!(relations(&nordwind_card.fields).contains(&"VEND".into()));
    assert_eq!(
        run.link("VEND", &nordwind_card.id),
        Some(nordwind.to_string())
    );

    // A second run writes nothing.
    let before = book.versions();
    assert_eq!(run.sync()["writes"], 0);
    assert_eq!(before, book.versions());

    // 4. A phone number changed on the card reaches the customer and the vendor of the
    // same company (one party, written under both roles in one run, no conflict).
    book.update(&c_twofold, &[(field::PHONE, "+32 9 400 99 99")]);
    let report = run.sync();
    for code in ["CUST", "VEND"] {
        assert_eq!(counts(&report, code)["conflicts"], 0, "{report}");
    }
    assert_eq!(
        Tryton::mechanism(&tryton.party(&twofold.to_string()), "phone").as_deref(),
        Some("+32 9 400 99 99")
    );
    assert_eq!(run.sync()["writes"], 0);

    // 5. An address changed in Tryton reaches the card.
    let address = first_address(&tryton, acme);
    tryton.call(
        "party.address",
        "write",
        vec![
            json!([address["id"]]),
            json!({"street_unstructured": "Havenlaan 5", "city": "Antwerpen", "postal_code": "2000"}),
        ],
    );
    run.sync();
    let acme_card = book.card(&c_acme).unwrap();
    assert_eq!(
        text(&acme_card, field::ADDRESS).as_deref(),
        Some("Havenlaan 5")
    );
    assert_eq!(text(&acme_card, field::CITY).as_deref(), Some("Antwerpen"));
    assert_eq!(text(&acme_card, field::POST_CODE).as_deref(), Some("2000"));

    // 6. The same field changed on both sides: CUST's policy (contact_wins) settles it,
    // both sides end with the card's value, and nothing waits in the conflict queue.
    book.update(&c_acme, &[(field::EMAIL, "sales@acme.example")]);
    let email = tryton.call(
        "party.contact_mechanism",
        "search",
        vec![
            json!([["party", "=", acme], ["type", "=", "email"]]),
            json!(0),
            Json::Null,
            Json::Null,
        ],
    );
    tryton.call(
        "party.contact_mechanism",
        "write",
        vec![email, json!({"value": "billing@acme.example"})],
    );
    let report = run.sync();
    assert_eq!(counts(&report, "CUST")["conflicts"], 1, "{report}");
    assert_eq!(
        Tryton::mechanism(&tryton.party(&acme.to_string()), "email").as_deref(),
        Some("sales@acme.example")
    );
    assert_eq!(
        text(&book.card(&c_acme).unwrap(), field::EMAIL).as_deref(),
        Some("sales@acme.example")
    );
    assert_eq!(run.tandem(&["conflicts"]), json!([]), "no open conflict");

    // 7. A card deleted: its links go, the customer stays in Tryton.
    book.delete(&c_acme);
    run.sync();
    assert_eq!(run.link("CUST", &c_acme), None);
    let still = tryton.party(&acme.to_string());
    assert_eq!(still["name"], "Acme NV");
    assert!(
        still["categories"]
            .as_array()
            .unwrap()
            .contains(&json!(customer))
    );

    // 8. And then a run writes nothing, on either side.
    let before = book.versions();
    let last = run.sync();
    assert_eq!(last["writes"], 0, "{last}");
    assert_eq!(before, book.versions());
}

/// `examples/carddav-tryton/start-servers`, on ports and a folder of its own; stopped
/// (SIGTERM, so that it stops both servers) when dropped.
struct Servers {
    child: std::process::Child,
    dir: tempfile::TempDir,
    radicale: u16,
    tryton: u16,
}

impl Servers {
    fn start() -> Option<Servers> {
        let missing: Vec<_> = ["TANDEM_RADICALE_BIN", "TANDEM_TRYTON_BIN"]
            .into_iter()
            .filter(|v| std::env::var_os(v).is_none())
            .collect();
        if !missing.is_empty() {
            let message = format!("{missing:?} not set: scripts/test sets them");
            assert!(
                !std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0"),
                "{message}; CI must not skip the flagship example"
            );
            eprintln!("skipping the carddav-tryton example: {message}");
            return None;
        }
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (radicale, tryton) = (port(), port());
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = std::process::Command::new("bash")
            .arg(crate::support::repo_root().join("examples/carddav-tryton/start-servers"))
            .env("RADICALE_PORT", radicale.to_string())
            .env("TRYTON_PORT", tryton.to_string())
            .env("TANDEM_EXAMPLE_DIR", dir.path().join("servers"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut servers = Servers {
            child,
            dir,
            radicale,
            tryton,
        };
        let started = std::time::Instant::now();
        while !servers.dir.path().join("servers/seeded").exists() {
            if let Ok(Some(status)) = servers.child.try_wait() {
                panic!("start-servers exited with {status}:\n{}", servers.log());
            }
            assert!(
                started.elapsed().as_secs() < 120,
                "start-servers did not seed within 120 s:\n{}",
                servers.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(servers)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `examples/carddav-tryton` as its README runs it: start-servers, then sync twice.
#[test]
fn the_carddav_tryton_example_syncs_and_settles() {
    let Some(servers) = Servers::start() else {
        return;
    };
    let d = Deployment::example("carddav-tryton");
    let book_url = format!("http://127.0.0.1:{}/tandem/contacts/", servers.radicale);
    let erp_url = format!("http://127.0.0.1:{}/", servers.tryton);
    let admin = std::env::var("TANDEM_TRYTON_PASSWORD").unwrap_or_else(|_| "tandem-admin".into());
    let run = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = d.tandem_env(
            &all,
            &[
                ("TRYTON_PASSWORD", admin.as_str()),
                ("CARDDAV_PASSWORD", "tandem-dav"),
                ("TANDEM__CONNECTORS__BOOK__URL", book_url.as_str()),
                ("TANDEM__CONNECTORS__ERP__URL", erp_url.as_str()),
            ],
        );
        assert!(
            out.status.success(),
            "tandem {args:?}:\n{}{}\nstart-servers:\n{}",
            stdout(&out),
            stderr(&out),
            servers.log()
        );
        crate::support::unversioned(serde_json::from_slice::<Json>(&out.stdout).unwrap())
    };
    run(&["check"]);
    let first = run(&["sync"]);
    assert_eq!(first["failures"], json!([]), "{first}");
    assert_eq!(counts(&first, "CUST")["linked"], 2, "{first}");
    assert_eq!(counts(&first, "CUST")["created"], 1, "{first}");
    assert_eq!(counts(&first, "VEND")["linked"], 1, "{first}");
    assert_eq!(counts(&first, "VEND")["created"], 1, "{first}");
    assert_eq!(counts(&first, "BANK")["linked"], 1, "{first}");
    assert_eq!(run(&["sync"])["writes"], 0);
}

/// R18 on real servers: a sync makes Nordwind's card in Radicale (VEND numbers
/// contacts) and is killed before it links it (`after_contact_create`). The user then
/// edits every value the card was made with: name, e-mail and VAT number. Found by its
/// values, the card would be a stranger (and, listing VEND, a request for a second
/// vendor); it was made at the href Tandem wrote down before the `PUT`, so the next
/// sync finds it there: one card, linked to Nordwind, and the edits reach Tryton.
#[test]
fn r18_a_card_made_by_a_killed_sync_is_found_by_its_href_however_edited() {
    let Some(cards) = CardServer::start(Flavor::Radicale) else {
        return;
    };
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let (book, url) = Book::new_on(&cards, "killed");
    let tryton = Tryton::new(&server);
    let supplier = tryton.category("Supplier");
    let nordwind = tryton.create(
        "party.party",
        json!({"name": "Nordwind GmbH", "categories": [["add", [supplier]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(3)}]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "office@nordwind.example"}]]]}),
    );
    let run = Run::new(&config(&url, &cards, &server), &url, &cards, &server);
    let killed = run.d.tandem_env(
        &["sync"],
        &[
            ("TANDEM_FAILPOINT", "after_contact_create"),
            ("TRYTON_PASSWORD", &server.password),
            ("CARDDAV_PASSWORD", &run.card_password),
        ],
    );
    assert!(!killed.status.success(), "{}", stderr(&killed));
    let made = book.all();
    assert_eq!(made.len(), 1, "the card was made before the kill: {made:?}");
    let card = made[0].id.clone();
    assert_eq!(run.link("VEND", &card), None, "not linked yet");
    book.update(
        &card,
        &[
            ("name", "Nordwind Holding GmbH"),
            ("email", "hello@nordwind.example"),
            ("vat_registration_no", be_vat(5).as_str()),
        ],
    );

    let report = run.sync();
    let all = book.all();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [card.as_str()], "no second card: {report}");
    assert_eq!(
        run.link("VEND", &card),
        Some(nordwind.to_string()),
        "{report}"
    );
    let party = tryton.party(&nordwind.to_string());
    assert_eq!(party["name"], "Nordwind Holding GmbH", "{party}");
    assert_eq!(
        Tryton::mechanism(&party, "email").as_deref(),
        Some("hello@nordwind.example"),
        "{party}"
    );
    let parties = tryton.call(
        "party.party",
        "search_count",
        vec![json!([["categories", "=", supplier]])],
    );
    assert_eq!(parties, json!(1), "no second vendor");
    let again = run.sync();
    assert_eq!(again["writes"], json!(0), "{again}");
}
