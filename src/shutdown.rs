//! The one shutdown signal of the process: a [`CancellationToken`] cancelled on SIGTERM or
//! SIGINT, handed to every loop that must stop (the daemon's supervision and start-up retries,
//! the one-shot commands' retries and reads).

use slog::{info, Logger};
pub use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT, after one INFO line: `message`, with the
/// signal's name in `labels.signal`. The signals are taken at once; they are awaited on a thread
/// of its own, so this works inside the daemon's runtime, in another one, or with none (the
/// `dlq` commands are synchronous).
pub fn on_signal(log: Logger, message: &'static str) -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for signals");
    let (mut int, mut term) = {
        let _in_runtime = rt.enter();
        (signal(SignalKind::interrupt()).expect("can listen for SIGINT"), signal(SignalKind::terminate()).expect("can listen for SIGTERM"))
    };
    let token = CancellationToken::new();
    let cancel = token.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                }
            });
            info!(log, "{}", message; "labels.signal" => name);
            cancel.cancel();
        })
        .expect("can start the signal thread");
    token
}
