//! Test support for HTTP connectors (cargo feature `http-testsupport`): a private CA
//! that issues server certificates, a server that echoes every request it receives,
//! a small proxy that injects faults in front of a real server (chosen by rules, or at
//! random from a seed), and a capture of the logs a test writes.
//!
//! Everything listens on 127.0.0.1 only, on a free port, and stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A private CA, made fresh for a test.
#[derive(Debug)]
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// The files of a CA and a server certificate it issued.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate: what `ca_file` names.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// # Panics
    /// When the key or certificate cannot be made (never, with ring).
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        TestCa { params, key, pem }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `hosts` (names or IP addresses) and its key, both PEM.
    pub fn issue(&self, hosts: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("server"),
        );
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `ca.pem`, and `server.pem` / `server.key` for 127.0.0.1 and localhost,
    /// into `dir`.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<TlsFiles> {
        let (cert, key) = self.issue(&["127.0.0.1", "localhost"]);
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, &self.pem)?;
        std::fs::write(&files.cert, cert)?;
        std::fs::write(&files.key, key)?;
        Ok(files)
    }
}

/// One request as read off the wire: its head (request line and headers) and body.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Everything received, head and body, as text.
    pub fn text(&self) -> String {
        format!("{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// Reads one request; `None` at the end of the stream.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<RawRequest> {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(RawRequest { head, body })
}

/// A loopback listener whose connections are served by `serve` on threads of their
/// own, until dropped.
#[derive(Debug)]
struct Listener {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("an address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let serve = Arc::new(serve);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let serve = serve.clone();
                    thread::spawn(move || serve(stream));
                }
            }
        });
        Listener { port, stop }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// What the [`EchoServer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// This status, with everything received as the body.
    Status(u16),
    /// HTTP 200 with a JSON-RPC error whose message is everything received.
    JsonRpcError,
}

/// A server that answers every request with the request itself, headers and body: the
/// worst case for a client that shows server text in its errors.
#[derive(Debug)]
pub struct EchoServer {
    listener: Listener,
    mode: Arc<Mutex<Echo>>,
    received: Arc<Mutex<Vec<RawRequest>>>,
}

impl EchoServer {
    pub fn start(mode: Echo) -> EchoServer {
        let mode = Arc::new(Mutex::new(mode));
        let shared = mode.clone();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let listener = Listener::start(move |stream| {
            let Ok(mut out) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            while let Some(request) = read_request(&mut reader) {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(request.clone());
                let mode = *shared.lock().unwrap_or_else(|e| e.into_inner());
                let close = request
                    .head
                    .to_ascii_lowercase()
                    .contains("connection: close");
                if out.write_all(&echo_reply(mode, &request)).is_err() || close {
                    return;
                }
            }
        });
        EchoServer {
            listener,
            mode,
            received,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<RawRequest> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set(&self, mode: Echo) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listener.port)
    }

    pub fn port(&self) -> u16 {
        self.listener.port
    }
}

fn echo_reply(mode: Echo, request: &RawRequest) -> Vec<u8> {
    let text = request.text();
    let (status, body) = match mode {
        Echo::Status(status) => (status, text),
        Echo::JsonRpcError => (
            200,
            serde_json::json!({"id": 1, "error": ["UserError", [text, text]]}).to_string(),
        ),
    };
    format!(
        "HTTP/1.1 {status} Echo\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Retry-After: 0\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A fault the [`FaultProxy`] injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers this status (with `Retry-After` when given) without forwarding.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Closes the connection without forwarding: the server never sees the request.
    DropBeforeForward,
    /// Forwards the request, then closes the connection without a reply: the server
    /// acted, the client never learns it.
    DropAfterForward,
    /// Forwards the request and holds the reply back this long.
    Delay(Duration),
}

impl Fault {
    /// A short name for summaries: `429`, `503`, `dropped`, `slow`, `lost reply`.
    pub fn kind(&self) -> String {
        match self {
            Fault::Status { status, .. } => status.to_string(),
            Fault::DropBeforeForward => "dropped".into(),
            Fault::DropAfterForward => "lost reply".into(),
            Fault::Delay(_) => "slow".into(),
        }
    }
}

/// Faults on a share of all requests, chosen by a seeded generator from each request's
/// number: the same seed gives the same requests of a sequence the same faults, so a
/// client that sends its requests in a fixed order meets the same faults every time.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    pub seed: u64,
    /// The share of requests that get a fault, 0 to 1.
    pub share: f64,
    /// What a request chosen for a fault gets: one of these, with equal odds.
    pub faults: Vec<Fault>,
}

