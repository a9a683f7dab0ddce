//! Configuration: read once at start from env vars (each overridable by a CLI flag) into [`Config`].
//!
//! clap reads the raw strings so that `--help` lists every variable; [`Config::from_settings`]
//! then validates them, and a bad value becomes a [`ConfigError`] that names the variable, the
//! value and what is accepted (the binary prints it on one line and exits with code 2).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

use crate::backoff::Backoff;
use crate::image::ImageVariant;
use crate::logging::LogFormat;
use crate::supervision::Policy;

#[derive(Parser, Debug)]
#[command(
    name = "nasa-ingest",
    version,
    about = "Keeps a Postgres archive of NASA images fed through Kafka.",
    after_help = "Every setting is an environment variable or the flag beside it. `nasa-ingest check` tries them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Check the configuration and try every dependency the enabled roles need (Kafka, Postgres,
    /// the NASA API, DATA_DIR, HTTP_ADDR); one line per check with what to fix; exit 0 or 1.
    Check,
    /// Publish one event per image of a search, through the outbox; resumable.
    Backfill(BackfillArgs),
    /// Ask the daemon's /healthz on HTTP_ADDR (0.0.0.0 as 127.0.0.1); exit 0 when it answers 200,
    /// else 1 (the container's HEALTHCHECK).
    Healthcheck,
    /// Look at the dead-letter topic (KAFKA_TOPIC.dlq), and replay dead letters once their cause is fixed.
    Dlq(DlqArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum DlqCommand {
    /// One line per dead letter (time, nasa_id, reason, error, where it came from, whether it was
    /// replayed), then the count of each reason.
    List(DlqListArgs),
    /// Send dead letters back to KAFKA_TOPIC with their key and payload; resumable.
    Replay(DlqReplayArgs),
}

/// Which dead letters a `dlq` command looks at.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct DlqFilter {
    /// Only dead letters with this reason (not_json, host_not_allowed, too_large, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters written at or after this time: RFC 3339 (2026-11-27T18:00:00Z) or an age
    /// (90s, 30m, 2h, 7d).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Show only the last N dead letters (the count of each reason still covers every match).
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON document on stdout instead of lines, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DlqReplayArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Only the dead letters of this nasa_id.
    #[arg(long)]
    pub nasa_id: Option<String>,
    /// Replay at most N dead letters in this run (the next run goes on from there).
    #[arg(long)]
    pub max: Option<u64>,
    /// A dead letter of an event replayed this often already is skipped (and counted): an event
    /// that keeps failing for the same cause cannot circle forever.
    #[arg(long, default_value_t = crate::dlq::DEFAULT_MAX_REPLAYS)]
    pub max_replays: u32,
    /// Publish and commit nothing; print what would be replayed, and why each was dead-lettered.
    #[arg(long)]
    pub dry_run: bool,
    /// Read the dead-letter topic from its start, not from where the last replay stopped.
    #[arg(long)]
    pub from_start: bool,
    /// The consumer group whose committed offsets on the dead-letter topic are the replay's
    /// progress [default: KAFKA_GROUP_ID.dlq-replay].
    #[arg(long)]
    pub group: Option<String>,
}

/// `--since`: an RFC 3339 time, or an age such as 90s, 30m, 2h or 7d (counted back from now).
pub fn parse_since(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let accepted = || format!("{raw:?} is not a time: expected RFC 3339 (2026-11-27T18:00:00Z) or an age such as 90s, 30m, 2h, 7d");
    let unit = raw.chars().last().ok_or_else(accepted)?;
    let n: i64 = raw[..raw.len() - unit.len_utf8()].parse().map_err(|_| accepted())?;
    let age = match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => None,
    };
    age.filter(|a| *a >= chrono::Duration::zero()).map(|a| chrono::Utc::now() - a).ok_or_else(accepted)
}

/// The settings a `dlq` command reads; its `--help` lists only these.
const DLQ_SETTINGS: [&str; 5] = ["kafka_brokers", "kafka_topic", "kafka_group_id", "log_level", "environment"];

