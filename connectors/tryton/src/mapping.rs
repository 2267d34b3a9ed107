//! Between Tryton's records (as `read` returns them, with dotted child fields) and the
//! common model. Pure functions: no IO.
//!
//! | model field | Tryton |
//! |---|---|
//! | `name` | `party.name` |
//! | `address`, `address_2` | first and further lines of the first address's street |
//! | `city`, `post_code`, `country_code` | the first address's `city`, `postal_code`, `country.code`; a country name is written as its code (`Schweiz`: `CH`, R20) |
//! | `phone`, `mobile_phone`, `fax`, `email`, `home_page` | the first contact mechanism of type phone, mobile, fax, email, website |
//! | `vat_registration_no` | the first identifier of type `eu_vat` (or another `*_vat`), read with its country prefix; written compact (R20): `eu_vat` (new ones) with the prefix, `<cc>_vat` without it, as Tryton's own client stores them |
//! | `registration_no` | the first identifier without a type |
//! | `language_code` | `lang.code` |
//! | `x_code` | `party.code` (read only: Tryton's sequence sets it) |
//! | `iban` | the account number of type iban (compact) |
//! | `bank_account_no` | the account number of type other |
//! | `swift_code` | the bank's BIC |
//!
//! A bank account's name, address, communication and BIC are its bank's, which every
//! account at that bank shares: they are read, and never written by an update (a change
//! to them is refused, [`bank_owned_change`]); the account's own numbers are.
//!
//! Everything else Tryton holds (other addresses and contact mechanisms, categories,
//! other identifiers, owners, ...) is never written.

use std::collections::HashMap;

use serde_json::{Map, Value as Json, json};
use tandem_connector::Changes;
use tandem_model::normalise::vat;
use tandem_model::{CountryCode, EntityKind, Fields, Value, field};

use crate::cursor::{Micros, datetime_micros};

/// What `read` asks of a party.
pub const PARTY_FIELDS: &[&str] = &[
    "name",
    "code",
    "_timestamp",
    "create_date",
    "write_date",
    "categories",
    "lang.code",
    "addresses.street",
    "addresses.postal_code",
    "addresses.city",
    "addresses.country.code",
    "addresses.create_date",
    "addresses.write_date",
    "contact_mechanisms.type",
    "contact_mechanisms.value",
    "contact_mechanisms.create_date",
    "contact_mechanisms.write_date",
    "identifiers.type",
    "identifiers.code",
    "identifiers.create_date",
    "identifiers.write_date",
];

/// What `read` asks of a bank account: its numbers, its bank and the bank's party.
pub fn bank_account_fields() -> Vec<String> {
    let mut fields: Vec<String> = [
        "_timestamp",
        "create_date",
        "write_date",
        "bank",
        "bank.bic",
        "bank.create_date",
        "bank.write_date",
        "bank.party",
        "numbers.type",
        "numbers.number_compact",
        "numbers.number",
        "numbers.create_date",
        "numbers.write_date",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    fields.extend(
        PARTY_FIELDS
            .iter()
            .filter(|f| {
                !["code", "_timestamp", "categories"].contains(f) && !f.starts_with("identifiers")
            })
            .map(|f| format!("bank.party.{f}")),
    );
    fields
}

/// The party fields a customer or vendor maps.
pub const PARTY_MAPPED: &[&str] = &[
    field::NAME,
    field::ADDRESS,
    field::ADDRESS_2,
    field::CITY,
    field::POST_CODE,
    field::COUNTRY_CODE,
    field::PHONE,
    field::MOBILE_PHONE,
    field::FAX,
    field::EMAIL,
    field::HOME_PAGE,
    field::VAT_REGISTRATION_NO,
    field::REGISTRATION_NO,
    field::LANGUAGE_CODE,
];

/// The bank party fields a bank account maps.
pub const BANK_PARTY_MAPPED: &[&str] = &[
    field::NAME,
    field::ADDRESS,
    field::ADDRESS_2,
    field::CITY,
    field::POST_CODE,
    field::COUNTRY_CODE,
    field::PHONE,
    field::MOBILE_PHONE,
    field::FAX,
    field::EMAIL,
    field::HOME_PAGE,
    field::LANGUAGE_CODE,
];

pub const BANK_MAPPED: &[&str] = &[field::IBAN, field::SWIFT_CODE, field::BANK_ACCOUNT_NO];

/// The party code, read only.
pub const X_CODE: &str = "x_code";

const MECHANISMS: &[(&str, &str)] = &[
    (field::PHONE, "phone"),
    (field::MOBILE_PHONE, "mobile"),
    (field::FAX, "fax"),
    (field::EMAIL, "email"),
    (field::HOME_PAGE, "website"),
];

const ADDRESS_FIELDS: &[&str] = &[
    field::ADDRESS,
    field::ADDRESS_2,
    field::CITY,
    field::POST_CODE,
    field::COUNTRY_CODE,
];

fn text(value: &Json) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

fn children<'a>(raw: &'a Json, name: &str) -> &'a [Json] {
    raw.get(format!("{name}.").as_str())
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn id_of(raw: &Json) -> Option<i64> {
    raw.get("id").and_then(Json::as_i64)
}