impl RandomFaults {
    /// What real servers do: 429 asking to wait `retry_after` seconds, 503, a connection
    /// dropped before the server saw the request, a reply held back `slow`, and a reply
    /// dropped after the server acted on the request.
    pub fn mixed(seed: u64, share: f64, retry_after: u64, slow: Duration) -> RandomFaults {
        RandomFaults {
            seed,
            share,
            faults: vec![
                Fault::Status {
                    status: 429,
                    retry_after: Some(retry_after.to_string()),
                },
                Fault::Status {
                    status: 503,
                    retry_after: None,
                },
                Fault::DropBeforeForward,
                Fault::Delay(slow),
                Fault::DropAfterForward,
            ],
        }
    }

    /// The fault of request number `n` (counted from 0), if any.
    pub fn pick(&self, n: usize) -> Option<Fault> {
        let n = n as u64;
        // The top 53 bits as a uniform number in [0, 1).
        let roll = (splitmix64(self.seed, 2 * n) >> 11) as f64 / (1u64 << 53) as f64;
        if roll >= self.share || self.faults.is_empty() {
            return None;
        }
        let which = splitmix64(self.seed, 2 * n + 1) % self.faults.len() as u64;
        Some(self.faults[which as usize].clone())
    }
}

/// The `n`-th output of SplitMix64 seeded with `seed`: a random-access generator, so
/// that request `n`'s draw depends on nothing but the seed and `n`.
fn splitmix64(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fault the proxy injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The request's number at the proxy, counted from 0.
    pub request: usize,
    /// Its request line, and for JSON-RPC the method called.
    pub label: String,
    pub fault: Fault,
}

#[derive(Debug)]
struct Rule {
    matches: String,
    fault: Fault,
    left: usize,
}

#[derive(Debug, Default)]
struct ProxyState {
    rules: Mutex<Vec<Rule>>,
    random: Mutex<Option<RandomFaults>>,
    requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    injected: Mutex<Vec<Injected>>,
}

/// A plain-HTTP proxy in front of a loopback server that injects [`Fault`]s into the
/// requests whose text (head or body) contains a given string ([`FaultProxy::inject`]),
/// and into a share of all requests chosen by a seeded generator
/// ([`FaultProxy::set_random`]). A rule that matches comes first.
#[derive(Debug)]
pub struct FaultProxy {
    listener: Listener,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:<upstream_port>`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let listener = Listener::start(move |stream| {
            let Ok(mut out) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            while let Some(request) = read_request(&mut reader) {
                if !proxy_one(&shared, upstream_port, &request, &mut out) {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
            }
        });
        FaultProxy { listener, state }
    }

    /// `http://127.0.0.1:<proxy port>/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listener.port)
    }

    /// Injects `fault` into the next `times` requests whose text contains `matches`.
    pub fn inject(&self, matches: &str, fault: Fault, times: usize) {
        self.state.rules.lock().expect("rules").push(Rule {
            matches: matches.to_owned(),
            fault,
            left: times,
        });
    }

    /// Injects random faults from now on (`None`: no more random faults).
    pub fn set_random(&self, faults: Option<RandomFaults>) {
        *self.state.random.lock().expect("random faults") = faults;
    }

    /// Every fault injected so far, in order.
    pub fn injected(&self) -> Vec<Injected> {
        self.state.injected.lock().expect("injected").clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The request lines received so far (`PUT /u/book/x.vcf HTTP/1.1`), in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.state.log.lock().expect("log").clone()
    }
}

fn take_rule(state: &ProxyState, text: &str) -> Option<Fault> {
    let mut rules = state.rules.lock().expect("rules");
    let rule = rules
        .iter_mut()
        .find(|r| r.left > 0 && text.contains(&r.matches))?;
    rule.left -= 1;
    Some(rule.fault.clone())
}

