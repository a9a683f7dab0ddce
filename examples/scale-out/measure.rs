//! What each event did to the group, from the committed offsets sampled over the run and from each
//! daemon's log: the longest standstill of a partition with lag, the time until every partition is
//! consumed again, the longest gap in the rows each member that stayed stored, and the rows stored
//! from a partition after its member logged giving it up.

use crate::common::logged_at;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

/// A standstill shorter than this is the steady flow (a commit every 200 ms, downloads of 200 ms
/// and more, samples every 250 ms), not an interruption: it does not count toward "consumed again".
const INTERRUPTION_SECS: f64 = 1.0;
/// A standstill belongs to the event it began after, or this little before: a member killed
/// committed last up to a commit interval (200 ms) before, seen up to a sample (250 ms) later.
const BEGAN_BEFORE: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// The group's committed offset and the end of each partition, at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub committed: Vec<i64>,
    pub ends: Vec<i64>,
}

/// What the run did to the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Join,
    Leave,
    FrozenJoin,
    Kill,
    Restart,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Join => "a fourth joins",
            Kind::Leave => "one leaves (SIGTERM)",
            Kind::FrozenJoin => "one joins beside a frozen one",
            Kind::Kill => "one dies (kill -9)",
            Kind::Restart => "one restarts (SIGTERM, started again)",
        }
    }
}

/// One event of the sequence and the window it is judged in.
pub struct Event {
    pub kind: Kind,
    /// Its first action (the signal, or the new process).
    pub at: DateTime<Utc>,
    /// The next event's start, or the end of the load.
    pub until: DateTime<Utc>,
    /// The partitions the frozen member held when it was frozen (FrozenJoin only).
    pub frozen: BTreeSet<i32>,
    /// The members that ran through the whole window and were not acted on.
    pub stayed: Vec<String>,
}

/// A partition with lag whose committed offset did not move from `from` to `to` (the first sample
/// with the offset moved; `open`: it had not moved by the end of the samples).
#[derive(Clone, Debug)]
pub struct Standstill {
    pub partition: i32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub open: bool,
}

impl Standstill {
    pub fn secs(&self) -> f64 {
        secs(self.to - self.from)
    }
}

/// Every standstill of every partition: runs of samples with the same committed offset and lag
/// (a partition consumed to its end is idle, not standing still).
pub fn standstills(samples: &[Sample]) -> Vec<Standstill> {
    let partitions = samples.first().map(|s| s.committed.len()).unwrap_or(0);
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut run: Option<(i64, DateTime<Utc>)> = None;
        for s in samples {
            let (committed, end) = (s.committed[p], s.ends[p]);
            if let Some((value, from)) = run {
                if committed != value {
                    out.push(Standstill { partition: p as i32, from, to: s.at, open: false });
                    run = None;
                }
            }
            if committed >= end {
                run = None;
            } else if run.is_none() {
                run = Some((committed, s.at));
            }
        }
        if let (Some((_, from)), Some(last)) = (run, samples.last()) {
            out.push(Standstill { partition: p as i32, from, to: last.at, open: true });
        }
    }
    out
}

/// A row a member logged as stored ("saved to DB"), and whether it held the partition then.
pub struct Stored {
    pub at: DateTime<Utc>,
    pub held: bool,
}

/// What one member's log says, all its processes in order.
pub struct MemberLog {
    pub name: String,
    pub stored: Vec<Stored>,
    /// Revocations of every partition the member held, and of only some of them.
    pub full_revocations: usize,
    pub partial_revocations: usize,
    pub stalls: usize,
    pub duplicates_skipped: usize,
}

/// Reads a member's log lines (a line starting with "---- " ends a process: it holds nothing after).
pub fn read_member(name: &str, lines: &[String]) -> MemberLog {
    let mut log = MemberLog {
        name: name.to_owned(),
        stored: Vec::new(),
        full_revocations: 0,
        partial_revocations: 0,
        stalls: 0,
        duplicates_skipped: 0,
    };
    let mut held = BTreeSet::new();
    for line in lines {
        if line.starts_with("---- ") {
            held.clear();
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match v["message"].as_str().unwrap_or("") {
            "partitions assigned" => held.extend(partitions(&v)),
            "partitions revoked" => {
                let revoked = partitions(&v);
                if revoked.is_empty() {
                    continue;
                }
                if revoked.is_superset(&held) {
                    log.full_revocations += 1;
                } else {
                    log.partial_revocations += 1;
                }
                held.retain(|p| !revoked.contains(p));
            }
            "saved to DB" => {
                if let (Some(at), Some(p)) = (logged_at(&v), v["labels.partition"].as_i64()) {
                    log.stored.push(Stored { at, held: held.contains(&(p as i32)) });
                }
            }
            "consumer stalled" => log.stalls += 1,
            "duplicate skipped" => log.duplicates_skipped += 1,
            _ => {}
        }
    }
    log
}

/// The partitions the current process of a member holds, by its log.
pub fn held_now(lines: &[String]) -> BTreeSet<i32> {
    let start = lines.iter().rposition(|l| l.starts_with("---- ")).map(|i| i + 1).unwrap_or(0);
    let mut held = BTreeSet::new();
    for v in lines[start..].iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        match v["message"].as_str().unwrap_or("") {
            "partitions assigned" => held.extend(partitions(&v)),
            "partitions revoked" => held.retain(|p| !partitions(&v).contains(p)),
            _ => {}
        }
    }
    held
}

