//! The failure cases of qa-cases.md, against the real broker and Postgres. Each asserts that
//! nothing is lost and nothing is duplicated.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn producer_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "CONSUMER_ENABLED", "false");
    env.retain(|(k, _)| k != "DATABASE_URL");
    set(&mut env, "PUBLISH_TIMEOUT_MS", "1000");
    env
}

fn consumer_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "PRODUCER_ENABLED", "false");
    env
}

/// event_id → how often it is on the topic.
fn event_ids(broker: &Broker, at_least: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in broker.read_all(&broker.topic, at_least, Duration::from_secs(20)) {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        *seen.entry(v["event_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn label_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// TC-04: the broker dies while the producer holds an event. It logs `Kafka unavailable` with
/// growing delays, asks the API for nothing new, and once the broker is back (with its data)
/// sends that same event, which is then on the topic exactly once.
#[test]
fn tc04_kafka_outage_keeps_the_same_event_until_the_broker_is_back() {
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = Daemon::spawn(&producer_env(&broker, &db, &nasa, dir.path()));
    daemon.wait_for_log("sent", 1, Duration::from_secs(60));
    // Warnings from before the outage (a first send can time out while the new topic settles) are not the point.
    let earlier = daemon.logs_with("Kafka unavailable").len();
    broker.kill();

    daemon.wait_for_log("Kafka unavailable", earlier + 4, Duration::from_secs(60));
    let searches_during_outage = nasa.state.searches.load(Ordering::SeqCst);
    let warnings = daemon.logs_with("Kafka unavailable").split_off(earlier);
    let stuck = warnings[0]["labels.event_id"].as_str().unwrap().to_owned();
    assert!(warnings.iter().all(|w| w["labels.event_id"] == stuck.as_str()), "the SAME event is retried");
    assert!(warnings.iter().all(|w| w["log.level"] == "warn"), "retries are WARN, not ERROR");
    let delays: Vec<u64> = warnings.iter().map(|w| label_u64(w, "labels.delay_ms")).collect();
    assert!(delays.windows(2).all(|d| d[1] > d[0]), "growing delays: {delays:?}");
    daemon.wait_for_log("Kafka unavailable", earlier + 6, Duration::from_secs(60));
    assert_eq!(nasa.state.searches.load(Ordering::SeqCst), searches_during_outage, "no new events meanwhile");

    broker.resume();
    wait_until(Duration::from_secs(60), "the stuck event sent", || {
        daemon.logs_with("sent").iter().any(|l| l["labels.event_id"] == stuck.as_str())
    });
    daemon.wait_for_log("sent", 3, Duration::from_secs(60));
    // What was sent before the topic is read must be on it (the daemon goes on sending meanwhile).
    let sent: Vec<String> = daemon.logs_with("sent").iter().map(|l| l["labels.event_id"].as_str().unwrap().to_owned()).collect();
    let on_topic = event_ids(&broker, sent.len());
    assert_eq!(on_topic.get(&stuck), Some(&1), "the stuck event arrives exactly once: {on_topic:?}");
    assert!(on_topic.values().all(|n| *n == 1), "no event twice: {on_topic:?}");
    for id in &sent {
        assert!(on_topic.contains_key(id), "sent event {id} is on the topic");
    }
}

/// TC-05: the API answers 503, then hangs, then refuses connections. The daemon stays up, logs
/// WARN with backoff, and stores images again once the API is back.
#[test]
fn tc05_nasa_api_outage_is_ridden_out() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "NASA_TIMEOUT_SECONDS", "1");
    set(&mut env, "QUERY", "moon");
    let mut daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(60), "a first image stored", || !db.rows().is_empty());

    let failures = |d: &Daemon| d.logs_with("NASA API request failed, will retry");
    nasa.state.set_api_mode(ApiMode::Status(503));
    wait_until(Duration::from_secs(30), "a 503 noticed", || {
        failures(&daemon).iter().any(|l| l["error.message"].as_str().unwrap().contains("503"))
    });
    nasa.state.set_api_mode(ApiMode::Hang);
    wait_until(Duration::from_secs(30), "a timeout noticed", || failures(&daemon).iter().any(|l| l["error.type"] == "nasa_timeout"));
    let (addr, state) = nasa.stop();
    state.set_api_mode(ApiMode::Normal);
    wait_until(Duration::from_secs(30), "refused connections noticed", || {
        failures(&daemon).iter().any(|l| l["error.type"] == "nasa_unreachable")
    });
    let all = failures(&daemon);
    assert!(all.iter().all(|l| l["log.level"] == "warn"));
    let delays: Vec<u64> = all.iter().map(|l| label_u64(l, "labels.delay_ms")).collect();
    assert!(delays.windows(2).all(|d| d[1] >= d[0] || d[0] >= 1000), "backoff grows up to its max: {delays:?}");
    assert!(daemon.try_wait().is_none(), "the daemon stays up");

    let stored_before = db.rows().len();
    let nasa = FakeNasa::start_on(&fixtures_dir(), addr, state).expect("the API comes back on the same port");
    wait_until(Duration::from_secs(60), "images stored again", || db.rows().len() > stored_before);
    assert!(nasa.state.searches.load(Ordering::SeqCst) > 0);
}

/// TC-06: a message that keeps failing transiently is never committed (the group's lag shows
/// it); after a restart of the daemon it is read again and stored once.
#[test]
fn tc06_transient_failure_is_not_committed_and_is_processed_after_restart() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    let env = consumer_env(&broker, &db, &nasa, dir.path());
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    nasa.state.set_image_status("as17-134-20384", 503);
    broker.produce(&broker.topic, Some("as17-134-20384"), event_json(&nasa, "as17-134-20384").as_bytes());

    let mut daemon = Daemon::spawn(&env);
    let retries = |d: &Daemon| d.logs_with("event failed, will retry the same message");
    wait_until(Duration::from_secs(60), "three retries", || retries(&daemon).len() >= 3);
    assert!(retries(&daemon).iter().all(|l| l["labels.offset"] == 0 && l["error.type"] == "image_http_5xx"));
    assert_eq!(broker.committed(&group, &broker.topic, 1)[0].unwrap_or(0), 0, "nothing committed past it: lag 1");
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(broker.committed(&group, &broker.topic, 1)[0].unwrap_or(0), 0, "not committed past it at shutdown either");
    assert!(db.rows().is_empty());

    nasa.state.image_status.lock().unwrap().clear();
    let daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(60), "stored after the restart", || db.rows().len() == 1);
    wait_until(Duration::from_secs(20), "committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(1)]);
    assert_eq!(daemon.logs_with("saved to DB").len(), 1);
}

