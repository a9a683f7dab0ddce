//! The fault injectors: each planned fault applied to the world as it is at that moment (or skipped
//! where its target is busy or down), and healed when its pause is over.

use crate::common::ApiMode;
use crate::daemons::{request, BackfillRun};
use crate::disk::{fill, free, remount};
use crate::feeder::{poison, FeedCmd};
use crate::plan::{Kind, Planned};
use crate::settings::{PANICS_PER_PROCESS, PARTITIONS};
use crate::world::{Heal, NodeState, Pending, World};
use std::time::{Duration, Instant};

impl World {
    pub fn inject(&mut self, f: &Planned) {
        let now = Instant::now();
        let heal_at = now + f.pause;
        let injected = match f.kind {
            Kind::BrokerKill | Kind::BrokerStop | Kind::BrokerTwoDown => self.take_down_brokers(f, heal_at),
            Kind::PgCut if !self.pg_cut => {
                self.proxy.cut();
                self.pg_cut = true;
                self.heal_at(heal_at, f.kind, Heal::Pg);
                Some("connections reset, new ones refused".into())
            }
            Kind::PgStall if !self.pg_cut => {
                self.proxy.stall();
                self.pg_cut = true;
                self.heal_at(heal_at, f.kind, Heal::Pg);
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
                self.heal_at(heal_at, f.kind, Heal::Api);
                Some(String::new())
            }
            Kind::Image503 if !self.image_status_fault => {
                self.nasa.state.set_image_status("/image/", 503);
                self.image_status_fault = true;
                self.heal_at(heal_at, f.kind, Heal::ImageStatus);
                Some("every image".into())
            }
            Kind::ImageSlow if !self.image_delay_fault => {
                let d = Duration::from_millis(500 + (f.param % 4_000) as u64);
                self.nasa.state.set_image_delay(d);
                self.image_delay_fault = true;
                self.heal_at(heal_at, f.kind, Heal::ImageDelay);
                Some(format!("{d:?} per image"))
            }
            Kind::DaemonKill | Kind::DaemonStop => self.signal_daemon(f, heal_at),
            Kind::MemberJoin if !self.slots[3].wanted && self.slots[3].daemon.is_none() => {
                self.slots[3].wanted = true;
                self.slots[3].spawn();
                self.heal_at(heal_at, f.kind, Heal::Leave(3));
                Some(format!("{} for {:?}", self.slots[3].name, f.pause))
            }
            Kind::ActorCrash => self.crash_actors(f),
            Kind::EventPanic => self.make_events_panic(f),
            Kind::DataDirFull | Kind::DataDirReadOnly => self.break_data_dir(f, heal_at),
            Kind::Backfill if !self.backfills.iter_mut().any(|b| b.running()) => self.start_backfill(f),
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

    fn heal_at(&mut self, at: Instant, kind: Kind, heal: Heal) {
        self.pending.push(Pending { at, kind, heal });
    }

    /// One node (the leader of a partition, or any), or two in the cluster; only when all are up.
    fn take_down_brokers(&mut self, f: &Planned, heal_at: Instant) -> Option<String> {
        let n_nodes = self.nodes.lock().unwrap().len();
        let up = self.nodes_up_for(Duration::from_secs(20));
        let sig = if f.kind == Kind::BrokerStop { libc::SIGTERM } else { libc::SIGKILL };
        let nodes = if up.len() < n_nodes {
            return None;
        } else if n_nodes == 1 {
            vec![0]
        } else if f.kind == Kind::BrokerTwoDown {
            let a = f.target as usize % 3;
            vec![a, (a + 1 + f.param as usize % 2) % 3]
        } else if f.param.is_multiple_of(2) {
            // The leader of a partition: where the traffic is.
            let p = (f.param / 2) as i32 % PARTITIONS;
            let leader = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.broker.leader_of(&self.broker.topic, p)));
            vec![leader.unwrap_or(f.target as usize % 3)]
        } else {
            vec![f.target as usize % 3]
        };
        let what = format!("{} node(s) {:?}", if sig == libc::SIGKILL { "kill -9" } else { "SIGTERM" }, nodes);
        self.take_down(nodes.clone(), sig);
        self.heal_at(heal_at, f.kind, Heal::Nodes(nodes));
        Some(what)
    }

    fn signal_daemon(&mut self, f: &Planned, heal_at: Instant) -> Option<String> {
        let i = f.target as usize % 3;
        if !self.slots[i].running() || self.slots[i].restart_at.is_some() {
            return None;
        }
        let sig = if f.kind == Kind::DaemonKill { libc::SIGKILL } else { libc::SIGTERM };
        self.slots[i].signal(sig);
        // Restarted `pause` after it exits (reap sees the restart time is set).
        self.heal_at(heal_at, f.kind, Heal::Restart(i, self.slots[i].processes));
        self.slots[i].restart_at = Some(heal_at);
        Some(self.slots[i].name.clone())
    }

    fn crash_actors(&mut self, f: &Planned) -> Option<String> {
        let i = f.target as usize % 3;
        let producer = self.slots[i].producer;
        let (true, Some(addr)) = (self.slots[i].running(), self.slots[i].http()) else { return None };
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

    fn make_events_panic(&mut self, f: &Planned) -> Option<String> {
        let i = f.target as usize % 3;
        let count = 1 + f.param % 2;
        let (true, Some(addr)) = (self.slots[i].running(), self.slots[i].http()) else { return None };
        if self.slots[i].panics_injected + count > PANICS_PER_PROCESS {
            return None;
        }
        match request(&addr, "POST", &format!("/admin/events/panic?count={count}")) {
            Some((202, _)) => {
                self.slots[i].panics_injected += count;
                Some(format!("{} next {count} event(s)", self.slots[i].name))
            }
            _ => None,
        }
    }

    fn break_data_dir(&mut self, f: &Planned, heal_at: Instant) -> Option<String> {
        let i = f.target as usize % 2;
        if !self.mounted.contains(&i) || self.disk_fault[i] {
            return None;
        }
        let dir = self.slots[i].data_dir();
        let done = if f.kind == Kind::DataDirFull { fill(&dir) } else { remount(&dir, "ro") };
        match done {
            Ok(()) => {
                self.disk_fault[i] = true;
                let heal = if f.kind == Kind::DataDirFull { Heal::DiskFree(i) } else { Heal::DiskWritable(i) };
                self.heal_at(heal_at, f.kind, heal);
                Some(self.slots[i].name.clone())
            }
            Err(e) => {
                self.say(format!("cannot inject {}: {e}", f.kind.name()));
                None
            }
        }
    }

    fn start_backfill(&mut self, f: &Planned) -> Option<String> {
        // Not onto a disk that is full or read-only right now: a backfill that cannot take its
        // slot at start exits 1 at once, as documented; one already running waits for the disk.
        let i = f.target as usize % 2;
        if self.disk_fault[i] {
            return None;
        }
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

    /// Heals what is due (or everything, at the end). False for a heal that must wait.
    pub fn heal(&mut self, p: &Pending) -> bool {
        match &p.heal {
            Heal::Nodes(nodes) => {
                let states = self.nodes.lock().unwrap().clone();
                if nodes.iter().any(|&i| states[i] == NodeState::Going) {
                    return false;
                }
                for &i in nodes.iter().filter(|&&i| states[i] == NodeState::Down) {
                    self.bring_up(i);
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
                free(&self.slots[*i].data_dir());
                self.disk_fault[*i] = false;
            }
            Heal::DiskWritable(i) => {
                if let Err(e) = remount(&self.slots[*i].data_dir(), "rw") {
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
