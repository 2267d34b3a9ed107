//! Keeps the engine's progress lines out of `tandem run`'s log: a poll every few
//! seconds would print half a dozen lines each time. The service writes one line per
//! run that did something instead; `-v` shows the engine's lines again.

use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};

/// Hands on to `inner` only events and spans at warning level or more severe.
pub struct Quieter {
    pub inner: Dispatch,
}

impl Quieter {
    /// Over the process's current subscriber.
    pub fn current() -> Dispatch {
        let inner = tracing::dispatcher::get_default(Dispatch::clone);
        Dispatch::new(Quieter { inner })
    }
}

impl Subscriber for Quieter {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Decided per event: the same callsite is loud outside a run.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN && self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        self.inner.event(event);
    }

    fn enter(&self, span: &span::Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &span::Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner.try_close(id)
    }
}
