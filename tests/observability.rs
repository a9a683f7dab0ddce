//! Logs in ECS for ELK, Sentry per incident, and the HTTP endpoint, against a running daemon.

mod common;

use common::*;
use std::time::Duration;

/// The ECS logging spec (elastic/ecs-logging spec/spec.json): required fields and their order.
fn ecs_spec() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("../ecs-logging-spec.json")).unwrap()).unwrap()
}

fn check_ecs_line(line: &str, spec: &serde_json::Value, environment: &str) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let obj = v.as_object().unwrap();
    for (name, field) in spec["fields"].as_object().unwrap() {
        if field["required"] == true {
            assert!(obj.contains_key(name), "required {name} missing: {line}");
        }
        if let (Some(index), true) = (field["index"].as_u64(), obj.contains_key(name)) {
            // Key order of the raw line: the spec's index.
            let pos = line.find(&format!("\"{name}\":")).unwrap();
            let before = line[..pos].matches("\":").count();
            assert_eq!(before as u64, index, "{name} at position {before}, spec says {index}: {line}");
        }
    }
    let ts = v["@timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 24 && chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    assert!(["trace", "debug", "info", "warn", "error", "critical"].contains(&v["log.level"].as_str().unwrap()), "{line}");
    assert!(v["message"].is_string());
    assert_eq!(v["service.name"], "nasa-ingest");
    assert_eq!(v["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["service.environment"], environment);
    assert_eq!(v["event.dataset"], "nasa-ingest.log");
    assert!(v["log.logger"].as_str().is_some_and(|l| !l.is_empty()), "every line names its logger: {line}");
    assert!(!obj.contains_key("error"), "a plain error key clashes with ECS's error object: {line}");
    for (k, val) in obj {
        if k.starts_with("error.") {
            assert!(val.is_string(), "{k} is a string: {line}");
        }
        if let Some(label) = k.strip_prefix("labels.") {
            assert!(!label.contains(['.', '*', '\\']), "label keys are sanitised: {k}");
            assert!(val.is_string() || val.is_number() || val.is_boolean() || val.is_null(), "{k} is a scalar: {line}");
        }
    }
}

/// TC-08: every line the daemon writes during an end-to-end run is an ECS JSON object with the
/// required fields first, typed right, and the database password appears nowhere.
#[test]
fn every_log_line_is_ecs_json_and_secrets_stay_out() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "DATABASE_URL", &db.url.replace("postgres@", "postgres:hunter2-db-secret@"));
    set(&mut env, "SENTRY_DSN", "http://sentry-key-secret@127.0.0.1:9/1");
    let mut daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(90), "3 images stored", || db.rows().len() >= 3);
    daemon.terminate();
    let spec = ecs_spec();
    let lines = daemon.lines();
    assert!(lines.len() > 10);
    for line in &lines {
        check_ecs_line(line, &spec, "test");
        assert!(!line.contains("hunter2-db-secret") && !line.contains("sentry-key-secret"), "secret in the log: {line}");
    }
    let loggers: std::collections::BTreeSet<String> =
        lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["log.logger"].as_str().unwrap().to_owned()).collect();
    for actor in ["supervisor", "fetcher", "publisher", "subscriber"] {
        assert!(loggers.contains(actor), "{actor} logs as itself: {loggers:?}");
    }
}

/// LOG_LEVEL filters what is written.
#[test]
fn log_level_filters() {
    let (broker, db, dir) = (Broker::shared(), TestDb::create(), tempfile::tempdir().unwrap());
    let nasa = fake_nasa();
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "LOG_LEVEL", "warn");
    set(&mut env, "CONSUMER_ENABLED", "false");
    set(&mut env, "NASA_API_URL", &format!("http://127.0.0.1:{}", free_port()));
    let daemon = Daemon::spawn(&env);
    daemon.wait_for_log("NASA API request failed, will retry", 2, Duration::from_secs(30));
    for line in daemon.lines() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(["warn", "error", "critical"].contains(&v["log.level"].as_str().unwrap()), "{line}");
    }
}