/// `labels.partitions` as the consumer logs it: `[0, 3, 4]`.
fn partitions(line: &serde_json::Value) -> BTreeSet<i32> {
    let text = line["labels.partitions"].as_str().unwrap_or("");
    text.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// What one event did.
pub struct Measured {
    /// The longest standstill of a partition with lag in the window (the frozen member's partitions aside).
    pub standstill: Option<Standstill>,
    /// From the event until every partition moved again after its interruption (standstills over
    /// 1 s); `open`: a partition had not moved again when the window ended.
    pub moving_again: f64,
    pub moving_again_open: bool,
    /// Each member that stayed: the longest time without a row stored (from the event to the end of the window).
    pub gaps: Vec<(String, f64)>,
    /// Rows stored in the window from a partition its member had logged giving up.
    pub after_giving_up: usize,
}

pub fn measure(event: &Event, runs: &[Standstill], members: &[MemberLog]) -> Measured {
    // A standstill that began before is an earlier event's (shown there, open where it outlasted
    // it); one that began in the last BEGAN_BEFORE of the window is the next event's, whose grace
    // period that is (a member frozen right after its last commit), and is counted there only.
    let within: Vec<&Standstill> =
        runs.iter().filter(|r| r.from >= event.at - BEGAN_BEFORE && r.from < event.until - BEGAN_BEFORE).collect();
    let standstill =
        within.iter().filter(|r| !event.frozen.contains(&r.partition)).max_by(|a, b| a.secs().total_cmp(&b.secs())).map(|r| (*r).clone());
    let interrupted: Vec<&&Standstill> = within.iter().filter(|r| r.secs() > INTERRUPTION_SECS).collect();
    let last_moved = interrupted.iter().map(|r| r.to.min(event.until)).max();
    let moving_again = last_moved.map(|t| secs(t - event.at)).unwrap_or(0.0);
    let moving_again_open = interrupted.iter().any(|r| r.open || r.to > event.until);
    let in_window = |at: &DateTime<Utc>| *at >= event.at && *at <= event.until;
    let gaps = members
        .iter()
        .filter(|m| event.stayed.contains(&m.name))
        .map(|m| {
            let mut times = vec![event.at];
            times.extend(m.stored.iter().map(|s| s.at).filter(in_window));
            times.push(event.until);
            let longest = times.windows(2).map(|w| secs(w[1] - w[0])).fold(0.0, f64::max);
            (m.name.clone(), longest)
        })
        .collect();
    let after_giving_up = members.iter().flat_map(|m| &m.stored).filter(|s| !s.held && in_window(&s.at)).count();
    Measured { standstill, moving_again, moving_again_open, gaps, after_giving_up }
}

pub fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn a_standstill_counts_only_while_the_partition_has_lag() {
        let s = |ms, committed, end| Sample { at: at(ms), committed: vec![committed], ends: vec![end] };
        let runs = standstills(&[s(0, 5, 9), s(250, 5, 9), s(500, 5, 9), s(750, 7, 9), s(1000, 9, 9), s(1250, 9, 9)]);
        let found: Vec<(f64, bool)> = runs.iter().map(|r| (r.secs(), r.open)).collect();
        assert_eq!(found, [(0.75, false), (0.25, false)]);
    }

    #[test]
    fn a_standstill_beginning_just_before_an_event_is_that_events_only() {
        let event = |from, until| Event { kind: Kind::Leave, at: at(from), until: at(until), frozen: BTreeSet::new(), stayed: vec![] };
        let (leave, freeze) = (event(0, 15_000), event(15_000, 30_000));
        let run = Standstill { partition: 5, from: at(14_900), to: at(23_200), open: false };
        let found = |e: &Event| measure(e, std::slice::from_ref(&run), &[]).standstill.map(|r| r.secs());
        assert_eq!((found(&leave), found(&freeze)), (None, Some(8.3)));
    }

    #[test]
    fn a_store_after_the_revocation_is_counted_until_the_next_assignment() {
        let line = |msg: &str, extra: &str| format!(r#"{{"message":"{msg}","@timestamp":"2026-01-01T00:00:00Z"{extra}}}"#);
        let lines = vec![
            line("partitions assigned", r#","labels.partitions":"[0, 1]""#),
            line("saved to DB", r#","labels.partition":1"#),
            line("partitions revoked", r#","labels.partitions":"[0, 1]""#),
            line("saved to DB", r#","labels.partition":1"#),
            line("partitions assigned", r#","labels.partitions":"[1]""#),
            line("saved to DB", r#","labels.partition":1"#),
            line("partitions revoked", r#","labels.partitions":"[1]""#),
        ];
        let log = read_member("m1", &lines);
        assert_eq!(log.stored.iter().map(|s| s.held).collect::<Vec<_>>(), [true, false, true]);
        assert_eq!((log.full_revocations, log.partial_revocations), (2, 0));
        assert!(held_now(&lines).is_empty());
    }
}
