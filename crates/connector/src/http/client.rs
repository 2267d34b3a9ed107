//! [`HttpClient`]: one connector's HTTP client with its TLS roots, timeouts, retries,
//! rate limit and redactor.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use backon::Retryable as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use super::digest::{self, DigestAnswer, Offer};
use super::retry::{self, Failure};
use super::{HttpError, HttpSettings, Redactor, tls};
use crate::ConnectorError;

/// The credentials a client sends with every request (unless a request carries its own
/// `Authorization`, [`Request::authorization`]).
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// A user and password: sent as HTTP basic auth, until the server answers with a
    /// Digest challenge (RFC 7616); from then on every request answers that challenge
    /// instead, and the password itself is no longer sent.
    Basic {
        user: String,
        password: Option<SecretString>,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
}

/// One request, kept whole so that it can be sent again.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    safe: bool,
    authorization: Option<SecretString>,
    what: Option<String>,
}

impl Request {
    /// A request that may be sent twice unless it is a `POST` (see [`Request::once`]).
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            safe: method != Method::POST && method != Method::PATCH,
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            authorization: None,
            what: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Request {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Whether the request may be sent twice; when not, it is retried only when the
    /// server certainly did not act on it (no connection, 429, 503).
    pub fn safe(mut self, safe: bool) -> Request {
        self.safe = safe;
        self
    }

    /// Sends this `Authorization` value instead of the client's credentials.
    pub fn authorization(mut self, value: SecretString) -> Request {
        self.authorization = Some(value);
        self
    }

    /// How errors name the request (default: method and URL).
    pub fn describe(mut self, what: impl Into<String>) -> Request {
        self.what = Some(what.into());
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A complete reply (any status but those retried: 408, 429, 5xx).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// An earlier try of this request may have reached the server and been acted on
    /// (its reply was lost): a 412 or 404 may then be the trace of that earlier try.
    pub repeated: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connector's HTTP client.
pub struct HttpClient {
    label: &'static str,
    http: reqwest::Client,
    auth: Auth,
    settings: HttpSettings,
    limiter: Option<DefaultDirectRateLimiter>,
    redactor: Redactor,
    /// Set when a request gave up on connection failures or timeouts: later requests
    /// try once until one gets through, so a server that is down or hung costs one retry
    /// budget, not one per record.
    unreachable: AtomicBool,
    /// The Digest challenge the server sent, answered by every later request.
    digest: RwLock<Option<Arc<DigestAnswer>>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("label", &self.label)
            .field("auth", &self.auth)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for the connector named `label` in messages (`"CardDAV"`, `"Tryton"`).
    pub fn new(
        label: &'static str,
        settings: HttpSettings,
        auth: Auth,
    ) -> Result<HttpClient, ConnectorError> {
        let mut builder = tls::client_builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout);
        if let Some(path) = &settings.ca_file {
            builder = builder.tls_certs_only(tls::load_ca_file(path)?);
        }
        let http = builder.build().map_err(|e| {
            ConnectorError::config(format!("{label}: cannot set up HTTPS (`ca_file`?): {e}"))
        })?;
        let redactor = Redactor::new();
        match &auth {
            Auth::Basic {
                user,
                password: Some(password),
            } => redactor.add_basic(user, password),
            Auth::Bearer(token) => redactor.add(token),
            _ => {}
        }
        Ok(HttpClient {
            label,
            http,
            auth,
            limiter: settings.max_requests_per_second.and_then(limiter),
            settings,
            redactor,
            unreachable: AtomicBool::new(false),
            digest: RwLock::new(None),
        })
    }

    /// The masks applied to every server text this client shows; a connector adds
    /// secrets it learns later (a session token).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// Whether `auth` carries credentials (for messages on a 401).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// How errors name `request`.
    pub fn describe(&self, request: &Request) -> String {
        match &request.what {
            Some(what) => format!("{} {what}", self.label),
            None => format!("{} {} {}", self.label, request.method, request.url),
        }
    }

    /// Whether requests answer a Digest challenge (for messages on a 401).
    pub fn uses_digest(&self) -> bool {
        self.digest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Sends `request`, trying again as the retry settings allow. Any status comes back
    /// as a [`Reply`] except 408, 429 and 5xx, which are retried and, when they persist,
    /// an [`HttpError::Status`]. A 401 with a Digest challenge the client can answer
    /// (a user and password, no `Authorization` of the request's own) is answered once.
    pub async fn send(&self, request: &Request) -> Result<Reply, HttpError> {
        let reply = self.send_tries(request).await?;
        if reply.status == StatusCode::UNAUTHORIZED && self.take_challenge(request, &reply) {
            // The 401 says the server did not act on the request: sending it again is safe.
            return self.send_tries(request).await;
        }
        Ok(reply)
    }

    /// Keeps the Digest challenge of a 401 for this and later requests; `false` when
    /// there is none the client can answer.
    fn take_challenge(&self, request: &Request, reply: &Reply) -> bool {
        let Auth::Basic {
            password: Some(_), ..
        } = &self.auth
        else {
            return false;
        };
        if request.authorization.is_some() {
            return false;
        }
        match digest::offer(&reply.headers) {
            Offer::Usable(challenge) => {
                tracing::debug!(label = self.label, algorithm = ?challenge.algorithm,
                    stale = challenge.stale, "answering the server's Digest challenge");
                *self.digest.write().unwrap_or_else(|e| e.into_inner()) =
                    Some(Arc::new(DigestAnswer::new(challenge)));
                true
            }
            Offer::Unsupported(what) => {
                tracing::warn!(label = self.label, url = %request.url,
                    "the server asks for Digest authentication with {what}, which Tandem does not support");
                false
            }
            Offer::None => false,
        }
    }

    async fn send_tries(&self, request: &Request) -> Result<Reply, HttpError> {
        let started = Instant::now();
        let attempts = if self.unreachable.load(Ordering::Relaxed) {
            1
        } else {
            self.settings.retry.attempts
        };
        let tries = AtomicU32::new(0);
        let repeated = AtomicBool::new(false);
        let outcome = (|| async {
            tries.fetch_add(1, Ordering::Relaxed);
            self.try_once(request, repeated.load(Ordering::Relaxed))
                .await
        })
        .retry(retry::backoff(&self.settings.retry, attempts))
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.retryable(request.safe))
        .adjust(|f, next| self.next_wait(f, next, started))
        .notify(|f, wait| {
            if f.maybe_acted() {
                repeated.store(true, Ordering::Relaxed);
            }
            tracing::debug!(label = self.label, method = %request.method, url = %request.url,
                ?wait, "retrying an HTTP request: {}", self.short_reason(f));
        })
        .await;
        let tries = tries.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        super::observe::observe(self.label, &request.url, elapsed, tries, outcome.is_ok());
        match outcome {
            Ok(reply) => {
                self.unreachable.store(false, Ordering::Relaxed);
                Ok(reply)
            }
            Err(failure) => {
                let down = matches!(
                    failure,
                    Failure::NotSent(_)
                        | Failure::Lost {
                            timed_out: true,
                            ..
                        }
                );
                if down && tries > 1 {
                    self.unreachable.store(true, Ordering::Relaxed);
                }
                Err(self.give_up(request, failure, tries))
            }
        }
    }

    /// The wait before the next try: what the server asked for, else the backoff; none
    /// (give up) when the tries are used up or the wait would end past `max_elapsed`.
    fn next_wait(&self, f: &Failure, next: Option<Duration>, started: Instant) -> Option<Duration> {
        let wait = f.retry_after().unwrap_or(next?);
        (started.elapsed() + wait <= self.settings.retry.max_elapsed).then_some(wait)
    }

    async fn try_once(&self, request: &Request, repeated: bool) -> Result<Reply, Failure> {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let response = self
            .build(request)?
            .send()
            .await
            .map_err(|e| self.transport_failure(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_failure(&e))?
            .to_vec();
        if retry::is_retry_status(status) {
            let retry_after = retry::retry_after(&headers, SystemTime::now());
            return Err(Failure::Status {
                status,
                retry_after,
                body,
            });
        }
        Ok(Reply {
            status,
            headers,
            body,
            repeated,
        })
    }

    fn build(&self, request: &Request) -> Result<reqwest::RequestBuilder, Failure> {
        let mut b = self.http.request(request.method.clone(), &request.url);
        match (&request.authorization, &self.auth) {
            (Some(value), _) => {
                let mut value = HeaderValue::from_str(value.expose_secret()).map_err(|_| {
                    Failure::Invalid("an Authorization value that is no header value".into())
                })?;
                value.set_sensitive(true);
                b = b.header(AUTHORIZATION, value);
            }
            (None, Auth::Basic { user, password }) => match (self.digest_answer(), password) {
                (Some(answer), Some(password)) => {
                    let value = answer.authorization(
                        user,
                        password,
                        request.method.as_str(),
                        &request_target(&request.url),
                    );
                    let mut value = HeaderValue::from_str(value.expose_secret()).map_err(|_| {
                        Failure::Invalid("a user name that cannot be sent in a header".into())
                    })?;
                    value.set_sensitive(true);
                    b = b.header(AUTHORIZATION, value);
                }
                _ => b = b.basic_auth(user, password.as_ref().map(|p| p.expose_secret())),
            },
            (None, Auth::Bearer(token)) => b = b.bearer_auth(token.expose_secret()),
            (None, Auth::None) => {}
        }
        for (name, value) in &request.headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| Failure::Invalid(format!("header {name}: not a header value")))?;
            b = b.header(*name, value);
        }
        if let Some(body) = &request.body {
            b = b.body(body.clone());
        }
        Ok(b)
    }

    fn digest_answer(&self) -> Option<Arc<DigestAnswer>> {
        self.digest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        if let Some(reason) = tls::diagnose(e, self.settings.ca_file.as_deref()) {
            return Failure::Tls(reason);
        }
        let reason = root_cause(e);
        if e.is_connect() {
            Failure::NotSent(reason)
        } else {
            Failure::Lost {
                reason,
                timed_out: e.is_timeout(),
            }
        }
    }

    fn short_reason(&self, f: &Failure) -> String {
        match f {
            Failure::Status { status, .. } => format!("HTTP {status}"),
            Failure::NotSent(r) | Failure::Lost { reason: r, .. } | Failure::Tls(r) => r.clone(),
            Failure::Invalid(r) => r.clone(),
        }
    }

    fn give_up(&self, request: &Request, failure: Failure, attempts: u32) -> HttpError {
        let what = self.describe(request);
        match failure {
            Failure::NotSent(reason) => HttpError::Connect {
                what,
                reason,
                attempts,
            },
            Failure::Lost {
                timed_out: true, ..
            } => HttpError::Timeout {
                what,
                after: self.settings.timeout,
                attempts,
            },
            Failure::Lost { reason, .. } => HttpError::Broken {
                what,
                reason,
                attempts,
            },
            Failure::Tls(reason) => HttpError::Tls { what, reason },
            Failure::Invalid(reason) => HttpError::Invalid { what, reason },
            Failure::Status {
                status,
                retry_after,
                body,
            } => HttpError::Status {
                what,
                status: status.as_u16(),
                retry_after,
                text: self.redactor.server_text(&body, request.body.as_deref()),
                attempts,
            },
        }
    }
}

/// The request target a Digest answer names: the URL's path and query.
fn request_target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// A limiter of `rate` requests a second, allowing bursts of the whole second's share.
fn limiter(rate: f64) -> Option<DefaultDirectRateLimiter> {
    let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    let burst = NonZeroU32::new(rate.floor().clamp(1.0, f64::from(u32::MAX)) as u32)?;
    Some(RateLimiter::direct(
        Quota::with_period(period)?.allow_burst(burst),
    ))
}

/// The innermost cause of `e` ("Connection refused (os error 111)"), which says more
/// than reqwest's "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut current: &dyn std::error::Error = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
