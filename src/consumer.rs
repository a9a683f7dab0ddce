//! One member of the consumer group, polled by a thread of its own.
//!
//! librdkafka serves rebalances, errors and commit results on whichever thread polls the
//! consumer. A dedicated thread polls it all the time, so that:
//! - rebalances are served even while every event permit is taken: the thread holds what it
//!   read (up to [`HOLD_MAX`] events, [`HOLD_MAX_BYTES`] bytes) and then pauses fetching instead
//!   of pausing its polls (a member that stops polling is evicted after
//!   `max.poll.interval.ms`, and a rebalance waits for it);
//! - errors that librdkafka queued while the broker was away are drained at once. They are
//!   information, not a reason to back off: sleeping a growing backoff per queued error once left
//!   the consumer stuck for minutes after the broker came back;
//! - nothing here blocks the actix thread: not the commit on revoke, not leaving the group.
//!
//! Messages go out through `deliver` with their offset-tracker ticket and a permit; the finished
//! ones are committed every [`COMMIT_EVERY`] from this thread. [`Member::close`] commits what is
//! finished, leaves the group (so a replacement gets the partitions at once, not after the
//! session timeout) and closes the client, within a bound.
//!
//! Rebalances are incremental on both protocols (`consumer`, KIP-848; `classic` with the
//! cooperative-sticky assignor): a few partitions are added or revoked at a time, and the others
//! go on untouched. On a revocation, before librdkafka lets the partitions go, the member commits
//! what it finished of them and gives up their events in flight (see `offsets`); right after the
//! poll that ran the callback, and before anything more is handed out, the messages it held of
//! them are dropped. After every change of the assignment the pause state is set again on the
//! whole assignment: librdkafka keeps a partition paused across its revocation and
//! re-assignment, and a partition added while the member was paused comes unpaused (a member
//! that trusted a flag of its own once held re-assigned partitions paused, consuming nothing,
//! until its stall detection rejoined the group).

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use slog::{error, info, warn, Logger};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::GroupProtocol;
use crate::group_admin::heartbeat_interval;
use crate::kafka::{base_config, LogContext};
use crate::metrics::METRICS;
use crate::offsets::{OffsetTracker, Ticket};
use health::{Health, PROBE_EVERY};
use held::HeldMessages;
#[cfg(doc)]
use held::{HOLD_MAX, HOLD_MAX_BYTES};

mod health;
mod held;

pub type Tracker = Arc<Mutex<OffsetTracker>>;

/// How often finished events are committed (one request for many events).
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The longest one poll waits; also how soon a control message is seen.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How long one poll waits while read messages wait for a permit.
const PERMIT_WAIT: Duration = Duration::from_millis(2);
#[derive(Clone)]
pub struct MemberSettings {
    pub brokers: String,
    pub group_id: String,
    pub topic: String,
    pub protocol: GroupProtocol,
    /// The classic protocol's `session.timeout.ms` (under `consumer` the group's, set through
    /// the admin API by `group_admin`).
    pub session_timeout: Duration,
    /// `group.instance.id`: static membership.
    pub instance_id: Option<String>,
    pub log: Logger,
}

/// A message read, with its place in the offset tracker and the permit it holds until done.
pub struct Delivery {
    pub msg: OwnedMessage,
    pub ticket: Ticket,
    pub tracker: Tracker,
    pub permit: OwnedSemaphorePermit,
    /// When it was handed out (its permit taken): where its latency starts.
    pub handed_out: Instant,
    /// Cancelled when its partition is revoked: the event is then given up where it is.
    pub revoked: CancellationToken,
}

/// What the rest of the daemon may know of the member.
#[derive(Clone, Debug, Default)]
pub struct MemberView {
    /// `client.id`, unique per member: how this member is found in the group's description.
    pub client_id: String,
    pub assigned: Vec<i32>,
    /// Whether librdkafka reached a broker lately (false from "all brokers down" until a
    /// metadata request is answered again).
    pub reachable: bool,
    /// librdkafka's fatal error, when it had one: this client can do nothing more, a new member
    /// has to take its place.
    pub fatal: Option<String>,
    /// The member id the group knows this member by, since its last rebalance.
    pub member_id: Option<String>,
}

enum Control {
    /// Stop handing out messages (shutdown: in-flight events finish, nothing new starts).
    StopFetching,
    /// Commit, leave the group and close, within the given time.
    Close(Duration),
}

