//! vCard <-> contact fields.
//!
//! | field | vCard |
//! |---|---|
//! | `contact_type` | `KIND` (4.0), `X-KIND` (3.0, khard), `X-ADDRESSBOOKSERVER-KIND` (3.0, Apple): `org` = company, `individual` = person; else Apple's `X-ABShowAs:COMPANY`; without any, a card with a structured name is a person, one with only `ORG` a company |
//! | `name` | `FN` (and the first `ORG` component of a company) |
//! | `first_name`, `surname` | `N` given and family names (other components kept) |
//! | `address`, `address_2` | the first `ADR;TYPE=work` (else the first `ADR`): the street's first line; the extended address and the street's further lines (joined with `, `) |
//! | `city`, `county`, `post_code`, `country_code` | the same `ADR`: locality, region, code, country; the PO box is kept |
//! | `phone`, `mobile_phone`, `fax` | `TEL` by `TYPE`: `fax`, `cell`, else voice (not `pager`); a `tel:` URI gives its number (visual separators as spaces), its `;ext=` stays in the card |
//! | `email`, `home_page`, `job_title` | the first `EMAIL`, `URL` (a URI: never escaped), `TITLE` |
//! | `business_relations` | every `CATEGORIES` value (the engine keeps the non-code ones, R9) |
//! | `company_id` | `X-TANDEM-COMPANY-ID`: the company contact's Tandem id (its member name, `<UID>.vcf` for cards Tandem creates) |
//! | other canonical fields, `x_...` extras | `X-TANDEM-<NAME>` (`vat_registration_no` -> `X-TANDEM-VAT-REGISTRATION-NO`), non-text values typed with `X-TANDEM-TYPE=number\|bool\|date\|list` |
//!
//! Group cards (`KIND:group`, `X-ADDRESSBOOKSERVER-KIND:group`) are no contacts
//! ([`is_group`]): the connector skips them on read and never writes them.
//!
//! Everything else in a card (photos, notes, other `TEL`s and addresses, parameters,
//! groups, names as spelled) is kept as it was: an update parses the stored card and
//! replaces only the properties of the fields it changes, in the card's own version
//! (2.1 values quoted-printable where needed), and sets `REV` when anything changed.

use tandem_connector::Changes;
use tandem_model::{Fields, Timestamp, Value, field, normalise};

use crate::vcard::{Card, Property, Version, escape};

const KIND: &str = "KIND";
const X_KIND: &str = "X-KIND";
const ABS_KIND: &str = "X-ADDRESSBOOKSERVER-KIND";
/// The properties that say what a card stands for, in the order they are believed.
const KIND_PROPS: [&str; 3] = [KIND, X_KIND, ABS_KIND];
/// Apple Contacts' mark of a company card.
const SHOW_AS: &str = "X-ABShowAs";
const X_PREFIX: &str = "X-TANDEM-";
const X_TYPE: &str = "X-TANDEM-TYPE";
/// Marks an `FN` Tandem had to make up (vCard requires one) when no `name` was given.
const DERIVED: &str = "X-TANDEM-DERIVED";

/// ADR components, in order; `None` for the PO box, which Tandem does not map. The
/// street and the extended address are read and written together (see [`street`]).
const ADR_FIELDS: [Option<&str>; 7] = [
    None,
    Some(field::ADDRESS_2),
    Some(field::ADDRESS),
    Some(field::CITY),
    Some(field::COUNTY),
    Some(field::POST_CODE),
    Some(field::COUNTRY_CODE),
];
const EXTENDED: usize = 1;
const STREET: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum TelKind {
    Phone,
    Mobile,
    Fax,
}

const TEL_KINDS: [TelKind; 3] = [TelKind::Phone, TelKind::Mobile, TelKind::Fax];