fn first_address(raw: &Json) -> Option<&Json> {
    children(raw, "addresses").first()
}

fn mechanism<'a>(raw: &'a Json, kind: &str) -> Option<&'a Json> {
    children(raw, "contact_mechanisms")
        .iter()
        .find(|m| m.get("type").and_then(Json::as_str) == Some(kind))
}

fn is_vat_type(t: Option<&str>) -> bool {
    t.is_some_and(|t| t == "eu_vat" || t.ends_with("_vat"))
}

fn vat_identifier(raw: &Json) -> Option<&Json> {
    let ids = children(raw, "identifiers");
    ids.iter()
        .find(|i| i.get("type").and_then(Json::as_str) == Some("eu_vat"))
        .or_else(|| {
            ids.iter()
                .find(|i| is_vat_type(i.get("type").and_then(Json::as_str)))
        })
}

/// The country of a national VAT identifier type (`be_vat`: BE); `None` for `eu_vat`.
fn national_vat_country(kind: Option<&str>) -> Option<CountryCode> {
    let cc = kind?.strip_suffix("_vat")?;
    (cc != "eu").then(|| CountryCode::find(cc)).flatten()
}

/// The prefix a national VAT type's numbers go without in Tryton (`EL` for `gr_vat`;
/// outside the EU, the country code: `GB` for `gb_vat`).
fn national_prefix(country: CountryCode) -> String {
    country
        .vat_prefix()
        .map_or_else(|| country.to_string(), str::to_owned)
}

/// A VAT identifier's number as the model holds it: with its country prefix (a
/// national type's numbers are stored without it).
fn vat_of(identifier: &Json) -> Option<String> {
    let code = identifier.get("code").and_then(text)?;
    let kind = identifier.get("type").and_then(Json::as_str);
    match national_vat_country(kind) {
        Some(country) if code.starts_with(|c: char| c.is_ascii_digit()) => {
            Some(format!("{}{code}", national_prefix(country)))
        }
        _ => Some(code.to_owned()),
    }
}

/// The number written to a VAT identifier of type `kind`: compact (R20), with the EU
/// prefix of the party's `country` for `eu_vat`, without its own prefix for a national
/// type, as Tryton's client stores them (and searches them).
fn vat_for(kind: Option<&str>, number: &str, country: Option<CountryCode>) -> String {
    match national_vat_country(kind) {
        Some(national) => {
            let compact = vat::compact(number, None);
            match compact.strip_prefix(national_prefix(national).as_str()) {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest.to_owned(),
                _ => compact,
            }
        }
        None => vat::compact(number, country),
    }
}

fn registration_identifier(raw: &Json) -> Option<&Json> {
    children(raw, "identifiers").iter().find(|i| {
        i.get("type")
            .and_then(Json::as_str)
            .is_none_or(str::is_empty)
    })
}

/// Splits a street into its first line and the rest (joined with ", ").
fn split_street(street: &str) -> (String, String) {
    let mut lines = street.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_owned();
    let rest: Vec<&str> = lines.collect();
    (first, rest.join(", "))
}

/// The fields of a party: name, first address, communication, identifiers, language.
pub fn party_fields(raw: &Json, with_identifiers: bool) -> Fields {
    let mut fields = Fields::new();
    let mut set = |name: &'static str, value: Option<&str>| {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            fields.set(name, Value::text(v));
        }
    };
    set(field::NAME, raw.get("name").and_then(text));
    if let Some(address) = first_address(raw) {
        let (line1, rest) =
            split_street(address.get("street").and_then(Json::as_str).unwrap_or(""));
        set(field::ADDRESS, Some(&line1));
        set(field::ADDRESS_2, Some(&rest));
        set(field::CITY, address.get("city").and_then(text));
        set(field::POST_CODE, address.get("postal_code").and_then(text));
        set(
            field::COUNTRY_CODE,
            address
                .get("country.")
                .and_then(|c| c.get("code"))
                .and_then(text),
        );
    }
    for (name, kind) in MECHANISMS {
        set(
            name,
            mechanism(raw, kind)
                .and_then(|m| m.get("value"))
                .and_then(text),
        );
    }
    if with_identifiers {
        set(
            field::VAT_REGISTRATION_NO,
            vat_identifier(raw).and_then(vat_of).as_deref(),
        );
        set(
            field::REGISTRATION_NO,
            registration_identifier(raw)
                .and_then(|i| i.get("code"))
                .and_then(text),
        );
        set(X_CODE, raw.get("code").and_then(text));
    }
    set(
        field::LANGUAGE_CODE,
        raw.get("lang.").and_then(|l| l.get("code")).and_then(text),
    );
    fields
}

/// The fields of a bank account: its bank party's, its numbers, its bank's BIC.
pub fn bank_account_fields_of(raw: &Json) -> Fields {
    let bank = raw.get("bank.").filter(|b| b.is_object());
    let mut fields = bank
        .and_then(|b| b.get("party."))
        .filter(|p| p.is_object())
        .map(|p| party_fields(p, false))
        .unwrap_or_default();
    if let Some(bic) = bank.and_then(|b| b.get("bic")).and_then(text) {
        fields.set(field::SWIFT_CODE, Value::text(bic));
    }
    for number in children(raw, "numbers") {
        let (name, value) = match number.get("type").and_then(Json::as_str) {
            Some("iban") => (
                field::IBAN,
                number
                    .get("number_compact")
                    .and_then(text)
                    .or_else(|| number.get("number").and_then(text)),
            ),
            Some("other") => (field::BANK_ACCOUNT_NO, number.get("number").and_then(text)),
            _ => continue,
        };
        if let Some(v) = value
            && fields.get(name).is_none()
        {
            fields.set(name, Value::text(v));
        }
    }
    fields
}