/// The command line, with the settings `dlq` does not read hidden from its help.
pub fn cli_command() -> clap::Command {
    use clap::CommandFactory;
    let cmd = Cli::command();
    // Global settings are copied into each subcommand that lacks them when the command is built:
    // hidden copies given to `dlq` first are kept, and passed on to `list` and `replay`.
    let unused: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set() && !DLQ_SETTINGS.contains(&a.get_id().as_str()))
        .map(|a| a.clone().hide(true))
        .collect();
    cmd.mut_subcommand("dlq", |dlq| dlq.args(unused))
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct BackfillArgs {
    /// The search term.
    #[arg(long)]
    pub query: String,
    /// Publish at most this many new images in this run.
    #[arg(long)]
    pub limit: Option<u64>,
    /// First year of the search (with --year-end); past 10,000 results the range is split.
    #[arg(long, requires = "year_end")]
    pub year_start: Option<u32>,
    /// Last year of the search (with --year-start).
    #[arg(long, requires = "year_start")]
    pub year_end: Option<u32>,
}

/// The raw settings, as given. Every field is a string so that validation can name the variable.
#[derive(Args, Debug, Clone, Default)]
pub struct Settings {
    /// Kafka bootstrap servers, host:port[,host:port]. Also read from KAFKA_BOOTSTRAP_SERVERS or KAFKA_BOOTSTRAP. [default: 127.0.0.1:9092]
    #[arg(long, env = "KAFKA_BROKERS", global = true, hide_env_values = true, help_heading = "Kafka")]
    pub kafka_brokers: Option<String>,
    /// Topic the events go to; dead letters go to "<topic>.dlq". [default: images]
    #[arg(long, env = "KAFKA_TOPIC", global = true, hide_env_values = true, help_heading = "Kafka")]
    pub kafka_topic: Option<String>,
    /// Consumer group of the consumer role. [default: images-writer]
    #[arg(long, env = "KAFKA_GROUP_ID", global = true, hide_env_values = true, help_heading = "Kafka")]
    pub kafka_group_id: Option<String>,
    /// postgres://user[:password]@host[:port]/database (needed by the consumer role and `migrate`).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, help_heading = "Postgres")]
    pub database_url: Option<String>,
    /// Base URL of the NASA Images API. [default: https://images-api.nasa.gov]
    #[arg(long, env = "NASA_API_URL", global = true, hide_env_values = true, help_heading = "Producer: NASA API")]
    pub nasa_api_url: Option<String>,
    /// Search term; empty picks one of moon, mars, earth, nebula, galaxy, saturn, jupiter, apollo each time.
    #[arg(long, env = "QUERY", global = true, hide_env_values = true, help_heading = "Producer: NASA API")]
    pub query: Option<String>,
    /// Seconds between two fetched images. [default: 30]
    #[arg(long, env = "INTERVAL_SECONDS", global = true, hide_env_values = true, help_heading = "Producer: NASA API")]
    pub interval_seconds: Option<String>,
    /// Run the producer role (Fetcher + Publisher). [default: true]
    #[arg(long, env = "PRODUCER_ENABLED", global = true, hide_env_values = true, help_heading = "Roles")]
    pub producer_enabled: Option<String>,
    /// Run the consumer role (Subscriber + Downloader + Storer). [default: true]
    #[arg(long, env = "CONSUMER_ENABLED", global = true, hide_env_values = true, help_heading = "Roles")]
    pub consumer_enabled: Option<String>,
    /// Wanted image size: orig, large, medium, small or thumb (the next smaller jpg when missing). [default: orig]
    #[arg(long, env = "IMAGE_VARIANT", global = true, hide_env_values = true, help_heading = "Producer: NASA API")]
    pub image_variant: Option<String>,
    /// Largest image accepted, in bytes. [default: 52428800]
    #[arg(long, env = "MAX_IMAGE_BYTES", global = true, hide_env_values = true, help_heading = "Consumer: downloads")]
    pub max_image_bytes: Option<String>,
    /// Comma-separated hosts images may be downloaded from. [default: images-assets.nasa.gov]
    #[arg(long, env = "ALLOWED_IMAGE_HOSTS", global = true, hide_env_values = true, help_heading = "Consumer: downloads")]
    pub allowed_image_hosts: Option<String>,
    /// Events processed at once by the consumer role. [default: 8]
    #[arg(long, env = "DOWNLOAD_CONCURRENCY", global = true, hide_env_values = true, help_heading = "Consumer: downloads")]
    pub download_concurrency: Option<String>,
    /// Seconds a consumer may hold no partition, or the group's partitions may not move while
    /// they have lag, before it counts as stalled (logged, not ready, and rejoined). [default: 60]
    #[arg(long, env = "CONSUMER_STALL_SECS", global = true, hide_env_values = true, help_heading = "Consumer: downloads")]
    pub consumer_stall_secs: Option<String>,
    /// Seconds a whole image download may take. [default: 60]
    #[arg(long, env = "DOWNLOAD_TIMEOUT_SECONDS", global = true, hide_env_values = true, help_heading = "Consumer: downloads")]
    pub download_timeout_seconds: Option<String>,
    /// Directory for local state: the producer's outbox of pending events. [default: data]
    #[arg(long, env = "DATA_DIR", global = true, hide_env_values = true, help_heading = "Producer: outbox and publishing")]
    pub data_dir: Option<String>,
    /// How long a send may go unacknowledged before `Kafka unavailable` is logged, in ms (the send goes on). [default: 5000]
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", global = true, hide_env_values = true, help_heading = "Producer: outbox and publishing")]
    pub publish_timeout_ms: Option<String>,
    /// Seconds one NASA API request may take. [default: 20]
    #[arg(long, env = "NASA_TIMEOUT_SECONDS", global = true, hide_env_values = true, help_heading = "Producer: NASA API")]
    pub nasa_timeout_seconds: Option<String>,
    /// First delay of the publisher's retries while Kafka is unavailable, in ms. [default: 500]
    #[arg(long, env = "PUBLISH_MIN_BACKOFF_MS", global = true, hide_env_values = true, help_heading = "Producer: outbox and publishing")]
    pub publish_min_backoff_ms: Option<String>,
    /// Longest delay of the publisher's retries, in ms. [default: 30000]
    #[arg(long, env = "PUBLISH_MAX_BACKOFF_MS", global = true, hide_env_values = true, help_heading = "Producer: outbox and publishing")]
    pub publish_max_backoff_ms: Option<String>,
    /// First delay of the other retries (NASA API, image downloads, Postgres), in ms. [default: 500]
    #[arg(long, env = "RETRY_MIN_BACKOFF_MS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub retry_min_backoff_ms: Option<String>,
    /// Longest delay of the other retries, in ms. [default: 30000]
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub retry_max_backoff_ms: Option<String>,
    /// First delay before an actor that died is restarted, in ms. [default: 500]
    #[arg(long, env = "SUPERVISOR_MIN_BACKOFF_MS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub supervisor_min_backoff_ms: Option<String>,
    /// Longest delay before a restart, in ms. [default: 30000]
    #[arg(long, env = "SUPERVISOR_MAX_BACKOFF_MS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub supervisor_max_backoff_ms: Option<String>,
    /// Restarts of one actor allowed within the window; one more stops the process (exit code 1). [default: 5]
    #[arg(long, env = "SUPERVISOR_MAX_RESTARTS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub supervisor_max_restarts: Option<String>,
    /// The restart window, in seconds; an actor that ran this long restarts from the minimum backoff. [default: 60]
    #[arg(long, env = "SUPERVISOR_RESTART_WINDOW_SECS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub supervisor_restart_window_secs: Option<String>,
    /// Seconds start-up may wait for Kafka and Postgres before the process exits 1 naming what is
    /// not reachable; 0 waits forever. [default: 0]
    #[arg(long, env = "STARTUP_TIMEOUT_SECS", global = true, hide_env_values = true, help_heading = "Retries and restarts")]
    pub startup_timeout_secs: Option<String>,
    /// Address of the HTTP endpoint (health, admin). [default: 0.0.0.0:8081]
    #[arg(long, env = "HTTP_ADDR", global = true, hide_env_values = true, help_heading = "HTTP endpoint")]
    pub http_addr: Option<String>,
    /// Bearer token of the admin routes (fault injection); empty: the routes do not exist.
    #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true, help_heading = "HTTP endpoint")]
    pub admin_token: Option<String>,
    /// Deployment name reported in logs and to Sentry. [default: local]
    #[arg(long, env = "ENVIRONMENT", global = true, hide_env_values = true, help_heading = "Logs and Sentry")]
    pub environment: Option<String>,
    /// Sentry DSN; empty disables Sentry.
    #[arg(long, env = "SENTRY_DSN", global = true, hide_env_values = true, help_heading = "Logs and Sentry")]
    pub sentry_dsn: Option<String>,
    /// Least seconds between two Sentry events with the same fingerprint. [default: 600]
    #[arg(long, env = "SENTRY_MIN_INTERVAL_SECS", global = true, hide_env_values = true, help_heading = "Logs and Sentry")]
    pub sentry_min_interval_secs: Option<String>,
    /// error, warn, info, debug or trace. [default: info]
    #[arg(long, env = "LOG_LEVEL", global = true, hide_env_values = true, help_heading = "Logs and Sentry")]
    pub log_level: Option<String>,
    /// json (ECS, one object per line) or text (one short line per event); default: text when
    /// the log stream is a terminal, else json.
    #[arg(long, env = "LOG_FORMAT", global = true, hide_env_values = true, help_heading = "Logs and Sentry")]
    pub log_format: Option<String>,
}

