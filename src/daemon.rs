//! The composition root: checks the dependencies, starts the actors of the enabled roles under
//! one [`Supervisor`](crate::supervision::Supervisor), wires their stable addresses ([`Slot`]s),
//! serves the HTTP endpoint, and shuts everything down in order on SIGTERM/SIGINT or when an
//! actor passes its restart limit.

use actix::prelude::*;
use slog::{info, Logger};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::actors::downloader::{DownloadLimits, Downloader};
use crate::actors::fetcher::{Fetcher, FetcherReports, FetcherSettings, LastFetch, StopFetching};
use crate::actors::publisher::{self, Flush, Publisher};
use crate::actors::storer::{BatchLimits, Storer};
use crate::actors::subscriber::{ConsumerState, ConsumerStatus, Drain, Pipeline, Subscriber};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::consumer::MemberSettings;
use crate::datadir::Owner;
use crate::db;
use crate::deps::{probe_tcp, Dependencies, Dependency};
use crate::dlq::reason::Reason;
use crate::dlq::DlqWatch;
use crate::errors::Transient;
use crate::fault_injection::InjectedPanics;
use crate::group_admin;
use crate::http::status::{ActorProbe, StatusSources};
use crate::http::{self, AppState, CrashFn};
use crate::kafka;
use crate::logging::{for_component, RecentProblems};
use crate::metrics::{KnownLabels, Rates, METRICS};
use crate::nasa::{NasaClient, NasaError};
use crate::outbox::Outbox;
use crate::shutdown::{self, CancellationToken};
use crate::supervision::{ChildSpec, Crash, Outcome, Restart, RestartCounts, RestartHook, RestartType, Slot, StartFn, Supervisor};

/// Postgres connections: the Storer's statements (two writes and two checks at most at once),
/// plus the status page and the dependency probes.
const POOL_SIZE: u32 = 8;
/// In-flight events get this long to finish at shutdown (the whole exit stays under 10 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);

/// Exit code when an actor passed its restart limit: a container orchestrator restarts the process.
pub const EXIT_RESTART_LIMIT: u8 = 1;

/// Exit code when a setting the process cannot start with was found at start (HTTP_ADDR in
/// use, DATA_DIR unwritable): the same as a bad value, since a person has to change something.
pub const EXIT_SETTING: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the producer's outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("cannot create a Kafka client: {0}; check KAFKA_BROKERS")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    HttpAddr(#[from] crate::check::HttpAddrNotBindable),
    #[error(transparent)]
    DataDir(#[from] crate::check::DataDirNotWritable),
    #[error(transparent)]
    GroupProtocol(#[from] crate::group_admin::ProtocolRefused),
    #[error("the dependencies were not usable within STARTUP_TIMEOUT_SECS={secs}: {waiting}; fix them, or raise STARTUP_TIMEOUT_SECS (0 waits forever)")]
    StartupTimeout { secs: u64, waiting: String },
    /// SIGTERM or SIGINT came while start-up waited for a dependency: not a failure.
    #[error("stopped by a signal during start-up")]
    Stopped,
}

impl StartError {
    /// 2 for a setting to change, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::HttpAddr(_) | StartError::DataDir(_) | StartError::GroupProtocol(_) => EXIT_SETTING,
            StartError::Outbox(_) | StartError::Kafka(_) | StartError::StartupTimeout { .. } => 1,
            StartError::Stopped => 0,
        }
    }
}

/// Logs why the process cannot start, in one ERROR line; returns the exit code.
fn start_failed(log: &Logger, e: StartError) -> u8 {
    slog::error!(log, "cannot start"; "error.type" => "start", "error.message" => e.to_string());
    e.exit_code()
}

/// The stable addresses of every actor.
#[derive(Clone)]
struct Slots {
    fetcher: Slot<Fetcher>,
    publisher: Slot<Publisher>,
    subscriber: Slot<Subscriber>,
    downloader: Slot<Downloader>,
    storer: Slot<Storer>,
}

impl Slots {
    fn new() -> Slots {
        Slots {
            fetcher: Slot::new("fetcher"),
            publisher: Slot::new("publisher"),
            subscriber: Slot::new("subscriber"),
            downloader: Slot::new("downloader"),
            storer: Slot::new("storer"),
        }
    }

