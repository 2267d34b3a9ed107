//! The deployment files in `deploy/`: the systemd unit verifies, `tandem run` speaks
//! systemd's notify protocol, and the config the container ships loads.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::service::Service;
use crate::support::{Deployment, repo_root, stderr, stdout};

/// `systemd-analyze`, which must be there under CI (the machine's systemd package).
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "systemd-analyze is missing (Debian package `systemd`)"
    );
    found.then_some("systemd-analyze")
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let unit = std::fs::read_to_string(repo_root().join("deploy/tandem.service")).unwrap();
    // The binary the unit names must exist; here it is the one under test.
    let unit = unit.replace("/usr/local/bin/tandem", env!("CARGO_BIN_EXE_tandem"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "systemd-analyze verify:\n{text}");
    // Warnings about the unit itself (unknown keys, bad values) name the file.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tandem.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{text}");
}

/// Waits for a datagram on `socket`; its text. Fails at once with the service's log
/// when it exits first.
fn receive(socket: &UnixDatagram, service: &mut Service, timeout: Duration) -> String {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if started.elapsed() > timeout => panic!("no notify message in time: {e}"),
            Err(_) => service.assert_running(),
        }
    }
}

/// `Type=notify`: READY=1 once serving, a status line after the first sync,
/// STOPPING=1 on SIGTERM, then exit 0.
#[test]
fn tandem_run_speaks_the_systemd_notify_protocol() {
    let d = Deployment::new();
    d.write(
        "crm/contacts.csv",
        "id,contact_type,name,vat_registration_no\nC1,company,Acme NV,BE0111\n",
    );
    d.write(
        "erp/customers.csv",
        "id,name,vat_registration_no\nK1,Acme NV,BE0111\n",
    );
    let socket_path = d.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut service = Service::start(&d, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let started = Instant::now();
    assert_eq!(
        receive(&socket, &mut service, Duration::from_secs(60)).trim(),
        "READY=1"
    );
    let status = receive(&socket, &mut service, Duration::from_secs(60));
    assert!(
        status.starts_with("STATUS=last run: CUST 1 linked"),
        "{status}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    service.signal("TERM");
    assert_eq!(
        receive(&socket, &mut service, Duration::from_secs(30)).trim(),
        "STOPPING=1"
    );
    let exit = service.wait(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        service.log()
    );
}

/// The config `deploy/Containerfile` ships loads with its variables set, and refuses
/// to listen on every address without the token.
#[test]
fn the_shipped_config_loads_and_wants_the_token() {
    let config = std::fs::read_to_string(repo_root().join("deploy/tandem.toml")).unwrap();
    let d = Deployment::with_config(&config);
    let state = format!("sqlite://{}", d.path("state.db").display());
    let mut env = vec![
        ("TANDEM__STATE__URL", state.as_str()),
        ("CARDDAV_URL", "http://127.0.0.1:9/dav/sales/contacts/"),
        ("CARDDAV_USER", "sales"),
        ("CARDDAV_PASSWORD", "card-secret"),
        ("TRYTON_URL", "http://127.0.0.1:9/"),
        ("TRYTON_DATABASE", "erp"),
        ("TRYTON_USER", "tandem"),
        ("TRYTON_PASSWORD", "tryton-secret"),
        ("TANDEM_LISTEN", "0.0.0.0:9465"),
        ("TANDEM__CONNECTORS__BOOK__RETRY__ATTEMPTS", "1"),
        ("TANDEM__CONNECTORS__ERP__RETRY__ATTEMPTS", "1"),
    ];
    let out = d.tandem_env(&["--json", "check"], &env);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("TANDEM_SERVICE_TOKEN"),
        "the token is asked for:\n{text}"
    );

    env.push(("TANDEM_SERVICE_TOKEN", "0123456789abcdef0123456789abcdef"));
    let out = d.tandem_env(&["--json", "check"], &env);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(
        names.contains(&"book") && names.contains(&"erp"),
        "{report}"
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for secret in [
        "card-secret",
        "tryton-secret",
        "0123456789abcdef0123456789abcdef",
    ] {
        assert!(!text.contains(secret), "no secret in the output:\n{text}");
    }
}
