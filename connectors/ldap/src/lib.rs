//! Tandem connector for LDAP directories (`type = "ldap"`): contacts as `inetOrgPerson`
//! (persons) and `organization` or `organizationalUnit` (companies) entries under a
//! base DN. See docs/connectors/ldap.md for every setting.
//!
//! **Ids and versions.** A record's id is the entry's `entryUUID` (it survives
//! renames), its version the entry's `entryCSN`, its `modified_at` the
//! `modifyTimestamp`.
//!
//! **Reads** use RFC 4533 content synchronisation in refreshOnly mode where the server
//! offers it (OpenLDAP's syncprov overlay): without a cursor, the whole content (a
//! [`Listing::Full`]); with one, the entries added or changed since the cookie it holds
//! and the deleted ones as tombstones ([`Listing::Changes`]). When the server answers
//! with the present phase instead (no session log covering the cookie) or says the
//! cookie is too old, the read is a full listing again. A server without content
//! synchronisation is listed whole with paged results (RFC 2696) on every read.
//! One read returns one page.
//!
//! **Writes**: creates add an entry named by the configured RDN attribute under
//! `persons_dn` or `companies_dn`; updates are modify operations with only the
//! attributes of the changed fields (and a rename when the RDN's attribute changes);
//! an update or delete with a version carries an assertion control (RFC 4528)
//! `(entryCSN=<version>)`, so that an entry changed since it was read is a
//! [`ConnectorError::Conflict`]. The version after a write comes from a post-read
//! control (RFC 4527).

mod conn;
pub mod mapping;
mod settings;
#[cfg(feature = "testsupport")]
pub mod testsupport;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::controls::{
    Assertion, ControlType, EntryState, PostRead, PostReadResp, RawControl, RefreshMode, SyncDone,
    SyncInfo, SyncRequest, SyncState,
};
use ldap3::{Ldap, LdapResult, Mod, ResultEntry, Scope, SearchEntry};
use serde::{Deserialize, Serialize};
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Listing, Page,
    WriteOp, WriteOutcome, Written,
};
use tandem_model::{EntityKind, Record};

use crate::conn::{Conn, rc};
use crate::mapping::{ENTRY_CSN, ENTRY_UUID, Entry, Mapping, ModKind};
pub use crate::settings::{Settings, SyncMode};

/// Ops per `write` call.
pub const MAX_BATCH: usize = 50;
/// Ids per search of `read_ids`.
const IDS_PER_SEARCH: usize = 100;

const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";

/// Builds [`LdapConnector`]s for `type = "ldap"`.
#[derive(Debug, Default)]
pub struct LdapConnectorFactory;

impl ConnectorFactory for LdapConnectorFactory {
    fn type_name(&self) -> &'static str {
        "ldap"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(LdapConnector::from_settings_in(
            settings, context,
        )?))
    }
}

/// What the cursor holds: the RFC 4533 cookie (hex), none on servers without it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
}

/// An LDAP directory.
#[derive(Debug)]
pub struct LdapConnector {
    conn: Conn,
    mapping: Mapping,
    base_dn: String,
    filter: String,
    sync: SyncMode,
    page_size: i32,
    /// Learnt at the first read in `auto` mode: whether the server synchronises.
    syncs: Mutex<Option<bool>>,
}

/// What one content synchronisation search brought.
#[derive(Debug, Default)]
struct Refresh {
    records: Vec<Record>,
    deleted: Vec<String>,
    /// The server went through the present phase: what it did not name is deleted.
    present_phase: bool,
    cookie: Option<Vec<u8>>,
}

enum SyncAnswer {
    Done(Refresh),
    /// The server does not offer content synchronisation for the base DN.
    Unsupported,
    /// The cookie is too old (e-syncRefreshRequired).
    RefreshRequired,
}

impl LdapConnector {
    /// A connector from its settings; a relative `ca_file` is taken from the current
    /// folder (the factory resolves it against the config file's folder).
    pub fn from_settings(settings: serde_json::Value) -> Result<LdapConnector, ConnectorError> {
        let here = BuildContext {
            base_dir: std::env::current_dir().unwrap_or_default(),
        };
        Self::from_settings_in(settings, &here)
    }

