//! The command line: bad configuration is refused with exit code 2 and one line that names the
//! variable, the value and what is accepted; `migrate` applies the migrations.

mod common;

use common::*;
use std::process::Command;

fn run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(daemon_bin());
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const DB: (&str, &str) = ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/unused");

#[test]
fn each_bad_value_exits_2_naming_variable_value_and_what_is_accepted() {
    let cases: &[(&str, &str, &str)] = &[
        ("INTERVAL_SECONDS", "soon", "a whole number from 1 to 86400"),
        ("INTERVAL_SECONDS", "0", "a whole number from 1 to 86400"),
        ("MAX_IMAGE_BYTES", "-5", "a whole number"),
        ("DOWNLOAD_CONCURRENCY", "many", "a whole number from 1 to 1024"),
        ("IMAGE_VARIANT", "huge", "orig, large, medium, small or thumb"),
        ("PRODUCER_ENABLED", "maybe", "true or false"),
        ("CONSUMER_ENABLED", "2", "true or false"),
        ("NASA_API_URL", "images-api.nasa.gov", "an http:// or https:// URL"),
        ("NASA_API_URL", "ftp://images-api.nasa.gov", "an http:// or https:// URL"),
        ("KAFKA_BROKERS", "broker-without-port", "host:port"),
        ("LOG_LEVEL", "loud", "error, warn, info, debug or trace"),
        ("PUBLISH_MIN_BACKOFF_MS", "fast", "a whole number"),
        ("PUBLISH_MAX_BACKOFF_MS", "slow", "a whole number"),
        ("RETRY_MAX_BACKOFF_MS", "100", "at least the minimum backoff, 500 ms"),
        ("ALLOWED_IMAGE_HOSTS", "a b", "comma-separated host names"),
    ];
    for (var, value, accepted) in cases {
        let (code, stdout, stderr) = run(&[DB, (var, value)], &[]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var) && stderr.contains(&format!("{value:?}")), "{var}={value}: {stderr}");
        assert!(stderr.contains(accepted), "{var}={value}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}

#[test]
fn both_roles_off_is_refused() {
    let (code, _, stderr) = run(&[DB, ("PRODUCER_ENABLED", "false"), ("CONSUMER_ENABLED", "no")], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("PRODUCER_ENABLED") && stderr.contains("CONSUMER_ENABLED") && stderr.contains("false"), "{stderr}");
}

#[test]
fn secrets_in_bad_values_are_not_echoed() {
    let (code, _, stderr) = run(&[("DATABASE_URL", "mysql://root:hunter2@db/x")], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("DATABASE_URL") && stderr.contains("postgres://"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let (code, _, stderr) = run(&[DB, ("SENTRY_DSN", "not-a-dsn-secretkey")], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("SENTRY_DSN") && !stderr.contains("secretkey"), "{stderr}");
}

#[test]
fn consumer_role_needs_database_url() {
    let (code, _, stderr) = run(&[], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("DATABASE_URL is not set"), "{stderr}");
}

#[test]
fn help_lists_every_variable_and_version_prints_the_version() {
    let (code, stdout, _) = run(&[], &["--help"]);
    assert_eq!(code, Some(0));
    for var in ["KAFKA_BROKERS", "DATABASE_URL", "INTERVAL_SECONDS", "IMAGE_VARIANT", "ALLOWED_IMAGE_HOSTS", "SENTRY_DSN"] {
        assert!(stdout.contains(var), "--help lacks {var}");
    }
    assert!(stdout.contains("migrate"));
    let (code, stdout, _) = run(&[], &["--version"]);
    assert_eq!((code, stdout.trim()), (Some(0), concat!("nasa-ingest ", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn migrate_creates_the_table_and_keeps_the_password_out_of_the_log() {
    let db = TestDb::create();
    let url_with_password = db.url.replace("postgres@", "postgres:not-needed-secret@");
    let (code, stdout, stderr) = run(&[("DATABASE_URL", &url_with_password)], &["migrate"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("not-needed-secret") && !stderr.contains("not-needed-secret"));
    assert!(stdout.contains("migrations applied"), "{stdout}");
    assert!(db.rows().is_empty());
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT nasa_id, image_bytes, sha256 FROM images").execute(&mut db.conn()).expect("table exists");
    // Again: nothing left to apply, still success.
    assert_eq!(run(&[("DATABASE_URL", &db.url)], &["migrate"]).0, Some(0));
}

/// `healthcheck` (the image's HEALTHCHECK) asks /healthz where HTTP_ADDR says, 0.0.0.0 as
/// 127.0.0.1: exit 0 on a 200, else 1 with one line on stderr; never 2, which Docker reserves.
#[test]
fn healthcheck_asks_healthz_on_http_addr() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = asked.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned();
            let ok = request.starts_with("GET /healthz ");
            sink.lock().unwrap().push(request);
            let reply: &[u8] =
                if ok { b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" } else { b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n" };
            let _ = conn.write_all(reply);
        }
    });
    let addr = format!("0.0.0.0:{port}");
    let (code, stdout, stderr) = run(&[DB, ("HTTP_ADDR", &addr)], &["healthcheck"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty() && stderr.is_empty(), "silent when healthy: {stdout}{stderr}");
    assert_eq!(asked.lock().unwrap().as_slice(), ["GET /healthz HTTP/1.1"]);

    let dead = format!("127.0.0.1:{}", free_port());
    let (code, stdout, stderr) = run(&[DB, ("HTTP_ADDR", &dead)], &["healthcheck"]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty() && stderr.lines().count() == 1 && stderr.contains(&dead), "{stderr}");

    let (code, _, stderr) = run(&[DB, ("HTTP_ADDR", "nowhere")], &["healthcheck"]);
    assert_eq!(code, Some(1), "a bad setting is unhealthy, not Docker's reserved 2: {stderr}");
    assert!(stderr.contains("HTTP_ADDR"), "{stderr}");
}

fn check_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "HTTP_ADDR", &format!("127.0.0.1:{}", free_port()));
    env
}

fn run_check(env: &[(String, String)]) -> (Option<i32>, Vec<String>, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, stdout, stderr) = run(&env, &["check"]);
    (code, stdout.lines().map(str::to_owned).collect(), stderr)
}

/// The line of the check `name`.
fn line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines.iter().find(|l| l[4..].starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
}

/// `check` against everything working: one ✓ line per dependency of both roles, exit 0.
#[test]
fn check_passes_against_a_healthy_setup() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let started = std::time::Instant::now();
    let (code, lines, stderr) = run_check(&check_env(&broker, &db, &nasa, dir.path()));
    eprintln!("check took {:.2} s:\n{}", started.elapsed().as_secs_f64(), lines.join("\n"));
    assert_eq!(code, Some(0), "{lines:#?} {stderr}");
    for name in ["configuration", "Kafka", "consumer group", "Postgres", "migrations", "NASA API", "DATA_DIR", "HTTP_ADDR"] {
        assert!(line(&lines, name).starts_with("✓ "), "{lines:#?}");
    }
    let group = line(&lines, "consumer group");
    assert!(group.contains("KAFKA_GROUP_PROTOCOL=consumer accepted") && group.contains("KAFKA_SESSION_TIMEOUT_SECS=10 within"), "{group}");
    assert!(line(&lines, "migrations").contains("pending"), "a fresh database has migrations to apply: {lines:#?}");
    assert!(line(&lines, "Kafka").contains(&broker.topic), "{lines:#?}");
}

/// `check` against a broken setup: each broken dependency is a ✗ line naming the variable to
/// fix, the working one still ✓, exit 1; the password is never printed.
#[test]
fn check_fails_against_a_broken_setup_naming_what_to_fix() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = check_env(&broker, &db, &nasa, dir.path());
    let closed = format!("127.0.0.1:{}", free_port());
    set(&mut env, "KAFKA_BROKERS", &closed);
    set(&mut env, "DATABASE_URL", &db.url.replace("postgres://postgres@", "postgres://no_such_role:s3cret@"));
    // A regular file where DATA_DIR's parent should be: not writable, even for root.
    std::fs::write(dir.path().join("file"), b"").unwrap();
    set(&mut env, "DATA_DIR", &dir.path().join("file/data").display().to_string());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    set(&mut env, "HTTP_ADDR", &taken_addr);
    let (code, lines, stderr) = run_check(&env);
    eprintln!("{}", lines.join("\n"));
    assert_eq!(code, Some(1), "{lines:#?} {stderr}");
    let kafka = line(&lines, "Kafka");
    assert!(
        kafka.starts_with("✗ ") && kafka.contains(&closed) && kafka.contains("connection refused") && kafka.contains("KAFKA_BROKERS"),
        "{kafka}"
    );
    let postgres = line(&lines, "Postgres");
    assert!(postgres.starts_with("✗ ") && postgres.contains("no_such_role") && postgres.contains("check DATABASE_URL"), "{postgres}");
    let data_dir = line(&lines, "DATA_DIR");
    assert!(data_dir.starts_with("✗ ") && data_dir.contains("DATA_DIR=") && data_dir.contains("not writable"), "{data_dir}");
    let http_addr = line(&lines, "HTTP_ADDR");
    assert!(http_addr.starts_with("✗ ") && http_addr.contains(&format!("HTTP_ADDR={taken_addr}")), "{http_addr}");
    assert!(line(&lines, "NASA API").starts_with("✓ "), "{lines:#?}");
    assert!(!lines.join("\n").contains("s3cret") && !stderr.contains("s3cret"));
}

/// Settings the daemon cannot start with, found only at start, exit 2 like a bad value, with
/// one line naming the variable: HTTP_ADDR in use (with the address), DATA_DIR not writable.
#[test]
fn http_addr_in_use_and_data_dir_unwritable_exit_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let data_dir = dir.path().display().to_string();
    let closed = format!("127.0.0.1:{}", free_port());
    let base = [DB, ("KAFKA_BROKERS", closed.as_str()), ("DATA_DIR", data_dir.as_str())];

    let (code, stdout, stderr) = run(&[&base[..], &[("HTTP_ADDR", taken_addr.as_str())]].concat(), &["run"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let naming: Vec<&str> = stdout.lines().chain(stderr.lines()).filter(|l| l.contains("HTTP_ADDR")).collect();
    assert_eq!(naming.len(), 1, "{stdout}{stderr}");
    assert!(naming[0].contains(&format!("HTTP_ADDR={taken_addr}")) && naming[0].contains("in use"), "{}", naming[0]);

    std::fs::write(dir.path().join("file"), b"").unwrap();
    let unwritable = dir.path().join("file/data").display().to_string();
    let free = format!("127.0.0.1:{}", free_port());
    let env = [DB, ("KAFKA_BROKERS", closed.as_str()), ("DATA_DIR", unwritable.as_str()), ("HTTP_ADDR", free.as_str())];
    let (code, stdout, stderr) = run(&env, &["run"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let naming: Vec<&str> = stdout.lines().chain(stderr.lines()).filter(|l| l.contains("DATA_DIR")).collect();
    assert_eq!(naming.len(), 1, "{stdout}{stderr}");
    assert!(naming[0].contains(&format!("DATA_DIR={unwritable} is not writable")), "{}", naming[0]);
}

/// Every bad setting at once, one line each, exit 2: a person fixes them in one go.
#[test]
fn every_bad_setting_is_reported_at_once() {
    let (code, stdout, stderr) = run(&[("INTERVAL_SECONDS", "soon"), ("HTTP_ADDR", "nowhere"), ("LOG_FORMAT", "fancy")], &[]);
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for (line, var) in lines.iter().zip(["DATABASE_URL", "INTERVAL_SECONDS", "HTTP_ADDR", "LOG_FORMAT"]) {
        assert!(line.starts_with(&format!("nasa-ingest: {var}")), "{line}");
    }
}

/// --help groups the settings, shows each default, and never the values set in the environment.
#[test]
fn help_groups_the_settings_with_their_defaults_and_hides_values() {
    let (code, stdout, _) = run(&[("KAFKA_BROKERS", "secret-host:1"), ("QUERY", "private-term")], &["--help"]);
    assert_eq!(code, Some(0));
    for heading in ["Kafka:", "Postgres:", "Roles:", "Retries and restarts:", "HTTP endpoint:", "Logs and Sentry:"] {
        assert!(stdout.lines().any(|l| l == heading), "no {heading} group:\n{stdout}");
    }
    assert!(stdout.contains("[default: 30] [env: INTERVAL_SECONDS]"), "{stdout}");
    assert!(!stdout.contains("secret-host") && !stdout.contains("private-term"), "{stdout}");
}

/// scripts/run refuses what it does not know (before installing or starting anything), and the
/// scripts' messages carry no colour codes when they are not on a terminal.
#[test]
fn scripts_run_refuses_unknown_arguments_and_writes_plain_text_off_a_terminal() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/run")).arg("--fake-nasaa").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim(), "scripts/run: unknown argument '--fake-nasaa'; usage: scripts/run [--fake-nasa]");
    let out = Command::new("bash").current_dir(root).args(["-c", ". scripts/lib.sh; say hello"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "==> hello\n");
}

/// `check` names the process that holds DATA_DIR's outbox (another producer would overwrite its
/// pending event).
#[test]
fn check_names_the_process_holding_data_dir() {
    let (nasa, dir) = (fake_nasa(), tempfile::tempdir().unwrap());
    let _held = nasa_ingest::datadir::DataDirLock::acquire(dir.path()).unwrap();
    let data_dir = dir.path().display().to_string();
    let closed = format!("127.0.0.1:{}", free_port());
    let http_addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("CONSUMER_ENABLED", "false"),
        ("KAFKA_BROKERS", closed.as_str()),
        ("NASA_API_URL", nasa.url.as_str()),
        ("DATA_DIR", data_dir.as_str()),
        ("HTTP_ADDR", http_addr.as_str()),
    ];
    let (code, stdout, stderr) = run(&env, &["check"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let data_dir_line = line(&lines, "DATA_DIR");
    assert!(data_dir_line.starts_with("✗ ") && data_dir_line.contains(&format!("pid {}", std::process::id())), "{data_dir_line}");
    assert!(data_dir_line.contains("in use by another"), "{data_dir_line}");
}

/// STARTUP_TIMEOUT_SECS: a start-up that cannot reach its dependencies in time exits 1 with one
/// line naming the variable and what it waited for.
#[test]
fn startup_timeout_exits_1_naming_what_was_not_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    let http_addr = format!("127.0.0.1:{}", free_port());
    let data_dir = dir.path().display().to_string();
    let env = [
        ("CONSUMER_ENABLED", "false"),
        ("KAFKA_BROKERS", closed.as_str()),
        ("DATA_DIR", data_dir.as_str()),
        ("HTTP_ADDR", http_addr.as_str()),
        ("STARTUP_TIMEOUT_SECS", "2"),
    ];
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run(&env, &["run"]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(6), "{took:?}");
    let line = stdout.lines().find(|l| l.contains("cannot start")).unwrap_or_else(|| panic!("{stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let why = v["error.message"].as_str().unwrap();
    assert!(why.contains("STARTUP_TIMEOUT_SECS=2") && why.contains("Kafka unreachable since") && why.contains(&closed), "{why}");
}
