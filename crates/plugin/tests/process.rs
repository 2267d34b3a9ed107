//! Process connectors (`type = "process"`) that misbehave: each failure is a clear
//! error naming the connector and the call, never a hang or a panic; the child is
//! restarted once for the next call, and no child outlives its connector.
//!
//! The children are tests/process/misbehaving_child.py, which misbehaves on `check`
//! as its argument says and answers every other call correctly.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_connector::{BuildContext, Connector, ConnectorError, WriteOp};
use tandem_model::{EntityKind, Fields};
use tandem_plugin::ProcessConnector;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/process/misbehaving_child.py")
}

fn context() -> BuildContext {
    BuildContext {
        base_dir: std::env::temp_dir(),
    }
}

/// A connector `erp` served by the misbehaving child in `mode`, with `extra` settings.
fn child(mode: &str, extra: Value) -> ProcessConnector {
    let mut settings = json!({
        "name": "erp",
        "command": ["python3", script(), mode],
        "timeout": "5s",
    });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    ProcessConnector::start(settings, &context()).unwrap()
}

/// Whether a process with this id exists (a reaped child does not).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The error of a `check` that the child fails, with how long it took.
async fn failed_check(connector: &ProcessConnector) -> (String, Duration) {
    let started = Instant::now();
    let error = connector.check().await.unwrap_err();
    assert!(
        matches!(error, ConnectorError::Transient { .. }),
        "a call the child failed may have acted, so it is transient: {error:?}"
    );
    (error.to_string(), started.elapsed())
}

