//! `nasa-ingest check`: validates the configuration (done before this runs) and tries everything
//! the enabled roles need, once, the way the daemon would: Kafka's metadata and the topics, the
//! consumer group's protocol and session timeout against the brokers' settings, the Postgres
//! login and migration state, one NASA API search, DATA_DIR (writable, and its outbox not
//! locked by another producer) and HTTP_ADDR. One line per
//! check, ✓ or ✗ with what to fix; exit 0 when all pass, 1 otherwise.

use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::datadir::{DataDirError, DataDirLock};
use crate::deps::{probe_tcp, Dependency, DependencyError};
use crate::nasa::NasaClient;
use crate::{db, group_admin, kafka};

/// The outcome of one check: what was found, or what is wrong and what to do.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Result<String, CheckFailed>,
}

/// What a failed check found, and what to change. The line names the check (Kafka, Postgres…),
/// so a dependency's failure is told without its name.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    #[error("{}", .0.summary())]
    Dependency(#[from] DependencyError),
    #[error("{0}; check KAFKA_BROKERS")]
    KafkaClient(#[source] rdkafka::error::KafkaError),
    #[error("topic {topic}: {error:?}; check KAFKA_TOPIC and the broker's ACLs")]
    Topic { topic: String, error: rdkafka::types::RDKafkaRespErr },
    #[error(transparent)]
    GroupProtocol(#[from] group_admin::ProtocolRefused),
    #[error(transparent)]
    Migrations(#[from] db::MigrationStateUnreadable),
    #[error(transparent)]
    DataDir(#[from] DataDirCheckError),
    #[error(transparent)]
    HttpAddr(#[from] HttpAddrNotBindable),
}

impl Check {
    fn new(name: &'static str, outcome: Result<String, CheckFailed>) -> Check {
        Check { name, outcome }
    }

    /// `✓ name: detail` or `✗ name: problem and fix`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Ok(detail) => format!("✓ {}: {detail}", self.name),
            Err(problem) => format!("✗ {}: {problem}", self.name),
        }
    }
}

/// Runs every check of the enabled roles, in the order the daemon needs them.
pub async fn run(config: &Config) -> Vec<Check> {
    let mut checks = vec![Check::new("configuration", Ok(format!("valid; roles {}", config.roles.label())))];
    let kafka = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || check_kafka(&config)).await.expect("the Kafka check does not panic")
    };
    let kafka_answers = kafka.outcome.is_ok();
    checks.push(kafka);
    if config.roles.consumer && kafka_answers {
        checks.push(check_group(config).await);
    }
    if let Some(url) = config.postgres.url.clone().filter(|_| config.roles.consumer) {
        checks.extend(tokio::task::spawn_blocking(move || check_postgres(&url)).await.expect("the Postgres check does not panic"));
    }
    if config.roles.producer {
        checks.push(check_nasa(config).await);
        checks.push(Check::new("DATA_DIR", check_data_dir(&config.outbox.data_dir).map_err(CheckFailed::from)));
    }
    checks.push(Check::new("HTTP_ADDR", check_http_addr(config.http.addr).map_err(CheckFailed::from)));
    checks
}

/// A broker answers, its metadata lists the cluster, and the topics exist or can be created.
fn check_kafka(config: &Config) -> Check {
    let outcome = (|| {
        let addresses = kafka::broker_addresses(&config.kafka.brokers);
        probe_tcp(Dependency::Kafka, &addresses, Duration::from_secs(3))?;
        let quiet = kafka::LogContext { log: slog::Logger::root(slog::Discard, slog::o!()) };
        let client: BaseConsumer<kafka::LogContext> =
            kafka::base_config(&config.kafka.brokers).create_with_context(quiet).map_err(CheckFailed::KafkaClient)?;
        let metadata = client.fetch_metadata(None, Duration::from_secs(5)).map_err(|e| kafka::classify(&e, &addresses, &[]))?;
        let mut found = Vec::new();
        for name in [&config.kafka.topic, &config.kafka.dlq_topic] {
            match metadata.topics().iter().find(|t| t.name() == name.as_str()) {
                Some(t) => match t.error() {
                    Some(error) => return Err(CheckFailed::Topic { topic: name.clone(), error }),
                    None => found.push(format!("{name} ({} partitions)", t.partitions().len())),
                },
                None => found.push(format!("{name} (missing; created at start)")),
            }
        }
        Ok(format!("{} broker(s) at {}; topics {}", metadata.brokers().len(), config.kafka.brokers, found.join(", ")))
    })();
    Check::new("Kafka", outcome)
}

/// The brokers accept KAFKA_GROUP_PROTOCOL; whether they allow KAFKA_SESSION_TIMEOUT_SECS (the
/// daemon goes on without it, with a WARN).
async fn check_group(config: &Config) -> Check {
    let kafka = &config.kafka;
    let (protocol, secs) = (kafka.group_protocol, kafka.session_timeout.as_secs());
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    let outcome = match group_admin::read_limits(&kafka.brokers, &quiet).await {
        Err(e) => Ok(format!(
            "cannot read the brokers' group settings ({e}); KAFKA_GROUP_PROTOCOL={} is tried when the consumer joins",
            protocol.name()
        )),
        Ok(limits) if !limits.accepts(protocol) => Err(group_admin::ProtocolRefused { accepted: limits.accepted() }.into()),
        Ok(limits) => {
            let session = match limits.refuses(protocol, kafka.session_timeout) {
                None => format!("KAFKA_SESSION_TIMEOUT_SECS={secs} within their bounds"),
                Some(bound) => format!(
                    "KAFKA_SESSION_TIMEOUT_SECS={secs} (or its heartbeat) is outside their {}={} ms: change that on the brokers, else the group keeps their session timeout",
                    bound.setting,
                    bound.limit.as_millis()
                ),
            };
            Ok(format!("KAFKA_GROUP_PROTOCOL={} accepted (the brokers accept {}); {session}", protocol.name(), limits.accepted()))
        }
    };
    Check::new("consumer group", outcome)
}

/// The login (user, password, database) and the migration state.
fn check_postgres(url: &crate::config::DatabaseUrl) -> Vec<Check> {
    let mut conn = match db::check_login(url) {
        Ok(conn) => conn,
        Err(e) => return vec![Check::new("Postgres", Err(e.into()))],
    };
    let login = Check::new("Postgres", Ok(format!("logged in at {}", url.redacted())));
    let migrations = match db::pending_migrations(&mut conn) {
        Ok(pending) if pending.is_empty() => Ok("all applied".to_owned()),
        Ok(pending) => Ok(format!("{} pending ({}): applied at start, or by `nasa-ingest migrate`", pending.len(), pending.join(", "))),
        Err(e) => Err(e.into()),
    };
    vec![login, Check::new("migrations", migrations)]
}

/// One search, as the Fetcher makes it.
async fn check_nasa(config: &Config) -> Check {
    let client = NasaClient::new(config.nasa.api_url.clone(), config.nasa.image_variant, config.nasa.timeout);
    let query = config.nasa.query.as_deref().unwrap_or(crate::config::RANDOM_TOPICS[0]);
    let outcome = match client.search(query, 1).await {
        Ok(page) => Ok(format!("{} answers: {} hits for {query:?}", config.nasa.api_url, page.metadata.total_hits)),
        Err(e) => Err(e.as_dependency_error(&client.address()).into()),
    };
    Check::new("NASA API", outcome)
}

/// DATA_DIR is no writable directory: a setting to change.
#[derive(Debug, thiserror::Error)]
#[error("DATA_DIR={} is not writable ({source}); make it a writable directory or point DATA_DIR elsewhere", dir.display())]
pub struct DataDirNotWritable {
    pub dir: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Why DATA_DIR cannot hold this producer's outbox.
#[derive(Debug, thiserror::Error)]
pub enum DataDirCheckError {
    #[error(transparent)]
    NotWritable(#[from] DataDirNotWritable),
    #[error(transparent)]
    InUse(#[from] DataDirError),
}

/// A file can be created, written and removed in DATA_DIR (it is created when missing), and no
/// other producer holds its outbox's lock.
pub fn check_data_dir(dir: &Path) -> Result<String, DataDirCheckError> {
    try_writing(dir).map_err(|source| DataDirNotWritable { dir: dir.to_owned(), source })?;
    // Taken and dropped at once: only whether another process holds it matters here.
    DataDirLock::acquire(dir)?;
    Ok(format!("{} is writable and not in use by another producer", dir.display()))
}

/// At the daemon's start: a DATA_DIR that is no writable directory (missing permission, a file in
/// the way) is a setting to fix. A full or read-only filesystem is not: it is a passing fault the
/// producer waits out (it keeps its event and retries), so it does not stop the start.
pub fn check_data_dir_setting(dir: &Path) -> Result<(), DataDirNotWritable> {
    match try_writing(dir) {
        Err(source) if !is_passing_disk_fault(&source) => Err(DataDirNotWritable { dir: dir.to_owned(), source }),
        _ => Ok(()),
    }
}

fn try_writing(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".check-{}", std::process::id()));
    std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b"check")).and_then(|()| std::fs::remove_file(&probe))
}

fn is_passing_disk_fault(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::StorageFull | K::ReadOnlyFilesystem | K::QuotaExceeded)
}

/// HTTP_ADDR is taken (or not an address of this host): a setting to change, or a process to stop.
#[derive(Debug, thiserror::Error)]
#[error("HTTP_ADDR={addr} cannot be bound ({source}); stop what listens there or choose another port")]
pub struct HttpAddrNotBindable {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The address can be bound now (nothing else listens there).
pub fn check_http_addr(addr: std::net::SocketAddr) -> Result<String, HttpAddrNotBindable> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(format!("{addr} is free")),
        Err(source) => Err(HttpAddrNotBindable { addr, source }),
    }
}
