//! A local Dynamics 365 Business Central API v2.0 server for Tandem's tests.
//!
//! Business Central cannot run on a test machine, so this server plays it, written to
//! Microsoft's documentation and faithful in every behaviour the connector relies on,
//! the unpleasant ones included. Each behaviour names the page it follows:
//!
//! - Base URL `/v2.0/{tenant}/{environment}/api/v2.0`, everything under
//!   `companies({id})/` (<https://learn.microsoft.com/en-us/dynamics365/business-central/dev-itpro/api-reference/v2.0/endpoints-apis-for-dynamics>).
//! - OAuth2 client credentials at `/{tenant}/oauth2/v2.0/token` with the scope
//!   `https://api.businesscentral.dynamics.com/.default`; tokens expire after
//!   [`Options::token_lifetime`] and are then refused with 401; Basic auth with a web
//!   service access key, as on-premises servers take it
//!   (<https://learn.microsoft.com/en-us/training/modules/work-with-web-services/3-authentication>).
//! - Entities `customers`, `vendors`, `contacts`, `bankAccounts` with the properties of
//!   their resource types, defaults filled in on create, unknown properties refused
//!   and text lengths checked; `contactsInformation` is read-only
//!   (<https://learn.microsoft.com/en-us/dynamics365/business-central/dev-itpro/api-reference/v2.0/resources/dynamics_customer>).
//! - `@odata.etag` on every entity; `PATCH` and `DELETE` require `If-Match`, and a stale
//!   one is answered 409 `Request_EntityChanged`
//!   (<https://learn.microsoft.com/en-us/dynamics365/business-central/dev-itpro/api-reference/v2.0/api/dynamics_customer_update>).
//! - Server-driven paging: `Prefer: odata.maxpagesize` (at most 20,000 a page), pages
//!   chained by `@odata.nextLink` (<https://learn.microsoft.com/en-US/dynamics365/Business-Central/dev-ITPro/webservices/server-driven-paging-in-odata-web-services>).
//! - `$filter` on `lastModifiedDateTime` (and `id`/`number` equality), `$select`; no
//!   delta links and no tombstones (removed in version 24).
//! - JSON `$batch` of at most 100 operations, `Isolation: snapshot` for one transaction
//!   (<https://learn.microsoft.com/en-us/dynamics365/business-central/dev-itpro/webservices/use-odata-batch>).
//! - 429 past a request budget, without `Retry-After` (documented only for 502/503)
//!   (<https://learn.microsoft.com/en-us/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-rate-limits>).
//! - A create may carry its own `id` (SystemId); a second create with the same id is
//!   refused, so a client can use it as the create's idempotency key.
//!
//! Test hooks change data behind the client's back ([`BcServer::edit`]), make the next
//! write to a record meet a concurrent edit ([`BcServer::edit_before_next_write`]) and
//! count what the client did ([`BcServer::stats`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value as Json, json};

pub const TENANT: &str = "tandem-test";
pub const ENVIRONMENT: &str = "production";
pub const SCOPE: &str = "https://api.businesscentral.dynamics.com/.default";
pub const COMPANY_NAME: &str = "CRONUS Test";
/// The most operations one `$batch` may hold.
pub const MAX_BATCH: usize = 100;

/// How many requests a window allows before 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub requests: usize,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub client_id: String,
    pub client_secret: String,
    /// On-premises credentials: a user and its web service access key.
    pub basic: Option<(String, String)>,
    pub token_lifetime: Duration,
    /// The server's largest page (20,000 online).
    pub max_page_size: usize,
    pub budget: Option<Budget>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            client_secret: "fake-client-secret-Zq8~".into(),
            basic: None,
            token_lifetime: Duration::from_secs(3600),
            max_page_size: 20_000,
            budget: None,
        }
    }
}

/// What the server saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// API requests that counted against the budget (a `$batch` is one).
    pub requests: usize,
    /// Requests answered 429.
    pub throttled: usize,
    pub gets: usize,
    pub batches: usize,
    /// Operations inside batches.
    pub batch_ops: usize,
    /// Successful creates, updates and deletes.
    pub writes: usize,
    /// Writes refused with 409 `Request_EntityChanged`.
    pub conflicts: usize,
    pub tokens_issued: usize,
    /// API requests refused for an expired or unknown token.
    pub expired_tokens: usize,
}

#[derive(Debug, Clone, Copy)]
enum Ty {
    Text(usize),
    Bool,
    Number,
    Guid,
    Enum(&'static [&'static str]),
    /// Computed by the server; a write naming it is refused.
    ReadOnly,
}

