//! `nasa-ingest backfill`: pages through a search, publishes each image once, resumes.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn backfill_cmd(broker: &Broker, nasa: &FakeNasa, data: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(daemon_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", &broker.addr)
        .env("KAFKA_TOPIC", &broker.topic)
        .env("NASA_API_URL", &nasa.url)
        .env("DATA_DIR", data)
        .env("RETRY_MIN_BACKOFF_MS", "100")
        .env("PUBLISH_MIN_BACKOFF_MS", "200")
        .arg("backfill")
        .args(args);
    cmd
}

/// nasa_id → how often it is on the topic.
fn ids_on_topic(broker: &Broker, at_least: usize) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in broker.read_all(&broker.topic, at_least, Duration::from_secs(20)) {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["query"], "moon");
        assert_eq!(r.key.as_deref(), v["nasa_id"].as_str());
        *ids.entry(v["nasa_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    ids
}

#[test]
fn backfill_publishes_every_image_once_across_runs() {
    let (broker, nasa, data) = (Broker::shared(), fake_nasa(), tempfile::tempdir().unwrap());

    let out = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon", "--limit", "4"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("backfill: 4 published, 0 published before, of 4"), "plain progress when not a terminal: {stdout}");
    assert_eq!(ids_on_topic(&broker, 4).len(), 4);

    let out = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("backfill: 3 published, 4 published before, of 7"), "{stdout}");

    let out = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("backfill: 0 published, 7 published before"));

    let ids = ids_on_topic(&broker, 7);
    assert_eq!(ids.len(), 7, "all 7 moon images: {ids:?}");
    assert!(ids.values().all(|n| *n == 1), "none twice: {ids:?}");
    // The logs are ECS lines on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{stderr}");
}

