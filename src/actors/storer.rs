//! Storer: writes images to Postgres. Diesel blocks, so each call runs on tokio's blocking pool
//! and the actor's thread stays free; the r2d2 pool bounds the connections.

use actix::prelude::*;

use crate::db::{self, NewImage, PgPool, Stored};
use crate::errors::{EventError, Transient};
use crate::supervision::Lifeline;

pub struct Storer {
    pool: PgPool,
    lifeline: Lifeline,
}

crate::crashable!(Storer);

impl Storer {
    pub fn new(pool: PgPool, lifeline: Lifeline) -> Storer {
        Storer { pool, lifeline }
    }
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

/// Runs a blocking database call off the actor thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Transient> + Send + 'static) -> Result<T, Transient> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Transient::Database(format!("database task failed: {e}")))?
}

impl Handler<IsStored> for Storer {
    type Result = ResponseFuture<Result<bool, Transient>>;
    fn handle(&mut self, msg: IsStored, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        Box::pin(blocking(move || db::is_stored(&pool, &msg.0)))
    }
}

impl Handler<Store> for Storer {
    type Result = ResponseFuture<Result<Stored, EventError>>;
    fn handle(&mut self, msg: Store, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        Box::pin(async move { blocking(move || Ok(db::insert(&pool, &msg.0))).await? })
    }
}
