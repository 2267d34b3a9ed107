//! Rewrites that keep the file what it was: through symbolic links, with its mode,
//! owner and group, its line ends and byte order mark, and never through a planted
//! path. And errors on data files that say what is wrong, where and what to do.

use std::fs;
#[cfg(unix)]
use std::path::Path;

use tandem_connector::{Connector, ConnectorError, WriteOp};
use tandem_model::{EntityKind, Fields, Value};

use super::{CONTACT, csv_in, folder, get, jsonl_in, put, read, update, write};
use crate::{FileConnector, Format};

const CUSTOMER: EntityKind = EntityKind::Customer;

fn create(name: &str) -> WriteOp {
    WriteOp::create(Fields::new().with("name", name))
}

/// The names in a folder, sorted, but the write lock's.
#[cfg(unix)]
fn names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != crate::lock::LOCK_FILE)
        .collect();
    names.sort();
    names
}

/// A row with `id` and `name`, as a CSV line or a JSON Lines line.
#[cfg(unix)]
fn one_row(format: Format, id: &str, name: &str) -> String {
    match format {
        Format::Csv => format!("{id},{name}"),
        Format::Jsonl => format!(r#"{{"id":"{id}","name":"{name}"}}"#),
    }
}

/// What comes before the rows: the CSV header row.
#[cfg(unix)]
fn header(format: Format) -> &'static str {
    match format {
        Format::Csv => "id,name\n",
        Format::Jsonl => "",
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlinked_file_is_written_through_to_its_target() {
    for format in [Format::Csv, Format::Jsonl] {
        let dir = folder();
        let name = format!("customers.{}", format.extension());
        fs::create_dir(dir.path().join("real")).unwrap();
        let target = dir.path().join("real").join(&name);
        let content = format!("{}{}\n", header(format), one_row(format, "K1", "Acme"));
        fs::write(&target, content).unwrap();
        let link = dir.path().join(&name);
        std::os::unix::fs::symlink(Path::new("real").join(&name), &link).unwrap();

        let c = FileConnector::new(dir.path().to_owned(), format);
        let written = write(
            &c,
            CUSTOMER,
            vec![update("K1", None, &[("name", Value::text("Acme NV"))])],
        )
        .await;
        assert!(written[0].is_ok(), "{format:?}: {written:?}");

        // The link is still the same link; its target has the update.
        assert!(
            fs::symlink_metadata(&link).unwrap().is_symlink(),
            "{format:?}"
        );
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("real").join(&name));
        let expected = format!("{}{}\n", header(format), one_row(format, "K1", "Acme NV"));
        assert_eq!(fs::read_to_string(&target).unwrap(), expected, "{format:?}");
        assert_eq!(
            read(&c, CUSTOMER).await[0].fields.text("name"),
            Some("Acme NV")
        );
        // No temporary file is left beside the link or the target.
        assert_eq!(names(dir.path()), vec![name.clone(), "real".to_owned()]);
        assert_eq!(names(&dir.path().join("real")), vec![name]);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_dangling_symlink_is_an_error_that_says_what_to_do() {
    for format in [Format::Csv, Format::Jsonl] {
        let dir = folder();
        let name = format!("customers.{}", format.extension());
        let link = dir.path().join(&name);
        let missing = dir.path().join("share").join(&name);
        std::os::unix::fs::symlink(&missing, &link).unwrap();
        let c = FileConnector::new(dir.path().to_owned(), format);

        let err = c.read(CUSTOMER, None).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Fatal { .. }), "{err:?}");
        let expected = format!(
            "{} is a symbolic link to {}, which does not exist; restore the file it points \
             to (or mount the share it is on) or replace the link with the file, then run again",
            link.display(),
            missing.display()
        );
        assert_eq!(err.to_string(), expected);
        // Not an empty file: no check, fingerprint or write goes through either.
        assert_eq!(c.check().await.unwrap_err().to_string(), expected);
        assert_eq!(
            c.fingerprint(CUSTOMER).await.unwrap_err().to_string(),
            expected
        );
        let err = c.write(CUSTOMER, vec![create("Acme")]).await.unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert!(!missing.exists(), "{format:?}");
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}

/// A write that fails leaves the file as it was and names the link, the file it points
/// to and what to check, the same way every time. (The temporary file's name is longer than the target's, so a
/// target name near the limit of the file system makes the write fail, even as root.)
#[cfg(unix)]
#[tokio::test]
async fn a_failed_write_through_a_link_names_both_the_same_way_and_leaves_the_file() {
    let dir = folder();
    let long = format!("vendors.csv.{}", "x".repeat(240));
    let target = dir.path().join(&long);
    fs::write(&target, "id,name\nV1,Acme\n").unwrap();
    let link = dir.path().join("vendors.csv");
    std::os::unix::fs::symlink(&long, &link).unwrap();
    let c = csv_in(&dir);
    assert_eq!(read(&c, EntityKind::Vendor).await.len(), 1);

    let err = c
        .write(EntityKind::Vendor, vec![create("Bolt")])
        .await
        .unwrap_err()
        .to_string();
    // The same failure reads the same next time (R17 parks a record after the same
    // error twice): no random temporary name in it.
    let again = c.write(EntityKind::Vendor, vec![create("Bolt")]).await;
    assert_eq!(again.unwrap_err().to_string(), err);
    assert!(!err.contains("/.vendors.csv."), "{err}");
    let expected = format!(
        "cannot write {} (a link to {}): ",
        link.display(),
        target.display()
    );
    assert!(err.starts_with(&expected), "{err}");
    assert!(
        err.ends_with(&format!(
            "; the file was left as it was; check that Tandem may create files in {} and \
             that the disk has room, then run again",
            dir.path().display()
        )),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "id,name\nV1,Acme\n");
    assert_eq!(names(dir.path()), vec!["vendors.csv".to_owned(), long]);
}

#[cfg(unix)]
fn is_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // A file Tandem's tests create belongs to the user they run as.
    fs::metadata(dir).unwrap().uid() == 0
}

/// As root (CI), the file belongs to another user and must stay theirs; as anyone else
/// it stays the user's own, and the mode is checked all the same.
#[cfg(unix)]
#[tokio::test]
async fn a_rewrite_keeps_the_mode_owner_and_group_of_a_private_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
    for format in [Format::Csv, Format::Jsonl] {
        let dir = folder();
        let path = dir.path().join(format!("contacts.{}", format.extension()));
        let content = format!("{}{}\n", header(format), one_row(format, "C1", "Ann"));
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        if is_root(dir.path()) {
            chown(&path, Some(65534), Some(65534)).unwrap();
        }
        let before = fs::metadata(&path).unwrap();

        let c = FileConnector::new(dir.path().to_owned(), format);
        assert!(write(&c, CONTACT, vec![create("Bob")]).await[0].is_ok());

        let after = fs::metadata(&path).unwrap();
        assert_ne!(
            after.ino(),
            before.ino(),
            "{format:?}: replaced, not edited"
        );
        assert_eq!(after.mode() & 0o7777, 0o600, "{format:?}");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_eq!(read(&c, CONTACT).await.len(), 2);
    }
}