    pub fn from_settings_in(
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<LdapConnector, ConnectorError> {
        let s = Settings::parse(settings, context)?;
        let naming = s.company_naming();
        let classes = if naming == "o" {
            "(objectClass=organization)"
        } else {
            "(objectClass=organizationalUnit)"
        };
        let base_filter = format!("(|(objectClass=inetOrgPerson){classes})");
        let filter = match &s.filter {
            Some(extra) => {
                let extra = extra.trim();
                let extra = if extra.starts_with('(') {
                    extra.to_owned()
                } else {
                    format!("({extra})")
                };
                ldap3::parse_filter(&extra).map_err(|_| {
                    ConnectorError::config(format!(
                        "`filter`: `{extra}` is no LDAP filter (RFC 4515)"
                    ))
                })?;
                format!("(&{base_filter}{extra})")
            }
            None => base_filter,
        };
        Ok(LdapConnector {
            conn: Conn::new(&s)?,
            mapping: Mapping::new(&s),
            base_dn: s.base_dn.clone(),
            filter,
            sync: s.sync,
            page_size: s.page_size,
            syncs: Mutex::new(match s.sync {
                SyncMode::Paged => Some(false),
                SyncMode::Syncrepl => Some(true),
                SyncMode::Auto => None,
            }),
        })
    }

    /// Whether the last reads found RFC 4533 content synchronisation (`None` before the
    /// first read in `auto` mode).
    pub fn synchronises(&self) -> Option<bool> {
        *self.syncs.lock().expect("not poisoned")
    }

    fn only_contacts(kind: EntityKind) -> Result<(), ConnectorError> {
        if kind == EntityKind::Contact {
            Ok(())
        } else {
            Err(ConnectorError::config(format!(
                "an LDAP directory holds contacts only, not {}",
                kind.plural()
            )))
        }
    }

    /// Runs `op` on a connection; a transient failure drops the connection, so that the
    /// next call connects again.
    async fn ldap(&self) -> Result<Ldap, ConnectorError> {
        self.conn.ldap().await
    }

    async fn on_error(&self, e: &ConnectorError) {
        if e.is_retryable() {
            self.conn.reset().await;
        }
    }

    fn record_of(&self, entry: &Entry) -> Option<Record> {
        if entry.dn.eq_ignore_ascii_case(&self.base_dn) {
            return None;
        }
        self.mapping.to_record(entry)
    }

    /// One RFC 4533 refreshOnly search from `cookie`.
    async fn sync_search(&self, cookie: Option<Vec<u8>>) -> Result<SyncAnswer, ConnectorError> {
        let mut ldap = self.ldap().await?;
        let mut control: RawControl = SyncRequest {
            mode: RefreshMode::RefreshOnly,
            cookie,
            reload_hint: false,
        }
        .into();
        control.crit = true;
        let attrs = self.mapping.read_attributes();
        let what = format!("content synchronisation of {}", self.base_dn);
        let mut stream = ldap
            .with_controls(vec![control])
            .with_timeout(self.conn.timeout * 10)
            .streaming_search(&self.base_dn, Scope::Subtree, &self.filter, attrs)
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        let mut refresh = Refresh::default();
        loop {
            let entry = match stream.next().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => return Err(self.conn.error(e, &what)),
            };
            if entry.is_ref() {
                continue;
            }
            if entry.is_intermediate() {
                match parse_guarded("a Sync Info message", || {
                    ldap3::controls::parse_syncinfo(entry)
                })? {
                    SyncInfo::NewCookie(c) => refresh.cookie = Some(c),
                    SyncInfo::RefreshDelete { cookie, .. } => {
                        refresh.cookie = cookie.or(refresh.cookie.take());
                    }
                    SyncInfo::RefreshPresent { cookie, .. } => {
                        refresh.present_phase = true;
                        refresh.cookie = cookie.or(refresh.cookie.take());
                    }
                    SyncInfo::SyncIdSet {
                        cookie,
                        refresh_deletes,
                        sync_uuids,
                    } => {
                        if refresh_deletes {
                            refresh
                                .deleted
                                .extend(sync_uuids.iter().map(|u| uuid_text(u)));
                        } else {
                            refresh.present_phase = true;
                        }
                        refresh.cookie = cookie.or(refresh.cookie.take());
                    }
                }
                continue;
            }
            // No Sync State: the server ignores the control (no Sync Done follows).
            let Some(state) = sync_state(&entry)? else {
                continue;
            };
            let entry = parse_guarded("a search entry", || SearchEntry::construct(entry))?;
            match state.state {
                EntryState::Present => refresh.present_phase = true,
                EntryState::Delete => refresh.deleted.push(uuid_text(&state.entry_uuid)),
                EntryState::Add | EntryState::Modify => {
                    if let Some(c) = state.cookie {
                        refresh.cookie = Some(c);
                    }
                    let entry = Entry::new(entry.dn, entry.attrs);
                    if let Some(record) = self.record_of(&entry) {
                        refresh.records.push(record);
                    }
                }
            }
        }
        let result = stream.finish().await;
        match result.rc {
            rc::SUCCESS => {}
            rc::UNAVAILABLE_CRITICAL_EXTENSION => return Ok(SyncAnswer::Unsupported),
            rc::SYNC_REFRESH_REQUIRED => return Ok(SyncAnswer::RefreshRequired),
            _ => return Err(self.conn.result_error(&result, None, &what)),
        }
        let done = result
            .ctrls
            .iter()
            .find(|c| c.1.ctype == SYNC_DONE_OID)
            .map(|c| parse_guarded("a Sync Done control", || c.1.parse::<SyncDone>()))
            .transpose()?;
        let Some(done) = done else {
            // Entries without Sync State controls and no Sync Done: the control was
            // ignored (syncprov not on this database).
            return Ok(SyncAnswer::Unsupported);
        };
        if done.cookie.is_some() {
            refresh.cookie = done.cookie;
        }
        Ok(SyncAnswer::Done(refresh))
    }