/// The newest `create_date` or `write_date` anywhere in the record and its children.
pub fn newest(raw: &Json) -> Option<Micros> {
    match raw {
        Json::Object(map) => map
            .iter()
            .filter_map(|(k, v)| {
                if k == "create_date" || k == "write_date" {
                    datetime_micros(v)
                } else {
                    newest(v)
                }
            })
            .max(),
        Json::Array(items) => items.iter().filter_map(newest).max(),
        _ => None,
    }
}

/// A hash of everything read: the record's version.
pub fn hash(raw: &Json) -> u64 {
    xxhash_rust::xxh3::xxh3_64(raw.to_string().as_bytes())
}

/// The version of the first release: a hash of everything read. Still accepted on writes
/// (compared as a whole), so that links stored by it keep working.
fn legacy_version(raw: &Json) -> String {
    format!("{:016x}", hash(raw))
}

/// Marks a version made of one short hash per mapped field.
const VERSION_PREFIX: &str = "f1:";

/// The fields a version covers, in a fixed order.
fn versioned(kind: EntityKind) -> Vec<&'static str> {
    match kind {
        EntityKind::BankAccount => BANK_PARTY_MAPPED
            .iter()
            .chain(BANK_MAPPED)
            .copied()
            .collect(),
        _ => PARTY_MAPPED.iter().copied().chain([X_CODE]).collect(),
    }
}

fn field_hash(value: Option<&Value>) -> u32 {
    let cell = value.map(Value::to_cell).unwrap_or_default();
    // Truncation on purpose: 32 bits per field keep versions short.
    xxhash_rust::xxh3::xxh3_64(cell.trim().as_bytes()) as u32
}

/// The mapped fields of a record as `read` returned it.
pub fn fields_of(kind: EntityKind, raw: &Json) -> Fields {
    if kind == EntityKind::BankAccount {
        bank_account_fields_of(raw)
    } else {
        party_fields(raw, true)
    }
}

/// A record's version: `f1:` and 8 hex digits per mapped field (see [`versioned`]), so
/// that a write can tell which fields changed since the version was read.
pub fn version(kind: EntityKind, fields: &Fields) -> String {
    let mut out = String::from(VERSION_PREFIX);
    for name in versioned(kind) {
        out.push_str(&format!("{:08x}", field_hash(fields.get(name))));
    }
    out
}

/// The per-field hashes of a version, by field name (`None`: not a per-field version
/// of this kind).
fn field_hashes(kind: EntityKind, version: &str) -> Option<HashMap<&'static str, u32>> {
    let hex = version.strip_prefix(VERSION_PREFIX)?;
    let names = versioned(kind);
    if hex.len() != names.len() * 8 || !hex.is_ascii() {
        return None;
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Some((name, u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?)))
        .collect()
}

/// Whether two values of `name` are the same once Tryton has stored them (it compacts
/// identifiers and codes).
fn same_value(name: &str, a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    match name {
        field::VAT_REGISTRATION_NO => return vat::same(a, b),
        field::COUNTRY_CODE => return country_key(a) == country_key(b),
        _ => {}
    }
    if matches!(
        name,
        field::IBAN | field::SWIFT_CODE | field::LANGUAGE_CODE | field::EMAIL
    ) {
        let compact = |s: &str| {
            s.chars()
                .filter(|c| !c.is_whitespace())
                .flat_map(char::to_lowercase)
                .collect::<String>()
        };
        return compact(a) == compact(b);
    }
    a == b
}

/// Whether a write carrying `version` must be refused as a conflict, given the record
/// as it is now (`raw`, read just before writing).
///
/// An update (`changes`) conflicts only when a field it names changed since `version`
/// to something other than what it writes: another field changed meanwhile (by
/// Tryton's users, or by the write of the party's other role in the same run) is no
/// conflict, and Tryton keeps that change. A delete (`None`) conflicts when any mapped
/// field changed.
pub fn is_stale(kind: EntityKind, version: &str, raw: &Json, changes: Option<&Changes>) -> bool {
    let Some(then) = field_hashes(kind, version) else {
        return version != legacy_version(raw);
    };
    let now = fields_of(kind, raw);
    let changed = |name: &str| {
        then.get(name)
            .is_some_and(|h| *h != field_hash(now.get(name)))
    };
    match changes {
        None => then.keys().any(|name| changed(name)),
        Some(changes) => changes.iter().any(|(name, value)| {
            changed(name.as_str())
                && !same_value(
                    name.as_str(),
                    &now.get(name.as_str())
                        .map(Value::to_cell)
                        .unwrap_or_default(),
                    &value.to_cell(),
                )
        }),
    }
}