/// A handle on the member's thread. Dropping it closes the member too (within 5 s).
pub struct Member {
    control: Mutex<mpsc::Sender<Control>>,
    view: Arc<Mutex<MemberView>>,
    tracker: Tracker,
    closed: watch::Receiver<bool>,
}

impl Member {
    /// Joins the group (auto-commit off) and starts polling on a new thread.
    pub fn join(settings: &MemberSettings, permits: Arc<Semaphore>, deliver: impl Fn(Delivery) + Send + 'static) -> KafkaResult<Member> {
        let client_id = format!("nasa-ingest-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let view = Arc::new(Mutex::new(MemberView { client_id: client_id.clone(), reachable: true, ..Default::default() }));
        let tracker = Tracker::default();
        let context = MemberContext {
            logs: LogContext { log: settings.log.clone() },
            topic: settings.topic.clone(),
            tracker: tracker.clone(),
            view: view.clone(),
            changes: Mutex::default(),
        };
        let consumer: BaseConsumer<MemberContext> = member_config(settings, &client_id).create_with_context(context)?;
        consumer.subscribe(&[&settings.topic])?;
        let (control, control_rx) = mpsc::channel();
        let (closed_tx, closed) = watch::channel(false);
        let poller = Poller {
            consumer,
            settings: settings.clone(),
            tracker: tracker.clone(),
            permits,
            deliver: Box::new(deliver),
            control: control_rx,
            view: view.clone(),
        };
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || {
                poller.run();
                let _ = closed_tx.send(true);
            })
            .expect("a thread can be started");
        Ok(Member { control: Mutex::new(control), view, tracker, closed })
    }

    pub fn view(&self) -> MemberView {
        self.view.lock().expect("view lock").clone()
    }

    /// Partitions with an event of this member still in flight (being handled or retried).
    pub fn busy_partitions(&self) -> Vec<i32> {
        self.tracker.lock().expect("tracker lock").busy_partitions()
    }

    pub fn stop_fetching(&self) {
        let _ = self.control.lock().expect("control lock").send(Control::StopFetching);
    }

    /// Commits what is finished, leaves the group and closes the client. True when it closed
    /// within `within`; false when it did not (Kafka down): the broker then drops this member
    /// after its session timeout.
    pub async fn close(&self, within: Duration) -> bool {
        let _ = self.control.lock().expect("control lock").send(Control::Close(within));
        let mut closed = self.closed.clone();
        let done = tokio::time::timeout(within + Duration::from_millis(500), closed.wait_for(|c| *c)).await;
        matches!(done, Ok(Ok(_)))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.control.lock().map(|c| c.send(Control::Close(Duration::from_secs(5))));
    }
}

/// The member's client settings. Under `consumer` the group's session timeout and heartbeat are
/// the broker's (librdkafka refuses `session.timeout.ms`, `heartbeat.interval.ms` and
/// `partition.assignment.strategy` there) and the broker assigns; under `classic` they are the
/// client's, with the incremental cooperative-sticky assignor.
fn member_config(settings: &MemberSettings, client_id: &str) -> ClientConfig {
    let mut c = base_config(&settings.brokers);
    c.set("client.id", client_id)
        .set("group.id", &settings.group_id)
        .set("group.protocol", settings.protocol.name())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // librdkafka's prefetch is bounded too: memory never grows with the backlog.
        .set("queued.max.messages.kbytes", "16384")
        .set("reconnect.backoff.max.ms", "2000");
    if settings.protocol == GroupProtocol::Classic {
        let session = settings.session_timeout.as_millis() as u64;
        c.set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", heartbeat_interval(settings.session_timeout).as_millis().to_string())
            .set("partition.assignment.strategy", "cooperative-sticky");
    }
    if let Some(id) = &settings.instance_id {
        c.set("group.instance.id", id);
    }
    c
}

/// What a rebalance callback did, for the poller to act on (and log) right after the poll.
#[derive(Debug)]
enum Change {
    Assigned(Vec<i32>),
    /// `abandoned`: events of these partitions that were in flight and are given up.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        abandoned: usize,
        committed: Vec<(i32, i64)>,
    },
}

/// librdkafka's callbacks, run on the member's thread (inside its polls).
struct MemberContext {
    logs: LogContext,
    topic: String,
    tracker: Tracker,
    view: Arc<Mutex<MemberView>>,
    /// What the callbacks changed since the poller last looked.
    changes: Mutex<Vec<Change>>,
}

