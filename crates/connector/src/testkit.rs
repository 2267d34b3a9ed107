//! The conformance kit: the standard contract tests, run against any connector instance
//! with one call (cargo feature `testkit`).
//!
//! ```ignore
//! use tandem_connector::testkit::{check_conformance, Options};
//!
//! #[tokio::test]
//! async fn conforms() {
//!     let connector = my_connector_on_a_scratch_system();
//!     check_conformance(&connector, &Options::default()).await.assert_passed();
//! }
//! ```
//!
//! The kit writes through the connector: give it a scratch system (an empty folder, a
//! test database, a sandbox account), seeded or reset by the test as it likes before
//! the call. Records already there are left alone; every record the kit creates is
//! deleted again at the end when the connector deletes. The system must be quiet while
//! the kit runs: the cursor checks expect to read back exactly the kit's own changes.
//!
//! # Checks
//!
//! Each entry of the [`Report`] names its check and, for per-kind checks, the kind.
//! A check that does not apply (the connector reports no versions, does not read
//! incrementally, ...) or whose setup failed is [`Status::Skipped`] with the reason.
//!
//! | name | what must hold |
//! |---|---|
//! | `check` | [`Connector::check`] succeeds. |
//! | `capabilities` | at least one kind, no kind twice, `max_batch >= 1`, every kind in [`Options::kinds`] held. |
//! | `unheld_kind` | a kind the connector does not hold is refused by `read` (an empty full listing would tell the engine that every record was deleted) and by `write`. |
//! | `full_listing` | a read without cursor is a [`Listing::Full`], pages chain through their cursors to `has_more == false`, no id twice, no tombstones. |
//! | `write_refused` | without `write`: a create is refused with an error that is not retryable, and nothing appears. |
//! | `batch` | a batch of `min(max_batch, Options::max_batch)` creates in one call gives one successful outcome per op, with distinct ids. |
//! | `paging` | the next full listing holds every record of the batch exactly once, over however many pages. |
//! | `read_ids` | [`Connector::read_ids`] of some records of the batch (or of the listing, without writes), one record that was there before and ids that do not exist returns exactly the existing records asked for, once each, equal (fields and version) to what a full listing shows; the unknown ids are left out, not an error; no ids, no records. |
//! | `chosen_id` | for a connector whose [`Connector::new_id`] gives ids: two calls give two ids; a create carrying one makes its record under exactly that id, listed once; a second create with the same id makes no second record (it fails with [`ConnectorError::Conflict`], or succeeds as that record). Skipped when the connector assigns ids itself. |
//! | `changes` | incremental: a read from the cursor the first listing ended with returns exactly the batch's creates, once each, as [`Listing::Changes`]. |
//! | `round_trip_create` | a record created with every canonical field of the kind and some `x_` extras reads back equal (by parsed value); the version the create reported is the version read. |
//! | `round_trip_update` | an update that changes every field and clears one, carrying the current version, reads back equal. |
//! | `version_changes` | with versions: the update changed the version, it is the one the write reported, and reading twice gives the same version. |
//! | `partial_update` | an update naming one field leaves the others as they were. |
//! | `stale_version` | with versions: an update and a delete carrying an old version fail with [`ConnectorError::Conflict`] and change nothing. |
//! | `unknown_fields` | with [`Options::unknown_field`]: data injected out of band survives an update. |
//! | `invalid_field` | a create and an update naming a field that is neither canonical for the kind nor `x_` fail with [`ConnectorError::InvalidRecord`], alone: the valid create next to it in the same call (when `max_batch` allows two) succeeds. |
//! | `cursor` | after a create, an update and a delete, a read from the last cursor returns exactly those changes, the delete as a tombstone, and a read from its cursor returns nothing (incremental); or a full listing with the created and updated records and without the deleted one (full listing). |
//! | `delete` | a delete carrying the current version succeeds, a completed listing no longer holds the record and `read_ids` no longer returns it. |
//! | `delete_refused` | without `delete`: a delete is refused with an error that is not retryable, and the record stays. |
//! | `not_found` | an update and a delete of an id that does not exist (any more) fail with [`ConnectorError::NotFound`]. |
//! | `cleanup` | every record the kit created was deleted again. |
//!
//! Values are compared by parsed value: a value read back equals the one written when
//! both are equal [`Value`]s or when they are written the same way as a cell
//! ([`Value::to_cell`]); so a connector that stores everything as text, like CSV,
//! passes, while one that loses or alters content does not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use tandem_model::{EntityKind, FieldName, Fields, Record, Value, field};

use crate::{Capabilities, Changes, Connector, ConnectorError, Cursor, Listing, WriteOp, Written};

/// What [`check_conformance`] exercises, and how.
///
/// Build it with struct update syntax:
/// `Options { max_batch: 10, ..Options::default() }`.
pub struct Options {
    /// The kinds to exercise. `None` (the default) exercises every kind of
    /// [`Capabilities::kinds`]; a kind named here that the connector does not hold fails
    /// the `capabilities` check.
    pub kinds: Option<Vec<EntityKind>>,
    /// The size of the batch the `batch` check writes in one call, capped by
    /// [`Capabilities::max_batch`]. At least 2 exercises the `cursor` check's delete.
    /// Default 50.
    pub max_batch: usize,
    /// The fields of sample record number `variant` (0, 1, 2, ...) of a kind. Variants
    /// must differ from each other in every field. Default [`sample_fields`]: every
    /// canonical field of the kind plus a few `x_` extras. Replace it for a connector
    /// that maps fewer fields or needs particular values (a valid `company_id`, ...).
    pub sample: fn(EntityKind, u32) -> Fields,
    /// Whether a write naming a field that is neither canonical for the kind nor an
    /// `x_` extra must fail with [`ConnectorError::InvalidRecord`]. Default `true`; set
    /// it to `false` for a connector that legitimately stores any name, and the
    /// `invalid_field` check is skipped.
    pub refuses_unknown_names: bool,
    /// A hook that stores data the connector does not map on a record out of band and
    /// checks that it survived; `None` (the default) skips the `unknown_fields` check.
    pub unknown_field: Option<Box<dyn UnknownField>>,
    /// The most pages one listing may take before the kit gives up on it (a connector
    /// that never ends a listing). Default 10 000.
    pub max_pages: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            kinds: None,
            max_batch: 50,
            sample: sample_fields,
            refuses_unknown_names: true,
            unknown_field: None,
            max_pages: 10_000,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("kinds", &self.kinds)
            .field("max_batch", &self.max_batch)
            .field("refuses_unknown_names", &self.refuses_unknown_names)
            .field("unknown_field", &self.unknown_field.is_some())
            .field("max_pages", &self.max_pages)
            .finish_non_exhaustive()
    }
}

/// Out-of-band access to data a connector keeps but does not map (a CSV column that is
/// not a field, a JSON key, a database column), for the `unknown_fields` check.
///
/// The kit creates a record through the connector, calls [`UnknownField::inject`],
/// reads the record again (injecting may change its version), updates one of its
/// fields through the connector and calls [`UnknownField::verify`].
#[async_trait::async_trait]
pub trait UnknownField: Send + Sync {
    /// Stores data the connector does not map on record `id` of `kind`, as another
    /// application using the system would. `Err` says why it could not.
    async fn inject(&self, kind: EntityKind, id: &str) -> Result<(), String>;

    /// Checks that the data injected on `id` is still there, unchanged. `Err` says what
    /// is missing or different.
    async fn verify(&self, kind: EntityKind, id: &str) -> Result<(), String>;
}

/// An [`UnknownField`] made of two plain (blocking) functions, for tests whose
/// out-of-band access is a file or a local database.
pub fn unknown_field_with<I, V>(inject: I, verify: V) -> Box<dyn UnknownField>
where
    I: Fn(EntityKind, &str) -> Result<(), String> + Send + Sync + 'static,
    V: Fn(EntityKind, &str) -> Result<(), String> + Send + Sync + 'static,
{
    Box::new(FnUnknownField { inject, verify })
}

struct FnUnknownField<I, V> {
    inject: I,
    verify: V,
}