/// TC-07: a panic reaches Sentry with exception type, message, stack trace, environment,
/// release and tags.
#[test]
fn tc07_a_panic_reaches_sentry_with_its_context() {
    let (broker, db, nasa, dir, sentry) =
        (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap(), FakeSentry::start());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "SENTRY_DSN", &sentry.dsn());
    set(&mut env, "ADMIN_TOKEN", "t0ken");
    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    daemon.wait_for_log("actor started", 5, Duration::from_secs(60));
    assert_eq!(http(&addr, "POST", "/admin/actors/fetcher/crash", &[("Authorization", "Bearer t0ken")]).0, 202);

    wait_until(Duration::from_secs(30), "the panic event in Sentry", || {
        sentry.events().iter().any(|e| e["exception"]["values"][0]["type"] == "panic")
    });
    let events = sentry.events();
    let event = events.iter().find(|e| e["exception"]["values"][0]["type"] == "panic").unwrap();
    let exception = &event["exception"]["values"][0];
    assert!(exception["value"].as_str().unwrap().contains("crash of Fetcher"), "{exception}");
    assert!(exception["stacktrace"]["frames"].as_array().is_some_and(|f| !f.is_empty()), "a stack trace: {exception}");
    assert_eq!(event["environment"], "test");
    assert_eq!(event["release"], concat!("nasa-ingest@", env!("CARGO_PKG_VERSION")));
    assert_eq!(event["tags"]["actor"], "fetcher");
    assert_eq!(event["tags"]["role"], "producer+consumer");
    assert!(event["timestamp"].is_number() || event["timestamp"].is_string(), "{event}");
    assert_eq!(event["level"], "fatal");
}

/// Issue 26: a Sentry event about one image carries the image's trace (as its trace context and
/// a `trace.id` tag), so that an operator goes from the Sentry issue to the log search at once: a
/// panic while an event is handled (injected through the admin route), and its log lines, are in
/// the trace the event's `traceparent` names.
#[test]
fn a_panic_while_an_image_is_handled_reaches_sentry_in_its_trace() {
    let (broker, db, nasa, dir, sentry) =
        (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap(), FakeSentry::start());
    broker.create_topic(&broker.topic, 1);
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "PRODUCER_ENABLED", "false");
    set(&mut env, "SENTRY_DSN", &sentry.dsn());
    set(&mut env, "ADMIN_TOKEN", "t0ken");
    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    assert_eq!(http(&addr, "POST", "/admin/events/panic?count=1", &[("Authorization", "Bearer t0ken")]).0, 202);
    let span = nasa_ingest::trace::TraceContext::new_root();
    let event = event_json(&nasa, "as11-40-5874");
    broker.produce_with_headers(&broker.topic, Some("as11-40-5874"), event.as_bytes(), &[("traceparent", &span.traceparent())]);
    wait_until(Duration::from_secs(60), "the image stored after the panic", || db.rows_count() == 1);
    let trace_id = span.trace_id.to_string();
    let lines = daemon.lines_in_trace(&trace_id);
    let said = messages(&lines);
    for message in ["panic", "event handling panicked; the event is retried", "saved to DB"] {
        assert!(said.contains(&message), "{message:?} in the event's trace: {said:?}");
    }
    wait_until(Duration::from_secs(20), "the panic in Sentry", || {
        sentry.events().iter().any(|e| e["exception"]["values"][0]["type"] == "panic")
    });
    let events = sentry.events();
    let panic = events.iter().find(|e| e["exception"]["values"][0]["type"] == "panic").unwrap();
    assert_eq!(panic["contexts"]["trace"]["trace_id"], trace_id.as_str(), "{panic}");
    assert_eq!(panic["tags"]["trace.id"], trace_id.as_str(), "{panic}");
}

