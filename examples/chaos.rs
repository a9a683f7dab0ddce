//! The seeded chaos run (issue 11): random faults against the whole pipeline, with the invariants a
//! user relies on checked when it ends. `scripts/chaos [--minutes M] [--seed S] [--cluster]` builds
//! and runs it.
//!
//! It starts Apache Kafka (one broker, or a three-node cluster), Postgres behind a TCP proxy that
//! can cut it, the fake NASA API and image server with their fault switches, and four daemon slots:
//! two with both roles, one consumer-only, and an extra consumer-only member that joins and leaves.
//! Now and then a `backfill` runs on the DATA_DIR of a daemon with both roles (its own outbox slot).
//! A feeder produces good events of its own, and poison messages when the schedule says so.
//! The schedule (when, which fault, which target, how long) is drawn from `StdRng::seed_from_u64`
//! before the run starts, so a seed replays the same fault sequence; whether a fault lands depends on
//! the state it meets (a daemon that is already down is not killed again: the fault is "skipped").
//!
//! At the end every fault is healed, the fetchers are quiesced (the NASA API answers 503), the run
//! waits until the pipeline is idle, produces a last probe batch, and checks the invariants.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use diesel::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
const DLQ_PARTITIONS: i32 = 3;
const CONCURRENCY: usize = 4;
const MAX_IMAGE_BYTES: usize = 1 << 20;
const STALL_SECS: u64 = 15;
const TOKEN: &str = "chaos-admin-token";
/// Panics injected into one daemon process in total: below the daemon's MAX_PANICS (3), so that no
/// good event can be dead-lettered as `panic` by injection alone; a good event in images.dlq is a bug.
const PANICS_PER_PROCESS: u32 = 2;
/// Peak RSS bound per daemon: the Downloader's byte budget (DOWNLOAD_CONCURRENCY × MAX_IMAGE_BYTES
/// plus what the Storer takes in at once) twice (the body and its copy into the statement),
/// librdkafka's prefetch cap (16 MiB), plus a margin of 96 MiB for the process itself (idle:
/// 25 MiB in release; a debug build is larger).
fn rss_bound_kib() -> u64 {
    let budget = (CONCURRENCY * MAX_IMAGE_BYTES) as u64 + nasa_ingest::actors::storer::BatchLimits::default().bytes_taken_in();
    (2 * budget + (16 << 20) + (96 << 20)) / 1024
}

// ---------------------------------------------------------------- arguments and the schedule

struct Args {
    minutes: f64,
    seed: u64,
    cluster: bool,
}

fn args() -> Args {
    let mut a = Args { minutes: 3.0, seed: rand::random(), cluster: false };
    let mut by_seed = false;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).map(String::as_str).unwrap_or("");
        match argv[i].as_str() {
            "--minutes" => {
                a.minutes = v.parse().expect("--minutes M");
                i += 1
            }
            "--seed" => {
                a.seed = v.parse().expect("--seed S (a whole number)");
                i += 1
            }
            "--cluster" => a.cluster = true,
            "--cluster-by-seed" => by_seed = true,
            other => panic!("unknown argument {other}; usage: chaos [--minutes M] [--seed S] [--cluster | --cluster-by-seed]"),
        }
        i += 1;
    }
    if by_seed {
        a.cluster = a.seed % 2 == 1;
    }
    a
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    BrokerKill,
    BrokerStop,
    BrokerTwoDown,
    PgCut,
    PgStall,
    Api503,
    ApiHang,
    ApiSlow,
    ApiMalformed,
    Image503,
    ImageSlow,
    DaemonKill,
    DaemonStop,
    MemberJoin,
    ActorCrash,
    EventPanic,
    Poison,
    DataDirFull,
    DataDirReadOnly,
    Backfill,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::BrokerKill => "broker kill -9",
            Kind::BrokerStop => "broker SIGTERM",
            Kind::BrokerTwoDown => "two brokers down",
            Kind::PgCut => "Postgres cut",
            Kind::PgStall => "Postgres stalled",
            Kind::Api503 => "NASA API 503",
            Kind::ApiHang => "NASA API hang",
            Kind::ApiSlow => "NASA API slow",
            Kind::ApiMalformed => "NASA API malformed JSON",
            Kind::Image503 => "image host 503",
            Kind::ImageSlow => "image host slow",
            Kind::DaemonKill => "daemon kill -9",
            Kind::DaemonStop => "daemon SIGTERM",
            Kind::MemberJoin => "consumer member joins, leaves",
            Kind::ActorCrash => "actor crashes (admin)",
            Kind::EventPanic => "event panics (admin)",
            Kind::Poison => "poison messages",
            Kind::DataDirFull => "producer DATA_DIR full",
            Kind::DataDirReadOnly => "producer DATA_DIR read-only",
            Kind::Backfill => "backfill beside a daemon",
        }
    }

    /// (weight, pause range in ms) of each kind.
    fn table(cluster: bool) -> Vec<(Kind, u32, (u64, u64))> {
        let mut t = vec![
            (Kind::BrokerKill, 3, (3_000, 20_000)),
            (Kind::BrokerStop, 2, (3_000, 15_000)),
            (Kind::PgCut, 3, (2_000, 20_000)),
            (Kind::Api503, 1, (3_000, 20_000)),
            (Kind::ApiHang, 1, (3_000, 20_000)),
            (Kind::ApiSlow, 1, (3_000, 20_000)),
            (Kind::ApiMalformed, 1, (3_000, 20_000)),
            (Kind::Image503, 2, (3_000, 15_000)),
            (Kind::ImageSlow, 2, (3_000, 15_000)),
            (Kind::DaemonKill, 3, (1_000, 12_000)),
            (Kind::DaemonStop, 2, (1_000, 12_000)),
            (Kind::MemberJoin, 1, (10_000, 40_000)),
            (Kind::ActorCrash, 2, (0, 1)),
            (Kind::EventPanic, 1, (0, 1)),
            (Kind::Poison, 2, (0, 1)),
            (Kind::DataDirFull, 1, (3_000, 20_000)),
            (Kind::DataDirReadOnly, 1, (3_000, 20_000)),
            (Kind::PgStall, 2, (2_000, 20_000)),
            (Kind::Backfill, 1, (0, 1)),
        ];
        if cluster {
            t.push((Kind::BrokerTwoDown, 1, (3_000, 12_000)));
        }
        t
    }
}

#[derive(Clone, Debug)]
struct Planned {
    at: Duration,
    kind: Kind,
    target: u32,
    pause: Duration,
    param: u32,
}

/// The whole fault schedule, a function of the seed, the length and the broker layout only.
fn schedule(seed: u64, minutes: f64, cluster: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let table = Kind::table(cluster);
    let total: u32 = table.iter().map(|t| t.1).sum();
    let end = Duration::from_secs_f64(minutes * 60.0);
    let mut at = Duration::from_secs(10);
    let mut out = Vec::new();
    while at < end {
        let mut pick = rng.random_range(0..total);
        let &(kind, _, (lo, hi)) = table
            .iter()
            .find(|t| {
                if pick < t.1 {
                    true
                } else {
                    pick -= t.1;
                    false
                }
            })
            .expect("weights add up");
        let pause = Duration::from_millis(rng.random_range(lo..hi));
        out.push(Planned { at, kind, target: rng.random(), pause, param: rng.random() });
        at += Duration::from_millis(rng.random_range(2_000..7_000));
    }
    out
}

// ---------------------------------------------------------------- the feeder (a producer of its own)

#[derive(Clone, Debug)]
struct Outgoing {
    key: String,
    payload: Vec<u8>,
    /// The reason it must be dead-lettered with, for poison; None for a good event.
    expect_dlq: Option<&'static str>,
}

#[derive(Default)]
struct FeedLog {
    msgs: Vec<Outgoing>,
    acked: HashMap<usize, (i32, i64)>,
    failed: Vec<usize>,
}

struct FeedCtx(Arc<Mutex<FeedLog>>);

impl ClientContext for FeedCtx {}

impl ProducerContext for FeedCtx {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        let mut log = self.0.lock().unwrap();
        match result {
            Ok(m) => {
                log.acked.insert(*id, (m.partition(), m.offset()));
            }
            Err(_) => log.failed.push(*id),
        }
    }
}

enum FeedCmd {
    Send(Outgoing),
    Stop,
}

fn feeder_producer(addr: &str, log: &Arc<Mutex<FeedLog>>) -> BaseProducer<FeedCtx> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Infinite: a message waits for the broker instead of failing; the run checks what landed.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "0")
        .create_with_context(FeedCtx(log.clone()))
        .expect("feeder producer")
}

