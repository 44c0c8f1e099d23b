//! scfsim's scenario files: integration tests of a WebSocket function, written as data.
//!
//! A scenario (TOML) opens one or many connections to a gateway path and runs steps on each:
//! send text, binary or a file; expect a message (exact, regular expression, JSON subset,
//! binary), no message for a while, or the close frame; ping; sleep; close; and at the end
//! expect the invocation's record (`status_code`, `end_reason`, `closed_by`, counts).
//!
//! - [`load`] / [`parse`]: the file, its keys checked (unknown keys rejected) and every value
//!   validated into a [`Scenario`]; a bad file is a [`ScenarioError`] naming the file, the step
//!   (number and line) and what is allowed, as `scfsim check` does for the config.
//! - [`run`]: runs a scenario against a running scfsim ([`Target`]: its ws:// base and admin
//!   API) and returns a [`ScenarioReport`] with each failure's expected / got and the
//!   connection's frame timeline.
//! - [`report`]: the reports: one line per scenario for people, JUnit XML, JSON.
//! - [`record`]: `scfsim record`: the scenario a recorded connection was, from its frame
//!   timeline.
//!
//! This crate is not a server and starts none: `scfsim test` (the binary) starts scfsim, or
//! points this crate at a running one. It never reads the record store directly, only the
//! admin API, so it tests scfsim as users see it.
//!
//! # Layout
//! - `raw`, `model`: the file as written, and the validated scenario.
//! - `connection`: one WebSocket connection: the reader task and the frame timeline.
//! - `runner`: steps and expectations; `matching`: what "equal" means for each expectation.
//! - `report`: human, JUnit and JSON output.

#![forbid(unsafe_code)]

mod connection;
mod error;
mod matching;
mod model;
mod raw;
pub mod record;
pub mod report;
mod runner;

pub use error::ScenarioError;
pub use model::{
    load, parse, Action, CloseExpectation, Expected, OutcomeExpectation, Scenario, Step, Template,
};
pub use runner::{run, Failure, ScenarioReport, Target, TimelineEntry};