/// The fault for request number `n`, written down with the request when there is one.
fn take_fault(state: &ProxyState, n: usize, request: &RawRequest) -> Option<Fault> {
    let random = || {
        state
            .random
            .lock()
            .expect("random faults")
            .as_ref()?
            .pick(n)
    };
    let fault = take_rule(state, &request.text()).or_else(random)?;
    state.injected.lock().expect("injected").push(Injected {
        request: n,
        label: label(request),
        fault: fault.clone(),
    });
    Some(fault)
}

/// The request line, and for a JSON-RPC call the method (every Tryton call is
/// `POST /<db>/`).
fn label(request: &RawRequest) -> String {
    let line = request.head.lines().next().unwrap_or_default();
    let method = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|body| body.get("method")?.as_str().map(str::to_owned));
    match method {
        Some(method) => format!("{line} {method}"),
        None => line.to_owned(),
    }
}

/// Serves one request; false when the client connection is to be closed.
fn proxy_one(state: &ProxyState, upstream: u16, request: &RawRequest, out: &mut TcpStream) -> bool {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let line = request.head.lines().next().unwrap_or_default().to_owned();
    state.log.lock().expect("log").push(line);
    let fault = take_fault(state, n, request);
    let reply = match &fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let retry = retry_after
                .as_ref()
                .map(|r| format!("Retry-After: {r}\r\n"))
                .unwrap_or_default();
            let reply = format!("HTTP/1.1 {status} Injected\r\n{retry}Content-Length: 0\r\n\r\n");
            return out.write_all(reply.as_bytes()).is_ok();
        }
        Some(Fault::DropBeforeForward) => return false,
        _ => match forward(upstream, request) {
            Some(reply) => reply,
            None => return false,
        },
    };
    match fault {
        Some(Fault::DropAfterForward) => {}
        Some(Fault::Delay(d)) => {
            thread::sleep(d);
            let _ = out.write_all(&closing(&reply));
        }
        _ => {
            let _ = out.write_all(&closing(&reply));
        }
    }
    // One request per connection: the reply says so, the client opens a new one.
    false
}

/// `reply` with `Connection: close` in place of any `Connection` header.
fn closing(reply: &[u8]) -> Vec<u8> {
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return reply.to_vec();
    };
    let head = String::from_utf8_lossy(&reply[..end]);
    let mut out = String::new();
    for line in head.split("\r\n") {
        let name = line.split(':').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("connection") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    [out.as_bytes(), &reply[end + 4..]].concat()
}

/// Sends `request` upstream on a connection of its own and reads the whole reply.
fn forward(upstream: u16, request: &RawRequest) -> Option<Vec<u8>> {
    let mut head = String::new();
    for line in request.head.lines().filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("connection") {
            head.push_str(line);
            head.push_str("\r\n");
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut conn = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(&request.body).ok()?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).ok()?;
    Some(reply)
}

/// The logs written on this thread while it is alive, every level included.
#[derive(Debug)]
pub struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    /// Starts capturing (a current-thread runtime keeps every task on this thread).
    pub fn capture() -> Logs {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Logs {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[derive(Debug, Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_faults_hit_about_their_share_the_same_way_for_a_seed() {
        let faults = RandomFaults::mixed(7, 0.2, 1, Duration::from_millis(10));
        let picks: Vec<_> = (0..5000).map(|n| faults.pick(n)).collect();
        let hit = picks.iter().flatten().count();
        assert!((900..1100).contains(&hit), "{hit} of 5000");
        for fault in &faults.faults {
            let times = picks.iter().flatten().filter(|f| *f == fault).count();
            assert!(times > 150, "{fault:?}: {times}");
        }
        let again: Vec<_> = (0..5000).map(|n| faults.pick(n)).collect();
        assert_eq!(picks, again);
        let other = RandomFaults { seed: 8, ..faults };
        assert_ne!(picks, (0..5000).map(|n| other.pick(n)).collect::<Vec<_>>());
    }
}