/// A file Tandem creates is no more private nor more open than any new file (0666 less
/// the umask), although its temporary file starts private.
#[cfg(unix)]
#[tokio::test]
async fn a_new_file_gets_the_mode_any_new_file_gets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = folder();
    let any = dir.path().join("any.txt");
    fs::File::create(&any).unwrap();
    let c = csv_in(&dir);
    assert!(write(&c, CUSTOMER, vec![create("Acme")]).await[0].is_ok());
    let mode = |name: &str| {
        fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("customers.csv"), mode("any.txt"));
}

#[cfg(unix)]
#[tokio::test]
async fn a_planted_symlink_at_the_old_temporary_name_is_not_followed_or_touched() {
    for format in [Format::Csv, Format::Jsonl] {
        let dir = folder();
        let name = format!("customers.{}", format.extension());
        let content = format!("{}{}\n", header(format), one_row(format, "K1", "Acme"));
        put(&dir, &name, content);
        put(&dir, "victim.txt", "not Tandem's\n");
        let planted = dir.path().join(format!("{name}.tmp"));
        std::os::unix::fs::symlink(dir.path().join("victim.txt"), &planted).unwrap();

        let c = FileConnector::new(dir.path().to_owned(), format);
        assert!(write(&c, CUSTOMER, vec![create("Bolt")]).await[0].is_ok());

        assert_eq!(get(&dir, "victim.txt"), "not Tandem's\n", "{format:?}");
        assert_eq!(
            fs::read_link(&planted).unwrap(),
            dir.path().join("victim.txt")
        );
        assert_eq!(read(&c, CUSTOMER).await.len(), 2, "{format:?}");
        let mut expected = vec![name.clone(), format!("{name}.tmp"), "victim.txt".to_owned()];
        expected.sort();
        assert_eq!(names(dir.path()), expected);
    }
}

