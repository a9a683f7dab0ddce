//! The HTTP endpoint (actix-web on `HTTP_ADDR`): `/healthz`, and with `ADMIN_TOKEN` set, fault
//! injection for people demonstrating resilience: `POST /admin/actors/{name}/crash`.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Makes the named actor panic; false when it is not running.
pub type CrashFn = Box<dyn Fn() -> bool + Send + Sync>;

pub struct AppState {
    pub crash: HashMap<&'static str, CrashFn>,
    pub admin_token: Option<String>,
    pub log: Logger,
}

/// Binds and starts the server on the current actix system; returns the bound address.
pub fn start(addr: SocketAddr, state: AppState) -> std::io::Result<SocketAddr> {
    let admin = state.admin_token.is_some();
    let data = web::Data::from(Arc::new(state));
    let log = data.log.clone();
    let server = HttpServer::new(move || {
        let app = App::new().app_data(data.clone()).route("/healthz", web::get().to(healthz));
        // Without ADMIN_TOKEN the admin routes do not exist at all (404, not 401).
        if admin {
            app.route("/admin/actors/{name}/crash", web::post().to(crash))
        } else {
            app
        }
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    let bound = server.addrs()[0];
    actix::spawn(server.run());
    info!(log, "HTTP endpoint listening"; "labels.addr" => bound.to_string(), "labels.admin_routes" => admin);
    Ok(bound)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

fn authorized(req: &HttpRequest, token: &str) -> bool {
    let given = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token is a secret.
    given.is_some_and(|g| g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
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
