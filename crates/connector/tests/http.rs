//! The shared HTTP layer against loopback servers: retries and `Retry-After`, what is
//! never sent twice, bounds, rate limits, timeouts, TLS with a private CA, and server
//! text that never shows a secret.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tandem_connector::ConnectorError;
use tandem_connector::http::testing::{Echo, EchoServer, Fault, FaultProxy, TestCa};
use tandem_connector::http::{
    Auth, HttpClient, HttpError, HttpSettings, Method, Request, RetrySettings, SecretString,
};

fn settings() -> HttpSettings {
    let mut s = HttpSettings::with_timeouts(Duration::from_secs(5), Duration::from_secs(10));
    s.retry = RetrySettings {
        attempts: 5,
        max_elapsed: Duration::from_secs(20),
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    };
    s
}

fn client(settings: HttpSettings) -> HttpClient {
    HttpClient::new("Test", settings, Auth::None).unwrap()
}

/// A proxy with faults in front of a server that answers 200.
fn upstream() -> (EchoServer, FaultProxy) {
    let echo = EchoServer::start(Echo::Status(200));
    let proxy = FaultProxy::start(echo.port());
    (echo, proxy)
}

fn status(status: u16, retry_after: Option<&str>) -> Fault {
    Fault::Status {
        status,
        retry_after: retry_after.map(str::to_owned),
    }
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured() {
    let (_echo, proxy) = upstream();
    proxy.inject("GET", status(429, Some("1")), 1);
    let started = Instant::now();
    let reply = client(settings())
        .send(&Request::new(Method::GET, proxy.url()))
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.requests(), 2);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let (_echo, proxy) = upstream();
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    proxy.inject("GET", status(503, Some(&at)), 1);
    let started = Instant::now();
    client(settings())
        .send(&Request::new(Method::GET, proxy.url()))
        .await
        .unwrap();
    // The date has whole seconds: between one and two seconds from now.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.requests(), 2);
}

#[tokio::test]
async fn faults_are_retried_for_requests_that_may_be_sent_twice() {
    let (_echo, proxy) = upstream();
    proxy.inject("PUT", status(503, None), 1);
    proxy.inject("PUT", status(502, None), 1);
    proxy.inject("PUT", Fault::DropBeforeForward, 1);
    proxy.inject("PUT", Fault::DropAfterForward, 1);
    let reply = client(settings())
        .send(&Request::new(Method::PUT, proxy.url()).body("card"))
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(proxy.requests(), 5);
    // The dropped reply came after the server acted: the caller is told.
    assert!(reply.repeated);
}

#[tokio::test]
async fn a_post_is_sent_again_only_when_the_server_certainly_did_not_act() {
    let (_echo, proxy) = upstream();
    let c = client(settings());
    proxy.inject("POST", status(429, Some("0")), 1);
    proxy.inject("POST", status(503, None), 1);
    let reply = c
        .send(&Request::new(Method::POST, proxy.url()).body("create"))
        .await
        .unwrap();
    assert!(!reply.repeated);
    assert_eq!(proxy.requests(), 3);
    for fault in [
        Fault::DropAfterForward,
        status(500, None),
        status(504, None),
    ] {
        let before = proxy.requests();
        proxy.inject("POST", fault.clone(), 1);
        let e = c
            .send(&Request::new(Method::POST, proxy.url()).body("create"))
            .await
            .unwrap_err();
        assert!(e.maybe_acted(), "{fault:?}: {e}");
        assert_eq!(proxy.requests(), before + 1, "{fault:?} was sent again");
        assert!(matches!(
            e.into_connector(),
            ConnectorError::Transient { .. }
        ));
    }
}

#[tokio::test]
async fn attempts_and_max_elapsed_bound_the_retries() {
    let (_echo, proxy) = upstream();
    let mut s = settings();
    s.retry.attempts = 3;
    proxy.inject("GET", status(503, None), 100);
    let e = client(s.clone())
        .send(&Request::new(Method::GET, proxy.url()))
        .await
        .unwrap_err();
    assert_eq!(proxy.requests(), 3);
    assert!(
        e.to_string().contains("HTTP 503") && e.to_string().contains("after 3 tries"),
        "{e}"
    );

    // A wait past max_elapsed is not made: rate limited, with the server's wait.
    let (_echo, proxy) = upstream();
    s.retry.max_elapsed = Duration::from_secs(2);
    proxy.inject("GET", status(429, Some("30")), 1);
    let started = Instant::now();
    let e = client(s)
        .send(&Request::new(Method::GET, proxy.url()))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(proxy.requests(), 1);
    assert_eq!(
        e.into_connector(),
        ConnectorError::rate_limited(Some(Duration::from_secs(30)))
    );
}

