//! Reads: what changed in the book since the cursor, and the cards themselves.
//!
//! Where the server has RFC 6578 `sync-collection`, its token is the cursor. Where it
//! has not (SabreDAV 1.8 lists no such report in its `supported-report-set` and
//! answers 403 `supported-report`; Calypso answers without a token), a full listing is
//! a `PROPFIND` Depth 1 of the members with their ETags, and the changes since a cursor
//! are the members whose ETag differs from the one the cursor keeps (a short hash of
//! it), new ones, and those gone (tombstones, from a listing that completed).
//!
//! Cards are fetched with `addressbook-multiget` in batches; a server that fails a
//! whole batch with 404 for one missing card is asked again for the cards it lists.

use std::collections::{BTreeMap, HashSet};

use tandem_connector::{ConnectorError, Cursor};
use tandem_model::{EntityKind, Record};

use crate::dav::{Fetched, Multiget, Reports, SyncError};
use crate::{CarddavConnector, MULTIGET_BATCH, Mode, State};

/// The members a read is about.
#[derive(Debug, Default)]
pub(crate) struct Listed {
    /// The sync token to resume from (empty without `sync-collection`).
    pub token: String,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Cards to fetch again (skipped last time).
    pub retry: Vec<String>,
    /// Every member is listed: nothing missing from it survives (R16).
    pub full: bool,
    /// Without `sync-collection`: the ETag tag of every member now.
    pub etags: Option<BTreeMap<String, String>>,
}

/// What one read fetched: the records, the cards skipped (href, why), every id
/// answered for, and the ETag each fetched card had (`None`: gone).
#[derive(Debug, Default)]
pub(crate) struct Fetch {
    pub records: Vec<Record>,
    pub skipped: Vec<(String, String)>,
    pub seen: HashSet<String>,
    pub etags: Vec<(String, Option<String>)>,
    /// Contact group cards passed over.
    pub groups: usize,
}

