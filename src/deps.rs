//! The daemon's dependencies (Kafka, Postgres, the NASA API): what state each is in, since when,
//! and why, for `/readyz`, `/status` and the page, and the log line said once per change of cause.
//!
//! A failure is typed by whether waiting can fix it: a [`DependencyError::Misconfigured`]
//! dependency (a role that does not exist, a topic the client may not use) stays broken until a
//! person changes a setting, so it is an ERROR naming the variable and what to check; an
//! [`DependencyError::Unreachable`] one is an outage, a WARN with the address and the cause.
//! Retry loops report every attempt here; only a change of cause reaches the log, so a daemon
//! that retries twice a second says what is wrong once, not twice a second.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use slog::{error, info, warn, Logger};
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Dependency {
    Kafka,
    Postgres,
    #[serde(rename = "NASA API")]
    NasaApi,
}

impl Dependency {
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Kafka => "Kafka",
            Dependency::Postgres => "Postgres",
            Dependency::NasaApi => "NASA API",
        }
    }

    /// The setting that says where the dependency is.
    pub fn variable(self) -> &'static str {
        match self {
            Dependency::Kafka => "KAFKA_BROKERS",
            Dependency::Postgres => "DATABASE_URL",
            Dependency::NasaApi => "NASA_API_URL",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a dependency cannot be used now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// The dependency answers and refuses this configuration: retrying cannot fix it.
    #[error("{dependency} refuses the configuration: {problem}; check {variable}: {fix}")]
    Misconfigured { dependency: Dependency, variable: &'static str, problem: String, fix: &'static str },
    /// Nothing usable answers at the address: an outage, retried until it is over.
    #[error("{dependency} unreachable at {address}: {cause}; retrying until it is back")]
    Unreachable { dependency: Dependency, address: String, cause: String },
    /// It answered, and the request failed for another reason; retried.
    #[error("{dependency} failed: {message}; retrying")]
    Failed { dependency: Dependency, message: String },
}

impl DependencyError {
    pub fn dependency(&self) -> Dependency {
        match self {
            DependencyError::Misconfigured { dependency, .. }
            | DependencyError::Unreachable { dependency, .. }
            | DependencyError::Failed { dependency, .. } => *dependency,
        }
    }

    /// What is wrong and what to check, without the dependency's name (for `check`'s lines).
    pub fn summary(&self) -> String {
        match self {
            DependencyError::Misconfigured { variable, problem, fix, .. } => format!("{problem}; check {variable}: {fix}"),
            DependencyError::Unreachable { dependency, address, cause } => {
                format!("unreachable at {address}: {cause}; check {} and that {dependency} runs there", dependency.variable())
            }
            DependencyError::Failed { dependency, message } => format!("{message}; check {}", dependency.variable()),
        }
    }

    /// Whether only a change of configuration (or of the dependency's own setup) fixes it.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, DependencyError::Misconfigured { .. })
    }

    /// The state's name in `/status`.
    pub fn state(&self) -> &'static str {
        match self {
            DependencyError::Misconfigured { .. } => "misconfigured",
            DependencyError::Unreachable { .. } => "unreachable",
            DependencyError::Failed { .. } => "failing",
        }
    }

    /// What makes two failures "the same cause": the kind and its text, not the attempt.
    fn cause(&self) -> String {
        match self {
            DependencyError::Misconfigured { problem, .. } => format!("misconfigured: {problem}"),
            DependencyError::Unreachable { address, cause, .. } => format!("unreachable: {address}: {cause}"),
            DependencyError::Failed { message, .. } => format!("failed: {message}"),
        }
    }
}

