use clap::FromArgMatches;
use slog::{error, info};
use std::process::ExitCode;

use nasa_ingest::config::{self, Cli, Command, Config};
use nasa_ingest::{backfill, daemon, db, dlq, healthcheck, logging, telemetry};

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&config::cli_command().get_matches()).unwrap_or_else(|e| e.exit());
    let command = cli.command.unwrap_or(Command::Run);
    let config = match Config::from_settings(&cli.settings, &command) {
        Ok(c) => c,
        // Docker reserves a healthcheck's exit code 2: a bad setting is just unhealthy there.
        Err(errors) if command == Command::Healthcheck => {
            errors.0.iter().for_each(|e| eprintln!("nasa-ingest healthcheck: {e}"));
            return ExitCode::FAILURE;
        }
        Err(errors) => {
            // One line per bad setting, each naming the variable.
            errors.0.iter().for_each(|e| eprintln!("nasa-ingest: {e}"));
            return ExitCode::from(2);
        }
    };
    if command == Command::Healthcheck {
        // No logger, no Sentry: one line on failure, for `docker inspect`'s health log.
        return match healthcheck::check(config.http.addr, std::time::Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nasa-ingest healthcheck: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if command == Command::Check {
        // No logger: the checks' lines are the output.
        return check(&config);
    }
    // A backfill and the dlq commands keep stdout for their output; their logs go to stderr
    // (above a progress bar, if one is drawn).
    let logger = match command {
        Command::Backfill(_) | Command::Dlq(_) => logging::backfill_logger,
        _ => logging::stdout_logger,
    };
    let o = &config.observability;
    // The root logger keeps its last WARN and ERROR lines here, for the daemon's status page.
    let problems = logging::RecentProblems::default();
    let root = logger(o.log_level, &o.environment, o.log_format, &problems);
    let log = logging::for_component(&root, "main");
    let _sentry = telemetry::init_sentry(
        telemetry::SentrySettings {
            dsn: config.observability.sentry_dsn.as_deref(),
            environment: &config.observability.environment,
            role: config.roles.label(),
            min_interval: config.observability.sentry_min_interval,
        },
        &log,
    );
    telemetry::log_panics(log.clone());
    logging::bridge_log_crate(&root, config.observability.log_level);
    match command {
        Command::Migrate => migrate(&config, &log),
        Command::Run => {
            let system = actix::System::new();
            let code = system.block_on(daemon::run(config, root, problems));
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
        Command::Healthcheck | Command::Check => unreachable!("answered above"),
    }
}

fn check(config: &Config) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the checks");
    let checks = runtime.block_on(nasa_ingest::check::run(config));
    for c in &checks {
        println!("{}", c.line());
    }
    if checks.iter().all(|c| c.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn migrate(config: &Config, log: &slog::Logger) -> ExitCode {
    let url = config.postgres.url.as_ref().expect("validated: migrate has a DATABASE_URL");
    if let Err(e) = db::check_login(url) {
        error!(log, "migrations failed"; "error.type" => "postgres", "error.message" => e.to_string());
        return ExitCode::FAILURE;
    }
    // No status page reads the dependency's state here: the log says what is wrong.
    let postgres = nasa_ingest::deps::Dependencies::default();
    match db::migrate(&db::reporting_pool(url, 1, postgres, log.clone())) {
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
