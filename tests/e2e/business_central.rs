//! Contacts in a real Radicale address book, customers, vendors and bank accounts in
//! Business Central (the local API server written to Microsoft's documentation,
//! tests/servers/business-central), through the `tandem` binary: linking, creating
//! from a template, edits both ways, 429s past the request budget, a stale ETag, and
//! a second run that writes nothing.

use std::time::Duration;

use serde_json::{Value as Json, json};
use tandem_connector_carddav::testsupport::{CardServer, Flavor};
use tandem_fake_business_central::{BcServer, Budget, COMPANY_NAME, ENVIRONMENT, Options, TENANT};
use tandem_model::{Value, field};

use crate::flagship::{Book, company, relations, text};
use crate::support::{Deployment, counts, stderr, stdout};

/// What a customer or vendor in Business Central shares with a card.
const FIELDS: &str = r#"["name", "address", "address_2", "city", "post_code", "country_code", "phone", "email", "home_page", "vat_registration_no"]"#;
const PAYMENT_TERMS: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

fn config(book: &str, cards: &CardServer, bc: &BcServer) -> String {
    let settings = cards.settings(book);
    let o = bc.options();
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.book]
type = "carddav"
url = "{book}"
{credentials}

[connectors.erp]
type = "business_central"
tenant = "{TENANT}"
environment = "{ENVIRONMENT}"
company = "{COMPANY_NAME}"
client_id = "{client_id}"
client_secret = "${{BC_CLIENT_SECRET}}"
api_host = "{host}"
login_host = "{host}"
retry = {{ attempts = 10, min_delay = "100ms", max_delay = "2s" }}

[contacts]
connector = "book"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["vat_registration_no"], ["email"]]
fields = {FIELDS}
conflict = "contact_wins"
template = {{ x_payment_terms_id = "{PAYMENT_TERMS}", currency_code = "EUR" }}

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
create_contacts = true
fields = {FIELDS}

[relations.BANK]
kind = "bank_account"
connector = "erp"
match = [["name"]]
fields = ["name"]
"#,
        credentials = settings["username"].as_str().map_or(String::new(), |user| {
            format!("username = \"{user}\"\npassword = \"${{CARDDAV_PASSWORD}}\"")
        }),
        client_id = o.client_id,
        host = bc.host_url(),
    )
}

struct Run<'a> {
    d: Deployment,
    cards: &'a CardServer,
    card_password: String,
    secret: String,
}

