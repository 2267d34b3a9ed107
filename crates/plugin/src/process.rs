//! `type = "process"`: a connector written in any language, run as a child process
//! that speaks the plugin protocol as JSON lines over its stdin and stdout.
//!
//! ```toml
//! [connectors.erp]
//! type = "process"
//! command = ["python3", "connector.py"]   # argv; relative paths from working_dir
//! env = { PYTHONPATH = "sdk/python" }     # the child's whole environment
//! settings = { path = "erp.db" }          # handed to the child's `init`
//! working_dir = "."                        # default: the config file's folder
//! timeout = "60s"                          # per call; default 60 s
//! max_message_bytes = 67108864             # per reply line; default 64 MiB
//! ```
//!
//! One child serves one connector, one call at a time. A child that exits, hangs past
//! the timeout, writes a line that is not a reply, answers another request's id or
//! sends a line over the size limit is stopped; the call fails with a
//! [`ConnectorError::Transient`] that names the connector and the call (a write may
//! have been carried out), and the next call starts a new child. A child that fails
//! again before answering one call is not restarted a second time: every later call
//! fails at once, so a broken connector cannot cost a timeout per record.
//!
//! The child's stderr is its log: each line becomes a `tracing` event of the target
//! `tandem_plugin` with the field `connector`, at the level its prefix names
//! (`error:`, `warn:`, `info:`, `debug:`, `trace:`; `info` without one).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Page, WriteOp,
    WriteOutcome, Written, parse_settings,
};
use tandem_model::EntityKind;

use crate::ABI_VERSION;
use crate::protocol::{
    Description, Envelope, Init, InstanceInfo, Message, Reply, ReplyLine, Request,
};

/// The default time a call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default size limit of one reply line.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a child may take to exit once its stdin is closed, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The longest stderr line forwarded whole; longer ones are cut.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Builds connectors of `type = "process"` (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFactory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessSettings {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "no_settings")]
    settings: serde_json::Value,
    working_dir: Option<PathBuf>,
    timeout: Option<String>,
    max_message_bytes: Option<usize>,
    /// The connector's name in the config, filled in by `tandem` for messages.
    name: Option<String>,
}

fn no_settings() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl ConnectorFactory for ProcessFactory {
    fn type_name(&self) -> &'static str {
        "process"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(ProcessConnector::start(settings, context)?))
    }
}

/// How to start the child, fixed at build time.
#[derive(Debug)]
struct Spec {
    /// `process connector `erp``, for messages.
    label: String,
    /// The connector's name for the log.
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: PathBuf,
    init: Init,
    timeout: Duration,
    max_message_bytes: usize,
}

impl Spec {
    fn from_settings(
        settings: ProcessSettings,
        context: &BuildContext,
    ) -> Result<Spec, ConnectorError> {
        let Some((program, args)) = settings.command.split_first() else {
            return Err(ConnectorError::config(
                "`command`: give the program and its arguments, e.g. [\"python3\", \"connector.py\"]",
            ));
        };
        let timeout = match &settings.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                ConnectorError::config(format!("`timeout`: {e}; write a duration such as \"30s\""))
            })?,
        };
        let working_dir = match &settings.working_dir {
            Some(dir) => context.resolve(dir),
            None => context.base_dir.clone(),
        };
        // The child resolves relative paths from its own working folder: both folders
        // it is given must not depend on where tandem was started.
        let (base_dir, working_dir) = match (
            std::path::absolute(&context.base_dir),
            std::path::absolute(&working_dir),
        ) {
            (Ok(base_dir), Ok(working_dir)) => (base_dir, working_dir),
            _ => (context.base_dir.clone(), working_dir),
        };
        // A relative program with a folder in it is relative to the working folder;
        // a bare name is looked up on the PATH.
        let program = PathBuf::from(program);
        let program = if program.is_relative() && program.components().count() > 1 {
            working_dir.join(program)
        } else {
            program
        };
        let name = settings.name.unwrap_or_else(|| {
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Spec {
            label: format!("process connector `{name}`"),
            name,
            program,
            args: args.to_vec(),
            env: settings.env,
            working_dir,
            init: Init {
                settings: settings.settings,
                base_dir,
            },
            timeout,
            max_message_bytes: settings
                .max_message_bytes
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        })
    }
}

