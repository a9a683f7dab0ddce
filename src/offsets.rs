//! Which offsets may be committed. Events finish out of order (several are in flight), but the
//! committed offset of a partition must never pass an event that is not finished: it is the
//! lowest unfinished offset, or one past the highest finished one when nothing is in flight.

use std::collections::{BTreeSet, HashMap};

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
    pub fn begin(&mut self, partition: i32, offset: i64) -> Ticket {
        let state = self.partitions.entry(partition).or_insert_with(|| {
            self.generation += 1;
            PartitionState { generation: self.generation, ..Default::default() }
        });
        state.in_flight.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Ticket { partition, offset, generation: state.generation }
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

    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
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

    #[test]
    fn commit_waits_for_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        let a = t.begin(0, 10);
        let b = t.begin(0, 11);
        let c = t.begin(0, 12);
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
        let _stuck = t.begin(0, 5);
        let other = t.begin(1, 7);
        t.finish(other);
        assert_eq!(t.take_commits(), vec![(0, 5), (1, 8)]);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn tickets_from_before_a_revoke_do_not_count() {
        let mut t = OffsetTracker::default();
        let old = t.begin(0, 1);
        t.revoke(&[0]);
        let new = t.begin(0, 1);
        t.finish(old);
        assert_eq!(t.all_commits(None), vec![(0, 1)], "the new assignment's event is still open");
        t.finish(new);
        assert_eq!(t.all_commits(None), vec![(0, 2)]);
    }

    #[test]
    fn a_failed_commit_is_handed_out_again() {
        let mut t = OffsetTracker::default();
        let a = t.begin(0, 5);
        t.finish(a);
        assert_eq!(t.take_commits(), vec![(0, 6)]);
        assert_eq!(t.take_commits(), vec![], "nothing moved");
        t.commit_failed(&[(0, 6)]);
        assert_eq!(t.take_commits(), vec![(0, 6)], "committed again after the failure");
    }
}
