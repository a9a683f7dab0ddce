//! Postgres through diesel and an r2d2 pool: the `images` table, its migrations, and the two
//! queries the Storer needs. All calls block: run them off the actor thread (`spawn_blocking`).

pub mod schema;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

use crate::config::DatabaseUrl;
use crate::deps::{Dependencies, Dependency, DependencyError};
use crate::dlq::reason::Permanent;
use crate::errors::{EventError, Transient};
use schema::images;
use slog::Logger;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type PgPool = Pool<ConnectionManager<PgConnection>>;
type PgConn = PooledConnection<ConnectionManager<PgConnection>>;

/// A pool that connects lazily, so that the daemon starts (and waits) while Postgres is down.
pub fn pool(database_url: &str, max_size: u32) -> PgPool {
    builder(max_size).build_unchecked(ConnectionManager::new(with_connect_timeout(database_url)))
}

/// The daemon's pool: its failed connection attempts go to `dependencies`, which logs a
/// change of cause once (r2d2's default handler logs every attempt: two lines a second while a
/// role is missing).
pub fn reporting_pool(database_url: &DatabaseUrl, max_size: u32, dependencies: Dependencies, log: Logger) -> PgPool {
    builder(max_size)
        .error_handler(Box::new(ReportToDependencies { address: database_url.address(), dependencies, log }))
        .build_unchecked(ConnectionManager::new(with_connect_timeout(database_url.expose())))
}

fn builder(max_size: u32) -> r2d2::Builder<ConnectionManager<PgConnection>> {
    Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .connection_customizer(Box::new(PlanEachQuery))
}

/// Every statement is planned for its own parameters. Diesel prepares and caches the Storer's
/// `nasa_id = ANY($1)`; after five runs Postgres may keep a generic plan made while the table was
/// small, a sequential scan, and keeps it until the next ANALYZE (a minute or more away). On a
/// table filling with a backlog each check then read the whole table: the bench spent 45% of
/// its CPU there. Planning a lookup anew costs microseconds.
#[derive(Debug)]
struct PlanEachQuery;

impl r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for PlanEachQuery {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        // Postgres before 12 has no such setting; its plans are then as before.
        let _ = diesel::sql_query("SET plan_cache_mode = force_custom_plan").execute(conn);
        Ok(())
    }
}

#[derive(Debug)]
struct ReportToDependencies {
    address: String,
    dependencies: Dependencies,
    log: Logger,
}

impl r2d2::HandleError<diesel::r2d2::Error> for ReportToDependencies {
    fn handle_error(&self, e: diesel::r2d2::Error) {
        self.dependencies.report(&self.log, Dependency::Postgres, Err(&classify_connection(&e.to_string(), &self.address)));
    }
}

/// The URL with libpq's `connect_timeout` (5 s) unless it sets one: without it a connection to a
/// host that drops packets waits for the kernel's TCP timeout, minutes.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}connect_timeout=5")
}

/// Logs in once, outside the pool: the answer comes at once and says why it failed.
pub fn check_login(database_url: &DatabaseUrl) -> Result<PgConnection, DependencyError> {
    PgConnection::establish(&with_connect_timeout(database_url.expose()))
        .map_err(|e| classify_connection(&e.to_string(), &database_url.address()))
}

/// Types a failed login by whether retrying can fix it. Postgres's refusals (FATAL) name the
/// problem; the fix names the part of DATABASE_URL to check.
pub fn classify_connection(message: &str, address: &str) -> DependencyError {
    let lower = message.to_ascii_lowercase();
    let fatal = message.split_once("FATAL:").map(|(_, rest)| rest.trim()).unwrap_or(message.trim());
    let problem = fatal.lines().next().unwrap_or("").trim().to_owned();
    let misconfigured = |fix: &'static str| DependencyError::Misconfigured {
        dependency: Dependency::Postgres,
        variable: "DATABASE_URL",
        problem: problem.clone(),
        fix,
    };
    if lower.contains("password authentication failed") || lower.contains("no password supplied") {
        return misconfigured("the user and password in it");
    }
    if lower.contains("role") && lower.contains("does not exist") {
        return misconfigured("the user name in it (the role must exist in Postgres)");
    }
    if lower.contains("database") && lower.contains("does not exist") {
        return misconfigured("the database name in it (create the database, or fix the name)");
    }
    if lower.contains("no pg_hba.conf entry") {
        return misconfigured("the user and host in it (pg_hba.conf must allow them)");
    }
    let cause = if lower.contains("connection refused") {
        Some("connection refused")
    } else if lower.contains("timeout expired") || lower.contains("timed out") {
        Some("connection timed out")
    } else if lower.contains("could not translate host name") {
        Some("host name not resolved")
    } else if lower.contains("server closed the connection") || lower.contains("connection reset") {
        Some("connection closed by the server")
    } else if lower.contains("the database system is starting up") || lower.contains("shutting down") {
        Some("Postgres is starting or stopping")
    } else {
        None
    };
    match cause {
        Some(cause) => DependencyError::Unreachable { dependency: Dependency::Postgres, address: address.to_owned(), cause: cause.into() },
        None => DependencyError::Failed { dependency: Dependency::Postgres, message: problem },
    }
}