#[async_trait::async_trait]
impl<I, V> UnknownField for FnUnknownField<I, V>
where
    I: Fn(EntityKind, &str) -> Result<(), String> + Send + Sync,
    V: Fn(EntityKind, &str) -> Result<(), String> + Send + Sync,
{
    async fn inject(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        (self.inject)(kind, id)
    }

    async fn verify(&self, kind: EntityKind, id: &str) -> Result<(), String> {
        (self.verify)(kind, id)
    }
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Passed,
    Failed,
    /// The check does not apply to this connector, or its setup failed (the failure is
    /// reported by the check that set it up).
    Skipped,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Passed => "ok",
            Status::Failed => "FAIL",
            Status::Skipped => "skip",
        }
    }
}

/// One check of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name, see the module docs (`round_trip_create`, `cursor`, ...).
    pub name: &'static str,
    /// The kind the check exercised; `None` for connector-wide checks.
    pub kind: Option<EntityKind>,
    pub status: Status,
    /// What failed, why the check was skipped, or a note on what passed.
    pub message: String,
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {}", self.status.label(), self.name)?;
        if let Some(kind) = self.kind {
            write!(f, " [{kind}]")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// What [`check_conformance`] found: every check in the order it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// Whether no check failed (skipped checks do not count as failures).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Failed)
    }

    /// The result of check `name` for `kind` (`None` for connector-wide checks).
    pub fn get(&self, name: &str, kind: Option<EntityKind>) -> Option<&CheckResult> {
        self.checks
            .iter()
            .find(|c| c.name == name && c.kind == kind)
    }

    /// Panics with a readable summary, failures first, when a check failed; for use at
    /// the end of a `#[tokio::test]`.
    #[track_caller]
    pub fn assert_passed(&self) {
        if self.passed() {
            return;
        }
        let failed: Vec<String> = self.failures().map(ToString::to_string).collect();
        panic!(
            "{} of {} conformance checks failed:\n  {}\n\nall checks:\n{self}",
            failed.len(),
            self.checks.len(),
            failed.join("\n  ")
        );
    }

    fn add(
        &mut self,
        name: &'static str,
        kind: Option<EntityKind>,
        status: Status,
        message: impl Into<String>,
    ) {
        self.checks.push(CheckResult {
            name,
            kind,
            status,
            message: message.into(),
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "  {check}")?;
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            count(Status::Passed),
            count(Status::Failed),
            count(Status::Skipped)
        )
    }
}

/// The field that [`sample_fields`] names in no model: writes naming it must fail with
/// [`ConnectorError::InvalidRecord`] unless [`Options::refuses_unknown_names`] is off.
pub const NOT_A_FIELD: &str = "conformance_not_a_field";

/// Sample record number `variant` of `kind`: every canonical field of the kind (the
/// common ones, plus the contact-only or bank-only ones) filled with a value of its
/// own, plus the extras `x_conformance_note` (text), `x_conformance_rating` (a number)
/// and `x_conformance_since` (a date). Two variants differ in every field. One value
/// holds a comma, double quotes and non-ASCII letters.
pub fn sample_fields(kind: EntityKind, variant: u32) -> Fields {
    let mut fields = Fields::new();
    for name in kind_fields(kind) {
        fields.set(name, sample_value(name, kind, variant));
    }
    fields.set("x_conformance_note", Value::text(format!("note {variant}")));
    fields.set("x_conformance_rating", Value::Number(variant as f64 + 0.5));
    let since = format!("2024-{:02}-{:02}", 1 + variant % 12, 1 + variant % 28);
    fields.set(
        "x_conformance_since",
        Value::date(&since).expect("a valid date"),
    );
    fields
}

/// The canonical fields of `kind`.
fn kind_fields(kind: EntityKind) -> Vec<&'static str> {
    let mut names = field::COMMON.to_vec();
    match kind {
        EntityKind::Contact => names.extend_from_slice(field::CONTACT_ONLY),
        EntityKind::BankAccount => names.extend_from_slice(field::BANK_ONLY),
        EntityKind::Customer | EntityKind::Vendor => {}
    }
    names
}

fn pick(options: &[&str], variant: u32) -> String {
    options[variant as usize % options.len()].to_owned()
}

fn sample_value(name: &str, kind: EntityKind, v: u32) -> Value {
    let text = match name {
        field::NAME => format!("Conformance {kind} {v}"),
        field::NAME_2 => format!("c/o \"Zo\u{eb} M\u{fc}ller\", unit {v}"),
        field::ADDRESS => format!("{v} Sample Street"),
        field::ADDRESS_2 => format!("Floor {v}"),
        field::CITY => format!("Sample City {v}"),
        field::POST_CODE => format!("{}", 1000 + v),
        field::COUNTY => format!("County {v}"),
        field::COUNTRY_CODE => pick(&["BE", "NL", "DE", "FR", "LU", "AT", "DK"], v),
        field::PHONE => format!("+32 9 100 {v:04}"),
        field::MOBILE_PHONE => format!("+32 470 20 {v:04}"),
        field::FAX => format!("+32 9 300 {v:04}"),
        field::EMAIL => format!("conformance{v}@example.invalid"),
        field::HOME_PAGE => format!("https://example.invalid/{v}"),
        field::VAT_REGISTRATION_NO => format!("BE0{}", 400_000_000 + v),
        field::REGISTRATION_NO => format!("REG-{v}"),
        field::CURRENCY_CODE => pick(&["EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK"], v),
        field::LANGUAGE_CODE => pick(&["NLB", "FRB", "DEU", "ENU", "ESP", "ITA", "DAN"], v),
        field::SALESPERSON_CODE => format!("SP{v}"),
        field::TERRITORY_CODE => format!("T{v}"),
        field::CONTACT_TYPE => pick(&["company", "person"], v),
        field::COMPANY_ID => format!("conformance-company-{v}"),
        field::FIRST_NAME => format!("First{v}"),
        field::SURNAME => format!("Surname{v}"),
        field::JOB_TITLE => format!("Title {v}"),
        field::BUSINESS_RELATIONS => {
            let codes: &[&str] = match v % 3 {
                0 => &["CUST"],
                1 => &["CUST", "VEND"],
                _ => &["BANK"],
            };
            return Value::list(codes.iter().map(|c| (*c).to_owned()).collect());
        }
        field::IBAN => format!("BE68539007{v:06}"),
        field::SWIFT_CODE => pick(&["GEBABEBB", "KREDBEBB", "BBRUBEBB", "GKCCBEBB"], v),
        field::BANK_ACCOUNT_NO => format!("{v:010}"),
        field::BANK_BRANCH_NO => format!("{:03}", v % 1000),
        other => format!("{other} {v}"),
    };
    Value::text(text)
}

/// Runs every check that applies to `connector` and reports each one.
///
/// Never panics on a misbehaving connector: everything it does wrong is a failed check.
/// Call [`Report::assert_passed`] on the result in a test.
pub async fn check_conformance(connector: &dyn Connector, options: &Options) -> Report {
    let caps = connector.capabilities();
    let mut kit = Kit {
        c: connector,
        o: options,
        report: Report::default(),
        max_batch: caps.max_batch.max(1),
    };
    match connector.check().await {
        Ok(()) => kit.pass("check", None, ""),
        Err(e) => kit.fail("check", None, format!("check() failed: {e}")),
    }
    let kinds = kit.capabilities(&caps);
    for kind in EntityKind::ALL {
        if !caps.holds(kind) {
            kit.unheld_kind(kind, &caps).await;
        }
    }
    for kind in kinds {
        kit.kind(kind, &caps).await;
    }
    kit.report
}

/// A listing read to its last page.
#[derive(Debug)]
struct Listed {
    records: Vec<Record>,
    listing: Listing,
    pages: usize,
    /// The cursor of the last page.
    cursor: Option<Cursor>,
}

impl Listed {
    fn count(&self, id: &str) -> usize {
        self.records.iter().filter(|r| r.id == id).count()
    }

    fn get(&self, id: &str) -> Option<&Record> {
        self.records.iter().find(|r| r.id == id)
    }

    fn duplicates(&self) -> Vec<&str> {
        let mut seen = HashMap::new();
        for r in &self.records {
            *seen.entry(r.id.as_str()).or_insert(0) += 1;
        }
        let mut dups: Vec<&str> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        dups.sort_unstable();
        dups
    }

    fn pages_note(&self) -> String {
        match self.pages {
            1 => "1 page".to_owned(),
            n => format!("{n} pages"),
        }
    }
}

