//! A PostgreSQL `customers` table (real PostgreSQL, started per test) kept in step with a
//! CardDAV address book (real Radicale) through the `tandem` binary: triggers installed
//! by `tandem sql install-triggers`, existing rows linked by VAT number, a row created
//! for a contact that asks to be a customer, a contact created for a row
//! (`create_contacts`), and edits carried both ways while a column Tandem does not map
//! stays as it was.

use serde_json::Value as Json;
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tandem_connector::Connector;
use tandem_connector_carddav::CarddavConnector;
use tandem_connector_carddav::testsupport::CardServer;
use tandem_connector_sql::testsupport::PostgresServer;
use tandem_model::{EntityKind, Fields, Value, field};

use crate::flagship::{Book, text};
use crate::support::{Deployment, counts, stderr, stdout};

const CUSTOMER_FIELDS: &str =
    r#"["name", "address", "city", "post_code", "phone", "email", "vat_registration_no"]"#;

fn config(book_url: &str, db_url: &str) -> String {
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.book]
type = "carddav"
url = "{book_url}"
username = "tandem"
password = "${{CARDDAV_PASSWORD}}"

[connectors.shop]
type = "sql"
url = "{db_url}"

[connectors.shop.kinds.customer]
table = "customers"
id = "id"
version = "version"
updated_at = "updated_at"
changes = "triggers"
idempotency_key = "tandem_key"
columns = {{ name = "company_name", address = "street", city = "city", post_code = "zip", phone = "phone", email = "email", vat_registration_no = "vat" }}

[contacts]
connector = "book"

[relations.CUST]
kind = "customer"
connector = "shop"
match = [["vat_registration_no"], ["email"]]
create_contacts = true
fields = {CUSTOMER_FIELDS}
conflict = "contact_wins"
"#
    )
}

struct Shop {
    rt: tokio::runtime::Runtime,
    pool: AnyPool,
}

impl Shop {
    fn execute(&self, sql: &str) {
        self.rt
            .block_on(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&self.pool))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The row whose `company_name` is `name`: (id, street, city, phone, credit_limit).
    fn row(&self, name: &str) -> Option<[Option<String>; 5]> {
        let sql = "SELECT CAST(id AS TEXT), street, city, phone, CAST(credit_limit AS TEXT) \
                   FROM customers WHERE company_name = $1";
        let row = self
            .rt
            .block_on(
                sqlx::query(sql)
                    .bind(name.to_owned())
                    .fetch_optional(&self.pool),
            )
            .unwrap()?;
        Some(std::array::from_fn(|i| row.try_get(i).unwrap()))
    }
}

