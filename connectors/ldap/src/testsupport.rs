//! A real OpenLDAP `slapd` per test (cargo feature `testsupport`).
//!
//! `scripts/ldap-env` installs Debian's `slapd` and `ldap-utils` and exports
//! `TANDEM_SLAPD`, `TANDEM_SLAPD_MODULES` and `TANDEM_SLAPD_SCHEMA`; `scripts/test` runs
//! it first. [`Slapd::start`] writes a `slapd.conf` (mdb backend without fsync, the syncprov overlay
//! with a session log unless asked not to, the suffix [`SUFFIX`], the bind user
//! [`BIND_DN`] with write access) into a folder of its own under `target/ldap-tests/`,
//! loads the suffix, [`BASE_DN`] and the bind user with `slapadd`, and starts `slapd`
//! on a free loopback port (and LDAPS on a second one with a certificate from a CA made
//! for the test, see [`Options::tls`]). Dropping the server kills the process and
//! removes the folder.
//!
//! Without the environment, tests are skipped with a message when run locally, and fail
//! when `CI` is set: a CI run must never pass by skipping.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_connector::http::testing::{TestCa, TlsFiles};

pub const SUFFIX: &str = "dc=example,dc=org";
pub const BASE_DN: &str = "ou=contacts,dc=example,dc=org";
pub const BIND_DN: &str = "cn=tandem,dc=example,dc=org";
pub const BIND_PASSWORD: &str = "tandem-ldap-pw";
/// The directory manager, for changes made behind the connector's back.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "tandem-ldap-admin";

/// How the server is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The syncprov overlay (RFC 4533 content synchronisation) on the database.
    pub syncprov: bool,
    /// TLS: StartTLS on the plain port and LDAPS on [`Slapd::ldaps_port`].
    pub tls: bool,
    /// The most entries one search may return to the bind user; `None`: no limit.
    pub size_limit: Option<u32>,
    /// syncprov's session log, which lets it send deletes since a cookie; without it
    /// the server answers a refresh with its present phase.
    pub session_log: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            syncprov: true,
            tls: false,
            size_limit: None,
            session_log: true,
        }
    }
}

/// A running slapd.
#[derive(Debug)]
pub struct Slapd {
    child: Child,
    pub port: u16,
    pub ldaps_port: Option<u16>,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
}

struct Env {
    slapd: PathBuf,
    modules: PathBuf,
    schema: PathBuf,
}

fn env() -> Option<Env> {
    let get = |name: &str| std::env::var_os(name).map(PathBuf::from);
    match (
        get("TANDEM_SLAPD"),
        get("TANDEM_SLAPD_MODULES"),
        get("TANDEM_SLAPD_SCHEMA"),
    ) {
        (Some(slapd), Some(modules), Some(schema)) => Some(Env {
            slapd,
            modules,
            schema,
        }),
        _ => None,
    }
}