const ADDRESS: [(&str, Ty); 7] = [
    ("addressLine1", Ty::Text(100)),
    ("addressLine2", Ty::Text(50)),
    ("city", Ty::Text(30)),
    ("state", Ty::Text(30)),
    ("country", Ty::Text(10)),
    ("postalCode", Ty::Text(20)),
    ("phoneNumber", Ty::Text(30)),
];

/// The properties of each entity set, from the API v2.0 resource types.
fn schema(set: &str) -> Option<Vec<(&'static str, Ty)>> {
    let mut props: Vec<(&'static str, Ty)> = vec![("number", Ty::Text(20))];
    match set {
        "customers" => {
            props.push(("displayName", Ty::Text(100)));
            props.push(("type", Ty::Enum(&["Company", "Person"])));
            props.extend(ADDRESS);
            props.extend([
                ("email", Ty::Text(80)),
                ("website", Ty::Text(80)),
                ("salespersonCode", Ty::Text(20)),
                ("balanceDue", Ty::ReadOnly),
                ("creditLimit", Ty::Number),
                ("taxLiable", Ty::Bool),
                ("taxAreaId", Ty::Guid),
                ("taxRegistrationNumber", Ty::Text(20)),
                ("currencyId", Ty::Guid),
                ("currencyCode", Ty::Text(10)),
                ("paymentTermsId", Ty::Guid),
                ("shipmentMethodId", Ty::Guid),
                ("paymentMethodId", Ty::Guid),
                ("blocked", Ty::Enum(&[" ", "Ship", "Invoice", "All"])),
            ]);
        }
        "vendors" => {
            props.push(("displayName", Ty::Text(100)));
            props.extend(ADDRESS);
            props.extend([
                ("email", Ty::Text(80)),
                ("website", Ty::Text(80)),
                ("taxRegistrationNumber", Ty::Text(20)),
                ("currencyId", Ty::Guid),
                ("currencyCode", Ty::Text(10)),
                ("irs1099Code", Ty::Text(10)),
                ("paymentTermsId", Ty::Guid),
                ("paymentMethodId", Ty::Guid),
                ("taxLiable", Ty::Bool),
                ("blocked", Ty::Enum(&[" ", "Payment", "All"])),
                ("balance", Ty::ReadOnly),
            ]);
        }
        "contacts" => {
            props.extend([
                ("type", Ty::Enum(&["Company", "Person"])),
                ("displayName", Ty::Text(100)),
                ("jobTitle", Ty::Text(30)),
                ("companyNumber", Ty::Text(20)),
                ("companyName", Ty::ReadOnly),
                ("contactBusinessRelation", Ty::ReadOnly),
            ]);
            props.extend(ADDRESS);
            props.extend([
                ("mobilePhoneNumber", Ty::Text(30)),
                ("email", Ty::Text(80)),
                ("website", Ty::Text(80)),
                ("searchName", Ty::ReadOnly),
                ("privacyBlocked", Ty::Bool),
                ("taxRegistrationNumber", Ty::Text(20)),
            ]);
        }
        "bankAccounts" => props.extend([
            ("displayName", Ty::Text(100)),
            ("bankAccountNumber", Ty::Text(30)),
            ("blocked", Ty::Bool),
            ("currencyCode", Ty::Text(10)),
            ("currencyId", Ty::Guid),
            ("iban", Ty::Text(50)),
            ("intercompanyEnabled", Ty::Bool),
        ]),
        // The business relations of contacts: read-only in the API.
        "contactsInformation" => {
            props = vec![
                ("contactId", Ty::ReadOnly),
                ("contactNumber", Ty::ReadOnly),
                ("contactName", Ty::ReadOnly),
                ("contactType", Ty::ReadOnly),
                ("relatedId", Ty::ReadOnly),
                ("relatedType", Ty::ReadOnly),
            ]
        }
        _ => return None,
    }
    Some(props)
}

fn number_prefix(set: &str) -> &'static str {
    match set {
        "customers" => "C",
        "vendors" => "V",
        "contacts" => "CT",
        _ => "B",
    }
}

const NIL_GUID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Clone)]
struct Entity {
    id: String,
    seq: u64,
    rev: u64,
    data: Map<String, Json>,
    modified_ms: i64,
}

