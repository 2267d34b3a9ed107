//! Real CardDAV servers per test (cargo feature `testsupport`).
//!
//! `scripts/carddav-env` installs Radicale and Xandikos into cached virtual environments
//! and SabreDAV from Debian's packages, and exports `TANDEM_RADICALE_BIN`,
//! `TANDEM_XANDIKOS_BIN` and `TANDEM_SABREDAV_PHP`; `scripts/test` runs it first.
//! [`CardServer::radicale`] / [`CardServer::xandikos`] / [`CardServer::sabredav`] start a
//! server on a free loopback port with a storage folder of its own and wait until it
//! answers; [`CardServer::new_book`] creates an empty address book; dropping the server
//! kills the process. SabreDAV runs `tests/servers/sabredav/server.php` under `php -S`,
//! with a SQLite database made fresh for the server and HTTP Digest auth.
//!
//! [`CardServer::radicale_tls`] serves Radicale over HTTPS with a certificate from a
//! private CA made for the test ([`CardServer::ca_file`]).
//!
//! Without the environment, tests are skipped with a message when run locally, and fail
//! when `CI` is set: a CI run must never pass by skipping.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_connector::http::testing::{TestCa, TlsFiles};
use tandem_connector::http::{Auth, HttpClient, HttpSettings, Request, SecretString};

pub const USER: &str = "tandem";
pub const PASSWORD: &str = "tandem-test-pw";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Radicale with htpasswd (plain) auth: user [`USER`], password [`PASSWORD`].
    Radicale,
    /// Xandikos, without auth (it has password auth only with its own TLS).
    Xandikos,
    /// SabreDAV 1.8 (no `sync-collection`) with HTTP Digest auth: user [`USER`],
    /// password [`PASSWORD`].
    Sabredav,
}

/// The PHP script that serves SabreDAV.
fn sabredav_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/servers/sabredav/server.php")
}

/// A running CardDAV server with one empty address book.
#[derive(Debug)]
pub struct CardServer {
    child: Child,
    pub flavor: Flavor,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
}

impl CardServer {
    pub fn radicale() -> Option<CardServer> {
        Self::start(Flavor::Radicale)
    }

    pub fn xandikos() -> Option<CardServer> {
        Self::start(Flavor::Xandikos)
    }

    pub fn sabredav() -> Option<CardServer> {
        Self::start(Flavor::Sabredav)
    }

    /// Radicale over HTTPS, its certificate issued by a CA of the test's own.
    pub fn radicale_tls() -> Option<CardServer> {
        Self::start_with(Flavor::Radicale, true)
    }

    /// Starts a server, or returns `None` (after printing why) when the environment is
    /// missing and `CI` is not set.
    ///
    /// # Panics
    /// When the environment is missing under `CI`, or the server does not start.
    pub fn start(flavor: Flavor) -> Option<CardServer> {
        Self::start_with(flavor, false)
    }

    fn start_with(flavor: Flavor, tls: bool) -> Option<CardServer> {
        let var = match flavor {
            Flavor::Radicale => "TANDEM_RADICALE_BIN",
            Flavor::Xandikos => "TANDEM_XANDIKOS_BIN",
            Flavor::Sabredav => "TANDEM_SABREDAV_PHP",
        };
        let Some(bin) = std::env::var_os(var) else {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            let message = format!(
                "{var} is not set: run `eval \"$(bash scripts/carddav-env)\"` first (scripts/test does)"
            );
            if ci {
                panic!("{message}; CI must not skip the CardDAV tests");
            }
            eprintln!("skipping a CardDAV test: {message}");
            return None;
        };
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(flavor, PathBuf::from(&bin), tls) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("{flavor:?} did not start: {last_error}");
    }