impl MemberContext {
    fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut *self.changes.lock().expect("changes lock"))
    }
}

/// librdkafka's logs and errors, but its fatal error, which the poller says once with what to
/// do, at debug level.
impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        let level = if fac == "FATAL" { RDKafkaLogLevel::Debug } else { level };
        self.logs.log(level, fac, msg)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka's reasons for a fatal error say so ("... fatal error: ...").
        if reason.to_ascii_lowercase().contains("fatal") {
            return self.logs.log(RDKafkaLogLevel::Debug, "FATAL", reason);
        }
        self.logs.error(error, reason)
    }
}

/// rust-rdkafka's default `rebalance` calls these around `incremental_assign` /
/// `incremental_unassign` (the protocol is cooperative on both settings).
impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let change = match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = topic_partitions(tpl, &self.topic);
                // Before librdkafka starts fetching them: their first messages find them assigned.
                self.tracker.lock().expect("tracker lock").assign(&partitions);
                Change::Assigned(partitions)
            }
            Rebalance::Revoke(tpl) => self.revoke(consumer, topic_partitions(tpl, &self.topic)),
            Rebalance::Error(e) => {
                warn!(self.logs.log, "rebalance failed; librdkafka joins the group again"; "error.type" => "kafka",
                    "error.message" => e.to_string());
                return;
            }
        };
        self.changes.lock().expect("changes lock").push(change);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|tpl| topic_partitions(&tpl, &self.topic)).unwrap_or_default();
        let mut view = self.view.lock().expect("view lock");
        view.assigned = assigned;
        view.member_id = member_id(consumer).or(view.member_id.take());
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            let failed: Vec<(i32, i64)> = offsets
                .elements_for_topic(&self.topic)
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            // Committed again at the next tick: a lost commit must not leave the group behind.
            self.tracker.lock().expect("tracker lock").commit_failed(&failed);
            warn!(self.logs.log, "offset commit failed; will commit again"; "error.type" => "kafka",
                "error.message" => e.to_string(), "labels.offsets" => format!("{failed:?}"));
        }
    }
}

impl MemberContext {
    /// Commits what is finished of `partitions` (unless they are lost: another member may own
    /// them already) and gives up their events in flight, before librdkafka lets them go.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: Vec<i32>) -> Change {
        let lost = consumer.assignment_lost();
        let mut tracker = self.tracker.lock().expect("tracker lock");
        let committed = if lost { Vec::new() } else { tracker.all_commits(Some(&partitions)) };
        // Asynchronous: librdkafka sends it before it tells the group the partitions are free.
        if !committed.is_empty() {
            if let Err(e) = consumer.commit(&offsets_list(&self.topic, &committed), CommitMode::Async) {
                warn!(self.logs.log, "offset commit failed; the events will be read again"; "labels.reason" => "revoke",
                    "error.type" => "kafka", "error.message" => e.to_string());
            }
        }
        let abandoned = tracker.revoke(&partitions);
        Change::Revoked { partitions, lost, abandoned, committed }
    }
}

/// The member id librdkafka holds for this member (rust-rdkafka does not wrap it): read from the
/// member itself, since asking the group's coordinator for it can abort the process (see
/// `stall::snapshot`).
fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<String> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is this live consumer's handle; librdkafka returns a NUL-terminated copy (or
    // null) that the caller frees with rd_kafka_mem_free, as done here once it is copied.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(rk);
        if id.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, id.cast());
        (!text.is_empty()).then_some(text)
    }
}

fn topic_partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    let mut out: Vec<i32> = tpl.elements_for_topic(topic).iter().map(|e| e.partition()).collect();
    out.sort();
    out
}

pub fn offsets_list(topic: &str, commits: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in commits {
        tpl.add_partition_offset(topic, p, Offset::Offset(o)).expect("offsets are valid");
    }
    tpl
}

/// The member's thread: polls, hands out messages while permits are free, commits.
struct Poller {
    consumer: BaseConsumer<MemberContext>,
    settings: MemberSettings,
    tracker: Tracker,
    permits: Arc<Semaphore>,
    deliver: Box<dyn Fn(Delivery) + Send>,
    control: mpsc::Receiver<Control>,
    view: Arc<Mutex<MemberView>>,
}

