//! Tryton's JSON-RPC: one session login reused, re-login on 401, gzip sniffed by hand,
//! typed errors, retries with backoff where retrying is safe.

use std::fmt;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tandem_connector::ConnectorError;

/// A password that never shows in `Debug` output, logs or errors.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// What a call to Tryton can end with, before it is told apart per record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    /// A `UserError` or `UserWarning`: Tryton refused the data.
    User(String),
    /// A `ConcurrencyException`: a `_timestamp` in the context is stale.
    Concurrency,
    /// Anything else: already typed for the engine.
    Other(ConnectorError),
}

impl RpcError {
    /// The error as the engine sees it, for a call that concerns no record in particular.
    pub fn into_connector(self) -> ConnectorError {
        match self {
            RpcError::User(m) => ConnectorError::invalid(None, m),
            RpcError::Concurrency => ConnectorError::fatal("Tryton reported a concurrent change"),
            RpcError::Other(e) => e,
        }
    }

    /// The error as the outcome of one op on record `id`.
    pub fn for_record(self, id: Option<&str>) -> ConnectorError {
        match self {
            RpcError::User(m) => ConnectorError::invalid(id, m),
            RpcError::Concurrency => ConnectorError::Conflict {
                id: id.unwrap_or_default().to_owned(),
            },
            RpcError::Other(e) => e,
        }
    }

    /// Whether the error is about the data of the call (so trying its records one by
    /// one tells which one is at fault).
    pub fn is_data_error(&self) -> bool {
        matches!(self, RpcError::User(_) | RpcError::Concurrency)
    }
}

impl From<ConnectorError> for RpcError {
    fn from(e: ConnectorError) -> RpcError {
        RpcError::Other(e)
    }
}

/// Counters for benchmarks: calls made and time spent waiting for Tryton.
#[derive(Debug, Default)]
pub struct Stats {
    calls: AtomicU64,
    wait_micros: AtomicU64,
}

impl Stats {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn wait(&self) -> Duration {
        Duration::from_micros(self.wait_micros.load(Ordering::Relaxed))
    }
}

/// A JSON-RPC client of one Tryton database, logged in as one user.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `http://host:port/`, always with the trailing slash.
    base: String,
    database: String,
    user: String,
    password: Secret,
    /// The `Authorization` header of the current session.
    session: Mutex<Option<String>>,
    /// Serialises logins, so that concurrent calls after a 401 log in once.
    login: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    pub stats: Stats,
}

const ATTEMPTS: u32 = 4;

impl Client {
    pub fn new(
        url: &str,
        database: &str,
        user: &str,
        password: Secret,
    ) -> Result<Client, ConnectorError> {
        let mut base = url.trim().to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(ConnectorError::config(format!(
                "`url`: `{base}` is not an http:// URL"
            )));
        }
        if !base.ends_with('/') {
            base.push('/');
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ConnectorError::config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            database: database.to_owned(),
            user: user.to_owned(),
            password,
            session: Mutex::new(None),
            login: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// `model.<model>.<method>` with `params`; the context `{}` is appended.
    pub async fn model(
        &self,
        model: &str,
        method: &str,
        params: Vec<Json>,
    ) -> Result<Json, RpcError> {
        self.model_ctx(model, method, params, json!({})).await
    }

    /// `model.<model>.<method>` with `params` and the context last.
    pub async fn model_ctx(
        &self,
        model: &str,
        method: &str,
        mut params: Vec<Json>,
        context: Json,
    ) -> Result<Json, RpcError> {
        params.push(context);
        self.call(&format!("model.{model}.{method}"), Json::Array(params))
            .await
    }

    /// Calls `method` on the database, logging in first if needed and again once after
    /// a 401. Calls that only read are retried on transport faults, 429 and 5xx.
    pub async fn call(&self, method: &str, params: Json) -> Result<Json, RpcError> {
        let safe = is_safe(method);
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let auth = self.session().await?;
            let url = format!("{}{}/rpc/", self.base, self.database);
            match self.post(&url, method, &params, Some(&auth)).await {
                Ok(result) => return result,
                Err(Failure::Unauthorized) if !relogged => {
                    relogged = true;
                    self.forget_session(&auth);
                }
                Err(Failure::Unauthorized) => {
                    return Err(ConnectorError::Auth {
                        message: format!(
                            "Tryton refused the session of user `{}` on database `{}` right after logging in",
                            self.user, self.database
                        ),
                    }
                    .into());
                }
                Err(f) => {
                    let retry = match &f {
                        Failure::NotSent(_) => true,
                        Failure::RateLimited(_) | Failure::Transport(_) | Failure::Server(..) => {
                            safe
                        }
                        Failure::Unauthorized => false,
                    };
                    if !retry || attempt >= ATTEMPTS {
                        return Err(f.into_error(method).into());
                    }
                    let delay = f
                        .retry_after()
                        .unwrap_or(Duration::from_millis(250 * 2u64.pow(attempt - 1)));
                    tracing::debug!(method, attempt, ?delay, "retrying a Tryton call");
                    tokio::time::sleep(delay.min(Duration::from_secs(30))).await;
                }
            }
        }
    }

