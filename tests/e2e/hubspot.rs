//! Contacts in HubSpot (the local CRM server written to HubSpot's documentation,
//! tests/servers/hubspot), customers and vendors in a real Tryton, through the `tandem`
//! binary: linking, creating from a template, edits both ways, 429s past the request
//! budget, a change made between Tandem's read and its write, and a second run that
//! writes nothing.

use std::time::Duration;

use serde_json::{Value as Json, json};
use tandem_connector_tryton::testsupport::{DATABASE, TrytonServer};
use tandem_fake_hubspot::{Budget, HubSpotServer, Options, RELATIONS_PROPERTY};

use crate::support::{Deployment, counts, stderr, stdout};
use crate::tryton::Tryton;

/// What a HubSpot company and a Tryton party share.
const FIELDS: &str =
    r#"["name", "address", "city", "post_code", "country_code", "phone", "home_page"]"#;

fn config(hubspot: &HubSpotServer, server: &TrytonServer) -> String {
    format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "hubspot"
url = "{hs}"
token = "${{HUBSPOT_TOKEN}}"
retry = {{ attempts = 10, min_delay = "100ms", max_delay = "2s" }}

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
match = [["name"]]
fields = {FIELDS}
conflict = "contact_wins"
template = {{ language_code = "en" }}

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["name"]]
create_contacts = true
fields = {FIELDS}
"#,
        hs = hubspot.url(),
        url = server.url()
    )
}

struct Run<'a> {
    d: Deployment,
    server: &'a TrytonServer,
    token: String,
}

