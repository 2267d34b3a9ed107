//! A connector for Dynamics 365 Business Central's API v2.0 (`type = "business_central"`):
//! customers, vendors and bank accounts, and contacts, so that Business Central can
//! also be the contact side.
//!
//! - **Authentication**: online, OAuth2 client credentials (`tenant`, `client_id`,
//!   `client_secret`; scope `https://api.businesscentral.dynamics.com/.default`), the
//!   token renewed before it expires and whenever the API answers 401; on-premises,
//!   Basic auth with a user and its web service access key (`url`, `username`,
//!   `access_key`).
//! - **Reads**: without a cursor a full listing, paged by the server
//!   (`Prefer: odata.maxpagesize`, `@odata.nextLink`, never `$top/$skip`); with one,
//!   the records whose `lastModifiedDateTime` is after the newest seen minus an overlap
//!   window, de-duplicated by ETag, plus tombstones found by comparing a listing of ids
//!   with the last one (Business Central keeps no tombstones). See [`cursor`].
//! - **Writes**: one `$batch` call of at most 100 operations per `write`. Creates carry
//!   a new random `id` (SystemId), so a batch sent twice never makes a second record;
//!   updates and deletes carry `If-Match` with the version read, and a stale one
//!   (409 `Request_EntityChanged`) is [`ConnectorError::Conflict`].
//! - **Limits**: by default at most 20 requests a second (Business Central's 6,000 per
//!   5 minutes), one at a time; 429 and 5xx answers are retried with exponential
//!   backoff by the shared HTTP layer ([`tandem_connector::http`]).
//!
//! See [`mapping`] for every field.

mod api;
pub mod cursor;
pub mod mapping;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use tandem_connector::http::{Auth, HttpClient, HttpSettings, SecretString, Url};
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Listing, Page,
    WriteOp, WriteOutcome, Written, parse_settings,
};
use tandem_model::{EntityKind, Record, Timestamp, Value, field};

use crate::api::{Api, Credentials, TokenSource, error_code, error_text};
pub use crate::api::{SCOPE, new_guid};
use crate::cursor::{State, etag_hash};
use crate::mapping::{COMPANY_NUMBER, entity_set};

/// The most operations Business Central takes in one `$batch`.
pub const MAX_BATCH: usize = 100;

fn default_environment() -> String {
    "production".into()
}
fn default_api_host() -> String {
    "https://api.businesscentral.dynamics.com".into()
}
fn default_login_host() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_page_size() -> usize {
    1000
}
fn default_batch() -> usize {
    MAX_BATCH
}
fn default_overlap() -> u64 {
    300
}

/// The HTTP defaults: Business Central's budget of 6,000 requests per 5 minutes is 20
/// a second; an operation may take up to 8 minutes.
pub fn default_http() -> HttpSettings {
    let mut http = HttpSettings::with_timeouts(Duration::from_secs(10), Duration::from_secs(480));
    http.max_requests_per_second = Some(20.0);
    http
}

/// The settings of `type = "business_central"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The Microsoft Entra tenant (a domain or id); online only.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The company's name or id.
    pub company: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// On-premises: the API root, `https://host:7048/BC/api/v2.0`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// On-premises: the user's web service access key.
    #[serde(default)]
    pub access_key: Option<SecretString>,
    #[serde(default = "default_api_host")]
    pub api_host: String,
    #[serde(default = "default_login_host")]
    pub login_host: String,
    /// Records per page (`Prefer: odata.maxpagesize`), at most 20,000.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Operations per `$batch` and per `write`, at most 100.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How far before the newest change seen a read from a cursor looks again.
    #[serde(default = "default_overlap")]
    pub overlap_seconds: u64,
    #[serde(skip, default = "default_http")]
    pub http: HttpSettings,
}

