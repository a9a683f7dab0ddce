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

pub mod docs;

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

/// `dlq replay --max-replays` when not given.
pub const DEFAULT_MAX_REPLAYS: u32 = 3;

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
    #[arg(long, default_value_t = DEFAULT_MAX_REPLAYS)]
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

/// Makes [`Settings`]: one `Option<String>` field per setting, whose variable, help and heading
/// come from its [`Setting`] in [`vars`]; each setting is named once here, not in four places of
/// a clap attribute.
macro_rules! settings {
    ($($field:ident => $var:ident),* $(,)?) => {
        /// The raw settings, as given. Every field is a string so that validation can name the variable.
        #[derive(Args, Debug, Clone, Default)]
        pub struct Settings {
            $(
                #[arg(long, env = vars::$var.var, help = vars::$var.help(), help_heading = vars::$var.heading, global = true, hide_env_values = true)]
                pub $field: Option<String>,
            )*
        }
    };
}

settings! {
    kafka_brokers => KAFKA_BROKERS,
    kafka_topic => KAFKA_TOPIC,
    kafka_group_id => KAFKA_GROUP_ID,
    database_url => DATABASE_URL,
    nasa_api_url => NASA_API_URL,
    query => QUERY,
    interval_seconds => INTERVAL_SECONDS,
    image_variant => IMAGE_VARIANT,
    nasa_timeout_seconds => NASA_TIMEOUT_SECONDS,
    producer_enabled => PRODUCER_ENABLED,
    consumer_enabled => CONSUMER_ENABLED,
    max_image_bytes => MAX_IMAGE_BYTES,
    allowed_image_hosts => ALLOWED_IMAGE_HOSTS,
    download_concurrency => DOWNLOAD_CONCURRENCY,
    consumer_max_in_flight => CONSUMER_MAX_IN_FLIGHT,
    consumer_stall_secs => CONSUMER_STALL_SECS,
    download_timeout_seconds => DOWNLOAD_TIMEOUT_SECONDS,
    data_dir => DATA_DIR,
    publish_timeout_ms => PUBLISH_TIMEOUT_MS,
    publish_min_backoff_ms => PUBLISH_MIN_BACKOFF_MS,
    publish_max_backoff_ms => PUBLISH_MAX_BACKOFF_MS,
    retry_min_backoff_ms => RETRY_MIN_BACKOFF_MS,
    retry_max_backoff_ms => RETRY_MAX_BACKOFF_MS,
    supervisor_min_backoff_ms => SUPERVISOR_MIN_BACKOFF_MS,
    supervisor_max_backoff_ms => SUPERVISOR_MAX_BACKOFF_MS,
    supervisor_max_restarts => SUPERVISOR_MAX_RESTARTS,
    supervisor_restart_window_secs => SUPERVISOR_RESTART_WINDOW_SECS,
    startup_timeout_secs => STARTUP_TIMEOUT_SECS,
    http_addr => HTTP_ADDR,
    admin_token => ADMIN_TOKEN,
    environment => ENVIRONMENT,
    sentry_dsn => SENTRY_DSN,
    sentry_min_interval_secs => SENTRY_MIN_INTERVAL_SECS,
    log_level => LOG_LEVEL,
    log_format => LOG_FORMAT,
}

/// One setting: its variable, the `--help` heading it is listed under, its default and what it
/// does. Each setting is written once, here: clap's help, the parser's default, the README's
/// configuration table and `deploy/.env.example` are all made from it (see [`docs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub var: &'static str,
    pub heading: &'static str,
    pub if_unset: IfUnset,
    /// What it does, in a line (backticks mark literal values, in `--help` too).
    pub about: &'static str,
}

/// What an unset (or empty) setting means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfUnset {
    /// This value is used, and `--help` shows it as `[default: ...]`.
    Value(&'static str),
    /// There is no value; the text says what that means, for the README's default column.
    Nothing(&'static str),
}

impl Setting {
    const fn new(var: &'static str, heading: &'static str, default: &'static str, about: &'static str) -> Setting {
        Setting { var, heading, if_unset: IfUnset::Value(default), about }
    }

    const fn optional(var: &'static str, heading: &'static str, unset: &'static str, about: &'static str) -> Setting {
        Setting { var, heading, if_unset: IfUnset::Nothing(unset), about }
    }

    /// The value used when the setting is unset or empty.
    pub const fn default_value(&self) -> Option<&'static str> {
        match self.if_unset {
            IfUnset::Value(v) => Some(v),
            IfUnset::Nothing(_) => None,
        }
    }

    /// The line `--help` shows.
    pub fn help(&self) -> String {
        match self.if_unset {
            IfUnset::Value(v) => format!("{} [default: {v}]", self.about),
            IfUnset::Nothing(_) => self.about.to_owned(),
        }
    }

    /// The flag's id (its long name with `_`), as clap derives it from the field.
    pub fn id(&self) -> String {
        self.var.to_ascii_lowercase()
    }
}

