//! VAT numbers compacted (R20): `nl 0044 95445 b01` is `NL004495445B01`.

use super::CountryCode;

/// Characters people put into VAT numbers that are not part of them.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '.' | '-' | '/' | ',')
}

/// Writes the compact form of `text` to `buf`: blanks, dots, dashes, slashes and commas
/// removed, upper case, and, for a number that starts with a digit, the EU VAT prefix of
/// `country` in front (`0044 95445 B01` in the Netherlands is `NL004495445B01`).
pub fn push_compact(buf: &mut String, text: &str, country: Option<CountryCode>) {
    let mut chars = text.chars().filter(|c| !is_separator(*c)).peekable();
    let starts_with_digit = chars.peek().is_some_and(char::is_ascii_digit);
    if starts_with_digit && let Some(prefix) = country.and_then(CountryCode::vat_prefix) {
        buf.push_str(prefix);
    }
    for c in chars {
        buf.extend(c.to_uppercase());
    }
}

/// The compact form of a VAT number (see [`push_compact`]): the form Tandem matches
/// by, and writes where a system expects it (Tryton's tax identifiers).
pub fn compact(text: &str, country: Option<CountryCode>) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_compact(&mut out, text, country);
    out
}

/// Whether two VAT numbers are one: equal compacted, or equal but for a country
/// prefix only one of them carries (a system that added it, Tryton for one).
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (compact(a, None), compact(b, None));
    let prefixed = |long: &str, short: &str| {
        long.len() == short.len() + 2
            && long.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic)
            && short.starts_with(|c: char| c.is_ascii_digit())
            && long.ends_with(short)
    };
    a == b || prefixed(&a, &b) || prefixed(&b, &a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nl() -> Option<CountryCode> {
        CountryCode::find("NL")
    }

    #[test]
    fn r20_vat_numbers_are_compacted() {
        assert_eq!(compact("nl 0044 95445 b01", None), "NL004495445B01");
        assert_eq!(compact("BE 0403.019.261", None), "BE0403019261");
        assert_eq!(compact("DE-136/695-976", None), "DE136695976");
        assert_eq!(compact("CHE-123.456.789 MWST", None), "CHE123456789MWST");
    }

    #[test]
    fn r20_vat_numbers_get_the_eu_prefix_of_their_country() {
        assert_eq!(compact("0044.95445.B01", nl()), "NL004495445B01");
        assert_eq!(compact("NL004495445B01", nl()), "NL004495445B01");
        assert_eq!(compact("094259216", CountryCode::find("GR")), "EL094259216");
        // Outside the EU no prefix is made up.
        assert_eq!(compact("123456789", CountryCode::find("US")), "123456789");
    }

    #[test]
    fn r20_vat_numbers_are_the_same_across_formats() {
        assert!(same("nl 0044 95445 b01", "NL004495445B01"));
        assert!(same("0044 95445 B01", "NL004495445B01"));
        assert!(!same("NL004495445B01", "NL004495445B02"));
        assert!(!same("DE004495445B01", "NL004495445B01"));
    }
}
