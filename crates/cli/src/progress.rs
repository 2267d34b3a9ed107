//! Progress bars for an interactive run: records read per scope (with a rate, and an
//! ETA when the state knows how many records a full listing brings), a spinner while
//! matching and planning, and the writes sent out of those planned. They are driven
//! by the engine's progress events (`tandem_engine::progress`) and drawn only on a
//! terminal; log lines are printed above them ([`Bars::writer`]), never through them.
//!
//! A phase gets a bar only once it is big or slow (more than [`SHOW_AFTER_RECORDS`]
//! records, or longer than [`SHOW_AFTER`]): a small sync looks as it always did.
//!
//! Also here: what Ctrl-C does during an engine command ([`stop_on_ctrl_c`]).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;

/// A phase with more records than this gets a bar at once.
pub const SHOW_AFTER_RECORDS: u64 = 2_000;
/// A phase that lasts longer than this gets a bar, however small.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Whether an engine command shows bars: stderr is a terminal, logs are for people,
/// and the user did not ask for quiet.
pub fn wanted(quiet: bool, plain_logs: bool) -> bool {
    !quiet
        && plain_logs
        && io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// One progress event of the engine, as the bars need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    ReadStart {
        scope: String,
        total: u64,
    },
    Read {
        scope: String,
        done: u64,
        total: u64,
    },
    ReadEnd {
        scope: String,
    },
    PlanStart,
    PlanEnd,
    Apply {
        done: u64,
        total: u64,
        at: String,
    },
    ApplyEnd,
}

impl Progress {
    /// The event's fields read back; `None` for an event this version does not know.
    fn of(event: &Event<'_>) -> Option<Progress> {
        let mut f = Fields::default();
        event.record(&mut f);
        let scope = || format!("{} {}", f.connector, f.kind);
        Some(match (f.phase.as_str(), f.step.as_str()) {
            ("read", "start") => Progress::ReadStart {
                scope: scope(),
                total: f.total,
            },
            ("read", "progress") => Progress::Read {
                scope: scope(),
                done: f.done,
                total: f.total,
            },
            ("read", "end") => Progress::ReadEnd { scope: scope() },
            ("plan", "start") => Progress::PlanStart,
            ("plan", "end") => Progress::PlanEnd,
            ("apply", "progress") => Progress::Apply {
                done: f.done,
                total: f.total,
                at: f.at,
            },
            ("apply", "end") => Progress::ApplyEnd,
            _ => return None,
        })
    }
}

#[derive(Default)]
struct Fields {
    phase: String,
    step: String,
    connector: String,
    kind: String,
    at: String,
    done: u64,
    total: u64,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "done" => self.done = value,
            "total" => self.total = value,
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "phase" => &mut self.phase,
            "step" => &mut self.step,
            "connector" => &mut self.connector,
            "kind" => &mut self.kind,
            "at" => &mut self.at,
            _ => return,
        };
        value.clone_into(slot);
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// The bars of one run; cheap to clone (one set, shared).
#[derive(Clone)]
pub struct Bars {
    multi: MultiProgress,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Bars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bars").finish_non_exhaustive()
    }
}

/// A phase under way: when it began, and its bar once it has one.
struct Phase {
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            started: Instant::now(),
            bar: None,
        }
    }
}

/// Takes a phase's bar off the screen.
fn finish(phase: Option<Phase>) {
    if let Some(bar) = phase.and_then(|p| p.bar) {
        bar.finish_and_clear();
    }
}

#[derive(Default)]
struct State {
    reads: HashMap<String, Phase>,
    plan: Option<Phase>,
    apply: Option<Phase>,
    /// A bar was shown this run: the phases after it get one at once.
    shown: bool,
}

impl Bars {
    /// Bars drawn on stderr.
    pub fn on_stderr() -> Bars {
        Bars::with_target(ProgressDrawTarget::stderr())
    }

    fn with_target(target: ProgressDrawTarget) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(target),
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the progress display down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A log writer that prints above the bars.
    pub fn writer(&self) -> BarsWriter {
        BarsWriter {
            multi: self.multi.clone(),
        }
    }

