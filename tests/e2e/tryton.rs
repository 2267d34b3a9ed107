//! Contacts in a file <-> customers, vendors and bank accounts in a real Tryton, through
//! the `tandem` binary. `trytond` is started per test by the Tryton connector's
//! `testsupport` (`scripts/test` prepares it; skipped locally without it, failing under
//! `CI=true`).

use serde_json::{Value as Json, json};
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_connector_tryton::{Client, Secret};

use crate::support::{Deployment, cell, counts, row_where, rows, stderr, stdout};

/// Only what Tryton maps on a party (no `name_2`, `county`, commercial codes).
pub(crate) const PARTY_FIELDS: &str = r#"["name", "address", "address_2", "city", "post_code", "country_code", "phone", "mobile_phone", "fax", "email", "home_page", "vat_registration_no", "registration_no"]"#;
/// Only what Tryton maps on a bank's party.
pub(crate) const BANK_FIELDS: &str = r#"["name", "address", "address_2", "city", "post_code", "country_code", "phone", "mobile_phone", "fax", "email", "home_page"]"#;

fn config(server: &TrytonServer) -> String {
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "tryton"
url = "{url}"
database = "{DATABASE}"
user = "admin"
password = "${{TRYTON_PASSWORD}}"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["vat_registration_no"], ["email"]]
fields = {PARTY_FIELDS}
# language_code is not shared: the template sets it on new customers only.
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
        url = server.url()
    )
}

/// A valid Belgian VAT number, different for every `n`.
pub(crate) fn be_vat(n: u32) -> String {
    let base = 4_000_000 + u64::from(n) * 13;
    format!("BE{base:08}{:02}", 97 - base % 97)
}

/// Runs `tandem --json <args>` with the password in the environment; must exit 0.
fn tandem(d: &Deployment, server: &TrytonServer, args: &[&str]) -> Json {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = d.tandem_env(&all, &[("TRYTON_PASSWORD", &server.password)]);
    assert!(
        out.status.success(),
        "tandem {args:?} failed ({:?}):\n{}{}\ntrytond:\n{}",
        out.status.code(),
        stdout(&out),
        stderr(&out),
        server
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    crate::support::unversioned(serde_json::from_slice(&out.stdout).unwrap())
}

fn sync(d: &Deployment, server: &TrytonServer) -> Json {
    let report = tandem(d, server, &["sync"]);
    assert_eq!(report["failures"], json!([]), "{report}");
    report
}

pub(crate) struct Tryton {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) rpc: Client,
}

impl Tryton {
    pub(crate) fn new(server: &TrytonServer) -> Tryton {
        Tryton {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            rpc: Client::new(
                &server.url(),
                DATABASE,
                "admin",
                Secret::new(server.password.clone()),
            )
            .unwrap(),
        }
    }

    pub(crate) fn call(&self, model: &str, method: &str, params: Vec<Json>) -> Json {
        self.rt
            .block_on(self.rpc.model(model, method, params))
            .unwrap_or_else(|e| panic!("{model}.{method}: {e:?}"))
    }

    pub(crate) fn create(&self, model: &str, values: Json) -> i64 {
        self.call(model, "create", vec![json!([values])])[0]
            .as_i64()
            .unwrap()
    }

    pub(crate) fn category(&self, name: &str) -> i64 {
        self.call(
            "party.category",
            "search",
            vec![json!([["name", "=", name]]), json!(0), json!(1), Json::Null],
        )[0]
        .as_i64()
        .unwrap()
    }

    pub(crate) fn party(&self, id: &str) -> Json {
        let id: i64 = id.parse().unwrap();
        self.call(
            "party.party",
            "read",
            vec![
                json!([id]),
                json!([
                    "name",
                    "categories",
                    "lang.code",
                    "contact_mechanisms.type",
                    "contact_mechanisms.value"
                ]),
            ],
        )[0]
        .clone()
    }

    pub(crate) fn mechanism(party: &Json, kind: &str) -> Option<String> {
        party["contact_mechanisms."]
            .as_array()?
            .iter()
            .find(|m| m["type"] == kind)
            .and_then(|m| m["value"].as_str())
            .map(str::to_owned)
    }
}