    /// A full listing with paged results.
    async fn paged_listing(&self) -> Result<Vec<Record>, ConnectorError> {
        let mut ldap = self.ldap().await?;
        let attrs = self.mapping.read_attributes();
        let what = format!("listing {}", self.base_dn);
        let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(self.page_size)),
        ];
        let mut stream = ldap
            .with_timeout(self.conn.timeout * 10)
            .streaming_search_with(adapters, &self.base_dn, Scope::Subtree, &self.filter, attrs)
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        let mut records = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(entry)) => {
                    let e = parse_guarded("a search entry", || SearchEntry::construct(entry))?;
                    if let Some(r) = self.record_of(&Entry::new(e.dn, e.attrs)) {
                        records.push(r);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.conn.error(e, &what)),
            }
        }
        let result = stream.finish().await;
        if result.rc != rc::SUCCESS {
            return Err(self.conn.result_error(&result, None, &what));
        }
        Ok(records)
    }

    async fn read_page(&self, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let state: State = match cursor {
            Some(c) => serde_json::from_str(&c.0).unwrap_or_default(),
            None => State::default(),
        };
        let syncs = *self.syncs.lock().expect("not poisoned");
        if syncs != Some(false) {
            let cookie = state.cookie.as_deref().and_then(from_hex);
            let mut answer = self.sync_search(cookie.clone()).await?;
            let mut from_scratch = cookie.is_none();
            let redo = match &answer {
                SyncAnswer::RefreshRequired => true,
                SyncAnswer::Done(r) => !from_scratch && r.present_phase,
                SyncAnswer::Unsupported => false,
            };
            if redo {
                tracing::info!(base_dn = %self.base_dn, "the directory cannot send the changes since the cursor; reading everything");
                answer = self.sync_search(None).await?;
                from_scratch = true;
            }
            match answer {
                SyncAnswer::Done(refresh) => {
                    *self.syncs.lock().expect("not poisoned") = Some(true);
                    let mut records = refresh.records;
                    let mut seen: HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
                    if !from_scratch {
                        for id in refresh.deleted {
                            if seen.insert(id.clone()) {
                                records.push(Record::tombstone(EntityKind::Contact, id));
                            }
                        }
                    }
                    let next = State {
                        cookie: refresh.cookie.as_deref().map(to_hex).or(state.cookie),
                    };
                    return Ok(Page {
                        records,
                        listing: if from_scratch {
                            Listing::Full
                        } else {
                            Listing::Changes
                        },
                        cursor: Some(Cursor(serde_json::to_string(&next).expect("serialisable"))),
                        has_more: false,
                    });
                }
                SyncAnswer::Unsupported | SyncAnswer::RefreshRequired => {
                    if self.sync == SyncMode::Syncrepl {
                        return Err(ConnectorError::config(format!(
                            "{} offers no content synchronisation (RFC 4533) for {}: add the syncprov overlay to its database, or set `sync = \"auto\"` or \"paged\"",
                            self.conn_url(),
                            self.base_dn
                        )));
                    }
                    tracing::info!(base_dn = %self.base_dn, "no content synchronisation (syncprov) on the directory; full listings with paged results");
                    *self.syncs.lock().expect("not poisoned") = Some(false);
                }
            }
        }
        let records = self.paged_listing().await?;
        Ok(Page {
            records,
            listing: Listing::Full,
            cursor: Some(Cursor(
                serde_json::to_string(&State::default()).expect("serialisable"),
            )),
            has_more: false,
        })
    }

    fn conn_url(&self) -> String {
        self.conn.describe()
    }

    /// The entry of record `id` (an entryUUID), with what a write needs; `None` when
    /// there is no such entry under the base DN.
    async fn entry_of(&self, id: &str) -> Result<Option<Entry>, ConnectorError> {
        if !is_uuid(id) {
            return Ok(None);
        }
        let mut ldap = self.ldap().await?;
        let filter = format!(
            "(&{}({ENTRY_UUID}={}))",
            self.filter,
            ldap3::ldap_escape(id)
        );
        let what = format!("looking up entry {id} under {}", self.base_dn);
        let result = ldap
            .search(
                &self.base_dn,
                Scope::Subtree,
                &filter,
                self.mapping.read_attributes(),
            )
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        if result.1.rc != rc::SUCCESS {
            return Err(self.conn.result_error(&result.1, Some(id), &what));
        }
        match result.0.into_iter().next() {
            Some(entry) => {
                let e = parse_guarded("a search entry", || SearchEntry::construct(entry))?;
                Ok(Some(Entry::new(e.dn, e.attrs)))
            }
            None => Ok(None),
        }
    }

    async fn write_one(&self, op: WriteOp) -> WriteOutcome {
        let outcome = match op {
            WriteOp::Create { fields, .. } => self.create(&fields).await,
            WriteOp::Update {
                id,
                version,
                changes,
            } => self.update(&id, version.as_deref(), &changes).await,
            WriteOp::Delete { id, version } => self.delete(&id, version.as_deref()).await,
        };
        if let Err(e) = &outcome {
            self.on_error(e).await;
        }
        outcome
    }

    async fn create(&self, fields: &tandem_model::Fields) -> WriteOutcome {
        let (dn, attrs) = self.mapping.new_entry(fields)?;
        let mut ldap = self.ldap().await?;
        let what = format!("adding {dn}");
        let result = ldap
            .with_controls(vec![post_read()])
            .add(&dn, attrs.into_iter().collect())
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        if result.rc == rc::ENTRY_ALREADY_EXISTS {
            return Err(ConnectorError::invalid(
                None,
                format!(
                    "{dn} exists already: another entry has this RDN; change the value or set `person_rdn`/`company_rdn` to an attribute that is unique"
                ),
            ));
        }
        if result.rc != rc::SUCCESS {
            return Err(self.conn.result_error(&result, None, &what));
        }
        self.written(&result, &dn, None).await
    }

    /// What a write left: id and version from the post-read control, else read back.
    async fn written(&self, result: &LdapResult, dn: &str, id: Option<&str>) -> WriteOutcome {
        if let Some(post) = result
            .ctrls
            .iter()
            .find(|c| matches!(c.0, Some(ControlType::PostReadResp)))
        {
            let post = parse_guarded("a Post-Read control", || post.1.parse::<PostReadResp>())?;
            let entry = Entry::new(dn.to_owned(), post.attrs);
            if let Some(uuid) = entry.uuid() {
                return Ok(Written {
                    id: uuid,
                    version: entry.first(ENTRY_CSN).map(str::to_owned),
                    modified_at: entry
                        .first(mapping::MODIFY_TIMESTAMP)
                        .and_then(mapping::generalized_time),
                });
            }
        }
        // No post-read support: read the entry back.
        let mut ldap = self.ldap().await?;
        let what = format!("reading {dn} back");
        let attrs = vec![ENTRY_UUID, ENTRY_CSN, mapping::MODIFY_TIMESTAMP];
        let found = ldap
            .search(dn, Scope::Base, "(objectClass=*)", attrs)
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        let entry = found
            .0
            .into_iter()
            .next()
            .map(|e| {
                parse_guarded("a search entry", || SearchEntry::construct(e))
                    .map(|e| Entry::new(e.dn, e.attrs))
            })
            .transpose()?
            .ok_or_else(|| ConnectorError::transient(format!("{what}: the entry is gone")))?;
        Ok(Written {
            id: entry
                .uuid()
                .or(id.map(str::to_owned))
                .ok_or_else(|| ConnectorError::fatal(format!("{dn} has no entryUUID")))?,
            version: entry.first(ENTRY_CSN).map(str::to_owned),
            modified_at: entry
                .first(mapping::MODIFY_TIMESTAMP)
                .and_then(mapping::generalized_time),
        })
    }

    async fn update(
        &self,
        id: &str,
        version: Option<&str>,
        changes: &tandem_connector::Changes,
    ) -> WriteOutcome {
        let entry = self
            .entry_of(id)
            .await?
            .ok_or_else(|| ConnectorError::NotFound { id: id.to_owned() })?;
        if let Some(v) = version
            && entry.first(ENTRY_CSN).is_some_and(|csn| csn != v)
        {
            return Err(ConnectorError::Conflict { id: id.to_owned() });
        }
        let update = self.mapping.changes(id, &entry, changes)?;
        let mut ldap = self.ldap().await?;
        let mut dn = entry.dn.clone();
        let mut last: Option<LdapResult> = None;
        if !update.mods.is_empty() {
            let mods: Vec<Mod<String>> = update
                .mods
                .into_iter()
                .map(|(a, values, kind)| match kind {
                    ModKind::Replace => Mod::Replace(a, values),
                    ModKind::Add => Mod::Add(a, values),
                })
                .collect();
            let mut controls = vec![post_read()];
            if let Some(v) = version {
                controls.push(assertion(v));
            }
            let what = format!("modifying {dn}");
            let result = ldap
                .with_controls(controls)
                .modify(&dn, mods)
                .await
                .map_err(|e| self.conn.error(e, &what))?;
            if result.rc != rc::SUCCESS {
                return Err(self.conn.result_error(&result, Some(id), &what));
            }
            last = Some(result);
        }
        if let Some(new_rdn) = update.new_rdn {
            let mut controls = vec![post_read()];
            if let (Some(v), None) = (version, &last) {
                controls.push(assertion(v));
            }
            let what = format!("renaming {dn} to {new_rdn}");
            let result = ldap
                .with_controls(controls)
                .modifydn(&dn, &new_rdn, true, None)
                .await
                .map_err(|e| self.conn.error(e, &what))?;
            if result.rc != rc::SUCCESS {
                return Err(self.conn.result_error(&result, Some(id), &what));
            }
            dn = match dn.split_once(',') {
                Some((_, parent)) => format!("{new_rdn},{parent}"),
                None => new_rdn,
            };
            last = Some(result);
        }
        match last {
            Some(result) => self.written(&result, &dn, Some(id)).await,
            None => Ok(Written {
                id: id.to_owned(),
                version: entry.first(ENTRY_CSN).map(str::to_owned),
                modified_at: entry
                    .first(mapping::MODIFY_TIMESTAMP)
                    .and_then(mapping::generalized_time),
            }),
        }
    }

    async fn delete(&self, id: &str, version: Option<&str>) -> WriteOutcome {
        let entry = self
            .entry_of(id)
            .await?
            .ok_or_else(|| ConnectorError::NotFound { id: id.to_owned() })?;
        let mut ldap = self.ldap().await?;
        let what = format!("deleting {}", entry.dn);
        let controls: Vec<RawControl> = version.map(assertion).into_iter().collect();
        let result = ldap
            .with_controls(controls)
            .delete(&entry.dn)
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        if result.rc != rc::SUCCESS {
            return Err(self.conn.result_error(&result, Some(id), &what));
        }
        Ok(Written {
            id: id.to_owned(),
            version: None,
            modified_at: None,
        })
    }
}

