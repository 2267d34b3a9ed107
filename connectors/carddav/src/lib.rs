//! Tandem connector for CardDAV address books (`type = "carddav"`): contacts as vCards.
//!
//! Settings: `url` (the address book collection, `http://`), `username` and `password`
//! (HTTP basic auth; both or neither). Only [`EntityKind::Contact`].
//!
//! **Reads** use RFC 6578 `sync-collection` with the stored sync token as the cursor: no
//! cursor (or a token the server rejects, 403 or 412) is a full listing
//! ([`Listing::Full`]); otherwise the changes since the token, deleted cards as
//! tombstones. Changed cards are fetched with `addressbook-multiget` in batches of
//! [`MULTIGET_BATCH`]. One read returns one page.
//!
//! **A card that cannot be parsed** is skipped with a warning naming its href and the
//! reason (R17), kept in [`CarddavConnector::skipped`], and retried on the next read (its
//! id stays in the cursor). Because a skipped card is not in the page, a full listing
//! with a skipped card is reported as [`Listing::Changes`] (no delete may be inferred
//! from it, R16) and the next read is a full listing again, until every card parses.
//!
//! **Writes**: creates `PUT <uuid>.vcf` with `If-None-Match: *` (a new vCard 3.0 with
//! `UID` = the uuid); updates read the card, apply the changed fields to it (every other
//! property survives, see [`mapping`]) and `PUT` it back with `If-Match`; deletes send
//! `If-Match` too. A stale version, or a 412, is [`ConnectorError::Conflict`]. The record
//! id is the card's member name in the book (`<uuid>.vcf`), its version the ETag.

mod dav;
pub mod mapping;
#[cfg(feature = "testsupport")]
pub mod testsupport;
pub mod vcard;

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Listing, Page,
    WriteOp, WriteOutcome, Written, parse_settings,
};
use tandem_model::{EntityKind, Record, field};

use crate::dav::{Dav, Fetched, SyncError};
use crate::vcard::Card;

/// Cards per `addressbook-multiget`.
pub const MULTIGET_BATCH: usize = 100;
/// Ops per `write` call.
pub const MAX_BATCH: usize = 50;

/// A password: never shown by `Debug` or in messages.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
}

/// Builds [`CarddavConnector`]s for `type = "carddav"`.
#[derive(Debug, Default)]
pub struct CarddavConnectorFactory;

impl ConnectorFactory for CarddavConnectorFactory {
    fn type_name(&self) -> &'static str {
        "carddav"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        _context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(CarddavConnector::from_settings(settings)?))
    }
}

/// What the cursor holds: the sync token, the cards to fetch again (skipped last time),
/// and whether the next read must be a full listing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    token: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retry: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    rescan: bool,
}

/// A CardDAV address book.
#[derive(Debug)]
pub struct CarddavConnector {
    dav: Dav,
    skipped: Mutex<Vec<(String, String)>>,
}

impl CarddavConnector {
    /// The record of a fetched card; a card that cannot be parsed is logged with its
    /// href and returned as (href, why), for the caller to skip.
    fn card_record(
        &self,
        kind: EntityKind,
        id: &str,
        etag: String,
        data: &str,
    ) -> Result<Record, (String, String)> {
        match Card::parse(data) {
            Ok(card) => {
                let mut record = Record::new(kind, id, mapping::to_fields(&card));
                record.version = Some(etag);
                Ok(record)
            }
            Err(why) => {
                let href = self.dav.member_url(id);
                tracing::warn!(%href, %why, "skipped a card that cannot be parsed");
                Err((href, why))
            }
        }
    }

    pub fn from_settings(settings: serde_json::Value) -> Result<CarddavConnector, ConnectorError> {
        let s: Settings = parse_settings(settings)?;
        if s.password.is_some() && s.username.is_none() {
            return Err(ConnectorError::config(
                "password is set but username is not",
            ));
        }
        Ok(CarddavConnector {
            dav: Dav::new(&s.url, s.username, s.password)?,
            skipped: Mutex::new(Vec::new()),
        })
    }

    /// The cards the last read skipped: (href, why).
    pub fn skipped(&self) -> Vec<(String, String)> {
        self.skipped.lock().expect("not poisoned").clone()
    }

    fn only_contacts(kind: EntityKind) -> Result<(), ConnectorError> {
        if kind == EntityKind::Contact {
            Ok(())
        } else {
            Err(ConnectorError::config(format!(
                "a CardDAV address book holds contacts only, not {}",
                kind.plural()
            )))
        }
    }

