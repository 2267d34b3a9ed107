//! Reading: every scope's records, what changed since the last run (content hashes),
//! what was deleted (R16), the records a run needs whatever was sent (`needed`), and
//! which relations wake up to match (`wake`).

mod guard;
mod needed;
mod prefetch;
mod seen;
mod wake;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::task::Poll;

use tandem_connector::{Connector, ConnectorError, Cursor, Listing, Page};
use tandem_model::{EntityKind, FieldName, Fields, Record, Value};
use tandem_state::{Scope, StateStore, StoredHashes, Take, Walk};
use tracing::{debug, info};

use crate::error::EngineError;
use crate::overlap::{finish, poll_once};
use crate::progress;
use crate::report::ReadStats;

pub use guard::DeleteGuard;
pub(crate) use needed::{Needed, fetch_missing, gone_if_missing};
pub(crate) use prefetch::Prefetch;
pub(crate) use seen::SeenMap;
pub(crate) use wake::{
    FirstPass, Sides, StoredKeys, Wake, account_key_fields, contact_key_fields, second_pass, wakes,
};

/// The content hash remembered for a record: its fields and its version, so that
/// any change the system reports, even to data Tandem does not map, is noticed.
/// Never 0, which marks a record to be looked at again.
pub fn record_hash(fields: &Fields, version: Option<&str>) -> u64 {
    record_hash_of(fields.content_hash(), version)
}

/// [`record_hash`] from the fields' content hash.
pub(crate) fn record_hash_of(content_hash: u64, version: Option<&str>) -> u64 {
    let mut buf = content_hash.to_le_bytes().to_vec();
    buf.extend_from_slice(version.unwrap_or("").as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf).clamp(1, WRITTEN_UNREAD - 1)
}

/// Hash value that makes the next run look at a record again.
pub(crate) const RECHECK: u64 = 0;

/// Hash value of a record Tandem wrote without having read it: its content is not
/// known, so it equals no hash a read gives and the next read compares the record anew
/// (an edit back to what it held before the write is still an edit). Unlike
/// [`RECHECK`] it is no new record: its stored match keys stand, and only a change of
/// them wakes matching (R4); nor does it make a run read what a fingerprint says did
/// not change, or fetch it by id.
pub(crate) const WRITTEN_UNREAD: u64 = u64::MAX;

/// A match-key hash that says nothing: the record's keys are unknown.
pub(crate) const UNKNOWN_KEYS: u64 = 0;

/// The hash of what matching (R4) reads of a record: the values of `names` (every
/// field a match tier of the scope's relations uses, and for contacts the fields that
/// say which relation they may hold). Stored with the content hash, so that a later
/// edit that leaves them as they were does not make its relations match again: the
/// record was matched with these values when it was read. Never [`UNKNOWN_KEYS`];
/// `UNKNOWN_KEYS` when there is no name to hash.
pub(crate) fn match_keys(fields: &Fields, names: &[FieldName]) -> u64 {
    thread_local! {
        // Hashed once per record read: one buffer per thread, and one call to the hash
        // (its streaming form cost more than the bytes, for a dozen short values).
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
    }
    if names.is_empty() {
        return UNKNOWN_KEYS;
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        for name in names {
            buf.extend_from_slice(name.as_str().as_bytes());
            match fields.get_named(name) {
                None => buf.push(0),
                Some(value) => {
                    buf.push(1);
                    match value {
                        Value::Text(text) => buf.extend_from_slice(text.as_bytes()),
                        Value::Date(date) => buf.extend_from_slice(date.as_bytes()),
                        Value::List(items) => {
                            for item in items.iter() {
                                buf.extend_from_slice(item.as_bytes());
                                buf.push(0xfe);
                            }
                        }
                        other => buf.extend_from_slice(other.to_cell().as_bytes()),
                    }
                    buf.push(0xff);
                }
            }
        }
        xxhash_rust::xxh3::xxh3_64(&buf).max(1)
    })
}

/// What a run remembers of a record it read: its content hash, its match keys and
/// whether it changed since the last run.
///
/// Packed (18 bytes, not 24 with the hashes' alignment): a run holds one per record
/// kept, 20 million at a first sync of ten million partners. Its fields are read by
/// value; the compiler refuses a reference to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(2))]
pub(crate) struct Seen {
    pub hash: u64,
    pub keys: u64,
    pub change: Change,
    /// The run's outcome settles this record's stored hash (it was written, created,
    /// linked or refused): the step that settled it stores it, not the end of the run
    /// as read. A flag here, not a set of ids beside the map: a first sync settles
    /// 1.6M records, and the set cost a copy of each id and a lookup of every record.
    pub settled: bool,
}