impl Entity {
    fn etag(&self) -> String {
        let raw = format!("'{};{}{};'", self.seq, self.rev, self.modified_ms % 1000);
        format!(
            "W/\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn render(&self, select: Option<&[String]>) -> Json {
        let mut out = Map::new();
        out.insert("@odata.etag".into(), Json::String(self.etag()));
        let wanted = |k: &str| select.is_none_or(|s| s.iter().any(|w| w == k));
        if wanted("id") {
            out.insert("id".into(), Json::String(self.id.clone()));
        }
        for (k, v) in &self.data {
            if wanted(k) {
                out.insert(k.clone(), v.clone());
            }
        }
        if wanted("lastModifiedDateTime") {
            out.insert(
                "lastModifiedDateTime".into(),
                Json::String(format_ms(self.modified_ms)),
            );
        }
        Json::Object(out)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim().trim_matches('\'')).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

#[derive(Debug)]
struct State {
    options: Options,
    company_id: String,
    sets: BTreeMap<String, Vec<Entity>>,
    seq: u64,
    tokens: HashMap<String, Instant>,
    recent: VecDeque<Instant>,
    stats: Stats,
    /// Edits applied just before the next write to (set, id) is handled.
    edits_before_write: Vec<(String, String, Map<String, Json>)>,
}

/// An error answer in Business Central's JSON shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

/// The answer to one API operation (a request, or one operation of a batch).
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Option<Json>,
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        Answer {
            status: e.status,
            etag: None,
            body: Some(json!({"error": {"code": e.code, "message": e.message}})),
        }
    }
}

/// One operation as the API sees it, from a request or a batch entry.
struct Op<'a> {
    method: Method,
    /// The path below the API root: `companies(…)/customers(…)`.
    path: &'a str,
    query: Vec<(String, String)>,
    if_match: Option<String>,
    max_page: Option<usize>,
    body: Option<Json>,
    /// `scheme://host/…/api/v2.0/`, for next links.
    root: String,
}

impl State {
    fn new(options: Options) -> State {
        let mut sets = BTreeMap::new();
        for set in [
            "customers",
            "vendors",
            "contacts",
            "bankAccounts",
            "contactsInformation",
        ] {
            sets.insert(set.to_owned(), Vec::new());
        }
        State {
            options,
            company_id: "5a2b7f4e-0c1d-4e8a-9b3c-7d6e5f4a3b2c".into(),
            sets,
            seq: 0,
            tokens: HashMap::new(),
            recent: VecDeque::new(),
            stats: Stats::default(),
            edits_before_write: Vec::new(),
        }
    }

