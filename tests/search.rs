//! The daemon's log lines in a real search engine, as a user's ELK holds them: OpenSearch with
//! the ECS index template of deploy/ecs/, every line sent through `_bulk`, none rejected, and the
//! queries an operator makes answer.

mod common;

use common::opensearch::OpenSearch;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// deploy/ecs/opensearch-template.json is what scripts/ecs-template makes of the upstream file
/// (so it is never edited by hand, and a change to the script is a change to the file).
#[test]
fn the_committed_template_is_the_scripts_output() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3").arg(root.join("scripts/ecs-template")).arg("--stdout").output().expect("python3 runs");
    assert!(out.status.success(), "scripts/ecs-template: {}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(root.join("deploy/ecs/opensearch-template.json")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "deploy/ecs/opensearch-template.json differs from scripts/ecs-template's output: run scripts/ecs-template"
    );
}

/// A run at debug level through faults (fetch, publish, consume, store; an event that panics
/// until it is dead-lettered and is then replayed by `dlq replay`; a poison event of every kind; a
/// Postgres outage; the broker killed and restarted; an actor crash; SIGTERM): every line on
/// stdout and stderr, the replay's too, indexes into the ECS template with no rejection, the fields
/// an operator filters on are mapped as ECS says, and queries by level, actor, logger and
/// dead-letter reason find exactly the lines that carry them. A query by one image's `trace.id`
/// returns its way through, oldest first (issue 26), and every field the Kibana objects read is in
/// the lines.
#[test]
fn every_line_indexes_into_the_ecs_template_and_answers_queries() {
    let engine = std::thread::spawn(OpenSearch::start);
    let (broker, db, nasa, dir) = (Broker::own(), TestDb::create(), fake_nasa(), tempfile::tempdir().unwrap());
    broker.create_topic(&broker.topic, 1);
    broker.create_topic(&broker.dlq, 1);
    let postgres = TcpProxy::start("127.0.0.1:5432");
    let mut env = daemon_env(&broker, &db, &nasa, dir.path());
    set(&mut env, "DATABASE_URL", &db.url.replace(":5432/", &format!(":{}/", postgres.port)));
    set(&mut env, "LOG_LEVEL", "debug");
    set(&mut env, "ADMIN_TOKEN", "t0ken");
    set(&mut env, "MAX_IMAGE_BYTES", POISON_MAX_IMAGE_BYTES);
    // One event at a time: the injected panics hit one event, which is then dead-lettered.
    set(&mut env, "CONSUMER_MAX_IN_FLIGHT", "1");
    let mut daemon = Daemon::spawn(&env);
    let admin = |path: &str| http(&daemon.http_addr(), "POST", path, &[("Authorization", "Bearer t0ken")]).0;
    assert_eq!(admin("/admin/events/panic?count=3"), 202);
    daemon.wait_for_log("sent to dead-letter topic", 1, Duration::from_secs(60));
    let dead_lettered = trace_id_of(&daemon.logs_with("sent to dead-letter topic")[0]).expect("the dead letter's trace").to_owned();
    let replay = dlq_command(&env, &["replay", "--reason", "panic"]).output().unwrap();
    assert!(replay.status.success(), "dlq replay: {}", String::from_utf8_lossy(&replay.stderr));
    wait_until(Duration::from_secs(30), "the replayed image stored", || {
        messages(&daemon.lines_in_trace(&dead_lettered)).contains(&"saved to DB")
    });

    let poison = poison_events(&nasa);
    for (_, payload) in &poison {
        broker.produce(&broker.topic, Some("poison"), payload.as_bytes());
    }
    daemon.wait_for_log("sent to dead-letter topic", 1 + poison.len(), Duration::from_secs(90));

    postgres.cut();
    wait_until(Duration::from_secs(60), "a store retried while Postgres is cut off", || {
        daemon.logs_with("event failed, will retry the same message").iter().any(|l| l["error.type"] == "postgres")
    });
    postgres.restore();
    let stored = db.rows_count();
    wait_until(Duration::from_secs(60), "an image stored after the outage", || db.rows_count() > stored);

    broker.kill();
    daemon.wait_for_log("Kafka unavailable", 1, Duration::from_secs(60));
    broker.resume();
    let stored = db.rows_count();
    wait_until(Duration::from_secs(90), "an image stored after the broker's restart", || db.rows_count() > stored);

    assert_eq!(admin("/admin/actors/fetcher/crash"), 202);
    daemon.wait_for_log("actor restarting", 1, Duration::from_secs(20));
    let stored = db.rows_count();
    wait_until(Duration::from_secs(60), "an image stored after the crash", || db.rows_count() > stored);
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    let (stdout, stderr) = (daemon.lines(), daemon.stderr_lines());
    let replay_lines: Vec<String> = String::from_utf8_lossy(&replay.stderr).lines().map(str::to_owned).collect();
    eprintln!("indexing the daemon's {} stdout and {} stderr lines and the replay's {}", stdout.len(), stderr.len(), replay_lines.len());
    let lines: Vec<String> = stdout.into_iter().chain(stderr).chain(replay_lines).collect();

    let search = engine.join().unwrap();
    search.install_template();
    let index = search.fresh_index();
    let outcome = search.bulk(&index, &lines);
    assert!(outcome.rejected.is_empty(), "{} of {} lines rejected: {:#?}", outcome.rejected.len(), lines.len(), outcome.rejected);
    assert_eq!(outcome.indexed, lines.len());
    search.refresh(&index);

    for (field, ecs_type) in [("@timestamp", "date"), ("log.level", "keyword"), ("log.logger", "keyword"), ("message", "text")] {
        assert_eq!(search.field_mapping(&index, field)["type"], ecs_type, "{field} is mapped by the ECS template");
    }
    let parsed: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let carrying = |field: &str, value: &str| parsed.iter().filter(|v| v[field] == value).count();
    let found = |field: &str, value: &str| search.search(&index, &json!({"size": 10_000, "query": {"term": {field: value}}})).len();

    assert!(carrying("log.level", "info") > 0 && carrying("log.level", "debug") > 0, "lines at info and debug");
    for level in ["debug", "info", "warn", "error"] {
        assert_eq!(found("log.level", level), carrying("log.level", level), "lines at {level}");
    }
    for actor in ["fetcher", "publisher", "subscriber"] {
        assert!(carrying("labels.actor", actor) > 0, "a line names the {actor} actor");
        assert_eq!(found("labels.actor", actor), carrying("labels.actor", actor), "lines about the {actor} actor");
        assert!(carrying("log.logger", actor) > 0, "the {actor} logs as itself");
        assert_eq!(found("log.logger", actor), carrying("log.logger", actor), "lines the {actor} wrote");
    }
    let stored = search.search(&index, &json!({"size": 100, "query": {"match": {"message": "saved to DB"}}}));
    assert!(stored.iter().filter(|v| v["message"] == "saved to DB").count() >= 3, "full-text search on message: {stored:?}");

    // One image, by its trace id: a fetched one, and the one dead-lettered and replayed.
    let in_trace = |trace_id: &str| {
        let request = json!({"size": 1000, "query": {"term": {"trace.id": trace_id}}, "sort": [{"@timestamp": "asc"}]});
        let hits = search.search(&index, &request);
        assert_eq!(hits.len(), parsed.iter().filter(|v| trace_id_of(v) == Some(trace_id)).count(), "every line of {trace_id}");
        hits
    };
    let fetched = db.rows().into_iter().filter_map(|r| r.trace_id).find(|t| *t != dead_lettered).expect("a stored image");
    let hits = in_trace(&fetched);
    // The send's acknowledgement and the consumer's read race: "sent" is checked apart.
    assert_way(&hits, &["found image", "consumed", "saved to DB"]);
    assert_way(&hits, &["found image", "sent", "saved to DB"]);
    for stage in ["found image", "sent", "saved to DB"] {
        let line = hits.iter().find(|h| h["message"] == stage).unwrap();
        assert_eq!(line["log.level"], "info", "{stage:?} is at info, so a default LOG_LEVEL keeps the way: {line}");
    }
    assert!(messages(&hits).contains(&"downloaded"), "at debug, the download too: {hits:?}");
    let way = ["found image", "event handling panicked; the event is retried", "sent to dead-letter topic", "replayed", "saved to DB"];
    assert_way(&in_trace(&dead_lettered), &way);
    for (reason, _) in poison.iter().chain([&("panic", String::new())]) {
        let query = json!({"query": {"bool": {"filter": [{"term": {"event.action": "dead-letter"}}, {"term": {"error.type": reason}}]}}});
        assert_eq!(search.search(&index, &query).len(), 1, "dead letters for {reason}");
    }

    // What the Kibana objects read is in the lines, mapped as the template says.
    for u in kibana::field_uses(&kibana::saved_objects()) {
        if kibana::SHIPPER_FIELDS.contains(&u.field.as_str()) {
            continue;
        }
        assert!(
            parsed.iter().any(|v| kibana::line_answers(v, &u.field, &u.how)),
            "{} reads {} ({:?}): no line has it",
            u.object,
            u.field,
            u.how
        );
        let mapped = search.field_mapping(&index, &u.field)["type"].as_str().unwrap_or("unmapped").to_owned();
        if let kibana::Use::Aggregated(agg) = &u.how {
            assert_eq!(mapped, if agg == "date_histogram" { "date" } else { "keyword" }, "{} aggregates {}", u.object, u.field);
        }
    }
}