#[async_trait::async_trait]
impl Connector for LdapConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![EntityKind::Contact],
            incremental: self.sync != SyncMode::Paged,
            write: true,
            delete: true,
            max_batch: MAX_BATCH,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let mut ldap = self.ldap().await?;
        let what = format!("reading the base DN {}", self.base_dn);
        let result = ldap
            .search(&self.base_dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|e| self.conn.error(e, &what))?;
        match result.1.rc {
            rc::SUCCESS => Ok(()),
            rc::NO_SUCH_OBJECT => Err(ConnectorError::config(format!(
                "{}: the base DN {} does not exist; check `base_dn`",
                self.conn_url(),
                self.base_dn
            ))),
            _ => Err(self.conn.result_error(&result.1, None, &what)),
        }
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        Self::only_contacts(kind)?;
        let page = self.read_page(cursor).await;
        if let Err(e) = &page {
            self.on_error(e).await;
        }
        page
    }

    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        Self::only_contacts(kind)?;
        let mut wanted: Vec<String> = Vec::new();
        let mut asked = HashSet::new();
        for id in ids {
            let id = id.to_ascii_lowercase();
            if is_uuid(&id) && asked.insert(id.clone()) {
                wanted.push(id);
            }
        }
        let mut found: HashMap<String, Record> = HashMap::new();
        for chunk in wanted.chunks(IDS_PER_SEARCH) {
            let mut ldap = self.ldap().await?;
            let any: String = chunk
                .iter()
                .map(|id| format!("({ENTRY_UUID}={})", ldap3::ldap_escape(id.as_str())))
                .collect();
            let filter = format!("(&{}(|{any}))", self.filter);
            let what = format!(
                "reading {} entries by id under {}",
                chunk.len(),
                self.base_dn
            );
            let result = ldap
                .search(
                    &self.base_dn,
                    Scope::Subtree,
                    &filter,
                    self.mapping.read_attributes(),
                )
                .await
                .map_err(|e| self.conn.error(e, &what))?;
            if result.1.rc != rc::SUCCESS {
                return Err(self.conn.result_error(&result.1, None, &what));
            }
            for entry in result.0 {
                let e = parse_guarded("a search entry", || SearchEntry::construct(entry))?;
                if let Some(r) = self.record_of(&Entry::new(e.dn, e.attrs)) {
                    found.insert(r.id.clone(), r);
                }
            }
        }
        Ok(wanted.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        Self::only_contacts(kind)?;
        if ops.len() > MAX_BATCH {
            return Err(ConnectorError::config(format!(
                "{} ops in one write; at most {MAX_BATCH}",
                ops.len()
            )));
        }
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(self.write_one(op).await);
        }
        Ok(outcomes)
    }
}