/// Postgres cut off for a while: nothing is committed meanwhile; everything is stored after.
#[test]
fn postgres_outage_commits_nothing_and_loses_nothing() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    let proxy = TcpProxy::start("127.0.0.1:5432");
    let mut env = consumer_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "DATABASE_URL", &db.url.replace(":5432/", &format!(":{}/", proxy.port)));
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let ids = ["as11-40-5874", "as12-46-6749", "as17-134-20384", "as17-148-22727", "iss026-s-001", "iss042e340851"];
    for id in &ids[..2] {
        broker.produce(&broker.topic, Some(id), event_json(&nasa, id).as_bytes());
    }
    let daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(60), "2 stored, 2 committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(2)]);

    proxy.cut();
    for id in &ids[2..] {
        broker.produce(&broker.topic, Some(id), event_json(&nasa, id).as_bytes());
    }
    wait_until(Duration::from_secs(60), "Postgres failures retried", || {
        daemon.logs_with("event failed, will retry the same message").iter().filter(|l| l["error.type"] == "postgres").count() >= 4
    });
    assert_eq!(broker.committed(&group, &broker.topic, 1), vec![Some(2)], "nothing committed while Postgres is down");

    proxy.restore();
    wait_until(Duration::from_secs(90), "all stored and committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(6)]);
    let mut stored: Vec<String> = db.rows().into_iter().map(|r| r.nasa_id).collect();
    stored.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(stored, expected);
}

