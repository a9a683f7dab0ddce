//! The invariants a user relies on, checked when the run ends: each one a `Check` with the failures
//! it found (and the daemons' log lines that explain them), plus the counts the report shows.

use crate::daemons::{get_json, last, request, BackfillRun, Slot};
use crate::ending::Ending;
use crate::observed::{fields, header, payload_json, Index, Observed};
use crate::settings::{rss_bound_kib, PARTITIONS};
use crate::world::World;
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub struct Check {
    pub name: &'static str,
    pub failures: Vec<String>,
}

impl Check {
    fn new(name: &'static str) -> Check {
        Check { name, failures: vec![] }
    }
}

/// What the checks counted on the way, for the report.
#[derive(Default)]
pub struct Tally {
    pub good: usize,
    pub poisoned: usize,
    /// Good events with neither a row nor a dead letter, and acknowledged feeder messages missing.
    pub lost: usize,
    /// nasa_ids stored more than once.
    pub duplicated: usize,
    /// Distinct nasa_ids stored.
    pub distinct_stored: usize,
    pub logged_sent: usize,
    /// Events that waited in a producer's outbox while Kafka was unavailable.
    pub pending: usize,
}

pub struct Verdict {
    pub checks: Vec<Check>,
    pub tally: Tally,
}

impl Verdict {
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.failures.is_empty()).count()
    }
}

/// Runs every check in order: the first four on what was read, the fifth on the daemons as they
/// run now, the rest on the daemons' record and the replay.
pub fn judge(w: &mut World, seen: &Observed, index: &Index, end: &Ending) -> Verdict {
    let mut tally = Tally { distinct_stored: index.stored.len(), ..Tally::default() };
    let checks = vec![
        every_message_accounted(&w.slots, seen, index, &mut tally),
        stored_once_and_intact(seen, index, &mut tally),
        sent_is_on_the_topic(&w.slots, &w.backfills, seen, index, &mut tally),
        offsets_at_the_end(&w.slots, seen, end),
        daemons_ready(w),
        rss_under_bound(&w.slots),
        backfills_finished(&w.slots, &mut w.backfills),
        replay_after_healing(&w.slots, seen, index, end),
    ];
    Verdict { checks, tally }
}

fn every_message_accounted(slots: &[Slot], seen: &Observed, index: &Index, tally: &mut Tally) -> Check {
    let mut c1 = Check::new("1 every message on the topic is a row or a dead letter; no good event is dead-lettered");
    let total = seen.total;
    if (seen.topic_msgs.len() as i64) < total {
        c1.failures.push(format!("read {} messages of the topic, its partitions end at {total} in all", seen.topic_msgs.len()));
    }
    let mut lost = Vec::new();
    for r in &seen.topic_msgs {
        let key = r.key.clone().unwrap_or_default();
        let nasa_id = payload_json(r).and_then(|v| v["nasa_id"].as_str().map(str::to_owned));
        let here = index.dead.get(&(r.partition, r.offset));
        // A replayed event's cause was fixed: it must end as a row like a good one.
        let replay = !header(r, "replay_count").is_empty();
        match index.expect_dlq.get(key.as_str()).filter(|_| !replay) {
            Some(reason) => {
                tally.poisoned += 1;
                match here {
                    None => c1.failures.push(format!(
                        "poison {key} at partition {} offset {} (expected {reason}) is not in the dead-letter topic",
                        r.partition, r.offset
                    )),
                    Some(d) if d.iter().all(|d| header(d, "reason") != *reason) => c1.failures.push(format!(
                        "poison {key} at partition {} offset {} dead-lettered as {:?}, expected {reason}",
                        r.partition,
                        r.offset,
                        d.iter().map(|d| header(d, "reason")).collect::<Vec<_>>()
                    )),
                    Some(_) => {}
                }
            }
            None => {
                tally.good += 1;
                if let Some(d) = here {
                    c1.failures.push(format!(
                        "good event {} at partition {} offset {} was dead-lettered: {}",
                        nasa_id.clone().unwrap_or_default(),
                        r.partition,
                        r.offset,
                        d.iter().map(|d| format!("{} ({})", header(d, "reason"), header(d, "error"))).collect::<Vec<_>>().join("; ")
                    ));
                } else if !nasa_id.as_deref().is_some_and(|id| index.stored.contains_key(id)) {
                    lost.push((nasa_id.clone().unwrap_or_default(), r.partition, r.offset));
                    c1.failures.push(format!(
                        "lost: {} at partition {} offset {}: no row, no dead letter",
                        nasa_id.unwrap_or_default(),
                        r.partition,
                        r.offset
                    ));
                }
            }
        }
    }
    for (id, p, o) in lost.iter().take(5) {
        c1.failures.push(format!("    log lines about {id} / partition {p} offset {o}:"));
        c1.failures.extend(evidence(slots, &[id.clone(), place(*p, *o)], 12));
    }
    tally.lost += lost.len();
    c1
}

