//! The status page in a real browser: a manual conflict is settled by clicking its
//! button in headless Chromium, and the next sync writes the chosen value to both
//! sides. Also what the page refuses, over plain HTTP.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::browser::Browser;
use crate::support::{Deployment, cell, counts};

const MANUAL: &str = r#"
[connectors.crm]
type = "file"
path = "crm"

[connectors.erp]
type = "file"
path = "erp"

[contacts]
connector = "crm"

[relations.CUST]
kind = "customer"
connector = "erp"
match = [["vat_registration_no"]]
conflict = "manual"
"#;

/// Partner data is untrusted: this must show as text, never act as markup.
const MARKUP: &str = "+32 3 <b>x</b> & \"y\"";

/// A linked pair whose phone both sides changed: one open conflict.
fn with_conflict() -> (Deployment, i64) {
    let d = Deployment::with_config(MANUAL);
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no,phone\nC1,company,Acme NV,BE0111,+32 1\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no,phone\nK1,Acme NV,BE0111,+32 1\n",
    );
    d.sync();
    d.set_cell("crm/contacts.csv", "C1", "phone", "+32 2");
    d.set_cell("erp/customers.csv", "K1", "phone", MARKUP);
    let report = d.sync();
    assert_eq!(counts(&report, "CUST")["conflicts"], 1, "{report}");
    let id = d.json(&["conflicts"])[0]["id"].as_i64().unwrap();
    (d, id)
}

/// `tandem status --serve 127.0.0.1:0`, stopped when dropped.
struct StatusPage {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    url: String,
}

impl StatusPage {
    fn start(d: &Deployment) -> StatusPage {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(d.path("tandem.toml"))
            .args(["status", "--serve", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("Status page on ")
            .unwrap_or_else(|| panic!("the address line, not {line:?}"))
            .to_owned();
        StatusPage {
            child,
            _stdout: stdout,
            url,
        }
    }
}

impl Drop for StatusPage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots are kept: `<target>/test-artifacts/`.
fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts")
        .join(name)
}

#[test]
fn r15_a_conflict_settled_by_clicking_on_the_status_page_is_written_by_the_next_sync() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (d, id) = with_conflict();
    let page = StatusPage::start(&d);

    browser.goto(&page.url);
    assert_eq!(browser.title(), "Tandem status - Tandem");
    let row = browser.find(&format!("#conflict-{id}"));
    let text = browser.text(&row);
    for needle in [
        "phone",
        "+32 1",
        "+32 2",
        MARKUP,
        "CUST contact C1 / customer K1",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text:?}");
    }
    let all = browser.page_text();
    assert!(all.contains("Last runs"), "{all}");
    assert!(
        all.contains("CUST: 1 unchanged, 1 conflict"),
        "the run's counts: {all}"
    );
    let shot = browser.screenshot(&artifact("status-page.png"));
    println!("screenshot of the status page: {}", shot.display());

    // The account's value, by clicking its button.
    browser.click(&browser.find(&format!("#take-account-{id}")));
    let notice = browser.text(&browser.find("#notice"));
    assert!(
        notice.contains(&format!("Conflict {id} settled: the next sync writes")),
        "{notice}"
    );
    assert!(notice.contains(MARKUP), "{notice}");
    assert!(
        !browser.url().contains("/settle"),
        "redirected to the overview, so a reload posts nothing: {}",
        browser.url()
    );
    let row = browser.text(&browser.find(&format!("#conflict-{id}")));
    assert!(row.contains(&format!("Settled: {MARKUP}")), "{row}");
    let shot = browser.screenshot(&artifact("status-page-settled.png"));
    println!("screenshot after settling: {}", shot.display());

    let report = d.sync();
    assert!(report["writes"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        cell(&d.read("crm/contacts.csv"), "C1", "phone").as_deref(),
        Some(MARKUP)
    );
    assert_eq!(
        cell(&d.read("erp/customers.csv"), "K1", "phone").as_deref(),
        Some(MARKUP)
    );
    assert_eq!(d.json(&["conflicts"]), json!([]), "closed");

    // The page follows the state: no conflict now, and the log tells what happened.
    browser.goto(&page.url);
    assert!(browser.page_text().contains("No open conflicts."));
    let field = browser.find("#log-contact");
    browser.type_into(&field, "C1\u{E007}");
    let log = browser.page_text();
    assert!(log.contains("Interaction log of contact C1"), "{log}");
    assert!(log.contains("conflict"), "{log}");
    assert!(
        log.contains("phone settled"),
        "the resolution is logged: {log}"
    );

    browser.goto(&page.url);
    let field = browser.find("#link-id");
    browser.type_into(&field, "K1\u{E007}");
    let links = browser.page_text();
    assert!(links.contains("Links of K1"), "{links}");
    assert!(links.contains("customer K1"), "{links}");
}

