//! Subscriber: owns the consumer group membership of this process and the work of every event
//! it read. Up to CONSUMER_MAX_IN_FLIGHT events are in flight, each a task of the Subscriber's
//! [`TaskTracker`] that runs the per-event [`pipeline`]; per partition the committed offset never
//! passes an unfinished event (see `offsets`). The tasks outlive a restart of the actor, and
//! [`Drain`] waits for them at shutdown.
//!
//! Every few seconds the Subscriber compares the group's committed offsets with the end of every
//! partition (see `stall`): a consumer that holds nothing, or partitions that do not move, while
//! the broker answers, is a stall: logged, shown on `/readyz`, and healed by rejoining the group
//! as a new member (counted as a restart of the subscriber).

pub mod pipeline;

use actix::prelude::*;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use slog::{info, warn};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;

use crate::consumer::{Delivery, Member, MemberSettings};
use crate::kafka::{base_config, LogContext};
use crate::metrics::METRICS;
use crate::stall::{self, Own, Snapshot, Stall, StallWatch};
use crate::supervision::{Lifeline, RestartCounts};
use pipeline::handle_until_done;
pub use pipeline::Pipeline;

/// How often the group's progress is checked (and the lag metrics updated).
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// Leaving the group at shutdown or on a rejoin may take this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/status` and `/readyz` show of the consumer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsumerReport {
    pub client_id: String,
    /// The group member id the broker gave this member (from the group's description).
    pub member_id: Option<String>,
    pub assigned_partitions: Vec<i32>,
    pub broker_reachable: bool,
    /// Why the consumer is stalled, if it is.
    pub stall: Option<String>,
    /// Rejoins of the group because of a stall.
    pub rejoins: u64,
}

#[derive(Clone, Default)]
pub struct ConsumerStatus(Arc<Mutex<ConsumerReport>>);

impl ConsumerStatus {
    pub fn report(&self) -> ConsumerReport {
        self.0.lock().expect("status lock").clone()
    }
    fn update(&self, f: impl FnOnce(&mut ConsumerReport)) {
        f(&mut self.0.lock().expect("status lock"))
    }
}

/// What outlives a restart of the Subscriber: the group membership, the tasks of the events in
/// flight and the permits they hold, and what the stall watch has seen.
#[derive(Clone)]
pub struct ConsumerState {
    settings: MemberSettings,
    member: Arc<Mutex<Arc<Member>>>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Reads the group's offsets and description; replaced when it stops answering.
    observer: Arc<Mutex<Observer>>,
    watch: Arc<Mutex<StallWatch>>,
    pipeline: Pipeline,
    pub status: ConsumerStatus,
    restarts: RestartCounts,
}

impl ConsumerState {
    /// Joins the consumer group and starts handing its messages to event tasks. Must run on the
    /// actix system: the tasks are spawned on it.
    pub fn new(
        settings: MemberSettings,
        concurrency: usize,
        stall_window: Duration,
        pipeline: Pipeline,
        restarts: RestartCounts,
        status: ConsumerStatus,
    ) -> rdkafka::error::KafkaResult<ConsumerState> {
        let permits = Arc::new(Semaphore::new(concurrency));
        let tasks = TaskTracker::new();
        let (deliveries, mut incoming) = mpsc::unbounded_channel::<Delivery>();
        let (spawner, handling) = (tasks.clone(), pipeline.clone());
        actix::spawn(async move {
            while let Some(delivery) = incoming.recv().await {
                spawner.spawn_local(handle_until_done(delivery, handling.clone()));
            }
        });
        let observer = Observer::new(&settings)?;
        let state = ConsumerState {
            member: Arc::new(Mutex::new(Arc::new(join(&settings, &permits, &deliveries)?))),
            settings,
            permits,
            tasks,
            deliveries,
            observer: Arc::new(Mutex::new(observer)),
            watch: Arc::new(Mutex::new(StallWatch::new(stall_window))),
            pipeline,
            status,
            restarts,
        };
        Ok(state)
    }

    fn member(&self) -> Arc<Member> {
        self.member.lock().expect("member lock").clone()
    }

