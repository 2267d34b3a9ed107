//! A connector for the Tryton ERP over JSON-RPC (`type = "tryton"`).
//!
//! - **Customers and vendors** are parties (`party.party`) carrying the customer or the
//!   supplier category (settings `customer_category`, `supplier_category`, default
//!   `Customer` and `Supplier`). One party can carry both: it is then a customer and a
//!   vendor, two records of two kinds with the same id. Creating one creates a party
//!   with the category; deleting one removes the category and, when the party then
//!   has no role left, deactivates it (Tryton's soft delete; nothing is destroyed).
//! - **Bank accounts** are `bank.account` records. Their name, address and
//!   communication are those of the bank's party; IBAN and account number come from
//!   the account's numbers, the SWIFT code from the bank. What is the bank's is read and
//!   never written by an update: every account at that bank shares it (a change to it
//!   is refused with the reason); the account's numbers are written.
//!
//! See [`mapping`] for every field. Data the connector does not map (other addresses,
//! other contact mechanisms, categories, owners, ...) is left untouched by updates.
//!
//! Reads: without a cursor a full listing, paged by id; with one, the records whose
//! own or children's `create_date`/`write_date` is newer than the newest timestamp seen
//! (minus an overlap window, de-duplicated), plus tombstones found by diffing the id
//! list (Tryton keeps no tombstones). See [`cursor`].
//!
//! Writes: one `create` call per batch, one `write` call per batch of updates, each
//! carrying the `_timestamp`s read just before (a change in between is a conflict);
//! when Tryton refuses a batch, its records are tried one by one so that only the bad
//! one fails.
//!
//! Versions hold a short hash per mapped field ([`mapping::version`]). An update is a
//! conflict only when a field it names changed since its version to something other
//! than what it writes ([`mapping::is_stale`]): a party that is both customer and
//! vendor, updated under both roles in one run, is not refused the second write
//! because the first one changed the party.

pub mod cursor;
pub mod mapping;
pub mod rpc;
#[cfg(feature = "testsupport")]
pub mod testsupport;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use tandem_connector::http::{HttpSettings, SecretString};
use tandem_connector::{
    BuildContext, Capabilities, Changes, Connector, ConnectorError, ConnectorFactory, Cursor,
    Listing, Page, WriteOp, WriteOutcome, Written, parse_settings,
};
use tandem_model::{EntityKind, Record, Timestamp, field};

use crate::cursor::{State, micros_datetime};
use crate::mapping::Lookups;
pub use crate::rpc::{Client, RpcError, Secret};

fn default_user() -> String {
    "admin".into()
}
fn default_customer() -> String {
    "Customer".into()
}
fn default_supplier() -> String {
    "Supplier".into()
}
fn default_batch() -> usize {
    100
}

/// The settings of `type = "tryton"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `https://erp.example.com/` or `http://host:8000/`
    pub url: String,
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    pub password: SecretString,
    #[serde(default = "default_customer")]
    pub customer_category: String,
    #[serde(default = "default_supplier")]
    pub supplier_category: String,
    /// Records per page and per write call.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The keys every HTTP connector shares (`ca_file`, timeouts, `retry`,
    /// `max_requests_per_second`), read by [`Settings::parse`].
    #[serde(skip, default = "rpc::default_http")]
    pub http: HttpSettings,
}

impl Settings {
    /// The settings of a config table: the shared HTTP keys, then the connector's own.
    pub fn parse(
        mut settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Settings, ConnectorError> {
        let http = HttpSettings::take_from(&mut settings, &rpc::default_http(), context)?;
        let mut own: Settings = parse_settings(settings)?;
        own.http = http;
        Ok(own)
    }
}

/// Builds [`TrytonConnector`]s for `type = "tryton"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrytonConnectorFactory;

impl ConnectorFactory for TrytonConnectorFactory {
    fn type_name(&self) -> &'static str {
        "tryton"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings = Settings::parse(settings, context)?;
        Ok(Arc::new(TrytonConnector::new(settings)?))
    }
}

