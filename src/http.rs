//! The HTTP endpoint (actix-web on `HTTP_ADDR`):
//! - `/healthz` alive; `/readyz` Kafka and (consumer role) Postgres reachable, else 503 + reason;
//! - `/metrics` Prometheus text; `/status` JSON; `/` the status page with a gallery of the latest
//!   stored images, each served from Postgres at `/images/{nasa_id}`;
//! - with `ADMIN_TOKEN` set: `POST /admin/actors/{name}/crash` (fault injection for demos).

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::fetcher::FETCHES;
use crate::actors::subscriber::{inject_panics, ConsumerStatus};
use crate::db::{self, PgPool};
use crate::deps::DEPENDENCIES;
use crate::dlq::DlqWatch;
use crate::kafka::LogContext;
use crate::metrics::METRICS;
use crate::outbox::Outbox;
use crate::supervision::RestartCounts;

/// Makes the named actor panic; false when it is not running.
pub type CrashFn = Box<dyn Fn() -> bool + Send + Sync>;
/// Whether the named actor is running now.
pub type RunningFn = Box<dyn Fn() -> bool + Send + Sync>;

pub struct AppState {
    pub log: Logger,
    pub roles: &'static str,
    /// The actors of the enabled roles, in start order.
    pub actors: Vec<(&'static str, RunningFn)>,
    pub crash: HashMap<&'static str, CrashFn>,
    pub admin_token: Option<String>,
    pub restarts: RestartCounts,
    pub pool: Option<PgPool>,
    pub outbox: Option<Outbox>,
    pub kafka: BaseConsumer<LogContext>,
    pub topic: String,
    /// The daemon's consumer group (the replay's group is named after it).
    pub group_id: String,
    /// What is on the dead-letter topic, read from the topic.
    pub dead_letters: DlqWatch,
    /// The consumer's membership and stall state (consumer role only).
    pub consumer: Option<ConsumerStatus>,
    /// Set once every actor was started.
    pub started: AtomicBool,
    pub since: Instant,
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
    if !state.started.load(Ordering::SeqCst) {
        let waiting = DEPENDENCIES.not_up().unwrap_or_else(|| "waiting for Kafka and Postgres".into());
        return Some(format!("starting: {waiting}"));
    }
    let probe = state.clone();
    let kafka = web::block(move || probe.kafka.fetch_metadata(Some(&probe.topic), Duration::from_secs(2)).map(drop)).await;
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
    state.consumer.as_ref().and_then(|c| c.report().stall).map(|stall| format!("consumer stalled: {stall}"))
}

/// The first line says ready or why not; then one line per dependency: its state, since
/// when, and its last error.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let deps = dependency_lines();
    match not_ready(&state).await {
        None => HttpResponse::Ok().content_type("text/plain").body(format!("ready\n{deps}")),
        Some(reason) => HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("not ready: {reason}\n{deps}")),
    }
}