/// Every setting, in the order `--help` lists them (grouped by heading), and the README and
/// `.env.example` too.
pub mod vars {
    use super::Setting;

    const KAFKA: &str = "Kafka";
    const POSTGRES: &str = "Postgres";
    const NASA: &str = "Producer: NASA API";
    const ROLES: &str = "Roles";
    const DOWNLOADS: &str = "Consumer: downloads";
    const OUTBOX: &str = "Producer: outbox and publishing";
    const RETRIES: &str = "Retries and restarts";
    const HTTP: &str = "HTTP endpoint";
    const LOGS: &str = "Logs and Sentry";

    pub const KAFKA_BROKERS: Setting = Setting::new(
        "KAFKA_BROKERS",
        KAFKA,
        "127.0.0.1:9092",
        "bootstrap servers, `host:port[,host:port]`; `KAFKA_BOOTSTRAP_SERVERS` and `KAFKA_BOOTSTRAP` (the earlier version's names) are read when it is unset",
    );
    pub const KAFKA_TOPIC: Setting = Setting::new("KAFKA_TOPIC", KAFKA, "images", "topic of the events; dead letters go to `<topic>.dlq`");
    pub const KAFKA_GROUP_ID: Setting = Setting::new("KAFKA_GROUP_ID", KAFKA, "images-writer", "consumer group of the consumer role");
    pub const DATABASE_URL: Setting = Setting::optional(
        "DATABASE_URL",
        POSTGRES,
        "(none)",
        "`postgres://user[:password]@host[:port]/database`, with libpq's parameters (`?sslmode=require`, ...) but not Kerberos or LDAP, which the built-in libpq leaves out; required by the consumer role and `migrate`; never logged",
    );
    pub const NASA_API_URL: Setting = Setting::new("NASA_API_URL", NASA, "https://images-api.nasa.gov", "base URL of the NASA Images API");
    pub const QUERY: Setting = Setting::optional(
        "QUERY",
        NASA,
        "empty",
        "search term; empty picks one of moon, mars, earth, nebula, galaxy, saturn, jupiter, apollo each time",
    );
    pub const INTERVAL_SECONDS: Setting = Setting::new("INTERVAL_SECONDS", NASA, "30", "seconds between fetched images (1 to 86400)");
    pub const IMAGE_VARIANT: Setting = Setting::new(
        "IMAGE_VARIANT",
        NASA,
        "orig",
        "`orig`, `large`, `medium`, `small` or `thumb`; when that jpg is missing, the next smaller",
    );
    pub const NASA_TIMEOUT_SECONDS: Setting =
        Setting::new("NASA_TIMEOUT_SECONDS", NASA, "20", "time limit of one NASA API request, in seconds");
    pub const PRODUCER_ENABLED: Setting =
        Setting::new("PRODUCER_ENABLED", ROLES, "true", "run the producer role: the Fetcher and Publisher");
    pub const CONSUMER_ENABLED: Setting = Setting::new(
        "CONSUMER_ENABLED",
        ROLES,
        "true",
        "run the consumer role: the Subscriber, Downloader and Storer (at least one role must be on)",
    );
    pub const MAX_IMAGE_BYTES: Setting = Setting::new(
        "MAX_IMAGE_BYTES",
        DOWNLOADS,
        "52428800",
        "largest image accepted, in bytes (52428800 is 50 MiB); larger images go to the dead-letter topic",
    );
    pub const ALLOWED_IMAGE_HOSTS: Setting =
        Setting::new("ALLOWED_IMAGE_HOSTS", DOWNLOADS, "images-assets.nasa.gov", "comma-separated hosts images may come from");
    pub const DOWNLOAD_CONCURRENCY: Setting = Setting::new(
        "DOWNLOAD_CONCURRENCY",
        DOWNLOADS,
        "8",
        "image downloads at once per image host; `DOWNLOAD_CONCURRENCY × MAX_IMAGE_BYTES`, plus the Storer's 24 MiB, also bounds the image bytes the events in flight hold",
    );
    pub const CONSUMER_MAX_IN_FLIGHT: Setting = Setting::new(
        "CONSUMER_MAX_IN_FLIGHT",
        DOWNLOADS,
        "256",
        "events the consumer role handles at once (checked, downloading, or waiting to be stored): more than downloads, so that the Storer's statements carry many rows (1 to 4096)",
    );
    pub const CONSUMER_STALL_SECS: Setting = Setting::new(
        "CONSUMER_STALL_SECS",
        DOWNLOADS,
        "60",
        "a consumer that holds no partition while partitions have lag, or partitions with lag whose committed offset does not move, for this long (5 to 86400 seconds) counts as stalled: a WARN naming the partitions, `/readyz` 503, and the consumer rejoins its group as a new member (at most once per this period)",
    );
    pub const DOWNLOAD_TIMEOUT_SECONDS: Setting =
        Setting::new("DOWNLOAD_TIMEOUT_SECONDS", DOWNLOADS, "60", "time limit of one whole image download, in seconds (connecting: 5 s)");
    pub const DATA_DIR: Setting = Setting::new(
        "DATA_DIR",
        OUTBOX,
        "data",
        "local state: the producer's outbox (`outbox/pending.json`), held by one process at a time; `/data` in the container image",
    );
    pub const PUBLISH_TIMEOUT_MS: Setting = Setting::new(
        "PUBLISH_TIMEOUT_MS",
        OUTBOX,
        "5000",
        "how long a send may go unacknowledged before `Kafka unavailable` is logged, in ms; the same send goes on (librdkafka retries it with the same sequence number, so the broker keeps one copy of the event however often it was retried)",
    );
    pub const PUBLISH_MIN_BACKOFF_MS: Setting =
        Setting::new("PUBLISH_MIN_BACKOFF_MS", OUTBOX, "500", "first delay of the Publisher's retries while Kafka is unavailable, in ms");
    pub const PUBLISH_MAX_BACKOFF_MS: Setting =
        Setting::new("PUBLISH_MAX_BACKOFF_MS", OUTBOX, "30000", "longest delay of the Publisher's retries, in ms");
    pub const RETRY_MIN_BACKOFF_MS: Setting = Setting::new(
        "RETRY_MIN_BACKOFF_MS",
        RETRIES,
        "500",
        "first delay of the other retries (NASA API, downloads, Postgres, start-up), in ms",
    );
    pub const RETRY_MAX_BACKOFF_MS: Setting =
        Setting::new("RETRY_MAX_BACKOFF_MS", RETRIES, "30000", "longest delay of the other retries, in ms");
    pub const SUPERVISOR_MIN_BACKOFF_MS: Setting =
        Setting::new("SUPERVISOR_MIN_BACKOFF_MS", RETRIES, "500", "first delay before an actor that died is restarted, in ms");
    pub const SUPERVISOR_MAX_BACKOFF_MS: Setting =
        Setting::new("SUPERVISOR_MAX_BACKOFF_MS", RETRIES, "30000", "longest delay before a restart, in ms");
    pub const SUPERVISOR_MAX_RESTARTS: Setting = Setting::new(
        "SUPERVISOR_MAX_RESTARTS",
        RETRIES,
        "5",
        "restarts of one actor allowed within the window; one more shuts the process down in order with exit code 1",
    );
    pub const SUPERVISOR_RESTART_WINDOW_SECS: Setting = Setting::new(
        "SUPERVISOR_RESTART_WINDOW_SECS",
        RETRIES,
        "60",
        "the restart window, in seconds; an actor that ran this long starts again from the minimum backoff",
    );
    pub const STARTUP_TIMEOUT_SECS: Setting = Setting::new(
        "STARTUP_TIMEOUT_SECS",
        RETRIES,
        "0",
        "seconds start-up may wait for Kafka and Postgres (topics, login, migrations) before the process exits 1 with one ERROR line naming each dependency not usable and its last error; `0` waits forever",
    );
    pub const HTTP_ADDR: Setting = Setting::new(
        "HTTP_ADDR",
        HTTP,
        "0.0.0.0:8081",
        "the HTTP endpoint (`/healthz`, `/status`, `/metrics`, admin routes); port 0 picks a free port (logged)",
    );
    pub const ADMIN_TOKEN: Setting = Setting::optional(
        "ADMIN_TOKEN",
        HTTP,
        "empty",
        "bearer token of the admin routes (fault injection, such as `POST /admin/actors/{name}/crash`); empty: the routes do not exist",
    );
    pub const ENVIRONMENT: Setting =
        Setting::new("ENVIRONMENT", LOGS, "local", "deployment name: `service.environment` in logs, `environment` in Sentry");
    pub const SENTRY_DSN: Setting = Setting::optional("SENTRY_DSN", LOGS, "empty", "Sentry DSN; empty disables Sentry");
    pub const SENTRY_MIN_INTERVAL_SECS: Setting =
        Setting::new("SENTRY_MIN_INTERVAL_SECS", LOGS, "600", "least seconds between two Sentry events with the same fingerprint");
    pub const LOG_LEVEL: Setting = Setting::new("LOG_LEVEL", LOGS, "info", "`error`, `warn`, `info`, `debug` or `trace`");
    pub const LOG_FORMAT: Setting = Setting::optional(
        "LOG_FORMAT",
        LOGS,
        "text on a terminal, else `json`",
        "`json` (ECS, one object per line, for Filebeat) or `text` (one short line per event, for a person); unset: text when the log stream is a terminal, else json",
    );