/// The names of every env var the program reads (each setting's own; KAFKA_BROKERS's two old
/// names are read as fallbacks).
pub fn env_var_names() -> std::collections::BTreeSet<String> {
    use clap::CommandFactory;
    Cli::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

/// Topics the fetcher picks from when `QUERY` is empty.
pub const RANDOM_TOPICS: [&str; 8] = ["moon", "mars", "earth", "nebula", "galaxy", "saturn", "jupiter", "apollo"];

/// The validated configuration, read once at start, grouped by what each part configures.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which roles this process runs.
    pub roles: Roles,
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    /// The producer's NASA API searches.
    pub nasa: NasaConfig,
    /// The producer's outbox and how it publishes.
    pub outbox: OutboxConfig,
    /// The consumer role: downloads and its group membership.
    pub consumer: ConsumerConfig,
    /// Retries of the dependencies, and how long start-up waits for them.
    pub retries: RetryConfig,
    /// Restarts of actors that died.
    pub supervisor: SupervisorConfig,
    pub http: HttpConfig,
    /// Logs and Sentry.
    pub observability: ObservabilityConfig,
}

/// `PRODUCER_ENABLED`, `CONSUMER_ENABLED`: at least one is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub producer: bool,
    pub consumer: bool,
}

impl Roles {
    /// For logs and Sentry tags: "producer", "consumer" or "producer+consumer".
    pub fn label(&self) -> &'static str {
        match (self.producer, self.consumer) {
            (true, true) => "producer+consumer",
            (true, false) => "producer",
            _ => "consumer",
        }
    }
}