/// Produces a good event every `every`, and whatever it is sent; on Stop flushes (2 min at most).
fn feeder(addr: String, topic: String, image_base: String, every: Duration, log: Arc<Mutex<FeedLog>>, cmds: mpsc::Receiver<FeedCmd>) {
    let mut producer = feeder_producer(&addr, &log);
    let mut next_good = Instant::now();
    let mut n = 0usize;
    let mut stopping = false;
    let mut queue: Vec<usize> = Vec::new();
    loop {
        match cmds.recv_timeout(Duration::from_millis(20)) {
            Ok(FeedCmd::Send(m)) => {
                let mut l = log.lock().unwrap();
                l.msgs.push(m);
                queue.push(l.msgs.len() - 1);
            }
            Ok(FeedCmd::Stop) => stopping = true,
            Err(_) => {}
        }
        if !stopping && Instant::now() >= next_good {
            next_good += every;
            let id = format!("chaos-{n:06}");
            n += 1;
            let m = Outgoing { payload: good_event(&image_base, &id).into_bytes(), key: id, expect_dlq: None };
            let mut l = log.lock().unwrap();
            l.msgs.push(m);
            queue.push(l.msgs.len() - 1);
        }
        {
            let mut l = log.lock().unwrap();
            let failed: Vec<usize> = l.failed.drain(..).collect();
            queue.extend(failed);
        }
        if producer.client().fatal_error().is_some() {
            eprintln!("chaos: feeder producer hit a fatal error; a new one resends what was not acknowledged");
            let l = log.lock().unwrap();
            queue = (0..l.msgs.len()).filter(|i| !l.acked.contains_key(i)).collect();
            drop(l);
            producer = feeder_producer(&addr, &log);
        }
        while let Some(&i) = queue.first() {
            let m = log.lock().unwrap().msgs[i].clone();
            let record = BaseRecord::with_opaque_to(&topic, Box::new(i)).key(&m.key).payload(&m.payload);
            match producer.send(record) {
                Ok(()) => {
                    queue.remove(0);
                }
                Err(_) => break,
            }
        }
        producer.poll(Duration::ZERO);
        if stopping && queue.is_empty() {
            let _ = producer.flush(Duration::from_secs(120));
            producer.poll(Duration::ZERO);
            return;
        }
    }
}

fn good_event(image_base: &str, id: &str) -> String {
    serde_json::json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4(), "event_type": "image_discovered",
        "nasa_id": id, "image_url": format!("{image_base}/image/{id}/{id}~medium.jpg"),
        "title": format!("chaos {id}"), "query": "chaos", "center": "JSC",
        "date_created": "2020-01-01T00:00:00Z", "produced_at": chrono::Utc::now(),
    })
    .to_string()
}

/// Poison messages of the kinds the schedule's `param` picks, each with the reason it must get.
fn poison(nasa: &FakeNasa, param: u32, serial: &mut usize) -> Vec<Outgoing> {
    let mut rng = StdRng::seed_from_u64(param as u64);
    let count = rng.random_range(1..=4);
    (0..count)
        .map(|_| {
            let kind = rng.random_range(0..7);
            poison_of_kind(nasa, kind, serial, &mut rng)
        })
        .collect()
}

/// Poison whose image host answers 404 until the run heals it, then replays it (issue 15).
const POISON_404: u32 = 4;

fn poison_of_kind(nasa: &FakeNasa, kind: u32, serial: &mut usize, rng: &mut StdRng) -> Outgoing {
    *serial += 1;
    let n = *serial;
    let with = |id: &str, url: String| {
        let mut v: serde_json::Value = serde_json::from_str(&good_event(&nasa.url, id)).unwrap();
        v["image_url"] = url.into();
        v.to_string()
    };
    let (reason, payload) = match kind {
        0 => ("not_json", format!("this is not json {n}")),
        1 => (
            "missing_field",
            serde_json::json!({"event_type": "image_discovered", "event_id": uuid::Uuid::new_v4(), "nasa_id": format!("poison-mf-{n}")})
                .to_string(),
        ),
        2 => (
            "host_not_allowed",
            with(&format!("poison-host-{n}"), format!("http://localhost:{}/image/x{n}/x{n}~orig.jpg", nasa.addr.port())),
        ),
        3 => {
            let long: String = (0..10_000).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect();
            let mut v: serde_json::Value = serde_json::from_str(&good_event(&nasa.url, "x")).unwrap();
            v["nasa_id"] = long.clone().into();
            v["image_url"] = format!("{}/image/poison-long-{n}/poison-long-{n}~medium.jpg", nasa.url).into();
            ("db_rejected", v.to_string())
        }
        4 => ("image_http_4xx", with(&format!("poison-404-{n}"), format!("{}/image/poison-404-{n}/poison-404-{n}~orig.jpg", nasa.url))),
        5 => ("not_an_image", with(&format!("poison-html-{n}"), format!("{}/image/poison-html-{n}/page.html", nasa.url))),
        _ => ("too_large", with(&format!("poison-huge-{n}"), format!("{}/image/poison-huge-{n}/poison-huge-{n}~huge.jpg", nasa.url))),
    };
    Outgoing { key: format!("poison-{reason}-{n}"), payload: payload.into_bytes(), expect_dlq: Some(reason) }
}

// ---------------------------------------------------------------- the observer (progress over time)

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    committed: i64,
    lag: i64,
}

fn offsets_client(addr: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("log_level", "0")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("offsets client")
}

/// (committed, end) per partition; None when the broker does not answer in time.
fn positions(client: &BaseConsumer, topic: &str, partitions: i32) -> Option<(Vec<i64>, Vec<i64>)> {
    positions_or_error(client, topic, partitions).ok()
}

fn positions_or_error(client: &BaseConsumer, topic: &str, partitions: i32) -> Result<(Vec<i64>, Vec<i64>), String> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = client.committed_offsets(tpl, Duration::from_secs(2)).map_err(|e| format!("committed offsets: {e}"))?;
    let committed = (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect();
    let mut ends = Vec::new();
    for p in 0..partitions {
        ends.push(client.fetch_watermarks(topic, p, Duration::from_secs(2)).map_err(|e| format!("end offset of partition {p}: {e}"))?.1);
    }
    Ok((committed, ends))
}