fn tel_kind(p: &Property) -> Option<TelKind> {
    let types = p.param_values("TYPE");
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("fax") {
        Some(TelKind::Fax)
    } else if has("cell") || has("mobile") || has("iphone") {
        Some(TelKind::Mobile)
    } else if has("pager") {
        None
    } else {
        Some(TelKind::Phone)
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
    let upper = prop.to_ascii_uppercase();
    let rest = upper.strip_prefix(X_PREFIX)?;
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

/// The kind the card declares, lower-case: `KIND`, else `X-KIND`, else
/// `X-ADDRESSBOOKSERVER-KIND`.
fn declared_kind(card: &Card) -> Option<String> {
    KIND_PROPS
        .iter()
        .find_map(|n| card.first(n))
        .map(|p| p.text().trim().to_ascii_lowercase())
}

/// A contact group (vCard 4 `KIND:group`, iCloud's `X-ADDRESSBOOKSERVER-KIND:group`):
/// a list of members, not a contact.
pub fn is_group(card: &Card) -> bool {
    KIND_PROPS
        .iter()
        .flat_map(|n| card.all(n))
        .any(|p| p.text().trim().eq_ignore_ascii_case("group"))
}

fn contact_type(card: &Card) -> Option<&'static str> {
    match declared_kind(card).as_deref() {
        Some("org" | "organization") => return Some("company"),
        Some("individual") => return Some("person"),
        Some(_) => return None,
        None => {}
    }
    match card
        .first(SHOW_AS)
        .map(|p| p.text().trim().to_ascii_lowercase())
    {
        Some(s) if s == "company" => return Some("company"),
        Some(s) if s == "person" => return Some("person"),
        _ => {}
    }
    let n = card
        .first("N")
        .map(Property::components)
        .unwrap_or_default();
    if n.iter().take(2).any(|c| !c.trim().is_empty()) {
        Some("person")
    } else if card.first("ORG").is_some() {
        Some("company")
    } else {
        None
    }
}

fn adr_index(card: &Card) -> Option<usize> {
    let adrs: Vec<usize> = (0..card.props.len())
        .filter(|&i| card.props[i].is("ADR"))
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

/// The `tel:` URI of a value, without its scheme (`None` for a text value).
fn tel_uri(value: &str) -> Option<&str> {
    let v = value.trim();
    v.get(..4)
        .filter(|s| s.eq_ignore_ascii_case("tel:"))
        .map(|_| &v[4..])
}

/// The phone number a `TEL` holds: its text, or a `tel:` URI's number without its
/// parameters (`;ext=`, ...), percent-decoded, with `-` separators read as spaces (as
/// they are written, see [`set_phone`]).
fn phone_of(p: &Property) -> String {
    let value = p.uri();
    match tel_uri(&value) {
        Some(uri) => {
            let number = uri.split(';').next().unwrap_or_default();
            percent_decode(number).replace('-', " ")
        }
        None => value,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn put_text(f: &mut Fields, name: &str, v: String) {
    let v = v.trim();
    if !v.is_empty() {
        f.set(field::canonical(name).expect("canonical"), Value::text(v));
    }
}

/// The first line of a street and its further lines (blank ones dropped).
fn street_lines(street: &str) -> (String, Vec<String>) {
    let mut lines = street
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let first = lines.next().unwrap_or_default();
    (first, lines.collect())
}

/// The contact fields of a card.
pub fn to_fields(card: &Card) -> Fields {
    let mut f = Fields::new();
    if let Some(t) = contact_type(card) {
        f.set(field::CONTACT_TYPE, Value::text(t));
    }
    read_names(card, &mut f);
    read_address(card, &mut f);
    for kind in TEL_KINDS {
        if let Some(p) = card.all("TEL").find(|p| tel_kind(p) == Some(kind)) {
            put_text(&mut f, tel_field(kind), phone_of(p));
        }
    }
    if let Some(p) = card.first("EMAIL") {
        put_text(&mut f, field::EMAIL, p.text());
    }
    if let Some(p) = card.first("URL") {
        put_text(&mut f, field::HOME_PAGE, p.uri());
    }
    if let Some(p) = card.first("TITLE") {
        put_text(&mut f, field::JOB_TITLE, p.text());
    }
    let categories: Vec<String> = card
        .all("CATEGORIES")
        .flat_map(Property::list)
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    if !categories.is_empty() {
        f.set(field::BUSINESS_RELATIONS, Value::list(categories));
    }
    read_extras(card, &mut f);
    f
}

fn read_names(card: &Card, f: &mut Fields) {
    match card.first("FN") {
        Some(fn_) if fn_.param(DERIVED).is_none() => put_text(f, field::NAME, fn_.text()),
        Some(_) => {}
        None => {
            if let Some(org) = card.first("ORG") {
                put_text(f, field::NAME, org.components().remove(0));
            }
        }
    }
    let n = card
        .first("N")
        .map(Property::components)
        .unwrap_or_default();
    if let Some(s) = n.first() {
        put_text(f, field::SURNAME, s.clone());
    }
    if let Some(g) = n.get(1) {
        put_text(f, field::FIRST_NAME, g.clone());
    }
}

fn read_address(card: &Card, f: &mut Fields) {
    let Some(i) = adr_index(card) else {
        return;
    };
    let parts = card.props[i].components();
    let (first, more) = street_lines(parts.get(STREET).map_or("", String::as_str));
    put_text(f, field::ADDRESS, first);
    // A multi-line street's further lines are `address_2`, as an ERP's second line.
    let second: Vec<String> = parts
        .get(EXTENDED)
        .map(|e| e.trim().to_owned())
        .into_iter()
        .chain(more)
        .filter(|l| !l.is_empty())
        .collect();
    put_text(f, field::ADDRESS_2, second.join(", "));
    for (k, value) in parts.into_iter().enumerate().skip(STREET + 1) {
        if let Some(Some(name)) = ADR_FIELDS.get(k) {
            // RFC 6350 makes the country a name: read as its ISO code (R20).
            let value = match *name {
                field::COUNTRY_CODE => normalise::country_code(&value),
                _ => value,
            };
            put_text(f, name, value);
        }
    }
}

fn read_extras(card: &Card, f: &mut Fields) {
    for p in &card.props {
        let Some(name) = x_field(&p.name) else {
            continue;
        };
        let raw = p.text();
        let value = match p.param(X_TYPE).map(str::to_ascii_lowercase).as_deref() {
            Some("number") => raw.parse().map(Value::Number).unwrap_or(Value::text(raw)),
            Some("bool") => Value::Bool(raw == "true"),
            Some("date") => Value::date(&raw).unwrap_or(Value::text(raw)),
            Some("list") => Value::list(p.list()),
            _ => Value::text(raw),
        };
        match field::canonical(&name) {
            Some(c) => f.set(c, value),
            None => f.set(name.as_str(), value),
        }
    }
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

/// A change to apply: what each field becomes (`Some(None)`: cleared), and what the
/// card will hold once changed (for `FN`, `ORG` and the street).
struct Plan<'a> {
    changes: &'a Changes,
    before: Fields,
    version: Version,
}

impl Plan<'_> {
    fn get(&self, name: &str) -> Option<Option<String>> {
        self.changes.get(name).map(text_of)
    }

    fn after(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(v) => v,
            None => self.before.text(name).map(str::to_owned),
        }
    }

    fn is_company(&self) -> bool {
        self.after(field::CONTACT_TYPE)
            .is_some_and(|t| !t.eq_ignore_ascii_case("person"))
    }
}

/// Applies `changes` to `card`: each named field replaces its property (a `Null` or
/// empty value removes it); every other property is left as it is. Keeps `FN` (which
/// vCard requires) and, before 4.0, `N` present; sets `REV` when the card changed.
pub fn apply(card: &mut Card, changes: &Changes) {
    apply_at(card, changes, Timestamp::now());
}

/// [`apply`], with `now` as the new `REV`.
pub fn apply_at(card: &mut Card, changes: &Changes, now: Timestamp) {
    let unchanged = card.props.clone();
    let plan = Plan {
        changes,
        before: to_fields(card),
        version: card.syntax(),
    };
    if let Some(t) = plan.get(field::CONTACT_TYPE) {
        write_kind(card, plan.version, t.as_deref());
    }
    write_names(card, &plan);
    write_address(card, &plan);
    for kind in TEL_KINDS {
        if let Some(v) = plan.get(tel_field(kind)) {
            write_phone(card, plan.version, kind, v);
        }
    }
    for (prop, name) in [("EMAIL", field::EMAIL), ("TITLE", field::JOB_TITLE)] {
        if let Some(v) = plan.get(name) {
            set_first(card, plan.version, prop, v, Property::set_text);
        }
    }
    if let Some(v) = plan.get(field::HOME_PAGE) {
        set_first(card, plan.version, "URL", v, Property::set_uri);
    }
    if let Some(v) = changes.get(field::BUSINESS_RELATIONS) {
        write_categories(card, plan.version, v);
    }
    write_extras(card, &plan);
    if card.props != unchanged {
        set_rev(card, plan.version, now);
    }
}

/// `KIND` as the card's version has it: 4.0 `KIND`; before, Apple's
/// `X-ADDRESSBOOKSERVER-KIND` and `X-KIND` (which khard reads), added for companies.
/// Every kind property the card already has says the same; Apple's `X-ABShowAs`
/// follows.
fn write_kind(card: &mut Card, version: Version, contact_type: Option<&str>) {
    let Some(t) = contact_type else {
        for n in KIND_PROPS.iter().chain([&SHOW_AS]) {
            card.remove_all(n);
        }
        return;
    };
    let company = !t.trim().eq_ignore_ascii_case("person");
    let value = if company { "org" } else { "individual" };
    for p in card.props.iter_mut() {
        if KIND_PROPS.iter().any(|n| p.is(n)) {
            p.set_text(version, value);
        }
    }
    let wanted: &[&str] = match version {
        Version::V40 => &[KIND],
        _ => &[ABS_KIND, X_KIND],
    };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|n| card.first(n).is_none())
        .collect();
    let any = KIND_PROPS.iter().any(|n| card.first(n).is_some());
    for n in missing {
        if company || (!any && n == wanted[0]) {
            card.props.push(Property::new(n, value.into()));
        }
    }
    match (company, card.position(SHOW_AS)) {
        (true, Some(i)) => card.props[i].set_text(version, "COMPANY"),
        (false, Some(_)) => card.remove_all(SHOW_AS),
        (_, None) => {}
    }
}

fn write_names(card: &mut Card, plan: &Plan) {
    let version = plan.version;
    match plan.get(field::NAME) {
        Some(Some(n)) => {
            match card.position("FN") {
                Some(i) => {
                    card.props[i].remove_param(DERIVED);
                    card.props[i].set_text(version, &n);
                }
                None => {
                    let mut p = Property::new("FN", String::new());
                    p.set_text(version, &n);
                    card.props.push(p);
                }
            }
            if plan.is_company() {
                set_component(card, version, "ORG", 0, 1, &n);
            }
        }
        Some(None) => card.remove_all("FN"),
        None => {}
    }
    if let Some(s) = plan.get(field::SURNAME) {
        set_component(card, version, "N", 0, 5, s.as_deref().unwrap_or(""));
    }
    if let Some(g) = plan.get(field::FIRST_NAME) {
        set_component(card, version, "N", 1, 5, g.as_deref().unwrap_or(""));
    }
    if version != Version::V40 && card.first("N").is_none() {
        card.props.push(Property::new("N", ";;;;".into()));
    }
    // FN is required: make one up from the names when no name is given.
    if card.first("FN").is_none() {
        let made_up = [plan.after(field::FIRST_NAME), plan.after(field::SURNAME)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let made_up = if made_up.is_empty() {
            plan.after(field::EMAIL).unwrap_or_else(|| "-".into())
        } else {
            made_up
        };
        let mut p = Property::new("FN", String::new()).with_param(DERIVED, &["1"]);
        p.set_text(version, &made_up);
        card.props.push(p);
    }
}

/// A new property with `TYPE` values, as the version spells them (2.1: bare).
fn typed(name: &str, version: Version, types: &[&str]) -> Property {
    let p = Property::new(name, String::new());
    if version == Version::V21 {
        types
            .iter()
            .fold(p, |p, t| p.with_param(&t.to_uppercase(), &[]))
    } else {
        p.with_param("TYPE", types)
    }
}

fn write_address(card: &mut Card, plan: &Plan) {
    if !ADR_FIELDS
        .iter()
        .flatten()
        .any(|n| plan.changes.contains_key(*n))
    {
        return;
    }
    let i = match adr_index(card) {
        Some(i) => i,
        None => {
            let mut p = typed("ADR", plan.version, &["work"]);
            p.value = ";;;;;;".into();
            card.props.push(p);
            card.props.len() - 1
        }
    };
    let mut parts = card.props[i].components();
    parts.resize(7, String::new());
    street(&mut parts, plan);
    for (k, name) in ADR_FIELDS.iter().enumerate().skip(STREET + 1) {
        if let Some(v) = name.and_then(|n| plan.get(n)) {
            let v = v.unwrap_or_default();
            parts[k] = match *name {
                Some(field::COUNTRY_CODE) => country_name(&v),
                _ => v,
            };
        }
    }
    if parts.iter().all(|p| p.trim().is_empty()) {
        card.props.remove(i);
    } else {
        card.props[i].set_components(plan.version, &parts);
    }
}

/// RFC 6350 makes the ADR country a name: a code Tandem knows is written as the
/// country's English name (read back as the same code, R20); anything else as it is.
fn country_name(code: &str) -> String {
    match normalise::CountryCode::find(code) {
        Some(country) if !country.name().is_empty() => country.name().to_owned(),
        _ => code.to_owned(),
    }
}

/// Writes `address` and `address_2` into the street and extended address as the card
/// lays them out: a card that uses the extended address keeps `address_2` there; any
/// other gets it as the street's second line (RFC 6350 asks for multi-line streets),
/// so a multi-line street reads back the same and never drifts.
fn street(parts: &mut [String], plan: &Plan) {
    let (line1, line2) = (plan.get(field::ADDRESS), plan.get(field::ADDRESS_2));
    if line1.is_none() && line2.is_none() {
        return;
    }
    let (first, mut rest) = street_lines(&parts[STREET]);
    let first = line1.map_or(first, Option::unwrap_or_default);
    if let Some(v) = line2 {
        let v = v.unwrap_or_default();
        if parts[EXTENDED].trim().is_empty() {
            rest = vec![v];
        } else {
            parts[EXTENDED] = v;
            rest.clear();
        }
    }
    parts[STREET] = std::iter::once(first)
        .chain(rest)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
}

fn write_phone(card: &mut Card, version: Version, kind: TelKind, value: Option<String>) {
    let at = card
        .props
        .iter()
        .position(|p| p.is("TEL") && tel_kind(p) == Some(kind));
    match (at, value) {
        (Some(i), None) => {
            card.props.remove(i);
        }
        (Some(i), Some(v)) => set_phone(&mut card.props[i], version, &v),
        (None, Some(v)) => {
            let types: &[&str] = match kind {
                TelKind::Phone => &["work", "voice"],
                TelKind::Mobile => &["cell"],
                TelKind::Fax => &["work", "fax"],
            };
            let mut p = typed("TEL", version, types);
            p.set_text(version, &v);
            card.props.push(p);
        }
        (None, None) => {}
    }
}

/// A `tel:` URI stays one: the number with `-` for its spaces (RFC 3966 has no
/// spaces), and the URI's parameters (`;ext=`, ...) kept.
fn set_phone(p: &mut Property, version: Version, number: &str) {
    let current = p.uri();
    match tel_uri(&current) {
        Some(uri) => {
            let params = uri.find(';').map_or("", |i| &uri[i..]);
            let number = number.split_whitespace().collect::<Vec<_>>().join("-");
            p.set_uri(version, &format!("tel:{number}{params}"));
        }
        None => p.set_text(version, number),
    }
}

fn set_first(
    card: &mut Card,
    version: Version,
    prop: &str,
    value: Option<String>,
    set: fn(&mut Property, Version, &str),
) {
    match (card.position(prop), value) {
        (Some(i), Some(v)) => set(&mut card.props[i], version, &v),
        (Some(i), None) => {
            card.props.remove(i);
        }
        (None, Some(v)) => {
            let mut p = Property::new(prop, String::new());
            set(&mut p, version, &v);
            card.props.push(p);
        }
        (None, None) => {}
    }
}

fn write_categories(card: &mut Card, version: Version, value: &Value) {
    let list: Vec<String> = match value {
        Value::List(l) => l.to_vec(),
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
    set_only(card, "CATEGORIES", !list.is_empty(), |p| {
        p.set_list(version, &list)
    });
}

/// Makes `name` one property: the first one found (keeping its place, group and
/// parameters) or a new one, set by `set`; `None` removes them all.
fn set_only(card: &mut Card, name: &str, keep: bool, set: impl FnOnce(&mut Property)) {
    let at = card.position(name);
    let mut p = at
        .map(|i| card.props[i].clone())
        .unwrap_or_else(|| Property::new(name, String::new()));
    card.remove_all(name);
    if keep {
        set(&mut p);
        let i = at.unwrap_or(card.props.len()).min(card.props.len());
        card.props.insert(i, p);
    }
}

fn write_extras(card: &mut Card, plan: &Plan) {
    let version = plan.version;
    for (name, value) in plan.changes {
        let name = name.as_str();
        if !is_x_mapped(name) {
            continue;
        }
        let kept = match value {
            Value::Null => None,
            Value::Text(s) if s.trim().is_empty() => None,
            Value::List(l) if l.is_empty() => None,
            other => Some(other),
        };
        set_only(card, &x_property(name), kept.is_some(), |p| {
            let kind = match kept {
                Some(Value::Number(_)) => Some("number"),
                Some(Value::Bool(_)) => Some("bool"),
                Some(Value::Date(_)) => Some("date"),
                Some(Value::List(_)) => Some("list"),
                _ => None,
            };
            match kept {
                Some(Value::List(l)) => p.set_list(version, l),
                Some(v) => p.set_text(version, &v.to_cell()),
                None => {}
            }
            match kind {
                Some(t) => p.set_param(X_TYPE, &[t]),
                None => p.remove_param(X_TYPE),
            }
        });
    }
}

/// `REV` set to `now`, in the form the card already uses (`2024-05-01T12:00:00Z` or
/// `20240501T120000Z`); a new one in its version's form.
fn set_rev(card: &mut Card, version: Version, now: Timestamp) {
    let whole_seconds = Timestamp(now.0 - now.0.rem_euclid(1000));
    let extended = whole_seconds.to_string();
    let basic: String = extended
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    match card.position("REV") {
        Some(i) => {
            let old = card.props[i].text();
            let v = if old.contains('-') { extended } else { basic };
            card.props[i].set_uri(version, &v);
        }
        None => {
            let v = if version == Version::V40 {
                basic
            } else {
                extended
            };
            card.props.push(Property::new("REV", v));
        }
    }
}

/// Sets component `index` of the first structured property `prop` (made with `len`
/// empty components when missing), keeping the other components.
fn set_component(
    card: &mut Card,
    version: Version,
    prop: &str,
    index: usize,
    len: usize,
    value: &str,
) {
    let i = match card.position(prop) {
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
    card.props[i].set_components(version, &parts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_connector::testkit::same_value;

    fn changes(f: &Fields) -> Changes {
        f.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    #[test]
    fn r20_a_country_code_is_written_as_the_countrys_name_and_read_back_as_the_code() {
        let mut card = Card::parse(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Acme\r\nADR;TYPE=work:;;1 Main St;Town;;1000;Schweiz\r\nEND:VCARD\r\n",
        )
        .unwrap();
        apply(
            &mut card,
            &changes(&Fields::new().with(field::COUNTRY_CODE, "DE")),
        );
        let text = card.to_text();
        assert!(text.contains(";1000;Germany"), "{text}");
        assert_eq!(to_fields(&card).text(field::COUNTRY_CODE), Some("DE"));
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
            Some(&Value::list(vec!["VIP".into(), "CUST".into()]))
        );

        let mut updated = card.clone();
        let change = Fields::new()
            .with(field::CITY, "Antwerp")
            .with(field::MOBILE_PHONE, "+32 470 99")
            .with(field::VAT_REGISTRATION_NO, "BE0123")
            .with(
                field::BUSINESS_RELATIONS,
                Value::list(vec!["VIP".into(), "CUST".into(), "VEND".into()]),
            );
        apply(&mut updated, &changes(&change));
        let text = updated.to_text();
        let again = Card::parse(&text).unwrap();
        // Unmapped properties survive byte for byte.
        for line in [
            "PRODID:-//Apple Inc.//iPhone OS 17//EN",
            "PHOTO;ENCODING=b;TYPE=JPEG:AAAA",
            "item2.X-ABLabel:_$!<Work>!$_",
            "ORG:Acme;Sales",
            "UID:abc",
        ] {
            assert!(text.contains(&format!("\r\n{line}\r\n")), "{line}\n{text}");
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
        assert_eq!(f.text(field::PHONE), Some("+32 9 1"));
        let change = Fields::new()
            .with(field::NAME, "Acme Corp")
            .with(field::PHONE, "+32 9 2")
            .with(field::CONTACT_TYPE, "company");
        apply(&mut card, &changes(&change));
        let again = Card::parse(&card.to_text()).unwrap();
        assert_eq!(again.version(), Some("4.0"));
        assert_eq!(again.first("TEL").unwrap().value, "tel:+32-9-2");
        assert_eq!(again.first("ORG").unwrap().text(), "Acme Corp");
        assert!(again.first(ABS_KIND).is_none());
        assert!(again.first(X_KIND).is_none());
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

    const NOW: Timestamp = Timestamp(1_714_564_800_123); // 2024-05-01T12:00:00.123Z

    fn one(name: &str, value: impl Into<Value>) -> Changes {
        changes(&Fields::new().with(name, value))
    }

    #[test]
    fn group_cards_are_no_contacts() {
        for kind in [
            "KIND:group",
            "X-ADDRESSBOOKSERVER-KIND:group",
            "X-ADDRESSBOOKSERVER-KIND:GROUP",
        ] {
            let text = format!("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Team\r\n{kind}\r\nEND:VCARD\r\n");
            assert!(is_group(&Card::parse(&text).unwrap()), "{kind}");
        }
        let org = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Acme\r\nKIND:org\r\nEND:VCARD\r\n";
        assert!(!is_group(&Card::parse(org).unwrap()));
    }

    #[test]
    fn rev_is_set_when_the_card_changes_in_the_form_it_had() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:;;;;\r\nFN:A\r\nREV:2020-01-01T00:00:00Z\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        apply_at(&mut card, &one(field::NAME, "A"), NOW);
        assert_eq!(card.to_text(), text, "nothing changed, REV neither");
        apply_at(&mut card, &one(field::NAME, "B"), NOW);
        assert_eq!(card.first("REV").unwrap().value, "2024-05-01T12:00:00Z");
        let v4 = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:A\r\nEND:VCARD\r\n";
        let mut card = Card::parse(v4).unwrap();
        apply_at(&mut card, &one(field::EMAIL, "a@example.org"), NOW);
        assert_eq!(card.first("REV").unwrap().value, "20240501T120000Z");
        let basic = v4.replace("FN:A", "FN:A\r\nREV:20200101T000000Z");
        let mut card = Card::parse(&basic).unwrap();
        apply_at(&mut card, &one(field::EMAIL, "a@example.org"), NOW);
        assert_eq!(card.first("REV").unwrap().value, "20240501T120000Z");
    }

    #[test]
    fn company_cards_carry_the_kind_their_version_allows() {
        let company = Fields::new()
            .with(field::NAME, "Acme")
            .with(field::CONTACT_TYPE, "company");
        let card = new_card("u", &company);
        assert_eq!(card.first(ABS_KIND).unwrap().value, "org");
        // khard reads a 3.0 card's kind from X-KIND.
        assert_eq!(card.first(X_KIND).unwrap().value, "org");
        assert!(card.first(KIND).is_none());
        let mut v4 = Card::parse("BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Acme\r\nEND:VCARD\r\n").unwrap();
        apply_at(&mut v4, &changes(&company), NOW);
        assert_eq!(v4.first(KIND).unwrap().value, "org");
        assert!(v4.first(ABS_KIND).is_none() && v4.first(X_KIND).is_none());
        let person = new_card("p", &Fields::new().with(field::CONTACT_TYPE, "person"));
        assert_eq!(person.first(ABS_KIND).unwrap().value, "individual");
        assert!(person.first(X_KIND).is_none());
    }

    #[test]
    fn apples_show_as_company_is_a_company_and_follows_the_type() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:;;;;\r\nFN:Acme\r\nORG:Acme;\r\nX-ABShowAs:COMPANY\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        assert_eq!(to_fields(&card).text(field::CONTACT_TYPE), Some("company"));
        apply_at(&mut card, &one(field::CONTACT_TYPE, "person"), NOW);
        assert!(card.first(SHOW_AS).is_none());
        assert_eq!(to_fields(&card).text(field::CONTACT_TYPE), Some("person"));
    }

    #[test]
    fn a_multi_line_street_reads_as_two_lines_and_does_not_drift() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:A\r\nADR;TYPE=work:;;1 Main St\\nBuilding 2\\nFloor 3;Ghent;;9000;BE\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        let f = to_fields(&card);
        assert_eq!(f.text(field::ADDRESS), Some("1 Main St"));
        assert_eq!(f.text(field::ADDRESS_2), Some("Building 2, Floor 3"));
        // Written back as read (an ERP's round trip): nothing moves.
        let same = Fields::new()
            .with(field::ADDRESS, "1 Main St")
            .with(field::CITY, "Antwerp");
        apply_at(&mut card, &changes(&same), NOW);
        let adr = card.first("ADR").unwrap().components();
        assert_eq!(adr[1], "");
        assert_eq!(adr[2], "1 Main St\nBuilding 2\nFloor 3");
        apply_at(&mut card, &one(field::ADDRESS_2, "Building 4"), NOW);
        let adr = card.first("ADR").unwrap().components();
        assert_eq!(
            (adr[1].as_str(), adr[2].as_str()),
            ("", "1 Main St\nBuilding 4")
        );
        assert_eq!(to_fields(&card).text(field::ADDRESS_2), Some("Building 4"));
        // A card that uses the extended address keeps using it.
        let ext = text.replace(";;1 Main St\\nBuilding 2\\nFloor 3;", ";Suite 5;1 Main St;");
        let mut card = Card::parse(&ext).unwrap();
        assert_eq!(to_fields(&card).text(field::ADDRESS_2), Some("Suite 5"));
        apply_at(&mut card, &one(field::ADDRESS_2, "Suite 6"), NOW);
        let adr = card.first("ADR").unwrap().components();
        assert_eq!((adr[1].as_str(), adr[2].as_str()), ("Suite 6", "1 Main St"));
    }

    #[test]
    fn tel_uris_keep_their_extension_out_of_the_number_and_get_no_spaces() {
        let text = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:A\r\nTEL;VALUE=uri;TYPE=work:tel:+1-555-555-0100;ext=42\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        assert_eq!(to_fields(&card).text(field::PHONE), Some("+1 555 555 0100"));
        apply_at(&mut card, &one(field::PHONE, "+1 555  555 0199"), NOW);
        assert_eq!(
            card.first("TEL").unwrap().value,
            "tel:+1-555-555-0199;ext=42"
        );
        assert_eq!(to_fields(&card).text(field::PHONE), Some("+1 555 555 0199"));
    }

    #[test]
    fn url_values_are_uris_and_their_commas_are_not_escaped() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:A\r\nURL;type=WORK:http\\://example.com/old\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        assert_eq!(
            to_fields(&card).text(field::HOME_PAGE),
            Some("http://example.com/old")
        );
        apply_at(
            &mut card,
            &one(field::HOME_PAGE, "https://example.com/a,b;c"),
            NOW,
        );
        assert!(
            card.to_text()
                .contains("\r\nURL;type=WORK:https://example.com/a,b;c\r\n")
        );
        let f = to_fields(&Card::parse(&card.to_text()).unwrap());
        assert_eq!(f.text(field::HOME_PAGE), Some("https://example.com/a,b;c"));
    }

    #[test]
    fn names_of_properties_and_parameters_are_kept_as_spelled_on_update() {
        let mut card = Card::parse(APPLE).unwrap();
        apply_at(&mut card, &one(field::CITY, "Antwerp"), NOW);
        let text = card.to_text();
        assert!(
            text.contains("\r\nitem2.X-ABLabel:_$!<Work>!$_\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nitem2.ADR;type=WORK:PO 7;;1 Main St;Antwerp;;9000;BE\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("X-ABLABEL") && !text.contains("TYPE=WORK"),
            "{text}"
        );
    }

    #[test]
    fn a_2_1_card_is_updated_in_2_1() {
        let text = "BEGIN:VCARD\r\nVERSION:2.1\r\nN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:=4D=C3=BC=6C=6C=65=72;=4A=C3=BC=72=67=65=6E;;;\r\nFN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:=4A=C3=BC=72=67=65=6E=20=4D=C3=BC=6C=6C=65=72\r\nTEL;CELL:+49 170 1\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        let f = to_fields(&card);
        assert_eq!(f.text(field::NAME), Some("Jürgen Müller"));
        assert_eq!(f.text(field::FIRST_NAME), Some("Jürgen"));
        let change = Fields::new()
            .with(field::CITY, "Köln")
            .with(field::PHONE, "+49 221 2");
        apply_at(&mut card, &changes(&change), NOW);
        let written = card.to_text();
        assert!(
            written.starts_with(&text[..text.find("END:VCARD").unwrap()]),
            "{written}"
        );
        assert!(
            written.contains(
                "\r\nADR;WORK;ENCODING=QUOTED-PRINTABLE;CHARSET=UTF-8:;;;K=C3=B6ln;;;\r\n"
            ),
            "{written}"
        );
        assert!(
            written.contains("\r\nTEL;WORK;VOICE:+49 221 2\r\n"),
            "{written}"
        );
        let f = to_fields(&Card::parse(&written).unwrap());
        assert_eq!(f.text(field::CITY), Some("Köln"));
        assert_eq!(f.text(field::NAME), Some("Jürgen Müller"));
    }
}
