//! HTTP Digest authentication for clients (RFC 7616, and RFC 2617 servers): the
//! challenge a server sends in `WWW-Authenticate`, and the `Authorization` answering it.
//!
//! Algorithms `MD5`, `MD5-sess`, `SHA-256` and `SHA-256-sess`; quality of protection
//! `auth`, or none (RFC 2069 servers). When a server offers several challenges, the
//! strongest usable one is taken (SHA-256 before MD5). The password is read only to
//! compute an answer; neither it nor the hash derived from it (`HA1`) is kept.
//!
//! Hand-written rather than taken from the `digest_auth` crate: that crate has had no
//! release since 2023, brings a second `rand` into the tree, and reads one challenge
//! per header, so a header offering Digest next to Basic (or two Digest algorithms)
//! would need splitting here anyway. The hashes come from ring (already the TLS
//! provider) and RustCrypto's `md-5`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

use md5::Digest as _;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};

/// A Digest hash function, with or without the `-sess` variant of `HA1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Algorithm> {
        match name.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "MD5-SESS" => Some(Algorithm::Md5Sess),
            "SHA-256" => Some(Algorithm::Sha256),
            "SHA-256-SESS" => Some(Algorithm::Sha256Sess),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn strength(self) -> u8 {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
        }
    }

    fn sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// The lower-case hex digest of `data`.
    fn hash(self, data: &str) -> String {
        let bytes: Vec<u8> = match self {
            Algorithm::Md5 | Algorithm::Md5Sess => md5::Md5::digest(data.as_bytes()).to_vec(),
            Algorithm::Sha256 | Algorithm::Sha256Sess => {
                ring::digest::digest(&ring::digest::SHA256, data.as_bytes())
                    .as_ref()
                    .to_vec()
            }
        };
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

/// One usable Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `qop=auth` offered; `false` for an RFC 2069 server that offers no qop.
    pub qop_auth: bool,
    /// The server wants the user name hashed (RFC 7616 `userhash=true`).
    pub userhash: bool,
    /// The nonce we used expired; the credentials were right (`stale=true`).
    pub stale: bool,
}

/// What the `WWW-Authenticate` headers of a 401 offer for Digest.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    None,
    /// The strongest challenge Tandem can answer.
    Usable(Challenge),
    /// Digest, but only with algorithms or a quality of protection Tandem does not
    /// support (named, for the message).
    Unsupported(String),
}

/// The Digest challenge to answer among `headers`' `WWW-Authenticate` values.
pub fn offer(headers: &HeaderMap) -> Offer {
    let mut best: Option<Challenge> = None;
    let mut unsupported = Vec::new();
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(value) = value.to_str() else { continue };
        for (scheme, params) in challenges(value) {
            if !scheme.eq_ignore_ascii_case("digest") {
                continue;
            }
            match Challenge::from_params(&params) {
                Ok(c) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| c.algorithm.strength() > b.algorithm.strength())
                    {
                        best = Some(c);
                    }
                }
                Err(what) => unsupported.push(what),
            }
        }
    }
    match (best, unsupported.is_empty()) {
        (Some(c), _) => Offer::Usable(c),
        (None, true) => Offer::None,
        (None, false) => Offer::Unsupported(unsupported.join(", ")),
    }
}