/// kill -9 after an image is stored but before its offset could be committed (an earlier
/// event is still downloading): after a restart it is read again, skipped as a duplicate, and
/// the earlier one is stored. No duplicate row, nothing missing.
#[test]
fn kill_9_between_store_and_commit_leaves_no_duplicate_and_no_gap() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    let env = consumer_env(&broker, &db, &nasa, dir.path());
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    nasa.state.slow_image("as11-40-5874", Duration::from_secs(30));
    broker.produce(&broker.topic, Some("as11-40-5874"), event_json(&nasa, "as11-40-5874").as_bytes());
    broker.produce(&broker.topic, Some("PIA00407"), event_json(&nasa, "PIA00407").as_bytes());

    let mut daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(60), "the second event stored", || db.rows().iter().any(|r| r.nasa_id == "PIA00407"));
    let committed = broker.committed(&group, &broker.topic, 1)[0];
    assert!(committed.unwrap_or(0) == 0, "offset 0 is unfinished: the commit cannot pass it ({committed:?})");
    daemon.kill();

    nasa.state.slow_images.lock().unwrap().clear();
    let daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(60), "both committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(2)]);
    let mut ids: Vec<String> = db.rows().into_iter().map(|r| r.nasa_id).collect();
    ids.sort();
    assert_eq!(ids, vec!["PIA00407", "as11-40-5874"]);
    let dups = daemon.logs_with("duplicate skipped");
    assert!(dups.iter().any(|l| l["labels.nasa_id"] == "PIA00407"), "the re-read event is recognised: {dups:?}");
}

/// kill -9 while the broker is down and an event is pending: the next run delivers it, in the
/// trace it started in (the outbox keeps its `traceparent`).
#[test]
fn kill_9_with_a_pending_event_during_an_outage_still_delivers_it() {
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let env = producer_env(&broker, &db, &nasa, dir.path());
    let mut daemon = Daemon::spawn(&env);
    daemon.wait_for_log("sent", 1, Duration::from_secs(60));
    let earlier = daemon.logs_with("Kafka unavailable").len();
    broker.kill();
    daemon.wait_for_log("Kafka unavailable", earlier + 1, Duration::from_secs(60));
    let unavailable = daemon.logs_with("Kafka unavailable")[earlier].clone();
    let pending = unavailable["labels.event_id"].as_str().unwrap().to_owned();
    let trace_id = trace_id_of(&unavailable).expect("the retry line is in the event's trace").to_owned();
    let found = daemon.logs_with("found image").into_iter().find(|l| l["labels.event_id"] == pending.as_str()).unwrap();
    assert_eq!(trace_id_of(&found), Some(trace_id.as_str()), "fetched and published in one trace");
    daemon.kill();
    let outbox = std::fs::read_to_string(dir.path().join("outbox/pending.json")).expect("the event is in the outbox");
    assert!(outbox.contains(&pending));
    assert!(outbox.contains(&format!("\"traceparent\":\"00-{trace_id}-{}-01\"", unavailable["span.id"].as_str().unwrap())), "{outbox}");

    let daemon = Daemon::spawn(&env);
    broker.resume();
    wait_until(Duration::from_secs(90), "the pending event sent by the new run", || {
        daemon.logs_with("sent").iter().any(|l| l["labels.event_id"] == pending.as_str())
    });
    assert!(!daemon.logs_with("publishing the event left pending by the previous run").is_empty());
    let on_topic = event_ids(&broker, daemon.logs_with("sent").len() + 1);
    assert!(on_topic.values().all(|n| *n == 1), "no event twice: {on_topic:?}");
    assert_eq!(on_topic.get(&pending), Some(&1), "{on_topic:?}");
    // The new run's lines and the header on the topic are in the trace it started in before the kill.
    let after = messages(&daemon.lines_in_trace(&trace_id)).into_iter().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(after.first().map(String::as_str), Some("publishing the event left pending by the previous run"), "{after:?}");
    assert_eq!(after.last().map(String::as_str), Some("sent"), "{after:?}");
    let delivered = broker.read_all(&broker.topic, on_topic.len(), Duration::from_secs(20));
    let event = delivered.iter().find(|r| r.payload.windows(pending.len()).any(|w| w == pending.as_bytes())).unwrap();
    assert_eq!(event.trace_id(), Some(trace_id), "{:?}", event.headers);
}

