//! A `tracing` layer that records every span (its fields, its parent, whether it closed) and
//! every event (with the span it happened in), for tests to assert on traces.
//!
//! Why it numbers spans itself: `tracing`'s registry reuses the ids of closed spans, so a record
//! keyed by them would mix two spans up.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One recorded span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// This recorder's number for the span (unique, unlike `tracing`'s ids).
    pub seq: u64,
    /// The `tracing` parent's number.
    pub parent: Option<u64>,
    pub name: &'static str,
    /// Every field recorded, as text (strings without quotes).
    pub fields: BTreeMap<String, String>,
    pub started: Instant,
    /// Set when the span closed.
    pub duration: Option<Duration>,
}

impl SpanRecord {
    /// A field's value, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub level: Level,
    /// The number of the span it happened in.
    pub span: Option<u64>,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

/// The layer; clones share what they recorded.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
    next: Arc<AtomicU64>,
}

struct Seq(u64);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Recorder {
    /// The process's recorder, installed as the global default subscriber (at `DEBUG`, where
    /// VSP's spans carry every field) on first use. Tests of one binary share it: each looks only at its own services' spans.
    pub fn global() -> Recorder {
        static GLOBAL: OnceLock<Recorder> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let recorder = Recorder::default();
                let subscriber = tracing_subscriber::registry().with(
                    recorder
                        .clone()
                        .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
                );
                tracing::subscriber::set_global_default(subscriber)
                    .expect("no other global subscriber in this test binary");
                recorder
            })
            .clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every span recorded so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.state().spans.clone()
    }

    /// Every event recorded so far.
    pub fn events(&self) -> Vec<EventRecord> {
        self.state().events.clone()
    }

    /// Waits until `find` returns something from the spans recorded; panics naming `what` after
    /// `bound`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        bound: Duration,
        mut find: impl FnMut(&[SpanRecord]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(found) = find(&self.state().spans) {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|span| format!("{} {:?}", span.name, span.fields))
                    .collect();
                panic!(
                    "timed out after {bound:?} waiting for {what}; spans recorded:\n{}",
                    names.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let seq = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Seq>().map(|seq| seq.0));
        span.extensions_mut().insert(Seq(seq));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.state().spans.push(SpanRecord {
            seq,
            parent,
            name: attrs.metadata().name(),
            fields,
            started: Instant::now(),
            duration: None,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(seq) = seq_of(&ctx, id) else { return };
        let mut state = self.state();
        if let Some(span) = state.spans.iter_mut().rev().find(|span| span.seq == seq) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<Seq>().map(|seq| seq.0));
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.state().events.push(EventRecord {
            level: *event.metadata().level(),
            span,
            message,
            fields,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(seq) = seq_of(&ctx, &id) else { return };
        let mut state = self.state();
        if let Some(span) = state.spans.iter_mut().rev().find(|span| span.seq == seq) {
            span.duration = Some(span.started.elapsed());
        }
    }
}

fn seq_of<S>(ctx: &Context<'_, S>, id: &Id) -> Option<u64>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ctx.span(id)?.extensions().get::<Seq>().map(|seq| seq.0)
}