struct Kit<'a> {
    c: &'a dyn Connector,
    o: &'a Options,
    report: Report,
    /// The connector's `max_batch` (at least 1): no call gets more ops than this.
    max_batch: usize,
}

/// The records the kit created in one kind and has not deleted yet.
#[derive(Debug, Default)]
struct Created(Vec<String>);

impl Created {
    fn add(&mut self, id: &str) {
        self.0.push(id.to_owned());
    }
    fn forget(&mut self, id: &str) {
        self.0.retain(|i| i != id);
    }
}

impl Kit<'_> {
    fn pass(&mut self, name: &'static str, kind: Option<EntityKind>, message: impl Into<String>) {
        self.report.add(name, kind, Status::Passed, message);
    }

    fn fail(&mut self, name: &'static str, kind: Option<EntityKind>, message: impl Into<String>) {
        self.report.add(name, kind, Status::Failed, message);
    }

    fn skip(&mut self, name: &'static str, kind: Option<EntityKind>, message: impl Into<String>) {
        self.report.add(name, kind, Status::Skipped, message);
    }

    /// Passes when `problems` is empty, else fails with them joined.
    fn verdict(
        &mut self,
        name: &'static str,
        kind: Option<EntityKind>,
        problems: Vec<String>,
        note: impl Into<String>,
    ) -> bool {
        if problems.is_empty() {
            self.pass(name, kind, note);
            true
        } else {
            self.fail(name, kind, problems.join("; "));
            false
        }
    }

    fn capabilities(&mut self, caps: &Capabilities) -> Vec<EntityKind> {
        let mut problems = Vec::new();
        if caps.kinds.is_empty() {
            problems.push("no kinds".to_owned());
        }
        let distinct: BTreeSet<_> = caps.kinds.iter().collect();
        if distinct.len() != caps.kinds.len() {
            problems.push(format!("a kind is listed twice: {:?}", caps.kinds));
        }
        if caps.max_batch == 0 {
            problems.push("max_batch is 0; it must be at least 1".to_owned());
        }
        let kinds = match &self.o.kinds {
            None => distinct.into_iter().copied().collect(),
            Some(asked) => {
                let mut kinds = Vec::new();
                for kind in asked {
                    if !caps.holds(*kind) {
                        problems.push(format!(
                            "the options ask for {}, which the connector does not hold",
                            kind.plural()
                        ));
                    } else if !kinds.contains(kind) {
                        kinds.push(*kind);
                    }
                }
                kinds
            }
        };
        let note = format!(
            "kinds {}; {}; {}{}; max_batch {}",
            caps.kinds
                .iter()
                .map(|k| k.plural())
                .collect::<Vec<_>>()
                .join(", "),
            if caps.incremental {
                "incremental"
            } else {
                "full listings"
            },
            if caps.write { "writes" } else { "read-only" },
            if caps.delete { ", deletes" } else { "" },
            caps.max_batch
        );
        self.verdict("capabilities", None, problems, note);
        kinds
    }

    async fn unheld_kind(&mut self, kind: EntityKind, caps: &Capabilities) {
        const NAME: &str = "unheld_kind";
        let mut problems = Vec::new();
        match self.c.read(kind, None).await {
            Ok(page) => problems.push(format!(
                "reading {}, a kind the connector does not hold, returned a page of {} records \
                 instead of an error; an empty full listing would tell the engine that every \
                 record was deleted",
                kind.plural(),
                page.records.len()
            )),
            Err(e) if e.is_retryable() => problems.push(format!(
                "reading a kind the connector does not hold failed with a retryable error: {e}"
            )),
            Err(_) => {}
        }
        if caps.write {
            let op = WriteOp::create((self.o.sample)(kind, 0));
            match self.write_one(kind, op).await {
                Ok(written) => {
                    problems.push(format!(
                        "a create of a {kind}, a kind the connector does not hold, succeeded \
                         (id {})",
                        written.id
                    ));
                    // Best effort: do not leave it behind.
                    let _ = self
                        .write_one(
                            kind,
                            WriteOp::Delete {
                                id: written.id,
                                version: None,
                            },
                        )
                        .await;
                }
                Err(e) if e.is_retryable() => problems.push(format!(
                    "a write of a kind the connector does not hold failed with a retryable \
                     error: {e}"
                )),
                Err(_) => {}
            }
        }
        self.verdict(NAME, Some(kind), problems, "refused");
    }

    /// Reads a listing from `start` to its last page.
    async fn list(&self, kind: EntityKind, start: Option<Cursor>) -> Result<Listed, String> {
        let mut cursor = start;
        let mut records = Vec::new();
        let mut listing = None;
        let mut pages = 0;
        loop {
            if pages == self.o.max_pages {
                return Err(format!(
                    "the listing did not end after {} pages",
                    self.o.max_pages
                ));
            }
            let page = self
                .c
                .read(kind, cursor.as_ref())
                .await
                .map_err(|e| format!("read of page {} failed: {e}", pages + 1))?;
            pages += 1;
            if let Some(other) = page.records.iter().find(|r| r.kind != kind) {
                return Err(format!(
                    "page {pages} of a listing of {} holds record {} of kind {}",
                    kind.plural(),
                    other.id,
                    other.kind
                ));
            }
            match listing {
                None => listing = Some(page.listing),
                Some(first) if first != page.listing => {
                    return Err(format!(
                        "page {pages} says {:?} but the first page of the same read said {first:?}",
                        page.listing
                    ));
                }
                Some(_) => {}
            }
            records.extend(page.records);
            if !page.has_more {
                return Ok(Listed {
                    records,
                    listing: page.listing,
                    pages,
                    cursor: page.cursor,
                });
            }
            match page.cursor {
                None => {
                    return Err(format!(
                        "page {pages} says has_more but gives no cursor to read on"
                    ));
                }
                Some(next) if Some(&next) == cursor.as_ref() => {
                    return Err(format!(
                        "page {pages} says has_more but returns the cursor it was read with \
                         ({next}); the listing would never end"
                    ));
                }
                Some(next) => cursor = Some(next),
            }
        }
    }

    /// The record `id` as a full listing shows it.
    async fn fetch(&self, kind: EntityKind, id: &str) -> Result<Option<Record>, String> {
        let listed = self.list(kind, None).await?;
        if listed.listing != Listing::Full {
            return Err(format!(
                "a read without cursor returned {:?}, not a full listing",
                listed.listing
            ));
        }
        Ok(listed.get(id).cloned())
    }

    /// Writes `ops`, in calls of at most `max_batch` ops, checking that there is one
    /// outcome per op. An error of a call ends the write.
    async fn write(
        &self,
        kind: EntityKind,
        mut ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, ConnectorError>>, ConnectorError> {
        let mut all = Vec::with_capacity(ops.len());
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(self.max_batch));
            let n = ops.len();
            let outcomes = self.c.write(kind, ops).await?;
            if outcomes.len() != n {
                return Err(ConnectorError::fatal(format!(
                    "the connector returned {} outcomes for {n} operations",
                    outcomes.len()
                )));
            }
            all.extend(outcomes);
            ops = rest;
        }
        Ok(all)
    }

    /// Writes one op; an error of the whole call counts as the op's error.
    async fn write_one(&self, kind: EntityKind, op: WriteOp) -> Result<Written, ConnectorError> {
        self.write(kind, vec![op])
            .await?
            .pop()
            .expect("one outcome, checked by write")
    }

    async fn kind(&mut self, kind: EntityKind, caps: &Capabilities) {
        let k = Some(kind);
        // Full listing.
        let initial = match self.list(kind, None).await {
            Ok(listed) => listed,
            Err(e) => {
                self.fail("full_listing", k, e);
                self.skip_all(kind, caps, "the kind cannot be listed");
                return;
            }
        };
        let mut problems = Vec::new();
        if initial.listing != Listing::Full {
            problems.push(format!(
                "a read without cursor returned {:?}, not a full listing",
                initial.listing
            ));
        }
        let dups = initial.duplicates();
        if !dups.is_empty() {
            problems.push(format!("ids listed more than once: {}", dups.join(", ")));
        }
        let tombstones: Vec<&str> = initial
            .records
            .iter()
            .filter(|r| r.deleted)
            .map(|r| r.id.as_str())
            .collect();
        if !tombstones.is_empty() {
            problems.push(format!(
                "tombstones in a full listing: {}",
                tombstones.join(", ")
            ));
        }
        let note = format!(
            "{} records, {}",
            initial.records.len(),
            initial.pages_note()
        );
        self.verdict("full_listing", k, problems, note);

        if !caps.write {
            self.read_ids(kind, &initial, &[]).await;
            self.write_refused(kind).await;
            return;
        }
        let mut created = Created::default();
        self.kind_writes(kind, caps, initial, &mut created).await;
        self.cleanup(kind, caps, created).await;
    }

    /// Every check that needs records of its own, in order; returns early (with the
    /// remaining checks skipped) when a record the rest needs could not be made.
    async fn kind_writes(
        &mut self,
        kind: EntityKind,
        caps: &Capabilities,
        initial: Listed,
        created: &mut Created,
    ) {
        let k = Some(kind);
        let sample = self.o.sample;

        // Batch.
        let n = self.o.max_batch.min(caps.max_batch).max(1);
        let ops = (0..n)
            .map(|i| WriteOp::create(sample(kind, 10 + i as u32)))
            .collect();
        let batch: Vec<(String, Fields)> = match self.write(kind, ops).await {
            Err(e) => {
                self.fail("batch", k, format!("a write of {n} creates failed: {e}"));
                Vec::new()
            }
            Ok(outcomes) => {
                let mut problems = Vec::new();
                let mut ids = Vec::new();
                for (i, outcome) in outcomes.into_iter().enumerate() {
                    match outcome {
                        Ok(written) => {
                            created.add(&written.id);
                            ids.push((written.id, sample(kind, 10 + i as u32)));
                        }
                        Err(e) => problems.push(format!("create {} of {n} failed: {e}", i + 1)),
                    }
                }
                let distinct: BTreeSet<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
                if distinct.len() != ids.len() {
                    problems.push("the creates were given the same id twice".to_owned());
                }
                self.verdict(
                    "batch",
                    k,
                    problems,
                    format!("{n} create{} in one call", if n == 1 { "" } else { "s" }),
                );
                ids
            }
        };
        if batch.is_empty() {
            self.skip_rest(
                kind,
                caps,
                &["paging", "read_ids", "changes", "cursor"],
                "the batch created nothing",
            );
        } else {
            self.paging(kind, &batch).await;
            self.read_ids(kind, &initial, &batch).await;
            self.changes(kind, caps, &initial, &batch).await;
        }

        self.chosen_id(kind, created).await;

        // Round trip.
        let Some(mut record) = self.round_trip(kind, created).await else {
            self.skip_rest(
                kind,
                caps,
                &[
                    "round_trip_update",
                    "version_changes",
                    "partial_update",
                    "stale_version",
                    "unknown_fields",
                    "invalid_field",
                    "delete",
                    "delete_refused",
                    "not_found",
                ],
                "needs the record of round_trip_create",
            );
            if !batch.is_empty() {
                self.cursor(kind, caps, &batch, created).await;
            }
            return;
        };
        let versioned = record.version.is_some();
        let stale = match self.round_trip_update(kind, &record).await {
            Some(updated) => {
                let stale = record.version.clone();
                record = updated;
                self.partial_update(kind, &mut record).await;
                stale
            }
            None => {
                self.skip_rest(
                    kind,
                    caps,
                    &["version_changes", "partial_update", "stale_version"],
                    "needs the update of round_trip_update",
                );
                None
            }
        };
        if versioned {
            match stale {
                Some(stale) if record.version.as_ref() == Some(&stale) => self.skip(
                    "stale_version",
                    k,
                    "the version did not change on update (see version_changes)",
                ),
                Some(stale) => self.stale_version(kind, &record, stale).await,
                None => {}
            }
        } else {
            self.skip(
                "stale_version",
                k,
                "the connector reports no versions for this kind",
            );
        }
        self.unknown_fields(kind, created).await;
        // Data injected out of band may have rewritten other records too (a whole
        // file, say): carry on from the record as it is now.
        self.refresh(kind, &mut record).await;
        self.invalid_field(kind, &record, created).await;
        if !batch.is_empty() {
            self.cursor(kind, caps, &batch, created).await;
        }
        self.refresh(kind, &mut record).await;
        self.delete(kind, caps, &record, created).await;
    }

    /// A create under an id [`Connector::new_id`] chose (R18: the engine writes the id
    /// down before it sends the create, and finds the record by it after a crash).
    async fn chosen_id(&mut self, kind: EntityKind, created: &mut Created) {
        const NAME: &str = "chosen_id";
        let k = Some(kind);
        let Some(id) = self.c.new_id(kind) else {
            self.skip(NAME, k, "the connector assigns the ids of what it creates");
            return;
        };
        let mut problems = Vec::new();
        if self.c.new_id(kind).as_ref() == Some(&id) {
            problems.push(format!("new_id gave {id} twice"));
        }
        let create = || WriteOp::Create {
            fields: (self.o.sample)(kind, 3),
            id: Some(id.clone()),
        };
        match self.write_one(kind, create()).await {
            Err(e) => problems.push(format!("a create with the id {id} failed: {e}")),
            Ok(written) => {
                created.add(&written.id);
                if written.id != id {
                    problems.push(format!("made under {}, not the id given, {id}", written.id));
                }
                match self.write_one(kind, create()).await {
                    Ok(again) if again.id != id => {
                        created.add(&again.id);
                        problems.push(format!("a second create with {id} made {}", again.id));
                    }
                    Ok(_) | Err(ConnectorError::Conflict { .. }) => {}
                    Err(e) => problems.push(format!(
                        "a second create with {id} failed with `{e}`, not a conflict"
                    )),
                }
                match self.list(kind, None).await {
                    Ok(listed) if listed.count(&id) != 1 => problems.push(format!(
                        "a full listing holds {id} {} times, not once",
                        listed.count(&id)
                    )),
                    Ok(_) => {}
                    Err(e) => problems.push(e),
                }
            }
        }
        self.verdict(
            NAME,
            k,
            problems,
            format!("made under the id given ({id}), once"),
        );
    }

    /// Replaces `record` with what a full listing shows now; leaves it as it is when
    /// that fails (the check that uses it then reports the problem).
    async fn refresh(&self, kind: EntityKind, record: &mut Record) {
        if let Ok(Some(now)) = self.fetch(kind, &record.id).await {
            *record = now;
        }
    }

    /// Marks `names` skipped for `kind`, leaving out the ones that do not apply to
    /// `caps` anyway.
    fn skip_rest(
        &mut self,
        kind: EntityKind,
        caps: &Capabilities,
        names: &[&'static str],
        why: &str,
    ) {
        for &name in names {
            let applies = match name {
                "changes" => caps.incremental,
                "delete" => caps.delete,
                "delete_refused" => !caps.delete,
                _ => true,
            };
            if applies {
                self.skip(name, Some(kind), why);
            }
        }
    }

    fn skip_all(&mut self, kind: EntityKind, caps: &Capabilities, why: &str) {
        let names: &[&'static str] = if caps.write {
            &[
                "batch",
                "paging",
                "read_ids",
                "changes",
                "round_trip_create",
                "round_trip_update",
                "version_changes",
                "partial_update",
                "stale_version",
                "unknown_fields",
                "invalid_field",
                "cursor",
                "delete",
                "delete_refused",
                "not_found",
            ]
        } else {
            &["read_ids", "write_refused"]
        };
        self.skip_rest(kind, caps, names, why);
    }

    async fn write_refused(&mut self, kind: EntityKind) {
        const NAME: &str = "write_refused";
        let k = Some(kind);
        let op = WriteOp::create((self.o.sample)(kind, 0));
        match self.write_one(kind, op).await {
            Ok(written) => {
                self.fail(
                    NAME,
                    k,
                    format!(
                        "capabilities say no writes, but a create succeeded (id {})",
                        written.id
                    ),
                );
                let _ = self
                    .write_one(
                        kind,
                        WriteOp::Delete {
                            id: written.id,
                            version: None,
                        },
                    )
                    .await;
            }
            Err(e) if e.is_retryable() => self.fail(
                NAME,
                k,
                format!(
                    "a write to a read-only connector failed with a retryable error, so the \
                     engine would retry it forever: {e}"
                ),
            ),
            Err(e) => self.pass(NAME, k, format!("refused: {e}")),
        }
    }

    async fn paging(&mut self, kind: EntityKind, batch: &[(String, Fields)]) {
        const NAME: &str = "paging";
        let k = Some(kind);
        let listed = match self.list(kind, None).await {
            Ok(listed) => listed,
            Err(e) => return self.fail(NAME, k, e),
        };
        let mut problems = Vec::new();
        let missing: Vec<&str> = batch
            .iter()
            .filter(|(id, _)| listed.count(id) == 0)
            .map(|(id, _)| id.as_str())
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "created records missing from the full listing: {}",
                missing.join(", ")
            ));
        }
        let dups = listed.duplicates();
        if !dups.is_empty() {
            problems.push(format!(
                "ids listed more than once: {} (paging repeats records)",
                dups.join(", ")
            ));
        }
        let note = format!(
            "{} records over {}{}",
            listed.records.len(),
            listed.pages_note(),
            if listed.pages == 1 {
                " (the page size is above the batch: paging not exercised)"
            } else {
                ""
            }
        );
        self.verdict(NAME, k, problems, note);
    }

    /// Asks `read_ids` for every other record of `batch` (or of the listing when the
    /// kit wrote nothing), one record that was there before, and ids that do not exist.
    async fn read_ids(&mut self, kind: EntityKind, initial: &Listed, batch: &[(String, Fields)]) {
        const NAME: &str = "read_ids";
        let k = Some(kind);
        let listed = match self.list(kind, None).await {
            Ok(listed) if listed.listing == Listing::Full => listed,
            Ok(listed) => {
                return self.fail(
                    NAME,
                    k,
                    format!(
                        "a read without cursor returned {:?}, not a full listing",
                        listed.listing
                    ),
                );
            }
            Err(e) => return self.fail(NAME, k, e),
        };
        let live = |id: &str| listed.get(id).is_some_and(|r| !r.deleted);
        let mut asked: Vec<&str> = if batch.is_empty() {
            listed
                .records
                .iter()
                .step_by(2)
                .take(25)
                .map(|r| r.id.as_str())
                .collect()
        } else {
            batch.iter().step_by(2).map(|(id, _)| id.as_str()).collect()
        };
        let batch_ids: BTreeSet<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        if let Some(before) = initial
            .records
            .iter()
            .map(|r| r.id.as_str())
            .find(|id| live(id) && !batch_ids.contains(id) && !asked.contains(id))
        {
            asked.push(before);
        }
        asked.retain(|id| live(id));
        if asked.is_empty() {
            return self.skip(NAME, k, "no records to ask for");
        }
        let unknown: Vec<String> = [
            "999999999".to_owned(),
            format!("tandem-conformance-unknown-{kind}"),
        ]
        .into_iter()
        .filter(|id| listed.count(id) == 0)
        .collect();
        // The unknown ids in the middle: a connector must not stop at the first miss.
        let mut ids: Vec<&str> = asked.clone();
        let middle = ids.len() / 2;
        for (i, id) in unknown.iter().enumerate() {
            ids.insert(middle + i, id);
        }

        let mut problems = Vec::new();
        match self.c.read_ids(kind, &[]).await {
            Ok(none) if none.is_empty() => {}
            Ok(some) => problems.push(format!(
                "read_ids without ids returned {} records: {}",
                some.len(),
                ids_of(&some)
            )),
            Err(e) => problems.push(format!("read_ids without ids failed: {e}")),
        }
        let found = match self.c.read_ids(kind, &ids).await {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!(
                    "read_ids of {} ids, {} of them unknown, failed: {e}",
                    ids.len(),
                    unknown.len()
                ));
                self.verdict(NAME, k, problems, "");
                return;
            }
        };
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for record in &found {
            *seen.entry(record.id.as_str()).or_insert(0) += 1;
            let id = &record.id;
            if record.kind != kind {
                problems.push(format!("{id} came back as a {}", record.kind));
            }
            if record.deleted {
                problems.push(format!("{id} came back as a tombstone"));
                continue;
            }
            if unknown.contains(id) {
                problems.push(format!("{id}, which does not exist, came back"));
                continue;
            }
            if !asked.contains(&id.as_str()) {
                problems.push(format!("{id} came back but was not asked for"));
                continue;
            }
            let Some(listed) = listed.get(id) else {
                continue;
            };
            problems.extend(
                fields_differ(&listed.fields, &record.fields)
                    .into_iter()
                    .map(|p| format!("{id}: the full listing and read_ids differ in {p}")),
            );
            if record.version != listed.version {
                problems.push(format!(
                    "{id}: read_ids gives version {:?}, the full listing {:?}",
                    record.version, listed.version
                ));
            }
        }
        for (id, n) in &seen {
            if *n > 1 {
                problems.push(format!("{id} came back {n} times"));
            }
        }
        let missing: Vec<&str> = asked
            .iter()
            .copied()
            .filter(|id| !seen.contains_key(id))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "records asked for but left out: {}",
                missing.join(", ")
            ));
        }
        let note = format!(
            "{} of {} ids found ({} unknown left out)",
            found.len(),
            ids.len(),
            unknown.len()
        );
        self.verdict(NAME, k, problems, note);
    }

    async fn changes(
        &mut self,
        kind: EntityKind,
        caps: &Capabilities,
        initial: &Listed,
        batch: &[(String, Fields)],
    ) {
        const NAME: &str = "changes";
        let k = Some(kind);
        if !caps.incremental {
            return;
        }
        let Some(cursor) = initial.cursor.clone() else {
            return self.fail(
                NAME,
                k,
                "the connector reads incrementally but its full listing ended without a cursor",
            );
        };
        let listed = match self.list(kind, Some(cursor)).await {
            Ok(listed) => listed,
            Err(e) => return self.fail(NAME, k, e),
        };
        let expected: Vec<(&str, Option<&Fields>)> = batch
            .iter()
            .map(|(id, fields)| (id.as_str(), Some(fields)))
            .collect();
        let problems = exact_changes(&listed, &expected);
        let note = format!(
            "{} changes over {}",
            listed.records.len(),
            listed.pages_note()
        );
        self.verdict(NAME, k, problems, note);
    }

    async fn round_trip(&mut self, kind: EntityKind, created: &mut Created) -> Option<Record> {
        const NAME: &str = "round_trip_create";
        let k = Some(kind);
        let fields = (self.o.sample)(kind, 0);
        let written = match self.write_one(kind, WriteOp::create(fields.clone())).await {
            Ok(written) => written,
            Err(e) => {
                self.fail(
                    NAME,
                    k,
                    format!("a create with every field of the kind failed: {e}"),
                );
                return None;
            }
        };
        created.add(&written.id);
        let record = match self.fetch(kind, &written.id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.fail(
                    NAME,
                    k,
                    format!(
                        "the created record {} is not in the full listing",
                        written.id
                    ),
                );
                return None;
            }
            Err(e) => {
                self.fail(NAME, k, e);
                return None;
            }
        };
        let mut problems = compare_fields(&fields, &[], &record.fields);
        problems.extend(version_matches("the create", &written, &record));
        let note = format!("{} fields, id {}", fields.len(), written.id);
        self.verdict(NAME, k, problems, note);
        Some(record)
    }

    async fn round_trip_update(&mut self, kind: EntityKind, record: &Record) -> Option<Record> {
        let k = Some(kind);
        let next = (self.o.sample)(kind, 1);
        let mut changes: Changes = next
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        // Clear one field: the second one, so that `name` (often required) stays.
        let cleared: Vec<FieldName> = next
            .iter()
            .nth(1)
            .map(|(n, _)| n.clone())
            .into_iter()
            .collect();
        let cleared_names: Vec<&str> = cleared.iter().map(FieldName::as_str).collect();
        let mut expected = next.clone();
        for name in &cleared {
            changes.insert(name.clone(), Value::Null);
            expected.remove(name.as_str());
        }
        let op = WriteOp::Update {
            id: record.id.clone(),
            version: record.version.clone(),
            changes,
        };
        let written = match self.write_one(kind, op).await {
            Ok(written) => written,
            Err(e) => {
                self.fail(
                    "round_trip_update",
                    k,
                    format!(
                        "an update of every field of {} carrying its current version failed: {e}",
                        record.id
                    ),
                );
                return None;
            }
        };
        let updated = match self.fetch(kind, &record.id).await {
            Ok(Some(updated)) => updated,
            Ok(None) => {
                self.fail(
                    "round_trip_update",
                    k,
                    format!("record {} is gone after an update", record.id),
                );
                return None;
            }
            Err(e) => {
                self.fail("round_trip_update", k, e);
                return None;
            }
        };
        let problems = compare_fields(&expected, &cleared_names, &updated.fields);
        let note = format!("{} fields changed, {} cleared", next.len(), cleared.len());
        self.verdict("round_trip_update", k, problems, note);

        // Versions.
        if record.version.is_none() {
            self.skip(
                "version_changes",
                k,
                "the connector reports no versions for this kind",
            );
            return Some(updated);
        }
        let mut problems = Vec::new();
        if updated.version == record.version {
            problems.push(format!(
                "the version of {} is still {} after an update",
                record.id,
                record.version.as_deref().unwrap_or_default()
            ));
        }
        if updated.version.is_none() {
            problems.push(format!(
                "{} had a version before the update and has none after it",
                record.id
            ));
        }
        problems.extend(version_matches("the update", &written, &updated));
        match self.fetch(kind, &record.id).await {
            Ok(Some(again)) if again.version != updated.version => problems.push(format!(
                "two reads without a change in between give versions {:?} and {:?}",
                updated.version, again.version
            )),
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        self.verdict("version_changes", k, problems, "");
        Some(updated)
    }

    async fn partial_update(&mut self, kind: EntityKind, record: &mut Record) {
        const NAME: &str = "partial_update";
        let k = Some(kind);
        let Some((name, _)) = record.fields.iter().next() else {
            return self.skip(NAME, k, "the record has no fields left");
        };
        let name = name.clone();
        let value = (self.o.sample)(kind, 2)
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| Value::text("partial"));
        let mut changes = Changes::new();
        changes.insert(name.clone(), value.clone());
        let op = WriteOp::Update {
            id: record.id.clone(),
            version: record.version.clone(),
            changes,
        };
        if let Err(e) = self.write_one(kind, op).await {
            return self.fail(
                NAME,
                k,
                format!("an update of `{name}` alone on {} failed: {e}", record.id),
            );
        }
        let updated = match self.fetch(kind, &record.id).await {
            Ok(Some(updated)) => updated,
            Ok(None) => {
                return self.fail(
                    NAME,
                    k,
                    format!("record {} is gone after an update", record.id),
                );
            }
            Err(e) => return self.fail(NAME, k, e),
        };
        let mut expected = record.fields.clone();
        expected.set(name.clone(), value);
        let problems = compare_fields(&expected, &[], &updated.fields);
        self.verdict(NAME, k, problems, format!("updated `{name}` only"));
        *record = updated;
    }

    async fn stale_version(&mut self, kind: EntityKind, record: &Record, stale: String) {
        const NAME: &str = "stale_version";
        let k = Some(kind);
        let mut problems = Vec::new();
        let mut changes = Changes::new();
        changes.insert(FieldName::new(field::NAME), Value::text("stale write"));
        let ops = [
            (
                "an update",
                WriteOp::Update {
                    id: record.id.clone(),
                    version: Some(stale.clone()),
                    changes,
                },
            ),
            (
                "a delete",
                WriteOp::Delete {
                    id: record.id.clone(),
                    version: Some(stale.clone()),
                },
            ),
        ];
        for (what, op) in ops {
            match self.write_one(kind, op).await {
                Err(ConnectorError::Conflict { id }) if id == record.id => {}
                Err(ConnectorError::Conflict { id }) => problems.push(format!(
                    "{what} with a stale version gave a conflict naming {id}, not {}",
                    record.id
                )),
                Err(e) => problems.push(format!(
                    "{what} with a stale version failed with `{e}`, not a conflict"
                )),
                Ok(_) => problems.push(format!(
                    "{what} of {} with a stale version {stale} succeeded; it must fail with a \
                     conflict",
                    record.id
                )),
            }
        }
        match self.fetch(kind, &record.id).await {
            Ok(Some(now)) => {
                if now.version != record.version {
                    problems.push(format!(
                        "the refused writes changed the version from {:?} to {:?}",
                        record.version, now.version
                    ));
                }
                problems.extend(
                    compare_fields(&record.fields, &[], &now.fields)
                        .into_iter()
                        .map(|p| format!("after refused writes: {p}")),
                );
            }
            Ok(None) => problems.push(format!(
                "record {} is gone after a delete with a stale version",
                record.id
            )),
            Err(e) => problems.push(e),
        }
        self.verdict(NAME, k, problems, "");
    }

    async fn unknown_fields(&mut self, kind: EntityKind, created: &mut Created) {
        const NAME: &str = "unknown_fields";
        let k = Some(kind);
        let Some(hook) = self.o.unknown_field.as_deref() else {
            return self.skip(NAME, k, "no Options::unknown_field hook given");
        };
        let fields = (self.o.sample)(kind, 3);
        let id = match self.write_one(kind, WriteOp::create(fields.clone())).await {
            Ok(written) => written.id,
            Err(e) => return self.fail(NAME, k, format!("create failed: {e}")),
        };
        created.add(&id);
        if let Err(e) = hook.inject(kind, &id).await {
            return self.fail(NAME, k, format!("the hook could not inject into {id}: {e}"));
        }
        let record = match self.fetch(kind, &id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return self.fail(
                    NAME,
                    k,
                    format!("record {id} is gone after injecting data the connector does not map"),
                );
            }
            Err(e) => return self.fail(NAME, k, e),
        };
        let mut problems = compare_fields(&fields, &[], &record.fields)
            .into_iter()
            .map(|p| format!("after injecting: {p}"))
            .collect::<Vec<_>>();
        let name = record
            .fields
            .iter()
            .next()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| FieldName::new(field::NAME));
        let mut changes = Changes::new();
        changes.insert(name, Value::text(format!("updated {id}")));
        let op = WriteOp::Update {
            id: id.clone(),
            version: record.version.clone(),
            changes,
        };
        match self.write_one(kind, op).await {
            Ok(_) => {
                if let Err(e) = hook.verify(kind, &id).await {
                    problems.push(format!("after an update of {id}: {e}"));
                }
            }
            Err(e) => problems.push(format!(
                "an update of {id} after injecting unmapped data failed: {e}"
            )),
        }
        self.verdict(NAME, k, problems, "");
    }

    async fn invalid_field(&mut self, kind: EntityKind, record: &Record, created: &mut Created) {
        const NAME: &str = "invalid_field";
        let k = Some(kind);
        if !self.o.refuses_unknown_names {
            return self.skip(
                NAME,
                k,
                "Options::refuses_unknown_names is off: the connector stores any name",
            );
        }
        let mut problems = Vec::new();
        let valid = (self.o.sample)(kind, 4);
        let invalid = (self.o.sample)(kind, 5).with(NOT_A_FIELD, "x");
        let before = self.list(kind, None).await.map(|l| l.records.len());
        match self
            .write(kind, vec![WriteOp::create(valid), WriteOp::create(invalid)])
            .await
        {
            Err(e) => problems.push(format!(
                "a call with one valid create and one naming `{NOT_A_FIELD}` failed as a \
                 whole (`{e}`); the invalid record must fail alone, in its own outcome"
            )),
            Ok(outcomes) => {
                match &outcomes[0] {
                    Ok(written) => created.add(&written.id),
                    Err(e) => {
                        problems.push(format!("a valid create failed next to an invalid one: {e}"))
                    }
                }
                match &outcomes[1] {
                    Err(ConnectorError::InvalidRecord { .. }) => {}
                    Err(e) => problems.push(format!(
                        "a create naming `{NOT_A_FIELD}` failed with `{e}`, not as an invalid \
                         record"
                    )),
                    Ok(written) => {
                        created.add(&written.id);
                        problems.push(format!(
                            "a create naming `{NOT_A_FIELD}`, which is neither canonical nor \
                             x_, succeeded (id {}); it must fail as an invalid record",
                            written.id
                        ));
                    }
                }
                if let (Ok(before), Ok(after)) =
                    (before, self.list(kind, None).await.map(|l| l.records.len()))
                {
                    let made = outcomes.iter().filter(|o| o.is_ok()).count();
                    if after != before + made {
                        problems.push(format!(
                            "{made} creates succeeded but the listing grew from {before} to \
                             {after} records"
                        ));
                    }
                }
            }
        }
        let mut changes = Changes::new();
        changes.insert(FieldName::new(NOT_A_FIELD), Value::text("x"));
        let op = WriteOp::Update {
            id: record.id.clone(),
            version: record.version.clone(),
            changes,
        };
        match self.write_one(kind, op).await {
            Err(ConnectorError::InvalidRecord { .. }) => {}
            Err(e) => problems.push(format!(
                "an update naming `{NOT_A_FIELD}` failed with `{e}`, not as an invalid record"
            )),
            Ok(_) => problems.push(format!(
                "an update of {} naming `{NOT_A_FIELD}` succeeded; it must fail as an invalid \
                 record",
                record.id
            )),
        }
        match self.fetch(kind, &record.id).await {
            Ok(Some(now)) => {
                if now.version != record.version {
                    problems.push(format!(
                        "the refused update changed the version of {} from {:?} to {:?}",
                        record.id, record.version, now.version
                    ));
                }
            }
            Ok(None) => problems.push(format!(
                "record {} is gone after a refused update",
                record.id
            )),
            Err(e) => problems.push(e),
        }
        self.verdict(NAME, k, problems, "");
    }

    async fn cursor(
        &mut self,
        kind: EntityKind,
        caps: &Capabilities,
        batch: &[(String, Fields)],
        created: &mut Created,
    ) {
        const NAME: &str = "cursor";
        let k = Some(kind);
        // Where the changes start: the end of a read that catches up with everything.
        let start = match self.list(kind, None).await {
            Ok(listed) => listed.cursor,
            Err(e) => return self.fail(NAME, k, e),
        };
        let start = match (caps.incremental, start) {
            (true, Some(cursor)) => match self.list(kind, Some(cursor.clone())).await {
                // Catch up on the changes of the checks before this one.
                Ok(listed) => listed.cursor.or(Some(cursor)),
                Err(e) => return self.fail(NAME, k, e),
            },
            (true, None) => {
                return self.fail(
                    NAME,
                    k,
                    "the connector reads incrementally but its full listing ended without a \
                     cursor",
                );
            }
            (false, cursor) => cursor,
        };

        let new_fields = (self.o.sample)(kind, 6);
        let (updated_id, _) = &batch[0];
        let updated_fields = (self.o.sample)(kind, 7);
        let deleted_id = (caps.delete && batch.len() > 1).then(|| batch[1].0.clone());
        let mut ops = vec![
            WriteOp::create(new_fields.clone()),
            WriteOp::Update {
                id: updated_id.clone(),
                version: None,
                changes: updated_fields
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
            },
        ];
        if let Some(id) = &deleted_id {
            ops.push(WriteOp::Delete {
                id: id.clone(),
                version: None,
            });
        }
        let outcomes = match self.write(kind, ops).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                return self.fail(
                    NAME,
                    k,
                    format!("a create, an update and a delete failed: {e}"),
                );
            }
        };
        let mut problems = Vec::new();
        let mut new_id = None;
        for (i, outcome) in outcomes.iter().enumerate() {
            match (i, outcome) {
                (0, Ok(written)) => {
                    created.add(&written.id);
                    new_id = Some(written.id.clone());
                }
                (2, Ok(_)) => {
                    if let Some(id) = &deleted_id {
                        created.forget(id);
                    }
                }
                (_, Ok(_)) => {}
                (_, Err(e)) => problems.push(format!(
                    "{} failed: {e}",
                    ["the create", "the update", "the delete"][i.min(2)]
                )),
            }
        }
        if !problems.is_empty() {
            return self.fail(NAME, k, problems.join("; "));
        }
        let new_id = new_id.expect("the create succeeded");
        let listed = match self.list(kind, start).await {
            Ok(listed) => listed,
            Err(e) => return self.fail(NAME, k, e),
        };
        let mut expected_updated = batch[0].1.clone();
        for (name, value) in &updated_fields {
            expected_updated.set(name.clone(), value.clone());
        }
        let note;
        if caps.incremental {
            let mut expected = vec![
                (new_id.as_str(), Some(&new_fields)),
                (updated_id.as_str(), Some(&expected_updated)),
            ];
            if let Some(id) = &deleted_id {
                expected.push((id.as_str(), None));
            }
            problems = exact_changes(&listed, &expected);
            note = format!(
                "{} changes{} over {}",
                listed.records.len(),
                if deleted_id.is_some() {
                    " with a tombstone"
                } else {
                    ""
                },
                listed.pages_note()
            );
            // Nothing changed since: the next read is empty.
            match self.list(kind, listed.cursor.clone()).await {
                Ok(again) if !again.records.is_empty() => problems.push(format!(
                    "a read from the cursor after the changes, with nothing changed since, \
                     returned {} records again ({})",
                    again.records.len(),
                    ids_of(&again.records)
                )),
                Ok(again) if again.listing != Listing::Changes => problems.push(format!(
                    "a read from the cursor after the changes returned {:?}, not changes",
                    again.listing
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("reading on from the last cursor: {e}")),
            }
        } else {
            if listed.listing != Listing::Full {
                problems.push(format!(
                    "the connector does not read incrementally but returned {:?}",
                    listed.listing
                ));
            }
            for (id, fields) in [(&new_id, &new_fields), (updated_id, &expected_updated)] {
                match listed.get(id) {
                    Some(record) => problems.extend(
                        compare_fields(fields, &[], &record.fields)
                            .into_iter()
                            .map(|p| format!("{id}: {p}")),
                    ),
                    None => problems.push(format!("{id} is missing from the listing")),
                }
            }
            if let Some(id) = &deleted_id
                && let Some(record) = listed.get(id)
            {
                problems.push(if record.deleted {
                    format!(
                        "the deleted record {id} appears as a tombstone in a full listing; it \
                         must be left out"
                    )
                } else {
                    format!("the deleted record {id} is still in a completed full listing")
                });
            }
            let dups = listed.duplicates();
            if !dups.is_empty() {
                problems.push(format!("ids listed more than once: {}", dups.join(", ")));
            }
            note = format!(
                "full listing of {} records over {}{}",
                listed.records.len(),
                listed.pages_note(),
                if deleted_id.is_some() {
                    ", the deleted record left out"
                } else {
                    ""
                }
            );
        }
        self.verdict(NAME, k, problems, note);
    }

    async fn delete(
        &mut self,
        kind: EntityKind,
        caps: &Capabilities,
        record: &Record,
        created: &mut Created,
    ) {
        let k = Some(kind);
        let id = &record.id;
        let mut missing = None;
        if caps.delete {
            const NAME: &str = "delete";
            let op = WriteOp::Delete {
                id: id.clone(),
                version: record.version.clone(),
            };
            match self.write_one(kind, op).await {
                Ok(_) => {
                    created.forget(id);
                    match self.fetch(kind, id).await {
                        Ok(None) => {
                            missing = Some(id.clone());
                            match self.c.read_ids(kind, &[id.as_str()]).await {
                                Ok(found) if found.iter().all(|r| r.deleted) => self.pass(
                                    NAME,
                                    k,
                                    "gone from the next full listing and from read_ids",
                                ),
                                Ok(_) => self.fail(
                                    NAME,
                                    k,
                                    format!("read_ids still returns {id} after its delete"),
                                ),
                                Err(e) => self.fail(
                                    NAME,
                                    k,
                                    format!("read_ids of {id}, just deleted, failed: {e}"),
                                ),
                            }
                        }
                        Ok(Some(_)) => self.fail(
                            NAME,
                            k,
                            format!("{id} is still in a completed full listing after its delete"),
                        ),
                        Err(e) => self.fail(NAME, k, e),
                    }
                }
                Err(e) => self.fail(
                    NAME,
                    k,
                    format!("a delete of {id} carrying its current version failed: {e}"),
                ),
            }
        } else {
            const NAME: &str = "delete_refused";
            let op = WriteOp::Delete {
                id: id.clone(),
                version: record.version.clone(),
            };
            match self.write_one(kind, op).await {
                Ok(_) => {
                    created.forget(id);
                    self.fail(
                        NAME,
                        k,
                        format!("capabilities say no deletes, but a delete of {id} succeeded"),
                    );
                }
                Err(e) if e.is_retryable() => self.fail(
                    NAME,
                    k,
                    format!("a delete failed with a retryable error, so the engine would retry it forever: {e}"),
                ),
                Err(e) => match self.fetch(kind, id).await {
                    Ok(Some(_)) => self.pass(NAME, k, format!("refused: {e}")),
                    Ok(None) => self.fail(
                        NAME,
                        k,
                        format!("the delete of {id} was refused ({e}), but the record is gone"),
                    ),
                    Err(e) => self.fail(NAME, k, e),
                },
            }
        }

        // Not found: the id just deleted, or one that was never given out.
        const NAME: &str = "not_found";
        let missing = missing.unwrap_or_else(|| format!("tandem-conformance-missing-{kind}"));
        let mut problems = Vec::new();
        let mut changes = Changes::new();
        changes.insert(FieldName::new(field::NAME), Value::text("ghost"));
        let mut ops = vec![(
            "an update",
            WriteOp::Update {
                id: missing.clone(),
                version: None,
                changes,
            },
        )];
        if caps.delete {
            ops.push((
                "a delete",
                WriteOp::Delete {
                    id: missing.clone(),
                    version: None,
                },
            ));
        }
        for (what, op) in ops {
            match self.write_one(kind, op).await {
                Err(ConnectorError::NotFound { .. }) => {}
                Err(e) => problems.push(format!(
                    "{what} of {missing}, which does not exist, failed with `{e}`, not as not \
                     found"
                )),
                Ok(written) => {
                    created.add(&written.id);
                    problems.push(format!(
                        "{what} of {missing}, which does not exist, succeeded"
                    ));
                }
            }
        }
        self.verdict(NAME, k, problems, format!("id {missing}"));
    }

    async fn cleanup(&mut self, kind: EntityKind, caps: &Capabilities, created: Created) {
        const NAME: &str = "cleanup";
        let k = Some(kind);
        if created.0.is_empty() {
            return self.pass(NAME, k, "nothing left to delete");
        }
        if !caps.delete {
            return self.skip(
                NAME,
                k,
                format!(
                    "the connector does not delete; records left behind: {}",
                    created.0.join(", ")
                ),
            );
        }
        let mut problems = Vec::new();
        let n = created.0.len();
        for chunk in created.0.chunks(self.max_batch) {
            let ops = chunk
                .iter()
                .map(|id| WriteOp::Delete {
                    id: id.clone(),
                    version: None,
                })
                .collect();
            match self.write(kind, ops).await {
                Err(e) => problems.push(format!("deleting {}: {e}", chunk.join(", "))),
                Ok(outcomes) => {
                    for (id, outcome) in chunk.iter().zip(outcomes) {
                        if let Err(e) = outcome {
                            problems.push(format!("deleting {id}: {e}"));
                        }
                    }
                }
            }
        }
        self.verdict(NAME, k, problems, format!("deleted {n} records"));
    }
}

