//! `nasa-ingest dlq list` and `dlq replay`, against a real broker, Postgres and the fake image
//! server: dead letters of a cause that was fixed end as rows, once; a replay killed mid-way
//! resumes without replaying anything twice; an event that keeps failing comes back at most
//! `--max-replays` times; a dry run changes nothing.

mod common;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The consumer role alone (no fetcher adding events of its own), images from 127.0.0.1 only.
fn consumer_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = daemon_env(broker, db, nasa, dir);
    set(&mut env, "PRODUCER_ENABLED", "false");
    env
}

/// The fix a user makes for `host_not_allowed`: the image host is added to ALLOWED_IMAGE_HOSTS.
fn with_localhost_allowed(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    set(&mut env, "ALLOWED_IMAGE_HOSTS", "127.0.0.1,localhost");
    env
}

/// An event whose image is on the fake server, under a host name the daemon does not allow yet.
fn disallowed_event(nasa: &FakeNasa, nasa_id: &str) -> String {
    event_json(nasa, nasa_id).replace("http://127.0.0.1:", "http://localhost:")
}

/// Produces `(key, payload)` pairs with one producer (the harness makes one per message).
fn produce_all(broker: &Broker, events: &[(String, String)]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker.addr).create().unwrap();
    for (key, payload) in events {
        producer.send(BaseRecord::to(&broker.topic).key(key).payload(payload)).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(20)).unwrap();
}

/// `n` events with disallowed image hosts on the events topic (one partition, made here).
fn disallowed_events(broker: &Broker, nasa: &FakeNasa, prefix: &str, n: usize) -> Vec<(String, String)> {
    broker.create_topic(&broker.topic, 1);
    let events: Vec<(String, String)> =
        (0..n).map(|i| format!("{prefix}-{i}")).map(|id| (id.clone(), disallowed_event(nasa, &id))).collect();
    produce_all(broker, &events);
    events
}

/// The end offset of each partition of `topic`. A topic the daemon just made may answer "not
/// leader" for a moment: asked again until 20 s passed.
fn end_offsets(broker: &Broker, topic: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &broker.addr).create().unwrap();
    let read = || -> rdkafka::error::KafkaResult<Vec<i64>> {
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = md.topics()[0].partitions().len() as i32;
        (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).map(|w| w.1)).collect()
    };
    let mut ends = read();
    wait_until(Duration::from_secs(20), &format!("the end offsets of {topic}"), || {
        ends = read();
        ends.is_ok()
    });
    ends.unwrap()
}

fn messages_on(broker: &Broker, topic: &str) -> i64 {
    end_offsets(broker, topic).iter().sum()
}

fn wait_for_dead_letters(broker: &Broker, n: i64) {
    wait_until(Duration::from_secs(60), &format!("{n} dead letters"), || messages_on(broker, &broker.dlq) >= n);
    assert_eq!(messages_on(broker, &broker.dlq), n, "no more dead letters than expected");
}

fn header<'a>(r: &'a Record, key: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Runs a `dlq` command to its end: (exit code, stdout).
fn run_dlq(env: &[(String, String)], args: &[&str]) -> (Option<i32>, String) {
    let (code, stdout, _) = run_dlq_logged(env, args);
    (code, stdout)
}

/// Runs a `dlq` command to its end: (exit code, stdout, its log lines on stderr).
fn run_dlq_logged(env: &[(String, String)], args: &[&str]) -> (Option<i32>, String, Vec<serde_json::Value>) {
    let started = Instant::now();
    let out = dlq_command(env, args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("dlq {} ({:.1} s):\n{stdout}", args.join(" "), started.elapsed().as_secs_f64());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| panic!("logs on stderr are JSON lines: {stderr}")))
        .collect();
    (out.status.code(), stdout, lines)
}

/// Replays on the events topic: `replayed_from` → how often.
fn replays_by_place(broker: &Broker, at_least: usize) -> HashMap<String, usize> {
    let mut places = HashMap::new();
    for r in broker.read_all(&broker.topic, at_least, Duration::from_secs(30)) {
        if let Some(from) = header(&r, "replayed_from") {
            *places.entry(from.to_owned()).or_insert(0) += 1;
        }
    }
    places
}