#[test]
fn r15_a_value_of_ones_own_typed_into_the_status_page_is_written_by_the_next_sync() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (d, id) = with_conflict();
    let page = StatusPage::start(&d);
    browser.goto(&page.url);
    // Enter in the field submits the typed value, never a side's.
    let field = browser.find(&format!("#value-{id}"));
    browser.type_into(&field, "+32 9 999\u{E007}");
    let notice = browser.text(&browser.find("#notice"));
    assert!(notice.contains("\"+32 9 999\""), "{notice}");
    d.sync();
    for (file, id) in [("crm/contacts.csv", "C1"), ("erp/customers.csv", "K1")] {
        assert_eq!(
            cell(&d.read(file), id, "phone").as_deref(),
            Some("+32 9 999"),
            "{file}"
        );
    }
}

/// Plain HTTP requests, each answered by the running page.
fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    tandem_connector::http::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut r = client.request(method.parse().unwrap(), url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(body) = body {
            r = r
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned());
        }
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}

#[test]
fn the_status_page_refuses_foreign_host_names_and_posts_without_its_csrf_token() {
    let (d, id) = with_conflict();
    let page = StatusPage::start(&d);
    let (status, html) = request("GET", &page.url, &[], None);
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("+32 3 &lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot;"),
        "escaped: {html}"
    );
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let settle = format!("{}conflicts/{id}/settle", page.url);

    // DNS rebinding: a foreign name pointing at 127.0.0.1 is not served.
    let (status, html) = request("GET", &page.url, &[("host", "evil.example")], None);
    assert_eq!(status, 403, "{html}");
    assert!(html.contains("answers only on loopback"), "{html}");

    // A post without the token, with a wrong one, or from another site writes nothing.
    let (status, _) = request("POST", &settle, &[], Some("take=contact"));
    assert!(status == 422 || status == 400, "{status}");
    let (status, html) = request("POST", &settle, &[], Some("csrf=nope&take=contact"));
    assert_eq!(status, 403, "{html}");
    assert!(html.contains("CSRF token"), "{html}");
    let body = format!("csrf={csrf}&take=contact");
    let (status, _) = request(
        "POST",
        &settle,
        &[("sec-fetch-site", "cross-site")],
        Some(&body),
    );
    assert_eq!(status, 403);
    assert_eq!(
        d.json(&["conflicts"])[0]["resolution"],
        json!(null),
        "nothing settled"
    );

    // With the token it is settled; an unknown conflict is said to be so.
    let (status, _) = request("POST", &settle, &[], Some(&body));
    assert_eq!(status, 303);
    assert_eq!(d.json(&["conflicts"])[0]["resolution"], "+32 2");
    let unknown = format!("{}conflicts/999/settle", page.url);
    let (status, html) = request("POST", &unknown, &[], Some(&body));
    assert_eq!(status, 404, "{html}");
    assert!(html.contains("no open conflict with id 999"), "{html}");

    // The overview says what the next sync writes.
    let (status, html) = request("GET", &format!("{}?settled={id}", page.url), &[], None);
    assert_eq!(status, 200);
    assert!(
        html.contains("the next sync writes &quot;+32 2&quot;"),
        "{html}"
    );
}
