//! Progress on stderr: the engine's `tracing` events (reading, read, planned,
//! applying, applied), one plain line each, so that stdout stays for the report.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the stderr subscriber. `RUST_LOG`, when set, replaces the level chosen by
/// `-v`/`-q`.
pub fn init(verbose: u8, quiet: bool) {
    // `tandem` matches every target that starts with it: the binary and all
    // tandem_* crates. Other crates only speak up when something is wrong.
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,tandem=info",
        (false, 1) => "warn,tandem=debug",
        (false, _) => "warn,tandem=trace",
    };
    let mut bad_rust_log = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|e| {
                bad_rust_log = Some(e.to_string());
                EnvFilter::new(default)
            }),
        _ => EnvFilter::new(default),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(ansi)
        // Its default reports a failed write with eprintln!, which panics when stderr
        // is a closed pipe (`tandem sync 2>&1 | head`) and would kill the run midway.
        .log_internal_errors(false)
        .event_format(Plain { ansi })
        .init();
    if let Some(e) = bad_rust_log {
        tracing::warn!("ignoring RUST_LOG: {e}");
    }
}

/// `message key=value ...`, with a `warning:`/`error:` prefix where it matters and no
/// timestamps: a run takes seconds, and people read this.
struct Plain {
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let (prefix, color) = match *meta.level() {
            Level::ERROR => ("error: ", "31"),
            Level::WARN => ("warning: ", "33"),
            Level::INFO => ("", ""),
            Level::DEBUG => ("debug: ", "2"),
            Level::TRACE => ("trace: ", "2"),
        };
        if !prefix.is_empty() {
            if self.ansi {
                write!(writer, "\x1b[{color}m{prefix}\x1b[0m")?;
            } else {
                writer.write_str(prefix)?;
            }
        }
        if *meta.level() >= Level::DEBUG {
            write!(writer, "{}: ", meta.target())?;
        }
        let mut visitor = PlainFields(String::new());
        event.record(&mut visitor);
        writeln!(writer, "{}", visitor.0.trim_start())
    }
}

/// Writes the message, then ` key=value` per field; text unquoted, unlike the
/// default formatter.
struct PlainFields(String);

// Writing to a String cannot fail.
impl Visit for PlainFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = match field.name() {
            "message" => write!(self.0, " {value}"),
            name => write!(self.0, " {name}={value}"),
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}