/// `KAFKA_*`.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// `<topic>.dlq`.
    pub dlq_topic: String,
    pub group_id: String,
}

/// `DATABASE_URL`.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// None only when neither the consumer role nor `migrate` needs it.
    pub url: Option<DatabaseUrl>,
}

/// `NASA_API_URL`, `QUERY`, `INTERVAL_SECONDS`, `IMAGE_VARIANT`, `NASA_TIMEOUT_SECONDS`.
#[derive(Clone, Debug)]
pub struct NasaConfig {
    pub api_url: Url,
    /// None: a random one of [`RANDOM_TOPICS`] each time.
    pub query: Option<String>,
    pub interval: Duration,
    pub image_variant: ImageVariant,
    pub timeout: Duration,
}

/// `DATA_DIR`, `PUBLISH_TIMEOUT_MS`, `PUBLISH_*_BACKOFF_MS`.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    pub data_dir: PathBuf,
    pub publish_timeout: Duration,
    pub publish_min_backoff: Duration,
    pub publish_max_backoff: Duration,
}

impl OutboxConfig {
    /// The Publisher's retries while Kafka is unavailable (`PUBLISH_*_BACKOFF_MS`).
    pub fn publish_backoff(&self) -> Backoff {
        Backoff::new(self.publish_min_backoff, self.publish_max_backoff, JITTER)
    }
}

/// `MAX_IMAGE_BYTES`, `ALLOWED_IMAGE_HOSTS`, `DOWNLOAD_CONCURRENCY`, `CONSUMER_STALL_SECS`, `DOWNLOAD_TIMEOUT_SECONDS`.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub max_image_bytes: u64,
    pub allowed_image_hosts: Vec<String>,
    /// Events processed at once.
    pub concurrency: usize,
    pub stall: Duration,
    pub download_timeout: Duration,
}

/// `RETRY_*_BACKOFF_MS`, `STARTUP_TIMEOUT_SECS`.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// None: start-up waits for the dependencies forever.
    pub startup_timeout: Option<Duration>,
}

impl RetryConfig {
    /// Retries of Kafka, Postgres, the NASA API and image downloads (`RETRY_*_BACKOFF_MS`).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.min_backoff, self.max_backoff, JITTER)
    }
}

/// `SUPERVISOR_*`.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl SupervisorConfig {
    /// How the supervisor restarts an actor.
    pub fn restart_policy(&self) -> Policy {
        Policy {
            backoff: Backoff::new(self.min_backoff, self.max_backoff, JITTER),
            stable_after: self.restart_window,
            max_restarts: self.max_restarts,
            window: self.restart_window,
        }
    }
}

/// `HTTP_ADDR`, `ADMIN_TOKEN`.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: std::net::SocketAddr,
    /// None: the admin routes do not exist.
    pub admin_token: Option<String>,
}

