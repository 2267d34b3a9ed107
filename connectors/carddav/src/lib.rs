//! Tandem connector for CardDAV address books (`type = "carddav"`): contacts as vCards.
//!
//! Settings: `url` (the address book collection, `https://` or `http://`), `username`
//! and `password` (HTTP basic auth, or HTTP Digest when the server asks for it) or
//! `token` (a bearer token), `max_concurrent_writes` (default 8), and the keys every
//! HTTP connector shares (`ca_file`, `connect_timeout`, `timeout` default 120 s,
//! `retry`, `max_requests_per_second`; see [`tandem_connector::http`]). Only
//! [`EntityKind::Contact`].
//!
//! **Reads** use RFC 6578 `sync-collection` with the stored sync token as the cursor: no
//! cursor (or a token the server rejects, 403 or 412) is a full listing
//! ([`Listing::Full`]); otherwise the changes since the token, deleted cards as
//! tombstones. A server without `sync-collection` (its `supported-report-set` does not
//! list it, it answers the report with 403 `supported-report` or 501, or without a sync
//! token) is listed with `PROPFIND` Depth 1 instead, and its changes are the members
//! whose ETag differs from the one the cursor keeps (see `read.rs`). Cards are fetched
//! with `addressbook-multiget` in batches of [`MULTIGET_BATCH`]. One read returns one
//! page.
//!
//! **Contact group cards** (`KIND:group`, `X-ADDRESSBOOKSERVER-KIND:group`) are no
//! contacts: reads pass over them (counted in [`CarddavConnector::groups_skipped`]),
//! so they are never matched, and an update of one is refused.
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
//! id is the card's member name in the book (`<uuid>.vcf`), its version the ETag. Up to
//! `max_concurrent_writes` ops of a batch are in flight at once. Every request is
//! retried on connection faults, timeouts, 429 and 5xx, and a retried write never
//! makes a second card nor reports its own first try as a conflict (see `write.rs`).

mod dav;
pub mod mapping;
mod read;
mod settings;
#[cfg(feature = "testsupport")]
pub mod testsupport;
pub mod vcard;
mod write;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Listing, Page,
    WriteOp, WriteOutcome,
};
use tandem_model::{EntityKind, Record};

use crate::dav::{Dav, Fetched};
use crate::settings::Settings;
use crate::vcard::Card;

/// Cards per `addressbook-multiget`: a full listing of 2,000 cards on Radicale takes
/// about 1.7 s in batches of 50, 1.3 s of 100 and 0.95 s of 250, and no less in larger
/// ones (docs/BENCHMARKS.md), which cost more when one is retried or split.
pub const MULTIGET_BATCH: usize = 250;
/// Ops per `write` call.
pub const MAX_BATCH: usize = 50;

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
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(CarddavConnector::from_settings_in(
            settings, context,
        )?))
    }
}

/// What the cursor holds: the sync token, the cards to fetch again (skipped last time),
/// whether the next read must be a full listing, and, on servers without
/// `sync-collection`, a short hash of every member's ETag at the last read.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    token: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retry: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    rescan: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etags: Option<BTreeMap<String, String>>,
}

/// How full listings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// RFC 6578 `sync-collection`, whose token then reads the changes.
    Sync,
    /// `PROPFIND` Depth 1, on servers without `sync-collection`.
    Propfind,
}

/// A CardDAV address book.
#[derive(Debug)]
pub struct CarddavConnector {
    dav: Dav,
    skipped: Mutex<Vec<(String, String)>>,
    groups: AtomicUsize,
    max_concurrent_writes: usize,
    /// Learnt from the server at the first full listing.
    mode: Mutex<Option<Mode>>,
}

impl CarddavConnector {
    /// The record of a fetched card (`None` for a contact group card); a card that
    /// cannot be parsed is logged with its href and returned as (href, why), for the
    /// caller to skip.
    fn card_record(
        &self,
        kind: EntityKind,
        id: &str,
        etag: String,
        data: &str,
    ) -> Result<Option<Record>, (String, String)> {
        match Card::parse(data) {
            // A contact group lists members; it is no contact to sync or match.
            Ok(card) if mapping::is_group(&card) => {
                tracing::debug!(href = %self.dav.member_url(id), "skipped a contact group card");
                Ok(None)
            }
            Ok(card) => {
                let mut record = Record::new(kind, id, mapping::to_fields(&card));
                record.version = Some(etag);
                Ok(Some(record))
            }
            Err(why) => {
                // The reason may quote a line of the card: the server's text.
                let why = self.dav.mask(&why);
                let href = self.dav.member_url(id);
                tracing::warn!(%href, %why, "skipped a card that cannot be parsed");
                Err((href, why))
            }
        }
    }

