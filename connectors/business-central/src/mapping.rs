//! Business Central's API v2.0 entities and the common model, field by field.
//!
//! | model field | customers | vendors | contacts | bankAccounts |
//! |---|---|---|---|---|
//! | `name` | displayName | displayName | displayName | displayName |
//! | `address`, `address_2` | addressLine1, addressLine2 | same | same | - |
//! | `city`, `county`, `post_code`, `country_code` | city, state, postalCode, country | same | same | - |
//! | `phone` | phoneNumber | phoneNumber | phoneNumber | - |
//! | `mobile_phone` | - | - | mobilePhoneNumber | - |
//! | `email`, `home_page` | email, website | same | same | - |
//! | `vat_registration_no` | taxRegistrationNumber | same | same | - |
//! | `currency_code` | currencyCode | currencyCode | - | currencyCode |
//! | `salesperson_code` | salespersonCode | - | - | - |
//! | `contact_type` | - | - | type (Company/Person) | - |
//! | `company_id` | - | - | companyNumber, as the company contact's id | - |
//! | `job_title` | - | - | jobTitle | - |
//! | `iban`, `bank_account_no` | - | - | - | iban, bankAccountNumber |
//! | `x_number` | number | number | number | number |
//! | `x_type` | type | - | - | - |
//! | `x_payment_terms_id`, `x_payment_method_id` | paymentTermsId, paymentMethodId | same | - | - |
//! | `x_shipment_method_id` | shipmentMethodId | - | - | - |
//! | `x_blocked` | blocked | blocked | - | blocked (true/false) |
//!
//! Business Central returns every property, empty text as `""` and unset references
//! as the nil GUID: both read as an absent field, and clearing a field writes them.
//! A field Business Central has no place for is refused with the reason, unless the
//! write clears it (there is nothing to clear).

use serde_json::{Map, Value as Json};
use tandem_model::{EntityKind, Fields, Timestamp, Value, field};

pub const NIL_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// How a property's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    /// A reference to another table, empty as the nil GUID.
    Guid,
    Bool,
    /// An option whose empty value is a blank (`" "`).
    BlankEnum,
    /// `Company` or `Person`, `company` or `person` in the model.
    ContactType,
    /// An option without an empty value (a customer's `type`): it cannot be cleared.
    Choice,
}

#[derive(Debug, Clone, Copy)]
pub struct Prop {
    pub field: &'static str,
    pub prop: &'static str,
    pub ty: Ty,
}

const fn p(field: &'static str, prop: &'static str, ty: Ty) -> Prop {
    Prop { field, prop, ty }
}

const ADDRESS: [Prop; 11] = [
    p(field::NAME, "displayName", Ty::Text),
    p(field::ADDRESS, "addressLine1", Ty::Text),
    p(field::ADDRESS_2, "addressLine2", Ty::Text),
    p(field::CITY, "city", Ty::Text),
    p(field::COUNTY, "state", Ty::Text),
    p(field::COUNTRY_CODE, "country", Ty::Text),
    p(field::POST_CODE, "postalCode", Ty::Text),
    p(field::PHONE, "phoneNumber", Ty::Text),
    p(field::EMAIL, "email", Ty::Text),
    p(field::HOME_PAGE, "website", Ty::Text),
    p(
        field::VAT_REGISTRATION_NO,
        "taxRegistrationNumber",
        Ty::Text,
    ),
];

/// The property `company_id` stands for on contacts (a number, not an id).
pub const COMPANY_NUMBER: &str = "companyNumber";