/// Checks that `listed` holds exactly `expected` as changes: each id once, live with
/// its fields (`Some`) or as a tombstone (`None`), and nothing else.
fn exact_changes(listed: &Listed, expected: &[(&str, Option<&Fields>)]) -> Vec<String> {
    let mut problems = Vec::new();
    if listed.listing != Listing::Changes {
        problems.push(format!(
            "a read from a cursor of an incremental connector returned {:?}, not changes",
            listed.listing
        ));
    }
    let wanted: BTreeMap<&str, Option<&Fields>> = expected.iter().copied().collect();
    let mut missing = Vec::new();
    for (id, fields) in &wanted {
        match (listed.count(id), listed.get(id)) {
            (0, _) | (_, None) => missing.push(*id),
            (n, Some(record)) => {
                if n > 1 {
                    problems.push(format!("{id} is in the changes {n} times"));
                }
                match (fields, record.deleted) {
                    (None, false) => {
                        problems.push(format!("{id} was deleted but is not a tombstone"))
                    }
                    (Some(_), true) => {
                        problems.push(format!("{id} is live but came as a tombstone"))
                    }
                    (Some(fields), false) => problems.extend(
                        compare_fields(fields, &[], &record.fields)
                            .into_iter()
                            .map(|p| format!("{id}: {p}")),
                    ),
                    (None, true) => {}
                }
            }
        }
    }
    if !missing.is_empty() {
        problems.push(format!("changes lost: {}", missing.join(", ")));
    }
    let extra: BTreeSet<&str> = listed
        .records
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !wanted.contains_key(id))
        .collect();
    if !extra.is_empty() {
        problems.push(format!(
            "records that did not change: {}",
            extra.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    problems
}

fn ids_of(records: &[Record]) -> String {
    let ids: Vec<&str> = records.iter().take(10).map(|r| r.id.as_str()).collect();
    let more = records.len().saturating_sub(10);
    if more > 0 {
        format!("{}, and {more} more", ids.join(", "))
    } else {
        ids.join(", ")
    }
}

/// Whether two values are equal as the kit compares them: as values, or written the
/// same way as a cell (a number stored as text, a list stored as `A;B`).
pub fn same_value(written: &Value, read: &Value) -> bool {
    written == read || written.to_cell() == read.to_cell()
}

/// What differs between the fields written and the fields read back: every written
/// field must read back as the same value, and every name in `cleared` must be empty.
fn compare_fields(expected: &Fields, cleared: &[&str], actual: &Fields) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in expected {
        match actual.get(name.as_str()) {
            None => problems.push(format!("`{name}` was written as {value:?} but reads empty")),
            Some(got) if !same_value(value, got) => problems.push(format!(
                "`{name}` was written as {value:?} but reads {got:?}"
            )),
            Some(_) => {}
        }
    }
    for name in cleared {
        if let Some(got) = actual.get(name) {
            problems.push(format!("`{name}` was cleared but reads {got:?}"));
        }
    }
    problems
}

/// The fields in which two reads of one record differ, as `` `name` (A, B) ``.
fn fields_differ(a: &Fields, b: &Fields) -> Vec<String> {
    let names: BTreeSet<&str> = a.iter().chain(b.iter()).map(|(n, _)| n.as_str()).collect();
    names
        .into_iter()
        .filter_map(|name| match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) if same_value(x, y) => None,
            (x, y) => Some(format!("`{name}` ({x:?}, {y:?})")),
        })
        .collect()
}

