//! One request followed across three services, as a trace: `cargo run --example tracing`.
//!
//! It starts `gateway` → `orders` → `users` in this process, each its own `VspManager` on its own
//! loopback port, each handler calling the next through a `VspClient`; makes one call at the
//! gateway; and prints the spans VSP opened (collected by a small `tracing` layer) as an indented
//! tree: each span's kind, service/endpoint, instance and duration, under one trace id. The
//! W3C `traceparent` travels in each request's header metadata; nothing in the handlers passes it
//! on by hand.
//!
//! Copied into a crate of your own, it needs the Getting started dependencies (README) and:
//! cargo add serde_json
//! cargo add tracing
//! cargo add tracing-subscriber

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spans = Spans::default();
    // At `DEBUG`, VSP's spans carry their ids and OpenTelemetry names (at `INFO`, only what an
    // operator reads in a log line), which the tree below is drawn from.
    let subscriber = tracing_subscriber::registry().with(
        spans
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
    );
    tracing::subscriber::set_global_default(subscriber)?;

    // users: the end of the chain.
    let users = VspManager::builder("users").build();
    users.endpoint("get_user", |args: Value| async move {
        tracing::info!(user = %args["user_id"], "looking the user up");
        Ok::<_, VspError>(json!({"id": args["user_id"], "name": "Ada"}))
    })?;
    let users_addr = users.start_server("127.0.0.1", 0).await?;

    // orders: calls users.
    let to_users = client_of("users", users_addr)?;
    let orders = VspManager::builder("orders").build();
    orders.endpoint("create_order", move |args: Value| {
        let to_users = to_users.clone();
        async move {
            let user = to_users
                .call("users", "get_user", json!({"user_id": args["user_id"]}))
                .await?;
            Ok::<_, VspError>(json!({"order_id": 42, "user": user}))
        }
    })?;
    let orders_addr = orders.start_server("127.0.0.1", 0).await?;

    // gateway: calls orders.
    let to_orders = client_of("orders", orders_addr)?;
    let gateway = VspManager::builder("gateway").build();
    gateway.endpoint("checkout", move |args: Value| {
        let to_orders = to_orders.clone();
        async move { to_orders.call("orders", "create_order", args).await }
    })?;
    let gateway_addr = gateway.start_server("127.0.0.1", 0).await?;

    let order = client_of("gateway", gateway_addr)?
        .call("gateway", "checkout", json!({"user_id": "123"}))
        .await?;

    // The servers close their spans as their replies leave, a moment after the answer arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !spans.all_closed(9) {
        if Instant::now() > deadline {
            return Err("the spans of the three calls did not all close within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    spans.print();
    println!("answer: {order}");
    for manager in [gateway, orders, users] {
        manager.shutdown().await?;
    }
    Ok(())
}

fn client_of(service: &str, addr: SocketAddr) -> Result<VspClient, VspError> {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(service, "127.0.0.1", addr.port()))?;
    Ok(VspClient::builder(mesh).build())
}

/// A span as the layer saw it.
struct Collected {
    parent: Option<usize>,
    name: &'static str,
    fields: BTreeMap<String, String>,
    opened: Instant,
    duration: Option<Duration>,
}

/// A `tracing` layer that keeps every span, to print them as a tree.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Collected>>>);

/// A span's index in the list, kept in its extensions (`tracing` reuses ids of closed spans).
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Index>().map(|index| index.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        span.extensions_mut().insert(Index(spans.len()));
        spans.push(Collected {
            parent,
            name: attrs.metadata().name(),
            fields,
            opened: Instant::now(),
            duration: None,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(index) = span.extensions().get::<Index>().map(|index| index.0) else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[index].fields));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(index) = span.extensions().get::<Index>().map(|index| index.0) else {
            return;
        };
        let collected = &mut self.0.lock().unwrap()[index];
        collected.duration = Some(collected.opened.elapsed());
    }
}

impl Spans {
    fn all_closed(&self, at_least: usize) -> bool {
        let spans = self.0.lock().unwrap();
        spans.len() >= at_least && spans.iter().all(|span| span.duration.is_some())
    }

    /// The trace id, then each root span and its children, indented.
    fn print(&self) {
        let spans = self.0.lock().unwrap();
        let mut trace_ids: Vec<&str> = spans
            .iter()
            .filter_map(|span| span.fields.get("trace_id").map(String::as_str))
            .collect();
        trace_ids.dedup();
        println!("trace {} ({} spans)", trace_ids.join(" + "), spans.len());
        // A server span has no `tracing` parent in its process: its parent is the caller's
        // attempt, named by `parent_span_id` (what the `traceparent` on the wire said).
        let parents: Vec<Option<usize>> = spans
            .iter()
            .map(|span| {
                span.parent.or_else(|| {
                    let parent_id = span.fields.get("parent_span_id")?;
                    spans
                        .iter()
                        .position(|other| other.fields.get("span_id") == Some(parent_id))
                })
            })
            .collect();
        fn print_tree(
            spans: &[Collected],
            parents: &[Option<usize>],
            parent: Option<usize>,
            depth: usize,
        ) {
            let children = spans
                .iter()
                .enumerate()
                .filter(|(index, _)| parents[*index] == parent);
            for (index, span) in children {
                let field = |name: &str| span.fields.get(name).map_or("", String::as_str);
                // A call names no instance itself: its last attempt's is the one that answered.
                let answered = (0..spans.len())
                    .rev()
                    .find(|child| {
                        parents[*child] == Some(index) && spans[*child].name == "vsp.attempt"
                    })
                    .map(|child| &spans[child].fields);
                let field_or_attempt = |name: &str| match field(name) {
                    "" => answered
                        .and_then(|fields| fields.get(name))
                        .map_or("", String::as_str),
                    value => value,
                };
                let instance = match (
                    field_or_attempt("server.address"),
                    field_or_attempt("server.port"),
                ) {
                    ("", _) => String::new(),
                    (host, "") => host.to_owned(),
                    (host, port) => format!("{host}:{port}"),
                };
                let kind = match (span.name, field("vsp.attempt")) {
                    ("vsp.attempt", attempt) => format!("attempt #{attempt}"),
                    ("vsp.client", _) => "client".to_owned(),
                    ("vsp.server", _) => "server".to_owned(),
                    (other, _) => other.to_owned(),
                };
                let label = format!("{}{kind} {}", "  ".repeat(depth), field("otel.name"));
                let took = span.duration.unwrap_or_default();
                let status = match field("error.type") {
                    "" => String::new(),
                    code => format!("  ERROR {code}"),
                };
                println!(
                    "{label:<44} {instance:<16} {took:>10.2?}  span {}{status}",
                    field("span_id")
                );
                print_tree(spans, parents, Some(index), depth + 1);
            }
        }
        print_tree(&spans, &parents, None, 0);
    }
}