    /// Leaves the group and joins it again as a new member.
    async fn rejoin(&self) -> rdkafka::error::KafkaResult<()> {
        let old = self.member();
        old.stop_fetching();
        old.close(CLOSE_TIMEOUT).await;
        let new = join(&self.settings, &self.permits, &self.deliveries)?;
        *self.member.lock().expect("member lock") = Arc::new(new);
        Ok(())
    }
}

/// A client of the group that never joins it, for the stall watch. A long-lived librdkafka
/// client was seen to stay blind for minutes after broker faults in a cluster (timeouts, unknown
/// partitions) while a fresh one answered at once: after [`OBSERVER_PATIENCE`] failed reads in
/// a row it is replaced.
struct Observer {
    client: Arc<BaseConsumer<LogContext>>,
    failures: u32,
}

/// Failed reads of the group in a row (one every 5 s) before the observer is made anew.
const OBSERVER_PATIENCE: u32 = 6;

impl Observer {
    fn new(settings: &MemberSettings) -> rdkafka::error::KafkaResult<Observer> {
        let client = base_config(&settings.brokers)
            .set("group.id", &settings.group_id)
            .create_with_context(LogContext { log: settings.log.clone() })?;
        Ok(Observer { client: Arc::new(client), failures: 0 })
    }

    fn answered(&mut self) {
        self.failures = 0;
    }

    fn failed(&mut self, settings: &MemberSettings) {
        self.failures += 1;
        if self.failures >= OBSERVER_PATIENCE {
            match Observer::new(settings) {
                Ok(fresh) => {
                    info!(settings.log, "the group's observer did not answer for 30 s; made a new one");
                    let old = std::mem::replace(self, fresh);
                    // Its destructor closes it with the brokers: not on the actor thread.
                    std::thread::spawn(move || drop(old));
                }
                Err(e) => warn!(settings.log, "cannot make a new observer of the group"; "error.type" => "kafka",
                    "error.message" => e.to_string()),
            }
        }
    }
}

fn join(
    settings: &MemberSettings,
    permits: &Arc<Semaphore>,
    deliveries: &mpsc::UnboundedSender<Delivery>,
) -> rdkafka::error::KafkaResult<Member> {
    let out = deliveries.clone();
    Member::join(settings, permits.clone(), move |d| {
        // Only fails when the actix system is gone: the process is ending.
        let _ = out.send(d);
    })
}

pub struct Subscriber {
    state: ConsumerState,
    lifeline: Lifeline,
    watching: bool,
    last_stall: Option<Stall>,
    /// Who held which partition when the group's description was last read, and when: read at
    /// most once per stall window (see `stall::snapshot` for why so rarely).
    holders: Option<(Instant, BTreeMap<i32, String>)>,
}

crate::crashable!(Subscriber);

impl Subscriber {
    pub fn new(state: ConsumerState, lifeline: Lifeline) -> Subscriber {
        Subscriber { state, lifeline, watching: false, last_stall: None, holders: None }
    }

