//! A local HubSpot CRM v3 server for Tandem's tests, written to HubSpot's developer
//! documentation and faithful in what the connector relies on:
//!
//! - Objects `contacts` and `companies` under `/crm/v3/objects/{type}`: list pages of at
//!   most 100 chained by `paging.next.after`, `properties` asked for by name (others left
//!   out, unset ones `null`), every value a string; `archived=true` lists the archived
//!   (<https://developers.hubspot.com/docs/api/crm/contacts>,
//!   <https://developers.hubspot.com/docs/api/crm/companies>).
//! - `batch/read`, `batch/create`, `batch/update`, `batch/archive`, 100 inputs at most;
//!   a batch with an invalid input fails whole with 400 (`VALIDATION_ERROR`,
//!   `PROPERTY_DOESNT_EXIST`); unknown properties and read-only ones are refused.
//! - Modification dates `lastmodifieddate` (contacts) and `hs_lastmodifieddate`
//!   (companies), set by the server on every write; no ETags.
//! - Search (`POST /crm/v3/objects/{type}/search`): filters on the modification date
//!   (`GT`, `GTE`, `LT`), ascending sorts, pages of at most 200, and never more than
//!   10,000 results per query: paging past them is a 400
//!   (<https://developers.hubspot.com/docs/api-reference/2026-03/crm/search-the-crm>).
//! - Associations contact -> company: on create (`associations` with type 279), `PUT
//!   /crm/v4/objects/contacts/{id}/associations/default/companies/{id}`, `DELETE
//!   /crm/v4/objects/contacts/{id}/associations/companies/{id}`, and
//!   `POST /crm/v4/associations/contacts/companies/batch/read`
//!   (<https://developers.hubspot.com/docs/api/crm/associations>).
//! - Private app tokens (`Authorization: Bearer`), 401 otherwise; 429 past a request
//!   budget per window with `X-HubSpot-RateLimit-*` headers and `policyName`
//!   `TEN_SECONDLY_ROLLING` (<https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>,
//!   <https://developers.hubspot.com/changelog/increasing-our-api-limits>).
//!
//! Test hooks change records behind the client's back and count requests.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value as Json, json};

/// Inputs per batch call; results per search query.
pub const MAX_BATCH: usize = 100;
pub const MAX_SEARCH_RESULTS: usize = 10_000;
/// The association type of an unlabelled contact -> company association.
pub const CONTACT_TO_COMPANY: u64 = 279;
/// A custom property the tests' portal defines, holding the relation codes.
pub const RELATIONS_PROPERTY: &str = "tandem_relations";
/// A custom property defined with unique values ("Require unique values"), usable as
/// the `idProperty` of `batch/upsert`.
pub const UNIQUE_KEY_PROPERTY: &str = "tandem_create_key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub requests: usize,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub token: String,
    pub budget: Option<Budget>,
    /// The search endpoints' own limit (about 4 requests a second per token).
    pub search_budget: Option<Budget>,
    /// Results one search query reaches: 10,000 at HubSpot; lower in tests, so that a
    /// test need not make 10,000 records.
    pub search_cap: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: "pat-na1-11111111-2222-3333-4444-fake5555".into(),
            budget: None,
            search_budget: None,
            search_cap: MAX_SEARCH_RESULTS,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: usize,
    pub throttled: usize,
    pub searches: usize,
    pub batches: usize,
    /// Records created, updated or archived.
    pub writes: usize,
}

fn properties(object: &str) -> Option<&'static [&'static str]> {
    match object {
        "contacts" => Some(&[
            "firstname",
            "lastname",
            "email",
            "phone",
            "mobilephone",
            "jobtitle",
            "address",
            "city",
            "state",
            "zip",
            "country",
            "website",
            "company",
            RELATIONS_PROPERTY,
            "hs_lead_status",
            "lifecyclestage",
            UNIQUE_KEY_PROPERTY,
        ]),
        "companies" => Some(&[
            "name",
            "domain",
            "address",
            "address2",
            "city",
            "state",
            "zip",
            "country",
            "phone",
            "website",
            "industry",
            "description",
            RELATIONS_PROPERTY,
            UNIQUE_KEY_PROPERTY,
        ]),
        _ => None,
    }
}

