//! `GET /api/invocations/{request_id}/frames`: an invocation's frame timeline as JSON, while
//! the connection is open (its events so far, `"live": true`) and after (from the store).
//!
//! `?stream=true` (or `/frames/stream`) serves it as server-sent events instead: one `frame`
//! event per timeline event (the same JSON as an element of `events`), first those so far,
//! then each new one as it happens, and a last `end` event
//! (`{"request_id", "dropped", "events"}`) once the invocation is recorded; then the stream
//! ends. For an invocation already recorded the stream is its events and the `end` at once.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use scfsim_gateway::Capture;
use scfsim_record::{FrameEvent, Timeline};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{error, parse_id, store_error, Ctx};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FramesQuery {
    #[serde(default)]
    stream: bool,
}

/// Where an invocation's timeline is.
enum Found {
    Live(Arc<Capture>),
    Stored(Timeline),
}

pub(crate) async fn frames(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    query: Result<Query<FramesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let stream = match query {
        Ok(Query(q)) => q.stream,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "{}: the query takes only `stream`, true or false (`?stream=true` or \
                     `/frames/stream` for server-sent events; no query for the JSON timeline)",
                    rejection.body_text()
                ),
            )
        }
    };
    serve(ctx, id, stream).await
}

pub(crate) async fn frames_stream(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    serve(ctx, id, true).await
}

async fn serve(ctx: Ctx, id: String, stream: bool) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let found = match find(&ctx, id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match (found, stream) {
        (Found::Live(capture), false) => Json(capture.timeline()).into_response(),
        (Found::Stored(timeline), false) => Json(timeline).into_response(),
        (Found::Live(capture), true) => live_stream(capture, ctx.shutdown).into_response(),
        (Found::Stored(timeline), true) => stored_stream(timeline).into_response(),
    }
}

async fn find(ctx: &Ctx, id: Uuid) -> Result<Found, Response> {
    let timeline = &ctx.state.config.timeline;
    if !timeline.enabled {
        return Err(error(
            StatusCode::NOT_FOUND,
            "the frame timeline is off: set `enabled = true` in the [timeline] table of the \
             config (timeline.enabled) to keep one per invocation",
        ));
    }
    if let Some(capture) = ctx.state.live.timeline(id) {
        return Ok(Found::Live(capture));
    }
    let store = ctx.state.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        let frames = store.frames(id)?;
        let known = match frames {
            Some(_) => true,
            None => store.find(id)?.is_some(),
        };
        Ok::<_, scfsim_record::RecordError>((frames, known))
    })
    .await;
    match read {
        Ok(Ok((Some(timeline), _))) => Ok(Found::Stored(timeline)),
        Ok(Ok((None, true))) => Err(error(
            StatusCode::NOT_FOUND,
            &format!(
                "invocation {id} has no timeline any more: only the newest {} are kept (raise \
                 timeline.keep_invocations to keep more)",
                timeline.keep_invocations
            ),
        )),
        Ok(Ok((None, false))) => Err(error(StatusCode::NOT_FOUND, &format!("no invocation {id}"))),
        Ok(Err(err)) => Err(store_error(&err)),
        Err(_) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed")),
    }
}

fn frame_event(e: &FrameEvent) -> Event {
    Event::default()
        .event("frame")
        .json_data(e)
        .unwrap_or_else(|_| Event::default().event("frame").data("{}"))
}

fn end_event(request_id: Uuid, dropped: u64, events: usize) -> Event {
    Event::default().event("end").data(
        serde_json::json!({ "request_id": request_id, "dropped": dropped, "events": events })
            .to_string(),
    )
}

fn stored_stream(timeline: Timeline) -> Response {
    let mut out: Vec<Result<Event, Infallible>> =
        timeline.events.iter().map(|e| Ok(frame_event(e))).collect();
    out.push(Ok(end_event(
        timeline.request_id,
        timeline.dropped,
        timeline.events.len(),
    )));
    Sse::new(futures_util::stream::iter(out)).into_response()
}

/// What a live stream has sent so far.
struct Cursor {
    capture: Arc<Capture>,
    changed: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
    sent: usize,
    queue: std::collections::VecDeque<Event>,
    done: bool,
}

fn live_stream(capture: Arc<Capture>, shutdown: CancellationToken) -> Response {
    // Subscribed before the first read, so no event between the two is missed.
    let changed = capture.subscribe();
    let cursor = Cursor {
        capture,
        changed,
        shutdown,
        sent: 0,
        queue: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(event) = c.queue.pop_front() {
                return Some((event, c));
            }
            if c.done {
                return None;
            }
            c.changed.borrow_and_update();
            let (events, ended) = c.capture.events_from(c.sent);
            c.sent += events.len();
            c.queue.extend(events.iter().map(frame_event));
            if ended {
                let timeline = c.capture.timeline();
                c.queue
                    .push_back(end_event(timeline.request_id, timeline.dropped, c.sent));
                c.done = true;
                continue;
            }
            if !c.queue.is_empty() {
                continue;
            }
            tokio::select! {
                _ = c.shutdown.cancelled() => return None,
                changed = c.changed.changed() => {
                    // The capture is gone without an end: nothing more will come.
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    let stream = futures_util::StreamExt::map(stream, Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(std::time::Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}
