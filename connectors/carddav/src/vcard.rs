//! A vCard (2.1, RFC 2426 3.0, RFC 6350 4.0) reader and writer for cards as exporters
//! write them: folded lines (2.1 keeps the folding white space, 3.0 and 4.0 drop it),
//! quoted-printable values with soft line breaks and a `CHARSET`, groups, parameters
//! (quoted or not, several values, 2.1's bare `TEL;HOME;VOICE`), and value escaping.
//!
//! A card keeps every property as it came: names and parameters as spelled, values raw
//! (escaped, still quoted-printable) in [`Property::value`], and the lines each property
//! was read from. A property that is not changed is written back from those lines, byte
//! for byte; a changed one is written in the card's own conventions: its line ends, and
//! for 2.1 quoted-printable where the text needs it (without soft line breaks). The
//! accessors decode texts, structured components, lists and URIs.

use std::fmt;

/// The vCard versions Tandem tells apart: 2.1 folds, escapes and encodes differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V21,
    V30,
    V40,
}

/// One content line: `[group.]NAME[;PARAM=a,b]*:value`.
#[derive(Clone)]
pub struct Property {
    pub group: Option<String>,
    /// As found (`X-ABLabel` stays `X-ABLabel`); compare with [`Property::is`].
    pub name: String,
    /// Names as found; values as written (unquoted). A 2.1 bare parameter (`HOME`) is a
    /// name without values.
    pub params: Vec<(String, Vec<String>)>,
    /// The raw value: escaped, and still quoted-printable when the parameters say so.
    pub value: String,
    source: Option<Box<Source>>,
}

/// The lines a property was read from and what they said, so that an unchanged property
/// is written back exactly as it came.
#[derive(Clone)]
struct Source {
    /// Physical lines without their line ends (blank lines that followed included).
    lines: Vec<String>,
    group: Option<String>,
    name: String,
    params: Vec<(String, Vec<String>)>,
    value: String,
}

impl Source {
    fn describes(&self, p: &Property) -> bool {
        self.group == p.group
            && self.name == p.name
            && self.params == p.params
            && self.value == p.value
    }
}

impl PartialEq for Property {
    fn eq(&self, other: &Property) -> bool {
        self.group == other.group
            && self.name == other.name
            && self.params == other.params
            && self.value == other.value
    }
}

impl Eq for Property {}

impl fmt::Debug for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Property")
            .field("group", &self.group)
            .field("name", &self.name)
            .field("params", &self.params)
            .field("value", &self.value)
            .finish()
    }
}

impl Property {
    pub fn new(name: &str, value: String) -> Property {
        Property {
            group: None,
            name: name.to_owned(),
            params: Vec::new(),
            value,
            source: None,
        }
    }

    pub fn with_param(mut self, name: &str, values: &[&str]) -> Property {
        self.params.push((
            name.to_owned(),
            values.iter().map(|v| (*v).to_owned()).collect(),
        ));
        self
    }

    /// Whether this is the property `name` (names are case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Every value of the parameters named `name`, lower-cased, split on commas.
    /// vCard 2.1-style bare parameters (`TEL;CELL:`) count as `TYPE` values.
    pub fn param_values(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (n, values) in &self.params {
            if n.eq_ignore_ascii_case(name) {
                for v in values {
                    out.extend(v.split(',').map(|s| s.trim().to_ascii_lowercase()));
                }
            } else if name.eq_ignore_ascii_case("TYPE") && values.is_empty() {
                out.push(n.to_ascii_lowercase());
            }
        }
        out
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// Sets the parameter `name` to `values`, keeping its spelling and place if present.
    pub fn set_param(&mut self, name: &str, values: &[&str]) {
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = values,
            None => self.params.push((name.to_owned(), values)),
        }
    }

