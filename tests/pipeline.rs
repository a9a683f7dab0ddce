//! The core pipeline against a real broker, a real Postgres and the fake NASA API over HTTP.

mod common;

use common::*;
use nasa_ingest::image::sniff_content_type;
use std::time::Duration;

const DOCUMENTED_EVENT_FIELDS: [&str; 10] =
    ["schema_version", "event_id", "event_type", "nasa_id", "image_url", "title", "query", "center", "date_created", "produced_at"];

/// TC-01, TC-02: both roles on, INTERVAL_SECONDS=1: images are fetched, published, consumed and
/// stored byte for byte; the messages follow the documented schema; SIGTERM exits 0 within 10 s.
/// Issue 26: each image is one trace, from the API call to the row (see `each_image_is_one_trace`).
#[test]
fn end_to_end_stores_what_the_api_served() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    // The consume and download lines are at debug.
    set(&mut env, "LOG_LEVEL", "debug");
    let mut daemon = Daemon::spawn(&env);

    wait_until(Duration::from_secs(120), "at least 5 stored images", || db.rows().len() >= 5);
    let rows = db.rows();
    for row in &rows {
        let path = url::Url::parse(&row.image_url).unwrap().path().to_owned();
        let served = nasa.state.served(&path).unwrap_or_else(|| panic!("the fake never served {path}"));
        assert_eq!(row.image_bytes, served, "{}: stored bytes differ from the served ones", row.nasa_id);
        assert_eq!(row.sha256, sha256_hex(&served));
        assert_eq!(row.byte_size, served.len() as i64);
        assert_eq!(Some(row.content_type.as_str()), sniff_content_type(&served));
        assert!(row.event_id.is_some() && row.kafka_offset.is_some(), "{row:?}");
        assert!(row.image_url.starts_with(&nasa.url), "{}", row.image_url);
    }
    let mut ids: Vec<_> = rows.iter().map(|r| r.nasa_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "no nasa_id twice");
    assert!(!daemon.logs_with("sent").is_empty(), "TC-01: the producer logs \"sent\"");
    assert!(daemon.logs_with("saved to DB").len() >= 5, "TC-01: the consumer logs \"saved to DB\"");

    let messages = broker.read_all(&broker.topic, 5, Duration::from_secs(20));
    assert!(messages.len() >= 5);
    for m in &messages {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        let mut expected = DOCUMENTED_EVENT_FIELDS.to_vec();
        expected.sort();
        assert_eq!(keys, expected, "{v}");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["event_type"], "image_discovered");
        assert!(v["event_id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
        assert_eq!(m.key.as_deref(), v["nasa_id"].as_str(), "key = nasa_id");
        assert!(chrono::DateTime::parse_from_rfc3339(v["produced_at"].as_str().unwrap()).is_ok());
        assert!(nasa_ingest::config::RANDOM_TOPICS.contains(&v["query"].as_str().unwrap()), "one of the random topics: {v}");
    }
    each_image_is_one_trace(&daemon, &rows, &messages);

    let (status, took) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(!daemon.logs_with("stopped").is_empty());
}

/// The `traceparent` header of each stored image's event names the trace of the daemon's lines
/// about it, and of its row: the fetch, the send, the consume, the download and the store, in that
/// order, each in a span of its own (the header names the send's). Lines about no one image carry
/// no trace.
fn each_image_is_one_trace(daemon: &Daemon, rows: &[ImageRow], events: &[Record]) {
    assert!(events.iter().all(|m| m.trace().is_some()), "every event has a traceparent header: {events:?}");
    for row in rows {
        // (The same nasa_id may have been fetched twice: the row is in the trace of the event it came from.)
        let event = events.iter().find(|m| m.trace_id() == row.trace_id).unwrap_or_else(|| panic!("the event of {row:?}"));
        assert_eq!(event.key.as_deref(), Some(row.nasa_id.as_str()));
        let header = event.trace().unwrap();
        let trace_id = header.trace_id.to_string();
        let lines = daemon.lines_in_trace(&trace_id);
        // The send's acknowledgement and the consumer's read race: "sent" may follow "consumed".
        let said = messages(&lines);
        let without_send: Vec<&str> = said.iter().copied().filter(|m| *m != "sent").collect();
        assert_eq!(without_send, ["found image", "consumed", "downloaded", "saved to DB"], "{lines:#?}");
        assert_eq!(said.iter().position(|m| *m == "sent").map(|at| at > 0), Some(true), "sent once, after the fetch: {lines:#?}");
        assert_eq!(said.iter().filter(|m| **m == "sent").count(), 1, "{lines:#?}");
        assert!(lines.iter().all(|l| l["labels.nasa_id"] == row.nasa_id.as_str()), "{lines:#?}");
        assert_a_span_per_stage(&lines);
        let send = lines.iter().find(|l| l["message"] == "sent").unwrap();
        assert_eq!(send["span.id"].as_str(), Some(header.span_id.to_string().as_str()), "the header's parent is the send");
    }
    let untraced = ["actor started", "partitions assigned", "migrations applied"];
    for line in daemon.lines().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        if untraced.iter().any(|m| line["message"].as_str().is_some_and(|l| l.starts_with(m))) {
            assert!(trace_id_of(&line).is_none() && line["span.id"].is_null(), "not about one image: {line}");
        }
    }
}

