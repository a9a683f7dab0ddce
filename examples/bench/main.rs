//! Throughput benchmark of the consumer role: `scripts/bench` runs it for several image sizes.
//!
//! It starts its own Apache Kafka broker, Postgres database and nginx (serving generated, incompressible
//! "JPEG" files), checks that nginx alone is far faster than the daemon, pre-loads N events into
//! Kafka, runs the daemon's consumer side, and measures until every row is stored and every offset
//! committed: images/s, MB/s, p50/p99 event latency with that backlog and, afterwards, with events
//! sent at a quarter of that rate (not saturated), idle and peak RSS, and this Postgres's own
//! binary COPY limit for the same rows, measured before and after the run.
//!
//! `--ceiling` runs, instead of the daemon, the same external work with nothing else (`ceiling.rs`):
//! what any consumer could reach here, to compare the daemon with.
//!
//! BENCH_DAEMON_LOG=path keeps the daemon's log lines; BENCH_IDLE_SMAPS=path its /proc/<pid>/smaps
//! when idle (what the idle RSS is made of).
//!
//! cargo run --release --example bench -- --count 2000 --size 200000 [--concurrency 8]

mod ceiling;
#[path = "../../tests/common/mod.rs"]
mod common;
mod images;

use common::*;
use diesel::prelude::*;
use images::{id, produce, write_images, Nginx};
use rand::RngCore;
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    count: usize,
    size: usize,
    concurrency: usize,
    partitions: i32,
    ceiling: bool,
}