    /// Every setting, in `--help`'s order.
    pub const ALL: [Setting; 35] = [
        KAFKA_BROKERS,
        KAFKA_TOPIC,
        KAFKA_GROUP_ID,
        DATABASE_URL,
        NASA_API_URL,
        QUERY,
        INTERVAL_SECONDS,
        IMAGE_VARIANT,
        NASA_TIMEOUT_SECONDS,
        PRODUCER_ENABLED,
        CONSUMER_ENABLED,
        MAX_IMAGE_BYTES,
        ALLOWED_IMAGE_HOSTS,
        DOWNLOAD_CONCURRENCY,
        CONSUMER_MAX_IN_FLIGHT,
        CONSUMER_STALL_SECS,
        DOWNLOAD_TIMEOUT_SECONDS,
        DATA_DIR,
        PUBLISH_TIMEOUT_MS,
        PUBLISH_MIN_BACKOFF_MS,
        PUBLISH_MAX_BACKOFF_MS,
        RETRY_MIN_BACKOFF_MS,
        RETRY_MAX_BACKOFF_MS,
        SUPERVISOR_MIN_BACKOFF_MS,
        SUPERVISOR_MAX_BACKOFF_MS,
        SUPERVISOR_MAX_RESTARTS,
        SUPERVISOR_RESTART_WINDOW_SECS,
        STARTUP_TIMEOUT_SECS,
        HTTP_ADDR,
        ADMIN_TOKEN,
        ENVIRONMENT,
        SENTRY_DSN,
        SENTRY_MIN_INTERVAL_SECS,
        LOG_LEVEL,
        LOG_FORMAT,
    ];
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

/// `MAX_IMAGE_BYTES`, `ALLOWED_IMAGE_HOSTS`, `DOWNLOAD_CONCURRENCY`, `CONSUMER_MAX_IN_FLIGHT`, `CONSUMER_STALL_SECS`,
/// `DOWNLOAD_TIMEOUT_SECONDS`.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub max_image_bytes: u64,
    pub allowed_image_hosts: Vec<String>,
    /// Image downloads at once per image host.
    pub concurrency: usize,
    /// Events handled at once.
    pub max_in_flight: usize,
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
        let mut producer_enabled = e.take(parse_bool(&vars::PRODUCER_ENABLED, &s.producer_enabled));
        let mut consumer_enabled = e.take(parse_bool(&vars::CONSUMER_ENABLED, &s.consumer_enabled));
        if matches!(command, Command::Backfill(_) | Command::Dlq(_)) {
            // A backfill and a replay only publish.
            (producer_enabled, consumer_enabled) = (true, false);
        }
        if !producer_enabled && !consumer_enabled && e.0.is_empty() {
            e.0.push(ConfigError::NoRole);
        }
        let database_url = e.take(parse_database_url(&s.database_url));
        if database_url.is_none()
            && (consumer_enabled || *command == Command::Migrate)
            && e.0.iter().all(|x| x.var() != vars::DATABASE_URL.var)
        {
            e.0.push(ConfigError::Missing { var: vars::DATABASE_URL.var, accepted: DATABASE_URL_FORM.into() });
        }
        let kafka_topic = e.take(parse_name(&vars::KAFKA_TOPIC, &s.kafka_topic));
        let publish_min_backoff = e.take(parse_millis(&vars::PUBLISH_MIN_BACKOFF_MS, &s.publish_min_backoff_ms));
        let publish_max_backoff = e.take(parse_millis(&vars::PUBLISH_MAX_BACKOFF_MS, &s.publish_max_backoff_ms));
        let retry_min_backoff = e.take(parse_millis(&vars::RETRY_MIN_BACKOFF_MS, &s.retry_min_backoff_ms));
        let retry_max_backoff = e.take(parse_millis(&vars::RETRY_MAX_BACKOFF_MS, &s.retry_max_backoff_ms));
        let supervisor_min_backoff = e.take(parse_millis(&vars::SUPERVISOR_MIN_BACKOFF_MS, &s.supervisor_min_backoff_ms));
        let supervisor_max_backoff = e.take(parse_millis(&vars::SUPERVISOR_MAX_BACKOFF_MS, &s.supervisor_max_backoff_ms));
        // Read in this order, so that the errors come in it too.
        let brokers = e.take(parse_brokers(&kafka_brokers_setting(s)));
        let group_id = e.take(parse_name(&vars::KAFKA_GROUP_ID, &s.kafka_group_id));
        let api_url = e.take_or(parse_http_url(&vars::NASA_API_URL, &s.nasa_api_url), || {
            Url::parse(default_of(&vars::NASA_API_URL)).expect("a valid URL")
        });
        let interval = Duration::from_secs(e.take(parse_number(&vars::INTERVAL_SECONDS, &s.interval_seconds, 1, 86_400)));
        let image_variant = e.take_or(parse_variant(&s.image_variant), || ImageVariant::Orig);
        let max_image_bytes = e.take(parse_number(&vars::MAX_IMAGE_BYTES, &s.max_image_bytes, 1, 1 << 40));
        let allowed_image_hosts = e.take(parse_hosts(&s.allowed_image_hosts));
        let concurrency = e.take(parse_number(&vars::DOWNLOAD_CONCURRENCY, &s.download_concurrency, 1, 1024)) as usize;
        let max_in_flight = e.take(parse_number(&vars::CONSUMER_MAX_IN_FLIGHT, &s.consumer_max_in_flight, 1, 4096)) as usize;
        let stall = Duration::from_secs(e.take(parse_number(&vars::CONSUMER_STALL_SECS, &s.consumer_stall_secs, 5, 86_400)));
        let download_timeout =
            Duration::from_secs(e.take(parse_number(&vars::DOWNLOAD_TIMEOUT_SECONDS, &s.download_timeout_seconds, 1, 3600)));
        let publish_timeout = e.take(parse_millis(&vars::PUBLISH_TIMEOUT_MS, &s.publish_timeout_ms));
        let nasa_timeout = Duration::from_secs(e.take(parse_number(&vars::NASA_TIMEOUT_SECONDS, &s.nasa_timeout_seconds, 1, 600)));
        let publish_max_backoff = e.take(at_least(&vars::PUBLISH_MAX_BACKOFF_MS, publish_max_backoff, publish_min_backoff));
        let retry_max_backoff = e.take(at_least(&vars::RETRY_MAX_BACKOFF_MS, retry_max_backoff, retry_min_backoff));
        let supervisor_max_backoff = e.take(at_least(&vars::SUPERVISOR_MAX_BACKOFF_MS, supervisor_max_backoff, supervisor_min_backoff));
        let max_restarts = e.take(parse_number(&vars::SUPERVISOR_MAX_RESTARTS, &s.supervisor_max_restarts, 0, 10_000)) as u32;
        let restart_window =
            Duration::from_secs(e.take(parse_number(&vars::SUPERVISOR_RESTART_WINDOW_SECS, &s.supervisor_restart_window_secs, 1, 86_400)));
        let startup_timeout = Some(e.take(parse_number(&vars::STARTUP_TIMEOUT_SECS, &s.startup_timeout_secs, 0, 86_400)))
            .filter(|secs| *secs > 0)
            .map(Duration::from_secs);
        let http_addr =
            e.take_or(parse_socket_addr(&vars::HTTP_ADDR, &s.http_addr), || default_of(&vars::HTTP_ADDR).parse().expect("a valid address"));
        let sentry_dsn = e.take(parse_sentry_dsn(&s.sentry_dsn));
        let sentry_min_interval =
            Duration::from_secs(e.take(parse_number(&vars::SENTRY_MIN_INTERVAL_SECS, &s.sentry_min_interval_secs, 0, 86_400)));
        let log_level = e.take_or(parse_log_level(&s.log_level), || slog::Level::Info);
        let log_format = e.take(parse_log_format(&s.log_format));
        let config = Config {
            roles: Roles { producer: producer_enabled, consumer: consumer_enabled },
            kafka: KafkaConfig { brokers, dlq_topic: format!("{kafka_topic}.dlq"), topic: kafka_topic, group_id },
            postgres: PostgresConfig { url: database_url },
            nasa: NasaConfig { api_url, query: non_empty(&s.query).map(str::to_owned), interval, image_variant, timeout: nasa_timeout },
            outbox: OutboxConfig {
                data_dir: PathBuf::from(or_default(&vars::DATA_DIR, &s.data_dir)),
                publish_timeout,
                publish_min_backoff,
                publish_max_backoff,
            },
            consumer: ConsumerConfig { max_image_bytes, allowed_image_hosts, concurrency, max_in_flight, stall, download_timeout },
            retries: RetryConfig { min_backoff: retry_min_backoff, max_backoff: retry_max_backoff, startup_timeout },
            supervisor: SupervisorConfig {
                min_backoff: supervisor_min_backoff,
                max_backoff: supervisor_max_backoff,
                max_restarts,
                restart_window,
            },
            http: HttpConfig { addr: http_addr, admin_token: non_empty(&s.admin_token).map(str::to_owned) },
            observability: ObservabilityConfig {
                environment: or_default(&vars::ENVIRONMENT, &s.environment).to_owned(),
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

/// The setting's built-in value: what an unset or empty setting is read as.
fn default_of(setting: &Setting) -> &'static str {
    setting.default_value().unwrap_or_else(|| panic!("{} has a default value", setting.var))
}

/// The value given, else the setting's default.
fn or_default<'a>(setting: &Setting, v: &'a Option<String>) -> &'a str {
    non_empty(v).unwrap_or_else(|| default_of(setting))
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

fn parse_bool(setting: &Setting, v: &Option<String>) -> Result<bool, ConfigError> {
    match or_default(setting, v).to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(setting.var, v.as_deref().unwrap_or(""), "true or false (also 1/0, yes/no, on/off)")),
    }
}