/// TC-03: the same nasa_id published twice is stored once, and the log says so.
#[test]
fn same_nasa_id_twice_is_stored_once() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "PRODUCER_ENABLED", "false");
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let daemon = Daemon::spawn(&env);

    broker.produce(&broker.topic, Some("as11-40-5874"), event_json(&nasa, "as11-40-5874").as_bytes());
    broker.produce(&broker.topic, Some("as11-40-5874"), event_json(&nasa, "as11-40-5874").as_bytes());
    daemon.wait_for_log("duplicate skipped", 1, Duration::from_secs(60));
    wait_until(Duration::from_secs(20), "both offsets committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(2)]);
    let rows = db.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].nasa_id, "as11-40-5874");
    let dup = &daemon.logs_with("duplicate skipped")[0];
    assert_eq!(dup["labels.nasa_id"], "as11-40-5874");
}

/// An event in the earlier Python version's format (no key, no event_id, no headers) is stored, in
/// a trace of its own that the consumer starts; the earlier version's name for the brokers
/// variable still works.
#[test]
fn earlier_versions_event_is_stored() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    env.retain(|(k, _)| k != "KAFKA_BROKERS");
    set(&mut env, "KAFKA_BOOTSTRAP_SERVERS", &broker.addr);
    set(&mut env, "PRODUCER_ENABLED", "false");
    let daemon = Daemon::spawn(&env);

    for id in ["PIA00405", "PIA00406"] {
        let legacy = serde_json::json!({"event_type": "image_saved", "nasa_id": id,
            "image_url": format!("{}/image/{id}/{id}~orig.jpg", nasa.url)});
        broker.produce(&broker.topic, None, legacy.to_string().as_bytes());
    }
    wait_until(Duration::from_secs(60), "the legacy events stored", || db.rows().len() == 2);
    let rows = db.rows();
    let row = rows.iter().find(|r| r.nasa_id == "PIA00405").unwrap();
    assert_eq!((row.nasa_id.as_str(), row.event_id.as_deref()), ("PIA00405", None));
    assert_eq!(row.content_type, "image/png");
    assert_eq!(row.image_bytes, nasa.state.served("/image/PIA00405/PIA00405~orig.jpg").unwrap());
    daemon.wait_for_log("saved to DB", 2, Duration::from_secs(5));
    // Each in a trace of its own, started by the consumer: its row's and its store line's.
    assert_ne!(rows[0].trace_id, rows[1].trace_id, "{rows:?}");
    for row in &rows {
        let trace_id = row.trace_id.as_deref().unwrap_or_else(|| panic!("a trace: {row:?}"));
        let lines = daemon.lines_in_trace(trace_id);
        assert_eq!(messages(&lines), ["saved to DB"], "{lines:#?}");
        assert_eq!(lines[0]["labels.nasa_id"], row.nasa_id.as_str());
    }
}

/// With a slow image server, never more than DOWNLOAD_CONCURRENCY downloads at once, and the
/// committed offset never passes an event that is not stored yet.
#[test]
fn in_flight_work_is_bounded_and_commits_wait_for_unfinished_events() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    let ids =
        ["as11-40-5874", "as12-46-6749", "as17-134-20384", "as17-148-22727", "iss026-s-001", "iss042e340851", "KSC-2011-1500", "PIA00407"];
    for id in ids {
        broker.produce(&broker.topic, Some(id), event_json(&nasa, id).as_bytes());
    }
    nasa.state.set_image_delay(Duration::from_millis(400));
    // The first event's image is the slowest: later ones finish before it.
    nasa.state.slow_image(ids[0], Duration::from_millis(3000));

    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "PRODUCER_ENABLED", "false");
    set(&mut env, "DOWNLOAD_CONCURRENCY", "2");
    let group = get(&env, "KAFKA_GROUP_ID").to_owned();
    let daemon = Daemon::spawn(&env);

    let mut saw_commit_held_back = false;
    wait_until(Duration::from_secs(60), "all 8 events stored", || {
        let committed = broker.committed(&group, &broker.topic, 1)[0].unwrap_or(0);
        let stored: Vec<i64> = db.rows().iter().filter_map(|r| r.kafka_offset).collect();
        for offset in 0..committed {
            assert!(stored.contains(&offset), "committed {committed} but offset {offset} is not stored: {stored:?}");
        }
        if !stored.contains(&0) && stored.len() >= 2 {
            saw_commit_held_back = true;
        }
        stored.len() == ids.len()
    });
    wait_until(Duration::from_secs(20), "offset 8 committed", || broker.committed(&group, &broker.topic, 1) == vec![Some(8)]);
    assert!(saw_commit_held_back, "later events finished while the first was still downloading");
    let max = nasa.state.max_images_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(max, 2, "downloads at once: at most DOWNLOAD_CONCURRENCY, and that many were used");
    // The slow event's line says where its time went: in the download.
    let slow = daemon.logs_with("saved to DB").into_iter().find(|l| l["labels.nasa_id"] == ids[0]).expect("the slow image's line");
    let ms = |stage: &str| slow[format!("labels.{stage}_ms")].as_f64().unwrap_or_else(|| panic!("labels.{stage}_ms in {slow}"));
    assert!(ms("download") >= 3000.0, "the download was the slow part: {slow}");
    let stages = ms("before") + ms("check") + ms("download") + ms("store");
    assert!((stages - ms("latency")).abs() <= 2.0, "the stages add up to the latency: {slow}");
    drop(daemon);
}