fn modified_property(object: &str) -> &'static str {
    if object == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn iso(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

#[derive(Debug, Clone)]
struct Object {
    id: u64,
    props: BTreeMap<String, String>,
    created_ms: i64,
    modified_ms: i64,
    archived: bool,
    /// Contacts: the companies they are associated with.
    companies: Vec<u64>,
}

impl Object {
    fn render(&self, object: &str, wanted: &[String]) -> Json {
        let mut props = Map::new();
        for name in wanted {
            props.insert(
                name.clone(),
                self.props.get(name).map_or(Json::Null, |v| json!(v)),
            );
        }
        props.insert("hs_object_id".into(), json!(self.id.to_string()));
        props.insert("createdate".into(), json!(iso(self.created_ms)));
        props.insert(
            modified_property(object).into(),
            json!(iso(self.modified_ms)),
        );
        let mut out = json!({
            "id": self.id.to_string(), "properties": props,
            "createdAt": iso(self.created_ms), "updatedAt": iso(self.modified_ms),
            "archived": self.archived,
        });
        if self.archived {
            out["archivedAt"] = json!(iso(self.modified_ms));
        }
        out
    }
}

#[derive(Debug)]
struct Failure {
    status: StatusCode,
    category: &'static str,
    message: String,
}

fn fail(status: StatusCode, category: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        category,
        message: message.into(),
    }
}

type Reply = Result<(StatusCode, Json), Failure>;

#[derive(Debug)]
struct State {
    options: Options,
    objects: BTreeMap<&'static str, Vec<Object>>,
    next_id: u64,
    recent: VecDeque<Instant>,
    recent_searches: VecDeque<Instant>,
    stats: Stats,
    /// Edits applied when a batch next names the record: someone else's change made
    /// between the client's read and its write.
    edits_before_write: Vec<(&'static str, String, Map<String, Json>)>,
}

/// Whether one more request fits in `budget`, noting it when it does.
fn within(budget: Option<Budget>, recent: &mut VecDeque<Instant>) -> bool {
    let Some(b) = budget else {
        return true;
    };
    let now = Instant::now();
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) > b.window)
    {
        recent.pop_front();
    }
    if recent.len() >= b.requests {
        return false;
    }
    recent.push_back(now);
    true
}

impl State {
    fn apply_pending_edits(&mut self, object: &'static str, inputs: &[Json]) {
        for input in inputs {
            let Some(id) = input["id"].as_str() else {
                continue;
            };
            while let Some(i) = self
                .edits_before_write
                .iter()
                .position(|(o, e, _)| *o == object && e == id)
            {
                let (_, _, edit) = self.edits_before_write.remove(i);
                if let Ok(p) = self.position(object, &json!(id)) {
                    let o = &mut self.list(object)[p];
                    set_props(o, &edit);
                    o.modified_ms = now_ms().max(o.modified_ms + 1);
                }
            }
        }
    }

    fn admit(&mut self, search: bool) -> bool {
        // Searches count against both limits (usage guidelines: "the search endpoints
        // are rate limited to four requests per second per authentication token").
        if search && !within(self.options.search_budget, &mut self.recent_searches) {
            self.stats.throttled += 1;
            return false;
        }
        if !within(self.options.budget, &mut self.recent) {
            self.stats.throttled += 1;
            return false;
        }
        self.stats.requests += 1;
        true
    }

    fn list(&mut self, object: &'static str) -> &mut Vec<Object> {
        self.objects.entry(object).or_default()
    }