    fn new_guid(&mut self) -> String {
        self.seq += 1;
        let n = self.seq;
        let t = now_ms() as u64;
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            (t & 0xffff_ffff) as u32,
            (n >> 16) as u16,
            (n & 0xfff) as u16,
            (t >> 32) as u16 & 0xfff,
            n * 7919
        )
    }

    /// Budget check: true when the request may go on.
    fn admit(&mut self) -> bool {
        let Some(budget) = self.options.budget else {
            self.stats.requests += 1;
            return true;
        };
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > budget.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= budget.requests {
            self.stats.throttled += 1;
            return false;
        }
        self.recent.push_back(now);
        self.stats.requests += 1;
        true
    }

    fn issue_token(&mut self, form: &[(String, String)]) -> Result<Json, (StatusCode, Json)> {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let refuse = |error: &str, description: &str| {
            (
                if error == "invalid_client" {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                },
                json!({"error": error, "error_description": description}),
            )
        };
        if get("grant_type") != Some("client_credentials") {
            return Err(refuse(
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.",
            ));
        }
        if get("scope") != Some(SCOPE) {
            return Err(refuse(
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid.",
            ));
        }
        if get("client_id") != Some(self.options.client_id.as_str())
            || get("client_secret") != Some(self.options.client_secret.as_str())
        {
            return Err(refuse(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            ));
        }
        self.seq += 1;
        let token = format!("eyFake.{}.{}", self.seq, now_ms());
        let lifetime = self.options.token_lifetime;
        self.tokens.insert(token.clone(), Instant::now() + lifetime);
        self.stats.tokens_issued += 1;
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs().max(1),
            "ext_expires_in": lifetime.as_secs().max(1),
            "access_token": token,
        }))
    }

    fn authorized(&mut self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if let Some(token) = value.strip_prefix("Bearer ") {
            let ok = self
                .tokens
                .get(token)
                .is_some_and(|expiry| Instant::now() < *expiry);
            if !ok {
                self.stats.expired_tokens += 1;
            }
            return ok;
        }
        if let (Some(encoded), Some((user, key))) =
            (value.strip_prefix("Basic "), &self.options.basic)
        {
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
            return encoded == expected;
        }
        false
    }

    fn handle(&mut self, op: &Op) -> Answer {
        match self.route(op) {
            Ok(answer) => answer,
            Err(e) => e.into(),
        }
    }

    fn route(&mut self, op: &Op) -> Result<Answer, ApiError> {
        let path = op.path.trim_matches('/');
        if path == "companies" {
            return self.companies(op);
        }
        let rest = path
            .strip_prefix(&format!("companies({})/", self.company_id))
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "BadRequest_NotFound",
                    format!("no company or resource at `{path}`"),
                )
            })?;
        let (set, id) = match rest.split_once('(') {
            Some((set, id)) => (set, Some(id.trim_end_matches(')'))),
            None => (rest, None),
        };
        if schema(set).is_none() {
            return Err(err(
                StatusCode::NOT_FOUND,
                "BadRequest_NotFound",
                format!("the resource segment `{set}` is not known"),
            ));
        }
        if set == "contactsInformation" && op.method != Method::GET {
            return Err(err(
                StatusCode::METHOD_NOT_ALLOWED,
                "BadRequest_MethodNotAllowed",
                "contactsInformation is read-only",
            ));
        }
        match (&op.method, id) {
            (&Method::GET, None) => self.list(set, op),
            (&Method::GET, Some(id)) => {
                self.stats.gets += 1;
                let e = self.find(set, id)?;
                Ok(Answer {
                    status: StatusCode::OK,
                    etag: Some(e.etag()),
                    body: Some(e.render(None)),
                })
            }
            (&Method::POST, None) => self.create(set, op.body.as_ref()),
            (&Method::PATCH, Some(id)) => self.update(set, id, op),
            (&Method::DELETE, Some(id)) => self.delete(set, id, op),
            _ => Err(err(
                StatusCode::METHOD_NOT_ALLOWED,
                "BadRequest_MethodNotAllowed",
                format!("{} is not allowed here", op.method),
            )),
        }
    }

    fn companies(&mut self, op: &Op) -> Result<Answer, ApiError> {
        self.stats.gets += 1;
        let company = json!({
            "id": self.company_id, "systemVersion": "24.0", "name": COMPANY_NAME,
            "displayName": COMPANY_NAME, "businessProfileId": "",
        });
        let filter = op.query.iter().find(|(k, _)| k == "$filter");
        let keep = match filter {
            None => true,
            Some((_, f)) => f
                .strip_prefix("name eq ")
                .is_some_and(|n| n.trim_matches('\'') == COMPANY_NAME),
        };
        let value: Vec<Json> = if keep { vec![company] } else { vec![] };
        Ok(Answer {
            status: StatusCode::OK,
            etag: None,
            body: Some(
                json!({"@odata.context": format!("{}$metadata#companies", op.root), "value": value}),
            ),
        })
    }

    fn find(&self, set: &str, id: &str) -> Result<&Entity, ApiError> {
        self.sets[set].iter().find(|e| e.id == id).ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                "Internal_RecordNotFound",
                format!("The {set} record with id {id} does not exist."),
            )
        })
    }

    fn list(&mut self, set: &str, op: &Op) -> Result<Answer, ApiError> {
        self.stats.gets += 1;
        let param = |k: &str| op.query.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let filter = match param("$filter") {
            Some(f) => Some(Filter::parse(f)?),
            None => None,
        };
        let select: Option<Vec<String>> =
            param("$select").map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
        if param("$top").is_some() || param("$skip").is_some() {
            // The connector must page by the server's next links, never $top/$skip.
            return Err(err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "this server pages with @odata.nextLink; $top/$skip are not used by Tandem",
            ));
        }
        let after: u64 = match param("$skiptoken") {
            Some(t) => t
                .parse()
                .map_err(|_| err(StatusCode::BAD_REQUEST, "BadRequest", "bad $skiptoken"))?,
            None => 0,
        };
        let page_size = op
            .max_page
            .unwrap_or(self.options.max_page_size)
            .min(self.options.max_page_size)
            .max(1);
        let mut matching = self.sets[set]
            .iter()
            .filter(|e| e.seq > after)
            .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)));
        let page: Vec<&Entity> = matching.by_ref().take(page_size).collect();
        let more = matching.next().is_some();
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(format!(
                "{}$metadata#companies({})/{set}",
                op.root, self.company_id
            )),
        );
        body.insert(
            "value".into(),
            Json::Array(page.iter().map(|e| e.render(select.as_deref())).collect()),
        );
        if more && let Some(last) = page.last() {
            let mut query: Vec<(String, String)> = op
                .query
                .iter()
                .filter(|(k, _)| k != "$skiptoken")
                .cloned()
                .collect();
            query.push(("$skiptoken".into(), last.seq.to_string()));
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            body.insert(
                "@odata.nextLink".into(),
                json!(format!(
                    "{}{}?{encoded}",
                    op.root,
                    op.path.trim_matches('/')
                )),
            );
        }
        Ok(Answer {
            status: StatusCode::OK,
            etag: None,
            body: Some(Json::Object(body)),
        })
    }

    /// Checks the properties of a write and fills `data` with them.
    fn apply_props(
        &self,
        set: &str,
        data: &mut Map<String, Json>,
        body: &Map<String, Json>,
    ) -> Result<(), ApiError> {
        let props = schema(set).unwrap_or_default();
        for (key, value) in body {
            if key == "id" || key.starts_with("@odata") {
                continue;
            }
            let Some((_, ty)) = props.iter().find(|(p, _)| p == key) else {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "The property '{key}' does not exist on type 'Microsoft.NAV.{}'. Make sure to only use property names that are defined by the type.",
                        set.trim_end_matches('s')
                    ),
                ));
            };
            check_value(key, *ty, value)?;
            data.insert(key.clone(), value.clone());
        }
        if set == "contacts" {
            let number = data
                .get("companyNumber")
                .and_then(Json::as_str)
                .unwrap_or("");
            let company = if number.is_empty() {
                String::new()
            } else {
                self.sets["contacts"]
                    .iter()
                    .find(|c| {
                        c.data.get("number").and_then(Json::as_str) == Some(number)
                            && c.data.get("type").and_then(Json::as_str) == Some("Company")
                    })
                    .and_then(|c| c.data.get("displayName").and_then(Json::as_str))
                    .ok_or_else(|| {
                        err(
                            StatusCode::BAD_REQUEST,
                            "Internal_RecordNotFound",
                            format!("The Contact does not exist. Identification fields and values: No.='{number}'"),
                        )
                    })?
                    .to_owned()
            };
            data.insert("companyName".into(), Json::String(company));
        }
        Ok(())
    }

    fn create(&mut self, set: &str, body: Option<&Json>) -> Result<Answer, ApiError> {
        let body = body.and_then(Json::as_object).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "a JSON object body is required",
            )
        })?;
        let id = match body.get("id") {
            Some(Json::String(id)) => {
                if !is_guid(id) {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("`{id}` is not a GUID"),
                    ));
                }
                if self.sets[set].iter().any(|e| e.id == *id) {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "Internal_EntityWithSameKeyExists",
                        format!(
                            "The record in table {set} already exists. Identification fields and values: SystemId='{id}'"
                        ),
                    ));
                }
                id.clone()
            }
            Some(_) => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "`id` must be a GUID string",
                ));
            }
            None => self.new_guid(),
        };
        let mut data = Map::new();
        for (prop, ty) in schema(set).unwrap_or_default() {
            data.insert(prop.to_owned(), default_of(ty));
        }
        self.apply_props(set, &mut data, body)?;
        self.seq += 1;
        let seq = self.seq;
        if data
            .get("number")
            .and_then(Json::as_str)
            .unwrap_or("")
            .is_empty()
        {
            data.insert(
                "number".into(),
                json!(format!("{}{:05}", number_prefix(set), seq)),
            );
        }
        let entity = Entity {
            id,
            seq,
            rev: 1,
            data,
            modified_ms: now_ms(),
        };
        let answer = Answer {
            status: StatusCode::CREATED,
            etag: Some(entity.etag()),
            body: Some(entity.render(None)),
        };
        self.sets.get_mut(set).expect("known set").push(entity);
        self.stats.writes += 1;
        Ok(answer)
    }

    fn apply_edit_before_write(&mut self, set: &str, id: &str) {
        if let Some(i) = self
            .edits_before_write
            .iter()
            .position(|(s, e, _)| s == set && e == id)
        {
            let (_, _, edit) = self.edits_before_write.remove(i);
            let _ = self.edit_entity(set, id, &edit);
        }
    }

    /// Checks `If-Match` against the entity's current ETag.
    fn precondition(&mut self, set: &str, id: &str, op: &Op) -> Result<usize, ApiError> {
        self.apply_edit_before_write(set, id);
        let index = self.sets[set]
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "Internal_RecordNotFound",
                    format!("The {set} record with id {id} does not exist."),
                )
            })?;
        let Some(if_match) = &op.if_match else {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Request_IfMatchRequired",
                "The If-Match header is required to modify this entity.",
            ));
        };
        if if_match != "*" && *if_match != self.sets[set][index].etag() {
            self.stats.conflicts += 1;
            return Err(err(
                StatusCode::CONFLICT,
                "Request_EntityChanged",
                "Could not save the changes because the record has changed since it was last read.",
            ));
        }
        Ok(index)
    }

    fn update(&mut self, set: &str, id: &str, op: &Op) -> Result<Answer, ApiError> {
        let index = self.precondition(set, id, op)?;
        let body = op.body.as_ref().and_then(Json::as_object).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "a JSON object body is required",
            )
        })?;
        let mut data = self.sets[set][index].data.clone();
        self.apply_props(set, &mut data, body)?;
        let e = &mut self.sets.get_mut(set).expect("known set")[index];
        e.data = data;
        e.rev += 1;
        e.modified_ms = now_ms();
        let answer = Answer {
            status: StatusCode::OK,
            etag: Some(e.etag()),
            body: Some(e.render(None)),
        };
        self.stats.writes += 1;
        Ok(answer)
    }

    fn delete(&mut self, set: &str, id: &str, op: &Op) -> Result<Answer, ApiError> {
        let index = self.precondition(set, id, op)?;
        self.sets.get_mut(set).expect("known set").remove(index);
        self.stats.writes += 1;
        Ok(Answer {
            status: StatusCode::NO_CONTENT,
            etag: None,
            body: None,
        })
    }

    fn edit_entity(
        &mut self,
        set: &str,
        id: &str,
        edit: &Map<String, Json>,
    ) -> Result<(), ApiError> {
        let index = self.sets[set]
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "Internal_RecordNotFound",
                    id.to_owned(),
                )
            })?;
        let mut data = self.sets[set][index].data.clone();
        for (k, v) in edit {
            data.insert(k.clone(), v.clone());
        }
        let e = &mut self.sets.get_mut(set).expect("known set")[index];
        e.data = data;
        e.rev += 1;
        e.modified_ms = now_ms();
        Ok(())
    }

    fn batch(&mut self, body: &[u8], headers: &HeaderMap, root: &str) -> Answer {
        let parsed: Json = match serde_json::from_slice(body) {
            Ok(j) => j,
            Err(e) => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("not JSON: {e}"),
                )
                .into();
            }
        };
        let Some(requests) = parsed.get("requests").and_then(Json::as_array) else {
            return err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "a JSON batch needs `requests`",
            )
            .into();
        };
        if requests.len() > MAX_BATCH {
            return err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "The batch holds {} operations; at most {MAX_BATCH} are allowed.",
                    requests.len()
                ),
            )
            .into();
        }
        self.stats.batches += 1;
        let snapshot = headers
            .get("isolation")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("snapshot"));
        let saved = snapshot.then(|| (self.sets.clone(), self.stats.clone()));
        let mut responses = Vec::new();
        let mut failed = false;
        for request in requests {
            self.stats.batch_ops += 1;
            let answer = self.batch_op(request, root);
            failed |= answer.status.as_u16() >= 400;
            let mut headers = Map::new();
            if let Some(etag) = &answer.etag {
                headers.insert("ETag".into(), json!(etag));
            }
            if answer.body.is_some() {
                headers.insert(
                    "Content-Type".into(),
                    json!("application/json; odata.metadata=minimal"),
                );
            }
            let mut entry = json!({
                "id": request.get("id").cloned().unwrap_or(Json::Null),
                "status": answer.status.as_u16(),
                "headers": headers,
            });
            if let Some(body) = answer.body {
                entry["body"] = body;
            }
            responses.push(entry);
        }
        if failed && let Some((sets, stats)) = saved {
            // One transaction: nothing of the batch stays (use-odata-batch).
            self.sets = sets;
            let batch_ops = self.stats.batch_ops;
            self.stats = Stats { batch_ops, ..stats };
            self.stats.batches += 1;
            for r in &mut responses {
                if r["status"].as_u64().is_some_and(|s| s < 400) {
                    *r = json!({"id": r["id"], "status": 424, "headers": {},
                        "body": {"error": {"code": "BadRequest", "message": "rolled back: another operation of the batch failed"}}});
                }
            }
        }
        Answer {
            status: StatusCode::OK,
            etag: None,
            body: Some(json!({"responses": responses})),
        }
    }

    fn batch_op(&mut self, request: &Json, root: &str) -> Answer {
        let method = request
            .get("method")
            .and_then(Json::as_str)
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok());
        let url = request.get("url").and_then(Json::as_str);
        let (Some(method), Some(url)) = (method, url) else {
            return err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "a batch operation needs `method` and `url`",
            )
            .into();
        };
        let relative = url.split_once("/api/v2.0/").map_or(url, |(_, r)| r);
        let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
        let header = |name: &str| {
            request
                .get("headers")
                .and_then(Json::as_object)
                .and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.as_str())
                        .map(str::to_owned)
                })
        };
        let op = Op {
            method,
            path,
            query: form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
            if_match: header("If-Match"),
            max_page: None,
            body: request.get("body").cloned(),
            root: root.to_owned(),
        };
        self.handle(&op)
    }
}