    /// `common.server.version`, which needs no login.
    pub async fn server_version(&self) -> Result<String, RpcError> {
        let url = format!("{}rpc/", self.base);
        match self
            .post(&url, "common.server.version", &json!([]), None)
            .await
        {
            Ok(result) => Ok(result?.as_str().unwrap_or_default().to_owned()),
            Err(f) => Err(f.into_error("common.server.version").into()),
        }
    }

    async fn session(&self) -> Result<String, RpcError> {
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(s);
        }
        let _one = self.login.lock().await;
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(s);
        }
        let url = format!("{}{}/rpc/", self.base, self.database);
        let params = json!([self.user, {"password": self.password.expose()}, "en"]);
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.post(&url, "common.db.login", &params, None).await {
                Ok(r) => break r,
                // A refused login is never retried: Tryton delays and then blocks them.
                Err(f @ (Failure::NotSent(_) | Failure::Server(..))) if attempt < ATTEMPTS => {
                    tracing::debug!(attempt, "retrying the Tryton login: {}", f.describe());
                    tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt - 1))).await;
                }
                Err(Failure::Unauthorized) => return Err(self.login_refused().into()),
                Err(Failure::Server(404, _)) => {
                    return Err(ConnectorError::config(format!(
                        "Tryton at {} has no database `{}`",
                        self.base, self.database
                    ))
                    .into());
                }
                Err(f) => return Err(f.into_error("common.db.login").into()),
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(RpcError::User(_)) => return Err(self.login_refused().into()),
            Err(e) => return Err(e),
        };
        let (Some(uid), Some(token)) = (
            result.get(0).and_then(Json::as_i64),
            result.get(1).and_then(Json::as_str),
        ) else {
            return Err(self.login_refused().into());
        };
        let raw = format!("{}:{uid}:{token}", self.user);
        let header = format!(
            "Session {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(header.clone());
        Ok(header)
    }

    fn login_refused(&self) -> ConnectorError {
        ConnectorError::Auth {
            message: format!(
                "Tryton at {} refused the login of user `{}` on database `{}`",
                self.base, self.user, self.database
            ),
        }
    }

    fn forget_session(&self, auth: &str) {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session.as_deref() == Some(auth) {
            *session = None;
        }
    }

    async fn post(
        &self,
        url: &str,
        method: &str,
        params: &Json,
        auth: Option<&str>,
    ) -> Result<Result<Json, RpcError>, Failure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"id": id, "method": method, "params": params});
        let mut request = self
            .http
            .post(url)
            .header("Accept-Encoding", "gzip")
            .json(&body);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let started = Instant::now();
        let outcome = self.exchange(request).await;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .wait_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let (status, retry_after, bytes) = outcome?;
        match status {
            200 => {}
            401 | 403 => return Err(Failure::Unauthorized),
            429 => return Err(Failure::RateLimited(retry_after)),
            s => return Err(Failure::Server(s, snippet(&bytes))),
        }
        let reply: Json = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Server(
                200,
                format!("not a JSON-RPC reply ({e}): {}", snippet(&bytes)),
            )
        })?;
        if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
            return Ok(Err(classify(method, error)));
        }
        Ok(Ok(reply.get("result").cloned().unwrap_or(Json::Null)))
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Failure> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                Failure::NotSent(e.to_string())
            } else {
                Failure::Transport(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let raw = response
            .bytes()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        Ok((
            status,
            retry_after,
            gunzip(&raw).map_err(Failure::Transport)?,
        ))
    }
}

