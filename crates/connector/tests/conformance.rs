//! The conformance kit against the in-memory reference connector, and against broken
//! variants of it, to show that the kit notices what it claims to check.

use tandem_connector::memory::MemoryConnector;
use tandem_connector::testkit::{Options, Report, Status, check_conformance};
use tandem_connector::{
    Capabilities, Connector, ConnectorError, Cursor, Page, WriteOp, WriteOutcome,
};
use tandem_model::{EntityKind, Fields, Record};

fn options() -> Options {
    Options {
        // The memory connector stores any field name it is given.
        refuses_unknown_names: false,
        max_batch: 20,
        ..Options::default()
    }
}

fn failed(report: &Report, name: &str, kind: EntityKind) -> String {
    let check = report
        .get(name, Some(kind))
        .unwrap_or_else(|| panic!("no check {name} [{kind}] in\n{report}"));
    assert_eq!(check.status, Status::Failed, "{name} [{kind}] in\n{report}");
    check.message.clone()
}

#[tokio::test]
async fn incremental_memory_connector_conforms() {
    let c = MemoryConnector::new(&EntityKind::ALL, true).with_page_size(7);
    // Records that were there before are left alone.
    c.put(
        EntityKind::Customer,
        "K-existing",
        Fields::new().with("name", "Existing"),
    );
    let report = check_conformance(&c, &options()).await;
    report.assert_passed();
    for name in [
        "changes",
        "cursor",
        "read_ids",
        "stale_version",
        "version_changes",
    ] {
        for kind in EntityKind::ALL {
            assert_eq!(
                report.get(name, Some(kind)).map(|c| c.status),
                Some(Status::Passed),
                "{name} [{kind}]\n{report}"
            );
        }
    }
    assert!(
        report
            .get("paging", Some(EntityKind::Vendor))
            .unwrap()
            .message
            .contains("pages"),
        "{report}"
    );
    // Everything the kit created is gone again.
    assert_eq!(c.all(EntityKind::Customer).len(), 1);
    assert!(c.all(EntityKind::Contact).is_empty());
}

#[tokio::test]
async fn full_listing_memory_connector_conforms() {
    let c =
        MemoryConnector::new(&[EntityKind::Contact, EntityKind::Customer], false).with_page_size(3);
    let report = check_conformance(&c, &options()).await;
    report.assert_passed();
    assert!(report.get("changes", Some(EntityKind::Contact)).is_none());
    // The kinds it does not hold are refused.
    assert_eq!(
        report
            .get("unheld_kind", Some(EntityKind::Vendor))
            .unwrap()
            .status,
        Status::Passed
    );
}

#[tokio::test]
async fn a_memory_connector_taking_chosen_ids_conforms() {
    let c = MemoryConnector::new(&EntityKind::ALL, true).with_chosen_ids();
    let report = check_conformance(&c, &options()).await;
    report.assert_passed();
    let check = report.get("chosen_id", Some(EntityKind::Customer)).unwrap();
    assert_eq!(check.status, Status::Passed, "{report}");
    // One that assigns ids itself skips the check.
    let assigning = MemoryConnector::new(&[EntityKind::Customer], true);
    let report = check_conformance(&assigning, &options()).await;
    let check = report.get("chosen_id", Some(EntityKind::Customer)).unwrap();
    assert_eq!(check.status, Status::Skipped, "{report}");
}

#[tokio::test]
async fn the_kit_notices_chosen_ids_that_are_not_honoured() {
    let report = report_for(Fault::IgnoresChosenIds).await;
    let message = failed(&report, "chosen_id", K);
    assert!(message.contains("not the id given"), "{message}");
}

#[tokio::test]
async fn options_narrow_the_kinds() {
    let c = MemoryConnector::new(&EntityKind::ALL, true);
    let options = Options {
        kinds: Some(vec![EntityKind::Vendor]),
        ..options()
    };
    let report = check_conformance(&c, &options).await;
    report.assert_passed();
    assert!(report.get("batch", Some(EntityKind::Vendor)).is_some());
    assert!(report.get("batch", Some(EntityKind::Contact)).is_none());
}

/// A wrapper that lets each test break one thing.
#[derive(Debug)]
struct Broken {
    inner: MemoryConnector,
    fault: Fault,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Updates and deletes ignore the version they carry.
    IgnoresVersions,
    /// Writes drop the `x_` extras.
    DropsExtras,
    /// Change pages repeat their last record.
    DuplicatesChanges,
    /// Changes leave out tombstones.
    NoTombstones,
    /// Updates of missing records fail as fatal errors.
    UntypedNotFound,
    /// Claims a batch size it cannot take.
    SmallBatches,
    /// Claims to be read-only but writes.
    DishonestReadOnly,
    /// Honestly takes one op per call: no fault at all.
    OneOpPerCall,
    /// `read_ids` returns every record, asked for or not.
    ReadIdsIgnoresIds,
    /// `read_ids` fails with not found when an id does not exist.
    ReadIdsRefusesUnknown,
    /// `read_ids` returns records with a field the listing does not show.
    ReadIdsAltersRecords,
    /// Gives ids (`new_id`) but creates under ids of its own.
    IgnoresChosenIds,
}

fn broken(fault: Fault) -> Broken {
    let inner = MemoryConnector::new(&[EntityKind::Customer], true).with_page_size(4);
    let inner = match fault {
        Fault::IgnoresChosenIds => inner.with_chosen_ids(),
        _ => inner,
    };
    Broken { inner, fault }
}