impl Challenge {
    fn from_params(params: &[(String, String)]) -> Result<Challenge, String> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let algorithm_name = get("algorithm").unwrap_or_else(|| "MD5".into());
        let algorithm = Algorithm::parse(&algorithm_name)
            .ok_or_else(|| format!("algorithm {algorithm_name}"))?;
        let qop = get("qop");
        let qop_auth = qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
        if qop.is_some() && !qop_auth {
            return Err(format!("qop {}", qop.unwrap_or_default()));
        }
        let flag = |name: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Challenge {
            realm: get("realm").unwrap_or_default(),
            nonce: get("nonce").ok_or("a challenge without a nonce")?,
            opaque: get("opaque"),
            algorithm,
            qop_auth,
            userhash: flag("userhash"),
            stale: flag("stale"),
        })
    }

    /// The `response` value for a request (RFC 7616 section 3.4.1).
    pub fn response(
        &self,
        credentials: (&str, &str),
        target: (&str, &str),
        count: (u32, &str),
    ) -> String {
        let ((user, password), (method, uri), (nc, cnonce)) = (credentials, target, count);
        let h = |data: &str| self.algorithm.hash(data);
        let mut ha1 = h(&format!("{user}:{}:{password}", self.realm));
        if self.algorithm.sess() {
            ha1 = h(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = h(&format!("{method}:{uri}"));
        if self.qop_auth {
            h(&format!(
                "{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}",
                self.nonce
            ))
        } else {
            h(&format!("{ha1}:{}:{ha2}", self.nonce))
        }
    }
}

/// A challenge being answered, request after request, with a rising nonce count.
#[derive(Debug)]
pub struct DigestAnswer {
    pub challenge: Challenge,
    count: AtomicU32,
}

impl DigestAnswer {
    pub fn new(challenge: Challenge) -> DigestAnswer {
        DigestAnswer {
            challenge,
            count: AtomicU32::new(0),
        }
    }

    /// The `Authorization` value for `method` on `uri` (the request target: path and
    /// query), with the next nonce count and a fresh client nonce.
    pub fn authorization(
        &self,
        user: &str,
        password: &SecretString,
        method: &str,
        uri: &str,
    ) -> SecretString {
        let nc = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let cnonce = cnonce();
        let c = &self.challenge;
        let response = c.response(
            (user, password.expose_secret()),
            (method, uri),
            (nc, &cnonce),
        );
        let mut out = String::from("Digest ");
        if c.userhash {
            let _ = write!(
                out,
                "username=\"{}\"",
                c.algorithm.hash(&format!("{user}:{}", c.realm))
            );
        } else if user.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            let _ = write!(out, "username={}", quoted(user));
        } else {
            // RFC 7616 section 3.4.4: a name that is no plain ASCII is sent encoded.
            let _ = write!(out, "username*=UTF-8''{}", percent(user));
        }
        let _ = write!(
            out,
            ", realm={}, uri={}, algorithm={}, nonce={}",
            quoted(&c.realm),
            quoted(uri),
            c.algorithm.name(),
            quoted(&c.nonce)
        );
        if c.qop_auth {
            let _ = write!(out, ", nc={nc:08x}, cnonce=\"{cnonce}\", qop=auth");
        }
        let _ = write!(out, ", response=\"{response}\"");
        if let Some(opaque) = &c.opaque {
            let _ = write!(out, ", opaque={}", quoted(opaque));
        }
        if c.userhash {
            out.push_str(", userhash=true");
        }
        SecretString::from(out)
    }
}

/// 16 random bytes, hex.
fn cnonce() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    // The system's generator fails only when the system has none: fall back to the
    // per-process random keys of the standard library, which still vary per request.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        bytes[..8].copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn percent(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 section 11.6.1): each a
/// scheme and its parameters, names as sent, values unquoted.
pub fn challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return out;
        }
        let end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..end];
        let after = rest[end..].trim_start();
        if let Some(value_start) = after.strip_prefix('=')
            && !value_start.starts_with('=')
            && let Some((_, params)) = out.last_mut()
        {
            let (v, remaining) = param_value(value_start.trim_start());
            params.push((token.to_owned(), v));
            rest = remaining;
        } else if token.is_empty() {
            // A stray character (a token68's padding): step over it.
            rest = &rest[1..];
        } else {
            out.push((token.to_owned(), Vec::new()));
            rest = &rest[end..];
        }
    }
}