/// What went wrong with the child itself (not an error it answered with).
#[derive(Debug)]
enum ChildFailure {
    Exited(Option<ExitStatus>),
    Hung(Duration),
    NotAReply(String),
    WrongId { expected: u64, found: Option<u64> },
    TooLong(usize),
    Io(String),
}

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildFailure::Exited(Some(status)) => write!(f, "the child exited ({status})"),
            ChildFailure::Exited(None) => write!(f, "the child closed its stdout"),
            ChildFailure::Hung(timeout) => write!(
                f,
                "the child did not answer within {} (setting `timeout`)",
                humantime::format_duration(*timeout)
            ),
            ChildFailure::NotAReply(why) => {
                write!(f, "the child wrote a line that is not a reply: {why}")
            }
            ChildFailure::WrongId {
                expected,
                found: Some(found),
            } => {
                write!(
                    f,
                    "the child answered request id {found} to request id {expected}"
                )
            }
            ChildFailure::WrongId {
                expected,
                found: None,
            } => {
                write!(
                    f,
                    "the child answered request id {expected} without an `id`"
                )
            }
            ChildFailure::TooLong(limit) => write!(
                f,
                "the child sent a reply larger than {limit} bytes (setting `max_message_bytes`)"
            ),
            ChildFailure::Io(why) => write!(f, "cannot talk to the child: {why}"),
        }
    }
}

/// What the stdout reader hands over.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Closed,
    Failed(String),
}

/// A running child.
struct Running {
    process: Child,
    /// Requests for the writer thread; dropping it closes the child's stdin.
    requests: Option<Sender<Vec<u8>>>,
    lines: Receiver<Line>,
    next_id: u64,
    max_message_bytes: usize,
}