/// The RFC 4528 assertion that the entry is still at `version`.
fn assertion(version: &str) -> RawControl {
    let mut control = Assertion::new(format!("({ENTRY_CSN}={})", ldap3::ldap_escape(version)));
    control.crit = true;
    control
}

/// The RFC 4527 post-read of what the version of a written entry is.
fn post_read() -> RawControl {
    PostRead::new(vec![ENTRY_UUID, ENTRY_CSN, mapping::MODIFY_TIMESTAMP])
}

fn sync_state(entry: &ResultEntry) -> Result<Option<SyncState>, ConnectorError> {
    entry
        .1
        .iter()
        .find(|c| c.1.ctype == SYNC_STATE_OID)
        .map(|c| parse_guarded("a Sync State control", || c.1.parse::<SyncState>()))
        .transpose()
}

/// ldap3's parsers of server messages panic on malformed input; a malformed message is
/// an error of the read, not a crash.
fn parse_guarded<T>(what: &str, parse: impl FnOnce() -> T) -> Result<T, ConnectorError> {
    std::panic::catch_unwind(AssertUnwindSafe(parse)).map_err(|_| {
        ConnectorError::fatal(format!("the LDAP server sent {what} that cannot be parsed"))
    })
}

/// A 16-byte UUID in its text form, as `entryUUID` shows it.
fn uuid_text(bytes: &[u8]) -> String {
    if bytes.len() != 16 {
        return to_hex(bytes);
    }
    let h = to_hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_cookies_keep_their_form() {
        let bytes: Vec<u8> = (0..16).collect();
        assert_eq!(uuid_text(&bytes), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert!(is_uuid(&uuid_text(&bytes)));
        assert!(!is_uuid("cn=x,dc=y"));
        let cookie = b"rid=000,csn=20260101000000.000000Z#000000#000#000000".to_vec();
        assert_eq!(from_hex(&to_hex(&cookie)), Some(cookie));
    }
}