    async fn get(&self, id: &str) -> Result<(String, Card), ConnectorError> {
        let url = self.dav.member_url(id);
        let a = self.dav.request("GET", &url, &[], None).await?;
        match a.status.as_u16() {
            200 => {}
            404 | 410 => return Err(ConnectorError::NotFound { id: id.into() }),
            _ => {
                return Err(ConnectorError::fatal(format!(
                    "GET {url}: unexpected {}",
                    a.status
                )));
            }
        }
        let etag = a
            .etag
            .ok_or_else(|| ConnectorError::fatal(format!("GET {url}: no ETag")))?;
        let card = Card::parse(&a.body).map_err(|e| {
            ConnectorError::invalid(Some(id), format!("{url} is not a readable vCard: {e}"))
        })?;
        Ok((etag, card))
    }

    async fn put(
        &self,
        id: &str,
        card: &Card,
        precondition: (&str, &str),
    ) -> Result<Written, ConnectorError> {
        let url = self.dav.member_url(id);
        let a = self
            .dav
            .request(
                "PUT",
                &url,
                &[precondition, ("Content-Type", "text/vcard; charset=utf-8")],
                Some(card.to_text()),
            )
            .await?;
        match a.status.as_u16() {
            200 | 201 | 204 => {}
            412 => return Err(ConnectorError::Conflict { id: id.into() }),
            403 => {
                return Err(ConnectorError::Auth {
                    message: format!("PUT {url}: 403 Forbidden"),
                });
            }
            _ => {
                return Err(ConnectorError::invalid(
                    Some(id),
                    format!("PUT {url}: the server refused the card: {}", a.status),
                ));
            }
        }
        // Servers may re-serialise the card; the ETag they report is what a read shows.
        let version = match a.etag {
            Some(e) => e,
            None => self.get(id).await?.0,
        };
        Ok(Written {
            id: id.into(),
            version: Some(version),
            modified_at: None,
        })
    }