/// The version a write reported must be the version a read shows, or the engine's next
/// update carrying it would be a conflict.
fn version_matches(what: &str, written: &Written, read: &Record) -> Option<String> {
    match (&written.version, &read.version) {
        (Some(w), Some(r)) if w != r => Some(format!(
            "{what} of {} reported version {w} but the record reads with version {r}",
            read.id
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fill_every_canonical_field_and_differ_in_each() {
        for kind in EntityKind::ALL {
            let a = sample_fields(kind, 0);
            let b = sample_fields(kind, 1);
            for name in kind_fields(kind) {
                assert!(a.get(name).is_some(), "{kind} {name}");
                assert!(!same_value(a.value(name), b.value(name)), "{kind} {name}");
            }
            for (name, _) in &a {
                assert!(
                    field::is_canonical_for(kind, name.as_str()) || field::is_extra(name.as_str()),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn values_compare_by_content_or_cell() {
        assert!(same_value(&Value::Number(1.5), &Value::text("1.5")));
        assert!(same_value(
            &Value::list(vec!["A".into(), "B".into()]),
            &Value::text("A;B")
        ));
        assert!(!same_value(&Value::text("a"), &Value::text("A")));
    }

    #[test]
    fn the_report_says_what_failed() {
        let mut report = Report::default();
        report.add("check", None, Status::Passed, "");
        report.add(
            "cursor",
            Some(EntityKind::Vendor),
            Status::Failed,
            "changes lost: V1",
        );
        assert!(!report.passed());
        assert_eq!(
            report
                .get("cursor", Some(EntityKind::Vendor))
                .unwrap()
                .status,
            Status::Failed
        );
        let text = report.to_string();
        assert!(
            text.contains("FAIL cursor [vendor]: changes lost: V1"),
            "{text}"
        );
        assert!(text.ends_with("1 passed, 1 failed, 0 skipped"), "{text}");
        let panic = std::panic::catch_unwind(|| report.assert_passed()).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("1 of 2 conformance checks failed:\n  FAIL cursor"));
    }
}