impl Running {
    fn spawn(spec: &Spec) -> Result<Running, String> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env_clear()
            .envs(&spec.env)
            .current_dir(&spec.working_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = command.spawn().map_err(|e| {
            format!(
                "cannot start {} in {}: {e}",
                spec.program.display(),
                spec.working_dir.display()
            )
        })?;
        let stdin = process.stdin.take().expect("stdin is piped");
        let stdout = process.stdout.take().expect("stdout is piped");
        let stderr = process.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::channel();
        let (requests, to_write) = mpsc::channel();
        let limit = spec.max_message_bytes;
        let write_failures = sender.clone();
        // Requests are written from a thread of their own: a child that stops reading
        // its stdin blocks that thread, never the call, which times out.
        let spawned = std::thread::Builder::new()
            .name(format!("{}-stdin", spec.name))
            .spawn(move || write_requests(stdin, &to_write, &write_failures))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name(format!("{}-stdout", spec.name))
                    .spawn(move || read_lines(stdout, limit, &sender))
            })
            .and_then(|_| {
                let name = spec.name.clone();
                std::thread::Builder::new()
                    .name(format!("{}-stderr", spec.name))
                    .spawn(move || forward_log(stderr, &name))
            });
        let mut running = Running {
            process,
            requests: Some(requests),
            lines,
            next_id: 1,
            max_message_bytes: limit,
        };
        if let Err(e) = spawned {
            running.stop();
            return Err(format!("cannot start a thread to read the child: {e}"));
        }
        Ok(running)
    }

    /// Sends one message and waits for its reply.
    fn exchange<T: DeserializeOwned>(
        &mut self,
        message: &Message,
        timeout: Duration,
    ) -> Result<Reply<T>, ChildFailure> {
        let id = self.next_id;
        self.next_id += 1;
        let mut bytes = serde_json::to_vec(&Envelope { id, message })
            .map_err(|e| ChildFailure::Io(format!("cannot encode the request: {e}")))?;
        bytes.push(b'\n');
        let deadline = Instant::now() + timeout;
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|requests| requests.send(bytes).is_ok());
        if !sent {
            return Err(self.closed(deadline));
        }
        let line = match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Line::Text(line)) => line,
            Ok(Line::TooLong) => return Err(ChildFailure::TooLong(self.max_message_bytes)),
            Ok(Line::Failed(why)) => {
                // A child that exited: its exit status says more than "broken pipe".
                return Err(match self.closed(deadline) {
                    ChildFailure::Exited(Some(status)) => ChildFailure::Exited(Some(status)),
                    _ => ChildFailure::Io(why),
                });
            }
            Ok(Line::Closed) | Err(RecvTimeoutError::Disconnected) => {
                return Err(self.closed(deadline));
            }
            Err(RecvTimeoutError::Timeout) => return Err(ChildFailure::Hung(timeout)),
        };
        let parsed: ReplyLine<T> = serde_json::from_slice(&line)
            .map_err(|e| ChildFailure::NotAReply(format!("{e} in {}", excerpt(&line))))?;
        match (parsed.id, parsed.reply) {
            (Some(found), Some(reply)) if found == id => Ok(reply),
            (found, Some(_)) => Err(ChildFailure::WrongId {
                expected: id,
                found,
            }),
            (_, None) => Err(ChildFailure::NotAReply(format!(
                "it holds neither `ok` nor `err`: {}",
                excerpt(&line)
            ))),
        }
    }

    /// The child closed its stdout or stdin: wait (until `deadline`, or briefly) for
    /// its exit status.
    fn closed(&mut self, deadline: Instant) -> ChildFailure {
        let until = deadline.min(Instant::now() + EXIT_GRACE);
        loop {
            match self.process.try_wait() {
                Ok(Some(status)) => return ChildFailure::Exited(Some(status)),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                _ => return ChildFailure::Exited(None),
            }
        }
    }

    /// Closes stdin, gives the child a moment to exit, then kills it; always reaps it.
    fn stop(&mut self) {
        drop(self.requests.take());
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until {
            match self.process.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Kills the child at once (it misbehaved) and reaps it.
    fn kill(&mut self) {
        drop(self.requests.take());
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The start of a line, for messages: enough to recognise it, never the whole page.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("`{}...`", &text[..at]),
        None => format!("`{text}`"),
    }
}

/// Writes each request to the child's stdin until the channel closes (then stdin is
/// closed) or a write fails (reported as a [`Line::Failed`]).
fn write_requests(stdin: ChildStdin, requests: &Receiver<Vec<u8>>, failures: &Sender<Line>) {
    let mut stdin = BufWriter::new(stdin);
    for bytes in requests {
        if let Err(e) = stdin.write_all(&bytes).and_then(|()| stdin.flush()) {
            let _ = failures.send(Line::Failed(format!("cannot write the request: {e}")));
            return;
        }
    }
}

/// Reads stdout line by line, each at most `limit` bytes, until it closes.
fn read_lines(stdout: impl Read, limit: usize, sender: &Sender<Line>) {
    let mut reader = BufReader::with_capacity(256 * 1024, stdout);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(limit as u64 + 1)
            .read_until(b'\n', &mut line);
        let event = match read {
            Ok(0) => Line::Closed,
            Ok(_) if line.ends_with(b"\n") || line.len() <= limit => Line::Text(line),
            Ok(_) => Line::TooLong,
            Err(e) => Line::Failed(e.to_string()),
        };
        let last = !matches!(event, Line::Text(_));
        if sender.send(event).is_err() || last {
            return;
        }
    }
}

/// Forwards the child's stderr into the log, line by line.
fn forward_log(stderr: impl Read, connector: &str) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if !text.is_empty() {
            log_line(connector, text);
        }
    }
}

/// One stderr line as a `tracing` event, at the level its prefix names.
fn log_line(connector: &str, text: &str) {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    let prefixed = |prefix: &str| {
        lower
            .starts_with(prefix)
            .then(|| text[prefix.len()..].trim_start())
    };
    if let Some(m) = prefixed("error:") {
        tracing::error!(target: "tandem_plugin", connector, "{m}");
    } else if let Some(m) = prefixed("warning:").or_else(|| prefixed("warn:")) {
        tracing::warn!(target: "tandem_plugin", connector, "{m}");
    } else if let Some(m) = prefixed("debug:") {
        tracing::debug!(target: "tandem_plugin", connector, "{m}");
    } else if let Some(m) = prefixed("trace:") {
        tracing::trace!(target: "tandem_plugin", connector, "{m}");
    } else {
        let m = prefixed("info:").unwrap_or(text);
        tracing::info!(target: "tandem_plugin", connector, "{m}");
    }
}