/// How a record read compares with what the state remembers of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Its hash is the stored one (kept in play for another reason).
    Unchanged,
    /// Known before, with another hash.
    Known,
    /// Without a stored hash (new since the last run, or never settled) or marked to
    /// be looked at again: it may pair with anything.
    New,
}

pub(crate) struct ScopeRead {
    pub scope: Scope,
    pub records: crate::Records,
    pub deleted: BTreeSet<String>,
    /// Hash, match keys and change of each record kept in `records`, as read. One
    /// map, not one more for the changed: at a first sync every record is changed, and
    /// a second map held a second copy of a million ids.
    pub hashes: SeenMap,
    /// The fields [`match_keys`] hashes for this scope; none when the run does not
    /// know them (keys unknown).
    pub key_fields: std::sync::Arc<[FieldName]>,
    pub cursor: Option<Cursor>,
    /// The connector's fingerprint taken before reading, if it gives one.
    pub fingerprint: Option<String>,
    pub stats: ReadStats,
    /// The match keys stored for each record a change listing brought (`None`: none
    /// known), looked up with its hash: what waking compares a changed record's keys
    /// with ([`wake::StoredKeys`]), without a second lookup.
    pub stored_keys: HashMap<String, Option<u64>>,
}

impl Seen {
    /// A record as read, not settled yet.
    pub(crate) fn read(hash: u64, keys: u64, change: Change) -> Seen {
        Seen {
            hash,
            keys,
            change,
            settled: false,
        }
    }
}

impl ScopeRead {
    /// A scope read to its end, `started` when: what it holds counted, said in the log
    /// and to the progress.
    fn counted(&mut self, started: std::time::Instant) {
        self.stats.deleted = self.deleted.len() as u64;
        self.stats.in_play = self.records.len() as u64;
        let (connector, kind) = (&self.stats.connector, self.scope.kind);
        info!(
            connector = connector.as_str(),
            kind = kind.plural(),
            records = self.stats.records,
            changed = self.stats.changed,
            deleted = self.stats.deleted,
            kept = self.records.len(),
            ms = started.elapsed().as_millis() as u64,
            "read"
        );
        progress::read_end(connector, kind, self.stats.records);
    }

    /// Marks record `id`'s hash as settled by the run's outcome ([`Seen::settled`]);
    /// a record not read has nothing to mark. Returns what was read of it: one lookup
    /// among a million for both (a first sync settles every record).
    pub(crate) fn settle(&mut self, id: &str) -> Option<Seen> {
        let seen = self.hashes.get_mut(id)?;
        seen.settled = true;
        Some(*seen)
    }
}

impl Change {
    /// A record read with `hash`, the state holding `before` for it.
    pub(crate) fn of(before: Option<u64>, hash: u64) -> Change {
        match before {
            Some(stored) if stored == hash => Change::Unchanged,
            // Marked to be looked at again counts as new: it may pair with anything.
            None | Some(RECHECK) => Change::New,
            Some(_) => Change::Known,
        }
    }
}

impl ScopeRead {
    /// The records that changed since the last run, each with whether it is new
    /// ([`Change::New`]).
    pub(crate) fn changed(&self) -> impl Iterator<Item = (&str, bool)> + Clone {
        (self.hashes.iter()).filter_map(|(id, seen)| match seen.change {
            Change::Unchanged => None,
            change => Some((id, change == Change::New)),
        })
    }

    /// Whether record `id` was read and changed since the last run.
    pub(crate) fn is_changed(&self, id: &str) -> bool {
        self.hashes
            .get(id)
            .is_some_and(|seen| seen.change != Change::Unchanged)
    }

    /// Nothing read yet from `connector`, whose cursor, fingerprint and hashes the
    /// state keeps under `scope` (the connector's own, or a partition's).
    pub(crate) fn empty(connector: &str, scope: Scope, fingerprint: Option<String>) -> ScopeRead {
        let stats = ReadStats {
            connector: connector.to_owned(),
            kind: scope.kind,
            records: 0,
            changed: 0,
            deleted: 0,
            in_play: 0,
            skipped: false,
        };
        ScopeRead {
            scope,
            records: crate::Records::new(),
            deleted: BTreeSet::new(),
            hashes: SeenMap::default(),
            key_fields: std::sync::Arc::from(Vec::new()),
            cursor: None,
            fingerprint,
            stats,
            stored_keys: HashMap::new(),
        }
    }
}

