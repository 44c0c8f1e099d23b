//! Invocation records for scfsim: what happened to each WebSocket connection, what the platform
//! would call it, and a durable store that keeps it.
//!
//! - [`outcome`]: the gateway reports *facts* as an [`EndReason`]; [`classify`] is the one pure
//!   function that turns them into the platform's status code, outcome and close details
//!   (semantics.md §3), and into the close frame each side gets ([`Closing`], §4).
//! - [`invocation`]: the [`Invocation`] record (the JSON shape of interface.md) and [`LogLine`].
//! - [`store`]: the [`Store`] trait the gateway and the admin API hold, and [`SqliteStore`]
//!   (alias [`RecordStore`]), the records in `data_dir/scfsim.db`: one writer thread batching
//!   commits, readers beside it, crash completion (`gateway_crashed`) at open, a one-time
//!   import of an older scfsim's `invocations.jsonl`, retention by count and age, and records
//!   kept in memory (still queryable) while the disk refuses writes.
//! - [`timeline`]: the frame [`Timeline`] of an invocation, its JSON shape.
//! - [`events`]: [`StoreEvent`]s, broadcast to subscribers as records are written.
//! - [`metrics`]: [`Aggregates`] of finished records (kept in the database) and the Prometheus
//!   families made from them.
//!
//! This crate is not the gateway: it never sees sockets, processes or async runtimes. Its
//! calls on the connection path never wait for the disk. (It uses tokio's runtime-free
//! broadcast channel only, so that async watchers can await events.)

#![forbid(unsafe_code)]

pub mod error;
pub mod events;
pub mod invocation;
pub mod metrics;
pub mod outcome;
pub mod store;
pub mod timeline;

pub use error::{Fault, RecordError};
pub use events::StoreEvent;
pub use invocation::{Invocation, LogLine, LogStream};
pub use metrics::Aggregates;
pub use outcome::{
    classify, may_be_sent, Classification, CloseFrame, CloseOrder, CloseStep, ClosedBy, Closing,
    EndReason, Outcome, Side, StatusCode, ADMIN_CLOSE,
};
pub use store::{
    Degraded, Logs, OpenReport, Page, Query, RecordStore, Retention, Search, SqliteStore, Store,
    StoreHealth,
};
pub use timeline::{Direction, EventKind, FrameEvent, Opcode, Party, Timeline};