fn run(d: &Deployment, args: &[&str], password: &str) -> Json {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = d.tandem_env(&all, &[("CARDDAV_PASSWORD", password)]);
    assert!(
        out.status.success(),
        "tandem {args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

#[test]
fn a_postgres_customers_table_and_a_radicale_address_book_stay_in_step() {
    let Some(cards) = CardServer::radicale() else {
        return;
    };
    let Some(db) = PostgresServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    sqlx::any::install_default_drivers();
    let pool = rt.block_on(AnyPool::connect(&db.url())).unwrap();
    let shop = Shop { rt, pool };
    // The shop's own table: a credit limit Tandem knows nothing about.
    shop.execute(
        "CREATE TABLE customers (id BIGSERIAL PRIMARY KEY, company_name TEXT NOT NULL, \
         street TEXT, city TEXT, zip TEXT, phone TEXT, email TEXT, vat TEXT, \
         credit_limit NUMERIC(12,2) NOT NULL DEFAULT 1000, version INTEGER NOT NULL DEFAULT 1, \
         updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), tandem_key TEXT UNIQUE)",
    );
    shop.execute(
        "INSERT INTO customers (company_name, street, city, zip, phone, email, vat, credit_limit) VALUES \
         ('Acme NV', 'Industrieweg 12', 'Gent', '9000', '+32 9 100 00 01', 'info@acme.example', 'BE0400000001', 5000), \
         ('Shoply BV', 'Marktplein 3', 'Leuven', '3000', '+32 16 00 00 02', 'hello@shoply.example', 'BE0400000002', 2500)",
    );

    let book_url = shop.rt.block_on(cards.new_book("customers"));
    let settings = cards.settings(&book_url);
    let password = settings["password"].as_str().unwrap().to_owned();
    let book = Book {
        connector: CarddavConnector::from_settings(settings).unwrap(),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let company = |name: &str| {
        Fields::new()
            .with(field::NAME, name)
            .with(field::CONTACT_TYPE, "company")
    };
    // Acme is known to both (same VAT number); Newco asks to become a customer.
    let c_acme = book.create(company("Acme NV").with(field::VAT_REGISTRATION_NO, "BE0400000001"));
    let c_newco = book.create(
        company("Newco Ltd")
            .with(field::CITY, "Brugge")
            .with(field::PHONE, "+32 50 00 00 03")
            .with(field::BUSINESS_RELATIONS, Value::list(vec!["CUST".into()])),
    );

    let d = Deployment::with_config(&config(&book_url, &db.url()));
    let installed = d.tandem_env(
        &["sql", "install-triggers"],
        &[("CARDDAV_PASSWORD", &password)],
    );
    assert!(installed.status.success(), "{}", stderr(&installed));
    assert!(
        stdout(&installed).contains("shop: installed triggers on `customers`"),
        "{}",
        stdout(&installed)
    );

    // Again, with `--json`: the triggers are replaced, and said so per connector.
    let again = run(&d, &["sql", "install-triggers"], &password);
    assert_eq!(again["format_version"], 1, "{again}");
    let installed = again["installed"].as_array().unwrap();
    assert_eq!(installed.len(), 2, "{again}");
    assert!(
        installed.iter().all(|i| i["connector"] == "shop"),
        "{again}"
    );

    // 1. First sync: Acme linked by VAT, a row for Newco, a card for Shoply.
    let first = run(&d, &["sync"], &password);
    let cust = counts(&first, "CUST");
    assert_eq!(cust["linked"], 1, "{first}");
    assert_eq!(cust["created"], 2, "{first}");
    let newco = shop.row("Newco Ltd").expect("a row for Newco");
    assert_eq!(newco[2].as_deref(), Some("Brugge"));
    assert_eq!(newco[3].as_deref(), Some("+32 50 00 00 03"));
    assert_eq!(newco[4].as_deref(), Some("1000.00"), "the column default");
    let shoply = book.by_name("Shoply BV").expect("a card for Shoply");
    assert_eq!(
        text(&shoply.fields, field::EMAIL).as_deref(),
        Some("hello@shoply.example")
    );
    // Acme's card took the row's values where it had none (contact is the hub, empty
    // values never overwrite filled ones).
    let acme_card = book.card(&c_acme).unwrap();
    assert_eq!(text(&acme_card, field::CITY).as_deref(), Some("Gent"));

    // 2. A phone changed in the shop reaches the card; a city changed on the card
    //    reaches the shop; the credit limit stays.
    shop.execute(
        "UPDATE customers SET phone = '+32 9 999 99 99', version = version + 1 \
         WHERE company_name = 'Acme NV'",
    );
    book.update(&c_newco, &[(field::CITY, "Oostende")]);
    let second = run(&d, &["sync"], &password);
    assert_eq!(counts(&second, "CUST")["updated"], 2, "{second}");
    let acme_card = book.card(&c_acme).unwrap();
    assert_eq!(
        text(&acme_card, field::PHONE).as_deref(),
        Some("+32 9 999 99 99")
    );
    let newco = shop.row("Newco Ltd").unwrap();
    assert_eq!(newco[2].as_deref(), Some("Oostende"));
    let acme = shop.row("Acme NV").unwrap();
    assert_eq!(acme[4].as_deref(), Some("5000.00"));

    // 3. Nothing changed: nothing is written (no echo of Tandem's own writes).
    let before = book.versions();
    let third = run(&d, &["sync"], &password);
    let cust = counts(&third, "CUST");
    assert_eq!(cust["updated"], 0, "{third}");
    assert_eq!(cust["created"], 0, "{third}");
    assert_eq!(book.versions(), before);

    // The connector reads the table as the engine does.
    let shop_connector = tandem_connector_sql::SqlConnector::from_settings(
        serde_json::json!({
            "url": db.url(),
            "kinds": {"customer": {"table": "customers", "columns": {"name": "company_name"}}}
        }),
        &tandem_connector::BuildContext {
            base_dir: std::env::temp_dir(),
        },
    )
    .unwrap();
    let page = shop
        .rt
        .block_on(shop_connector.read(EntityKind::Customer, None))
        .unwrap();
    assert_eq!(page.records.len(), 3);
}
