//! The compact binary form of what the state stores per link (migration 8): baselines,
//! and the links of intent batches. JSON spent most of a first sync's state bytes on
//! quotes, braces and repeated keys, and its rendering was a visible share of the
//! commit; this form is read and written without an intermediate tree.
//!
//! Baseline: a version byte, a field count, then per field its name (length, bytes)
//! and its value in the binary form of `tandem_model::binary` (written there, read
//! here with errors for malformed rows). Never edit a shipped tag: stored states hold
//! them.
//!
//! Rows written before migration 8 hold JSON text; readers accept both.

use tandem_model::binary::{put_len, put_str, put_value};
use tandem_model::{FieldName, Fields, SmolStr, Timestamp, Value};

use crate::{Intent, Link};

/// The first byte of every encoded baseline and intent batch.
const VERSION: u8 = 1;

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_pairs<'a>(
    out: &mut Vec<u8>,
    len: usize,
    pairs: impl Iterator<Item = (&'a FieldName, &'a Value)>,
) {
    put_len(out, len);
    for (name, value) in pairs {
        put_str(out, name.as_str());
        put_value(out, value);
    }
}

/// Appends `fields` in the baseline form (with its version byte).
pub(crate) fn encode_fields(out: &mut Vec<u8>, fields: &Fields) {
    out.push(VERSION);
    put_pairs(out, fields.len(), fields.iter());
}

fn put_intent(out: &mut Vec<u8>, intent: &Intent) {
    for side in [&intent.contact, &intent.account] {
        put_pairs(out, side.len(), side.iter().map(|(n, v)| (n, v)));
    }
}

/// Appends a whole link (the intent batches' form, without the version byte).
fn put_link(out: &mut Vec<u8>, l: &Link) {
    put_str(out, &l.code);
    put_str(out, &l.contact_id);
    put_str(out, &l.account_id);
    put_pairs(out, l.baseline.len(), l.baseline.iter());
    put_opt_str(out, l.contact_version.as_deref());
    put_opt_str(out, l.account_version.as_deref());
    put_opt_str(out, l.last_error.as_deref());
    put_len(out, l.failure_count as usize);
    out.push(u8::from(l.parked));
    out.extend_from_slice(&l.linked_at.0.to_le_bytes());
    out.extend_from_slice(&l.synced_at.0.to_le_bytes());
    match &l.intent {
        Some(intent) => {
            out.push(1);
            put_intent(out, intent);
        }
        None => out.push(0),
    }
}

/// The links of an intent batch, encoded.
pub(crate) fn encode_links(links: &[Link]) -> Vec<u8> {
    let mut out = Vec::with_capacity(links.len() * 160 + 8);
    out.push(VERSION);
    put_len(&mut out, links.len());
    for link in links {
        put_link(&mut out, link);
    }
    out
}

/// Reads the encoded form; every method fails with a message on malformed input.
pub(crate) struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
}

type Read<T> = Result<T, String>;

impl<'b> Reader<'b> {
    pub(crate) fn new(bytes: &'b [u8]) -> Reader<'b> {
        Reader { bytes, at: 0 }
    }

    fn byte(&mut self) -> Read<u8> {
        let b = *self.bytes.get(self.at).ok_or("truncated")?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Read<&'b [u8]> {
        let end = self.at.checked_add(n).ok_or("bad length")?;
        let slice = self.bytes.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(slice)
    }

    fn len(&mut self) -> Read<usize> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("bad length".into())
    }

    fn str(&mut self) -> Read<&'b str> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }

    fn opt_str(&mut self) -> Read<Option<String>> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?.to_owned())),
            b => Err(format!("bad option tag {b}")),
        }
    }

    fn i64(&mut self) -> Read<i64> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(b.try_into().map_err(|_| "truncated")?))
    }

    fn value(&mut self) -> Read<Value> {
        Ok(match self.byte()? {
            b'T' => Value::Text(SmolStr::new(self.str()?)),
            b'D' => Value::date(self.str()?).map_err(|e| e.to_string())?,
            b'B' => Value::Bool(self.byte()? != 0),
            b'N' => Value::Number(f64::from_bits(self.i64()?.cast_unsigned())),
            b'L' => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.str()?.to_owned());
                }
                Value::list(items)
            }
            b'0' => Value::Null,
            tag => return Err(format!("bad value tag {tag}")),
        })
    }

    fn pairs(&mut self) -> Read<Vec<(FieldName, Value)>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let name = FieldName::new(self.str()?);
            out.push((name, self.value()?));
        }
        Ok(out)
    }

    fn fields(&mut self) -> Read<Fields> {
        let pairs = self.pairs()?;
        let mut fields = Fields::with_capacity(pairs.len());
        for (name, value) in pairs {
            fields.set(name, value);
        }
        Ok(fields)
    }

    fn version(&mut self) -> Read<()> {
        match self.byte()? {
            VERSION => Ok(()),
            v => Err(format!("unknown encoding version {v}")),
        }
    }

    fn done(&self) -> Read<()> {
        match self.at == self.bytes.len() {
            true => Ok(()),
            false => Err("trailing bytes".into()),
        }
    }

    fn link(&mut self) -> Read<Link> {
        let code = self.str()?.to_owned();
        let contact_id = self.str()?.to_owned();
        let account_id = self.str()?.to_owned();
        let baseline = self.fields()?;
        let contact_version = self.opt_str()?;
        let account_version = self.opt_str()?;
        let last_error = self.opt_str()?;
        let failure_count = u32::try_from(self.len()?).map_err(|e| e.to_string())?;
        let parked = self.byte()? != 0;
        let linked_at = Timestamp(self.i64()?);
        let synced_at = Timestamp(self.i64()?);
        let intent = match self.byte()? {
            0 => None,
            1 => Some(Intent {
                contact: self.pairs()?,
                account: self.pairs()?,
            }),
            b => return Err(format!("bad intent tag {b}")),
        };
        Ok(Link {
            code,
            contact_id,
            account_id,
            baseline,
            contact_version,
            account_version,
            last_error,
            failure_count,
            parked,
            linked_at,
            synced_at,
            intent,
        })
    }
}

/// A baseline stored by [`encode_fields`].
pub(crate) fn decode_fields(bytes: &[u8]) -> Read<Fields> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let fields = r.fields()?;
    r.done()?;
    Ok(fields)
}

/// The links of an intent batch stored by [`encode_links`].
pub(crate) fn decode_links(bytes: &[u8]) -> Read<Vec<Link>> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let n = r.len()?;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        out.push(r.link()?);
    }
    r.done()?;
    Ok(out)
}

/// One stored content hash: a record's id, the hash of its content, and the hash of
/// its match keys as the run that stored it read them (`None`: never given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HashEntry {
    pub(crate) id: String,
    pub(crate) hash: u64,
    pub(crate) keys: Option<u64>,
}

/// A page of content hashes (SQLite's `record_hash_pages`, migration 10): a version
/// byte, a count, then per entry in id order: the bytes its id shares with the id
/// before it, the rest of its id (length, bytes), its hash (eight bytes), and its
/// match keys (a tag byte, then eight bytes when there are some). Ids of one scope
/// mostly share a long prefix, so a page of 64 entries takes about 1.5 KB.
pub(crate) fn encode_hash_page(entries: &[HashEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * 24);
    out.push(VERSION);
    put_len(&mut out, entries.len());
    let mut before: &[u8] = &[];
    for entry in entries {
        let id = entry.id.as_bytes();
        let shared = before.iter().zip(id).take_while(|(a, b)| a == b).count();
        put_len(&mut out, shared);
        put_len(&mut out, id.len() - shared);
        out.extend_from_slice(&id[shared..]);
        out.extend_from_slice(&entry.hash.to_le_bytes());
        match entry.keys {
            Some(keys) => {
                out.push(1);
                out.extend_from_slice(&keys.to_le_bytes());
            }
            None => out.push(0),
        }
        before = id;
    }
    out
}