/// A failed read of `kind` from `connector_name`, as the engine reports it.
pub(crate) fn read_error(
    connector_name: &str,
    kind: EntityKind,
) -> impl Fn(ConnectorError) -> EngineError {
    move |source| EngineError::Read {
        connector: connector_name.to_owned(),
        kind,
        source,
    }
}

/// How [`read_scope`] reads a scope.
pub(crate) struct HowToRead<'t> {
    /// Skip the scope when its fingerprint, tagged so, is the one remembered.
    pub skip_tag: Option<&'t str>,
    pub guard: DeleteGuard,
    /// The fields of the records' match keys ([`match_keys`]).
    pub key_fields: std::sync::Arc<[FieldName]>,
    /// Where the state keeps the scope's cursor, fingerprint and hashes.
    pub scope: Scope,
    /// The scope's stored hashes, if loaded ahead ([`Prefetch`]).
    pub hashes: Option<StoredHashes>,
    /// The connector's fingerprint of the scope, if taken ahead ([`Prefetch`]).
    pub fingerprint: Option<Option<String>>,
    /// Where the records kept go as the listing comes, when a memory budget asks for
    /// it ([`crate::spill`]); `None` keeps them on the heap.
    pub spill: Option<SpillAt<'t>>,
}

/// Records kept past `after_bytes` go to an unnamed file in `folder`, all of them from
/// then on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpillAt<'f> {
    pub folder: &'f std::path::Path,
    pub after_bytes: usize,
}

/// Reads all pages of one connector and kind. Keeps the records that changed since
/// the last run, plus the unchanged ones `keep` asks for; finds deletes from
/// tombstones, and from a full listing only once it completed (R16), as far as
/// `guard` lets them through.
pub(crate) async fn read_scope(
    state: &dyn StateStore,
    connector_name: &str,
    connector: &dyn Connector,
    kind: EntityKind,
    how: HowToRead<'_>,
    keep: impl Fn(&Record) -> bool,
) -> Result<ScopeRead, EngineError> {
    let HowToRead {
        skip_tag,
        guard,
        key_fields,
        scope,
        hashes,
        fingerprint,
        spill,
    } = how;
    let fingerprint = take_fingerprint(connector, connector_name, kind, fingerprint).await?;
    if unchanged(state, &scope, skip_tag, fingerprint.as_deref())? {
        return Ok(ScopeRead::skipped(
            connector_name,
            scope,
            fingerprint,
            key_fields,
        ));
    }
    let incremental = connector.capabilities().incremental;
    let mut stored = Stored::new(state, &scope, incremental, hashes)?;
    let mut cursor = match incremental {
        true => state.cursor(&scope)?.map(Cursor),
        false => None,
    };
    let mut out = ScopeRead::empty(connector_name, scope, fingerprint);
    out.key_fields = key_fields;
    info!(connector = connector_name, kind = kind.plural(), "reading");
    // A full listing brings about as many records as the state knows of.
    progress::read_start(
        connector_name,
        kind,
        if incremental { 0 } else { stored.known },
    );
    let started = std::time::Instant::now();
    // Packed page by page: a listing of ten million contacts held as `Record`s until
    // its end took 5 GB more than packed.
    let mut kept = tandem_model::PackedRecords::new();
    let mut spill = Spilling::at(spill);
    // Each page is asked for before the one before it is taken: a connector that reads
    // on a thread of its own (a file's parses its pieces on the blocking pool) reads
    // it meanwhile. A first sync at 1M kept the cores 70 % busy reading, page by page.
    let read_at =
        |cursor: Option<Cursor>| async move { connector.read(kind, cursor.as_ref()).await };
    let mut reading = Box::pin(read_at(cursor.clone()));
    let mut answered = Poll::Pending;
    let listing = loop {
        let page =
            (finish(reading.as_mut(), answered).await).map_err(read_error(connector_name, kind))?;
        stored.before(state, &out.scope, &page, &mut out.stored_keys)?;
        let (listing, has_more) = (page.listing, page.has_more);
        cursor = page.cursor;
        answered = Poll::Pending;
        if has_more {
            reading = Box::pin(read_at(cursor.clone()));
            answered = poll_once(reading.as_mut(), Poll::Pending).await;
        }
        out.take(page.records, &stored.hashes, &keep, &mut kept);
        spill.take(&mut kept, crate::spill::SPILL_CHUNK)?;
        // A change-reading connector's full listing is held against every stored hash.
        let expected = if listing == Listing::Full {
            stored.known
        } else {
            0
        };
        progress::read_progress(connector_name, kind, out.stats.records, expected);
        if !has_more {
            break listing;
        }
    };
    spill.take(&mut kept, 1)?;
    out.keep_all(kept, &mut spill)?;
    if listing == Listing::Full {
        // Seen before, absent from a completed full listing: deleted, unless that is
        // too many to believe.
        let gone = stored.hashes.untaken();
        let count = gone.len() as u64;
        guard.check(connector_name, kind, count, stored.known, out.stats.records)?;
        out.deleted.extend(gone.into_iter().map(String::from));
    }
    out.cursor = if incremental { cursor } else { None };
    out.counted(started);
    Ok(out)
}

