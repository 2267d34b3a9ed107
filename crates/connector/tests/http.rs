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