    async fn write_one(&self, op: WriteOp) -> WriteOutcome {
        let check_names = |names: &mut dyn Iterator<Item = &str>, id: Option<&str>| {
            for n in names {
                if !field::is_canonical_for(EntityKind::Contact, n) && !field::is_extra(n) {
                    return Err(ConnectorError::invalid(
                        id,
                        format!("`{n}` is not a contact field (nor an x_ extra)"),
                    ));
                }
            }
            Ok(())
        };
        match op {
            WriteOp::Create { fields } => {
                check_names(&mut fields.iter().map(|(n, _)| n.as_str()), None)?;
                let uid = new_uuid();
                let id = format!("{uid}.vcf");
                let card = mapping::new_card(&uid, &fields);
                self.put(&id, &card, ("If-None-Match", "*")).await
            }
            WriteOp::Update {
                id,
                version,
                changes,
            } => {
                check_names(&mut changes.keys().map(|n| n.as_str()), Some(&id))?;
                let (etag, mut card) = self.get(&id).await?;
                if version.as_ref().is_some_and(|v| *v != etag) {
                    return Err(ConnectorError::Conflict { id });
                }
                mapping::apply(&mut card, &changes);
                self.put(&id, &card, ("If-Match", &etag)).await
            }
            WriteOp::Delete { id, version } => {
                let url = self.dav.member_url(&id);
                let headers: Vec<(&str, &str)> = version
                    .as_deref()
                    .map(|v| vec![("If-Match", v)])
                    .unwrap_or_default();
                let a = self.dav.request("DELETE", &url, &headers, None).await?;
                match a.status.as_u16() {
                    200 | 204 => Ok(Written {
                        id,
                        version: None,
                        modified_at: None,
                    }),
                    404 | 410 => Err(ConnectorError::NotFound { id }),
                    412 => Err(ConnectorError::Conflict { id }),
                    _ => Err(ConnectorError::fatal(format!(
                        "DELETE {url}: unexpected {}",
                        a.status
                    ))),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Connector for CarddavConnector {
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
        self.dav.check().await
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        Self::only_contacts(kind)?;
        let state: Option<State> = cursor.and_then(|c| serde_json::from_str(&c.0).ok());
        if cursor.is_some() && state.is_none() {
            tracing::warn!(url = %self.dav.url, "unreadable cursor: reading a full listing");
        }
        let previous = state.filter(|s| !s.rescan && !s.token.is_empty());
        let (sync, full, retry) = match &previous {
            None => (self.sync(None).await?, true, Vec::new()),
            Some(s) => match self.dav.sync(Some(&s.token)).await {
                Ok(sync) => (sync, false, s.retry.clone()),
                Err(SyncError::TokenRejected) => {
                    tracing::info!(url = %self.dav.url, "sync token rejected: reading a full listing");
                    (self.sync(None).await?, true, Vec::new())
                }
                Err(SyncError::Other(e)) => return Err(e),
            },
        };
        let mut wanted: Vec<String> = Vec::new();
        for id in sync.changed.iter().chain(&retry) {
            if !wanted.contains(id) && !sync.removed.contains(id) {
                wanted.push(id.clone());
            }
        }
        let mut records = Vec::new();
        let mut skipped = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for batch in wanted.chunks(MULTIGET_BATCH) {
            for (id, fetched) in self.dav.multiget(batch).await? {
                if !seen.insert(id.clone()) {
                    continue;
                }
                match fetched {
                    Fetched::Card { etag, data } => {
                        match self.card_record(kind, &id, etag, &data) {
                            Ok(record) => records.push(record),
                            Err(skip) => {
                                skipped.push(skip);
                                // Retried next read.
                                seen.insert(id);
                            }
                        }
                    }
                    // Deleted between the listing and the fetch.
                    Fetched::Missing if !full => records.push(Record::tombstone(kind, &id)),
                    Fetched::Missing => {}
                }
            }
        }
        if !full {
            for id in &sync.removed {
                if seen.insert(id.clone()) {
                    records.push(Record::tombstone(kind, id));
                }
            }
        }
        let retry: Vec<String> = skipped
            .iter()
            .filter_map(|(href, _)| href.rsplit('/').next().map(dav::decode))
            .collect();
        let rescan = full && !skipped.is_empty();
        *self.skipped.lock().expect("not poisoned") = skipped;
        let next = State {
            token: sync.token,
            retry,
            rescan,
        };
        Ok(Page {
            records,
            listing: if full && !rescan {
                Listing::Full
            } else {
                Listing::Changes
            },
            cursor: Some(Cursor(serde_json::to_string(&next).expect("serialisable"))),
            has_more: false,
        })
    }

    /// `addressbook-multiget` of the cards the ids name, [`MULTIGET_BATCH`] at a time.
    /// A card the server does not have (404) is left out; so is one that cannot be
    /// parsed (with a warning, as `read` skips it).
    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        Self::only_contacts(kind)?;
        let mut wanted: Vec<String> = Vec::with_capacity(ids.len());
        let mut asked = std::collections::HashSet::new();
        for id in ids {
            // A member name is one path segment; anything else is no card of this book.
            if !id.is_empty() && !id.contains('/') && asked.insert(*id) {
                wanted.push((*id).to_owned());
            }
        }
        let mut records = Vec::with_capacity(wanted.len());
        let mut seen = std::collections::HashSet::new();
        for batch in wanted.chunks(MULTIGET_BATCH) {
            for (id, fetched) in self.dav.multiget(batch).await? {
                if !asked.contains(id.as_str()) || !seen.insert(id.clone()) {
                    continue;
                }
                if let Fetched::Card { etag, data } = fetched
                    && let Ok(record) = self.card_record(kind, &id, etag, &data)
                {
                    records.push(record);
                }
            }
        }
        Ok(records)
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
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(self.write_one(op).await);
        }
        Ok(out)
    }
}

impl CarddavConnector {
    async fn sync(&self, token: Option<&str>) -> Result<dav::Sync, ConnectorError> {
        match self.dav.sync(token).await {
            Ok(s) => Ok(s),
            Err(SyncError::TokenRejected) => Err(ConnectorError::fatal(format!(
                "REPORT sync-collection {}: the server refused a full listing",
                self.dav.url
            ))),
            Err(SyncError::Other(e)) => Err(e),
        }
    }
}

/// A random (version 4) UUID, from the standard library's per-process random keys, the
/// clock and a counter.
fn new_uuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_the_password_never_shows() {
        let c = CarddavConnector::from_settings(serde_json::json!({
            "url": "http://127.0.0.1:1/u/book", "username": "u", "password": "s3cret"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = CarddavConnector::from_settings(serde_json::json!({"url": "http://x/", "urll": 1}))
            .unwrap_err();
        assert!(e.to_string().contains("urll"), "{e}");
        let e =
            CarddavConnector::from_settings(serde_json::json!({"url": "https://x/"})).unwrap_err();
        assert!(matches!(e, ConnectorError::Config { .. }));
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uuid());
    }
}
