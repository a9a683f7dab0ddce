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

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use slog::{info, warn, Logger};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::kafka::{base_config, LogContext};
use crate::metrics::METRICS;
use crate::offsets::{OffsetTracker, Ticket};

pub type Tracker = Arc<Mutex<OffsetTracker>>;

/// How often finished events are committed (one request for many events).
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The longest one poll waits; also how soon a control message is seen.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How long one poll waits while read messages wait for a permit.
const PERMIT_WAIT: Duration = Duration::from_millis(2);
/// Read messages waiting for a permit, at most (count and payload bytes); fetching pauses there
/// and resumes when they are down to half. librdkafka takes 0.6-0.8 s to deliver again after a
/// resume (measured against Apache Kafka 4.x), so the half left must last that long at full
/// speed: with 500 the consumer sat idle for 0.4 s of every 0.6 s at 2,500 events/s.
const HOLD_MAX: usize = 5000;
const HOLD_MAX_BYTES: usize = 8 << 20;
/// While the brokers are unreachable, how often a metadata request checks whether they are back.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// After the brokers answered again, "all brokers down" errors are taken as stale for this long:
/// librdkafka queued them during the outage, or a restarting broker flapped. One that persists
/// past it is a new outage.
const RECOVERY_GRACE: Duration = Duration::from_secs(10);
/// Other consumer errors are logged at most this often per error code.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct MemberSettings {
    pub brokers: String,
    pub group_id: String,
    pub topic: String,
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
        let view = Arc::new(Mutex::new(MemberView { client_id: client_id.clone(), assigned: Vec::new(), reachable: true }));
        let tracker = Tracker::default();
        let context = MemberContext {
            logs: LogContext { log: settings.log.clone() },
            topic: settings.topic.clone(),
            tracker: tracker.clone(),
            view: view.clone(),
            assignment_changed: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<MemberContext> = base_config(&settings.brokers)
            .set("client.id", &client_id)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // librdkafka's prefetch is bounded too: memory never grows with the backlog.
            .set("queued.max.messages.kbytes", "16384")
            .set("reconnect.backoff.max.ms", "2000")
            .create_with_context(context)?;
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

/// librdkafka's callbacks, run on the member's thread.
struct MemberContext {
    logs: LogContext,
    topic: String,
    tracker: Tracker,
    view: Arc<Mutex<MemberView>>,
    /// Set by a new assignment: its partitions are not paused yet.
    assignment_changed: AtomicBool,
}

impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        self.logs.log(level, fac, msg)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(error, reason)
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = topic_partitions(tpl, &self.topic);
            let commits = self.tracker.lock().expect("tracker lock").all_commits(Some(&partitions));
            // Asynchronous: librdkafka sends it before it rejoins, and waits for it on close.
            if !commits.is_empty() && !consumer.assignment_lost() {
                if let Err(e) = consumer.commit(&offsets_list(&self.topic, &commits), CommitMode::Async) {
                    warn!(self.logs.log, "offset commit failed; the events will be read again"; "labels.reason" => "revoke",
                        "error.type" => "kafka", "error.message" => e.to_string());
                }
            }
            self.tracker.lock().expect("tracker lock").revoke(&partitions);
            self.view.lock().expect("view lock").assigned.clear();
            info!(self.logs.log, "partitions revoked"; "labels.partitions" => format!("{partitions:?}"),
                "labels.lost" => consumer.assignment_lost());
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = topic_partitions(tpl, &self.topic);
            self.view.lock().expect("view lock").assigned = partitions.clone();
            self.assignment_changed.store(true, Ordering::SeqCst);
            info!(self.logs.log, "partitions assigned"; "labels.partitions" => format!("{partitions:?}"));
        }
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

fn topic_partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic).iter().map(|e| e.partition()).collect()
}

pub fn offsets_list(topic: &str, commits: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in commits {
        tpl.add_partition_offset(topic, p, Offset::Offset(o)).expect("offsets are valid");
    }
    tpl
}

/// Messages read while no permit was free: events (small), not images, in the order read.
#[derive(Default)]
struct HeldMessages {
    messages: VecDeque<(OwnedMessage, Ticket)>,
    bytes: usize,
}

