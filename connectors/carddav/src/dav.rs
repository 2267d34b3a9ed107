//! The WebDAV/CardDAV requests the connector makes, and their multistatus answers.

use tandem_connector::ConnectorError;
use tandem_connector::http::{Auth, HttpClient, HttpSettings, Method, Request, StatusCode, Url};

/// A change listed by `sync-collection`.
#[derive(Debug, Default)]
pub struct Sync {
    pub token: String,
    /// Member names (percent-decoded last path segments) that changed, with their ETag.
    pub changed: Vec<String>,
    /// Member names that were removed.
    pub removed: Vec<String>,
}

#[derive(Debug)]
pub enum SyncError {
    /// The server no longer accepts the token (Radicale 403, Xandikos 412).
    TokenRejected,
    Other(ConnectorError),
}

/// One member fetched by `addressbook-multiget`.
#[derive(Debug)]
pub enum Fetched {
    Card { etag: String, data: String },
    Missing,
}

#[derive(Debug)]
pub struct Dav {
    http: HttpClient,
    /// The address book collection, ending with `/`.
    pub url: String,
    path: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub body: String,
    /// An earlier try of the request may have been acted on (see `Reply::repeated`).
    pub repeated: bool,
}

impl Dav {
    pub fn new(url: &str, http: HttpSettings, auth: Auth) -> Result<Dav, ConnectorError> {
        let mut url = url.trim().to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        let parsed = Url::parse(&url)
            .map_err(|e| ConnectorError::config(format!("`url`: `{url}` is not a URL: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // The URL itself is not shown: it holds a password.
            return Err(ConnectorError::config(
                "`url`: put the user and password in `username` and `password`, not in the URL",
            ));
        }
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConnectorError::config(format!(
                "`url`: `{url}` is neither an http:// nor an https:// URL"
            )));
        }
        Ok(Dav {
            http: HttpClient::new("CardDAV", http, auth)?,
            path: parsed.path().to_owned(),
            url,
        })
    }

    /// The URL of member `id`.
    pub fn member_url(&self, id: &str) -> String {
        format!("{}{}", self.url, encode_segment(id))
    }

    /// `text` (from the server) with every secret of the connector masked.
    pub fn mask(&self, text: &str) -> String {
        self.http.redactor().mask(text)
    }