/// Customers, vendors and bank accounts of one Tryton database.
#[derive(Debug)]
pub struct TrytonConnector {
    rpc: Client,
    customer_category: String,
    supplier_category: String,
    batch: usize,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    categories: HashMap<String, i64>,
    lookups: Lookups,
}

const PARTY: &str = "party.party";
const ACCOUNT: &str = "bank.account";
const BANK: &str = "bank";

impl TrytonConnector {
    pub fn new(settings: Settings) -> Result<TrytonConnector, ConnectorError> {
        if settings.batch_size == 0 {
            return Err(ConnectorError::config("`batch_size` must be at least 1"));
        }
        if settings.database.trim().is_empty() {
            return Err(ConnectorError::config("`database` must not be empty"));
        }
        Ok(TrytonConnector {
            rpc: Client::with_http(
                &settings.url,
                &settings.database,
                &settings.user,
                settings.password,
                settings.http,
            )?,
            customer_category: settings.customer_category,
            supplier_category: settings.supplier_category,
            batch: settings.batch_size,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The JSON-RPC client, for tests and benchmarks (call counts, time waited).
    pub fn client(&self) -> &Client {
        &self.rpc
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn category_name(&self, kind: EntityKind) -> &str {
        if kind == EntityKind::Vendor {
            &self.supplier_category
        } else {
            &self.customer_category
        }
    }

    /// The id of the kind's category; created when `create` and missing.
    async fn category(
        &self,
        kind: EntityKind,
        create: bool,
    ) -> Result<Option<i64>, ConnectorError> {
        let name = self.category_name(kind).to_owned();
        if let Some(id) = self.cache().categories.get(&name) {
            return Ok(Some(*id));
        }
        let found = self
            .rpc
            .model(
                "party.category",
                "search",
                vec![json!([["name", "=", name]]), json!(0), json!(1), Json::Null],
            )
            .await
            .map_err(RpcError::into_connector)?;
        let id = match found.get(0).and_then(Json::as_i64) {
            Some(id) => id,
            None if create => {
                let ids = self
                    .rpc
                    .model("party.category", "create", vec![json!([{"name": name}])])
                    .await
                    .map_err(RpcError::into_connector)?;
                ids.get(0).and_then(Json::as_i64).ok_or_else(|| {
                    ConnectorError::fatal("Tryton created a category but returned no id")
                })?
            }
            None => return Ok(None),
        };
        self.cache().categories.insert(name, id);
        Ok(Some(id))
    }

    /// The base domain of a kind (`None`: the kind's category does not exist, so
    /// nothing is of that kind).
    async fn domain(&self, kind: EntityKind) -> Result<Option<Vec<Json>>, ConnectorError> {
        match kind {
            EntityKind::Customer | EntityKind::Vendor => Ok(self
                .category(kind, false)
                .await?
                .map(|c| vec![json!(["categories", "in", [c]])])),
            EntityKind::BankAccount => Ok(Some(vec![])),
            EntityKind::Contact => Err(unheld(kind)),
        }
    }

    fn model_of(kind: EntityKind) -> &'static str {
        if kind == EntityKind::BankAccount {
            ACCOUNT
        } else {
            PARTY
        }
    }

    fn fields_of(kind: EntityKind) -> Vec<String> {
        if kind == EntityKind::BankAccount {
            mapping::bank_account_fields()
        } else {
            mapping::PARTY_FIELDS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        }
    }

    /// The domain of records changed since `t`: the record or any mapped child.
    fn changed_since(kind: EntityKind, t: cursor::Micros) -> Json {
        let t = micros_datetime(t);
        let paths: &[&str] = if kind == EntityKind::BankAccount {
            &[
                "",
                "numbers.",
                "bank.",
                "bank.party.",
                "bank.party.addresses.",
                "bank.party.contact_mechanisms.",
            ]
        } else {
            &["", "addresses.", "contact_mechanisms.", "identifiers."]
        };
        let mut clauses = vec![json!("OR")];
        for path in paths {
            for date in ["create_date", "write_date"] {
                clauses.push(json!([format!("{path}{date}"), ">", t]));
            }
        }
        Json::Array(clauses)
    }

    async fn search_read(
        &self,
        kind: EntityKind,
        domain: Vec<Json>,
        limit: Option<usize>,
    ) -> Result<Vec<Json>, ConnectorError> {
        let rows = self
            .rpc
            .model(
                Self::model_of(kind),
                "search_read",
                vec![
                    Json::Array(domain),
                    json!(0),
                    json!(limit),
                    json!([["id", "ASC"]]),
                    json!(Self::fields_of(kind)),
                ],
            )
            .await
            .map_err(RpcError::into_connector)?;
        match rows {
            Json::Array(rows) => Ok(rows),
            other => Err(ConnectorError::fatal(format!(
                "Tryton's search_read returned {other} instead of a list"
            ))),
        }
    }

    /// Reads the records `ids` of `kind` (those that are still of the kind), in chunks.
    async fn read_rows(
        &self,
        kind: EntityKind,
        base: &[Json],
        ids: &[i64],
    ) -> Result<Vec<Json>, ConnectorError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.batch) {
            let mut domain = base.to_vec();
            domain.push(json!(["id", "in", chunk]));
            rows.extend(self.search_read(kind, domain, None).await?);
        }
        Ok(rows)
    }

    async fn search_ids(
        &self,
        kind: EntityKind,
        domain: Vec<Json>,
    ) -> Result<BTreeSet<i64>, ConnectorError> {
        let ids = self
            .rpc
            .model(
                Self::model_of(kind),
                "search",
                vec![
                    Json::Array(domain),
                    json!(0),
                    Json::Null,
                    json!([["id", "ASC"]]),
                ],
            )
            .await
            .map_err(RpcError::into_connector)?;
        Ok(ids
            .as_array()
            .map(|ids| ids.iter().filter_map(Json::as_i64).collect())
            .unwrap_or_default())
    }

    fn to_record(kind: EntityKind, raw: &Json) -> Record {
        let id = raw.get("id").and_then(Json::as_i64).unwrap_or_default();
        let fields = mapping::fields_of(kind, raw);
        let version = mapping::version(kind, &fields);
        let mut record = Record::new(kind, id.to_string(), fields);
        record.version = Some(version);
        record.modified_at = mapping::newest(raw).map(|m| Timestamp(m.div_euclid(1000)));
        record
    }

    async fn full_page(&self, kind: EntityKind, mut state: State) -> Result<Page, ConnectorError> {
        let Some(mut domain) = self.domain(kind).await? else {
            return Ok(Page {
                records: vec![],
                listing: Listing::Full,
                cursor: Some(State::default().encode()),
                has_more: false,
            });
        };
        domain.push(json!(["id", ">", state.last_id.unwrap_or(0)]));
        let rows = self.search_read(kind, domain, Some(self.batch)).await?;
        let mut records = Vec::with_capacity(rows.len());
        for raw in &rows {
            let record = Self::to_record(kind, raw);
            let id = raw.get("id").and_then(Json::as_i64).unwrap_or_default();
            state.ids.insert(id);
            state.saw(id, mapping::newest(raw), mapping::hash(raw));
            records.push(record);
        }
        let has_more = rows.len() >= self.batch;
        state.last_id = if has_more {
            state.ids.last().copied()
        } else {
            None
        };
        state.prune();
        Ok(Page {
            records,
            listing: Listing::Full,
            cursor: Some(state.encode()),
            has_more,
        })
    }

    async fn changes(&self, kind: EntityKind, prev: State) -> Result<Page, ConnectorError> {
        let Some(base) = self.domain(kind).await? else {
            let records = prev
                .ids
                .iter()
                .map(|id| Record::tombstone(kind, id.to_string()))
                .collect();
            return Ok(Page {
                records,
                listing: Listing::Changes,
                cursor: Some(State::default().encode()),
                has_more: false,
            });
        };
        let now = self.search_ids(kind, base.clone()).await?;
        let mut wanted: BTreeSet<i64> = now.difference(&prev.ids).copied().collect();
        if let Some(since) = prev.since() {
            let mut domain = base.clone();
            domain.push(Self::changed_since(kind, since));
            wanted.extend(self.search_ids(kind, domain).await?);
        }
        let wanted: Vec<i64> = wanted.into_iter().collect();
        let rows = self.read_rows(kind, &base, &wanted).await?;
        let mut next = State {
            ids: now.clone(),
            newest: prev.newest,
            window: prev.window.clone(),
            last_id: None,
        };
        let mut records = Vec::new();
        for raw in &rows {
            let id = raw.get("id").and_then(Json::as_i64).unwrap_or_default();
            let hash = mapping::hash(raw);
            next.ids.insert(id);
            next.saw(id, mapping::newest(raw), hash);
            if !prev.already_seen(id, hash) || !prev.ids.contains(&id) {
                records.push(Self::to_record(kind, raw));
            }
        }
        for gone in prev.ids.difference(&next.ids) {
            records.push(Record::tombstone(kind, gone.to_string()));
            next.window.remove(gone);
        }
        next.prune();
        Ok(Page {
            records,
            listing: Listing::Changes,
            cursor: Some(next.encode()),
            has_more: false,
        })
    }

    /// Looks up the ids of the countries and languages the changes name.
    async fn lookups(&self, all: &[&Changes]) -> Result<Lookups, ConnectorError> {
        let (mut countries, mut langs) = (BTreeSet::new(), BTreeSet::new());
        for changes in all {
            let (c, l) = mapping::codes(changes);
            countries.extend(c);
            langs.extend(l);
        }
        let mut lookups = self.cache().lookups.clone();
        countries.retain(|c| !lookups.countries.contains_key(c));
        langs.retain(|l| !lookups.langs.contains_key(&mapping::lang_key(l)));
        if !countries.is_empty() {
            let rows = self
                .rpc
                .model(
                    "country.country",
                    "search_read",
                    vec![
                        json!([["code", "in", countries]]),
                        json!(0),
                        Json::Null,
                        Json::Null,
                        json!(["code"]),
                    ],
                )
                .await
                .map_err(RpcError::into_connector)?;
            for row in rows.as_array().into_iter().flatten() {
                if let (Some(code), Some(id)) = (row["code"].as_str(), row["id"].as_i64()) {
                    lookups.countries.insert(code.to_uppercase(), id);
                }
            }
        }
        if !langs.is_empty() {
            let rows = self
                .rpc
                .model_ctx(
                    "ir.lang",
                    "search_read",
                    vec![json!([]), json!(0), Json::Null, Json::Null, json!(["code"])],
                    json!({"active_test": false}),
                )
                .await
                .map_err(RpcError::into_connector)?;
            for row in rows.as_array().into_iter().flatten() {
                if let (Some(code), Some(id)) = (row["code"].as_str(), row["id"].as_i64()) {
                    lookups.langs.insert(mapping::lang_key(code), id);
                }
            }
        }
        self.cache().lookups = lookups.clone();
        Ok(lookups)
    }

    /// The current records `ids` of `kind`, by id (missing: not found or not of the kind).
    async fn current(
        &self,
        kind: EntityKind,
        ids: &[i64],
    ) -> Result<HashMap<i64, Json>, ConnectorError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let Some(base) = self.domain(kind).await? else {
            return Ok(HashMap::new());
        };
        Ok(self
            .read_rows(kind, &base, ids)
            .await?
            .into_iter()
            .filter_map(|raw| Some((raw.get("id")?.as_i64()?, raw)))
            .collect())
    }