/// Calls `each` with the id, hash and match keys of every entry of a page stored by
/// [`encode_hash_page`], in id order; returns the number of entries.
pub(crate) fn decode_hash_page(
    bytes: &[u8],
    mut each: impl FnMut(&str, u64, Option<u64>),
) -> Read<usize> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let n = r.len()?;
    let mut id: Vec<u8> = Vec::new();
    for _ in 0..n {
        let shared = r.len()?;
        if shared > id.len() {
            return Err("bad shared prefix".into());
        }
        id.truncate(shared);
        let rest = r.len()?;
        id.extend_from_slice(r.take(rest)?);
        let hash = r.i64()?.cast_unsigned();
        let keys = match r.byte()? {
            0 => None,
            1 => Some(r.i64()?.cast_unsigned()),
            b => return Err(format!("bad match keys tag {b}")),
        };
        each(
            std::str::from_utf8(&id).map_err(|e| e.to_string())?,
            hash,
            keys,
        );
    }
    r.done()?;
    Ok(n)
}

/// The entries of a page stored by [`encode_hash_page`].
pub(crate) fn hash_page_entries(bytes: &[u8]) -> Read<Vec<HashEntry>> {
    let mut out = Vec::new();
    decode_hash_page(bytes, |id, hash, keys| {
        out.push(HashEntry {
            id: id.to_owned(),
            hash,
            keys,
        });
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fields {
        Fields::new()
            .with("name", "Acme NV")
            .with("city", "Gent — Zuid")
            .with(
                "business_relations",
                Value::list(vec!["CUST".into(), "VEND".into()]),
            )
            .with("active", Value::Bool(true))
            .with("credit", Value::Number(1234.5))
            .with("founded", Value::date("2001-02-03").unwrap())
    }

    #[test]
    fn baselines_round_trip() {
        let mut out = Vec::new();
        encode_fields(&mut out, &sample());
        assert_eq!(decode_fields(&out).unwrap(), sample());
        let mut empty = Vec::new();
        encode_fields(&mut empty, &Fields::new());
        assert_eq!(decode_fields(&empty).unwrap(), Fields::new());
        // Long values need a multi-byte length.
        let long = Fields::new().with("address", "x".repeat(70_000).as_str());
        let mut out = Vec::new();
        encode_fields(&mut out, &long);
        assert_eq!(decode_fields(&out).unwrap(), long);
    }

    #[test]
    fn links_round_trip() {
        let link = Link {
            code: "CUST".into(),
            contact_id: "C1".into(),
            account_id: "K1".into(),
            baseline: sample(),
            contact_version: Some("v1".into()),
            account_version: None,
            last_error: Some("503".into()),
            failure_count: 300,
            parked: true,
            linked_at: Timestamp(1_700_000_000_000),
            synced_at: Timestamp(-5),
            intent: Some(Intent {
                contact: vec![("phone".into(), Value::Null)],
                account: vec![("name".into(), Value::text("Old"))],
            }),
        };
        let plain = Link {
            intent: None,
            ..link.clone()
        };
        let bytes = encode_links(&[link.clone(), plain.clone()]);
        assert_eq!(decode_links(&bytes).unwrap(), vec![link, plain]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        encode_fields(&mut out, &sample());
        for cut in 0..out.len() {
            assert!(decode_fields(&out[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_fields(&[9, 0]).is_err());
        let links = encode_links(&[]);
        assert!(decode_links(&links).unwrap().is_empty());
        assert!(decode_links(&[1, 5]).is_err());
    }

    #[test]
    fn hash_pages_round_trip() {
        let entries = vec![
            HashEntry {
                id: "C000123".into(),
                hash: u64::MAX,
                keys: None,
            },
            HashEntry {
                id: "C000124".into(),
                hash: 0,
                keys: Some(7),
            },
            // A shared prefix that ends inside a character of more than one byte.
            HashEntry {
                id: "C000124é".into(),
                hash: 1,
                keys: Some(u64::MAX),
            },
            HashEntry {
                id: "C000124è".into(),
                hash: 2,
                keys: Some(0),
            },
            HashEntry {
                id: "D".into(),
                hash: 3,
                keys: None,
            },
        ];
        let bytes = encode_hash_page(&entries);
        assert_eq!(hash_page_entries(&bytes).unwrap(), entries);
        assert!(
            hash_page_entries(&encode_hash_page(&[]))
                .unwrap()
                .is_empty()
        );
        for cut in 0..bytes.len() {
            assert!(hash_page_entries(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