/// The lines of one trace, oldest first, hold `stages` in that order (lines between them, such as
/// a retry's, may come in between; lines written in the same millisecond may come in either order,
/// so `stages` are ones a round trip apart), and their timestamps never go back.
fn assert_way(hits: &[Value], stages: &[&str]) {
    let said = messages(hits);
    let mut from = 0;
    for stage in stages {
        let at = said[from..].iter().position(|m| m == stage).unwrap_or_else(|| panic!("{stage:?} after {:?}: {said:?}", &said[..from]));
        from += at + 1;
    }
    let times: Vec<&str> = hits.iter().map(|h| h["@timestamp"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
}

/// The check above can fail: a line whose field is an object where ECS has a text (the classic
/// clash), or that is no JSON at all, comes back rejected with the engine's reason.
#[test]
fn a_line_the_template_cannot_take_is_rejected_with_its_reason() {
    let search = OpenSearch::start();
    search.install_template();
    let index = search.fresh_index();
    let lines = [
        json!({"@timestamp": "2026-01-01T00:00:00.000Z", "message": "fine", "log.level": "info"}).to_string(),
        json!({"@timestamp": "2026-01-01T00:00:00.000Z", "message": {"text": "an object"}}).to_string(),
        "thread 'main' panicked at src/main.rs:1:1".to_owned(),
    ];
    let outcome = search.bulk(&index, &lines);
    assert_eq!(outcome.indexed, 1, "{outcome:#?}");
    let reasons: Vec<&str> = outcome.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(outcome.rejected.iter().map(|r| &r.line).collect::<Vec<_>>(), [&lines[1], &lines[2]], "{reasons:?}");
    assert!(outcome.rejected.iter().all(|r| r.status == 400 && r.reason.starts_with("mapper_parsing_exception")), "{outcome:#?}");
    assert!(reasons[0].contains("[message]"), "the reason names the field: {reasons:?}");
}
