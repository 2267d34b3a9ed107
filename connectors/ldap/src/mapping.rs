//! Directory entries <-> contact fields.
//!
//! | field | entry |
//! |---|---|
//! | `contact_type` | the structural object class: `inetOrgPerson` is a person, `organization` or `organizationalUnit` a company |
//! | `name` | the naming attribute: `cn` of a person, `o` (or `ou`) of a company |
//! | `business_relations` | every value of its attribute (`businessCategory` by default) |
//! | every other mapped field | the first value of its attribute (see `attributes`) |
//!
//! A person needs `sn` (inetOrgPerson requires it): without a `surname`, `sn` is the
//! name. Values that are not text (numbers, dates, flags) are written as their text.

use std::collections::{BTreeMap, HashMap, HashSet};

use tandem_connector::{Changes, ConnectorError};
use tandem_model::{EntityKind, Fields, Record, Timestamp, Value, field};

use crate::settings::Settings;

/// The operational attributes every read asks for besides the mapped ones.
pub const ENTRY_UUID: &str = "entryUUID";
pub const ENTRY_CSN: &str = "entryCSN";
pub const MODIFY_TIMESTAMP: &str = "modifyTimestamp";
pub const OBJECT_CLASS: &str = "objectClass";

/// A person or a company entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Person,
    Company,
}

impl EntryType {
    pub fn label(self) -> &'static str {
        match self {
            EntryType::Person => "person",
            EntryType::Company => "company",
        }
    }
}

/// The attributes of one entry as read, names lower-cased.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub dn: String,
    pub attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    pub fn new(dn: String, attrs: HashMap<String, Vec<String>>) -> Entry {
        Entry {
            dn,
            attrs: attrs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }
    }

    pub fn values(&self, attribute: &str) -> &[String] {
        self.attrs
            .get(&attribute.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn first(&self, attribute: &str) -> Option<&str> {
        self.values(attribute).first().map(String::as_str)
    }

    pub fn entry_type(&self) -> Option<EntryType> {
        let classes = self.values(OBJECT_CLASS);
        let has = |name: &str| classes.iter().any(|c| c.eq_ignore_ascii_case(name));
        if has("inetOrgPerson") {
            Some(EntryType::Person)
        } else if has("organization") || has("organizationalUnit") {
            Some(EntryType::Company)
        } else {
            None
        }
    }

    /// The entry's id: its `entryUUID`, lower case.
    pub fn uuid(&self) -> Option<String> {
        self.first(ENTRY_UUID).map(|u| u.to_ascii_lowercase())
    }
}

/// How fields and attributes correspond, from the settings.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Field -> attribute.
    pub attributes: BTreeMap<String, String>,
    pub company_naming: &'static str,
    pub person_classes: Vec<String>,
    pub company_classes: Vec<String>,
    pub person_rdn: String,
    pub company_rdn: String,
    pub persons_dn: String,
    pub companies_dn: String,
}

impl Mapping {
    pub fn new(s: &Settings) -> Mapping {
        Mapping {
            attributes: s.attributes.clone(),
            company_naming: s.company_naming(),
            person_classes: s.person_classes.clone(),
            company_classes: s.company_classes.clone(),
            person_rdn: s.person_rdn.clone(),
            company_rdn: s.company_rdn.clone(),
            persons_dn: s.persons_dn.clone(),
            companies_dn: s.companies_dn.clone(),
        }
    }