/// Every mapped property of `kind`.
pub fn props(kind: EntityKind) -> Vec<Prop> {
    let mut out = vec![p("x_number", "number", Ty::Text)];
    match kind {
        EntityKind::Customer => {
            out.extend(ADDRESS);
            out.extend([
                p(field::CURRENCY_CODE, "currencyCode", Ty::Text),
                p(field::SALESPERSON_CODE, "salespersonCode", Ty::Text),
                p("x_type", "type", Ty::Choice),
                p("x_payment_terms_id", "paymentTermsId", Ty::Guid),
                p("x_payment_method_id", "paymentMethodId", Ty::Guid),
                p("x_shipment_method_id", "shipmentMethodId", Ty::Guid),
                p("x_blocked", "blocked", Ty::BlankEnum),
            ]);
        }
        EntityKind::Vendor => {
            out.extend(ADDRESS);
            out.extend([
                p(field::CURRENCY_CODE, "currencyCode", Ty::Text),
                p("x_payment_terms_id", "paymentTermsId", Ty::Guid),
                p("x_payment_method_id", "paymentMethodId", Ty::Guid),
                p("x_blocked", "blocked", Ty::BlankEnum),
            ]);
        }
        EntityKind::Contact => {
            out.extend(ADDRESS);
            out.extend([
                p(field::CONTACT_TYPE, "type", Ty::ContactType),
                p(field::JOB_TITLE, "jobTitle", Ty::Text),
                p(field::MOBILE_PHONE, "mobilePhoneNumber", Ty::Text),
                p(field::COMPANY_ID, COMPANY_NUMBER, Ty::Text),
            ]);
        }
        EntityKind::BankAccount => out.extend([
            p(field::NAME, "displayName", Ty::Text),
            p(field::IBAN, "iban", Ty::Text),
            p(field::BANK_ACCOUNT_NO, "bankAccountNumber", Ty::Text),
            p(field::CURRENCY_CODE, "currencyCode", Ty::Text),
            p("x_blocked", "blocked", Ty::Bool),
        ]),
    }
    out
}

/// The entity set of `kind`.
pub fn entity_set(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Customer => "customers",
        EntityKind::Vendor => "vendors",
        EntityKind::Contact => "contacts",
        EntityKind::BankAccount => "bankAccounts",
    }
}

/// The fields of an entity as Business Central renders it. `company_id` holds the
/// company's *number* here; the connector swaps it for the company contact's id.
pub fn fields_of(kind: EntityKind, entity: &Json) -> Fields {
    let mut fields = Fields::with_capacity(16);
    for prop in props(kind) {
        let Some(raw) = entity.get(prop.prop) else {
            continue;
        };
        let value = match (prop.ty, raw) {
            (Ty::Bool, Json::Bool(b)) => Value::Bool(*b),
            (Ty::Bool, _) => continue,
            (_, Json::String(s)) if is_empty_text(prop.ty, s) => continue,
            (Ty::ContactType, Json::String(s)) => Value::text(s.to_ascii_lowercase()),
            (_, Json::String(s)) => Value::text(s.as_str()),
            (_, Json::Number(n)) => Value::Number(n.as_f64().unwrap_or_default()),
            _ => continue,
        };
        fields.set(prop.field, value);
    }
    fields
}

fn is_empty_text(ty: Ty, s: &str) -> bool {
    match ty {
        Ty::Guid => s.is_empty() || s == NIL_GUID,
        Ty::BlankEnum => s.trim().is_empty(),
        _ => s.is_empty(),
    }
}

/// The id, ETag and modification time of an entity.
pub fn identity(entity: &Json) -> (Option<&str>, Option<String>, Option<Timestamp>) {
    let id = entity.get("id").and_then(Json::as_str);
    let etag = entity
        .get("@odata.etag")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let modified = entity
        .get("lastModifiedDateTime")
        .and_then(Json::as_str)
        .and_then(|t| Timestamp::parse(t).ok());
    (id, etag, modified)
}

/// The JSON body that writes `changes` (a `Null` clears), or why it cannot be made.
/// `company_id` must already be a company *number*.
pub fn body_of<'a>(
    kind: EntityKind,
    changes: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Result<Map<String, Json>, String> {
    let props = props(kind);
    let mut body = Map::new();
    for (name, value) in changes {
        let Some(prop) = props.iter().find(|p| p.field == name) else {
            if value.is_empty() {
                continue;
            }
            return Err(refusal(kind, name));
        };
        body.insert(prop.prop.to_owned(), json_of(prop, value)?);
    }
    Ok(body)
}