fn is_guid(s: &str) -> bool {
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

fn default_of(ty: Ty) -> Json {
    match ty {
        Ty::Text(_) | Ty::ReadOnly => json!(""),
        Ty::Bool => json!(false),
        Ty::Number => json!(0),
        Ty::Guid => json!(NIL_GUID),
        Ty::Enum(values) => json!(values[0]),
    }
}

fn check_value(key: &str, ty: Ty, value: &Json) -> Result<(), ApiError> {
    let bad = |message: String| Err(err(StatusCode::BAD_REQUEST, "BadRequest", message));
    match (ty, value) {
        (Ty::ReadOnly, _) => bad(format!("The property '{key}' is read-only.")),
        (Ty::Text(max), Json::String(s)) if s.chars().count() > max => bad(format!(
            "The length of the string is {}, but it must be less than or equal to {max} characters. Value: {s}",
            s.chars().count()
        )),
        (Ty::Text(_), Json::String(_))
        | (Ty::Bool, Json::Bool(_))
        | (Ty::Number, Json::Number(_)) => Ok(()),
        (Ty::Guid, Json::String(s)) if is_guid(s) => Ok(()),
        (Ty::Enum(values), Json::String(s)) if values.contains(&s.as_str()) => Ok(()),
        _ => bad(format!(
            "Cannot convert the literal '{value}' to the expected type of '{key}'."
        )),
    }
}

/// The `$filter` expressions the server understands: clauses joined by `or`, each
/// `lastModifiedDateTime gt|ge|lt <datetime>`, `id eq <guid>` or `number eq '<text>'`.
#[derive(Debug)]
struct Filter(Vec<Clause>);

#[derive(Debug)]
enum Clause {
    Modified { op: &'static str, ms: i64 },
    Id(String),
    Number(String),
}

impl Filter {
    fn parse(text: &str) -> Result<Filter, ApiError> {
        let bad = || {
            err(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the $filter `{text}` is not supported by this server"),
            )
        };
        let mut clauses = Vec::new();
        for clause in text.split(" or ") {
            let mut parts = clause.trim().splitn(3, ' ');
            let (Some(prop), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            clauses.push(match (prop, op) {
                ("lastModifiedDateTime", "gt" | "ge" | "lt") => Clause::Modified {
                    op: if op == "gt" {
                        "gt"
                    } else if op == "ge" {
                        "ge"
                    } else {
                        "lt"
                    },
                    ms: parse_ms(value).ok_or_else(bad)?,
                },
                ("id", "eq") => Clause::Id(value.trim_matches('\'').to_owned()),
                ("number", "eq") => Clause::Number(value.trim_matches('\'').replace("''", "'")),
                _ => return Err(bad()),
            });
        }
        Ok(Filter(clauses))
    }

    fn matches(&self, e: &Entity) -> bool {
        self.0.iter().any(|c| match c {
            Clause::Modified { op: "gt", ms } => e.modified_ms > *ms,
            Clause::Modified { op: "ge", ms } => e.modified_ms >= *ms,
            Clause::Modified { ms, .. } => e.modified_ms < *ms,
            Clause::Id(id) => e.id == *id,
            Clause::Number(n) => e.data.get("number").and_then(Json::as_str) == Some(n),
        })
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_response(status: StatusCode, etag: Option<&str>, body: Option<&Json>) -> Response {
    let mut builder = Response::builder().status(status);
    if let Some(etag) = etag {
        builder = builder.header(header::ETAG, etag);
    }
    match body {
        Some(body) => builder
            .header(
                header::CONTENT_TYPE,
                "application/json; odata.metadata=minimal",
            )
            .body(axum::body::Body::from(body.to_string())),
        None => builder.body(axum::body::Body::empty()),
    }
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn serve(
    axum::extract::State(state): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut state = lock(&state);
    if path == format!("/{TENANT}/oauth2/v2.0/token") && method == Method::POST {
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        return match state.issue_token(&form) {
            Ok(body) => json_response(StatusCode::OK, None, Some(&body)),
            Err((status, body)) => json_response(status, None, Some(&body)),
        };
    }
    let prefix = format!("/v2.0/{TENANT}/{ENVIRONMENT}/api/v2.0/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return json_response(
            StatusCode::NOT_FOUND,
            None,
            Some(
                &json!({"error": {"code": "BadRequest_NotFound", "message": format!("nothing at {path}")}}),
            ),
        );
    };
    if !state.authorized(&headers) {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            None,
            Some(
                &json!({"error": {"code": "Authentication_InvalidCredentials", "message": "The server has rejected the client credentials."}}),
            ),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"\""),
        );
        return response;
    }
    if !state.admit() {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(
                &json!({"error": {"code": "Application_TooManyRequests", "message": "Too many requests reached. Actual (6001). Maximum (6000)."}}),
            ),
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let root = format!("http://{host}{prefix}");
    if rest == "$batch" && method == Method::POST {
        let answer = state.batch(&body, &headers, &root);
        return json_response(answer.status, None, answer.body.as_ref());
    }
    let body_json = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(j) => Some(j),
            Err(e) => {
                return Answer::from(err(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("not JSON: {e}"),
                ))
                .into_response();
            }
        }
    };
    let max_page = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("odata.maxpagesize=")?.parse().ok());
    let op = Op {
        method,
        path: rest,
        query,
        if_match: headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        max_page,
        body: body_json,
        root,
    };
    let answer = state.handle(&op);
    let mut response = answer.into_response();
    if let Some(n) = max_page {
        response.headers_mut().insert(
            "preference-applied",
            header::HeaderValue::from_str(&format!("odata.maxpagesize={n}"))
                .unwrap_or(header::HeaderValue::from_static("")),
        );
    }
    response
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        json_response(self.status, self.etag.as_deref(), self.body.as_ref())
    }
}