/// The child and what its failures have used up.
struct State {
    running: Option<Running>,
    /// Child failures since the last call that succeeded: at 2, no more restarts.
    failures_in_a_row: u32,
    /// Why the connector gave up, once it has.
    given_up: Option<String>,
}

/// A connector served by a child process. The engine sees an ordinary [`Connector`].
pub struct ProcessConnector {
    spec: Arc<Spec>,
    state: Arc<Mutex<State>>,
    description: Description,
    info: InstanceInfo,
}

impl ProcessConnector {
    /// Starts the child, asks it to describe itself, hands it its settings and asks
    /// for its capabilities. `settings` is the connector's config table minus `type`.
    pub fn start(
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<ProcessConnector, ConnectorError> {
        let settings: ProcessSettings = parse_settings(settings)?;
        let spec = Arc::new(Spec::from_settings(settings, context)?);
        let mut running =
            Running::spawn(&spec).map_err(|e| ConnectorError::config(format!("`command`: {e}")))?;
        let started = handshake(&spec, &mut running).and_then(|description| {
            let info = exchange::<InstanceInfo>(
                &spec,
                &mut running,
                &Message::Call(Request::Info),
                "info",
            )?;
            Ok((description, info))
        });
        match started {
            Ok((description, info)) => Ok(ProcessConnector {
                spec,
                state: Arc::new(Mutex::new(State {
                    running: Some(running),
                    failures_in_a_row: 0,
                    given_up: None,
                })),
                description,
                info,
            }),
            Err(error) => {
                running.kill();
                Err(start_error(&spec, error))
            }
        }
    }

    /// What the child said about itself.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The child's name, version and capabilities.
    pub fn info(&self) -> &InstanceInfo {
        &self.info
    }

    /// The process id of the running child, if one runs (for tests and diagnostics).
    pub fn child_id(&self) -> Option<u32> {
        lock(&self.state).running.as_ref().map(|r| r.process.id())
    }

    /// Sends a request from a blocking thread of the host's runtime (or on this
    /// thread, outside of tokio), so the host's runtime goes on meanwhile.
    async fn request<T>(&self, request: Request, call: String) -> Result<T, ConnectorError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let spec = Arc::clone(&self.spec);
        let state = Arc::clone(&self.state);
        let work = move || call_child::<T>(&spec, &state, &Message::Call(request), &call);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.spawn_blocking(work).await.unwrap_or_else(|e| {
                Err(ConnectorError::fatal(format!(
                    "{}: the call did not finish: {e}",
                    self.spec.label
                )))
            }),
            Err(_) => work(),
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `describe`, checked, then `init`.
fn handshake(spec: &Spec, running: &mut Running) -> Result<Description, ConnectorError> {
    let description: Description = exchange(spec, running, &Message::Describe, "describe")?;
    if description.abi_version != ABI_VERSION {
        return Err(ConnectorError::fatal(format!(
            "{} speaks plugin protocol version {}, this tandem speaks version {ABI_VERSION}",
            spec.label, description.abi_version
        )));
    }
    exchange::<()>(spec, running, &Message::Init(spec.init.clone()), "init")?;
    Ok(description)
}

/// One exchange; a child failure becomes a transient error naming connector and call.
fn exchange<T: DeserializeOwned>(
    spec: &Spec,
    running: &mut Running,
    message: &Message,
    call: &str,
) -> Result<T, ConnectorError> {
    match running.exchange::<T>(message, spec.timeout) {
        Ok(reply) => reply.into(),
        Err(failure) => Err(ConnectorError::transient(format!(
            "{} failed in call `{call}`: {failure}",
            spec.label
        ))),
    }
}

/// A failed start is a configuration error; settings the child refused name their key.
fn start_error(spec: &Spec, error: ConnectorError) -> ConnectorError {
    match error {
        ConnectorError::Config { message } => {
            match message
                .strip_prefix('`')
                .and_then(|rest| rest.split_once("`: "))
            {
                Some((key, rest)) if !key.is_empty() => ConnectorError::config(format!(
                    "`settings.{key}`: {rest} (rejected by {})",
                    spec.label
                )),
                _ => ConnectorError::config(format!(
                    "`settings`: {} rejected its settings: {message}",
                    spec.label
                )),
            }
        }
        error => ConnectorError::config(format!("`command`: {error}")),
    }
}

/// One call: starts (or restarts) the child when none runs, then exchanges.
fn call_child<T: DeserializeOwned>(
    spec: &Spec,
    state: &Mutex<State>,
    message: &Message,
    call: &str,
) -> Result<T, ConnectorError> {
    let mut state = lock(state);
    if let Some(reason) = &state.given_up {
        return Err(ConnectorError::fatal(format!(
            "{}: call `{call}` not made: the child failed again after a restart ({reason}); \
             fix the connector and run again",
            spec.label
        )));
    }
    if state.running.is_none() {
        tracing::warn!(target: "tandem_plugin", connector = %spec.name, "restarting the child for call `{call}`");
        let restarted = Running::spawn(spec)
            .map_err(|e| ConnectorError::transient(format!("{}: {e}", spec.label)))
            .and_then(|mut running| match handshake(spec, &mut running) {
                Ok(_) => Ok(running),
                Err(e) => {
                    running.kill();
                    Err(e)
                }
            });
        match restarted {
            Ok(running) => state.running = Some(running),
            Err(error) => {
                state.given_up = Some(error.to_string());
                return Err(error);
            }
        }
    }
    let running = state.running.as_mut().expect("a child runs");
    match running.exchange::<T>(message, spec.timeout) {
        Ok(reply) => {
            state.failures_in_a_row = 0;
            reply.into()
        }
        Err(failure) => {
            running.kill();
            state.running = None;
            state.failures_in_a_row += 1;
            let error = format!("{} failed in call `{call}`: {failure}", spec.label);
            tracing::warn!(target: "tandem_plugin", connector = %spec.name, "{error}");
            if state.failures_in_a_row >= 2 {
                state.given_up = Some(failure.to_string());
                return Err(ConnectorError::transient(format!(
                    "{error}; not restarted again"
                )));
            }
            Err(ConnectorError::transient(format!(
                "{error}; it is restarted for the next call"
            )))
        }
    }
}

impl Drop for ProcessConnector {
    fn drop(&mut self) {
        if let Some(mut running) = lock(&self.state).running.take() {
            running.stop();
        }
    }
}

impl fmt::Debug for ProcessConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessConnector")
            .field("name", &self.spec.name)
            .field("program", &self.spec.program)
            .field("child", &self.description.name)
            .finish_non_exhaustive()
    }
}