/// `ENVIRONMENT`, `SENTRY_*`, `LOG_*`.
#[derive(Clone, Debug)]
pub struct ObservabilityConfig {
    pub environment: String,
    pub sentry_dsn: Option<String>,
    pub sentry_min_interval: Duration,
    pub log_level: slog::Level,
    /// None: decided by whether the log stream is a terminal.
    pub log_format: Option<LogFormat>,
}

/// A database URL whose `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, password included: only for opening connections.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// host:port, for logs.
    pub fn address(&self) -> String {
        match Url::parse(&self.0) {
            Ok(u) => format!("{}:{}", u.host_str().unwrap_or(""), u.port().unwrap_or(5432)),
            Err(_) => "<unparsable>".into(),
        }
    }
    /// host:port/database, for logs.
    pub fn redacted(&self) -> String {
        match Url::parse(&self.0) {
            Ok(u) => format!("{}:{}{}", u.host_str().unwrap_or(""), u.port().unwrap_or(5432), u.path()),
            Err(_) => "<unparsable>".into(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: expected {accepted}")]
    Invalid { var: &'static str, value: String, accepted: String },
    #[error("{var} is not valid (value hidden: it may hold a secret): expected {accepted}")]
    InvalidSecret { var: &'static str, accepted: String },
    #[error("{var} is not set: expected {accepted}")]
    Missing { var: &'static str, accepted: String },
    #[error("PRODUCER_ENABLED and CONSUMER_ENABLED are both false: accepted is at least one of them true")]
    NoRole,
}

impl ConfigError {
    /// The variable to fix.
    pub fn var(&self) -> &'static str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::InvalidSecret { var, .. } | ConfigError::Missing { var, .. } => var,
            ConfigError::NoRole => "PRODUCER_ENABLED",
        }
    }
}

/// Every retry delay is stretched by up to this fraction at random, so that processes retrying the
/// same outage do not hit the dependency in step.
pub const JITTER: f64 = 0.2;

impl Config {
    /// Validates the raw settings. `command` decides which settings are required. Every bad
    /// setting is reported, not only the first: a person fixes them all in one go.
    pub fn from_settings(s: &Settings, command: &Command) -> Result<Config, ConfigErrors> {
        let mut e = Errors::default();
        let mut producer_enabled = e.take(parse_bool("PRODUCER_ENABLED", &s.producer_enabled, true));
        let mut consumer_enabled = e.take(parse_bool("CONSUMER_ENABLED", &s.consumer_enabled, true));
        if matches!(command, Command::Backfill(_) | Command::Dlq(_)) {
            // A backfill and a replay only publish.
            (producer_enabled, consumer_enabled) = (true, false);
        }
        if !producer_enabled && !consumer_enabled && e.0.is_empty() {
            e.0.push(ConfigError::NoRole);
        }
        let database_url = e.take(parse_database_url(&s.database_url));
        if database_url.is_none() && (consumer_enabled || *command == Command::Migrate) && e.0.iter().all(|x| x.var() != "DATABASE_URL") {
            e.0.push(ConfigError::Missing { var: "DATABASE_URL", accepted: DATABASE_URL_FORM.into() });
        }
        let kafka_topic = e.take(parse_name("KAFKA_TOPIC", &s.kafka_topic, "images"));
        let publish_min_backoff = e.take(parse_millis("PUBLISH_MIN_BACKOFF_MS", &s.publish_min_backoff_ms, 500));
        let publish_max_backoff = e.take(parse_millis("PUBLISH_MAX_BACKOFF_MS", &s.publish_max_backoff_ms, 30_000));
        let retry_min_backoff = e.take(parse_millis("RETRY_MIN_BACKOFF_MS", &s.retry_min_backoff_ms, 500));
        let retry_max_backoff = e.take(parse_millis("RETRY_MAX_BACKOFF_MS", &s.retry_max_backoff_ms, 30_000));
        let supervisor_min_backoff = e.take(parse_millis("SUPERVISOR_MIN_BACKOFF_MS", &s.supervisor_min_backoff_ms, 500));
        let supervisor_max_backoff = e.take(parse_millis("SUPERVISOR_MAX_BACKOFF_MS", &s.supervisor_max_backoff_ms, 30_000));
        // Read in this order, so that the errors come in it too.
        let brokers = e.take(parse_brokers(&kafka_brokers_setting(s)));
        let group_id = e.take(parse_name("KAFKA_GROUP_ID", &s.kafka_group_id, "images-writer"));
        let api_url = e.take_or(parse_http_url("NASA_API_URL", &s.nasa_api_url, DEFAULT_NASA_API_URL), || {
            Url::parse(DEFAULT_NASA_API_URL).expect("a valid URL")
        });
        let interval = Duration::from_secs(e.take(parse_number("INTERVAL_SECONDS", &s.interval_seconds, 30, 1, 86_400)));
        let image_variant = e.take_or(parse_variant(&s.image_variant), || ImageVariant::Orig);
        let max_image_bytes = e.take(parse_number("MAX_IMAGE_BYTES", &s.max_image_bytes, 50 * 1024 * 1024, 1, 1 << 40));
        let allowed_image_hosts = e.take(parse_hosts(&s.allowed_image_hosts));
        let concurrency = e.take(parse_number("DOWNLOAD_CONCURRENCY", &s.download_concurrency, 8, 1, 1024)) as usize;
        let stall = Duration::from_secs(e.take(parse_number("CONSUMER_STALL_SECS", &s.consumer_stall_secs, 60, 5, 86_400)));
        let download_timeout =
            Duration::from_secs(e.take(parse_number("DOWNLOAD_TIMEOUT_SECONDS", &s.download_timeout_seconds, 60, 1, 3600)));
        let publish_timeout = e.take(parse_millis("PUBLISH_TIMEOUT_MS", &s.publish_timeout_ms, 5_000));
        let nasa_timeout = Duration::from_secs(e.take(parse_number("NASA_TIMEOUT_SECONDS", &s.nasa_timeout_seconds, 20, 1, 600)));
        let publish_max_backoff = e.take(at_least("PUBLISH_MAX_BACKOFF_MS", publish_max_backoff, publish_min_backoff));
        let retry_max_backoff = e.take(at_least("RETRY_MAX_BACKOFF_MS", retry_max_backoff, retry_min_backoff));
        let supervisor_max_backoff = e.take(at_least("SUPERVISOR_MAX_BACKOFF_MS", supervisor_max_backoff, supervisor_min_backoff));
        let max_restarts = e.take(parse_number("SUPERVISOR_MAX_RESTARTS", &s.supervisor_max_restarts, 5, 0, 10_000)) as u32;
        let restart_window =
            Duration::from_secs(e.take(parse_number("SUPERVISOR_RESTART_WINDOW_SECS", &s.supervisor_restart_window_secs, 60, 1, 86_400)));
        let startup_timeout = Some(e.take(parse_number("STARTUP_TIMEOUT_SECS", &s.startup_timeout_secs, 0, 0, 86_400)))
            .filter(|secs| *secs > 0)
            .map(Duration::from_secs);
        let http_addr = e.take_or(parse_socket_addr("HTTP_ADDR", &s.http_addr, DEFAULT_HTTP_ADDR), || {
            DEFAULT_HTTP_ADDR.parse().expect("a valid address")
        });
        let sentry_dsn = e.take(parse_sentry_dsn(&s.sentry_dsn));
        let sentry_min_interval =
            Duration::from_secs(e.take(parse_number("SENTRY_MIN_INTERVAL_SECS", &s.sentry_min_interval_secs, 600, 0, 86_400)));
        let log_level = e.take_or(parse_log_level(&s.log_level), || slog::Level::Info);
        let log_format = e.take(parse_log_format(&s.log_format));
        let config = Config {
            roles: Roles { producer: producer_enabled, consumer: consumer_enabled },
            kafka: KafkaConfig { brokers, dlq_topic: format!("{kafka_topic}.dlq"), topic: kafka_topic, group_id },
            postgres: PostgresConfig { url: database_url },
            nasa: NasaConfig { api_url, query: non_empty(&s.query).map(str::to_owned), interval, image_variant, timeout: nasa_timeout },
            outbox: OutboxConfig {
                data_dir: PathBuf::from(non_empty(&s.data_dir).unwrap_or("data")),
                publish_timeout,
                publish_min_backoff,
                publish_max_backoff,
            },
            consumer: ConsumerConfig { max_image_bytes, allowed_image_hosts, concurrency, stall, download_timeout },
            retries: RetryConfig { min_backoff: retry_min_backoff, max_backoff: retry_max_backoff, startup_timeout },
            supervisor: SupervisorConfig {
                min_backoff: supervisor_min_backoff,
                max_backoff: supervisor_max_backoff,
                max_restarts,
                restart_window,
            },
            http: HttpConfig { addr: http_addr, admin_token: non_empty(&s.admin_token).map(str::to_owned) },
            observability: ObservabilityConfig {
                environment: non_empty(&s.environment).unwrap_or("local").to_owned(),
                sentry_dsn,
                sentry_min_interval,
                log_level,
                log_format,
            },
        };
        match e.0.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(e.0)),
        }
    }
}

const DATABASE_URL_FORM: &str = "postgres://user[:password]@host[:port]/database";
const DEFAULT_NASA_API_URL: &str = "https://images-api.nasa.gov";
const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8081";

/// The errors found so far; a bad setting's value is replaced by a stand-in so that validation
/// goes on to the next setting (the stand-ins are never used: any error fails the whole config).
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn take<T: Default>(&mut self, r: Result<T, ConfigError>) -> T {
        self.take_or(r, T::default)
    }
    fn take_or<T>(&mut self, r: Result<T, ConfigError>, stand_in: impl FnOnce() -> T) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(e);
            stand_in()
        })
    }
}

