//! Storer: writes images to Postgres in batches. Rows arrive one message each; the Storer collects
//! them and writes a batch in one statement (`INSERT … ON CONFLICT (nasa_id) DO NOTHING RETURNING
//! nasa_id`) when it is full (rows or bytes) or after a short linger, then answers each sender
//! with inserted or duplicate. The "already stored?" check before a download is batched the same
//! way (one `nasa_id = ANY($1)` query). Diesel blocks, so each write runs on tokio's blocking pool
//! and the actor's thread stays free; the r2d2 pool bounds the connections.

use actix::prelude::*;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::db::{self, NewImage, PgPool, Stored};
use crate::errors::{EventError, Transient};
use crate::metrics::METRICS;
use crate::supervision::Lifeline;

/// When a batch is written: at `max_rows` rows, at `max_bytes` of image bytes, or `linger` after
/// its first row, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

impl Default for BatchLimits {
    /// A few milliseconds of linger cost little next to a download, and let the rows of concurrent
    /// events share one round trip; 16 MiB keeps a batch of large images to a sane statement.
    fn default() -> Self {
        BatchLimits { max_rows: 64, max_bytes: 16 << 20, linger: Duration::from_millis(5) }
    }
}

/// Items waiting for one statement, each with the sender to answer.
struct Batch<T, R> {
    items: Vec<(T, oneshot::Sender<R>)>,
    bytes: usize,
    /// A flush is scheduled for the linger's end.
    scheduled: bool,
}

impl<T, R> Default for Batch<T, R> {
    fn default() -> Self {
        Batch { items: Vec::new(), bytes: 0, scheduled: false }
    }
}

impl<T, R> Batch<T, R> {
    fn take(&mut self) -> Vec<(T, oneshot::Sender<R>)> {
        self.bytes = 0;
        self.scheduled = false;
        std::mem::take(&mut self.items)
    }
}

pub struct Storer {
    pool: PgPool,
    limits: BatchLimits,
    rows: Batch<NewImage, Result<Stored, EventError>>,
    checks: Batch<String, Result<bool, Transient>>,
    lifeline: Lifeline,
}

crate::crashable!(Storer);

impl Storer {
    pub fn new(pool: PgPool, limits: BatchLimits, lifeline: Lifeline) -> Storer {
        Storer { pool, limits, rows: Batch::default(), checks: Batch::default(), lifeline }
    }

    /// Writes the pending rows now if the batch is full, else makes sure the linger will.
    fn rows_added(&mut self, ctx: &mut Context<Self>) {
        let full = self.rows.items.len() >= self.limits.max_rows || self.rows.bytes >= self.limits.max_bytes;
        if full {
            self.write_rows();
        } else if !self.rows.scheduled {
            self.rows.scheduled = true;
            ctx.run_later(self.limits.linger, |act, _| act.write_rows());
        }
    }

    fn checks_added(&mut self, ctx: &mut Context<Self>) {
        if self.checks.items.len() >= self.limits.max_rows {
            self.run_checks();
        } else if !self.checks.scheduled {
            self.checks.scheduled = true;
            ctx.run_later(self.limits.linger, |act, _| act.run_checks());
        }
    }

    fn write_rows(&mut self) {
        let pool = self.pool.clone();
        flush(self.rows.take(), move |rows| {
            METRICS.store_batch_rows.observe(rows.len() as f64);
            write_batch(&pool, rows)
        });
    }

    fn run_checks(&mut self) {
        let pool = self.pool.clone();
        flush(self.checks.take(), move |ids| {
            let stored = db::stored_among(&pool, &ids)?;
            Ok(ids.iter().map(|id| Ok(stored.contains(id))).collect())
        });
    }
}

/// Writes a taken batch on the blocking pool and answers each sender; when the whole batch failed
/// (the connection), every sender gets that failure. Spawned apart from the actor: a batch in
/// flight still gets its answers if the actor restarts meanwhile.
fn flush<T, V, E>(
    batch: Vec<(T, oneshot::Sender<Result<V, E>>)>,
    write: impl FnOnce(Vec<T>) -> Result<Vec<Result<V, E>>, Transient> + Send + 'static,
) where
    T: Send + 'static,
    V: Send + 'static,
    E: From<Transient> + Send + 'static,
{
    if batch.is_empty() {
        return;
    }
    actix::spawn(async move {
        let (items, senders): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
        let answers = blocking(move || write(items)).await;
        answer_each(senders, answers);
    });
}

/// Runs a blocking database call off the actor thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Transient> + Send + 'static) -> Result<T, Transient> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Transient::Database(format!("database task failed: {e}")))?
}

/// Answers each sender with its own result, or every sender with the batch's failure.
fn answer_each<V, E: From<Transient>>(senders: Vec<oneshot::Sender<Result<V, E>>>, answers: Result<Vec<Result<V, E>>, Transient>) {
    match answers {
        Ok(answers) => {
            for (tx, answer) in senders.into_iter().zip(answers) {
                let _ = tx.send(answer);
            }
        }
        Err(e) => {
            for tx in senders {
                let _ = tx.send(Err(E::from(e.clone())));
            }
        }
    }
}

/// One statement for the batch; each row's answer in order. A nasa_id twice in one batch is
/// inserted once: its first row is `Inserted`, the rest `Duplicate`. If Postgres refuses the
/// statement for a reason other than the connection, the rows are written one by one, so that
/// only the row it refuses is answered with the refusal.
fn write_batch(pool: &PgPool, rows: Vec<NewImage>) -> Result<Vec<Result<Stored, EventError>>, Transient> {
    match db::insert_batch(pool, &rows) {
        Ok(mut inserted) => {
            Ok(rows.iter().map(|r| Ok(if inserted.remove(&r.nasa_id) { Stored::Inserted } else { Stored::Duplicate })).collect())
        }
        Err(EventError::Transient(t @ Transient::Database(_))) => Err(t),
        Err(e) if rows.len() == 1 => Ok(vec![Err(e)]),
        Err(_) => Ok(rows.iter().map(|r| db::insert(pool, r)).collect()),
    }
}

/// What an answer that never came means: the batch was lost with the actor (a restart); the
/// sender retries, and the row's nasa_id makes a second write harmless.
fn lost<R>(answer: Result<R, oneshot::error::RecvError>, lost: impl FnOnce() -> R) -> R {
    answer.unwrap_or_else(|_| lost())
}

impl Actor for Storer {
    type Context = Context<Self>;
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.lifeline.stopped();
    }
}

/// Is this nasa_id stored already? (Saves a download of an image we have.)
#[derive(Message)]
#[rtype(result = "Result<bool, Transient>")]
pub struct IsStored(pub String);

/// Insert the row unless its nasa_id is stored already.
#[derive(Message)]
#[rtype(result = "Result<Stored, EventError>")]
pub struct Store(pub NewImage);

impl Handler<IsStored> for Storer {
    type Result = ResponseFuture<Result<bool, Transient>>;
    fn handle(&mut self, IsStored(id): IsStored, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.checks.items.push((id, tx));
        self.checks_added(ctx);
        Box::pin(async move { lost(rx.await, || Err(Transient::ActorDown("storer"))) })
    }
}

impl Handler<Store> for Storer {
    type Result = ResponseFuture<Result<Stored, EventError>>;
    fn handle(&mut self, Store(row): Store, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.rows.bytes += row.image_bytes.len();
        self.rows.items.push((row, tx));
        self.rows_added(ctx);
        Box::pin(async move { lost(rx.await, || Err(Transient::ActorDown("storer").into())) })
    }
}
