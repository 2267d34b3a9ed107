//! The CardDAV connector against real servers (see `testsupport`): the conformance kit on
//! Radicale and Xandikos, unknown properties surviving updates, conflicts, sync-token
//! resumption and unparseable cards.

use std::sync::Arc;

use reqwest::Method;
use tandem_connector::http::testing::FaultProxy;
use tandem_connector::testkit::{Options, Status, UnknownField, check_conformance};
use tandem_connector::{
    BuildContext, Connector, ConnectorError, ConnectorFactory, Listing, WriteOp,
};
use tandem_connector_carddav::testsupport::{CardServer, Flavor, Raw};
use tandem_connector_carddav::vcard::Card;
use tandem_connector_carddav::{CarddavConnector, CarddavConnectorFactory};
use tandem_model::{EntityKind, Fields, Value, field};

fn build(server: &CardServer, book: &str) -> Arc<dyn Connector> {
    CarddavConnectorFactory
        .build(
            server.settings(book),
            &BuildContext {
                base_dir: std::env::temp_dir(),
            },
        )
        .unwrap()
}

/// Adds properties Tandem does not map to a card behind the connector's back.
struct Foreign {
    book: String,
    raw: Raw,
}

#[async_trait::async_trait]
impl UnknownField for Foreign {
    async fn inject(&self, _kind: EntityKind, id: &str) -> Result<(), String> {
        let url = format!("{}{id}", self.book);
        let got = self.raw.send("GET", &url, &[], None).await;
        let etag = got.etag.ok_or("no ETag")?;
        let text = got.body.replace(
            "END:VCARD",
            "NOTE:keep me\\, please\r\nX-OTHER-APP;X-P=1:other value\r\nitem9.TEL;TYPE=HOME:+1 555 0100\r\nEND:VCARD",
        );
        let headers = [
            ("If-Match", etag.as_str()),
            ("Content-Type", "text/vcard; charset=utf-8"),
        ];
        let put = self.raw.send("PUT", &url, &headers, Some(&text)).await;
        if (200..300).contains(&put.status) {
            Ok(())
        } else {
            Err(format!("PUT: {}", put.status))
        }
    }

    async fn verify(&self, _kind: EntityKind, id: &str) -> Result<(), String> {
        let url = format!("{}{id}", self.book);
        let text = self.raw.send("GET", &url, &[], None).await.body;
        let card = Card::parse(&text)?;
        let note = card.first("NOTE").map(|p| p.text());
        let other = card.first("X-OTHER-APP");
        let home = card
            .all("TEL")
            .find(|p| p.param_values("TYPE").contains(&"home".to_owned()));
        if note.as_deref() == Some("keep me, please")
            && other.is_some_and(|p| p.text() == "other value" && p.param("X-P") == Some("1"))
            && home.is_some_and(|p| p.text() == "+1 555 0100")
        {
            Ok(())
        } else {
            Err(format!("foreign properties lost:\n{text}"))
        }
    }
}

async fn conformance(flavor: Flavor) {
    let Some(server) = CardServer::start(flavor) else {
        return;
    };
    conformance_on(server).await;
}

