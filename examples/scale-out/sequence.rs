//! One protocol's run: the daemons in one group on a fresh six-partition topic, the paced load, the
//! group's offsets sampled 4 times a second, and the sequence of events.

use crate::common::{daemon_env, set, Broker, FakeNasa, TestDb};
use crate::daemons::Slot;
use crate::images::produce;
use crate::measure::{held_now, Event, Kind, Sample};
use crate::observer::{offsets_client, positions};
use crate::settings::{kafka_client, PARTITIONS};
use crate::Args;
use chrono::Utc;
use rdkafka::producer::{BaseProducer, Producer};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long each event is watched before the next (the kill is watched for the session timeout more).
const WINDOW: Duration = Duration::from_secs(15);
/// How long the frozen member stays frozen: under the 10 s session timeout, so it is not dropped.
const FREEZE: Duration = Duration::from_secs(8);
/// The three members consume steadily this long before the first event.
const SETTLE: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What one protocol's run leaves to measure.
pub struct Run {
    pub protocol: String,
    pub events: Vec<Event>,
    /// Each member's name and log lines (all its processes).
    pub members: Vec<(String, Vec<String>)>,
    pub samples: Vec<Sample>,
    pub produced: usize,
    pub rows: usize,
    /// The group's lag when the run ended (None: the offsets could not be read).
    pub end_lag: Option<i64>,
    /// Exits nobody asked for (a daemon's own failure).
    pub unexpected_exits: Vec<String>,
}

/// The places to run in, shared by the protocols' runs.
pub struct Setting<'a> {
    pub broker: &'a Broker,
    pub nasa: &'a FakeNasa,
    pub image_host: String,
    pub args: &'a Args,
}

/// The four member slots (m1..m4) of one group; at most four run at once.
struct Group {
    slots: Vec<Slot>,
}

impl Group {
    fn slot(&mut self, name: &str) -> &mut Slot {
        self.slots.iter_mut().find(|s| s.name == name).expect("a member of the group")
    }

    /// Waits `d`, reaping the members that exit.
    fn wait(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.slots.iter_mut().for_each(|s| {
                s.reap(Duration::ZERO);
            });
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until member `name` exited (30 s at most).
    fn wait_exit(&mut self, name: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        while self.slot(name).daemon.is_some() && Instant::now() < until {
            self.wait(Duration::from_millis(100));
        }
    }

    /// The running members and their process numbers: a member "stayed" through a window when it
    /// is still the same process at its end.
    fn processes(&self) -> Vec<(String, u32)> {
        self.slots.iter().filter(|s| s.daemon.is_some()).map(|s| (s.name.clone(), s.processes)).collect()
    }

    fn held(&self, name: &str) -> BTreeSet<i32> {
        self.slots.iter().find(|s| s.name == name).map(|s| held_now(&s.all_lines())).unwrap_or_default()
    }
}

/// An event being watched: when it began, who ran then, who was acted on.
struct Watch {
    kind: Kind,
    at: chrono::DateTime<Utc>,
    before: Vec<(String, u32)>,
    acted: &'static [&'static str],
    frozen: BTreeSet<i32>,
}

impl Watch {
    fn begin(g: &Group, kind: Kind, acted: &'static [&'static str]) -> Watch {
        Watch { kind, at: Utc::now(), before: g.processes(), acted, frozen: BTreeSet::new() }
    }

    /// Watches `wait` longer; the members that ran through it as the same process, not acted on, stayed.
    fn end(self, g: &mut Group, wait: Duration) -> Event {
        g.wait(wait);
        let after = g.processes();
        let stayed = self.before.iter().filter(|p| after.contains(p) && !self.acted.contains(&p.0.as_str())).map(|p| p.0.clone()).collect();
        Event { kind: self.kind, at: self.at, until: Utc::now(), frozen: self.frozen, stayed }
    }
}