/// `target/` of the running test binary (`target/debug/deps/<test>`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Slapd {
    /// With syncprov, without TLS.
    pub fn start() -> Option<Slapd> {
        Self::start_with(Options::default())
    }

    /// Starts a server, or returns `None` (after printing why) when the environment is
    /// missing and `CI` is not set.
    ///
    /// # Panics
    /// When the environment is missing under `CI`, or the server does not start.
    pub fn start_with(options: Options) -> Option<Slapd> {
        let Some(env) = env() else {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            let message = "TANDEM_SLAPD is not set: run `eval \"$(bash scripts/ldap-env)\"` first (scripts/test does)";
            if ci {
                panic!("{message}; CI must not skip the LDAP tests");
            }
            eprintln!("skipping an LDAP test: {message}");
            return None;
        };
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&env, options) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("slapd did not start: {last_error}");
    }

    fn try_start(env: &Env, options: Options) -> Result<Slapd, String> {
        let parent = target_dir().join("ldap-tests");
        std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
        let dir = tempfile::Builder::new()
            .prefix("slapd-")
            .tempdir_in(&parent)
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let tls = match options.tls {
            true => Some(
                TestCa::new("Tandem LDAP test CA")
                    .write_files(dir.path())
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        let schema = |name: &str| {
            env.schema
                .join(format!("{name}.schema"))
                .display()
                .to_string()
        };
        let mut conf = format!(
            "include {}\ninclude {}\ninclude {}\n\
             pidfile {}\nargsfile {}\nmodulepath {}\nmoduleload back_mdb\n",
            schema("core"),
            schema("cosine"),
            schema("inetorgperson"),
            dir.path().join("slapd.pid").display(),
            dir.path().join("slapd.args").display(),
            env.modules.display(),
        );
        if options.syncprov {
            conf.push_str("moduleload syncprov\n");
        }
        if let Some(files) = &tls {
            conf.push_str(&format!(
                "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            ));
        }
        conf.push_str(&format!(
            "database mdb\nmaxsize 1073741824\ndbnosync\nsuffix \"{SUFFIX}\"\nrootdn \"{ADMIN_DN}\"\n\
             rootpw {ADMIN_PASSWORD}\ndirectory {}\n\
             index objectClass,entryUUID,entryCSN eq\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to * by dn.exact=\"{BIND_DN}\" write by * none\n\
             limits dn.exact=\"{BIND_DN}\" size={} time=unlimited\n",
            data.display(),
            options
                .size_limit
                .map_or("unlimited".to_owned(), |n| n.to_string())
        ));
        if options.syncprov {
            conf.push_str("overlay syncprov\nsyncprov-checkpoint 100 10\n");
            if options.session_log {
                conf.push_str("syncprov-sessionlog 100000\n");
            }
        }
        let conf_path = dir.path().join("slapd.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let init = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: {BASE_DN}\nobjectClass: organizationalUnit\nou: contacts\n\n\
             dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: tandem\nuserPassword: {BIND_PASSWORD}\n"
        );
        let ldif = dir.path().join("init.ldif");
        std::fs::write(&ldif, init).map_err(|e| e.to_string())?;
        let slapadd = env.slapd.with_file_name("slapadd");
        let out = Command::new(&slapadd)
            .arg("-f")
            .arg(&conf_path)
            .arg("-l")
            .arg(&ldif)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", slapadd.display()))?;
        if !out.status.success() {
            return Err(format!(
                "slapadd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port()?;
        let ldaps_port = match tls {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let mut urls = format!("ldap://127.0.0.1:{port}/");
        if let Some(p) = ldaps_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let log = std::fs::File::create(dir.path().join("slapd.log")).map_err(|e| e.to_string())?;
        // `-d 0` keeps slapd in the foreground, a child that Drop can stop.
        let child = Command::new(&env.slapd)
            .arg("-f")
            .arg(&conf_path)
            .args(["-h", &urls, "-d", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", env.slapd.display()))?;
        let mut server = Slapd {
            child,
            port,
            ldaps_port,
            dir,
            tls,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}: {}", server.log()));
            }
            let up = TcpStream::connect(("127.0.0.1", port)).is_ok()
                && ldaps_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
            if up {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!("no answer within 20 s: {}", server.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}/", self.port)
    }

    pub fn ldaps_url(&self) -> Option<String> {
        self.ldaps_port.map(|p| format!("ldaps://127.0.0.1:{p}/"))
    }

    /// The CA certificate the server's certificate comes from (with TLS).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|f| f.ca.as_path())
    }

    /// The settings of a `type = "ldap"` connector on [`BASE_DN`] as [`BIND_DN`].
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url(),
            "base_dn": BASE_DN,
            "bind_dn": BIND_DN,
            "password": BIND_PASSWORD,
        })
    }

    /// A connection bound as the directory manager, for changes behind the
    /// connector's back.
    pub async fn admin(&self) -> ldap3::Ldap {
        let (conn, mut ldap) = ldap3::LdapConnAsync::new(&self.url())
            .await
            .expect("slapd answers");
        ldap3::drive!(conn);
        ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD)
            .await
            .expect("bind")
            .success()
            .expect("the manager binds");
        ldap
    }

    /// Loads an LDIF file of entries into the running server, as the directory manager,
    /// with `ldapadd` (a benchmark's fast path).
    pub fn ldapadd(&self, ldif: &Path) -> Result<(), String> {
        let out = Command::new("ldapadd")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
                "-f",
            ])
            .arg(ldif)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ldapadd: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The folder the server keeps its files in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