/// Two producers on one DATA_DIR would overwrite each other's pending event: the second one exits 1
/// at once, naming DATA_DIR and the pid that holds it, and the first goes on.
#[test]
fn a_second_daemon_on_the_same_data_dir_exits_1_naming_it_and_the_holder() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let env = producer_env(&broker, &db, &nasa, dir.path());
    let first = Daemon::spawn(&env);
    first.wait_for_log("sent", 1, Duration::from_secs(60));
    let mut second = Daemon::spawn(&env);
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", second.dump());
    let refusal = second.logs_with("cannot start");
    assert_eq!(refusal.len(), 1, "{}", second.dump());
    let why = refusal[0]["error.message"].as_str().unwrap();
    assert!(why.contains("DATA_DIR") && why.contains(&dir.path().display().to_string()), "{why}");
    assert!(why.contains(&format!("pid {}", first.pid())), "{why}");
    assert!(second.logs_with("sent").is_empty(), "the second published nothing");
    let sent = first.logs_with("sent").len();
    first.wait_for_log("sent", sent + 1, Duration::from_secs(30));
}

/// Each kind of poison message ends in images.dlq with its reason; good events are still stored.
#[test]
fn poison_messages_go_to_the_dead_letter_topic_and_the_pipeline_goes_on() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    broker.create_topic(&broker.dlq, 1);
    let mut env = consumer_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "MAX_IMAGE_BYTES", POISON_MAX_IMAGE_BYTES);
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let poison = poison_events(&nasa);
    for (_, payload) in &poison {
        broker.produce(&broker.topic, Some("poison"), payload.as_bytes());
    }
    broker.produce(&broker.topic, Some("as11-40-5874"), event_json(&nasa, "as11-40-5874").as_bytes());

    let daemon = Daemon::spawn(&env);
    let all = Some(poison.len() as i64 + 1);
    wait_until(Duration::from_secs(60), "all committed", || broker.committed(&group, &broker.topic, 1) == vec![all]);
    let rows = db.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].nasa_id, "as11-40-5874");

    let dlq = broker.read_all(&broker.dlq, poison.len(), Duration::from_secs(20));
    assert_eq!(dlq.len(), poison.len());
    let header = |r: &Record, k: &str| r.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone()).unwrap_or_default();
    for (i, (reason, payload)) in poison.iter().enumerate() {
        // Events are handled concurrently: dead letters arrive in any order.
        let record = dlq.iter().find(|r| header(r, "source_offset") == i.to_string()).expect("a dead letter per poison");
        let header = |k: &str| header(record, k);
        assert_eq!(header("reason"), *reason);
        assert_eq!(header("source_partition"), "0");
        assert!(!header("error").is_empty());
        assert_eq!(record.payload, payload.as_bytes(), "the original payload");
    }
    assert_eq!(daemon.logs_with("sent to dead-letter topic").len(), poison.len());
}

/// A panicking actor is restarted after its backoff, visibly; the admin route needs the token.
#[test]
fn a_panicking_actor_is_restarted_after_its_backoff() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "ADMIN_TOKEN", "s3cret");
    set(&mut env, "SUPERVISOR_MIN_BACKOFF_MS", "500");
    set(&mut env, "QUERY", "mars");
    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    wait_until(Duration::from_secs(60), "a first image stored", || !db.rows().is_empty());

    assert_eq!(http(&addr, "POST", "/admin/actors/fetcher/crash", &[]).0, 401);
    assert_eq!(http(&addr, "POST", "/admin/actors/fetcher/crash", &[("Authorization", "Bearer wrong")]).0, 401);
    for actor in ["fetcher", "storer"] {
        let (status, body) = http(&addr, "POST", &format!("/admin/actors/{actor}/crash"), &[("Authorization", "Bearer s3cret")]);
        assert_eq!(status, 202, "{body}");
        wait_until(Duration::from_secs(20), "the restart logged", || {
            daemon.logs_with("actor restarting").iter().any(|l| l["labels.actor"] == actor)
        });
    }
    let restarts = daemon.logs_with("actor restarting");
    for line in &restarts {
        assert_eq!(line["log.level"], "warn");
        assert_eq!(line["labels.restart_count"], 1);
        assert!(label_u64(line, "labels.backoff_ms") >= 500, "{line}");
        assert_eq!(line["error.type"], "panic");
        assert!(line["error.message"].as_str().unwrap().contains("crash of"), "{line}");
    }
    wait_until(Duration::from_secs(20), "both restarted", || {
        let started = daemon.started_actors();
        started.iter().filter(|a| *a == "fetcher").count() == 2 && started.iter().filter(|a| *a == "storer").count() == 2
    });
    let handled = |d: &Daemon| d.logs_with("saved to DB").len() + d.logs_with("duplicate skipped").len();
    let (sent_before, handled_before) = (daemon.logs_with("sent").len(), handled(&daemon));
    wait_until(Duration::from_secs(30), "the restarted actors work: events sent and handled again", || {
        daemon.logs_with("sent").len() >= sent_before + 2 && handled(&daemon) >= handled_before + 2
    });
    assert!(!daemon.logs_with("panic").is_empty(), "the panic itself is logged");
}

