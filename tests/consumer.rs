//! The consumer role under faults outside the named QA cases: a broker that dies and returns,
//! members that die, leave and join (under both group protocols), a panic inside one event's
//! handling, a row Postgres refuses. Each against Apache Kafka and Postgres.

mod common;

use common::*;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

fn consumer_only(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "PRODUCER_ENABLED", "false");
    env
}

/// A consumer-only daemon speaking `protocol` (KAFKA_GROUP_PROTOCOL).
fn member_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path, protocol: &str) -> Vec<(String, String)> {
    let mut env = consumer_only(broker, db, nasa, dir);
    set(&mut env, "KAFKA_GROUP_PROTOCOL", protocol);
    env
}

/// A daemon's settings, (variable, value).
type Settings = Vec<(String, String)>;

/// Settings for `count` consumer-only daemons of one group speaking `protocol`, each with a
/// DATA_DIR of its own and the `extra` settings: (the group, each member's settings, the
/// directories, to keep until the end).
fn group_members(
    (broker, db, nasa): (&Broker, &TestDb, &FakeNasa),
    protocol: &str,
    count: usize,
    extra: &[(&str, &str)],
) -> (String, Vec<Settings>, Vec<tempfile::TempDir>) {
    let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let base = member_env(broker, db, nasa, dirs[0].path(), protocol);
    let envs = dirs
        .iter()
        .map(|dir| {
            let mut env = base.clone();
            set(&mut env, "DATA_DIR", &dir.path().display().to_string());
            extra.iter().for_each(|(k, v)| set(&mut env, k, v));
            env
        })
        .collect();
    (get(&base, "KAFKA_GROUP_ID").to_owned(), envs, dirs)
}

/// The partitions a daemon said it holds last (`labels.assigned` of its last `partitions
/// assigned` or `partitions revoked`: rebalances are incremental, each line says what changed
/// and what is held after).
fn held(daemon: &Daemon) -> Vec<i32> {
    let last = daemon
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["message"] == "partitions assigned" || v["message"] == "partitions revoked");
    last.and_then(|v| serde_json::from_str(v["labels.assigned"].as_str()?).ok()).unwrap_or_default()
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
fn a_replacement_member_gets_the_partitions_at_once_after_sigterm(protocol: &str) {
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    broker.create_topic(&broker.topic, 3);
    let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = member_env(&broker, &db, &nasa, d1.path(), protocol);
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
    eprintln!("{protocol}: after SIGTERM: replacement assigned in {:.1} s", started.elapsed().as_secs_f64());

    second.kill();
    let mut third_env = env.clone();
    set(&mut third_env, "DATA_DIR", &d3.path().display().to_string());
    let started = Instant::now();
    let third = Daemon::spawn(&third_env);
    wait_until(Duration::from_secs(20), "after kill -9: every partition within the session timeout", || held(&third) == vec![0, 1, 2]);
    eprintln!("{protocol}: after kill -9: replacement assigned in {:.1} s", started.elapsed().as_secs_f64());
}

for_both_protocols!(a_replacement_member_gets_the_partitions_at_once_after_sigterm);

/// Three consumer-only daemons on a six-partition topic, a slow image server: one member killed
/// -9 while it holds partitions, one stopped with SIGTERM, one new member joining. Every event is
/// stored exactly once and the group's committed offsets reach the end of every partition.
fn scale_out_members_die_leave_and_join_and_every_event_is_stored_once(protocol: &str) {
    const EVENTS: usize = 600;
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    broker.create_topic(&broker.topic, 6);
    nasa.state.set_image_delay(Duration::from_millis(150));
    let tuning = [("DOWNLOAD_CONCURRENCY", "2"), ("CONSUMER_MAX_IN_FLIGHT", "2"), ("CONSUMER_STALL_SECS", "20")];
    let (group, envs, _dirs) = group_members((&broker, &db, &nasa), protocol, 4, &tuning);
    let mut members: Vec<Daemon> = envs[..3].iter().map(|env| Daemon::spawn(env)).collect();
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
    members.push(Daemon::spawn(&envs[3]));

    wait_until(Duration::from_secs(240), "every event stored", || db.rows_count() >= EVENTS);
    let rows = db.rows();
    let distinct: HashSet<&str> = rows.iter().map(|r| r.nasa_id.as_str()).collect();
    assert_eq!(distinct.len(), rows.len(), "no nasa_id twice");
    assert_eq!(distinct, ids.iter().map(String::as_str).collect(), "exactly the produced events");
    wait_until(Duration::from_secs(30), "committed offsets at the end of every partition", || {
        broker.committed(&group, &broker.topic, 6).iter().map(|o| o.unwrap_or(0)).sum::<i64>() == EVENTS as i64
    });
}

