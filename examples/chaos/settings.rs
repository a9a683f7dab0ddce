//! The run's fixed settings: the topics' layout, the daemons' limits and admin token, the RSS bound
//! they are held to, and the Kafka client settings the harness's own clients share.

use rdkafka::config::ClientConfig;

pub const PARTITIONS: i32 = 6;
pub const DLQ_PARTITIONS: i32 = 3;
pub const CONCURRENCY: usize = 4;
pub const MAX_IMAGE_BYTES: usize = 1 << 20;
pub const STALL_SECS: u64 = 15;
pub const TOKEN: &str = "chaos-admin-token";
/// Panics injected into one daemon process in total: below the daemon's MAX_PANICS (3), so that no
/// good event can be dead-lettered as `panic` by injection alone; a good event in images.dlq is a bug.
pub const PANICS_PER_PROCESS: u32 = 2;

/// Peak RSS bound per daemon: the Downloader's byte budget (DOWNLOAD_CONCURRENCY × MAX_IMAGE_BYTES
/// plus what the Storer takes in at once) twice (the body and its copy into the statement),
/// librdkafka's prefetch cap (16 MiB), plus a margin of 96 MiB for the process itself (idle:
/// 25 MiB in release; a debug build is larger).
pub fn rss_bound_kib() -> u64 {
    let budget = (CONCURRENCY * MAX_IMAGE_BYTES) as u64 + nasa_ingest::actors::storer::BatchLimits::default().bytes_taken_in();
    (2 * budget + (16 << 20) + (96 << 20)) / 1024
}

/// A Kafka client of the harness's own: quiet (librdkafka logs nothing), and reconnecting at least
/// every `reconnect_backoff_max_ms` while its broker is down.
pub fn kafka_client(addr: &str, reconnect_backoff_max_ms: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", addr).set("log_level", "0").set("reconnect.backoff.max.ms", reconnect_backoff_max_ms);
    config
}
