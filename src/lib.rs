//! pretext: a deterministic trigger engine for retail CRM marketing.
//!
//! The engine (`engine`) is the deterministic core: it applies validated
//! events (`event`, produced by `decode`) to RocksDB state (`state`) and
//! returns triggers (`trigger`). Replay files (`replay`) and Kafka (`live`)
//! are edges that feed it; `config`, `metrics` and `http` serve the edges.

pub mod cli;
pub mod config;
pub mod deadletter;
pub mod decode;
pub mod engine;
pub mod event;
pub mod gen;
pub mod http;
pub mod live;
pub mod metrics;
pub mod progress;
pub mod replay;
pub mod state;
pub mod threads;
pub mod time;
pub mod trigger;
