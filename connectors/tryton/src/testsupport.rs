//! A real `trytond` per test (cargo feature `testsupport`).
//!
//! `scripts/tryton-env` installs Tryton and prepares a template database, and exports
//! `TANDEM_TRYTON_BIN`, `TANDEM_TRYTON_TEMPLATE` and `TANDEM_TRYTON_PASSWORD`;
//! `scripts/test` runs it first. [`TrytonServer::start`] copies the template into a
//! temporary folder, starts `trytond` on a free loopback port with a config file of its
//! own and waits until it answers; dropping the server kills the process.
//!
//! Without the environment, tests are skipped with a message when run locally, and fail
//! when `CI` is set (`CI=true`): a CI run must never pass by skipping.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database name inside the template.
pub const DATABASE: &str = "tandem";

/// A running `trytond` on a copy of the template database.
#[derive(Debug)]
pub struct TrytonServer {
    child: Child,
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
}

impl TrytonServer {
    /// Starts a server, or returns `None` (after printing why) when the Tryton
    /// environment is missing and `CI` is not set.
    ///
    /// # Panics
    /// When the environment is missing under `CI`, or the server does not start.
    pub fn start() -> Option<TrytonServer> {
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
            match Self::try_start(PathBuf::from(&bin), PathBuf::from(&template), &password) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("trytond did not start: {last_error}");
    }

    fn try_start(bin: PathBuf, template: PathBuf, password: &str) -> Result<TrytonServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
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
                 [session]\nmax_attempt = 20\n",
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

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The settings of a `type = "tryton"` connector on this server.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url(),
            "database": DATABASE,
            "user": "admin",
            "password": self.password,
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("trytond.log")).unwrap_or_default()
    }

    fn answers(&self) -> bool {
        let body = r#"{"id":0,"method":"common.server.version","params":[]}"#;
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "POST /rpc/ HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
    }
}

impl Drop for TrytonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
