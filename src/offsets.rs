//! Which offsets may be committed. Events finish out of order (several are in flight), but the
//! committed offset of a partition must never pass an event that is not finished: it is the
//! lowest unfinished offset, or one past the highest finished one when nothing is in flight.
//!
//! Partitions come and go one at a time (incremental rebalances): each assignment of a partition
//! is a generation of its own, and a ticket counts only for the generation it was begun under.
//! Revoking a partition cancels its generation's token, which every event begun under it
//! holds: those events are given up where they are, and the partition's new owner reads them
//! again from the offset committed at the revocation. Other partitions are not touched.

use std::collections::{BTreeSet, HashMap};
use tokio_util::sync::CancellationToken;

/// Proof that an offset was begun under the current assignment of its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    /// Cancelled when this assignment of the partition ends.
    revoked: CancellationToken,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: Option<i64>,
    /// The last offset handed out for commit.
    committed: Option<i64>,
}

impl PartitionState {
    fn watermark(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionState>,
    generation: u64,
}

impl OffsetTracker {
    /// These partitions are now this member's: each starts a generation of its own. One that was
    /// still assigned starts anew too (its events in flight are given up): it is read again from
    /// its committed offset.
    pub fn assign(&mut self, partitions: &[i32]) {
        self.revoke(partitions);
        for &p in partitions {
            self.generation += 1;
            self.partitions.insert(p, PartitionState { generation: self.generation, ..Default::default() });
        }
    }

    /// Begins an event read from an assigned partition: its ticket, and the token cancelled
    /// when the partition is revoked. None for a partition that is not assigned (its messages
    /// are not ours to handle).
    pub fn begin(&mut self, partition: i32, offset: i64) -> Option<(Ticket, CancellationToken)> {
        let state = self.partitions.get_mut(&partition)?;
        state.in_flight.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some((Ticket { partition, offset, generation: state.generation }, state.revoked.clone()))
    }

    /// Marks an event finished. Tickets from before a revoke are ignored: the partition's new
    /// owner reads those events again.
    pub fn finish(&mut self, ticket: Ticket) {
        if let Some(state) = self.partitions.get_mut(&ticket.partition) {
            if state.generation == ticket.generation {
                state.in_flight.remove(&ticket.offset);
            }
        }
    }

