//! Supervision that actix does not give: noticing an actor that stops, fails or panics, and
//! restarting it with exponential backoff and jitter, within a restart limit per time window.
//!
//! - Each supervised actor holds a [`Lifeline`]. Its `Drop` tells the supervisor that the actor
//!   is gone and why: a panic (the actor never reached `stopped()`; the panic hook left the
//!   message), a failure the actor declared with [`Lifeline::fail`], or a normal stop.
//! - Other actors reach it through a [`Slot`], a stable address that follows restarts. A message
//!   sent while the actor is down waits for the restart instead of being dropped.
//! - Past `max_restarts` within `window`, [`Supervisor::run`] returns [`Outcome::LimitPassed`] and
//!   the caller shuts everything down in order and exits non-zero.
//! - Every restart is logged and handed to a hook the caller gives ([`Supervisor::new`]), for its
//!   metrics and status page. Panic messages come from a panic hook: [`install_panic_hook`], or
//!   the caller's own hook calling [`record_panic`]; without one a panic is still told apart from
//!   a stop, only without its message.
//!
//! This module knows nothing of the application around it (its imports are actix, slog, tokio and
//! `backoff`), so it can be lifted into another project as it is.

use actix::prelude::*;
use slog::{error, info, warn, Logger};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;

mod exit;
pub use exit::{ActorFailed, BoxError, Exit};

/// A message could not reach an actor: it was down longer than [`SLOT_WAIT`], or it died with the
/// message in its mailbox. Worth retrying: the supervisor restarts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("actor {0} is not running; retrying until it is restarted")]
pub struct ActorDown(pub &'static str);

/// One restart, as handed to the restart hook.
#[derive(Debug)]
pub struct Restart<'a> {
    pub actor: &'static str,
    /// Why it stopped: the panic message, the declared failure, or a normal stop.
    pub reason: &'a str,
    /// `panic`, `failure` or `stopped`.
    pub kind: &'static str,
    /// How long until it starts again.
    pub backoff: Duration,
}

/// Called on every restart (for metrics, a status page).
pub type RestartHook = Box<dyn FnMut(&Restart<'_>)>;

/// When a child is restarted (Erlang's terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartType {
    /// Always, whatever the exit.
    Permanent,
    /// Only after an abnormal exit (panic or failure).
    Transient,
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub backoff: Backoff,
    /// A child that ran this long before dying starts again from the minimum backoff.
    pub stable_after: Duration,
    /// More restarts than this within `window` stops the process.
    pub max_restarts: u32,
    pub window: Duration,
}

enum Event {
    Exited { name: &'static str, generation: u64, exit: Exit },
    RestartDue { name: &'static str },
}

thread_local! {
    /// The last panic on this thread that no lifeline has reported yet.
    static UNREPORTED_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Called by the panic hook. A handler's panic ends its actor's task on this thread; actix then
/// still runs `stopped()` while dropping the context, so the lifeline dropped right after takes
/// the panic from here to tell it apart from a normal stop.
pub fn record_panic(message: String) {
    UNREPORTED_PANIC.with(|p| *p.borrow_mut() = Some(message));
}

/// Records each panic's message for the lifeline of the actor it kills, then runs the hook that
/// was installed before. For programs without a panic hook of their own that calls [`record_panic`].
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        record_panic(format!("{message}{location}"));
        previous(info);
    }));
}

/// For code that caught a panic itself (`catch_unwind`): no actor died of it.
pub fn forget_panic() {
    take_unreported_panic();
}

fn take_unreported_panic() -> Option<String> {
    UNREPORTED_PANIC.with(|p| p.borrow_mut().take())
}

/// Held by a supervised actor; reports its end to the supervisor when dropped.
pub struct Lifeline {
    name: &'static str,
    generation: u64,
    events: Option<mpsc::UnboundedSender<Event>>,
    failure: Option<BoxError>,
    stopped_cleanly: bool,
}

impl Lifeline {
    /// For an actor that runs without a supervisor (the `backfill` command): reports nothing.
    pub fn unsupervised(name: &'static str) -> Lifeline {
        Lifeline { name, generation: 0, events: None, failure: None, stopped_cleanly: false }
    }

    /// Declares why the actor is about to stop with an error (call before `ctx.stop()`).
    pub fn fail(&mut self, error: impl Into<BoxError>) {
        self.failure = Some(error.into());
    }

