//! The image of deploy/Dockerfile, run for real: Docker on this host, every container on the host
//! network against a Kafka broker, Postgres and the fake NASA API on 127.0.0.1.
//!
//! These need Docker and the built image, so they are ignored by a plain `cargo test`;
//! `scripts/container-test` builds the image and runs them (`cargo test --test container -- --ignored`).
//! CONTAINER_IMAGE names the image (default nasa-ingest:container-test), DOCKER the client.

mod common;

use common::*;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn image() -> String {
    std::env::var("CONTAINER_IMAGE").unwrap_or_else(|_| "nasa-ingest:container-test".into())
}

fn docker_bin() -> String {
    std::env::var("DOCKER").unwrap_or_else(|_| "/usr/bin/docker".into())
}

fn docker(args: &[&str]) -> Output {
    Command::new(docker_bin()).args(args).output().expect("the docker client runs")
}

/// A docker command that must succeed; its stdout, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Tests that use the host's port 8081 (the image's default HTTP_ADDR) take turns.
static PORT_8081: Mutex<()> = Mutex::new(());

/// One container of the image, removed (with its anonymous volumes) when dropped.
struct Container {
    name: String,
}

impl Container {
    /// `docker run -d --network host` of the image with `env`; `extra` goes before the image.
    fn run(env: &[(String, String)], extra: &[&str]) -> Container {
        let name = format!("nasa-ingest-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self::run_named(&name, env, extra)
    }

    fn run_named(name: &str, env: &[(String, String)], extra: &[&str]) -> Container {
        let mut args: Vec<String> =
            ["run", "-d", "--name", name, "--network", "host", "--label", "nasa-ingest-test"].into_iter().map(str::to_owned).collect();
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
        Container { name: name.to_owned() }
    }

    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    fn health(&self) -> String {
        self.inspect("{{.State.Health.Status}}")
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// (stdout lines, stderr lines) of `docker logs`: every run of this container.
    fn log_streams(&self) -> (Vec<String>, Vec<String>) {
        let out = docker(&["logs", &self.name]);
        let lines = |b: &[u8]| String::from_utf8_lossy(b).lines().map(str::to_owned).collect::<Vec<_>>();
        (lines(&out.stdout), lines(&out.stderr))
    }

    /// The parsed log lines (both streams) whose `message` is `message`.
    fn logs_with(&self, message: &str) -> Vec<serde_json::Value> {
        let (out, err) = self.log_streams();
        out.iter()
            .chain(err.iter())
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    fn wait_for_log(&self, message: &str, count: usize, timeout: Duration) {
        wait_until(timeout, &format!("{count} {message:?} line(s) in `docker logs {}`", self.name), || {
            self.logs_with(message).len() >= count
        });
    }

    fn wait_healthy(&self, timeout: Duration) {
        let started = Instant::now();
        wait_until(timeout, &format!("{} healthy (health log: {})", self.name, self.health_log()), || {
            let health = self.health();
            assert_ne!(health, "unhealthy", "{} went unhealthy: {}", self.name, self.health_log());
            health == "healthy"
        });
        eprintln!("{}: healthy after {:.1} s", self.name, started.elapsed().as_secs_f64());
    }

    fn health_log(&self) -> String {
        docker(&["inspect", "-f", "{{json .State.Health}}", &self.name]).stdout.iter().map(|&b| b as char).collect()
    }

    /// The address of the daemon's HTTP endpoint, from its log.
    fn http_addr(&self) -> String {
        self.wait_for_log("HTTP endpoint listening", 1, Duration::from_secs(60));
        self.logs_with("HTTP endpoint listening")[0]["labels.addr"].as_str().unwrap().to_owned()
    }

    fn started_actors(&self) -> Vec<String> {
        self.logs_with("actor started").iter().map(|v| v["labels.actor"].as_str().unwrap().to_owned()).collect()
    }

    /// `docker stop` (SIGTERM, SIGKILL after Docker's 10 s): the exit code and how long it took.
    fn stop(&self) -> (i64, Duration) {
        let started = Instant::now();
        docker_ok(&["stop", &self.name]);
        let took = started.elapsed();
        (self.inspect("{{.State.ExitCode}}").parse().unwrap(), took)
    }

    /// The uid of the container's main process.
    fn process_uid(&self) -> u32 {
        let status = docker_ok(&["exec", &self.name, "cat", "/proc/1/status"]);
        let line = status.lines().find(|l| l.starts_with("Uid:")).expect("a Uid line");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Every line of both streams must be one ECS JSON object; returns how many there were.
    fn assert_every_log_line_is_ecs_json(&self) -> usize {
        let (out, err) = self.log_streams();
        for (stream, lines) in [("stdout", &out), ("stderr", &err)] {
            for line in lines.iter() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("a {stream} line of {} is not JSON ({e}): {line}", self.name));
                assert!(v.is_object(), "{stream}: not an object: {line}");
                for field in ["@timestamp", "log.level", "message", "ecs.version", "service.name"] {
                    assert!(v.get(field).is_some(), "{stream}: no {field}: {line}");
                }
            }
        }
        out.len() + err.len()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (out, err) = self.log_streams();
            eprintln!("---- docker logs {} ----\n{}\n---- stderr ----\n{}", self.name, out.join("\n"), err.join("\n"));
        }
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// A named volume, removed when dropped.
struct Volume(String);

impl Volume {
    fn create() -> Volume {
        let name = format!("nasa-ingest-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        docker_ok(&["volume", "create", &name]);
        Volume(name)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// The test harness's daemon settings for a container: the image's DATA_DIR (/data) and an
/// HTTP_ADDR of its own on the host network (a fixed port: the healthcheck has to find it).
fn container_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa) -> Vec<(String, String)> {
    let scratch = std::path::Path::new("/unused");
    let mut env = daemon_env(broker, db, nasa, scratch);
    env.retain(|(k, _)| k != "DATA_DIR");
    set(&mut env, "HTTP_ADDR", &format!("127.0.0.1:{}", free_port()));
    set(&mut env, "PUBLISH_TIMEOUT_MS", "1000");
    env
}

fn port_is_free(port: u16) -> bool {
    let loopback = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loopback && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

// ---------------------------------------------------------------- the image

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn the_image_is_built_from_this_dockerfile_small_and_non_root() {
    // scripts/container-test labels the image with the Dockerfile it was built from.
    let dockerfile = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    let label = docker_ok(&["image", "inspect", "-f", "{{index .Config.Labels \"nasa-ingest.dockerfile-sha256\"}}", &image()]);
    assert_eq!(label, sha256_hex(&dockerfile), "the image was built from this deploy/Dockerfile, unchanged");
    let size: u64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", &image()]).parse().unwrap();
    eprintln!("image {}: {:.1} MB", image(), size as f64 / 1e6);
    assert!(size < 120_000_000, "image is {size} bytes; the target is under 120 MB");
    assert_eq!(docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", &image()]), "nasa");
    // Run as the image says: a non-root uid, no curl, a binary without debug info.
    let id = docker_ok(&["run", "--rm", "--network", "host", "--entrypoint", "id", &image(), "-u"]);
    assert_eq!(id, "10001");
    let curl = docker(&["run", "--rm", "--network", "host", "--entrypoint", "sh", &image(), "-c", "command -v curl"]);
    assert!(!curl.status.success(), "curl is not in the image");
    let binary: u64 =
        docker_ok(&["run", "--rm", "--network", "host", "--entrypoint", "stat", &image(), "-c", "%s", "/usr/local/bin/nasa-ingest"])
            .parse()
            .unwrap();
    eprintln!("binary: {:.1} MB", binary as f64 / 1e6);
    assert!(binary < 60_000_000, "the binary is {binary} bytes: debug info left in?");
}

// ---------------------------------------------------------------- health

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn healthy_with_the_default_http_addr() {
    let _turn = PORT_8081.lock().unwrap_or_else(|e| e.into_inner());
    assert!(port_is_free(8081), "port 8081 of this host is in use: the image's default HTTP_ADDR needs it (host network)");
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    let mut env = container_env(&broker, &db, &nasa);
    env.retain(|(k, _)| k != "HTTP_ADDR");
    let c = Container::run(&env, &[]);
    assert_eq!(c.http_addr(), "0.0.0.0:8081", "the image's default");
    c.wait_healthy(Duration::from_secs(60));
    assert_eq!(c.process_uid(), 10001, "the daemon runs as a non-root uid");
    assert_eq!(http("127.0.0.1:8081", "GET", "/healthz", &[]).0, 200);
}

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn healthy_with_another_http_addr_and_only_its_own_answer_counts() {
    let _turn = PORT_8081.lock().unwrap_or_else(|e| e.into_inner());
    // Something else on the default port, answering 500: a check of 127.0.0.1:8081 would fail.
    let _imposter = Imposter::start(8081);
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    let env = container_env(&broker, &db, &nasa);
    let addr = get(&env, "HTTP_ADDR").to_owned();
    let c = Container::run(&env, &[]);
    assert_eq!(c.http_addr(), addr);
    c.wait_healthy(Duration::from_secs(60));
    // The same check with a port nobody answers on fails, with a line saying what it asked.
    let dead = format!("HTTP_ADDR=127.0.0.1:{}", free_port());
    let out = docker(&["exec", "-e", &dead, &c.name, "nasa-ingest", "healthcheck"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/healthz"), "{out:?}");
}

/// A server on 127.0.0.1:port answering 500 to everything, while it lives (where the port is free).
struct Imposter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Imposter {
    fn start(port: u16) -> Imposter {
        use std::io::{Read, Write};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            return Imposter { stop, thread: None };
        };
        listener.set_nonblocking(true).unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    // Nothing to accept: look at the stop flag again shortly.
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Imposter { stop, thread: Some(thread) }
    }
}

impl Drop for Imposter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- the pipeline, logs, a crash

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn stores_images_logs_only_ecs_json_and_survives_one_crash() {
    let (broker, db, nasa, sentry) = (Broker::shared(), TestDb::create(), fake_nasa(), FakeSentry::start());
    let mut env = container_env(&broker, &db, &nasa);
    set(&mut env, "ADMIN_TOKEN", "s3cret");
    // With Sentry on: its panic reporting stays, and prints nothing (the restart-limit test has it off).
    set(&mut env, "SENTRY_DSN", &sentry.dsn());
    let c = Container::run(&env, &[]);
    let addr = c.http_addr();
    wait_until(Duration::from_secs(90), "two images stored", || db.rows_count() >= 2);
    for row in db.rows() {
        let served = nasa.state.served(url::Url::parse(&row.image_url).unwrap().path()).expect("served by the fake API");
        assert_eq!(row.sha256, sha256_hex(&served));
    }

    let (status, body) = http(&addr, "POST", "/admin/actors/fetcher/crash", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(status, 202, "{body}");
    c.wait_for_log("actor restarting", 1, Duration::from_secs(30));
    let panic = c.logs_with("panic");
    assert_eq!(panic.len(), 1, "the panic is one log line");
    assert_eq!((panic[0]["log.level"].as_str(), panic[0]["labels.actor"].as_str()), (Some("error"), Some("fetcher")));
    wait_until(Duration::from_secs(30), "the panic reported to Sentry", || {
        sentry.events().iter().any(|e| e["exception"]["values"][0]["type"] == "panic" && e["tags"]["actor"] == "fetcher")
    });
    let rows = db.rows_count();
    wait_until(Duration::from_secs(60), "rows keep coming after the crash", || db.rows_count() >= rows + 2);
    assert!(c.running(), "the container keeps running");
    assert_eq!(c.inspect("{{.RestartCount}}"), "0", "the process itself did not exit");
    let lines = c.assert_every_log_line_is_ecs_json();
    eprintln!("{lines} log lines, every one ECS JSON, the panic included");
}

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn past_the_restart_limit_exits_1_and_docker_restarts_it_storing_within_10_s() {
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    let mut env = container_env(&broker, &db, &nasa);
    set(&mut env, "ADMIN_TOKEN", "s3cret");
    set(&mut env, "SUPERVISOR_MIN_BACKOFF_MS", "100");
    set(&mut env, "SUPERVISOR_MAX_RESTARTS", "1");
    // One topic with images in the fixtures: every fetch finds one (five of the eight default
    // topics have no fixture pages and answer "no images").
    set(&mut env, "QUERY", "moon");
    let c = Container::run(&env, &["--restart", "unless-stopped"]);
    let addr = c.http_addr();
    wait_until(Duration::from_secs(90), "an image stored", || db.rows_count() >= 1);
    let first_start = c.inspect("{{.State.StartedAt}}");
    for n in 1..=2 {
        wait_until(Duration::from_secs(30), "the fetcher running", || c.started_actors().iter().filter(|a| *a == "fetcher").count() == n);
        let (status, body) = http(&addr, "POST", "/admin/actors/fetcher/crash", &[("Authorization", "Bearer s3cret")]);
        assert_eq!(status, 202, "{body}");
        if n == 1 {
            c.wait_for_log("actor restarting", 1, Duration::from_secs(30));
        }
    }
    // The process exits 1 and Docker starts it again.
    c.wait_for_log("actor passed its restart limit; shutting down", 1, Duration::from_secs(30));
    let assigned_before = c.logs_with("partitions assigned").len();
    wait_until(Duration::from_secs(30), "Docker restarted the container", || {
        c.inspect("{{.RestartCount}}") == "1" && c.running() && c.inspect("{{.State.StartedAt}}") != first_start
    });
    let since = chrono::DateTime::parse_from_rfc3339(&first_start).unwrap().timestamp().to_string();
    let until = (chrono::Utc::now().timestamp() + 1).to_string();
    let died = docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={}", c.name),
        "--filter",
        "event=die",
        "--format",
        "{{.Actor.Attributes.exitCode}}",
    ]);
    assert_eq!(died, "1", "the process exited with code 1 (docker events: die)");
    let restarted_at = c.inspect("{{.State.StartedAt}}");
    // The new process: partitions assigned and an image stored, within 10 s of its start.
    wait_until(Duration::from_secs(30), "the new process holds partitions", || c.logs_with("partitions assigned").len() > assigned_before);
    // Its first event handled: stored, or found already stored (the fixtures hold few images, so
    // the restarted process often meets one its predecessor stored).
    let started = chrono::DateTime::parse_from_rfc3339(&restarted_at).unwrap();
    let first_handled = || {
        ["saved to DB", "duplicate skipped"]
            .iter()
            .flat_map(|m| c.logs_with(m))
            .filter_map(|l| {
                let at = logged_at(&l)?;
                (at > started).then(|| (at, l["labels.nasa_id"].as_str().unwrap_or_default().to_owned()))
            })
            .min()
    };
    wait_until(Duration::from_secs(30), "an image handled by the restarted process", || first_handled().is_some());
    let (at, nasa_id) = first_handled().unwrap();
    let took = (at - started.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0;
    assert!(db.rows().iter().any(|r| r.nasa_id == nasa_id), "{nasa_id} is stored");
    eprintln!("restarted process handled its first image ({nasa_id}) {took:.1} s after its start ({restarted_at}); its milestones:");
    for message in [
        "HTTP endpoint listening",
        "migrations applied",
        "actor started",
        "partitions assigned",
        "sent",
        "saved to DB",
        "duplicate skipped",
    ] {
        if let Some(line) = c.logs_with(message).iter().find(|l| l["@timestamp"].as_str().is_some_and(|t| *t > restarted_at[..23])) {
            eprintln!("  {} {message}", line["@timestamp"].as_str().unwrap());
        }
    }
    assert!(took < 10.0, "the first image after the restart was handled {took:.1} s after it");
    c.assert_every_log_line_is_ecs_json();
}

// ---------------------------------------------------------------- docker stop

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn docker_stop_exits_0_promptly_also_while_kafka_is_down() {
    let (broker, db, nasa) = (Broker::own(), TestDb::create(), fake_nasa());
    let env = container_env(&broker, &db, &nasa);
    let up = Container::run(&env, &[]);
    wait_until(Duration::from_secs(90), "an image stored", || db.rows_count() >= 1);
    let (code, took) = up.stop();
    eprintln!("docker stop, Kafka up: exit {code} in {:.1} s", took.as_secs_f64());
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(7), "docker stop took {took:?}");

    let down = Container::run(&env, &[]);
    down.wait_for_log("sent", 1, Duration::from_secs(60));
    broker.stop();
    down.wait_for_log("Kafka unavailable", 1, Duration::from_secs(60));
    let (code, took) = down.stop();
    eprintln!("docker stop, Kafka down: exit {code} in {:.1} s", took.as_secs_f64());
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(7), "docker stop with Kafka down took {took:?}");
    down.assert_every_log_line_is_ecs_json();
}

// ---------------------------------------------------------------- the outbox on a volume

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn the_pending_event_survives_the_container_on_its_volume() {
    let (broker, db, nasa) = (Broker::own(), TestDb::create(), fake_nasa());
    let mut env = container_env(&broker, &db, &nasa);
    set(&mut env, "CONSUMER_ENABLED", "false");
    env.retain(|(k, _)| k != "DATABASE_URL");
    let volume = Volume::create();
    let mount = format!("{}:/data", volume.0);
    let first = Container::run(&env, &["-v", &mount]);
    first.wait_for_log("sent", 1, Duration::from_secs(60));
    broker.stop();
    first.wait_for_log("Kafka unavailable", 1, Duration::from_secs(60));
    // The pending event is the one the broker never acknowledged: `Kafka unavailable` and no `sent`
    // (an event in flight while the broker shut down may still have been acknowledged).
    let mut pending = String::new();
    wait_until(Duration::from_secs(60), "an event pending while the broker is down", || {
        let sent: Vec<_> = first.logs_with("sent").into_iter().map(|l| l["labels.event_id"].clone()).collect();
        let unsent = first.logs_with("Kafka unavailable").into_iter().map(|l| l["labels.event_id"].clone()).find(|id| !sent.contains(id));
        pending = unsent.and_then(|id| id.as_str().map(str::to_owned)).unwrap_or_default();
        !pending.is_empty()
    });
    docker_ok(&["rm", "-f", &first.name]);
    broker.resume();
    let second = Container::run(&env, &["-v", &mount]);
    wait_until(Duration::from_secs(60), "the pending event sent by the new container", || {
        second.logs_with("sent").iter().any(|l| l["labels.event_id"] == pending.as_str())
    });
    let on_topic: Vec<String> = broker
        .read_all(&broker.topic, 1, Duration::from_secs(30))
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
        .filter_map(|v| v["event_id"].as_str().map(str::to_owned))
        .collect();
    assert!(on_topic.contains(&pending), "the pending event is on the topic: {on_topic:?}");
    drop(first);
}

// ---------------------------------------------------------------- roles

#[test]
#[ignore = "needs Docker and the image: scripts/container-test"]
fn each_role_flag_runs_only_its_role() {
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    let mut env = container_env(&broker, &db, &nasa);
    set(&mut env, "CONSUMER_ENABLED", "false");
    env.retain(|(k, _)| k != "DATABASE_URL");
    let producer = Container::run(&env, &[]);
    producer.wait_for_log("sent", 2, Duration::from_secs(60));
    assert_eq!(producer.started_actors(), vec!["publisher", "fetcher"]);
    assert!(producer.logs_with("partitions assigned").is_empty() && producer.logs_with("saved to DB").is_empty());
    let (code, _) = producer.stop();
    assert_eq!(code, 0);
    let records = broker.read_all(&broker.topic, 2, Duration::from_secs(30));
    let published = records.len();
    assert!(published >= 2, "the producer-only container published: {published}");
    let ids: std::collections::BTreeSet<String> = records.iter().filter_map(|r| r.key.clone()).collect();

    let searches = nasa.state.searches.load(std::sync::atomic::Ordering::SeqCst);
    let mut env = container_env(&broker, &db, &nasa);
    set(&mut env, "PRODUCER_ENABLED", "false");
    let consumer = Container::run(&env, &[]);
    wait_until(Duration::from_secs(90), "every published image stored", || {
        let stored: std::collections::BTreeSet<String> = db.rows().into_iter().map(|r| r.nasa_id).collect();
        stored == ids
    });
    assert_eq!(consumer.started_actors(), vec!["storer", "downloader", "subscriber"]);
    assert!(consumer.logs_with("sent").is_empty());
    assert_eq!(nasa.state.searches.load(std::sync::atomic::Ordering::SeqCst), searches, "the consumer asks the API nothing");
    assert_eq!(broker.read_all(&broker.topic, published, Duration::from_secs(30)).len(), published, "and publishes nothing");
}
