//! Contacts in a real OpenLDAP directory, customers in a real Tryton, through the
//! `tandem` binary. slapd (with syncprov) and trytond are started per test by the
//! connectors' `testsupport` (`scripts/test` prepares them; skipped locally without
//! them, failing under `CI=true`). Entries are seeded, changed and inspected through
//! the LDAP connector itself, Tryton through its JSON-RPC client.

use serde_json::{Value as Json, json};
use tandem_connector::{Changes, Connector, WriteOp};
use tandem_connector_ldap::LdapConnector;
use tandem_connector_ldap::testsupport::{BIND_PASSWORD, Slapd};
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_model::{EntityKind, Fields, Record, Value, field};

use crate::support::{Deployment, stderr, stdout};
use crate::tryton::Tryton;

/// What both an organization entry and a Tryton party hold.
const FIELDS: &str = r#"["name", "address", "city", "post_code", "phone", "email", "home_page"]"#;

fn config(dir: &Slapd, server: &TrytonServer) -> String {
    let settings = dir.settings();
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.directory]
type = "ldap"
url = "{ldap}"
base_dn = "{base}"
bind_dn = "{bind}"
password = "${{LDAP_PASSWORD}}"

[connectors.erp]
type = "tryton"
url = "{url}"
database = "{DATABASE}"
user = "admin"
password = "${{TRYTON_PASSWORD}}"

[contacts]
connector = "directory"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["email"]]
create_contacts = true
fields = {FIELDS}
conflict = "contact_wins"
"#,
        ldap = settings["url"].as_str().unwrap(),
        base = settings["base_dn"].as_str().unwrap(),
        bind = settings["bind_dn"].as_str().unwrap(),
        url = server.url()
    )
}

struct Directory {
    rt: tokio::runtime::Runtime,
    ldap: LdapConnector,
}

impl Directory {
    fn new(server: &Slapd) -> Directory {
        Directory {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            ldap: LdapConnector::from_settings(server.settings()).unwrap(),
        }
    }

    fn create(&self, fields: Fields) -> String {
        let mut out = self
            .rt
            .block_on(
                self.ldap
                    .write(EntityKind::Contact, vec![WriteOp::create(fields)]),
            )
            .unwrap();
        out.pop().unwrap().unwrap().id
    }

    fn update(&self, id: &str, changes: Changes) {
        let out = self
            .rt
            .block_on(self.ldap.write(
                EntityKind::Contact,
                vec![WriteOp::Update {
                    id: id.to_owned(),
                    version: None,
                    changes,
                }],
            ))
            .unwrap();
        out[0].as_ref().unwrap();
    }

    fn delete(&self, id: &str) {
        let out = self
            .rt
            .block_on(self.ldap.write(
                EntityKind::Contact,
                vec![WriteOp::Delete {
                    id: id.to_owned(),
                    version: None,
                }],
            ))
            .unwrap();
        out[0].as_ref().unwrap();
    }

    fn all(&self) -> Vec<Record> {
        self.rt
            .block_on(self.ldap.read(EntityKind::Contact, None))
            .unwrap()
            .records
    }

    fn get(&self, id: &str) -> Option<Record> {
        self.rt
            .block_on(self.ldap.read_ids(EntityKind::Contact, &[id]))
            .unwrap()
            .pop()
    }
}

fn company(name: &str, email: &str, phone: &str) -> Fields {
    let mut f = Fields::new();
    f.set(field::CONTACT_TYPE, Value::text("company"));
    f.set(field::NAME, Value::text(name));
    f.set(field::EMAIL, Value::text(email));
    f.set(field::PHONE, Value::text(phone));
    f
}

fn tandem(d: &Deployment, server: &TrytonServer, args: &[&str]) -> Json {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = d.tandem_env(
        &all,
        &[
            ("TRYTON_PASSWORD", &server.password),
            ("LDAP_PASSWORD", BIND_PASSWORD),
        ],
    );
    assert!(
        out.status.success(),
        "tandem {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !stdout(&out).contains(BIND_PASSWORD) && !stderr(&out).contains(BIND_PASSWORD),
        "the bind password was printed"
    );
    crate::support::unversioned(serde_json::from_slice(&out.stdout).unwrap())
}

fn sync(d: &Deployment, server: &TrytonServer) -> Json {
    let report = tandem(d, server, &["sync"]);
    assert_eq!(report["failures"], json!([]), "{report}");
    report
}

