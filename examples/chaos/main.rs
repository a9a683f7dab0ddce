//! The seeded chaos run (issue 11): random faults against the whole pipeline, with the invariants a
//! user relies on checked when it ends. `scripts/chaos [--minutes M] [--seed S] [--cluster]
//! [--protocol classic|consumer]` builds and runs it.
//!
//! It starts Apache Kafka (one broker, or a three-node cluster), Postgres behind a TCP proxy that
//! can cut it, the fake NASA API and image server with their fault switches, and four daemon slots:
//! two with both roles, one consumer-only, and an extra consumer-only member that joins and leaves,
//! all in one group on the same group protocol (`KAFKA_GROUP_PROTOCOL`, classic or consumer).
//! Now and then a `backfill` runs on the DATA_DIR of a daemon with both roles (its own outbox slot).
//! A feeder produces good events of its own, and poison messages when the schedule says so.
//! The schedule (when, which fault, which target, how long) is drawn from `StdRng::seed_from_u64`
//! before the run starts, so a seed replays the same fault sequence; whether a fault lands depends on
//! the state it meets (a daemon that is already down is not killed again: the fault is "skipped").
//!
//! At the end every fault is healed, the fetchers are quiesced (the NASA API answers 503), the run
//! waits until the pipeline is idle, produces a last probe batch, and checks the invariants.
//!
//! The modules, in the order the run uses them: `plan` (arguments, the seeded schedule),
//! `settings`, `feeder` (good and poison events), `observer` (the group's progress), `daemons`
//! (the slots and backfills), `disk` (the DATA_DIR faults' filesystems), `world` and `faults`
//! (what the faults act on, injecting and healing them), `ending` (heal, quiesce, probe, replay),
//! `observed` (what is read at the end), `checks` (the invariants) and `report`.

mod checks;
#[path = "../../tests/common/mod.rs"]
mod common;
mod daemons;
mod disk;
mod ending;
mod faults;
mod feeder;
mod observed;
mod observer;
mod plan;
mod report;
mod settings;
mod world;

use common::*;
use daemons::Slot;
use feeder::{feeder, poison_of_kind, FeedCmd, FeedLog, POISON_404};
use observed::{Index, Observed};
use observer::{observer, offsets_client, Sample};
use plan::{args, schedule, write_schedule, Planned};
use rand::{rngs::StdRng, SeedableRng};
use settings::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use world::World;

fn main() {
    let a = args();
    println!("chaos: seed {} ({} min, {})", a.seed, a.minutes, a.layout());
    println!("chaos: replay with: {}", a.replay_command());
    let plan = schedule(a.seed, a.minutes, a.cluster);
    let run_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chaos").join(format!("seed-{}", a.seed));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    write_schedule(&plan, &run_dir.join("schedule.txt"));
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
            ("KAFKA_GROUP_PROTOCOL", a.protocol.name()),
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
    let mounted = mount_data_dirs(data.path());
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
    let mut w = World::new(broker.clone(), proxy, nasa, slots, mounted, feed, &run_dir.join("journal.txt"));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let observing = Arc::new(AtomicBool::new(false));
    let observer_thread = {
        let (addr, topic, group, samples, stop, notes) =
            (broker.addr.clone(), broker.topic.clone(), group.clone(), samples.clone(), observing.clone(), w.notes.clone());
        std::thread::spawn(move || observer(addr, topic, group, samples, stop, notes))
    };

    w.say(format!("started: broker(s) at {}, Postgres through 127.0.0.1:{}, NASA at {}", broker.addr, w.proxy.port, w.nasa.url));
    // Two dead letters the end of the run can fix and replay, whatever the schedule draws.
    for _ in 0..2 {
        let m = poison_of_kind(&w.nasa, POISON_404, &mut w.poison_serial, &mut StdRng::seed_from_u64(a.seed));
        let _ = w.feed.send(FeedCmd::Send(m));
    }
    play(&mut w, &plan, Duration::from_secs_f64(a.minutes * 60.0));

    ending::heal_everything(&mut w);
    let quiesced_at = ending::quiesce(&mut w, feeder_thread);
    let offsets = offsets_client(&broker.addr, &group);
    let end = ending::settle(&mut w, &offsets, &group, quiesced_at);
    observing.store(true, Ordering::SeqCst);
    let _ = observer_thread.join();

    let seen = Observed::read(&broker, &offsets, &db, &feed_log);
    let index = Index::new(&seen, &broker.topic);
    let verdict = checks::judge(&mut w, &seen, &index, &end);
    let samples = samples.lock().unwrap().clone();
    report::write(&a, &w, &run_dir, &samples, &seen, &end, &verdict);
    w.stop_all();
    drop(w);
    drop(db);
    drop(data);
    std::process::exit(if verdict.failed() > 0 { 1 } else { 0 });
}

/// The producers' DATA_DIRs on small filesystems of their own, to fill and make read-only: the
/// slots (0, 1) where mounting worked.
fn mount_data_dirs(data: &Path) -> Vec<usize> {
    let mut mounted = Vec::new();
    for (i, name) in ["both-1", "both-2"].iter().enumerate() {
        let dir = data.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        match disk::mount_small(&dir) {
            Ok(()) => mounted.push(i),
            Err(e) => eprintln!("chaos: no tmpfs for {name}'s DATA_DIR ({e}): its DATA_DIR faults are skipped"),
        }
    }
    mounted
}

/// Runs the schedule: the world ticks every 100 ms, each fault is injected when its time comes,
/// until `end` and the faults planned before it are through.
fn play(w: &mut World, plan: &[Planned], end: Duration) {
    let mut next = 0;
    while w.start.elapsed() < end || next < plan.len() && plan[next].at < end {
        w.tick(false);
        while next < plan.len() && plan[next].at <= w.start.elapsed() {
            w.inject(&plan[next]);
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