/// The connector's fingerprint of a scope: the one taken `ahead` this run, or taken now.
/// Taken once per run: a file's is a hash of all of it.
async fn take_fingerprint(
    connector: &dyn Connector,
    connector_name: &str,
    kind: EntityKind,
    ahead: Option<Option<String>>,
) -> Result<Option<String>, EngineError> {
    match ahead {
        Some(taken) => Ok(taken),
        None => (connector.fingerprint(kind).await).map_err(read_error(connector_name, kind)),
    }
}

/// A fingerprint equal to the one remembered at the end of the last run (with the same
/// configuration) means the records are those the state describes: nothing to read,
/// unless some record waits to be looked at again.
pub(crate) fn unchanged(
    state: &dyn StateStore,
    scope: &Scope,
    skip_tag: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<bool, EngineError> {
    Ok(match (skip_tag, fingerprint) {
        (Some(tag), Some(fingerprint)) => {
            state.fingerprint(scope)? == Some(format!("{tag}:{fingerprint}"))
                && !state.has_rechecks(scope)?
        }
        _ => false,
    })
}

/// The stored hashes a listing is compared with. A full listing is compared with every
/// stored hash (what is missing is deleted); changes only with the hashes of the
/// records they bring.
struct Stored {
    hashes: StoredHashes,
    incremental: bool,
    loaded_all: bool,
    /// Records of the scope the state knows: what a full listing is held against.
    known: u64,
}

impl Stored {
    fn new(
        state: &dyn StateStore,
        scope: &Scope,
        incremental: bool,
        loaded: Option<StoredHashes>,
    ) -> Result<Stored, EngineError> {
        let hashes = match (incremental, loaded) {
            (true, _) => StoredHashes::default(),
            (false, Some(loaded)) => loaded,
            (false, None) => prefetch::load_stored(state, scope, "in line")?,
        };
        Ok(Stored {
            known: hashes.len() as u64,
            hashes,
            incremental,
            loaded_all: !incremental,
        })
    }

    /// Loads what `page` is compared with, and for a change listing the match keys
    /// stored for its records into `keys` ([`ScopeRead::stored_keys`]).
    fn before(
        &mut self,
        state: &dyn StateStore,
        scope: &Scope,
        page: &Page,
        keys: &mut HashMap<String, Option<u64>>,
    ) -> Result<(), EngineError> {
        if !self.incremental {
            return Ok(());
        }
        if page.listing == Listing::Changes {
            let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
            let mut found = state.hashes_and_keys_of(scope, &ids)?;
            for id in ids {
                keys.insert(id.to_owned(), found.get(id).and_then(|(_, keys)| *keys));
            }
            self.hashes
                .extend(found.drain().map(|(id, (hash, _))| (id.into(), hash)));
        } else if !self.loaded_all {
            // A full listing from a change-reading connector (first run, or a token it
            // rejected): compare with everything, so missing records are deletes.
            self.hashes = state.hashes(scope)?;
            self.known = self.hashes.len() as u64;
            self.loaded_all = true;
        }
        Ok(())
    }
}

/// The file a listing's records go to as they come, if any ([`crate::spill`]).
struct Spilling<'f> {
    /// `None`: the records stay on the heap.
    at: Option<SpillAt<'f>>,
    /// Made when the records first pass the mark.
    file: Option<crate::spill::Spill>,
}

