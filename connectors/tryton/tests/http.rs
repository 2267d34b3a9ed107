//! The Tryton connector on the real network's terms: HTTPS with a private CA, calls
//! whose replies are lost (a create is never made twice), rate limits and refusals
//! waited out, and a server that echoes the login back.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tandem_connector::http::testing::{Echo, EchoServer, Fault, FaultProxy, Logs};
use tandem_connector::{BuildContext, Connector, ConnectorError, WriteOp};
use tandem_connector_tryton::testsupport::TrytonServer;
use tandem_connector_tryton::{Client, Settings, TrytonConnector};
use tandem_model::{EntityKind, Fields, field};

fn connector(mut settings: Json) -> TrytonConnector {
    settings["retry"] = json!({"attempts": 4, "min_delay": "20ms", "max_delay": "100ms"});
    let context = BuildContext {
        base_dir: std::env::temp_dir(),
    };
    TrytonConnector::new(Settings::parse(settings, &context).unwrap()).unwrap()
}

fn customer(name: &str) -> WriteOp {
    WriteOp::create(
        Fields::new()
            .with(field::NAME, name)
            .with(field::CITY, "Gent"),
    )
}

/// The parties named `name`, asked of Tryton directly.
async fn parties_named(server: &TrytonServer, name: &str) -> usize {
    let mut http = tandem_connector_tryton::rpc::default_http();
    http.ca_file = server.ca_file().map(ToOwned::to_owned);
    let settings = server.settings();
    let password = settings["password"].as_str().unwrap().to_owned();
    let rpc = Client::with_http(&server.url(), "tandem", "admin", password.into(), http).unwrap();
    let ids = rpc
        .model("party.party", "search", vec![json!([["name", "=", name]])])
        .await
        .unwrap();
    ids.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_reads_and_writes_and_without_the_ca_file_names_it() {
    let Some(server) = TrytonServer::start_tls() else {
        return;
    };
    let c = connector(server.settings());
    c.check().await.unwrap();
    let out = c
        .write(EntityKind::Customer, vec![customer("Over TLS")])
        .await
        .unwrap();
    let id = out[0].clone().unwrap().id;
    let page = c.read(EntityKind::Customer, None).await.unwrap();
    assert!(page.records.iter().any(|r| r.id == id));

    let mut settings = server.settings();
    settings.as_object_mut().unwrap().remove("ca_file");
    let e = connector(settings).check().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Config { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("Tryton") && text.contains("set `ca_file`"),
        "{text}"
    );
}

/// A proxy in front of trytond and a connector that goes through it.
fn behind_a_proxy(server: &TrytonServer) -> (FaultProxy, TrytonConnector) {
    let proxy = FaultProxy::start(server.port);
    let mut settings = server.settings();
    settings["url"] = json!(proxy.url());
    (proxy, connector(settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_was_lost_is_not_sent_again() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let (proxy, c) = behind_a_proxy(&server);
    c.check().await.unwrap();
    proxy.inject("model.party.party.create", Fault::DropAfterForward, 1);
    let out = c
        .write(EntityKind::Customer, vec![customer("Lost Reply")])
        .await
        .unwrap();
    // That record fails for this run (R17), transient: the engine finds it again by
    // its intent next run (R18). Tryton made it exactly once.
    let e = out[0].clone().unwrap_err();
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e}");
    assert!(e.to_string().contains("model.party.party.create"), "{e}");
    assert_eq!(parties_named(&server, "Lost Reply").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_before_tryton_ran_it_is_sent_again_and_reads_always_are() {
    let Some(server) = TrytonServer::start() else {
        return;
    };
    let (proxy, c) = behind_a_proxy(&server);
    proxy.inject(
        "common.db.login",
        Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
        },
        1,
    );
    let started = Instant::now();
    c.check().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 ignored"
    );
    for fault in [
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::Status {
            status: 429,
            retry_after: Some("0".into()),
        },
    ] {
        proxy.inject("model.party.party.create", fault, 1);
    }
    let out = c
        .write(EntityKind::Customer, vec![customer("Refused Twice")])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    assert_eq!(parties_named(&server, "Refused Twice").await, 1);

    // A connection closed once the request was sent looks the same whether or not it
    // reached Tryton: not sent again, and this time nothing was made.
    proxy.inject("model.party.party.create", Fault::DropBeforeForward, 1);
    let out = c
        .write(EntityKind::Customer, vec![customer("Dropped")])
        .await
        .unwrap();
    assert!(
        matches!(out[0], Err(ConnectorError::Transient { .. })),
        "{out:?}"
    );
    assert_eq!(parties_named(&server, "Dropped").await, 0);

    // Reads are retried whatever happened, a dropped reply included.
    proxy.inject("search_read", Fault::DropAfterForward, 1);
    proxy.inject(
        "search_read",
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        1,
    );
    let page = c.read(EntityKind::Customer, None).await.unwrap();
    assert!(!page.records.is_empty());
}

/// Login and calls against a server that echoes every request back, in every form the
/// connector reads: the password and the session never show.
#[tokio::test]
async fn an_echoing_server_never_shows_the_password() {
    let logs = Logs::capture();
    let echo = EchoServer::start(Echo::Status(500));
    let password = "s3cret-tryton-pw";
    let c = connector(json!({"url": echo.url(), "database": "tandem", "password": password}));
    let mut seen = format!("{c:?}\n");
    for mode in [
        Echo::Status(500),
        Echo::Status(200),
        Echo::Status(401),
        Echo::Status(404),
        Echo::Status(422),
        Echo::JsonRpcError,
    ] {
        echo.set(mode);
        let results = [
            c.check().await.err(),
            c.read(EntityKind::Customer, None).await.err(),
            c.write(EntityKind::Customer, vec![customer("Echo")])
                .await
                .err(),
        ];
        for e in results.into_iter().flatten() {
            seen.push_str(&format!("{e}\n{e:?}\n"));
        }
    }
    seen.push_str(&logs.text());
    assert!(seen.contains("common.db.login"), "{seen}");
    let requests: String = echo.received().iter().map(|r| r.text()).collect();
    assert!(requests.contains(password), "the login was sent");
    assert!(!seen.contains(password), "the password shows in:\n{seen}");
}