impl HeldMessages {
    fn size(msg: &OwnedMessage) -> usize {
        msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len)
    }
    fn push(&mut self, msg: OwnedMessage, ticket: Ticket) {
        self.bytes += Self::size(&msg);
        self.messages.push_back((msg, ticket));
    }
    fn pop(&mut self) -> Option<(OwnedMessage, Ticket)> {
        let (msg, ticket) = self.messages.pop_front()?;
        self.bytes -= Self::size(&msg);
        Some((msg, ticket))
    }
    fn retain(&mut self, keep: impl Fn(&Ticket) -> bool) {
        self.messages.retain(|(_, ticket)| keep(ticket));
        self.bytes = self.messages.iter().map(|(msg, _)| Self::size(msg)).sum();
    }
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
    fn is_full(&self) -> bool {
        self.messages.len() >= HOLD_MAX || self.bytes >= HOLD_MAX_BYTES
    }
    fn is_below_half(&self) -> bool {
        self.messages.len() <= HOLD_MAX / 2 && self.bytes <= HOLD_MAX_BYTES / 2
    }
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
            if self.consumer.context().assignment_changed.swap(false, Ordering::SeqCst) {
                paused = false;
                // What was read from partitions given up meanwhile is the new owner's to handle.
                let tracker = self.tracker.lock().expect("tracker lock");
                held.retain(|ticket| tracker.is_current(ticket));
            }
            let pause = !fetching || held.is_full() || (paused && !held.is_below_half());
            if pause != paused {
                self.set_paused(pause);
                paused = pause;
            }
            // Waiting for a permit: look again soon, rather than after a whole poll wait.
            let wait = if held.is_empty() { POLL_WAIT } else { PERMIT_WAIT };
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    health.answered(&log, &self.view);
                    let msg = m.detach();
                    METRICS.consumed.inc();
                    let ticket = self.tracker.lock().expect("tracker lock").begin(msg.partition(), msg.offset());
                    held.push(msg, ticket);
                    if fetching {
                        self.hand_out_held(&mut held);
                    }
                }
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

    fn hand_out_held(&self, held: &mut HeldMessages) {
        while !held.is_empty() {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else { return };
            let (msg, ticket) = held.pop().expect("not empty");
            (self.deliver)(Delivery { msg, ticket, tracker: self.tracker.clone(), permit, handed_out: Instant::now() });
        }
    }

    /// Pauses or resumes fetching of every assigned partition. Paused partitions drop what
    /// librdkafka prefetched and continue from the next unread offset on resume.
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

/// Whether the brokers answer, said once per change instead of once per queued error.
#[derive(Default)]
struct Health {
    /// Since when every broker has been unreachable.
    down_since: Option<Instant>,
    /// When the brokers last answered again after an outage.
    recovered_at: Option<Instant>,
    last_probe: Option<Instant>,
    /// When each other error code (as its number) was last logged.
    logged: std::collections::HashMap<i32, Instant>,
}

impl Health {
    fn error(&mut self, e: &KafkaError, log: &Logger, view: &Mutex<MemberView>) {
        let code = e.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            let stale = self.recovered_at.is_some_and(|t| t.elapsed() < RECOVERY_GRACE);
            if self.down_since.is_none() && !stale {
                self.down_since = Some(Instant::now());
                view.lock().expect("view lock").reachable = false;
                warn!(log, "Kafka consumer lost every broker; it keeps polling and serves the group as soon as one answers";
                    "error.type" => "kafka", "error.message" => e.to_string());
            }
            return;
        }
        // One broker's connection failing is librdkafka's to retry (and the outage, if it is one,
        // is said by the "all brokers down" that follows): not a WARN of its own.
        if code == Some(RDKafkaErrorCode::BrokerTransportFailure) {
            return;
        }
        let code = code.unwrap_or(RDKafkaErrorCode::Unknown) as i32;
        let due = self.logged.get(&code).is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY);
        if due && self.down_since.is_none() {
            self.logged.insert(code, Instant::now());
            warn!(log, "Kafka consumer error; librdkafka retries it"; "error.type" => "kafka", "error.message" => e.to_string());
        }
    }

    fn should_probe(&mut self) -> bool {
        let due = self.down_since.is_some() && self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if due {
            self.last_probe = Some(Instant::now());
        }
        due
    }

    fn answered(&mut self, log: &Logger, view: &Mutex<MemberView>) {
        if let Some(since) = self.down_since.take() {
            self.recovered_at = Some(Instant::now());
            view.lock().expect("view lock").reachable = true;
            self.logged.clear();
            info!(log, "Kafka consumer recovered"; "labels.outage_ms" => since.elapsed().as_millis() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::OffsetTracker;
    use rdkafka::Timestamp;

    fn message(offset: i64, payload_bytes: usize) -> OwnedMessage {
        OwnedMessage::new(Some(vec![b'x'; payload_bytes]), Some(b"id".to_vec()), "images".into(), Timestamp::NotAvailable, 0, offset, None)
    }

    #[test]
    fn fetching_pauses_when_the_held_messages_fill_and_resumes_at_half() {
        let mut tracker = OffsetTracker::default();
        let mut held = HeldMessages::default();
        for offset in 0..HOLD_MAX as i64 - 1 {
            held.push(message(offset, 100), tracker.begin(0, offset));
        }
        assert!(!held.is_full());
        held.push(message(HOLD_MAX as i64, 100), tracker.begin(0, HOLD_MAX as i64));
        assert!(held.is_full(), "{HOLD_MAX} messages fill it");
        while !held.is_below_half() {
            held.pop().unwrap();
        }
        assert_eq!(held.messages.len(), HOLD_MAX / 2, "fetching resumes at half, not before");
    }

    #[test]
    fn large_messages_fill_it_by_their_bytes() {
        let mut tracker = OffsetTracker::default();
        let mut held = HeldMessages::default();
        let big = HOLD_MAX_BYTES / 4;
        for offset in 0..4 {
            assert!(!held.is_full());
            held.push(message(offset, big), tracker.begin(0, offset));
        }
        assert!(held.is_full(), "4 messages of a quarter of HOLD_MAX_BYTES each fill it");
        held.pop().unwrap();
        assert!(!held.is_below_half(), "3 quarters are above half");
        held.retain(|t| t.offset == 3);
        assert!(held.is_below_half() && held.bytes == big + 2, "retain recounts the bytes: {}", held.bytes);
    }
}