fn stored_once_and_intact(seen: &Observed, index: &Index, tally: &mut Tally) -> Check {
    let mut c2 = Check::new("2 no nasa_id is stored twice; every row's bytes hash to its sha256");
    let duplicated: Vec<(&str, usize)> = index.stored.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (*k, *n)).collect();
    for (id, n) in &duplicated {
        c2.failures.push(format!("{id} stored {n} times"));
    }
    for r in &seen.rows {
        if r.sha256 != r.actual || r.byte_size != r.length {
            c2.failures.push(format!(
                "{}: sha256 {} but the bytes hash to {} ({} of {} bytes)",
                r.nasa_id, r.sha256, r.actual, r.length, r.byte_size
            ));
        }
    }
    tally.duplicated = duplicated.len();
    c2
}

/// Every event a daemon logged as sent or pending, and every acknowledged feeder message, is on the topic.
fn sent_is_on_the_topic(slots: &[Slot], backfills: &[BackfillRun], seen: &Observed, index: &Index, tally: &mut Tally) -> Check {
    let mut c3 = Check::new("3 every event a daemon logged as sent or pending (and every acknowledged message) is on the topic");
    let topic_event_ids = fields(seen.topic_msgs.iter(), "event_id");
    let mut pending_ids: HashSet<String> = HashSet::new();
    let sources: Vec<(String, Vec<String>)> = slots
        .iter()
        .map(|s| (s.name.clone(), s.all_lines()))
        .chain(backfills.iter().map(|b| (format!("backfill on {}", slots[b.slot].name), b.lines.lock().unwrap().clone())))
        .collect();
    for (name, lines) in &sources {
        for line in lines {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let msg = v["message"].as_str().unwrap_or("");
            let Some(event_id) = v["labels.event_id"].as_str() else { continue };
            if msg == "sent" {
                tally.logged_sent += 1;
                let (p, o) = (v["labels.partition"].as_i64().unwrap_or(-1) as i32, v["labels.offset"].as_i64().unwrap_or(-1));
                let at = index.by_place.get(&(p, o)).and_then(|r| payload_json(r));
                if at.as_ref().and_then(|v| v["event_id"].as_str()) != Some(event_id) {
                    c3.failures.push(format!(
                        "{}: sent {event_id} at partition {p} offset {o}, but the topic has {:?} there",
                        name,
                        at.map(|v| v["event_id"].clone())
                    ));
                }
            } else if msg == "Kafka unavailable" || msg.starts_with("publishing the event left pending") {
                pending_ids.insert(event_id.to_owned());
                if !topic_event_ids.contains(event_id) {
                    c3.failures.push(format!("{}: event {event_id} was pending ({msg}) and never reached the topic", name));
                    c3.failures.extend(evidence(slots, &[event_id.to_owned()], 8));
                }
            }
        }
    }
    let feed = &seen.feed;
    let mut acked_missing = 0;
    for (i, (p, o)) in &feed.acked {
        let m = &feed.msgs[*i];
        if index.by_place.get(&(*p, *o)).is_none_or(|r| r.payload != m.payload) {
            acked_missing += 1;
            if acked_missing <= 5 {
                c3.failures.push(format!("feeder message {} acknowledged at partition {p} offset {o} is not there", m.key));
            }
        }
    }
    let unacked = feed.msgs.len() - feed.acked.len();
    if unacked > 0 {
        c3.failures.push(format!("{unacked} feeder message(s) never acknowledged by the broker (after a 2 min flush)"));
    }
    tally.lost += acked_missing;
    tally.pending = pending_ids.len();
    c3
}

fn offsets_at_the_end(slots: &[Slot], seen: &Observed, end: &Ending) -> Check {
    let mut c4 = Check::new("4 the group's committed offsets equal the end of every partition");
    let (committed, ends) = (&seen.committed, &seen.ends);
    if committed.is_empty() {
        c4.failures.push("the committed offsets could not be read".into());
    }
    for p in 0..committed.len() {
        if committed[p] != ends[p] {
            c4.failures.push(format!("partition {p}: committed {} of {}", committed[p], ends[p]));
            c4.failures.extend(evidence(slots, &[place(p as i32, committed[p])], 10));
        }
    }
    if end.idle_after_heal.is_none() {
        c4.failures.push("the pipeline was not idle within 5 min of healing".into());
    }
    if end.idle_after_probe.is_none() {
        c4.failures.push("the probe batch was not consumed within 2 min".into());
    }
    c4
}

