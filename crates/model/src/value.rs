use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use smol_str::SmolStr;

/// A typed field value.
///
/// Serialised to JSON as the natural JSON type (`Text` as a string, `List` as an array
/// of strings, ...), except `Date`, which is `{"date": "YYYY-MM-DD"}` so that it
/// survives a round trip as a date.
///
/// Text is a [`SmolStr`]: most field values (a phone number, a post code, a city) fit
/// in its 23 inline bytes, so a million records do not make ten million small heap
/// allocations, and copying a value into a plan, a baseline or a log entry is a copy of
/// 24 bytes (or a reference count for longer text), not a new allocation.
#[derive(Debug, Clone)]
pub enum Value {
    Text(SmolStr),
    Bool(bool),
    Number(f64),
    /// An ISO 8601 calendar date, `YYYY-MM-DD`, checked by [`Value::date`].
    Date(CalendarDate),
    /// Boxed, like the date kept in ten bytes, so that a value is 24 bytes (a text's
    /// size) and not 32: lists are rare (business relations), values are millions.
    List(Box<Vec<String>>),
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` is not a date of the form YYYY-MM-DD")]
    BadDate(String),
}

impl Value {
    /// A text value; `None`-like input (empty after nothing) stays text, see [`Value::is_empty`].
    pub fn text(s: impl Into<SmolStr>) -> Value {
        Value::Text(s.into())
    }

    /// A checked calendar date.
    pub fn date(s: &str) -> Result<Value, ValueError> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let ok = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && digits(0..4)
            && digits(5..7)
            && digits(8..10);
        let month: u32 = if ok { s[5..7].parse().unwrap_or(0) } else { 0 };
        let day: u32 = if ok { s[8..10].parse().unwrap_or(0) } else { 0 };
        if ok && (1..=12).contains(&month) && (1..=31).contains(&day) {
            let mut bytes = [0; 10];
            bytes.copy_from_slice(b);
            Ok(Value::Date(CalendarDate(bytes)))
        } else {
            Err(ValueError::BadDate(s.to_owned()))
        }
    }

    /// A list of texts (business relations, categories).
    pub fn list(mut items: Vec<String>) -> Value {
        // A value may be held for long (a plan holds one per contact it writes): a
        // vector grown by pushing, or collected in place from a bigger item type,
        // keeps room it will never use.
        items.shrink_to_fit();
        Value::List(Box::new(items))
    }

    /// Empty values are `Null`, empty text and empty lists. They are never stored in
    /// [`crate::Fields`] and never match anything.
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Text(s) => s.is_empty(),
            Value::List(l) => l.is_empty(),
            _ => false,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Date(d) => Some(d),
            _ => None,
        }
    }

    /// The value as a flat string, as written to a CSV cell: lists are joined with `;`,
    /// `Null` is the empty string.
    pub fn to_cell(&self) -> String {
        self.cell().into_owned()
    }

    /// [`Value::to_cell`], borrowed where the value holds the text (a text, `Null`): a
    /// writer of a million rows makes no copy of each cell it writes.
    pub fn cell(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Value::Text(s) => Cow::Borrowed(s.as_str()),
            Value::Null => Cow::Borrowed(""),
            Value::Date(d) => Cow::Owned(d.to_string()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
            Value::Number(n) => Cow::Owned(format_number(*n)),
            Value::List(l) => Cow::Owned(l.join(";")),
        }
    }

    /// Feeds a stable byte encoding of the value to `out` (used for content hashes).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Text(s) => {
                out.push(b'T');
                push_str(out, s);
            }
            Value::Bool(b) => out.extend_from_slice(if *b { b"B1" } else { b"B0" }),
            Value::Number(n) => {
                out.push(b'N');
                out.extend_from_slice(&n.to_bits().to_le_bytes());
            }
            Value::Date(s) => {
                out.push(b'D');
                push_str(out, s);
            }
            Value::List(l) => {
                out.push(b'L');
                out.extend_from_slice(&(l.len() as u64).to_le_bytes());
                for item in l.iter() {
                    push_str(out, item);
                }
            }
            Value::Null => out.push(b'0'),
        }
    }
}

/// What feeds a content hash: a value, or a value still packed
/// (`crate::packed::PackedValue`), the same bytes for the same value.
pub(crate) trait HashEncode {
    fn encode_for_hash(&self, out: &mut Vec<u8>);
}

impl HashEncode for &Value {
    fn encode_for_hash(&self, out: &mut Vec<u8>) {
        self.encode(out);
    }
}

/// A checked `YYYY-MM-DD` date, kept as its ten ASCII bytes (made only by
/// [`Value::date`]); reads as a `&str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CalendarDate([u8; 10]);

impl CalendarDate {
    pub fn as_str(&self) -> &str {
        // Checked ASCII digits and dashes when made.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for CalendarDate {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Values compare by content; all empty values are equal to each other, and numbers
/// compare by bit pattern so that equality is reflexive.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (a, b) if a.is_empty() && b.is_empty() => true,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Number(a), Value::Number(b)) => a.to_bits() == b.to_bits(),
            (Value::Date(a), Value::Date(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_cell())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(SmolStr::new(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(SmolStr::from(s))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Text(s) => serializer.serialize_str(s),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(n) => {
                if n.fract() == 0.0 && n.abs() < 9e15 {
                    serializer.serialize_i64(*n as i64)
                } else {
                    serializer.serialize_f64(*n)
                }
            }
            Value::Date(d) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("date", d.as_str())?;
                map.end()
            }
            Value::List(l) => l.serialize(serializer),
            Value::Null => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a string, boolean, number, list of strings, null or {\"date\": \"YYYY-MM-DD\"}",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(SmolStr::new(v)))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(SmolStr::from(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            if !item.is_empty() {
                items.push(item.to_cell());
            }
        }
        Ok(Value::list(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut date: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "date" && date.is_none() {
                date = Some(map.next_value()?);
            } else {
                return Err(de::Error::custom(format!(
                    "unexpected key `{key}` in a field value; only {{\"date\": \"YYYY-MM-DD\"}} is an object value"
                )));
            }
        }
        let date = date.ok_or_else(|| de::Error::custom("an object value needs a `date` key"))?;
        Value::date(&date).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_value_is_as_small_as_a_text() {
        assert_eq!(size_of::<Value>(), size_of::<SmolStr>());
        let date = Value::date("2026-12-04").unwrap();
        assert_eq!(date.as_text(), Some("2026-12-04"));
        assert_eq!(date.to_cell(), "2026-12-04");
    }

    use super::*;

    #[test]
    fn empty_values_are_all_equal() {
        assert_eq!(Value::Null, Value::text(""));
        assert_eq!(Value::list(vec![]), Value::Null);
        assert_ne!(Value::text("a"), Value::Null);
        assert_ne!(
            Value::text("2024-01-01"),
            Value::date("2024-01-01").unwrap()
        );
    }

    #[test]
    fn dates_are_checked() {
        assert!(Value::date("2024-02-29").is_ok());
        assert!(Value::date("2024-13-01").is_err());
        assert!(Value::date("24-01-01").is_err());
    }

    #[test]
    fn json_round_trip_keeps_types() {
        let values = vec![
            Value::text("Acme"),
            Value::Bool(true),
            Value::Number(42.0),
            Value::Number(1.5),
            Value::date("2024-05-01").unwrap(),
            Value::list(vec!["CUST".into(), "VEND".into()]),
            Value::Null,
        ];
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(
            json,
            r#"["Acme",true,42,1.5,{"date":"2024-05-01"},["CUST","VEND"],null]"#
        );
        let back: Vec<Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, values);
    }

    #[test]
    fn cells_flatten_lists_and_numbers() {
        assert_eq!(Value::list(vec!["A".into(), "B".into()]).to_cell(), "A;B");
        assert_eq!(Value::Number(3.0).to_cell(), "3");
        assert_eq!(Value::Null.to_cell(), "");
    }
}