/// An actor that keeps failing past its restart limit stops the process with a non-zero code.
#[test]
fn an_actor_failing_past_its_limit_stops_the_process_non_zero() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = producer_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "ADMIN_TOKEN", "s3cret");
    set(&mut env, "SUPERVISOR_MIN_BACKOFF_MS", "100");
    set(&mut env, "SUPERVISOR_MAX_RESTARTS", "2");
    let mut daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    daemon.wait_for_log("actor started", 2, Duration::from_secs(60));
    for n in 1..=3 {
        wait_until(Duration::from_secs(20), "the fetcher running", || {
            daemon.started_actors().iter().filter(|a| *a == "fetcher").count() == n
        });
        let crashed = http(&addr, "POST", "/admin/actors/fetcher/crash", &[("Authorization", "Bearer s3cret")]).0;
        assert_eq!(crashed, 202);
        if n < 3 {
            wait_until(Duration::from_secs(20), "restart logged", || daemon.logs_with("actor restarting").len() == n);
        }
    }
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "non-zero: an orchestrator restarts the process");
    let limit = daemon.logs_with("actor passed its restart limit; shutting down");
    assert_eq!(limit.len(), 1);
    assert_eq!((limit[0]["log.level"].as_str(), limit[0]["labels.actor"].as_str()), (Some("error"), Some("fetcher")));
    daemon.wait_for_log("stopped", 1, Duration::from_secs(1));
}

/// The role flags: only the enabled role's actors run.
#[test]
fn each_role_runs_only_its_own_actors() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let producer = Daemon::spawn(&producer_env(&broker, &db, &nasa, dir.path()));
    producer.wait_for_log("sent", 1, Duration::from_secs(60));
    assert_eq!(producer.started_actors(), vec!["publisher", "fetcher"]);
    drop(producer);

    let searches = nasa.state.searches.load(Ordering::SeqCst);
    let dir2 = tempfile::tempdir().unwrap();
    let consumer = Daemon::spawn(&consumer_env(&broker, &db, &nasa, dir2.path()));
    wait_until(Duration::from_secs(60), "the event stored", || !db.rows().is_empty());
    assert_eq!(consumer.started_actors(), vec!["storer", "downloader", "subscriber"]);
    assert_eq!(nasa.state.searches.load(Ordering::SeqCst), searches, "the consumer role asks the API nothing");
}

/// SIGTERM while Kafka is down still exits 0 within 10 s; the pending event stays in the outbox.
#[test]
fn sigterm_while_kafka_is_down_is_still_prompt() {
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "PUBLISH_TIMEOUT_MS", "1000");
    let mut daemon = Daemon::spawn(&env);
    wait_until(Duration::from_secs(60), "an image stored", || !db.rows().is_empty());
    let earlier = daemon.logs_with("Kafka unavailable").len();
    broker.kill();
    daemon.wait_for_log("Kafka unavailable", earlier + 1, Duration::from_secs(30));
    let (status, took) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(dir.path().join("outbox/pending.json").exists(), "the undelivered event waits in the outbox");
}