    /// A connector from its settings; a relative `ca_file` is taken from the current
    /// folder (the factory resolves it against the config file's folder).
    pub fn from_settings(settings: serde_json::Value) -> Result<CarddavConnector, ConnectorError> {
        let here = BuildContext {
            base_dir: std::env::current_dir().unwrap_or_default(),
        };
        Self::from_settings_in(settings, &here)
    }

    /// A connector from its settings, relative paths resolved by `context`.
    pub fn from_settings_in(
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<CarddavConnector, ConnectorError> {
        let s = Settings::parse(settings, context)?;
        Ok(CarddavConnector {
            dav: Dav::new(&s.url, s.http, s.auth)?,
            skipped: Mutex::new(Vec::new()),
            groups: AtomicUsize::new(0),
            max_concurrent_writes: s.max_concurrent_writes,
            mode: Mutex::new(None),
        })
    }

    /// The cards the last read skipped: (href, why).
    pub fn skipped(&self) -> Vec<(String, String)> {
        self.skipped.lock().expect("not poisoned").clone()
    }

    /// The contact group cards the last read passed over (they are no contacts).
    pub fn groups_skipped(&self) -> usize {
        self.groups.load(Ordering::Relaxed)
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

    /// `<uuid>.vcf`, as the connector names the cards it creates itself: the engine
    /// writes it down before the `PUT`, and finds the card by it after a crash (R18).
    fn new_id(&self, _kind: EntityKind) -> Option<String> {
        Some(format!("{}.vcf", new_uuid()))
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
        let listed = self.listing(cursor).await?;
        let removed: HashSet<&str> = listed.removed.iter().map(String::as_str).collect();
        let mut wanted: Vec<String> = Vec::new();
        let mut asked = HashSet::new();
        for id in listed.changed.iter().chain(&listed.retry) {
            if !removed.contains(id.as_str()) && asked.insert(id.as_str()) {
                wanted.push(id.clone());
            }
        }
        let full = listed.full;
        let mut got = self.fetch_records(kind, &wanted, full).await?;
        if !full {
            for id in &listed.removed {
                if got.seen.insert(id.clone()) {
                    got.records.push(Record::tombstone(kind, id));
                }
            }
        }
        let retry: Vec<String> = got
            .skipped
            .iter()
            .filter_map(|(href, _)| href.rsplit('/').next().map(dav::decode))
            .collect();
        let rescan = full && !got.skipped.is_empty();
        *self.skipped.lock().expect("not poisoned") = got.skipped;
        self.groups.store(got.groups, Ordering::Relaxed);
        if got.groups > 0 {
            tracing::info!(url = %self.dav.url, groups = got.groups, "passed over contact group cards (no contacts)");
        }
        let etags = listed.etags.map(|mut tags| {
            // What was fetched is newer than the listing; a card gone meanwhile is gone.
            for (id, etag) in got.etags {
                match etag {
                    Some(etag) => tags.insert(id, read::etag_tag(&etag)),
                    None => tags.remove(&id),
                };
            }
            tags
        });
        let next = State {
            token: listed.token,
            retry,
            rescan,
            etags,
        };
        Ok(Page {
            records: got.records,
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
        let mut asked = HashSet::new();
        for id in ids {
            // A member name is one path segment; anything else is no card of this book.
            if !id.is_empty() && !id.contains('/') && asked.insert(*id) {
                wanted.push((*id).to_owned());
            }
        }
        let mut records = Vec::with_capacity(wanted.len());
        let mut seen = HashSet::new();
        for (id, fetched) in self.fetch(&wanted).await? {
            if !asked.contains(id.as_str()) || !seen.insert(id.clone()) {
                continue;
            }
            if let Fetched::Card { etag, data } = fetched
                && let Ok(Some(record)) = self.card_record(kind, &id, etag, &data)
            {
                records.push(record);
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
        Ok(self.write_all(ops).await)
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
        for (settings, named) in [
            (serde_json::json!({"url": "ftp://x/"}), "`url`"),
            (
                serde_json::json!({"url": "https://u:s3cret@x/"}),
                "not in the URL",
            ),
            (
                serde_json::json!({"url": "https://x/", "password": "s3cret"}),
                "`username`",
            ),
            (
                serde_json::json!({"url": "https://x/", "username": "u", "token": "s3cret"}),
                "`token`",
            ),
            (
                serde_json::json!({"url": "https://x/", "max_concurrent_writes": 0}),
                "`max_concurrent_writes`",
            ),
        ] {
            let e = CarddavConnector::from_settings(settings).unwrap_err();
            assert!(matches!(e, ConnectorError::Config { .. }), "{e}");
            assert!(e.to_string().contains(named), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let c = CarddavConnector::from_settings(serde_json::json!({
            "url": "https://x/", "token": "s3cret", "retry": {"attempts": 2}, "timeout": "5m"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uuid());
    }
}
