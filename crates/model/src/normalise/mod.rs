//! Values compared normalised, per field (R20).
//!
//! Two systems hold one value in different spellings: `nl 0044 95445 b01` and
//! `NL004495445B01`, `Schweiz` and `CH`, `info@Acme.Example` and `info@acme.example`,
//! `09 123 45 67` and `+32 9 123 45 67`. Matching and merging compare the normalised
//! forms, so such values match, and a system that stores its own spelling is not seen
//! as changing the value.

mod country;
mod phone;
pub mod vat;

pub use country::CountryCode;
pub use phone::{PhoneRegion, PhoneRegionError, e164};

use crate::{Value, field};

/// How the values of a field are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// As text.
    Text,
    /// As an ISO 3166 code, whether the value is a code or a name.
    Country,
    /// Compacted, with the record's EU VAT prefix.
    Vat,
    /// The domain in any case.
    Email,
    /// As E.164 when a region is set, else as text.
    Phone,
}

impl Form {
    pub fn of(name: &str) -> Form {
        match name {
            field::COUNTRY_CODE => Form::Country,
            field::VAT_REGISTRATION_NO => Form::Vat,
            field::EMAIL => Form::Email,
            field::PHONE | field::MOBILE_PHONE | field::FAX => Form::Phone,
            _ => Form::Text,
        }
    }
}

/// How values compare: what a match tier or a relation says on top of each field's
/// form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Text byte for byte (a match tier's `exact`); otherwise trimmed and in any case.
    /// The forms of VAT numbers, countries and e-mail domains apply either way.
    pub exact: bool,
    /// Phone numbers as E.164, national ones read in this region (a relation's
    /// `match_normalise = "e164"`).
    pub phone_region: Option<PhoneRegion>,
}

impl Comparison {
    /// Writes the form `text` of field `name` is compared in to `buf` (appending);
    /// `country` is the record's, for the prefix of a VAT number. False when nothing is
    /// left: empty values never match.
    pub fn push_key(
        &self,
        buf: &mut String,
        name: &str,
        text: &str,
        country: Option<CountryCode>,
    ) -> bool {
        let start = buf.len();
        match Form::of(name) {
            Form::Text => self.push_text(buf, text),
            Form::Country => match CountryCode::find(text) {
                Some(code) => buf.push_str(code.as_str()),
                None => self.push_text(buf, text),
            },
            Form::Vat => vat::push_compact(buf, text, country),
            Form::Email => push_email(buf, text, !self.exact),
            Form::Phone => match self.phone_region.and_then(|r| e164(text, r)) {
                Some(number) => buf.push_str(&number),
                None => self.push_text(buf, text),
            },
        }
        buf.len() > start
    }

    fn push_text(&self, buf: &mut String, text: &str) {
        if self.exact {
            buf.push_str(text);
        } else {
            push_lowercase(buf, text.trim());
        }
    }

    /// Whether two values of field `name` are one: equal, or equal once normalised
    /// (VAT numbers compacted, also when only one carries the country prefix;
    /// countries as codes; e-mail domains in any case; phones as E.164 when a region
    /// is set). Other text compares byte for byte: a change of case is a change.
    pub fn same(&self, name: &str, a: &Value, b: &Value) -> bool {
        if a == b {
            return true;
        }
        let (Some(a), Some(b)) = (a.as_text(), b.as_text()) else {
            return false;
        };
        let exact = Comparison {
            exact: true,
            ..*self
        };
        match Form::of(name) {
            Form::Text => false,
            Form::Vat => vat::same(a, b),
            _ => {
                let (mut ka, mut kb) = (String::new(), String::new());
                exact.push_key(&mut ka, name, a, None)
                    && exact.push_key(&mut kb, name, b, None)
                    && ka == kb
            }
        }
    }
}

/// Writes an e-mail address as compared: trimmed, the domain in lower case (domains
/// know no case), the local part as typed unless `fold_local`.
fn push_email(buf: &mut String, text: &str, fold_local: bool) {
    let text = text.trim();
    let (local, domain) = match text.rfind('@') {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    };
    if fold_local {
        push_lowercase(buf, local);
    } else {
        buf.push_str(local);
    }
    push_lowercase(buf, domain);
}

/// Appends `text` in lower case. Keys are made for every record on every match tier:
/// ASCII text, the common case, is copied and lowered in place instead of character
/// by character.
fn push_lowercase(buf: &mut String, text: &str) {
    if text.is_ascii() {
        let start = buf.len();
        buf.push_str(text);
        buf[start..].make_ascii_lowercase();
    } else {
        buf.extend(text.chars().flat_map(char::to_lowercase));
    }
}

