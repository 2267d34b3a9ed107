//! Server text made safe for errors and logs: shortened, secrets masked, and not shown
//! at all when it repeats the request (a server or proxy that echoes what it received
//! would otherwise print a password).

use std::fmt;
use std::sync::RwLock;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// How much of a server's text an error shows.
const SHOWN_CHARS: usize = 200;
/// How much of a reply is searched for secrets and echoes.
const SEARCHED_BYTES: usize = 64 * 1024;
/// A reply holding this much of the start of the request body repeats the request.
const ECHO_PREFIX: usize = 48;

const MASK: &str = "[REDACTED]";

/// The secrets of one connector, in every form they are sent in.
#[derive(Default)]
pub struct Redactor {
    forms: RwLock<Vec<SecretString>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor([REDACTED])")
    }
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Masks `secret` as sent raw and inside a JSON string.
    pub fn add(&self, secret: &SecretString) {
        let raw = secret.expose_secret();
        if raw.is_empty() {
            return;
        }
        let mut forms = vec![raw.to_owned()];
        let json = serde_json::to_string(raw).unwrap_or_default();
        let json = json.trim_matches('"');
        if json != raw {
            forms.push(json.to_owned());
        }
        self.extend(forms);
    }

    /// Masks the credentials of HTTP basic auth, also as their base64 header value.
    pub fn add_basic(&self, user: &str, password: &SecretString) {
        self.add(password);
        let pair = format!("{user}:{}", password.expose_secret());
        self.extend(vec![base64::engine::general_purpose::STANDARD.encode(pair)]);
    }

    fn extend(&self, forms: Vec<String>) {
        let mut all = self.forms.write().unwrap_or_else(|e| e.into_inner());
        for form in forms {
            if !all.iter().any(|f| f.expose_secret() == form) {
                all.push(SecretString::from(form));
            }
        }
        // Longest first, so that a secret inside a longer one is not half masked.
        all.sort_by_key(|f| std::cmp::Reverse(f.expose_secret().len()));
    }

    /// `text` with every known secret replaced by `[REDACTED]`.
    pub fn mask(&self, text: &str) -> String {
        let forms = self.forms.read().unwrap_or_else(|e| e.into_inner());
        let mut out = text.to_owned();
        for form in forms.iter() {
            if out.contains(form.expose_secret()) {
                out = out.replace(form.expose_secret(), MASK);
            }
        }
        out
    }

    /// A server's reply `body`, fit for an error message: masked, on one line, at most
    /// 200 characters; not shown when it repeats the request (`sent` is the request
    /// body) or carries an `Authorization` header.
    pub fn server_text(&self, body: &[u8], sent: Option<&[u8]>) -> String {
        let text = String::from_utf8_lossy(&body[..body.len().min(SEARCHED_BYTES)]);
        if repeats_request(&text, sent) {
            return "(the reply repeats the request, so it is not shown)".to_owned();
        }
        let masked = self.mask(&text);
        let one_line = masked.split_whitespace().collect::<Vec<_>>().join(" ");
        match one_line.char_indices().nth(SHOWN_CHARS) {
            Some((cut, _)) => format!("{}…", &one_line[..cut]),
            None => one_line,
        }
    }
}

fn repeats_request(reply: &str, sent: Option<&[u8]>) -> bool {
    if reply.to_ascii_lowercase().contains("authorization:") {
        return true;
    }
    let Some(sent) = sent.filter(|s| !s.is_empty()) else {
        return false;
    };
    let prefix = String::from_utf8_lossy(&sent[..sent.len().min(ECHO_PREFIX)]);
    reply.contains(prefix.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_every_form() {
        let r = Redactor::new();
        r.add_basic("sales", &SecretString::from("pa\"ss word"));
        let basic = base64::engine::general_purpose::STANDARD.encode("sales:pa\"ss word");
        let text = format!("raw pa\"ss word, json pa\\\"ss word, header Basic {basic}");
        let masked = r.mask(&text);
        assert!(!masked.contains("ss word"), "{masked}");
        assert!(!masked.contains(&basic), "{masked}");
    }

    #[test]
    fn echoes_are_not_shown_and_long_text_is_cut() {
        let r = Redactor::new();
        let sent = br#"{"id":1,"method":"common.db.login","params":["admin",{"password":"x"}]}"#;
        let echo = [
            b"HTTP/1.1 500\r\n\r\nPOST /db/rpc/ HTTP/1.1\r\n\r\n".as_slice(),
            sent,
        ]
        .concat();
        assert!(r.server_text(&echo, Some(sent)).contains("not shown"));
        assert!(
            r.server_text(b"Authorization: Session abc", None)
                .contains("not shown")
        );
        let long = "word ".repeat(100);
        let shown = r.server_text(long.as_bytes(), Some(b"other"));
        assert_eq!(shown.chars().count(), SHOWN_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