    /// The actors of the enabled roles, in start order, for the status.
    fn probes(&self, config: &Config) -> Vec<Box<dyn ActorProbe>> {
        fn probe<A: Actor<Context = Context<A>>>(slot: &Slot<A>) -> Box<dyn ActorProbe> {
            Box::new(slot.clone())
        }
        let mut out = Vec::new();
        if config.roles.consumer {
            out.extend([probe(&self.storer), probe(&self.downloader), probe(&self.subscriber)]);
        }
        if config.roles.producer {
            out.extend([probe(&self.publisher), probe(&self.fetcher)]);
        }
        out
    }

    fn crash_fns(&self) -> HashMap<&'static str, CrashFn> {
        fn crash_fn<A>(slot: &Slot<A>) -> (&'static str, CrashFn)
        where
            A: Actor<Context = Context<A>> + Handler<Crash>,
        {
            let slot = slot.clone();
            (slot.name(), Box::new(move || slot.current().map(|a| a.do_send(Crash)).is_some()))
        }
        HashMap::from([
            crash_fn(&self.fetcher),
            crash_fn(&self.publisher),
            crash_fn(&self.subscriber),
            crash_fn(&self.downloader),
            crash_fn(&self.storer),
        ])
    }
}

/// The handles behind the status, made here: each goes to what writes it, and to the endpoint,
/// which reads it.
#[derive(Default)]
struct StatusHandles {
    /// Written by the supervisor's restart hook and the Subscriber's rejoins.
    restarts: RestartCounts,
    /// Written by start-up's waits, the dependency probes, the Postgres pool and the Fetcher.
    dependencies: Dependencies,
    /// Written by the root logger (made by `main`).
    problems: RecentProblems,
    /// Written by the Fetcher.
    fetches: LastFetch,
    /// Written by the sampling loop.
    rates: Rates,
}

/// Runs the daemon until a signal or a passed restart limit; returns the process exit code.
/// `problems` is where `root` keeps its WARN and ERROR lines.
pub async fn run(config: Config, root: Logger, problems: RecentProblems) -> u8 {
    let log = for_component(&root, "supervisor");
    info!(log, "starting"; "labels.roles" => config.roles.label(), "labels.kafka_brokers" => &config.kafka.brokers,
        "labels.database" => config.postgres.url.as_ref().map(|u| u.redacted()));
    let shutdown = shutdown::on_signal(log.clone(), "signal received");
    let slots = Slots::new();
    let handles = StatusHandles { problems, ..StatusHandles::default() };
    let mut supervisor = Supervisor::new(log.clone(), restart_hook(handles.restarts.clone()));
    expect_metric_labels();
    handles.dependencies.expect(&dependencies(&config));
    let pool = config
        .postgres
        .url
        .as_ref()
        .filter(|_| config.roles.consumer)
        .map(|u| db::reporting_pool(u, POOL_SIZE, handles.dependencies.clone(), for_component(&root, "postgres")));
    let app = match app_state(&config, &root, &slots, pool.clone(), handles) {
        Ok(app) => app,
        Err(e) => return start_failed(&log, e),
    };
    let endpoint = match http::start(config.http.addr, app.clone()) {
        Ok(endpoint) => endpoint,
        Err(source) => return start_failed(&log, crate::check::HttpAddrNotBindable { addr: config.http.addr, source }.into()),
    };
    actix::spawn(shutdown.clone().run_until_cancelled_owned(watch_dependencies(
        config.clone(),
        app.status.dependencies.clone(),
        for_component(&root, "dependencies"),
    )));
    actix::spawn(shutdown.clone().run_until_cancelled_owned(sample_rates(app.status.rates.clone())));
    let started = tokio::select! {
        // The signal first: start-up's own waits end with it too, and that is no failure.
        biased;
        _ = shutdown.cancelled() => { info!(log, "signal received during start-up; exiting"); return 0; }
        r = prepare(&config, &root, &slots, &mut supervisor, pool, &app, &shutdown) => r,
        _ = startup_deadline(config.retries.startup_timeout) => {
            let secs = config.retries.startup_timeout.unwrap_or_default().as_secs();
            let waiting = app.status.dependencies.not_up().unwrap_or_else(|| "still starting".into());
            return start_failed(&log, StartError::StartupTimeout { secs, waiting });
        }
    };
    match started {
        Err(StartError::Stopped) => {
            info!(log, "signal received during start-up; exiting");
            return 0;
        }
        Err(e) => return start_failed(&log, e),
        Ok(()) => {}
    }
    info!(log, "started"; "labels.roles" => config.roles.label());
    app.status.started.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcome = supervisor.run(shutdown.cancelled_owned()).await;
    stop(&slots, &log).await;
    endpoint.stop().await;
    match outcome {
        Outcome::Shutdown => 0,
        Outcome::LimitPassed { .. } => EXIT_RESTART_LIMIT,
    }
}

