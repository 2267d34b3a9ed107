//! A headless Chromium driven over the W3C WebDriver protocol, for the status page's
//! tests: a chromedriver per test on a free loopback port, and the handful of commands
//! the tests use (navigate, find, click, type, read text, screenshot), as JSON over
//! reqwest. `scripts/browser-env` installs Chromium and chromedriver and names them in
//! `TANDEM_CHROMEDRIVER` and `TANDEM_CHROMIUM`; without them a test skips with a message,
//! or fails when `CI` is set (a CI run must never pass by skipping).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the session and chromedriver end when it is dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Child,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, or returns `None` (after saying why)
    /// when they are not installed and `CI` is not set.
    ///
    /// # Panics
    /// When they are not installed under `CI`, or do not start.
    pub fn start() -> Option<Browser> {
        let (Some(driver), Some(chromium)) = (
            std::env::var_os("TANDEM_CHROMEDRIVER"),
            std::env::var_os("TANDEM_CHROMIUM"),
        ) else {
            let message = "TANDEM_CHROMEDRIVER or TANDEM_CHROMIUM is not set: run \
                           `eval \"$(bash scripts/browser-env)\"` first (scripts/test does)";
            if ci() {
                panic!("{message}; CI must not skip the status page's browser test");
            }
            eprintln!("skipping a browser test: {message}");
            return None;
        };
        tandem_connector::http::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut last_error = String::new();
        // The port is free when picked; another process may take it before chromedriver.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", Path::new(&driver).display()));
            let base = format!("http://127.0.0.1:{port}");
            let ready = runtime.block_on(wait_ready(&client, &base, &mut child));
            if let Err(e) = ready {
                let _ = child.kill();
                let _ = child.wait();
                last_error = e;
                continue;
            }
            let capabilities = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.to_string_lossy(),
                    "args": ["--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-dev-shm-usage",
                             "--window-size=1280,1000"],
                },
            }}});
            let reply = runtime.block_on(send(
                &client,
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(capabilities),
            ));
            match reply {
                Ok(value) => {
                    let id = value["sessionId"].as_str().unwrap().to_owned();
                    let browser = Browser {
                        runtime,
                        client,
                        session: format!("{base}/session/{id}"),
                        driver: child,
                    };
                    // A click that submits a form may return before the next page is
                    // there: finding an element waits for it, up to 10 s.
                    browser.call(
                        reqwest::Method::POST,
                        "/timeouts",
                        Some(json!({ "implicit": 10_000 })),
                    );
                    return Some(browser);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = e;
                }
            }
        }
        panic!("chromedriver did not start a session: {last_error}");
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        self.runtime
            .block_on(send(&self.client, method, &url, body))
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until the page's title is `title` (a form submitted by a click or Enter
    /// may still be loading), at most 10 s.
    pub fn wait_title(&self, title: &str) {
        let started = Instant::now();
        loop {
            let now = self.title();
            if now == title {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the page's title is still {now:?}, not {title:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The element the CSS selector finds; panics when there is none.
    pub fn find(&self, css: &str) -> Element {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        Element(
            found[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css:?}: {found}"))
                .to_owned(),
        )
    }

    pub fn click(&self, element: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        );
    }

    /// Types `text` into a field (a trailing `\u{E007}` presses Enter).
    pub fn type_into(&self, element: &Element, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        );
    }

    /// The rendered text of an element, as a person sees it.
    pub fn text(&self, element: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", element.0),
            None,
        )
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// The text of the whole page.
    pub fn page_text(&self) -> String {
        let body = self.find("body");
        self.text(&body)
    }

    /// Saves a PNG of the window to `path` (folders created), and returns the path.
    pub fn screenshot(&self, path: &Path) -> PathBuf {
        let data = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        path.to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let session = self.session.clone();
        let _ = self
            .runtime
            .block_on(send(&self.client, reqwest::Method::DELETE, &session, None));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command: its `value`, or the error WebDriver or the connection gave.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if status.is_success() {
        Ok(value["value"].clone())
    } else {
        Err(format!("{status}: {}", value["value"]))
    }
}

/// Waits until chromedriver answers `/status` as ready.
async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut Child) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(stderr) = child.stderr.take() {
                for line in BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                    .take(20)
                {
                    err.push_str(&line);
                    err.push('\n');
                }
            }
            return Err(format!("chromedriver exited ({status}): {err}"));
        }
        if let Ok(value) = send(
            client,
            reqwest::Method::GET,
            &format!("{base}/status"),
            None,
        )
        .await
            && value["ready"] == true
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("chromedriver was not ready within 20 s".to_owned())
}
