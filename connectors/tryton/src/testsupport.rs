//! A real `trytond` per test (cargo feature `testsupport`).
//!
//! `scripts/tryton-env` installs Tryton and prepares a template database, and exports
//! `TANDEM_TRYTON_BIN`, `TANDEM_TRYTON_TEMPLATE` and `TANDEM_TRYTON_PASSWORD`;
//! `scripts/test` runs it first. [`TrytonServer::start`] copies the template into a
//! temporary folder, starts `trytond` on a free loopback port with a config file of its
//! own and waits until it answers; dropping the server kills the process.
//!
//! [`TrytonServer::start_tls`] serves over HTTPS, with a certificate from a private CA
//! made for the test ([`TrytonServer::ca_file`]).
//!
//! Without the environment, tests are skipped with a message when run locally, and fail
//! when `CI` is set (`CI=true`): a CI run must never pass by skipping.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_connector::http::testing::{TestCa, TlsFiles};

/// The database name inside the template.
pub const DATABASE: &str = "tandem";

/// A running `trytond` on a copy of the template database.
#[derive(Debug)]
pub struct TrytonServer {
    child: Child,
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
}

impl TrytonServer {
    /// Starts a server, or returns `None` (after printing why) when the Tryton
    /// environment is missing and `CI` is not set.
    ///
    /// # Panics
    /// When the environment is missing under `CI`, or the server does not start.
    pub fn start() -> Option<TrytonServer> {
        Self::start_with(false)
    }

    /// A server over HTTPS, its certificate issued by a CA of the test's own.
    pub fn start_tls() -> Option<TrytonServer> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<TrytonServer> {
        let (Some(bin), Some(template)) = (
            std::env::var_os("TANDEM_TRYTON_BIN"),
            std::env::var_os("TANDEM_TRYTON_TEMPLATE"),
        ) else {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            let message = "TANDEM_TRYTON_BIN and TANDEM_TRYTON_TEMPLATE are not set: run \
                           `eval \"$(bash scripts/tryton-env)\"` first (scripts/test does)";
            if ci {
                panic!("{message}; CI must not skip the Tryton tests");
            }
            eprintln!("skipping a Tryton test: {message}");
            return None;
        };
        let password =
            std::env::var("TANDEM_TRYTON_PASSWORD").unwrap_or_else(|_| "tandem-admin".into());
        let mut last_error = String::new();
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..3 {
            match Self::try_start(
                PathBuf::from(&bin),
                PathBuf::from(&template),
                &password,
                tls,
            ) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("trytond did not start: {last_error}");
    }

    fn try_start(
        bin: PathBuf,
        template: PathBuf,
        password: &str,
        tls: bool,
    ) -> Result<TrytonServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let tls = match tls {
            true => Some(
                TestCa::new("Tandem test CA")
                    .write_files(dir.path())
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        let ssl = tls
            .as_ref()
            .map(|f| {
                format!(
                    "[ssl]\ncertificate = {}\nprivatekey = {}\n",
                    f.cert.display(),
                    f.key.display()
                )
            })
            .unwrap_or_default();
        std::fs::copy(&template, dir.path().join(format!("{DATABASE}.sqlite")))
            .map_err(|e| format!("copying {}: {e}", template.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let config = dir.path().join("trytond.conf");
        std::fs::write(
            &config,
            format!(
                "[database]\nuri = sqlite://\npath = {}\n[web]\nlisten = 127.0.0.1:{port}\n\
                 [session]\nmax_attempt = 20\n{ssl}",
                dir.path().display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("trytond.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin.join("trytond"))
            .arg("-c")
            .arg(&config)
            .arg("-d")
            .arg(DATABASE)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("trytond").display()))?;
        let mut server = TrytonServer {
            child,
            port,
            password: password.to_owned(),
            dir,
            tls,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("trytond exited with {status}: {}", server.log()));
            }
            if server.answers() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "trytond did not answer within 60 s: {}",
            server.log()
        ))
    }

    /// `http://127.0.0.1:<port>/` (`https://` with TLS)
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The CA certificate a TLS server's certificate comes from.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|f| f.ca.as_path())
    }

    /// The settings of a `type = "tryton"` connector on this server (with `ca_file`
    /// under TLS).
    pub fn settings(&self) -> serde_json::Value {
        let mut settings = serde_json::json!({
            "url": self.url(),
            "database": DATABASE,
            "user": "admin",
            "password": self.password,
        });
        if let Some(ca) = self.ca_file() {
            settings["ca_file"] = serde_json::json!(ca);
        }
        settings
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("trytond.log")).unwrap_or_default()
    }

    /// Whether `common.server.version` answers 200 (through TLS when served so).
    fn answers(&self) -> bool {
        let body = r#"{"id":0,"method":"common.server.version","params":[]}"#;
        let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "POST /rpc/ HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let reply = match &self.tls {
            None => exchange(stream, &request),
            Some(files) => exchange_tls(stream, &request, files),
        };
        reply.is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
    }
}

fn exchange(mut stream: impl Read + Write, request: &str) -> Option<String> {
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    // A TLS server may close without close_notify: keep what arrived.
    let _ = stream.read_to_end(&mut reply);
    Some(String::from_utf8_lossy(&reply).into_owned())
}

fn exchange_tls(stream: TcpStream, request: &str, files: &TlsFiles) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    tandem_connector::http::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca).ok()? {
        roots.add(cert.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").ok()?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
    exchange(rustls::StreamOwned::new(conn, stream), request)
}

impl Drop for TrytonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