impl Poller {
    fn run(self) {
        let log = self.settings.log.clone();
        let mut fetching = true;
        let mut paused = false;
        let mut held = HeldMessages::default();
        let mut last_commit = Instant::now();
        let mut health = Health::default();
        let close_within = loop {
            match self.control.try_recv() {
                Ok(Control::StopFetching) => fetching = false,
                Ok(Control::Close(within)) => break within,
                Err(TryRecvError::Disconnected) => break Duration::from_secs(5),
                Err(TryRecvError::Empty) => {}
            }
            if fetching {
                self.hand_out_held(&mut held);
            }
            let pause = !fetching || held.is_full() || (paused && !held.is_below_half());
            if pause != paused {
                self.set_paused(pause);
                paused = pause;
            }
            // Waiting for a permit: look again soon, rather than after a whole poll wait.
            let wait = if held.is_empty() { POLL_WAIT } else { PERMIT_WAIT };
            let polled = self.consumer.poll(wait);
            // Rebalance callbacks run inside the poll: settle what they changed before anything
            // more is handed out.
            let changes = self.consumer.context().take_changes();
            if !changes.is_empty() {
                self.settle(changes, &mut held);
                // Whatever librdkafka kept or reset: the whole assignment as wanted now.
                self.set_paused(paused);
            }
            match polled {
                Some(Ok(m)) => {
                    health.answered(&log, &self.view);
                    let msg = m.detach();
                    METRICS.consumed.inc();
                    let begun = self.tracker.lock().expect("tracker lock").begin(msg.partition(), msg.offset());
                    if let Some(begun) = begun {
                        held.push(msg, begun);
                    }
                    if fetching {
                        self.hand_out_held(&mut held);
                    }
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => self.fatal(code),
                Some(Err(e)) => health.error(&e, &log, &self.view),
                None => {}
            }
            if health.should_probe() && self.consumer.fetch_metadata(Some(&self.settings.topic), PROBE_EVERY).is_ok() {
                health.answered(&log, &self.view);
            }
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit_finished();
                last_commit = Instant::now();
            }
        };
        self.leave(close_within);
    }

    /// Acts on the rebalance callbacks' changes: drops the held messages of partitions given
    /// up, and says what changed, one line each.
    fn settle(&self, changes: Vec<Change>, held: &mut HeldMessages) {
        let log = &self.settings.log;
        let tracker = self.tracker.lock().expect("tracker lock");
        let assigned = format!("{:?}", tracker.assigned());
        for change in changes {
            match change {
                Change::Assigned(partitions) if partitions.is_empty() => {}
                Change::Assigned(partitions) => info!(log, "partitions assigned"; "labels.partitions" => format!("{partitions:?}"),
                    "labels.assigned" => &assigned),
                Change::Revoked { partitions, lost, abandoned, committed } => {
                    let dropped = held.retain(|ticket| tracker.is_current(ticket));
                    info!(log, "partitions revoked"; "labels.partitions" => format!("{partitions:?}"), "labels.lost" => lost,
                        "labels.assigned" => &assigned, "labels.in_flight_abandoned" => abandoned,
                        "labels.held_dropped" => dropped, "labels.offsets" => format!("{committed:?}"));
                }
            }
        }
    }

    /// librdkafka's client cannot go on: said once, and shown in the view (the Subscriber puts
    /// a new member in its place).
    fn fatal(&self, code: RDKafkaErrorCode) {
        let mut view = self.view.lock().expect("view lock");
        if view.fatal.is_some() {
            return;
        }
        let reason = self.consumer.client().fatal_error().map_or_else(|| code.to_string(), |(_, reason)| reason);
        let log = &self.settings.log;
        match code {
            RDKafkaErrorCode::UnsupportedVersion if self.settings.protocol == GroupProtocol::Consumer => error!(log,
                "the brokers refuse the consumer group protocol; set KAFKA_GROUP_PROTOCOL=classic, or enable it on the brokers (Kafka 4.0+: group.coordinator.rebalance.protocols=classic,consumer)";
                "error.type" => "kafka", "error.message" => &reason),
            RDKafkaErrorCode::UnreleasedInstanceId | RDKafkaErrorCode::FencedInstanceId => warn!(log,
                "KAFKA_GROUP_INSTANCE_ID is held by another member (this one's earlier process, if it died without leaving: the broker frees it after the session timeout); a new member tries again";
                "error.type" => "kafka", "error.message" => &reason),
            _ => error!(log, "Kafka consumer failed for good; a new member takes its place"; "error.type" => "kafka",
                "error.message" => &reason),
        }
        view.fatal = Some(reason);
    }