impl<'f> Spilling<'f> {
    fn at(at: Option<SpillAt<'f>>) -> Spilling<'f> {
        Spilling { at, file: None }
    }

    /// Moves the records kept to the file once they hold `at_least` bytes on the heap
    /// and, all told, more than the mark.
    fn take(
        &mut self,
        kept: &mut tandem_model::PackedRecords,
        at_least: usize,
    ) -> Result<(), EngineError> {
        let Some(at) = self.at else {
            return Ok(());
        };
        let first = self.file.is_none();
        if (first && kept.byte_len() <= at.after_bytes) || kept.growing_bytes() < at_least {
            return Ok(());
        }
        let error = EngineError::spill(at.folder);
        let file = match &mut self.file {
            Some(file) => file,
            none => {
                debug!(bytes = kept.byte_len(), "the records kept go to a file");
                none.insert(crate::spill::Spill::new(at.folder).map_err(&error)?)
            }
        };
        file.take(kept).map_err(error)
    }
}

impl ScopeRead {
    /// A scope not read: unchanged since the last run.
    fn skipped(
        connector_name: &str,
        scope: Scope,
        fingerprint: Option<String>,
        key_fields: std::sync::Arc<[FieldName]>,
    ) -> ScopeRead {
        info!(
            connector = connector_name,
            kind = scope.kind.plural(),
            "not read: unchanged since the last run"
        );
        let mut out = ScopeRead::empty(connector_name, scope, fingerprint);
        out.key_fields = key_fields;
        out.stats.skipped = true;
        out
    }

    /// The records a listing kept, once it is through; in id order in the spill
    /// file, if they went there.
    fn keep_all(
        &mut self,
        kept: tandem_model::PackedRecords,
        spilling: &mut Spilling,
    ) -> Result<(), EngineError> {
        // A record sent twice keeps its last copy, as an insert would.
        self.records = match (&mut spilling.file, spilling.at) {
            (Some(file), Some(at)) => {
                crate::Records::from_spilled(kept, file).map_err(EngineError::spill(at.folder))?
            }
            _ => crate::Records::from_packed(kept),
        };
        // Sorting read every id: those pages are not needed until planning.
        self.records.let_go_pages();
        self.hashes.shrink_to_fit();
        Ok(())
    }

    /// Takes one page: tombstones are deletes; a record is kept (packed into `kept`)
    /// when it changed or `keep` asks for it, with what was seen of it; every record
    /// seen takes its hash from `stored`.
    fn take(
        &mut self,
        records: Vec<Record>,
        stored: &StoredHashes,
        keep: &impl Fn(&Record) -> bool,
        kept: &mut tandem_model::PackedRecords,
    ) {
        let mut taken = Vec::with_capacity(records.len());
        let mut hashed = hash_all(&records, &self.key_fields, stored);
        first_copy_takes(&records, &mut hashed);
        for (record, read) in records.into_iter().zip(hashed) {
            if record.deleted {
                self.deleted.insert(record.id);
                continue;
            }
            self.stats.records += 1;
            let change = Change::of(read.before.first(), read.hash);
            let changed = change != Change::Unchanged;
            self.stats.changed += u64::from(changed);
            if changed || keep(&record) {
                (self.hashes).insert(&record.id, Seen::read(read.hash, read.keys, change));
                taken.push(record);
            }
        }
        kept.append(crate::records::pack_all(taken));
    }
}

/// From this many records on, a page is hashed on the machine's cores.
const PARALLEL_HASHING: usize = 20_000;

/// What the hashing of one record of a page found.
struct Hashed {
    /// Its content hash and match keys (a tombstone's are not used).
    hash: u64,
    keys: u64,
    /// What it took of the stored hashes.
    before: Take,
}

/// The content hash and match keys of every record of a page, in order, each with the
/// stored hash it takes. A page of a full listing holds up to every record of a scope:
/// hashing them and looking them up is most of the engine's own share of reading.
fn hash_all(records: &[Record], key_fields: &[FieldName], stored: &StoredHashes) -> Vec<Hashed> {
    let hash = |walk: &mut Walk, record: &Record| {
        let before = stored.take(&record.id, walk);
        match record.deleted {
            true => Hashed {
                hash: RECHECK,
                keys: UNKNOWN_KEYS,
                before,
            },
            false => Hashed {
                hash: record_hash(&record.fields, record.version.as_deref()),
                keys: match_keys(&record.fields, key_fields),
                before,
            },
        }
    };
    let threads = match records.len() < PARALLEL_HASHING {
        true => 1,
        false => crate::parallel::cores(),
    };
    crate::parallel::map_parts_in_order(records, threads, |part| {
        // Each thread walks the stored hashes along its part of the listing.
        let mut walk = Walk::default();
        part.iter().map(|record| hash(&mut walk, record)).collect()
    })
}

/// A record listed twice in one page: its copies took the stored hash in whatever
/// order the hashing threads came to them. As when a listing is taken in order, the
/// first copy gets it and the later ones none (they read as new).
fn first_copy_takes(records: &[Record], hashed: &mut [Hashed]) {
    let again: HashSet<&str> = (records.iter().zip(hashed.iter()))
        .filter(|(_, read)| read.before == Take::Again)
        .map(|(record, _)| record.id.as_str())
        .collect();
    if again.is_empty() {
        return;
    }
    let mut copies: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        if again.contains(record.id.as_str()) {
            copies.entry(record.id.as_str()).or_default().push(i);
        }
    }
    for at in copies.values() {
        // Again for every copy when an earlier page took it.
        let taken = at.iter().find(|&&i| hashed[i].before != Take::Again);
        let taken = taken.map_or(Take::Again, |&i| hashed[i].before);
        for (n, &i) in at.iter().enumerate() {
            hashed[i].before = if n == 0 { taken } else { Take::Again };
        }
    }
}