/// Starts at 0 every series whose label values are known: each actor's restarts, each
/// dead-letter reason, each retry cause.
fn expect_metric_labels() {
    let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let causes: Vec<&str> = Transient::KINDS.into_iter().chain(NasaError::KINDS).collect();
    METRICS.expect(KnownLabels { actors: &crate::actors::NAMES, dead_letter_reasons: &reasons, retry_causes: &causes });
}

/// Each restart counts in `/metrics` and on the status page.
fn restart_hook(restarts: RestartCounts) -> RestartHook {
    Box::new(move |r: &Restart<'_>| {
        restarts.record(r.actor, r.reason);
        METRICS.restarts.with_label_values(&[r.actor]).inc();
    })
}

/// Waits for Kafka and Postgres, then registers the children of the enabled roles.
fn app_state(
    config: &Config,
    root: &Logger,
    slots: &Slots,
    pool: Option<db::PgPool>,
    handles: StatusHandles,
) -> Result<Arc<AppState>, StartError> {
    let http_log = for_component(root, "http");
    let kafka = kafka::base_config(&config.kafka.brokers).create_with_context(kafka::LogContext { log: http_log.clone() })?;
    let outbox = if config.roles.producer {
        // Writable now, or the first event would fail much later (a full or read-only disk is a
        // passing fault the producer waits out: it starts anyway).
        crate::check::check_data_dir_setting(&config.outbox.data_dir)?;
        Some(Outbox::open(&config.outbox.data_dir, Owner::Daemon)?)
    } else {
        None
    };
    let StatusHandles { restarts, dependencies, problems, fetches, rates } = handles;
    let status = StatusSources {
        roles: config.roles.label(),
        actors: slots.probes(config),
        restarts,
        dependencies,
        fetches: config.roles.producer.then_some(fetches),
        problems,
        metrics: &METRICS,
        rates,
        outbox,
        consumer: config.roles.consumer.then(ConsumerStatus::default),
        dead_letters: DlqWatch::default(),
        topic: config.kafka.topic.clone(),
        group_id: config.kafka.group_id.clone(),
        started: AtomicBool::new(false),
        since: std::time::Instant::now(),
    };
    Ok(Arc::new(AppState {
        log: http_log,
        crash: slots.crash_fns(),
        admin_token: config.http.admin_token.clone(),
        injected_panics: InjectedPanics::default(),
        pool,
        kafka,
        status,
        log_search: config.observability.log_search_url.clone(),
    }))
}