    /// Reads the group's progress off the actor thread, then judges it.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        if self.watching {
            return;
        }
        self.watching = true;
        let s = &self.state;
        let observer = s.observer.lock().expect("observer lock").client.clone();
        let (topic, group) = (s.settings.topic.clone(), s.settings.group_id.clone());
        // Who holds what is read only when a stall may be reported by the next look or two, and
        // once per window: a stall that lasts reports the holders read at its start.
        let watch = s.watch.lock().expect("watch lock");
        let fresh = self.holders.as_ref().is_some_and(|(at, _)| at.elapsed() < watch.window());
        let describe = watch.near(Instant::now(), 2 * WATCH_EVERY) && !fresh;
        drop(watch);
        let read = tokio::task::spawn_blocking(move || stall::snapshot(&observer, &topic, &group, describe, Duration::from_secs(2)));
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            act.watching = false;
            act.judge(result.ok().and_then(Result::ok), ctx);
        }));
    }

    fn judge(&mut self, snapshot: Option<Snapshot>, ctx: &mut Context<Self>) {
        let member = self.state.member();
        let view = member.view();
        if let Some(fatal) = &view.fatal {
            // librdkafka's client can do nothing more (its line said why): a new member.
            self.rejoin(format!("the consumer failed for good: {fatal}"), ctx);
            return;
        }
        let window = self.state.watch.lock().expect("watch lock").window();
        let Some(snap) = snapshot else {
            self.state.watch.lock().expect("watch lock").unobserved();
            self.state.observer.lock().expect("observer lock").failed(&self.state.settings);
            self.state.status.update(|r| {
                r.client_id = view.client_id.clone();
                r.assigned_partitions = view.assigned.clone();
                r.broker_reachable = false;
            });
            return;
        };
        self.state.observer.lock().expect("observer lock").answered();
        // A description read now is remembered (even one where nobody holds anything, so that it
        // is not read again within the window); otherwise the last one read stands in.
        let mut snap = snap;
        match &snap.owners {
            Some(read) => self.holders = Some((Instant::now(), read.clone())),
            None => snap.owners = self.holders.as_ref().map(|(_, held)| held.clone()),
        }
        for &p in snap.partitions.keys() {
            METRICS.set_lag(p, snap.lag(p));
        }
        let own = Own {
            assigned: view.assigned.clone(),
            busy: member.busy_partitions(),
            saturated: self.state.permits.available_permits() == 0,
            retrying: self.state.pipeline.retried_within(window),
        };
        let verdict = self.state.watch.lock().expect("watch lock").observe(&snap, &own, Instant::now());
        let reason = verdict.stall.as_ref().map(|s| s.describe(window));
        self.state.status.update(|r| {
            r.member_id = view.member_id.clone();
            r.client_id = view.client_id.clone();
            r.assigned_partitions = view.assigned.clone();
            r.broker_reachable = true;
            r.stall = reason.clone();
        });
        let log = &self.state.pipeline.log;
        if let (Some(stall), Some(reason)) = (&verdict.stall, &reason) {
            if verdict.rejoin || self.last_stall.as_ref() != Some(stall) {
                warn!(log, "consumer stalled"; "error.type" => "consumer_stall", "error.message" => reason,
                    "labels.rejoin" => verdict.rejoin, "labels.assigned" => format!("{:?}", view.assigned));
            }
        } else if self.last_stall.is_some() {
            info!(log, "consumer moving again"; "labels.assigned" => format!("{:?}", view.assigned));
        }
        self.last_stall = verdict.stall;
        if verdict.rejoin {
            self.rejoin(reason.unwrap_or_default(), ctx);
        }
    }

    /// A new group member instead of this one: counted as a restart of the subscriber.
    fn rejoin(&mut self, reason: String, ctx: &mut Context<Self>) {
        let count = self.state.restarts.record("subscriber", &format!("rejoined the consumer group: {reason}"));
        METRICS.restarts.with_label_values(&["subscriber"]).inc();
        self.state.status.update(|r| r.rejoins += 1);
        warn!(self.state.pipeline.log, "consumer rejoining the group as a new member"; "labels.restart_count" => count);
        let (state, log) = (self.state.clone(), self.state.pipeline.log.clone());
        ctx.spawn(
            async move {
                if let Err(e) = state.rejoin().await {
                    warn!(log, "cannot create the new consumer; the next check tries again"; "error.type" => "kafka",
                        "error.message" => e.to_string());
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(WATCH_EVERY, |act, ctx| act.watch(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

/// Shutdown: stop reading, give in-flight events until `within` runs out (less the time to
/// leave the group), commit what is done and leave the group.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain(pub Duration);

impl Handler<Drain> for Subscriber {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, Drain(within): Drain, _: &mut Context<Self>) -> Self::Result {
        let (member, tasks) = (self.state.member(), self.state.tasks.clone());
        Box::pin(
            async move {
                member.stop_fetching();
                tasks.close();
                let _ = tokio::time::timeout(within.saturating_sub(CLOSE_TIMEOUT), tasks.wait()).await;
                member.close(CLOSE_TIMEOUT).await;
            }
            .into_actor(self),
        )
    }
}
