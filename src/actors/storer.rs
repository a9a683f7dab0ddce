//! Storer: writes images to Postgres in batches. Rows arrive one message each, and are written in
//! one statement per batch (a binary `COPY`, or `INSERT … ON CONFLICT (nasa_id) DO NOTHING
//! RETURNING nasa_id` when the batch holds a nasa_id stored already: see [`db::insert_batch`]); each
//! sender is answered with inserted or duplicate. The "already stored?" checks before downloads
//! are batched the same way (one `nasa_id = ANY($1)` query).
//!
//! Batches form by themselves, with no timer: a row is written at once when no statement runs, or
//! when those running are small (the pipeline is not busy). Behind a large statement it waits,
//! with the rows that come meanwhile, for that statement to end, unless they make a full batch
//! (`max_rows` rows or `max_bytes`), which starts a statement of its own while fewer than
//! `max_in_flight` run. An idle pipeline pays no latency for batching; a busy one writes up to
//! `max_rows` rows (or `max_bytes`) per round trip. Diesel blocks, so each statement runs on
//! tokio's blocking pool and the actor's thread stays free; the r2d2 pool bounds the connections.

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::db::{self, NewImage, PgPool, Stored};
use crate::errors::{EventError, Transient};
use crate::metrics::METRICS;
use crate::supervision::Lifeline;

/// How rows are grouped into statements.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Rows (or existence checks) in one statement, at most.
    pub max_rows: usize,
    /// Image bytes in one statement, at most (a single larger row still goes alone).
    pub max_bytes: usize,
    /// Statements of one kind running at once; beyond the first, only for a full batch or beside a small one.
    pub max_in_flight: usize,
}

impl Default for BatchLimits {
    /// 8 MiB keeps a batch of large images to a sane statement and the process's peak memory low
    /// (2 MB images: 121 MiB peak RSS against 154 MiB with 16 MiB, at the same rate). A second
    /// statement overlaps the first's commit when batches fill (2 MB: 159 MB/s against 136 with
    /// one); two leave the pool's other connections to the existence checks and the status page.
    fn default() -> Self {
        BatchLimits { max_rows: 64, max_bytes: 8 << 20, max_in_flight: 2 }
    }
}

impl BatchLimits {
    /// Image bytes the Storer takes in at once, at most: its statements running and one batch waiting.
    pub fn bytes_taken_in(&self) -> u64 {
        ((self.max_in_flight + 1) * self.max_bytes) as u64
    }
}

/// Items waiting for a statement, each with the sender to answer, and the statements running.
struct Batch<T, R> {
    items: Vec<(T, oneshot::Sender<R>)>,
    in_flight: usize,
    /// Items in the statements running.
    running: usize,
}

impl<T, R> Default for Batch<T, R> {
    fn default() -> Self {
        Batch { items: Vec::new(), in_flight: 0, running: 0 }
    }
}

impl<T, R> Batch<T, R> {
    /// The next statement's items, if a statement may start now: the oldest ones, within the limits.
    /// With none running, whatever waits goes at once; so does a further statement while those
    /// running are small (fewer than an eighth of `max_rows` items: the pipeline is not busy, and a
    /// lone row should not wait for another's commit). When they are large, a further statement
    /// starts only for a full batch (rows or bytes): each statement costs Postgres a commit and a
    /// round trip, so rows that would make a small one wait and go with those that come meanwhile.
    fn next(&mut self, limits: &BatchLimits, bytes: impl Fn(&T) -> usize) -> Option<Vec<(T, oneshot::Sender<R>)>> {
        if self.items.is_empty() || self.in_flight >= limits.max_in_flight {
            return None;
        }
        let (mut n, mut size) = (0, 0);
        while n < self.items.len() && n < limits.max_rows && (n == 0 || size + bytes(&self.items[n].0) <= limits.max_bytes) {
            size += bytes(&self.items[n].0);
            n += 1;
        }
        let full = n == limits.max_rows || n < self.items.len();
        let busy = self.running >= limits.max_rows.div_ceil(8);
        if busy && !full {
            return None;
        }
        self.in_flight += 1;
        self.running += n;
        Some(self.items.drain(..n).collect())
    }