impl Settings {
    pub fn parse(
        mut settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Settings, ConnectorError> {
        let http = HttpSettings::take_from(&mut settings, &default_http(), context)?;
        let mut own: Settings = parse_settings(settings)?;
        own.http = http;
        Ok(own)
    }
}

/// Builds [`BusinessCentralConnector`]s for `type = "business_central"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusinessCentralConnectorFactory;

impl ConnectorFactory for BusinessCentralConnectorFactory {
    fn type_name(&self) -> &'static str {
        "business_central"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings = Settings::parse(settings, context)?;
        Ok(Arc::new(BusinessCentralConnector::new(settings)?))
    }
}

/// Customers, vendors, bank accounts and contacts of one Business Central company.
#[derive(Debug)]
pub struct BusinessCentralConnector {
    api: Api,
    batch: usize,
    overlap_ms: i64,
    /// Contact number <-> id, learnt from every contact read, for `company_id`.
    contacts: Mutex<ContactNumbers>,
}

#[derive(Debug, Default)]
struct ContactNumbers {
    by_number: HashMap<String, String>,
    by_id: HashMap<String, String>,
}

impl ContactNumbers {
    fn learn(&mut self, entity: &Json) {
        if let (Some(id), Some(number)) = (entity["id"].as_str(), entity["number"].as_str()) {
            self.by_number.insert(number.to_owned(), id.to_owned());
            self.by_id.insert(id.to_owned(), number.to_owned());
        }
    }
}

/// What a batch operation was meant to do, to read its answer.
#[derive(Debug)]
enum Expect {
    Create { id: String },
    Update { id: String, body: Map<String, Json> },
    Delete { id: String },
}

impl Expect {
    fn id(&self) -> &str {
        match self {
            Expect::Create { id } | Expect::Update { id, .. } | Expect::Delete { id } => id,
        }
    }
}

fn need(value: Option<String>, key: &str, when: &str) -> Result<String, ConnectorError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ConnectorError::config(format!("`{key}` is required {when}")))
}

impl BusinessCentralConnector {
    pub fn new(settings: Settings) -> Result<BusinessCentralConnector, ConnectorError> {
        if settings.batch_size == 0 || settings.batch_size > MAX_BATCH {
            return Err(ConnectorError::config(format!(
                "`batch_size` must be between 1 and {MAX_BATCH} (Business Central's limit per $batch)"
            )));
        }
        if settings.page_size == 0 || settings.page_size > 20_000 {
            return Err(ConnectorError::config(
                "`page_size` must be between 1 and 20000 (Business Central's largest page)",
            ));
        }
        if settings.company.trim().is_empty() {
            return Err(ConnectorError::config(
                "`company` must name a company (its name or id)",
            ));
        }
        let (root, credentials, auth) = match (&settings.client_id, &settings.username) {
            (Some(_), Some(_)) => {
                return Err(ConnectorError::config(
                    "set either `client_id` and `client_secret` (online) or `username` and \
                     `access_key` (on-premises), not both",
                ));
            }
            (Some(client_id), None) => {
                let tenant = need(settings.tenant.clone(), "tenant", "with `client_id`")?;
                let secret = settings.client_secret.clone().ok_or_else(|| {
                    ConnectorError::config("`client_secret` is required with `client_id`")
                })?;
                let root = match &settings.url {
                    Some(url) => url.clone(),
                    None => format!(
                        "{}/v2.0/{tenant}/{}/api/v2.0",
                        settings.api_host.trim_end_matches('/'),
                        settings.environment
                    ),
                };
                let token_url = format!(
                    "{}/{tenant}/oauth2/v2.0/token",
                    settings.login_host.trim_end_matches('/')
                );
                let source = TokenSource::new(token_url, client_id.clone(), secret);
                (root, Credentials::OAuth(source), Auth::None)
            }
            (None, Some(user)) => {
                let url = need(settings.url.clone(), "url", "with `username` (on-premises)")?;
                let key = settings.access_key.clone().ok_or_else(|| {
                    ConnectorError::config("`access_key` is required with `username`")
                })?;
                let auth = Auth::Basic {
                    user: user.clone(),
                    password: Some(key),
                };
                (url, Credentials::Basic, auth)
            }
            (None, None) => {
                return Err(ConnectorError::config(
                    "no credentials: set `tenant`, `client_id` and `client_secret` (online) or \
                     `url`, `username` and `access_key` (on-premises)",
                ));
            }
        };
        let http = HttpClient::new("Business Central", settings.http, auth)?;
        if let Credentials::OAuth(source) = &credentials {
            http.redactor().add(&source.secret);
        }
        Ok(BusinessCentralConnector {
            api: Api::new(
                http,
                root,
                credentials,
                settings.company,
                settings.page_size,
            ),
            batch: settings.batch_size,
            overlap_ms: (settings.overlap_seconds * 1000) as i64,
            contacts: Mutex::new(ContactNumbers::default()),
        })
    }