/// The conformance kit on `server`: over HTTPS when it serves TLS.
async fn conformance_on(server: CardServer) {
    let book = server.new_book("conformance").await;
    let connector = build(&server, &book);
    let options = Options {
        max_batch: 10,
        unknown_field: Some(Box::new(Foreign {
            book: book.clone(),
            raw: server.raw(),
        })),
        ..Options::default()
    };
    let report = check_conformance(connector.as_ref(), &options).await;
    if !report.passed() {
        eprintln!("{}", server.log());
    }
    report.assert_passed();
    // Cards are made under the ids the engine chooses (R18), on every server.
    let chosen = report.get("chosen_id", Some(EntityKind::Contact)).unwrap();
    assert_eq!(chosen.status, Status::Passed, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_on_radicale() {
    conformance(Flavor::Radicale).await;
}

/// HTTPS with a private CA named in `ca_file`: the whole contract, through `https://`.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_over_https_on_radicale() {
    let Some(server) = CardServer::radicale_tls() else {
        return;
    };
    assert!(server.base().starts_with("https://"));
    conformance_on(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_on_xandikos() {
    conformance(Flavor::Xandikos).await;
}

/// SabreDAV 1.8: no `sync-collection` (full listings by PROPFIND and multiget), a
/// multiget that fails whole for one missing card, and HTTP Digest.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_on_sabredav() {
    conformance(Flavor::Sabredav).await;
}

async fn create(c: &dyn Connector, fields: Fields) -> (String, String) {
    let w = c
        .write(EntityKind::Contact, vec![WriteOp::create(fields)])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    (w.id, w.version.unwrap())
}

async fn stale_version_and_412_are_conflicts(flavor: Flavor) {
    let Some(server) = CardServer::start(flavor) else {
        return;
    };
    let book = server.new_book("conflicts").await;
    let c = build(&server, &book);
    let (id, v1) = create(c.as_ref(), Fields::new().with(field::NAME, "Acme")).await;
    let update = |version: &str, city: &str| WriteOp::Update {
        id: id.clone(),
        version: Some(version.to_owned()),
        changes: [(field::CITY.into(), Value::text(city))]
            .into_iter()
            .collect(),
    };
    let out = c
        .write(EntityKind::Contact, vec![update(&v1, "Gent")])
        .await
        .unwrap();
    let v2 = out[0].clone().unwrap().version.unwrap();
    assert_ne!(v1, v2);
    // The version the op carries is stale: Conflict, nothing written.
    let out = c
        .write(EntityKind::Contact, vec![update(&v1, "Brugge")])
        .await
        .unwrap();
    assert_eq!(out[0], Err(ConnectorError::Conflict { id: id.clone() }));
    // A 412 from the server itself (a stale If-Match on DELETE).
    let out = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Delete {
                id: id.clone(),
                version: Some(v1.clone()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(out[0], Err(ConnectorError::Conflict { id: id.clone() }));
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].fields.text(field::CITY), Some("Gent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_on_radicale() {
    stale_version_and_412_are_conflicts(Flavor::Radicale).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_on_xandikos() {
    stale_version_and_412_are_conflicts(Flavor::Xandikos).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_on_sabredav() {
    stale_version_and_412_are_conflicts(Flavor::Sabredav).await;
}

async fn token_resumes_and_bad_token_falls_back(flavor: Flavor) {
    let Some(server) = CardServer::start(flavor) else {
        return;
    };
    let book = server.new_book("sync").await;
    let c = build(&server, &book);
    let (a, _) = create(c.as_ref(), Fields::new().with(field::NAME, "A")).await;
    let (b, vb) = create(c.as_ref(), Fields::new().with(field::NAME, "B")).await;
    let first = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(first.listing, Listing::Full);
    assert_eq!(first.records.len(), 2);
    let cursor = first.cursor.unwrap();
    // The server lists sync-collection: the cursor is its token, not a list of ETags.
    assert!(
        !cursor.0.contains("etags") && !cursor.0.contains(r#""token":"""#),
        "{}",
        cursor.0
    );
    // Nothing changed: an empty change set.
    let same = c.read(EntityKind::Contact, Some(&cursor)).await.unwrap();
    assert_eq!((same.listing, same.records.len()), (Listing::Changes, 0));
    let (new, _) = create(c.as_ref(), Fields::new().with(field::NAME, "C")).await;
    c.write(
        EntityKind::Contact,
        vec![WriteOp::Delete {
            id: b.clone(),
            version: Some(vb),
        }],
    )
    .await
    .unwrap()[0]
        .clone()
        .unwrap();
    let changes = c.read(EntityKind::Contact, Some(&cursor)).await.unwrap();
    assert_eq!(changes.listing, Listing::Changes);
    let mut seen: Vec<(String, bool)> = changes
        .records
        .iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    seen.sort();
    let mut want = vec![(new, false), (b, true)];
    want.sort();
    assert_eq!(seen, want);
    assert!(!changes.records.iter().any(|r| r.id == a));
    // A token the server does not know: a full listing again, not an error or a gap.
    let bogus = tandem_connector::Cursor(
        r#"{"token":"http://radicale.org/ns/sync/0000000000000000000000000000000000000000000000000000000000000000"}"#
            .into(),
    );
    let full = c.read(EntityKind::Contact, Some(&bogus)).await.unwrap();
    assert_eq!(full.listing, Listing::Full);
    assert_eq!(full.records.len(), 2);
}

/// `read_ids` asks in `addressbook-multiget` batches; cards the server does not have
/// (unknown, deleted, not a member name) are left out, the others equal the listing.
async fn read_ids_multigets_in_batches(flavor: Flavor) {
    let Some(server) = CardServer::start(flavor) else {
        return;
    };
    let book = server.new_book("byid").await;
    let c = build(&server, &book);
    let mut real = Vec::new();
    for name in ["A", "B", "C", "Gone"] {
        real.push(
            create(
                c.as_ref(),
                Fields::new()
                    .with(field::NAME, name)
                    .with(field::CITY, "Gent"),
            )
            .await,
        );
    }
    let (gone, gone_version) = real.pop().unwrap();
    c.write(
        EntityKind::Contact,
        vec![WriteOp::Delete {
            id: gone.clone(),
            version: Some(gone_version),
        }],
    )
    .await
    .unwrap()[0]
        .clone()
        .unwrap();
    // More than two batches of ids, the real ones spread over them.
    let unknown: Vec<String> = (0..2 * tandem_connector_carddav::MULTIGET_BATCH + 10)
        .map(|i| format!("no-such-card-{i}.vcf"))
        .collect();
    let mut ids: Vec<&str> = unknown.iter().map(String::as_str).collect();
    ids.insert(0, &real[0].0);
    ids.insert(tandem_connector_carddav::MULTIGET_BATCH + 3, &real[1].0);
    ids.push(&real[2].0);
    ids.push(&real[2].0);
    ids.push(&gone);
    ids.push("a/b.vcf");
    ids.push("");
    let found = c.read_ids(EntityKind::Contact, &ids).await.unwrap();
    let listing = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(listing.records.len(), 3);
    let mut got: Vec<_> = found
        .iter()
        .map(|r| (r.id.clone(), r.version.clone(), r.fields.clone()))
        .collect();
    let mut want: Vec<_> = listing
        .records
        .iter()
        .map(|r| (r.id.clone(), r.version.clone(), r.fields.clone()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    assert!(
        c.read_ids(EntityKind::Contact, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.read_ids(EntityKind::Customer, &[real[0].0.as_str()])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_ids_on_radicale() {
    read_ids_multigets_in_batches(Flavor::Radicale).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_ids_on_xandikos() {
    read_ids_multigets_in_batches(Flavor::Xandikos).await;
}

/// SabreDAV fails a whole multiget with 404 when one card is missing: the cards its
/// listing holds are asked for again.
#[tokio::test(flavor = "multi_thread")]
async fn read_ids_on_sabredav_leave_out_missing_cards() {
    read_ids_multigets_in_batches(Flavor::Sabredav).await;
}

/// A SabreDAV book behind a proxy that counts (and may fail) requests.
async fn sabredav_behind_a_proxy(
    name: &str,
) -> Option<(CardServer, FaultProxy, String, CarddavConnector)> {
    let server = CardServer::sabredav()?;
    let book = server.new_book(name).await;
    let proxy = FaultProxy::start(server.port);
    let via_proxy = book.replace(&server.base(), &proxy.url());
    let c = CarddavConnector::from_settings(server.settings(&via_proxy)).unwrap();
    Some((server, proxy, book, c))
}

fn reports(proxy: &FaultProxy) -> usize {
    proxy
        .request_lines()
        .iter()
        .filter(|l| l.starts_with("REPORT"))
        .count()
}

fn ids(page: &tandem_connector::Page) -> Vec<String> {
    let mut ids: Vec<String> = page.records.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids
}

/// SabreDAV 1.8 lists no `sync-collection` among its supported reports: the first read
/// is a full listing (PROPFIND Depth 1, then multiget), and later ones compare ETags:
/// only new and changed cards are fetched, a card deleted behind the connector's back
/// is a tombstone, and no sync REPORT is ever tried.
#[tokio::test(flavor = "multi_thread")]
async fn without_sync_collection_changes_come_from_comparing_etags() {
    let Some((server, proxy, book, c)) = sabredav_behind_a_proxy("nosync").await else {
        return;
    };
    let (a, va) = create(&c, Fields::new().with(field::NAME, "A")).await;
    let (b, _) = create(&c, Fields::new().with(field::NAME, "B")).await;
    let first = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(first.listing, Listing::Full);
    assert_eq!(reports(&proxy), 1, "{:?}", proxy.request_lines());
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids(&first), want);

    let gone = server
        .raw()
        .send("DELETE", &format!("{book}{b}"), &[], None)
        .await;
    assert_eq!(gone.status, 204);
    let (new, _) = create(&c, Fields::new().with(field::NAME, "C")).await;
    let update = WriteOp::Update {
        id: a.clone(),
        version: Some(va),
        changes: [(field::CITY.into(), Value::text("Gent"))]
            .into_iter()
            .collect(),
    };
    c.write(EntityKind::Contact, vec![update]).await.unwrap()[0]
        .clone()
        .unwrap();
    let next = c
        .read(EntityKind::Contact, first.cursor.as_ref())
        .await
        .unwrap();
    assert_eq!(next.listing, Listing::Changes);
    let mut got: Vec<(String, bool)> = next
        .records
        .iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    got.sort();
    let mut want = vec![(a.clone(), false), (b, true), (new, false)];
    want.sort();
    assert_eq!(got, want);
    let city = next.records.iter().find(|r| r.id == a).unwrap();
    assert_eq!(city.fields.text(field::CITY), Some("Gent"));
    // Nothing changed since: an empty change set, and no multiget at all.
    let before = reports(&proxy);
    let quiet = c
        .read(EntityKind::Contact, next.cursor.as_ref())
        .await
        .unwrap();
    assert_eq!((quiet.listing, quiet.records.len()), (Listing::Changes, 0));
    assert_eq!(reports(&proxy), before, "{:?}", proxy.request_lines());
    // One multiget per read with changes: the report set was asked once, sync never.
    assert_eq!(before, 2, "{:?}", proxy.request_lines());
}

/// A server that does not list its reports and answers `sync-collection` with 403
/// `supported-report` (SabreDAV, its report set hidden by the proxy): a full listing
/// by PROPFIND, not an authentication error; later reads compare ETags.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_not_supported_answer_falls_back_to_propfind_not_to_an_auth_error() {
    let Some((_server, proxy, _book, c)) = sabredav_behind_a_proxy("refused").await else {
        return;
    };
    let (a, _) = create(&c, Fields::new().with(field::NAME, "A")).await;
    proxy.inject(
        "supported-report-set",
        tandem_connector::http::testing::Fault::Status {
            status: 400,
            retry_after: None,
        },
        1,
    );
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!((page.listing, ids(&page)), (Listing::Full, vec![a.clone()]));
    // The refused sync-collection, then the multiget.
    assert_eq!(reports(&proxy), 2, "{:?}", proxy.request_lines());
    let (b, _) = create(&c, Fields::new().with(field::NAME, "B")).await;
    let again = c
        .read(EntityKind::Contact, page.cursor.as_ref())
        .await
        .unwrap();
    assert_eq!((again.listing, ids(&again)), (Listing::Changes, vec![b]));
    assert_eq!(reports(&proxy), 3, "{:?}", proxy.request_lines());
    assert!(!a.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_on_radicale() {
    token_resumes_and_bad_token_falls_back(Flavor::Radicale).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_on_xandikos() {
    token_resumes_and_bad_token_falls_back(Flavor::Xandikos).await;
}

/// Xandikos stores cards byte for byte, so a card only it accepts (a line without a
/// colon inside, after a valid FN and UID) reaches the connector as-is.
#[tokio::test(flavor = "multi_thread")]
async fn an_unparseable_card_is_skipped_with_its_href_and_retried() {
    let Some(server) = CardServer::xandikos() else {
        return;
    };
    let book = server.new_book("bad").await;
    let c = CarddavConnector::from_settings(server.settings(&book)).unwrap();
    let (good, _) = create(&c, Fields::new().with(field::NAME, "Good")).await;
    let bad = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bad-1\r\nFN:Bad\r\nN:Bad;;;;\r\nEND:VCARD\r\nBEGIN:VCARD\r\nEND:VCARD\r\n";
    let resp = server
        .http(Method::PUT, &format!("{book}bad-1.vcf"))
        .header("Content-Type", "text/vcard")
        .body(bad)
        .send()
        .await
        .unwrap();
    if !resp.status().is_success() {
        panic!("the server refused the bad card: {}", resp.status());
    }
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        [good.as_str()]
    );
    // read_ids leaves it out too, and still returns the good one.
    let by_id = c
        .read_ids(EntityKind::Contact, &["bad-1.vcf", good.as_str()])
        .await
        .unwrap();
    assert_eq!(
        by_id.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [good.as_str()]
    );
    let skipped = c.skipped();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].0.ends_with("/bad-1.vcf"), "{skipped:?}");
    // Not a full listing: the bad card must not look deleted (R16).
    assert_eq!(page.listing, Listing::Changes);
    // Fixed by hand: the next read picks it up.
    let fixed =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bad-1\r\nFN:Fixed\r\nN:Fixed;;;;\r\nEND:VCARD\r\n";
    server
        .http(Method::PUT, &format!("{book}bad-1.vcf"))
        .header("Content-Type", "text/vcard")
        .body(fixed)
        .send()
        .await
        .unwrap();
    let next = c
        .read(EntityKind::Contact, page.cursor.as_ref())
        .await
        .unwrap();
    assert!(c.skipped().is_empty());
    assert!(
        next.records
            .iter()
            .any(|r| r.id == "bad-1.vcf" && r.fields.text(field::NAME) == Some("Fixed"))
    );
}

/// Without `sync-collection`, a book whose every card vanished since the cursor is not
/// a list of tombstones but an empty full listing, so the engine's delete guard weighs
/// it (R16); a book that lost some cards gives their tombstones.
#[tokio::test(flavor = "multi_thread")]
async fn r16_a_book_emptied_at_once_is_a_full_listing_not_tombstones() {
    let Some((server, _proxy, book, c)) = sabredav_behind_a_proxy("emptied").await else {
        return;
    };
    let (a, _) = create(&c, Fields::new().with(field::NAME, "A")).await;
    let (b, _) = create(&c, Fields::new().with(field::NAME, "B")).await;
    let first = c.read(EntityKind::Contact, None).await.unwrap();
    let raw = server.raw();
    assert_eq!(
        raw.send("DELETE", &format!("{book}{a}"), &[], None)
            .await
            .status,
        204
    );
    let some = c
        .read(EntityKind::Contact, first.cursor.as_ref())
        .await
        .unwrap();
    assert_eq!(some.listing, Listing::Changes);
    assert_eq!(ids(&some), vec![a.clone()]);
    assert!(some.records[0].deleted);
    assert_eq!(
        raw.send("DELETE", &format!("{book}{b}"), &[], None)
            .await
            .status,
        204
    );
    let all = c
        .read(EntityKind::Contact, some.cursor.as_ref())
        .await
        .unwrap();
    assert_eq!((all.listing, all.records.len()), (Listing::Full, 0));
}