/// The short form of an ETag a cursor keeps: its 64-bit FNV-1a hash, so that a book
/// of thousands of cards keeps a cursor of a few bytes per card. A collision would
/// hide one change until the card changes again; at 2^-64 per change, accepted.
pub(crate) fn etag_tag(etag: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in etag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl CarddavConnector {
    /// The members to read: the changes since the cursor, else a full listing.
    pub(crate) async fn listing(&self, cursor: Option<&Cursor>) -> Result<Listed, ConnectorError> {
        let state: Option<State> = cursor.and_then(|c| serde_json::from_str(&c.0).ok());
        if cursor.is_some() && state.is_none() {
            tracing::warn!(url = %self.dav.url, "unreadable cursor: reading a full listing");
        }
        let Some(previous) = state.filter(|s| !s.rescan) else {
            return self.full_listing().await;
        };
        if let Some(before) = &previous.etags {
            return self.etag_changes(before, previous.retry.clone()).await;
        }
        if previous.token.is_empty() {
            return self.full_listing().await;
        }
        match self.dav.sync(Some(&previous.token)).await {
            Ok(sync) => Ok(Listed {
                token: sync.token,
                changed: sync.changed,
                removed: sync.removed,
                retry: previous.retry,
                full: false,
                etags: None,
            }),
            Err(SyncError::TokenRejected) => {
                tracing::info!(url = %self.dav.url, "sync token rejected: reading a full listing");
                self.full_listing().await
            }
            Err(SyncError::Unsupported(why)) => {
                self.no_sync(&why);
                self.full_listing().await
            }
            Err(SyncError::Other(e)) => Err(e),
        }
    }

    /// Every member of the book: `sync-collection` without a token where the server
    /// has it, else `PROPFIND` Depth 1.
    async fn full_listing(&self) -> Result<Listed, ConnectorError> {
        if self.mode().await? == Mode::Sync {
            match self.dav.sync(None).await {
                Ok(sync) => {
                    return Ok(Listed {
                        token: sync.token,
                        changed: sync.changed,
                        full: true,
                        ..Listed::default()
                    });
                }
                Err(SyncError::Unsupported(why)) => self.no_sync(&why),
                Err(SyncError::TokenRejected) => {
                    return Err(ConnectorError::fatal(format!(
                        "REPORT sync-collection {}: the server refused a full listing",
                        self.dav.url
                    )));
                }
                Err(SyncError::Other(e)) => return Err(e),
            }
        }
        let etags = self.etag_listing().await?;
        Ok(Listed {
            changed: etags.keys().cloned().collect(),
            full: true,
            etags: Some(etags),
            ..Listed::default()
        })
    }

    /// The members whose ETag is not the one `before` keeps, and those gone.
    async fn etag_changes(
        &self,
        before: &BTreeMap<String, String>,
        retry: Vec<String>,
    ) -> Result<Listed, ConnectorError> {
        let now = self.etag_listing().await?;
        if now.is_empty() && !before.is_empty() {
            // Every card gone at once looks like a server fault as much as a purge: as a
            // full listing, the engine's delete guard weighs it (R16).
            return Ok(Listed {
                full: true,
                etags: Some(now),
                ..Listed::default()
            });
        }
        let changed = now
            .iter()
            .filter(|(id, tag)| before.get(*id) != Some(*tag))
            .map(|(id, _)| id.clone())
            .collect();
        let removed = before
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        Ok(Listed {
            changed,
            removed,
            retry,
            full: false,
            etags: Some(now),
            ..Listed::default()
        })
    }

    /// The members and their ETag tags; a member without an ETag gets a tag that
    /// never matches, so it is fetched every time rather than never.
    async fn etag_listing(&self) -> Result<BTreeMap<String, String>, ConnectorError> {
        Ok(self
            .dav
            .members()
            .await?
            .into_iter()
            .map(|(id, etag)| (id, etag.as_deref().map(etag_tag).unwrap_or_default()))
            .collect())
    }

    /// How full listings are read, from the book's `supported-report-set` the first
    /// time (a server that does not say is tried with `sync-collection`).
    async fn mode(&self) -> Result<Mode, ConnectorError> {
        if let Some(mode) = *self.mode.lock().expect("not poisoned") {
            return Ok(mode);
        }
        let mode = match self.dav.reports().await? {
            Reports::NoSync => {
                tracing::info!(url = %self.dav.url,
                    "the address book lists no sync-collection report: listings by PROPFIND and ETags");
                Mode::Propfind
            }
            Reports::Sync | Reports::Unknown => Mode::Sync,
        };
        *self.mode.lock().expect("not poisoned") = Some(mode);
        Ok(mode)
    }

    /// The server answered `sync-collection` as a server without it does.
    fn no_sync(&self, why: &str) {
        tracing::info!(url = %self.dav.url, %why, "no sync-collection: listings by PROPFIND and ETags");
        *self.mode.lock().expect("not poisoned") = Some(Mode::Propfind);
    }

    /// The records of the cards `ids` name; a card that cannot be parsed is skipped,
    /// and one the server no longer has is a tombstone unless `full`.
    pub(crate) async fn fetch_records(
        &self,
        kind: EntityKind,
        ids: &[String],
        full: bool,
    ) -> Result<Fetch, ConnectorError> {
        let mut out = Fetch::default();
        for (id, fetched) in self.fetch(ids).await? {
            if !out.seen.insert(id.clone()) {
                continue;
            }
            match fetched {
                Fetched::Card { etag, data } => {
                    out.etags.push((id.clone(), Some(etag.clone())));
                    match self.card_record(kind, &id, etag, &data) {
                        Ok(Some(record)) => out.records.push(record),
                        Ok(None) => {
                            out.groups += 1;
                            // A contact that became a group is gone as a contact, as
                            // a full listing would find it (R16 weighs those).
                            if !full {
                                out.records.push(Record::tombstone(kind, &id));
                            }
                        }
                        // Retried next read.
                        Err(skip) => out.skipped.push(skip),
                    }
                }
                Fetched::Missing => {
                    out.etags.push((id.clone(), None));
                    // Deleted between the listing and the fetch.
                    if !full {
                        out.records.push(Record::tombstone(kind, &id));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `addressbook-multiget` of `ids`, [`MULTIGET_BATCH`] at a time. A server that
    /// fails a whole batch with 404 because one card is missing (SabreDAV 1.8) is asked
    /// again for the cards its listing holds; a batch that still fails (a card deleted
    /// meanwhile) is split in halves until the missing card stands alone.
    pub(crate) async fn fetch(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, Fetched)>, ConnectorError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut members: Option<HashSet<String>> = None;
        // (batch, whether it holds only listed members), last popped first.
        let mut todo: Vec<(Vec<String>, bool)> = ids
            .chunks(MULTIGET_BATCH)
            .rev()
            .map(|b| (b.to_vec(), false))
            .collect();
        while let Some((batch, listed)) = todo.pop() {
            match self.dav.multiget(&batch).await? {
                Multiget::Cards(cards) => out.extend(cards),
                Multiget::NotFound if !listed => {
                    if members.is_none() {
                        let listing = self.dav.members().await?;
                        members = Some(listing.into_iter().map(|(id, _)| id).collect());
                    }
                    let members = members.as_ref().expect("just listed");
                    let (known, gone): (Vec<String>, Vec<String>) =
                        batch.into_iter().partition(|id| members.contains(id));
                    out.extend(gone.into_iter().map(|id| (id, Fetched::Missing)));
                    if !known.is_empty() {
                        todo.push((known, true));
                    }
                }
                Multiget::NotFound if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    todo.push((second, true));
                    todo.push((first, true));
                }
                Multiget::NotFound => {
                    out.extend(batch.into_iter().map(|id| (id, Fetched::Missing)));
                }
            }
        }
        Ok(out)
    }
}
