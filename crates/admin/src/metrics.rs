//! `GET /metrics`: Prometheus text format (version 0.0.4).
//!
//! Counters and histograms are the record store's (fed from finished records, so they agree
//! with `/api/invocations`); the live gauges are computed here at scrape time from the
//! gateway's registry of open connections, so they cannot drift from `/api/instances`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use scfsim_record::metrics::FunctionLabels;

use crate::{error, AdminState};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn metrics(State(state): State<AdminState>) -> Response {
    match render(&state) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {err}"),
        ),
    }
}

fn render(state: &AdminState) -> Result<String, std::fmt::Error> {
    // A registry per scrape: it only holds handles to the store's families plus two gauges,
    // and building it fresh means the gauges never keep a function that has gone.
    let mut registry = Registry::default();
    state.store.metrics().register(&mut registry);

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
    // Each connection has its own instance (the platform's model for WebSocket functions),
    // so both gauges count the same registry entries.
    for live in state.live.list() {
        connections.get_or_create(&labels(&live.function)).inc();
        instances.get_or_create(&labels(&live.function)).inc();
    }
    registry.register(
        "scfsim_live_connections",
        "Client connections being proxied right now",
        connections,
    );
    registry.register(
        "scfsim_live_instances",
        "Function instances serving a connection right now",
        instances,
    );

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
