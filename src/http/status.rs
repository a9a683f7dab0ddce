//! What `/status` answers and the page shows: one typed [`Status`], assembled in one place,
//! [`StatusSources::read`], from the handles the daemon made and gave to their writers (the
//! supervisor's restart counts, the dependency states, the Fetcher's last cycle, the logger's
//! recent problems, the rate sampler, the consumer's report, the dead-letter watch).

use actix::{Actor, Context};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::actors::fetcher::{Fetches, LastFetch};
use crate::actors::subscriber::{ConsumerReport, ConsumerStatus};
use crate::deps::{Dependencies, DependencyStatus};
use crate::dlq::{DlqPanel, DlqWatch};
use crate::logging::{Problem, RecentProblems};
use crate::metrics::{Metrics, Rates, RatesPerMinute};
use crate::outbox::Outbox;
use crate::supervision::{RestartCounts, Slot};

/// An actor the status lists: its name, and whether it runs now.
pub trait ActorProbe: Send + Sync {
    fn name(&self) -> &'static str;
    fn is_running(&self) -> bool;
}

impl<A: Actor<Context = Context<A>>> ActorProbe for Slot<A> {
    fn name(&self) -> &'static str {
        Slot::name(self)
    }

    fn is_running(&self) -> bool {
        self.current().is_some()
    }
}

/// Where each part of the status is read from. The daemon makes the handles, hands clones to
/// what writes them, and these to the endpoint.
pub struct StatusSources {
    pub roles: &'static str,
    /// The actors of the enabled roles, in start order.
    pub actors: Vec<Box<dyn ActorProbe>>,
    pub restarts: RestartCounts,
    pub dependencies: Dependencies,
    /// The Fetcher's last cycle (producer role only).
    pub fetches: Option<LastFetch>,
    /// The root logger's last WARN and ERROR lines.
    pub problems: RecentProblems,
    /// The counters of `/metrics`, counted since this process started.
    pub metrics: &'static Metrics,
    pub rates: Rates,
    /// The producer's outbox (producer role only).
    pub outbox: Option<Outbox>,
    /// The consumer's membership and stall state (consumer role only).
    pub consumer: Option<ConsumerStatus>,
    /// What is on the dead-letter topic, read from the topic.
    pub dead_letters: DlqWatch,
    pub topic: String,
    /// The daemon's consumer group (the replay's group is named after it).
    pub group_id: String,
    /// Set once every actor was started.
    pub started: AtomicBool,
    pub since: Instant,
}

/// Everything `/status` answers and the page shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub service: &'static str,
    pub version: &'static str,
    pub roles: &'static str,
    pub started: bool,
    pub uptime_seconds: u64,
    pub dependencies: Vec<DependencyStatus>,
    pub actors: Vec<ActorStatus>,
    /// 1 while an event waits in the outbox (it holds one at most), else 0.
    pub pending_events: usize,
    pub pending_event_id: Option<String>,
    /// The group's lag on every partition.
    pub consumer_lag: BTreeMap<i32, i64>,
    pub consumer: Option<ConsumerReport>,
    pub dead_letters: DeadLetters,
    /// Since this process started; the database's count is `in_database`.
    pub counts: Counts,
    pub rates_per_minute: RatesPerMinute,
    pub in_database: InDatabase,
    pub fetches: Option<Fetches>,
    /// Newest first.
    pub recent_problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct ActorStatus {
    pub name: &'static str,
    pub state: ActorState,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// The latest restarts' times (RFC 3339, UTC), newest last.
    pub restart_times: VecDeque<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    Running,
    /// Not running yet: start-up is not done.
    Starting,
    /// Not running after start-up: between a crash and its restart.
    Down,
}

impl ActorState {
    pub fn name(self) -> &'static str {
        match self {
            ActorState::Running => "running",
            ActorState::Starting => "starting",
            ActorState::Down => "down",
        }
    }
}

/// The dead-letter panel: what is on the topic, and the command that replays each reason.
#[derive(Debug, Serialize)]
pub struct DeadLetters {
    #[serde(flatten)]
    pub panel: DlqPanel,
    pub replay_commands: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub fetched: u64,
    pub published: u64,
    pub consumed: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Serialize)]
pub struct InDatabase {
    /// None without the consumer role, or when Postgres did not answer.
    pub images: Option<i64>,
}