/// After a failed call the child is gone, the next call runs on a new one, and
/// dropping the connector stops that one too.
async fn restarts_for_the_next_call(connector: ProcessConnector, first: u32) {
    assert!(!alive(first), "the failed child {first} was not stopped");
    let page = connector.read(EntityKind::Customer, None).await.unwrap();
    assert_eq!(page.records.len(), 1);
    let second = connector.child_id().expect("a restarted child");
    assert_ne!(first, second);
    drop(connector);
    assert!(!alive(second), "child {second} outlived its connector");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_exits_mid_call() {
    let connector = child("exit", json!({}));
    let first = connector.child_id().unwrap();
    let (error, _) = failed_check(&connector).await;
    assert!(
        error.contains(
            "process connector `erp` failed in call `check`: the child exited (exit status: 3)"
        ),
        "{error}"
    );
    assert!(error.contains("restarted for the next call"), "{error}");
    restarts_for_the_next_call(connector, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_hangs_is_stopped_after_the_timeout() {
    let connector = child("hang", json!({"timeout": "1s"}));
    let first = connector.child_id().unwrap();
    let (error, took) = failed_check(&connector).await;
    assert!(
        error.contains("process connector `erp` failed in call `check`: the child did not answer within 1s (setting `timeout`)"),
        "{error}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    restarts_for_the_next_call(connector, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_stops_reading_its_stdin_is_stopped_after_the_timeout() {
    let connector = child("deaf", json!({"timeout": "1s"}));
    let first = connector.child_id().unwrap();
    // Far more than a pipe holds: writing it blocks until the child reads.
    let ops: Vec<WriteOp> = (0..10)
        .map(|n| {
            WriteOp::create(
                Fields::new().with("name", format!("{n} {}", "x".repeat(100_000)).as_str()),
            )
        })
        .collect();
    let started = Instant::now();
    let error = connector
        .write(EntityKind::Customer, ops)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("process connector `erp` failed in call `write customer (10 ops)`: the child did not answer within 1s"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(!alive(first));
    drop(connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_writes_garbage() {
    let connector = child("garbage", json!({}));
    let first = connector.child_id().unwrap();
    let (error, _) = failed_check(&connector).await;
    assert!(
        error.contains("process connector `erp` failed in call `check`: the child wrote a line that is not a reply"),
        "{error}"
    );
    assert!(error.contains("`hello, this is not JSON`"), "{error}");
    restarts_for_the_next_call(connector, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_answers_with_the_wrong_id() {
    let connector = child("wrong_id", json!({}));
    let first = connector.child_id().unwrap();
    let (error, _) = failed_check(&connector).await;
    // describe, init and info were requests 1 to 3.
    assert!(
        error.contains("process connector `erp` failed in call `check`: the child answered request id 104 to request id 4"),
        "{error}"
    );
    restarts_for_the_next_call(connector, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_sends_an_oversized_message() {
    let connector = child("oversized", json!({"max_message_bytes": 1024 * 1024}));
    let first = connector.child_id().unwrap();
    let (error, took) = failed_check(&connector).await;
    assert!(
        error.contains("process connector `erp` failed in call `check`: the child sent a reply larger than 1048576 bytes (setting `max_message_bytes`)"),
        "{error}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    restarts_for_the_next_call(connector, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_killed_mid_call() {
    let connector = child("hang", json!({"timeout": "30s"}));
    let first = connector.child_id().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let status = std::process::Command::new("kill")
            .args(["-KILL", &first.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    });
    let (error, took) = failed_check(&connector).await;
    killer.join().unwrap();
    assert!(
        error.contains(
            "process connector `erp` failed in call `check`: the child exited (signal: 9"
        ),
        "{error}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    restarts_for_the_next_call(connector, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_fails_again_after_its_restart_is_not_restarted_twice() {
    let connector = child("exit", json!({}));
    let (first, _) = failed_check(&connector).await;
    assert!(first.contains("restarted for the next call"), "{first}");
    let second = connector.check().await.unwrap_err().to_string();
    assert!(
        second.contains(
            "failed in call `check`: the child exited (exit status: 3); not restarted again"
        ),
        "{second}"
    );
    assert_eq!(connector.child_id(), None);
    // Every later call fails at once, without starting a child.
    let started = Instant::now();
    let third = connector
        .read(EntityKind::Customer, None)
        .await
        .unwrap_err();
    assert!(matches!(third, ConnectorError::Fatal { .. }), "{third:?}");
    assert!(
        third.to_string().contains(
            "process connector `erp`: call `read customer` not made: the child failed again after a restart"
        ),
        "{third}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(connector.child_id(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_child_gets_only_the_environment_the_config_names() {
    let connector = child("env", json!({"env": {"TANDEM_VISIBLE": "1"}}));
    let error = connector.check().await.unwrap_err();
    let ConnectorError::Fatal { message } = error else {
        panic!("{error:?}")
    };
    let names: Vec<&str> = message.split(',').collect();
    assert!(names.contains(&"TANDEM_VISIBLE"), "{names:?}");
    // Python itself may set LC_CTYPE when it starts in the C locale (PEP 538).
    let inherited: Vec<&&str> = names
        .iter()
        .filter(|n| !["TANDEM_VISIBLE", "LC_CTYPE"].contains(n))
        .collect();
    assert!(inherited.is_empty(), "inherited from tandem: {inherited:?}");
    // An error the child answered with is no child failure: the child stays.
    assert!(connector.child_id().is_some());
}

#[test]
fn a_well_behaved_child_is_stopped_with_its_connector_outside_of_tokio() {
    let connector = child("ok", json!({}));
    let pid = connector.child_id().unwrap();
    assert_eq!(connector.description().name, "misbehaving");
    assert_eq!(connector.info().capabilities.kinds, [EntityKind::Customer]);
    assert!(alive(pid));
    drop(connector);
    assert!(!alive(pid), "child {pid} outlived its connector");
}

#[test]
fn a_program_that_does_not_exist_is_a_config_error_at_command() {
    let error = ProcessConnector::start(
        json!({"name": "erp", "command": ["./no-such-connector"]}),
        &context(),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ConnectorError::Config { .. }), "{error:?}");
    assert!(
        message.starts_with("configuration error: `command`: cannot start "),
        "{message}"
    );
    assert!(message.contains("no-such-connector"), "{message}");

    let error =
        ProcessConnector::start(json!({"name": "erp", "command": []}), &context()).unwrap_err();
    assert!(
        error.to_string().contains("`command`: give the program"),
        "{error}"
    );
}

#[test]
fn settings_the_child_refuses_name_their_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/process-python/sqlite_connector.py");
    let error = ProcessConnector::start(
        json!({
            "name": "erp",
            "command": ["python3", example],
            "env": {"PYTHONDONTWRITEBYTECODE": "1"},
            "settings": {"path": "x.db", "colour": "blue"},
        }),
        &context(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "configuration error: `settings.colour`: unknown setting; known: path, kinds, page_size, \
         max_batch (rejected by process connector `erp`)"
    );
}

/// The Python SDK's own tests (sdk/python/tests): the protocol loop, the example
/// connector, and that both stay within Python 3.9.
#[test]
fn the_python_sdk_tests_pass() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python");
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(&sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("\nOK"), "{log}");
    assert!(!log.contains("Ran 0 tests"), "{log}");
}

// ----- logs -----

/// Every line the host's `tracing` printed during this test run.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(logs))
            .init();
        logs
    })
}

struct Capture(&'static Mutex<Vec<u8>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_childs_stderr_is_logged_under_the_connectors_name_at_its_level() {
    let logs = logs();
    let connector = child("ok", json!({"name": "crm-in-python"}));
    // The child writes "warn: misbehaving child started in mode ok" as it starts; the
    // line is read by a thread of its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("misbehaving child started in mode ok"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "not logged:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("tandem_plugin"), "{line}");
    assert!(line.contains("connector=\"crm-in-python\""), "{line}");
    assert!(!line.contains("warn:"), "the level prefix stays in: {line}");
    drop(connector);
}

// ----- the protocol document -----

/// Every JSON block of docs/plugin-protocol.md is JSON; every example request is a
/// message Tandem sends, byte for byte the same once read and written again, and every
/// example reply reads as the type its request asks for.
#[test]
fn the_protocol_documents_examples_are_what_tandem_sends_and_reads() {
    use tandem_connector::{Page, Written};
    use tandem_plugin::protocol::{Description, Envelope, InstanceInfo, Message, Reply, ReplyLine};

    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/plugin-protocol.md"),
    )
    .unwrap();
    let mut rest = doc.as_str();
    let (mut requests, mut replies) = (0, 0);
    while let Some(at) = rest.find("```json\n") {
        rest = &rest[at + "```json\n".len()..];
        let end = rest.find("```").unwrap();
        let block = &rest[..end];
        rest = &rest[end + 3..];
        let value: Value =
            serde_json::from_str(block).unwrap_or_else(|e| panic!("not JSON ({e}):\n{block}"));
        let Some(id) = value.get("id").and_then(Value::as_u64) else {
            continue;
        };
        if value.get("type").is_some() {
            let message: Message = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("not a request ({e}):\n{block}"));
            let again = serde_json::to_value(Envelope {
                id,
                message: &message,
            })
            .unwrap();
            assert_eq!(again, value, "{block}");
            requests += 1;
            continue;
        }
        fn reads<T: serde::de::DeserializeOwned>(block: &str) {
            let line: ReplyLine<T> = serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("not a reply ({e}):\n{block}"));
            assert!(line.reply.is_some(), "{block}");
        }
        match id {
            1 => reads::<Description>(block),
            2 | 4 => reads::<()>(block),
            3 => reads::<InstanceInfo>(block),
            5 => reads::<Page>(block),
            6 => reads::<Vec<Reply<Written>>>(block),
            other => panic!("an example reply with id {other}: which call?\n{block}"),
        }
        replies += 1;
    }
    // describe, init, info, check, read and write asked; the answers of describe,
    // info, read and write shown (init's and check's are `null`, in the text).
    assert!(requests >= 6, "{requests} example requests");
    assert!(replies >= 4, "{replies} example replies");
}