fn link(d: &Deployment, code: &str, contact: &str) -> Option<String> {
    d.links()
        .into_iter()
        .find(|l| l.0 == code && l.1 == contact)
        .map(|l| l.2)
}

#[test]
fn file_contacts_and_tryton_accounts_stay_in_step() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let tryton = Tryton::new(&server);
    let (customer, supplier) = (tryton.category("Customer"), tryton.category("Supplier"));

    // In Tryton: a customer known by VAT, one known by e-mail, a vendor nobody knows, a
    // party that is both customer and vendor, and a bank account.
    let acme = tryton.create(
        "party.party",
        json!({"name": "Acme NV", "categories": [["add", [customer]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(1)}]]],
               "contact_mechanisms": [["create", [{"type": "phone", "value": "+32 9 100 00 01"}]]]}),
    );
    let bright = tryton.create(
        "party.party",
        json!({"name": "Brightline Studio", "categories": [["add", [customer]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "hello@brightline.example"}]]]}),
    );
    let vendor = tryton.create(
        "party.party",
        json!({"name": "Nordwind GmbH", "categories": [["add", [supplier]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(3)}]]],
               "contact_mechanisms": [["create", [{"type": "email", "value": "office@nordwind.example"}]]]}),
    );
    let both = tryton.create(
        "party.party",
        json!({"name": "Twofold BV", "categories": [["add", [customer, supplier]]],
               "identifiers": [["create", [{"type": "eu_vat", "code": be_vat(4)}]]],
               "contact_mechanisms": [["create", [{"type": "phone", "value": "+32 9 400 00 04"}]]]}),
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

    let d = Deployment::with_config(&config(&server));
    d.write(
        "crm/contacts.csv",
        &format!(
            "id,contact_type,name,company_id,address,city,post_code,country_code,phone,email,vat_registration_no,business_relations\n\
             C1,company,Acme NV,,Industrieweg 12,Gent,9000,BE,,info@acme.example,{},\n\
             C2,company,Brightline Studio,,,,,,,hello@brightline.example,,\n\
             C3,company,Newco Ltd,,Kerkstraat 1,Brugge,8000,BE,+32 50 00 00 03,info@newco.example,,CUST\n\
             C4,company,Bank of Tests,,,,,,,desk@bank.example,,\n\
             C5,company,Twofold BV,,,,,,,,{},\n",
            be_vat(1),
            be_vat(4)
        ),
    );

    let planned = tandem(&d, &server, &["plan"]);
    let first = sync(&d, &server);
    assert_eq!(planned["counts"], first["counts"], "plan and sync agree");

    // Linked by VAT and by e-mail.
    assert_eq!(link(&d, "CUST", "C1"), Some(acme.to_string()), "{first}");
    assert_eq!(link(&d, "CUST", "C2"), Some(bright.to_string()), "{first}");
    assert_eq!(link(&d, "CUST", "C5"), Some(both.to_string()), "{first}");
    assert_eq!(link(&d, "VEND", "C5"), Some(both.to_string()), "{first}");
    assert_eq!(link(&d, "BANK", "C4"), Some(account.to_string()), "{first}");
    // The contact's values went to Tryton (contact wins on a new link).
    let acme_now = tryton.party(&acme.to_string());
    assert_eq!(
        Tryton::mechanism(&acme_now, "email").as_deref(),
        Some("info@acme.example")
    );

    // A customer created from a contact, with the template's language.
    let newco = link(&d, "CUST", "C3").expect("C3 got a customer");
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

    // A contact created from the vendor nobody knew.
    let contacts = d.read("crm/contacts.csv");
    let nordwind = row_where(&contacts, "name", "Nordwind GmbH").expect("a contact for the vendor");
    assert_eq!(nordwind["vat_registration_no"], be_vat(3));
    assert_eq!(nordwind["email"], "office@nordwind.example");
    assert!(
        nordwind["business_relations"].contains("VEND"),
        "{nordwind:?}"
    );
    assert_eq!(link(&d, "VEND", &nordwind["id"]), Some(vendor.to_string()));
    // Codes and values from Tryton reached the contacts.
    assert_eq!(
        cell(&contacts, "C1", "phone").as_deref(),
        Some("+32 9 100 00 01")
    );
    assert!(
        cell(&contacts, "C1", "business_relations")
            .unwrap()
            .contains("CUST")
    );
    let c5 = cell(&contacts, "C5", "business_relations").unwrap();
    assert!(c5.contains("CUST") && c5.contains("VEND"), "{c5}");
    assert!(
        cell(&contacts, "C4", "business_relations")
            .unwrap()
            .contains("BANK")
    );

    // A second run writes nothing.
    let files = d.snapshot();
    let second = sync(&d, &server);
    assert_eq!(second["writes"], 0, "{second}");
    assert_eq!(files, d.snapshot());

    // A change made in Tryton (a contact mechanism written directly) reaches the contact.
    let phone = tryton.call(
        "party.contact_mechanism",
        "search",
        vec![
            json!([["party", "=", acme], ["type", "=", "phone"]]),
            json!(0),
            Json::Null,
            Json::Null,
        ],
    );
    tryton.call(
        "party.contact_mechanism",
        "write",
        vec![phone, json!({"value": "+32 9 100 99 99"})],
    );
    sync(&d, &server);
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "phone").as_deref(),
        Some("+32 9 100 99 99")
    );

    // And back: the contact's change reaches Tryton, for a party that is both customer
    // and vendor too (one party written under both roles in one run, no conflict).
    d.set_cell("crm/contacts.csv", "C1", "email", "sales@acme.example");
    d.set_cell("crm/contacts.csv", "C5", "phone", "+32 9 400 99 99");
    let report = sync(&d, &server);
    for code in ["CUST", "VEND"] {
        assert_eq!(counts(&report, code)["conflicts"], 0, "{report}");
    }
    assert_eq!(
        Tryton::mechanism(&tryton.party(&acme.to_string()), "email").as_deref(),
        Some("sales@acme.example")
    );
    assert_eq!(
        Tryton::mechanism(&tryton.party(&both.to_string()), "phone").as_deref(),
        Some("+32 9 400 99 99")
    );
    assert_eq!(sync(&d, &server)["writes"], 0);

    // A party deleted in Tryton leaves its contact, which loses its code.
    tryton.call("party.party", "delete", vec![json!([acme])]);
    sync(&d, &server);
    let contacts = d.read("crm/contacts.csv");
    let c1 = rows(&contacts)
        .into_iter()
        .find(|r| r["id"] == "C1")
        .expect("the contact stays");
    assert_eq!(c1["name"], "Acme NV");
    assert!(!c1["business_relations"].contains("CUST"), "{c1:?}");
    assert_eq!(link(&d, "CUST", "C1"), None);

    // And then nothing is left to do.
    let files = d.snapshot();
    let last = sync(&d, &server);
    assert_eq!(last["writes"], 0, "{last}");
    assert_eq!(files, d.snapshot());
}

/// `examples/tryton` as its README runs it, on a trytond of its own port.
#[test]
fn the_tryton_example_syncs_and_settles() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let d = Deployment::example("tryton");
    let run = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let url = server.url();
        let out = d.tandem_env(
            &all,
            &[
                ("TRYTON_PASSWORD", server.password.as_str()),
                ("TANDEM__CONNECTORS__ERP__URL", url.as_str()),
            ],
        );
        assert!(
            out.status.success(),
            "tandem {args:?}:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        crate::support::unversioned(serde_json::from_slice::<Json>(&out.stdout).unwrap())
    };
    run(&["check"]);
    let first = run(&["sync"]);
    assert_eq!(first["failures"], json!([]), "{first}");
    assert_eq!(counts(&first, "CUST")["created"], 2, "{first}");
    assert_eq!(counts(&first, "VEND")["created"], 1, "{first}");
    let contacts = d.read("crm/contacts.csv");
    assert_eq!(run(&["sync"])["writes"], 0);
    assert_eq!(contacts, d.read("crm/contacts.csv"));
}
