//! The CardDAV connector on the real network's terms: HTTPS with a private CA, basic
//! and bearer auth with errors that say what to check, writes whose replies are lost,
//! rate limits and failing servers, concurrent writes, and servers that echo secrets.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tandem_connector::http::testing::{Echo, EchoServer, Fault, FaultProxy, Logs};
use tandem_connector::{Connector, ConnectorError, Listing, WriteOp};
use tandem_connector_carddav::CarddavConnector;
use tandem_connector_carddav::testsupport::{CardServer, PASSWORD, USER};
use tandem_model::{EntityKind, Fields, Value, field};

/// Fast retries: the tests wait for the faults they inject, not for the defaults.
fn quick(mut settings: Json) -> Json {
    settings["retry"] = json!({"attempts": 4, "min_delay": "20ms", "max_delay": "100ms"});
    settings
}

fn connector(settings: Json) -> CarddavConnector {
    CarddavConnector::from_settings(quick(settings)).unwrap()
}

async fn create(c: &CarddavConnector, name: &str) -> Result<(String, String), ConnectorError> {
    let fields = Fields::new().with(field::NAME, name);
    let w = c
        .write(EntityKind::Contact, vec![WriteOp::create(fields)])
        .await?
        .remove(0)?;
    Ok((w.id, w.version.unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_without_the_ca_file_names_the_connector_and_ca_file() {
    let Some(server) = CardServer::radicale_tls() else {
        return;
    };
    let book = server.new_book("tls").await;
    let mut settings = server.settings(&book);
    let trusted = connector(settings.clone());
    trusted.check().await.unwrap();
    create(&trusted, "Over TLS").await.unwrap();
    let page = trusted.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(page.records.len(), 1);

    settings.as_object_mut().unwrap().remove("ca_file");
    let untrusted = connector(settings);
    for e in [
        untrusted.check().await.unwrap_err(),
        untrusted.read(EntityKind::Contact, None).await.unwrap_err(),
    ] {
        assert!(matches!(e, ConnectorError::Config { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("CardDAV") && text.contains("set `ca_file`"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_names_username_and_password() {
    let Some(server) = CardServer::radicale() else {
        return;
    };
    let book = server.new_book("auth").await;
    let mut settings = server.settings(&book);
    settings["password"] = json!("not-the-password");
    let e = connector(settings).check().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("check `username` and `password`"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_is_sent_and_a_refused_one_names_token() {
    let echo = EchoServer::start(Echo::Status(401));
    let settings = json!({"url": format!("{}u/book/", echo.url()), "token": "tok-6789"});
    let e = connector(settings).check().await.unwrap_err();
    assert!(e.to_string().contains("check `token`"), "{e}");
    assert!(!e.to_string().contains("tok-6789"), "{e}");
    let head = echo.received()[0].head.to_ascii_lowercase();
    assert!(head.contains("authorization: bearer tok-6789"), "{head}");

    let anonymous = connector(json!({"url": format!("{}u/book/", echo.url())}));
    let e = anonymous.check().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("set `username` and `password`, or `token`"),
        "{e}"
    );
}

/// A proxy in front of Radicale and a connector that goes through it.
async fn behind_a_proxy(server: &CardServer, book: &str) -> (FaultProxy, CarddavConnector) {
    let proxy = FaultProxy::start(server.port);
    let settings = server.settings(&book.replace(&server.base(), &proxy.url()));
    (proxy, connector(settings))
}

fn count(proxy: &FaultProxy, method: &str) -> usize {
    proxy
        .request_lines()
        .iter()
        .filter(|l| l.starts_with(method))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_whose_replies_were_lost_make_no_second_card_and_no_false_conflict() {
    let Some(server) = CardServer::radicale() else {
        return;
    };
    let book = server.new_book("lost").await;
    let (proxy, c) = behind_a_proxy(&server, &book).await;

    proxy.inject("PUT ", Fault::DropAfterForward, 1);
    let (id, version) = create(&c, "Acme").await.unwrap();
    assert_eq!(count(&proxy, "PUT "), 2, "the create was tried again");
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!((page.listing, page.records.len()), (Listing::Full, 1));
    assert_eq!(page.records[0].version.as_deref(), Some(version.as_str()));

    proxy.inject("PUT ", Fault::DropAfterForward, 1);
    let update = WriteOp::Update {
        id: id.clone(),
        version: Some(version),
        changes: [(field::CITY.into(), Value::text("Gent"))]
            .into_iter()
            .collect(),
    };
    let w = c
        .write(EntityKind::Contact, vec![update])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(page.records[0].fields.text(field::CITY), Some("Gent"));
    assert_eq!(page.records[0].version, w.version);

    proxy.inject("DELETE ", Fault::DropAfterForward, 1);
    let delete = WriteOp::Delete {
        id,
        version: w.version,
    };
    c.write(EntityKind::Contact, vec![delete])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert!(page.records.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_failing_servers_are_waited_out() {
    let Some(server) = CardServer::radicale() else {
        return;
    };
    let book = server.new_book("faults").await;
    let (proxy, c) = behind_a_proxy(&server, &book).await;
    create(&c, "Acme").await.unwrap();
    proxy.inject(
        "REPORT",
        Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
        },
        1,
    );
    proxy.inject(
        "REPORT",
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        1,
    );
    proxy.inject("REPORT", Fault::DropBeforeForward, 1);
    let started = Instant::now();
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );

    // Still failing after every try: an error for that write only (R17), typed.
    proxy.inject(
        "PUT ",
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        100,
    );
    let e = create(&c, "Never").await.unwrap_err();
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e}");
    assert!(e.to_string().contains("after 4 tries"), "{e}");
}

/// Eight writes at once by default: sixteen creates whose replies each take a second
/// take two rounds, not sixteen (nor four, at the old bound of four).
#[tokio::test(flavor = "multi_thread")]
async fn eight_writes_run_at_once_by_default() {
    let Some(server) = CardServer::radicale() else {
        return;
    };
    let book = server.new_book("concurrent").await;
    let (proxy, c) = behind_a_proxy(&server, &book).await;
    proxy.inject("PUT ", Fault::Delay(Duration::from_secs(1)), 16);
    let ops = (0..16)
        .map(|i| WriteOp::create(Fields::new().with(field::NAME, format!("Card {i}"))))
        .collect();
    let started = Instant::now();
    let out = c.write(EntityKind::Contact, ops).await.unwrap();
    let took = started.elapsed();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_millis(3900), "{took:?}");
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(page.records.len(), 16);
}

/// `max_concurrent_writes` bounds the writes in flight: at 2, four slow creates take
/// two rounds.
#[tokio::test(flavor = "multi_thread")]
async fn writes_run_concurrently_up_to_the_bound() {
    let Some(server) = CardServer::radicale() else {
        return;
    };
    let book = server.new_book("bounded").await;
    let proxy = FaultProxy::start(server.port);
    let mut settings = server.settings(&book.replace(&server.base(), &proxy.url()));
    settings["max_concurrent_writes"] = json!(2);
    let c = connector(settings);
    proxy.inject("PUT ", Fault::Delay(Duration::from_millis(700)), 4);
    let ops = (0..4)
        .map(|i| WriteOp::create(Fields::new().with(field::NAME, format!("Card {i}"))))
        .collect();
    let started = Instant::now();
    let out = c.write(EntityKind::Contact, ops).await.unwrap();
    let took = started.elapsed();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_millis(2700), "{took:?}");
}

/// Every operation against a server that echoes every request back, under every
/// status: no error, no debug output and no log line holds a credential.
#[tokio::test]
async fn an_echoing_server_never_shows_a_secret() {
    let logs = Logs::capture();
    let echo = EchoServer::start(Echo::Status(500));
    let url = format!("{}{USER}/book/", echo.url());
    let basic = connector(json!({"url": url, "username": USER, "password": PASSWORD}));
    let bearer = connector(json!({"url": url, "token": "tok-secret-42"}));
    let mut seen = String::new();
    for status in [500, 400, 401, 403, 404, 409, 412, 200, 207] {
        echo.set(Echo::Status(status));
        for c in [&basic, &bearer] {
            seen.push_str(&every_operation(c).await);
        }
    }
    seen.push_str(&logs.text());
    assert!(
        seen.contains("HTTP 500"),
        "the operations failed as expected:\n{seen}"
    );
    let encoded = "dGFuZGVtOnRhbmRlbS10ZXN0LXB3"; // base64 of "tandem:tandem-test-pw"
    for secret in [PASSWORD, "tok-secret-42", encoded] {
        assert!(!seen.contains(secret), "`{secret}` shows in:\n{seen}");
    }
}

/// The text of every error (and its debug form) of every kind of call.
async fn every_operation(c: &CarddavConnector) -> String {
    let mut out = format!("{c:?}\n");
    let mut note = |r: Result<String, ConnectorError>| match r {
        Ok(s) => out.push_str(&s),
        Err(e) => out.push_str(&format!("{e}\n{e:?}\n")),
    };
    note(c.check().await.map(|()| String::new()));
    note(
        c.read(EntityKind::Contact, None)
            .await
            .map(|p| format!("{p:?}")),
    );
    note(
        c.read_ids(EntityKind::Contact, &["a.vcf"])
            .await
            .map(|r| format!("{r:?}")),
    );
    let ops = vec![
        WriteOp::create(Fields::new().with(field::NAME, "Echo")),
        WriteOp::Update {
            id: "a.vcf".into(),
            version: None,
            changes: [(field::CITY.into(), Value::text("Gent"))]
                .into_iter()
                .collect(),
        },
        WriteOp::Delete {
            id: "b.vcf".into(),
            version: Some("\"v1\"".into()),
        },
    ];
    note(
        c.write(EntityKind::Contact, ops)
            .await
            .map(|o| format!("{o:?}\n")),
    );
    note(Ok(format!("{:?}", c.skipped())));
    out
}

/// SabreDAV wants HTTP Digest: the connector answers the challenge (the conformance
/// kit runs on it), and a wrong password is an auth error that names the settings,
/// says Digest, and shows no password.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_on_a_digest_server_names_username_and_password() {
    let Some(server) = CardServer::sabredav() else {
        return;
    };
    let book = server.new_book("digest").await;
    let right = connector(server.settings(&book));
    right.check().await.unwrap();
    create(&right, "Digest").await.unwrap();
    let mut settings = server.settings(&book);
    settings["password"] = json!("not-the-password");
    let wrong = connector(settings);
    for e in [
        wrong.check().await.unwrap_err(),
        wrong.read(EntityKind::Contact, None).await.unwrap_err(),
    ] {
        assert!(matches!(e, ConnectorError::Auth { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("check `username` and `password`"), "{text}");
        assert!(text.contains("Digest"), "{text}");
        assert!(!text.contains("not-the-password"), "{text}");
    }
}
