//! The report: what was injected and how long the pipeline took to move again after each kind of
//! fault, what went where, and the invariants; printed, and kept with the run's logs in its folder.

use crate::checks::Verdict;
use crate::common::logged_at;
use crate::ending::Ending;
use crate::observed::{header, Observed};
use crate::observer::Sample;
use crate::plan::{Args, Kind};
use crate::settings::rss_bound_kib;
use crate::world::World;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// A recovery that was never seen.
const NEVER: Duration = Duration::from_secs(9999);

/// Per kind of fault: the longest time from a heal to the pipeline moving (and whether other
/// faults were active then), and the kinds healed too close to the end to measure.
struct Recovery {
    longest: BTreeMap<Kind, (Duration, bool, usize)>,
    unmeasured: HashSet<Kind>,
}

/// Writes the progress, the report, the daemons' logs (and the broker's on a failure) into
/// `run_dir`, prints the report, and ends with the line `chaos: N passed, N failed`.
pub fn write(a: &Args, w: &World, run_dir: &Path, samples: &[Sample], seen: &Observed, end: &Ending, verdict: &Verdict) {
    let progress: Vec<String> =
        samples.iter().map(|s| format!("{:>7.1}s committed {:>6} lag {:>5}", (s.at - w.start).as_secs_f64(), s.committed, s.lag)).collect();
    let _ = std::fs::write(run_dir.join("progress.txt"), progress.join("\n"));
    let recovery = recovery(w, samples, end);
    let mut report = vec![String::new(), format!("==== chaos report · seed {} · {} min · {}", a.seed, a.minutes, a.layout())];
    report.extend(faults(w, &recovery));
    report.extend(flows(w, seen, end, verdict));
    report.extend(invariants(verdict));
    let failed = verdict.failed();
    if failed > 0 {
        report.push(format!("FAILED with seed {} — replay: {}", a.seed, a.replay_command()));
        report.push(format!("daemon logs, broker log, schedule and journal: {}", run_dir.display()));
    }
    for s in &w.slots {
        let _ = std::fs::write(run_dir.join(format!("{}.log", s.name)), s.all_lines().join("\n"));
    }
    if failed > 0 {
        let _ = std::fs::write(run_dir.join("broker.log"), w.broker.log());
    }
    let text = report.join("\n");
    println!("{text}");
    let _ = std::fs::write(run_dir.join("report.txt"), &text);
    println!("chaos: {} passed, {} failed", verdict.checks.len() - failed, failed);
}

/// The producers move when a daemon logs `sent`; the consumers when the committed offsets move.
fn recovery(w: &World, samples: &[Sample], end: &Ending) -> Recovery {
    let mut longest: BTreeMap<Kind, (Duration, bool, usize)> = BTreeMap::new();
    let mut sent_at: Vec<chrono::DateTime<chrono::Utc>> = w
        .slots
        .iter()
        .flat_map(|s| s.all_lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["message"] == "sent")
        .filter_map(|v| logged_at(&v))
        .collect();
    sent_at.sort();
    let mut unmeasured: HashSet<Kind> = HashSet::new();
    for (kind, at, wall, overlapped) in &w.heals {
        let next_sent = sent_at.iter().find(|t| *t > wall).and_then(|t| (*t - *wall).to_std().ok());
        if kind.producer_side() && next_sent.is_none() && end.quiesced_at.saturating_duration_since(*at) < Duration::from_secs(60) {
            // Healed shortly before the fetchers were quiesced: no event could follow it.
            unmeasured.insert(*kind);
            continue;
        }
        let took = if kind.producer_side() {
            next_sent.unwrap_or(NEVER)
        } else {
            let before = samples.iter().rev().find(|s| s.at <= *at).map(|s| s.committed).unwrap_or(0);
            let moved = samples.iter().find(|s| s.at > *at && (s.committed > before || s.lag == 0));
            moved.map(|s| s.at - *at).unwrap_or(NEVER)
        };
        let e = longest.entry(*kind).or_insert((Duration::ZERO, false, 0));
        e.2 += 1;
        if took > e.0 {
            *e = (took, *overlapped, e.2);
        }
    }
    Recovery { longest, unmeasured }
}

