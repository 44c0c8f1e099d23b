//! `GET /api/events`: the record store's writes as server-sent events.
//!
//! One event per start and per end, named `started` or `ended`, with the record as JSON data
//! (the shape of `/api/invocations/{id}` at that moment). A client too slow to keep up gets a
//! `lagged` event with `{"skipped": N}` and continues with newer events: the store's writers
//! never wait for a watcher, so a watcher that falls behind must re-read the lists.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use scfsim_record::StoreEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use crate::Ctx;

/// Often enough that proxies and browsers do not drop an idle stream (many time out at 30 s
/// or more), rare enough to cost nothing.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) async fn events(
    State(ctx): State<Ctx>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the response is returned, so nothing written after the request
    // arrived is missed.
    let rx = ctx.state.store.subscribe();
    let stream = futures_util::stream::unfold((rx, ctx.shutdown), |(mut rx, shutdown)| async {
        let event = next_event(&mut rx, &shutdown).await?;
        Some((Ok(event), (rx, shutdown)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

/// The next event to send; `None` ends the stream (shutdown).
async fn next_event(rx: &mut Receiver<StoreEvent>, shutdown: &CancellationToken) -> Option<Event> {
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return None,
            received = rx.recv() => received,
        };
        match received {
            Ok(event) => match to_sse(&event) {
                Some(sse) => return Some(sse),
                None => continue,
            },
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "an /api/events client fell behind; it skips ahead");
                return Some(
                    Event::default()
                        .event("lagged")
                        .data(format!("{{\"skipped\":{skipped}}}")),
                );
            }
            // The store is gone: nothing more will ever be written.
            Err(RecvError::Closed) => return None,
        }
    }
}

fn to_sse(event: &StoreEvent) -> Option<Event> {
    let inv = event.invocation();
    match Event::default().event(event.name()).json_data(inv) {
        Ok(sse) => Some(sse),
        Err(err) => {
            // Cannot happen for a record that the store could write as JSON; skip, not stop.
            tracing::error!(%err, request_id = %inv.request_id, "cannot encode an event");
            None
        }
    }
}
