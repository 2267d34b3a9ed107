//! An in-memory connector: a faithful, fully featured reference implementation of the
//! [`Connector`] contract, incremental with tombstones, for tests and benchmarks of the
//! engine. It is not registered as a config `type`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tandem_model::{EntityKind, Fields, Record, Timestamp};

use crate::{
    Capabilities, Connector, ConnectorError, Cursor, Listing, Page, WriteOp, WriteOutcome, Written,
};

#[derive(Debug, Default)]
struct Table {
    /// Live records by id.
    records: BTreeMap<String, Record>,
    /// Sequence number of the last change of each id (live or deleted).
    changed_at: BTreeMap<String, u64>,
    /// The same, by sequence number: a change read costs what changed, not what exists.
    by_sequence: BTreeMap<u64, String>,
    /// Ids deleted, with the sequence number of the delete.
    deleted: BTreeMap<String, u64>,
    next_id: u64,
}

impl Table {
    fn mark_changed(&mut self, id: &str, seq: u64) {
        if let Some(previous) = self.changed_at.insert(id.to_owned(), seq) {
            self.by_sequence.remove(&previous);
        }
        self.by_sequence.insert(seq, id.to_owned());
    }
}

#[derive(Debug)]
struct Inner {
    tables: BTreeMap<EntityKind, Table>,
    sequence: u64,
    /// When set, reads fail after this many pages (to test R16).
    fail_after_pages: Option<usize>,
    pages_served: usize,
    /// Writes to these records fail as invalid, with the message (to test R17).
    rejected: BTreeMap<(EntityKind, String), String>,
    /// Writes to these records fail as transient: the server is busy (to test R17).
    unavailable: std::collections::BTreeSet<(EntityKind, String)>,
}

/// See the module docs. `incremental = false` makes every read a full listing, like a
/// system without change tracking.
#[derive(Debug)]
pub struct MemoryConnector {
    inner: Mutex<Inner>,
    kinds: Vec<EntityKind>,
    incremental: bool,
    page_size: usize,
    id_prefix: String,
    /// Whether a create may carry the id its record gets ([`Connector::new_id`]).
    chosen_ids: bool,
    ids_given: std::sync::atomic::AtomicU64,
}