    pub fn remove_param(&mut self, name: &str) {
        self.params.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// `ENCODING=QUOTED-PRINTABLE`, or 2.1's bare `QUOTED-PRINTABLE`.
    pub fn is_quoted_printable(&self) -> bool {
        self.params.iter().any(|(n, v)| {
            (n.eq_ignore_ascii_case("ENCODING")
                && v.iter().any(|v| v.eq_ignore_ascii_case("QUOTED-PRINTABLE")))
                || (v.is_empty() && n.eq_ignore_ascii_case("QUOTED-PRINTABLE"))
        })
    }

    /// A raw piece of the value with its transfer encoding undone (still escaped).
    fn decoded(&self, raw: &str) -> String {
        if self.is_quoted_printable() {
            // Quoted-printable line breaks are CRLF; texts use `\n` as 3.0 and 4.0 do.
            decode_quoted_printable(raw, self.param("CHARSET")).replace("\r\n", "\n")
        } else {
            raw.to_owned()
        }
    }

    /// The value as one text (decoded, unescaped).
    pub fn text(&self) -> String {
        unescape(&self.decoded(&self.value))
    }

    /// The `;`-separated components, each decoded and unescaped.
    pub fn components(&self) -> Vec<String> {
        split_unescaped(&self.value, ';')
            .iter()
            .map(|c| unescape(&self.decoded(c)))
            .collect()
    }

    /// The `,`-separated list items, each decoded and unescaped.
    pub fn list(&self) -> Vec<String> {
        split_unescaped(&self.value, ',')
            .iter()
            .map(|c| unescape(&self.decoded(c)))
            .collect()
    }

    /// The value as a URI: decoded; backslashes some exporters put before `:` and `,`
    /// dropped.
    pub fn uri(&self) -> String {
        unescape(&self.decoded(&self.value))
    }

    /// Sets a text value, escaped and encoded as `version` and this property want.
    pub fn set_text(&mut self, version: Version, text: &str) {
        let raw = escape_for(version, text, None);
        self.store(version, raw);
    }

    /// Sets a structured value (`;`-separated components).
    pub fn set_components(&mut self, version: Version, parts: &[String]) {
        let raw: Vec<String> = parts
            .iter()
            .map(|p| escape_for(version, p, Some(';')))
            .collect();
        self.store(version, raw.join(";"));
    }

    /// Sets a list value (`,`-separated items).
    pub fn set_list(&mut self, version: Version, items: &[String]) {
        let raw: Vec<String> = items
            .iter()
            .map(|p| escape_for(version, p, Some(',')))
            .collect();
        self.store(version, raw.join(","));
    }

    /// Sets a URI value: written as it is (commas and colons are part of a URI).
    pub fn set_uri(&mut self, version: Version, uri: &str) {
        self.store(version, uri.to_owned());
    }

    /// Stores an escaped value: quoted-printable when the property already is, or when
    /// a 2.1 card needs it (8-bit text or a line break); the text is UTF-8 either way.
    fn store(&mut self, version: Version, raw: String) {
        let needs_qp = version == Version::V21 && (!raw.is_ascii() || raw.contains('\n'));
        if self.is_quoted_printable() || needs_qp {
            if !self.is_quoted_printable() {
                self.params
                    .push(("ENCODING".into(), vec!["QUOTED-PRINTABLE".into()]));
            }
            if !raw.is_ascii() || self.param("CHARSET").is_some() {
                self.set_param("CHARSET", &["UTF-8"]);
            }
            self.value = encode_quoted_printable(&raw);
        } else {
            if self.param("CHARSET").is_some() {
                self.set_param("CHARSET", &["UTF-8"]);
            }
            self.value = raw;
        }
    }

    /// `[group.]name[;params]:value`, unfolded.
    fn content_line(&self) -> (String, &str) {
        let mut head = String::new();
        if let Some(g) = &self.group {
            head.push_str(g);
            head.push('.');
        }
        head.push_str(&self.name);
        for (name, values) in &self.params {
            head.push(';');
            head.push_str(name);
            if !values.is_empty() {
                head.push('=');
                let quoted: Vec<String> = values.iter().map(|v| quote_param(v)).collect();
                head.push_str(&quoted.join(","));
            }
        }
        head.push(':');
        (head, &self.value)
    }

    fn write_to(&self, out: &mut String, version: Version, newline: &str) {
        if let Some(source) = self.source.as_ref().filter(|s| s.describes(self)) {
            for line in &source.lines {
                out.push_str(line);
                out.push_str(newline);
            }
            return;
        }
        let (head, value) = self.content_line();
        // Quoted-printable soft line breaks are read, but not written: vobject (under
        // Radicale, Xandikos, khard) refuses them. 2.1 unfolding keeps the folding white
        // space. Either way long lines stay whole.
        if self.is_quoted_printable() || version == Version::V21 {
            out.push_str(&head);
            out.push_str(value);
            out.push_str(newline);
        } else {
            fold(out, &format!("{head}{value}"), newline);
        }
    }
}

fn quote_param(v: &str) -> String {
    if v.contains([':', ';', ',']) {
        format!("\"{}\"", v.replace('"', "'"))
    } else {
        v.to_owned()
    }
}

/// A parsed card: its properties between `BEGIN:VCARD` and `END:VCARD`, in order.
#[derive(Clone, Default)]
pub struct Card {
    pub props: Vec<Property>,
    /// The `BEGIN` and `END` lines as found, and the card's line end (`\n` when it used
    /// bare line feeds; CRLF otherwise and for new cards).
    begin: Option<String>,
    end: Option<String>,
    bare_lf: bool,
}

impl PartialEq for Card {
    fn eq(&self, other: &Card) -> bool {
        self.props == other.props
    }
}

impl Eq for Card {}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card").field("props", &self.props).finish()
    }
}