/// A parameter value (token or quoted string) and the text after it.
fn param_value(s: &str) -> (String, &str) {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(s.len());
        return (s[..end].to_owned(), &s[end..]);
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            '"' => return (value, &quoted[i + 1..]),
            _ => value.push(c),
        }
    }
    (value, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const RFC7616: &str = r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=ALG, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn usable(h: &HeaderMap) -> Challenge {
        match offer(h) {
            Offer::Usable(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rfc_7616_examples_are_answered_with_md5_and_sha_256() {
        for (alg, want) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let c = usable(&headers(&[&RFC7616.replace("ALG", alg)]));
            assert_eq!(c.realm, "http-auth@example.org");
            assert!(c.qop_auth);
            let got = c.response(
                ("Mufasa", "Circle of Life"),
                ("GET", "/dir/index.html"),
                (1, CNONCE),
            );
            assert_eq!(got, want, "{alg}");
        }
    }

    #[test]
    fn the_rfc_2617_example_is_answered() {
        let h = headers(&[
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        ]);
        let c = usable(&h);
        assert_eq!(c.algorithm, Algorithm::Md5);
        let got = c.response(
            ("Mufasa", "Circle Of Life"),
            ("GET", "/dir/index.html"),
            (1, "0a4f113b"),
        );
        assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn sha_256_is_preferred_and_basic_beside_digest_is_ignored() {
        let md5 = RFC7616.replace("ALG", "MD5");
        let sha = RFC7616.replace("ALG", "SHA-256");
        let h = headers(&[&format!("Basic realm=\"x\", {md5}, {sha}")]);
        assert_eq!(usable(&h).algorithm, Algorithm::Sha256);
        let h = headers(&[&md5, "Basic realm=\"b\", charset=\"UTF-8\""]);
        assert_eq!(usable(&h).algorithm, Algorithm::Md5);
        assert_eq!(offer(&headers(&["Basic realm=\"b\""])), Offer::None);
        assert_eq!(offer(&HeaderMap::new()), Offer::None);
    }

    #[test]
    fn unsupported_algorithms_and_qop_are_named() {
        let h = headers(&[&RFC7616.replace("ALG", "SHA-512-256")]);
        assert_eq!(
            offer(&h),
            Offer::Unsupported("algorithm SHA-512-256".into())
        );
        let h = headers(&[r#"Digest realm="r", nonce="n", qop="auth-int""#]);
        assert_eq!(offer(&h), Offer::Unsupported("qop auth-int".into()));
    }

    #[test]
    fn the_authorization_carries_a_rising_count_and_never_the_password() {
        let c = usable(&headers(&[&RFC7616.replace("ALG", "SHA-256-sess")]));
        let answer = DigestAnswer::new(c);
        let password = SecretString::from("Circle of Life");
        let first = answer.authorization("Mufasa", &password, "PUT", "/a%20b/c.vcf?x=1");
        let second = answer.authorization("Mufasa", &password, "PUT", "/a%20b/c.vcf?x=1");
        let (first, second) = (first.expose_secret(), second.expose_secret());
        assert!(first.starts_with("Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/a%20b/c.vcf?x=1\", algorithm=SHA-256-sess"), "{first}");
        assert!(first.contains("nc=00000001") && second.contains("nc=00000002"));
        assert!(first.contains("qop=auth,") && first.contains("opaque=\"FQhe"));
        assert!(!first.contains("Circle"), "{first}");
        // A fresh client nonce for every request.
        let cnonce = |s: &str| s.split("cnonce=\"").nth(1).unwrap()[..32].to_owned();
        assert_ne!(cnonce(first), cnonce(second));
    }

    #[test]
    fn quoted_values_commas_and_escapes_are_read() {
        let got = challenges(
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple", Negotiate abc=="#,
        );
        assert_eq!(got[0].0, "Newauth");
        assert_eq!(got[0].1[2], ("title".into(), "Login to \"apps\"".into()));
        assert_eq!(
            got[1],
            ("Basic".into(), vec![("realm".into(), "simple".into())])
        );
        assert_eq!(got[2].0, "Negotiate");
    }

    #[test]
    fn a_server_without_qop_gets_the_rfc_2069_answer() {
        let c = usable(&headers(&[r#"Digest realm="r", nonce="n""#]));
        assert!(!c.qop_auth);
        let answer = DigestAnswer::new(c.clone());
        let a = answer.authorization("u", &SecretString::from("p"), "GET", "/");
        assert!(!a.expose_secret().contains("qop"));
        let ha1 = Algorithm::Md5.hash("u:r:p");
        let ha2 = Algorithm::Md5.hash("GET:/");
        let want = Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}"));
        assert!(a.expose_secret().contains(&want));
    }
}