    /// To be called from the actor's `stopped()`: a drop without it means a panic.
    pub fn stopped(&mut self) {
        self.stopped_cleanly = true;
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        let exit = match (take_unreported_panic(), self.failure.take(), self.stopped_cleanly) {
            (Some(panic), _, _) => Exit::Panicked(panic),
            (None, Some(source), _) => Exit::Failed(ActorFailed::Declared { actor: self.name, source }),
            (None, None, true) => Exit::Normal,
            (None, None, false) => Exit::Panicked("the actor's task ended without stopping".into()),
        };
        if let Some(events) = &self.events {
            let _ = events.send(Event::Exited { name: self.name, generation: self.generation, exit });
        }
    }
}

/// A stable address of a supervised actor, following its restarts.
pub struct Slot<A: Actor> {
    name: &'static str,
    addr: Arc<watch::Sender<Option<Addr<A>>>>,
}

impl<A: Actor> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Slot { name: self.name, addr: self.addr.clone() }
    }
}

/// How long a message waits for an actor that is down before the sender hears of it.
pub const SLOT_WAIT: Duration = Duration::from_secs(30);

impl<A: Actor<Context = Context<A>>> Slot<A> {
    pub fn new(name: &'static str) -> Slot<A> {
        Slot { name, addr: Arc::new(watch::Sender::new(None)) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn set(&self, addr: Option<Addr<A>>) {
        self.addr.send_replace(addr);
    }

    /// The running actor's address, if it is up.
    pub fn current(&self) -> Option<Addr<A>> {
        self.addr.borrow().clone().filter(|a| a.connected())
    }

    /// Sends `msg`, waiting up to [`SLOT_WAIT`] for the actor to be (re)started. An actor that
    /// dies with the message in its mailbox is reported as [`ActorDown`]: retry it.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, ActorDown>
    where
        A: Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let mut rx = self.addr.subscribe();
        let ready = tokio::time::timeout(SLOT_WAIT, rx.wait_for(|a| a.as_ref().is_some_and(|a| a.connected())));
        let addr = match ready.await {
            Ok(Ok(guard)) => guard.clone().expect("checked by wait_for"),
            _ => return Err(ActorDown(self.name)),
        };
        addr.send(msg).await.map_err(|_| ActorDown(self.name))
    }
}

/// Starts one incarnation of a child; it must hand the lifeline to the actor it starts.
pub type StartFn = Box<dyn FnMut(Lifeline) -> Result<(), BoxError>>;

pub struct ChildSpec {
    pub name: &'static str,
    pub restart: RestartType,
    pub policy: Policy,
    pub start: StartFn,
}

struct Child {
    spec: ChildSpec,
    generation: u64,
    started_at: Instant,
    consecutive: u32,
    recent: VecDeque<Instant>,
    restarts: u64,
}

/// How many restart times of one actor the status page shows.
pub const RESTART_TIMES_KEPT: usize = 5;

/// The restarts of one actor since the start of the process.
#[derive(Default, Clone, Debug)]
pub struct Restarts {
    pub count: u64,
    pub last_error: Option<String>,
    /// The latest restarts' times (RFC 3339, UTC), newest last.
    pub times: VecDeque<String>,
}

/// Restarts per actor since the start of the process, for metrics and the status page.
#[derive(Default, Clone)]
pub struct RestartCounts(Arc<Mutex<HashMap<&'static str, Restarts>>>);

impl RestartCounts {
    /// Counts a restart of `name` (the supervisor's, or one an actor makes of its own resources).
    pub fn record(&self, name: &'static str, reason: &str) -> u64 {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(name).or_default();
        e.count += 1;
        e.last_error = Some(reason.to_owned());
        if e.times.len() == RESTART_TIMES_KEPT {
            e.times.pop_front();
        }
        e.times.push_back(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        e.count
    }
    /// The restarts of `name`.
    pub fn get(&self, name: &str) -> Restarts {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned().unwrap_or_default()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shutdown future resolved.
    Shutdown,
    /// An actor passed its restart limit: the process should stop and exit non-zero.
    LimitPassed { actor: &'static str },
}

pub struct Supervisor {
    children: Vec<Child>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    on_restart: RestartHook,
    log: Logger,
}

impl Supervisor {
    /// `on_restart` hears of every restart, after it is logged.
    pub fn new(log: Logger, on_restart: RestartHook) -> Supervisor {
        let (events_tx, events) = mpsc::unbounded_channel();
        Supervisor { children: Vec::new(), events_tx, events, on_restart, log }
    }

    pub fn add(&mut self, spec: ChildSpec) {
        let now = Instant::now();
        self.children.push(Child { spec, generation: 0, started_at: now, consecutive: 0, recent: VecDeque::new(), restarts: 0 });
    }

    /// Starts every child in order, then supervises until `shutdown` or a passed limit.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Outcome {
        for i in 0..self.children.len() {
            self.start(i);
        }
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => return Outcome::Shutdown,
                e = self.events.recv() => e.expect("the supervisor holds a sender"),
            };
            match event {
                Event::RestartDue { name } => {
                    if let Some(i) = self.index(name) {
                        self.start(i);
                    }
                }
                Event::Exited { name, generation, exit } => {
                    let Some(i) = self.index(name) else { continue };
                    if self.children[i].generation != generation {
                        continue; // an old incarnation
                    }
                    if let Some(outcome) = self.on_exit(i, exit) {
                        return outcome;
                    }
                }
            }
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.name == name)
    }

    fn start(&mut self, i: usize) {
        let child = &mut self.children[i];
        child.generation += 1;
        child.started_at = Instant::now();
        let lifeline = Lifeline {
            name: child.spec.name,
            generation: child.generation,
            events: Some(self.events_tx.clone()),
            failure: None,
            stopped_cleanly: false,
        };
        info!(self.log, "actor started"; "labels.actor" => child.spec.name, "labels.generation" => child.generation);
        if let Err(source) = (child.spec.start)(lifeline) {
            // The lifeline was dropped unused (it reported an exit of its own) or handed on: this
            // incarnation is over, and its start failure is its one exit.
            child.generation += 1;
            let _ = self.events_tx.send(Event::Exited {
                name: child.spec.name,
                generation: child.generation,
                exit: Exit::Failed(ActorFailed::Start { actor: child.spec.name, source }),
            });
        }
    }

    /// Decides what an exit means: nothing, a restart after backoff, or the end of the process.
    fn on_exit(&mut self, i: usize, exit: Exit) -> Option<Outcome> {
        let log = self.log.clone();
        let child = &mut self.children[i];
        let name = child.spec.name;
        if matches!(exit, Exit::Normal) && child.spec.restart == RestartType::Transient {
            info!(log, "actor stopped normally; not restarted"; "labels.actor" => name);
            return None;
        }
        let policy = child.spec.policy;
        let now = Instant::now();
        child.recent.retain(|t| now.duration_since(*t) < policy.window);
        if child.recent.len() as u32 >= policy.max_restarts {
            error!(log, "actor passed its restart limit; shutting down"; "labels.actor" => name,
                "labels.max_restarts" => policy.max_restarts, "labels.window_secs" => policy.window.as_secs(),
                "error.type" => exit.kind(), "error.message" => exit.reason());
            return Some(Outcome::LimitPassed { actor: name });
        }
        child.recent.push_back(now);
        if now.duration_since(child.started_at) >= policy.stable_after {
            child.consecutive = 0;
        }
        let delay = policy.backoff.delay(child.consecutive);
        child.consecutive += 1;
        child.restarts += 1;
        let reason = exit.reason();
        warn!(log, "actor restarting"; "labels.actor" => name, "labels.restart_count" => child.restarts,
            "labels.backoff_ms" => delay.as_millis() as u64, "error.type" => exit.kind(), "error.message" => &reason);
        (self.on_restart)(&Restart { actor: name, reason: &reason, kind: exit.kind(), backoff: delay });
        let events = self.events_tx.clone();
        actix::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue { name });
        });
        None
    }
}

