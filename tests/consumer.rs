//! The consumer role under faults outside the named QA cases: a broker that dies and returns,
//! members that die, leave and join, a panic inside one event's handling, a row Postgres refuses.
//! Each against Apache Kafka and Postgres.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn consumer_only(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "PRODUCER_ENABLED", "false");
    env
}

/// The partitions a daemon said it holds last (`partitions assigned` / `partitions revoked`).
fn held(daemon: &Daemon) -> Vec<i32> {
    let last = daemon
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["message"] == "partitions assigned" || v["message"] == "partitions revoked");
    match last {
        Some(v) if v["message"] == "partitions assigned" => {
            serde_json::from_str(v["labels.partitions"].as_str().unwrap_or("[]")).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

fn produce_events(broker: &Broker, nasa: &FakeNasa, ids: &[String]) {
    for id in ids {
        broker.produce(&broker.topic, Some(id), event_json(nasa, id).as_bytes());
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

fn stored_ids(db: &TestDb) -> HashSet<String> {
    db.rows().into_iter().map(|r| r.nasa_id).collect()
}

/// Broker killed with -9 and started again on its storage, the consumer running: events produced
/// after the restart are stored within 30 s; the outage is one WARN and one recovery line, not a
/// line per error librdkafka queued meanwhile.
#[test]
fn broker_kill_9_and_restart_the_consumer_comes_back_within_30_s() {
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 3);
    let daemon = Daemon::spawn(&consumer_only(&broker, &db, &nasa, dir.path()));
    produce_events(&broker, &nasa, &ids("before", 3));
    wait_until(Duration::from_secs(60), "3 events stored", || db.rows_count() == 3);

    broker.kill();
    daemon.wait_for_log(
        "Kafka consumer lost every broker; it keeps polling and serves the group as soon as one answers",
        1,
        Duration::from_secs(30),
    );
    // Long enough for librdkafka to queue errors and for the group's session to time out.
    let down = Instant::now();
    wait_until(Duration::from_secs(20), "12 s of outage", || down.elapsed() > Duration::from_secs(12));
    broker.resume();
    let back = Instant::now();
    produce_events(&broker, &nasa, &ids("after", 3));
    wait_until(Duration::from_secs(30), "the events produced after the restart stored", || db.rows_count() == 6);
    eprintln!("stored {:.1} s after the broker came back", back.elapsed().as_secs_f64());
    daemon.wait_for_log("Kafka consumer recovered", 1, Duration::from_secs(10));
    let lost = daemon.logs_with("Kafka consumer lost every broker; it keeps polling and serves the group as soon as one answers");
    assert_eq!(lost.len(), 1, "one WARN for the outage");
    assert!(daemon.logs_with("Kafka consumer error, will retry").is_empty(), "no per-error backoff");
}

/// The same with both roles in one process: the producer's recovery does not hide a stuck consumer.
#[test]
fn broker_kill_9_and_restart_with_both_roles_rows_keep_coming() {
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = Daemon::spawn(&daemon_env(&broker, &db, &nasa, dir.path()));
    wait_until(Duration::from_secs(90), "2 images stored", || db.rows_count() >= 2);
    broker.kill();
    daemon.wait_for_log("Kafka unavailable", 1, Duration::from_secs(30));
    let down = Instant::now();
    wait_until(Duration::from_secs(20), "12 s of outage", || down.elapsed() > Duration::from_secs(12));
    let before = db.rows_count();
    let sent_before = daemon.logs_with("sent").len();
    broker.resume();
    let back = Instant::now();
    // Two events sent after the restart, both stored (the fake serves a handful of ids, some
    // repeat: count rows, which only grow with new ids, against sends).
    wait_until(Duration::from_secs(30), "2 sends after the restart", || daemon.logs_with("sent").len() >= sent_before + 2);
    wait_until(Duration::from_secs(30), "a new row after the restart", || db.rows_count() > before);
    eprintln!("new row {:.1} s after the broker came back", back.elapsed().as_secs_f64());
    let sent: HashSet<String> = daemon.logs_with("sent").iter().map(|l| l["labels.nasa_id"].as_str().unwrap().to_owned()).collect();
    wait_until(Duration::from_secs(30), "every sent image stored", || sent.is_subset(&stored_ids(&db)));
}

/// A consumer-only daemon stopped with SIGTERM leaves the group: its replacement holds
/// partitions within 5 s. After a kill -9, within the session timeout (10 s) and a rebalance.
#[test]
fn a_replacement_member_gets_the_partitions_at_once_after_sigterm() {
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    broker.create_topic(&broker.topic, 3);
    let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = consumer_only(&broker, &db, &nasa, d1.path());
    let mut first = Daemon::spawn(&env);
    wait_until(Duration::from_secs(30), "the first member holds partitions", || held(&first) == vec![0, 1, 2]);
    let (status, _) = first.terminate();
    assert_eq!(status.code(), Some(0));
    first.wait_for_log("left the consumer group", 1, Duration::from_secs(1));

    let mut second_env = env.clone();
    set(&mut second_env, "DATA_DIR", &d2.path().display().to_string());
    let started = Instant::now();
    let mut second = Daemon::spawn(&second_env);
    wait_until(Duration::from_secs(5), "the replacement holds every partition within 5 s", || held(&second) == vec![0, 1, 2]);
    eprintln!("after SIGTERM: replacement assigned in {:.1} s", started.elapsed().as_secs_f64());

    second.kill();
    let mut third_env = env.clone();
    set(&mut third_env, "DATA_DIR", &d3.path().display().to_string());
    let started = Instant::now();
    let third = Daemon::spawn(&third_env);
    wait_until(Duration::from_secs(20), "after kill -9: every partition within the session timeout", || held(&third) == vec![0, 1, 2]);
    eprintln!("after kill -9: replacement assigned in {:.1} s", started.elapsed().as_secs_f64());
}

/// Three consumer-only daemons on a six-partition topic, a slow image server: one member killed
/// -9 while it holds partitions, one stopped with SIGTERM, one new member joining. Every event is
/// stored exactly once and the group's committed offsets reach the end of every partition.
#[test]
fn scale_out_members_die_leave_and_join_and_every_event_is_stored_once() {
    const EVENTS: usize = 600;
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    broker.create_topic(&broker.topic, 6);
    nasa.state.set_image_delay(Duration::from_millis(150));
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let base = consumer_only(&broker, &db, &nasa, dirs[0].path());
    let group = get(&base, "KAFKA_GROUP_ID").to_owned();
    let env_for = |i: usize| {
        let mut env = base.clone();
        set(&mut env, "DATA_DIR", &dirs[i].path().display().to_string());
        set(&mut env, "DOWNLOAD_CONCURRENCY", "2");
        set(&mut env, "CONSUMER_MAX_IN_FLIGHT", "2");
        set(&mut env, "CONSUMER_STALL_SECS", "20");
        env
    };
    let mut members: Vec<Daemon> = (0..3).map(|i| Daemon::spawn(&env_for(i))).collect();
    let ids = ids("scale", EVENTS);
    produce_events(&broker, &nasa, &ids);
    wait_until(Duration::from_secs(60), "each member holds partitions", || members.iter().all(|m| !held(m).is_empty()));

    wait_until(Duration::from_secs(120), "a fifth stored", || db.rows_count() >= EVENTS / 5);
    let victim = members.iter().position(|m| !held(m).is_empty()).unwrap();
    eprintln!("killing member {victim} holding {:?}", held(&members[victim]));
    members[victim].kill();
    wait_until(Duration::from_secs(120), "two fifths stored", || db.rows_count() >= 2 * EVENTS / 5);
    let leaver = (0..3).find(|&i| i != victim).unwrap();
    let (status, took) = members[leaver].terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    eprintln!("member {leaver} stopped with SIGTERM in {took:?}");
    members.push(Daemon::spawn(&env_for(3)));

    wait_until(Duration::from_secs(240), "every event stored", || db.rows_count() >= EVENTS);
    let rows = db.rows();
    let distinct: HashSet<&str> = rows.iter().map(|r| r.nasa_id.as_str()).collect();
    assert_eq!(distinct.len(), rows.len(), "no nasa_id twice");
    assert_eq!(distinct, ids.iter().map(String::as_str).collect(), "exactly the produced events");
    wait_until(Duration::from_secs(30), "committed offsets at the end of every partition", || {
        broker.committed(&group, &broker.topic, 6).iter().map(|o| o.unwrap_or(0)).sum::<i64>() == EVENTS as i64
    });
}

/// A panic inside one event's handling (injected through the admin endpoint) is caught: logged
/// with the event's place, retried, dead-lettered as `panic` after repeated panics; the pipeline
/// goes on, no actor restarts, and offsets reach the end.
#[test]
fn a_panic_while_handling_an_event_is_caught_retried_and_dead_lettered() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    broker.create_topic(&broker.dlq, 1);
    let mut env = consumer_only(&broker, &db, &nasa, dir.path());
    set(&mut env, "ADMIN_TOKEN", "t0ken");
    set(&mut env, "CONSUMER_MAX_IN_FLIGHT", "1");
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    let (code, _) = http(&addr, "POST", "/admin/events/panic?count=4", &[("Authorization", "Bearer t0ken")]);
    assert_eq!(code, 202);
    // One at a time: the first event panics three times (dead-lettered), the second once (stored).
    let ids = ids("panicky", 3);
    produce_events(&broker, &nasa, &ids);

    wait_until(Duration::from_secs(60), "all 3 committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(3)]);
    let panics = daemon.logs_with("event handling panicked; the event is retried");
    assert_eq!(panics.len(), 4, "each panic logged");
    assert_eq!(panics[0]["labels.nasa_id"], ids[0].as_str());
    assert_eq!(panics[0]["labels.partition"], 0);
    assert_eq!(panics[0]["labels.offset"], 0);
    assert_eq!(stored_ids(&db), ids[1..].iter().cloned().collect(), "the others are stored");
    let dlq = broker.read_all(&broker.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].key.as_deref(), Some(ids[0].as_str()));
    assert!(dlq[0].headers.contains(&("reason".into(), "panic".into())), "{:?}", dlq[0].headers);
    assert!(daemon.logs_with("actor restarting").is_empty(), "no actor died of it");
}

/// A row Postgres refuses (a nasa_id too long for its index) goes to the dead-letter topic as
/// `db_rejected`; the events after it on the same partition are stored and committed.
#[test]
fn a_row_postgres_refuses_is_dead_lettered_and_the_partition_moves_on() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    broker.create_topic(&broker.dlq, 1);
    let env = consumer_only(&broker, &db, &nasa, dir.path());
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let long_id: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..10_000).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect()
    };
    let mut bad: serde_json::Value = serde_json::from_str(&event_json(&nasa, "as11-40-5874")).unwrap();
    bad["nasa_id"] = long_id.clone().into();
    broker.produce(&broker.topic, Some("too-long"), bad.to_string().as_bytes());
    produce_events(&broker, &nasa, &["PIA00407".to_owned(), "as12-46-6749".to_owned()]);
    let daemon = Daemon::spawn(&env);

    wait_until(Duration::from_secs(60), "all 3 committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(3)]);
    assert_eq!(stored_ids(&db), HashSet::from(["PIA00407".to_owned(), "as12-46-6749".to_owned()]));
    let dlq = broker.read_all(&broker.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0].headers.contains(&("reason".into(), "db_rejected".into())), "{:?}", dlq[0].headers);
    let error = &dlq[0].headers.iter().find(|(k, _)| k == "error").unwrap().1;
    assert!(error.contains("index row"), "Postgres's reason is kept: {error}");
    assert!(!daemon.logs_with("sent to dead-letter topic").is_empty());
}