    /// A statement of `items` items ended.
    fn ended(&mut self, items: usize) {
        self.in_flight -= 1;
        self.running -= items;
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

    /// Starts statements for the waiting rows while the limit allows; each one, when it ends,
    /// starts the next.
    fn write_rows(&mut self, ctx: &mut Context<Self>) {
        while let Some(batch) = self.rows.next(&self.limits, |r| r.image_bytes.len()) {
            let (pool, items) = (self.pool.clone(), batch.len());
            let write = move |rows: Vec<NewImage>| {
                METRICS.store_batch_rows.observe(rows.len() as f64);
                write_batch(&pool, rows)
            };
            ctx.spawn(run(batch, write).into_actor(self).map(move |(), act, ctx| {
                act.rows.ended(items);
                act.write_rows(ctx);
            }));
        }
    }

    fn run_checks(&mut self, ctx: &mut Context<Self>) {
        while let Some(batch) = self.checks.next(&self.limits, |_| 0) {
            let (pool, items) = (self.pool.clone(), batch.len());
            let check = move |ids: Vec<String>| {
                let stored = db::stored_among(&pool, &ids)?;
                Ok(ids.iter().map(|id| Ok(stored.contains(id))).collect())
            };
            ctx.spawn(run(batch, check).into_actor(self).map(move |(), act, ctx| {
                act.checks.ended(items);
                act.run_checks(ctx);
            }));
        }
    }
}

/// Runs one statement for `batch` on the blocking pool and answers each sender; when the whole
/// statement failed (the connection), every sender gets that failure. A statement lost with a
/// restarting actor drops its senders: they hear `ActorDown` and retry.
async fn run<T, V, E>(
    batch: Vec<(T, oneshot::Sender<Result<V, E>>)>,
    write: impl FnOnce(Vec<T>) -> Result<Vec<Result<V, E>>, Transient> + Send + 'static,
) where
    T: Send + 'static,
    V: Send + 'static,
    E: From<Transient> + Send + 'static,
{
    let (items, senders): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
    let answers = blocking(move || write(items)).await;
    answer_each(senders, answers);
}

/// Runs a blocking database call off the actor thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Transient> + Send + 'static) -> Result<T, Transient> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Transient::database(TaskFailed(e)))?
}

/// The blocking task of a statement ended without its answer: it panicked, or the runtime is
/// stopping. Retried like a lost connection.
#[derive(Debug, thiserror::Error)]
#[error("database task failed: {0}")]
struct TaskFailed(#[source] tokio::task::JoinError);

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
        self.run_checks(ctx);
        Box::pin(async move { lost(rx.await, || Err(Transient::ActorDown("storer"))) })
    }
}

impl Handler<Store> for Storer {
    type Result = ResponseFuture<Result<Stored, EventError>>;
    fn handle(&mut self, Store(row): Store, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.rows.items.push((row, tx));
        self.write_rows(ctx);
        Box::pin(async move { lost(rx.await, || Err(Transient::ActorDown("storer").into())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(batch: &mut Batch<usize, ()>, sizes: &[usize]) {
        batch.items.extend(sizes.iter().map(|&size| (size, oneshot::channel().0)));
    }

    fn sizes(taken: Option<Vec<(usize, oneshot::Sender<()>)>>) -> Option<Vec<usize>> {
        taken.map(|items| items.into_iter().map(|(size, _)| size).collect())
    }

    #[test]
    fn a_row_goes_at_once_unless_a_large_statement_runs_and_then_waits_for_a_full_batch() {
        // Full at 16 rows or 100 bytes; running statements of 2 rows or more are large.
        let limits = BatchLimits { max_rows: 16, max_bytes: 100, max_in_flight: 2 };
        let mut batch = Batch::default();
        waiting(&mut batch, &[1]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![1]), "none runs: the row goes at once");
        waiting(&mut batch, &[1]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![1]), "a one-row statement runs (not busy): a second goes at once");
        waiting(&mut batch, &[1]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), None, "two run: the row waits");
        batch.ended(1);
        batch.ended(1);

        waiting(&mut batch, &[1, 1]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![1, 1, 1]), "none runs: the row that waited goes with the new ones");
        waiting(&mut batch, &[1, 1, 1]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), None, "a three-row statement runs (busy): rows wait for it");
        waiting(&mut batch, &[1; 13]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![1; 16]), "16 rows are a full batch: a second statement");
        batch.ended(3);
        batch.ended(16);

        waiting(&mut batch, &[40, 40, 40]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![40, 40]), "none runs; the bytes cap the statement");
        assert_eq!(sizes(batch.next(&limits, |&b| b)), None, "busy, and the 40 bytes left are no full batch");
        waiting(&mut batch, &[70]);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![40]), "full by bytes (40 + 70 > 100): a second statement");
        assert_eq!(sizes(batch.next(&limits, |&b| b)), None, "two run");
        batch.ended(2);
        assert_eq!(sizes(batch.next(&limits, |&b| b)), Some(vec![70]), "what runs is one row (not busy): the row goes");
        assert!(batch.items.is_empty());
    }
}
