//! The messages a member read while no event permit was free: events (small), not images, in
//! the order read. Fetching pauses when they fill up and resumes at half.

use rdkafka::message::{Message, OwnedMessage};
use std::collections::VecDeque;
use tokio_util::sync::CancellationToken;

use crate::offsets::Ticket;

/// Read messages waiting for a permit, at most (count and payload bytes); fetching pauses there
/// and resumes when they are down to half. librdkafka takes 0.6-0.8 s to deliver again after a
/// resume (measured against Apache Kafka 4.x), so the half left must last that long at full
/// speed: with 500 the consumer sat idle for 0.4 s of every 0.6 s at 2,500 events/s.
pub(super) const HOLD_MAX: usize = 5000;
pub(super) const HOLD_MAX_BYTES: usize = 8 << 20;
/// A message read, with its ticket and the token its partition's revocation cancels.
type Held = (OwnedMessage, Ticket, CancellationToken);

#[derive(Default)]
pub(super) struct HeldMessages {
    messages: VecDeque<Held>,
    bytes: usize,
}

impl HeldMessages {
    fn size(msg: &OwnedMessage) -> usize {
        msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len)
    }
    pub(super) fn push(&mut self, msg: OwnedMessage, (ticket, revoked): (Ticket, CancellationToken)) {
        self.bytes += Self::size(&msg);
        self.messages.push_back((msg, ticket, revoked));
    }
    pub(super) fn pop(&mut self) -> Option<Held> {
        let held = self.messages.pop_front()?;
        self.bytes -= Self::size(&held.0);
        Some(held)
    }
    /// Keeps the messages `keep` says; returns how many were dropped.
    pub(super) fn retain(&mut self, keep: impl Fn(&Ticket) -> bool) -> usize {
        let before = self.messages.len();
        self.messages.retain(|(_, ticket, _)| keep(ticket));
        self.bytes = self.messages.iter().map(|(msg, _, _)| Self::size(msg)).sum();
        before - self.messages.len()
    }
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
    pub(super) fn is_full(&self) -> bool {
        self.messages.len() >= HOLD_MAX || self.bytes >= HOLD_MAX_BYTES
    }
    pub(super) fn is_below_half(&self) -> bool {
        self.messages.len() <= HOLD_MAX / 2 && self.bytes <= HOLD_MAX_BYTES / 2
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
        tracker.assign(&[0]);
        let mut held = HeldMessages::default();
        for offset in 0..HOLD_MAX as i64 - 1 {
            held.push(message(offset, 100), tracker.begin(0, offset).unwrap());
        }
        assert!(!held.is_full());
        held.push(message(HOLD_MAX as i64, 100), tracker.begin(0, HOLD_MAX as i64).unwrap());
        assert!(held.is_full(), "{HOLD_MAX} messages fill it");
        while !held.is_below_half() {
            held.pop().unwrap();
        }
        assert_eq!(held.messages.len(), HOLD_MAX / 2, "fetching resumes at half, not before");
    }

    #[test]
    fn large_messages_fill_it_by_their_bytes() {
        let mut tracker = OffsetTracker::default();
        tracker.assign(&[0]);
        let mut held = HeldMessages::default();
        let big = HOLD_MAX_BYTES / 4;
        for offset in 0..4 {
            assert!(!held.is_full());
            held.push(message(offset, big), tracker.begin(0, offset).unwrap());
        }
        assert!(held.is_full(), "4 messages of a quarter of HOLD_MAX_BYTES each fill it");
        held.pop().unwrap();
        assert!(!held.is_below_half(), "3 quarters are above half");
        held.retain(|t| t.offset == 3);
        assert!(held.is_below_half() && held.bytes == big + 2, "retain recounts the bytes: {}", held.bytes);
    }

    #[test]
    fn a_revocation_drops_the_held_messages_of_its_partitions_only() {
        let mut tracker = OffsetTracker::default();
        tracker.assign(&[0, 1]);
        let mut held = HeldMessages::default();
        for offset in 0..3 {
            held.push(message(offset, 10), tracker.begin(0, offset).unwrap());
            let other = OwnedMessage::new(Some(vec![b'y'; 10]), None, "images".into(), Timestamp::NotAvailable, 1, offset, None);
            held.push(other, tracker.begin(1, offset).unwrap());
        }
        tracker.revoke(&[1]);
        assert_eq!(held.retain(|t| tracker.is_current(t)), 3, "partition 1's three messages");
        let left: Vec<(i32, i64)> = std::iter::from_fn(|| held.pop())
            .map(|(m, _, revoked)| {
                assert!(!revoked.is_cancelled());
                (m.partition(), m.offset())
            })
            .collect();
        assert_eq!(left, vec![(0, 0), (0, 1), (0, 2)], "partition 0's, in order");
    }
}