    /// Takes the bars off the screen (before a last message).
    pub fn clear(&self) {
        let mut state = self.state();
        for (_, phase) in state.reads.drain() {
            finish(Some(phase));
        }
        finish(state.plan.take());
        finish(state.apply.take());
        let _ = self.multi.clear();
    }

    /// Whether any bar is on the screen (or was, this run).
    #[cfg(test)]
    fn shown(&self) -> bool {
        self.state().shown
    }

    pub fn update(&self, event: Progress) {
        let mut state = self.state();
        let state = &mut *state;
        match event {
            Progress::ReadStart { scope, .. } => {
                state.reads.insert(scope, Phase::new());
            }
            Progress::Read { scope, done, total } => {
                let phase = state.reads.entry(scope.clone()).or_insert_with(Phase::new);
                let elapsed = phase.started.elapsed();
                if phase.bar.is_none() && (done >= SHOW_AFTER_RECORDS || elapsed >= SHOW_AFTER) {
                    phase.bar = Some(self.multi.add(new_bar(total, true)));
                    state.shown = true;
                }
                if let Some(bar) = &phase.bar {
                    bar.set_position(done);
                    bar.set_message(read_message(&scope, done, total, elapsed));
                }
            }
            Progress::ReadEnd { scope } => {
                finish(state.reads.remove(&scope));
            }
            Progress::PlanStart => {
                let mut phase = Phase::new();
                if state.shown {
                    let bar = self.multi.add(new_bar(0, false));
                    bar.set_message("matching and planning");
                    phase.bar = Some(bar);
                }
                state.plan = Some(phase);
            }
            Progress::PlanEnd => {
                finish(state.plan.take());
            }
            Progress::Apply { done, total, at } => {
                let shown = state.shown;
                let phase = state.apply.get_or_insert_with(Phase::new);
                let elapsed = phase.started.elapsed();
                if phase.bar.is_none()
                    && (shown || total >= SHOW_AFTER_RECORDS || elapsed >= SHOW_AFTER)
                {
                    phase.bar = Some(self.multi.add(new_bar(total, false)));
                    state.shown = true;
                }
                if let Some(bar) = &phase.bar {
                    bar.set_position(done);
                    bar.set_message(apply_message(done, total, elapsed, &at));
                }
            }
            Progress::ApplyEnd => {
                finish(state.apply.take());
            }
        }
    }
}