fn parse_number(setting: &Setting, v: &Option<String>, min: u64, max: u64) -> Result<u64, ConfigError> {
    let raw = or_default(setting, v);
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(setting.var, raw, format!("a whole number from {min} to {max}"))),
    }
}

fn parse_millis(setting: &Setting, v: &Option<String>) -> Result<Duration, ConfigError> {
    parse_number(setting, v, 1, 3_600_000).map(Duration::from_millis)
}

fn at_least(setting: &Setting, max: Duration, min: Duration) -> Result<Duration, ConfigError> {
    if max < min {
        return Err(invalid(setting.var, &max.as_millis().to_string(), format!("at least the minimum backoff, {} ms", min.as_millis())));
    }
    Ok(max)
}

fn parse_name(setting: &Setting, v: &Option<String>) -> Result<String, ConfigError> {
    let raw = or_default(setting, v);
    let ok = raw.len() <= 200 && raw.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(invalid(setting.var, raw, "letters, digits, '.', '_' and '-' (at most 200)"))
    }
}

fn parse_brokers(v: &Option<String>) -> Result<String, ConfigError> {
    let raw = or_default(&vars::KAFKA_BROKERS, v);
    let valid = raw
        .split(',')
        .map(str::trim)
        .all(|hp| hp.rsplit_once(':').map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).unwrap_or(false));
    if valid {
        Ok(raw.split(',').map(str::trim).collect::<Vec<_>>().join(","))
    } else {
        Err(invalid(vars::KAFKA_BROKERS.var, raw, "host:port[,host:port...]"))
    }
}

