//! Faults injected by hand through the admin endpoint (`POST /admin/events/panic`), for fault
//! tests and demos: the endpoint arms them, the consumer's per-event pipeline sets them off.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Panics still to be injected into the handling of the next events. A handle: the daemon makes
/// one and hands it to the endpoint and to the consumer's pipeline.
#[derive(Clone, Debug, Default)]
pub struct InjectedPanics(Arc<AtomicU32>);

impl InjectedPanics {
    /// Makes the handling of the next `n` events panic once each (replaces what was still armed).
    pub fn arm(&self, n: u32) {
        self.0.store(n, Ordering::SeqCst);
    }

    /// Whether the event being handled now is to panic; counts the panic off.
    pub fn take(&self) -> bool {
        self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_armed_panic_is_taken_once_by_any_clone() {
        let armed = InjectedPanics::default();
        let pipeline = armed.clone();
        assert!(!pipeline.take());
        armed.arm(2);
        assert!(pipeline.take() && pipeline.take());
        assert!(!pipeline.take());
    }
}