/// A running fake Business Central, stopped when dropped.
#[derive(Debug)]
pub struct BcServer {
    addr: SocketAddr,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BcServer {
    /// Starts a server on a free loopback port, on a thread of its own.
    pub fn start(options: Options) -> BcServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let addr = listener.local_addr().expect("the port");
        let state: Shared = Arc::new(Mutex::new(State::new(options)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().fallback(serve).with_state(state.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        BcServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// `http://127.0.0.1:<port>`: the host of both the API and the token endpoint.
    pub fn host_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API root, `…/v2.0/{tenant}/{environment}/api/v2.0`.
    pub fn api_url(&self) -> String {
        format!("{}/v2.0/{TENANT}/{ENVIRONMENT}/api/v2.0", self.host_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/token", self.host_url())
    }

    pub fn company_id(&self) -> String {
        self.state().company_id.clone()
    }

    pub fn options(&self) -> Options {
        self.state().options.clone()
    }

    /// The connector settings for OAuth2 against this server (the secret as given).
    pub fn oauth_settings(&self) -> Json {
        let o = self.options();
        json!({
            "tenant": TENANT,
            "environment": ENVIRONMENT,
            "company": COMPANY_NAME,
            "client_id": o.client_id,
            "client_secret": o.client_secret,
            "api_host": self.host_url(),
            "login_host": self.host_url(),
        })
    }

    pub fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    /// Forgets every token issued, as a revoked or rotated secret would: the next API
    /// request with one is answered 401.
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    pub fn set_budget(&self, budget: Option<Budget>) {
        let mut s = self.state();
        s.options.budget = budget;
        s.recent.clear();
    }

    /// Creates an entity as a user of Business Central would; returns its id.
    pub fn insert(&self, set: &str, body: Json) -> String {
        let mut s = self.state();
        match s.create(set, Some(&body)) {
            Ok(a) => a
                .body
                .and_then(|b| b["id"].as_str().map(str::to_owned))
                .unwrap_or_default(),
            Err(e) => panic!("insert into {set}: {}", e.message),
        }
    }

    /// Changes an entity behind the client's back (new ETag, new lastModifiedDateTime).
    pub fn edit(&self, set: &str, id: &str, edit: Json) {
        let edit = edit.as_object().cloned().unwrap_or_default();
        if let Err(e) = self.state().edit_entity(set, id, &edit) {
            panic!("edit {set}({id}): {}", e.message);
        }
    }

    /// The next `PATCH` or `DELETE` of this entity first meets this edit, made by
    /// someone else a moment earlier: its `If-Match` is then stale.
    pub fn edit_before_next_write(&self, set: &str, id: &str, edit: Json) {
        let edit = edit.as_object().cloned().unwrap_or_default();
        self.state()
            .edits_before_write
            .push((set.to_owned(), id.to_owned(), edit));
    }

    /// The entity as the API renders it.
    pub fn get(&self, set: &str, id: &str) -> Option<Json> {
        self.state().find(set, id).ok().map(|e| e.render(None))
    }

    pub fn list(&self, set: &str) -> Vec<Json> {
        self.state().sets[set]
            .iter()
            .map(|e| e.render(None))
            .collect()
    }

    pub fn remove(&self, set: &str, id: &str) {
        self.state()
            .sets
            .get_mut(set)
            .expect("known set")
            .retain(|e| e.id != id);
    }
}

impl Drop for BcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
