//! The HTTP endpoint (actix-web on `HTTP_ADDR`):
//! - `/healthz` alive; `/readyz` Kafka and (consumer role) Postgres reachable, else 503 + reason;
//! - `/metrics` Prometheus text; `/status` JSON; `/` the status page with a gallery of the latest
//!   stored images, each served from Postgres at `/images/{nasa_id}`;
//! - with `ADMIN_TOKEN` set: `POST /admin/actors/{name}/crash` and `POST /admin/events/panic`
//!   (fault injection for demos and tests).
//!
//! What `/status` and the page show is one typed [`Status`](status::Status), assembled in
//! [`status`]; the page's template is in [`page`].

pub mod page;
pub mod status;

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::observability::LogSearchUrl;
use crate::db::{self, PgPool};
use crate::deps::Dependencies;
use crate::fault_injection::InjectedPanics;
use crate::kafka::LogContext;
use crate::metrics::METRICS;
use page::{Gallery, GalleryError};
use status::StatusSources;

/// Makes the named actor panic; false when it is not running.
pub type CrashFn = Box<dyn Fn() -> bool + Send + Sync>;

pub struct AppState {
    pub log: Logger,
    pub crash: HashMap<&'static str, CrashFn>,
    pub admin_token: Option<String>,
    /// Armed by `POST /admin/events/panic`.
    pub injected_panics: InjectedPanics,
    pub pool: Option<PgPool>,
    pub kafka: BaseConsumer<LogContext>,
    /// What `/status`, `/readyz` and the page read.
    pub status: StatusSources,
    /// Where the page links trace ids to (`LOG_SEARCH_URL`).
    pub log_search: Option<LogSearchUrl>,
}

/// Binds and starts the server on the current actix system; returns the bound address.
/// The running endpoint: where it listens, and a handle to stop it.
pub struct Endpoint {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl Endpoint {
    /// Stops listening and lets requests in progress get their answer (a crash requested
    /// through the admin route that ends the process still answers 202), within 1 s.
    pub async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.handle.stop(true)).await;
    }
}

pub fn start(addr: SocketAddr, state: Arc<AppState>) -> std::io::Result<Endpoint> {
    let admin = state.admin_token.is_some();
    let log = state.log.clone();
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .route("/", web::get().to(page))
            // HEAD too: load balancers and `curl -I` probe with it (actix sends the head only).
            .route("/healthz", web::route().guard(get_or_head()).to(healthz))
            .route("/readyz", web::route().guard(get_or_head()).to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/status", web::get().to(status))
            .route("/images/{nasa_id}", web::get().to(image));
        // Without ADMIN_TOKEN the admin routes do not exist at all (404, not 401).
        if admin {
            app.route("/admin/actors/{name}/crash", web::post().to(crash)).route("/admin/events/panic", web::post().to(panic_events))
        } else {
            app
        }
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    let bound = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix::spawn(server);
    info!(log, "HTTP endpoint listening"; "labels.addr" => bound.to_string(), "labels.admin_routes" => admin);
    Ok(Endpoint { addr: bound, handle })
}

fn get_or_head() -> impl actix_web::guard::Guard {
    actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Why the instance is not ready, if it is not.
async fn not_ready(state: &web::Data<AppState>) -> Option<String> {
    if !state.status.is_started() {
        let waiting = state.status.dependencies.not_up().unwrap_or_else(|| "waiting for Kafka and Postgres".into());
        return Some(format!("starting: {waiting}"));
    }
    let probe = state.clone();
    let kafka = web::block(move || probe.kafka.fetch_metadata(Some(&probe.status.topic), Duration::from_secs(2)).map(drop)).await;
    match kafka {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(format!("Kafka unreachable: {e}")),
        Err(e) => return Some(format!("Kafka check failed: {e}")),
    }
    if let Some(pool) = state.pool.clone() {
        if let Ok(Err(e)) = web::block(move || db::ping(&pool)).await {
            return Some(e.to_string());
        }
    }
    state.status.consumer.as_ref().and_then(|c| c.report().stall).map(|stall| format!("consumer stalled: {stall}"))
}

/// The first line says ready or why not; then one line per dependency: its state, since
/// when, and its last error.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let deps = dependency_lines(&state.status.dependencies);
    match not_ready(&state).await {
        None => HttpResponse::Ok().content_type("text/plain").body(format!("ready\n{deps}")),
        Some(reason) => HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("not ready: {reason}\n{deps}")),
    }
}

