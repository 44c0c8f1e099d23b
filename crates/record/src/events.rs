//! Live notifications of the store's writes, for watchers such as the admin API's event stream.

use crate::invocation::Invocation;

/// One write to the store, sent once its journal line is written and the record is queryable.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// A connection arrived and its start line was written ([`RecordStore::begin`]).
    ///
    /// [`RecordStore::begin`]: crate::RecordStore::begin
    Started(Invocation),
    /// An invocation's complete record was written ([`RecordStore::finish`]).
    ///
    /// [`RecordStore::finish`]: crate::RecordStore::finish
    Ended(Invocation),
}

impl StoreEvent {
    /// The record the event carries.
    pub fn invocation(&self) -> &Invocation {
        match self {
            StoreEvent::Started(inv) | StoreEvent::Ended(inv) => inv,
        }
    }

    /// `started` or `ended`: the event's name on the admin API's stream.
    pub fn name(&self) -> &'static str {
        match self {
            StoreEvent::Started(_) => "started",
            StoreEvent::Ended(_) => "ended",
        }
    }
}
