//! Who may see the status page, and which posts are the page's own.
//!
//! - No token configured: only requests naming a loopback host (`127.0.0.1`, `[::1]`,
//!   `localhost`) are answered. The listener is on loopback then, and a foreign site
//!   that points its own name at 127.0.0.1 (DNS rebinding) sends its own name as Host.
//! - A token configured: every request carries it, as `Authorization: Bearer`, or as
//!   the HttpOnly, SameSite=Strict cookie set when it was given once as `?token=`
//!   (which is then taken out of the address by a redirect, so it stays out of the
//!   history). Without it, a form asks for it.
//! - Every POST form carries the process's CSRF token (32 random bytes), and a browser's
//!   `Sec-Fetch-Site`, when sent, must say the post came from this site.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, COOKIE, HOST, LOCATION, REFERRER_POLICY,
    SET_COOKIE, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};

use super::{Web, render};

const COOKIE_NAME: &str = "tandem_token";

/// No scripts, no frames, forms only to this site; the inline style sheet is the
/// page's own constant.
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
                      form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The token and the CSRF token of this process.
pub(crate) struct Guard {
    /// `[service] token`.
    token: Option<SecretString>,
    /// What the cookie holds: the token in hex, so any token is a valid cookie value.
    cookie: Option<String>,
    csrf: String,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// # Errors
    /// When the operating system gives no random bytes for the CSRF token.
    pub(crate) fn new(token: Option<SecretString>) -> Result<Guard, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Guard {
            cookie: token.as_ref().map(|t| hex(t.expose_secret().as_bytes())),
            token,
            csrf: hex(&bytes),
        })
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    pub(crate) fn csrf_matches(&self, given: &str) -> bool {
        same(given.as_bytes(), self.csrf.as_bytes())
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| same(given.as_bytes(), t.expose_secret().as_bytes()))
    }

    fn cookie_matches(&self, given: &str) -> bool {
        self.cookie
            .as_ref()
            .is_some_and(|c| same(given.as_bytes(), c.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time that depends on the length only, so a wrong guess tells nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a Host header names this machine's loopback interface.
pub(crate) fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:9465`
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn header(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The middleware in front of every route of the page.
pub(crate) async fn check(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let mut response = admit(&web, request, next).await;
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn admit(web: &Web, request: Request, next: Next) -> Response {
    let guard = &web.guard;
    let headers = request.headers();
    let forbidden = |message: &str| {
        (StatusCode::FORBIDDEN, render::error("Forbidden", message)).into_response()
    };
    if request.method() == Method::POST
        && !matches!(
            header(headers, "sec-fetch-site"),
            "" | "same-origin" | "none"
        )
    {
        return forbidden(
            "This form was posted from another site; open the status page and settle from there.",
        );
    }
    if guard.token.is_none() {
        let host = header(headers, HOST);
        if loopback_host(host) {
            return next.run(request).await;
        }
        return forbidden(
            "Without a configured token the status page answers only on loopback \
             (127.0.0.1, [::1], localhost); set [service] token to reach it under another name.",
        );
    }

    // `?token=` once: the cookie is set and the token leaves the address.
    let path = request.uri().path().to_owned();
    let pairs: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if let Some((_, given)) = pairs.iter().find(|(k, _)| k == "token") {
        let rest: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "token").collect();
        if !guard.token_matches(given) {
            return unauthorized(&path, &rest, true);
        }
        let mut location = path.clone();
        if !rest.is_empty() {
            location.push('?');
            location.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(rest.iter().map(|(k, v)| (k, v)))
                    .finish(),
            );
        }
        let cookie = format!(
            "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
            guard.cookie.as_deref().unwrap_or_default()
        );
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let (Ok(location), Ok(cookie)) = (
            HeaderValue::from_str(&location),
            HeaderValue::from_str(&cookie),
        ) {
            response.headers_mut().insert(LOCATION, location);
            response.headers_mut().insert(SET_COOKIE, cookie);
        }
        return response;
    }
    let bearer = header(headers, AUTHORIZATION).strip_prefix("Bearer ");
    let admitted = bearer.is_some_and(|t| guard.token_matches(t.trim()))
        || cookie(headers, COOKIE_NAME).is_some_and(|c| guard.cookie_matches(c));
    if admitted {
        next.run(request).await
    } else {
        let query: Vec<&(String, String)> = pairs.iter().collect();
        unauthorized(&path, &query, false)
    }
}

/// The token form, which keeps the address's query (a search asked for before the
/// token) in hidden fields.
fn unauthorized(path: &str, query: &[&(String, String)], wrong: bool) -> Response {
    let form = render::token_form(path, query, wrong);
    let mut response = (StatusCode::UNAUTHORIZED, form).into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tandem\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_other_names() {
        for host in [
            "127.0.0.1:9465",
            "127.0.0.1",
            "127.8.0.1:1",
            "[::1]:9465",
            "localhost:9465",
            "LOCALHOST",
            "status.localhost:80",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example:9465",
            "localhost.evil.example",
            "10.0.0.1:9465",
            "[::2]:9465",
            "[::1",
            "127.0.0.1:x",
            "0.0.0.0:9465",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn tokens_are_compared_whole_and_never_shown() {
        let guard = Guard::new(Some(SecretString::from("s3cret; ="))).unwrap();
        assert!(guard.token_matches("s3cret; ="));
        assert!(!guard.token_matches("s3cret; "));
        assert!(!guard.token_matches(""));
        assert!(guard.cookie_matches(&hex(b"s3cret; =")));
        assert!(!format!("{guard:?}").contains("s3cret"));
        assert_eq!(guard.csrf().len(), 64);
        assert!(guard.csrf_matches(&guard.csrf.clone()));
        assert!(!guard.csrf_matches(""));
        let other = Guard::new(None).unwrap();
        assert_ne!(guard.csrf(), other.csrf(), "random per process");
        assert!(!other.token_matches(""), "no token: nothing matches");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; tandem_token=ab12; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE_NAME), Some("ab12"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