impl StatusSources {
    /// The status now. `images_in_database` is None without the consumer role, or when
    /// Postgres did not answer.
    pub fn read(&self, images_in_database: Option<i64>) -> Status {
        let m = self.metrics;
        let pending_id = self.outbox.as_ref().and_then(|o| o.peek().ok().flatten()).map(|e| e.event_id.to_string());
        Status {
            service: "nasa-ingest",
            version: env!("CARGO_PKG_VERSION"),
            roles: self.roles,
            started: self.is_started(),
            uptime_seconds: self.since.elapsed().as_secs(),
            dependencies: self.dependencies.snapshot(),
            actors: self.actors(),
            pending_events: usize::from(pending_id.is_some()),
            pending_event_id: pending_id,
            consumer_lag: m.lag(),
            consumer: self.consumer.as_ref().map(ConsumerStatus::report),
            dead_letters: self.dead_letters(),
            counts: Counts {
                fetched: m.fetched.get(),
                published: m.published.get(),
                consumed: m.consumed.get(),
                stored: m.stored.get(),
                duplicates: m.duplicates.get(),
                dead_lettered: m.dead_lettered_total(),
            },
            rates_per_minute: self.rates.per_minute(),
            in_database: InDatabase { images: images_in_database },
            fetches: self.fetches.as_ref().map(LastFetch::get),
            recent_problems: self.problems.newest_first(),
        }
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn actors(&self) -> Vec<ActorStatus> {
        let started = self.is_started();
        self.actors
            .iter()
            .map(|actor| {
                let restarts = self.restarts.get(actor.name());
                let state = match (actor.is_running(), started) {
                    (true, _) => ActorState::Running,
                    (false, false) => ActorState::Starting,
                    (false, true) => ActorState::Down,
                };
                ActorStatus {
                    name: actor.name(),
                    state,
                    restarts: restarts.count,
                    last_error: restarts.last_error,
                    restart_times: restarts.times,
                }
            })
            .collect()
    }

    fn dead_letters(&self) -> DeadLetters {
        let panel = self.dead_letters.panel();
        let replay_commands = panel.by_reason.keys().map(|reason| (reason.clone(), self.replay_command(reason))).collect();
        DeadLetters { panel, replay_commands }
    }

    /// `nasa-ingest dlq replay --reason R`, with the daemon's topic and group where they are not the defaults.
    fn replay_command(&self, reason: &str) -> String {
        let mut cmd = String::from("nasa-ingest dlq replay");
        if self.topic != "images" {
            cmd += &format!(" --kafka-topic {}", self.topic);
        }
        if self.group_id != "images-writer" {
            cmd += &format!(" --kafka-group-id {}", self.group_id);
        }
        format!("{cmd} --reason {reason}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::METRICS;

    /// Sources with nothing recorded yet, for the consumer role.
    pub(crate) fn sources() -> StatusSources {
        StatusSources {
            roles: "consumer",
            actors: vec![Box::new(Slot::<crate::actors::storer::Storer>::new("storer"))],
            restarts: RestartCounts::default(),
            dependencies: Dependencies::default(),
            fetches: None,
            problems: RecentProblems::default(),
            metrics: &METRICS,
            rates: Rates::default(),
            outbox: None,
            consumer: Some(ConsumerStatus::default()),
            dead_letters: DlqWatch::default(),
            topic: "images".into(),
            group_id: "images-writer".into(),
            started: AtomicBool::new(true),
            since: Instant::now(),
        }
    }

    /// `/status`'s keys are what the tests, the README and scripts read.
    #[test]
    fn status_serializes_to_the_documented_keys() {
        let sources = sources();
        sources.restarts.record("storer", "crash of Storer");
        let v = serde_json::to_value(sources.read(Some(3))).unwrap();
        let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let top = [
            "actors",
            "consumer",
            "consumer_lag",
            "counts",
            "dead_letters",
            "dependencies",
            "fetches",
            "in_database",
            "pending_event_id",
            "pending_events",
            "rates_per_minute",
            "recent_problems",
            "roles",
            "service",
            "started",
            "uptime_seconds",
            "version",
        ];
        assert_eq!(keys(&v), top);
        assert_eq!(keys(&v["actors"][0]), ["last_error", "name", "restart_times", "restarts", "state"]);
        assert_eq!((&v["actors"][0]["state"], &v["actors"][0]["restarts"]), (&"down".into(), &1.into()));
        assert_eq!(keys(&v["counts"]), ["consumed", "dead_lettered", "duplicates", "fetched", "published", "stored"]);
        assert_eq!(keys(&v["rates_per_minute"]), ["consumed", "fetched", "published", "stored"]);
        assert_eq!(keys(&v["dead_letters"]), ["by_reason", "error", "last", "on_topic", "read_to_end", "replay_commands"]);
        assert_eq!(v["in_database"]["images"], 3);
        assert!(v["fetches"].is_null() && v["consumer"].is_object());
    }

    #[test]
    fn replay_commands_name_the_topic_and_group_only_where_they_are_not_the_defaults() {
        let mut sources = sources();
        assert_eq!(sources.replay_command("too_large"), "nasa-ingest dlq replay --reason too_large");
        sources.group_id = "g2".into();
        assert_eq!(sources.replay_command("panic"), "nasa-ingest dlq replay --kafka-group-id g2 --reason panic");
    }
}
