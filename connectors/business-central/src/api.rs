//! Requests to the API v2.0: authentication (OAuth2 client credentials with renewal,
//! or Basic with a web service access key), JSON reads that follow the server's next
//! links, and `$batch` calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tandem_connector::ConnectorError;
use tandem_connector::http::{
    ExposeSecret, HttpClient, Method, Reply, Request, SecretString, StatusCode,
};

/// The OAuth2 scope of Business Central's APIs.
pub const SCOPE: &str = "https://api.businesscentral.dynamics.com/.default";

/// How a client proves who it is.
#[derive(Debug)]
pub enum Credentials {
    /// On-premises: the HTTP client sends the user and access key as Basic auth.
    Basic,
    OAuth(TokenSource),
}

/// Tokens from the Microsoft identity platform, renewed before they expire and when
/// the API refuses one.
#[derive(Debug)]
pub struct TokenSource {
    pub url: String,
    pub client_id: String,
    pub secret: SecretString,
    token: tokio::sync::Mutex<Option<Token>>,
    issued: AtomicUsize,
}

#[derive(Debug)]
struct Token {
    authorization: SecretString,
    renew_at: Instant,
}

impl TokenSource {
    pub fn new(url: String, client_id: String, secret: SecretString) -> TokenSource {
        TokenSource {
            url,
            client_id,
            secret,
            token: tokio::sync::Mutex::new(None),
            issued: AtomicUsize::new(0),
        }
    }
}

/// One company's API.
#[derive(Debug)]
pub struct Api {
    pub http: HttpClient,
    /// `…/api/v2.0`, without a trailing slash.
    pub root: String,
    pub credentials: Credentials,
    /// The `company` setting: a name or an id.
    pub company: String,
    company_id: tokio::sync::OnceCell<String>,
    pub page_size: usize,
    requests: AtomicUsize,
}

/// Business Central's `{"error": {"code", "message"}}`, as `code: message`.
pub fn error_text(body: &Json) -> String {
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => code.to_owned(),
        (true, false) => message.to_owned(),
        (false, false) => format!("{code}: {message}"),
    }
}