/// A rewrite of a file is not a rewrite of its line ends: programs that compare files line
/// by line (and version control) would see every line as changed.
#[tokio::test]
async fn crlf_line_ends_are_kept_in_csv() {
    let dir = folder();
    put(&dir, "contacts.csv", "id,name\r\nC1,Ann\r\nC2,Bob\r\n");
    let c = csv_in(&dir);
    let before = read(&c, CONTACT).await;
    write(
        &c,
        CONTACT,
        vec![
            update("C1", None, &[("name", Value::text("Anna"))]),
            create("Cy"),
        ],
    )
    .await;
    assert_eq!(
        get(&dir, "contacts.csv"),
        "id,name\r\nC1,Anna\r\nC2,Bob\r\nC3,Cy\r\n"
    );
    assert_eq!(read(&c, CONTACT).await[1].version, before[1].version);
}

#[tokio::test]
async fn crlf_line_ends_are_kept_in_jsonl() {
    let dir = folder();
    put(
        &dir,
        "contacts.jsonl",
        "{\"id\":\"C1\",\"name\":\"Ann\"}\r\n{\"id\":\"C2\",\"name\":\"Bob\"}\r\n",
    );
    let c = jsonl_in(&dir);
    let before = read(&c, CONTACT).await;
    write(
        &c,
        CONTACT,
        vec![
            update("C1", None, &[("name", Value::text("Anna"))]),
            create("Cy"),
        ],
    )
    .await;
    assert_eq!(
        get(&dir, "contacts.jsonl"),
        "{\"id\":\"C1\",\"name\":\"Anna\"}\r\n{\"id\":\"C2\",\"name\":\"Bob\"}\r\n\
         {\"id\":\"C3\",\"name\":\"Cy\"}\r\n"
    );
    assert_eq!(read(&c, CONTACT).await[1].version, before[1].version);
}

#[tokio::test]
async fn lf_line_ends_stay_lf() {
    for (format, content) in [
        (Format::Csv, "id,name\nC1,Ann\n"),
        (Format::Jsonl, "{\"id\":\"C1\",\"name\":\"Ann\"}\n"),
    ] {
        let dir = folder();
        let name = format!("contacts.{}", format.extension());
        put(&dir, &name, content);
        let c = FileConnector::new(dir.path().to_owned(), format);
        write(&c, CONTACT, vec![create("Bob")]).await;
        assert!(!get(&dir, &name).contains('\r'), "{format:?}");
    }
}

/// Excel saves "CSV UTF-8" with a byte order mark and CR LF; both survive a rewrite.
#[tokio::test]
async fn a_byte_order_mark_and_crlf_are_kept_together_in_csv() {
    let dir = folder();
    put(&dir, "contacts.csv", "\u{feff}id,name\r\nC1,Ann\r\n");
    let c = csv_in(&dir);
    assert_eq!(read(&c, CONTACT).await[0].fields.text("name"), Some("Ann"));
    write(&c, CONTACT, vec![create("Bob")]).await;
    assert_eq!(
        get(&dir, "contacts.csv"),
        "\u{feff}id,name\r\nC1,Ann\r\nC2,Bob\r\n"
    );
}