/// Every bad setting, one per line.
#[derive(Debug, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// KAFKA_BROKERS, else the names the earlier Python version used.
fn kafka_brokers_setting(s: &Settings) -> Option<String> {
    non_empty(&s.kafka_brokers).map(str::to_owned).or_else(|| {
        ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP"].iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    })
}

fn invalid(var: &'static str, value: &str, accepted: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, value: value.to_owned(), accepted: accepted.into() }
}

fn parse_bool(var: &'static str, v: &Option<String>, default: bool) -> Result<bool, ConfigError> {
    match non_empty(v).map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(invalid(var, v.as_deref().unwrap_or(""), "true or false (also 1/0, yes/no, on/off)")),
    }
}

fn parse_number(var: &'static str, v: &Option<String>, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(default) };
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(var, raw, format!("a whole number from {min} to {max}"))),
    }
}

fn parse_millis(var: &'static str, v: &Option<String>, default: u64) -> Result<Duration, ConfigError> {
    parse_number(var, v, default, 1, 3_600_000).map(Duration::from_millis)
}

fn at_least(var: &'static str, max: Duration, min: Duration) -> Result<Duration, ConfigError> {
    if max < min {
        return Err(invalid(var, &max.as_millis().to_string(), format!("at least the minimum backoff, {} ms", min.as_millis())));
    }
    Ok(max)
}