fn args() -> Args {
    let mut a = Args { count: 2000, size: 200_000, concurrency: 8, partitions: 3, ceiling: false };
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = argv.iter().position(|v| v == "--ceiling") {
        a.ceiling = true;
        argv.remove(i);
    }
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--count" => a.count = v.parse().expect("--count N"),
            "--size" => a.size = v.parse().expect("--size BYTES"),
            "--concurrency" => a.concurrency = v.parse().expect("--concurrency N"),
            "--partitions" => a.partitions = v.parse().expect("--partitions N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// How fast nginx alone serves the files with the daemon's concurrency.
async fn nginx_alone(addr: &str, count: usize, concurrency: usize) -> f64 {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let n = count.min(2000);
    futures::stream::iter(0..n)
        .map(|i| {
            let (client, url) = (client.clone(), format!("http://{addr}/image/{}/{}~orig.jpg", id(i), id(i)));
            async move { client.get(url).send().await.unwrap().bytes().await.unwrap().len() }
        })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// CPU time the process has used so far (user and system, all its threads), in ms.
fn cpu_ms(pid: u32) -> f64 {
    stat_cpu_ms(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU time in a /proc `stat` line: the fields after the command's closing parenthesis; utime
/// and stime are the 14th and 15th.
fn stat_cpu_ms(stat: &str) -> f64 {
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let ticks: Vec<f64> = after.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    ticks.iter().sum::<f64>() * 1000.0 / 100.0 // USER_HZ is 100 on Linux
}

/// The daemon's CPU time by thread name (tokio's blocking pool, rdkafka's threads, the actor
/// thread), largest first: which thread a run is bound by.
fn cpu_ms_by_thread(pid: u32) -> Vec<(String, f64)> {
    let mut by_name = std::collections::BTreeMap::<String, f64>::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_owned();
        *by_name.entry(name).or_default() += stat_cpu_ms(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
    }
    let mut threads: Vec<_> = by_name.into_iter().filter(|(_, ms)| *ms > 0.0).collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    threads
}

/// The machine's CPU time so far, in ticks, from /proc/stat's first line. Idle counts iowait too
/// (nobody ran); stolen is the time the hypervisor ran other machines.
#[derive(Clone, Copy)]
struct MachineTicks {
    busy: u64,
    idle: u64,
    stolen: u64,
}

fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let tick = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    MachineTicks { busy: tick(0) + tick(1) + tick(2) + tick(5) + tick(6), idle: tick(3) + tick(4), stolen: tick(7) }
}

impl MachineTicks {
    /// The shares of the time since `earlier` that the machine sat idle and that the hypervisor took.
    fn idle_and_stolen_since(&self, earlier: &MachineTicks) -> (f64, f64) {
        let (idle, stolen) = (self.idle - earlier.idle, self.stolen - earlier.stolen);
        let ticks = (self.busy - earlier.busy + idle + stolen).max(1) as f64;
        (idle as f64 / ticks, stolen as f64 / ticks)
    }
}

/// A thread's time on a CPU and waiting for one (runnable, not running), and how often it was
/// put on one, from /proc/<pid>/schedstat: the thread whose id is `pid`, the process's main thread.
#[derive(Clone, Copy)]
struct ThreadSched {
    running_ns: u64,
    waiting_ns: u64,
    runs: u64,
}

fn main_thread_sched(pid: u32) -> ThreadSched {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    let mut fields = stat.split_whitespace().filter_map(|v| v.parse().ok());
    let mut next = || fields.next().unwrap_or(0);
    ThreadSched { running_ns: next(), waiting_ns: next(), runs: next() }
}

/// The machine and the daemon's main thread, sampled every poll (50 ms).
struct CpuSample {
    at: chrono::DateTime<chrono::Utc>,
    machine: MachineTicks,
    actor: ThreadSched,
}

/// Where the CPU went over the steady seconds, as shares of the time: the machine's idle and
/// stolen time, and the daemon's main thread running and waiting for a CPU.
struct SteadyCpu {
    idle: f64,
    stolen: f64,
    actor_running: f64,
    actor_waiting: f64,
    actor_runs_per_event: f64,
}

impl SteadyCpu {
    /// From the first and last samples between `from` and `to`, when `events_per_s` came through.
    fn between(
        samples: &[CpuSample],
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        events_per_s: f64,
    ) -> Option<SteadyCpu> {
        let mut within = samples.iter().filter(|s| s.at >= from && s.at <= to);
        let first = within.next()?;
        let last = within.next_back().unwrap_or(first);
        let (idle, stolen) = last.machine.idle_and_stolen_since(&first.machine);
        let wall_ns = (last.at - first.at).num_nanoseconds()?.max(1) as f64;
        Some(SteadyCpu {
            idle,
            stolen,
            actor_running: (last.actor.running_ns - first.actor.running_ns) as f64 / wall_ns,
            actor_waiting: (last.actor.waiting_ns - first.actor.waiting_ns) as f64 / wall_ns,
            actor_runs_per_event: (last.actor.runs - first.actor.runs) as f64 / (wall_ns / 1e9) / events_per_s,
        })
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Writes out what earlier phases left to the disk (Postgres's checkpoint, the kernel's dirty
/// pages), so that the next measurement does not pay for them.
fn settle_disk(db: &TestDb) {
    diesel::sql_query("CHECKPOINT").execute(&mut db.conn()).unwrap();
    Command::new("sync").status().unwrap();
}

/// Postgres's own COPY limit for the run's rows, measured on each side of the run: on this kind
/// of machine it moves by up to twofold from one minute to the next (the disk), more than the
/// pipeline does.
struct CopyLimits {
    before: f64,
    after: f64,
}

impl CopyLimits {
    /// Measured like the run: the same rows (up to 10,000, a few seconds) on a disk at rest.
    fn measure(db: &TestDb, a: &Args) -> f64 {
        settle_disk(db);
        copy_limit(a.count.min(10_000), a.size)
    }

    /// `rate` against the mean of the two, and against the faster.
    fn print_ratio(&self, rate: f64) {
        let (before, after) = (self.before, self.after);
        let mean = (before + after) / 2.0;
        println!(
            "postgres_copy_rows_per_s={mean:.0} ratio={:.2} (the mean of before={before:.0} and after={after:.0} the run; against the faster: {:.2})",
            rate / mean,
            rate / before.max(after)
        );
    }
}

/// Rows per second of binary COPY into a fresh `images` table, batches of 50, one connection.
fn copy_limit(count: usize, size: usize) -> f64 {
    use nasa_ingest::db::{schema::images, NewImage};
    let db = TestDb::create();
    let pool = nasa_ingest::db::pool(&db.url, 1);
    nasa_ingest::db::migrate(&pool).unwrap();
    let mut conn = db.conn();
    let mut bytes = vec![0u8; size];
    rand::rng().fill_bytes(&mut bytes);
    let row = |i: usize| NewImage {
        nasa_id: format!("copy-{i}"),
        title: Some("title".into()),
        query: Some("bench".into()),
        image_url: format!("http://x/{i}.jpg"),
        content_type: "image/jpeg".into(),
        byte_size: size as i64,
        sha256: "0".repeat(64),
        image_bytes: bytes.clone(),
        event_id: Some(uuid::Uuid::new_v4()),
        kafka_partition: Some(0),
        kafka_offset: Some(i as i64),
        trace_id: None,
    };
    let started = Instant::now();
    for batch in (0..count).collect::<Vec<_>>().chunks(50) {
        let rows: Vec<NewImage> = batch.iter().map(|&i| row(i)).collect();
        diesel::copy_from(images::table).from_insertable(&rows).execute(&mut conn).unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// At most this many events are sent paced after the backlog.
const PACED_MAX: usize = 200;

/// What the paced phase sends with and reads from.
struct Run<'a> {
    broker: &'a Broker,
    db: &'a TestDb,
    producer: &'a rdkafka::producer::BaseProducer,
    group: &'a str,
    base_url: &'a str,
}

struct Paced {
    rate: f64,
    latencies: Vec<u64>,
}

/// Latency when the pipeline is not saturated: events sent one by one at a quarter of the measured
/// rate (at most 50/s, for 4 s) to the running daemon, which has drained its backlog, after a
/// checkpoint.
fn paced_latency(daemon: &Daemon, run: &Run, a: &Args, measured: f64) -> Paced {
    let Run { broker, db, producer, group, base_url } = *run;
    // Start from a disk at rest. The backlog's writes leave Postgres a checkpoint to do, and the
    // kernel the dirty pages of the generated images and the table; their flushes hold commits
    // for up to a second on this disk (seen: the paced events stalled together, 15-30 s after the
    // backlog, with no checkpoint running). That is the backlog's cost, not the pipeline's latency.
    settle_disk(db);
    let rate = (measured / 4.0).clamp(1.0, 50.0);
    let n = ((rate * 4.0) as usize).clamp(10, PACED_MAX);
    for i in a.count..a.count + n {
        produce(producer, &broker.topic, base_url, i);
        rdkafka::producer::Producer::flush(producer, Duration::from_secs(10)).unwrap();
        // The pace is the workload itself, not a wait for a condition.
        std::thread::sleep(Duration::from_secs_f64(1.0 / rate));
    }
    wait_until(Duration::from_secs(120), "every paced event committed", || {
        let committed: i64 = broker.committed(group, &broker.topic, a.partitions).iter().map(|o| o.unwrap_or(0)).sum();
        committed as usize == a.count + n
    });
    let first = id(a.count);
    let mut latencies: Vec<u64> = daemon
        .logs_with("saved to DB")
        .iter()
        .filter(|l| l["labels.nasa_id"].as_str().is_some_and(|id| id >= first.as_str()))
        .filter_map(|l| l["labels.latency_ms"].as_u64())
        .collect();
    latencies.sort_unstable();
    Paced { rate, latencies }
}

/// Mean of each stage the `saved to DB` lines report, as `before=… check=… download=… store=…`.
fn stage_means(saved: &[serde_json::Value]) -> String {
    let mean = |stage: &str| {
        let key = format!("labels.{stage}_ms");
        saved.iter().filter_map(|l| l[key.as_str()].as_f64()).sum::<f64>() / saved.len().max(1) as f64
    };
    ["before", "check", "download", "store"].map(|s| format!("{s}={:.1}", mean(s))).join(" ")
}

/// The Storer's mean rows per statement so far: its histogram's sum over its count, from `/metrics`.
fn rows_per_statement(http_addr: &str) -> f64 {
    let (_, metrics) = common::http(http_addr, "GET", "/metrics", &[]);
    let value = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    value("nasa_ingest_store_batch_rows_sum") / value("nasa_ingest_store_batch_rows_count").max(1.0)
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let work = tempfile::tempdir().unwrap();
    eprintln!("bench: {} images of {} bytes, DOWNLOAD_CONCURRENCY={}", a.count, a.size, a.concurrency);
    write_images(work.path(), a.count + PACED_MAX, a.size);
    let nginx = Nginx::start(work.path());
    let server_rate = nginx_alone(&nginx.addr, a.count, a.concurrency).await;

    let broker = Broker::shared();
    broker.create_topic(&broker.topic, a.partitions);
    broker.create_topic("idle", 1);
    let db = TestDb::create();
    let data = tempfile::tempdir().unwrap();
    let base_url = format!("http://{}", nginx.addr);
    let fake = common::FakeNasa::start(&fixtures_dir()).unwrap();
    let mut env = daemon_env(&broker, &db, &fake, data.path());
    set(&mut env, "PRODUCER_ENABLED", "false");
    set(&mut env, "DOWNLOAD_CONCURRENCY", &a.concurrency.to_string());
    set(&mut env, "MAX_IMAGE_BYTES", &(a.size * 2).max(1 << 20).to_string());
    // Settings to compare, passed through from the bench's own environment.
    for var in ["CONSUMER_MAX_IN_FLIGHT", "LOG_LEVEL"] {
        if let Ok(value) = std::env::var(var) {
            set(&mut env, var, &value);
        }
    }

    // Idle RSS: the consumer role on an empty topic.
    let mut idle_env = env.clone();
    set(&mut idle_env, "KAFKA_TOPIC", "idle");
    // A group of its own: a member killed without leaving would hold up the next join for a session timeout.
    set(&mut idle_env, "KAFKA_GROUP_ID", "bench-idle");
    let idle = Daemon::spawn(&idle_env);
    idle.wait_for_log("started", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3)); // settle, then read: this is a measurement, not a wait for a condition
    let idle_rss = rss_kib(idle.pid(), "VmRSS:");
    if let Ok(path) = std::env::var("BENCH_IDLE_SMAPS") {
        std::fs::copy(format!("/proc/{}/smaps", idle.pid()), path).unwrap();
    }
    drop(idle);

    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &broker.addr).set("linger.ms", "20").create().unwrap();
    for i in 0..a.count {
        produce(&producer, &broker.topic, &base_url, i);
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();

    let copy_before = CopyLimits::measure(&db, &a);
    settle_disk(&db);
    if a.ceiling {
        return report_ceiling(&a, &broker, &db, &nginx.addr, copy_before, server_rate);
    }
    let started = Instant::now();
    let daemon = Daemon::spawn(&env);
    let mut peak = 0;
    let mut machine = Vec::new();
    wait_until(Duration::from_secs(3600), "every offset committed", || {
        machine.push(CpuSample { at: chrono::Utc::now(), machine: machine_ticks(), actor: main_thread_sched(daemon.pid()) });
        peak = peak.max(rss_kib(daemon.pid(), "VmHWM:"));
        let committed: i64 = broker.committed(&group, &broker.topic, a.partitions).iter().map(|o| o.unwrap_or(0)).sum();
        committed as usize == a.count
    });
    let elapsed = started.elapsed().as_secs_f64();
    let finished = chrono::Utc::now();
    let cpu_per_event = cpu_ms(daemon.pid()) * 1000.0 / a.count as f64;
    let threads = cpu_ms_by_thread(daemon.pid());
    peak = peak.max(rss_kib(daemon.pid(), "VmHWM:"));
    let saved = daemon.logs_with("saved to DB");
    let mut latencies: Vec<u64> = saved.iter().filter_map(|l| l["labels.latency_ms"].as_u64()).collect();
    latencies.sort_unstable();
    let stages = stage_means(&saved);
    let rows_per_statement = rows_per_statement(&daemon.http_addr());
    let rows = db.rows_count();
    assert_eq!(rows, a.count, "every image stored once");
    // The steady rate: from the partition assignment (the group join is start-up cost) to the last
    // row stored, as Postgres's COPY limit counts rows stored. The offsets follow within the
    // consumer's commit interval (200 ms), a fixed tail that is shown beside it.
    let assigned = daemon.logs_with("partitions assigned").first().and_then(logged_at).expect("an assignment");
    let last_stored = saved.iter().filter_map(logged_at).max().expect("rows stored");
    let steady = seconds(last_stored - assigned);
    let rate = a.count as f64 / steady;
    let to_committed = seconds(finished - assigned);
    let cpu = SteadyCpu::between(&machine, assigned, last_stored, rate);
    let run = Run { broker: &broker, db: &db, producer: &producer, group: &group, base_url: &base_url };
    let paced = paced_latency(&daemon, &run, &a, rate);
    if let Ok(path) = std::env::var("BENCH_DAEMON_LOG") {
        std::fs::write(path, daemon.lines().join("\n")).unwrap();
    }
    drop(daemon);

    let copy = CopyLimits { before: copy_before, after: CopyLimits::measure(&db, &a) };
    println!("size_bytes={} count={} concurrency={}", a.size, a.count, a.concurrency);
    println!(
        "images_per_s={rate:.0} mb_per_s={:.1} steady_s={steady:.2} (partitions assigned -> last row stored); to every offset committed: {:.0}/s over {to_committed:.2} s; with start-up: {:.0}/s over {elapsed:.1} s",
        rate * a.size as f64 / 1e6,
        a.count as f64 / to_committed,
        a.count as f64 / elapsed
    );
    println!(
        "backlog_latency_ms p50={} p99={} (read from Kafka -> row committed, the backlog pre-loaded: saturated; {} events)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );
    println!("backlog_stage_means_ms {stages} (where a saturated event's time goes)");
    println!("store_rows_per_statement mean={rows_per_statement:.1} (the Storer's batches, from /metrics)");
    println!(
        "paced_latency_ms p50={} p99={} ({} events at {:.0}/s, a quarter of the rate above: not saturated)",
        percentile(&paced.latencies, 0.5),
        percentile(&paced.latencies, 0.99),
        paced.latencies.len(),
        paced.rate
    );
    println!("daemon_cpu_us_per_event={cpu_per_event:.0} (its CPU time from start to every offset committed, over the events)");
    let threads: Vec<String> = threads.iter().map(|(name, ms)| format!("{name}={ms:.0}")).collect();
    match cpu {
        Some(c) => {
            println!(
                "machine_idle={:.0}% stolen={:.0}% (of all cores over the steady seconds: idle near 0 means the run is bound by CPU; stolen is the hypervisor's, for other machines)",
                c.idle * 100.0,
                c.stolen * 100.0
            );
            println!(
                "actor_thread running={:.0}% waiting_for_cpu={:.0}% runs_per_event={:.2} (the daemon's main thread, where its actors, downloads and hashing run, over the steady seconds: running and waiting together near 100% means it binds the rate)",
                c.actor_running * 100.0,
                c.actor_waiting * 100.0,
                c.actor_runs_per_event
            );
        }
        None => println!("machine_idle and actor_thread: the steady seconds were too short to sample"),
    }
    println!("daemon_cpu_ms_by_thread {} (a thread near the steady seconds x 1000 is what binds the rate)", threads.join(" "));
    println!("rss_kib idle={idle_rss} peak={peak}");
    copy.print_ratio(rate);
    println!("nginx_alone_images_per_s={server_rate:.0} (same concurrency; the server is not the bottleneck when this is well above images_per_s)");
}

/// Runs the ceiling instead of the daemon on the pre-loaded events, and prints its rate against
/// the COPY limit measured the same way as the daemon's.
fn report_ceiling(a: &Args, broker: &Broker, db: &TestDb, image_host: &str, copy_before: f64, server_rate: f64) {
    nasa_ingest::db::migrate(&nasa_ingest::db::pool(&db.url, 1)).unwrap();
    let c = ceiling::run(&broker.addr, &broker.topic, &db.url, image_host, a.count, a.concurrency);
    assert_eq!(db.rows_count(), a.count, "every image stored once");
    let copy = CopyLimits { before: copy_before, after: CopyLimits::measure(db, a) };
    println!("size_bytes={} count={} concurrency={} ceiling", a.size, a.count, a.concurrency);
    println!(
        "ceiling_images_per_s={:.0} mb_per_s={:.1} (first event read -> last row committed; no checks, logs, retries or offset commits)",
        c.rate,
        c.rate * a.size as f64 / 1e6
    );
    println!(
        "ceiling_cpu_us_per_event={:.0} rows_per_statement={:.1} machine_idle={:.0}% stolen={:.0}% (over the same seconds)",
        c.cpu_us_per_event,
        c.rows_per_statement,
        c.machine_idle * 100.0,
        c.machine_stolen * 100.0
    );
    copy.print_ratio(c.rate);
    println!("nginx_alone_images_per_s={server_rate:.0}");
}
