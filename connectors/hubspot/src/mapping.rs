//! HubSpot's companies and contacts and the common model, field by field.
//!
//! | model field | companies | contacts |
//! |---|---|---|
//! | `contact_type` | `company` (always) | `person` (always) |
//! | `name` | name | firstname and lastname, joined (written: split at the last space unless `first_name`/`surname` come too) |
//! | `first_name`, `surname` | - | firstname, lastname |
//! | `address`, `address_2` | address, address2 | address, - |
//! | `city`, `county`, `post_code`, `country_code` | city, state, zip, country | same |
//! | `phone` | phone | phone |
//! | `mobile_phone`, `email`, `job_title` | - | mobilephone, email, jobtitle |
//! | `home_page` | website | website |
//! | `business_relations` | the relations property (default `tandem_relations`), codes joined by `;` | same |
//! | `company_id` | - | the associated company (`company-<id>`) |
//! | `x_domain`, `x_industry` | domain, industry | - |

use serde_json::{Map, Value as Json};
use tandem_model::{Fields, Value, field};

pub const COMPANIES: &str = "companies";
pub const CONTACTS: &str = "contacts";

/// The record id of HubSpot object `id` of type `object`: `company-<id>` or
/// `contact-<id>` (the two types number their records independently).
pub fn record_id(object: &str, id: &str) -> String {
    if object == COMPANIES {
        format!("company-{id}")
    } else {
        format!("contact-{id}")
    }
}

/// The object type and HubSpot id of a record id.
pub fn split_id(id: &str) -> Option<(&'static str, &str)> {
    match id.split_once('-')? {
        ("company", n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            Some((COMPANIES, n))
        }
        ("contact", n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            Some((CONTACTS, n))
        }
        _ => None,
    }
}

pub fn modified_property(object: &str) -> &'static str {
    if object == COMPANIES {
        "hs_lastmodifieddate"
    } else {
        "lastmodifieddate"
    }
}

/// (model field, HubSpot property) of each mapped plain property.
pub fn props(object: &str) -> &'static [(&'static str, &'static str)] {
    if object == COMPANIES {
        &[
            (field::NAME, "name"),
            (field::ADDRESS, "address"),
            (field::ADDRESS_2, "address2"),
            (field::CITY, "city"),
            (field::COUNTY, "state"),
            (field::POST_CODE, "zip"),
            (field::COUNTRY_CODE, "country"),
            (field::PHONE, "phone"),
            (field::HOME_PAGE, "website"),
            ("x_domain", "domain"),
            ("x_industry", "industry"),
        ]
    } else {
        &[
            (field::FIRST_NAME, "firstname"),
            (field::SURNAME, "lastname"),
            (field::EMAIL, "email"),
            (field::PHONE, "phone"),
            (field::MOBILE_PHONE, "mobilephone"),
            (field::JOB_TITLE, "jobtitle"),
            (field::ADDRESS, "address"),
            (field::CITY, "city"),
            (field::COUNTY, "state"),
            (field::POST_CODE, "zip"),
            (field::COUNTRY_CODE, "country"),
            (field::HOME_PAGE, "website"),
        ]
    }
}

/// Every property a read asks for.
pub fn read_properties(object: &str, relations: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = props(object).iter().map(|(_, p)| (*p).to_owned()).collect();
    out.extend(relations.map(str::to_owned));
    out
}

/// The fields of a HubSpot record (`properties` of its JSON); `company` is the
/// associated company's HubSpot id, for contacts.
pub fn fields_of(
    object: &str,
    properties: &Json,
    relations: Option<&str>,
    company: Option<&str>,
) -> Fields {
    let mut f = Fields::with_capacity(16);
    let text = |p: &str| properties[p].as_str().filter(|s| !s.is_empty());
    for (name, prop) in props(object) {
        if let Some(v) = text(prop) {
            f.set(*name, Value::text(v));
        }
    }
    if object == COMPANIES {
        f.set(field::CONTACT_TYPE, Value::text("company"));
    } else {
        f.set(field::CONTACT_TYPE, Value::text("person"));
        let name: Vec<&str> = [text("firstname"), text("lastname")]
            .into_iter()
            .flatten()
            .collect();
        if !name.is_empty() {
            f.set(field::NAME, Value::text(name.join(" ")));
        }
        if let Some(company) = company {
            f.set(
                field::COMPANY_ID,
                Value::text(record_id(COMPANIES, company)),
            );
        }
    }
    if let Some(codes) = relations.and_then(text) {
        let list: Vec<String> = codes
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        if !list.is_empty() {
            f.set(field::BUSINESS_RELATIONS, Value::list(list));
        }
    }
    f
}

