//! Invocation records for scfsim: what happened to each WebSocket connection, what the platform
//! would call it, and a durable store that keeps it.
//!
//! - [`outcome`]: the gateway reports *facts* as an [`EndReason`]; [`classify`] is the one pure
//!   function that turns them into the platform's status code, outcome and close details
//!   (semantics.md §3), and into the close frame each side gets ([`Closing`], §4).
//! - [`invocation`]: the [`Invocation`] record (the JSON shape of interface.md) and [`LogLine`].
//! - [`store`]: [`RecordStore`], an append-only JSON-lines journal in the data directory with an
//!   in-memory index for queries. It is read back at start, and invocations that were running
//!   when scfsim died are completed there as `gateway_crashed` (status 500).
//! - [`events`]: [`StoreEvent`]s, broadcast to [`RecordStore::subscribe`]rs as records are written.
//! - [`metrics`]: [`StoreMetrics`], Prometheus families fed from the stored records.
//!
//! This crate is not the gateway: it never sees sockets, processes or async runtimes. Its calls
//! are short blocking writes that are safe to make from many tasks at once. (It uses tokio's
//! runtime-free broadcast channel only, so that async watchers can await events.)

pub mod error;
pub mod events;
pub mod invocation;
pub mod metrics;
pub mod outcome;
pub mod store;

pub use error::RecordError;
pub use events::StoreEvent;
pub use invocation::{Invocation, LogLine, LogStream};
pub use metrics::StoreMetrics;
pub use outcome::{
    classify, may_be_sent, Classification, CloseFrame, CloseOrder, CloseStep, ClosedBy, Closing,
    EndReason, Outcome, Side, StatusCode, ADMIN_CLOSE,
};
pub use store::{Logs, OpenReport, Query, RecordStore, Retention};
