//! The settings of a `type = "ldap"` connector.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use tandem_connector::{BuildContext, ConnectorError, parse_settings};
use tandem_model::field;

/// How reads are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// RFC 4533 content synchronisation where the server offers it (OpenLDAP's
    /// syncprov overlay), else full listings with paged results.
    #[default]
    Auto,
    /// RFC 4533 only: a server without it is an error.
    Syncrepl,
    /// Full listings with paged results (RFC 2696) only; not incremental.
    Paged,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Own {
    url: String,
    base_dn: String,
    #[serde(default)]
    bind_dn: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    starttls: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    sync: SyncMode,
    #[serde(default = "default_page_size")]
    page_size: i32,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    persons_dn: Option<String>,
    #[serde(default)]
    companies_dn: Option<String>,
    #[serde(default = "default_person_classes")]
    person_object_classes: Vec<String>,
    #[serde(default = "default_company_classes")]
    company_object_classes: Vec<String>,
    #[serde(default = "default_person_rdn")]
    person_rdn: String,
    #[serde(default)]
    company_rdn: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
}

fn default_page_size() -> i32 {
    500
}
fn default_person_classes() -> Vec<String> {
    vec!["inetOrgPerson".into(), "extensibleObject".into()]
}
fn default_company_classes() -> Vec<String> {
    vec!["organization".into(), "extensibleObject".into()]
}
fn default_person_rdn() -> String {
    "cn".into()
}
fn default_timeout_secs() -> u64 {
    30
}

/// The attributes of the canonical fields unless `attributes` says otherwise. `name`
/// is the naming attribute of the entry's class (`cn`, `o` or `ou`) and
/// `contact_type` its structural object class; neither is in this table.
pub const DEFAULT_ATTRIBUTES: &[(&str, &str)] = &[
    (field::FIRST_NAME, "givenName"),
    (field::SURNAME, "sn"),
    (field::JOB_TITLE, "title"),
    (field::EMAIL, "mail"),
    (field::PHONE, "telephoneNumber"),
    (field::MOBILE_PHONE, "mobile"),
    (field::FAX, "facsimileTelephoneNumber"),
    (field::ADDRESS, "street"),
    (field::CITY, "l"),
    (field::POST_CODE, "postalCode"),
    (field::COUNTY, "st"),
    (field::COUNTRY_CODE, "c"),
    (field::HOME_PAGE, "labeledURI"),
    (field::LANGUAGE_CODE, "preferredLanguage"),
    (field::BUSINESS_RELATIONS, "businessCategory"),
];

/// Settings, checked.
#[derive(Debug)]
pub struct Settings {
    pub url: String,
    pub base_dn: String,
    pub bind: Option<(String, SecretString)>,
    pub starttls: bool,
    pub ca_file: Option<PathBuf>,
    pub sync: SyncMode,
    pub page_size: i32,
    pub filter: Option<String>,
    pub persons_dn: String,
    pub companies_dn: String,
    pub person_classes: Vec<String>,
    pub company_classes: Vec<String>,
    pub person_rdn: String,
    pub company_rdn: String,
    /// Field -> attribute, every mapped field but `name` and `contact_type`.
    pub attributes: BTreeMap<String, String>,
    pub timeout: Duration,
}

