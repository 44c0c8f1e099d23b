//! `GET /metrics`: Prometheus text format (version 0.0.4).
//!
//! Counters and histograms come from the record store's aggregates (sums the store keeps in its
//! database as it writes records, so they agree with `/api/invocations` and no record is
//! scanned); the store's own health is three more families; the live gauges are computed here
//! at scrape time from the gateway's registry of open connections, so they cannot drift from
//! `/api/instances`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use scfsim_record::metrics::FunctionLabels;
use scfsim_record::StoreHealth;

use crate::{error, AdminState};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn metrics(State(state): State<AdminState>) -> Response {
    // The store may wait (briefly) for its writer to count what it accepted.
    let rendered = tokio::task::spawn_blocking(move || render(&state)).await;
    match rendered {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(err)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {err}"),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot render the metrics",
        ),
    }
}

fn render(state: &AdminState) -> Result<String, std::fmt::Error> {
    // A registry per scrape: it only holds handles to the store's families plus two gauges,
    // and building it fresh means the gauges never keep a function that has gone.
    let mut registry = Registry::default();
    state.store.aggregates().register(&mut registry);
    register_store_health(&state.store.health(), &mut registry);

    let connections = Family::<FunctionLabels, Gauge>::default();
    let instances = Family::<FunctionLabels, Gauge>::default();
    let labels = |function: &str| FunctionLabels {
        function: function.to_owned(),
    };
    // Every configured function appears, at 0 when idle, so a dashboard shows a flat line
    // rather than a gap.
    for f in &state.config.functions {
        connections.get_or_create(&labels(&f.name)).set(0);
        instances.get_or_create(&labels(&f.name)).set(0);
    }
    // Each connection has its own instance (the platform's model for WebSocket functions);
    // a provisioned instance waiting for its connection is an instance without one.
    for live in state.live.list() {
        if live.state == scfsim_gateway::InstanceState::Connected {
            connections.get_or_create(&labels(&live.function)).inc();
        }
        instances.get_or_create(&labels(&live.function)).inc();
    }
    registry.register(
        "scfsim_live_connections",
        "Client connections being proxied right now",
        connections,
    );
    registry.register(
        "scfsim_live_instances",
        "Function instances right now: serving a connection, or provisioned and waiting for one",
        instances,
    );

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn register_store_health(health: &StoreHealth, registry: &mut Registry) {
    let failed = Counter::<u64>::default();
    failed.inc_by(health.failed_writes);
    registry.register(
        "scfsim_store_write_failures",
        "Batches of records the store failed to write (full disk, I/O error); they are retried",
        failed,
    );
    let refused = Counter::<u64>::default();
    refused.inc_by(health.refused_records);
    registry.register(
        "scfsim_store_refused_records",
        "Records refused because too many were waiting in memory for the disk",
        refused,
    );
    let pending = Gauge::<i64>::default();
    pending.set(i64::try_from(health.pending).unwrap_or(i64::MAX));
    registry.register(
        "scfsim_store_pending_records",
        "Records and logs accepted and not yet written",
        pending,
    );
    let degraded = Gauge::<i64>::default();
    degraded.set(i64::from(health.degraded.is_some()));
    registry.register(
        "scfsim_store_degraded",
        "1 while the record store cannot write (records are kept in memory meanwhile)",
        degraded,
    );
}
