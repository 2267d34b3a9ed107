//! vCard <-> contact fields.
//!
//! | field | vCard |
//! |---|---|
//! | `contact_type` | `KIND` (4.0) / `X-ADDRESSBOOKSERVER-KIND` (3.0): `org` = company, `individual` = person; without either, a card with a structured name is a person, one with only `ORG` a company |
//! | `name` | `FN` (and the first `ORG` component of a company) |
//! | `first_name`, `surname` | `N` given and family names (other components kept) |
//! | `address`, `address_2`, `city`, `county`, `post_code`, `country_code` | the first `ADR;TYPE=work` (else the first `ADR`): street, extended, locality, region, code, country; the PO box is kept |
//! | `phone`, `mobile_phone`, `fax` | `TEL` by `TYPE`: `fax`, `cell`, else voice |
//! | `email`, `home_page`, `job_title` | the first `EMAIL`, `URL`, `TITLE` |
//! | `business_relations` | every `CATEGORIES` value (the engine keeps the non-code ones, R9) |
//! | `company_id` | `X-TANDEM-COMPANY-ID`: the company contact's Tandem id (its member name, `<UID>.vcf` for cards Tandem creates) |
//! | other canonical fields, `x_...` extras | `X-TANDEM-<NAME>` (`vat_registration_no` -> `X-TANDEM-VAT-REGISTRATION-NO`), non-text values typed with `X-TANDEM-TYPE=number\|bool\|date\|list` |
//!
//! Everything else in a card (photos, notes, other `TEL`s and addresses, parameters,
//! groups) is kept as it was: an update parses the stored card and replaces only the
//! properties of the fields it changes.

use tandem_connector::Changes;
use tandem_model::{Fields, Value, field, normalise};

use crate::vcard::{Card, Property, escape, join_components, join_list};

const KIND: &str = "KIND";
const ABS_KIND: &str = "X-ADDRESSBOOKSERVER-KIND";
const X_PREFIX: &str = "X-TANDEM-";
const X_TYPE: &str = "X-TANDEM-TYPE";
/// Marks an `FN` Tandem had to make up (vCard requires one) when no `name` was given.
const DERIVED: &str = "X-TANDEM-DERIVED";

/// ADR components, in order; `None` for the PO box, which Tandem does not map.
const ADR_FIELDS: [Option<&str>; 7] = [
    None,
    Some(field::ADDRESS_2),
    Some(field::ADDRESS),
    Some(field::CITY),
    Some(field::COUNTY),
    Some(field::POST_CODE),
    Some(field::COUNTRY_CODE),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum TelKind {
    Phone,
    Mobile,
    Fax,
}

fn tel_kind(p: &Property) -> TelKind {
    let types = p.param_values("TYPE");
    if types.iter().any(|t| t == "fax") {
        TelKind::Fax
    } else if types.iter().any(|t| t == "cell") {
        TelKind::Mobile
    } else {
        TelKind::Phone
    }
}

fn tel_field(kind: TelKind) -> &'static str {
    match kind {
        TelKind::Phone => field::PHONE,
        TelKind::Mobile => field::MOBILE_PHONE,
        TelKind::Fax => field::FAX,
    }
}

/// The fields stored as `X-TANDEM-...` properties.
fn x_property(name: &str) -> String {
    format!("{X_PREFIX}{}", name.to_ascii_uppercase().replace('_', "-"))
}

fn x_field(prop: &str) -> Option<String> {
    let rest = prop.strip_prefix(X_PREFIX)?;
    if rest == "TYPE" || rest == "DERIVED" {
        return None;
    }
    let name = rest.to_ascii_lowercase().replace('-', "_");
    (field::canonical(&name).is_some() || field::is_extra(&name)).then_some(name)
}

fn is_x_mapped(name: &str) -> bool {
    !matches!(
        name,
        field::CONTACT_TYPE
            | field::NAME
            | field::FIRST_NAME
            | field::SURNAME
            | field::ADDRESS
            | field::ADDRESS_2
            | field::CITY
            | field::COUNTY
            | field::POST_CODE
            | field::COUNTRY_CODE
            | field::PHONE
            | field::MOBILE_PHONE
            | field::FAX
            | field::EMAIL
            | field::HOME_PAGE
            | field::JOB_TITLE
            | field::BUSINESS_RELATIONS
    )
}

fn adr_index(card: &Card) -> Option<usize> {
    let adrs: Vec<usize> = (0..card.props.len())
        .filter(|&i| card.props[i].name == "ADR")
        .collect();
    adrs.iter()
        .copied()
        .find(|&i| {
            card.props[i]
                .param_values("TYPE")
                .iter()
                .any(|t| t == "work")
        })
        .or_else(|| adrs.first().copied())
}