fn dependency_lines() -> String {
    DEPENDENCIES
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

/// Everything `/status` and the page show. `images_in_database` is None without the consumer
/// role, or when Postgres did not answer.
fn status_json(state: &AppState, images_in_database: Option<i64>) -> serde_json::Value {
    let started = state.started.load(Ordering::SeqCst);
    let actors: Vec<_> = state
        .actors
        .iter()
        .map(|(name, running)| {
            let restarts = state.restarts.get(name);
            let state = match (running(), started) {
                (true, _) => "running",
                (false, false) => "starting",
                (false, true) => "down",
            };
            json!({"name": name, "state": state, "restarts": restarts.count, "last_error": restarts.last_error,
                "restart_times": restarts.times})
        })
        .collect();
    let pending_id = state.outbox.as_ref().and_then(|o| o.peek().ok().flatten()).map(|e| e.event_id.to_string());
    let lag: serde_json::Map<String, serde_json::Value> = METRICS.lag().into_iter().map(|(p, l)| (p.to_string(), l.into())).collect();
    json!({
        "service": "nasa-ingest",
        "version": env!("CARGO_PKG_VERSION"),
        "roles": state.roles,
        "started": started,
        "uptime_seconds": state.since.elapsed().as_secs(),
        "dependencies": DEPENDENCIES.snapshot(),
        "actors": actors,
        "pending_events": usize::from(pending_id.is_some()),
        "pending_event_id": pending_id,
        "consumer_lag": lag,
        "consumer": state.consumer.as_ref().map(|c| c.report()),
        "dead_letters": dead_letters_json(state),
        // Since this process started; the database's count is `in_database`.
        "counts": {
            "fetched": METRICS.fetched.get(), "published": METRICS.published.get(), "consumed": METRICS.consumed.get(),
            "stored": METRICS.stored.get(), "duplicates": METRICS.duplicates.get(),
            "dead_lettered": METRICS.dead_lettered_total(),
        },
        "rates_per_minute": METRICS.rates_per_minute(),
        "in_database": {"images": images_in_database},
        "fetches": state.roles.contains("producer").then(|| FETCHES.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        "recent_problems": crate::logging::recent_problems(),
    })
}

/// The number of stored images, unless Postgres does not answer within the pool's timeout.
async fn images_in_database(state: &AppState) -> Option<i64> {
    let pool = state.pool.clone()?;
    web::block(move || db::count_images(&pool)).await.ok()?.ok()
}

/// The dead-letter panel: what is on the topic, and the command that replays each reason.
fn dead_letters_json(state: &AppState) -> serde_json::Value {
    let panel = state.dead_letters.panel();
    let replay: serde_json::Map<String, serde_json::Value> =
        panel.by_reason.keys().map(|reason| (reason.clone(), replay_command(state, reason).into())).collect();
    let mut v = serde_json::to_value(&panel).expect("the panel serializes");
    v["replay_commands"] = replay.into();
    v
}

/// `nasa-ingest dlq replay --reason R`, with the daemon's topic and group where they are not the defaults.
fn replay_command(state: &AppState, reason: &str) -> String {
    let mut cmd = String::from("nasa-ingest dlq replay");
    if state.topic != "images" {
        cmd += &format!(" --kafka-topic {}", state.topic);
    }
    if state.group_id != "images-writer" {
        cmd += &format!(" --kafka-group-id {}", state.group_id);
    }
    format!("{cmd} --reason {reason}")
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    let images = images_in_database(&state).await;
    HttpResponse::Ok().json(status_json(&state, images))
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

/// Escapes text for HTML: everything from the NASA API passes through here.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn page(state: web::Data<AppState>) -> HttpResponse {
    let (images, total) = match state.pool.clone() {
        Some(pool) => web::block(move || (db::latest_images(&pool, 24), db::count_images(&pool))).await.unwrap_or_else(|e| {
            let err = crate::errors::Transient::database(e);
            (Err(err), Ok(0))
        }),
        None => (Ok(vec![]), Ok(0)),
    };
    let st = status_json(&state, total.as_ref().ok().copied());
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(render_page(&st, images, total))
}

/// The time of an RFC 3339 timestamp, as HH:MM:SS (the page is read the same day).
fn clock(rfc3339: &str) -> String {
    rfc3339.get(11..19).unwrap_or(rfc3339).to_owned()
}

/// Each dependency: state, since when, and its last error.
fn dependencies_panel(st: &serde_json::Value) -> String {
    let items: String = st["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let state = d["state"].as_str().unwrap_or("");
            let cls = match state {
                "up" => "ok",
                "unknown" => "muted",
                _ => "bad",
            };
            let error =
                d["last_error"].as_str().map(|e| format!(r#"<br><span class=muted>last error: {}</span>"#, escape(e))).unwrap_or_default();
            format!(
                r#"<li class=dep><b>{name}</b> <span class={cls}>{state}</span> <span class=muted>since {since} UTC</span>{error}</li>"#,
                name = escape(d["name"].as_str().unwrap_or("")),
                state = escape(state),
                since = escape(&clock(d["since"].as_str().unwrap_or(""))),
            )
        })
        .collect();
    format!(r#"<h2>Dependencies</h2><ul id=dependencies>{items}</ul>"#)
}

/// Rates over the last minute, and the Fetcher's last and next cycle.
fn activity_panel(st: &serde_json::Value) -> String {
    let r = &st["rates_per_minute"];
    let mut items = format!(
        "<li><b>per minute</b> (last minute): {} fetched · {} published · {} consumed · {} stored</li>",
        r["fetched"], r["published"], r["consumed"], r["stored"]
    );
    let f = &st["fetches"];
    if !f.is_null() {
        let last = match (f["last_at"].as_str(), f["last_outcome"].as_str()) {
            (Some(at), Some(outcome)) => format!("{} UTC: {}", clock(at), escape(outcome)),
            _ => "not yet".into(),
        };
        let next = f["next_at"].as_str().map(|at| format!("{} UTC", clock(at))).unwrap_or_else(|| "after start-up".into());
        items.push_str(&format!("<li><b>last fetch</b> {last}</li><li><b>next fetch</b> {next}</li>"));
    }
    format!("<h2>Activity</h2><ul>{items}</ul>")
}

/// The last WARN and ERROR lines, newest first.
fn problems_panel(st: &serde_json::Value) -> String {
    let rows: Vec<String> = st["recent_problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let level = p["level"].as_str().unwrap_or("");
            format!(
                r#"<tr><td class=muted>{time}</td><td class={cls}>{level}</td><td>{actor}</td><td>{message}{error}</td></tr>"#,
                time = escape(&clock(p["time"].as_str().unwrap_or(""))),
                cls = if level == "warn" { "warn" } else { "bad" },
                level = escape(level),
                actor = escape(p["actor"].as_str().unwrap_or("")),
                message = escape(p["message"].as_str().unwrap_or("")),
                error = p["error"].as_str().map(|e| format!(r#"<br><span class=muted>{}</span>"#, escape(e))).unwrap_or_default(),
            )
        })
        .collect();
    let body = if rows.is_empty() {
        "<p class=muted>None since start.</p>".to_owned()
    } else {
        format!("<table id=problems><tr><th>time (UTC)</th><th>level</th><th>actor</th><th>message</th></tr>{}</table>", rows.join(""))
    };
    format!("<h2>Recent warnings and errors</h2>{body}")
}

/// " (at 12:01:02, 12:03:04 UTC)" for the latest restarts, else nothing.
fn restart_times(times: &serde_json::Value) -> String {
    let times: Vec<String> = times.as_array().into_iter().flatten().filter_map(|t| t.as_str()).map(|t| escape(&clock(t))).collect();
    if times.is_empty() {
        String::new()
    } else {
        format!(" (at {} UTC)", times.join(", "))
    }
}

/// What is on the dead-letter topic: the count of each reason with the command that replays it,
/// and the last dead letters.
fn dead_letters_panel(d: &serde_json::Value) -> String {
    let reasons: String = d["by_reason"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, n)| {
            let cmd = d["replay_commands"][reason].as_str().unwrap_or("");
            format!(r#"<li><b>{reason}</b> {n} · <code>{cmd}</code></li>"#, reason = escape(reason), cmd = escape(cmd))
        })
        .collect();
    let last: String = d["last"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let replays = b["replay_count"].as_u64().filter(|n| *n > 0).map(|n| format!(" · after {n} replay(s)")).unwrap_or_default();
            format!(
                r#"<tr><td>{time}</td><td>{id}</td><td>{reason}</td><td class=muted>{error}{replays}</td></tr>"#,
                time = escape(b["time"].as_str().unwrap_or("")),
                id = escape(b["nasa_id"].as_str().unwrap_or("")),
                reason = escape(b["reason"].as_str().unwrap_or("")),
                error = escape(b["error"].as_str().unwrap_or("")),
            )
        })
        .collect();
    let state = match (&d["error"], d["read_to_end"].as_bool()) {
        (serde_json::Value::String(e), _) => format!("<p class=bad>The dead-letter topic cannot be read: {}</p>", escape(e)),
        (_, Some(false)) => "<p class=muted>Reading the dead-letter topic…</p>".into(),
        _ if reasons.is_empty() => "<p class=ok>No dead letters.</p>".into(),
        _ => String::new(),
    };
    let table = if last.is_empty() {
        String::new()
    } else {
        format!("<table class=dlq><tr><th>time</th><th>nasa_id</th><th>reason</th><th>error</th></tr>{last}</table>")
    };
    format!(
        r#"<h2 id=dead-letters>Dead letters</h2>{state}<ul>{reasons}</ul>{table}<p class=muted>On the topic, replayed ones included; <code>nasa-ingest dlq list</code> shows which were replayed. Fix the cause first (README, "Dead letters").</p>"#
    )
}

/// The consumer's group membership: member id, partitions held, and a stall if there is one.
fn consumer_panel(c: &serde_json::Value) -> String {
    if c.is_null() {
        return String::new();
    }
    let partitions: Vec<String> = c["assigned_partitions"].as_array().into_iter().flatten().map(|p| p.to_string()).collect();
    let held = if partitions.is_empty() { "none".to_owned() } else { partitions.join(", ") };
    let state = match c["stall"].as_str() {
        Some(stall) => format!(r#"<li class=bad>stalled: {}</li>"#, escape(stall)),
        None if c["broker_reachable"] == false => "<li class=bad>Kafka unreachable</li>".to_owned(),
        None => "<li class=ok>moving</li>".to_owned(),
    };
    format!(
        r#"<h2>Consumer</h2><ul><li><b>partitions</b> {held}</li><li><b>member</b> <span class=muted>{member}</span></li><li><b>client</b> <span class=muted>{client}</span> · {rejoins} rejoins</li>{state}</ul>"#,
        held = escape(&held),
        member = escape(c["member_id"].as_str().unwrap_or("(not known yet)")),
        client = escape(c["client_id"].as_str().unwrap_or("")),
        rejoins = c["rejoins"],
    )
}

fn render_page(
    st: &serde_json::Value,
    images: Result<Vec<db::ImageSummary>, crate::errors::Transient>,
    total: Result<i64, crate::errors::Transient>,
) -> String {
    let actors: String = st["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let up = a["state"] == "running";
            format!(
                r#"<li class="{cls}"><b>{name}</b> {state} · {restarts} restarts{times}{err}</li>"#,
                cls = if up { "ok" } else { "bad" },
                name = escape(a["name"].as_str().unwrap_or("")),
                state = escape(a["state"].as_str().unwrap_or("")),
                restarts = a["restarts"],
                times = restart_times(&a["restart_times"]),
                err = a["last_error"].as_str().map(|e| format!(" · last: {}", escape(e))).unwrap_or_default(),
            )
        })
        .collect();
    let consumer = consumer_panel(&st["consumer"]);
    let (dependencies, activity, problems) = (dependencies_panel(st), activity_panel(st), problems_panel(st));
    let dead_letters = dead_letters_panel(&st["dead_letters"]);
    let c = &st["counts"];
    let lag: i64 = st["consumer_lag"].as_object().map(|m| m.values().filter_map(|v| v.as_i64()).sum()).unwrap_or(0);
    let gallery = match images {
        Ok(list) if list.is_empty() => "<p class=muted>No images stored yet.</p>".to_owned(),
        Ok(list) => list
            .iter()
            .map(|i| {
                let title = escape(i.title.as_deref().unwrap_or(&i.nasa_id));
                format!(
                    r#"<figure><img src="/images/{src}" alt="{title}" loading="lazy"><figcaption><b>{title}</b><br><span class=muted>{id} · {query} · {kb} KB · {ct} · {when}</span></figcaption></figure>"#,
                    src = path_segment(&i.nasa_id),
                    id = escape(&i.nasa_id),
                    query = escape(i.query.as_deref().unwrap_or("")),
                    kb = i.byte_size / 1024,
                    ct = escape(&i.content_type),
                    when = i.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                )
            })
            .collect(),
        Err(e) => format!("<p class=bad>Gallery unavailable: {}</p>", escape(&e.to_string())),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="15">
<title>nasa-ingest status</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;background:#0b1020;color:#e8ecf5}}
h1{{margin:0 0 .3rem}} .muted{{color:#9aa4bd;font-size:.85rem}} .ok{{color:#7ee2a8}} .bad{{color:#ff8c8c}}
.cards{{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}} .card{{background:#151c33;border-radius:8px;padding:.8rem 1rem;min-width:9rem}}
.card b{{display:block;font-size:1.6rem}} ul{{list-style:none;padding:0}} li{{margin:.2rem 0}} .warn{{color:#ffd27a}}
.cols{{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:0 2rem}}
table{{border-collapse:collapse;font-size:.9rem;width:100%}} td,th{{text-align:left;padding:.2rem .5rem;vertical-align:top;border-bottom:1px solid #222a44}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}}
figure{{margin:0;background:#151c33;border-radius:8px;overflow:hidden}} figure img{{width:100%;height:160px;object-fit:cover;display:block;background:#222}}
figcaption{{padding:.5rem .6rem;font-size:.9rem}}
table.dlq{{border-collapse:collapse;font-size:.9rem}} table.dlq td,table.dlq th{{text-align:left;padding:.2rem .8rem .2rem 0;vertical-align:top}} code{{color:#cfe3ff}}
</style></head><body>
<h1>nasa-ingest</h1>
<div class=muted>version {version} · roles {roles} · up {uptime} s · <a href="/status" style="color:#9ab">/status</a> · <a href="/metrics" style="color:#9ab">/metrics</a></div>
<div class=cards>
<div class=card><b>{stored_total}</b>images in the database</div>
<div class=card><b>{published}</b>published since start</div>
<div class=card><b>{consumed}</b>consumed since start</div>
<div class=card><b>{duplicates}</b>duplicates since start</div>
<div class=card><b>{dlq}</b><a href=#dead-letters style=color:inherit>dead letters</a> on the topic</div>
<div class=card><b>{pending}</b>pending in outbox</div>
<div class=card><b>{lag}</b>consumer lag</div>
</div>
<div class=cols><div>{dependencies}
<h2>Actors</h2><ul>{actors}</ul>
{consumer}</div><div>{activity}
{problems}
{dead_letters}</div></div>
<h2>Latest images</h2><div class=gallery>{gallery}</div>
</body></html>"#,
        version = escape(st["version"].as_str().unwrap_or("")),
        roles = escape(st["roles"].as_str().unwrap_or("")),
        uptime = st["uptime_seconds"],
        stored_total = total.map(|t| t.to_string()).unwrap_or_else(|_| "?".into()),
        published = c["published"],
        consumed = c["consumed"],
        duplicates = c["duplicates"],
        // The topic's count (every process's, across restarts), once it was read; this process's until then.
        dlq = st["dead_letters"]["on_topic"]
            .as_u64()
            .filter(|_| st["dead_letters"]["read_to_end"] == true)
            .unwrap_or(c["dead_lettered"].as_u64().unwrap_or(0)),
        pending = st["pending_events"],
    )
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
    inject_panics(count);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_open_markup() {
        assert_eq!(escape(r#"<img src=x onerror="a('b')">&"#), "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;");
        assert_eq!(path_segment("moon-mosaic-ü 2020/x"), "moon%2Dmosaic%2D%C3%BC%202020%2Fx");
    }
}