fn metric(addr: &str, line_start: &str) -> Option<f64> {
    let (_, body) = http(addr, "GET", "/metrics", &[]);
    body.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn host_not_allowed_dead_letters_are_replayed_once_the_host_is_allowed() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    let events = disallowed_events(&broker, &nasa, "elsewhere", 3);
    let env = consumer_env(&broker, &db, &nasa, dir.path());
    let mut before_fix = Daemon::spawn(&env);
    wait_for_dead_letters(&broker, 3);
    // Each dead letter is in the trace the consumer started for its event (sent without one).
    let letters = broker.read_all(&broker.dlq, 3, Duration::from_secs(20));
    let trace_of: HashMap<String, String> =
        letters.iter().map(|l| (l.key.clone().unwrap(), l.trace_id().unwrap_or_else(|| panic!("a traceparent: {l:?}")))).collect();
    assert_eq!(trace_of.values().collect::<std::collections::HashSet<_>>().len(), 3, "a trace each: {trace_of:?}");
    before_fix.wait_for_log("sent to dead-letter topic", 3, Duration::from_secs(10));
    for trace_id in trace_of.values() {
        let lines = before_fix.lines_in_trace(trace_id);
        assert_eq!(messages(&lines).last(), Some(&"sent to dead-letter topic"), "{lines:#?}");
    }

    // The page and /status show what is on the dead-letter topic, and how to replay it.
    let addr = before_fix.http_addr();
    wait_until(Duration::from_secs(20), "the dead-letter panel read the topic", || {
        http_json(&addr, "GET", "/status", None).1["dead_letters"]["on_topic"] == 3
    });
    let status = http_json(&addr, "GET", "/status", None).1["dead_letters"].clone();
    assert_eq!(status["by_reason"]["host_not_allowed"], 3, "{status}");
    assert_eq!(status["last"].as_array().unwrap().len(), 3, "{status}");
    for letter in status["last"].as_array().unwrap() {
        assert_eq!(letter["trace_id"].as_str(), trace_of.get(letter["nasa_id"].as_str().unwrap()).map(String::as_str), "{letter}");
    }
    let command = status["replay_commands"]["host_not_allowed"].as_str().unwrap().to_owned();
    assert!(command.starts_with("nasa-ingest dlq replay") && command.ends_with("--reason host_not_allowed"), "{command}");
    let (_, _, page) = http_exchange(&addr, "GET", "/", &[], "");
    assert!(page.contains("Dead letters") && page.contains(&command) && page.contains("elsewhere-2"), "{page}");
    assert!(trace_of.values().all(|t| page.contains(t.as_str())), "the page shows their trace ids: {page}");
    before_fix.terminate();

    let (code, listed) = run_dlq(&env, &["list"]);
    assert_eq!(code, Some(0));
    for (id, _) in &events {
        let line = listed.lines().find(|l| l.contains(id.as_str())).unwrap_or_else(|| panic!("{id} listed: {listed}"));
        assert!(line.contains("host_not_allowed") && line.contains("ALLOWED_IMAGE_HOSTS") && line.contains(" from "), "{line}");
        assert!(!line.contains("replayed"), "{line}");
    }
    assert!(listed.contains("3 dead letter(s), 0 replayed"), "{listed}");
    assert!(listed.lines().any(|l| l.trim_start().starts_with("host_not_allowed") && l.contains(" 3 ")), "histogram: {listed}");

    // The fix, then the replay.
    let after_fix = Daemon::spawn(&with_localhost_allowed(&env));
    let (code, out, replay_log) = run_dlq_logged(&env, &["replay", "--reason", "host_not_allowed"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("replay: 3 replayed, 0 skipped, of 3"), "{out}");
    // The replay goes on in the dead letter's trace, in a span of its own; so does the replayed store.
    let replay_lines: Vec<&serde_json::Value> = replay_log.iter().filter(|l| l["message"] == "replayed").collect();
    assert_eq!(replay_lines.len(), 3, "{replay_log:#?}");
    for line in replay_lines {
        assert_eq!(trace_id_of(line), trace_of.get(line["labels.nasa_id"].as_str().unwrap()).map(String::as_str), "{line}");
        assert!(letters.iter().all(|l| l.trace().unwrap().span_id.to_string() != line["span.id"].as_str().unwrap()), "{line}");
    }
    assert!(out.contains("replayed by reason: host_not_allowed 3"), "{out}");
    wait_until(Duration::from_secs(60), "the replayed events stored", || db.rows_count() == 3);
    let mut ids: Vec<String> = db.rows().into_iter().map(|r| r.nasa_id).collect();
    ids.sort();
    assert_eq!(ids, ["elsewhere-0", "elsewhere-1", "elsewhere-2"]);
    for row in db.rows() {
        let trace_id = &trace_of[&row.nasa_id];
        assert_eq!(row.trace_id.as_ref(), Some(trace_id), "stored in the dead letter's trace");
        after_fix.wait_for_log("saved to DB", 3, Duration::from_secs(10));
        assert_eq!(messages(&after_fix.lines_in_trace(trace_id)).last(), Some(&"saved to DB"));
    }

    // On the events topic: the original key and payload, with the replay's headers.
    let replayed: Vec<Record> =
        broker.read_all(&broker.topic, 6, Duration::from_secs(30)).into_iter().filter(|r| header(r, "replayed_from").is_some()).collect();
    assert_eq!(replayed.len(), 3);
    for r in &replayed {
        let original = events.iter().find(|(id, _)| Some(id.as_str()) == r.key.as_deref()).expect("the original key");
        assert_eq!(r.payload, original.1.as_bytes(), "the original payload");
        assert_eq!(header(r, "replay_count"), Some("1"));
        assert_eq!(r.trace_id().as_ref(), trace_of.get(r.key.as_deref().unwrap()), "the replayed event is in its dead letter's trace");
    }
    let addr = after_fix.http_addr();
    wait_until(Duration::from_secs(10), "replays counted", || {
        metric(&addr, "nasa_ingest_events_replayed_total{outcome=\"stored\"}") == Some(3.0)
    });

    // Progress: the group is at the end of every partition; a second run replays nothing.
    let group = format!("{}.dlq-replay", get(&env, "KAFKA_GROUP_ID"));
    let ends = end_offsets(&broker, &broker.dlq);
    let committed: Vec<i64> = broker.committed(&group, &broker.dlq, ends.len() as i32).into_iter().map(|c| c.unwrap_or(0)).collect();
    assert_eq!(committed, ends);
    let (code, out) = run_dlq(&env, &["replay", "--reason", "host_not_allowed"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("replay: 0 replayed, 0 skipped, of 0"), "{out}");
    // Even from the start: the replayed ones are known by their replayed_from on the topic.
    let (_, out) = run_dlq(&env, &["replay", "--from-start"]);
    assert!(out.contains("replay: 0 replayed, 3 skipped, of 3") && out.contains("3 replayed before"), "{out}");
    assert_eq!(replays_by_place(&broker, 6).len(), 3, "nothing replayed twice");

    let (_, listed) = run_dlq(&env, &["list", "--reason", "host_not_allowed"]);
    assert!(listed.contains("3 dead letter(s), 3 replayed"), "{listed}");
    assert_eq!(listed.lines().filter(|l| l.contains("elsewhere-") && l.contains("replayed")).count(), 3, "{listed}");
    let (_, json) = run_dlq(&env, &["list", "--json", "--limit", "2"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((json["total"].as_u64(), json["replayed"].as_u64()), (Some(3), Some(3)));
    assert_eq!(json["dead_letters"].as_array().unwrap().len(), 2, "--limit");
    assert_eq!(json["dead_letters"][0]["replayed"], 1);
    assert_eq!(json["by_reason"]["host_not_allowed"], 3);
}

#[test]
fn a_replay_killed_mid_way_resumes_without_replaying_anything_twice() {
    // Enough that the kill lands mid-way at 800 replays/s.
    const N: usize = 400;
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    disallowed_events(&broker, &nasa, "kill", N);
    let env = consumer_env(&broker, &db, &nasa, dir.path());
    let mut before_fix = Daemon::spawn(&env);
    wait_for_dead_letters(&broker, N as i64);
    before_fix.terminate();
    let _after_fix = Daemon::spawn(&with_localhost_allowed(&env));

    let mut replay = dlq_command(&env, &["replay"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut seen = 0;
    for line in BufReader::new(replay.stderr.take().unwrap()).lines().map_while(Result::ok) {
        if serde_json::from_str::<serde_json::Value>(&line).unwrap()["message"] == "replayed" {
            seen += 1;
            if seen == 10 {
                replay.kill().unwrap();
                break;
            }
        }
    }
    replay.wait().unwrap();
    let before = replays_by_place(&broker, N + 10);
    let done_before: usize = before.values().sum();
    eprintln!("killed after {done_before} of {N} replays");
    assert!((10..N).contains(&done_before), "killed mid-way: {done_before}");
    assert!(before.values().all(|n| *n == 1));

    let (code, out) = run_dlq(&env, &["replay"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("replay: {} replayed", N - done_before)), "{out}");
    let after = replays_by_place(&broker, 2 * N);
    assert_eq!(after.len(), N, "every dead letter replayed");
    assert!(after.values().all(|n| *n == 1), "none twice: {after:?}");
    wait_until(Duration::from_secs(90), "every replayed event stored", || db.rows_count() == N);
    let mut ids: Vec<String> = db.rows().into_iter().map(|r| r.nasa_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "no row twice");
}

#[test]
fn an_event_that_keeps_failing_is_replayed_at_most_max_replays_times() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    disallowed_events(&broker, &nasa, "stubborn", 1);
    // The cause is never fixed: each replay fails again.
    let env = consumer_env(&broker, &db, &nasa, dir.path());
    let daemon = Daemon::spawn(&env);
    wait_for_dead_letters(&broker, 1);
    for round in 1..=3 {
        let (code, out) = run_dlq(&env, &["replay"]);
        assert_eq!(code, Some(0));
        assert!(out.contains("replay: 1 replayed, 0 skipped"), "round {round}: {out}");
        wait_for_dead_letters(&broker, 1 + round);
    }
    let letters = broker.read_all(&broker.dlq, 4, Duration::from_secs(30));
    let mut counts: Vec<&str> = letters.iter().map(|r| header(r, "replay_count").unwrap_or("0")).collect();
    counts.sort();
    assert_eq!(counts, ["0", "1", "2", "3"], "each new dead letter carries its event's count forward");

    let (code, out) = run_dlq(&env, &["replay"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("replay: 0 replayed, 1 skipped, of 1") && out.contains("1 replayed 3 times already"), "{out}");
    let on_topic = broker.read_all(&broker.topic, 4, Duration::from_secs(30));
    assert_eq!(on_topic.len(), 4, "the event and its three replays, no more");
    assert_eq!(messages_on(&broker, &broker.dlq), 4);
    assert_eq!(db.rows_count(), 0);
    let addr = daemon.http_addr();
    wait_until(Duration::from_secs(10), "replays counted", || {
        metric(&addr, "nasa_ingest_events_replayed_total{outcome=\"dead_lettered\"}") == Some(3.0)
    });
}

#[test]
fn a_dry_run_publishes_and_commits_nothing() {
    let (broker, db, nasa, dir) = (Broker::shared(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    disallowed_events(&broker, &nasa, "dry", 2);
    let env = consumer_env(&broker, &db, &nasa, dir.path());
    let mut daemon = Daemon::spawn(&env);
    wait_for_dead_letters(&broker, 2);
    daemon.terminate();
    let group = format!("{}.dlq-replay", get(&env, "KAFKA_GROUP_ID"));
    let (topic_ends, dlq_ends) = (end_offsets(&broker, &broker.topic), end_offsets(&broker, &broker.dlq));

    let (code, out) = run_dlq(&env, &["replay", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    for id in ["dry-0", "dry-1"] {
        assert!(out.lines().any(|l| l.starts_with("would replay: ") && l.contains(id) && l.contains("host_not_allowed")), "{out}");
    }
    assert!(out.contains("would replay by reason: host_not_allowed 2"), "{out}");
    assert!(out.contains("dry run: nothing was published or committed"), "{out}");

    assert_eq!(end_offsets(&broker, &broker.topic), topic_ends, "nothing published");
    assert_eq!(end_offsets(&broker, &broker.dlq), dlq_ends);
    assert!(broker.committed(&group, &broker.dlq, dlq_ends.len() as i32).iter().all(Option::is_none), "nothing committed");
    // The same run for real replays both; a dry run after it leaves the group where it is.
    let (_, out) = run_dlq(&env, &["replay"]);
    assert!(out.contains("replay: 2 replayed"), "{out}");
    let (topic_ends, committed) = (end_offsets(&broker, &broker.topic), broker.committed(&group, &broker.dlq, dlq_ends.len() as i32));
    assert!(committed.iter().any(Option::is_some));
    let (_, out) = run_dlq(&env, &["replay", "--dry-run", "--from-start"]);
    assert!(out.contains("2 skipped") && out.contains("2 replayed before"), "{out}");
    assert_eq!(end_offsets(&broker, &broker.topic), topic_ends);
    assert_eq!(broker.committed(&group, &broker.dlq, dlq_ends.len() as i32), committed);
}

/// Writes `n` dead letters straight to the dead-letter topic, with the headers `dead_letter` writes.
fn write_dead_letters(broker: &Broker, partitions: i32, n: usize, reason: &str) {
    broker.create_topic(&broker.topic, partitions);
    broker.create_topic(&broker.dlq, partitions);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker.addr).create().unwrap();
    for i in 0..n {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(reason) })
            .insert(Header { key: "error", value: Some("written by the test") })
            .insert(Header { key: "source_topic", value: Some(broker.topic.as_str()) });
        let id = format!("{reason}-{i}");
        let mut record = BaseRecord::to(&broker.dlq).key(&id).payload("{}").headers(headers);
        while let Err((_, r)) = producer.send(record) {
            // The local queue is full: let it drain.
            producer.poll(Duration::from_millis(10));
            record = r;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn replay_env(broker: &Broker, group: &str) -> Vec<(String, String)> {
    [("KAFKA_BROKERS", broker.addr.clone()), ("KAFKA_TOPIC", broker.topic.clone()), ("KAFKA_GROUP_ID", group.into())]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[test]
fn ctrl_c_stops_a_replay_with_its_progress_committed_and_the_same_command_goes_on() {
    const N: usize = 2000;
    let broker = Broker::shared();
    write_dead_letters(&broker, 3, N, "too_large");
    let env = replay_env(&broker, "ctrl-c");
    let mut replay = dlq_command(&env, &["replay"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    for line in BufReader::new(replay.stderr.take().unwrap()).lines().map_while(Result::ok) {
        if serde_json::from_str::<serde_json::Value>(&line).unwrap()["message"] == "replayed" {
            Command::new("kill").args(["-INT", &replay.id().to_string()]).status().unwrap();
            break;
        }
    }
    let out = replay.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted: run the same command again to resume"), "{stdout}");
    let done_before: usize = replays_by_place(&broker, 1).values().sum();
    assert!(done_before < N, "stopped part-way: {done_before}");
    let committed: i64 = broker.committed("ctrl-c.dlq-replay", &broker.dlq, 3).iter().map(|c| c.unwrap_or(0)).sum();
    assert_eq!(committed as usize, done_before, "everything acknowledged before the stop is committed, nothing more");

    let (code, out) = run_dlq(&env, &["replay"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("replay: {} replayed, 0 skipped, of {}", N - done_before, N - done_before)), "{out}");
    let replays = replays_by_place(&broker, N);
    assert_eq!(replays.len(), N);
    assert!(replays.values().all(|n| *n == 1));
}

/// Dead letters written by hand with the headers `dead_letter` writes; no daemon.
#[test]
fn since_nasa_id_and_max_pick_dead_letters_and_the_rest_wait_for_the_next_run() {
    let broker = Broker::shared();
    broker.create_topic(&broker.topic, 1);
    broker.create_topic(&broker.dlq, 1);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker.addr).create().unwrap();
    for (id, reason) in [("a", "too_large"), ("b", "host_not_allowed"), ("c", "too_large"), ("d", "too_large")] {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(reason) })
            .insert(Header { key: "error", value: Some("test") })
            .insert(Header { key: "source_topic", value: Some(broker.topic.as_str()) });
        producer.send(BaseRecord::to(&broker.dlq).key(id).payload("{}").headers(headers)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let env = replay_env(&broker, "since-test");

    let (_, out) = run_dlq(&env, &["replay", "--since", "2h", "--nasa-id", "c"]);
    assert!(out.contains("replay: 1 replayed, 0 skipped, of 1") && out.contains("3 not matching"), "{out}");
    let (_, out) = run_dlq(&env, &["replay", "--since", "2999-01-01T00:00:00Z"]);
    assert!(out.contains("replay: 0 replayed, 0 skipped, of 0"), "{out}");
    let (_, out) = run_dlq(&env, &["replay", "--reason", "too_large", "--max", "1"]);
    assert!(out.contains("replay: 1 replayed, 1 skipped, of 3") && out.contains("1 past --max"), "a, then c was replayed before: {out}");
    let (_, out) = run_dlq(&env, &["replay"]);
    assert!(out.contains("replay: 2 replayed, 1 skipped, of 3"), "b and d; c before (a is behind the group's offset): {out}");
    let replays = replays_by_place(&broker, 4);
    assert_eq!(replays.len(), 4);
    assert!(replays.values().all(|n| *n == 1), "{replays:?}");
    assert_eq!(broker.committed("since-test.dlq-replay", &broker.dlq, 1), vec![Some(4)]);
}

#[test]
fn dlq_help_lists_only_what_it_uses_and_bad_input_exits_2() {
    for args in [&["dlq", "--help"][..], &["dlq", "replay", "--help"], &["dlq", "list", "--help"]] {
        let out = Command::new(daemon_bin()).args(args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--kafka-brokers") && help.contains("--kafka-topic"), "{help}");
        for unused in ["--database-url", "--nasa-api-url", "--max-image-bytes", "--http-addr", "--sentry-dsn"] {
            assert!(!help.contains(unused), "{args:?} lists {unused}: {help}");
        }
    }
    let out = Command::new(daemon_bin()).args(["dlq", "list", "--since", "yesterday"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    let out = Command::new(daemon_bin()).args(["dlq", "replay"]).env("KAFKA_BROKERS", "no-port").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("nasa-ingest: KAFKA_BROKERS=\"no-port\" is not valid"));
}