#[test]
fn an_interrupted_backfill_resumes_without_duplicates() {
    let (broker, nasa, data) = (Broker::shared(), fake_nasa(), tempfile::tempdir().unwrap());
    // Slow API answers leave time to interrupt in the middle.
    nasa.state.set_api_delay(Duration::from_millis(300));
    let mut child =
        backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut published = 0;
    for line in stderr.lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "sent" {
            published += 1;
            if published == 2 {
                Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
            }
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130");
    let sent_before = broker.read_all(&broker.topic, 2, Duration::from_secs(10)).len();
    assert!((2..7).contains(&sent_before), "interrupted part-way: {sent_before}");

    nasa.state.set_api_delay(Duration::ZERO);
    let out = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let ids = ids_on_topic(&broker, 7);
    assert_eq!(ids.len(), 7);
    assert!(ids.values().all(|n| *n == 1), "resumed without duplicates: {ids:?}");
    assert!(nasa.state.searches.load(Ordering::SeqCst) >= 4);
}

/// Ctrl-C while a retry waits out its backoff (20 s here) stops the backfill at once, exit 130.
#[test]
fn ctrl_c_during_a_backoff_stops_at_once() {
    let (broker, nasa, data) = (Broker::shared(), fake_nasa(), tempfile::tempdir().unwrap());
    nasa.state.set_api_mode(ApiMode::Status(503));
    let mut child = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"])
        .env("RETRY_MIN_BACKOFF_MS", "20000")
        .env("RETRY_MAX_BACKOFF_MS", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    assert!(lines.any(|l| l.contains("NASA API request failed, will retry")), "the first attempt fails");
    let interrupted = std::time::Instant::now();
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    let took = interrupted.elapsed();
    eprintln!("exited {:.2} s after Ctrl-C", took.as_secs_f64());
    assert_eq!(status.code(), Some(130));
    assert!(took < Duration::from_secs(2), "stopped at once, not after the backoff: {took:?}");
}

/// On a terminal the log lines scroll above the progress bar: each starts a line of its own
/// instead of being glued to the bar's text.
#[test]
fn on_a_terminal_log_lines_go_above_the_bar() {
    let (broker, nasa, data) = (Broker::shared(), fake_nasa(), tempfile::tempdir().unwrap());
    // Slow answers: the bar is drawn between the events.
    *nasa.state.api_delay.lock().unwrap() = Duration::from_millis(200);
    let command = format!(
        "exec env -i PATH=\"$PATH\" TERM=xterm KAFKA_BROKERS={} KAFKA_TOPIC={} NASA_API_URL={} DATA_DIR={} timeout --foreground 60 {} backfill --query moon",
        broker.addr,
        broker.topic,
        nasa.url,
        data.path().display(),
        daemon_bin()
    );
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{raw}");
    let sent: Vec<&str> = raw.split('\n').filter(|l| l.contains(" sent  nasa_id=")).collect();
    assert_eq!(sent.len(), 7, "one text line per event sent: {raw:?}");
    assert!(raw.contains("7/7 images"), "the bar was drawn: {raw:?}");
    let finished: Vec<&str> = raw.split('\n').filter(|l| l.contains("backfill finished")).collect();
    for line in sent.into_iter().chain(finished) {
        // What the terminal shows on that line: the text after the last carriage return, with
        // the escape sequences (the bar's clearing) removed.
        let shown = strip_escapes(line.rsplit('\r').find(|piece| !strip_escapes(piece).trim().is_empty()).unwrap_or(""));
        assert!(shown.as_bytes()[0].is_ascii_digit() && shown.contains(" INFO  backfill "), "a line of its own: {line:?}");
    }
}

/// The text without ANSI escape sequences (ESC [ ... letter).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A backfill on the DATA_DIR of a running daemon uses a slot of its own: both publish, neither
/// touches the other's pending event, and a second backfill there is refused.
#[test]
fn a_backfill_beside_a_daemon_on_the_same_data_dir_keeps_its_own_outbox() {
    let (broker, db, nasa, data) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, data.path());
    set(&mut env, "CONSUMER_ENABLED", "false");
    set(&mut env, "QUERY", "mars");
    env.retain(|(k, _)| k != "DATABASE_URL");
    let daemon = Daemon::spawn(&env);
    daemon.wait_for_log("sent", 1, Duration::from_secs(60));
    // The API answers slowly, so the first backfill is still running when the second starts.
    nasa.state.set_api_delay(Duration::from_secs(2));
    let mut running = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"]).stdout(Stdio::null()).spawn().unwrap();
    let lock = data.path().join("backfill/outbox/lock");
    wait_until(Duration::from_secs(10), "the backfill holds its slot", || {
        std::fs::read_to_string(&lock).is_ok_and(|pid| pid.trim() == running.id().to_string())
    });
    let refused = backfill_cmd(&broker, &nasa, data.path(), &["--query", "moon"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("DATA_DIR {} is in use by another nasa-ingest backfill (pid {})", data.path().display(), running.id())),
        "{stderr}"
    );
    nasa.state.set_api_delay(Duration::ZERO);
    assert!(running.wait().unwrap().success(), "the first backfill finished");
    let sent = daemon.logs_with("sent").len();
    daemon.wait_for_log("sent", sent + 1, Duration::from_secs(30));
    let ids = ids_by_query(&broker, 7 + sent);
    assert_eq!(ids.get("moon").map(|m| m.len()), Some(7), "every moon image published by the backfill: {ids:?}");
    assert!(ids["moon"].values().all(|n| *n == 1), "none twice: {ids:?}");
    assert!(ids.get("mars").is_some_and(|m| !m.is_empty()), "the daemon went on publishing: {ids:?}");
}

/// query → nasa_id → how often it is on the topic.
fn ids_by_query(broker: &Broker, at_least: usize) -> HashMap<String, HashMap<String, usize>> {
    let mut ids: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for r in broker.read_all(&broker.topic, at_least, Duration::from_secs(20)) {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        let query = v["query"].as_str().unwrap_or_default().to_owned();
        *ids.entry(query).or_default().entry(v["nasa_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    ids
}