fn strip_tel(v: &str) -> &str {
    v.strip_prefix("tel:").unwrap_or(v)
}

/// The contact fields of a card.
pub fn to_fields(card: &Card) -> Fields {
    let mut f = Fields::new();
    let text = |f: &mut Fields, name: &str, v: String| {
        let v = v.trim().to_owned();
        if !v.is_empty() {
            f.set(field::canonical(name).expect("canonical"), Value::text(v));
        }
    };
    let n = card
        .first("N")
        .map(Property::components)
        .unwrap_or_default();
    let has_n = n.iter().take(2).any(|c| !c.trim().is_empty());
    let kind = card
        .first(KIND)
        .or_else(|| card.first(ABS_KIND))
        .map(|p| p.text().trim().to_ascii_lowercase());
    let contact_type = match kind.as_deref() {
        Some("org" | "organization") => Some("company"),
        Some("individual") => Some("person"),
        Some(_) => None,
        None if has_n => Some("person"),
        None if card.first("ORG").is_some() => Some("company"),
        None => None,
    };
    if let Some(t) = contact_type {
        f.set(field::CONTACT_TYPE, Value::text(t));
    }
    match card.first("FN") {
        Some(fn_) if fn_.param(DERIVED).is_none() => text(&mut f, field::NAME, fn_.text()),
        Some(_) => {}
        None => {
            if let Some(org) = card.first("ORG") {
                text(&mut f, field::NAME, org.components().remove(0));
            }
        }
    }
    if let Some(s) = n.first() {
        text(&mut f, field::SURNAME, s.clone());
    }
    if let Some(g) = n.get(1) {
        text(&mut f, field::FIRST_NAME, g.clone());
    }
    if let Some(i) = adr_index(card) {
        let parts = card.props[i].components();
        for (name, value) in ADR_FIELDS.iter().zip(parts) {
            if let Some(name) = name {
                // RFC 6350 makes the country a name: read as its ISO code (R20).
                let value = match *name {
                    field::COUNTRY_CODE => normalise::country_code(&value),
                    _ => value,
                };
                text(&mut f, name, value);
            }
        }
    }
    for kind in [TelKind::Phone, TelKind::Mobile, TelKind::Fax] {
        if let Some(p) = card.all("TEL").find(|p| tel_kind(p) == kind) {
            text(&mut f, tel_field(kind), strip_tel(&p.text()).to_owned());
        }
    }
    for (prop, name) in [
        ("EMAIL", field::EMAIL),
        ("URL", field::HOME_PAGE),
        ("TITLE", field::JOB_TITLE),
    ] {
        if let Some(p) = card.first(prop) {
            text(&mut f, name, p.text());
        }
    }
    let categories: Vec<String> = card
        .all("CATEGORIES")
        .flat_map(Property::list)
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    if !categories.is_empty() {
        f.set(field::BUSINESS_RELATIONS, Value::List(categories));
    }
    for p in &card.props {
        let Some(name) = x_field(&p.name) else {
            continue;
        };
        let raw = p.text();
        let value = match p.param(X_TYPE).map(str::to_ascii_lowercase).as_deref() {
            Some("number") => raw.parse().map(Value::Number).unwrap_or(Value::text(raw)),
            Some("bool") => Value::Bool(raw == "true"),
            Some("date") => Value::date(&raw).unwrap_or(Value::text(raw)),
            Some("list") => Value::List(p.list()),
            _ => Value::text(raw),
        };
        match field::canonical(&name) {
            Some(c) => f.set(c, value),
            None => f.set(name.as_str(), value),
        }
    }
    f
}

/// A new card (vCard 3.0) with `uid` holding `fields`.
pub fn new_card(uid: &str, fields: &Fields) -> Card {
    let mut card = Card::default();
    card.props.push(Property::new("VERSION", "3.0".into()));
    card.props.push(Property::new("UID", escape(uid)));
    let changes: Changes = fields.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    apply(&mut card, &changes);
    card
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::List(l) => Some(l.join(", ")).filter(|s| !s.is_empty()),
        other => Some(other.to_cell()).filter(|s| !s.trim().is_empty()),
    }
}

