//! A connector for HubSpot CRM v3 (`type = "hubspot"`): the contact side. Companies are
//! company contacts (`company-<id>`), contacts are person contacts (`contact-<id>`) with
//! their associated company as `company_id`. See [`mapping`] for every field.
//!
//! - **Authentication**: a private app's access token (`token`), sent as a bearer token.
//! - **Reads**: without a cursor, both object lists, 100 a page (contacts with their
//!   company associations). With one, the search API for records whose modification
//!   date (`hs_lastmodifieddate`, `lastmodifieddate`) is after the newest seen minus an
//!   overlap, de-duplicated by that date; a search ends at 10,000 results, so a longer
//!   one starts again from the last date read. Deletes are the archived records (the
//!   `archived=true` listing) the cursor knew. The associations of changed contacts come
//!   from the v4 associations batch read.
//! - **Writes**: `batch/create`, `batch/update` and `batch/archive` of up to 100. HubSpot
//!   has no ETags: a version is the modification date, and an update or delete is a
//!   conflict when the date read just before writing differs from it. A batch HubSpot
//!   refuses whole (one invalid input) is tried one input at a time, so that only the
//!   bad one fails. A person's company is set with the v4 association endpoints.
//! - **Limits**: by default 9 requests a second (the lowest tier allows 100 per 10 s),
//!   searches at most 4 a second (one every 275 ms); 429 and 5xx are retried with backoff by the shared
//!   HTTP layer.

pub mod mapping;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tandem_connector::http::{
    Auth, HttpClient, HttpSettings, Method, Request, SecretString, StatusCode,
};
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Listing, Page,
    WriteOp, WriteOutcome, Written, parse_settings,
};
use tandem_model::{EntityKind, Record, Timestamp};

use crate::mapping::{Body, COMPANIES, CONTACTS, modified_property, record_id, split_id};

/// Inputs per batch call.
pub const MAX_BATCH: usize = 100;
/// Results one search query can reach.
pub const SEARCH_CAP: usize = 10_000;
const CONTACT_TO_COMPANY: u64 = 279;
/// The search endpoints allow about 4 requests a second per token: one every 275 ms,
/// a tenth to spare, since HubSpot counts them as they arrive, and two sent 250 ms
/// apart may arrive closer (a busy client, the network): five then fall in one second.
const SEARCH_EVERY: Duration = Duration::from_millis(275);

fn default_api() -> String {
    "https://api.hubapi.com".into()
}
fn default_relations() -> String {
    "tandem_relations".into()
}
fn default_search_cap() -> usize {
    SEARCH_CAP
}
fn default_overlap() -> u64 {
    300
}

/// 9 requests a second: the lowest tier allows 100 per 10 seconds.
pub fn default_http() -> HttpSettings {
    let mut http = HttpSettings::with_timeouts(Duration::from_secs(10), Duration::from_secs(60));
    http.max_requests_per_second = Some(9.0);
    http
}

/// The settings of `type = "hubspot"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A private app's access token.
    pub token: SecretString,
    #[serde(default = "default_api")]
    pub url: String,
    /// The property that holds the relation codes (R9); `""` for none.
    #[serde(default = "default_relations")]
    pub relations_property: String,
    #[serde(default = "default_overlap")]
    pub overlap_seconds: u64,
    /// A property with unique values: when set, creates go through `batch/upsert` with
    /// a new random key in it, so that a create sent twice makes one record.
    #[serde(default)]
    pub create_key_property: String,
    /// Results one search query reaches (HubSpot's cap): only ever lowered, by tests.
    #[serde(default = "default_search_cap")]
    pub search_cap: usize,
    #[serde(skip, default = "default_http")]
    pub http: HttpSettings,
}

/// Builds [`HubSpotConnector`]s for `type = "hubspot"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubSpotConnectorFactory;

impl ConnectorFactory for HubSpotConnectorFactory {
    fn type_name(&self) -> &'static str {
        "hubspot"
    }

    fn build(
        &self,
        mut settings: Json,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let http = HttpSettings::take_from(&mut settings, &default_http(), context)?;
        let mut own: Settings = parse_settings(settings)?;
        own.http = http;
        Ok(Arc::new(HubSpotConnector::new(own)?))
    }
}