/// The faults injected (with their longest recovery) and skipped.
fn faults(w: &World, recovery: &Recovery) -> Vec<String> {
    let mut report = vec![format!(
        "faults injected: {} (skipped, target busy or down: {})",
        w.injected.values().sum::<usize>(),
        w.skipped.values().sum::<usize>()
    )];
    for (kind, n) in &w.injected {
        let rec = match recovery.longest.get(kind) {
            Some((d, overlapped, _)) if d.as_secs() < NEVER.as_secs() => {
                format!("longest heal → moving {:.1} s{}", d.as_secs_f64(), if *overlapped { " (other faults active)" } else { "" })
            }
            Some(_) => "did not move again before the end".into(),
            None if recovery.unmeasured.contains(kind) => "healed too close to the end to measure".into(),
            None => String::new(),
        };
        report.push(format!("  {:<32} {:>3}   {rec}", kind.name(), n));
    }
    report.push("  (moving: the committed offsets advance, or nothing is left to consume; after a NASA API or DATA_DIR fault: a daemon sends an event)".into());
    if !w.skipped.is_empty() {
        report.push(format!("  skipped: {}", joined(w.skipped.iter().map(|(k, n)| format!("{} {n}", k.name())))));
    }
    report
}

/// Where the events went: the topic, the backfills, the replay, the table, the dead letters; and
/// the daemons' processes and peak RSS.
fn flows(w: &World, seen: &Observed, end: &Ending, verdict: &Verdict) -> Vec<String> {
    let t = &verdict.tally;
    let mut dlq_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &seen.dlq_msgs {
        *dlq_reasons.entry(header(r, "reason").to_owned()).or_default() += 1;
    }
    let daemon_events =
        seen.topic_msgs.iter().filter(|r| r.key.as_deref().is_some_and(|k| !k.starts_with("chaos-") && !k.starts_with("poison-"))).count();
    let mut report = vec![format!(
        "events on the topic: {} ({} good: {} from the feeder, {} from the daemons' fetchers, {} probes; {} poison); {} logged as sent by the daemons",
        seen.topic_msgs.len(),
        t.good,
        seen.feed.msgs.iter().filter(|m| m.expect_dlq.is_none()).count(),
        daemon_events,
        end.probes,
        t.poisoned,
        t.logged_sent
    )];
    let backfill_sent =
        w.backfills.iter().flat_map(|b| b.lines.lock().unwrap().clone()).filter(|l| l.contains(r#""message":"sent""#)).count();
    report.push(format!("backfill runs beside the daemons: {} ({backfill_sent} events sent)", w.backfills.len()));
    if let Ok(r) = &end.replayed {
        report.push(format!("replayed after healing (image_http_4xx, the image host back): {} dead letters", r.replayed));
    }
    report.push(format!("stored: {} rows ({} distinct nasa_ids)", seen.rows.len(), t.distinct_stored));
    report.push(format!("dead-lettered: {} ({})", seen.dlq_msgs.len(), joined(dlq_reasons.iter().map(|(r, n)| format!("{r} {n}")))));
    report.push(format!("lost: {}", t.lost));
    report.push(format!("duplicated: {}", t.duplicated));
    report.push(format!(
        "daemon processes: {}; peak RSS (bound {} MiB): {}",
        joined(w.slots.iter().map(|s| format!("{} {}", s.name, s.processes))),
        rss_bound_kib() / 1024,
        joined(w.slots.iter().map(|s| format!("{} {:.1} MiB", s.name, s.peak_rss_kib as f64 / 1024.0)))
    ));
    if let Some(d) = end.idle_after_heal {
        report.push(format!(
            "idle {:.1} s after everything was healed; events that waited in a producer's outbox while Kafka was unavailable: {} (all checked on the topic)",
            d.as_secs_f64(),
            t.pending
        ));
    }
    report
}

/// Each invariant, ok or FAILED with (the first 60 of) its failures.
fn invariants(verdict: &Verdict) -> Vec<String> {
    let mut report = vec!["invariants:".to_owned()];
    for c in &verdict.checks {
        report.push(format!("  [{}] {}", if c.failures.is_empty() { "ok" } else { "FAILED" }, c.name));
        for f in c.failures.iter().take(60) {
            report.push(format!("      {f}"));
        }
        if c.failures.len() > 60 {
            report.push(format!("      … {} more", c.failures.len() - 60));
        }
    }
    report
}

fn joined(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