    fn try_start(flavor: Flavor, bin: PathBuf, tls: bool) -> Result<CardServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let tls = match tls {
            true => Some(
                TestCa::new("Tandem test CA")
                    .write_files(dir.path())
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        let mut cmd = match flavor {
            Flavor::Radicale => radicale_command(&bin, dir.path(), port, tls.as_ref())?,
            Flavor::Sabredav => {
                let mut c = Command::new(&bin);
                c.args(["-S", &format!("127.0.0.1:{port}")])
                    .arg(sabredav_script())
                    .current_dir(&storage)
                    .env("TANDEM_SABREDAV_DB", storage.join("sabredav.sqlite"))
                    .env("TANDEM_SABREDAV_USER", USER)
                    .env("TANDEM_SABREDAV_PASSWORD", PASSWORD);
                c
            }
            Flavor::Xandikos => {
                let mut c = Command::new(bin.join("xandikos"));
                c.args(["serve", "-d"]).arg(&storage).args([
                    "--defaults",
                    "-l",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "--no-detect-systemd",
                ]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run the server in {}: {e}", bin.display()))?;
        let mut server = CardServer {
            child,
            flavor,
            port,
            dir,
            tls,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}: {}", server.log()));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("no answer within 30 s: {}", server.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// The base URL, `http://127.0.0.1:<port>/` (`https://` with TLS).
    pub fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The folder the server stores its data in (Radicale: `collection-root/<user>/<book>/`
    /// holds one `.vcf` file per card, which a benchmark may write directly).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The CA certificate a TLS server's certificate comes from.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|f| f.ca.as_path())
    }

    /// Creates address book `name` (MKCOL with the addressbook resource type) and
    /// returns its URL.
    pub async fn new_book(&self, name: &str) -> String {
        let url = match self.flavor {
            Flavor::Radicale => format!("{}{USER}/{name}/", self.base()),
            Flavor::Xandikos => format!("{}user/contacts/{name}/", self.base()),
            Flavor::Sabredav => format!("{}addressbooks/{USER}/{name}/", self.base()),
        };
        let body = r#"<?xml version="1.0" encoding="utf-8"?><d:mkcol xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/><card:addressbook/></d:resourcetype></d:prop></d:set></d:mkcol>"#;
        let headers = [("Content-Type", "application/xml; charset=utf-8")];
        let reply = self.raw().send("MKCOL", &url, &headers, Some(body)).await;
        assert_eq!(reply.status, 201, "MKCOL {url}: {}", self.log());
        url
    }

    /// Requests behind the connector's back, with this server's credentials (HTTP
    /// Digest where the server asks for it) and its CA.
    pub fn raw(&self) -> Raw {
        let mut settings =
            HttpSettings::with_timeouts(Duration::from_secs(10), Duration::from_secs(120));
        settings.retry.attempts = 1;
        settings.ca_file = self.ca_file().map(Path::to_path_buf);
        let auth = match self.flavor {
            Flavor::Radicale | Flavor::Sabredav => Auth::Basic {
                user: USER.into(),
                password: Some(SecretString::from(PASSWORD)),
            },
            Flavor::Xandikos => Auth::None,
        };
        let http = HttpClient::new("test", settings, auth).expect("a client");
        Raw {
            http: Arc::new(http),
        }
    }

    /// A client that trusts this server (its CA, with TLS).
    pub fn client(&self) -> reqwest::Client {
        let mut client = tandem_connector::http::client_builder();
        if let Some(files) = &self.tls {
            let pem = std::fs::read(&files.ca).expect("the test CA");
            let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("PEM");
            client = client.tls_certs_only(certs);
        }
        client.build().expect("a client")
    }

    /// A request with this server's basic credentials (and its CA, with TLS); for
    /// SabreDAV, which wants Digest, see [`CardServer::raw`].
    pub fn http(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.client().request(method, url);
        match self.flavor {
            Flavor::Radicale | Flavor::Sabredav => req.basic_auth(USER, Some(PASSWORD)),
            Flavor::Xandikos => req,
        }
    }

    /// The settings of a `type = "carddav"` connector on `book` (with `ca_file` under
    /// TLS).
    pub fn settings(&self, book: &str) -> serde_json::Value {
        let mut settings = match self.flavor {
            Flavor::Radicale | Flavor::Sabredav => {
                serde_json::json!({"url": book, "username": USER, "password": PASSWORD})
            }
            Flavor::Xandikos => serde_json::json!({ "url": book }),
        };
        if let Some(ca) = self.ca_file() {
            settings["ca_file"] = serde_json::json!(ca);
        }
        settings
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// Requests to a [`CardServer`] that do not go through the connector.
#[derive(Debug, Clone)]
pub struct Raw {
    http: Arc<HttpClient>,
}

/// What a [`Raw`] request got.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: String,
}

impl Raw {
    /// # Panics
    /// When the server cannot be reached.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&'static str, &str)],
        body: Option<&str>,
    ) -> RawReply {
        let method =
            tandem_connector::http::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = Request::new(method, url);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let reply = self.http.send(&request).await.expect("the server answers");
        RawReply {
            status: reply.status.as_u16(),
            etag: reply.header("etag").map(str::to_owned),
            body: reply.text(),
        }
    }
}

/// Radicale with htpasswd auth (and TLS with `tls`), its files in `dir`.
fn radicale_command(
    bin: &Path,
    dir: &Path,
    port: u16,
    tls: Option<&TlsFiles>,
) -> Result<Command, String> {
    let users = dir.join("users");
    std::fs::write(&users, format!("{USER}:{PASSWORD}\n")).map_err(|e| e.to_string())?;
    let config = dir.join("radicale.conf");
    let ssl = tls
        .map(|f| {
            format!(
                "ssl = True\ncertificate = {}\nkey = {}\n",
                f.cert.display(),
                f.key.display()
            )
        })
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[server]\nhosts = 127.0.0.1:{port}\n{ssl}[auth]\ntype = htpasswd\n\
             htpasswd_filename = {}\nhtpasswd_encryption = plain\ndelay = 0\n\
             [rights]\ntype = owner_only\n[storage]\nfilesystem_folder = {}\n\
             [logging]\nlevel = warning\n",
            users.display(),
            dir.join("storage").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut c = Command::new(bin.join("radicale"));
    c.arg("-C").arg(&config);
    Ok(c)
}

impl Drop for CardServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