/// Why a write naming `name` cannot be done, if it cannot. Clearing a field Tryton has no
/// place for is a no-op, not an error.
pub fn refuse(kind: EntityKind, name: &str, value: &Value) -> Option<String> {
    let mapped = match kind {
        EntityKind::BankAccount => BANK_PARTY_MAPPED.contains(&name) || BANK_MAPPED.contains(&name),
        _ => PARTY_MAPPED.contains(&name),
    };
    if mapped {
        return None;
    }
    if name == X_CODE && kind != EntityKind::BankAccount {
        return Some(
            "`x_code` is the party code Tryton's sequence sets; it cannot be written".into(),
        );
    }
    if field::is_canonical_for(kind, name) {
        if value.is_empty() {
            return None;
        }
        return Some(format!(
            "Tryton has no place for `{name}` on a {kind}; leave it out of the relation's \
             `fields`"
        ));
    }
    if field::is_extra(name) {
        return Some(format!(
            "the Tryton connector knows no extra field `{name}`"
        ));
    }
    Some(format!("`{name}` is not a field of a {kind}"))
}

/// Why an update of a bank account cannot be made, if it cannot: it changes what is
/// its bank's (the bank party's name, address and communication, the BIC), which every
/// account at that bank shares. A value the bank already holds passes: there is
/// nothing to write.
pub fn bank_owned_change(raw: &Json, changes: &Changes) -> Option<String> {
    let bank = raw.get("bank.").filter(|b| b.is_object())?;
    let now = bank_account_fields_of(raw);
    let changed: Vec<String> = changes
        .iter()
        .filter(|(name, _)| {
            BANK_PARTY_MAPPED.contains(&name.as_str()) || name.as_str() == field::SWIFT_CODE
        })
        .filter(|(name, value)| {
            let held = now.value(name.as_str()).to_cell();
            !same_value(name.as_str(), &held, &value.to_cell())
        })
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    if changed.is_empty() {
        return None;
    }
    let bank_name = bank
        .get("party.")
        .and_then(|p| p.get("name"))
        .and_then(text)
        .unwrap_or("?");
    let (them, are) = match changed.len() {
        1 => ("it", "is"),
        _ => ("them", "are"),
    };
    Some(format!(
        "{} of a Tryton bank account {are} its bank's (`{bank_name}`), which every account \
         at that bank shares: Tandem reads {them} and never writes {them}; list {them} in the \
         relation's `preserve` (the bank's values then reach the contact), or leave {them} \
         out of its `fields`",
        changed.join(", ")
    ))
}

/// Ids of countries (by upper-case code) and languages (by lower-case code).
#[derive(Debug, Default, Clone)]
pub struct Lookups {
    pub countries: HashMap<String, i64>,
    pub langs: HashMap<String, i64>,
}

impl Lookups {
    /// The id of the country `text` stands for, a code or a name (R20). A name no table
    /// knows, or a country Tryton lacks, is refused with the reason, never dropped.
    fn country(&self, text: &str) -> Result<i64, String> {
        if let Some(id) = self.countries.get(&country_key(text)) {
            return Ok(*id);
        }
        let text = text.trim();
        Err(match CountryCode::find(text) {
            Some(code) if code.as_str() == text => {
                format!(
                    "Tryton has no country with the code `{code}` ({})",
                    code.name()
                )
            }
            Some(code) => format!(
                "Tryton has no country with the code `{code}` ({}), which `{text}` stands for",
                code.name()
            ),
            None => format!(
                "Tryton has no country `{text}`: it is neither an ISO 3166 code nor a country \
                 name Tandem knows"
            ),
        })
    }

    fn lang(&self, code: &str) -> Result<i64, String> {
        self.langs
            .get(&lang_key(code))
            .copied()
            .ok_or_else(|| format!("Tryton has no language with the code `{}`", code.trim()))
    }
}

/// Countries are looked up by code: the code of a name a table knows (`Schweiz`: `CH`),
/// else the text in upper case.
pub fn country_key(text: &str) -> String {
    match CountryCode::find(text) {
        Some(code) => code.to_string(),
        None => text.trim().to_uppercase(),
    }
}

/// Languages compare case-insensitively, `-` and `_` alike (`zh-CN` is `zh_CN`).
pub fn lang_key(code: &str) -> String {
    code.trim().to_lowercase().replace('-', "_")
}

fn change_text<'a>(changes: &'a Changes, name: &str) -> Option<Option<&'a str>> {
    changes
        .get(name)
        .map(|v| v.as_text().map(str::trim).filter(|s| !s.is_empty()))
}

fn value_text(v: &Value) -> Option<String> {
    if v.is_empty() {
        None
    } else {
        Some(v.to_cell().trim().to_owned()).filter(|s| !s.is_empty())
    }
}