fn link(d: &Deployment, contact: &str) -> Option<String> {
    d.links()
        .into_iter()
        .find(|l| l.0 == "CUST" && l.1 == contact)
        .map(|l| l.2)
}

#[test]
fn directory_companies_and_tryton_customers_stay_in_step() {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let dir = Directory::new(&slapd);
    let tryton = Tryton::new(&server);
    let customer = tryton.category("Customer");

    // In the directory: a company Tryton knows by e-mail, and one that asks to become
    // a customer (its businessCategory holds the code).
    let bright = dir.create(company(
        "Brightline Studio",
        "hello@brightline.example",
        "+32 9 200 00 02",
    ));
    let mut newco = company("Newco Ltd", "info@newco.example", "+32 50 00 00 03");
    newco.set(
        field::BUSINESS_RELATIONS,
        Value::list(vec!["CUST".to_owned()]),
    );
    let newco = dir.create(newco);
    // In Tryton: that customer, and one the directory does not have.
    let bright_party = tryton.create(
        "party.party",
        json!({"name": "Brightline Studio", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "hello@brightline.example"}]]]}),
    );
    let nord = tryton.create(
        "party.party",
        json!({"name": "Nordlicht AG", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "post@nordlicht.example"}]]]}),
    );

    let d = Deployment::with_config(&config(&slapd, &server));
    let first = sync(&d, &server);

    // Linked by e-mail; the directory's phone reached Tryton (the contact wins).
    assert_eq!(link(&d, &bright), Some(bright_party.to_string()), "{first}");
    let party = tryton.party(&bright_party.to_string());
    assert_eq!(
        Tryton::mechanism(&party, "phone").as_deref(),
        Some("+32 9 200 00 02"),
        "{party}"
    );
    // A customer created from the entry that asked for one (R5).
    let newco_party = link(&d, &newco).expect("Newco got a customer");
    assert_eq!(tryton.party(&newco_party)["name"], "Newco Ltd");
    // A company entry created for the customer the directory did not have (R6).
    let nord_entry = d
        .links()
        .into_iter()
        .find(|l| l.0 == "CUST" && l.2 == nord.to_string())
        .map(|l| l.1)
        .expect("Nordlicht got a contact");
    let entry = dir.get(&nord_entry).expect("the entry is in the directory");
    assert_eq!(
        entry.fields.get(field::NAME),
        Some(&Value::text("Nordlicht AG"))
    );
    assert_eq!(
        entry.fields.get(field::CONTACT_TYPE),
        Some(&Value::text("company"))
    );
    assert_eq!(
        entry.fields.get(field::EMAIL),
        Some(&Value::text("post@nordlicht.example"))
    );

    // A second run with nothing changed writes nothing (no echoes, R14).
    let quiet = sync(&d, &server);
    assert_eq!(quiet["writes"], json!(0), "{quiet}");

    // Edit in one place: a phone changed in the directory reaches Tryton (R7), read
    // through the content synchronisation cookie.
    let mut changes = Changes::new();
    changes.insert(field::PHONE.into(), Value::text("+32 9 999 99 99"));
    dir.update(&bright, changes);
    let third = sync(&d, &server);
    let party = tryton.party(&bright_party.to_string());
    assert_eq!(
        Tryton::mechanism(&party, "phone").as_deref(),
        Some("+32 9 999 99 99"),
        "{third}"
    );

    // And a city changed in Tryton reaches the entry, as a modify of that attribute.
    let address = tryton.create(
        "party.address",
        json!({"party": nord, "city": "Bremen", "postal_code": "28195"}),
    );
    assert!(address > 0);
    let fourth = sync(&d, &server);
    let entry = dir.get(&nord_entry).unwrap();
    assert_eq!(
        entry.fields.get(field::CITY),
        Some(&Value::text("Bremen")),
        "{fourth}"
    );

    // Deleting the entry removes the contact and its link; the customer stays (R12).
    dir.delete(&bright);
    let fifth = sync(&d, &server);
    assert_eq!(link(&d, &bright), None, "{fifth}");
    assert_eq!(
        tryton.party(&bright_party.to_string())["name"],
        "Brightline Studio"
    );
    assert!(dir.all().iter().all(|r| r.id != bright));
}
