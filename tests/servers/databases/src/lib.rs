//! Real database servers per test, for any crate whose tests need PostgreSQL or
//! MariaDB (the SQL connector, the PostgreSQL state store, the end-to-end tests).
//!
//! `scripts/sql-env` installs PostgreSQL and MariaDB from Debian's packages and exports
//! `TANDEM_POSTGRES_BIN` and `TANDEM_MARIADB_BIN`; `scripts/test` runs it first.
//! [`PostgresServer::start`] / [`MariadbServer::start`] start a server on a free
//! loopback port in a fresh data folder under the target folder and wait until it
//! accepts connections; dropping the server stops it and removes the folder. The first
//! start initialises a template data folder (`target/sql-env/*-template-*`), later starts
//! copy it, so a start takes about a second.
//!
//! PostgreSQL refuses to run as root: as root, its programs run as the `postgres`
//! user (which the Debian package creates) and the data folder belongs to it.
//!
//! Without the environment, tests are skipped with a message when run locally, and fail
//! when `CI` is set: a CI run must never pass by skipping.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The user and database of a test PostgreSQL server (trust authentication, loopback).
pub const POSTGRES_USER: &str = "tandem";

/// A running PostgreSQL server with an empty database `postgres` owned by
/// [`POSTGRES_USER`].
#[derive(Debug)]
pub struct PostgresServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The folder of PostgreSQL's programs (`psql` runs `CREATE DATABASE`).
    bin: PathBuf,
    /// Databases made by [`PostgresServer::create_database`] so far.
    databases: AtomicUsize,
}

/// A running MariaDB server with an empty database `tandem`, user `root` without a
/// password.
#[derive(Debug)]
pub struct MariadbServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The programs folder from `var`, or `None` after saying why (a panic under `CI`).
fn bin_dir(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            let message = format!(
                "{var} is not set: run `eval \"$(bash scripts/sql-env)\"` first (scripts/test does)"
            );
            if ci() {
                panic!("{message}; CI must not skip the {what} tests");
            }
            eprintln!("skipping a {what} test: {message}");
            None
        }
    }
}

/// `target/sql-env`: the target folder of the build running the tests.
fn work_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target"));
    let root = target.join("sql-env");
    std::fs::create_dir_all(&root).expect("target/sql-env");
    root
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn is_root() -> bool {
    run_output(Command::new("id").arg("-u")).is_ok_and(|out| out.trim() == "0")
}

fn run_output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The uid and gid of `user`, from `id`.
fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let uid = run_output(Command::new("id").args(["-u", user]))?;
    let gid = run_output(Command::new("id").args(["-g", user]))?;
    let parse = |s: String| s.trim().parse::<u32>().map_err(|e| e.to_string());
    Ok((parse(uid)?, parse(gid)?))
}