    fn check_props(&self, object: &str, props: &Map<String, Json>) -> Result<(), Failure> {
        let known = properties(object).unwrap_or_default();
        for (name, value) in props {
            if !known.contains(&name.as_str()) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    format!(
                        "Property values were not valid: [{{\"isValid\":false,\"message\":\"Property \\\"{name}\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"{name}\"}}]"
                    ),
                ));
            }
            if !(value.is_string() || value.is_null()) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    format!("Property values were not valid: {name} must be a string"),
                ));
            }
        }
        Ok(())
    }

    fn create(&mut self, object: &'static str, input: &Json) -> Result<Object, Failure> {
        let props = input["properties"].as_object().cloned().unwrap_or_default();
        self.check_props(object, &props)?;
        let mut companies = Vec::new();
        for a in input["associations"].as_array().into_iter().flatten() {
            let to: u64 = a["to"]["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .or(a["to"]["id"].as_u64())
                .ok_or_else(|| {
                    fail(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        "association without a target id",
                    )
                })?;
            if object != "contacts" || !self.live("companies", to) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    format!("Invalid association: no company with id {to}"),
                ));
            }
            companies.push(to);
        }
        self.next_id += 1;
        let now = now_ms();
        let mut o = Object {
            id: self.next_id,
            props: BTreeMap::new(),
            created_ms: now,
            modified_ms: now,
            archived: false,
            companies,
        };
        set_props(&mut o, &props);
        Ok(o)
    }

    fn live(&self, object: &str, id: u64) -> bool {
        self.objects
            .get(object)
            .is_some_and(|l| l.iter().any(|o| o.id == id && !o.archived))
    }

    fn position(&self, object: &str, id: &Json) -> Result<usize, Failure> {
        let id_text = id.as_str().unwrap_or_default();
        id_text
            .parse::<u64>()
            .ok()
            .and_then(|id| {
                self.objects
                    .get(object)?
                    .iter()
                    .position(|o| o.id == id && !o.archived)
            })
            .ok_or_else(|| {
                fail(
                    StatusCode::NOT_FOUND,
                    "OBJECT_NOT_FOUND",
                    format!("Object not found. objectId are usually numeric. id={id_text}"),
                )
            })
    }

    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        body: &Json,
    ) -> Reply {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (&Method::GET, ["crm", "v3", "objects", object]) => self.list_page(object, query),
            (&Method::POST, ["crm", "v3", "objects", object, "search"]) => {
                self.search(object, body)
            }
            (&Method::POST, ["crm", "v3", "objects", object, "batch", action]) => {
                self.batch(object, action, body)
            }
            (
                &Method::POST,
                [
                    "crm",
                    "v4",
                    "associations",
                    "contacts",
                    "companies",
                    "batch",
                    "read",
                ],
            ) => self.associations(body),
            (
                &Method::PUT,
                [
                    "crm",
                    "v4",
                    "objects",
                    "contacts",
                    id,
                    "associations",
                    "default",
                    "companies",
                    to,
                ],
            ) => self.associate(id, to, true),
            (
                &Method::DELETE,
                [
                    "crm",
                    "v4",
                    "objects",
                    "contacts",
                    id,
                    "associations",
                    "companies",
                    to,
                ],
            ) => self.associate(id, to, false),
            _ => Err(fail(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                format!("no endpoint {method} {path}"),
            )),
        }
    }

    fn object_name(object: &str) -> Result<&'static str, Failure> {
        match object {
            "contacts" => Ok("contacts"),
            "companies" => Ok("companies"),
            _ => Err(fail(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                format!("unknown object type {object}"),
            )),
        }
    }

    fn list_page(&mut self, object: &str, query: &[(String, String)]) -> Reply {
        let object = Self::object_name(object)?;
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let limit: usize = q("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(10)
            .clamp(1, 100);
        let after: u64 = q("after").and_then(|a| a.parse().ok()).unwrap_or(0);
        let archived = q("archived") == Some("true");
        let wanted: Vec<String> = q("properties")
            .map(|p| {
                p.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let with_companies =
            q("associations").is_some_and(|a| a.split(',').any(|x| x == "companies"));
        let list = self.list(object);
        let mut matching = list
            .iter()
            .filter(|o| o.id > after && o.archived == archived);
        let page: Vec<&Object> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        let results: Vec<Json> = page
            .iter()
            .map(|o| {
                let mut r = o.render(object, &wanted);
                if with_companies && !o.companies.is_empty() {
                    r["associations"] = json!({"companies": {"results": o.companies.iter()
                        .map(|c| json!({"id": c.to_string(), "type": "contact_to_company_unlabeled"}))
                        .collect::<Vec<_>>()}});
                }
                r
            })
            .collect();
        let mut out = json!({ "results": results });
        if more && let Some(last) = page.last() {
            out["paging"] = json!({"next": {"after": last.id.to_string(), "link": "?after=".to_owned() + &last.id.to_string()}});
        }
        Ok((StatusCode::OK, out))
    }

    fn search(&mut self, object: &str, body: &Json) -> Reply {
        let object = Self::object_name(object)?;
        self.stats.searches += 1;
        let limit = body["limit"].as_u64().unwrap_or(10).clamp(1, 200) as usize;
        let after: usize = body["after"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .or(body["after"].as_u64().map(|a| a as usize))
            .unwrap_or(0);
        if after + limit > self.options.search_cap {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!(
                    "The search endpoints are limited to {} total results for any given query.",
                    self.options.search_cap
                ),
            ));
        }
        let modified = modified_property(object);
        let mut filters = Vec::new();
        let groups = body["filterGroups"].as_array().cloned().unwrap_or_default();
        if groups.len() > 5 {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "at most 5 filterGroups",
            ));
        }
        for group in &groups {
            let mut all = Vec::new();
            for f in group["filters"].as_array().into_iter().flatten() {
                let name = f["propertyName"].as_str().unwrap_or_default();
                let value = f["value"]
                    .as_str()
                    .and_then(|v| v.parse::<i64>().ok())
                    .or(f["value"].as_i64());
                let (true, Some(value)) = (name == modified, value) else {
                    return Err(fail(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        format!("this server filters on {modified} (milliseconds) only"),
                    ));
                };
                all.push((f["operator"].as_str().unwrap_or_default().to_owned(), value));
            }
            filters.push(all);
        }
        let wanted: Vec<String> = body["properties"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        let mut found: Vec<&Object> = self
            .list(object)
            .iter()
            .filter(|o| !o.archived)
            .filter(|o| {
                filters.is_empty()
                    || filters.iter().any(|g| {
                        g.iter().all(|(op, v)| match op.as_str() {
                            "GT" => o.modified_ms > *v,
                            "GTE" => o.modified_ms >= *v,
                            "LT" => o.modified_ms < *v,
                            _ => false,
                        })
                    })
            })
            .collect();
        found.sort_by_key(|o| (o.modified_ms, o.id));
        let total = found.len();
        let page: Vec<Json> = found
            .iter()
            .skip(after)
            .take(limit)
            .map(|o| o.render(object, &wanted))
            .collect();
        let mut out = json!({"total": total, "results": page});
        if after + limit < total {
            out["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        Ok((StatusCode::OK, out))
    }

    fn batch(&mut self, object: &str, action: &str, body: &Json) -> Reply {
        let object = Self::object_name(object)?;
        self.stats.batches += 1;
        let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
        self.apply_pending_edits(object, &inputs);
        if inputs.len() > MAX_BATCH {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!("{} inputs; at most {MAX_BATCH} are allowed", inputs.len()),
            ));
        }
        let wanted: Vec<String> = properties(object)
            .unwrap_or_default()
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        match action {
            "read" => {
                let asked: Vec<String> = body["properties"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect();
                let mut results = Vec::new();
                let mut errors = Vec::new();
                for input in &inputs {
                    match self.position(object, &input["id"]) {
                        Ok(i) => results.push(self.objects[object][i].render(object, &asked)),
                        Err(e) => errors.push(
                            json!({"status": "error", "category": e.category, "message": e.message,
                            "context": {"ids": [input["id"]]}}),
                        ),
                    }
                }
                let status = if errors.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::MULTI_STATUS
                };
                Ok((
                    status,
                    json!({"status": "COMPLETE", "results": results, "errors": errors, "numErrors": errors.len()}),
                ))
            }
            "create" => {
                let mut made = Vec::new();
                for input in &inputs {
                    made.push(self.create(object, input)?);
                }
                self.stats.writes += made.len();
                // Results come in no promised order; `objectWriteTraceId` ties each to its input.
                let results = made
                    .iter()
                    .zip(&inputs)
                    .map(|(o, input)| {
                        let mut r = o.render(object, &wanted);
                        if let Some(trace) = input.get("objectWriteTraceId") {
                            r["objectWriteTraceId"] = trace.clone();
                        }
                        r
                    })
                    .rev()
                    .collect::<Vec<_>>();
                self.list(object).extend(made);
                Ok((
                    StatusCode::CREATED,
                    json!({"status": "COMPLETE", "results": results}),
                ))
            }
            "update" => {
                let mut planned = Vec::new();
                for input in &inputs {
                    let i = self.position(object, &input["id"])?;
                    let props = input["properties"].as_object().cloned().unwrap_or_default();
                    self.check_props(object, &props)?;
                    planned.push((i, props));
                }
                let now = now_ms();
                let mut results = Vec::new();
                for (i, props) in planned {
                    let o = &mut self.list(object)[i];
                    set_props(o, &props);
                    o.modified_ms = now.max(o.modified_ms + 1);
                    results.push(o.render(object, &wanted));
                }
                self.stats.writes += results.len();
                Ok((
                    StatusCode::OK,
                    json!({"status": "COMPLETE", "results": results}),
                ))
            }
            // Creates or updates by a unique property's value
            // (<https://developers.hubspot.com/docs/api/crm/understanding-the-crm#upsert>).
            "upsert" => {
                let mut results = Vec::new();
                for input in &inputs {
                    let (Some(id_property), Some(key)) =
                        (input["idProperty"].as_str(), input["id"].as_str())
                    else {
                        return Err(fail(
                            StatusCode::BAD_REQUEST,
                            "VALIDATION_ERROR",
                            "upsert inputs need idProperty and id",
                        ));
                    };
                    if id_property != UNIQUE_KEY_PROPERTY {
                        return Err(fail(
                            StatusCode::BAD_REQUEST,
                            "VALIDATION_ERROR",
                            format!("{id_property} is not a property with unique values"),
                        ));
                    }
                    let mut props = input["properties"].as_object().cloned().unwrap_or_default();
                    self.check_props(object, &props)?;
                    props.insert(id_property.to_owned(), json!(key));
                    let found = self.list(object).iter().position(|o| {
                        !o.archived && o.props.get(id_property).map(String::as_str) == Some(key)
                    });
                    let (o, new) = match found {
                        Some(i) => {
                            let o = &mut self.list(object)[i];
                            set_props(o, &props);
                            o.modified_ms = now_ms().max(o.modified_ms + 1);
                            (o.clone(), false)
                        }
                        None => {
                            let o = self.create(object, &json!({"properties": props}))?;
                            self.list(object).push(o.clone());
                            (o, true)
                        }
                    };
                    self.stats.writes += 1;
                    let mut r = o.render(object, &[id_property.to_owned()]);
                    r["new"] = json!(new);
                    results.push(r);
                }
                Ok((
                    StatusCode::OK,
                    json!({"status": "COMPLETE", "results": results}),
                ))
            }
            "archive" => {
                let now = now_ms();
                for input in &inputs {
                    // Archiving what is not there (any more) is no error.
                    if let Ok(i) = self.position(object, &input["id"]) {
                        let o = &mut self.list(object)[i];
                        o.archived = true;
                        o.modified_ms = now;
                        self.stats.writes += 1;
                    }
                }
                Ok((StatusCode::NO_CONTENT, Json::Null))
            }
            _ => Err(fail(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                format!("no batch action {action}"),
            )),
        }
    }

    fn associations(&mut self, body: &Json) -> Reply {
        let mut results = Vec::new();
        for input in body["inputs"].as_array().into_iter().flatten() {
            if let Ok(i) = self.position("contacts", &input["id"]) {
                let o = &self.objects["contacts"][i];
                results.push(json!({"from": {"id": o.id.to_string()}, "to": o.companies.iter().map(|c| json!({
                    "toObjectId": c, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": CONTACT_TO_COMPANY, "label": null}]
                })).collect::<Vec<_>>()}));
            }
        }
        Ok((
            StatusCode::OK,
            json!({"status": "COMPLETE", "results": results}),
        ))
    }

    fn associate(&mut self, id: &str, to: &str, add: bool) -> Reply {
        let i = self.position("contacts", &json!(id))?;
        let to: u64 = to.parse().unwrap_or(0);
        if add && !self.live("companies", to) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!("no company with id {to}"),
            ));
        }
        let o = &mut self.list("contacts")[i];
        o.companies.retain(|c| *c != to);
        if add {
            o.companies.push(to);
        }
        Ok((
            if add {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            },
            json!({}),
        ))
    }
}

