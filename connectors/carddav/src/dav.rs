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

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The server no longer accepts the token (Radicale 403, Xandikos 412).
    #[error("the server rejected the sync token")]
    TokenRejected,
    /// The server has no `sync-collection` report (SabreDAV 1.8 answers 403
    /// `supported-report`), or answers it without a sync token (Calypso).
    #[error("the server does not support sync-collection: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Other(ConnectorError),
}

/// What a `REPORT` answer that is no multistatus says when the server lacks the report:
/// RFC 3253's `supported-report` precondition, or the text of servers that skip it.
const NOT_SUPPORTED: [&str; 5] = [
    "supported-report",
    "reportnotsupported",
    "not supported",
    "not implemented",
    "unsupported",
];

/// Whether a `REPORT` answer says the server does not know the report.
fn report_unsupported(status: u16, body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    status == 501 || NOT_SUPPORTED.iter().any(|m| body.contains(m))
}

/// Whether the book offers `sync-collection`, as its `supported-report-set` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reports {
    /// Listed among the supported reports.
    Sync,
    /// The server lists its reports, and `sync-collection` is not among them.
    NoSync,
    /// The server does not say (no `supported-report-set`).
    Unknown,
}

/// What an `addressbook-multiget` got.
#[derive(Debug)]
pub enum Multiget {
    /// One answer per card the server knows (404 for those it does not).
    Cards(Vec<(String, Fetched)>),
    /// The whole request failed with 404 because one href is missing (SabreDAV 1.8).
    NotFound,
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
            Auth::Basic { .. } if self.http.uses_digest() => {
                "check `username` and `password` (sent as HTTP Digest, as the server asks)"
            }
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
        let a = self.propfind("0", body).await?;
        if a.status.as_u16() != 207 {
            return Err(self.unexpected("PROPFIND", &a));
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
        if a.status.as_u16() != 207 {
            return Err(self.sync_refused(&a, token.is_some()));
        }
        self.parse_sync(&a.body)
    }

    /// What a `sync-collection` answer other than 207 means.
    fn sync_refused(&self, a: &Answer, with_token: bool) -> SyncError {
        let status = a.status.as_u16();
        let token_refused = matches!(status, 403 | 412) && with_token;
        if token_refused && a.body.contains("valid-sync-token") {
            return SyncError::TokenRejected;
        }
        if report_unsupported(status, &a.body) {
            let text = self.server_text(&a.body, None);
            return SyncError::Unsupported(format!("{}: {text}", a.status));
        }
        match status {
            _ if token_refused => SyncError::TokenRejected,
            404 => SyncError::Other(ConnectorError::config(format!(
                "url: no address book at {}",
                self.url
            ))),
            403 => SyncError::Other(ConnectorError::Auth {
                message: format!("REPORT {}: 403 Forbidden (not this user's book?)", self.url),
            }),
            _ => SyncError::Other(self.unexpected("REPORT sync-collection", a)),
        }
    }