    async fn written(
        &self,
        kind: EntityKind,
        ids: &[i64],
    ) -> Result<HashMap<i64, Written>, ConnectorError> {
        let mut out = HashMap::new();
        let base = self.domain(kind).await?.unwrap_or_default();
        for raw in self.read_rows(kind, &base, ids).await? {
            let record = Self::to_record(kind, &raw);
            if let Ok(id) = record.id.parse() {
                out.insert(
                    id,
                    Written {
                        id: record.id,
                        version: record.version,
                        modified_at: record.modified_at,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Runs `call` on all `items` at once; when Tryton refuses the data, on each alone,
    /// so that only the bad ones fail. Returns one result per item.
    async fn batched<T, R, F, Fut>(&self, items: Vec<T>, call: F) -> Vec<Result<R, RpcError>>
    where
        T: Clone,
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = Result<Vec<R>, RpcError>>,
    {
        if items.is_empty() {
            return vec![];
        }
        let n = items.len();
        match call(items.clone()).await {
            Ok(results) if results.len() == n => results.into_iter().map(Ok).collect(),
            Ok(results) => (0..n)
                .map(|i| {
                    let _ = &results;
                    Err(RpcError::Other(ConnectorError::fatal(format!(
                        "Tryton answered {} results for {n} records (item {i})",
                        results.len()
                    ))))
                })
                .collect(),
            Err(e) if e.is_data_error() && n > 1 => {
                let mut out = Vec::with_capacity(n);
                for item in items {
                    out.push(match call(vec![item]).await {
                        Ok(mut r) if r.len() == 1 => Ok(r.remove(0)),
                        Ok(_) => Err(RpcError::Other(ConnectorError::fatal(
                            "Tryton answered no result",
                        ))),
                        Err(e) => Err(e),
                    });
                }
                out
            }
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn write_parties(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let n = ops.len();
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; n];
        let category = self
            .category(
                kind,
                ops.iter().any(|o| matches!(o, WriteOp::Create { .. })),
            )
            .await?;
        let other_category = self.category(other_role(kind), false).await?;
        let ids: Vec<i64> = ops
            .iter()
            .filter_map(WriteOp::id)
            .filter_map(|id| id.parse().ok())
            .collect();
        let current = self.current(kind, &ids).await?;

        let mut creates: Vec<(usize, Map<String, Json>)> = Vec::new();
        let mut updates: Vec<(usize, i64, Map<String, Json>, String)> = Vec::new();
        let mut deletes: Vec<(usize, i64, Map<String, Json>, String)> = Vec::new();
        let all_changes: Vec<Changes> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Create { fields, .. } => mapping::as_changes(fields),
                WriteOp::Update { changes, .. } => changes.clone(),
                WriteOp::Delete { .. } => Changes::new(),
            })
            .collect();
        let lookups = self
            .lookups(&all_changes.iter().collect::<Vec<_>>())
            .await?;

        for (i, (op, changes)) in ops.iter().zip(&all_changes).enumerate() {
            let raw = match precheck(kind, op, changes, &current) {
                Ok(raw) => raw,
                Err(e) => {
                    outcomes[i] = Some(Err(e));
                    continue;
                }
            };
            let timestamp = raw
                .and_then(|r| r.get("_timestamp"))
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned();
            match op {
                WriteOp::Create { .. } => {
                    match mapping::party_values(None, changes, &lookups, true) {
                        Ok(mut values) => {
                            if let Some(c) = category {
                                values.insert("categories".into(), json!([["add", [c]]]));
                            }
                            creates.push((i, values));
                        }
                        Err(m) => outcomes[i] = Some(Err(ConnectorError::invalid(None, m))),
                    }
                }
                WriteOp::Update { id, .. } => {
                    match mapping::party_values(raw, changes, &lookups, true) {
                        Ok(values) => {
                            updates.push((i, id.parse().unwrap_or_default(), values, timestamp))
                        }
                        Err(m) => outcomes[i] = Some(Err(ConnectorError::invalid(Some(id), m))),
                    }
                }
                WriteOp::Delete { id, .. } => {
                    let raw = raw.unwrap_or(&Json::Null);
                    let mut values = Map::new();
                    if let Some(c) = category {
                        values.insert("categories".into(), json!([["remove", [c]]]));
                    }
                    let keeps_other_role = other_category.is_some_and(|o| {
                        raw["categories"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().any(|c| c.as_i64() == Some(o)))
                    });
                    if !keeps_other_role {
                        values.insert("active".into(), json!(false));
                    }
                    deletes.push((i, id.parse().unwrap_or_default(), values, timestamp));
                }
            }
        }

        // Creates: one call for the batch.
        let created = self
            .batched(creates.clone(), |batch| async move {
                let values: Vec<Json> = batch.into_iter().map(|(_, v)| Json::Object(v)).collect();
                let ids = self
                    .rpc
                    .model(PARTY, "create", vec![Json::Array(values)])
                    .await?;
                Ok(ids
                    .as_array()
                    .map(|ids| ids.iter().filter_map(Json::as_i64).collect())
                    .unwrap_or_default())
            })
            .await;
        let mut done: Vec<(usize, i64)> = Vec::new();
        for ((i, _), result) in creates.iter().zip(created) {
            match result {
                Ok(id) => done.push((*i, id)),
                Err(e) => outcomes[*i] = Some(Err(e.for_record(None))),
            }
        }

        // Updates and deletes (category removal): one write call each.
        for (group, is_delete) in [(updates, false), (deletes, true)] {
            let results = self
                .batched(group.clone(), |batch| async move {
                    let mut params = Vec::new();
                    let mut stamps = Map::new();
                    for (_, id, values, ts) in &batch {
                        params.push(json!([id]));
                        params.push(Json::Object(values.clone()));
                        stamps.insert(format!("{PARTY},{id}"), json!(ts));
                    }
                    let n = batch.len();
                    self.rpc
                        .model_ctx(PARTY, "write", params, json!({"_timestamp": stamps}))
                        .await?;
                    Ok(vec![(); n])
                })
                .await;
            for ((i, id, _, _), result) in group.iter().zip(results) {
                match result {
                    Ok(()) if is_delete => {
                        outcomes[*i] = Some(Ok(Written {
                            id: id.to_string(),
                            version: None,
                            modified_at: None,
                        }))
                    }
                    Ok(()) => done.push((*i, *id)),
                    Err(e) => outcomes[*i] = Some(Err(e.for_record(Some(&id.to_string())))),
                }
            }
        }

        self.finish(kind, n, outcomes, done).await
    }

    /// Reads back what was written, for the versions, and fills the outcomes.
    async fn finish(
        &self,
        kind: EntityKind,
        n: usize,
        mut outcomes: Vec<Option<WriteOutcome>>,
        done: Vec<(usize, i64)>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let ids: Vec<i64> = done.iter().map(|(_, id)| *id).collect();
        let written = self.written(kind, &ids).await?;
        for (i, id) in done {
            outcomes[i] = Some(written.get(&id).cloned().ok_or_else(|| {
                ConnectorError::fatal(format!("{kind} {id} was written but cannot be read back"))
            }));
        }
        Ok((0..n)
            .map(|i| {
                outcomes[i]
                    .take()
                    .unwrap_or_else(|| Err(ConnectorError::fatal("op left without an outcome")))
            })
            .collect())
    }

    async fn write_bank_accounts(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let kind = EntityKind::BankAccount;
        let n = ops.len();
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; n];
        let ids: Vec<i64> = ops
            .iter()
            .filter_map(WriteOp::id)
            .filter_map(|id| id.parse().ok())
            .collect();
        let current = self.current(kind, &ids).await?;
        let all_changes: Vec<Changes> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Create { fields, .. } => mapping::as_changes(fields),
                WriteOp::Update { changes, .. } => changes.clone(),
                WriteOp::Delete { .. } => Changes::new(),
            })
            .collect();
        let lookups = self
            .lookups(&all_changes.iter().collect::<Vec<_>>())
            .await?;
        let mut done = Vec::new();
        let mut deletes: Vec<(usize, i64, String)> = Vec::new();
        for (i, (op, changes)) in ops.iter().zip(&all_changes).enumerate() {
            let raw = match precheck(kind, op, changes, &current) {
                Ok(raw) => raw,
                Err(e) => {
                    outcomes[i] = Some(Err(e));
                    continue;
                }
            };
            if let WriteOp::Delete { id, .. } = op {
                let ts = raw
                    .and_then(|r| r["_timestamp"].as_str())
                    .unwrap_or_default();
                deletes.push((i, id.parse().unwrap_or_default(), ts.to_owned()));
                continue;
            }
            if let (Some(raw), WriteOp::Update { id, version, .. }) = (raw, op)
                && let Some(reason) = mapping::bank_owned_change(raw, changes)
            {
                // Changed since it was read: a conflict first, the change may be moot.
                let stale =
                    (version.as_deref()).is_some_and(|v| mapping::is_stale(kind, v, raw, None));
                outcomes[i] = Some(Err(match stale {
                    true => ConnectorError::Conflict { id: id.clone() },
                    false => ConnectorError::invalid(op.id(), reason),
                }));
                continue;
            }
            match self.write_bank_account(raw, changes, &lookups).await {
                Ok(id) => done.push((i, id)),
                Err(e) => outcomes[i] = Some(Err(e.for_record(op.id()))),
            }
        }
        let results = self
            .batched(deletes.clone(), |batch| async move {
                let ids: Vec<i64> = batch.iter().map(|(_, id, _)| *id).collect();
                let stamps: Map<String, Json> = batch
                    .iter()
                    .map(|(_, id, ts)| (format!("{ACCOUNT},{id}"), json!(ts)))
                    .collect();
                self.rpc
                    .model_ctx(
                        ACCOUNT,
                        "delete",
                        vec![json!(ids)],
                        json!({"_timestamp": stamps}),
                    )
                    .await?;
                Ok(vec![(); batch.len()])
            })
            .await;
        for ((i, id, _), result) in deletes.iter().zip(results) {
            outcomes[*i] = Some(match result {
                Ok(()) => Ok(Written {
                    id: id.to_string(),
                    version: None,
                    modified_at: None,
                }),
                Err(e) => Err(e.for_record(Some(&id.to_string()))),
            });
        }
        self.finish(kind, n, outcomes, done).await
    }

    /// Creates (no `current`) one bank account, with a bank and a bank party of its own
    /// when it names one, or updates one: its numbers only, never its bank (what is the
    /// bank's was checked unchanged, `mapping::bank_owned_change`).
    async fn write_bank_account(
        &self,
        current: Option<&Json>,
        changes: &Changes,
        lookups: &Lookups,
    ) -> Result<i64, RpcError> {
        let party_changes: Changes = changes
            .iter()
            .filter(|(name, _)| mapping::BANK_PARTY_MAPPED.contains(&name.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let bic = changes
            .get(field::SWIFT_CODE)
            .map(|v| Some(v.to_cell().trim().to_owned()).filter(|s| !s.is_empty()));
        let bank = current
            .and_then(|c| c.get("bank."))
            .filter(|b| b.is_object());
        let mut account_values = Map::new();
        match bank {
            Some(_) => {}
            None if !party_changes.values().all(|v| v.is_empty())
                || bic.as_ref().is_some_and(Option::is_some) =>
            {
                // A bank of its own: a party and a bank.
                let mut values = mapping::party_values(None, &party_changes, lookups, false)
                    .map_err(RpcError::User)?;
                if !values.get("name").is_some_and(|n| n.is_string()) {
                    let name = bic.clone().flatten().unwrap_or_else(|| "Bank".into());
                    values.insert("name".into(), json!(name));
                }
                let party = first_id(
                    self.rpc
                        .model(PARTY, "create", vec![json!([values])])
                        .await?,
                )?;
                let bank = first_id(
                    self.rpc
                        .model(
                            BANK,
                            "create",
                            vec![json!([{"party": party, "bic": bic.flatten()}])],
                        )
                        .await?,
                )?;
                account_values.insert("bank".into(), json!(bank));
            }
            None => {}
        }
        if let Some(numbers) = mapping::number_ops(current, changes) {
            account_values.insert("numbers".into(), numbers);
        }
        match current.and_then(|c| c["id"].as_i64()) {
            Some(id) => {
                if !account_values.is_empty() {
                    let ts = current
                        .and_then(|c| c["_timestamp"].as_str())
                        .unwrap_or_default();
                    self.rpc
                        .model_ctx(
                            ACCOUNT,
                            "write",
                            vec![json!([id]), Json::Object(account_values)],
                            json!({"_timestamp": {format!("{ACCOUNT},{id}"): ts}}),
                        )
                        .await?;
                }
                Ok(id)
            }
            None => first_id(
                self.rpc
                    .model(ACCOUNT, "create", vec![json!([account_values])])
                    .await?,
            ),
        }
    }
}

fn first_id(ids: Json) -> Result<i64, RpcError> {
    ids.get(0).and_then(Json::as_i64).ok_or_else(|| {
        RpcError::Other(ConnectorError::fatal(
            "Tryton created a record but returned no id",
        ))
    })
}

fn other_role(kind: EntityKind) -> EntityKind {
    if kind == EntityKind::Vendor {
        EntityKind::Customer
    } else {
        EntityKind::Vendor
    }
}

fn unheld(kind: EntityKind) -> ConnectorError {
    ConnectorError::config(format!(
        "the Tryton connector holds customers, vendors and bank accounts, not {}",
        kind.plural()
    ))
}

#[async_trait::async_trait]
impl Connector for TrytonConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![
                EntityKind::Customer,
                EntityKind::Vendor,
                EntityKind::BankAccount,
            ],
            incremental: true,
            write: true,
            delete: true,
            max_batch: self.batch,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.rpc
            .server_version()
            .await
            .map_err(RpcError::into_connector)?;
        self.rpc
            .model(PARTY, "search_count", vec![json!([])])
            .await
            .map_err(RpcError::into_connector)?;
        Ok(())
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        if kind == EntityKind::Contact {
            return Err(unheld(kind));
        }
        let state = cursor.map(State::decode).transpose()?;
        match state {
            None => self.full_page(kind, State::default()).await,
            Some(s) if s.is_paging() => self.full_page(kind, s).await,
            Some(s) => self.changes(kind, s).await,
        }
    }

    /// One `search_read` per `batch_size` ids, with the kind's domain: an id that is not
    /// a number, does not exist, is inactive (deleted) or lacks the kind's category is
    /// left out, as a full listing would leave it out.
    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        if kind == EntityKind::Contact {
            return Err(unheld(kind));
        }
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|id| id.trim().parse::<i64>().ok())
            .filter(|id| *id > 0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let Some(base) = self.domain(kind).await? else {
            return Ok(Vec::new());
        };
        Ok(self
            .read_rows(kind, &base, &ids)
            .await?
            .iter()
            .map(|raw| Self::to_record(kind, raw))
            .collect())
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        if ops.len() > self.batch {
            return Err(ConnectorError::fatal(format!(
                "{} ops in one write, more than batch_size {}",
                ops.len(),
                self.batch
            )));
        }
        match kind {
            EntityKind::Contact => Err(unheld(kind)),
            EntityKind::BankAccount => self.write_bank_accounts(ops).await,
            _ => self.write_parties(kind, ops).await,
        }
    }
}

/// The checks every write op passes before it is sent: fields Tryton has no place for
/// are refused, the record must exist, and its version must not be stale for the
/// fields written. Returns the record as read (`None` for a create).
fn precheck<'a>(
    kind: EntityKind,
    op: &WriteOp,
    changes: &Changes,
    current: &'a HashMap<i64, Json>,
) -> Result<Option<&'a Json>, ConnectorError> {
    if let Some(reason) = changes
        .iter()
        .find_map(|(name, value)| mapping::refuse(kind, name.as_str(), value))
    {
        return Err(ConnectorError::invalid(op.id(), reason));
    }
    match op {
        WriteOp::Create { .. } => Ok(None),
        WriteOp::Update { id, version, .. } | WriteOp::Delete { id, version } => {
            let raw = id
                .parse::<i64>()
                .ok()
                .and_then(|n| current.get(&n))
                .ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
            let update = matches!(op, WriteOp::Update { .. }).then_some(changes);
            if version
                .as_deref()
                .is_some_and(|v| mapping::is_stale(kind, v, raw, update))
            {
                return Err(ConnectorError::Conflict { id: id.clone() });
            }
            Ok(Some(raw))
        }
    }
}