fn parse_http_url(setting: &Setting, v: &Option<String>) -> Result<Url, ConfigError> {
    let raw = or_default(setting, v);
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        _ => Err(invalid(setting.var, raw, "an http:// or https:// URL such as https://images-api.nasa.gov")),
    }
}

fn parse_database_url(v: &Option<String>) -> Result<Option<DatabaseUrl>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.path().len() > 1 => Ok(Some(DatabaseUrl(raw.to_owned()))),
        _ => Err(ConfigError::InvalidSecret { var: vars::DATABASE_URL.var, accepted: DATABASE_URL_FORM.into() }),
    }
}

fn parse_sentry_dsn(v: &Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match raw.parse::<sentry::types::Dsn>() {
        Ok(_) => Ok(Some(raw.to_owned())),
        Err(_) => Err(ConfigError::InvalidSecret {
            var: vars::SENTRY_DSN.var,
            accepted: "empty (Sentry off) or a DSN such as https://KEY@sentry.example.com/PROJECT_ID".into(),
        }),
    }
}

fn parse_variant(v: &Option<String>) -> Result<ImageVariant, ConfigError> {
    let raw = or_default(&vars::IMAGE_VARIANT, v);
    raw.parse().map_err(|_| invalid(vars::IMAGE_VARIANT.var, raw, "orig, large, medium, small or thumb"))
}