/// The `write` (or, without `current`, `create`) values of a party for `changes`.
/// Children are written through the party, which bumps its `write_date`.
pub fn party_values(
    current: Option<&Json>,
    changes: &Changes,
    lookups: &Lookups,
    with_identifiers: bool,
) -> Result<Map<String, Json>, String> {
    let get = |name: &str| changes.get(name).and_then(value_text);
    let mut values = Map::new();
    if changes.contains_key(field::NAME) {
        values.insert("name".into(), json!(get(field::NAME)));
    }

    // The first address.
    if ADDRESS_FIELDS.iter().any(|f| changes.contains_key(*f)) {
        let address = current.and_then(first_address);
        let mut a = Map::new();
        if changes.contains_key(field::ADDRESS) || changes.contains_key(field::ADDRESS_2) {
            let (line1, rest) = split_street(
                address
                    .and_then(|a| a.get("street"))
                    .and_then(Json::as_str)
                    .unwrap_or(""),
            );
            let line1 = match change_text(changes, field::ADDRESS) {
                Some(v) => v.unwrap_or_default().to_owned(),
                None => line1,
            };
            let rest = match change_text(changes, field::ADDRESS_2) {
                Some(v) => v.unwrap_or_default().to_owned(),
                None => rest,
            };
            let street = [line1, rest]
                .into_iter()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            a.insert("street_unstructured".into(), json!(street));
        }
        if changes.contains_key(field::CITY) {
            a.insert("city".into(), json!(get(field::CITY)));
        }
        if changes.contains_key(field::POST_CODE) {
            a.insert("postal_code".into(), json!(get(field::POST_CODE)));
        }
        if changes.contains_key(field::COUNTRY_CODE) {
            let country = match get(field::COUNTRY_CODE) {
                Some(code) => json!(lookups.country(&code)?),
                None => Json::Null,
            };
            a.insert("country".into(), country);
        }
        match address.and_then(id_of) {
            Some(id) => {
                values.insert("addresses".into(), json!([["write", [id], a]]));
            }
            None if a.values().any(|v| !v.is_null() && v != "") => {
                values.insert("addresses".into(), json!([["create", [a]]]));
            }
            None => {}
        }
    }

    // Contact mechanisms.
    let mut ops = Vec::new();
    let mut creates = Vec::new();
    let mut deletes = Vec::new();
    for (name, kind) in MECHANISMS {
        if !changes.contains_key(*name) {
            continue;
        }
        let existing = current.and_then(|c| mechanism(c, kind)).and_then(id_of);
        match (existing, get(name)) {
            (Some(id), Some(v)) => ops.push(json!(["write", [id], {"value": v}])),
            (Some(id), None) => deletes.push(id),
            (None, Some(v)) => creates.push(json!({"type": kind, "value": v})),
            (None, None) => {}
        }
    }
    push_child_ops(&mut values, "contact_mechanisms", ops, creates, deletes);

    if with_identifiers {
        identifier_ops(&mut values, current, changes);
    }

    if changes.contains_key(field::LANGUAGE_CODE) {
        let lang = match get(field::LANGUAGE_CODE) {
            Some(code) => json!(lookups.lang(&code)?),
            None => Json::Null,
        };
        values.insert("lang".into(), lang);
    }
    Ok(values)
}

/// The `identifiers` operations for `changes` (VAT and registration numbers); VAT
/// numbers are written compact ([`vat_for`]).
fn identifier_ops(values: &mut Map<String, Json>, current: Option<&Json>, changes: &Changes) {
    let mut ops = Vec::new();
    let mut creates = Vec::new();
    let mut deletes = Vec::new();
    for name in [field::VAT_REGISTRATION_NO, field::REGISTRATION_NO] {
        let Some(value) = changes.get(name) else {
            continue;
        };
        let vat = name == field::VAT_REGISTRATION_NO;
        let existing = current.and_then(|c| match vat {
            true => vat_identifier(c),
            false => registration_identifier(c),
        });
        let kind = match (vat, existing) {
            (true, Some(e)) => e.get("type").and_then(Json::as_str),
            (true, None) => Some("eu_vat"),
            (false, _) => None,
        };
        let code = value_text(value).map(|v| match vat {
            true => vat_for(kind, &v, party_country(current, changes)),
            false => v,
        });
        match (existing.and_then(id_of), code) {
            (Some(id), Some(v)) => ops.push(json!(["write", [id], {"code": v}])),
            (Some(id), None) => deletes.push(id),
            (None, Some(v)) => creates.push(json!({"type": kind, "code": v})),
            (None, None) => {}
        }
    }
    push_child_ops(values, "identifiers", ops, creates, deletes);
}

/// The party's country after `changes`: the one they set, else its first address's.
fn party_country(current: Option<&Json>, changes: &Changes) -> Option<CountryCode> {
    match change_text(changes, field::COUNTRY_CODE) {
        Some(set) => set.and_then(CountryCode::find),
        None => current
            .and_then(first_address)
            .and_then(|a| a.get("country."))
            .and_then(|c| c.get("code"))
            .and_then(text)
            .and_then(CountryCode::find),
    }
}

fn push_child_ops(
    values: &mut Map<String, Json>,
    name: &str,
    mut ops: Vec<Json>,
    creates: Vec<Json>,
    deletes: Vec<i64>,
) {
    if !creates.is_empty() {
        ops.push(json!(["create", creates]));
    }
    if !deletes.is_empty() {
        ops.push(json!(["delete", deletes]));
    }
    if !ops.is_empty() {
        values.insert(name.into(), Json::Array(ops));
    }
}