impl Card {
    /// `2.1`, `3.0`, `4.0`, ... as the card says.
    pub fn version(&self) -> Option<&str> {
        self.first("VERSION").map(|p| p.value.trim())
    }

    /// The version whose rules apply: 3.0 unless the card says 2.1 or 4.0.
    pub fn syntax(&self) -> Version {
        match self.version() {
            Some("2.1") => Version::V21,
            Some("4.0") => Version::V40,
            _ => Version::V30,
        }
    }

    pub fn first(&self, name: &str) -> Option<&Property> {
        self.props.iter().find(|p| p.is(name))
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.props.iter().position(|p| p.is(name))
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Property> + 'a {
        self.props.iter().filter(move |p| p.is(name))
    }

    /// Sets the first property `name` to the raw `value` (keeping its parameters), or
    /// appends one.
    pub fn set(&mut self, name: &str, value: String) {
        match self.props.iter_mut().find(|p| p.is(name)) {
            Some(p) => p.value = value,
            None => self.props.push(Property::new(name, value)),
        }
    }

    pub fn remove_all(&mut self, name: &str) {
        self.props.retain(|p| !p.is(name));
    }

    /// Parses one card. Errors say what is wrong and on which line.
    pub fn parse(text: &str) -> Result<Card, String> {
        let v21 = text
            .lines()
            .any(|l| l.trim().eq_ignore_ascii_case("VERSION:2.1"));
        let mut card = None::<Card>;
        let mut ended = false;
        for line in unfold(text, v21) {
            let n = line.number;
            if line.text.trim().is_empty() {
                // Kept with the property before it (2.1 ends base64 values so).
                if let Some(p) = card.as_mut().and_then(|c| c.props.last_mut())
                    && let Some(s) = p.source.as_mut()
                    && !ended
                {
                    s.lines.extend(line.lines);
                }
                continue;
            }
            if ended {
                return Err(format!("line {n}: content after END:VCARD"));
            }
            let prop = parse_line(&line.text).map_err(|e| format!("line {n}: {e}"))?;
            let marker = prop.value.trim().eq_ignore_ascii_case("VCARD");
            match &mut card {
                None if prop.is("BEGIN") && marker => {
                    card = Some(Card {
                        begin: Some(line.lines.concat()),
                        bare_lf: !text.contains("\r\n"),
                        ..Card::default()
                    })
                }
                None => return Err(format!("line {n}: expected BEGIN:VCARD")),
                Some(_) if prop.is("BEGIN") => {
                    return Err(format!("line {n}: a card inside a card"));
                }
                Some(c) if prop.is("END") && marker => {
                    c.end = Some(line.lines.concat());
                    ended = true;
                }
                Some(c) => c.props.push(with_source(prop, line.lines)),
            }
        }
        match (card, ended) {
            (Some(c), true) => Ok(c),
            (None, _) => Err("no BEGIN:VCARD".into()),
            (Some(_), false) => Err("no END:VCARD".into()),
        }
    }

