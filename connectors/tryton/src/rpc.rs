//! Tryton's JSON-RPC: one session login reused, re-login on 401, gzip sniffed by hand,
//! typed errors. Transport faults, timeouts, 429 and 5xx are retried by the shared HTTP
//! layer: calls that only read (and the login) whatever happened, calls that change
//! data only when Tryton certainly did not run them (see [`is_safe`]).

use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tandem_connector::ConnectorError;
use tandem_connector::http::{
    Auth, ExposeSecret, HttpClient, HttpError, HttpSettings, Method, Request, SecretString,
};

/// A password for [`Client::new`]: a [`SecretString`] that never shows in `Debug`
/// output, logs or errors.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(SecretString::from(s.into()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<Secret> for SecretString {
    fn from(s: Secret) -> SecretString {
        s.0
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

/// A slow Tryton may take a while to connect; one `create` of a batch of parties takes
/// seconds, and much longer on a loaded server, so a call may take five minutes.
pub fn default_http() -> HttpSettings {
    HttpSettings::with_timeouts(Duration::from_secs(10), Duration::from_secs(300))
}

/// A JSON-RPC client of one Tryton database, logged in as one user.
#[derive(Debug)]
pub struct Client {
    http: HttpClient,
    /// `http://host:port/`, always with the trailing slash.
    base: String,
    database: String,
    user: String,
    password: SecretString,
    /// The `Authorization` header of the current session.
    session: Mutex<Option<SecretString>>,
    /// Serialises logins, so that concurrent calls after a 401 log in once.
    login: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    pub stats: Stats,
}

impl Client {
    /// A client with the default HTTP settings.
    pub fn new(
        url: &str,
        database: &str,
        user: &str,
        password: impl Into<SecretString>,
    ) -> Result<Client, ConnectorError> {
        Self::with_http(url, database, user, password.into(), default_http())
    }

    /// A client with these HTTP settings (TLS roots, timeouts, retries, rate limit).
    pub fn with_http(
        url: &str,
        database: &str,
        user: &str,
        password: SecretString,
        http: HttpSettings,
    ) -> Result<Client, ConnectorError> {
        let base = base_url(url)?;
        let http = HttpClient::new("Tryton", http, Auth::None)?;
        http.redactor().add(&password);
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
    /// a 401.
    pub async fn call(&self, method: &str, params: Json) -> Result<Json, RpcError> {
        let url = format!("{}{}/rpc/", self.base, self.database);
        let mut relogged = false;
        loop {
            let auth = self.session().await?;
            match self.post(&url, method, &params, Some(&auth)).await {
                Ok(result) => return result,
                Err(Failure::Unauthorized) if !relogged => {
                    relogged = true;
                    self.forget_session(&auth);
                }
                Err(Failure::Unauthorized) => {
                    return Err(ConnectorError::Auth {
                        message: format!(
                            "Tryton refused the session of user `{}` on database `{}` right \
                             after logging in; check `user` and its access rights",
                            self.user, self.database
                        ),
                    }
                    .into());
                }
                Err(f) => return Err(f.into_error(method).into()),
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

    async fn session(&self) -> Result<SecretString, RpcError> {
        if let Some(s) = self.current_session() {
            return Ok(s);
        }
        let _one = self.login.lock().await;
        if let Some(s) = self.current_session() {
            return Ok(s);
        }
        let url = format!("{}{}/rpc/", self.base, self.database);
        let params = json!([self.user, {"password": self.password.expose_secret()}, "en"]);
        let result = match self.post(&url, "common.db.login", &params, None).await {
            Ok(Ok(r)) => r,
            Ok(Err(RpcError::User(_))) | Err(Failure::Unauthorized) => {
                return Err(self.login_refused().into());
            }
            Ok(Err(e)) => return Err(e),
            Err(Failure::Server(404, _)) => {
                return Err(ConnectorError::config(format!(
                    "Tryton at {} has no database `{}` (check `database`)",
                    self.base, self.database
                ))
                .into());
            }
            Err(f) => return Err(f.into_error("common.db.login").into()),
        };
        let (Some(uid), Some(token)) = (
            result.get(0).and_then(Json::as_i64),
            result.get(1).and_then(Json::as_str),
        ) else {
            return Err(self.login_refused().into());
        };
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{uid}:{token}", self.user));
        // The session is a credential too: never shown if a server repeats it.
        let redactor = self.http.redactor();
        redactor.add(&SecretString::from(token.to_owned()));
        redactor.add(&SecretString::from(encoded.clone()));
        let header = SecretString::from(format!("Session {encoded}"));
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(header.clone());
        Ok(header)
    }

    fn current_session(&self) -> Option<SecretString> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn login_refused(&self) -> ConnectorError {
        ConnectorError::Auth {
            message: format!(
                "Tryton at {} refused the login of user `{}` on database `{}`; check `user` \
                 and `password`",
                self.base, self.user, self.database
            ),
        }
    }

    fn forget_session(&self, auth: &SecretString) {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session
            .as_ref()
            .is_some_and(|s| s.expose_secret() == auth.expose_secret())
        {
            *session = None;
        }
    }

    async fn post(
        &self,
        url: &str,
        method: &str,
        params: &Json,
        auth: Option<&SecretString>,
    ) -> Result<Result<Json, RpcError>, Failure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"id": id, "method": method, "params": params}).to_string();
        let mut request = Request::new(Method::POST, url)
            .header("Accept-Encoding", "gzip")
            .header("Content-Type", "application/json")
            .body(body.clone())
            .safe(is_safe(method))
            .describe(format!("{method} at {url}"));
        if let Some(auth) = auth {
            request = request.authorization(auth.clone());
        }
        let started = Instant::now();
        let reply = self.http.send(&request).await;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .wait_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let reply = reply.map_err(Failure::Http)?;
        let bytes = gunzip(&reply.body).map_err(|e| Failure::Server(200, e))?;
        let shown = |text: &[u8]| {
            self.http
                .redactor()
                .server_text(text, Some(body.as_bytes()))
        };
        match reply.status.as_u16() {
            200 => {}
            401 | 403 => return Err(Failure::Unauthorized),
            s => return Err(Failure::Server(s, shown(&bytes))),
        }
        let reply: Json = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Server(
                200,
                format!("not a JSON-RPC reply ({e}): {}", shown(&bytes)),
            )
        })?;
        if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
            return Ok(Err(classify(method, error, |t| shown(t.as_bytes()))));
        }
        Ok(Ok(reply.get("result").cloned().unwrap_or(Json::Null)))
    }
}