/// One dependency as `/status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DependencyStatus {
    pub name: &'static str,
    /// "unknown" (not tried yet), "up", "unreachable", "misconfigured" or "failing".
    pub state: &'static str,
    pub last_error: Option<String>,
    /// When the dependency entered this state (RFC 3339, UTC).
    pub since: String,
    /// The variable to fix when it is misconfigured.
    pub fix_variable: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct Entry {
    state: &'static str,
    cause: Option<String>,
    last_error: Option<String>,
    fix_variable: Option<&'static str>,
    since: DateTime<Utc>,
    /// When a change of this dependency was last logged.
    last_logged: Option<Instant>,
}

/// A new cause within the same state (connection refused, then timed out) is logged at most
/// this often.
const SAME_STATE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The state of every dependency this process uses.
#[derive(Default)]
pub struct Dependencies {
    entries: Mutex<BTreeMap<Dependency, Entry>>,
}

/// The process's dependencies (one per process, like the metrics).
pub static DEPENDENCIES: LazyLock<Dependencies> = LazyLock::new(Dependencies::default);

impl Dependencies {
    /// Lists `deps` in `/status` as "unknown" until they are first tried.
    pub fn expect(&self, deps: &[Dependency]) {
        let mut entries = self.entries.lock().unwrap();
        for dep in deps {
            entries.entry(*dep).or_insert_with(|| Entry {
                state: "unknown",
                cause: None,
                last_error: None,
                fix_variable: None,
                since: Utc::now(),
                last_logged: None,
            });
        }
    }

    /// Records the outcome of one attempt; logs when the state changes (a misconfiguration as
    /// ERROR, an outage as WARN, the recovery as INFO), and when the cause changes within the
    /// same state at most once a minute (an outage's cause may alternate between attempts).
    /// Returns whether it logged.
    pub fn report(&self, log: &Logger, dep: Dependency, outcome: Result<(), &DependencyError>) -> bool {
        let news = self.update(dep, outcome, true);
        if news {
            log_change(log, dep, outcome);
        }
        news
    }

    /// Like [`report`](Self::report), for a probe that sees only part of what can go wrong (a
    /// TCP connection, a login): its success clears only the states in `clears`, so that it does
    /// not hide, then bring back, a failure it cannot see (a refused topic, a failed migration).
    pub fn report_probe(&self, log: &Logger, dep: Dependency, outcome: Result<(), &DependencyError>, clears: &[&str]) -> bool {
        let current = self.entries.lock().unwrap().get(&dep).map(|e| e.state);
        if outcome.is_ok() && current.is_some_and(|state| !["unknown", "up"].contains(&state) && !clears.contains(&state)) {
            return false;
        }
        self.report(log, dep, outcome)
    }

    /// Records the outcome without logging (for callers that log each failure themselves).
    pub fn record(&self, dep: Dependency, outcome: Result<(), &DependencyError>) {
        self.update(dep, outcome, false);
    }

    /// Records the outcome; returns whether it is news to log.
    fn update(&self, dep: Dependency, outcome: Result<(), &DependencyError>, logging: bool) -> bool {
        let mut entries = self.entries.lock().unwrap();
        let previous = entries.get(&dep).cloned();
        let (state, cause, fix_variable) = match outcome {
            Ok(()) => ("up", None, None),
            Err(e) => (e.state(), Some(e.cause()), e.is_misconfiguration().then(|| dep.variable())),
        };
        let same_state = previous.as_ref().is_some_and(|p| p.state == state);
        let same_cause = same_state && previous.as_ref().is_some_and(|p| p.cause == cause);
        let since = match &previous {
            Some(p) if same_state => p.since,
            _ => Utc::now(),
        };
        // The last error stays shown after a recovery: "up since 12:03, last error: ...".
        let last_error = outcome.err().map(|e| e.to_string()).or_else(|| previous.as_ref().and_then(|p| p.last_error.clone()));
        let last_logged = previous.as_ref().and_then(|p| p.last_logged);
        // The first success is not news; the first failure is.
        let first_success = outcome.is_ok() && previous.as_ref().is_none_or(|p| p.state == "unknown");
        let news = !first_success && (!same_state || (!same_cause && last_logged.is_none_or(|t| t.elapsed() >= SAME_STATE_LOG_INTERVAL)));
        let last_logged = if news && logging { Some(Instant::now()) } else { last_logged };
        entries.insert(dep, Entry { state, cause, last_error, fix_variable, since, last_logged });
        news
    }