impl Settings {
    pub fn parse(
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Settings, ConnectorError> {
        let own: Own = parse_settings(settings)?;
        let lower = own.url.to_ascii_lowercase();
        if !lower.starts_with("ldap://") && !lower.starts_with("ldaps://") {
            return Err(ConnectorError::config(format!(
                "`url` must start with ldap:// or ldaps://, not `{}`",
                own.url
            )));
        }
        if own.starttls && lower.starts_with("ldaps://") {
            return Err(ConnectorError::config(
                "`starttls = true` needs an ldap:// `url`; ldaps:// is TLS from the start",
            ));
        }
        if own.base_dn.trim().is_empty() {
            return Err(ConnectorError::config(
                "`base_dn` is empty; name the entry the contacts live under, e.g. ou=contacts,dc=example,dc=org",
            ));
        }
        let bind = match (own.bind_dn, own.password) {
            (Some(dn), Some(pw)) => Some((dn, pw)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConnectorError::config(
                    "`bind_dn` is set but `password` is not (e.g. password = \"${LDAP_PASSWORD}\")",
                ));
            }
            (None, Some(_)) => {
                return Err(ConnectorError::config(
                    "`password` is set but `bind_dn` is not",
                ));
            }
        };
        if !(1..=100_000).contains(&own.page_size) {
            return Err(ConnectorError::config(
                "`page_size` must be between 1 and 100000",
            ));
        }
        let has =
            |classes: &[String], name: &str| classes.iter().any(|c| c.eq_ignore_ascii_case(name));
        if !has(&own.person_object_classes, "inetOrgPerson") {
            return Err(ConnectorError::config(
                "`person_object_classes` must hold inetOrgPerson",
            ));
        }
        let company_naming = if has(&own.company_object_classes, "organization") {
            "o"
        } else if has(&own.company_object_classes, "organizationalUnit") {
            "ou"
        } else {
            return Err(ConnectorError::config(
                "`company_object_classes` must hold organization or organizationalUnit",
            ));
        };
        let mut attributes: BTreeMap<String, String> = DEFAULT_ATTRIBUTES
            .iter()
            .map(|(f, a)| ((*f).to_owned(), (*a).to_owned()))
            .collect();
        for (field_name, attribute) in own.attributes {
            if field_name == field::NAME || field_name == field::CONTACT_TYPE {
                return Err(ConnectorError::config(format!(
                    "`attributes.{field_name}`: `name` is always the naming attribute (cn, o or ou) and `contact_type` the object class"
                )));
            }
            let known = field::COMMON.contains(&field_name.as_str())
                || field::CONTACT_ONLY.contains(&field_name.as_str())
                || field_name.starts_with("x_");
            if !known {
                return Err(ConnectorError::config(format!(
                    "`attributes.{field_name}`: not a canonical contact field nor an extra `x_<name>`"
                )));
            }
            if attribute.is_empty() {
                // An empty attribute unmaps a default.
                attributes.remove(&field_name);
            } else if !attribute
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';')
            {
                return Err(ConnectorError::config(format!(
                    "`attributes.{field_name}`: `{attribute}` is no attribute name"
                )));
            } else {
                attributes.insert(field_name, attribute);
            }
        }
        let mut seen = BTreeMap::new();
        for (f, a) in &attributes {
            let lower = a.to_ascii_lowercase();
            if ["cn", "o", "ou", "objectclass"].contains(&lower.as_str()) {
                return Err(ConnectorError::config(format!(
                    "`attributes.{f}`: `{a}` holds `name` or the object class already"
                )));
            }
            if let Some(other) = seen.insert(lower, f.clone()) {
                return Err(ConnectorError::config(format!(
                    "`attributes`: `{other}` and `{f}` both map to `{a}`"
                )));
            }
        }
        let company_rdn = own.company_rdn.unwrap_or_else(|| company_naming.to_owned());
        for (key, rdn) in [
            ("person_rdn", &own.person_rdn),
            ("company_rdn", &company_rdn),
        ] {
            let lower = rdn.to_ascii_lowercase();
            let naming = ["cn", "o", "ou"].contains(&lower.as_str());
            if !naming && !attributes.values().any(|a| a.eq_ignore_ascii_case(rdn)) {
                return Err(ConnectorError::config(format!(
                    "`{key}`: `{rdn}` is neither the naming attribute nor a mapped attribute"
                )));
            }
        }
        let ca_file = own.ca_file.map(|p| context.resolve(&p));
        Ok(Settings {
            url: own.url,
            persons_dn: own.persons_dn.unwrap_or_else(|| own.base_dn.clone()),
            companies_dn: own.companies_dn.unwrap_or_else(|| own.base_dn.clone()),
            base_dn: own.base_dn,
            bind,
            starttls: own.starttls,
            ca_file,
            sync: own.sync,
            page_size: own.page_size,
            filter: own.filter,
            person_classes: own.person_object_classes,
            company_classes: own.company_object_classes,
            person_rdn: own.person_rdn,
            company_rdn,
            attributes,
            timeout: Duration::from_secs(own.timeout_secs.max(1)),
        })
    }

    /// The naming attribute of companies: `o`, or `ou` for organizational units.
    pub fn company_naming(&self) -> &'static str {
        if self
            .company_classes
            .iter()
            .any(|c| c.eq_ignore_ascii_case("organization"))
        {
            "o"
        } else {
            "ou"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<Settings, ConnectorError> {
        Settings::parse(
            v,
            &BuildContext {
                base_dir: PathBuf::from("/etc/tandem"),
            },
        )
    }

    #[test]
    fn defaults_map_the_common_attributes() {
        let s = parse(serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x"})).unwrap();
        assert_eq!(s.attributes["email"], "mail");
        assert_eq!(s.company_naming(), "o");
        assert_eq!(s.company_rdn, "o");
        assert_eq!(s.persons_dn, "dc=x");
    }

    #[test]
    fn the_password_never_shows_in_errors() {
        let e = parse(
            serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x", "password": "hunter2"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`bind_dn` is not"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let s = parse(serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x", "bind_dn": "cn=a", "password": "hunter2"}))
            .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse(serde_json::json!({"url": "http://h/", "base_dn": "dc=x"})).unwrap_err();
        assert!(e.to_string().contains("ldap://"), "{e}");
        let e =
            parse(serde_json::json!({"url": "ldaps://h/", "base_dn": "dc=x", "starttls": true}))
                .unwrap_err();
        assert!(e.to_string().contains("starttls"), "{e}");
        let e = parse(
            serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x", "attributes": {"vat": "x"}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("attributes.vat"), "{e}");
        let e = parse(serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x", "attributes": {"fax": "mail"}}))
            .unwrap_err();
        assert!(e.to_string().contains("both map to"), "{e}");
        let e =
            parse(serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x", "person_rdn": "uid"}))
                .unwrap_err();
        assert!(e.to_string().contains("person_rdn"), "{e}");
    }

    #[test]
    fn an_empty_attribute_unmaps_a_default() {
        let s = parse(serde_json::json!({"url": "ldap://h/", "base_dn": "dc=x", "attributes": {"country_code": "", "vat_registration_no": "registeredAddress"}}))
            .unwrap();
        assert!(!s.attributes.contains_key("country_code"));
        assert_eq!(s.attributes["vat_registration_no"], "registeredAddress");
    }
}
