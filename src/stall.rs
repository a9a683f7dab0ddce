//! Noticing a consumer group that stopped moving, without trusting the broker to notice it.
//!
//! Brokers differ: Apache Kafka evicts a dead member and hands its partitions on; others (tansu
//! 0.6) left them unowned until the next rebalance; and on any broker a member that is alive but
//! stuck holds its partitions until `max.poll.interval.ms` runs out. So every member compares the
//! group's committed offsets with the end of every partition of the topic. A partition with lag
//! whose committed offset has not moved for the stall window, or this member holding nothing
//! while partitions have lag, is a stall: the member says so, is not ready, and rejoins the group
//! (a new member) at most once per window, which gives a fresh assignment.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::group_admin::describe_group;

/// The group and the topic as the broker sees them now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per partition of the topic: (the group's committed offset, or the log start where nothing
    /// is committed; the end offset).
    pub partitions: BTreeMap<i32, (i64, i64)>,
    /// Partition → client id of the member holding it, as the group's description says; `None`
    /// where it was not read (it is read only when a stall is near: see [`snapshot`]).
    pub owners: Option<BTreeMap<i32, String>>,
}

impl Snapshot {
    pub fn lag(&self, partition: i32) -> i64 {
        self.partitions.get(&partition).map_or(0, |(committed, end)| (end - committed).max(0))
    }
}

