//! nasa-ingest: keeps a Postgres archive of NASA images fed through Kafka.
//!
//! The daemon is a handful of actix actors in one process: `daemon` is the composition root that
//! wires them (`main` → `daemon` → `actors`); `supervision` restarts them; everything else is
//! plain code the actors and the endpoint call.

pub mod actors;
pub mod backfill;
pub mod backoff;
pub mod check;
pub mod config;
pub mod consumer;
pub mod daemon;
pub mod datadir;
pub mod db;
pub mod deps;
pub mod dlq;
pub mod errors;
pub mod event;
pub mod fault_injection;
pub mod generated;
pub mod group_admin;
pub mod healthcheck;
pub mod http;
pub mod image;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod nasa;
pub mod offsets;
pub mod oneshot;
pub mod outbox;
pub mod shutdown;
pub mod stall;
pub mod supervision;
pub mod telemetry;
pub mod trace;
