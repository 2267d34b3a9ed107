//! The common partner model every connector maps to and the engine works on.
//!
//! Pure data: no IO, no async. Records carry canonical snake_case field names
//! ([`field`]) with typed [`Value`]s; empty values are never stored, so "missing",
//! `Null` and `""` all mean the same thing: the field is empty.

pub mod binary;
mod changes;
mod fields;
mod held;
mod kind;
mod packed;
mod record;
mod value;

pub mod field;
pub mod normalise;

pub use changes::Changes;
pub use fields::{FieldName, Fields, FieldsIter};
pub use held::{HeldBytes, PackedRecord, PackedRecords, RecordView, id_prefix};
pub use kind::{ContactType, EntityKind, ParseKindError};
pub use normalise::{CountryCode, PhoneRegion};
pub use packed::{ChangesIter, PackedChanges, PackedFields};
pub use record::{Record, Timestamp, TimestampError};
pub use value::{CalendarDate, SmolStr, Value, ValueError};