/// A Kafka outage with many retries is one Sentry event, plus one when it is over.
#[test]
fn a_kafka_outage_is_one_sentry_event_not_one_per_retry() {
    let (broker, db, nasa, dir, sentry) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap(), FakeSentry::start());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "CONSUMER_ENABLED", "false");
    set(&mut env, "SENTRY_DSN", &sentry.dsn());
    set(&mut env, "PUBLISH_TIMEOUT_MS", "1000");
    set(&mut env, "PUBLISH_MAX_BACKOFF_MS", "400");
    let daemon = Daemon::spawn(&env);
    daemon.wait_for_log("sent", 1, Duration::from_secs(60));
    let before = daemon.logs_with("Kafka unavailable").len();
    broker.kill();
    daemon.wait_for_log("Kafka unavailable", before + 8, Duration::from_secs(90));
    broker.resume();
    let sent = daemon.logs_with("sent").len();
    daemon.wait_for_log("sent", sent + 1, Duration::from_secs(60));
    wait_until(Duration::from_secs(20), "the recovery reported", || {
        sentry.events().iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("Kafka available again")))
    });
    let events = sentry.events();
    let outage: Vec<_> = events.iter().filter(|e| e["message"] == "Kafka unavailable").collect();
    assert_eq!(outage.len(), 1, "one event for {} retries: {events:?}", daemon.logs_with("Kafka unavailable").len());
    assert_eq!(outage[0]["exception"]["values"][0]["type"], "kafka");
    assert_eq!(outage[0]["tags"]["actor"], "publisher");
    let recovered = events.iter().filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("Kafka available again"))).count();
    assert_eq!(recovered, 1);
}