/// A fresh folder for one server; readable by the `postgres` user when it runs there.
fn server_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(work_root())
        .map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Builds `template` once with `init` (into a scratch folder renamed into place, so
/// parallel tests never see half a template).
fn ensure_template(
    template: &Path,
    init: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    if template.join("READY").exists() {
        return Ok(());
    }
    let scratch = template.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    init(&scratch)?;
    std::fs::write(scratch.join("READY"), b"").map_err(|e| e.to_string())?;
    if std::fs::rename(&scratch, template).is_err() {
        // Another test made it first.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// A template per server installation (`postgres-template-usr-lib-postgresql-15-bin`):
/// another version gets a data folder of its own making.
fn template_name(server: &str, bin: &Path) -> String {
    let path: String = bin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{server}-template{path}")
}

/// `cp -a from to`: keeps owners and modes (the data folder belongs to `postgres`).
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    run_output(Command::new("cp").arg("-a").arg(from).arg(to)).map(|_| ())
}

fn wait_for_port(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "no answer within 60 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl PostgresServer {
    /// Starts a server, or returns `None` (after printing why) when the environment is
    /// missing and `CI` is not set.
    ///
    /// # Panics
    /// When the environment is missing under `CI`, or the server does not start.
    pub fn start() -> Option<PostgresServer> {
        let bin = bin_dir("TANDEM_POSTGRES_BIN", "PostgreSQL")?;
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    fn try_start(bin: &Path) -> Result<PostgresServer, String> {
        // As root, run as `postgres`; otherwise as ourselves.
        let owner = if is_root() {
            Some(user_ids("postgres")?)
        } else {
            None
        };
        let as_owner = |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
            cmd
        };
        let template = work_root().join(template_name("postgres", bin));
        ensure_template(&template, |scratch| {
            let data = scratch.join("data");
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(scratch, Some(uid), Some(gid))
                    .map_err(|e| e.to_string())?;
            }
            run_output(
                as_owner("initdb")
                    .arg("-D")
                    .arg(&data)
                    .args(["-U", POSTGRES_USER, "--auth=trust", "--no-sync"])
                    .args(["--encoding=UTF8", "--locale=C"]),
            )
            .map(|_| ())
        })?;
        let dir = server_dir("postgres-")?;
        let data = dir.path().join("data");
        copy_tree(&template.join("data"), &data)?;
        let port = free_port();
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = as_owner("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            // A test server: durability off, small memory.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=32MB"])
            .args(["-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("postgres").display()))?;
        if let Err(e) = wait_for_port(&mut child, port, &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(PostgresServer {
            child,
            port,
            dir,
            bin: bin.to_owned(),
            databases: AtomicUsize::new(0),
        })
    }

    /// `postgres://tandem@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{POSTGRES_USER}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Creates a new empty database owned by [`POSTGRES_USER`] and returns its url:
    /// tests that need a database each can share one server (a `CREATE DATABASE`
    /// takes milliseconds, a server start about a second).
    ///
    /// # Panics
    /// When `psql` fails.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{n}");
        let started = Instant::now();
        loop {
            let created = run_output(
                Command::new(self.bin.join("psql"))
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                    .args(["-p", &self.port.to_string(), "-U", POSTGRES_USER])
                    .args(["-d", "postgres", "-c"])
                    .arg(format!("CREATE DATABASE {name}")),
            );
            match created {
                Ok(_) => break,
                // The port is open a moment before the server takes connections.
                Err(e)
                    if e.contains("starting up") && started.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot create the database {name}: {e}"),
            }
        }
        format!("postgres://{POSTGRES_USER}@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: its backends exit with it.
        stop(&mut self.child, "-INT");
    }
}

/// Stops a server with `signal` and waits for it; kills it after 20 s.
fn stop(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl MariadbServer {
    /// Starts a server, or returns `None` (after printing why) when the environment is
    /// missing and `CI` is not set.
    ///
    /// # Panics
    /// When the environment is missing under `CI`, or the server does not start.
    pub fn start() -> Option<MariadbServer> {
        let bin = bin_dir("TANDEM_MARIADB_BIN", "MariaDB")?;
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("MariaDB did not start: {last_error}");
    }

    fn try_start(bin: &Path) -> Result<MariadbServer, String> {
        let user = if is_root() {
            "root".to_owned()
        } else {
            run_output(Command::new("id").arg("-un"))?.trim().to_owned()
        };
        let template = work_root().join(template_name("mariadb", bin));
        ensure_template(&template, |scratch| {
            let install = which("mariadb-install-db", bin)?;
            run_output(
                Command::new(install)
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", scratch.join("data").display()))
                    .arg(format!("--user={user}"))
                    .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                    .arg("--skip-name-resolve"),
            )
            .map(|_| ())
        })?;
        let dir = server_dir("mariadb-")?;
        let data = dir.path().join("data");
        copy_tree(&template.join("data"), &data)?;
        let port = free_port();
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = Command::new(bin.join("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!(
                "--socket={}",
                dir.path().join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mysqld.pid").display()
            ))
            .arg(format!("--port={port}"))
            .arg(format!("--user={user}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=32M"])
            .args([
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
            ])
            .args([
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_bin",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("mariadbd").display()))?;
        if let Err(e) = wait_for_port(&mut child, port, &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let server = MariadbServer { child, port, dir };
        // The test database, made over the socket as root.
        let client = which("mariadb", bin)?;
        run_output(
            Command::new(client)
                .arg("--no-defaults")
                .arg(format!(
                    "--socket={}",
                    server.dir.path().join("mysqld.sock").display()
                ))
                .args(["-u", "root", "-e"])
                .arg(
                    "CREATE DATABASE tandem; \
                     CREATE USER 'tandem'@'127.0.0.1'; \
                     GRANT ALL ON tandem.* TO 'tandem'@'127.0.0.1'",
                ),
        )?;
        Ok(server)
    }

    /// `mysql://tandem@127.0.0.1:<port>/tandem`.
    pub fn url(&self) -> String {
        format!("mysql://tandem@127.0.0.1:{}/tandem", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for MariadbServer {
    fn drop(&mut self) {
        stop(&mut self.child, "-TERM");
    }
}

/// A MariaDB program: next to the server, or on the PATH (Debian puts the server in
/// /usr/sbin and the tools in /usr/bin).
fn which(program: &str, bin: &Path) -> Result<PathBuf, String> {
    let beside = bin.join(program);
    if beside.exists() {
        return Ok(beside);
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "{program} not found beside {} or in /usr/bin",
        bin.display()
    ))
}