    /// Every attribute a read asks for.
    pub fn read_attributes(&self) -> Vec<String> {
        let mut attrs: Vec<String> = [
            OBJECT_CLASS,
            ENTRY_UUID,
            ENTRY_CSN,
            MODIFY_TIMESTAMP,
            "cn",
            self.company_naming,
            "sn",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        for a in self.attributes.values() {
            if !attrs.iter().any(|x| x.eq_ignore_ascii_case(a)) {
                attrs.push(a.clone());
            }
        }
        attrs
    }

    pub fn naming(&self, t: EntryType) -> &str {
        match t {
            EntryType::Person => "cn",
            EntryType::Company => self.company_naming,
        }
    }

    fn rdn(&self, t: EntryType) -> &str {
        match t {
            EntryType::Person => &self.person_rdn,
            EntryType::Company => &self.company_rdn,
        }
    }

    /// The record of an entry; `None` for an entry that is neither person nor company
    /// or has no `entryUUID`.
    pub fn to_record(&self, entry: &Entry) -> Option<Record> {
        let t = entry.entry_type()?;
        let id = entry.uuid()?;
        let mut fields = Fields::new();
        fields.set(field::CONTACT_TYPE, Value::text(t.label()));
        if let Some(name) = entry.first(self.naming(t)) {
            fields.set(field::NAME, Value::text(name));
        }
        for (f, a) in &self.attributes {
            let values = entry.values(a);
            if values.is_empty() {
                continue;
            }
            if f == field::BUSINESS_RELATIONS {
                // LDAP values are a set: sorted, so that reads are stable.
                let mut codes = values.to_vec();
                codes.sort();
                fields.set(f.as_str(), Value::list(codes));
            } else {
                fields.set(f.as_str(), Value::text(values[0].as_str()));
            }
        }
        let mut record = Record::new(EntityKind::Contact, id, fields);
        record.version = entry.first(ENTRY_CSN).map(str::to_owned);
        record.modified_at = entry.first(MODIFY_TIMESTAMP).and_then(generalized_time);
        Some(record)
    }

    /// The attribute of `name`, refusing names that are neither mapped nor known.
    fn attribute_of(&self, id: Option<&str>, name: &str) -> Result<&str, ConnectorError> {
        if let Some(a) = self.attributes.get(name) {
            return Ok(a);
        }
        let canonical = field::COMMON.contains(&name) || field::CONTACT_ONLY.contains(&name);
        if canonical || name.starts_with("x_") {
            Err(ConnectorError::invalid(
                id,
                format!(
                    "field `{name}` has no LDAP attribute: map it in the connector's `attributes` (e.g. {name} = \"description\") or leave it out of the relation's `fields`"
                ),
            ))
        } else {
            Err(ConnectorError::invalid(
                id,
                format!("`{name}` is neither a contact field nor an extra `x_<name>`"),
            ))
        }
    }

    /// The DN and attributes of a new entry.
    pub fn new_entry(&self, fields: &Fields) -> Result<(String, NewAttributes), ConnectorError> {
        let text = |name: &str| fields.get(name).and_then(non_empty_text);
        let t = match text(field::CONTACT_TYPE).as_deref() {
            Some("company") => EntryType::Company,
            Some("person") => EntryType::Person,
            Some(other) => {
                return Err(ConnectorError::invalid(
                    None,
                    format!("contact_type `{other}` is neither company nor person"),
                ));
            }
            None if text(field::SURNAME).is_some() || text(field::FIRST_NAME).is_some() => {
                EntryType::Person
            }
            None => EntryType::Company,
        };
        let name = match text(field::NAME) {
            Some(n) => n,
            None => {
                let joined = [text(field::FIRST_NAME), text(field::SURNAME)]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                if joined.is_empty() {
                    return Err(ConnectorError::invalid(
                        None,
                        format!("a {} needs a `name` (its {})", t.label(), self.naming(t)),
                    ));
                }
                joined
            }
        };
        let mut attrs: Vec<(String, HashSet<String>)> = Vec::new();
        let classes = match t {
            EntryType::Person => &self.person_classes,
            EntryType::Company => &self.company_classes,
        };
        attrs.push((OBJECT_CLASS.into(), classes.iter().cloned().collect()));
        attrs.push((self.naming(t).into(), HashSet::from([name.clone()])));
        for (f, v) in fields.iter() {
            let f = f.as_str();
            if f == field::NAME || f == field::CONTACT_TYPE {
                continue;
            }
            let a = self.attribute_of(None, f)?;
            let values = values_of(v);
            if !values.is_empty() {
                attrs.push((a.to_owned(), values));
            }
        }
        if t == EntryType::Person && !attrs.iter().any(|(a, _)| a.eq_ignore_ascii_case("sn")) {
            attrs.push(("sn".into(), HashSet::from([name.clone()])));
        }
        let rdn = self.rdn(t);
        let value = attrs
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(rdn))
            .and_then(|(_, v)| {
                let mut v: Vec<&String> = v.iter().collect();
                v.sort();
                v.first().map(|s| (*s).clone())
            })
            .ok_or_else(|| {
                ConnectorError::invalid(
                    None,
                    format!("a new {} needs a value for `{rdn}`, its RDN", t.label()),
                )
            })?;
        let container = match t {
            EntryType::Person => &self.persons_dn,
            EntryType::Company => &self.companies_dn,
        };
        let dn = format!("{rdn}={},{container}", ldap3::dn_escape(value.as_str()));
        Ok((dn, attrs))
    }