impl Run<'_> {
    fn tandem(&self, args: &[&str]) -> Json {
        self.tandem_exit(args, 0)
    }

    /// `tandem --json <args>`, which must exit with `code`; its JSON output.
    fn tandem_exit(&self, args: &[&str], code: i32) -> Json {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.d.tandem_env(
            &all,
            &[
                ("BC_CLIENT_SECRET", &self.secret),
                ("CARDDAV_PASSWORD", &self.card_password),
            ],
        );
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(
            out.status.code() == Some(code),
            "tandem {args:?} did not exit with {code} ({:?}):\n{o}{e}\ncard server:\n{}",
            out.status.code(),
            self.cards.log()
        );
        assert!(!o.contains(&self.secret) && !e.contains(&self.secret));
        crate::support::unversioned(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn sync(&self) -> Json {
        let report = self.tandem(&["sync"]);
        assert_eq!(report["failures"], json!([]), "{report}");
        report
    }

    fn link(&self, code: &str, contact: &str) -> Option<String> {
        self.d
            .links()
            .into_iter()
            .find(|l| l.0 == code && l.1 == contact)
            .map(|l| l.2)
    }
}

#[test]
fn radicale_contacts_and_business_central_accounts_stay_in_step() {
    let Some(cards) = CardServer::start(Flavor::Radicale) else {
        return;
    };
    // A budget of 8 requests per 400 ms (the default limit of Tandem's own is 20 a
    // second): runs meet 429s and wait them out. Tokens live 2 s.
    let bc = BcServer::start(Options {
        token_lifetime: Duration::from_secs(2),
        budget: Some(Budget {
            requests: 8,
            window: Duration::from_millis(400),
        }),
        ..Options::default()
    });
    let acme = bc.insert(
        "customers",
        json!({"displayName": "Acme NV", "taxRegistrationNumber": "BE0400000001",
               "addressLine1": "Industrieweg 12", "city": "Gent", "postalCode": "9000",
               "phoneNumber": "+32 9 100 00 01"}),
    );
    let nordwind = bc.insert(
        "vendors",
        json!({"displayName": "Nordwind GmbH", "taxRegistrationNumber": "DE123456789",
               "email": "office@nordwind.example"}),
    );
    let giro = bc.insert(
        "bankAccounts",
        json!({"displayName": "Bank of Tests", "iban": "BE71096123456769"}),
    );

    let (book, url) = Book::new_on(&cards, "bc");
    let c_acme = book.create(
        company("Acme NV")
            .with(field::EMAIL, "info@acme.example")
            .with(field::VAT_REGISTRATION_NO, "BE0400000001"),
    );
    let c_bank = book.create(company("Bank of Tests"));
    let c_newco = book.create(
        company("Newco Ltd")
            .with(field::ADDRESS, "Kerkstraat 1")
            .with(field::CITY, "Brugge")
            .with(field::POST_CODE, "8000")
            .with(field::PHONE, "+32 50 00 00 03")
            .with(field::EMAIL, "info@newco.example")
            .with(field::BUSINESS_RELATIONS, Value::list(vec!["CUST".into()])),
    );

    let run = Run {
        d: Deployment::with_config(&config(&url, &cards, &bc)),
        cards: &cards,
        card_password: cards.settings(&url)["password"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        secret: bc.options().client_secret,
    };
    run.tandem(&["check"]);
    let first = run.sync();

    // 1. Linked by the match rules; the card's e-mail reaches the customer.
    assert_eq!(run.link("CUST", &c_acme), Some(acme.clone()), "{first}");
    assert_eq!(run.link("BANK", &c_bank), Some(giro.clone()), "{first}");
    assert_eq!(
        bc.get("customers", &acme).unwrap()["email"],
        "info@acme.example"
    );
    let acme_card = book.card(&c_acme).unwrap();
    assert_eq!(
        text(&acme_card, field::PHONE).as_deref(),
        Some("+32 9 100 00 01")
    );
    assert!(relations(&acme_card).contains(&"CUST".into()));

    // 2. A customer created from the card tagged CUST, with the template's payment terms
    // and currency, under an id (SystemId) Tandem chose.
    let newco = run.link("CUST", &c_newco).expect("Newco got a customer");
    let customer = bc.get("customers", &newco).unwrap();
    assert_eq!(customer["displayName"], "Newco Ltd");
    assert_eq!(customer["phoneNumber"], "+32 50 00 00 03");
    assert_eq!(customer["paymentTermsId"], PAYMENT_TERMS);
    assert_eq!(customer["currencyCode"], "EUR");
    assert_eq!(counts(&first, "CUST")["created"], 1, "{first}");
    assert_eq!(bc.list("customers").len(), 2);

    // 3. A card made for the vendor the address book did not know.
    let card = book
        .by_name("Nordwind GmbH")
        .expect("a card for the vendor");
    assert_eq!(
        text(&card.fields, field::VAT_REGISTRATION_NO).as_deref(),
        Some("DE123456789")
    );
    assert_eq!(run.link("VEND", &card.id), Some(nordwind.clone()));

    // A second run writes nothing, on either side.
    let writes = bc.stats().writes;
    let before = book.versions();
    assert_eq!(run.sync()["writes"], 0);
    assert_eq!(bc.stats().writes, writes);
    assert_eq!(before, book.versions());

    // 4. Edits both ways: a phone number on the card, an e-mail in Business Central.
    book.update(&c_acme, &[(field::PHONE, "+32 9 100 99 99")]);
    bc.edit(
        "vendors",
        &nordwind,
        json!({"email": "sales@nordwind.example"}),
    );
    run.sync();
    assert_eq!(
        bc.get("customers", &acme).unwrap()["phoneNumber"],
        "+32 9 100 99 99"
    );
    assert_eq!(
        text(&book.card(&card.id).unwrap(), field::EMAIL).as_deref(),
        Some("sales@nordwind.example")
    );

    // 5. A stale ETag: someone edits the customer in Business Central between Tandem's
    // read and its write. The write is refused (409) and changes nothing; the next run
    // reads the new version and carries both edits.
    book.update(&c_acme, &[(field::CITY, "Antwerpen")]);
    bc.edit_before_next_write(
        "customers",
        &acme,
        json!({"website": "https://acme.example"}),
    );
    let conflicts = bc.stats().conflicts;
    // Exit code 3: the run finished with a record that failed, retried next run.
    let stale = run.tandem_exit(&["sync"], 3);
    assert_eq!(bc.stats().conflicts, conflicts + 1, "{stale}");
    assert!(
        stale["failures"].to_string().contains("version conflict"),
        "{stale}"
    );
    assert_eq!(
        bc.get("customers", &acme).unwrap()["city"],
        "Gent",
        "nothing written"
    );
    let settled = run.sync();
    let customer = bc.get("customers", &acme).unwrap();
    assert_eq!(customer["city"], "Antwerpen", "{stale}\n{settled}");
    assert_eq!(customer["website"], "https://acme.example");
    assert_eq!(
        text(&book.card(&c_acme).unwrap(), field::HOME_PAGE).as_deref(),
        Some("https://acme.example")
    );

    // 6. Settled: nothing more to write; the runs met 429s and renewed their tokens.
    let writes = bc.stats().writes;
    let before = book.versions();
    assert_eq!(run.sync()["writes"], 0);
    assert_eq!(bc.stats().writes, writes);
    assert_eq!(before, book.versions());
    let stats = bc.stats();
    assert!(stats.throttled > 0, "{stats:?}");
    assert!(stats.tokens_issued >= 7, "{stats:?}");
}

/// A wrong client secret stops `tandem check` with a message that says what to check
/// and never shows the secret.
#[test]
fn a_wrong_client_secret_is_reported_without_showing_it() {
    let bc = BcServer::start(Options::default());
    let d = Deployment::with_config(&format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "business_central"
tenant = "{TENANT}"
company = "{COMPANY_NAME}"
client_id = "{client_id}"
client_secret = "${{BC_CLIENT_SECRET}}"
api_host = "{host}"
login_host = "{host}"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
"#,
        client_id = bc.options().client_id,
        host = bc.host_url()
    ));
    let secret = "wrong-secret-Hx9~";
    let out = d.tandem_env(&["check"], &[("BC_CLIENT_SECRET", secret)]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{o}{e}");
    assert!(
        e.contains("client_secret") || o.contains("client_secret"),
        "{o}{e}"
    );
    assert!(!o.contains(secret) && !e.contains(secret), "{o}{e}");
}

/// The figures of docs/BENCHMARKS.md: 1,000 partners between a contacts file and
/// Business Central (the local server), through the binary. Half of the contacts match
/// a customer by VAT number, a quarter ask for a customer (created from the template),
/// and 250 vendors have no contact (one is created for each). Prints the wall time and
/// the API requests of a first run, and of a second run with nothing changed.
///
/// `cargo nextest run -p tandem-cli --test e2e --run-ignored only -E 'test(bc_thousand)' --no-capture`
#[test]
#[ignore = "a benchmark: run it by hand for docs/BENCHMARKS.md"]
fn bc_thousand_partners_figures() {
    let bc = BcServer::start(Options::default());
    let mut contacts =
        String::from("id,contact_type,name,email,vat_registration_no,business_relations\n");
    for i in 0..750 {
        let vat = format!("BE0{}", 400_000_000 + i);
        if i < 500 {
            bc.insert(
                "customers",
                json!({"displayName": format!("Partner {i}"), "taxRegistrationNumber": vat}),
            );
            contacts.push_str(&format!(
                "K{i},company,Partner {i},p{i}@bench.example,{vat},\n"
            ));
        } else {
            contacts.push_str(&format!(
                "K{i},company,Partner {i},p{i}@bench.example,,CUST\n"
            ));
        }
    }
    for i in 750..1000 {
        bc.insert(
            "vendors",
            json!({"displayName": format!("Vendor {i}"), "taxRegistrationNumber": format!("DE{:09}", i)}),
        );
    }
    let d = Deployment::with_config(&format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "business_central"
tenant = "{TENANT}"
company = "{COMPANY_NAME}"
client_id = "{client_id}"
client_secret = "${{BC_CLIENT_SECRET}}"
api_host = "{host}"
login_host = "{host}"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["vat_registration_no"]]
fields = ["name", "email", "vat_registration_no"]
template = {{ currency_code = "EUR" }}

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["vat_registration_no"]]
create_contacts = true
fields = ["name", "email", "vat_registration_no"]
"#,
        client_id = bc.options().client_id,
        host = bc.host_url()
    ));
    d.write("crm/contacts.csv", &contacts);
    let secret = bc.options().client_secret;
    let sync = || {
        let before = bc.stats();
        let started = std::time::Instant::now();
        let out = d.tandem_env(&["--json", "sync"], &[("BC_CLIENT_SECRET", &secret)]);
        let elapsed = started.elapsed();
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        let after = bc.stats();
        let report: Json = serde_json::from_slice(&out.stdout).unwrap();
        (report, elapsed, before, after)
    };
    let (first, t1, b1, a1) = sync();
    assert_eq!(counts(&first, "CUST")["linked"], 500, "{first}");
    assert_eq!(counts(&first, "CUST")["created"], 250, "{first}");
    assert_eq!(counts(&first, "VEND")["created"], 250, "{first}");
    let (second, t2, b2, a2) = sync();
    assert_eq!(second["writes"], 0, "{second}");
    for (name, t, b, a) in [("first", t1, b1, a1), ("second", t2, b2, a2)] {
        let requests = a.requests - b.requests;
        println!(
            "{name} run: {:.2} s, {requests} API requests ({} GET, {} $batch with {} operations, {} writes), {:.3} requests per partner",
            t.as_secs_f64(),
            a.gets - b.gets,
            a.batches - b.batches,
            a.batch_ops - b.batch_ops,
            a.writes - b.writes,
            requests as f64 / 1000.0
        );
    }
}
