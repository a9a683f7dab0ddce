//! The actors, one per file with its messages beside it. `supervisor` wires them together.

pub mod downloader;
pub mod fetcher;
pub mod publisher;
pub mod storer;
pub mod subscriber;
pub mod supervisor;