/// Decodes a gzip body; trytond labels even uncompressed bodies as gzip, so the body
/// is sniffed for the gzip magic bytes instead of trusting the header.
pub fn gunzip(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 8);
        flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot decode a gzip reply: {e}"))?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Calls that only read may be repeated without effect.
fn is_safe(method: &str) -> bool {
    method.starts_with("common.")
        || [
            ".read",
            ".search",
            ".search_read",
            ".search_count",
            ".fields_get",
        ]
        .iter()
        .any(|m| method.ends_with(m))
}

/// A call that failed before a JSON-RPC reply arrived.
#[derive(Debug)]
enum Failure {
    /// The connection could not be made: nothing was sent, retrying is always safe.
    NotSent(String),
    /// The request may have been sent.
    Transport(String),
    Unauthorized,
    RateLimited(Option<Duration>),
    Server(u16, String),
}

impl Failure {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::RateLimited(d) => *d,
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::NotSent(m) | Failure::Transport(m) => m.clone(),
            Failure::Unauthorized => "HTTP 401".into(),
            Failure::RateLimited(_) => "HTTP 429".into(),
            Failure::Server(s, m) => format!("HTTP {s}: {m}"),
        }
    }

    fn into_error(self, method: &str) -> ConnectorError {
        match self {
            Failure::NotSent(m) | Failure::Transport(m) => {
                ConnectorError::transient(format!("Tryton call {method}: {m}"))
            }
            Failure::Unauthorized => ConnectorError::Auth {
                message: format!("Tryton refused {method} (HTTP 401)"),
            },
            Failure::RateLimited(d) => ConnectorError::rate_limited(d),
            Failure::Server(s, m) if s >= 500 => {
                ConnectorError::transient(format!("Tryton call {method}: HTTP {s}: {m}"))
            }
            Failure::Server(s, m) => {
                ConnectorError::fatal(format!("Tryton call {method}: HTTP {s}: {m}"))
            }
        }
    }
}

/// Tells Tryton's error replies apart: `["UserError", [message, description, ...]]`,
/// `["ConcurrencyException", message]`, `["AccessError", [...]]`, ...
fn classify(method: &str, error: &Json) -> RpcError {
    let name = error
        .get(0)
        .and_then(Json::as_str)
        .unwrap_or("error")
        .to_owned();
    let details = error.get(1).cloned().unwrap_or(Json::Null);
    let message = match &details {
        Json::String(s) => s.clone(),
        Json::Array(parts) => parts
            .iter()
            .take(2)
            .filter_map(Json::as_str)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        Json::Null => String::new(),
        other => other.to_string(),
    };
    match name.as_str() {
        "UserError" | "UserWarning" => RpcError::User(message),
        "ConcurrencyException" => RpcError::Concurrency,
        "AccessError" | "RequiredRightError" => RpcError::Other(ConnectorError::Auth {
            message: format!("Tryton refused {method}: {message}"),
        }),
        "LoginException" | "RateLimitException" => RpcError::Other(ConnectorError::Auth {
            message: format!("Tryton refused {method}: {name} {message}"),
        }),
        _ => RpcError::Other(ConnectorError::fatal(format!(
            "Tryton call {method} failed: {name}: {message}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn bodies_are_sniffed_not_trusted() {
        assert_eq!(gunzip(b"{\"id\":1}").unwrap(), b"{\"id\":1}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"{\"result\":2}").unwrap();
        assert_eq!(gunzip(&gz.finish().unwrap()).unwrap(), b"{\"result\":2}");
    }

    #[test]
    fn errors_are_typed() {
        let user = json!(["UserError", ["The VAT is not valid.", "", null]]);
        assert_eq!(
            classify("model.party.party.create", &user),
            RpcError::User("The VAT is not valid.".into())
        );
        assert_eq!(
            classify(
                "m",
                &json!(["ConcurrencyException", "Records were modified"])
            ),
            RpcError::Concurrency
        );
        assert!(matches!(
            classify("m", &json!(["AccessError", ["no", ""]])),
            RpcError::Other(ConnectorError::Auth { .. })
        ));
        assert!(is_safe("model.party.party.search_read"));
        assert!(!is_safe("model.party.party.create"));
    }
}
