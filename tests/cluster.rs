//! A three-broker Apache Kafka cluster (KRaft, each node broker and controller), topics with
//! three replicas and `min.insync.replicas=2`: what users meet when they scale. One cluster serves
//! the tests of this file one at a time; each brings every node back before it starts.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static CLUSTER: OnceLock<Broker> = OnceLock::new();

/// The cluster, all nodes up, with topic names of this test's own.
fn cluster() -> (MutexGuard<'static, ()>, Broker) {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = CLUSTER.get_or_init(Broker::cluster);
    cluster.ensure_all_up();
    (turn, cluster.with_new_topics())
}

/// Both roles against the cluster, with a publish timeout short enough to see a failover.
fn both_roles(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Daemon {
    both_roles_speaking(broker, db, nasa, dir, "consumer")
}

/// The same, its consumer speaking `protocol` (KAFKA_GROUP_PROTOCOL).
fn both_roles_speaking(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path, protocol: &str) -> Daemon {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "PUBLISH_TIMEOUT_MS", "3000");
    set(&mut env, "KAFKA_GROUP_PROTOCOL", protocol);
    Daemon::spawn(&env)
}

/// nasa_id → how often it is on the events topic.
fn ids_on_topic(broker: &Broker, at_least: usize) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in broker.read_all(&broker.topic, at_least, Duration::from_secs(30)) {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        *ids.entry(v["nasa_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    ids
}

/// Nothing lost, nothing twice: every event the daemon logged as sent is on the topic, and every
/// nasa_id on the topic is one row (the table's UNIQUE key makes "twice" impossible to hide).
fn assert_nothing_lost(broker: &Broker, db: &TestDb, daemon: &Daemon) {
    let sent: HashSet<String> = daemon.logs_with("sent").iter().map(|l| l["labels.nasa_id"].as_str().unwrap().to_owned()).collect();
    let on_topic = ids_on_topic(broker, sent.len());
    for id in &sent {
        assert!(on_topic.contains_key(id), "sent {id} is on the topic");
    }
    wait_until(Duration::from_secs(60), "every nasa_id on the topic stored", || {
        let rows: HashSet<String> = db.rows().into_iter().map(|r| r.nasa_id).collect();
        on_topic.keys().all(|id| rows.contains(id))
    });
    let rows = db.rows();
    let distinct: HashSet<&str> = rows.iter().map(|r| r.nasa_id.as_str()).collect();
    assert_eq!(distinct.len(), rows.len(), "no nasa_id stored twice");
}

/// The leader of a partition of `images` killed with -9 while both roles run: the producer rides
/// it out, rows keep coming within 30 s, and nothing is lost or stored twice. Under both group
/// protocols (the group's coordinator may be on the node killed).
fn partition_leader_killed_the_pipeline_moves_on_within_30_s(protocol: &str) {
    let (_turn, broker) = cluster();
    let (db, nasa, dir) = (TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = both_roles_speaking(&broker, &db, &nasa, dir.path(), protocol);
    wait_until(Duration::from_secs(90), "3 images stored", || db.rows_count() >= 3);
    assert!(broker.fully_replicated(&broker.topic), "the daemon's topic has three replicas in sync");

    let leader = broker.leader_of(&broker.topic, 0);
    let before = db.rows_count();
    let killed_at = Instant::now();
    broker.kill_node(leader);
    wait_until(Duration::from_secs(30), "a new row within 30 s of the leader's death", || db.rows_count() > before);
    eprintln!("{protocol}: pipeline moved again {:.1} s after the leader was killed", killed_at.elapsed().as_secs_f64());
    assert_ne!(broker.leader_of(&broker.topic, 0), leader, "another node leads the partition now");

    broker.restart_node(leader);
    broker.ensure_all_up();
    wait_until(Duration::from_secs(60), "the node back in sync", || broker.fully_replicated(&broker.topic));
    let after = db.rows_count();
    wait_until(Duration::from_secs(60), "rows keep coming", || db.rows_count() > after);
    assert_nothing_lost(&broker, &db, &daemon);
}

for_both_protocols!(partition_leader_killed_the_pipeline_moves_on_within_30_s);

/// One broker down for good: the pipeline goes on with the two left; when it returns it catches
/// up (every partition back to three in-sync replicas).
#[test]
fn one_broker_down_the_pipeline_goes_on_and_it_catches_up() {
    let (_turn, broker) = cluster();
    let (db, nasa, dir) = (TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = both_roles(&broker, &db, &nasa, dir.path());
    wait_until(Duration::from_secs(90), "an image stored", || db.rows_count() >= 1);

    broker.stop_node(2);
    let before = db.rows_count();
    wait_until(Duration::from_secs(60), "3 more rows with one broker down", || db.rows_count() >= before + 3);
    assert!(!broker.fully_replicated(&broker.topic), "the stopped node is out of sync meanwhile");

    broker.restart_node(2);
    broker.ensure_all_up();
    wait_until(Duration::from_secs(60), "the returning node catches up", || broker.fully_replicated(&broker.topic));
    assert_nothing_lost(&broker, &db, &daemon);
}

/// Two brokers down: with `min.insync.replicas=2` nothing can be written; the producer logs
/// `Kafka unavailable` for the same pending event and makes no new one; once a broker returns
/// that event is delivered, once.
#[test]
fn two_brokers_down_the_same_event_waits_and_is_delivered_once() {
    let (_turn, broker) = cluster();
    let (db, nasa, dir) = (TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let daemon = both_roles(&broker, &db, &nasa, dir.path());
    daemon.wait_for_log("sent", 2, Duration::from_secs(90));
    let earlier = daemon.logs_with("Kafka unavailable").len();

    broker.kill_node(1);
    broker.kill_node(2);
    daemon.wait_for_log("Kafka unavailable", earlier + 3, Duration::from_secs(90));
    let warnings = daemon.logs_with("Kafka unavailable").split_off(earlier);
    let stuck = warnings[0]["labels.event_id"].as_str().unwrap().to_owned();
    assert!(warnings.iter().all(|w| w["labels.event_id"] == stuck.as_str()), "the SAME event is retried: {warnings:?}");
    let found = daemon.logs_with("found image").len();
    daemon.wait_for_log("Kafka unavailable", earlier + 4, Duration::from_secs(60));
    assert_eq!(daemon.logs_with("found image").len(), found, "no new event while it waits");

    broker.restart_node(1);
    wait_until(Duration::from_secs(90), "the pending event sent once a broker is back", || {
        daemon.logs_with("sent").iter().any(|l| l["labels.event_id"] == stuck.as_str())
    });
    broker.restart_node(2);
    broker.ensure_all_up();
    let events: Vec<serde_json::Value> =
        broker.read_all(&broker.topic, 1, Duration::from_secs(30)).iter().map(|r| serde_json::from_slice(&r.payload).unwrap()).collect();
    let copies = events.iter().filter(|e| e["event_id"] == stuck.as_str()).count();
    assert_eq!(copies, 1, "the pending event is on the topic exactly once");
    assert_nothing_lost(&broker, &db, &daemon);
}