pub fn run(setting: &Setting, protocol: &str) -> Run {
    let broker = setting.broker.with_new_topics();
    broker.create_topic(&broker.topic, PARTITIONS);
    let db = TestDb::create();
    let data = tempfile::tempdir().unwrap();
    let group_id = format!("scale-out-{protocol}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let a = setting.args;
    let env = |name: &str| {
        let mut env = daemon_env(&broker, &db, setting.nasa, &data.path().join(name));
        for (k, v) in [
            ("PRODUCER_ENABLED", "false"),
            ("KAFKA_GROUP_ID", group_id.as_str()),
            ("KAFKA_GROUP_PROTOCOL", protocol),
            ("KAFKA_SESSION_TIMEOUT_SECS", &a.session_timeout_secs.to_string()),
            ("CONSUMER_MAX_IN_FLIGHT", &a.in_flight.to_string()),
            ("MAX_IMAGE_BYTES", &(1 << 20).to_string()),
        ] {
            set(&mut env, k, v);
        }
        env
    };
    let mut g = Group { slots: ["m1", "m2", "m3", "m4"].iter().map(|n| Slot::new(n, env(n), false, false)).collect() };

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (addr, topic, group, samples, stop) =
            (broker.addr.clone(), broker.topic.clone(), group_id.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || sample(&addr, &topic, &group, &samples, &stop))
    };
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (addr, topic, host, rate, feeding) =
            (broker.addr.clone(), broker.topic.clone(), setting.image_host.clone(), a.rate, feeding.clone());
        std::thread::spawn(move || feed(&addr, &topic, &host, rate, &feeding))
    };

    say(protocol, "three members start");
    for name in ["m1", "m2", "m3"] {
        g.slot(name).spawn();
    }
    let started = Instant::now();
    while !["m1", "m2", "m3"].iter().all(|n| !g.held(n).is_empty())
        || ["m1", "m2", "m3"].iter().flat_map(|n| g.held(n)).collect::<BTreeSet<_>>().len() < PARTITIONS as usize
    {
        assert!(started.elapsed() < Duration::from_secs(90), "the three members did not share the six partitions within 90 s");
        g.wait(Duration::from_millis(200));
    }
    g.wait(SETTLE);

    let session = Duration::from_secs(a.session_timeout_secs);
    let mut events = Vec::new();

    say(protocol, "m4 joins");
    let w = Watch::begin(&g, Kind::Join, &["m4"]);
    g.slot("m4").spawn();
    events.push(w.end(&mut g, WINDOW));

    say(protocol, "m2 leaves (SIGTERM)");
    let w = Watch::begin(&g, Kind::Leave, &["m2"]);
    g.slot("m2").signal(libc::SIGTERM);
    events.push(w.end(&mut g, WINDOW));

    say(protocol, "m3 frozen (SIGSTOP), m2 joins a second later; m3 resumed (SIGCONT) after 8 s");
    let mut w = Watch::begin(&g, Kind::FrozenJoin, &["m2", "m3"]);
    w.frozen = g.held("m3");
    g.slot("m3").signal(libc::SIGSTOP);
    g.wait(Duration::from_secs(1));
    g.slot("m2").spawn();
    g.wait(FREEZE - Duration::from_secs(1));
    g.slot("m3").signal(libc::SIGCONT);
    events.push(w.end(&mut g, WINDOW));

    say(protocol, "m4 dies (kill -9)");
    let w = Watch::begin(&g, Kind::Kill, &["m4"]);
    g.slot("m4").signal(libc::SIGKILL);
    events.push(w.end(&mut g, session + WINDOW));

    say(protocol, "m1 restarts (SIGTERM, started again once it exited)");
    let w = Watch::begin(&g, Kind::Restart, &["m1"]);
    g.slot("m1").signal(libc::SIGTERM);
    g.wait_exit("m1");
    g.slot("m1").spawn();
    events.push(w.end(&mut g, WINDOW));

    feeding.store(false, Ordering::SeqCst);
    let produced = feeder.join().expect("the feeder");
    say(protocol, &format!("{produced} events produced; waiting until the group has consumed them (60 s at most)"));
    let drained = Instant::now();
    let lag = |samples: &Mutex<Vec<Sample>>| {
        samples.lock().unwrap().last().map(|s| s.ends.iter().zip(&s.committed).map(|(e, c)| (e - c).max(0)).sum::<i64>())
    };
    while lag(&samples) != Some(0) && drained.elapsed() < Duration::from_secs(60) {
        g.wait(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let end_lag = lag(&samples);
    let rows = db.rows_count();

    let unexpected_exits =
        g.slots.iter().flat_map(|s| s.unexpected_exits.iter().map(move |(what, _)| format!("{}: {what}", s.name))).collect();
    let members = g.slots.iter().map(|s| (s.name.clone(), s.all_lines())).collect();
    for s in g.slots.iter_mut() {
        if let Some(mut d) = s.daemon.take() {
            d.kill();
        }
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    Run { protocol: protocol.to_owned(), events, members, samples, produced, rows, end_lag, unexpected_exits }
}

/// Samples the group's committed offsets and the partitions' ends every 250 ms until `stop`.
fn sample(addr: &str, topic: &str, group: &str, samples: &Mutex<Vec<Sample>>, stop: &AtomicBool) {
    let client = offsets_client(addr, group);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        if let Some((committed, ends)) = positions(&client, topic, PARTITIONS) {
            samples.lock().unwrap().push(Sample { at: Utc::now(), committed, ends });
        }
        std::thread::sleep(SAMPLE_EVERY.saturating_sub(started.elapsed()));
    }
}

/// Produces `rate` events a second, each with an image of its own on `image_host`, while `feeding`
/// holds; the number produced.
fn feed(addr: &str, topic: &str, image_host: &str, rate: f64, feeding: &AtomicBool) -> usize {
    let producer: BaseProducer = kafka_client(addr, "1000").set("linger.ms", "5").create().expect("a producer");
    let base_url = format!("http://{image_host}");
    let started = Instant::now();
    let mut sent = 0;
    while feeding.load(Ordering::SeqCst) {
        produce(&producer, topic, &base_url, sent);
        producer.poll(Duration::ZERO);
        sent += 1;
        // The pace is the workload itself, not a wait for a condition.
        std::thread::sleep((started + Duration::from_secs_f64(sent as f64 / rate)).saturating_duration_since(Instant::now()));
    }
    producer.flush(Duration::from_secs(30)).expect("every event delivered");
    sent
}

fn say(protocol: &str, what: &str) {
    eprintln!("scale-out [{protocol}] {} {what}", Utc::now().format("%H:%M:%S%.3f"));
}