fn dependency_lines(dependencies: &Dependencies) -> String {
    dependencies
        .snapshot()
        .iter()
        .map(|d| {
            let error = d.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
            format!("{}: {} since {}{error}\n", d.name, d.state, d.since)
        })
        .collect()
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(METRICS.render())
}

/// The number of stored images, unless Postgres does not answer within the pool's timeout.
async fn images_in_database(state: &AppState) -> Option<i64> {
    let pool = state.pool.clone()?;
    web::block(move || db::count_images(&pool)).await.ok()?.ok()
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    let images = images_in_database(&state).await;
    HttpResponse::Ok().json(state.status.read(images))
}

async fn image(state: web::Data<AppState>, req: HttpRequest, nasa_id: web::Path<String>) -> HttpResponse {
    let Some(pool) = state.pool.clone() else {
        return HttpResponse::NotFound().body("this instance does not run the consumer role\n");
    };
    let id = nasa_id.into_inner();
    match web::block(move || db::image_bytes(&pool, &id)).await {
        Ok(Ok(Some((content_type, sha256, bytes)))) => {
            let etag = format!("\"{sha256}\"");
            let cached = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
            // Stored images never change: a client may keep them for good.
            let mut resp = if cached { HttpResponse::NotModified() } else { HttpResponse::Ok() };
            resp.insert_header((header::ETAG, etag)).insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"));
            if cached {
                resp.finish()
            } else {
                resp.content_type(content_type).insert_header(("X-Content-Type-Options", "nosniff")).body(bytes)
            }
        }
        Ok(Ok(None)) => HttpResponse::NotFound().body("no such image\n"),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(format!("{e}\n")),
        Err(e) => HttpResponse::InternalServerError().body(format!("{e}\n")),
    }
}

async fn page(state: web::Data<AppState>) -> HttpResponse {
    let (gallery, images_in_database) = latest_images(&state).await;
    let html = page::render(&state.status.read(images_in_database), &gallery, state.log_search.as_ref());
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html.into_string())
}

/// The page's gallery, and the number of stored images (None when Postgres did not answer).
async fn latest_images(state: &AppState) -> (Gallery, Option<i64>) {
    let Some(pool) = state.pool.clone() else { return (Ok(vec![]), Some(0)) };
    match web::block(move || (db::latest_images(&pool, 24), db::count_images(&pool))).await {
        Ok((images, total)) => (images.map_err(GalleryError::from), total.ok()),
        Err(e) => (Err(e.into()), None),
    }
}

fn authorized(req: &HttpRequest, token: &str) -> bool {
    let given = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token is a secret.
    given.is_some_and(|g| g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

/// `POST /admin/events/panic?count=N`: the handling of the next N events panics once each
/// (fault injection: the consumer must catch it, retry the event and keep committing).
async fn panic_events(state: web::Data<AppState>, req: HttpRequest, query: web::Query<HashMap<String, String>>) -> HttpResponse {
    let token = state.admin_token.as_deref().expect("route exists only with a token");
    if !authorized(&req, token) {
        return HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Bearer")).body("bearer token required\n");
    }
    let Some(count) = query.get("count").map_or(Some(1), |c| c.parse::<u32>().ok()) else {
        return HttpResponse::BadRequest().body("count must be a whole number\n");
    };
    state.injected_panics.arm(count);
    warn!(state.log, "event panics requested through the admin endpoint"; "labels.count" => count);
    HttpResponse::Accepted().body(format!("the next {count} event(s) will panic once each\n"))
}

async fn crash(state: web::Data<AppState>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    let token = state.admin_token.as_deref().expect("route exists only with a token");
    if !authorized(&req, token) {
        return HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Bearer")).body("bearer token required\n");
    }
    match state.crash.get(name.as_str()) {
        None => HttpResponse::NotFound().body(format!("no actor {name:?}; actors: {:?}\n", state.crash.keys())),
        Some(crash) if crash() => {
            warn!(state.log, "crash requested through the admin endpoint"; "labels.actor" => name.into_inner());
            HttpResponse::Accepted().body("crash requested\n")
        }
        Some(_) => HttpResponse::Conflict().body("actor is not running right now\n"),
    }
}