#[tokio::test]
async fn jsonl_reads_a_byte_order_mark_and_keeps_it() {
    let dir = folder();
    put(
        &dir,
        "contacts.jsonl",
        "\u{feff}{\"id\":\"C1\",\"name\":\"Ann\"}\r\n",
    );
    let c = jsonl_in(&dir);
    let records = read(&c, CONTACT).await;
    assert_eq!(records[0].id, "C1");
    assert_eq!(records[0].fields.text("name"), Some("Ann"));
    // The mark is not part of the first row: its version is that of the bare line.
    put(
        &dir,
        "contacts.jsonl",
        "{\"id\":\"C1\",\"name\":\"Ann\"}\r\n",
    );
    assert_eq!(read(&c, CONTACT).await[0].version, records[0].version);
    put(
        &dir,
        "contacts.jsonl",
        "\u{feff}{\"id\":\"C1\",\"name\":\"Ann\"}\r\n",
    );

    write(&c, CONTACT, vec![create("Bob")]).await;
    assert_eq!(
        get(&dir, "contacts.jsonl"),
        "\u{feff}{\"id\":\"C1\",\"name\":\"Ann\"}\r\n{\"id\":\"C2\",\"name\":\"Bob\"}\r\n"
    );
}

/// Every error on a data file names the file and line (and the column when known) and
/// ends with the step that lets the next run go through.
#[tokio::test]
async fn errors_on_data_files_say_what_where_and_what_to_do() {
    let fix_line = "fix the line or remove it, then run again";
    let fix_header = "fix the header row, then run again";
    let duplicate = "give one of the two rows another id or remove it, then run again";
    let cases: [(Format, &[u8], &str, &str); 9] = [
        (
            Format::Csv,
            b"id,name\nC1,Ann,x\n",
            "line 2: expected 2 fields, found 3",
            fix_line,
        ),
        (
            Format::Csv,
            b"id,name\nC1,A\xffn\n",
            "line 2: invalid UTF-8 in column `name`",
            fix_line,
        ),
        (
            Format::Csv,
            b"name\nAnn\n",
            "line 1: no `id` column",
            fix_header,
        ),
        (
            Format::Csv,
            b"id,name,name\nC1,a,b\n",
            "line 1: duplicate column `name`",
            fix_header,
        ),
        (
            Format::Csv,
            b"id\nC1\nC1\n",
            "line 3: duplicate id `C1` (first on line 2)",
            duplicate,
        ),
        (
            Format::Jsonl,
            b"{\"id\":\"C1\",}\n",
            "line 1: invalid JSON: trailing comma (column 12)",
            fix_line,
        ),
        (
            Format::Jsonl,
            b"{\"id\":\"C1\",\"name\":{\"x\":1}}\n",
            "line 1: `name`:",
            fix_line,
        ),
        (
            Format::Jsonl,
            b"{\"id\":\"C1\"}\n\xff\n",
            "line 2: invalid UTF-8 at byte 1",
            fix_line,
        ),
        (
            Format::Jsonl,
            b"{\"id\":1}\n{\"id\":\"1\"}\n",
            "line 2: duplicate id `1` (first on line 1)",
            duplicate,
        ),
    ];
    for (format, content, what, next) in cases {
        let dir = folder();
        let path = dir.path().join(format!("contacts.{}", format.extension()));
        fs::write(&path, content).unwrap();
        let c = FileConnector::new(dir.path().to_owned(), format);
        let err = c.read(CONTACT, None).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{} {what}", path.display())),
            "{err}"
        );
        assert!(err.ends_with(&format!("; {next}")), "{err}");
    }
}

#[tokio::test]
async fn a_file_that_cannot_be_read_says_what_to_check() {
    let dir = folder();
    fs::create_dir(dir.path().join("contacts.csv")).unwrap();
    let err = csv_in(&dir)
        .read(CONTACT, None)
        .await
        .unwrap_err()
        .to_string();
    let path = dir.path().join("contacts.csv");
    assert!(
        err.starts_with(&format!("cannot read {}: ", path.display())),
        "{err}"
    );
    assert!(
        err.ends_with("; check that it is a file Tandem may read, then run again"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_folder_says_what_to_do() {
    let dir = folder();
    let c = FileConnector::new(dir.path().join("nowhere"), Format::Csv);
    let err = c.check().await.unwrap_err().to_string();
    assert!(err.contains("does not exist; create it"), "{err}");
    assert!(err.ends_with("then run again"), "{err}");
}
