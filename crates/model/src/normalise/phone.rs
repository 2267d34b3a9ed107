//! Phone numbers as E.164 (R20), when a deployment asks for it: `09 123 45 67` read in
//! Belgium is `+3291234567`, as is `+32 (0)9 123 45 67`. libphonenumber's metadata
//! (the `phonenumber` crate) knows each country's prefixes and number plans.

use std::fmt;
use std::str::FromStr;

use phonenumber::Mode;
use phonenumber::country::Id;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The region national phone numbers are read in (`BE`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhoneRegion(Id);

/// A region phone numbers do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a region phone numbers know; use an ISO 3166 code such as `BE`")]
pub struct PhoneRegionError(pub String);

impl FromStr for PhoneRegion {
    type Err = PhoneRegionError;

    fn from_str(s: &str) -> Result<PhoneRegion, PhoneRegionError> {
        s.trim()
            .to_ascii_uppercase()
            .parse::<Id>()
            .map(PhoneRegion)
            .map_err(|_| PhoneRegionError(s.to_owned()))
    }
}

impl PhoneRegion {
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Display for PhoneRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PhoneRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneRegion({})", self.as_str())
    }
}

impl Serialize for PhoneRegion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PhoneRegion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PhoneRegion, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `text` as E.164 (`+3291234567`), national numbers read in `region`; an extension
/// follows as `;ext=12`, so numbers that differ in it stay apart. `None` when it is no
/// phone number.
pub fn e164(text: &str, region: PhoneRegion) -> Option<String> {
    let number = phonenumber::parse(Some(region.0), text).ok()?;
    let mut out = number.format().mode(Mode::E164).to_string();
    if let Some(ext) = number.extension() {
        out.push_str(";ext=");
        out.push_str(ext);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be() -> PhoneRegion {
        "be".parse().unwrap()
    }

    #[test]
    fn r20_phone_numbers_as_e164() {
        for text in [
            "09 123 45 67",
            "+32 9 123 45 67",
            "+32 (0)9 123 45 67",
            "0032 9 123 45 67",
            "tel:+32-9-123-45-67",
        ] {
            assert_eq!(e164(text, be()).as_deref(), Some("+3291234567"), "{text}");
        }
        // A foreign number keeps its own country.
        assert_eq!(
            e164("+49 30 1234567", be()).as_deref(),
            Some("+49301234567")
        );
        assert_eq!(e164("not a number", be()), None);
    }

    #[test]
    fn r20_extensions_keep_numbers_apart() {
        let a = e164("+32 9 123 45 67 ext. 12", be());
        assert_eq!(a.as_deref(), Some("+3291234567;ext=12"));
        assert_ne!(a, e164("+32 9 123 45 67", be()));
    }

    #[test]
    fn regions_are_iso_codes() {
        assert_eq!(be().to_string(), "BE");
        let e = "XX".parse::<PhoneRegion>().unwrap_err();
        assert!(e.to_string().contains("`XX` is not a region"), "{e}");
    }
}