/// A bar with a length when `total` is known, a spinner otherwise; ticking on its own
/// so that the elapsed time moves while the engine is busy.
fn new_bar(total: u64, read: bool) -> ProgressBar {
    let bar = if total > 0 {
        ProgressBar::new(total)
    } else {
        ProgressBar::new_spinner()
    };
    let template = if total > 0 {
        "{spinner} [{bar:24}] {wide_msg} [{elapsed}]"
    } else {
        "{spinner} {wide_msg} [{elapsed}]"
    };
    // The templates are constants: a bad one is a bug the tests catch.
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ");
    bar.set_style(style);
    if read && total > 0 {
        // A full listing may bring more records than the state knew of.
        bar.set_length(total);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// `crm contacts: 120,000 of ~200,000 read, 64.0k/s, ETA 1m 02s`.
pub fn read_message(scope: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let mut out = format!("{scope}: {}", count(done));
    if total > 0 {
        // The state's count of the scope: the listing may bring more or fewer.
        let _ = write!(out, " of ~{}", count(total));
    }
    out.push_str(" read");
    if let Some(rate) = rate(done, elapsed) {
        let _ = write!(out, ", {rate}");
    }
    if let Some(eta) = eta(done, total, elapsed) {
        let _ = write!(out, ", ETA {}", duration(eta));
    }
    out
}

/// `applying: 3,000 of 10,000 writes sent, 1.2k/s, ETA 6s (account updates)`.
pub fn apply_message(done: u64, total: u64, elapsed: Duration, at: &str) -> String {
    let mut out = format!("applying: {} of {} writes sent", count(done), count(total));
    // Once every write is sent, the rate only falls while the state is stored.
    if let Some(rate) = rate(done, elapsed).filter(|_| done < total) {
        let _ = write!(out, ", {rate}");
    }
    if let Some(eta) = eta(done, total, elapsed) {
        let _ = write!(out, ", ETA {}", duration(eta));
    }
    // The engine's step names are for logs (`after_creates`); people read a phrase.
    let at = at.strip_prefix("after_").unwrap_or(at).replace('_', " ");
    if !at.is_empty() && at != "start" {
        let _ = write!(out, " ({at})");
    }
    out
}

/// `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `850/s`, `64.0k/s`, `1.2M/s`; nothing before a tenth of a second has passed.
pub fn rate(done: u64, elapsed: Duration) -> Option<String> {
    let secs = elapsed.as_secs_f64();
    if secs < 0.1 || done == 0 {
        return None;
    }
    let per_sec = done as f64 / secs;
    Some(if per_sec >= 1e6 {
        format!("{:.1}M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    })
}

/// The time left at the rate so far, when the total is known and not reached.
pub fn eta(done: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if total == 0 || done == 0 || done >= total || elapsed < Duration::from_millis(100) {
        return None;
    }
    let left = (total - done) as f64 * elapsed.as_secs_f64() / done as f64;
    Some(Duration::from_secs_f64(left.ceil()))
}

/// `45s`, `3m 07s`, `1h 02m`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Feeds the engine's progress events to the bars.
pub struct ProgressLayer {
    bars: Bars,
}

impl ProgressLayer {
    pub fn new(bars: Bars) -> ProgressLayer {
        ProgressLayer { bars }
    }
}

impl<S: Subscriber> Layer<S> for ProgressLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if let Some(progress) = Progress::of(event) {
            self.bars.update(progress);
        }
    }
}

/// Writes log lines above the bars: the bars are taken off, the line printed, the
/// bars drawn again. The fmt layer writes each event in one call.
#[derive(Clone)]
pub struct BarsWriter {
    multi: MultiProgress,
}

impl Write for BarsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.multi.suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for BarsWriter {
    type Writer = BarsWriter;

    fn make_writer(&'a self) -> BarsWriter {
        self.clone()
    }
}

/// What an engine command is, for the Ctrl-C message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// `sync`, `link`, `unlink`, `create`, `create-contact`.
    Sync,
    /// `plan`.
    Plan,
}

/// The line printed on Ctrl-C.
pub fn interrupt_message(what: Interrupted) -> &'static str {
    match what {
        // The engine cannot stop at a batch boundary yet: the process ends at once,
        // which the state is built for (R18, and the crash test kills runs at every
        // step).
        Interrupted::Sync => {
            "interrupted: stopping now, in the middle of the run. Nothing is lost: every \
             write is recorded in the state before it is sent (R18), and the next \
             `tandem sync` carries on from where this one stopped."
        }
        Interrupted::Plan => "interrupted: the plan stopped; nothing was written.",
    }
}

/// On Ctrl-C: the bars come off, one line says what happens (a JSON log line with
/// `json_logs`), and the process ends with 130 (128 + SIGINT, the shell's
/// convention). Watched from a thread of its own: the run's thread may be busy for
/// seconds between awaits (planning, commits).
pub fn stop_on_ctrl_c(bars: Option<Bars>, what: Interrupted, json_logs: bool) {
    let watcher = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            else {
                return;
            };
            if runtime.block_on(tokio::signal::ctrl_c()).is_err() {
                return;
            }
            if let Some(bars) = &bars {
                bars.clear();
            }
            if json_logs {
                tracing::warn!(target: "tandem", "{}", interrupt_message(what));
            } else {
                let _ = writeln!(io::stderr(), "\n{}", interrupt_message(what));
            }
            std::process::exit(130);
        });
    // Without the watcher Ctrl-C still stops the process, only without the message.
    drop(watcher);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rates_and_durations_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(200_000), "200,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(rate(850, Duration::from_secs(1)).as_deref(), Some("850/s"));
        assert_eq!(
            rate(64_000, Duration::from_secs(1)).as_deref(),
            Some("64.0k/s")
        );
        assert_eq!(
            rate(3_000_000, Duration::from_secs(2)).as_deref(),
            Some("1.5M/s")
        );
        assert_eq!(
            rate(10, Duration::from_millis(10)),
            None,
            "too early to tell"
        );
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(187)), "3m 07s");
        assert_eq!(duration(Duration::from_secs(3720)), "1h 02m");
    }

    #[test]
    fn eta_needs_a_total_and_some_progress() {
        let ten = Duration::from_secs(10);
        assert_eq!(eta(50, 100, ten), Some(Duration::from_secs(10)));
        assert_eq!(eta(25, 100, ten), Some(Duration::from_secs(30)));
        assert_eq!(eta(50, 0, ten), None, "total unknown");
        assert_eq!(eta(0, 100, ten), None, "nothing done yet");
        assert_eq!(eta(120, 100, ten), None, "more than the state knew of");
    }

    #[test]
    fn messages_name_the_scope_the_counts_and_the_step() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            read_message("crm contacts", 120_000, 200_000, ten),
            "crm contacts: 120,000 of ~200,000 read, 12.0k/s, ETA 7s"
        );
        assert_eq!(
            read_message("erp customers", 5_000, 0, ten),
            "erp customers: 5,000 read, 500/s"
        );
        assert_eq!(
            apply_message(3_000, 10_000, ten, "account updates"),
            "applying: 3,000 of 10,000 writes sent, 300/s, ETA 24s (account updates)"
        );
        assert_eq!(
            apply_message(10_000, 10_000, ten, "after_link_commit"),
            "applying: 10,000 of 10,000 writes sent (link commit)"
        );
        assert_eq!(
            apply_message(0, 10, Duration::ZERO, "start"),
            "applying: 0 of 10 writes sent"
        );
    }

    #[test]
    fn bars_appear_only_for_big_or_slow_phases() {
        let bars = Bars::with_target(ProgressDrawTarget::hidden());
        let scope = "crm contacts".to_owned();
        bars.update(Progress::ReadStart {
            scope: scope.clone(),
            total: 0,
        });
        bars.update(Progress::Read {
            scope: scope.clone(),
            done: 500,
            total: 0,
        });
        bars.update(Progress::ReadEnd {
            scope: scope.clone(),
        });
        bars.update(Progress::Apply {
            done: 0,
            total: 10,
            at: "start".into(),
        });
        assert!(!bars.shown(), "a small, quick run shows no bar");
        bars.update(Progress::ApplyEnd);

        bars.update(Progress::Read {
            scope: scope.clone(),
            done: 50_000,
            total: 200_000,
        });
        assert!(bars.shown(), "a big read shows its bar");
        bars.update(Progress::ReadEnd { scope });
        bars.update(Progress::PlanStart);
        assert!(
            bars.state().plan.as_ref().is_some_and(|p| p.bar.is_some()),
            "after a big read, planning shows a spinner"
        );
        bars.update(Progress::PlanEnd);
        bars.update(Progress::Apply {
            done: 0,
            total: 10,
            at: "start".into(),
        });
        assert!(bars.state().apply.as_ref().is_some_and(|p| p.bar.is_some()));
        bars.clear();
        assert!(bars.state().apply.is_none());
    }

    #[test]
    fn engine_events_are_understood() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let bars = Bars::with_target(ProgressDrawTarget::hidden());
        let seen = Arc::new(Mutex::new(Vec::new()));
        struct Record(Arc<Mutex<Vec<Progress>>>);
        impl<S: Subscriber> Layer<S> for Record {
            fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
                self.0.lock().unwrap().extend(Progress::of(event));
            }
        }
        let subscriber = tracing_subscriber::registry()
            .with(ProgressLayer::new(bars))
            .with(Record(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: tandem_engine::progress::TARGET, phase = "read", step = "progress", connector = "crm", kind = "contacts", done = 7u64, total = 9u64);
            tracing::trace!(target: tandem_engine::progress::TARGET, phase = "apply", step = "progress", done = 1u64, total = 2u64, at = "creates");
            tracing::trace!(target: tandem_engine::progress::TARGET, phase = "unknown", step = "start");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Progress::Read {
                    scope: "crm contacts".into(),
                    done: 7,
                    total: 9
                },
                Progress::Apply {
                    done: 1,
                    total: 2,
                    at: "creates".into()
                },
            ]
        );
    }
}