    /// The card as text: unchanged properties as they were read, changed and new ones
    /// folded at 75 octets (3.0, 4.0) or with quoted-printable soft line breaks.
    pub fn to_text(&self) -> String {
        let newline = if self.bare_lf { "\n" } else { "\r\n" };
        let version = self.syntax();
        let mut out = String::new();
        out.push_str(self.begin.as_deref().unwrap_or("BEGIN:VCARD"));
        out.push_str(newline);
        for p in &self.props {
            p.write_to(&mut out, version, newline);
        }
        out.push_str(self.end.as_deref().unwrap_or("END:VCARD"));
        out.push_str(newline);
        out
    }
}

fn with_source(mut prop: Property, lines: Vec<String>) -> Property {
    prop.source = Some(Box::new(Source {
        lines,
        group: prop.group.clone(),
        name: prop.name.clone(),
        params: prop.params.clone(),
        value: prop.value.clone(),
    }));
    prop
}

/// One logical line and the physical lines it was unfolded from.
struct Logical {
    text: String,
    lines: Vec<String>,
    number: usize,
}

impl Logical {
    /// A quoted-printable value whose line ends in `=` goes on on the next line.
    fn soft_break(&self) -> bool {
        self.text.ends_with('=')
            && self
                .text
                .split(':')
                .next()
                .is_some_and(|head| head.to_ascii_uppercase().contains("QUOTED-PRINTABLE"))
    }
}

/// Joins folded lines. 3.0 and 4.0 drop the one white-space character that starts a
/// continuation; 2.1 keeps it (RFC 822 folding). A quoted-printable line ending in `=`
/// continues on the next line whatever it starts with.
fn unfold(text: &str, v21: bool) -> Vec<Logical> {
    let mut out: Vec<Logical> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(last) = out.last_mut().filter(|l| !l.text.trim().is_empty()) {
            if last.soft_break() && !raw.trim().eq_ignore_ascii_case("END:VCARD") {
                last.text.pop();
                last.text.push_str(raw);
                last.lines.push(raw.to_owned());
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                last.text.push_str(if v21 { raw } else { &raw[1..] });
                last.lines.push(raw.to_owned());
                continue;
            }
        }
        out.push(Logical {
            text: raw.to_owned(),
            lines: vec![raw.to_owned()],
            number: i + 1,
        });
    }
    out
}

fn fold(out: &mut String, line: &str, newline: &str) {
    let mut width = 0;
    for ch in line.chars() {
        let len = ch.len_utf8();
        if width + len > 75 {
            out.push_str(newline);
            out.push(' ');
            width = 1;
        }
        out.push(ch);
        width += len;
    }
    out.push_str(newline);
}