fn set_props(o: &mut Object, props: &Map<String, Json>) {
    for (k, v) in props {
        match v.as_str() {
            Some(s) if !s.is_empty() => {
                o.props.insert(k.clone(), s.to_owned());
            }
            _ => {
                o.props.remove(k);
            }
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn respond(status: StatusCode, body: &Json, extra: &[(&'static str, String)]) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in extra {
        b = b.header(*k, v);
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    b.header(header::CONTENT_TYPE, "application/json;charset=utf-8")
        .body(axum::body::Body::from(body))
        .unwrap_or_default()
}

async fn serve(
    axum::extract::State(shared): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = lock(&shared);
    let token = format!("Bearer {}", state.options.token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(token.as_str())
    {
        return respond(
            StatusCode::UNAUTHORIZED,
            &json!({"status": "error", "message": "Authentication credentials not found. This API supports OAuth 2.0 authentication.", "category": "INVALID_AUTHENTICATION"}),
            &[],
        );
    }
    if !state.admit(uri.path().ends_with("/search")) {
        let max = state.options.budget.map_or(0, |b| b.requests).to_string();
        let interval = state
            .options
            .budget
            .map_or(0, |b| b.window.as_millis())
            .to_string();
        return respond(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}),
            &[
                ("x-hubspot-ratelimit-max", max),
                ("x-hubspot-ratelimit-remaining", "0".into()),
                ("x-hubspot-ratelimit-interval-milliseconds", interval),
            ],
        );
    }
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let body: Json = if body.is_empty() {
        Json::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(j) => j,
            Err(e) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    &json!({"status": "error", "message": format!("Invalid input JSON: {e}"), "category": "VALIDATION_ERROR"}),
                    &[],
                );
            }
        }
    };
    match state.route(&method, uri.path(), &query, &body) {
        Ok((status, body)) => respond(status, &body, &[]),
        Err(f) => respond(
            f.status,
            &json!({"status": "error", "message": f.message, "category": f.category, "correlationId": "00000000-fake"}),
            &[],
        ),
    }
}

/// A running fake HubSpot, stopped when dropped.
#[derive(Debug)]
pub struct HubSpotServer {
    addr: SocketAddr,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubSpotServer {
    pub fn start(options: Options) -> HubSpotServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let addr = listener.local_addr().expect("the port");
        let state: Shared = Arc::new(Mutex::new(State {
            options,
            objects: BTreeMap::new(),
            next_id: 100,
            recent: VecDeque::new(),
            recent_searches: VecDeque::new(),
            stats: Stats::default(),
            edits_before_write: Vec::new(),
        }));
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
        HubSpotServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self) -> String {
        self.state().options.token.clone()
    }

    pub fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    /// Creates a record as a HubSpot user would; returns its id. `companies` associates
    /// a contact with companies.
    pub fn insert(&self, object: &'static str, props: Json, companies: &[&str]) -> String {
        let input = json!({"properties": props, "associations": companies.iter().map(|c| json!({
            "to": {"id": c}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": CONTACT_TO_COMPANY}]
        })).collect::<Vec<_>>()});
        let mut s = self.state();
        match s.create(object, &input) {
            Ok(o) => {
                let id = o.id.to_string();
                s.list(object).push(o);
                id
            }
            Err(e) => panic!("insert into {object}: {}", e.message),
        }
    }

    /// Changes properties behind the client's back (a new modification date).
    pub fn edit(&self, object: &'static str, id: &str, props: Json) {
        let mut s = self.state();
        let i = s
            .position(object, &json!(id))
            .unwrap_or_else(|e| panic!("{}", e.message));
        let now = now_ms().max(s.list(object)[i].modified_ms + 1);
        let o = &mut s.list(object)[i];
        set_props(o, props.as_object().unwrap_or(&Map::new()));
        o.modified_ms = now;
    }

    /// The next batch call naming this record first meets this edit, made by someone
    /// else a moment earlier.
    pub fn edit_before_next_write(&self, object: &'static str, id: &str, props: Json) {
        let props = props.as_object().cloned().unwrap_or_default();
        self.state()
            .edits_before_write
            .push((object, id.to_owned(), props));
    }

    pub fn archive(&self, object: &'static str, id: &str) {
        let mut s = self.state();
        let i = s
            .position(object, &json!(id))
            .unwrap_or_else(|e| panic!("{}", e.message));
        let o = &mut s.list(object)[i];
        o.archived = true;
        o.modified_ms = now_ms();
    }

    /// A live record's properties, `None` when missing or archived.
    pub fn get(&self, object: &'static str, id: &str) -> Option<BTreeMap<String, String>> {
        let s = self.state();
        let i = s.position(object, &json!(id)).ok()?;
        Some(s.objects[object][i].props.clone())
    }

    /// The companies a contact is associated with.
    pub fn companies_of(&self, contact: &str) -> Vec<String> {
        let s = self.state();
        s.position("contacts", &json!(contact))
            .map(|i| {
                s.objects["contacts"][i]
                    .companies
                    .iter()
                    .map(u64::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ids of the live records of `object`.
    pub fn ids(&self, object: &'static str) -> Vec<String> {
        self.state()
            .objects
            .get(object)
            .map(|l| {
                l.iter()
                    .filter(|o| !o.archived)
                    .map(|o| o.id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for HubSpotServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
