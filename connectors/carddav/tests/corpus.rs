//! The vCard corpus (`tests/corpus/`): cards written for Tandem in the shapes real
//! exporters produce (Apple Contacts, iOS, iCloud, Google, Outlook, Thunderbird,
//! Android, Nextcloud, eM Client, DAVx5), each beside a `.expected` file with the
//! fields Tandem must read from it. `UPDATE_EXPECT=1` rewrites the `.expected` files
//! from what Tandem reads (review the diff). See `tests/corpus/README.md`.

use std::path::{Path, PathBuf};

use tandem_connector::Changes;
use tandem_connector_carddav::mapping;
use tandem_connector_carddav::vcard::Card;
use tandem_model::{Fields, Timestamp, Value, field};

fn corpus() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cards: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("tests/corpus")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "vcf"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("UTF-8 card");
            (p, text)
        })
        .collect();
    cards.sort();
    assert!(cards.len() >= 14, "the corpus lost cards: {}", cards.len());
    cards
}

fn show(v: &Value) -> String {
    match v {
        Value::List(items) => format!("[{}]", items.join(", ")),
        other => other.to_cell().replace('\n', "\\n"),
    }
}

/// What Tandem reads from a card, one `field = value` line per field.
fn render(card: &Card) -> String {
    if mapping::is_group(card) {
        return "group: not a contact\n".into();
    }
    let fields = mapping::to_fields(card);
    let mut lines: Vec<String> = fields
        .iter()
        .map(|(n, v)| format!("{n} = {}\n", show(v)))
        .collect();
    lines.sort();
    lines.concat()
}

#[test]
fn every_corpus_card_reads_as_its_expected_file() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for (path, text) in corpus() {
        let card = Card::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = render(&card);
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got == expected {
            continue;
        }
        if update {
            std::fs::write(&expected_path, &got).expect("writable corpus");
        } else {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- read\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A field to change, its new value, and the properties that may change with it.
const CHANGES: &[(&str, &str, &[&str])] = &[
    (field::CITY, "Newtown", &["ADR"]),
    (field::PHONE, "+1 555 0100 999", &["TEL"]),
    (field::EMAIL, "new.address@example.org", &["EMAIL"]),
    (field::NAME, "Renamed Example", &["FN", "ORG"]),
    (field::ADDRESS_2, "Unit 9", &["ADR"]),
];

/// The card as text without the properties named in `touched`.
fn without(card: &Card, touched: &[&str]) -> String {
    let mut c = card.clone();
    c.props.retain(|p| !touched.iter().any(|t| p.is(t)));
    c.to_text()
}

#[test]
fn a_corpus_card_updated_in_one_field_keeps_every_other_byte() {
    let now = Timestamp(1_714_564_800_000);
    for (path, text) in corpus() {
        let original = Card::parse(&text).unwrap();
        if mapping::is_group(&original) {
            continue;
        }
        let before = mapping::to_fields(&original);
        for (name, value, props) in CHANGES {
            let at = format!("{} ({name})", path.display());
            let mut card = original.clone();
            let mut change = Changes::new();
            change.insert((*name).into(), Value::text(*value));
            mapping::apply_at(&mut card, &change, now);
            let written = card.to_text();
            let again = Card::parse(&written).unwrap_or_else(|e| panic!("{at}: {e}\n{written}"));
            // Read again: the changed field, and every other field as before.
            let mut expected: Fields = before.clone();
            expected.set(*name, Value::text(*value));
            assert_eq!(mapping::to_fields(&again), expected, "{at}\n{written}");
            // Everything else byte for byte: line ends, spelling, encodings, order.
            let mut touched: Vec<&str> = props.to_vec();
            touched.push("REV");
            if original.first("N").is_none() && original.version() != Some("4.0") {
                touched.push("N");
            }
            assert_eq!(
                without(&again, &touched),
                without(&original, &touched),
                "{at}"
            );
            assert_eq!(again.version(), original.version(), "{at}");
            assert!(again.first("REV").is_some(), "{at}: REV not set");
        }
    }
}

#[test]
fn a_corpus_card_written_back_unchanged_is_the_same_bytes() {
    for (path, text) in corpus() {
        let card = Card::parse(&text).unwrap();
        assert_eq!(card.to_text(), text, "{}", path.display());
    }
}