fn refusal(kind: EntityKind, name: &str) -> String {
    if field::is_canonical_for(kind, name) || field::is_extra(name) {
        format!(
            "Business Central has no place for `{name}` on a {kind}; leave it out of the \
             relation's `fields` (or map it to an `x_` field this connector knows)"
        )
    } else {
        format!("`{name}` is not a field of a {kind}")
    }
}

fn json_of(prop: &Prop, value: &Value) -> Result<Json, String> {
    if value.is_empty() {
        return Ok(match prop.ty {
            Ty::Guid => Json::String(NIL_GUID.into()),
            Ty::Bool => Json::Bool(false),
            Ty::BlankEnum => Json::String(" ".into()),
            Ty::Text | Ty::ContactType => Json::String(String::new()),
            Ty::Choice => {
                return Err(format!(
                    "`{}` cannot be cleared: Business Central always holds a value",
                    prop.field
                ));
            }
        });
    }
    let text = value.to_cell();
    Ok(match prop.ty {
        Ty::Bool => match value {
            Value::Bool(b) => Json::Bool(*b),
            _ => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Json::Bool(true),
                "false" | "no" | "0" => Json::Bool(false),
                _ => {
                    return Err(format!(
                        "`{}` must be true or false, not `{text}`",
                        prop.field
                    ));
                }
            },
        },
        Ty::ContactType => match text.trim().to_ascii_lowercase().as_str() {
            "company" => Json::String("Company".into()),
            "person" => Json::String("Person".into()),
            other => {
                return Err(format!(
                    "`contact_type` must be company or person, not `{other}`"
                ));
            }
        },
        Ty::Text | Ty::Guid | Ty::BlankEnum | Ty::Choice => Json::String(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_texts_and_nil_references_read_as_absent() {
        let entity = json!({
            "id": "a", "number": "C00010", "displayName": "Acme", "addressLine1": "",
            "paymentTermsId": NIL_GUID, "blocked": " ", "email": "info@acme.example",
            "@odata.etag": "W/\"x\"", "lastModifiedDateTime": "2024-05-01T12:00:00.123Z"
        });
        let f = fields_of(EntityKind::Customer, &entity);
        assert_eq!(f.text(field::NAME), Some("Acme"));
        assert_eq!(f.text("x_number"), Some("C00010"));
        assert_eq!(f.get(field::ADDRESS), None);
        assert_eq!(f.get("x_payment_terms_id"), None);
        assert_eq!(f.get("x_blocked"), None);
        let (id, etag, modified) = identity(&entity);
        assert_eq!(id, Some("a"));
        assert_eq!(etag.as_deref(), Some("W/\"x\""));
        assert_eq!(modified.unwrap().to_string(), "2024-05-01T12:00:00.123Z");
    }

    #[test]
    fn writes_clear_with_the_entity_s_empty_values_and_refuse_what_has_no_place() {
        let null = Value::Null;
        let phone = Value::text("+32 9 100 00 01");
        let body = body_of(
            EntityKind::Customer,
            [
                (field::PHONE, &phone),
                ("x_payment_terms_id", &null),
                (field::FAX, &null),
            ],
        )
        .unwrap();
        assert_eq!(
            Json::Object(body),
            json!({"phoneNumber": "+32 9 100 00 01", "paymentTermsId": NIL_GUID})
        );
        let fax = Value::text("+32 9 300 00 01");
        let e = body_of(EntityKind::Customer, [(field::FAX, &fax)]).unwrap_err();
        assert!(e.contains("no place for `fax` on a customer"), "{e}");
        let e = body_of(EntityKind::Vendor, [("nonsense", &fax)]).unwrap_err();
        assert!(e.contains("not a field"), "{e}");
        let e = body_of(EntityKind::Customer, [("x_type", &null)]).unwrap_err();
        assert!(e.contains("`x_type` cannot be cleared"), "{e}");
        let person = Value::text("Person");
        let body = body_of(EntityKind::Contact, [(field::CONTACT_TYPE, &person)]).unwrap();
        assert_eq!(body["type"], "Person");
    }
}
