//! The scale-out measurement (issue 27): how a group of consumer-only daemons keeps consuming while
//! members join, leave, freeze and die, with the classic group protocol and the consumer protocol
//! (KIP-848) side by side. `scripts/bench --scale-out` builds and runs it.
//!
//! One Apache Kafka broker (`scripts/kafka/broker`, as the tests start it) and a slow image host
//! (`host`: a 200 KB image at 1 MB/s per download). For each protocol, on a
//! fresh six-partition topic, group and database: events are produced at a fixed rate, three daemons
//! (`PRODUCER_ENABLED=false`, `KAFKA_GROUP_PROTOCOL` set) consume them, and then, in order: a fourth
//! joins, one leaves with SIGTERM, one joins while another is frozen (SIGSTOP, SIGCONT 8 s later),
//! one dies with kill -9, one restarts (SIGTERM, started again). The group's committed offsets are
//! sampled 4 times a second; each daemon's log says which partitions it was given and gave up, and
//! each row it stored (partition and offset). The table says, per event: the longest standstill of
//! a partition with lag, the time until every partition is consumed again, the longest gap in the
//! rows of each member that stayed, and the rows stored from a partition after its member logged
//! giving it up; with the targets marked pass or FAIL.
//!
//! The modules: `host` (the slow image host), `sequence` (the daemons, the load, the events),
//! `measure` (what each event did), `table` (the report). The daemons' slots come from the chaos
//! run, the images and the events from the bench, the offsets reader from the chaos run's observer.
//!
//! cargo run --example scale-out -- [--protocol classic|consumer|both] [--in-flight N] [--rate N] [--size BYTES] [--host-rate BYTES_PER_S]
//! (with DAEMON_BIN naming the release daemon, as `scripts/bench --scale-out` runs it)

#[path = "../../tests/common/mod.rs"]
mod common;
#[allow(dead_code)] // the chaos run's slots; the backfills and admin requests are not used here
#[path = "../chaos/daemons.rs"]
mod daemons;
mod host;
#[path = "../bench/images.rs"]
mod images;
mod measure;
#[allow(dead_code)] // the chaos run's observer: only its offsets reader is used here
#[path = "../chaos/observer.rs"]
mod observer;
mod sequence;
#[allow(dead_code)] // the chaos run's settings: the partitions and the Kafka client
#[path = "../chaos/settings.rs"]
mod settings;
mod table;

const USAGE: &str =
    "scale-out [--protocol classic|consumer|both] [--in-flight N] [--rate EVENTS_PER_S] [--size BYTES] [--host-rate BYTES_PER_S]";

pub struct Args {
    pub protocols: Vec<String>,
    /// `CONSUMER_MAX_IN_FLIGHT` of the daemons.
    pub in_flight: u32,
    /// Events produced a second.
    pub rate: f64,
    /// The image every event points at, and how fast the host sends each download.
    pub image_bytes: usize,
    pub host_bytes_per_s: u64,
    /// The daemons' `KAFKA_SESSION_TIMEOUT_SECS` (from this environment, 10 by default): the
    /// kill -9 target is this plus 5 s.
    pub session_timeout_secs: u64,
}

fn args() -> Args {
    let session_timeout_secs =
        std::env::var("KAFKA_SESSION_TIMEOUT_SECS").ok().map(|v| v.parse().expect("KAFKA_SESSION_TIMEOUT_SECS in seconds")).unwrap_or(10);
    let mut a = Args {
        protocols: vec!["classic".into(), "consumer".into()],
        in_flight: 256,
        rate: 80.0,
        image_bytes: 200_000,
        host_bytes_per_s: 1_000_000,
        session_timeout_secs,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--protocol" => {
                a.protocols = match v {
                    "both" => vec!["classic".into(), "consumer".into()],
                    "classic" | "consumer" => vec![v.into()],
                    _ => panic!("usage: {USAGE}"),
                }
            }
            "--in-flight" => a.in_flight = v.parse().expect("--in-flight N"),
            "--rate" => a.rate = v.parse().expect("--rate EVENTS_PER_S"),
            "--size" => a.image_bytes = v.parse().expect("--size BYTES"),
            "--host-rate" => a.host_bytes_per_s = v.parse().expect("--host-rate BYTES_PER_S"),
            other => panic!("unknown argument {other}; usage: {USAGE}"),
        }
    }
    a
}

fn main() {
    let a = args();
    let image_host = host::start(images::image_body(a.image_bytes), a.host_bytes_per_s);
    let nasa = common::fake_nasa();
    let broker = common::Broker::own();
    let setting = sequence::Setting { broker: &broker, nasa: &nasa, image_host, args: &a };
    let logs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/scale-out");
    let runs: Vec<sequence::Run> = a
        .protocols
        .iter()
        .map(|protocol| {
            let run = sequence::run(&setting, protocol);
            keep_logs(&logs.join(format!("{protocol}-in-flight-{}", a.in_flight)), &run);
            run
        })
        .collect();
    table::print(&a, &runs);
    eprintln!("scale-out: the daemons' logs are in {}", logs.display());
}

/// Each member's log lines (all its processes), the events and the group's offsets as sampled, to
/// read what the table says happened.
fn keep_logs(dir: &std::path::Path, run: &sequence::Run) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, lines) in &run.members {
        std::fs::write(dir.join(format!("{name}.log")), lines.join("\n")).unwrap();
    }
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%H:%M:%S%.3f").to_string();
    let events: Vec<String> = run.events.iter().map(|e| format!("{} to {} {}", time(&e.at), time(&e.until), e.kind.name())).collect();
    std::fs::write(dir.join("events.txt"), events.join("\n")).unwrap();
    let offsets: Vec<String> =
        run.samples.iter().map(|s| format!("{} committed {:?} ends {:?}", time(&s.at), s.committed, s.ends)).collect();
    std::fs::write(dir.join("offsets.txt"), offsets.join("\n")).unwrap();
}