    /// API requests sent so far (retries not counted), for benchmarks.
    pub fn requests(&self) -> usize {
        self.api.requests()
    }

    /// Access tokens fetched so far.
    pub fn tokens_issued(&self) -> usize {
        self.api.tokens_issued()
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, ContactNumbers> {
        self.contacts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records of `kind` from entities; contacts get their company's id.
    async fn records(
        &self,
        kind: EntityKind,
        entities: &[Json],
    ) -> Result<Vec<Record>, ConnectorError> {
        if kind == EntityKind::Contact {
            let mut numbers = self.numbers();
            for e in entities {
                numbers.learn(e);
            }
        }
        if kind == EntityKind::Contact {
            self.learn_company_numbers(entities).await?;
        }
        let numbers = self.numbers();
        let mut out = Vec::with_capacity(entities.len());
        for e in entities {
            let (Some(id), version, modified_at) = mapping::identity(e) else {
                continue;
            };
            let mut fields = mapping::fields_of(kind, e);
            if kind == EntityKind::Contact
                && let Some(number) = fields.text(field::COMPANY_ID).map(str::to_owned)
            {
                match numbers.by_number.get(&number) {
                    Some(company) => fields.set(field::COMPANY_ID, Value::text(company.as_str())),
                    None => {
                        fields.remove(field::COMPANY_ID);
                    }
                }
            }
            out.push(Record {
                version,
                modified_at,
                ..Record::new(kind, id, fields)
            });
        }
        Ok(out)
    }

    /// Looks up the company contacts that `entities` name by number and were not seen.
    async fn learn_company_numbers(&self, entities: &[Json]) -> Result<(), ConnectorError> {
        let missing: BTreeSet<String> = {
            let numbers = self.numbers();
            entities
                .iter()
                .filter_map(|e| e[COMPANY_NUMBER].as_str())
                .filter(|n| !n.is_empty() && !numbers.by_number.contains_key(*n))
                .map(str::to_owned)
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let base = self.api.set_url("contacts").await?;
        let missing: Vec<String> = missing.into_iter().collect();
        for chunk in missing.chunks(20) {
            let filter: Vec<String> = chunk
                .iter()
                .map(|n| format!("number eq '{}'", n.replace('\'', "''")))
                .collect();
            let url = with_query(&base, &[("$filter", &filter.join(" or "))])?;
            let found = self.api.list_all(&url, "contacts by number").await?;
            let mut numbers = self.numbers();
            for e in &found {
                numbers.learn(e);
            }
        }
        Ok(())
    }

    /// The number of the company contact `id`, for a contact's `companyNumber`.
    async fn company_number(&self, id: &str) -> Result<String, ConnectorError> {
        if let Some(number) = self.numbers().by_id.get(id) {
            return Ok(number.clone());
        }
        let url = format!("{}({id})", self.api.set_url("contacts").await?);
        let entity = self.api.get_json(&url, id).await.map_err(|e| match e {
            ConnectorError::NotFound { .. } => ConnectorError::invalid(
                None,
                format!("`company_id` {id} is no contact in Business Central"),
            ),
            other => other,
        })?;
        self.numbers().learn(&entity);
        entity["number"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ConnectorError::invalid(None, format!("contact {id} has no number")))
    }

    async fn full_listing(&self, kind: EntityKind) -> Result<Page, ConnectorError> {
        let set = entity_set(kind);
        let entities = self
            .api
            .list_all(&self.api.set_url(set).await?, set)
            .await?;
        let mut state = State::default();
        for e in &entities {
            let (Some(id), etag, modified) = mapping::identity(e) else {
                continue;
            };
            state.ids.insert(id.to_owned());
            state.saw(id, modified.map(|t| t.0), etag_hash(etag.as_deref()));
        }
        state.prune(self.overlap_ms);
        Ok(Page {
            records: self.records(kind, &entities).await?,
            listing: Listing::Full,
            cursor: Some(state.encode()),
            has_more: false,
        })
    }

    async fn changes(&self, kind: EntityKind, cursor: &Cursor) -> Result<Page, ConnectorError> {
        let before = State::decode(cursor)?;
        let set = entity_set(kind);
        let base = self.api.set_url(set).await?;
        let changed_url = match before.since(self.overlap_ms) {
            Some(ms) => with_query(
                &base,
                &[(
                    "$filter",
                    &format!("lastModifiedDateTime gt {}", Timestamp(ms)),
                )],
            )?,
            None => base.clone(),
        };
        let changed = self.api.list_all(&changed_url, set).await?;
        // The ids listing completes or fails as a whole: deletes come only from it.
        let ids_url = with_query(&base, &[("$select", "id")])?;
        let ids: BTreeSet<String> = self
            .api
            .list_all(&ids_url, set)
            .await?
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        let mut after = State {
            newest: before.newest,
            window: before.window.clone(),
            ids: ids.clone(),
        };
        let mut fresh = Vec::new();
        let mut seen_now = BTreeSet::new();
        for e in changed {
            let (Some(id), etag, modified) = mapping::identity(&e) else {
                continue;
            };
            let hash = etag_hash(etag.as_deref());
            seen_now.insert(id.to_owned());
            after.saw(id, modified.map(|t| t.0), hash);
            if ids.contains(id) && !before.already_seen(id, hash) {
                fresh.push(e);
            }
        }
        let mut records = self.records(kind, &fresh).await?;
        // Ids that appeared without showing up as changed (a clock further back than the
        // overlap): fetched by id, so that no record is missed.
        let unseen: Vec<&str> = ids
            .iter()
            .filter(|id| !before.ids.contains(*id) && !seen_now.contains(*id))
            .map(String::as_str)
            .collect();
        if !unseen.is_empty() {
            for r in self.read_ids(kind, &unseen).await? {
                after.saw(
                    &r.id,
                    r.modified_at.map(|t| t.0),
                    etag_hash(r.version.as_deref()),
                );
                records.push(r);
            }
        }
        records.extend(
            before
                .ids
                .difference(&ids)
                .map(|id| Record::tombstone(kind, id.as_str())),
        );
        after.prune(self.overlap_ms);
        Ok(Page {
            records,
            listing: Listing::Changes,
            cursor: Some(after.encode()),
            has_more: false,
        })
    }

    /// The batch operation for `op`, or why it cannot be sent.
    async fn prepare(
        &self,
        kind: EntityKind,
        path: &str,
        op: &WriteOp,
    ) -> Result<(Json, Expect), ConnectorError> {
        match op {
            WriteOp::Create { fields, .. } => {
                let mut body = self
                    .body(kind, None, fields.iter().map(|(k, v)| (k.as_str(), v)))
                    .await?;
                let id = new_guid()?;
                body.insert("id".into(), json!(id));
                Ok((
                    json!({"method": "POST", "url": path,
                           "headers": {"Content-Type": "application/json"}, "body": body}),
                    Expect::Create { id },
                ))
            }
            WriteOp::Update {
                id,
                version,
                changes,
            } => {
                let body = self
                    .body(kind, Some(id), changes.iter().map(|(k, v)| (k.as_str(), v)))
                    .await?;
                Ok((
                    json!({"method": "PATCH", "url": format!("{path}({id})"),
                           "headers": {"Content-Type": "application/json",
                                       "If-Match": version.as_deref().unwrap_or("*")},
                           "body": body}),
                    Expect::Update {
                        id: id.clone(),
                        body,
                    },
                ))
            }
            WriteOp::Delete { id, version } => Ok((
                json!({"method": "DELETE", "url": format!("{path}({id})"),
                       "headers": {"If-Match": version.as_deref().unwrap_or("*")}}),
                Expect::Delete { id: id.clone() },
            )),
        }
    }

    async fn body<'a>(
        &self,
        kind: EntityKind,
        id: Option<&str>,
        changes: impl Iterator<Item = (&'a str, &'a Value)>,
    ) -> Result<Map<String, Json>, ConnectorError> {
        let mut changes: Vec<(&str, Value)> = changes.map(|(k, v)| (k, v.clone())).collect();
        if kind == EntityKind::Contact {
            for (name, value) in &mut changes {
                if *name == field::COMPANY_ID && !value.is_empty() {
                    let number = self
                        .company_number(&value.to_cell())
                        .await
                        .map_err(|e| with_id(e, id))?;
                    *value = Value::text(number);
                }
            }
        }
        mapping::body_of(kind, changes.iter().map(|(k, v)| (*k, v)))
            .map_err(|message| ConnectorError::invalid(id, message))
    }

    /// The outcome of one batch answer.
    async fn outcome(
        &self,
        kind: EntityKind,
        path: &str,
        expect: &Expect,
        answer: &Json,
        repeated: bool,
    ) -> WriteOutcome {
        let id = expect.id();
        let status = answer["status"].as_u64().unwrap_or(0);
        let body = &answer["body"];
        match (status, expect) {
            (200 | 201, _) => Ok(written(body, id)),
            (204, _) => Ok(Written {
                id: id.to_owned(),
                version: None,
                modified_at: None,
            }),
            (404, Expect::Delete { .. }) if repeated => Ok(Written {
                id: id.to_owned(),
                version: None,
                modified_at: None,
            }),
            (404, _) => Err(ConnectorError::NotFound { id: id.to_owned() }),
            (400 | 409, Expect::Create { .. })
                if error_code(body) == "Internal_EntityWithSameKeyExists" =>
            {
                // The id is ours and new: the record is the trace of an earlier try.
                self.current(path, id).await.map(|e| written(&e, id))
            }
            (409 | 412, Expect::Update { body: sent, .. }) if repeated => {
                let current = self.current(path, id).await?;
                if sent.iter().all(|(k, v)| current.get(k) == Some(v)) {
                    Ok(written(&current, id))
                } else {
                    Err(ConnectorError::Conflict { id: id.to_owned() })
                }
            }
            (409 | 412, _) => Err(ConnectorError::Conflict { id: id.to_owned() }),
            (429, _) => Err(ConnectorError::rate_limited(None)),
            (401 | 403, _) => Err(ConnectorError::Auth {
                message: format!(
                    "Business Central refused a write to {kind} {id}: {}",
                    self.api.http.redactor().mask(&error_text(body))
                ),
            }),
            (400..=499, _) => Err(ConnectorError::invalid(
                Some(id),
                format!(
                    "Business Central refused the {kind}: HTTP {status}: {}",
                    self.api.http.redactor().mask(&error_text(body))
                ),
            )),
            _ => Err(ConnectorError::transient(format!(
                "Business Central: {kind} {id}: HTTP {status}: {}",
                self.api.http.redactor().mask(&error_text(body))
            ))),
        }
    }

    async fn current(&self, path: &str, id: &str) -> Result<Json, ConnectorError> {
        let url = format!("{}/{path}({id})", self.api.root);
        self.api.get_json(&url, id).await
    }
}

fn with_id(e: ConnectorError, id: Option<&str>) -> ConnectorError {
    match e {
        ConnectorError::InvalidRecord { message, .. } => ConnectorError::invalid(id, message),
        other => other,
    }
}

fn written(entity: &Json, id: &str) -> Written {
    let (got, version, modified_at) = mapping::identity(entity);
    Written {
        id: got.unwrap_or(id).to_owned(),
        version,
        modified_at,
    }
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> Result<String, ConnectorError> {
    let mut url = Url::parse(base)
        .map_err(|e| ConnectorError::config(format!("Business Central: bad URL `{base}`: {e}")))?;
    url.query_pairs_mut().extend_pairs(pairs);
    Ok(url.to_string())
}

#[async_trait::async_trait]
impl Connector for BusinessCentralConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![
                EntityKind::Customer,
                EntityKind::Vendor,
                EntityKind::BankAccount,
                EntityKind::Contact,
            ],
            incremental: true,
            write: true,
            delete: true,
            max_batch: self.batch,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let id = self.api.company_id().await?.to_owned();
        let companies = self
            .api
            .list_all(&format!("{}/companies", self.api.root), "companies")
            .await?;
        if companies
            .iter()
            .any(|c| c["id"].as_str() == Some(id.as_str()))
        {
            Ok(())
        } else {
            Err(ConnectorError::config(format!(
                "Business Central has no company with the id `{id}`; check `company`"
            )))
        }
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        match cursor {
            None => self.full_listing(kind).await,
            Some(cursor) => self.changes(kind, cursor).await,
        }
    }

    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        let path = self.api.set_path(entity_set(kind)).await?;
        let mut unique: Vec<&str> = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut entities = Vec::new();
        for chunk in unique.chunks(self.batch) {
            let requests: Vec<Json> = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| json!({"id": i.to_string(), "method": "GET", "url": format!("{path}({id})")}))
                .collect();
            let (answers, _) = self.api.batch(requests).await?;
            for (answer, id) in answers.into_iter().zip(chunk) {
                match answer["status"].as_u64() {
                    Some(200) => entities.push(answer["body"].clone()),
                    Some(404) | Some(400) => {}
                    Some(429) => return Err(ConnectorError::rate_limited(None)),
                    status => {
                        return Err(ConnectorError::transient(format!(
                            "Business Central: reading {kind} {id}: HTTP {}: {}",
                            status.unwrap_or(0),
                            error_text(&answer["body"])
                        )));
                    }
                }
            }
        }
        self.records(kind, &entities).await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let path = self.api.set_path(entity_set(kind)).await?;
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; ops.len()];
        let mut prepared = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.prepare(kind, &path, op).await {
                Ok((request, expect)) => prepared.push((i, request, expect)),
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        for chunk in prepared.chunks(self.batch) {
            let requests: Vec<Json> = chunk
                .iter()
                .enumerate()
                .map(|(n, (_, request, _))| {
                    let mut request = request.clone();
                    request["id"] = json!(n.to_string());
                    request
                })
                .collect();
            match self.api.batch(requests).await {
                Ok((answers, repeated)) => {
                    for ((i, _, expect), answer) in chunk.iter().zip(&answers) {
                        outcomes[*i] =
                            Some(self.outcome(kind, &path, expect, answer, repeated).await);
                    }
                }
                Err(e) if chunk.len() == ops.len() => return Err(e),
                Err(e) => {
                    for (i, _, _) in chunk {
                        outcomes[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(ConnectorError::fatal("no answer for this operation")))
            })
            .collect())
    }
}
