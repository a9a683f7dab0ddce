//! How an actor ended, and the error it failed with: kept as an error with its source, and
//! shown in the supervisor's log lines and restart hook as text.

/// What a start function returns, or a failing actor declares with [`Lifeline::fail`](super::Lifeline::fail), as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An actor ended with an error rather than a panic. The supervisor restarts it: fix the cause
/// shown (a dependency, a setting) if it keeps coming back.
#[derive(Debug, thiserror::Error)]
pub enum ActorFailed {
    /// Its start function returned an error: no incarnation ran.
    #[error("start failed: {source}")]
    Start { actor: &'static str, source: BoxError },
    /// It declared the error with [`Lifeline::fail`](super::Lifeline::fail) and stopped.
    #[error("{source}")]
    Declared { actor: &'static str, source: BoxError },
}

/// How one incarnation of an actor ended, as its [`Lifeline`](super::Lifeline) reports it.
#[derive(Debug)]
pub enum Exit {
    Normal,
    Failed(ActorFailed),
    Panicked(String),
}

impl Exit {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Exit::Normal => "stopped",
            Exit::Failed(_) => "failure",
            Exit::Panicked(_) => "panic",
        }
    }
    pub(super) fn reason(&self) -> String {
        match self {
            Exit::Normal => "the actor stopped".into(),
            Exit::Failed(e) => e.to_string(),
            Exit::Panicked(r) => r.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervision::{Event, Lifeline};
    use tokio::sync::mpsc;

    #[test]
    fn a_declared_failure_keeps_its_error() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut lifeline = Lifeline { name: "worker", generation: 1, events: Some(tx), failure: None, stopped_cleanly: false };
        lifeline.fail(std::io::Error::other("disk gone"));
        drop(lifeline);
        let Ok(Event::Exited { exit: Exit::Failed(failed), .. }) = rx.try_recv() else { panic!("a declared failure") };
        assert_eq!(failed.to_string(), "disk gone");
        let source = std::error::Error::source(&failed).expect("its cause");
        assert_eq!(source.downcast_ref::<std::io::Error>().map(|e| e.kind()), Some(std::io::ErrorKind::Other));
    }
}