    /// The offsets to commit now: (partition, offset to commit) where it moved since the last call.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&p, state) in self.partitions.iter_mut() {
            if let Some(w) = state.watermark() {
                if state.committed.is_none_or(|c| w > c) {
                    state.committed = Some(w);
                    out.push((p, w));
                }
            }
        }
        out.sort();
        out
    }

    /// All committable offsets, moved or not (for the final commit on shutdown or revoke).
    pub fn all_commits(&self, partitions: Option<&[i32]>) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter(|(p, _)| partitions.is_none_or(|ps| ps.contains(p)))
            .filter_map(|(&p, s)| s.watermark().map(|w| (p, w)))
            .collect();
        out.sort();
        out
    }

    /// These partitions are no longer this member's: their events in flight are given up (their
    /// token is cancelled). Returns how many were in flight.
    pub fn revoke(&mut self, partitions: &[i32]) -> usize {
        let mut abandoned = 0;
        for p in partitions {
            if let Some(state) = self.partitions.remove(p) {
                state.revoked.cancel();
                abandoned += state.in_flight.len();
            }
        }
        abandoned
    }

    /// The partitions assigned, in order.
    pub fn assigned(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self.partitions.keys().copied().collect();
        out.sort();
        out
    }

    /// A commit of these offsets failed: hand them out again at the next `take_commits`.
    pub fn commit_failed(&mut self, commits: &[(i32, i64)]) {
        for (p, o) in commits {
            if let Some(state) = self.partitions.get_mut(p) {
                if state.committed == Some(*o) {
                    state.committed = None;
                }
            }
        }
    }

    /// Whether `ticket` was begun under the current assignment of its partition.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        self.partitions.get(&ticket.partition).is_some_and(|s| s.generation == ticket.generation)
    }

    /// Partitions with at least one event in flight.
    pub fn busy_partitions(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self.partitions.iter().filter(|(_, s)| !s.in_flight.is_empty()).map(|(p, _)| *p).collect();
        out.sort();
        out
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begun(t: &mut OffsetTracker, partition: i32, offset: i64) -> Ticket {
        t.begin(partition, offset).expect("the partition is assigned").0
    }

    #[test]
    fn commit_waits_for_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        t.assign(&[0]);
        let a = begun(&mut t, 0, 10);
        let b = begun(&mut t, 0, 11);
        let c = begun(&mut t, 0, 12);
        t.finish(c);
        t.finish(b);
        assert_eq!(t.take_commits(), vec![(0, 10)], "10 is unfinished: nothing past it");
        t.finish(a);
        assert_eq!(t.take_commits(), vec![(0, 13)]);
        assert_eq!(t.take_commits(), vec![], "nothing moved");
        assert_eq!(t.all_commits(None), vec![(0, 13)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.assign(&[0, 1]);
        let _stuck = begun(&mut t, 0, 5);
        let other = begun(&mut t, 1, 7);
        t.finish(other);
        assert_eq!(t.take_commits(), vec![(0, 5), (1, 8)]);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn tickets_from_before_a_revoke_do_not_count() {
        let mut t = OffsetTracker::default();
        t.assign(&[0]);
        let old = begun(&mut t, 0, 1);
        t.revoke(&[0]);
        t.assign(&[0]);
        let new = begun(&mut t, 0, 1);
        assert!(!t.is_current(&old) && t.is_current(&new));
        t.finish(old);
        assert_eq!(t.all_commits(None), vec![(0, 1)], "the new assignment's event is still open");
        t.finish(new);
        assert_eq!(t.all_commits(None), vec![(0, 2)]);
    }

    #[test]
    fn an_incremental_revoke_gives_up_only_its_own_partitions() {
        let mut t = OffsetTracker::default();
        t.assign(&[0, 1, 2]);
        let (kept, kept_token) = t.begin(0, 4).unwrap();
        let (gone, gone_token) = t.begin(1, 9).unwrap();
        let _also_gone = t.begin(1, 10).unwrap();
        assert_eq!(t.revoke(&[1]), 2, "both events of partition 1 were in flight");
        assert!(gone_token.is_cancelled() && !kept_token.is_cancelled(), "only partition 1's events are given up");
        assert!(!t.is_current(&gone) && t.is_current(&kept));
        assert_eq!(t.assigned(), vec![0, 2]);
        assert!(t.begin(1, 11).is_none(), "a revoked partition's messages are not ours");
        assert_eq!(t.busy_partitions(), vec![0]);
        t.finish(gone);
        t.finish(kept);
        assert_eq!(t.take_commits(), vec![(0, 5)], "nothing is committed for the revoked partition");
    }

    #[test]
    fn a_partition_given_back_starts_a_generation_of_its_own() {
        let mut t = OffsetTracker::default();
        t.assign(&[0, 1]);
        let before = begun(&mut t, 1, 3);
        t.finish(before);
        assert_eq!(t.take_commits(), vec![(1, 4)]);
        t.revoke(&[1]);
        t.assign(&[1, 2]);
        let stale = Ticket { partition: 1, ..before };
        assert!(!t.is_current(&stale), "a ticket of the earlier assignment of partition 1");
        let again = begun(&mut t, 1, 4);
        let other = begun(&mut t, 2, 0);
        assert_ne!(again.generation, other.generation, "generations are per partition");
        t.finish(again);
        assert_eq!(t.take_commits(), vec![(1, 5), (2, 0)], "the new generation commits from scratch");
    }

    #[test]
    fn assigning_a_partition_already_held_gives_up_its_events_in_flight() {
        let mut t = OffsetTracker::default();
        t.assign(&[0]);
        let (old, token) = t.begin(0, 7).unwrap();
        t.assign(&[0]);
        assert!(token.is_cancelled() && !t.is_current(&old), "read again from the committed offset: the old event is given up");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_failed_commit_is_handed_out_again() {
        let mut t = OffsetTracker::default();
        t.assign(&[0]);
        let a = begun(&mut t, 0, 5);
        t.finish(a);
        assert_eq!(t.take_commits(), vec![(0, 6)]);
        assert_eq!(t.take_commits(), vec![], "nothing moved");
        t.commit_failed(&[(0, 6)]);
        assert_eq!(t.take_commits(), vec![(0, 6)], "committed again after the failure");
    }
}