pub fn error_code(body: &Json) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A random (version 4) GUID: the SystemId a create carries.
pub fn new_guid() -> Result<String, ConnectorError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| ConnectorError::fatal(format!("Business Central: no random numbers: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

impl Api {
    pub fn new(
        http: HttpClient,
        root: String,
        credentials: Credentials,
        company: String,
        page_size: usize,
    ) -> Api {
        Api {
            http,
            root: root.trim_end_matches('/').to_owned(),
            credentials,
            company,
            company_id: tokio::sync::OnceCell::new(),
            page_size,
            requests: AtomicUsize::new(0),
        }
    }

    /// API requests sent (tries not counted), for benchmarks.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Tokens fetched from the identity platform.
    pub fn tokens_issued(&self) -> usize {
        match &self.credentials {
            Credentials::OAuth(t) => t.issued.load(Ordering::Relaxed),
            Credentials::Basic => 0,
        }
    }

    fn http_error(&self, e: tandem_connector::http::HttpError) -> ConnectorError {
        e.into_connector()
    }

    /// The `Authorization` value to send; a new token when `renew` or when the one held
    /// is about to expire.
    async fn authorization(&self, renew: bool) -> Result<Option<SecretString>, ConnectorError> {
        let Credentials::OAuth(source) = &self.credentials else {
            return Ok(None);
        };
        let mut held = source.token.lock().await;
        if let Some(token) = held.as_ref()
            && !renew
            && Instant::now() < token.renew_at
        {
            return Ok(Some(token.authorization.clone()));
        }
        let token = self.fetch_token(source).await?;
        let value = token.authorization.clone();
        *held = Some(token);
        Ok(Some(value))
    }

    async fn fetch_token(&self, source: &TokenSource) -> Result<Token, ConnectorError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &source.client_id)
            .append_pair("client_secret", source.secret.expose_secret())
            .append_pair("scope", SCOPE)
            .finish();
        let request = Request::new(Method::POST, &source.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            // Asking for a token twice does no harm.
            .safe(true)
            .describe("token request");
        let reply = self
            .http
            .send(&request)
            .await
            .map_err(|e| self.http_error(e))?;
        let body: Json = serde_json::from_slice(&reply.body).unwrap_or(Json::Null);
        if reply.status != StatusCode::OK {
            let error = body["error"].as_str().unwrap_or("unknown error");
            let description = body["error_description"].as_str().unwrap_or_default();
            return Err(ConnectorError::Auth {
                message: self.http.redactor().mask(&format!(
                    "Business Central: the identity platform at {} refused client `{}`: HTTP {} \
                     {error} {description}; check `tenant`, `client_id` and `client_secret`, \
                     and that the app is registered in Business Central",
                    source.url,
                    source.client_id,
                    reply.status.as_u16()
                )),
            });
        }
        let Some(access) = body["access_token"].as_str() else {
            return Err(ConnectorError::Auth {
                message: format!(
                    "Business Central: the identity platform at {} answered without an access token",
                    source.url
                ),
            });
        };
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300).max(1));
        // Renewed a little before it expires: a tenth of its life, at most a minute.
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        let token = SecretString::from(access.to_owned());
        self.http.redactor().add(&token);
        source.issued.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(lifetime = ?lifetime, "Business Central: new access token");
        Ok(Token {
            authorization: SecretString::from(format!("Bearer {access}")),
            renew_at: Instant::now() + lifetime - margin,
        })
    }

    /// Sends `request` with the credentials; a 401 renews the token once and sends it
    /// again (the server did not act on it). A 401 after that is an auth error.
    pub async fn send(&self, request: Request) -> Result<Reply, ConnectorError> {
        let mut renew = false;
        loop {
            let mut r = request.clone();
            if let Some(value) = self.authorization(renew).await? {
                r = r.authorization(value);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let reply = self.http.send(&r).await.map_err(|e| self.http_error(e))?;
            if reply.status != StatusCode::UNAUTHORIZED {
                return Ok(reply);
            }
            if renew || matches!(self.credentials, Credentials::Basic) {
                let what = self.http.describe(&r);
                let hint = match self.credentials {
                    Credentials::Basic => "check `username` and `access_key`",
                    Credentials::OAuth(_) => {
                        "check that the app is registered in Business Central with permissions"
                    }
                };
                return Err(ConnectorError::Auth {
                    message: format!("{what}: HTTP 401: the credentials were refused; {hint}"),
                });
            }
            renew = true;
        }
    }

    /// A JSON `GET`; 404 is [`ConnectorError::NotFound`] of `what`.
    pub async fn get_json(&self, url: &str, what: &str) -> Result<Json, ConnectorError> {
        let request = Request::new(Method::GET, url)
            .header("accept", "application/json")
            .header("prefer", format!("odata.maxpagesize={}", self.page_size));
        let reply = self.send(request).await?;
        let body: Json = serde_json::from_slice(&reply.body).unwrap_or(Json::Null);
        match reply.status {
            StatusCode::OK => Ok(body),
            StatusCode::NOT_FOUND => Err(ConnectorError::NotFound {
                id: what.to_owned(),
            }),
            status => Err(ConnectorError::fatal(format!(
                "Business Central GET {what}: HTTP {}: {}",
                status.as_u16(),
                self.http.redactor().mask(&error_text(&body))
            ))),
        }
    }

    /// Every entity of a listing, following `@odata.nextLink` to the last page.
    pub async fn list_all(&self, url: &str, what: &str) -> Result<Vec<Json>, ConnectorError> {
        let mut out = Vec::new();
        let mut next = Some(url.to_owned());
        while let Some(url) = next {
            let mut page = self.get_json(&url, what).await?;
            let Some(values) = page.get_mut("value").and_then(Json::as_array_mut) else {
                return Err(ConnectorError::fatal(format!(
                    "Business Central GET {what}: the answer holds no `value` list"
                )));
            };
            out.append(values);
            next = page["@odata.nextLink"].as_str().map(str::to_owned);
        }
        Ok(out)
    }

    /// The company's id: the `company` setting when it is an id, else looked up by name
    /// once.
    pub async fn company_id(&self) -> Result<&str, ConnectorError> {
        self.company_id
            .get_or_try_init(|| async {
                if is_guid(&self.company) {
                    return Ok(self.company.clone());
                }
                let companies = self
                    .list_all(&format!("{}/companies", self.root), "companies")
                    .await?;
                companies
                    .iter()
                    .find(|c| c["name"].as_str() == Some(self.company.as_str()))
                    .and_then(|c| c["id"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        let names: Vec<&str> = companies
                            .iter()
                            .filter_map(|c| c["name"].as_str())
                            .collect();
                        ConnectorError::config(format!(
                            "Business Central has no company named `{}` (there are: {}); set \
                             `company` to a company's name or id",
                            self.company,
                            names.join(", ")
                        ))
                    })
            })
            .await
            .map(String::as_str)
    }

    /// `companies({id})/{set}`, relative to the API root (as batch operations name it).
    pub async fn set_path(&self, set: &str) -> Result<String, ConnectorError> {
        Ok(format!("companies({})/{set}", self.company_id().await?))
    }

    pub async fn set_url(&self, set: &str) -> Result<String, ConnectorError> {
        Ok(format!("{}/{}", self.root, self.set_path(set).await?))
    }

    /// One `$batch` of at most 100 operations; the answers in the order of `requests`.
    /// Every operation carries what makes sending it twice harmless (a create its own
    /// id, an update or delete its `If-Match`), so the call is retried like a read;
    /// `repeated` tells the caller to read a 409 or 404 as its own earlier try.
    pub async fn batch(&self, requests: Vec<Json>) -> Result<(Vec<Json>, bool), ConnectorError> {
        let n = requests.len();
        let body = json!({ "requests": requests });
        let request = Request::new(Method::POST, format!("{}/$batch", self.root))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string())
            .safe(true)
            .describe(format!("$batch of {n}"));
        let reply = self.send(request).await?;
        let answer: Json = serde_json::from_slice(&reply.body).unwrap_or(Json::Null);
        if reply.status != StatusCode::OK {
            return Err(ConnectorError::fatal(format!(
                "Business Central $batch of {n}: HTTP {}: {}",
                reply.status.as_u16(),
                self.http.redactor().mask(&error_text(&answer))
            )));
        }
        let responses = answer["responses"].as_array().cloned().unwrap_or_default();
        let mut ordered = vec![Json::Null; n];
        for r in responses {
            let index = r["id"].as_str().and_then(|id| id.parse::<usize>().ok());
            if let Some(i) = index.filter(|i| *i < n) {
                ordered[i] = r;
            }
        }
        Ok((ordered, reply.repeated))
    }
}