/// Every daemon is running and ready, and none holds an empty assignment while a partition has
/// lag: asked again (the world ticking) for up to a minute.
fn daemons_ready(w: &mut World) -> Check {
    let mut c5 = Check::new("5 every daemon is running and ready, none holds an empty assignment while a partition has lag");
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        w.tick(false);
        let problems = readiness_problems(&mut w.slots);
        if problems.is_empty() {
            break;
        }
        if Instant::now() > ready_deadline {
            c5.failures = problems;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for s in &w.slots {
        for (what, lines) in &s.unexpected_exits {
            c5.failures.push(format!("{}: {what}; its last lines:", s.name));
            c5.failures.extend(lines.iter().map(|l| quote(l)));
        }
    }
    c5
}

fn readiness_problems(slots: &mut [Slot]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut union: HashSet<i64> = HashSet::new();
    for s in slots.iter_mut().filter(|s| s.wanted) {
        if s.daemon.is_none() {
            problems.push(format!("{} is not running", s.name));
            continue;
        }
        let Some(addr) = s.http() else {
            problems.push(format!("{} has no HTTP endpoint yet", s.name));
            continue;
        };
        match request(&addr, "GET", "/readyz") {
            Some((200, _)) => {}
            other => problems.push(format!("{}: /readyz {:?}", s.name, other)),
        }
        let status = get_json(&addr, "/status").map(|(_, v)| v);
        let assigned: Vec<i64> = status
            .as_ref()
            .and_then(|v| v["consumer"]["assigned_partitions"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.as_i64())
            .collect();
        if assigned.is_empty() {
            problems.push(format!("{} holds no partition (of {PARTITIONS}, with {} members)", s.name, 3));
        }
        // Its stall watch must see the group: otherwise an empty assignment with lag goes unnoticed.
        if status.as_ref().is_some_and(|v| v["consumer"]["broker_reachable"] != true) {
            problems.push(format!(
                "{}: its stall watch cannot read the group's progress (/status consumer: {})",
                s.name,
                status.as_ref().map(|v| v["consumer"].to_string()).unwrap_or_default()
            ));
        }
        union.extend(assigned);
    }
    if union.len() != PARTITIONS as usize {
        let mut held: Vec<_> = union.into_iter().collect();
        held.sort();
        problems.push(format!("the members hold partitions {held:?} of 0..{PARTITIONS}"));
    }
    problems
}

fn rss_under_bound(slots: &[Slot]) -> Check {
    let mut c6 = Check::new("6 each daemon's peak RSS stayed under the bound");
    for s in slots {
        if s.peak_rss_kib > rss_bound_kib() {
            c6.failures.push(format!("{}: peak RSS {} MiB > {} MiB", s.name, s.peak_rss_kib / 1024, rss_bound_kib() / 1024));
        }
    }
    c6
}

fn backfills_finished(slots: &[Slot], backfills: &mut [BackfillRun]) -> Check {
    let mut c7 = Check::new("7 every backfill beside a daemon finished with exit 0");
    for b in backfills.iter_mut() {
        let slot = &slots[b.slot].name;
        if b.running() {
            c7.failures.push(format!("backfill {} on {slot}'s DATA_DIR still runs 2 min after healing", b.what));
        } else if !b.status.is_some_and(|s| s.success()) {
            c7.failures.push(format!("backfill {} on {slot}'s DATA_DIR exited {:?}; its last lines:", b.what, b.status));
            let lines = b.lines.lock().unwrap();
            c7.failures.extend(last(&lines, 10).iter().map(|l| quote(l)));
        }
    }
    c7
}

/// The dead letters replayed after their cause was fixed are rows; a second replay replays nothing.
fn replay_after_healing(slots: &[Slot], seen: &Observed, index: &Index, end: &Ending) -> Check {
    let mut c8 = Check::new("8 the dead letters replayed after their cause was fixed are rows; a second replay replays nothing");
    let to_replay = fields(seen.dlq_msgs.iter().filter(|d| header(d, "reason") == "image_http_4xx"), "nasa_id");
    match (&end.replayed, &end.replayed_again) {
        (Ok(first), Ok(again)) => {
            if first.replayed + first.replayed_before < to_replay.len() as u64 {
                c8.failures.push(format!("{} image_http_4xx dead letters, the replay sent {first:?}", to_replay.len()));
            }
            if again.replayed != 0 {
                c8.failures.push(format!("the second replay sent {} again", again.replayed));
            }
        }
        (first, again) => c8.failures.push(format!("replay failed: {first:?} / {again:?}")),
    }
    if to_replay.is_empty() {
        c8.failures.push("no image_http_4xx dead letter to replay (two are sent at the start)".into());
    }
    for id in to_replay.iter().filter(|id| !index.stored.contains_key(id.as_str())) {
        c8.failures.push(format!("{id} was replayed and is not stored"));
        c8.failures.extend(evidence(slots, std::slice::from_ref(id), 8));
    }
    if end.idle_after_replay.is_none() {
        c8.failures.push("the replayed events were not consumed within 2 min".into());
    }
    c8
}

/// The last `max` log lines of each slot that name one of `needles`, quoted.
fn evidence(slots: &[Slot], needles: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for s in slots {
        let lines: Vec<String> =
            s.all_lines().into_iter().filter(|l| needles.iter().any(|n| !n.is_empty() && l.contains(n.as_str()))).collect();
        for l in last(&lines, max) {
            out.push(format!("      {}: {}", s.name, truncate(l, 400)));
        }
    }
    out
}

/// A log line as the failures quote it: indented, at most 400 bytes.
fn quote(line: &str) -> String {
    format!("      {}", truncate(line, 400))
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// How a daemon's log line names a message's place.
fn place(p: i32, o: i64) -> String {
    format!("\"labels.partition\":{p},\"labels.offset\":{o}")
}
