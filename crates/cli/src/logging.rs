//! Progress on stderr: the engine's `tracing` events (reading, read, planned,
//! applying, applied), one plain line each, so that stdout stays for the report; or,
//! with `--log-format json`, one JSON object a line for log collectors. On a terminal
//! the lines go around the progress bars ([`crate::progress`]) instead of through them.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::progress::{Bars, ProgressLayer};

/// The form of the log lines on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `message key=value ...`, for people.
    #[default]
    Plain,
    /// One JSON object a line: timestamp, level, target, message, then the fields of
    /// the event and of the spans it is in (`run`, `connector`, `kind`, ...).
    Json,
}

/// Installs the stderr subscriber. `RUST_LOG`, when set, replaces the level chosen by
/// `-v`/`-q`. With `bars`, log lines are printed above the progress bars, and the
/// engine's progress events drive them.
pub fn init(verbose: u8, quiet: bool, format: LogFormat, bars: Option<Bars>) {
    // `tandem` matches every target that starts with it: the binary and all
    // tandem_* crates. Other crates only speak up when something is wrong. Progress
    // events are for the bars; `RUST_LOG=tandem_progress=trace` logs them too.
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,tandem=info,tandem_progress=off",
        (false, 1) => "warn,tandem=debug,tandem_progress=off",
        (false, _) => "warn,tandem=trace,tandem_progress=off",
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
    let writer = match &bars {
        Some(bars) => BoxMakeWriter::new(bars.writer()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Plain => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                // Its default reports a failed write with eprintln!, which panics when
                // stderr is a closed pipe (`tandem sync 2>&1 | head`) and would kill
                // the run midway.
                .log_internal_errors(false)
                .event_format(Plain { ansi })
                .with_filter(filter)
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .log_internal_errors(false)
            .fmt_fields(JsonFields)
            .event_format(Json)
            .with_filter(filter)
            .boxed(),
    };
    let progress = bars.map(|bars| {
        ProgressLayer::new(bars)
            .with_filter(Targets::new().with_target(tandem_engine::progress::TARGET, Level::TRACE))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(progress)
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

/// A JSON object a line: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`,
/// then the fields of the spans the event is in (outermost first: the run's `run`)
/// and of the event itself.
struct Json;

impl<S> FormatEvent<S, JsonFields> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let fields = extensions
                    .get::<FormattedFields<JsonFields>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(&f.fields).ok());
                line.extend(fields.unwrap_or_default());
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Span fields kept as a JSON object's text, which [`Json`] merges into each line.
struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map: Map<String, Value> = serde_json::from_str(&current.fields).unwrap_or_default();
        fields.record(&mut JsonVisitor(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

/// Fields as JSON values: numbers and booleans as such, the rest as text.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_span_and_event_fields() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields)
            .event_format(Json)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("run", run = 7);
            let _in = span.enter();
            tracing::info!(connector = "crm", kind = "contacts", records = 3, "read");
            tracing::warn!(id = "C1", "skipped \"odd\" record");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "read");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["run"], 7);
        assert_eq!(lines[0]["connector"], "crm");
        assert_eq!(lines[0]["records"], 3);
        assert!(lines[0]["target"].as_str().unwrap().starts_with("tandem"));
        let timestamp = lines[0]["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(lines[1]["id"], "C1");
        assert_eq!(lines[1]["message"], "skipped \"odd\" record");
    }
}