/// Puts records of a second pass in play, with their hashes (they did not change).
pub(crate) fn add_in_play(read: &mut ScopeRead, records: Vec<Record>) {
    info!(
        connector = read.stats.connector,
        kind = read.stats.kind.plural(),
        records = records.len(),
        "read again: unlinked records for matching"
    );
    for record in &records {
        let hash = record_hash(&record.fields, record.version.as_deref());
        let keys = match_keys(&record.fields, &read.key_fields);
        let change = Change::Unchanged;
        read.hashes
            .insert(&record.id, Seen::read(hash, keys, change));
    }
    read.records.extend(records);
    read.stats.in_play = read.records.len() as u64;
}

/// Reads a full listing again and returns the records `keep` asks for; nothing else
/// (hashes, deletes, cursors) is looked at.
pub(crate) async fn read_more(
    connector_name: &str,
    connector: &dyn Connector,
    kind: EntityKind,
    keep: impl Fn(&Record) -> bool,
) -> Result<Vec<Record>, EngineError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = connector
            .read(kind, cursor.as_ref())
            .await
            .map_err(read_error(connector_name, kind))?;
        out.extend(page.records.into_iter().filter(|r| !r.deleted && keep(r)));
        cursor = page.cursor;
        if !page.has_more {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> Record {
        let mut fields = Fields::new();
        fields.set("name", Value::text(name));
        Record::new(EntityKind::Customer, id, fields)
    }

    /// Every record of a page big enough to be hashed on two threads, stored as read,
    /// and one record listed twice: last of the first thread's half as stored, first
    /// of the second thread's with a new name (so the second thread takes it first).
    fn page_with_a_copy() -> (Vec<Record>, StoredHashes) {
        let mut records: Vec<Record> = (0..2 * PARALLEL_HASHING)
            .map(|i| record(&format!("R{i}"), &format!("Name {i}")))
            .collect();
        let stored = records
            .iter()
            .map(|r| (r.id.as_str().into(), record_hash(&r.fields, None)))
            .collect();
        let copy = format!("R{PARALLEL_HASHING}");
        records.insert(PARALLEL_HASHING + 1, record(&copy, "Renamed"));
        (records, stored)
    }

    #[test]
    fn a_record_listed_twice_in_a_page_is_compared_by_its_first_copy_whatever_the_threads() {
        for _ in 0..20 {
            let (records, stored) = page_with_a_copy();
            let scope = Scope::new("erp", EntityKind::Customer);
            let mut read = ScopeRead::empty("erp", scope, None);
            let mut kept = tandem_model::PackedRecords::new();
            read.take(records, &stored, &|_| false, &mut kept);
            // The first copy is as stored; the second is new, and kept as the record.
            let kept: Vec<(String, Option<Value>)> = (kept.iter())
                .map(|r| (r.id().to_owned(), r.text("name").map(Value::text)))
                .collect();
            assert_eq!(kept, [("R20000".to_owned(), Some(Value::text("Renamed")))]);
            let seen: Vec<(&str, Change)> =
                read.hashes.iter().map(|(id, s)| (id, s.change)).collect();
            assert_eq!(seen, [("R20000", Change::New)]);
            assert_eq!((read.stats.records, read.stats.changed), (40_001, 1));
            assert!(stored.untaken().is_empty());
        }
    }
}