    /// The server's `body` as an error may show it (shortened, redacted).
    pub fn server_text(&self, body: &str, sent: Option<&str>) -> String {
        self.http
            .redactor()
            .server_text(body.as_bytes(), sent.map(str::as_bytes))
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&'static str, &str)],
        body: Option<String>,
    ) -> Result<Answer, ConnectorError> {
        let method = Method::from_bytes(method.as_bytes()).expect("a valid method");
        let mut request = Request::new(method.clone(), url);
        for (k, v) in headers {
            request = request.header(k, *v);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let reply = self.http.send(&request).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(&method, url));
        }
        Ok(Answer {
            status: reply.status,
            etag: reply.header("etag").map(str::to_owned),
            body: reply.text(),
            repeated: reply.repeated,
        })
    }

    /// An answer the protocol does not expect, with the server's text.
    fn unexpected(&self, what: &str, a: &Answer) -> ConnectorError {
        let text = self.server_text(&a.body, None);
        ConnectorError::fatal(format!(
            "{what} {}: unexpected {}: {text}",
            self.url, a.status
        ))
    }

    /// A 401, with the settings to check.
    fn unauthorized(&self, method: &Method, url: &str) -> ConnectorError {
        let check = match self.http.auth() {
            Auth::Basic { .. } => "check `username` and `password`",
            Auth::Bearer(_) => "check `token` (expired or revoked?)",
            Auth::None => {
                "the server asks for credentials: set `username` and `password`, or `token`"
            }
        };
        ConnectorError::Auth {
            message: format!("CardDAV {method} {url}: 401 Unauthorized; {check}"),
        }
    }

    /// `PROPFIND` Depth 0: is the URL an address book?
    pub async fn check(&self) -> Result<(), ConnectorError> {
        let body = r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/></d:prop></d:propfind>"#;
        let a = self
            .request(
                "PROPFIND",
                &self.url,
                &[
                    ("Depth", "0"),
                    ("Content-Type", "application/xml; charset=utf-8"),
                ],
                Some(body.into()),
            )
            .await?;
        match a.status.as_u16() {
            207 => {}
            403 => {
                return Err(ConnectorError::Auth {
                    message: format!(
                        "PROPFIND {}: 403 Forbidden (not this user's book?)",
                        self.url
                    ),
                });
            }
            404 => {
                return Err(ConnectorError::config(format!(
                    "url: no address book at {}",
                    self.url
                )));
            }
            _ => {
                return Err(self.unexpected("PROPFIND", &a));
            }
        }
        let doc = parse_xml(&a.body, &self.url)?;
        let is_book = doc.descendants().any(|n| {
            n.tag_name().name() == "addressbook"
                && n.tag_name().namespace() == Some("urn:ietf:params:xml:ns:carddav")
        });
        if is_book {
            Ok(())
        } else {
            Err(ConnectorError::config(format!(
                "url: {} is not a CardDAV address book",
                self.url
            )))
        }
    }

    /// RFC 6578 `sync-collection`; `None` lists every member.
    pub async fn sync(&self, token: Option<&str>) -> Result<Sync, SyncError> {
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:"><d:sync-token>{}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#,
            xml_escape(token.unwrap_or(""))
        );
        let a = self
            .request(
                "REPORT",
                &self.url,
                &[
                    ("Depth", "1"),
                    ("Content-Type", "application/xml; charset=utf-8"),
                ],
                Some(body),
            )
            .await
            .map_err(SyncError::Other)?;
        match a.status.as_u16() {
            207 => {}
            403 | 412 if token.is_some() => return Err(SyncError::TokenRejected),
            404 => {
                return Err(SyncError::Other(ConnectorError::config(format!(
                    "url: no address book at {}",
                    self.url
                ))));
            }
            403 => {
                return Err(SyncError::Other(ConnectorError::Auth {
                    message: format!("REPORT {}: 403 Forbidden", self.url),
                }));
            }
            _ => {
                return Err(SyncError::Other(
                    self.unexpected("REPORT sync-collection", &a),
                ));
            }
        }
        let doc = parse_xml(&a.body, &self.url).map_err(SyncError::Other)?;
        let mut out = Sync::default();
        for n in doc.descendants() {
            if is_dav(&n, "sync-token") && n.parent().is_some_and(|p| is_dav(&p, "multistatus")) {
                out.token = n.text().unwrap_or("").trim().to_owned();
            }
            if !is_dav(&n, "response") {
                continue;
            }
            let Some(href) = child_text(&n, "href") else {
                continue;
            };
            let Some(id) = self.member_id(&href) else {
                continue;
            };
            let gone = n
                .children()
                .find(|c| is_dav(c, "status"))
                .and_then(|s| s.text())
                .is_some_and(|s| s.contains(" 404"));
            if gone {
                out.removed.push(id);
            } else {
                out.changed.push(id);
            }
        }
        if out.token.is_empty() {
            return Err(SyncError::Other(ConnectorError::fatal(format!(
                "REPORT sync-collection {}: the answer carries no sync-token",
                self.url
            ))));
        }
        Ok(out)
    }

    /// `addressbook-multiget` of `ids`, answering per id.
    pub async fn multiget(&self, ids: &[String]) -> Result<Vec<(String, Fetched)>, ConnectorError> {
        let mut hrefs = String::new();
        for id in ids {
            hrefs.push_str("<d:href>");
            hrefs.push_str(&xml_escape(&format!("{}{}", self.path, encode_segment(id))));
            hrefs.push_str("</d:href>");
        }
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><card:address-data/></d:prop>{hrefs}</card:addressbook-multiget>"#
        );
        let a = self
            .request(
                "REPORT",
                &self.url,
                &[
                    ("Depth", "1"),
                    ("Content-Type", "application/xml; charset=utf-8"),
                ],
                Some(body),
            )
            .await?;
        if a.status.as_u16() != 207 {
            return Err(self.unexpected("REPORT addressbook-multiget", &a));
        }
        let doc = parse_xml(&a.body, &self.url)?;
        let mut out = Vec::new();
        for n in doc.descendants().filter(|n| is_dav(n, "response")) {
            let Some(id) = child_text(&n, "href").and_then(|h| self.member_id(&h)) else {
                continue;
            };
            let mut etag = None;
            let mut data = None;
            for d in n.descendants() {
                if is_dav(&d, "getetag") {
                    etag = d.text().map(|t| t.trim().to_owned());
                }
                if d.tag_name().name() == "address-data" {
                    data = Some(d.text().unwrap_or("").to_owned());
                }
            }
            match (etag, data) {
                (Some(etag), Some(data)) if !data.trim().is_empty() => {
                    out.push((id, Fetched::Card { etag, data }))
                }
                _ => out.push((id, Fetched::Missing)),
            }
        }
        Ok(out)
    }

    /// The member id of `href` if it is a member of this book (not the book itself).
    fn member_id(&self, href: &str) -> Option<String> {
        let path = match Url::parse(href) {
            Ok(u) => u.path().to_owned(),
            Err(_) => href.to_owned(),
        };
        let path = path.trim();
        let rest = decode(path).strip_prefix(&decode(&self.path))?.to_owned();
        let rest = rest.trim_end_matches('/');
        (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
    }
}

fn is_dav(n: &roxmltree::Node, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some("DAV:")
}

fn child_text(n: &roxmltree::Node, name: &str) -> Option<String> {
    n.children()
        .find(|c| is_dav(c, name))
        .and_then(|c| c.text())
        .map(|t| t.trim().to_owned())
}

fn parse_xml<'a>(body: &'a str, url: &str) -> Result<roxmltree::Document<'a>, ConnectorError> {
    roxmltree::Document::parse(body).map_err(|e| {
        ConnectorError::fatal(format!("{url}: the server's XML answer is malformed: {e}"))
    })
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Percent-encodes one path segment (unreserved characters and a few safe ones stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && s.is_char_boundary(i + 3)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