/// `url` with a trailing slash, if it is an http(s) URL without credentials in it.
fn base_url(url: &str) -> Result<String, ConnectorError> {
    let mut base = url.trim().to_owned();
    let parsed = tandem_connector::http::Url::parse(&base)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    let Some(parsed) = parsed else {
        return Err(ConnectorError::config(
            "`url` is not an http:// or https:// URL",
        ));
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // The URL is not shown: it holds a password.
        return Err(ConnectorError::config(
            "`url`: put the user and password in `user` and `password`, not in the URL",
        ));
    }
    if !base.ends_with('/') {
        base.push('/');
    }
    Ok(base)
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

/// Calls that may be sent twice: reads, and the login (a second session is harmless).
/// A `create` sent twice makes two records, so changes are retried only when Tryton
/// certainly did not run them; otherwise the records fail for this run (R17) and the
/// engine finds a create again by its intent (R18).
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
    /// No reply after the retries the call allows.
    Http(HttpError),
    Unauthorized,
    /// Any other status, with the server's text (shortened and redacted).
    Server(u16, String),
}

impl Failure {
    fn into_error(self, method: &str) -> ConnectorError {
        match self {
            Failure::Http(e) => e.into_connector(),
            Failure::Unauthorized => ConnectorError::Auth {
                message: format!("Tryton refused {method} (HTTP 401); check `user` and `password`"),
            },
            Failure::Server(s, m) => {
                ConnectorError::fatal(format!("Tryton call {method}: HTTP {s}: {m}"))
            }
        }
    }
}

/// Tells Tryton's error replies apart: `["UserError", [message, description, ...]]`,
/// `["ConcurrencyException", message]`, `["AccessError", [...]]`, ...
/// `shown` makes the server's text fit for an error (shortened, secrets masked, not
/// shown when it repeats the request).
fn classify(method: &str, error: &Json, shown: impl Fn(&str) -> String) -> RpcError {
    let name = shown(error.get(0).and_then(Json::as_str).unwrap_or("error"));
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
    let message = shown(&message);
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
            classify("model.party.party.create", &user, str::to_owned),
            RpcError::User("The VAT is not valid.".into())
        );
        assert_eq!(
            classify(
                "m",
                &json!(["ConcurrencyException", "Records were modified"]),
                str::to_owned
            ),
            RpcError::Concurrency
        );
        assert!(matches!(
            classify("m", &json!(["AccessError", ["no", ""]]), str::to_owned),
            RpcError::Other(ConnectorError::Auth { .. })
        ));
        assert!(is_safe("model.party.party.search_read"));
        assert!(!is_safe("model.party.party.create"));
    }
}
