//! A small vCard (RFC 2426 / RFC 6350) reader and writer: line unfolding and folding,
//! groups, parameters (quoted or not, several values), and value escaping. It keeps every
//! property as it came, so a card can be changed in a few properties and written back
//! with everything else intact. Values stay escaped in [`Property::value`]; the helpers
//! decode texts, structured components and lists.

use std::fmt::Write as _;

/// One content line: `[group.]NAME[;PARAM=a,b]*:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub group: Option<String>,
    /// Upper-case.
    pub name: String,
    /// Parameter names upper-case; values as written (unquoted).
    pub params: Vec<(String, Vec<String>)>,
    /// The raw (escaped) value.
    pub value: String,
}

impl Property {
    pub fn new(name: &str, value: String) -> Property {
        Property {
            group: None,
            name: name.to_ascii_uppercase(),
            params: Vec::new(),
            value,
        }
    }

    pub fn with_param(mut self, name: &str, values: &[&str]) -> Property {
        self.params.push((
            name.to_ascii_uppercase(),
            values.iter().map(|v| (*v).to_owned()).collect(),
        ));
        self
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

    /// The value as one text (unescaped).
    pub fn text(&self) -> String {
        unescape(&self.value)
    }

    /// The `;`-separated components, each unescaped.
    pub fn components(&self) -> Vec<String> {
        split_unescaped(&self.value, ';')
            .iter()
            .map(|c| unescape(c))
            .collect()
    }

    /// The `,`-separated list items, each unescaped.
    pub fn list(&self) -> Vec<String> {
        split_unescaped(&self.value, ',')
            .iter()
            .map(|c| unescape(c))
            .collect()
    }
}

/// A parsed card: its properties between `BEGIN:VCARD` and `END:VCARD`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Card {
    pub props: Vec<Property>,
}

impl Card {
    /// `3.0`, `4.0`, ... as the card says.
    pub fn version(&self) -> Option<&str> {
        self.first("VERSION").map(|p| p.value.trim())
    }

    pub fn first(&self, name: &str) -> Option<&Property> {
        self.props.iter().find(|p| p.name == name)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Property> + 'a {
        self.props.iter().filter(move |p| p.name == name)
    }

    /// Sets the first property `name` to `value` (keeping its parameters), or appends one.
    pub fn set(&mut self, name: &str, value: String) {
        match self.props.iter_mut().find(|p| p.name == name) {
            Some(p) => p.value = value,
            None => self.props.push(Property::new(name, value)),
        }
    }

    pub fn remove_all(&mut self, name: &str) {
        self.props.retain(|p| p.name != name);
    }

    /// Parses one card. Errors say what is wrong and on which (unfolded) line.
    pub fn parse(text: &str) -> Result<Card, String> {
        let lines = unfold(text);
        let mut card = None::<Card>;
        let mut ended = false;
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if ended {
                return Err(format!("line {}: content after END:VCARD", n + 1));
            }
            let prop = parse_line(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            match (&mut card, prop.name.as_str()) {
                (None, "BEGIN") if prop.value.trim().eq_ignore_ascii_case("VCARD") => {
                    card = Some(Card::default())
                }
                (None, _) => return Err(format!("line {}: expected BEGIN:VCARD", n + 1)),
                (Some(_), "BEGIN") => {
                    return Err(format!("line {}: a card inside a card", n + 1));
                }
                (Some(_), "END") if prop.value.trim().eq_ignore_ascii_case("VCARD") => ended = true,
                (Some(c), _) => c.props.push(prop),
            }
        }
        match (card, ended) {
            (Some(c), true) => Ok(c),
            (None, _) => Err("no BEGIN:VCARD".into()),
            (Some(_), false) => Err("no END:VCARD".into()),
        }
    }

    /// The card as text: CRLF line ends, lines folded at 75 octets.
    pub fn to_text(&self) -> String {
        let mut out = String::from("BEGIN:VCARD\r\n");
        for p in &self.props {
            let mut line = String::new();
            if let Some(g) = &p.group {
                line.push_str(g);
                line.push('.');
            }
            line.push_str(&p.name);
            for (name, values) in &p.params {
                line.push(';');
                line.push_str(name);
                if !values.is_empty() {
                    line.push('=');
                    let quoted: Vec<String> = values
                        .iter()
                        .map(|v| {
                            if v.contains([':', ';', ',']) {
                                format!("\"{}\"", v.replace('"', "'"))
                            } else {
                                v.clone()
                            }
                        })
                        .collect();
                    line.push_str(&quoted.join(","));
                }
            }
            line.push(':');
            line.push_str(&p.value);
            fold_into(&mut out, &line);
        }
        out.push_str("END:VCARD\r\n");
        out
    }
}

fn fold_into(out: &mut String, line: &str) {
    let mut width = 0;
    for ch in line.chars() {
        let len = ch.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(ch);
        width += len;
    }
    out.push_str("\r\n");
}

fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = raw.strip_prefix([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push_str(rest);
            continue;
        }
        lines.push(raw.to_owned());
    }
    lines
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
    let parts = split_quoted(head, ';');
    let mut parts = parts.into_iter();
    let full_name = parts.next().unwrap_or_default();
    let (group, name) = match full_name.rsplit_once('.') {
        Some((g, n)) => (Some(g.to_owned()), n.to_owned()),
        None => (None, full_name),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("bad property name `{}`", truncate(&name)));
    }
    let mut params = Vec::new();
    for p in parts {
        match p.split_once('=') {
            Some((n, v)) => params.push((
                n.trim().to_ascii_uppercase(),
                split_quoted(v, ',')
                    .into_iter()
                    .map(|s| s.trim_matches('"').to_owned())
                    .collect(),
            )),
            None => params.push((p.trim().to_ascii_uppercase(), Vec::new())),
        }
    }
    Ok(Property {
        group,
        name: name.to_ascii_uppercase(),
        params,
        value: value.to_owned(),
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

/// Escapes a text value (or one component / list item): `\`, `,`, `;` and newlines.
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

/// Joins components (each escaped) with `;`.
pub fn join_components(parts: &[String]) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let _ = write!(out, "{}", escape(p));
    }
    out
}

/// Joins list items (each escaped) with `,`.
pub fn join_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| escape(s))
        .collect::<Vec<_>>()
        .join(",")
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
        // Written and read again: the same properties.
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
}
