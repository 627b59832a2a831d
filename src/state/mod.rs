//! Engine state on disk: RocksDB, one column family per kind of record.
//!
//! `keys` encodes composite keys so that byte order is the order the engine
//! scans in (due timers by time, viewers by product); `store` is the RocksDB
//! handle with a write-back overlay, so a batch of events is one write batch.

pub mod changelog;
pub mod keys;
pub mod prefetch;
pub mod store;

pub use store::{Cf, Change, Reader, Snapshot, StateError, StateSize, Store};