/// Makes an actor panic, for people demonstrating resilience (see the admin endpoint).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Implements [`Crash`] for an actor: its handler panics.
#[macro_export]
macro_rules! crashable {
    ($actor:ty) => {
        impl actix::Handler<$crate::supervision::Crash> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::supervision::Crash, _: &mut Self::Context) {
                panic!(concat!("crash of ", stringify!($actor), " requested through the admin endpoint"));
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Worker {
        lifeline: Lifeline,
    }
    impl Actor for Worker {
        type Context = Context<Self>;
        fn stopped(&mut self, _: &mut Context<Self>) {
            self.lifeline.stopped();
        }
    }
    crate::crashable!(Worker);

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Ping;
    impl Handler<Ping> for Worker {
        type Result = u32;
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> u32 {
            7
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Fail;
    impl Handler<Fail> for Worker {
        type Result = ();
        fn handle(&mut self, _: Fail, ctx: &mut Context<Self>) {
            self.lifeline.fail("declared failure");
            ctx.stop();
        }
    }

    fn policy(max_restarts: u32) -> Policy {
        Policy {
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(400), 0.0),
            stable_after: Duration::from_secs(60),
            max_restarts,
            window: Duration::from_secs(60),
        }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn spec(slot: &Slot<Worker>, starts: Arc<AtomicU32>, restart: RestartType, max: u32) -> ChildSpec {
        let slot = slot.clone();
        ChildSpec {
            name: "worker",
            restart,
            policy: policy(max),
            start: Box::new(move |lifeline| {
                starts.fetch_add(1, Ordering::SeqCst);
                slot.set(Some(Worker { lifeline }.start()));
                Ok(())
            }),
        }
    }

    #[test]
    fn a_panicking_actor_is_restarted_after_its_backoff_and_messages_wait_for_it() {
        install_panic_hook();
        let sys = actix::System::new();
        sys.block_on(async {
            let slot = Slot::<Worker>::new("worker");
            let starts = Arc::new(AtomicU32::new(0));
            let counts = RestartCounts::default();
            let hooked = counts.clone();
            let mut sup = Supervisor::new(
                log(),
                Box::new(move |r| {
                    hooked.record(r.actor, r.reason);
                }),
            );
            sup.add(spec(&slot, starts.clone(), RestartType::Permanent, 5));
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let probe = slot.clone();
            let started_at = Instant::now();
            actix::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                probe.current().unwrap().do_send(Crash);
                tokio::time::sleep(Duration::from_millis(5)).await;
                // Sent while the worker is down: it waits for the restart.
                assert_eq!(probe.send(Ping).await.unwrap(), 7);
                let _ = stop_tx.send(());
            });
            let outcome = sup.run(async { stop_rx.await.unwrap() }).await;
            assert_eq!(outcome, Outcome::Shutdown);
            assert_eq!(starts.load(Ordering::SeqCst), 2);
            assert!(started_at.elapsed() >= Duration::from_millis(70), "restarted only after the 50 ms backoff");
            let restarts = counts.get("worker");
            assert_eq!((restarts.count, restarts.times.len()), (1, 1));
            assert!(restarts.last_error.unwrap().contains("crash of Worker"), "the panic message is the reason");
        });
    }

    #[test]
    fn more_restarts_than_the_limit_ends_supervision() {
        let sys = actix::System::new();
        sys.block_on(async {
            let slot = Slot::<Worker>::new("worker");
            let starts = Arc::new(AtomicU32::new(0));
            let mut sup = Supervisor::new(log(), Box::new(|_| {}));
            sup.add(spec(&slot, starts.clone(), RestartType::Permanent, 2));
            let probe = slot.clone();
            actix::spawn(async move {
                loop {
                    let _ = probe.send(Fail).await;
                }
            });
            let outcome = sup.run(std::future::pending()).await;
            assert_eq!(outcome, Outcome::LimitPassed { actor: "worker" });
            assert_eq!(starts.load(Ordering::SeqCst), 3, "the first start and 2 restarts");
        });
    }

    #[test]
    fn a_transient_child_that_stops_normally_stays_stopped() {
        let sys = actix::System::new();
        sys.block_on(async {
            let slot = Slot::<Worker>::new("worker");
            let starts = Arc::new(AtomicU32::new(0));
            let mut sup = Supervisor::new(log(), Box::new(|_| {}));
            sup.add(spec(&slot, starts.clone(), RestartType::Transient, 5));
            let probe = slot.clone();
            actix::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                probe.current().unwrap().do_send(StopNow);
            });
            let outcome = tokio::time::timeout(Duration::from_millis(500), sup.run(std::future::pending())).await;
            assert!(outcome.is_err(), "still supervising");
            assert_eq!(starts.load(Ordering::SeqCst), 1, "not restarted");
        });
    }

    #[test]
    fn a_start_that_fails_is_reported_with_its_cause_and_retried() {
        let sys = actix::System::new();
        sys.block_on(async {
            let slot = Slot::<Worker>::new("worker");
            let starts = Arc::new(AtomicU32::new(0));
            let reasons = Arc::new(Mutex::new(Vec::new()));
            let heard = reasons.clone();
            let mut sup = Supervisor::new(log(), Box::new(move |r| heard.lock().unwrap().push((r.kind, r.reason.to_owned()))));
            let (first, counted) = (slot.clone(), starts.clone());
            sup.add(ChildSpec {
                start: Box::new(move |lifeline| {
                    if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(std::io::Error::other("no producer"))?;
                    }
                    first.set(Some(Worker { lifeline }.start()));
                    Ok(())
                }),
                ..spec(&slot, starts.clone(), RestartType::Permanent, 5)
            });
            let probe = slot.clone();
            let outcome = sup.run(async move { assert_eq!(probe.send(Ping).await.unwrap(), 7) }).await;
            assert_eq!(outcome, Outcome::Shutdown);
            assert_eq!(starts.load(Ordering::SeqCst), 2, "started again after the failed start, once");
            // One failed start is one restart, reported as the failure it was (not also as a panic).
            assert_eq!(*reasons.lock().unwrap(), [("failure", "start failed: no producer".to_owned())]);
        });
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct StopNow;
    impl Handler<StopNow> for Worker {
        type Result = ();
        fn handle(&mut self, _: StopNow, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }
}
