//! The world the faults act on: the broker's nodes, the Postgres proxy, the fake NASA API and image
//! host, the daemon slots and backfills, the faults waiting to heal, and the run's journal. `tick`
//! keeps it going (restarts, RSS samples, heals that are due); the fault injectors are in `faults`.

use crate::common::{Broker, FakeNasa, TcpProxy};
use crate::daemons::{get_json, BackfillRun, Slot};
use crate::disk::unmount;
use crate::feeder::FeedCmd;
use crate::observer::positions;
use crate::plan::Kind;
use crate::settings::{kafka_client, PARTITIONS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
pub enum NodeState {
    /// Answering metadata requests since then.
    Up(Instant),
    Going,
    Down,
    /// Restarted, not answering yet.
    Starting,
}

pub enum Heal {
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

pub struct Pending {
    pub at: Instant,
    pub kind: Kind,
    pub heal: Heal,
}

pub struct World {
    pub broker: Arc<Broker>,
    pub proxy: TcpProxy,
    pub nasa: FakeNasa,
    pub slots: Vec<Slot>,
    pub nodes: Arc<Mutex<Vec<NodeState>>>,
    pub pending: Vec<Pending>,
    /// (kind, when healed, other faults active at that moment)
    pub heals: Vec<(Kind, Instant, chrono::DateTime<chrono::Utc>, bool)>,
    pub injected: BTreeMap<Kind, usize>,
    pub skipped: BTreeMap<Kind, usize>,
    pub feed: mpsc::Sender<FeedCmd>,
    pub poison_serial: usize,
    pub pg_cut: bool,
    pub api_fault: bool,
    pub image_status_fault: bool,
    pub image_delay_fault: bool,
    /// Slots whose DATA_DIR is a small tmpfs of its own (empty where mounting is not allowed).
    pub mounted: Vec<usize>,
    pub disk_fault: Vec<bool>,
    pub backfills: Vec<BackfillRun>,
    pub start: Instant,
    journal: std::fs::File,
    pub threads: Vec<std::thread::JoinHandle<()>>,
    /// Lines from helper threads, journaled by the main loop.
    pub notes: Arc<Mutex<Vec<String>>>,
}

impl World {
    /// Every broker node up, no fault active; the journal is written to `journal`.
    pub fn new(
        broker: Arc<Broker>,
        proxy: TcpProxy,
        nasa: FakeNasa,
        slots: Vec<Slot>,
        mounted: Vec<usize>,
        feed: mpsc::Sender<FeedCmd>,
        journal: &Path,
    ) -> World {
        let n_nodes = broker.nodes().len();
        World {
            broker,
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
            journal: std::fs::File::create(journal).unwrap(),
            threads: Vec::new(),
            notes: Arc::default(),
        }
    }

    pub fn say(&mut self, text: String) {
        let line = format!("[{:>6.1}s {}] {text}", self.start.elapsed().as_secs_f64(), chrono::Utc::now().format("%H:%M:%S%.3f"));
        eprintln!("{line}");
        let _ = writeln!(self.journal, "{line}");
    }

    pub fn nodes_up_for(&self, at_least: Duration) -> Vec<usize> {
        let nodes = self.nodes.lock().unwrap();
        (0..nodes.len()).filter(|&i| matches!(nodes[i], NodeState::Up(t) if t.elapsed() >= at_least)).collect()
    }

    pub fn all_nodes_up(&self) -> bool {
        self.nodes.lock().unwrap().iter().all(|n| matches!(n, NodeState::Up(_)))
    }

    /// Stops nodes (SIGKILL or SIGTERM) on a thread: a SIGTERM'd broker takes its time.
    pub fn take_down(&mut self, nodes: Vec<usize>, sig: i32) {
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

    /// Restarts node `i`; a thread marks it up once it answers.
    pub fn bring_up(&mut self, i: usize) {
        self.broker.restart_node(i);
        self.nodes.lock().unwrap()[i] = NodeState::Starting;
        let (addr, state, notes) =
            (self.broker.addr.split(',').nth(i).unwrap_or_default().to_owned(), self.nodes.clone(), self.notes.clone());
        self.threads.push(std::thread::spawn(move || wait_for_node(i, &addr, &state, &notes)));
    }

    /// Restarts exited daemons (as Docker would), samples RSS, heals what is due.
    pub fn tick(&mut self, heal_all: bool) {
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

    /// Ticks, healing everything, while `waiting` holds and `limit` has not passed.
    pub fn heal_while(&mut self, limit: Duration, mut waiting: impl FnMut(&mut World) -> bool) {
        let started = Instant::now();
        while waiting(self) && started.elapsed() < limit {
            self.tick(true);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the backfills and the daemons (kill -9 and reap) and unmounts the producers' DATA_DIRs:
    /// before the broker and the DATA_DIRs go.
    pub fn stop_all(&mut self) {
        for b in self.backfills.iter_mut() {
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
        for s in self.slots.iter_mut() {
            if let Some(mut d) = s.daemon.take() {
                d.kill();
            }
        }
        for &i in &self.mounted {
            unmount(&self.slots[i].data_dir());
        }
    }

    /// Waits until the producers have nothing pending and the group has consumed the topic to its
    /// end: how long that took, or None after `limit`.
    pub fn wait_idle(&mut self, offsets: &BaseConsumer, what: &str, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            self.tick(false);
            let pending_ok = self.slots.iter_mut().filter(|s| s.wanted && s.producer).all(|s| {
                s.daemon.is_some()
                    && s.http().and_then(|a| get_json(&a, "/status")).is_some_and(|(c, v)| c == 200 && v["pending_events"] == 0)
            });
            let at_end = positions(offsets, &self.broker.topic, PARTITIONS).is_some_and(|(c, e)| c == e);
            if pending_ok && at_end {
                self.say(format!("{what}: idle after {:.1} s", started.elapsed().as_secs_f64()));
                return Some(started.elapsed());
            }
            if started.elapsed() > limit {
                self.say(format!("{what}: NOT idle after {:.0} s", limit.as_secs_f64()));
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Waits (2 min at most) until node `i` answers a metadata request, then marks it up.
fn wait_for_node(i: usize, addr: &str, state: &Mutex<Vec<NodeState>>, notes: &Mutex<Vec<String>>) {
    let started = Instant::now();
    let client: BaseConsumer = kafka_client(addr, "200").create().expect("metadata client");
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