/// `read customer`, `write vendor (3 ops)`: the call, for messages.
fn call_name(request: &Request) -> String {
    match request {
        Request::Info => "info".to_owned(),
        Request::Check => "check".to_owned(),
        Request::Read { kind, .. } => format!("read {kind}"),
        Request::Write { kind, ops } => format!("write {kind} ({} ops)", ops.len()),
    }
}

#[async_trait::async_trait]
impl Connector for ProcessConnector {
    fn capabilities(&self) -> Capabilities {
        self.info.capabilities.clone()
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.request(Request::Check, "check".to_owned()).await
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        let request = Request::Read {
            kind,
            cursor: cursor.cloned(),
        };
        let call = call_name(&request);
        self.request(request, call).await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let count = ops.len();
        let request = Request::Write { kind, ops };
        let call = call_name(&request);
        let replies: Vec<Reply<Written>> = self.request(request, call.clone()).await?;
        if replies.len() != count {
            return Err(ConnectorError::fatal(format!(
                "{} answered {} outcomes to call `{call}`",
                self.spec.label,
                replies.len()
            )));
        }
        Ok(replies.into_iter().map(Into::into).collect())
    }
}

/// Where the connector's program is, for `tandem plugins` and messages.
impl ProcessConnector {
    pub fn program(&self) -> &Path {
        &self.spec.program
    }
}
