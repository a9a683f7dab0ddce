//! The command line: the commands and their own flags (the settings, read by every command, are
//! [`Settings`]), and [`cli_command`], the command line as the binary parses it.

use clap::{Args, Parser, Subcommand};

use super::kafka::vars::{KAFKA_BROKERS, KAFKA_GROUP_ID, KAFKA_TOPIC};
use super::observability::vars::{ENVIRONMENT, LOG_LEVEL};
use super::setting::Setting;
use super::settings::Settings;

/// How often `dlq replay` replays the same event before it skips it (`--max-replays`).
pub const DEFAULT_MAX_REPLAYS: u32 = 3;

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
pub fn parse_since(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, NotATime> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let not_a_time = || NotATime(raw.to_owned());
    let unit = raw.chars().last().ok_or_else(not_a_time)?;
    let n: i64 = raw[..raw.len() - unit.len_utf8()].parse().map_err(|_| not_a_time())?;
    let age = match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => None,
    };
    age.filter(|a| *a >= chrono::Duration::zero()).map(|a| chrono::Utc::now() - a).ok_or_else(not_a_time)
}

/// A `--since` that is neither a time nor an age.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a time: expected RFC 3339 (2026-11-27T18:00:00Z) or an age such as 90s, 30m, 2h, 7d")]
pub struct NotATime(pub String);

/// The settings a `dlq` command reads; its `--help` lists only these.
const DLQ_SETTINGS: &[Setting] = &[KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, LOG_LEVEL, ENVIRONMENT];

/// The command line, with the settings `dlq` does not read hidden from its help.
pub fn cli_command() -> clap::Command {
    use clap::CommandFactory;
    let cmd = Cli::command();
    // Global settings are copied into each subcommand that lacks them when the command is built:
    // hidden copies given to `dlq` first are kept, and passed on to `list` and `replay`.
    let unused: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set() && !DLQ_SETTINGS.iter().any(|s| s.id() == a.get_id().as_str()))
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