/// What this member knows of itself.
#[derive(Clone, Debug, Default)]
pub struct Own {
    pub assigned: Vec<i32>,
    /// Partitions with an event of ours in flight: slow or retrying is not stuck.
    pub busy: Vec<i32>,
    /// Every permit taken: our partitions wait for us, they are not stuck.
    pub saturated: bool,
    /// An event of ours failed with a transient error lately (Postgres or the image host down):
    /// every member is then likely blocked the same way, and a rejoin would not help.
    pub retrying: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stall {
    /// This member has held no partition for the window while partitions have lag:
    /// (partition, lag, the client id holding it, if any) of those.
    NoPartitions { lagging: Vec<(i32, i64, Option<String>)> },
    /// Partitions with lag whose committed offset has not moved for the window:
    /// (partition, lag, the client id holding it, if any).
    Stuck { partitions: Vec<(i32, i64, Option<String>)> },
}

impl Stall {
    pub fn describe(&self, window: Duration) -> String {
        match self {
            Stall::NoPartitions { lagging } => {
                format!("this consumer has held no partition for over {} s while these have lag: {}", window.as_secs(), list(lagging))
            }
            Stall::Stuck { partitions } => {
                format!("partitions with lag and no progress for over {} s: {}", window.as_secs(), list(partitions))
            }
        }
    }
}

fn list(partitions: &[(i32, i64, Option<String>)]) -> String {
    let parts: Vec<String> = partitions
        .iter()
        .map(|(p, lag, owner)| format!("partition {p} (lag {lag}, held by {})", owner.as_deref().unwrap_or("no member")))
        .collect();
    parts.join(", ")
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub stall: Option<Stall>,
    /// Leave the group and join again as a new member now.
    pub rejoin: bool,
}

/// Remembers, per partition, since when its committed offset has not moved.
pub struct StallWatch {
    window: Duration,
    since: HashMap<i32, (i64, Instant)>,
    empty_since: Option<Instant>,
    last_rejoin: Option<Instant>,
}

impl StallWatch {
    pub fn new(window: Duration) -> StallWatch {
        StallWatch { window, since: HashMap::new(), empty_since: None, last_rejoin: None }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether a stall may be found within `ahead`: a partition has not moved, or this member
    /// has held nothing, for nearly the window. Only then is it worth naming who holds what.
    pub fn near(&self, now: Instant, ahead: Duration) -> bool {
        let close = |since: Instant| now.duration_since(since) + ahead >= self.window;
        self.since.values().any(|&(_, since)| close(since)) || self.empty_since.is_some_and(close)
    }

    /// The broker did not answer: time without an answer does not count toward a stall.
    pub fn unobserved(&mut self) {
        self.since.clear();
        self.empty_since = None;
    }

    pub fn observe(&mut self, snap: &Snapshot, own: &Own, now: Instant) -> Verdict {
        for (&p, &(committed, end)) in &snap.partitions {
            let entry = self.since.entry(p).or_insert((committed, now));
            if entry.0 != committed || end <= committed {
                *entry = (committed, now);
            }
        }
        self.since.retain(|p, _| snap.partitions.contains_key(p));
        let lagging: Vec<i32> = snap.partitions.keys().copied().filter(|p| snap.lag(*p) > 0).collect();
        let described = |p: i32| (p, snap.lag(p), snap.owners.as_ref().and_then(|o| o.get(&p)).cloned());
        if own.assigned.is_empty() && !lagging.is_empty() {
            self.empty_since.get_or_insert(now);
        } else {
            self.empty_since = None;
        }
        let stall = if self.empty_since.is_some_and(|t| now.duration_since(t) >= self.window) {
            Some(Stall::NoPartitions { lagging: lagging.iter().map(|&p| described(p)).collect() })
        } else {
            let stuck: Vec<(i32, i64, Option<String>)> = lagging
                .iter()
                .copied()
                .filter(|p| self.since.get(p).is_some_and(|(_, t)| now.duration_since(*t) >= self.window))
                .filter(|p| !(own.assigned.contains(p) && (own.saturated || own.busy.contains(p))))
                .map(described)
                .collect();
            (!stuck.is_empty()).then_some(Stall::Stuck { partitions: stuck })
        };
        let due = self.last_rejoin.is_none_or(|t| now.duration_since(t) >= self.window);
        let rejoin = stall.is_some() && due && !own.retrying;
        if rejoin {
            self.last_rejoin = Some(now);
            // A fresh window for whatever the new assignment does.
            for (_, since) in self.since.values_mut() {
                *since = now;
            }
            self.empty_since = None;
        }
        Verdict { stall, rejoin }
    }
}

/// Reads a [`Snapshot`] with a client of the group that never joins it (committed offsets and
/// the group's description, on either protocol, need no membership). Blocking: run it off the
/// actor thread.
///
/// The group's description (who holds what) is read only with `describe`, which the caller asks
/// for when a stall is near and once per window: librdkafka 2.12 can abort the whole process
/// when a request to the group's coordinator fails to be sent (a broker restarting:
/// confluentinc/librdkafka#4605), and every member asking every few seconds made that a matter
/// of time under broker faults.
pub fn snapshot<C: ConsumerContext>(
    observer: &BaseConsumer<C>,
    topic: &str,
    group: &str,
    describe: bool,
    timeout: Duration,
) -> KafkaResult<Snapshot> {
    let metadata = observer.fetch_metadata(Some(topic), timeout)?;
    let topic_md = metadata.topics().first().ok_or(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopic))?;
    let ids: Vec<i32> = topic_md.partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &ids {
        tpl.add_partition(topic, p);
    }
    let committed = observer.committed_offsets(tpl, timeout)?;
    let mut snap = Snapshot::default();
    for &p in &ids {
        let (low, high) = observer.fetch_watermarks(topic, p, timeout)?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        snap.partitions.insert(p, (done.max(low), high));
    }
    if describe {
        let described = describe_group(observer.client(), group, timeout).map_err(|e| KafkaError::AdminOp(e.code))?;
        let mut owners = BTreeMap::new();
        for member in described.members {
            for p in member.assignment.iter().filter(|(t, _)| t == topic).map(|(_, p)| *p) {
                owners.insert(p, member.client_id.clone());
            }
        }
        snap.owners = Some(owners);
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn snap(parts: &[(i32, i64, i64)]) -> Snapshot {
        Snapshot { partitions: parts.iter().map(|&(p, c, e)| (p, (c, e))).collect(), ..Default::default() }
    }

    fn own(assigned: &[i32]) -> Own {
        Own { assigned: assigned.to_vec(), ..Default::default() }
    }

    #[test]
    fn a_stall_is_near_only_in_the_last_stretch_of_the_window() {
        let mut w = StallWatch::new(W);
        let t0 = Instant::now();
        let ahead = Duration::from_secs(10);
        w.observe(&snap(&[(0, 5, 9), (1, 9, 9)]), &own(&[0, 1]), t0);
        assert!(!w.near(t0 + Duration::from_secs(45), ahead), "healthy most of the window: no description read");
        assert!(w.near(t0 + Duration::from_secs(50), ahead), "partition 0 still at 5 after 50 s");
        w.observe(&snap(&[(0, 7, 9), (1, 9, 9)]), &own(&[0, 1]), t0 + Duration::from_secs(50));
        assert!(!w.near(t0 + Duration::from_secs(55), ahead), "it moved");
        let mut empty = StallWatch::new(W);
        empty.observe(&snap(&[(0, 5, 9)]), &own(&[]), t0);
        assert!(empty.near(t0 + Duration::from_secs(50), ahead), "holding nothing while a partition has lag");
    }

    #[test]
    fn a_partition_with_lag_that_does_not_move_for_the_window_is_stuck_and_rejoined_once() {
        let mut w = StallWatch::new(W);
        let t0 = Instant::now();
        let s = snap(&[(0, 5, 10), (1, 3, 3)]);
        assert_eq!(w.observe(&s, &own(&[1]), t0), Verdict::default());
        assert_eq!(w.observe(&s, &own(&[1]), t0 + W / 2).stall, None, "not yet a window");
        let v = w.observe(&s, &own(&[1]), t0 + W);
        assert_eq!(v.stall, Some(Stall::Stuck { partitions: vec![(0, 5, None)] }));
        assert!(v.rejoin);
        let again = w.observe(&s, &own(&[1]), t0 + W + Duration::from_secs(5));
        assert!(!again.rejoin, "at most one rejoin per window");
    }

    #[test]
    fn progress_or_no_lag_is_not_a_stall() {
        let mut w = StallWatch::new(W);
        let t0 = Instant::now();
        w.observe(&snap(&[(0, 5, 10)]), &own(&[0]), t0);
        assert_eq!(w.observe(&snap(&[(0, 6, 10)]), &own(&[0]), t0 + W).stall, None, "moved");
        assert_eq!(w.observe(&snap(&[(0, 10, 10)]), &own(&[0]), t0 + 3 * W).stall, None, "no lag");
    }

    #[test]
    fn our_own_busy_or_saturated_partitions_are_waiting_not_stuck() {
        let mut w = StallWatch::new(W);
        let t0 = Instant::now();
        let s = snap(&[(0, 5, 10)]);
        w.observe(&s, &own(&[0]), t0);
        let busy = Own { assigned: vec![0], busy: vec![0], ..Default::default() };
        assert_eq!(w.observe(&s, &busy, t0 + W).stall, None);
        let saturated = Own { assigned: vec![0], saturated: true, ..Default::default() };
        assert_eq!(w.observe(&s, &saturated, t0 + W).stall, None);
        assert!(w.observe(&s, &own(&[0]), t0 + W).rejoin, "idle on a lagging partition of ours: stuck");
    }

    #[test]
    fn holding_nothing_while_there_is_lag_is_a_stall_but_not_while_dependencies_fail() {
        let mut w = StallWatch::new(W);
        let t0 = Instant::now();
        let s = snap(&[(0, 0, 4), (1, 0, 0)]);
        w.observe(&s, &own(&[]), t0);
        let retrying = Own { retrying: true, ..Default::default() };
        let v = w.observe(&s, &retrying, t0 + W);
        assert_eq!(v.stall, Some(Stall::NoPartitions { lagging: vec![(0, 4, None)] }));
        assert!(!v.rejoin, "a rejoin does not help while Postgres or the image host is down");
        assert!(w.observe(&s, &own(&[]), t0 + W).rejoin);
    }

    #[test]
    fn time_without_an_answer_from_the_broker_does_not_count() {
        let mut w = StallWatch::new(W);
        let t0 = Instant::now();
        let s = snap(&[(0, 5, 10)]);
        w.observe(&s, &own(&[]), t0);
        w.unobserved();
        assert_eq!(w.observe(&s, &own(&[]), t0 + W).stall, None);
    }
}
