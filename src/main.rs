use clap::FromArgMatches;
use slog::{error, info};
use std::process::ExitCode;

use nasa_ingest::config::{self, Cli, Command, Config};
use nasa_ingest::{actors::supervisor, backfill, db, dlq, healthcheck, logging, telemetry};

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&config::cli_command().get_matches()).unwrap_or_else(|e| e.exit());
    let command = cli.command.unwrap_or(Command::Run);
    let config = match Config::from_settings(&cli.settings, &command) {
        Ok(c) => c,
        // Docker reserves a healthcheck's exit code 2: a bad setting is just unhealthy there.
        Err(e) if command == Command::Healthcheck => {
            eprintln!("nasa-ingest healthcheck: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("nasa-ingest: {e}");
            return ExitCode::from(2);
        }
    };
    if command == Command::Healthcheck {
        // No logger, no Sentry: one line on failure, for `docker inspect`'s health log.
        return match healthcheck::check(config.http_addr, std::time::Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nasa-ingest healthcheck: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // A backfill and the dlq commands keep stdout for their output; their logs go to stderr.
    let root = match command {
        Command::Backfill(_) | Command::Dlq(_) => logging::logger(std::io::stderr(), config.log_level, &config.environment),
        _ => logging::stdout_logger(config.log_level, &config.environment),
    };
    let log = logging::for_component(&root, "main");
    let _sentry = telemetry::init_sentry(
        telemetry::SentrySettings {
            dsn: config.sentry_dsn.as_deref(),
            environment: &config.environment,
            role: config.roles(),
            min_interval: config.sentry_min_interval,
        },
        &log,
    );
    telemetry::log_panics(log.clone());
    logging::bridge_log_crate(&root, config.log_level);
    match command {
        Command::Migrate => migrate(&config, &log),
        Command::Run => {
            let system = actix::System::new();
            let code = system.block_on(supervisor::run(config, root));
            // Everything that matters is flushed and committed by now. Exit without running the
            // Kafka clients' destructors: with the broker down they can wait far past the 10 s a
            // SIGTERM allows.
            drop(_sentry);
            std::process::exit(code.into());
        }
        Command::Backfill(args) => {
            let log = logging::for_component(&root, "backfill");
            ExitCode::from(actix::System::new().block_on(backfill::run(config, args, log)))
        }
        Command::Dlq(args) => ExitCode::from(dlq::run(&config, args, logging::for_component(&root, "dlq"))),
        Command::Healthcheck => unreachable!("answered above"),
    }
}

fn migrate(config: &Config, log: &slog::Logger) -> ExitCode {
    let url = config.database_url.as_ref().expect("validated: migrate has a DATABASE_URL");
    match db::migrate(&db::pool(url.expose(), 1)) {
        Ok(applied) => {
            info!(log, "migrations applied"; "labels.applied" => applied.join(","), "labels.database" => url.redacted());
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(log, "migrations failed"; "error.type" => "postgres", "error.message" => e.to_string());
            ExitCode::FAILURE
        }
    }
}