/// The companies and contacts of one HubSpot account.
#[derive(Debug)]
pub struct HubSpotConnector {
    http: HttpClient,
    url: String,
    relations: Option<String>,
    create_key: Option<String>,
    search_cap: usize,
    overlap_ms: i64,
    requests: AtomicUsize,
    /// The search endpoints' own limit, on top of the client's.
    search_limiter: DefaultDirectRateLimiter,
}

/// The cursor: the newest modification date seen per object type, the records seen
/// within the overlap before it (with a hash of their version), and the ids known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    newest: BTreeMap<String, i64>,
    #[serde(default)]
    window: BTreeMap<String, (i64, u64)>,
    #[serde(default)]
    ids: BTreeSet<String>,
}

fn hash(version: Option<&str>) -> u64 {
    xxhash_rust::xxh3::xxh3_64(version.unwrap_or_default().as_bytes())
}

impl State {
    fn saw(&mut self, object: &str, r: &Record) {
        self.ids.insert(r.id.clone());
        if let Some(t) = r.modified_at {
            let n = self.newest.entry(object.to_owned()).or_insert(t.0);
            *n = (*n).max(t.0);
            self.window
                .insert(r.id.clone(), (t.0, hash(r.version.as_deref())));
        }
    }

    fn prune(&mut self, overlap: i64) {
        let newest = self.newest.values().copied().max().unwrap_or(i64::MIN);
        self.window
            .retain(|_, (t, _)| *t > newest.saturating_sub(overlap));
    }

    fn encode(&self) -> Cursor {
        Cursor(format!(
            "hs1:{}",
            serde_json::to_string(self).unwrap_or_default()
        ))
    }

    fn decode(c: &Cursor) -> Result<State, ConnectorError> {
        c.0.strip_prefix("hs1:")
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| {
                ConnectorError::config(
                    "the stored HubSpot cursor cannot be read; reset the connector's cursor for a full listing",
                )
            })
    }
}

fn hs_error(body: &Json) -> String {
    let message = body["message"].as_str().unwrap_or_default();
    match body["category"].as_str() {
        Some(c) => format!("{c}: {message}"),
        None => message.to_owned(),
    }
}

fn written(object: &str, r: &Json) -> Written {
    let id = r["id"].as_str().unwrap_or_default();
    let version = r["updatedAt"].as_str().map(str::to_owned);
    Written {
        id: record_id(object, id),
        modified_at: version.as_deref().and_then(|v| Timestamp::parse(v).ok()),
        version,
    }
}

/// One write, ready to send.
#[derive(Debug)]
struct Item {
    index: usize,
    object: &'static str,
    /// The HubSpot id (updates and deletes).
    id: String,
    version: Option<String>,
    body: Body,
}

