//! Configuration: read once at start from env vars (each overridable by a CLI flag) into [`Config`].
//!
//! clap reads the raw strings ([`Settings`]) so that `--help` lists every variable;
//! [`Config::from_settings`] then validates them, and a bad value becomes a [`ConfigError`] that
//! names the variable, the value and what is accepted (the binary prints it on one line and exits
//! with code 2).
//!
//! - [`cli`]: the commands and their flags;
//! - [`setting`]: what a setting is, and the macro that defines a group of them;
//! - one file per group ([`kafka`], [`postgres`], [`nasa`], [`roles`], [`consumer`], [`outbox`],
//!   [`retries`] (with the supervisor's), [`http`], [`observability`]): its settings, each defined
//!   once, its typed part of [`Config`], and their validation;
//! - [`settings`]: the groups together, in `--help`'s order; [`docs`]: the README's table and
//!   `deploy/.env.example`, made from them.
//!
//! A new setting is one entry in its group's `define_settings!` and the lines of that file that
//! read it into the group's config; `--help`, the docs and the list of variables follow.

pub mod cli;
pub mod consumer;
pub mod docs;
mod error;
pub mod http;
pub mod kafka;
pub mod nasa;
pub mod observability;
pub mod outbox;
mod parse;
pub mod postgres;
pub mod retries;
pub mod roles;
pub mod setting;
pub mod settings;

pub use cli::{
    cli_command, parse_since, BackfillArgs, Cli, Command, DlqArgs, DlqCommand, DlqFilter, DlqListArgs, DlqReplayArgs, NotATime,
    DEFAULT_MAX_REPLAYS,
};
pub use consumer::ConsumerConfig;
pub use error::{ConfigError, ConfigErrors};
pub use http::HttpConfig;
pub use kafka::{GroupProtocol, KafkaConfig};
pub use nasa::{NasaConfig, RANDOM_TOPICS};
pub use observability::ObservabilityConfig;
pub use outbox::OutboxConfig;
pub use postgres::{DatabaseUrl, PostgresConfig};
pub use retries::{RetryConfig, SupervisorConfig, JITTER};
pub use roles::Roles;
pub use setting::{IfUnset, Setting};
pub use settings::{env_var_names, Settings};

use error::Errors;

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

impl Config {
    /// Validates the raw settings. `command` decides which settings are required. Every bad
    /// setting is reported, not only the first: a person fixes them all in one go. The errors
    /// come in the order the groups are read: `--help`'s, but the roles first (what the other
    /// groups require depends on them).
    pub fn from_settings(s: &Settings, command: &Command) -> Result<Config, ConfigErrors> {
        let mut e = Errors::default();
        // A backfill and a replay only publish.
        let publish_only = matches!(command, Command::Backfill(_) | Command::Dlq(_));
        let roles = Roles::from_settings(&s.roles, publish_only, &mut e);
        let kafka = KafkaConfig::from_settings(&s.kafka, &mut e);
        let postgres = PostgresConfig::from_settings(&s.postgres, roles.consumer || *command == Command::Migrate, &mut e);
        let nasa = NasaConfig::from_settings(&s.nasa, &mut e);
        let consumer = ConsumerConfig::from_settings(&s.consumer, &mut e);
        let outbox = OutboxConfig::from_settings(&s.outbox, &mut e);
        let retries = RetryConfig::from_settings(&s.retries, &mut e);
        let supervisor = SupervisorConfig::from_settings(&s.retries, &mut e);
        let http = HttpConfig::from_settings(&s.http, &mut e);
        let observability = ObservabilityConfig::from_settings(&s.observability, &mut e);
        e.or_value(Config { roles, kafka, postgres, nasa, outbox, consumer, retries, supervisor, http, observability })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn base() -> Settings {
        let mut s = Settings::default();
        s.postgres.database_url = Some("postgres://u:secret@db:5433/images".into());
        s
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::from_settings(&base(), &Command::Run).unwrap();
        assert_eq!(c.kafka.topic, "images");
        assert_eq!(c.kafka.dlq_topic, "images.dlq");
        assert_eq!(c.kafka.group_id, "images-writer");
        assert_eq!(c.kafka.group_protocol, GroupProtocol::Consumer);
        assert_eq!(c.kafka.session_timeout, Duration::from_secs(10));
        assert_eq!(c.kafka.group_instance_id, None, "static membership is off");
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
        let mut s = base();
        s.nasa.interval_seconds = Some("soon".into());
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
        for setting in settings::all() {
            let Some(default) = setting.default_value() else { continue };
            let flag = format!("--{}", setting.id().replace('_', "-"));
            assert_eq!(config(&[&flag, default]), unset, "{flag} {default}");
            checked += 1;
        }
        assert!(checked >= 25, "{checked} defaults checked");
    }

    /// The command line reads exactly the settings of `settings::all()`, in its order (so that the
    /// README and .env.example, made from it, are grouped as `--help` is), each with its help and heading.
    #[test]
    fn the_command_line_is_made_of_the_settings_table() {
        let cmd = cli_command();
        let args: Vec<&clap::Arg> = cmd.get_arguments().filter(|a| a.get_env().is_some()).collect();
        let vars_read: Vec<String> = args.iter().map(|a| a.get_env().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(vars_read, settings::all().map(|s| s.var.to_owned()).collect::<Vec<_>>());
        for (arg, setting) in args.iter().zip(settings::all()) {
            assert_eq!(arg.get_id().as_str(), setting.id());
            assert_eq!(arg.get_help().map(ToString::to_string), Some(setting.help()), "{}", setting.var);
            assert_eq!(arg.get_help_heading(), Some(setting.heading), "{}", setting.var);
            assert!(arg.get_long_help().is_none(), "{}: the help is the table's, whole", setting.var);
        }
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let mut s = Settings::default();
        s.nasa.interval_seconds = Some("soon".into());
        s.http.http_addr = Some("nowhere".into());
        s.observability.log_level = Some("loud".into());
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
        let mut s = Settings::default();
        s.roles.consumer_enabled = Some("false".into());
        assert!(Config::from_settings(&s, &Command::Run).is_ok());
    }
}