for_both_protocols!(scale_out_members_die_leave_and_join_and_every_event_is_stored_once);

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
fn a_stuck_member_of_the_group_is_noticed_reported_and_outlived(protocol: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 2);
    let mut env = member_env(&broker, &db, &nasa, dir.path(), protocol);
    set(&mut env, "CONSUMER_STALL_SECS", "5");
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let stuck: BaseConsumer =
        plain_member(&broker, &group, protocol).set("client.id", "stuck-member").set("max.poll.interval.ms", "600000").create().unwrap();
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

for_both_protocols!(a_stuck_member_of_the_group_is_noticed_reported_and_outlived);

/// A plain client of `group` speaking `protocol` as the daemon's members do (under classic the
/// assignors must match: cooperative-sticky).
fn plain_member(broker: &Broker, group: &str, protocol: &str) -> rdkafka::config::ClientConfig {
    let mut config = rdkafka::config::ClientConfig::new();
    config
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    if protocol == "classic" {
        config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    config
}

/// The silent member of issue 27, at the level of one member: its hands full (no permit free,
/// as many messages held as it keeps), it pauses fetching, and librdkafka keeps a partition
/// paused across its revocation and re-assignment. A second member joins (half the partitions
/// move to it) and leaves again (they come back): once permits free up, every partition is read
/// to its end. And after the revocation, nothing of the partitions given up is handed out: what
/// the member held of them is dropped then, not at the next assignment.
fn a_member_with_full_hands_reads_every_partition_again_after_each_rebalance(protocol: &str) {
    use nasa_ingest::consumer::{Member, MemberSettings};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const PARTITIONS: i32 = 4;
    let broker = Broker::shared();
    broker.create_topic(&broker.topic, PARTITIONS);
    // More than the member holds (5,000): it pauses with messages of every partition unread.
    broker.produce_many(&broker.topic, (0..12_000).map(|i| (format!("key-{i}"), "{}".to_owned())));
    let group = format!("{}-group", broker.topic);
    let settings = MemberSettings {
        brokers: broker.addr.clone(),
        group_id: group.clone(),
        topic: broker.topic.clone(),
        protocol: protocol.parse().expect("a protocol"),
        session_timeout: Duration::from_secs(10),
        instance_id: None,
        log: slog::Logger::root(slog::Discard, slog::o!()),
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    // (partition, offset) handed out; permits kept while `keep_permits` (no more than given).
    let (delivered, kept) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let keep_permits = Arc::new(AtomicBool::new(true));
    let (sink, keep, keeping) = (delivered.clone(), kept.clone(), keep_permits.clone());
    let member = Member::join(&settings, permits.clone(), move |d| {
        sink.lock().unwrap().push((d.msg.partition(), d.msg.offset()));
        d.tracker.lock().unwrap().finish(d.ticket);
        if keeping.load(Ordering::SeqCst) {
            keep.lock().unwrap().push(d.permit);
        }
    })
    .unwrap();
    let all: Vec<i32> = (0..PARTITIONS).collect();
    wait_until(Duration::from_secs(30), "the member holds every partition", || member.view().assigned == all);
    std::thread::sleep(Duration::from_secs(3)); // it reads until its hands are full, and pauses

    let other = Arc::new(plain_member(&broker, &group, protocol).create::<BaseConsumer>().unwrap());
    other.subscribe(&[&broker.topic]).unwrap();
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (other, polling) = (other.clone(), polling.clone());
        std::thread::spawn(move || {
            while polling.load(Ordering::SeqCst) {
                other.poll(Duration::from_millis(50));
            }
        })
    };
    wait_until(Duration::from_secs(30), "half the partitions move to the second member", || {
        member.view().assigned.len() == PARTITIONS as usize / 2 && other.assignment().is_ok_and(|a| a.count() == PARTITIONS as usize / 2)
    });
    let kept_partitions = member.view().assigned;
    permits.add_permits(50);
    wait_until(Duration::from_secs(10), "50 messages handed out", || delivered.lock().unwrap().len() == 50);
    let given_up: Vec<i32> = delivered.lock().unwrap().iter().map(|&(p, _)| p).filter(|p| !kept_partitions.contains(p)).collect();
    assert!(given_up.is_empty(), "held messages of partitions given up were handed out after the revocation: {given_up:?}");

    // Hands free: what it kept is read to the end, and it stops pausing.
    keep_permits.store(false, Ordering::SeqCst);
    kept.lock().unwrap().clear();
    permits.add_permits(1_000_000);
    let ends = broker.end_offsets(&broker.topic, PARTITIONS);
    let read_to = |partitions: &[i32], within: Duration, what: &str| {
        let end: BTreeMap<i32, i64> = partitions.iter().map(|&p| (p, ends[p as usize] - 1)).collect();
        let read = || {
            let mut last = BTreeMap::new();
            for &(p, o) in delivered.lock().unwrap().iter().filter(|(p, _)| partitions.contains(p)) {
                last.insert(p, o.max(*last.get(&p).unwrap_or(&-1)));
            }
            last
        };
        let deadline = Instant::now() + within;
        while read() != end {
            assert!(Instant::now() < deadline, "{protocol}: {what}: read to {:?}, ends {end:?}", read());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    read_to(&kept_partitions, Duration::from_secs(30), "the partitions kept are read to their end");

    polling.store(false, Ordering::SeqCst);
    poller.join().unwrap();
    drop(Arc::try_unwrap(other).ok().expect("the poller thread is done")); // leaves the group
    wait_until(Duration::from_secs(30), "the partitions come back", || member.view().assigned == all);
    // They were paused when they were revoked, and nothing pauses or resumes the member now.
    read_to(&all, Duration::from_secs(30), "the partitions given back are read to their end");
}

for_both_protocols!(a_member_with_full_hands_reads_every_partition_again_after_each_rebalance);

/// Repeated rebalances under a steady load, with CONSUMER_MAX_IN_FLIGHT=8: a second and a third
/// member join, one leaves with SIGTERM, one dies with kill -9. After each, every partition's
/// committed offset moves again within a bound (after the kill -9, within the session timeout
/// and the bound); no member stores a row of a partition after it logged giving the partition
/// up; at the end every event is stored exactly once.
fn rebalances_under_a_steady_load_leave_no_partition_standing(protocol: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const PARTITIONS: i32 = 6;
    const SESSION: Duration = Duration::from_secs(4);
    const BOUND: Duration = Duration::from_secs(8);
    let (broker, db, nasa) = (Arc::new(Broker::shared()), TestDb::create(), fake_nasa());
    broker.create_topic(&broker.topic, PARTITIONS);
    nasa.state.set_image_delay(Duration::from_millis(50));
    let session = SESSION.as_secs().to_string();
    let tuning = [
        ("CONSUMER_MAX_IN_FLIGHT", "8"),
        ("DOWNLOAD_CONCURRENCY", "2"),
        ("KAFKA_SESSION_TIMEOUT_SECS", session.as_str()),
        // Far beyond the test: a rejoin must not hide a silent member.
        ("CONSUMER_STALL_SECS", "600"),
    ];
    let (group, envs, _dirs) = group_members((&broker, &db, &nasa), protocol, 3, &tuning);
    // 20 events a second, spread over the partitions by their keys.
    let (producing, produced) = (Arc::new(AtomicBool::new(true)), Arc::new(Mutex::new(Vec::<String>::new())));
    let producer = {
        let (broker, producing, produced, url) = (broker.clone(), producing.clone(), produced.clone(), nasa.url.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while producing.load(Ordering::SeqCst) {
                let batch: Vec<String> = (n..n + 2).map(|i| format!("steady-{i:05}")).collect();
                n += 2;
                broker.produce_many(&broker.topic, batch.iter().map(|id| (id.clone(), steady_event(&url, id))));
                produced.lock().unwrap().extend(batch);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Every partition's committed offset moves past where it was at the call, within `bound`.
    let all_move = |what: &str, bound: Duration| {
        let (before, since) = (broker.committed(&group, &broker.topic, PARTITIONS), Instant::now());
        wait_until(bound, &format!("{protocol}: every partition moving {what}"), || {
            broker.committed(&group, &broker.topic, PARTITIONS).iter().zip(&before).all(|(now, was)| now.unwrap_or(0) > was.unwrap_or(0))
        });
        eprintln!("{protocol}: every partition moved {what} within {:.1} s", since.elapsed().as_secs_f64());
    };
    let mut members = vec![Daemon::spawn(&envs[0])];
    wait_until(Duration::from_secs(30), "the first member holds every partition", || held(&members[0]).len() == PARTITIONS as usize);
    all_move("with one member", BOUND * 2);
    for joining in 1..3 {
        members.push(Daemon::spawn(&envs[joining]));
        wait_until(Duration::from_secs(30), "the new member holds partitions", || !held(&members[joining]).is_empty());
        all_move(&format!("after member {joining} joined"), BOUND);
    }
    let (status, _) = members[1].terminate();
    assert_eq!(status.code(), Some(0));
    all_move("after member 1 left with SIGTERM", BOUND);
    eprintln!("{protocol}: killing member 2, which holds {:?}", held(&members[2]));
    members[2].kill();
    all_move("after member 2 was killed with -9", SESSION + BOUND);

    producing.store(false, Ordering::SeqCst);
    producer.join().unwrap();
    let produced: HashSet<String> = produced.lock().unwrap().iter().cloned().collect();
    wait_until(Duration::from_secs(60), "every event stored", || stored_ids(&db) == produced);
    let rows = db.rows();
    assert_eq!(rows.len(), produced.len(), "no event stored twice");
    for member in &members {
        assert_nothing_stored_after_giving_up(member);
    }
}

for_both_protocols!(rebalances_under_a_steady_load_leave_no_partition_standing);

/// An event for `id` whose image is at the fake server at `url`.
fn steady_event(url: &str, id: &str) -> String {
    serde_json::json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4(), "event_type": "image_discovered",
        "nasa_id": id, "image_url": format!("{url}/image/{id}/{id}~medium.jpg"), "title": id, "query": "test",
        "date_created": "2020-01-01T00:00:00Z", "produced_at": chrono::Utc::now(),
    })
    .to_string()
}

/// In the daemon's log, no `saved to DB` of a partition between its `partitions revoked` and
/// its next `partitions assigned`.
fn assert_nothing_stored_after_giving_up(daemon: &Daemon) {
    let mut holds = HashSet::new();
    let partitions = |v: &serde_json::Value| -> Vec<i32> { serde_json::from_str(v["labels.partitions"].as_str().unwrap_or("[]")).unwrap() };
    for v in daemon.lines().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        match v["message"].as_str() {
            Some("partitions assigned") => holds.extend(partitions(&v)),
            Some("partitions revoked") => holds.retain(|p| !partitions(&v).contains(p)),
            Some("saved to DB") => {
                let p = v["labels.partition"].as_i64().unwrap() as i32;
                assert!(holds.contains(&p), "a row of partition {p} stored after the member gave it up: {v}");
            }
            _ => {}
        }
    }
}

/// A broker that refuses the consumer group protocol (as brokers before Kafka 4.0, or with it
/// turned off, do): `check` says so with the fix; a daemon set to `consumer` (the default) stops
/// at start with one ERROR line naming KAFKA_GROUP_PROTOCOL and the fix, exit code 2; one set to
/// `classic` consumes.
#[test]
fn a_broker_refusing_the_consumer_protocol_is_one_error_line_at_start() {
    let (broker, db, nasa, dir) = (Broker::own_classic_only(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    broker.create_topic(&broker.dlq, 1);
    let mut env = consumer_only(&broker, &db, &nasa, dir.path());
    let output = std::process::Command::new(daemon_bin())
        .arg("check")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let group = stdout.lines().find(|l| l.contains("consumer group:")).unwrap_or_else(|| panic!("a consumer group line: {stdout}"));
    assert!(group.starts_with("✗") && group.contains("accept only classic") && group.contains("KAFKA_GROUP_PROTOCOL=classic"), "{group}");
    assert_eq!(output.status.code(), Some(1), "{stdout}");

    let mut refused = Daemon::spawn(&env);
    let status = refused.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "a setting to change");
    let lines: Vec<serde_json::Value> = refused.lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|v| v["log.level"] == "error").collect();
    assert_eq!(errors.len(), 1, "one ERROR line: {errors:#?}");
    let message = errors[0]["error.message"].as_str().unwrap();
    assert!(message.contains("KAFKA_GROUP_PROTOCOL=consumer") && message.contains("set KAFKA_GROUP_PROTOCOL=classic"), "{message}");

    set(&mut env, "KAFKA_GROUP_PROTOCOL", "classic");
    let _classic = Daemon::spawn(&env);
    produce_events(&broker, &nasa, &ids("classic", 2));
    wait_until(Duration::from_secs(60), "stored under the classic protocol", || db.rows_count() == 2);
}

/// Static membership (KAFKA_GROUP_INSTANCE_ID): a member stopped with SIGTERM and started again
/// within the session timeout gets its partitions back, and the other member's are not moved
/// meanwhile; one started right after a kill -9 of its predecessor joins once the broker lets
/// the name go (under `consumer`, after the session timeout; under `classic`, at once).
fn a_static_member_restarted_gets_its_partitions_back_without_moving_the_others(protocol: &str) {
    let (broker, db, nasa) = (Broker::shared(), TestDb::create(), fake_nasa());
    broker.create_topic(&broker.topic, 4);
    let (_, mut envs, _dirs) = group_members((&broker, &db, &nasa), protocol, 2, &[]);
    for (i, env) in envs.iter_mut().enumerate() {
        set(env, "KAFKA_GROUP_INSTANCE_ID", &format!("member-{i}"));
    }
    let (env_a, env_b) = (&envs[0], &envs[1]);
    let mut a = Daemon::spawn(env_a);
    wait_until(Duration::from_secs(30), "the first member holds every partition", || held(&a).len() == 4);
    let b = Daemon::spawn(env_b);
    wait_until(Duration::from_secs(30), "two partitions each", || held(&a).len() == 2 && held(&b).len() == 2);
    let (held_a, held_b) = (held(&a), held(&b));
    let rebalances = |d: &Daemon| d.logs_with("partitions assigned").len() + d.logs_with("partitions revoked").len();
    let b_rebalances = rebalances(&b);

    let (status, _) = a.terminate();
    assert_eq!(status.code(), Some(0));
    let restarted = Instant::now();
    let mut a = Daemon::spawn(env_a);
    wait_until(Duration::from_secs(9), "the restarted member holds its partitions again", || held(&a) == held_a);
    eprintln!("{protocol}: static member back with {held_a:?} {:.1} s after its restart", restarted.elapsed().as_secs_f64());
    assert_eq!((held(&b), rebalances(&b)), (held_b, b_rebalances), "the other member's partitions did not move");

    a.kill();
    let killed = Instant::now();
    let a = Daemon::spawn(env_a);
    wait_until(Duration::from_secs(40), "a replacement of the killed member joins", || {
        held(&a).len() + held(&b).len() == 4 && !held(&a).is_empty()
    });
    eprintln!(
        "{protocol}: replacement of a killed static member holds {:?} {:.1} s after the kill",
        held(&a),
        killed.elapsed().as_secs_f64()
    );
}

for_both_protocols!(a_static_member_restarted_gets_its_partitions_back_without_moving_the_others);