/// The `numbers` operations of a bank account for `changes` (iban, bank_account_no).
pub fn number_ops(current: Option<&Json>, changes: &Changes) -> Option<Json> {
    let mut ops = Vec::new();
    let mut creates = Vec::new();
    let mut deletes = Vec::new();
    for (name, kind) in [(field::IBAN, "iban"), (field::BANK_ACCOUNT_NO, "other")] {
        let Some(value) = changes.get(name) else {
            continue;
        };
        let existing = current
            .map(|c| children(c, "numbers"))
            .unwrap_or(&[])
            .iter()
            .find(|n| n.get("type").and_then(Json::as_str) == Some(kind))
            .and_then(id_of);
        match (existing, value_text(value)) {
            (Some(id), Some(v)) => ops.push(json!(["write", [id], {"number": v}])),
            (Some(id), None) => deletes.push(id),
            (None, Some(v)) => creates.push(json!({"type": kind, "number": v})),
            (None, None) => {}
        }
    }
    if !creates.is_empty() {
        ops.push(json!(["create", creates]));
    }
    if !deletes.is_empty() {
        ops.push(json!(["delete", deletes]));
    }
    (!ops.is_empty()).then_some(Json::Array(ops))
}

/// The country and language codes `changes` name, to look up before building values.
pub fn codes(changes: &Changes) -> (Vec<String>, Vec<String>) {
    let country = changes
        .get(field::COUNTRY_CODE)
        .and_then(value_text)
        .map(|c| country_key(&c));
    let lang = changes.get(field::LANGUAGE_CODE).and_then(value_text);
    (country.into_iter().collect(), lang.into_iter().collect())
}