/// Samples the group's progress every 500 ms. Its client is replaced after 30 s without an
/// answer (said in the journal, with the error): the run must measure, whatever the client does.
fn observer(
    addr: String,
    topic: String,
    group: String,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    notes: Arc<Mutex<Vec<String>>>,
) {
    let mut client = offsets_client(&addr, &group);
    let mut failing_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        match positions_or_error(&client, &topic, PARTITIONS) {
            Ok((c, e)) => {
                failing_since = None;
                let committed: i64 = c.iter().sum();
                let lag: i64 = c.iter().zip(&e).map(|(c, e)| (e - c).max(0)).sum();
                samples.lock().unwrap().push(Sample { at: Instant::now(), committed, lag });
            }
            Err(e) => {
                let since = *failing_since.get_or_insert(started);
                if since.elapsed() > Duration::from_secs(30) {
                    notes.lock().unwrap().push(format!("observer: no answer for 30 s ({e}); a new offsets client replaces it"));
                    client = offsets_client(&addr, &group);
                    failing_since = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
    }
}

// ---------------------------------------------------------------- daemons

struct Slot {
    name: String,
    env: Vec<(String, String)>,
    producer: bool,
    daemon: Option<Daemon>,
    started_at: Instant,
    /// Log lines of the earlier processes of this slot.
    past: Vec<String>,
    /// Should a process run in this slot (a daemon killed by the schedule is wanted back).
    wanted: bool,
    restart_at: Option<Instant>,
    /// The signal the schedule sent to the current process, if any.
    signalled: Option<i32>,
    processes: u32,
    panics_injected: u32,
    crashes: Vec<Instant>,
    /// Exits nobody asked for: (description, the last log lines).
    unexpected_exits: Vec<(String, Vec<String>)>,
    peak_rss_kib: u64,
    http: Option<String>,
}

impl Slot {
    fn new(name: &str, env: Vec<(String, String)>, producer: bool, wanted: bool) -> Slot {
        Slot {
            name: name.into(),
            env,
            producer,
            daemon: None,
            started_at: Instant::now(),
            past: Vec::new(),
            wanted,
            restart_at: if wanted { Some(Instant::now()) } else { None },
            signalled: None,
            processes: 0,
            panics_injected: 0,
            crashes: Vec::new(),
            unexpected_exits: Vec::new(),
            peak_rss_kib: 0,
            http: None,
        }
    }

    fn running(&self) -> bool {
        self.daemon.is_some() && self.signalled.is_none()
    }

    fn spawn(&mut self) {
        self.daemon = Some(Daemon::spawn(&self.env));
        self.started_at = Instant::now();
        self.processes += 1;
        self.signalled = None;
        self.panics_injected = 0;
        self.http = None;
        self.restart_at = None;
    }

    fn signal(&mut self, sig: i32) {
        if let Some(d) = &self.daemon {
            unsafe { libc::kill(d.pid() as i32, sig) };
            self.signalled = Some(sig);
        }
    }

    fn http(&mut self) -> Option<String> {
        if self.http.is_none() {
            let d = self.daemon.as_ref()?;
            self.http = d.logs_with("HTTP endpoint listening").first().and_then(|l| l["labels.addr"].as_str().map(str::to_owned));
        }
        self.http.clone()
    }

    fn all_lines(&self) -> Vec<String> {
        let mut out = self.past.clone();
        if let Some(d) = &self.daemon {
            out.extend(d.lines());
        }
        out
    }

    /// Reaps an exited process; true when it exited.
    fn reap(&mut self, restart_after: Duration) -> bool {
        let Some(d) = self.daemon.as_mut() else { return false };
        let Some(status) = d.try_wait() else { return false };
        let lines = d.lines();
        // Past the restart limit after crashes the schedule asked for: exit 1, as documented.
        let past_limit = status.code() == Some(1)
            && self.crashes.iter().any(|t| t.elapsed() < Duration::from_secs(120))
            && lines.iter().any(|l| l.contains("passed its restart limit"));
        let expected = match self.signalled {
            Some(libc::SIGKILL) => true,
            Some(libc::SIGTERM) => status.code() == Some(0) || past_limit,
            _ => past_limit,
        };
        if !expected {
            let tail = lines[lines.len().saturating_sub(25)..].to_vec();
            self.unexpected_exits
                .push((format!("process {} exited with {status} (signal sent: {:?})", self.processes, self.signalled), tail));
        }
        self.past.push(format!("---- {} process {} exited: {status}", self.name, self.processes));
        self.past.extend(lines);
        self.past.push(format!("---- {} process {} ended", self.name, self.processes));
        self.daemon = None;
        self.signalled = None;
        self.http = None;
        if self.wanted && self.restart_at.is_none() {
            self.restart_at = Some(Instant::now() + restart_after);
        }
        true
    }

    fn sample_rss(&mut self) {
        if let Some(d) = &self.daemon {
            let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap_or_default();
            for field in ["VmHWM:", "VmRSS:"] {
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                self.peak_rss_kib = self.peak_rss_kib.max(kib);
            }
        }
    }
}

/// A `nasa-ingest backfill` run on the DATA_DIR of a producer slot; its logs (stderr) are kept.
struct BackfillRun {
    slot: usize,
    what: String,
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    status: Option<std::process::ExitStatus>,
}

impl BackfillRun {
    fn spawn(slot: usize, env: &[(String, String)], query: &str, limit: u32) -> std::io::Result<BackfillRun> {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(daemon_bin());
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let limit = limit.to_string();
        cmd.args(["backfill", "--query", query, "--limit", &limit]);
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (err, sink) = (child.stderr.take().expect("piped"), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(BackfillRun { slot, what: format!("--query {query} --limit {limit}"), child, lines, status: None })
    }

    fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }
}

/// One HTTP request with timeouts that never panics: (status, body).
fn request(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    Some((status, body))
}

// ---------------------------------------------------------------- the run

#[derive(Clone, Copy, PartialEq)]
enum NodeState {
    /// Answering metadata requests since then.
    Up(Instant),
    Going,
    Down,
    /// Restarted, not answering yet.
    Starting,
}

enum Heal {
    Nodes(Vec<usize>),
    Pg,
    Api,
    ImageStatus,
    ImageDelay,
    /// The slot and its process number when the fault hit: healed once a later process runs.
    Restart(usize, u32),
    /// Slot whose DATA_DIR is full (the filler file is removed) or read-only (remounted rw).
    DiskFree(usize),
    DiskWritable(usize),
    Leave(usize),
}

struct Pending {
    at: Instant,
    kind: Kind,
    heal: Heal,
}

struct World {
    broker: Arc<Broker>,
    proxy: TcpProxy,
    nasa: FakeNasa,
    slots: Vec<Slot>,
    nodes: Arc<Mutex<Vec<NodeState>>>,
    pending: Vec<Pending>,
    /// (kind, when healed, other faults active at that moment)
    heals: Vec<(Kind, Instant, chrono::DateTime<chrono::Utc>, bool)>,
    injected: BTreeMap<Kind, usize>,
    skipped: BTreeMap<Kind, usize>,
    feed: mpsc::Sender<FeedCmd>,
    poison_serial: usize,
    pg_cut: bool,
    api_fault: bool,
    image_status_fault: bool,
    image_delay_fault: bool,
    /// Slots whose DATA_DIR is a small tmpfs of its own (empty where mounting is not allowed).
    mounted: Vec<usize>,
    disk_fault: Vec<bool>,
    backfills: Vec<BackfillRun>,
    start: Instant,
    journal: std::fs::File,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Lines from helper threads, journaled by the main loop.
    notes: Arc<Mutex<Vec<String>>>,
}

impl World {
    fn say(&mut self, text: String) {
        let line = format!("[{:>6.1}s {}] {text}", self.start.elapsed().as_secs_f64(), chrono::Utc::now().format("%H:%M:%S%.3f"));
        eprintln!("{line}");
        let _ = writeln!(self.journal, "{line}");
    }

    fn nodes_up_for(&self, at_least: Duration) -> Vec<usize> {
        let nodes = self.nodes.lock().unwrap();
        (0..nodes.len()).filter(|&i| matches!(nodes[i], NodeState::Up(t) if t.elapsed() >= at_least)).collect()
    }

    fn all_nodes_up(&self) -> bool {
        self.nodes.lock().unwrap().iter().all(|n| matches!(n, NodeState::Up(_)))
    }

    /// Stops nodes (SIGKILL or SIGTERM) on a thread: a SIGTERM'd broker takes its time.
    fn take_down(&mut self, nodes: Vec<usize>, sig: i32) {
        for &i in &nodes {
            self.nodes.lock().unwrap()[i] = NodeState::Going;
        }
        let (broker, state) = (self.broker.clone(), self.nodes.clone());
        self.threads.push(std::thread::spawn(move || {
            for i in nodes {
                if sig == libc::SIGKILL {
                    broker.kill_node(i)
                } else {
                    broker.stop_node(i)
                }
                state.lock().unwrap()[i] = NodeState::Down;
            }
        }));
    }

    fn inject(&mut self, f: &Planned) {
        let now = Instant::now();
        let heal_at = now + f.pause;
        let n_nodes = self.nodes.lock().unwrap().len();
        let injected = match f.kind {
            Kind::BrokerKill | Kind::BrokerStop | Kind::BrokerTwoDown => {
                let up = self.nodes_up_for(Duration::from_secs(20));
                let sig = if f.kind == Kind::BrokerStop { libc::SIGTERM } else { libc::SIGKILL };
                let chosen: Option<Vec<usize>> = if up.len() < n_nodes {
                    None
                } else if n_nodes == 1 {
                    Some(vec![0])
                } else if f.kind == Kind::BrokerTwoDown {
                    let a = f.target as usize % 3;
                    Some(vec![a, (a + 1 + f.param as usize % 2) % 3])
                } else if f.param.is_multiple_of(2) {
                    // The leader of a partition: where the traffic is.
                    let p = (f.param / 2) as i32 % PARTITIONS;
                    let leader = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.broker.leader_of(&self.broker.topic, p)));
                    Some(vec![leader.unwrap_or(f.target as usize % 3)])
                } else {
                    Some(vec![f.target as usize % 3])
                };
                match chosen {
                    None => None,
                    Some(nodes) => {
                        let what = format!("{} node(s) {:?}", if sig == libc::SIGKILL { "kill -9" } else { "SIGTERM" }, nodes);
                        self.take_down(nodes.clone(), sig);
                        self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::Nodes(nodes) });
                        Some(what)
                    }
                }
            }
            Kind::PgCut if !self.pg_cut => {
                self.proxy.cut();
                self.pg_cut = true;
                self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::Pg });
                Some("connections reset, new ones refused".into())
            }
            Kind::PgStall if !self.pg_cut => {
                self.proxy.stall();
                self.pg_cut = true;
                self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::Pg });
                Some("no byte moves either way, connections stay open".into())
            }
            Kind::Api503 | Kind::ApiHang | Kind::ApiSlow | Kind::ApiMalformed if !self.api_fault => {
                let s = &self.nasa.state;
                match f.kind {
                    Kind::Api503 => s.set_api_mode(ApiMode::Status(503)),
                    Kind::ApiHang => s.set_api_mode(ApiMode::Hang),
                    Kind::ApiMalformed => s.set_api_mode(ApiMode::Malformed),
                    _ => *s.api_delay.lock().unwrap() = Duration::from_millis(1_000 + (f.param % 6_000) as u64),
                }
                self.api_fault = true;
                self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::Api });
                Some(String::new())
            }
            Kind::Image503 if !self.image_status_fault => {
                self.nasa.state.set_image_status("/image/", 503);
                self.image_status_fault = true;
                self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::ImageStatus });
                Some("every image".into())
            }
            Kind::ImageSlow if !self.image_delay_fault => {
                let d = Duration::from_millis(500 + (f.param % 4_000) as u64);
                self.nasa.state.set_image_delay(d);
                self.image_delay_fault = true;
                self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::ImageDelay });
                Some(format!("{d:?} per image"))
            }
            Kind::DaemonKill | Kind::DaemonStop => {
                let i = f.target as usize % 3;
                if self.slots[i].running() && self.slots[i].restart_at.is_none() {
                    let sig = if f.kind == Kind::DaemonKill { libc::SIGKILL } else { libc::SIGTERM };
                    self.slots[i].signal(sig);
                    // Restarted `pause` after it exits (reap sees the restart time is set).
                    self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::Restart(i, self.slots[i].processes) });
                    self.slots[i].restart_at = Some(heal_at);
                    Some(self.slots[i].name.clone())
                } else {
                    None
                }
            }
            Kind::MemberJoin if !self.slots[3].wanted && self.slots[3].daemon.is_none() => {
                self.slots[3].wanted = true;
                self.slots[3].spawn();
                self.pending.push(Pending { at: heal_at, kind: f.kind, heal: Heal::Leave(3) });
                Some(format!("{} for {:?}", self.slots[3].name, f.pause))
            }
            Kind::ActorCrash => {
                let i = f.target as usize % 3;
                let producer = self.slots[i].producer;
                match (self.slots[i].running(), self.slots[i].http()) {
                    (true, Some(addr)) => {
                        let actors: &[&str] = if producer {
                            &["fetcher", "publisher", "subscriber", "downloader", "storer"]
                        } else {
                            &["subscriber", "downloader", "storer"]
                        };
                        let actor = actors[f.param as usize % actors.len()];
                        let times = 1 + (f.param / 8) % 7;
                        self.slots[i].crashes.push(Instant::now());
                        self.threads.push(std::thread::spawn(move || crash_series(&addr, actor, times)));
                        Some(format!("{} {actor} × {times}", self.slots[i].name))
                    }
                    _ => None,
                }
            }
            Kind::EventPanic => {
                let i = f.target as usize % 3;
                let count = 1 + f.param % 2;
                match (self.slots[i].running(), self.slots[i].http()) {
                    (true, Some(addr)) if self.slots[i].panics_injected + count <= PANICS_PER_PROCESS => {
                        match request(&addr, "POST", &format!("/admin/events/panic?count={count}")) {
                            Some((202, _)) => {
                                self.slots[i].panics_injected += count;
                                Some(format!("{} next {count} event(s)", self.slots[i].name))
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            Kind::DataDirFull | Kind::DataDirReadOnly => {
                let i = f.target as usize % 2;
                if !self.mounted.contains(&i) || self.disk_fault[i] {
                    None
                } else {
                    let dir = PathBuf::from(get(&self.slots[i].env, "DATA_DIR"));
                    let done = if f.kind == Kind::DataDirFull { fill(&dir) } else { remount(&dir, "ro") };
                    match done {
                        Ok(()) => {
                            self.disk_fault[i] = true;
                            let heal = if f.kind == Kind::DataDirFull { Heal::DiskFree(i) } else { Heal::DiskWritable(i) };
                            self.pending.push(Pending { at: heal_at, kind: f.kind, heal });
                            Some(self.slots[i].name.clone())
                        }
                        Err(e) => {
                            self.say(format!("cannot inject {}: {e}", f.kind.name()));
                            None
                        }
                    }
                }
            }
            Kind::Backfill if !self.backfills.iter_mut().any(|b| b.running()) => {
                // Not onto a disk that is full or read-only right now: a backfill that cannot take its
                // slot at start exits 1 at once, as documented; one already running waits for the disk.
                let i = f.target as usize % 2;
                if self.disk_fault[i] {
                    None
                } else {
                    let query = ["moon", "mars", "earth"][f.param as usize % 3];
                    match BackfillRun::spawn(i, &self.slots[i].env, query, 2 + f.param % 4) {
                        Ok(run) => {
                            let what = format!("on {}'s DATA_DIR: {}", self.slots[i].name, run.what);
                            self.backfills.push(run);
                            Some(what)
                        }
                        Err(e) => {
                            self.say(format!("cannot start a backfill: {e}"));
                            None
                        }
                    }
                }
            }
            Kind::Poison => {
                let msgs = poison(&self.nasa, f.param, &mut self.poison_serial);
                let kinds: Vec<&str> = msgs.iter().map(|m| m.expect_dlq.unwrap_or("")).collect();
                let what = format!("{kinds:?}");
                for m in msgs {
                    let _ = self.feed.send(FeedCmd::Send(m));
                }
                Some(what)
            }
            _ => None,
        };
        match injected {
            Some(what) => {
                *self.injected.entry(f.kind).or_default() += 1;
                let heal = if f.pause.as_millis() > 1 { format!(", heals in {:.1} s", f.pause.as_secs_f64()) } else { String::new() };
                self.say(format!("fault: {} {what}{heal}", f.kind.name()));
            }
            None => {
                *self.skipped.entry(f.kind).or_default() += 1;
                self.say(format!("skipped: {} (its target is busy or down)", f.kind.name()));
            }
        }
    }

    /// Heals what is due (or everything, at the end). False for a heal that must wait.
    fn heal(&mut self, p: &Pending) -> bool {
        match &p.heal {
            Heal::Nodes(nodes) => {
                let states = self.nodes.lock().unwrap().clone();
                if nodes.iter().any(|&i| states[i] == NodeState::Going) {
                    return false;
                }
                for &i in nodes {
                    if states[i] == NodeState::Down {
                        self.broker.restart_node(i);
                        self.nodes.lock().unwrap()[i] = NodeState::Starting;
                        let (addr, state, notes) =
                            (self.broker.addr.split(',').nth(i).unwrap_or_default().to_owned(), self.nodes.clone(), self.notes.clone());
                        self.threads.push(std::thread::spawn(move || wait_for_node(i, &addr, &state, &notes)));
                    }
                }
            }
            Heal::Pg => {
                self.proxy.restore();
                self.pg_cut = false;
            }
            Heal::Api => {
                self.nasa.state.set_api_mode(ApiMode::Normal);
                *self.nasa.state.api_delay.lock().unwrap() = Duration::ZERO;
                self.api_fault = false;
            }
            Heal::ImageStatus => {
                self.nasa.state.image_status.lock().unwrap().remove("/image/");
                self.image_status_fault = false;
            }
            Heal::ImageDelay => {
                self.nasa.state.set_image_delay(Duration::ZERO);
                self.image_delay_fault = false;
            }
            Heal::Restart(i, process) => {
                // The process must have exited and `tick` started the next one (at restart_at).
                if self.slots[*i].processes <= *process || self.slots[*i].daemon.is_none() {
                    return false;
                }
            }
            Heal::DiskFree(i) => {
                let _ = std::fs::remove_file(PathBuf::from(get(&self.slots[*i].env, "DATA_DIR")).join("filler"));
                self.disk_fault[*i] = false;
            }
            Heal::DiskWritable(i) => {
                if let Err(e) = remount(&PathBuf::from(get(&self.slots[*i].env, "DATA_DIR")), "rw") {
                    self.say(format!("cannot remount read-write yet: {e}"));
                    return false;
                }
                self.disk_fault[*i] = false;
            }
            Heal::Leave(i) => {
                self.slots[*i].wanted = false;
                self.slots[*i].restart_at = None;
                self.slots[*i].signal(libc::SIGTERM);
            }
        }
        let others = !self.pending.is_empty();
        self.heals.push((p.kind, Instant::now(), chrono::Utc::now(), others));
        self.say(format!("healed: {}", p.kind.name()));
        true
    }

    /// Restarts exited daemons (as Docker would), samples RSS, heals what is due.
    fn tick(&mut self, heal_all: bool) {
        let notes: Vec<String> = self.notes.lock().unwrap().drain(..).collect();
        for n in notes {
            self.say(n);
        }
        for i in 0..self.slots.len() {
            if self.slots[i].reap(Duration::from_secs(1)) {
                let (name, n) = (self.slots[i].name.clone(), self.slots[i].processes);
                let why = self.slots[i].unexpected_exits.last().map(|e| e.0.clone());
                self.say(format!("{name} process {n} exited{}", why.map(|w| format!(" UNEXPECTEDLY: {w}")).unwrap_or_default()));
            }
            let due = self.slots[i].restart_at.is_some_and(|t| heal_all || Instant::now() >= t);
            if self.slots[i].wanted && self.slots[i].daemon.is_none() && due {
                self.slots[i].spawn();
                let name = self.slots[i].name.clone();
                self.say(format!("{name} started (process {})", self.slots[i].processes));
            }
            self.slots[i].sample_rss();
        }
        let mut ended = Vec::new();
        for b in self.backfills.iter_mut().filter(|b| b.status.is_none()) {
            if !b.running() {
                ended.push(format!("backfill {} exited: {}", b.what, b.status.expect("exited")));
            }
        }
        for e in ended {
            self.say(e);
        }
        let now = Instant::now();
        let mut k = 0;
        while k < self.pending.len() {
            if heal_all || self.pending[k].at <= now {
                let p = self.pending.remove(k);
                if !self.heal(&p) {
                    self.pending.insert(k, p);
                    k += 1;
                }
            } else {
                k += 1;
            }
        }
    }
}

/// A tmpfs of 1 MiB on `dir` (the producers' DATA_DIR), where this machine allows mounting.
fn mount_small(dir: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn remount(dir: &std::path::Path, mode: &str) -> Result<(), String> {
    // A file open for writing makes the remount busy for an instant: try a few times.
    let mut last = String::new();
    for _ in 0..20 {
        let out =
            std::process::Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(dir).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

/// Fills the filesystem of `dir` with a file `filler` until no byte is left.
fn fill(dir: &std::path::Path) -> Result<(), String> {
    let mut f = std::fs::File::create(dir.join("filler")).map_err(|e| e.to_string())?;
    let block = vec![0u8; 16 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    // Fill the last partial block too.
    for size in [4096usize, 512, 1] {
        while f.write(&vec![0u8; size]).is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

fn unmount(dir: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg("-l").arg(dir).status();
}

/// Waits (2 min at most) until node `i` answers a metadata request, then marks it up.
fn wait_for_node(i: usize, addr: &str, state: &Mutex<Vec<NodeState>>, notes: &Mutex<Vec<String>>) {
    let started = Instant::now();
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("log_level", "0")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("metadata client");
    while started.elapsed() < Duration::from_secs(120) {
        if client.fetch_metadata(None, Duration::from_millis(500)).is_ok() {
            state.lock().unwrap()[i] = NodeState::Up(Instant::now());
            notes
                .lock()
                .unwrap()
                .push(format!("broker node {i} answers again, {:.1} s after its restart", started.elapsed().as_secs_f64()));
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    notes.lock().unwrap().push(format!("broker node {i} does NOT answer 2 min after its restart"));
    state.lock().unwrap()[i] = NodeState::Up(Instant::now());
}

/// Crashes `actor` `times` times in a row: each request waits until the actor runs again (409
/// while it restarts), up to 10 s.
fn crash_series(addr: &str, actor: &str, times: u32) {
    for _ in 0..times {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match request(addr, "POST", &format!("/admin/actors/{actor}/crash")) {
                Some((202, _)) => break,
                Some((409, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => return,
            }
        }
    }
}

// ---------------------------------------------------------------- checks

#[derive(QueryableByName, Debug)]
struct RowCheck {
    #[diesel(sql_type = diesel::sql_types::Text)]
    nasa_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    sha256: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    actual: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    byte_size: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    length: i64,
}

struct Check {
    name: &'static str,
    failures: Vec<String>,
}

fn evidence(slots: &[Slot], needles: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for s in slots {
        let lines: Vec<String> =
            s.all_lines().into_iter().filter(|l| needles.iter().any(|n| !n.is_empty() && l.contains(n.as_str()))).collect();
        for l in &lines[lines.len().saturating_sub(max)..] {
            out.push(format!("      {}: {}", s.name, truncate(l, 400)));
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

fn place(p: i32, o: i64) -> String {
    format!("\"labels.partition\":{p},\"labels.offset\":{o}")
}

fn header<'a>(r: &'a Record, k: &str) -> &'a str {
    r.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.as_str()).unwrap_or("")
}

fn main() {
    let a = args();
    println!("chaos: seed {} ({} min, {})", a.seed, a.minutes, if a.cluster { "three-node cluster" } else { "one broker" });
    println!("chaos: replay with: scripts/chaos --seed {} --minutes {}{}", a.seed, a.minutes, if a.cluster { " --cluster" } else { "" });
    let plan = schedule(a.seed, a.minutes, a.cluster);
    let run_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chaos").join(format!("seed-{}", a.seed));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut plan_file = std::fs::File::create(run_dir.join("schedule.txt")).unwrap();
    for f in &plan {
        let _ = writeln!(
            plan_file,
            "{:>7.1}s {:<30} target {:>10} pause {:>5.1}s param {}",
            f.at.as_secs_f64(),
            f.kind.name(),
            f.target,
            f.pause.as_secs_f64(),
            f.param
        );
    }
    eprintln!("chaos: {} faults planned; schedule, journal and daemon logs in {}", plan.len(), run_dir.display());

    let broker = Arc::new(if a.cluster { Broker::cluster() } else { Broker::own() });
    broker.create_topic(&broker.topic, PARTITIONS);
    broker.create_topic(&broker.dlq, DLQ_PARTITIONS);
    let db = TestDb::create();
    let proxy = TcpProxy::start("127.0.0.1:5432");
    let proxied_url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let nasa = fake_nasa();
    // Images of the poison kinds that the image host refuses for good.
    nasa.state.set_image_status("poison-404-", 404);

    let data = tempfile::Builder::new().prefix("chaos-data").tempdir().unwrap();
    let group = format!("chaos-{}", a.seed);
    let env_for = |name: &str, producer: bool| {
        let dir = data.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = daemon_env(&broker, &db, &nasa, &dir);
        for (k, v) in [
            ("DATABASE_URL", proxied_url.as_str()),
            ("KAFKA_GROUP_ID", group.as_str()),
            ("PRODUCER_ENABLED", if producer { "true" } else { "false" }),
            ("ADMIN_TOKEN", TOKEN),
            ("CONSUMER_STALL_SECS", &STALL_SECS.to_string()),
            ("DOWNLOAD_CONCURRENCY", &CONCURRENCY.to_string()),
            ("MAX_IMAGE_BYTES", &MAX_IMAGE_BYTES.to_string()),
            ("DOWNLOAD_TIMEOUT_SECONDS", "10"),
            ("NASA_TIMEOUT_SECONDS", "5"),
            ("PUBLISH_TIMEOUT_MS", "3000"),
            ("SUPERVISOR_MIN_BACKOFF_MS", "100"),
            ("SUPERVISOR_MAX_BACKOFF_MS", "2000"),
            ("INTERVAL_SECONDS", "1"),
        ] {
            set(&mut env, k, v);
        }
        env
    };
    // The producers' DATA_DIRs on small filesystems of their own, to fill and make read-only.
    let mut mounted = Vec::new();
    for (i, name) in ["both-1", "both-2"].iter().enumerate() {
        let dir = data.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        match mount_small(&dir) {
            Ok(()) => mounted.push(i),
            Err(e) => eprintln!("chaos: no tmpfs for {name}'s DATA_DIR ({e}): its DATA_DIR faults are skipped"),
        }
    }
    let slots = vec![
        Slot::new("both-1", env_for("both-1", true), true, true),
        Slot::new("both-2", env_for("both-2", true), true, true),
        Slot::new("consumer-3", env_for("consumer-3", false), false, true),
        Slot::new("consumer-extra", env_for("consumer-extra", false), false, false),
    ];

    let feed_log: Arc<Mutex<FeedLog>> = Arc::default();
    let (feed, feed_rx) = mpsc::channel();
    let feeder_thread = {
        let (addr, topic, base, log) = (broker.addr.clone(), broker.topic.clone(), nasa.url.clone(), feed_log.clone());
        std::thread::spawn(move || feeder(addr, topic, base, Duration::from_millis(250), log, feed_rx))
    };
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let observing = Arc::new(AtomicBool::new(false));
    let observer_thread = {
        let (addr, topic, group, samples, stop, notes) =
            (broker.addr.clone(), broker.topic.clone(), group.clone(), samples.clone(), observing.clone(), notes.clone());
        std::thread::spawn(move || observer(addr, topic, group, samples, stop, notes))
    };

    let n_nodes = broker.nodes().len();
    let mut w = World {
        broker: broker.clone(),
        proxy,
        nasa,
        slots,
        nodes: Arc::new(Mutex::new(vec![NodeState::Up(Instant::now()); n_nodes])),
        pending: Vec::new(),
        heals: Vec::new(),
        injected: BTreeMap::new(),
        skipped: BTreeMap::new(),
        feed,
        poison_serial: 0,
        pg_cut: false,
        api_fault: false,
        image_status_fault: false,
        image_delay_fault: false,
        mounted,
        disk_fault: vec![false; 2],
        backfills: Vec::new(),
        start: Instant::now(),
        journal: std::fs::File::create(run_dir.join("journal.txt")).unwrap(),
        threads: Vec::new(),
        notes,
    };

    // ---- the schedule
    w.say(format!("started: broker(s) at {}, Postgres through 127.0.0.1:{}, NASA at {}", broker.addr, w.proxy.port, w.nasa.url));
    // Two dead letters the end of the run can fix and replay, whatever the schedule draws.
    for _ in 0..2 {
        let m = poison_of_kind(&w.nasa, POISON_404, &mut w.poison_serial, &mut StdRng::seed_from_u64(a.seed));
        let _ = w.feed.send(FeedCmd::Send(m));
    }
    let mut next = 0;
    let end = Duration::from_secs_f64(a.minutes * 60.0);
    while w.start.elapsed() < end || next < plan.len() && plan[next].at < end {
        w.tick(false);
        while next < plan.len() && plan[next].at <= w.start.elapsed() {
            let f = plan[next].clone();
            w.inject(&f);
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // ---- heal everything
    w.say("the schedule is over: healing everything".into());
    let healing = Instant::now();
    while !w.pending.is_empty() && healing.elapsed() < Duration::from_secs(90) {
        w.tick(true);
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in std::mem::take(&mut w.threads) {
        let _ = t.join();
    }
    w.tick(true);
    let wait_brokers = Instant::now();
    while !w.all_nodes_up() && wait_brokers.elapsed() < Duration::from_secs(60) {
        w.tick(true);
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.ensure_all_up();
    // A backfill still running needs the NASA API to finish: let it, before the API is quiesced.
    let backfills_done = Instant::now();
    while w.backfills.iter_mut().any(|b| b.running()) && backfills_done.elapsed() < Duration::from_secs(120) {
        w.tick(true);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Quiesce the fetchers: the NASA API answers 503 from here on, so the producers add nothing new.
    w.nasa.state.set_api_mode(ApiMode::Status(503));
    let quiesced_at = Instant::now();
    w.say("healed; the fetchers are quiesced (NASA API 503); waiting for the pipeline to be idle".into());
    let _ = w.feed.send(FeedCmd::Stop);
    let _ = feeder_thread.join();

    let offsets = offsets_client(&broker.addr, &group);
    let idle = |w: &mut World, what: &str, limit: Duration| -> Option<Duration> {
        let started = Instant::now();
        loop {
            w.tick(false);
            let pending_ok = w.slots.iter_mut().filter(|s| s.wanted && s.producer).all(|s| {
                s.daemon.is_some()
                    && s.http().and_then(|a| request(&a, "GET", "/status")).is_some_and(|(c, b)| {
                        c == 200 && serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| v["pending_events"] == 0)
                    })
            });
            let at_end = positions(&offsets, &broker.topic, PARTITIONS).is_some_and(|(c, e)| c == e);
            if pending_ok && at_end {
                w.say(format!("{what}: idle after {:.1} s", started.elapsed().as_secs_f64()));
                return Some(started.elapsed());
            }
            if started.elapsed() > limit {
                w.say(format!("{what}: NOT idle after {:.0} s", limit.as_secs_f64()));
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let idle_after_heal = idle(&mut w, "after healing", Duration::from_secs(300));
    // A last batch proves the pipeline still moves with every fault healed.
    let probes: Vec<String> = (0..2 * PARTITIONS).map(|i| format!("chaos-probe-{i:02}")).collect();
    let probe_producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker.addr).set("acks", "all").create().unwrap();
    for id in &probes {
        let payload = good_event(&w.nasa.url, id);
        let _ = probe_producer.send(BaseRecord::to(&broker.topic).key(id.as_str()).payload(&payload));
    }
    let _ = probe_producer.flush(Duration::from_secs(30));
    let idle_after_probe = idle(&mut w, "after the probe batch", Duration::from_secs(120));
    // ---- the replay after healing (issue 15): the image host serves the images it refused with
    // 404 again, as a host that came back would, and the dead letters of that reason are replayed.
    w.nasa.state.image_status.lock().unwrap().remove("poison-404-");
    let replay_settings = nasa_ingest::dlq::ReplaySettings {
        filter: nasa_ingest::config::DlqFilter { reason: Some("image_http_4xx".into()), since: None },
        ..nasa_ingest::dlq::ReplaySettings::quiet(&broker.addr, &broker.topic, &broker.dlq, &nasa_ingest::dlq::default_replay_group(&group))
    };
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    let replayed = nasa_ingest::dlq::replay(&replay_settings, &nasa_ingest::shutdown::CancellationToken::new(), &quiet);
    w.say(format!("replayed the image_http_4xx dead letters: {replayed:?}"));
    let idle_after_replay = idle(&mut w, "after the replay", Duration::from_secs(120));
    let replayed_again = nasa_ingest::dlq::replay(&replay_settings, &nasa_ingest::shutdown::CancellationToken::new(), &quiet);
    w.say(format!("the same replay again: {replayed_again:?}"));
    observing.store(true, Ordering::SeqCst);
    let _ = observer_thread.join();

    // ---- read everything
    let (committed, ends) = positions(&offsets, &broker.topic, PARTITIONS).unwrap_or_default();
    let total: i64 = ends.iter().sum();
    let topic_msgs = broker.read_all(&broker.topic, total as usize, Duration::from_secs(120));
    let dlq_ends: i64 =
        (0..DLQ_PARTITIONS).map(|p| offsets.fetch_watermarks(&broker.dlq, p, Duration::from_secs(5)).map(|w| w.1).unwrap_or(0)).sum();
    let dlq_msgs = broker.read_all(&broker.dlq, dlq_ends as usize, Duration::from_secs(60));
    let rows: Vec<RowCheck> = diesel::sql_query(
        "SELECT nasa_id, sha256, encode(sha256(image_bytes), 'hex') AS actual, byte_size, length(image_bytes)::bigint AS length FROM images",
    )
    .load(&mut db.conn())
    .unwrap_or_default();
    let feed = std::mem::take(&mut *feed_log.lock().unwrap());

    let mut by_place: HashMap<(i32, i64), &Record> = HashMap::new();
    for r in &topic_msgs {
        by_place.insert((r.partition, r.offset), r);
    }
    let mut dead: HashMap<(i32, i64), Vec<&Record>> = HashMap::new();
    for r in &dlq_msgs {
        if header(r, "source_topic") == broker.topic {
            let p = header(r, "source_partition").parse().unwrap_or(-1);
            let o = header(r, "source_offset").parse().unwrap_or(-1);
            dead.entry((p, o)).or_default().push(r);
        }
    }
    let mut stored: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *stored.entry(r.nasa_id.as_str()).or_default() += 1;
    }
    let expect_dlq: HashMap<&str, &'static str> = feed.msgs.iter().filter_map(|m| m.expect_dlq.map(|r| (m.key.as_str(), r))).collect();

    let mut checks = Vec::new();

    // 1. every message a row or a dead letter; no good event dead-lettered
    let mut c1 = Check { name: "1 every message on the topic is a row or a dead letter; no good event is dead-lettered", failures: vec![] };
    if (topic_msgs.len() as i64) < total {
        c1.failures.push(format!("read {} messages of the topic, its partitions end at {total} in all", topic_msgs.len()));
    }
    let mut lost = Vec::new();
    let (mut good, mut poisoned) = (0usize, 0usize);
    for r in &topic_msgs {
        let key = r.key.clone().unwrap_or_default();
        let nasa_id = serde_json::from_slice::<serde_json::Value>(&r.payload).ok().and_then(|v| v["nasa_id"].as_str().map(str::to_owned));
        let here = dead.get(&(r.partition, r.offset));
        // A replayed event's cause was fixed: it must end as a row like a good one.
        let replay = !header(r, "replay_count").is_empty();
        match expect_dlq.get(key.as_str()).filter(|_| !replay) {
            Some(reason) => {
                poisoned += 1;
                match here {
                    None => c1.failures.push(format!(
                        "poison {key} at partition {} offset {} (expected {reason}) is not in the dead-letter topic",
                        r.partition, r.offset
                    )),
                    Some(d) if d.iter().all(|d| header(d, "reason") != *reason) => c1.failures.push(format!(
                        "poison {key} at partition {} offset {} dead-lettered as {:?}, expected {reason}",
                        r.partition,
                        r.offset,
                        d.iter().map(|d| header(d, "reason")).collect::<Vec<_>>()
                    )),
                    Some(_) => {}
                }
            }
            None => {
                good += 1;
                if let Some(d) = here {
                    c1.failures.push(format!(
                        "good event {} at partition {} offset {} was dead-lettered: {}",
                        nasa_id.clone().unwrap_or_default(),
                        r.partition,
                        r.offset,
                        d.iter().map(|d| format!("{} ({})", header(d, "reason"), header(d, "error"))).collect::<Vec<_>>().join("; ")
                    ));
                } else if !nasa_id.as_deref().is_some_and(|id| stored.contains_key(id)) {
                    lost.push((nasa_id.clone().unwrap_or_default(), r.partition, r.offset));
                    c1.failures.push(format!(
                        "lost: {} at partition {} offset {}: no row, no dead letter",
                        nasa_id.unwrap_or_default(),
                        r.partition,
                        r.offset
                    ));
                }
            }
        }
    }
    let mut c1_evidence = Vec::new();
    for (id, p, o) in lost.iter().take(5) {
        c1_evidence.push(format!("    log lines about {id} / partition {p} offset {o}:"));
        c1_evidence.extend(evidence(&w.slots, &[id.clone(), place(*p, *o)], 12));
    }
    c1.failures.extend(c1_evidence);
    checks.push(c1);

    // 2. no nasa_id twice; bytes hash to sha256
    let mut c2 = Check { name: "2 no nasa_id is stored twice; every row's bytes hash to its sha256", failures: vec![] };
    let duplicated: Vec<(&str, usize)> = stored.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (*k, *n)).collect();
    for (id, n) in &duplicated {
        c2.failures.push(format!("{id} stored {n} times"));
    }
    for r in &rows {
        if r.sha256 != r.actual || r.byte_size != r.length {
            c2.failures.push(format!(
                "{}: sha256 {} but the bytes hash to {} ({} of {} bytes)",
                r.nasa_id, r.sha256, r.actual, r.length, r.byte_size
            ));
        }
    }
    checks.push(c2);

    // 3. every event logged as sent or pending, and every acknowledged feeder message, is on the topic
    let mut c3 = Check {
        name: "3 every event a daemon logged as sent or pending (and every acknowledged message) is on the topic",
        failures: vec![],
    };
    let topic_event_ids: HashSet<String> = topic_msgs
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
        .filter_map(|v| v["event_id"].as_str().map(str::to_owned))
        .collect();
    let mut logged_sent = 0usize;
    let mut pending_ids: HashSet<String> = HashSet::new();
    let sources: Vec<(String, Vec<String>)> = w
        .slots
        .iter()
        .map(|s| (s.name.clone(), s.all_lines()))
        .chain(w.backfills.iter().map(|b| (format!("backfill on {}", w.slots[b.slot].name), b.lines.lock().unwrap().clone())))
        .collect();
    for (name, lines) in &sources {
        for line in lines {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let msg = v["message"].as_str().unwrap_or("");
            let Some(event_id) = v["labels.event_id"].as_str() else { continue };
            if msg == "sent" {
                logged_sent += 1;
                let (p, o) = (v["labels.partition"].as_i64().unwrap_or(-1) as i32, v["labels.offset"].as_i64().unwrap_or(-1));
                let at = by_place.get(&(p, o)).and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok());
                if at.as_ref().and_then(|v| v["event_id"].as_str()) != Some(event_id) {
                    c3.failures.push(format!(
                        "{}: sent {event_id} at partition {p} offset {o}, but the topic has {:?} there",
                        name,
                        at.map(|v| v["event_id"].clone())
                    ));
                }
            } else if msg == "Kafka unavailable" || msg.starts_with("publishing the event left pending") {
                pending_ids.insert(event_id.to_owned());
                if !topic_event_ids.contains(event_id) {
                    c3.failures.push(format!("{}: event {event_id} was pending ({msg}) and never reached the topic", name));
                    c3.failures.extend(evidence(&w.slots, &[event_id.to_owned()], 8));
                }
            }
        }
    }
    let mut acked_missing = 0;
    for (i, (p, o)) in &feed.acked {
        let m = &feed.msgs[*i];
        if by_place.get(&(*p, *o)).is_none_or(|r| r.payload != m.payload) {
            acked_missing += 1;
            if acked_missing <= 5 {
                c3.failures.push(format!("feeder message {} acknowledged at partition {p} offset {o} is not there", m.key));
            }
        }
    }
    let unacked = feed.msgs.len() - feed.acked.len();
    if unacked > 0 {
        c3.failures.push(format!("{unacked} feeder message(s) never acknowledged by the broker (after a 2 min flush)"));
    }
    checks.push(c3);

    // 4. committed == end
    let mut c4 = Check { name: "4 the group's committed offsets equal the end of every partition", failures: vec![] };
    if committed.is_empty() {
        c4.failures.push("the committed offsets could not be read".into());
    }
    for p in 0..committed.len() {
        if committed[p] != ends[p] {
            c4.failures.push(format!("partition {p}: committed {} of {}", committed[p], ends[p]));
            c4.failures.extend(evidence(&w.slots, &[format!("\"labels.partition\":{p},\"labels.offset\":{}", committed[p])], 10));
        }
    }
    if idle_after_heal.is_none() {
        c4.failures.push("the pipeline was not idle within 5 min of healing".into());
    }
    if idle_after_probe.is_none() {
        c4.failures.push("the probe batch was not consumed within 2 min".into());
    }
    checks.push(c4);

    // 5. running, ready, holding partitions
    let mut c5 =
        Check { name: "5 every daemon is running and ready, none holds an empty assignment while a partition has lag", failures: vec![] };
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        w.tick(false);
        let mut problems = Vec::new();
        let mut union: HashSet<i64> = HashSet::new();
        for s in w.slots.iter_mut().filter(|s| s.wanted) {
            if s.daemon.is_none() {
                problems.push(format!("{} is not running", s.name));
                continue;
            }
            let Some(addr) = s.http() else {
                problems.push(format!("{} has no HTTP endpoint yet", s.name));
                continue;
            };
            match request(&addr, "GET", "/readyz") {
                Some((200, _)) => {}
                other => problems.push(format!("{}: /readyz {:?}", s.name, other)),
            }
            let status = request(&addr, "GET", "/status").and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
            let assigned: Vec<i64> = status
                .as_ref()
                .and_then(|v| v["consumer"]["assigned_partitions"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.as_i64())
                .collect();
            if assigned.is_empty() {
                problems.push(format!("{} holds no partition (of {PARTITIONS}, with {} members)", s.name, 3));
            }
            // Its stall watch must see the group: otherwise an empty assignment with lag goes unnoticed.
            if status.as_ref().is_some_and(|v| v["consumer"]["broker_reachable"] != true) {
                problems.push(format!(
                    "{}: its stall watch cannot read the group's progress (/status consumer: {})",
                    s.name,
                    status.as_ref().map(|v| v["consumer"].to_string()).unwrap_or_default()
                ));
            }
            union.extend(assigned);
        }
        if union.len() != PARTITIONS as usize {
            problems.push(format!("the members hold partitions {:?} of 0..{PARTITIONS}", {
                let mut u: Vec<_> = union.into_iter().collect();
                u.sort();
                u
            }));
        }
        if problems.is_empty() {
            break;
        }
        if Instant::now() > ready_deadline {
            c5.failures = problems;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let unexpected: Vec<(String, String, Vec<String>)> =
        w.slots.iter().flat_map(|s| s.unexpected_exits.iter().map(|(d, l)| (s.name.clone(), d.clone(), l.clone()))).collect();
    for (name, what, lines) in &unexpected {
        c5.failures.push(format!("{name}: {what}; its last lines:"));
        c5.failures.extend(lines.iter().map(|l| format!("      {}", truncate(l, 400))));
    }
    checks.push(c5);

    // 6. peak RSS
    let mut c6 = Check { name: "6 each daemon's peak RSS stayed under the bound", failures: vec![] };
    for s in &w.slots {
        if s.peak_rss_kib > rss_bound_kib() {
            c6.failures.push(format!("{}: peak RSS {} MiB > {} MiB", s.name, s.peak_rss_kib / 1024, rss_bound_kib() / 1024));
        }
    }
    checks.push(c6);

    // 7. every backfill finished
    let mut c7 = Check { name: "7 every backfill beside a daemon finished with exit 0", failures: vec![] };
    for b in w.backfills.iter_mut() {
        let slot = &w.slots[b.slot].name;
        if b.running() {
            c7.failures.push(format!("backfill {} on {slot}'s DATA_DIR still runs 2 min after healing", b.what));
        } else if !b.status.is_some_and(|s| s.success()) {
            c7.failures.push(format!("backfill {} on {slot}'s DATA_DIR exited {:?}; its last lines:", b.what, b.status));
            let lines = b.lines.lock().unwrap();
            c7.failures.extend(lines[lines.len().saturating_sub(10)..].iter().map(|l| format!("      {}", truncate(l, 400))));
        }
    }
    checks.push(c7);

    // 8. the replay after healing
    let mut c8 = Check {
        name: "8 the dead letters replayed after their cause was fixed are rows; a second replay replays nothing",
        failures: vec![],
    };
    let to_replay: HashSet<String> = dlq_msgs
        .iter()
        .filter(|d| header(d, "reason") == "image_http_4xx")
        .filter_map(|d| serde_json::from_slice::<serde_json::Value>(&d.payload).ok())
        .filter_map(|v| v["nasa_id"].as_str().map(str::to_owned))
        .collect();
    match (&replayed, &replayed_again) {
        (Ok(first), Ok(again)) => {
            if first.replayed + first.replayed_before < to_replay.len() as u64 {
                c8.failures.push(format!("{} image_http_4xx dead letters, the replay sent {first:?}", to_replay.len()));
            }
            if again.replayed != 0 {
                c8.failures.push(format!("the second replay sent {} again", again.replayed));
            }
        }
        (first, again) => c8.failures.push(format!("replay failed: {first:?} / {again:?}")),
    }
    if to_replay.is_empty() {
        c8.failures.push("no image_http_4xx dead letter to replay (two are sent at the start)".into());
    }
    for id in to_replay.iter().filter(|id| !stored.contains_key(id.as_str())) {
        c8.failures.push(format!("{id} was replayed and is not stored"));
        c8.failures.extend(evidence(&w.slots, std::slice::from_ref(id), 8));
    }
    if idle_after_replay.is_none() {
        c8.failures.push("the replayed events were not consumed within 2 min".into());
    }
    checks.push(c8);

    // ---- the report
    let samples = samples.lock().unwrap().clone();
    let progress: Vec<String> =
        samples.iter().map(|s| format!("{:>7.1}s committed {:>6} lag {:>5}", (s.at - w.start).as_secs_f64(), s.committed, s.lag)).collect();
    let _ = std::fs::write(run_dir.join("progress.txt"), progress.join("\n"));
    let mut recovery: BTreeMap<Kind, (Duration, bool, usize)> = BTreeMap::new();
    // The producers move when a daemon logs `sent`; the consumers when the committed offsets move.
    let mut sent_at: Vec<chrono::DateTime<chrono::Utc>> = w
        .slots
        .iter()
        .flat_map(|s| s.all_lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["message"] == "sent")
        .filter_map(|v| logged_at(&v))
        .collect();
    sent_at.sort();
    let mut unmeasured: HashSet<Kind> = HashSet::new();
    for (kind, at, wall, overlapped) in &w.heals {
        let producer_side =
            matches!(kind, Kind::Api503 | Kind::ApiHang | Kind::ApiSlow | Kind::ApiMalformed | Kind::DataDirFull | Kind::DataDirReadOnly);
        let next_sent = sent_at.iter().find(|t| *t > wall).and_then(|t| (*t - *wall).to_std().ok());
        if producer_side && next_sent.is_none() && quiesced_at.saturating_duration_since(*at) < Duration::from_secs(60) {
            // Healed shortly before the fetchers were quiesced: no event could follow it.
            unmeasured.insert(*kind);
            continue;
        }
        let took = if producer_side {
            next_sent.unwrap_or_else(|| Duration::from_secs(9999))
        } else {
            let before = samples.iter().rev().find(|s| s.at <= *at).map(|s| s.committed).unwrap_or(0);
            let moved = samples.iter().find(|s| s.at > *at && (s.committed > before || s.lag == 0));
            moved.map(|s| s.at - *at).unwrap_or_else(|| Duration::from_secs(9999))
        };
        let e = recovery.entry(*kind).or_insert((Duration::ZERO, false, 0));
        e.2 += 1;
        if took > e.0 {
            *e = (took, *overlapped, e.2);
        }
    }
    let mut dlq_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq_msgs {
        *dlq_reasons.entry(header(r, "reason").to_owned()).or_default() += 1;
    }
    let daemon_events =
        topic_msgs.iter().filter(|r| r.key.as_deref().is_some_and(|k| !k.starts_with("chaos-") && !k.starts_with("poison-"))).count();
    let mut report = Vec::new();
    report.push(String::new());
    report.push(format!(
        "==== chaos report · seed {} · {} min · {}",
        a.seed,
        a.minutes,
        if a.cluster { "three-node cluster" } else { "one broker" }
    ));
    report.push(format!(
        "faults injected: {} (skipped, target busy or down: {})",
        w.injected.values().sum::<usize>(),
        w.skipped.values().sum::<usize>()
    ));
    for (kind, n) in &w.injected {
        let rec = match recovery.get(kind) {
            Some((d, overlapped, _)) if d.as_secs() < 9999 => {
                format!("longest heal → moving {:.1} s{}", d.as_secs_f64(), if *overlapped { " (other faults active)" } else { "" })
            }
            Some(_) => "did not move again before the end".into(),
            None if unmeasured.contains(kind) => "healed too close to the end to measure".into(),
            None => String::new(),
        };
        report.push(format!("  {:<32} {:>3}   {rec}", kind.name(), n));
    }
    report.push("  (moving: the committed offsets advance, or nothing is left to consume; after a NASA API or DATA_DIR fault: a daemon sends an event)".into());
    if !w.skipped.is_empty() {
        report.push(format!("  skipped: {}", w.skipped.iter().map(|(k, n)| format!("{} {n}", k.name())).collect::<Vec<_>>().join(", ")));
    }
    report.push(format!(
        "events on the topic: {} ({} good: {} from the feeder, {} from the daemons' fetchers, {} probes; {} poison); {} logged as sent by the daemons",
        topic_msgs.len(),
        good,
        feed.msgs.iter().filter(|m| m.expect_dlq.is_none()).count(),
        daemon_events,
        probes.len(),
        poisoned,
        logged_sent
    ));
    let backfill_sent =
        w.backfills.iter().flat_map(|b| b.lines.lock().unwrap().clone()).filter(|l| l.contains(r#""message":"sent""#)).count();
    report.push(format!("backfill runs beside the daemons: {} ({backfill_sent} events sent)", w.backfills.len()));
    if let Ok(r) = &replayed {
        report.push(format!("replayed after healing (image_http_4xx, the image host back): {} dead letters", r.replayed));
    }
    report.push(format!("stored: {} rows ({} distinct nasa_ids)", rows.len(), stored.len()));
    report.push(format!(
        "dead-lettered: {} ({})",
        dlq_msgs.len(),
        dlq_reasons.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
    ));
    report.push(format!("lost: {}", lost.len() + acked_missing));
    report.push(format!("duplicated: {}", duplicated.len()));
    report.push(format!(
        "daemon processes: {}; peak RSS (bound {} MiB): {}",
        w.slots.iter().map(|s| format!("{} {}", s.name, s.processes)).collect::<Vec<_>>().join(", "),
        rss_bound_kib() / 1024,
        w.slots.iter().map(|s| format!("{} {:.1} MiB", s.name, s.peak_rss_kib as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
    ));
    if let Some(d) = idle_after_heal {
        report.push(format!(
            "idle {:.1} s after everything was healed; events that waited in a producer's outbox while Kafka was unavailable: {} (all checked on the topic)",
            d.as_secs_f64(),
            pending_ids.len()
        ));
    }
    report.push("invariants:".into());
    let failed = checks.iter().filter(|c| !c.failures.is_empty()).count();
    for c in &checks {
        report.push(format!("  [{}] {}", if c.failures.is_empty() { "ok" } else { "FAILED" }, c.name));
        for f in c.failures.iter().take(60) {
            report.push(format!("      {f}"));
        }
        if c.failures.len() > 60 {
            report.push(format!("      … {} more", c.failures.len() - 60));
        }
    }
    if failed > 0 {
        report.push(format!(
            "FAILED with seed {} — replay: scripts/chaos --seed {} --minutes {}{}",
            a.seed,
            a.seed,
            a.minutes,
            if a.cluster { " --cluster" } else { "" }
        ));
        report.push(format!("daemon logs, broker log, schedule and journal: {}", run_dir.display()));
    }
    for s in &w.slots {
        let _ = std::fs::write(run_dir.join(format!("{}.log", s.name)), s.all_lines().join("\n"));
    }
    if failed > 0 {
        let _ = std::fs::write(run_dir.join("broker.log"), broker.log());
    }
    let text = report.join("\n");
    println!("{text}");
    let _ = std::fs::write(run_dir.join("report.txt"), &text);
    println!("chaos: {} passed, {} failed", checks.len() - failed, failed);
    for b in w.backfills.iter_mut() {
        let _ = b.child.kill();
        let _ = b.child.wait();
    }
    // Stop the daemons (kill -9 and reap) before the broker and their DATA_DIRs go.
    for s in w.slots.iter_mut() {
        if let Some(mut d) = s.daemon.take() {
            d.kill();
        }
    }
    for &i in &w.mounted {
        unmount(&PathBuf::from(get(&w.slots[i].env, "DATA_DIR")));
    }
    drop(w);
    drop(db);
    drop(data);
    std::process::exit(if failed > 0 { 1 } else { 0 });
}