/// A country field's value as read into the model: the ISO code of a name a table
/// knows (`Schweiz` is `CH`), else the text as it is, for the target to accept or
/// refuse with a reason.
pub fn country_code(text: &str) -> String {
    match CountryCode::find(text) {
        Some(code) => code.to_string(),
        None => text.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &Comparison, name: &str, text: &str, country: Option<&str>) -> String {
        let mut buf = String::new();
        c.push_key(&mut buf, name, text, country.and_then(CountryCode::find));
        buf
    }

    #[test]
    fn r20_email_domains_compare_in_any_case() {
        let exact = Comparison {
            exact: true,
            ..Comparison::default()
        };
        assert_eq!(
            key(&exact, field::EMAIL, " Info@Acme.EXAMPLE ", None),
            "Info@acme.example"
        );
        // Exact tiers keep the local part's case: only the domain has none.
        assert_ne!(
            key(&exact, field::EMAIL, "Info@acme.example", None),
            key(&exact, field::EMAIL, "info@acme.example", None)
        );
        let loose = Comparison::default();
        assert_eq!(
            key(&loose, field::EMAIL, "Info@Acme.Example", None),
            "info@acme.example"
        );
        let same = |a: &str, b: &str| exact.same(field::EMAIL, &Value::text(a), &Value::text(b));
        assert!(same("info@Acme.Example", "info@acme.example"));
        assert!(!same("Info@acme.example", "info@acme.example"));
    }

    #[test]
    fn r20_keys_per_field() {
        let loose = Comparison::default();
        assert_eq!(
            key(
                &loose,
                field::VAT_REGISTRATION_NO,
                "0044 95445 b01",
                Some("Netherlands")
            ),
            "NL004495445B01"
        );
        assert_eq!(key(&loose, field::COUNTRY_CODE, "Schweiz", None), "CH");
        assert_eq!(
            key(&loose, field::COUNTRY_CODE, " Atlantis ", None),
            "atlantis"
        );
        assert_eq!(key(&loose, field::NAME, " Acme NV ", None), "acme nv");
        assert_eq!(
            key(&loose, field::PHONE, "09 123 45 67", None),
            "09 123 45 67"
        );
        let e164 = Comparison {
            phone_region: Some("BE".parse().unwrap()),
            ..Comparison::default()
        };
        assert_eq!(
            key(&e164, field::PHONE, "09 123 45 67", None),
            "+3291234567"
        );
        assert_eq!(
            key(&e164, field::FAX, "+32 9 123 45 67", None),
            "+3291234567"
        );
        assert!(!loose.push_key(&mut String::new(), field::VAT_REGISTRATION_NO, " - ", None));
    }

    #[test]
    fn r20_same_values_in_other_spellings() {
        let c = Comparison::default();
        let same = |name: &str, a: &str, b: &str| c.same(name, &Value::text(a), &Value::text(b));
        assert!(same(
            field::VAT_REGISTRATION_NO,
            "nl 0044 95445 b01",
            "NL004495445B01"
        ));
        assert!(same(field::COUNTRY_CODE, "Germany", "DE"));
        assert!(!same(field::COUNTRY_CODE, "Germany", "AT"));
        assert!(!same(field::COUNTRY_CODE, "Atlantis", "atlantis"));
        // Plain text: a change of case is a change.
        assert!(!same(field::NAME, "Acme", "ACME"));
        // Phones are text unless a region is set.
        assert!(!same(field::PHONE, "09 123 45 67", "+32 9 123 45 67"));
        let e164 = Comparison {
            phone_region: Some("BE".parse().unwrap()),
            ..c
        };
        assert!(e164.same(
            field::PHONE,
            &Value::text("09 123 45 67"),
            &Value::text("+32 9 123 45 67")
        ));
    }

    #[test]
    fn r20_keys_lower_any_text() {
        let loose = Comparison::default();
        assert_eq!(key(&loose, field::NAME, " ÄRZTE Gmbh ", None), "ärzte gmbh");
        assert_eq!(key(&loose, field::NAME, "ACME nv", None), "acme nv");
        assert_eq!(
            key(&loose, field::EMAIL, "Jörg@Müller.EXAMPLE", None),
            "jörg@müller.example"
        );
    }

    #[test]
    fn r20_country_fields_read_as_codes_or_kept() {
        assert_eq!(country_code("Schweiz"), "CH");
        assert_eq!(country_code("Germany"), "DE");
        assert_eq!(country_code(" Atlantis "), "Atlantis");
    }
}