fn parse_line(line: &str) -> Result<Property, String> {
    // The name and parameters end at the first ':' outside double quotes.
    let mut in_quotes = false;
    let mut colon = None;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ':' if !in_quotes => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let colon = colon.ok_or_else(|| format!("no `:` in `{}`", truncate(line)))?;
    let (head, value) = (&line[..colon], &line[colon + 1..]);
    let mut parts = split_quoted(head, ';').into_iter();
    let full_name = parts.next().unwrap_or_default();
    let (group, name) = match full_name.trim().rsplit_once('.') {
        Some((g, n)) => (Some(g.to_owned()), n.to_owned()),
        None => (None, full_name.trim().to_owned()),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("bad property name `{}`", truncate(&name)));
    }
    let params = parts
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (
                n.trim().to_owned(),
                split_quoted(v, ',')
                    .into_iter()
                    .map(|s| s.trim_matches('"').to_owned())
                    .collect(),
            ),
            None => (p.trim().to_owned(), Vec::new()),
        })
        .collect();
    Ok(Property {
        group,
        name,
        params,
        value: value.to_owned(),
        source: None,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn split_quoted(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut in_quotes = false;
    for c in s.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if c == sep && !in_quotes {
            out.push(String::new());
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out
}

/// Splits an escaped value on `sep` where it is not escaped with a backslash.
pub fn split_unescaped(value: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("never empty");
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            cur.push(c);
        }
    }
    out
}

pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Escapes a text value (or one component / list item) for 3.0 and 4.0: `\`, `,`, `;`
/// and line breaks.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ',' => out.push_str("\\,"),
            ';' => out.push_str("\\;"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Escapes for `version`. 2.1 escapes only `\`, `;` in structured values and the list
/// separator; its line breaks travel as quoted-printable CRLF.
fn escape_for(version: Version, s: &str, sep: Option<char>) -> String {
    if version != Version::V21 {
        return escape(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if Some(c) == sep => {
                out.push('\\');
                out.push(c);
            }
            '\r' => {}
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// Joins components (each escaped) with `;`.
pub fn join_components(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| escape(p))
        .collect::<Vec<_>>()
        .join(";")
}

/// Joins list items (each escaped) with `,`.
pub fn join_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| escape(s))
        .collect::<Vec<_>>()
        .join(",")
}

/// Undoes quoted-printable (`=XX` bytes; a stray `=` is kept) and reads the bytes in
/// `charset` (UTF-8 when none is named; bytes that are no UTF-8 are read as
/// windows-1252, which is what such exporters meant).
pub fn decode_quoted_printable(raw: &str, charset: Option<&str>) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'='
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    decode_charset(&out, charset)
}

fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    let named = charset.and_then(|c| encoding_rs::Encoding::for_label(c.trim().as_bytes()));
    match named {
        Some(enc) if enc != encoding_rs::UTF_8 => {
            enc.decode_without_bom_handling(bytes).0.into_owned()
        }
        _ => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned(),
        },
    }
}

/// Quoted-printable of the UTF-8 bytes of `s`: printable ASCII stays (but `=`), as do
/// spaces inside the text; everything else is `=XX`.
pub fn encode_quoted_printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len() || bytes[i + 1] == b'\r';
        match b {
            b' ' if !last => out.push(' '),
            b'!'..=b'~' if b != b'=' => out.push(b as char),
            _ => out.push_str(&format!("={b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folded_lines_groups_params_and_escapes() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Zo\u{eb} \\, M\u{fc}ller\r\nitem1.ADR;TYPE=work,pref;X-LABEL=\"a:b;c\":;;1 Long\r\n  Street;City;;1000;BE\r\nTEL;CELL:+32\r\nEND:VCARD\r\n";
        let card = Card::parse(text).unwrap();
        assert_eq!(card.version(), Some("3.0"));
        assert_eq!(card.first("FN").unwrap().text(), "Zo\u{eb} , M\u{fc}ller");
        let adr = card.first("ADR").unwrap();
        assert_eq!(adr.group.as_deref(), Some("item1"));
        assert_eq!(adr.param_values("TYPE"), ["work", "pref"]);
        assert_eq!(adr.param("X-LABEL"), Some("a:b;c"));
        assert_eq!(adr.components()[2], "1 Long Street");
        assert_eq!(card.first("TEL").unwrap().param_values("TYPE"), ["cell"]);
        // Written and read again: the same properties, the same bytes.
        assert_eq!(card.to_text(), text);
        let again = Card::parse(&card.to_text()).unwrap();
        assert_eq!(again, card);
    }

    #[test]
    fn long_lines_fold_at_75_octets_on_char_boundaries() {
        let mut card = Card::default();
        card.props
            .push(Property::new("NOTE", escape(&"\u{e9}t\u{e9}, ".repeat(40))));
        let text = card.to_text();
        assert!(text.split("\r\n").all(|l| l.len() <= 75));
        assert_eq!(Card::parse(&text).unwrap(), card);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Card::parse("hello").is_err());
        assert!(Card::parse("BEGIN:VCARD\r\nFN:x\r\n").is_err());
        assert!(Card::parse("BEGIN:VCARD\r\nno colon\r\nEND:VCARD").is_err());
    }

    #[test]
    fn names_and_parameters_keep_their_spelling() {
        let text = "begin:vcard\nversion:3.0\nitem1.X-ABLabel;x-Kind=a:Desk\nfn:A\nend:vcard\n";
        let mut card = Card::parse(text).unwrap();
        assert_eq!(card.first("X-ABLABEL").unwrap().name, "X-ABLabel");
        assert_eq!(card.first("x-ablabel").unwrap().param("X-KIND"), Some("a"));
        let i = card.position("X-ABLabel").unwrap();
        card.props[i].set_text(Version::V30, "Desk 2");
        assert_eq!(
            card.to_text(),
            "begin:vcard\nversion:3.0\nitem1.X-ABLabel;x-Kind=a:Desk 2\nfn:A\nend:vcard\n"
        );
    }

    #[test]
    fn quoted_printable_with_soft_line_breaks_and_charsets_is_decoded() {
        let text = "BEGIN:VCARD\r\nVERSION:2.1\r\nN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:=4D=C3=BC=6C=6C=65=72;=4A=C3=\r\n=BC=72=67=65=6E;;;\r\nNOTE;QUOTED-PRINTABLE;CHARSET=ISO-8859-1:Gr=FC=DFe=0D=0Aaus K=F6ln=\r\n!\r\nTEL;HOME;VOICE:+49 30 1\r\nEND:VCARD\r\n";
        let card = Card::parse(text).unwrap();
        assert_eq!(card.syntax(), Version::V21);
        assert_eq!(
            card.first("N").unwrap().components()[..2],
            ["Müller", "Jürgen"]
        );
        assert_eq!(card.first("NOTE").unwrap().text(), "Grüße\naus Köln!");
        assert_eq!(
            card.first("TEL").unwrap().param_values("TYPE"),
            ["home", "voice"]
        );
        assert_eq!(card.to_text(), text);
    }

    #[test]
    fn a_changed_2_1_value_is_written_as_utf8_quoted_printable() {
        let text = "BEGIN:VCARD\r\nVERSION:2.1\r\nFN;CHARSET=ISO-8859-1;ENCODING=QUOTED-PRINTABLE:J=FCrgen\r\nORG:Acme\r\nEND:VCARD\r\n";
        let mut card = Card::parse(text).unwrap();
        let name = "Jürgen Müller-Lüdenscheidt, Großhandel für Bürobedarf und Schreibwaren";
        card.props[1].set_text(Version::V21, name);
        card.props[2].set_text(Version::V21, "Ärzte AG");
        let written = card.to_text();
        // One line: vobject-based servers refuse soft line breaks.
        assert_eq!(written.lines().count(), 5, "{written}");
        assert!(
            written.contains("FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:J=C3=BC"),
            "{written}"
        );
        assert!(
            written.contains("ORG;ENCODING=QUOTED-PRINTABLE;CHARSET=UTF-8:=C3=84rzte AG"),
            "{written}"
        );
        let again = Card::parse(&written).unwrap();
        assert_eq!(again.first("FN").unwrap().text(), name);
        assert_eq!(again.first("ORG").unwrap().text(), "Ärzte AG");
    }

    #[test]
    fn version_2_1_folding_keeps_the_white_space_and_3_0_drops_it() {
        let v21 = "BEGIN:VCARD\r\nVERSION:2.1\r\nNOTE:one\r\n two\r\nEND:VCARD\r\n";
        let v30 = v21.replace("2.1", "3.0");
        assert_eq!(
            Card::parse(v21).unwrap().first("NOTE").unwrap().text(),
            "one two"
        );
        assert_eq!(
            Card::parse(&v30).unwrap().first("NOTE").unwrap().text(),
            "onetwo"
        );
    }

    #[test]
    fn blank_lines_after_a_2_1_base64_value_survive() {
        let text = "BEGIN:VCARD\r\nVERSION:2.1\r\nPHOTO;ENCODING=BASE64;JPEG:\r\n  AAAA\r\n  BBBB\r\n\r\nFN:A\r\nEND:VCARD\r\n";
        let card = Card::parse(text).unwrap();
        assert_eq!(card.first("PHOTO").unwrap().value, "  AAAA  BBBB");
        assert_eq!(card.to_text(), text);
    }

    #[test]
    fn uris_are_neither_escaped_nor_unescaped_twice() {
        let mut p = Property::new("URL", "http\\://example.com/a\\,b".into());
        assert_eq!(p.uri(), "http://example.com/a,b");
        p.set_uri(Version::V30, "https://example.com/?q=a,b;c");
        assert_eq!(p.value, "https://example.com/?q=a,b;c");
    }
}