/// A member that takes partitions and stops polling (a plain client with a long
/// `max.poll.interval.ms`) holds the group: the daemon notices within CONSUMER_STALL_SECS, says
/// which partitions and who holds them, answers 503 on /readyz, rejoins at most once per window;
/// once the stuck member is gone it takes the partitions and stores everything.
#[test]
fn a_stuck_member_of_the_group_is_noticed_reported_and_outlived() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 2);
    let mut env = consumer_only(&broker, &db, &nasa, dir.path());
    set(&mut env, "CONSUMER_STALL_SECS", "5");
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let stuck: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", &group)
        .set("client.id", "stuck-member")
        .set("max.poll.interval.ms", "600000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    stuck.subscribe(&[&broker.topic]).unwrap();
    wait_until(Duration::from_secs(30), "the stuck member holds both partitions", || {
        stuck.poll(Duration::from_millis(100));
        stuck.assignment().map(|a| a.count()).unwrap_or(0) == 2
    });
    let ids = ids("held", 4);
    produce_events(&broker, &nasa, &ids);
    // From here on it never polls again: it heartbeats, and holds its partitions.

    let daemon = Daemon::spawn(&env);
    let addr = daemon.http_addr();
    daemon.wait_for_log("consumer stalled", 1, Duration::from_secs(40));
    let warn = &daemon.logs_with("consumer stalled")[0];
    let reason = warn["error.message"].as_str().unwrap();
    assert!(reason.contains("partition ") && reason.contains("held by stuck-member"), "names the partitions and their holder: {reason}");
    let (code, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("consumer stalled"), "{body}");
    daemon.wait_for_log("consumer rejoining the group as a new member", 1, Duration::from_secs(20));
    let first_rejoin = Instant::now();
    let status = http_json(&addr, "GET", "/status", None).1;
    let subscriber = status["actors"].as_array().unwrap().iter().find(|a| a["name"] == "subscriber").unwrap().clone();
    assert!(subscriber["restarts"].as_u64().unwrap() >= 1, "a rejoin is a restart of the subscriber: {subscriber}");

    wait_until(Duration::from_secs(30), "a while for more rejoins", || first_rejoin.elapsed() > Duration::from_secs(12));
    let rejoins = daemon.logs_with("consumer rejoining the group as a new member").len();
    assert!(rejoins <= 4, "at most one rejoin per 5 s window, not one per check: {rejoins}");

    drop(stuck); // leaves the group
    wait_until(Duration::from_secs(60), "everything stored once the stuck member is gone", || db.rows_count() == ids.len());
    wait_until(Duration::from_secs(30), "ready again", || http(&addr, "GET", "/readyz", &[]).0 == 200);
}
