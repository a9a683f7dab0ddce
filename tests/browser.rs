//! The status page in a real browser: headless Chromium (through chromedriver) loads `/` after
//! images are stored, checks that every gallery image decoded, and saves a screenshot.

mod common;

use base64::Engine;
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

struct ChromeDriver {
    addr: String,
    child: std::process::Child,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(30), "chromedriver ready", || {
            std::net::TcpStream::connect(&addr).is_ok() && http_json(&addr, "GET", "/status", None).1["value"]["ready"] == true
        });
        ChromeDriver { addr, child }
    }

    fn session(&self, profile: &std::path::Path) -> String {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let (status, resp) = http_json(&self.addr, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "{resp}");
        resp["value"]["sessionId"].as_str().unwrap().to_owned()
    }

    /// A new session on `url`; returns its id.
    fn open(&self, profile: &std::path::Path, url: &str) -> String {
        let session = self.session(profile);
        let (status, resp) = http_json(&self.addr, "POST", &format!("/session/{session}/url"), Some(&json!({ "url": url })));
        assert_eq!(status, 200, "{resp}");
        session
    }

    fn run(&self, session: &str, script: &str) -> serde_json::Value {
        let body = json!({"script": script, "args": []});
        http_json(&self.addr, "POST", &format!("/session/{session}/execute/sync"), Some(&body)).1["value"].clone()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn status_page_gallery_images_decode_in_chromium() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = Daemon::spawn(&daemon_env(&broker, &db, &nasa, dir.path()));
    let addr = daemon.http_addr();
    wait_until(Duration::from_secs(90), "4 images stored", || db.rows().len() >= 4);
    let stored = db.rows().len();

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().unwrap();
    let session = driver.open(profile.path(), &format!("http://{addr}/"));
    // Lazy images load once they are near the viewport.
    driver.run(&session, "window.scrollTo(0, document.body.scrollHeight)");
    let mut widths = Vec::new();
    wait_until(Duration::from_secs(30), "every gallery image loaded", || {
        let v =
            driver.run(&session, "return Array.from(document.querySelectorAll('.gallery img')).map(i => i.complete ? i.naturalWidth : -1)");
        widths = v.as_array().cloned().unwrap_or_default().iter().filter_map(|w| w.as_i64()).collect();
        !widths.is_empty() && widths.iter().all(|w| *w >= 0)
    });
    assert!(widths.len() >= stored.min(24), "{} images shown, {stored} stored", widths.len());
    assert!(widths.iter().all(|w| *w > 0), "every image decoded: {widths:?}");
    let title = driver.run(&session, "return document.title");
    assert_eq!(title, "nasa-ingest status");

    driver.run(&session, "window.scrollTo(0, 0)");
    screenshot(&driver, &session, "target/status-page.png");
    http_json(&driver.addr, "DELETE", &format!("/session/{session}"), None);
}

/// While Postgres is cut, the page in Chromium says so in its dependencies panel (state, since
/// when, the last error) and its recent warnings show the outage; /status says the same.
#[test]
fn the_page_shows_postgres_cut_in_its_dependencies_panel() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let proxy = TcpProxy::start("127.0.0.1:5432");
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "DATABASE_URL", &db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port)));
    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    wait_until(Duration::from_secs(90), "2 images stored", || db.rows().len() >= 2);
    proxy.cut();
    let postgres = || {
        let st = http_json(&addr, "GET", "/status", None).1;
        st["dependencies"].as_array().unwrap().iter().find(|d| d["name"] == "Postgres").cloned().unwrap()
    };
    wait_until(Duration::from_secs(20), "Postgres unreachable in /status", || postgres()["state"] == "unreachable");
    assert!(postgres()["last_error"].as_str().unwrap().contains(&format!("127.0.0.1:{}", proxy.port)), "{}", postgres());

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().unwrap();
    let session = driver.open(profile.path(), &format!("http://{addr}/"));
    let panel = driver.run(&session, "return document.querySelector('#dependencies').innerText");
    let panel = panel.as_str().unwrap_or_default();
    assert!(panel.contains("Postgres unreachable since"), "{panel}");
    assert!(panel.contains("Kafka up since"), "{panel}");
    assert!(panel.contains("NASA API up since"), "{panel}");
    // Newest first: the WARN lines of the outage (the dependency's own, or the events' retries).
    let newest = driver.run(&session, "return document.querySelector('#problems tr:nth-child(2)').innerText");
    let newest = newest.as_str().unwrap_or_default();
    assert!(newest.contains("\twarn\t") && newest.contains("Postgres"), "{newest}");
    screenshot(&driver, &session, "target/status-page-postgres-cut.png");
    http_json(&driver.addr, "DELETE", &format!("/session/{session}"), None);
    proxy.restore();
    wait_until(Duration::from_secs(20), "Postgres up again", || postgres()["state"] == "up");
}

/// Saves what the browser shows as a PNG at `rel` (under the project's folder).
fn screenshot(driver: &ChromeDriver, session: &str, rel: &str) {
    let shot = http_json(&driver.addr, "GET", &format!("/session/{session}/screenshot"), None).1["value"].as_str().unwrap().to_owned();
    let png = base64::engine::general_purpose::STANDARD.decode(shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());
}