fn parse_name(var: &'static str, v: &Option<String>, default: &str) -> Result<String, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(default.to_owned()) };
    let ok = raw.len() <= 200 && raw.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(invalid(var, raw, "letters, digits, '.', '_' and '-' (at most 200)"))
    }
}

fn parse_brokers(v: &Option<String>) -> Result<String, ConfigError> {
    let Some(raw) = non_empty(&v.clone()).map(str::to_owned) else { return Ok("127.0.0.1:9092".into()) };
    let valid = raw
        .split(',')
        .map(str::trim)
        .all(|hp| hp.rsplit_once(':').map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).unwrap_or(false));
    if valid {
        Ok(raw.split(',').map(str::trim).collect::<Vec<_>>().join(","))
    } else {
        Err(invalid("KAFKA_BROKERS", &raw, "host:port[,host:port...]"))
    }
}

fn parse_http_url(var: &'static str, v: &Option<String>, default: &str) -> Result<Url, ConfigError> {
    let raw = non_empty(v).unwrap_or(default);
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        _ => Err(invalid(var, raw, "an http:// or https:// URL such as https://images-api.nasa.gov")),
    }
}

fn parse_database_url(v: &Option<String>) -> Result<Option<DatabaseUrl>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.path().len() > 1 => Ok(Some(DatabaseUrl(raw.to_owned()))),
        _ => Err(ConfigError::InvalidSecret { var: "DATABASE_URL", accepted: DATABASE_URL_FORM.into() }),
    }
}

fn parse_sentry_dsn(v: &Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match raw.parse::<sentry::types::Dsn>() {
        Ok(_) => Ok(Some(raw.to_owned())),
        Err(_) => Err(ConfigError::InvalidSecret {
            var: "SENTRY_DSN",
            accepted: "empty (Sentry off) or a DSN such as https://KEY@sentry.example.com/PROJECT_ID".into(),
        }),
    }
}

fn parse_variant(v: &Option<String>) -> Result<ImageVariant, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(ImageVariant::Orig) };
    raw.parse().map_err(|_| invalid("IMAGE_VARIANT", raw, "orig, large, medium, small or thumb"))
}

fn parse_hosts(v: &Option<String>) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(vec!["images-assets.nasa.gov".into()]) };
    let hosts: Vec<String> = raw.split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let valid = hosts.iter().all(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)));
    if valid {
        Ok(hosts)
    } else {
        Err(invalid("ALLOWED_IMAGE_HOSTS", raw, "comma-separated host names such as images-assets.nasa.gov"))
    }
}