    pub fn snapshot(&self) -> Vec<DependencyStatus> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|(dep, e)| DependencyStatus {
                name: dep.name(),
                state: e.state,
                last_error: e.last_error.clone(),
                since: e.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                fix_variable: e.fix_variable,
            })
            .collect()
    }

    /// One line naming each dependency that is not up, for `/readyz`; None when all are up.
    pub fn not_up(&self) -> Option<String> {
        let down: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|d| d.state != "up")
            .map(|d| match &d.last_error {
                Some(e) if d.state != "unknown" => format!("{} {} since {}: {e}", d.name, d.state, d.since),
                _ => format!("{} {} since {}", d.name, d.state, d.since),
            })
            .collect();
        (!down.is_empty()).then(|| down.join("; "))
    }
}

fn log_change(log: &Logger, dep: Dependency, outcome: Result<(), &DependencyError>) {
    let name = dep.name();
    match outcome {
        Ok(()) => info!(log, "{} reachable again", name; "labels.dependency" => name),
        Err(e @ DependencyError::Misconfigured { variable, .. }) => {
            error!(log, "{} misconfigured: check {}", name, variable; "labels.dependency" => name, "labels.variable" => *variable,
                "error.type" => "misconfigured", "error.message" => e.to_string())
        }
        Err(e @ DependencyError::Unreachable { address, .. }) => {
            warn!(log, "{} unreachable at {}", name, address; "labels.dependency" => name, "labels.address" => address.clone(),
                "error.type" => "unreachable", "error.message" => e.to_string())
        }
        Err(e) => warn!(log, "{} failing", name; "labels.dependency" => name, "error.type" => "failed", "error.message" => e.to_string()),
    }
}

