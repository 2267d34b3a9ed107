//! Cards as exporters write them, on real servers (see `testsupport`): contact group
//! cards are passed over and never written; every corpus card (`tests/corpus/`)
//! updated through the connector keeps every other byte (Xandikos stores cards as
//! sent, so the bytes it returns are the bytes Tandem wrote).

use tandem_connector::{Connector, ConnectorError, Listing, WriteOp};
use tandem_connector_carddav::testsupport::{CardServer, Flavor};
use tandem_connector_carddav::vcard::Card;
use tandem_connector_carddav::{CarddavConnector, mapping};
use tandem_model::{EntityKind, Value, field};

fn corpus_card(name: &str) -> String {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn put(server: &CardServer, url: &str, text: &str) {
    let reply = server
        .raw()
        .send(
            "PUT",
            url,
            &[("Content-Type", "text/vcard; charset=utf-8")],
            Some(text),
        )
        .await;
    assert!(
        (200..300).contains(&reply.status),
        "PUT {url}: {}\n{}",
        reply.status,
        server.log()
    );
}

async fn get(server: &CardServer, url: &str) -> String {
    server.raw().send("GET", url, &[], None).await.body
}

async fn group_cards_are_passed_over_counted_and_never_written(flavor: Flavor) {
    let Some(server) = CardServer::start(flavor) else {
        return;
    };
    let book = server.new_book("groups").await;
    put(
        &server,
        &format!("{book}group.vcf"),
        &corpus_card("icloud-group.vcf"),
    )
    .await;
    let company = corpus_card("apple-macos-company.vcf");
    put(&server, &format!("{book}company.vcf"), &company).await;
    let c = CarddavConnector::from_settings(server.settings(&book)).unwrap();

    let page = c.read(EntityKind::Contact, None).await.unwrap();
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["company.vcf"]);
    assert_eq!(c.groups_skipped(), 1);
    // Passed over, not failed: the listing is still full (R16 may rely on it).
    assert_eq!(page.listing, Listing::Full);
    assert!(c.skipped().is_empty());
    let by_id = c
        .read_ids(EntityKind::Contact, &["group.vcf", "company.vcf"])
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);

    let before = get(&server, &format!("{book}group.vcf")).await;
    let mut changes = tandem_connector::Changes::new();
    changes.insert(field::PHONE.into(), Value::text("+1 555 0100"));
    let outcome = c
        .write(
            EntityKind::Contact,
            vec![WriteOp::Update {
                id: "group.vcf".into(),
                version: None,
                changes,
            }],
        )
        .await
        .unwrap();
    assert!(
        matches!(&outcome[0], Err(ConnectorError::InvalidRecord { .. })),
        "{outcome:?}"
    );
    assert_eq!(get(&server, &format!("{book}group.vcf")).await, before);

    // A contact card turned into a group reads, from the changes, as gone. (It keeps
    // its UID: servers refuse a card whose UID changes or is another card's.)
    let uid_line = |card: &str| {
        let line = card.lines().find(|l| l.starts_with("UID:"));
        line.expect("the corpus card has a UID").to_owned()
    };
    let group = corpus_card("icloud-group.vcf");
    let turned = group.replace(&uid_line(&group), &uid_line(&company));
    put(&server, &format!("{book}company.vcf"), &turned).await;
    let changes = c
        .read(EntityKind::Contact, page.cursor.as_ref())
        .await
        .unwrap();
    assert_eq!(changes.listing, Listing::Changes);
    let gone: Vec<(&str, bool)> = changes
        .records
        .iter()
        .map(|r| (r.id.as_str(), r.deleted))
        .collect();
    assert_eq!(gone, [("company.vcf", true)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn group_cards_are_passed_over_counted_and_never_written_on_radicale() {
    group_cards_are_passed_over_counted_and_never_written(Flavor::Radicale).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_cards_are_passed_over_counted_and_never_written_on_xandikos() {
    group_cards_are_passed_over_counted_and_never_written(Flavor::Xandikos).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_cards_are_passed_over_counted_and_never_written_on_sabredav() {
    group_cards_are_passed_over_counted_and_never_written(Flavor::Sabredav).await;
}

/// The card text without `REV` and the properties named in `touched`.
fn without(text: &str, touched: &[&str]) -> String {
    let mut c = Card::parse(text).unwrap();
    c.props
        .retain(|p| !p.is("REV") && !touched.iter().any(|t| p.is(t)));
    c.to_text()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_corpus_card_updated_through_the_connector_keeps_its_other_bytes() {
    let Some(server) = CardServer::xandikos() else {
        return;
    };
    let book = server.new_book("corpus").await;
    let dir = format!("{}/tests/corpus", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".vcf"))
        .collect();
    names.sort();
    // Xandikos refuses two shapes (the corpus test covers them): quoted-printable soft
    // line breaks (Android; its vobject cannot parse them) and a lower-case
    // `begin:vcard` (old Thunderbird).
    names.retain(|n| n != "android-2.1-quoted-printable.vcf" && n != "thunderbird-legacy.vcf");
    // Written concurrently: Xandikos answers a PUT while another is stored in the same
    // book with 423 Locked, which is tried again.
    let c = CarddavConnector::from_settings(server.settings(&book)).unwrap();
    for name in &names {
        put(&server, &format!("{book}{name}"), &corpus_card(name)).await;
    }
    let page = c.read(EntityKind::Contact, None).await.unwrap();
    assert!(c.skipped().is_empty(), "{:?}", c.skipped());
    let mut ops = Vec::new();
    for record in &page.records {
        let mut changes = tandem_connector::Changes::new();
        changes.insert(field::CITY.into(), Value::text("Newtown"));
        ops.push(WriteOp::Update {
            id: record.id.clone(),
            version: record.version.clone(),
            changes,
        });
    }
    let outcomes = c.write(EntityKind::Contact, ops).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for record in &page.records {
        let original = corpus_card(&record.id);
        let stored = get(&server, &format!("{book}{}", record.id)).await;
        let card = Card::parse(&stored).unwrap();
        assert_eq!(
            mapping::to_fields(&card).text(field::CITY),
            Some("Newtown"),
            "{}",
            record.id
        );
        let mut touched = vec!["ADR"];
        if Card::parse(&original).unwrap().first("N").is_none() {
            touched.push("N");
        }
        assert_eq!(
            without(&stored, &touched),
            without(&original, &touched),
            "{}",
            record.id
        );
    }
    // The group cards are passed over, every other card read.
    assert_eq!(c.groups_skipped(), 2);
    assert_eq!(page.records.len() + 2, names.len());
}