fn parse_socket_addr(var: &'static str, v: &Option<String>, default: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let raw = non_empty(v).unwrap_or(default);
    raw.parse().map_err(|_| invalid(var, raw, "ip:port such as 0.0.0.0:8081 (port 0 picks a free one)"))
}

fn parse_log_format(v: &Option<String>) -> Result<Option<LogFormat>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match raw.to_ascii_lowercase().as_str() {
        "json" => Ok(Some(LogFormat::Json)),
        "text" => Ok(Some(LogFormat::Text)),
        _ => Err(invalid("LOG_FORMAT", raw, "json or text (unset: text on a terminal, else json)")),
    }
}

fn parse_log_level(v: &Option<String>) -> Result<slog::Level, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(slog::Level::Info) };
    match raw.to_ascii_lowercase().as_str() {
        "error" => Ok(slog::Level::Error),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "info" => Ok(slog::Level::Info),
        "debug" => Ok(slog::Level::Debug),
        "trace" => Ok(slog::Level::Trace),
        _ => Err(invalid("LOG_LEVEL", raw, "error, warn, info, debug or trace")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings { database_url: Some("postgres://u:secret@db:5433/images".into()), ..Default::default() }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::from_settings(&base(), &Command::Run).unwrap();
        assert_eq!(c.kafka.topic, "images");
        assert_eq!(c.kafka.dlq_topic, "images.dlq");
        assert_eq!(c.kafka.group_id, "images-writer");
        assert_eq!(c.nasa.interval, Duration::from_secs(30));
        assert_eq!(c.consumer.max_image_bytes, 50 * 1024 * 1024);
        assert_eq!(c.consumer.allowed_image_hosts, vec!["images-assets.nasa.gov"]);
        assert_eq!(c.consumer.concurrency, 8);
        assert_eq!(c.nasa.api_url.as_str(), "https://images-api.nasa.gov/");
        assert!(c.roles.producer && c.roles.consumer);
    }

    #[test]
    fn database_url_never_shows_its_password() {
        let c = Config::from_settings(&base(), &Command::Run).unwrap();
        let shown = format!("{:?} {}", c.postgres.url, c.postgres.url.as_ref().unwrap().redacted());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("db:5433/images"), "{shown}");
    }

    #[test]
    fn bad_number_names_variable_value_and_range() {
        let s = Settings { interval_seconds: Some("soon".into()), ..base() };
        let msg = Config::from_settings(&s, &Command::Run).unwrap_err().to_string();
        assert_eq!(msg, "INTERVAL_SECONDS=\"soon\" is not valid: expected a whole number from 1 to 86400");
    }

    /// Every "[default: X]" that --help shows is the value used when the setting is unset.
    #[test]
    fn the_defaults_help_shows_are_the_defaults_used() {
        use clap::{CommandFactory, Parser};
        let config = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["nasa-ingest", "--database-url", "postgres://u@db/x"], args].concat()).unwrap();
            format!("{:?}", Config::from_settings(&cli.settings, &Command::Run).unwrap())
        };
        let unset = config(&[]);
        let mut checked = 0;
        for arg in Cli::command().get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some(default) = help.split("[default: ").nth(1).and_then(|d| d.strip_suffix(']')) else { continue };
            let flag = format!("--{}", arg.get_long().unwrap());
            assert_eq!(config(&[&flag, default]), unset, "{flag} {default}");
            checked += 1;
        }
        assert!(checked >= 25, "{checked} defaults shown");
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let s = Settings {
            interval_seconds: Some("soon".into()),
            http_addr: Some("nowhere".into()),
            log_level: Some("loud".into()),
            ..Default::default()
        };
        let errors = Config::from_settings(&s, &Command::Run).unwrap_err();
        let vars: Vec<&str> = errors.0.iter().map(ConfigError::var).collect();
        assert_eq!(vars, ["DATABASE_URL", "INTERVAL_SECONDS", "HTTP_ADDR", "LOG_LEVEL"]);
        assert_eq!(errors.to_string().lines().count(), 4);
    }

    #[test]
    fn consumer_needs_a_database_but_producer_alone_does_not() {
        let s = Settings::default();
        let errors = Config::from_settings(&s, &Command::Run).unwrap_err().0;
        assert!(matches!(errors.as_slice(), [ConfigError::Missing { var: "DATABASE_URL", .. }]), "{errors:?}");
        let s = Settings { consumer_enabled: Some("false".into()), ..Default::default() };
        assert!(Config::from_settings(&s, &Command::Run).is_ok());
    }
}