    /// The members a `sync-collection` multistatus lists, changed or removed.
    fn parse_sync(&self, body: &str) -> Result<Sync, SyncError> {
        let doc = parse_xml(body, &self.url).map_err(SyncError::Other)?;
        let mut out = Sync::default();
        for n in doc.descendants() {
            if is_dav(&n, "sync-token") && n.parent().is_some_and(|p| is_dav(&p, "multistatus")) {
                out.token = n.text().unwrap_or("").trim().to_owned();
            }
            if !is_dav(&n, "response") {
                continue;
            }
            let Some(id) = child_text(&n, "href").and_then(|h| self.member_id(&h)) else {
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
            // Calypso: a listing, but nothing to resume from.
            return Err(SyncError::Unsupported(
                "the answer carries no sync-token".into(),
            ));
        }
        Ok(out)
    }

    /// `addressbook-multiget` of `ids`, answering per id.
    pub async fn multiget(&self, ids: &[String]) -> Result<Multiget, ConnectorError> {
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
        match a.status.as_u16() {
            207 => {}
            404 => return Ok(Multiget::NotFound),
            _ => return Err(self.unexpected("REPORT addressbook-multiget", &a)),
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
        Ok(Multiget::Cards(out))
    }

    /// `PROPFIND` Depth 0 of the book's `supported-report-set`.
    pub async fn reports(&self) -> Result<Reports, ConnectorError> {
        let body = r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop><d:supported-report-set/></d:prop></d:propfind>"#;
        let a = self.propfind("0", body).await?;
        if a.status.as_u16() != 207 {
            // Some servers refuse to say: then the REPORT's answer decides.
            return Ok(Reports::Unknown);
        }
        self.parse_reports(&a.body)
    }

    fn parse_reports(&self, body: &str) -> Result<Reports, ConnectorError> {
        let doc = parse_xml(body, &self.url)?;
        let Some(set) = doc
            .descendants()
            .find(|n| is_dav(n, "supported-report-set") && ok_propstat(n))
        else {
            return Ok(Reports::Unknown);
        };
        let sync = set.descendants().any(|n| is_dav(&n, "sync-collection"));
        Ok(if sync { Reports::Sync } else { Reports::NoSync })
    }

    /// The member names of the book with their ETags (`PROPFIND` Depth 1), collections
    /// left out: a full listing for servers without `sync-collection`.
    pub async fn members(&self) -> Result<Vec<(String, Option<String>)>, ConnectorError> {
        let body = r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/><d:getetag/></d:prop></d:propfind>"#;
        let a = self.propfind("1", body).await?;
        if a.status.as_u16() != 207 {
            return Err(self.unexpected("PROPFIND Depth 1", &a));
        }
        self.parse_members(&a.body)
    }

    /// The members a `PROPFIND` Depth 1 multistatus lists, with their ETags.
    fn parse_members(&self, body: &str) -> Result<Vec<(String, Option<String>)>, ConnectorError> {
        let doc = parse_xml(body, &self.url)?;
        // RFC 4918: 507 on the collection marks a listing the server cut short; members
        // missing from it are not gone.
        let truncated = doc
            .descendants()
            .any(|n| is_dav(&n, "status") && n.text().is_some_and(|t| t.contains(" 507")));
        if truncated {
            return Err(ConnectorError::transient(format!(
                "PROPFIND {}: the server cut the listing short (507)",
                self.url
            )));
        }
        let mut out = Vec::new();
        for n in doc.descendants().filter(|n| is_dav(n, "response")) {
            let collection = n.descendants().any(|c| is_dav(&c, "collection"));
            if let Some(id) = child_text(&n, "href").and_then(|h| self.member_id(&h))
                && !collection
            {
                let etag = n
                    .descendants()
                    .find(|c| is_dav(c, "getetag") && ok_propstat(c))
                    .and_then(|c| c.text())
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty());
                out.push((id, etag));
            }
        }
        Ok(out)
    }

    /// A `PROPFIND` of the book; 403 and 404 are errors naming what to check.
    async fn propfind(&self, depth: &str, body: &str) -> Result<Answer, ConnectorError> {
        let a = self
            .request(
                "PROPFIND",
                &self.url,
                &[
                    ("Depth", depth),
                    ("Content-Type", "application/xml; charset=utf-8"),
                ],
                Some(body.into()),
            )
            .await?;
        match a.status.as_u16() {
            403 => Err(ConnectorError::Auth {
                message: format!(
                    "PROPFIND {}: 403 Forbidden (not this user's book?)",
                    self.url
                ),
            }),
            404 => Err(ConnectorError::config(format!(
                "url: no address book at {}",
                self.url
            ))),
            _ => Ok(a),
        }
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

/// Whether the `propstat` holding `n` says 200.
fn ok_propstat(n: &roxmltree::Node) -> bool {
    n.ancestors()
        .find(|a| is_dav(a, "propstat"))
        .and_then(|p| child_text(&p, "status"))
        .is_none_or(|s| s.contains(" 200"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_connector::http::HttpSettings;

    fn dav() -> Dav {
        let http = HttpSettings::with_timeouts(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
        );
        Dav::new("http://127.0.0.1:1/u/book", http, Auth::None).unwrap()
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            etag: None,
            body: body.into(),
            repeated: false,
        }
    }

    const SABRE_403: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns">
  <s:exception>Sabre\DAV\Exception\ReportNotSupported</s:exception>
  <s:message/>
  <d:supported-report/>
</d:error>"#;

    #[test]
    fn report_not_supported_is_told_from_a_rejected_token_and_a_refusal() {
        let d = dav();
        for (status, body, token) in [
            (403, SABRE_403, false),
            (403, SABRE_403, true),
            (501, "Not Implemented", false),
            (400, "REPORT not supported", false),
        ] {
            let e = d.sync_refused(&answer(status, body), token);
            assert!(matches!(e, SyncError::Unsupported(_)), "{status}: {e}");
        }
        // Radicale (403) and Xandikos (412) reject a token with `valid-sync-token`, and
        // Xandikos' message says "invalid", which is no unsupported report.
        let xandikos =
            r#"<error xmlns="DAV:"><valid-sync-token/>Requested sync token x is invalid</error>"#;
        for (status, body) in [
            (
                403,
                "<D:error xmlns:D=\"DAV:\"><D:valid-sync-token/></D:error>",
            ),
            (412, xandikos),
        ] {
            let e = d.sync_refused(&answer(status, body), true);
            assert!(matches!(e, SyncError::TokenRejected), "{status}: {e}");
        }
        // A plain 403 to a listing is a refusal, named so; never "unsupported".
        let e = d.sync_refused(&answer(403, "Access denied"), false);
        match e {
            SyncError::Other(ConnectorError::Auth { message }) => {
                assert!(message.contains("not this user's book"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sync_answer_without_a_token_means_no_sync_collection() {
        let body = r#"<d:multistatus xmlns:d="DAV:"><d:response><d:href>/u/book/a.vcf</d:href><d:propstat><d:prop><d:getetag>"1"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"#;
        let e = dav().parse_sync(body).unwrap_err();
        assert!(matches!(e, SyncError::Unsupported(_)), "{e}");
        let with_token = body.replace(
            "</d:multistatus>",
            "<d:sync-token>t1</d:sync-token></d:multistatus>",
        );
        let sync = dav().parse_sync(&with_token).unwrap();
        assert_eq!(
            (sync.token.as_str(), sync.changed),
            ("t1", vec!["a.vcf".to_owned()])
        );
    }

    #[test]
    fn a_listing_skips_the_book_and_sub_collections_and_keeps_etags() {
        let body = r#"<d:multistatus xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav">
<d:response><d:href>/u/book/</d:href><d:propstat><d:prop><d:resourcetype><d:collection/><card:addressbook/></d:resourcetype></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat><d:propstat><d:prop><d:getetag/></d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat></d:response>
<d:response><d:href>/u/book/sub/</d:href><d:propstat><d:prop><d:resourcetype><d:collection/></d:resourcetype></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
<d:response><d:href>/u/book/a%20b.vcf</d:href><d:propstat><d:prop><d:getetag>"e1"</d:getetag><d:resourcetype/></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
<d:response><d:href>http://127.0.0.1:1/u/book/c.vcf</d:href><d:propstat><d:prop><d:resourcetype/></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat><d:propstat><d:prop><d:getetag/></d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat></d:response>
</d:multistatus>"#;
        let members = dav().parse_members(body).unwrap();
        let cut = body.replace(
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 507 Insufficient Storage",
        );
        assert!(dav().parse_members(&cut).is_err());
        assert_eq!(
            members,
            vec![
                ("a b.vcf".to_owned(), Some("\"e1\"".to_owned())),
                ("c.vcf".to_owned(), None)
            ]
        );
    }

    #[test]
    fn the_report_set_says_whether_sync_collection_is_offered() {
        let set = |reports: &str, status: &str| {
            format!(
                r#"<d:multistatus xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:response><d:href>/u/book/</d:href><d:propstat><d:prop><d:supported-report-set>{reports}</d:supported-report-set></d:prop><d:status>HTTP/1.1 {status}</d:status></d:propstat></d:response></d:multistatus>"#
            )
        };
        let multiget = "<d:supported-report><d:report><card:addressbook-multiget/></d:report></d:supported-report>";
        let sync =
            "<d:supported-report><d:report><d:sync-collection/></d:report></d:supported-report>";
        let d = dav();
        let with_sync = set(&format!("{multiget}{sync}"), "200 OK");
        assert_eq!(d.parse_reports(&with_sync).unwrap(), Reports::Sync);
        assert_eq!(
            d.parse_reports(&set(multiget, "200 OK")).unwrap(),
            Reports::NoSync
        );
        assert_eq!(
            d.parse_reports(&set("", "404 Not Found")).unwrap(),
            Reports::Unknown
        );
    }
}