    /// The modifications an update makes to `entry`, and the new RDN when the RDN's
    /// attribute changes.
    pub fn changes(
        &self,
        id: &str,
        entry: &Entry,
        changes: &Changes,
    ) -> Result<Update, ConnectorError> {
        let t = entry.entry_type().ok_or_else(|| {
            ConnectorError::invalid(Some(id), "the entry is neither a person nor a company")
        })?;
        let rdn = self.rdn(t).to_owned();
        let mut update = Update::default();
        let mut new_name = None;
        for (f, v) in changes {
            let f = f.as_str();
            let attribute = match f {
                field::CONTACT_TYPE => {
                    let wanted = non_empty_text(v);
                    if wanted.as_deref() != Some(t.label()) {
                        return Err(ConnectorError::invalid(
                            Some(id),
                            format!(
                                "this {} entry cannot become a {}: LDAP cannot change an entry's structural object class",
                                t.label(),
                                wanted.unwrap_or_else(|| "nothing".into())
                            ),
                        ));
                    }
                    continue;
                }
                field::NAME => {
                    let Some(name) = non_empty_text(v) else {
                        return Err(ConnectorError::invalid(
                            Some(id),
                            format!(
                                "`name` cannot be cleared: it is the entry's {}",
                                self.naming(t)
                            ),
                        ));
                    };
                    new_name = Some(name);
                    self.naming(t).to_owned()
                }
                _ => self.attribute_of(Some(id), f)?.to_owned(),
            };
            let values = values_of(v);
            if attribute.eq_ignore_ascii_case(&rdn) {
                let mut sorted: Vec<&String> = values.iter().collect();
                sorted.sort();
                let Some(value) = sorted.first() else {
                    return Err(ConnectorError::invalid(
                        Some(id),
                        format!("`{f}` cannot be cleared: `{rdn}` names the entry (its RDN)"),
                    ));
                };
                if !entry.values(&rdn).iter().any(|x| x == *value) || values.len() > 1 {
                    update.new_rdn = Some(format!("{rdn}={}", ldap3::dn_escape(value.as_str())));
                }
                // The rename adds the new value; the other values follow by modify.
                let others: HashSet<String> =
                    values.iter().filter(|x| x != value).cloned().collect();
                if !others.is_empty() {
                    update.mods.push((attribute, others, ModKind::Add));
                }
                continue;
            }
            if f == field::SURNAME && values.is_empty() && t == EntryType::Person {
                // inetOrgPerson requires sn: a person without surname keeps the name there.
                let name = new_name
                    .clone()
                    .or_else(|| changes.get(field::NAME).and_then(non_empty_text))
                    .or_else(|| entry.first("cn").map(str::to_owned))
                    .unwrap_or_default();
                update
                    .mods
                    .push((attribute, HashSet::from([name]), ModKind::Replace));
                continue;
            }
            update.mods.push((attribute, values, ModKind::Replace));
        }
        Ok(update)
    }
}

/// The attributes of a new entry with their values.
pub type NewAttributes = Vec<(String, HashSet<String>)>;

/// What [`Mapping::changes`] asks of the server.
#[derive(Debug, Default)]
pub struct Update {
    pub mods: Vec<(String, HashSet<String>, ModKind)>,
    /// `attr=value` when the entry must be renamed.
    pub new_rdn: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModKind {
    Replace,
    Add,
}

fn non_empty_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::List(items) => items.first().cloned().filter(|s| !s.trim().is_empty()),
        other => Some(other.to_cell()).filter(|s| !s.trim().is_empty()),
    }
}

/// The attribute values of a field value: every item of a list, the text of anything
/// else; none for `Null` or empty text.
fn values_of(v: &Value) -> HashSet<String> {
    match v {
        Value::Null => HashSet::new(),
        Value::List(items) => items.iter().filter(|s| !s.is_empty()).cloned().collect(),
        other => {
            let text = other.to_cell();
            if text.is_empty() {
                HashSet::new()
            } else {
                HashSet::from([text])
            }
        }
    }
}

/// A GeneralizedTime (`20240501120000Z`, `20240501120000.123456Z`) as a timestamp.
pub fn generalized_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if s.len() < 15 || !s.ends_with('Z') || !s.is_char_boundary(14) {
        return None;
    }
    let digits = &s[..14];
    let fraction = s[14..s.len() - 1].trim_start_matches(['.', ',']);
    let text = format!(
        "{}-{}-{}T{}:{}:{}{}Z",
        &digits[0..4],
        &digits[4..6],
        &digits[6..8],
        &digits[8..10],
        &digits[10..12],
        &digits[12..14],
        if fraction.is_empty() {
            String::new()
        } else {
            format!(".{fraction}")
        }
    );
    Timestamp::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_times_parse() {
        assert_eq!(
            generalized_time("20240501120000Z").unwrap().to_string(),
            "2024-05-01T12:00:00Z"
        );
        assert_eq!(
            generalized_time("20240501120000.250000Z")
                .unwrap()
                .to_string(),
            "2024-05-01T12:00:00.250Z"
        );
        assert!(generalized_time("2024").is_none());
    }
}