/// What a write does besides the properties: the company to associate (`Some(None)`:
/// none any more).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Body {
    pub properties: Map<String, Json>,
    pub company: Option<Option<String>>,
}

/// The properties that write `changes` to a record of `object`, or why they cannot be
/// written. `all` holds the record's fields after the write where known (a create's
/// fields), to split a person's `name`.
pub fn body_of<'a>(
    object: &str,
    changes: impl IntoIterator<Item = (&'a str, &'a Value)>,
    relations: Option<&str>,
) -> Result<Body, String> {
    let changes: Vec<(&str, &Value)> = changes.into_iter().collect();
    let mut body = Body::default();
    let named = |n: &str| changes.iter().any(|(k, _)| *k == n);
    for (name, value) in &changes {
        let text = if value.is_empty() {
            String::new()
        } else {
            value.to_cell()
        };
        if let Some((_, prop)) = props(object).iter().find(|(f, _)| f == name) {
            body.properties
                .insert((*prop).to_owned(), Json::String(text));
            continue;
        }
        match *name {
            field::CONTACT_TYPE => {
                let want = if object == COMPANIES {
                    "company"
                } else {
                    "person"
                };
                if !value.is_empty() && !text.trim().eq_ignore_ascii_case(want) {
                    return Err(format!(
                        "a HubSpot {} cannot become a {}: make a new record instead",
                        if object == COMPANIES {
                            "company"
                        } else {
                            "contact"
                        },
                        text.trim()
                    ));
                }
            }
            field::BUSINESS_RELATIONS if relations.is_some() => {
                let codes = match value {
                    Value::List(l) => l.join(";"),
                    _ => text.replace(',', ";"),
                };
                body.properties.insert(
                    relations.unwrap_or_default().to_owned(),
                    Json::String(codes),
                );
            }
            field::NAME if object == CONTACTS => {
                if !named(field::FIRST_NAME) && !named(field::SURNAME) {
                    let (first, last) = match text.trim().rsplit_once(' ') {
                        Some((first, last)) => (first.trim(), last),
                        None => ("", text.trim()),
                    };
                    body.properties
                        .insert("firstname".into(), Json::String(first.into()));
                    body.properties
                        .insert("lastname".into(), Json::String(last.into()));
                }
            }
            field::COMPANY_ID if object == CONTACTS => {
                body.company = Some(if value.is_empty() {
                    None
                } else {
                    match split_id(&text) {
                        Some((COMPANIES, n)) => Some(n.to_owned()),
                        _ => return Err(format!("`company_id` {text} is no HubSpot company")),
                    }
                });
            }
            _ if value.is_empty() => {}
            other => {
                return Err(format!(
                    "HubSpot has no place for `{other}` on a {}; leave it out of the fields \
                     Tandem syncs",
                    if object == COMPANIES {
                        "company"
                    } else {
                        "contact"
                    }
                ));
            }
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_name_their_object_type() {
        assert_eq!(record_id(COMPANIES, "12"), "company-12");
        assert_eq!(split_id("contact-7"), Some((CONTACTS, "7")));
        assert_eq!(split_id("company-x"), None);
        assert_eq!(split_id("7"), None);
    }

    #[test]
    fn persons_read_with_their_company_and_write_names_split() {
        let f = fields_of(
            CONTACTS,
            &json!({"firstname": "Ann", "lastname": "Peeters", "email": "ann@acme.example",
                    "tandem_relations": "CUST;VEND", "jobtitle": ""}),
            Some("tandem_relations"),
            Some("5"),
        );
        assert_eq!(f.text(field::NAME), Some("Ann Peeters"));
        assert_eq!(f.text(field::COMPANY_ID), Some("company-5"));
        assert_eq!(f.text(field::CONTACT_TYPE), Some("person"));
        assert_eq!(f.get(field::JOB_TITLE), None);
        assert_eq!(
            f.get(field::BUSINESS_RELATIONS),
            Some(&Value::list(vec!["CUST".into(), "VEND".into()]))
        );
        let name = Value::text("Jan van Damme");
        let b = body_of(CONTACTS, [(field::NAME, &name)], None).unwrap();
        assert_eq!(b.properties["firstname"], "Jan van");
        assert_eq!(b.properties["lastname"], "Damme");
        let vat = Value::text("BE0400000001");
        let e = body_of(COMPANIES, [(field::VAT_REGISTRATION_NO, &vat)], None).unwrap_err();
        assert!(e.contains("no place for `vat_registration_no`"), "{e}");
        let person = Value::text("person");
        assert!(body_of(COMPANIES, [(field::CONTACT_TYPE, &person)], None).is_err());
    }
}