/// Applies `changes` to `card`: each named field replaces its property (a `Null` or
/// empty value removes it); every other property is left as it is. Keeps `FN` (which
/// vCard requires) and, for 3.0, `N` present.
pub fn apply(card: &mut Card, changes: &Changes) {
    let v4 = card.version() == Some("4.0");
    let get = |name: &str| changes.get(name).map(text_of);
    // What the card will be once changed, for FN and ORG.
    let before = to_fields(card);
    let after_text = |name: &str| match get(name) {
        Some(v) => v,
        None => before.text(name).map(str::to_owned),
    };

    if let Some(t) = get(field::CONTACT_TYPE) {
        let value = t.map(|t| {
            if t.trim().eq_ignore_ascii_case("person") {
                "individual"
            } else {
                "org"
            }
        });
        let names: Vec<&str> = [KIND, ABS_KIND]
            .into_iter()
            .filter(|n| card.first(n).is_some())
            .collect();
        match value {
            None => {
                card.remove_all(KIND);
                card.remove_all(ABS_KIND);
            }
            Some(v) if names.is_empty() => card
                .props
                .push(Property::new(if v4 { KIND } else { ABS_KIND }, v.into())),
            Some(v) => {
                for n in names {
                    card.set(n, v.into());
                }
            }
        }
    }
    let is_company =
        after_text(field::CONTACT_TYPE).is_some_and(|t| !t.eq_ignore_ascii_case("person"));

    if let Some(name) = get(field::NAME) {
        match name {
            Some(n) => {
                card.remove_all("FN");
                card.props.push(Property::new("FN", escape(&n)));
                if is_company {
                    set_component(card, "ORG", 0, 1, &n);
                }
            }
            None => {
                card.remove_all("FN");
            }
        }
    }
    if get(field::FIRST_NAME).is_some() || get(field::SURNAME).is_some() {
        if let Some(s) = get(field::SURNAME) {
            set_component(card, "N", 0, 5, s.as_deref().unwrap_or(""));
        }
        if let Some(g) = get(field::FIRST_NAME) {
            set_component(card, "N", 1, 5, g.as_deref().unwrap_or(""));
        }
    }
    if !v4 && card.first("N").is_none() {
        card.props.push(Property::new("N", ";;;;".into()));
    }
    // FN is required: make one up from the names when no name is given.
    if card.first("FN").is_none() {
        let made_up = [after_text(field::FIRST_NAME), after_text(field::SURNAME)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let made_up = if made_up.is_empty() {
            after_text(field::EMAIL).unwrap_or_else(|| "-".into())
        } else {
            made_up
        };
        card.props
            .push(Property::new("FN", escape(&made_up)).with_param(DERIVED, &["1"]));
    }

    if ADR_FIELDS
        .iter()
        .flatten()
        .any(|n| changes.contains_key(*n))
    {
        let i = match adr_index(card) {
            Some(i) => i,
            None => {
                card.props
                    .push(Property::new("ADR", ";;;;;;".into()).with_param("TYPE", &["work"]));
                card.props.len() - 1
            }
        };
        let mut parts = card.props[i].components();
        parts.resize(7, String::new());
        for (k, name) in ADR_FIELDS.iter().enumerate() {
            if let Some(v) = name.and_then(get) {
                parts[k] = v.unwrap_or_default();
            }
        }
        if parts.iter().all(|p| p.trim().is_empty()) {
            card.props.remove(i);
        } else {
            card.props[i].value = join_components(&parts);
        }
    }

    for kind in [TelKind::Phone, TelKind::Mobile, TelKind::Fax] {
        let Some(v) = get(tel_field(kind)) else {
            continue;
        };
        let at = card
            .props
            .iter()
            .position(|p| p.name == "TEL" && tel_kind(p) == kind);
        match (at, v) {
            (Some(i), None) => {
                card.props.remove(i);
            }
            (Some(i), Some(v)) => {
                let uri = card.props[i].value.starts_with("tel:");
                card.props[i].value = if uri { format!("tel:{v}") } else { escape(&v) };
            }
            (None, Some(v)) => {
                let types: &[&str] = match kind {
                    TelKind::Phone => &["work", "voice"],
                    TelKind::Mobile => &["cell"],
                    TelKind::Fax => &["work", "fax"],
                };
                card.props
                    .push(Property::new("TEL", escape(&v)).with_param("TYPE", types));
            }
            (None, None) => {}
        }
    }
    for (prop, name) in [
        ("EMAIL", field::EMAIL),
        ("URL", field::HOME_PAGE),
        ("TITLE", field::JOB_TITLE),
    ] {
        if let Some(v) = get(name) {
            set_first(card, prop, v.map(|v| escape(&v)), &[]);
        }
    }
    if let Some(v) = changes.get(field::BUSINESS_RELATIONS) {
        let list: Vec<String> = match v {
            Value::List(l) => l.clone(),
            Value::Null => Vec::new(),
            other => other
                .to_cell()
                .split([',', ';'])
                .map(str::to_owned)
                .collect(),
        };
        let list: Vec<String> = list
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let at = card.props.iter().position(|p| p.name == "CATEGORIES");
        card.remove_all("CATEGORIES");
        if !list.is_empty() {
            let p = Property::new("CATEGORIES", join_list(&list));
            match at {
                Some(i) => card.props.insert(i.min(card.props.len()), p),
                None => card.props.push(p),
            }
        }
    }
    for (name, value) in changes {
        let name = name.as_str();
        if !is_x_mapped(name) {
            continue;
        }
        let prop = x_property(name);
        let typed = match value {
            Value::Null => None,
            Value::Text(s) if s.trim().is_empty() => None,
            Value::List(l) if l.is_empty() => None,
            Value::Text(s) => Some((escape(s), None)),
            Value::Number(_) => Some((escape(&value.to_cell()), Some("number"))),
            Value::Bool(_) => Some((value.to_cell(), Some("bool"))),
            Value::Date(d) => Some((d.to_string(), Some("date"))),
            Value::List(l) => Some((join_list(l), Some("list"))),
        };
        card.remove_all(&prop);
        if let Some((v, t)) = typed {
            let mut p = Property::new(&prop, v);
            if let Some(t) = t {
                p = p.with_param(X_TYPE, &[t]);
            }
            card.props.push(p);
        }
    }
}

fn set_first(card: &mut Card, prop: &str, value: Option<String>, params: &[(&str, &[&str])]) {
    let at = card.props.iter().position(|p| p.name == prop);
    match (at, value) {
        (Some(i), Some(v)) => card.props[i].value = v,
        (Some(i), None) => {
            card.props.remove(i);
        }
        (None, Some(v)) => {
            let mut p = Property::new(prop, v);
            for (n, vals) in params {
                p = p.with_param(n, vals);
            }
            card.props.push(p);
        }
        (None, None) => {}
    }
}

/// Sets component `index` of the first structured property `prop` (made with `len`
/// empty components when missing), keeping the other components.
fn set_component(card: &mut Card, prop: &str, index: usize, len: usize, value: &str) {
    let i = match card.props.iter().position(|p| p.name == prop) {
        Some(i) => i,
        None => {
            card.props
                .push(Property::new(prop, ";".repeat(len.saturating_sub(1))));
            card.props.len() - 1
        }
    };
    let mut parts = card.props[i].components();
    if parts.len() <= index {
        parts.resize(index + 1, String::new());
    }
    parts[index] = value.to_owned();
    card.props[i].value = join_components(&parts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_connector::testkit::same_value;

    fn changes(f: &Fields) -> Changes {
        f.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    #[test]
    fn r20_adr_country_names_are_read_as_iso_codes() {
        let adr = |country: &str| {
            let text = format!(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Acme\r\nADR;TYPE=work:;;1 Main St;Town;;1000;{country}\r\nEND:VCARD\r\n"
            );
            to_fields(&Card::parse(&text).unwrap())
                .text(field::COUNTRY_CODE)
                .map(str::to_owned)
        };
        for (name, code) in [
            ("Germany", "DE"),
            ("Schweiz", "CH"),
            ("USA", "US"),
            ("België", "BE"),
            ("Japan", "JP"),
            ("ca", "CA"),
        ] {
            assert_eq!(adr(name).as_deref(), Some(code), "{name}");
        }
        // A name no table knows stays as written, for the target to refuse with a reason.
        assert_eq!(adr("Atlantis").as_deref(), Some("Atlantis"));
    }

    #[test]
    fn every_sample_field_round_trips_through_a_new_card() {
        for v in 0..4 {
            let fields =
                tandem_connector::testkit::sample_fields(tandem_model::EntityKind::Contact, v);
            let card = new_card("u1", &fields);
            let read = to_fields(&Card::parse(&card.to_text()).unwrap());
            for (name, value) in &fields {
                let got = read.get(name.as_str());
                assert!(
                    got.is_some_and(|g| same_value(value, g)),
                    "{name}: wrote {value:?}, read {got:?}\n{}",
                    card.to_text()
                );
            }
        }
    }

    const APPLE: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//iPhone OS 17//EN\r\nN:Doe;Jane;Q.;Dr.;\r\nFN:Jane Doe\r\nORG:Acme;Sales\r\nitem1.TEL;type=CELL;type=VOICE;type=pref:+32 470 11 22 33\r\nTEL;TYPE=HOME:+32 9 000\r\nTEL;type=WORK;type=VOICE:+32 9 111\r\nitem2.ADR;type=WORK:PO 7;;1 Main St;Ghent;;9000;BE\r\nitem2.X-ABLabel:_$!<Work>!$_\r\nEMAIL;type=INTERNET:jane@acme.example\r\nCATEGORIES:VIP,CUST\r\nPHOTO;ENCODING=b;TYPE=JPEG:AAAA\r\nUID:abc\r\nEND:VCARD\r\n";

    #[test]
    fn reads_a_phone_card_and_keeps_what_it_does_not_map() {
        let card = Card::parse(APPLE).unwrap();
        let f = to_fields(&card);
        assert_eq!(f.text(field::CONTACT_TYPE), Some("person"));
        assert_eq!(f.text(field::NAME), Some("Jane Doe"));
        assert_eq!(f.text(field::FIRST_NAME), Some("Jane"));
        assert_eq!(f.text(field::SURNAME), Some("Doe"));
        assert_eq!(f.text(field::MOBILE_PHONE), Some("+32 470 11 22 33"));
        assert_eq!(f.text(field::PHONE), Some("+32 9 000"));
        assert_eq!(f.text(field::ADDRESS), Some("1 Main St"));
        assert_eq!(f.text(field::COUNTRY_CODE), Some("BE"));
        assert_eq!(
            f.get(field::BUSINESS_RELATIONS),
            Some(&Value::List(vec!["VIP".into(), "CUST".into()]))
        );

        let mut updated = card.clone();
        let change = Fields::new()
            .with(field::CITY, "Antwerp")
            .with(field::MOBILE_PHONE, "+32 470 99")
            .with(field::VAT_REGISTRATION_NO, "BE0123")
            .with(
                field::BUSINESS_RELATIONS,
                Value::List(vec!["VIP".into(), "CUST".into(), "VEND".into()]),
            );
        apply(&mut updated, &changes(&change));
        let text = updated.to_text();
        let again = Card::parse(&text).unwrap();
        // Unmapped properties survive byte for byte (as parsed values).
        for name in ["PRODID", "PHOTO", "X-ABLABEL", "ORG", "UID"] {
            assert_eq!(again.first(name), card.first(name), "{name}");
        }
        let adr = again.first("ADR").unwrap();
        assert_eq!(adr.group.as_deref(), Some("item2"));
        assert_eq!(adr.components()[0], "PO 7");
        assert_eq!(adr.components()[3], "Antwerp");
        let f = to_fields(&again);
        assert_eq!(f.text(field::MOBILE_PHONE), Some("+32 470 99"));
        assert_eq!(f.text(field::VAT_REGISTRATION_NO), Some("BE0123"));
        assert_eq!(again.first("N").unwrap().components()[2], "Q.");
        assert_eq!(again.version(), Some("3.0"));
    }

    #[test]
    fn v4_cards_keep_their_version_and_kind() {
        let text = "BEGIN:VCARD\r\nVERSION:4.0\r\nKIND:org\r\nFN:Acme\r\nORG:Acme\r\nTEL;VALUE=uri;TYPE=work:tel:+32-9-1\r\nUID:urn:uuid:x\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        let f = to_fields(&card);
        assert_eq!(f.text(field::CONTACT_TYPE), Some("company"));
        assert_eq!(f.text(field::PHONE), Some("+32-9-1"));
        let change = Fields::new()
            .with(field::NAME, "Acme Corp")
            .with(field::PHONE, "+32 9 2")
            .with(field::CONTACT_TYPE, "company");
        apply(&mut card, &changes(&change));
        let again = Card::parse(&card.to_text()).unwrap();
        assert_eq!(again.version(), Some("4.0"));
        assert_eq!(again.first("TEL").unwrap().value, "tel:+32 9 2");
        assert_eq!(again.first("ORG").unwrap().text(), "Acme Corp");
        assert!(again.first(ABS_KIND).is_none());
        assert!(again.first("N").is_none());
    }

    #[test]
    fn null_clears_and_fn_stays() {
        let mut card = new_card(
            "u",
            &Fields::new()
                .with(field::NAME, "X")
                .with(field::EMAIL, "x@example.invalid")
                .with(field::CITY, "Gent"),
        );
        let mut c = Changes::new();
        c.insert(field::NAME.into(), Value::Null);
        c.insert(field::EMAIL.into(), Value::Null);
        c.insert(field::CITY.into(), Value::Null);
        apply(&mut card, &c);
        let f = to_fields(&Card::parse(&card.to_text()).unwrap());
        assert!(f.is_empty(), "{f:?}");
        assert!(card.first("FN").is_some());
        assert!(card.first("ADR").is_none());
    }
}