impl HubSpotConnector {
    pub fn new(settings: Settings) -> Result<HubSpotConnector, ConnectorError> {
        let token = settings.token.clone();
        let http = HttpClient::new("HubSpot", settings.http, Auth::Bearer(token))?;
        let relations = Some(settings.relations_property).filter(|p| !p.trim().is_empty());
        Ok(HubSpotConnector {
            http,
            url: settings.url.trim_end_matches('/').to_owned(),
            relations,
            create_key: Some(settings.create_key_property).filter(|p| !p.trim().is_empty()),
            search_cap: settings.search_cap.clamp(200, SEARCH_CAP),
            overlap_ms: (settings.overlap_seconds * 1000) as i64,
            requests: AtomicUsize::new(0),
            search_limiter: RateLimiter::direct(
                Quota::with_period(SEARCH_EVERY)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::MIN),
            ),
        })
    }

    /// API requests sent (retries not counted), for benchmarks.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// One API call; any status but 401 comes back with its JSON.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
        safe: bool,
    ) -> Result<(StatusCode, Json), ConnectorError> {
        let mut request = Request::new(method, format!("{}{path}", self.url))
            .header("accept", "application/json")
            .safe(safe);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .http
            .send(&request)
            .await
            .map_err(|e| e.into_connector())?;
        let json: Json = serde_json::from_slice(&reply.body).unwrap_or(Json::Null);
        if reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::FORBIDDEN {
            return Err(ConnectorError::Auth {
                message: format!(
                    "HubSpot {path}: HTTP {}: {}; check `token` (a private app's access token with \
                     the crm.objects.contacts and crm.objects.companies read and write scopes)",
                    reply.status.as_u16(),
                    self.http.redactor().mask(&hs_error(&json))
                ),
            });
        }
        Ok((reply.status, json))
    }

    async fn call_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
        safe: bool,
    ) -> Result<Json, ConnectorError> {
        let (status, json) = self.call(method, path, body, safe).await?;
        if status.is_success() {
            Ok(json)
        } else {
            Err(ConnectorError::fatal(format!(
                "HubSpot {path}: HTTP {}: {}",
                status.as_u16(),
                self.http.redactor().mask(&hs_error(&json))
            )))
        }
    }

    fn properties(&self, object: &str) -> Vec<String> {
        mapping::read_properties(object, self.relations.as_deref())
    }

    /// Every record of a list endpoint (live, or archived), 100 a page.
    async fn list_all(&self, object: &str, archived: bool) -> Result<Vec<Json>, ConnectorError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                "/crm/v3/objects/{object}?limit=100&archived={archived}&properties={}",
                if archived {
                    String::new()
                } else {
                    self.properties(object).join(",")
                }
            );
            if object == CONTACTS && !archived {
                path.push_str("&associations=companies");
            }
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let mut page = self.call_ok(Method::GET, &path, None, true).await?;
            if let Some(results) = page["results"].as_array_mut() {
                out.append(results);
            }
            after = page["paging"]["next"]["after"].as_str().map(str::to_owned);
            if after.is_none() {
                return Ok(out);
            }
        }
    }

    /// Records of `object` modified after `since` (ms), by the search API, oldest first.
    async fn search_since(
        &self,
        object: &str,
        since: Option<i64>,
    ) -> Result<Vec<Json>, ConnectorError> {
        let modified = modified_property(object);
        let mut out = Vec::new();
        let (mut operator, mut from) = ("GT", since);
        loop {
            let mut after = 0usize;
            let mut last_ms = None;
            let mut reached_cap = false;
            loop {
                let filters = match from {
                    Some(ms) => {
                        json!([{"filters": [{"propertyName": modified, "operator": operator, "value": ms.to_string()}]}])
                    }
                    None => json!([]),
                };
                let body = json!({"filterGroups": filters,
                    "sorts": [{"propertyName": modified, "direction": "ASCENDING"}],
                    "properties": self.properties(object), "limit": 100, "after": after.to_string()});
                self.search_limiter.until_ready().await;
                let page = self
                    .call_ok(
                        Method::POST,
                        &format!("/crm/v3/objects/{object}/search"),
                        Some(&body),
                        true,
                    )
                    .await?;
                let results = page["results"].as_array().cloned().unwrap_or_default();
                last_ms = results
                    .last()
                    .and_then(|r| r["updatedAt"].as_str())
                    .and_then(|t| Timestamp::parse(t).ok())
                    .map(|t| t.0)
                    .or(last_ms);
                out.extend(results);
                match page["paging"]["next"]["after"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                {
                    Some(next) if next + 100 > self.search_cap => {
                        reached_cap = true;
                        break;
                    }
                    Some(next) => after = next,
                    None => break,
                }
            }
            if !reached_cap {
                // A search started again from the last date read returns the records
                // of that date twice: the later copy is kept.
                let mut seen = std::collections::HashSet::new();
                out.reverse();
                out.retain(|r| seen.insert(r["id"].as_str().unwrap_or_default().to_owned()));
                out.reverse();
                return Ok(out);
            }
            // 10,000 results are all one query reaches: go on from the last date read.
            if last_ms == from {
                return Err(ConnectorError::fatal(format!(
                    "HubSpot: more than {} {object} share one modification date; \
                     reset the cursor for a full listing",
                    self.search_cap
                )));
            }
            (operator, from) = ("GTE", last_ms);
        }
    }

    /// The company of each contact (HubSpot ids), by the v4 associations batch read.
    async fn companies_of(
        &self,
        contacts: &[&str],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        let mut out = HashMap::new();
        for chunk in contacts.chunks(MAX_BATCH) {
            let inputs: Vec<Json> = chunk.iter().map(|id| json!({"id": id})).collect();
            let answer = self
                .call_ok(
                    Method::POST,
                    "/crm/v4/associations/contacts/companies/batch/read",
                    Some(&json!({ "inputs": inputs })),
                    true,
                )
                .await?;
            for r in answer["results"].as_array().into_iter().flatten() {
                if let (Some(from), Some(to)) =
                    (r["from"]["id"].as_str(), r["to"][0]["toObjectId"].as_u64())
                {
                    out.insert(from.to_owned(), to.to_string());
                }
            }
        }
        Ok(out)
    }

    fn record(&self, object: &str, r: &Json, company: Option<&str>) -> Option<Record> {
        let id = r["id"].as_str()?;
        let inline = r["associations"]["companies"]["results"][0]["id"].as_str();
        let fields = mapping::fields_of(
            object,
            &r["properties"],
            self.relations.as_deref(),
            company.or(inline),
        );
        let version = r["updatedAt"].as_str().map(str::to_owned);
        Some(Record {
            modified_at: version.as_deref().and_then(|v| Timestamp::parse(v).ok()),
            version,
            ..Record::new(EntityKind::Contact, record_id(object, id), fields)
        })
    }

    async fn records(
        &self,
        object: &str,
        results: &[Json],
        associations: bool,
    ) -> Result<Vec<Record>, ConnectorError> {
        let companies = if associations && object == CONTACTS {
            let ids: Vec<&str> = results.iter().filter_map(|r| r["id"].as_str()).collect();
            self.companies_of(&ids).await?
        } else {
            HashMap::new()
        };
        Ok(results
            .iter()
            .filter_map(|r| {
                let company = r["id"]
                    .as_str()
                    .and_then(|id| companies.get(id))
                    .map(String::as_str);
                self.record(object, r, company)
            })
            .collect())
    }

    async fn full(&self) -> Result<Page, ConnectorError> {
        let mut state = State::default();
        let mut records = Vec::new();
        for object in [COMPANIES, CONTACTS] {
            let results = self.list_all(object, false).await?;
            for r in self.records(object, &results, false).await? {
                state.saw(object, &r);
                records.push(r);
            }
        }
        state.prune(self.overlap_ms);
        Ok(Page {
            records,
            listing: Listing::Full,
            cursor: Some(state.encode()),
            has_more: false,
        })
    }

    async fn changes(&self, cursor: &Cursor) -> Result<Page, ConnectorError> {
        let before = State::decode(cursor)?;
        let mut after = before.clone();
        let mut records = Vec::new();
        for object in [COMPANIES, CONTACTS] {
            let since = before.newest.get(object).map(|n| n - self.overlap_ms);
            let results = self.search_since(object, since).await?;
            for r in self.records(object, &results, true).await? {
                let seen = before
                    .window
                    .get(&r.id)
                    .is_some_and(|(_, h)| *h == hash(r.version.as_deref()));
                after.saw(object, &r);
                if !seen {
                    records.push(r);
                }
            }
            // HubSpot keeps archived records: those the cursor knew are deletes.
            for r in self.list_all(object, true).await? {
                let Some(id) = r["id"].as_str() else { continue };
                let id = record_id(object, id);
                if after.ids.remove(&id) {
                    after.window.remove(&id);
                    records.push(Record::tombstone(EntityKind::Contact, id));
                }
            }
        }
        after.prune(self.overlap_ms);
        Ok(Page {
            records,
            listing: Listing::Changes,
            cursor: Some(after.encode()),
            has_more: false,
        })
    }

    /// The current version of each id of `object` (missing ids are left out).
    async fn versions(
        &self,
        object: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(MAX_BATCH) {
            let inputs: Vec<Json> = chunk.iter().map(|id| json!({"id": id})).collect();
            let (status, answer) = self
                .call(
                    Method::POST,
                    &format!("/crm/v3/objects/{object}/batch/read"),
                    Some(&json!({"properties": [], "inputs": inputs})),
                    true,
                )
                .await?;
            if !status.is_success() {
                return Err(ConnectorError::transient(format!(
                    "HubSpot batch/read {object}: HTTP {}: {}",
                    status.as_u16(),
                    hs_error(&answer)
                )));
            }
            for r in answer["results"].as_array().into_iter().flatten() {
                if let (Some(id), Some(v)) = (r["id"].as_str(), r["updatedAt"].as_str()) {
                    out.insert(id.to_owned(), v.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Keeps the items whose record is there and unchanged since their version; the
    /// others get NotFound or Conflict.
    async fn still_current(
        &self,
        items: Vec<Item>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<Vec<Item>, ConnectorError> {
        let mut current: HashMap<(&str, String), String> = HashMap::new();
        for object in [COMPANIES, CONTACTS] {
            let ids: Vec<&str> = items
                .iter()
                .filter(|i| i.object == object)
                .map(|i| i.id.as_str())
                .collect();
            if !ids.is_empty() {
                for (id, v) in self.versions(object, &ids).await? {
                    current.insert((object, id), v);
                }
            }
        }
        let mut kept = Vec::new();
        for mut item in items {
            let id = record_id(item.object, &item.id);
            match (current.get(&(item.object, item.id.clone())), &item.version) {
                (None, _) => outcomes[item.index] = Some(Err(ConnectorError::NotFound { id })),
                (Some(now), Some(v)) if now != v => {
                    outcomes[item.index] = Some(Err(ConnectorError::Conflict { id }));
                }
                (Some(now), _) => {
                    item.version = Some(now.clone());
                    kept.push(item);
                }
            }
        }
        Ok(kept)
    }

    /// Sends a batch; when HubSpot refuses it whole, each input alone.
    async fn batch(
        &self,
        object: &str,
        action: &str,
        inputs: Vec<Json>,
        safe: bool,
    ) -> Vec<Result<Json, ConnectorError>> {
        let path = format!("/crm/v3/objects/{object}/batch/{action}");
        let n = inputs.len();
        match self
            .call(
                Method::POST,
                &path,
                Some(&json!({ "inputs": inputs.clone() })),
                safe,
            )
            .await
        {
            Ok((status, answer)) if status.is_success() => {
                let results = answer["results"].as_array().cloned().unwrap_or_default();
                (0..n)
                    .map(|i| {
                        let trace = inputs[i]["objectWriteTraceId"].as_str();
                        let id = inputs[i]["id"].as_str();
                        let key_property = inputs[i]["idProperty"].as_str();
                        results
                            .iter()
                            .find(|r| match (trace, key_property, id) {
                                (Some(t), _, _) => r["objectWriteTraceId"].as_str() == Some(t),
                                (None, Some(p), Some(key)) => {
                                    r["properties"][p].as_str() == Some(key)
                                }
                                (None, None, Some(id)) => r["id"].as_str() == Some(id),
                                _ => false,
                            })
                            .cloned()
                            .ok_or_else(|| {
                                ConnectorError::transient(format!(
                                    "HubSpot {path}: no result for input {i}"
                                ))
                            })
                    })
                    .collect()
            }
            Ok((status, answer)) if n > 1 && status == StatusCode::BAD_REQUEST => {
                tracing::debug!(
                    "HubSpot refused a batch ({}); trying its inputs one by one",
                    hs_error(&answer)
                );
                let mut out = Vec::new();
                for input in inputs {
                    out.push(
                        Box::pin(self.batch(object, action, vec![input], safe))
                            .await
                            .remove(0),
                    );
                }
                out
            }
            Ok((status, answer)) => {
                let e = if status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND {
                    ConnectorError::invalid(
                        // An upsert's `id` is its key, no record id.
                        inputs[0]["id"]
                            .as_str()
                            .filter(|_| inputs[0]["idProperty"].is_null())
                            .map(|id| record_id(object, id))
                            .as_deref(),
                        format!(
                            "HubSpot refused it: {}",
                            self.http.redactor().mask(&hs_error(&answer))
                        ),
                    )
                } else {
                    ConnectorError::transient(format!(
                        "HubSpot {path}: HTTP {}: {}",
                        status.as_u16(),
                        hs_error(&answer)
                    ))
                };
                vec![Err(e); n]
            }
            Err(e) => vec![Err(e); n],
        }
    }

    async fn set_company(
        &self,
        contact: &str,
        company: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let current = self.companies_of(&[contact]).await?;
        if let Some(old) = current
            .get(contact)
            .filter(|old| Some(old.as_str()) != company)
        {
            self.call_ok(
                Method::DELETE,
                &format!("/crm/v4/objects/contacts/{contact}/associations/companies/{old}"),
                None,
                true,
            )
            .await?;
        }
        if let Some(new) = company.filter(|c| current.get(contact).map(String::as_str) != Some(c)) {
            self.call_ok(
                Method::PUT,
                &format!("/crm/v4/objects/contacts/{contact}/associations/default/companies/{new}"),
                None,
                true,
            )
            .await?;
        }
        Ok(())
    }

    fn prepare(
        &self,
        index: usize,
        op: &WriteOp,
    ) -> Result<(&'static str, Item, bool), ConnectorError> {
        let relations = self.relations.as_deref();
        match op {
            WriteOp::Create { fields, .. } => {
                let person = fields
                    .text(tandem_model::field::CONTACT_TYPE)
                    .is_some_and(|t| t.eq_ignore_ascii_case("person"));
                let object = if person { CONTACTS } else { COMPANIES };
                let body = mapping::body_of(
                    object,
                    fields.iter().map(|(k, v)| (k.as_str(), v)),
                    relations,
                )
                .map_err(|m| ConnectorError::invalid(None, m))?;
                Ok((
                    "create",
                    Item {
                        index,
                        object,
                        id: String::new(),
                        version: None,
                        body,
                    },
                    false,
                ))
            }
            WriteOp::Update {
                id,
                version,
                changes,
            } => {
                let (object, n) =
                    split_id(id).ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
                let body = mapping::body_of(
                    object,
                    changes.iter().map(|(k, v)| (k.as_str(), v)),
                    relations,
                )
                .map_err(|m| ConnectorError::invalid(Some(id), m))?;
                Ok((
                    "update",
                    Item {
                        index,
                        object,
                        id: n.to_owned(),
                        version: version.clone(),
                        body,
                    },
                    false,
                ))
            }
            WriteOp::Delete { id, version } => {
                let (object, n) =
                    split_id(id).ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
                Ok((
                    "delete",
                    Item {
                        index,
                        object,
                        id: n.to_owned(),
                        version: version.clone(),
                        body: Body::default(),
                    },
                    true,
                ))
            }
        }
    }

    async fn creates(&self, items: Vec<Item>, outcomes: &mut [Option<WriteOutcome>]) {
        for object in [COMPANIES, CONTACTS] {
            let mine: Vec<&Item> = items.iter().filter(|i| i.object == object).collect();
            if mine.is_empty() {
                continue;
            }
            let inputs: Vec<Json> = mine
                .iter()
                .map(|i| {
                    let mut input = json!({"properties": i.body.properties, "objectWriteTraceId": i.index.to_string()});
                    if let Some(Some(company)) = &i.body.company {
                        input["associations"] = json!([{"to": {"id": company},
                            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": CONTACT_TO_COMPANY}]}]);
                    }
                    input
                })
                .collect();
            if let Some(key_property) = &self.create_key {
                self.upserts(object, key_property, &mine, outcomes).await;
                continue;
            }
            // A create sent twice makes two records: never retried once it may have arrived.
            let results = self.batch(object, "create", inputs, false).await;
            for (item, result) in mine.iter().zip(results) {
                outcomes[item.index] = Some(result.map(|r| written(object, &r)));
            }
        }
    }

    /// Creates by `batch/upsert` on a unique property holding a new random key: sent
    /// twice, the second finds the record the first made. A person's company is set
    /// after.
    async fn upserts(
        &self,
        object: &'static str,
        key_property: &str,
        items: &[&Item],
        outcomes: &mut [Option<WriteOutcome>],
    ) {
        let mut keyed = Vec::new();
        for item in items {
            match new_key() {
                Ok(key) => keyed.push((*item, key)),
                Err(e) => outcomes[item.index] = Some(Err(e)),
            }
        }
        let inputs: Vec<Json> = keyed
            .iter()
            .map(|(i, key)| json!({"idProperty": key_property, "id": key, "properties": i.body.properties}))
            .collect();
        let results = self.batch(object, "upsert", inputs, true).await;
        for ((item, key), result) in keyed.iter().zip(results) {
            let mut outcome = result.map(|r| written(object, &r));
            if let (Ok(w), Some(Some(company))) = (&outcome, &item.body.company) {
                let id = w.id.rsplit('-').next().unwrap_or_default().to_owned();
                if let Err(e) = self.set_company(&id, Some(company)).await {
                    outcome = Err(e);
                }
            }
            tracing::trace!(key = %key, "HubSpot upsert");
            outcomes[item.index] = Some(outcome);
        }
    }

    async fn updates(
        &self,
        items: Vec<Item>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), ConnectorError> {
        let items = self.still_current(items, outcomes).await?;
        for object in [COMPANIES, CONTACTS] {
            let mine: Vec<&Item> = items.iter().filter(|i| i.object == object).collect();
            let with_props: Vec<&&Item> = mine
                .iter()
                .filter(|i| !i.body.properties.is_empty())
                .collect();
            let inputs: Vec<Json> = with_props
                .iter()
                .map(|i| json!({"id": i.id, "properties": i.body.properties}))
                .collect();
            let results = if inputs.is_empty() {
                Vec::new()
            } else {
                self.batch(object, "update", inputs, true).await
            };
            for (item, result) in with_props.iter().zip(results) {
                outcomes[item.index] = Some(result.map(|r| written(object, &r)));
            }
            for item in &mine {
                if outcomes[item.index].as_ref().is_some_and(Result::is_err) {
                    continue;
                }
                if let Some(company) = &item.body.company
                    && let Err(e) = self.set_company(&item.id, company.as_deref()).await
                {
                    outcomes[item.index] = Some(Err(e));
                    continue;
                }
                if outcomes[item.index].is_none() {
                    let version = item.version.clone();
                    outcomes[item.index] = Some(Ok(Written {
                        id: record_id(object, &item.id),
                        modified_at: version.as_deref().and_then(|v| Timestamp::parse(v).ok()),
                        version,
                    }));
                }
            }
        }
        Ok(())
    }

    async fn deletes(
        &self,
        items: Vec<Item>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), ConnectorError> {
        let items = self.still_current(items, outcomes).await?;
        for object in [COMPANIES, CONTACTS] {
            let mine: Vec<&Item> = items.iter().filter(|i| i.object == object).collect();
            if mine.is_empty() {
                continue;
            }
            let inputs: Vec<Json> = mine.iter().map(|i| json!({"id": i.id})).collect();
            let outcome = self
                .call_ok(
                    Method::POST,
                    &format!("/crm/v3/objects/{object}/batch/archive"),
                    Some(&json!({ "inputs": inputs })),
                    true,
                )
                .await;
            for item in mine {
                outcomes[item.index] = Some(match &outcome {
                    Ok(_) => Ok(Written {
                        id: record_id(object, &item.id),
                        version: None,
                        modified_at: None,
                    }),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        Ok(())
    }
}

/// 32 random hex digits: the unique key of one create.
fn new_key() -> Result<String, ConnectorError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| ConnectorError::fatal(format!("HubSpot: no random numbers: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn refuse_kind(kind: EntityKind) -> Result<(), ConnectorError> {
    if kind == EntityKind::Contact {
        Ok(())
    } else {
        Err(ConnectorError::config(format!(
            "HubSpot holds contacts only, not {}; configure the {} relation on another connector",
            kind.plural(),
            kind
        )))
    }
}

#[async_trait::async_trait]
impl Connector for HubSpotConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![EntityKind::Contact],
            incremental: true,
            write: true,
            delete: true,
            max_batch: MAX_BATCH,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        for object in [COMPANIES, CONTACTS] {
            self.call_ok(
                Method::GET,
                &format!("/crm/v3/objects/{object}?limit=1"),
                None,
                true,
            )
            .await?;
        }
        Ok(())
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        refuse_kind(kind)?;
        match cursor {
            None => self.full().await,
            Some(c) => self.changes(c).await,
        }
    }

    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        refuse_kind(kind)?;
        let mut out = Vec::new();
        for object in [COMPANIES, CONTACTS] {
            let mut mine: Vec<&str> = ids
                .iter()
                .filter_map(|id| split_id(id))
                .filter(|(o, _)| *o == object)
                .map(|(_, n)| n)
                .collect();
            mine.sort_unstable();
            mine.dedup();
            for chunk in mine.chunks(MAX_BATCH) {
                let inputs: Vec<Json> = chunk.iter().map(|id| json!({"id": id})).collect();
                let (status, answer) = self
                    .call(
                        Method::POST,
                        &format!("/crm/v3/objects/{object}/batch/read"),
                        Some(&json!({"properties": self.properties(object), "inputs": inputs})),
                        true,
                    )
                    .await?;
                if !status.is_success() {
                    return Err(ConnectorError::transient(format!(
                        "HubSpot batch/read {object}: HTTP {}: {}",
                        status.as_u16(),
                        hs_error(&answer)
                    )));
                }
                let results = answer["results"].as_array().cloned().unwrap_or_default();
                out.extend(self.records(object, &results, true).await?);
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        refuse_kind(kind)?;
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; ops.len()];
        let (mut creates, mut updates, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (i, op) in ops.iter().enumerate() {
            match self.prepare(i, op) {
                Ok(("create", item, _)) => creates.push(item),
                Ok((_, item, false)) => updates.push(item),
                Ok((_, item, true)) => deletes.push(item),
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        self.creates(creates, &mut outcomes).await;
        self.updates(updates, &mut outcomes).await?;
        self.deletes(deletes, &mut outcomes).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(ConnectorError::fatal("no answer for this operation")))
            })
            .collect())
    }
}