impl MemoryConnector {
    pub fn new(kinds: &[EntityKind], incremental: bool) -> MemoryConnector {
        MemoryConnector {
            inner: Mutex::new(Inner {
                tables: kinds.iter().map(|k| (*k, Table::default())).collect(),
                sequence: 0,
                fail_after_pages: None,
                pages_served: 0,
                rejected: BTreeMap::new(),
                unavailable: std::collections::BTreeSet::new(),
            }),
            kinds: kinds.to_vec(),
            incremental,
            page_size: 1000,
            id_prefix: "M".to_owned(),
            chosen_ids: false,
            ids_given: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Lets the engine choose the ids of the records it creates, as a system that
    /// takes the client's ids does (a CardDAV server, a directory).
    pub fn with_chosen_ids(mut self) -> MemoryConnector {
        self.chosen_ids = true;
        self
    }

    pub fn with_page_size(mut self, page_size: usize) -> MemoryConnector {
        self.page_size = page_size.max(1);
        self
    }

    pub fn with_id_prefix(mut self, prefix: &str) -> MemoryConnector {
        self.id_prefix = prefix.to_owned();
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic in a test while holding the lock must not hide the real failure.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a record as a user of the system would, outside Tandem.
    pub fn put(&self, kind: EntityKind, id: &str, fields: Fields) {
        let mut inner = self.lock();
        inner.sequence += 1;
        let seq = inner.sequence;
        let table = inner.tables.entry(kind).or_default();
        let record = Record {
            version: Some(format!("v{seq}")),
            modified_at: Some(Timestamp(seq as i64 * 1000)),
            ..Record::new(kind, id, fields)
        };
        table.records.insert(id.to_owned(), record);
        table.mark_changed(id, seq);
        table.deleted.remove(id);
    }

    /// Deletes a record as a user of the system would.
    pub fn remove(&self, kind: EntityKind, id: &str) {
        let mut inner = self.lock();
        inner.sequence += 1;
        let seq = inner.sequence;
        let table = inner.tables.entry(kind).or_default();
        if table.records.remove(id).is_some() {
            table.mark_changed(id, seq);
            table.deleted.insert(id.to_owned(), seq);
        }
    }

    pub fn get(&self, kind: EntityKind, id: &str) -> Option<Record> {
        self.lock().tables.get(&kind)?.records.get(id).cloned()
    }

    pub fn all(&self, kind: EntityKind) -> Vec<Record> {
        self.lock()
            .tables
            .get(&kind)
            .map(|t| t.records.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes reads fail with a transient error once `pages` more pages were served.
    pub fn fail_reads_after(&self, pages: Option<usize>) {
        let mut inner = self.lock();
        inner.fail_after_pages = pages;
        inner.pages_served = 0;
    }

    /// Makes every write to record `id` fail as an invalid record with `message`, or
    /// lifts that with `None`.
    pub fn reject_writes_to(&self, kind: EntityKind, id: &str, message: Option<&str>) {
        let mut inner = self.lock();
        match message {
            Some(m) => inner.rejected.insert((kind, id.to_owned()), m.to_owned()),
            None => inner.rejected.remove(&(kind, id.to_owned())),
        };
    }

    /// Makes every write to record `id` fail as transient (`503 Service Unavailable`),
    /// or lifts that with `false`.
    pub fn make_unavailable(&self, kind: EntityKind, id: &str, unavailable: bool) {
        let mut inner = self.lock();
        if unavailable {
            inner.unavailable.insert((kind, id.to_owned()));
        } else {
            inner.unavailable.remove(&(kind, id.to_owned()));
        }
    }

    fn apply(inner: &mut Inner, kind: EntityKind, op: WriteOp, prefix: &str) -> WriteOutcome {
        if let Some(id) = op.id()
            && let Some(message) = inner.rejected.get(&(kind, id.to_owned()))
        {
            return Err(ConnectorError::invalid(Some(id), message.clone()));
        }
        if let Some(id) = op.id()
            && inner.unavailable.contains(&(kind, id.to_owned()))
        {
            return Err(ConnectorError::transient("503 Service Unavailable"));
        }
        inner.sequence += 1;
        let seq = inner.sequence;
        let table = inner.tables.entry(kind).or_default();
        let check = |record: &Record, id: &str, version: &Option<String>| match version {
            Some(v) if record.version.as_ref() != Some(v) => {
                Err(ConnectorError::Conflict { id: id.to_owned() })
            }
            _ => Ok(()),
        };
        let id = match op {
            WriteOp::Create {
                fields,
                id: Some(id),
            } => {
                if table.records.contains_key(&id) {
                    return Err(ConnectorError::Conflict { id });
                }
                table
                    .records
                    .insert(id.clone(), Record::new(kind, id.clone(), fields));
                id
            }
            WriteOp::Create { fields, id: None } => {
                table.next_id += 1;
                let mut id = format!("{prefix}{}", table.next_id);
                while table.records.contains_key(&id) {
                    table.next_id += 1;
                    id = format!("{prefix}{}", table.next_id);
                }
                table
                    .records
                    .insert(id.clone(), Record::new(kind, id.clone(), fields));
                id
            }
            WriteOp::Update {
                id,
                version,
                changes,
            } => {
                let record = table
                    .records
                    .get_mut(&id)
                    .ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
                check(record, &id, &version)?;
                record.fields.apply(&changes);
                id
            }
            WriteOp::Delete { id, version } => {
                let record = table
                    .records
                    .get(&id)
                    .ok_or_else(|| ConnectorError::NotFound { id: id.clone() })?;
                check(record, &id, &version)?;
                table.records.remove(&id);
                table.deleted.insert(id.clone(), seq);
                table.mark_changed(&id, seq);
                return Ok(Written {
                    id,
                    version: None,
                    modified_at: None,
                });
            }
        };
        let record = table.records.get_mut(&id).expect("record was just written");
        record.version = Some(format!("v{seq}"));
        record.modified_at = Some(Timestamp(seq as i64 * 1000));
        let written = Written {
            id,
            version: record.version.clone(),
            modified_at: record.modified_at,
        };
        table.mark_changed(&written.id, seq);
        Ok(written)
    }
}

#[async_trait::async_trait]
impl Connector for MemoryConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: self.kinds.clone(),
            incremental: self.incremental,
            write: true,
            delete: true,
            max_batch: 500,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// `<prefix>-<n>`: apart from the ids it assigns itself (`<prefix><n>`).
    fn new_id(&self, _kind: EntityKind) -> Option<String> {
        self.chosen_ids.then(|| {
            let n = (self.ids_given).fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            format!("{}-{n}", self.id_prefix)
        })
    }

    /// Cursors are `<since>:<after-id>`: changes with a sequence number above `since`,
    /// paged by id. A full listing pages by id from an empty cursor.
    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        let mut inner = self.lock();
        if inner
            .fail_after_pages
            .is_some_and(|limit| inner.pages_served >= limit)
        {
            return Err(ConnectorError::transient("connection reset while listing"));
        }
        inner.pages_served += 1;
        let sequence = inner.sequence;
        let table = inner.tables.get(&kind).ok_or_else(|| {
            ConnectorError::config(format!("this connector holds no {}", kind.plural()))
        })?;
        let (listing, since, after, snapshot) = match cursor.map(|c| c.0.as_str()) {
            Some(c) => {
                let mut parts = c.splitn(4, ':');
                let mode = parts.next().unwrap_or_default();
                let since: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let snapshot: Option<u64> = parts.next().and_then(|s| s.parse().ok());
                let after = parts.next().unwrap_or_default().to_owned();
                // A read starts where there is no id to resume after; it takes the
                // snapshot its end cursor will resume from. Only the pages after the
                // first carry it on.
                let snapshot = match snapshot {
                    Some(snapshot) if !after.is_empty() => snapshot,
                    _ => sequence,
                };
                let listing = if mode == "full" || !self.incremental {
                    Listing::Full
                } else {
                    Listing::Changes
                };
                (listing, since, after, snapshot)
            }
            None => (Listing::Full, 0, String::new(), sequence),
        };
        let mut records = Vec::new();
        let mut last_id = None;
        let candidates: Box<dyn Iterator<Item = &String>> = match listing {
            // Each page starts after the last id of the one before, without walking
            // the ids before it.
            Listing::Full => Box::new(
                table
                    .changed_at
                    .range::<str, _>((
                        std::ops::Bound::Excluded(after.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .map(|(id, _)| id)
                    .filter(|id| table.records.contains_key(*id)),
            ),
            Listing::Changes => {
                // Found by sequence number, then paged by id like a full listing.
                let mut changed: Vec<&String> = table
                    .by_sequence
                    .range(since + 1..)
                    .map(|(_, id)| id)
                    .collect();
                changed.sort_unstable();
                Box::new(changed.into_iter())
            }
        };
        let mut has_more = false;
        for id in candidates.filter(|id| after.is_empty() || id.as_str() > after.as_str()) {
            if records.len() == self.page_size {
                has_more = true;
                break;
            }
            records.push(match table.records.get(id) {
                Some(record) => record.clone(),
                None => Record::tombstone(kind, id.clone()),
            });
            last_id = Some(id.clone());
        }
        let mode = match listing {
            Listing::Full => "full",
            Listing::Changes => "changes",
        };
        let cursor = if has_more {
            Cursor(format!(
                "{mode}:{since}:{snapshot}:{}",
                last_id.unwrap_or_default()
            ))
        } else {
            // The next run asks for changes since the snapshot this read started from.
            Cursor(format!("changes:{snapshot}:{snapshot}:"))
        };
        Ok(Page {
            records,
            listing,
            cursor: Some(cursor),
            has_more,
        })
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        if !self.kinds.contains(&kind) {
            return Err(ConnectorError::config(format!(
                "this connector holds no {}",
                kind.plural()
            )));
        }
        let mut inner = self.lock();
        Ok(ops
            .into_iter()
            .map(|op| match op {
                WriteOp::Create { id: Some(_), .. } if !self.chosen_ids => Err(
                    ConnectorError::config("this connector assigns the ids of what it creates"),
                ),
                op => Self::apply(&mut inner, kind, op, &self.id_prefix),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Changes;
    use tandem_model::{FieldName, Value};

    async fn read_all(
        c: &MemoryConnector,
        kind: EntityKind,
        cursor: Option<Cursor>,
    ) -> (Vec<Record>, Listing, Cursor) {
        let mut cursor = cursor;
        let mut out = Vec::new();
        loop {
            let page = c.read(kind, cursor.as_ref()).await.unwrap();
            out.extend(page.records);
            cursor = page.cursor;
            if !page.has_more {
                return (out, page.listing, cursor.unwrap());
            }
        }
    }

    #[tokio::test]
    async fn full_listing_then_changes_with_tombstones() {
        let c = MemoryConnector::new(&[EntityKind::Customer], true).with_page_size(2);
        for i in 0..5 {
            c.put(
                EntityKind::Customer,
                &format!("K{i}"),
                Fields::new().with("name", "x"),
            );
        }
        let (all, listing, cursor) = read_all(&c, EntityKind::Customer, None).await;
        assert_eq!(all.len(), 5);
        assert_eq!(listing, Listing::Full);

        c.remove(EntityKind::Customer, "K1");
        let mut changes = Changes::new();
        changes.insert(FieldName::new("name"), Value::text("y"));
        let out = c
            .write(
                EntityKind::Customer,
                vec![WriteOp::Update {
                    id: "K2".into(),
                    version: Some("v0".into()),
                    changes: changes.clone(),
                }],
            )
            .await
            .unwrap();
        assert_eq!(out[0], Err(ConnectorError::Conflict { id: "K2".into() }));
        let version = c.get(EntityKind::Customer, "K2").unwrap().version;
        let out = c
            .write(
                EntityKind::Customer,
                vec![WriteOp::Update {
                    id: "K2".into(),
                    version,
                    changes,
                }],
            )
            .await
            .unwrap();
        assert!(out[0].is_ok());

        let (changed, listing, _) = read_all(&c, EntityKind::Customer, Some(cursor)).await;
        assert_eq!(listing, Listing::Changes);
        let ids: Vec<_> = changed.iter().map(|r| (r.id.as_str(), r.deleted)).collect();
        assert_eq!(ids, vec![("K1", true), ("K2", false)]);
    }

    #[tokio::test]
    async fn a_read_of_changes_moves_the_cursor_on() {
        let c = MemoryConnector::new(&[EntityKind::Vendor], true).with_page_size(1);
        c.put(EntityKind::Vendor, "V1", Fields::new().with("name", "a"));
        let (_, _, cursor) = read_all(&c, EntityKind::Vendor, None).await;
        c.put(EntityKind::Vendor, "V2", Fields::new().with("name", "b"));
        c.put(EntityKind::Vendor, "V3", Fields::new().with("name", "c"));
        let (changed, _, cursor) = read_all(&c, EntityKind::Vendor, Some(cursor)).await;
        assert_eq!(changed.len(), 2);
        // Nothing changed since: the same changes must not come again.
        let (again, listing, _) = read_all(&c, EntityKind::Vendor, Some(cursor)).await;
        assert_eq!(listing, Listing::Changes);
        assert!(again.is_empty(), "{again:?}");
    }

    #[tokio::test]
    async fn a_create_with_a_chosen_id_makes_that_record_once() {
        let c = MemoryConnector::new(&[EntityKind::Contact], true).with_chosen_ids();
        let id = c.new_id(EntityKind::Contact).unwrap();
        assert_ne!(c.new_id(EntityKind::Contact).as_ref(), Some(&id));
        let create = || WriteOp::Create {
            fields: Fields::new().with("name", "x"),
            id: Some(id.clone()),
        };
        let out = c.write(EntityKind::Contact, vec![create()]).await.unwrap();
        assert_eq!(out[0].as_ref().unwrap().id, id);
        assert_eq!(
            c.get(EntityKind::Contact, &id).unwrap().fields.text("name"),
            Some("x")
        );
        let again = c.write(EntityKind::Contact, vec![create()]).await.unwrap();
        assert!(matches!(&again[0], Err(ConnectorError::Conflict { id: at }) if *at == id));
        assert_eq!(c.all(EntityKind::Contact).len(), 1);

        let assigning = MemoryConnector::new(&[EntityKind::Contact], true);
        assert_eq!(assigning.new_id(EntityKind::Contact), None);
        let out = assigning
            .write(EntityKind::Contact, vec![create()])
            .await
            .unwrap();
        assert!(
            matches!(&out[0], Err(ConnectorError::Config { .. })),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn kinds_it_does_not_hold_are_refused() {
        let c = MemoryConnector::new(&[EntityKind::Contact], true);
        let create = WriteOp::create(Fields::new().with("name", "x"));
        let err = c.write(EntityKind::Vendor, vec![create]).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Config { .. }), "{err:?}");
        assert!(c.read(EntityKind::Vendor, None).await.is_err());
    }

    #[tokio::test]
    async fn reads_can_be_made_to_fail() {
        let c = MemoryConnector::new(&[EntityKind::Contact], false).with_page_size(1);
        c.put(EntityKind::Contact, "C1", Fields::new());
        c.put(EntityKind::Contact, "C2", Fields::new());
        c.fail_reads_after(Some(1));
        let page = c.read(EntityKind::Contact, None).await.unwrap();
        assert!(page.has_more);
        assert!(
            c.read(EntityKind::Contact, page.cursor.as_ref())
                .await
                .is_err()
        );
    }
}