/// The HTTP endpoint: health, readiness, metrics, status, the page and the stored images.
#[test]
fn http_endpoint_serves_health_metrics_status_page_and_images() {
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = Daemon::spawn(&daemon_env(&broker, &db, &nasa, dir.path()));
    let addr = daemon.http_addr();
    assert_eq!(http(&addr, "GET", "/healthz", &[]).0, 200);
    wait_until(Duration::from_secs(90), "3 images stored", || db.rows().len() >= 3);
    let (status, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!(status, 200, "{body}");

    let (status, metrics) = http(&addr, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    assert!(value("nasa_ingest_events_stored_total") >= 3.0, "{metrics}");
    assert!(value("nasa_ingest_events_published_total") >= 3.0);
    assert!(value("nasa_ingest_events_consumed_total") >= 3.0);
    assert!(value("nasa_ingest_bytes_downloaded_total") > 1000.0);
    assert!(value("nasa_ingest_processing_seconds_count") >= 3.0);
    assert_eq!(value("nasa_ingest_outbox_pending_events"), value("nasa_ingest_outbox_pending_events").clamp(0.0, 1.0));
    for name in ["nasa_ingest_events_fetched_total", "nasa_ingest_events_duplicate_total", "nasa_ingest_processing_seconds_bucket"] {
        assert!(metrics.contains(name), "{name} exposed");
    }

    let (status, st) = http_json(&addr, "GET", "/status", None);
    assert_eq!(status, 200);
    assert_eq!(st["roles"], "producer+consumer");
    let actors: Vec<&str> = st["actors"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(actors, vec!["storer", "downloader", "subscriber", "publisher", "fetcher"]);
    assert!(st["actors"].as_array().unwrap().iter().all(|a| a["state"] == "running" && a["restarts"] == 0));
    assert!(st["counts"]["stored"].as_u64().unwrap() >= 3);
    // The consumer's membership, once the group's description has been read (every 5 s).
    let consumer = || http_json(&addr, "GET", "/status", None).1["consumer"].clone();
    wait_until(Duration::from_secs(15), "the member id in /status", || consumer()["member_id"].is_string());
    let c = consumer();
    assert_eq!(c["assigned_partitions"], serde_json::json!([0, 1, 2]), "{c}");
    // The broker's id for the member (a UUID under the consumer protocol; client id and UUID under classic).
    assert!(!c["member_id"].as_str().unwrap().is_empty(), "{c}");
    assert!(c["client_id"].as_str().unwrap().starts_with("nasa-ingest-"), "{c}");
    assert!(c["stall"].is_null());

    // A title with markup, as the API could send: it is shown as text.
    let row = &db.rows()[0];
    use diesel::RunQueryDsl;
    diesel::sql_query("UPDATE images SET title = '<script>alert(1)</script> & \"x\"' WHERE nasa_id = $1")
        .bind::<diesel::sql_types::Text, _>(&row.nasa_id)
        .execute(&mut db.conn())
        .unwrap();
    let (status, page) = http(&addr, "GET", "/", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"), "escaped");
    assert!(!page.contains("<script>alert(1)"), "never raw");
    assert!(page.matches("<img src=\"/images/").count() >= 2, "the gallery shows the stored images");
    assert!(page.contains("<h2>Consumer</h2><ul><li><b>partitions</b> 0, 1, 2</li>"), "the page shows the partitions held");

    let path = format!("/images/{}", url::form_urlencoded::byte_serialize(row.nasa_id.as_bytes()).collect::<String>());
    let (status, resp) = http(&addr, "GET", &path, &[]);
    assert_eq!(status, 200);
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains(&format!("content-type: {}", row.content_type)), "{}", &resp[..300.min(resp.len())]);
    assert!(lower.contains("cache-control: public, max-age=31536000, immutable"));
    assert!(lower.contains(&format!("etag: \"{}\"", row.sha256)));
    let etag = format!("\"{}\"", row.sha256);
    assert_eq!(http(&addr, "GET", &path, &[("If-None-Match", &etag)]).0, 304);
    assert_eq!(http(&addr, "GET", "/images/no-such-id", &[]).0, 404);
    assert_eq!(http(&addr, "POST", "/admin/actors/fetcher/crash", &[]).0, 404, "no ADMIN_TOKEN: no admin route");

    broker.kill();
    let (status, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!(status, 503);
    assert!(body.contains("Kafka unreachable"), "{body}");
}

/// Parsed log lines at `level` whose text contains `needle`.
fn lines_at(daemon: &Daemon, level: &str, needle: &str) -> Vec<serde_json::Value> {
    daemon
        .lines()
        .iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["log.level"] == level)
        .collect()
}

/// A Postgres user that does not exist cannot be fixed by retrying: one ERROR that names
/// DATABASE_URL, within 5 s, and not again while the cause stays the same (20 s watched here,
/// some 40 attempts at the test's backoff; the rule is at most one a minute). The driver's own
/// line per attempt is gone, the password is never shown, and /status and /readyz say what is wrong.
#[test]
fn a_wrong_postgres_user_is_one_error_naming_database_url() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    let wrong = db.url.replace("postgres://postgres@", "postgres://no_such_role:s3cret@");
    set(&mut env, "DATABASE_URL", &wrong);
    set(&mut env, "RETRY_MAX_BACKOFF_MS", "500");
    let started = std::time::Instant::now();
    let daemon = Daemon::spawn(&env);
    let naming = || lines_at(&daemon, "error", "DATABASE_URL");
    wait_until(Duration::from_secs(5), "an ERROR naming DATABASE_URL", || !naming().is_empty());
    let first = started.elapsed();
    let line = &naming()[0];
    assert_eq!(line["message"], "Postgres misconfigured: check DATABASE_URL", "{line}");
    let text = line["error.message"].as_str().unwrap();
    assert!(text.contains("role \"no_such_role\" does not exist") && text.contains("user name"), "{text}");

    let addr = daemon.http_addr();
    wait_until(Duration::from_secs(25), "20 s of retrying", || started.elapsed() > Duration::from_secs(20));
    assert_eq!(naming().len(), 1, "one ERROR while the cause stays the same:\n{}", daemon.dump());
    let mentions = daemon.lines().iter().filter(|l| l.contains("no_such_role")).count();
    assert_eq!(mentions, 1, "the driver's own line is not repeated per attempt:\n{}", daemon.dump());
    assert!(!daemon.dump().contains("s3cret"), "the password never appears");

    let (status, st) = http_json(&addr, "GET", "/status", None);
    assert_eq!(status, 200);
    let postgres = st["dependencies"].as_array().unwrap().iter().find(|d| d["name"] == "Postgres").unwrap().clone();
    assert_eq!(postgres["state"], "misconfigured", "{st}");
    assert_eq!(postgres["fix_variable"], "DATABASE_URL");
    assert!(postgres["last_error"].as_str().unwrap().contains("does not exist") && postgres["since"].is_string(), "{postgres}");
    let kafka = st["dependencies"].as_array().unwrap().iter().find(|d| d["name"] == "Kafka").unwrap().clone();
    assert_eq!(kafka["state"], "up", "{st}");
    let (code, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!(code, 503);
    assert!(body.contains("Postgres: misconfigured since") && body.contains("Kafka: up since"), "{body}");
    eprintln!("first ERROR after {:.2} s; 1 ERROR in {:.0} s", first.as_secs_f64(), started.elapsed().as_secs_f64());
}

/// KAFKA_BROKERS where nothing listens: an outage, a WARN with the address and "connection refused".
#[test]
fn kafka_brokers_at_a_closed_port_is_a_warn_with_the_address() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    let closed = format!("127.0.0.1:{}", free_port());
    set(&mut env, "KAFKA_BROKERS", &closed);
    let started = std::time::Instant::now();
    let daemon = Daemon::spawn(&env);
    let warns = || lines_at(&daemon, "warn", &closed);
    wait_until(Duration::from_secs(5), "a WARN naming the broker address", || !warns().is_empty());
    let first = started.elapsed();
    let line = &warns()[0];
    assert_eq!(line["message"], format!("Kafka unreachable at {closed}"), "{line}");
    assert_eq!(line["labels.address"], closed.as_str());
    assert!(line["error.message"].as_str().unwrap().contains("connection refused"), "{line}");
    let addr = daemon.http_addr();
    let (code, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!(code, 503);
    assert!(body.contains("Kafka: unreachable since") && body.contains("connection refused"), "{body}");
    eprintln!("WARN after {:.2} s", first.as_secs_f64());
}

/// The daemon's stdout under a pseudo-terminal (`script`), until `needle` shows up; then SIGTERM
/// (script passes it on). `timeout` ends the daemon in any case.
fn output_on_a_terminal(env: &[(String, String)], needle: &str) -> Vec<String> {
    use std::io::Read;
    let command = format!("exec timeout --foreground 60 {} run", daemon_bin());
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"]).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).stdin(std::process::Stdio::null()).spawn().expect("script runs");
    let mut out = child.stdout.take().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_until(Duration::from_secs(20), needle, || text.lock().unwrap().contains(needle));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().ok();
    let text = text.lock().unwrap().clone();
    text.lines().map(|l| l.trim_end_matches('\r').to_owned()).filter(|l| !l.is_empty()).collect()
}

/// A producer-only daemon whose KAFKA_BROKERS is a closed port (no broker needed), and that port.
fn producer_without_kafka(data_dir: &std::path::Path) -> (Vec<(String, String)>, String) {
    let closed = format!("127.0.0.1:{}", free_port());
    let env = [
        ("KAFKA_BROKERS", closed.as_str()),
        ("CONSUMER_ENABLED", "false"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATA_DIR", &data_dir.display().to_string()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (env, closed)
}

/// On a terminal the log is text, one short line per event: time, level, actor, message, labels.
/// LOG_FORMAT=json keeps JSON there; off a terminal JSON is the default (every other test).
#[test]
fn logs_are_text_on_a_terminal_and_json_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (env, closed) = producer_without_kafka(dir.path());
    let lines = output_on_a_terminal(&env, "Kafka unreachable");
    assert!(lines.iter().all(|l| !l.starts_with('{')), "no JSON on a terminal: {lines:#?}");
    let warn = lines.iter().find(|l| l.contains("Kafka unreachable")).unwrap();
    let (time, rest) = warn.split_once(' ').unwrap();
    assert!(time.len() == 12 && time.as_bytes()[2] == b':' && time.as_bytes()[8] == b'.', "{warn}");
    // From start-up's attempt or the dependency watcher's, whichever came first.
    let actor = rest["WARN  ".len()..].split_whitespace().next().unwrap();
    assert!(["startup", "dependencies"].contains(&actor), "{warn}");
    assert!(rest.starts_with(&format!("WARN  {actor:<12} Kafka unreachable at {closed}  ")), "{warn}");
    assert!(rest.contains(&format!("address={closed}")) && rest.contains("error=\"Kafka unreachable at"), "{warn}");
    assert!(lines.iter().any(|l| l.contains("INFO  supervisor   starting  roles=producer")), "{lines:#?}");

    let mut json_env = env.clone();
    set(&mut json_env, "LOG_FORMAT", "json");
    let lines = output_on_a_terminal(&json_env, "Kafka unreachable");
    let warn = lines.iter().find(|l| l.contains("Kafka unreachable")).unwrap();
    let v: serde_json::Value = serde_json::from_str(warn).unwrap_or_else(|e| panic!("LOG_FORMAT=json: {e}: {warn}"));
    assert_eq!(v["labels.address"], closed.as_str());
}

/// The whole raw answer to a request without a body (HEAD answers have a head only).
fn raw_answer(addr: &str, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Before any incident: every known actor, dead-letter reason and retry cause is a series at 0,
/// the process metrics and the build's version are there; HEAD /healthz and /readyz answer as
/// GET does, without a body.
#[test]
fn metrics_are_there_before_any_incident_and_head_probes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (env, _closed_port) = producer_without_kafka(dir.path());
    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    let (status, metrics) = http(&addr, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    let value = |series: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    for actor in ["fetcher", "publisher", "subscriber", "downloader", "storer"] {
        assert_eq!(value(&format!("nasa_ingest_actor_restarts_total{{actor=\"{actor}\"}}")), Some(0.0), "{actor}: {metrics}");
    }
    for reason in ["not_json", "bad_url", "host_not_allowed", "image_http_4xx", "too_large", "not_an_image", "db_rejected", "panic"] {
        assert_eq!(value(&format!("nasa_ingest_events_dead_lettered_total{{reason=\"{reason}\"}}")), Some(0.0), "{reason}");
    }
    for cause in ["kafka", "postgres", "image_http_5xx", "image_download", "nasa_unreachable", "nasa_timeout", "nasa_status"] {
        assert_eq!(value(&format!("nasa_ingest_retries_total{{cause=\"{cause}\"}}")), Some(0.0), "{cause}");
    }
    assert!(value("process_resident_memory_bytes").unwrap() > 1e6, "{metrics}");
    assert!(value("process_open_fds").unwrap() >= 3.0);
    assert!(value("process_cpu_seconds_total").is_some());
    assert_eq!(value(&format!("nasa_ingest_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), Some(1.0));

    for (path, code) in [("/healthz", "200"), ("/readyz", "503")] {
        let get = raw_answer(&addr, "GET", path);
        let head = raw_answer(&addr, "HEAD", path);
        assert!(get.starts_with(&format!("HTTP/1.1 {code}")), "GET {path}: {get}");
        assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "HEAD {path}: {head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD {path} has no body: {head:?}");
    }
}