    fn hand_out_held(&self, held: &mut HeldMessages) {
        while !held.is_empty() {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else { return };
            let (msg, ticket, revoked) = held.pop().expect("not empty");
            let handed_out = Instant::now();
            (self.deliver)(Delivery { msg, ticket, tracker: self.tracker.clone(), permit, handed_out, revoked });
        }
    }

    /// Pauses or resumes fetching of every assigned partition (resuming one that is not paused,
    /// or pausing one that is, does nothing). Paused partitions drop what librdkafka prefetched
    /// and continue from the next unread offset on resume.
    fn set_paused(&self, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else { return };
        if assignment.count() == 0 {
            return;
        }
        let result = if pause { self.consumer.pause(&assignment) } else { self.consumer.resume(&assignment) };
        if let Err(e) = result {
            warn!(self.settings.log, "cannot pause or resume fetching"; "error.type" => "kafka", "error.message" => e.to_string());
        }
    }

    /// Commits, asynchronously, every partition whose committable offset moved since last time.
    fn commit_finished(&self) {
        let commits = self.tracker.lock().expect("tracker lock").take_commits();
        if !commits.is_empty() {
            if let Err(e) = self.consumer.commit(&offsets_list(&self.settings.topic, &commits), CommitMode::Async) {
                self.tracker.lock().expect("tracker lock").commit_failed(&commits);
                warn!(self.settings.log, "offset commit failed; will commit again"; "error.type" => "kafka",
                    "error.message" => e.to_string());
            }
        }
    }

    /// Commits what is finished and leaves the group, within `within`. A consumer that could not
    /// close in time (Kafka down) is leaked rather than dropped: its destructor would wait for
    /// the broker without limit.
    fn leave(self, within: Duration) {
        let deadline = Instant::now() + within;
        let log = self.settings.log.clone();
        if self.view.lock().expect("view lock").fatal.is_some() {
            // A failed client cannot commit or leave: librdkafka destroys it without trying (the
            // broker drops the member after the session timeout).
            info!(log, "failed consumer closed without leaving the group");
            drop(self);
            return;
        }
        let commits = self.tracker.lock().expect("tracker lock").all_commits(None);
        if !commits.is_empty() {
            // librdkafka waits for outstanding commits before it leaves the group.
            let _ = self.consumer.commit(&offsets_list(&self.settings.topic, &commits), CommitMode::Async);
            info!(log, "offsets committed"; "labels.reason" => "close", "labels.offsets" => format!("{commits:?}"));
        }
        if self.consumer.close_queue().is_ok() {
            while !self.consumer.closed() && Instant::now() < deadline {
                self.consumer.poll(POLL_WAIT);
            }
        }
        if self.consumer.closed() {
            info!(log, "left the consumer group"; "labels.client_id" => self.view.lock().expect("view lock").client_id.clone());
            drop(self);
        } else {
            warn!(log, "could not leave the consumer group in time (is Kafka down?); the broker drops this member after its session timeout";
                "labels.timeout_ms" => within.as_millis() as u64);
            std::mem::forget(self.consumer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(protocol: GroupProtocol) -> MemberSettings {
        MemberSettings {
            brokers: "127.0.0.1:9092".into(),
            group_id: "g".into(),
            topic: "images".into(),
            protocol,
            session_timeout: Duration::from_secs(10),
            instance_id: None,
            log: Logger::root(slog::Discard, slog::o!()),
        }
    }

    #[test]
    fn under_the_consumer_protocol_the_group_timeouts_and_the_assignor_are_the_brokers() {
        let c = member_config(&settings(GroupProtocol::Consumer), "id");
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        for refused in ["session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"] {
            assert_eq!(c.get(refused), None, "librdkafka refuses {refused} under group.protocol=consumer");
        }
        assert_eq!(c.get("group.instance.id"), None, "static membership is off by default");
    }

    #[test]
    fn under_the_classic_protocol_the_member_sets_them_and_assigns_incrementally() {
        let mut s = settings(GroupProtocol::Classic);
        s.instance_id = Some("ingest-0".into());
        let c = member_config(&s, "id");
        assert_eq!(c.get("group.protocol"), Some("classic"));
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("cooperative-sticky"));
        assert_eq!(c.get("group.instance.id"), Some("ingest-0"));
    }
}