fn parse_hosts(v: &Option<String>) -> Result<Vec<String>, ConfigError> {
    let raw = or_default(&vars::ALLOWED_IMAGE_HOSTS, v);
    let hosts: Vec<String> = raw.split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let valid = hosts.iter().all(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)));
    if valid {
        Ok(hosts)
    } else {
        Err(invalid(vars::ALLOWED_IMAGE_HOSTS.var, raw, "comma-separated host names such as images-assets.nasa.gov"))
    }
}

fn parse_socket_addr(setting: &Setting, v: &Option<String>) -> Result<std::net::SocketAddr, ConfigError> {
    let raw = or_default(setting, v);
    raw.parse().map_err(|_| invalid(setting.var, raw, "ip:port such as 0.0.0.0:8081 (port 0 picks a free one)"))
}

fn parse_log_format(v: &Option<String>) -> Result<Option<LogFormat>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match raw.to_ascii_lowercase().as_str() {
        "json" => Ok(Some(LogFormat::Json)),
        "text" => Ok(Some(LogFormat::Text)),
        _ => Err(invalid(vars::LOG_FORMAT.var, raw, "json or text (unset: text on a terminal, else json)")),
    }
}

fn parse_log_level(v: &Option<String>) -> Result<slog::Level, ConfigError> {
    let raw = or_default(&vars::LOG_LEVEL, v);
    match raw.to_ascii_lowercase().as_str() {
        "error" => Ok(slog::Level::Error),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "info" => Ok(slog::Level::Info),
        "debug" => Ok(slog::Level::Debug),
        "trace" => Ok(slog::Level::Trace),
        _ => Err(invalid(vars::LOG_LEVEL.var, raw, "error, warn, info, debug or trace")),
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

    /// Each setting's default, given as its value, makes the same configuration as leaving it
    /// unset: the default `--help`, the README and .env.example show is the one used.
    #[test]
    fn the_defaults_shown_are_the_defaults_used() {
        use clap::Parser;
        let config = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["nasa-ingest", "--database-url", "postgres://u@db/x"], args].concat()).unwrap();
            format!("{:?}", Config::from_settings(&cli.settings, &Command::Run).unwrap())
        };
        let unset = config(&[]);
        let mut checked = 0;
        for setting in vars::ALL {
            let Some(default) = setting.default_value() else { continue };
            let flag = format!("--{}", setting.id().replace('_', "-"));
            assert_eq!(config(&[&flag, default]), unset, "{flag} {default}");
            checked += 1;
        }
        assert!(checked >= 25, "{checked} defaults checked");
    }

    /// The command line reads exactly the settings of `vars::ALL`, in its order (so that the
    /// README and .env.example, made from it, are grouped as `--help` is), each with its help and heading.
    #[test]
    fn the_command_line_is_made_of_the_settings_table() {
        let cmd = cli_command();
        let args: Vec<&clap::Arg> = cmd.get_arguments().filter(|a| a.get_env().is_some()).collect();
        let vars_read: Vec<String> = args.iter().map(|a| a.get_env().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(vars_read, vars::ALL.map(|s| s.var.to_owned()));
        for (arg, setting) in args.iter().zip(vars::ALL) {
            assert_eq!(arg.get_id().as_str(), setting.id());
            assert_eq!(arg.get_help().map(ToString::to_string), Some(setting.help()), "{}", setting.var);
            assert_eq!(arg.get_help_heading(), Some(setting.heading), "{}", setting.var);
            assert!(arg.get_long_help().is_none(), "{}: the help is the table's, whole", setting.var);
        }
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