/// Retries `attempt` with `backoff` until it succeeds (`Some`) or `stop` is cancelled (`None`),
/// reporting each outcome: the log says each change of cause once, not each attempt.
pub async fn wait_until_usable<T, F, Fut>(
    log: &Logger,
    dep: Dependency,
    backoff: crate::backoff::Backoff,
    stop: &tokio_util::sync::CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DependencyError>>,
{
    let mut n: u32 = 0;
    loop {
        let outcome = tokio::select! {
            r = attempt() => r,
            _ = stop.cancelled() => return None,
        };
        match outcome {
            Ok(v) => {
                DEPENDENCIES.report(log, dep, Ok(()));
                return Some(v);
            }
            Err(e) => {
                DEPENDENCIES.report(log, dep, Err(&e));
                if !crate::backoff::sleep_unless_stopped(stop, backoff.delay(n)).await {
                    return None;
                }
                n = n.saturating_add(1);
            }
        }
    }
}

/// The cause of an I/O error, in the words a person searches for.
pub fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut | K::WouldBlock => "connection timed out".into(),
        K::ConnectionReset => "connection reset".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Tries a TCP connection to each `host:port` in turn; Ok at the first that accepts.
pub fn probe_tcp(dep: Dependency, addresses: &[String], timeout: std::time::Duration) -> Result<(), DependencyError> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for address in addresses {
        let resolved = match address.to_socket_addrs() {
            Ok(r) => r.collect::<Vec<_>>(),
            Err(e) => {
                last = Some((address.clone(), format!("host name not resolved ({e})")));
                continue;
            }
        };
        for sa in resolved {
            match std::net::TcpStream::connect_timeout(&sa, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some((address.clone(), io_cause(&e))),
            }
        }
    }
    let (address, cause) = last.unwrap_or_else(|| (addresses.join(","), "no address to try".into()));
    Err(DependencyError::Unreachable { dependency: dep, address, cause })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buf) -> Vec<serde_json::Value> {
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn role_missing() -> DependencyError {
        DependencyError::Misconfigured {
            dependency: Dependency::Postgres,
            variable: "DATABASE_URL",
            problem: "role \"wrong\" does not exist".into(),
            fix: "the user name",
        }
    }

    #[test]
    fn the_same_cause_is_logged_once_and_each_change_once() {
        let buf = Buf::default();
        let log = crate::logging::logger(buf.clone(), slog::Level::Info, "test");
        let deps = Dependencies::default();
        deps.expect(&[Dependency::Postgres]);
        assert!(!deps.report(&log, Dependency::Postgres, Ok(())), "the first success is not news");
        for _ in 0..50 {
            deps.report(&log, Dependency::Postgres, Err(&role_missing()));
        }
        let refused = DependencyError::Unreachable {
            dependency: Dependency::Postgres,
            address: "127.0.0.1:1".into(),
            cause: "connection refused".into(),
        };
        for _ in 0..50 {
            deps.report(&log, Dependency::Postgres, Err(&refused));
        }
        deps.report(&log, Dependency::Postgres, Ok(()));
        deps.report(&log, Dependency::Postgres, Ok(()));
        let got: Vec<(String, String)> =
            lines(&buf).iter().map(|l| (l["log.level"].as_str().unwrap().into(), l["message"].as_str().unwrap().into())).collect();
        let want = [
            ("error", "Postgres misconfigured: check DATABASE_URL"),
            ("warn", "Postgres unreachable at 127.0.0.1:1"),
            ("info", "Postgres reachable again"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
        let status = &deps.snapshot()[0];
        assert_eq!((status.name, status.state), ("Postgres", "up"));
        assert!(status.last_error.as_deref().unwrap().contains("connection refused"), "{status:?}");
    }

    fn unreachable(cause: &str) -> DependencyError {
        DependencyError::Unreachable { dependency: Dependency::Kafka, address: "k:9092".into(), cause: cause.into() }
    }

    #[test]
    fn alternating_causes_of_one_outage_are_logged_once_a_minute() {
        let buf = Buf::default();
        let log = crate::logging::logger(buf.clone(), slog::Level::Info, "test");
        let deps = Dependencies::default();
        for _ in 0..20 {
            deps.report(&log, Dependency::Kafka, Err(&unreachable("connection refused")));
            deps.report(&log, Dependency::Kafka, Err(&unreachable("no broker answers")));
        }
        assert_eq!(lines(&buf).len(), 1, "{:?}", lines(&buf));
    }

    #[test]
    fn a_probe_does_not_clear_a_failure_it_cannot_see() {
        let buf = Buf::default();
        let log = crate::logging::logger(buf.clone(), slog::Level::Info, "test");
        let deps = Dependencies::default();
        let refused = DependencyError::Misconfigured {
            dependency: Dependency::Kafka,
            variable: "KAFKA_TOPIC",
            problem: "TopicAuthorizationFailed".into(),
            fix: "the ACLs",
        };
        for _ in 0..10 {
            deps.report(&log, Dependency::Kafka, Err(&refused));
            deps.report_probe(&log, Dependency::Kafka, Ok(()), &["unreachable"]);
        }
        assert_eq!(lines(&buf).len(), 1, "one ERROR, no flapping: {:?}", lines(&buf));
        assert_eq!(deps.snapshot()[0].state, "misconfigured");
        deps.report(&log, Dependency::Kafka, Err(&unreachable("connection refused")));
        deps.report_probe(&log, Dependency::Kafka, Ok(()), &["unreachable"]);
        assert_eq!(deps.snapshot()[0].state, "up", "what the probe sees, it clears");
    }

    #[test]
    fn a_closed_port_is_unreachable_with_its_address_and_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let e = probe_tcp(Dependency::Kafka, std::slice::from_ref(&addr), std::time::Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.to_string(), format!("Kafka unreachable at {addr}: connection refused; retrying until it is back"));
    }
}
