//! The status page in a real browser: a manual conflict is settled by clicking its
//! button in headless Chromium, and the next sync writes the chosen value to both
//! sides. Also what the page refuses, over plain HTTP.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// `tandem run` with its listener on a free loopback port, stopped when dropped.
struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT/`
    url: String,
}

impl Service {
    /// Starts the service with `service` (keys of `[service]`, `listen` added) and waits
    /// until its listener answers.
    fn start(d: &Deployment, service: &str) -> Service {
        let config = d.read("tandem.toml");
        let mut last = String::new();
        // The port is free when picked; another process may take it before the service.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            d.write(
                "tandem.toml",
                &format!("{config}\n[service]\nlisten = \"127.0.0.1:{port}\"\n{service}"),
            );
            let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
                .arg("--config")
                .arg(d.path("tandem.toml"))
                .arg("run")
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut service = Service {
                child,
                url: format!("http://127.0.0.1:{port}/"),
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(status)) = service.child.try_wait() {
                    let mut err = String::new();
                    let _ = service
                        .child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err);
                    last = format!("tandem run exited ({status}): {err}");
                    break;
                }
                if get(&format!("{}healthz", service.url)).is_some_and(|(s, _)| s == 200) {
                    return service;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if last.is_empty() {
                last = "the listener did not answer within 30 s".to_owned();
            }
        }
        panic!("tandem run did not start: {last}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET, or `None` when nothing answers.
fn get(url: &str) -> Option<(u16, String)> {
    try_request("GET", url, &[], None)
}

/// Waits until `check` holds (the service syncs on its own schedule), at most 30 s.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
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

fn phone(d: &Deployment, file: &str, id: &str) -> Option<String> {
    cell(&d.read(file), id, "phone")
}

/// Both sides carry `value`: the service's sync after the decision wrote it.
fn both_sides_carry(d: &Deployment, value: &str) {
    eventually(&format!("both sides carry {value:?}"), || {
        phone(d, "crm/contacts.csv", "C1").as_deref() == Some(value)
            && phone(d, "erp/customers.csv", "K1").as_deref() == Some(value)
    });
}

#[test]
fn r15_a_conflict_settled_by_clicking_on_the_status_page_is_written_by_the_next_sync() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (d, id) = with_conflict();
    let service = Service::start(&d, "");

    browser.goto(&service.url);
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
    assert!(
        all.contains("Ready: every connector passed its last check or poll."),
        "{all}"
    );
    assert!(
        all.contains("CUST: 1 unchanged, 1 conflict"),
        "the last runs with their counts: {all}"
    );
    let shot = browser.screenshot(&artifact("status-page.png"));
    println!("screenshot of the status page: {}", shot.display());

    // The account's value, by clicking its button.
    browser.click(&browser.find(&format!("#take-account-{id}")));
    let notice = browser.text(&browser.find("#notice"));
    assert!(
        notice.contains(&format!("Conflict {id} settled")),
        "{notice}"
    );
    assert!(
        !browser.url().contains("/settle"),
        "redirected to the overview, so a reload posts nothing: {}",
        browser.url()
    );
    let shot = browser.screenshot(&artifact("status-page-settled.png"));
    println!("screenshot after settling: {}", shot.display());

    // The service syncs the decision at once, and the page follows the state.
    both_sides_carry(&d, MARKUP);
    eventually("the page shows no open conflict", || {
        browser.goto(&service.url);
        browser.page_text().contains("No open conflicts.")
    });

    // The log tells what happened, and the links search finds the pair.
    let field = browser.find("#log-contact");
    browser.type_into(&field, "C1\u{E007}");
    browser.wait_title("Interaction log of contact C1 - Tandem");
    let log = browser.page_text();
    assert!(log.contains("Interaction log of contact C1"), "{log}");
    assert!(
        log.contains("policy manual"),
        "the conflict is logged: {log}"
    );
    assert!(log.contains("phone settled"), "so is the decision: {log}");

    browser.goto(&service.url);
    let field = browser.find("#link-id");
    browser.type_into(&field, "K1\u{E007}");
    browser.wait_title("Links of K1 - Tandem");
    let links = browser.page_text();
    assert!(links.contains("Links of K1"), "{links}");
    assert!(links.contains("CUST C1 customer K1"), "{links}");
}

#[test]
fn r15_a_value_of_ones_own_typed_into_the_status_page_is_written_by_the_next_sync() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (d, id) = with_conflict();
    let service = Service::start(&d, "");
    browser.goto(&service.url);
    // Enter in the field submits the typed value, never a side's.
    let field = browser.find(&format!("#value-{id}"));
    browser.type_into(&field, "+32 9 999\u{E007}");
    let notice = browser.text(&browser.find("#notice"));
    assert!(
        notice.contains(&format!("Conflict {id} settled")),
        "{notice}"
    );
    both_sides_carry(&d, "+32 9 999");
}

/// An answer of the listener.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One plain HTTP request (no redirects followed); `None` when nothing answers.
fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    send(method, url, headers, body).map(|r| (r.status, r.body))
}

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Option<Reply> {
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
        let response = r.send().await.ok()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Some(Reply {
            status,
            headers,
            body: response.text().await.ok()?,
        })
    })
}

fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    send(method, url, headers, body).unwrap_or_else(|| panic!("{method} {url}: no answer"))
}

#[test]
fn the_status_page_refuses_foreign_host_names_and_posts_without_its_csrf_token() {
    let (d, id) = with_conflict();
    let service = Service::start(&d, "");
    let page = request("GET", &service.url, &[], None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("+32 3 &lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot;"),
        "escaped: {}",
        page.body
    );
    assert!(
        page.header("content-security-policy")
            .contains("default-src 'none'"),
        "no script runs, whatever a value holds"
    );
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let settle = format!("{}conflicts/{id}/settle", service.url);

    // DNS rebinding: a foreign name pointing at 127.0.0.1 is not served.
    let foreign = request("GET", &service.url, &[("host", "evil.example")], None);
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert!(foreign.body.contains("answers only on loopback"));

    // A post without the CSRF token, with a wrong one, or from another site is refused.
    let reply = request("POST", &settle, &[], Some("take=contact"));
    assert!(matches!(reply.status, 400 | 422), "{}", reply.status);
    let reply = request("POST", &settle, &[], Some("csrf=nope&take=contact"));
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("CSRF token"), "{}", reply.body);
    let body = format!("csrf={csrf}&take=contact");
    let cross = [("sec-fetch-site", "cross-site")];
    assert_eq!(request("POST", &settle, &cross, Some(&body)).status, 403);
    let page = request("GET", &service.url, &[], None);
    assert!(page.body.contains(&format!("id=\"conflict-{id}\"")));
    assert!(!page.body.contains("Settled:"), "nothing settled");

    // An unknown conflict is said to be so; with the token the decision is taken.
    let unknown = format!("{}conflicts/999/settle", service.url);
    let reply = request("POST", &unknown, &[], Some(&body));
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(reply.body.contains("no open conflict with id 999"));
    let reply = request("POST", &settle, &[], Some(&body));
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), format!("/?settled={id}"));
    both_sides_carry(&d, "+32 2");
}

#[test]
fn with_a_token_the_status_page_asks_for_it_once_and_keeps_it_in_an_httponly_cookie() {
    let (d, _) = with_conflict();
    let token = "0123456789abcdef-token";
    let service = Service::start(&d, &format!("token = \"{token}\"\n"));
    let url = &service.url;

    let page = request("GET", url, &[], None);
    assert_eq!(page.status, 401);
    assert!(
        page.body.contains("type=\"password\" name=\"token\""),
        "{}",
        page.body
    );
    assert!(!page.body.contains("conflict-"), "nothing of the state");
    let wrong = request("GET", &format!("{url}?token=nope"), &[], None);
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not the configured one"));

    // Given once in the address: a cookie, and the token leaves the address.
    let given = request(
        "GET",
        &format!("{url}log?contact=C1&token={token}"),
        &[],
        None,
    );
    assert_eq!(given.status, 303);
    assert_eq!(given.header("location"), "/log?contact=C1");
    let cookie = given.header("set-cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains(token),
        "the cookie does not hold it as typed"
    );
    let pair = cookie.split(';').next().unwrap();
    let log = request(
        "GET",
        &format!("{url}log?contact=C1"),
        &[("cookie", pair)],
        None,
    );
    assert_eq!(log.status, 200, "{}", log.body);
    assert!(log.body.contains("Interaction log of contact C1"));
    let bearer = format!("Bearer {token}");
    let page = request("GET", url, &[("authorization", &bearer)], None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Open conflicts"));
    // The service's own routes keep their bearer rule.
    assert_eq!(
        request("GET", &format!("{url}metrics"), &[("cookie", pair)], None).status,
        401
    );
    assert_eq!(
        request("GET", &format!("{url}healthz"), &[], None).status,
        200
    );
}

#[test]
fn with_a_token_a_browser_types_it_once_and_keeps_the_search_it_asked_for() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (d, _) = with_conflict();
    let token = "0123456789abcdef-token";
    let service = Service::start(&d, &format!("token = \"{token}\"\n"));
    browser.goto(&format!("{}links?id=K1", service.url));
    assert_eq!(browser.title(), "Token required - Tandem");
    let field = browser.find("#token");
    browser.type_into(&field, &format!("{token}\u{E007}"));
    // The search asked for, without the token in the address.
    browser.wait_title("Links of K1 - Tandem");
    assert!(!browser.url().contains("token"), "{}", browser.url());
    // The cookie opens every page of the session from now on.
    browser.goto(&service.url);
    assert_eq!(browser.title(), "Tandem status - Tandem");
    assert!(browser.page_text().contains("Open conflicts"));
}
