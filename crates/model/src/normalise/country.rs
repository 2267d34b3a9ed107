//! Countries as ISO 3166-1 alpha-2 codes (R20).
//!
//! Address books write the country as a name (RFC 6350 makes the ADR country a name),
//! in English or in the user's language: "USA", "Germany", "Deutschland", "Schweiz",
//! "België". ERPs want the code. The names come from the `keshvar` data set (the
//! countries' common names plus their CLDR translations), never from a table typed
//! here.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// An ISO 3166-1 alpha-2 country code, upper case (`DE`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// The country `text` stands for: an alpha-2 or alpha-3 code in any case (`de`,
    /// `DEU`), or a name in English or a local language (`Germany`, `Deutschland`,
    /// `Allemagne`). `None` when no table knows it: the caller keeps the text as it is.
    pub fn find(text: &str) -> Option<CountryCode> {
        let text = text.trim();
        // Codes first: the common case, and no table to build.
        if text.len() == 2 && text.is_ascii() {
            if let Ok(alpha2) = keshvar::Alpha2::try_from(text) {
                return code_of(alpha2);
            }
        } else if text.len() == 3
            && text.is_ascii()
            && let Ok(alpha3) = keshvar::Alpha3::try_from(text)
        {
            return code_of(alpha3.to_alpha2());
        }
        names().get(fold(text).as_str()).copied()
    }

    /// The code, `DE`.
    pub fn as_str(&self) -> &str {
        // Made only from keshvar's ASCII codes.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The country's common English name (`Germany`, `United States`), for systems
    /// that want a name rather than a code.
    pub fn name(self) -> &'static str {
        self.info().map_or("", |i| i.name)
    }

    /// The prefix of the country's EU VAT numbers (`EL` for Greece); `None` outside the
    /// European Union, where no prefix is added to a number.
    pub fn vat_prefix(self) -> Option<&'static str> {
        let info = self.info()?;
        info.eu
            .then(|| std::str::from_utf8(&info.vat_prefix).unwrap_or("??"))
    }

    /// What Tandem uses of the country's data, read once per country.
    fn info(self) -> Option<&'static Info> {
        static INFO: [OnceLock<Option<Info>>; 26 * 26] = [const { OnceLock::new() }; 26 * 26];
        let [a, b] = self.0;
        let slot = usize::from(a - b'A') * 26 + usize::from(b - b'A');
        INFO[slot]
            .get_or_init(|| {
                let country = keshvar::Alpha2::try_from(self.as_str()).ok()?.to_country();
                let name = country.unofficial_name_list().first().copied();
                Some(Info {
                    name: name.unwrap_or(country.iso_short_name()),
                    eu: country.eu_member(),
                    vat_prefix: if self.0 == *b"GR" { *b"EL" } else { self.0 },
                })
            })
            .as_ref()
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

/// A name as it is looked up: lower case, dots dropped (`U.S.A.`), runs of blanks as
/// one space.
fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars().filter(|c| *c != '.') {
            out.extend(c.to_lowercase());
        }
    }
    out
}

struct Info {
    name: &'static str,
    eu: bool,
    vat_prefix: [u8; 2],
}

/// Names to codes, built once, on the first name looked up (a few milliseconds).
fn names() -> &'static HashMap<String, CountryCode> {
    static NAMES: OnceLock<HashMap<String, CountryCode>> = OnceLock::new();
    NAMES.get_or_init(build)
}

/// How sure a name is: the country's own names before translations, so that a word
/// one language uses for another country never hides a common name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Common,
    Translation,
}

fn build() -> HashMap<String, CountryCode> {
    // Per name: the best rank seen and the codes seen at that rank.
    let mut seen: HashMap<String, (Rank, Vec<CountryCode>)> = HashMap::new();
    for country in keshvar::CountryIterator::new() {
        let Some(code) = code_of(country.alpha2()) else {
            continue;
        };
        let iso = [country.iso_short_name(), country.iso_long_name()];
        let own = (country.unofficial_name_list().iter())
            .chain(&iso)
            .map(|n| (Rank::Common, *n));
        let translated = (country.translations().values()).map(|n| (Rank::Translation, *n));
        for (rank, name) in own.chain(translated) {
            let entry = seen.entry(fold(name)).or_insert((rank, Vec::new()));
            if rank < entry.0 {
                *entry = (rank, Vec::new());
            }
            if rank == entry.0 && !entry.1.contains(&code) {
                entry.1.push(code);
            }
        }
    }
    // A name two countries share at the same rank says neither: it is left unknown.
    seen.into_iter()
        .filter(|(name, (_, codes))| !name.is_empty() && codes.len() == 1)
        .map(|(name, (_, codes))| (name, codes[0]))
        .collect()
}

fn code_of(alpha2: keshvar::Alpha2) -> Option<CountryCode> {
    let text = alpha2.to_string();
    let b = text.as_bytes();
    (b.len() == 2 && b.iter().all(u8::is_ascii_uppercase)).then(|| CountryCode([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Option<String> {
        CountryCode::find(text).map(|c| c.to_string())
    }

    #[test]
    fn r20_country_names_as_found_in_exports_are_iso_codes() {
        for (name, want) in [
            ("USA", "US"),
            ("United States", "US"),
            ("United States of America", "US"),
            ("U.S.A.", "US"),
            ("Germany", "DE"),
            ("Deutschland", "DE"),
            ("Schweiz", "CH"),
            ("Suisse", "CH"),
            ("Svizzera", "CH"),
            ("Switzerland", "CH"),
            ("Belgium", "BE"),
            ("België", "BE"),
            ("Belgique", "BE"),
            ("Canada", "CA"),
            ("Japan", "JP"),
            ("日本", "JP"),
            ("Österreich", "AT"),
            ("The Netherlands", "NL"),
            ("Nederland", "NL"),
            ("United Kingdom", "GB"),
            ("UK", "GB"),
            ("España", "ES"),
            ("Polska", "PL"),
            ("  germany  ", "DE"),
            ("GERMANY", "DE"),
        ] {
            assert_eq!(code(name).as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn r20_codes_are_recognised_in_any_case_and_as_alpha3() {
        assert_eq!(code("de").as_deref(), Some("DE"));
        assert_eq!(code("CH").as_deref(), Some("CH"));
        assert_eq!(code("DEU").as_deref(), Some("DE"));
        assert_eq!(code("che").as_deref(), Some("CH"));
    }

    #[test]
    fn r20_a_name_no_table_knows_is_no_country() {
        assert_eq!(code("Atlantis"), None);
        assert_eq!(code("XX"), None);
        assert_eq!(code(""), None);
    }

    #[test]
    fn countries_have_an_english_name_and_eu_vat_prefixes() {
        let de = CountryCode::find("DE").unwrap();
        assert_eq!(de.name(), "Germany");
        assert_eq!(CountryCode::find("US").unwrap().name(), "United States");
        assert_eq!(de.vat_prefix(), Some("DE"));
        assert_eq!(CountryCode::find("GR").unwrap().vat_prefix(), Some("EL"));
        assert_eq!(CountryCode::find("CH").unwrap().vat_prefix(), None);
    }
}
