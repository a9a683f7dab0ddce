//! Sentry, and panics made visible: every panic is logged as an ECS ERROR line (with the actor's
//! thread and location) before Sentry's own hook reports it.

use slog::{error, info, Logger};

/// Starts Sentry when `SENTRY_DSN` is set; keep the guard alive for the life of the process.
pub fn init_sentry(dsn: Option<&str>, environment: &str, log: &Logger) -> Option<sentry::ClientInitGuard> {
    let Some(dsn) = dsn else {
        info!(log, "Sentry disabled (SENTRY_DSN is empty)");
        return None;
    };
    let guard = sentry::init((
        dsn,
        sentry::ClientOptions {
            release: Some(concat!("nasa-ingest@", env!("CARGO_PKG_VERSION")).into()),
            environment: Some(environment.to_owned().into()),
            attach_stacktrace: true,
            ..Default::default()
        },
    ));
    info!(log, "Sentry enabled"; "labels.sentry_environment" => environment.to_owned());
    Some(guard)
}

/// Logs every panic as one ERROR line, then runs the hook that was there (Sentry's, if enabled).
pub fn log_panics(log: Logger) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        crate::supervision::record_panic(format!("{message} at {location}"));
        error!(log, "panic"; "error.type" => "panic", "error.message" => message,
            "labels.location" => location, "labels.thread" => thread);
        previous(info);
    }));
}