#[tokio::test]
async fn a_server_that_is_down_costs_one_retry_budget() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(settings());
    let url = format!("http://127.0.0.1:{port}/");
    let e = c.send(&Request::new(Method::GET, &url)).await.unwrap_err();
    assert!(matches!(e, HttpError::Connect { attempts: 5, .. }), "{e}");
    assert!(e.to_string().contains("check `url`"), "{e}");
    let e = c.send(&Request::new(Method::GET, &url)).await.unwrap_err();
    assert!(matches!(e, HttpError::Connect { attempts: 1, .. }), "{e}");
}

#[tokio::test]
async fn a_slow_reply_is_a_timeout() {
    let (_echo, proxy) = upstream();
    let mut s = settings();
    s.timeout = Duration::from_millis(300);
    s.retry.attempts = 2;
    proxy.inject("GET", Fault::Delay(Duration::from_secs(1)), 2);
    let e = client(s)
        .send(&Request::new(Method::GET, proxy.url()))
        .await
        .unwrap_err();
    assert!(matches!(e, HttpError::Timeout { attempts: 2, .. }), "{e}");
    assert!(e.to_string().contains("`timeout`"), "{e}");
}

#[tokio::test]
async fn the_rate_limit_spaces_requests() {
    let (_echo, proxy) = upstream();
    let mut s = settings();
    s.max_requests_per_second = Some(5.0);
    let c = client(s);
    let started = Instant::now();
    for _ in 0..10 {
        c.send(&Request::new(Method::GET, proxy.url()))
            .await
            .unwrap();
    }
    // Five at once (the burst), then five more at 200 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_echoing_server_shows_no_credentials() {
    let echo = EchoServer::start(Echo::Status(500));
    let password = SecretString::from("s3cret-pass-word");
    let auth = Auth::Basic {
        user: "sales".into(),
        password: Some(password),
    };
    let c = HttpClient::new("Test", settings(), auth).unwrap();
    let e = c
        .send(&Request::new(Method::POST, echo.url()).body("{\"password\":\"s3cret-pass-word\"}"))
        .await
        .unwrap_err();
    let text = format!("{e} {e:?} {c:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!text.contains("c2FsZXM6czNjcmV0"), "{text}");
}

/// A TLS server (rustls) that answers every request with 200 and `ok`.
fn tls_server(cert_pem: &str, key_pem: &str) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    tandem_connector::http::install_crypto_provider();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut reader = BufReader::new(&mut tls);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

#[tokio::test]
async fn https_trusts_the_ca_file_and_names_it_when_the_certificate_is_not_trusted() {
    let dir = std::env::temp_dir().join(format!("tandem-http-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("Tandem test CA");
    let files = ca.write_files(&dir).unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
    let url = format!("https://127.0.0.1:{}/", tls_server(&cert, &key));

    let mut with_ca = settings();
    with_ca.ca_file = Some(files.ca.clone());
    let reply = client(with_ca)
        .send(&Request::new(Method::GET, &url))
        .await
        .unwrap();
    assert_eq!(reply.text(), "ok");

    // System roots only: the private CA is unknown, and the message says what to set.
    let e = client(settings())
        .send(&Request::new(Method::GET, &url))
        .await
        .unwrap_err();
    assert!(matches!(e, HttpError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("set `ca_file`"), "{e}");
    assert!(matches!(e.into_connector(), ConnectorError::Config { .. }));

    // Another CA in `ca_file`: named with its path.
    let other = dir.join("other.pem");
    std::fs::write(&other, TestCa::new("Another CA").pem()).unwrap();
    let mut wrong = settings();
    wrong.ca_file = Some(other.clone());
    let e = client(wrong)
        .send(&Request::new(Method::GET, &url))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&other.display().to_string()), "{e}");

    // A certificate for another host.
    let (cert, key) = ca.issue(&["erp.example.com"]);
    let url = format!("https://127.0.0.1:{}/", tls_server(&cert, &key));
    let mut with_ca = settings();
    with_ca.ca_file = Some(files.ca.clone());
    let e = client(with_ca)
        .send(&Request::new(Method::GET, &url))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not valid for the host in `url`"),
        "{e}"
    );

    // https:// to a plain HTTP server.
    let echo = EchoServer::start(Echo::Status(200));
    let url = echo.url().replace("http://", "https://");
    let e = client(settings())
        .send(&Request::new(Method::GET, &url))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("plain http://"), "{e}");

    // A missing or empty `ca_file` is a configuration error naming it.
    for path in [dir.join("missing.pem"), dir.join("server.key")] {
        let mut s = settings();
        s.ca_file = Some(path);
        let e = HttpClient::new("Test", s, Auth::None).unwrap_err();
        assert!(e.to_string().contains("`ca_file`"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that wants HTTP Digest (SHA-256, qop=auth) for user `sales`: it checks each
/// answer against `password` and the nonce it issued last, and records the
/// `Authorization` of every request.
struct DigestServer {
    port: u16,
    nonce: Arc<std::sync::Mutex<String>>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl DigestServer {
    fn start(password: &'static str) -> DigestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let nonce = Arc::new(std::sync::Mutex::new("nonce-1".to_owned()));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (n, s) = (nonce.clone(), seen.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut request_line, mut auth, mut line) =
                    (String::new(), String::new(), String::new());
                let mut length = 0;
                reader.read_line(&mut request_line).unwrap();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.strip_prefix("authorization: ") {
                        auth = v.trim().to_owned();
                    }
                    if let Some(v) = line.strip_prefix("content-length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    line.clear();
                }
                // Read whole, so that closing the connection resets nothing.
                std::io::Read::read_exact(&mut reader, &mut vec![0; length]).unwrap();
                s.lock().unwrap().push(auth.clone());
                let current = n.lock().unwrap().clone();
                let reply = match digest_check(&request_line, &auth, &current, password) {
                    Ok(()) => "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                        .to_owned(),
                    Err(stale) => format!(
                        "HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nWWW-Authenticate: Basic realm=\"tandem-test\"\r\n\
                         WWW-Authenticate: Digest realm=\"tandem-test\", qop=\"auth\", algorithm=SHA-256, \
                         nonce=\"{current}\", opaque=\"opaque-1\"{}\r\nContent-Length: 0\r\n\r\n",
                        if stale { ", stale=true" } else { "" }
                    ),
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        DigestServer { port, nonce, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/book/a%20b.vcf?x=1", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn sha256(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `Ok` for a right answer; `Err(stale)` otherwise (`stale`: right but an old nonce).
fn digest_check(request_line: &str, auth: &str, nonce: &str, password: &str) -> Result<(), bool> {
    let Some(params) = auth.strip_prefix("Digest ") else {
        return Err(false);
    };
    let get = |name: &str| {
        params.split(", ").find_map(|p| {
            p.strip_prefix(&format!("{name}="))
                .map(|v| v.trim_matches('"').to_owned())
        })
    };
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
    let (Some(uri), Some(nc), Some(cnonce), Some(sent_nonce), Some(response)) = (
        get("uri"),
        get("nc"),
        get("cnonce"),
        get("nonce"),
        get("response"),
    ) else {
        return Err(false);
    };
    if uri != target || get("username").as_deref() != Some("sales") {
        return Err(false);
    }
    let ha1 = sha256(&format!("sales:tandem-test:{password}"));
    let ha2 = sha256(&format!("{method}:{uri}"));
    let want = sha256(&format!("{ha1}:{sent_nonce}:{nc}:{cnonce}:auth:{ha2}"));
    match (response == want, sent_nonce == nonce) {
        (true, true) => Ok(()),
        (true, false) => Err(true),
        (false, _) => Err(false),
    }
}

fn password_client(password: &str) -> HttpClient {
    let auth = Auth::Basic {
        user: "sales".into(),
        password: Some(SecretString::from(password.to_owned())),
    };
    HttpClient::new("Test", settings(), auth).unwrap()
}

#[tokio::test]
async fn a_digest_challenge_is_answered_and_later_requests_send_no_password() {
    let server = DigestServer::start("digest pw");
    let c = password_client("digest pw");
    for method in [
        Method::GET,
        Method::PUT,
        Method::from_bytes(b"REPORT").unwrap(),
    ] {
        let reply = c
            .send(&Request::new(method, server.url()).body("x"))
            .await
            .unwrap();
        assert_eq!(reply.status.as_u16(), 200);
    }
    assert!(c.uses_digest());
    let seen = server.seen();
    // Basic once, answered by a challenge; Digest from then on, the count rising.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].starts_with("Basic "), "{seen:?}");
    for (i, auth) in seen[1..].iter().enumerate() {
        assert!(auth.starts_with("Digest username=\"sales\""), "{auth}");
        assert!(auth.contains("algorithm=SHA-256"), "{auth}");
        assert!(auth.contains(&format!("nc={:08x}", i + 1)), "{auth}");
        assert!(auth.contains("uri=\"/book/a%20b.vcf?x=1\""), "{auth}");
        assert!(!auth.contains("digest pw"), "{auth}");
    }
}

#[tokio::test]
async fn a_stale_nonce_is_replaced_and_a_wrong_password_is_a_401_not_a_loop() {
    let server = DigestServer::start("digest pw");
    let c = password_client("digest pw");
    c.send(&Request::new(Method::GET, server.url()))
        .await
        .unwrap();
    *server.nonce.lock().unwrap() = "nonce-2".into();
    let reply = c
        .send(&Request::new(Method::GET, server.url()))
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[3].contains("nonce=\"nonce-2\""), "{seen:?}");

    let wrong = password_client("not the pw");
    let reply = wrong
        .send(&Request::new(Method::GET, server.url()))
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 401);
    // Basic, then one Digest answer: no third try.
    assert_eq!(server.seen().len(), 6);
    // A bearer token or no credentials never answer a challenge.
    let anonymous = client(settings());
    let reply = anonymous
        .send(&Request::new(Method::GET, server.url()))
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 401);
    assert_eq!(server.seen().len(), 7);
    assert!(!anonymous.uses_digest());
}
