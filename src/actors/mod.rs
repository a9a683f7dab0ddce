//! The actors, one per file with its messages beside it. `crate::daemon` wires them together.

pub mod downloader;
pub mod fetcher;
pub mod publisher;
pub mod storer;
pub mod subscriber;

/// Every actor's name (the supervisor's children, `log.logger`, the restart metric's label).
pub const NAMES: [&str; 5] = ["fetcher", "publisher", "subscriber", "downloader", "storer"];