/// Fields as a change set (for creates).
pub fn as_changes(fields: &Fields) -> Changes {
    fields
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::FieldName;

    #[test]
    fn versions_tell_which_fields_changed() {
        let kind = EntityKind::Customer;
        let then = raw_party();
        let version = version(kind, &fields_of(kind, &then));
        assert!(version.starts_with("f1:"), "{version}");
        assert_eq!(version, super::version(kind, &fields_of(kind, &then)));
        let mut now = then.clone();
        now["name"] = json!("Acme Renamed");
        let set = |name: &'static str, value: &str| {
            let mut c = Changes::new();
            c.insert(FieldName::new(name), Value::text(value));
            c
        };
        // Unchanged record: nothing is stale.
        assert!(!is_stale(
            kind,
            &version,
            &then,
            Some(&set(field::NAME, "X"))
        ));
        assert!(!is_stale(kind, &version, &then, None));
        // Another field changed: an update of the city is no conflict, a delete is.
        assert!(!is_stale(
            kind,
            &version,
            &now,
            Some(&set(field::CITY, "Ghent"))
        ));
        assert!(is_stale(kind, &version, &now, None));
        // The named field changed: a conflict, unless to what is being written.
        assert!(is_stale(
            kind,
            &version,
            &now,
            Some(&set(field::NAME, "Other"))
        ));
        assert!(!is_stale(
            kind,
            &version,
            &now,
            Some(&set(field::NAME, "Acme Renamed"))
        ));
        // Versions of the first release are compared as a whole; garbage conflicts.
        assert!(!is_stale(kind, &legacy_version(&then), &then, None));
        assert!(is_stale(kind, &legacy_version(&then), &now, None));
        assert!(is_stale(kind, "f1:zz", &then, None));
        assert!(is_stale(EntityKind::BankAccount, &version, &then, None));
    }

    fn raw_party() -> Json {
        json!({
            "id": 7, "name": "Acme", "code": "P7", "_timestamp": "1.5",
            "create_date": {"__class__": "datetime", "year": 2024, "month": 5, "day": 1,
                            "hour": 12, "minute": 0, "second": 0, "microsecond": 0},
            "write_date": null, "categories": [1, 2],
            "lang.": {"id": 3, "code": "fr"},
            "addresses.": [
                {"id": 11, "street": "1 Main St\nFloor 2\nRoom 3", "postal_code": "1000",
                 "city": "Brussels", "country.": {"id": 2, "code": "BE"},
                 "create_date": null,
                 "write_date": {"__class__": "datetime", "year": 2024, "month": 6, "day": 1,
                                "hour": 8, "minute": 0, "second": 0, "microsecond": 5}},
                {"id": 12, "street": "Elsewhere", "postal_code": "2000", "city": "Antwerp",
                 "country.": null}
            ],
            "contact_mechanisms.": [
                {"id": 21, "type": "skype", "value": "acme.sk"},
                {"id": 22, "type": "phone", "value": "+32 9 100 0001"},
                {"id": 23, "type": "phone", "value": "+32 9 100 0002"},
                {"id": 24, "type": "email", "value": "info@acme.example"},
                {"id": 25, "type": "website", "value": "https://acme.example"}
            ],
            "identifiers.": [
                {"id": 31, "type": "be_vat", "code": "BE0403019261"},
                {"id": 32, "type": null, "code": "REG 1"}
            ]
        })
    }

    fn changes(pairs: &[(&str, Value)]) -> Changes {
        pairs
            .iter()
            .map(|(n, v)| (FieldName::new(n), v.clone()))
            .collect()
    }

    fn lookups() -> Lookups {
        Lookups {
            countries: [
                ("BE".to_owned(), 2),
                ("NL".to_owned(), 5),
                ("CH".to_owned(), 6),
            ]
            .into(),
            langs: [("fr".to_owned(), 3), ("nl".to_owned(), 4)].into(),
        }
    }

    #[test]
    fn a_party_maps_to_the_common_model() {
        let f = party_fields(&raw_party(), true);
        assert_eq!(f.text(field::NAME), Some("Acme"));
        assert_eq!(f.text(field::ADDRESS), Some("1 Main St"));
        assert_eq!(f.text(field::ADDRESS_2), Some("Floor 2, Room 3"));
        assert_eq!(f.text(field::CITY), Some("Brussels"));
        assert_eq!(f.text(field::POST_CODE), Some("1000"));
        assert_eq!(f.text(field::COUNTRY_CODE), Some("BE"));
        assert_eq!(
            f.text(field::PHONE),
            Some("+32 9 100 0001"),
            "the first phone"
        );
        assert_eq!(f.text(field::EMAIL), Some("info@acme.example"));
        assert_eq!(f.text(field::HOME_PAGE), Some("https://acme.example"));
        assert_eq!(f.text(field::MOBILE_PHONE), None);
        assert_eq!(f.text(field::VAT_REGISTRATION_NO), Some("BE0403019261"));
        assert_eq!(f.text(field::REGISTRATION_NO), Some("REG 1"));
        assert_eq!(f.text(field::LANGUAGE_CODE), Some("fr"));
        assert_eq!(f.text(X_CODE), Some("P7"));
        assert_eq!(
            newest(&raw_party()),
            datetime_micros(&raw_party()["addresses."][0]["write_date"]),
            "the newest timestamp includes the children's"
        );
    }

    #[test]
    fn updates_touch_only_what_changed_and_keep_unmapped_children() {
        let c = changes(&[
            (field::ADDRESS_2, Value::Null),
            (field::COUNTRY_CODE, Value::text("nl")),
            (field::PHONE, Value::text("+31 20 000")),
            (field::EMAIL, Value::Null),
            (field::FAX, Value::text("+32 9 300")),
            (field::VAT_REGISTRATION_NO, Value::text("BE0403019262")),
            (field::LANGUAGE_CODE, Value::text("NL")),
        ]);
        let values = party_values(Some(&raw_party()), &c, &lookups(), true).unwrap();
        assert_eq!(
            Json::Object(values),
            json!({
                "addresses": [["write", [11], {"street_unstructured": "1 Main St", "country": 5}]],
                "contact_mechanisms": [
                    ["write", [22], {"value": "+31 20 000"}],
                    ["create", [{"type": "fax", "value": "+32 9 300"}]],
                    ["delete", [24]]
                ],
                // A `be_vat` number as Tryton's client stores it: compact, no prefix.
                "identifiers": [["write", [31], {"code": "0403019262"}]],
                "lang": 4
            })
        );
    }

    #[test]
    fn creates_build_children() {
        let c = changes(&[
            (field::NAME, Value::text("New")),
            (field::CITY, Value::text("Ghent")),
            (field::EMAIL, Value::text("new@example.com")),
            (field::REGISTRATION_NO, Value::text("R9")),
        ]);
        let values = party_values(None, &c, &lookups(), true).unwrap();
        assert_eq!(
            Json::Object(values),
            json!({
                "name": "New",
                "addresses": [["create", [{"city": "Ghent"}]]],
                "contact_mechanisms": [["create", [{"type": "email", "value": "new@example.com"}]]],
                "identifiers": [["create", [{"type": null, "code": "R9"}]]]
            })
        );
        let bad = changes(&[(field::COUNTRY_CODE, Value::text("XX"))]);
        assert!(
            party_values(None, &bad, &lookups(), true)
                .unwrap_err()
                .contains("`XX`")
        );
    }

    #[test]
    fn unmapped_fields_are_refused_unless_cleared() {
        let k = EntityKind::Customer;
        assert!(refuse(k, field::NAME, &Value::text("a")).is_none());
        assert!(refuse(k, field::COUNTY, &Value::Null).is_none());
        assert!(refuse(k, field::COUNTY, &Value::text("Kent")).is_some());
        assert!(refuse(k, X_CODE, &Value::text("P1")).is_some());
        assert!(refuse(k, "x_other", &Value::text("a")).is_some());
        assert!(refuse(k, "nonsense", &Value::Null).is_some());
        assert!(refuse(EntityKind::BankAccount, field::IBAN, &Value::text("BE")).is_none());
        assert!(
            refuse(
                EntityKind::BankAccount,
                field::VAT_REGISTRATION_NO,
                &Value::text("BE")
            )
            .is_some()
        );
    }

    #[test]
    fn a_bank_account_maps_its_bank_party() {
        let raw = json!({
            "id": 4, "_timestamp": "1",
            "bank.": {"id": 1, "bic": "GEBABEBB", "party.": raw_party()},
            "numbers.": [
                {"id": 1, "type": "iban", "number": "BE71 0961 2345 6769",
                 "number_compact": "BE71096123456769"},
                {"id": 2, "type": "other", "number": "123-456", "number_compact": null}
            ]
        });
        let f = bank_account_fields_of(&raw);
        assert_eq!(f.text(field::NAME), Some("Acme"));
        assert_eq!(f.text(field::IBAN), Some("BE71096123456769"));
        assert_eq!(f.text(field::BANK_ACCOUNT_NO), Some("123-456"));
        assert_eq!(f.text(field::SWIFT_CODE), Some("GEBABEBB"));
        assert_eq!(f.text(field::VAT_REGISTRATION_NO), None);
        let ops = number_ops(
            Some(&raw),
            &changes(&[
                (field::IBAN, Value::text("BE71096123456769")),
                (field::BANK_ACCOUNT_NO, Value::Null),
            ]),
        );
        assert_eq!(
            ops,
            Some(json!([["write", [1], {"number": "BE71096123456769"}], ["delete", [2]]]))
        );
    }

    fn vat_written(current: Option<&Json>, pairs: &[(&str, Value)]) -> Json {
        let values = party_values(current, &changes(pairs), &lookups(), true).unwrap();
        values["identifiers"].clone()
    }

    #[test]
    fn r20_vat_numbers_are_written_compact() {
        let vat = |v: &str| (field::VAT_REGISTRATION_NO, Value::text(v));
        assert_eq!(
            vat_written(None, &[vat("nl 0044 95445 b01")]),
            json!([["create", [{"type": "eu_vat", "code": "NL004495445B01"}]]])
        );
        // A number without its prefix takes the party's country's.
        assert_eq!(
            vat_written(
                None,
                &[
                    vat("0044.95445.B01"),
                    (field::COUNTRY_CODE, Value::text("Netherlands"))
                ]
            ),
            json!([["create", [{"type": "eu_vat", "code": "NL004495445B01"}]]])
        );
        let mut party = raw_party();
        party["identifiers."][0]["type"] = json!("eu_vat");
        assert_eq!(
            vat_written(Some(&party), &[vat("be 0403.019.262")]),
            json!([["write", [31], {"code": "BE0403019262"}]])
        );
        // The party's address is in Belgium.
        assert_eq!(
            vat_written(Some(&party), &[vat("0403 019 262")]),
            json!([["write", [31], {"code": "BE0403019262"}]])
        );
    }

    #[test]
    fn r20_national_vat_numbers_are_read_with_their_prefix() {
        let mut party = raw_party();
        party["identifiers."][0]["code"] = json!("0403019261");
        let f = party_fields(&party, true);
        assert_eq!(f.text(field::VAT_REGISTRATION_NO), Some("BE0403019261"));
        // Written back as Tryton keeps it, and read the same: no change.
        assert_eq!(vat_for(Some("be_vat"), "BE0403019261", None), "0403019261");
        assert_eq!(vat_for(Some("gr_vat"), "EL 094259216", None), "094259216");
    }

    #[test]
    fn r20_country_names_are_written_as_codes() {
        let country = |v: &str| changes(&[(field::COUNTRY_CODE, Value::text(v))]);
        for name in ["Schweiz", "Switzerland", "ch", "Suisse"] {
            let values = party_values(None, &country(name), &lookups(), true).unwrap();
            assert_eq!(
                values["addresses"],
                json!([["create", [{"country": 6}]]]),
                "{name}"
            );
        }
        assert_eq!(codes(&country("Schweiz")).0, vec!["CH".to_string()]);
    }

    #[test]
    fn r20_a_country_tryton_cannot_take_is_refused_with_the_reason() {
        let refused = |v: &str| {
            let c = changes(&[(field::COUNTRY_CODE, Value::text(v))]);
            party_values(None, &c, &lookups(), true).unwrap_err()
        };
        let e = refused("Atlantis");
        assert!(
            e.contains("`Atlantis`") && e.contains("neither an ISO 3166 code"),
            "{e}"
        );
        let e = refused("Japan");
        assert!(e.contains("`JP` (Japan), which `Japan` stands for"), "{e}");
        let e = refused("JP");
        assert!(e.contains("the code `JP` (Japan)"), "{e}");
    }

    #[test]
    fn a_change_to_what_is_the_banks_is_refused_unless_the_bank_holds_it() {
        let raw = json!({
            "id": 4, "_timestamp": "1",
            "bank.": {"id": 1, "bic": "GEBABEBB", "party.": raw_party()},
            "numbers.": [{"id": 1, "type": "iban", "number": "BE71096123456769"}]
        });
        let e = bank_owned_change(
            &raw,
            &changes(&[
                (field::NAME, Value::text("BCG Geneva desk")),
                (field::CITY, Value::text("Lausanne")),
                (field::IBAN, Value::text("BE71096123456769")),
            ]),
        )
        .unwrap();
        assert!(
            e.starts_with("`city`, `name` of a Tryton bank account are its bank's (`Acme`)"),
            "{e}"
        );
        assert!(e.contains("`preserve`"), "{e}");
        assert!(
            bank_owned_change(
                &raw,
                &changes(&[
                    (field::NAME, Value::text("Acme")),
                    (field::COUNTRY_CODE, Value::text("Belgium")),
                    (field::IBAN, Value::text("DE89370400440532013000")),
                ]),
            )
            .is_none()
        );
        let e = bank_owned_change(&raw, &changes(&[(field::SWIFT_CODE, Value::text("X"))]));
        assert!(e.is_some_and(|e| e.contains("`swift_code`")));
    }
}
