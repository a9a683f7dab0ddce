//! nasa-ingest: keeps a Postgres archive of NASA images fed through Kafka.
//!
//! The daemon is a handful of actix actors in one process (see `actors::supervisor`,
//! the composition root). Everything else in this crate is plain code the actors call.

pub mod actors;
pub mod backfill;
pub mod backoff;
pub mod config;
pub mod consumer;
pub mod datadir;
pub mod db;
pub mod dlq;
pub mod errors;
pub mod event;
pub mod fake_nasa;
pub mod healthcheck;
pub mod http;
pub mod image;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod nasa;
pub mod offsets;
pub mod outbox;
pub mod progress;
pub mod stall;
pub mod supervision;
pub mod telemetry;