async fn prepare(
    config: &Config,
    root: &Logger,
    slots: &Slots,
    supervisor: &mut Supervisor,
    pool: Option<db::PgPool>,
    app: &AppState,
    shutdown: &CancellationToken,
) -> Result<(), StartError> {
    let log = &for_component(root, "startup");
    let retry = config.retries.backoff();
    let topics = [config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    let ensure_topics = || kafka::ensure_topics_checked(&config.kafka.brokers, &topics, log);
    app.status.dependencies.wait_until_usable(log, Dependency::Kafka, retry, shutdown, ensure_topics).await.ok_or(StartError::Stopped)?;
    app.status.dead_letters.start(config.kafka.brokers.clone(), config.kafka.dlq_topic.clone(), for_component(root, "dlq-watch"));
    let policy = config.supervisor.restart_policy();
    let mut add = |name: &'static str, start: StartFn| supervisor.add(ChildSpec { name, restart: RestartType::Permanent, policy, start });
    if config.roles.consumer {
        let pool = pool.expect("the consumer role has a pool");
        migrate_when_usable(config, log, retry, &pool, &app.status.dependencies, shutdown).await?;
        let session_timeout = group_admin::prepare_group(&config.kafka, log).await?;
        for (name, start) in consumer_children(config, root, slots, retry, pool, app, session_timeout)? {
            add(name, start);
        }
    }
    if config.roles.producer {
        let outbox = app.status.outbox.clone().expect("the producer role has an outbox");
        let fetches = app.status.fetches.clone().expect("the producer role records its fetches");
        let reports = FetcherReports { fetches, dependencies: app.status.dependencies.clone() };
        for (name, start) in producer_children(config, root, slots, retry, outbox, reports) {
            add(name, start);
        }
    }
    Ok(())
}

type Children = Vec<(&'static str, StartFn)>;

/// Waits until Postgres takes the login and the migrations are applied.
async fn migrate_when_usable(
    config: &Config,
    log: &Logger,
    retry: Backoff,
    pool: &db::PgPool,
    dependencies: &Dependencies,
    shutdown: &CancellationToken,
) -> Result<(), StartError> {
    let url = config.postgres.url.clone().expect("the consumer role has a DATABASE_URL");
    let migrations = || {
        let (pool, url) = (pool.clone(), url.clone());
        // Log in outside the pool first: its answer comes at once and says what is wrong.
        let login_and_migrate = move || {
            db::check_login(&url)?;
            db::migrate(&pool).map_err(|e| db::classify_connection(&e.to_string(), &url.address()))
        };
        async move { tokio::task::spawn_blocking(login_and_migrate).await.expect("migrations do not panic") }
    };
    let applied =
        dependencies.wait_until_usable(log, Dependency::Postgres, retry, shutdown, migrations).await.ok_or(StartError::Stopped)?;
    info!(log, "database ready"; "labels.migrations_applied" => applied.len());
    Ok(())
}

/// Storer, Downloader and Subscriber. The pool and the consumer outlive their restarts.
/// `session_timeout`: the classic member's, within the brokers' bounds.
fn consumer_children(
    config: &Config,
    root: &Logger,
    slots: &Slots,
    retry: Backoff,
    pool: db::PgPool,
    app: &AppState,
    session_timeout: Duration,
) -> Result<Children, StartError> {
    let sub_log = for_component(root, "subscriber");
    let pipeline = Pipeline {
        storer: slots.storer.clone(),
        downloader: slots.downloader.clone(),
        dlq: kafka::producer(&config.kafka.brokers, config.outbox.publish_timeout, sub_log.clone())?,
        topic: config.kafka.topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        backoff: retry,
        log: sub_log.clone(),
        last_retry: Default::default(),
        retry_lines: Default::default(),
        injected_panics: app.injected_panics.clone(),
    };
    let member = MemberSettings {
        brokers: config.kafka.brokers.clone(),
        group_id: config.kafka.group_id.clone(),
        topic: config.kafka.topic.clone(),
        protocol: config.kafka.group_protocol,
        session_timeout,
        instance_id: config.kafka.group_instance_id.clone(),
        log: sub_log,
    };
    let (restarts, status) = (app.status.restarts.clone(), app.status.consumer.clone().expect("the consumer role has a status"));
    let consumer = ConsumerState::new(member, config.consumer.max_in_flight, config.consumer.stall, pipeline, restarts, status)?;
    let (storer_slot, downloader_slot, subscriber_slot) = (slots.storer.clone(), slots.downloader.clone(), slots.subscriber.clone());
    let (hosts, max_bytes, timeout) =
        (config.consumer.allowed_image_hosts.clone(), config.consumer.max_image_bytes, config.consumer.download_timeout);
    let batches = BatchLimits::default();
    let limits = DownloadLimits::new(config.consumer.concurrency, config.consumer.max_image_bytes, batches.bytes_taken_in());
    Ok(vec![
        (
            "storer",
            Box::new(move |l| {
                storer_slot.set(Some(Storer::new(pool.clone(), batches, l).start()));
                Ok(())
            }),
        ),
        (
            "downloader",
            Box::new(move |l| {
                downloader_slot.set(Some(Downloader::new(hosts.clone(), max_bytes, timeout, limits.clone(), l).start()));
                Ok(())
            }),
        ),
        (
            "subscriber",
            Box::new(move |l| {
                subscriber_slot.set(Some(Subscriber::new(consumer.clone(), l).start()));
                Ok(())
            }),
        ),
    ])
}

/// Publisher and Fetcher. Each Publisher incarnation has a fresh producer; the outbox is on disk.
fn producer_children(config: &Config, root: &Logger, slots: &Slots, retry: Backoff, outbox: Outbox, reports: FetcherReports) -> Children {
    let (brokers, topic) = (config.kafka.brokers.clone(), config.kafka.topic.clone());
    let publish_backoff = config.outbox.publish_backoff();
    let (pub_log, fetch_log) = (for_component(root, "publisher"), for_component(root, "fetcher"));
    let nasa = NasaClient::new(config.nasa.api_url.clone(), config.nasa.image_variant, config.nasa.timeout);
    let (query, interval, publish_timeout) = (config.nasa.query.clone(), config.nasa.interval, config.outbox.publish_timeout);
    let (publisher_slot, fetcher_slot, publisher_for_fetcher) = (slots.publisher.clone(), slots.fetcher.clone(), slots.publisher.clone());
    vec![
        (
            "publisher",
            Box::new(move |l| {
                let new_producer = publisher::producer_factory(brokers.clone(), pub_log.clone());
                let actor =
                    Publisher::new(new_producer, topic.clone(), outbox.clone(), publish_backoff, publish_timeout, pub_log.clone(), l)?;
                publisher_slot.set(Some(actor.start()));
                Ok(())
            }),
        ),
        (
            "fetcher",
            Box::new(move |l| {
                let settings = FetcherSettings { query: query.clone(), interval, backoff: retry };
                let actor = Fetcher::new(nasa.clone(), publisher_for_fetcher.clone(), settings, reports.clone(), fetch_log.clone(), l);
                fetcher_slot.set(Some(actor.start()));
                Ok(())
            }),
        ),
    ]
}

/// Resolves when STARTUP_TIMEOUT_SECS has passed; never when it is 0.
async fn startup_deadline(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// The dependencies of the enabled roles.
fn dependencies(config: &Config) -> Vec<Dependency> {
    let mut deps = vec![Dependency::Kafka];
    if config.roles.consumer {
        deps.push(Dependency::Postgres);
    }
    if config.roles.producer {
        deps.push(Dependency::NasaApi);
    }
    deps
}

/// How often the dependencies are tried while the daemon runs (for /status and the page).
const DEPENDENCY_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Tries Kafka (a TCP connection to a broker) and Postgres (a login) every few seconds, so that
/// /status says what is wrong even while no event is in flight. The NASA API is reported by
/// the Fetcher's own requests. A change of cause is logged once.
async fn watch_dependencies(config: Config, dependencies: Dependencies, log: Logger) {
    let brokers = kafka::broker_addresses(&config.kafka.brokers);
    let database = config.postgres.url.clone().filter(|_| config.roles.consumer);
    loop {
        let (brokers, database) = (brokers.clone(), database.clone());
        let results = tokio::task::spawn_blocking(move || {
            let kafka = probe_tcp(Dependency::Kafka, &brokers, Duration::from_secs(2));
            let postgres = database.map(|url| db::check_login(&url).map(drop));
            (kafka, postgres)
        })
        .await;
        if let Ok((kafka, postgres)) = results {
            // A TCP connection shows only whether Kafka is reachable; a login, also whether
            // DATABASE_URL is right (not whether the migrations ran).
            dependencies.report_probe(&log, Dependency::Kafka, kafka.as_ref().map(|_| ()), &["unreachable"]);
            if let Some(postgres) = postgres {
                let clears = ["unreachable", "misconfigured"];
                dependencies.report_probe(&log, Dependency::Postgres, postgres.as_ref().map(|_| ()), &clears);
            }
        }
        tokio::time::sleep(DEPENDENCY_CHECK_INTERVAL).await;
    }
}

/// Samples the counters for the per-minute rates of /status.
async fn sample_rates(rates: Rates) {
    loop {
        rates.sample(&METRICS);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Stop fetching, flush the producer, let in-flight events finish and commit them.
async fn stop(slots: &Slots, log: &Logger) {
    info!(log, "shutting down");
    if let Some(f) = slots.fetcher.current() {
        let _ = f.send(StopFetching).await;
    }
    if let Some(p) = slots.publisher.current() {
        // try_send: a publisher busy retrying a pending event must not hold up the exit; its event stays in the outbox.
        let _ = p.try_send(Flush(Duration::from_secs(2)));
    }
    if let Some(s) = slots.subscriber.current() {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), s.send(Drain(DRAIN_TIMEOUT))).await;
    }
    info!(log, "stopped");
}