impl Run<'_> {
    fn tandem_exit(&self, args: &[&str], code: i32) -> Json {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.d.tandem_env(
            &all,
            &[
                ("HUBSPOT_TOKEN", &self.token),
                ("TRYTON_PASSWORD", &self.server.password),
            ],
        );
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(
            out.status.code() == Some(code),
            "tandem {args:?} did not exit with {code} ({:?}):\n{o}{e}",
            out.status.code()
        );
        assert!(!o.contains(&self.token) && !e.contains(&self.token));
        crate::support::unversioned(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn sync(&self) -> Json {
        let report = self.tandem_exit(&["sync"], 0);
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

fn phone_mechanism(tryton: &Tryton, party: i64) -> Json {
    tryton.call(
        "party.contact_mechanism",
        "search",
        vec![
            json!([["party", "=", party], ["type", "=", "phone"]]),
            json!(0),
            Json::Null,
            Json::Null,
        ],
    )
}

#[test]
fn hubspot_contacts_and_tryton_accounts_stay_in_step() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    // A budget of 6 requests per 300 ms: runs meet 429s and wait them out.
    let hs = HubSpotServer::start(Options {
        budget: Some(Budget {
            requests: 6,
            window: Duration::from_millis(300),
        }),
        ..Options::default()
    });
    let acme = hs.insert(
        "companies",
        json!({"name": "Acme NV", "phone": "+32 9 100 00 01", "city": "Gent", "zip": "9000"}),
        &[],
    );
    let newco = hs.insert(
        "companies",
        json!({"name": "Newco Ltd", "address": "Kerkstraat 1", "city": "Brugge", "zip": "8000",
               "phone": "+32 50 00 00 03", RELATIONS_PROPERTY: "CUST"}),
        &[],
    );
    let ann = hs.insert(
        "contacts",
        json!({"firstname": "Ann", "lastname": "Peeters", "email": "ann@acme.example"}),
        &[&acme],
    );
    let tryton = Tryton::new(&server);
    let (customer, supplier) = (tryton.category("Customer"), tryton.category("Supplier"));
    let p_acme = tryton.create(
        "party.party",
        json!({"name": "Acme NV", "categories": [["add", [customer]]]}),
    );
    let p_nordwind = tryton.create(
        "party.party",
        json!({"name": "Nordwind GmbH", "categories": [["add", [supplier]]],
               "contact_mechanisms": [["create", [{"type": "phone", "value": "+49 40 123 45"}]]]}),
    );

    let run = Run {
        d: Deployment::with_config(&config(&hs, &server)),
        server: &server,
        token: hs.token(),
    };
    run.tandem_exit(&["check"], 0);
    let first = run.sync();

    // 1. Acme linked by name; the company's phone reaches the party; the relation shows
    // on the company (R9).
    let c_acme = format!("company-{acme}");
    assert_eq!(
        run.link("CUST", &c_acme),
        Some(p_acme.to_string()),
        "{first}"
    );
    assert_eq!(
        Tryton::mechanism(&tryton.party(&p_acme.to_string()), "phone").as_deref(),
        Some("+32 9 100 00 01")
    );
    assert_eq!(
        hs.get("companies", &acme).unwrap()[RELATIONS_PROPERTY],
        "CUST"
    );

    // 2. A customer created in Tryton for the company tagged CUST, with the template.
    let c_newco = format!("company-{newco}");
    let p_newco = run.link("CUST", &c_newco).expect("Newco got a customer");
    let party = tryton.party(&p_newco);
    assert_eq!(party["name"], "Newco Ltd");
    assert_eq!(party["lang."]["code"], "en", "{party}");
    assert_eq!(counts(&first, "CUST")["created"], 1, "{first}");

    // 3. A company made in HubSpot for the vendor it did not know; the person stays.
    let nordwind = hs
        .ids("companies")
        .into_iter()
        .find(|id| hs.get("companies", id).unwrap()["name"] == "Nordwind GmbH")
        .expect("a company for the vendor");
    let props = hs.get("companies", &nordwind).unwrap();
    assert_eq!(props["phone"], "+49 40 123 45");
    assert_eq!(props[RELATIONS_PROPERTY], "VEND");
    assert_eq!(
        run.link("VEND", &format!("company-{nordwind}")),
        Some(p_nordwind.to_string())
    );
    assert_eq!(hs.companies_of(&ann), vec![acme.clone()]);

    // A second run writes nothing.
    let writes = hs.stats().writes;
    assert_eq!(run.sync()["writes"], 0);
    assert_eq!(hs.stats().writes, writes);

    // 4. Edits both ways: a phone number in HubSpot, one in Tryton.
    hs.edit("companies", &acme, json!({"phone": "+32 9 100 99 99"}));
    let mechanism = phone_mechanism(&tryton, p_nordwind);
    tryton.call(
        "party.contact_mechanism",
        "write",
        vec![mechanism, json!({"value": "+49 40 999 99"})],
    );
    run.sync();
    assert_eq!(
        Tryton::mechanism(&tryton.party(&p_acme.to_string()), "phone").as_deref(),
        Some("+32 9 100 99 99")
    );
    assert_eq!(
        hs.get("companies", &nordwind).unwrap()["phone"],
        "+49 40 999 99"
    );

    // 5. A change made in HubSpot between Tandem's read and its write (HubSpot has no
    // ETags: the modification date read just before writing differs): the write is
    // refused as a version conflict and changes nothing; the next run carries both.
    let mechanism = phone_mechanism(&tryton, p_acme);
    tryton.call(
        "party.contact_mechanism",
        "write",
        vec![mechanism, json!({"value": "+32 9 100 77 77"})],
    );
    hs.edit_before_next_write(
        "companies",
        &acme,
        json!({"website": "https://acme.example"}),
    );
    let stale = run.tandem_exit(&["sync"], 3);
    assert!(
        stale["failures"].to_string().contains("version conflict"),
        "{stale}"
    );
    assert_eq!(
        hs.get("companies", &acme).unwrap()["phone"],
        "+32 9 100 99 99"
    );
    run.sync();
    let props = hs.get("companies", &acme).unwrap();
    assert_eq!(props["phone"], "+32 9 100 77 77");
    assert_eq!(props["website"], "https://acme.example");
    assert_eq!(
        Tryton::mechanism(&tryton.party(&p_acme.to_string()), "website").as_deref(),
        Some("https://acme.example")
    );

    // 6. Settled, after waiting out 429s.
    let writes = hs.stats().writes;
    assert_eq!(run.sync()["writes"], 0);
    assert_eq!(hs.stats().writes, writes);
    let stats = hs.stats();
    assert!(stats.throttled > 0, "{stats:?}");
}

/// The figures of docs/BENCHMARKS.md: 1,000 partners between HubSpot (the local server)
/// and an accounts file, through the binary. 500 HubSpot companies match a customer by
/// name, 250 ask for a customer (`CUST` in the relations property), and 250 vendors
/// have no company (one is created in HubSpot for each). Prints the wall time and the
/// API requests of a first run, and of a second run with nothing changed.
///
/// `cargo nextest run -p tandem-cli --test e2e --run-ignored only -E 'test(hubspot_thousand)' --no-capture`
#[test]
#[ignore = "a benchmark: run it by hand for docs/BENCHMARKS.md"]
fn hubspot_thousand_partners_figures() {
    let hs = HubSpotServer::start(Options::default());
    let mut customers = String::from("id,name,phone\n");
    for i in 0..750 {
        let relations = if i < 500 { "" } else { "CUST" };
        hs.insert(
            "companies",
            json!({"name": format!("Partner {i}"), "phone": format!("+32 9 {i:06}"), RELATIONS_PROPERTY: relations}),
            &[],
        );
        if i < 500 {
            customers.push_str(&format!("A{i},Partner {i},\n"));
        }
    }
    let mut vendors = String::from("id,name,phone\n");
    for i in 750..1000 {
        vendors.push_str(&format!("V{i},Vendor {i},+49 40 {i:06}\n"));
    }
    let d = Deployment::with_config(&format!(
        r#"
[state]
url = "sqlite://.tandem/state.db"

[connectors.crm]
type = "hubspot"
url = "{url}"
token = "${{HUBSPOT_TOKEN}}"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["name"]]
fields = ["name", "phone"]

[relations.VEND]
kind = "vendor"
connector = "erp"
match = [["name"]]
create_contacts = true
fields = ["name", "phone"]
"#,
        url = hs.url()
    ));
    d.write("erp/customers.csv", &customers);
    d.write("erp/vendors.csv", &vendors);
    let token = hs.token();
    let sync = || {
        let before = hs.stats();
        let started = std::time::Instant::now();
        let out = d.tandem_env(&["--json", "sync"], &[("HUBSPOT_TOKEN", &token)]);
        let elapsed = started.elapsed();
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        let report: Json = serde_json::from_slice(&out.stdout).unwrap();
        (report, elapsed, before, hs.stats())
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
            "{name} run: {:.2} s, {requests} API requests ({} searches, {} batch calls, {} records written), {:.3} requests per partner",
            t.as_secs_f64(),
            a.searches - b.searches,
            a.batches - b.batches,
            a.writes - b.writes,
            requests as f64 / 1000.0
        );
    }
}