fn conn(pool: &PgPool) -> Result<PgConn, Transient> {
    pool.get().map_err(Transient::database)
}

/// Applies pending migrations; returns the names of those applied.
pub fn migrate(pool: &PgPool) -> Result<Vec<String>, Transient> {
    let mut c = conn(pool)?;
    let applied = c.run_pending_migrations(MIGRATIONS).map_err(|e| Transient::Database(e.into()))?;
    Ok(applied.iter().map(|m| m.to_string()).collect())
}

/// The migration state could not be read: the user cannot see the migrations' table, say.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the migration state: {0}; check that the DATABASE_URL user may read and create tables")]
pub struct MigrationStateUnreadable(#[source] Box<dyn std::error::Error + Send + Sync>);

/// The names of the migrations not applied yet.
pub fn pending_migrations(conn: &mut PgConnection) -> Result<Vec<String>, MigrationStateUnreadable> {
    let pending = conn.pending_migrations(MIGRATIONS).map_err(MigrationStateUnreadable)?;
    Ok(pending.iter().map(|m| m.name().to_string()).collect())
}

/// Whether the pool can reach Postgres now.
pub fn ping(pool: &PgPool) -> Result<(), Transient> {
    diesel::sql_query("SELECT 1").execute(&mut conn(pool)?).map(drop).map_err(Transient::database)
}

#[derive(Insertable, Debug, Clone)]
#[diesel(table_name = images, treat_none_as_default_value = false)]
pub struct NewImage {
    pub nasa_id: String,
    pub title: Option<String>,
    pub query: Option<String>,
    pub image_url: String,
    pub content_type: String,
    pub byte_size: i64,
    pub sha256: String,
    pub image_bytes: Vec<u8>,
    pub event_id: Option<Uuid>,
    pub kafka_partition: Option<i32>,
    pub kafka_offset: Option<i64>,
    /// The trace of the event it was stored from (see `trace`).
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Inserted,
    /// The nasa_id was stored already; nothing was written.
    Duplicate,
}

/// Which of `ids` are stored already: one `nasa_id = ANY($1)` query.
pub fn stored_among(pool: &PgPool, ids: &[String]) -> Result<HashSet<String>, Transient> {
    images::table
        .filter(images::nasa_id.eq_any(ids))
        .select(images::nasa_id)
        .load::<String>(&mut conn(pool)?)
        .map(|v| v.into_iter().collect())
        .map_err(Transient::database)
}

/// Inserts the rows, skipping nasa_ids that are there; returns those inserted.
///
/// The rows go in by binary COPY, Postgres's cheapest way in: for 20 KB images it wrote
/// 7,600–9,400 rows/s here against 5,500–7,400 for a multi-row `INSERT … ON CONFLICT`, and
/// Postgres's CPU is what a small-image backlog waits for. COPY knows no `ON CONFLICT`, so a batch
/// holding a nasa_id that is stored already fails whole (nothing of it is written) and goes in
/// again by [`insert_on_conflict`]. That is rare: the check before each download leaves out what
/// was stored, so only a race (the same nasa_id twice in flight, or another writer) pays twice.
pub fn insert_batch(pool: &PgPool, rows: &[NewImage]) -> Result<HashSet<String>, EventError> {
    use diesel::result::{DatabaseErrorKind, Error};
    let mut conn = conn(pool)?;
    match diesel::copy_from(images::table).from_insertable(rows).execute(&mut conn) {
        Ok(_) => Ok(rows.iter().map(|r| r.nasa_id.clone()).collect()),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => insert_on_conflict(&mut conn, rows),
        Err(e) => Err(classify(e)),
    }
}

/// One multi-row `INSERT … ON CONFLICT (nasa_id) DO NOTHING RETURNING nasa_id`: the nasa_ids inserted.
fn insert_on_conflict(conn: &mut PgConnection, rows: &[NewImage]) -> Result<HashSet<String>, EventError> {
    diesel::insert_into(images::table)
        .values(rows)
        .on_conflict(images::nasa_id)
        .do_nothing()
        .returning(images::nasa_id)
        .get_results::<String>(conn)
        .map(|v| v.into_iter().collect())
        .map_err(classify)
}

/// Inserts unless the nasa_id is there: `ON CONFLICT (nasa_id) DO NOTHING`.
pub fn insert(pool: &PgPool, row: &NewImage) -> Result<Stored, EventError> {
    let inserted = insert_on_conflict(&mut *conn(pool)?, std::slice::from_ref(row))?;
    Ok(if inserted.is_empty() { Stored::Duplicate } else { Stored::Inserted })
}

/// Whether retrying a failed write can help. Lost connections, serialization failures and a
/// read-only server pass; a constraint the row breaks does not. Postgres's other refusals reach
/// diesel without a class (the SQLSTATE is not exposed): they are retried a few times by the
/// caller, then dead-lettered.
pub fn classify(e: diesel::result::Error) -> EventError {
    use diesel::result::{DatabaseErrorKind as K, Error};
    match &e {
        Error::DatabaseError(K::ClosedConnection | K::SerializationFailure | K::ReadOnlyTransaction, _) => Transient::database(e).into(),
        Error::DatabaseError(
            kind @ (K::NotNullViolation | K::CheckViolation | K::ForeignKeyViolation | K::RestrictViolation | K::ExclusionViolation),
            info,
        ) => Permanent::DbRejected(format!("{kind:?}: {}", info.message())).into(),
        // Shown as Postgres's message alone, as diesel shows a database error.
        Error::DatabaseError(..) => Transient::DatabaseRefused(e.into()).into(),
        _ => Transient::database(e).into(),
    }
}

/// Postgres rejects NUL in text: strip it from text that came from outside.
pub fn clean_text(s: &str) -> String {
    s.replace('\0', "")
}

/// What the status page shows of a stored image.
#[derive(QueryableByName, Debug, Clone)]
pub struct ImageSummary {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub nasa_id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub title: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub query: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub content_type: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub byte_size: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// None for an image stored before traces were kept.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub trace_id: Option<String>,
}

/// Content types a browser shows in an <img>.
pub const BROWSER_IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The latest stored images a browser can show, newest first.
pub fn latest_images(pool: &PgPool, limit: i64) -> Result<Vec<ImageSummary>, Transient> {
    diesel::sql_query(
        "SELECT nasa_id, title, query, content_type, byte_size, created_at, trace_id FROM images \
         WHERE content_type = ANY($1) ORDER BY id DESC LIMIT $2",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(BROWSER_IMAGE_TYPES.to_vec())
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(&mut conn(pool)?)
    .map_err(Transient::database)
}

pub fn count_images(pool: &PgPool) -> Result<i64, Transient> {
    images::table.count().get_result(&mut conn(pool)?).map_err(Transient::database)
}

/// (content_type, sha256, bytes) of a stored image.
pub fn image_bytes(pool: &PgPool, nasa_id: &str) -> Result<Option<(String, String, Vec<u8>)>, Transient> {
    images::table
        .filter(images::nasa_id.eq(nasa_id))
        .select((images::content_type, images::sha256, images::image_bytes))
        .first(&mut conn(pool)?)
        .optional()
        .map_err(Transient::database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_postgres_refuses_are_misconfigurations_naming_database_url() {
        let at = "127.0.0.1:5432";
        for (message, fix) in [
            ("connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  role \"wrong\" does not exist", "user name"),
            ("connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  database \"nope\" does not exist", "database name"),
            ("connection to server at \"db\", port 5432 failed: FATAL:  password authentication failed for user \"app\"", "password"),
        ] {
            let e = classify_connection(message, at);
            assert!(e.is_misconfiguration(), "{e}");
            let text = e.to_string();
            assert!(text.contains("check DATABASE_URL") && text.contains(fix), "{text}");
            assert!(!text.contains("FATAL"), "{text}");
        }
        let refused = "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?";
        assert_eq!(
            classify_connection(refused, "127.0.0.1:1").to_string(),
            "Postgres unreachable at 127.0.0.1:1: connection refused; retrying until it is back"
        );
    }

    #[test]
    fn a_failed_write_keeps_diesels_error_as_its_source_and_postgres_message_as_its_text() {
        use diesel::result::{DatabaseErrorKind as K, Error};
        let failed = |kind, message: &str| classify(Error::DatabaseError(kind, Box::new(message.to_owned())));
        let lost = failed(K::ClosedConnection, "server closed the connection");
        assert_eq!(lost.to_string(), "Postgres unavailable: server closed the connection; retrying until it is back");
        let EventError::Transient(Transient::Database(cause)) = lost else { panic!("{lost:?}") };
        assert!(matches!(cause.downcast_ref(), Some(Error::DatabaseError(K::ClosedConnection, _))), "{cause:?}");
        let refused = failed(K::Unknown, "index row size exceeds maximum");
        assert_eq!(
            refused.to_string(),
            "Postgres refused the row: index row size exceeds maximum; retrying a few times before it is dead-lettered"
        );
        assert!(
            matches!(refused, EventError::Transient(Transient::DatabaseRefused(ref e)) if matches!(**e, Error::DatabaseError(K::Unknown, _)))
        );
        assert_eq!(failed(K::NotNullViolation, "null in title").kind(), "db_rejected");
    }

    #[test]
    fn a_connect_timeout_is_added_unless_the_url_has_one() {
        assert_eq!(with_connect_timeout("postgres://u@h/db"), "postgres://u@h/db?connect_timeout=5");
        assert_eq!(with_connect_timeout("postgres://u@h/db?sslmode=disable"), "postgres://u@h/db?sslmode=disable&connect_timeout=5");
        assert_eq!(with_connect_timeout("postgres://u@h/db?connect_timeout=1"), "postgres://u@h/db?connect_timeout=1");
    }
}