#[async_trait::async_trait]
impl Connector for Broken {
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        if self.fault == Fault::DishonestReadOnly {
            caps.write = false;
            caps.delete = false;
        }
        if self.fault == Fault::OneOpPerCall {
            caps.max_batch = 1;
        }
        caps
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.inner.check().await
    }

    fn new_id(&self, kind: EntityKind) -> Option<String> {
        self.inner.new_id(kind)
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        let mut page = self.inner.read(kind, cursor).await?;
        if page.listing == tandem_connector::Listing::Changes {
            match self.fault {
                Fault::DuplicatesChanges => {
                    if let Some(last) = page.records.last().cloned() {
                        page.records.push(last);
                    }
                }
                Fault::NoTombstones => page.records.retain(|r| !r.deleted),
                _ => {}
            }
        }
        Ok(page)
    }

    async fn read_ids(
        &self,
        kind: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Record>, ConnectorError> {
        match self.fault {
            Fault::ReadIdsIgnoresIds => Ok(self.inner.all(kind)),
            Fault::ReadIdsRefusesUnknown => {
                let found = self.inner.read_ids(kind, ids).await?;
                match ids.iter().find(|id| !found.iter().any(|r| r.id == **id)) {
                    Some(id) => Err(ConnectorError::NotFound {
                        id: (*id).to_owned(),
                    }),
                    None => Ok(found),
                }
            }
            Fault::ReadIdsAltersRecords => {
                let mut found = self.inner.read_ids(kind, ids).await?;
                for r in &mut found {
                    r.fields
                        .set("name", tandem_model::Value::text("stale copy"));
                }
                Ok(found)
            }
            _ => self.inner.read_ids(kind, ids).await,
        }
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        if self.fault == Fault::SmallBatches && ops.len() > 3
            || self.fault == Fault::OneOpPerCall && ops.len() > 1
        {
            return Err(ConnectorError::fatal("too many operations"));
        }
        let ops = ops
            .into_iter()
            .map(|op| match (self.fault, op) {
                (Fault::IgnoresVersions, WriteOp::Update { id, changes, .. }) => WriteOp::Update {
                    id,
                    version: None,
                    changes,
                },
                (Fault::IgnoresVersions, WriteOp::Delete { id, .. }) => {
                    WriteOp::Delete { id, version: None }
                }
                (Fault::IgnoresChosenIds, WriteOp::Create { fields, .. }) => {
                    WriteOp::create(fields)
                }
                (Fault::DropsExtras, WriteOp::Create { fields, id }) => WriteOp::Create {
                    fields: fields
                        .iter()
                        .filter(|(n, _)| !n.as_str().starts_with("x_"))
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect(),
                    id,
                },
                (_, op) => op,
            })
            .collect();
        let mut outcomes = self.inner.write(kind, ops).await?;
        if self.fault == Fault::UntypedNotFound {
            for outcome in &mut outcomes {
                if let Err(ConnectorError::NotFound { id }) = outcome {
                    *outcome = Err(ConnectorError::fatal(format!("no row {id}")));
                }
            }
        }
        Ok(outcomes)
    }
}

const K: EntityKind = EntityKind::Customer;

async fn report_for(fault: Fault) -> Report {
    let report = check_conformance(&broken(fault), &options()).await;
    assert!(!report.passed(), "{fault:?} went unnoticed:\n{report}");
    report
}

#[tokio::test]
async fn the_kit_notices_ignored_versions() {
    let report = report_for(Fault::IgnoresVersions).await;
    let message = failed(&report, "stale_version", K);
    assert!(message.contains("succeeded"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_lost_extras() {
    let report = report_for(Fault::DropsExtras).await;
    let message = failed(&report, "round_trip_create", K);
    assert!(message.contains("`x_conformance_note`"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_duplicated_changes() {
    let report = report_for(Fault::DuplicatesChanges).await;
    let message = failed(&report, "changes", K);
    assert!(message.contains("times"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_missing_tombstones() {
    let report = report_for(Fault::NoTombstones).await;
    let message = failed(&report, "cursor", K);
    assert!(message.contains("changes lost"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_untyped_errors() {
    let report = report_for(Fault::UntypedNotFound).await;
    let message = failed(&report, "not_found", K);
    assert!(message.contains("not as not found"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_a_batch_size_that_is_not_honoured() {
    let report = report_for(Fault::SmallBatches).await;
    failed(&report, "batch", K);
}

#[tokio::test]
async fn the_kit_notices_writes_to_a_read_only_connector() {
    let report = report_for(Fault::DishonestReadOnly).await;
    let message = failed(&report, "write_refused", K);
    assert!(message.contains("succeeded"), "{message}");
}

#[tokio::test]
async fn the_kit_keeps_to_max_batch() {
    let report = check_conformance(&broken(Fault::OneOpPerCall), &options()).await;
    report.assert_passed();
    assert_eq!(
        report.get("batch", Some(K)).unwrap().message,
        "1 create in one call"
    );
}

#[tokio::test]
async fn the_kit_notices_read_ids_that_ignores_the_ids() {
    let report = report_for(Fault::ReadIdsIgnoresIds).await;
    let message = failed(&report, "read_ids", K);
    assert!(message.contains("was not asked for"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_read_ids_that_fails_on_an_unknown_id() {
    let report = report_for(Fault::ReadIdsRefusesUnknown).await;
    let message = failed(&report, "read_ids", K);
    assert!(message.contains("unknown, failed"), "{message}");
}

#[tokio::test]
async fn the_kit_notices_read_ids_that_differs_from_the_listing() {
    let report = report_for(Fault::ReadIdsAltersRecords).await;
    let message = failed(&report, "read_ids", K);
    assert!(message.contains("`name`"), "{message}");
}
