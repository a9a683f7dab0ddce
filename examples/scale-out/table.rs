//! The report: one row per event and measure, one column per protocol, each target marked pass or
//! FAIL, then what the whole run stored and how the members were rebalanced.

use crate::measure::{measure, read_member, standstills, Kind, Measured, MemberLog};
use crate::sequence::Run;
use crate::Args;

/// No partition with lag may stand still longer than this on a join or a graceful leave.
const STANDSTILL_TARGET_SECS: f64 = 2.0;
/// After a kill -9, every partition is consumed again within the session timeout plus this.
const TAKEOVER_MARGIN_SECS: f64 = 5.0;

/// A cell and, where a target applies, whether it was met.
struct Cell {
    text: String,
    met: Option<bool>,
}

impl Cell {
    fn show(&self) -> String {
        match self.met {
            Some(true) => format!("{} · pass", self.text),
            Some(false) => format!("{} · FAIL", self.text),
            None => self.text.clone(),
        }
    }
}

struct Row {
    event: String,
    measure: String,
    cells: Vec<Cell>,
}

/// Prints the table (markdown) and the line `scale-out: N targets passed, N failed`.
pub fn print(a: &Args, runs: &[Run]) {
    let logs: Vec<Vec<MemberLog>> = runs.iter().map(|r| r.members.iter().map(|(name, lines)| read_member(name, lines)).collect()).collect();
    let mut rows = event_rows(a, runs, &logs);
    rows.extend(run_rows(runs, &logs));
    println!();
    println!(
        "scale-out: three consumer-only daemons in one group (m1..m4), six partitions, {} events/s, {} KB images at {} KB/s per download, CONSUMER_MAX_IN_FLIGHT={}, session timeout {} s",
        a.rate,
        a.image_bytes / 1000,
        a.host_bytes_per_s / 1000,
        a.in_flight,
        a.session_timeout_secs
    );
    println!();
    println!(
        "| event | measure | {} |",
        runs.iter().map(|r| format!("KAFKA_GROUP_PROTOCOL={}", r.protocol)).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}", "---|".repeat(runs.len()));
    for row in &rows {
        println!("| {} | {} | {} |", row.event, row.measure, row.cells.iter().map(Cell::show).collect::<Vec<_>>().join(" | "));
    }
    for r in runs.iter().filter(|r| !r.unexpected_exits.is_empty()) {
        println!("\n{}: daemons that exited on their own: {}", r.protocol, r.unexpected_exits.join("; "));
    }
    let verdicts: Vec<bool> = rows.iter().flat_map(|r| r.cells.iter().filter_map(|c| c.met)).collect();
    let passed = verdicts.iter().filter(|v| **v).count();
    println!("\nscale-out: {passed} targets passed, {} failed", verdicts.len() - passed);
}

/// Four rows per event: the longest standstill, the time until every partition moves again, the
/// members' gaps, and the rows stored after a member gave their partition up.
fn event_rows(a: &Args, runs: &[Run], logs: &[Vec<MemberLog>]) -> Vec<Row> {
    let measured: Vec<Vec<(Kind, Measured)>> = runs
        .iter()
        .zip(logs)
        .map(|(r, logs)| {
            let runs = standstills(&r.samples);
            r.events.iter().map(|e| (e.kind, measure(e, &runs, logs))).collect()
        })
        .collect();
    let takeover_bound = a.session_timeout_secs as f64 + TAKEOVER_MARGIN_SECS;
    let mut rows = Vec::new();
    let Some(first) = measured.first() else { return rows };
    for (i, (kind, _)) in first.iter().enumerate() {
        let kind = *kind;
        let cell = |f: &dyn Fn(&str, &Measured) -> Cell| -> Vec<Cell> {
            runs.iter().zip(&measured).map(|(r, m)| f(&r.protocol, &m[i].1)).collect()
        };
        let standstill_target = |protocol: &str| match kind {
            Kind::Join | Kind::Leave | Kind::Restart => true,
            Kind::FrozenJoin => protocol == "consumer",
            Kind::Kill => false,
        };
        rows.push(Row {
            event: format!("{}. {}", i + 1, kind.name()),
            measure: match kind {
                Kind::FrozenJoin => {
                    "longest standstill of a partition with lag, the frozen member's aside (target ≤ 2 s with consumer)".into()
                }
                Kind::Kill => "longest standstill of a partition with lag".into(),
                _ => "longest standstill of a partition with lag (target ≤ 2 s)".into(),
            },
            cells: cell(&|protocol, m| match &m.standstill {
                Some(s) => Cell {
                    text: format!("{}{:.1} s (partition {})", if s.open { "> " } else { "" }, s.secs(), s.partition),
                    met: standstill_target(protocol).then_some(!s.open && s.secs() <= STANDSTILL_TARGET_SECS),
                },
                None => Cell { text: "none".into(), met: standstill_target(protocol).then_some(true) },
            }),
        });
        rows.push(Row {
            event: String::new(),
            measure: if kind == Kind::Kill {
                format!("every partition consumed again after (target ≤ {takeover_bound:.0} s: session timeout + 5 s)")
            } else {
                "every partition consumed again after".into()
            },
            cells: cell(&|_, m| Cell {
                text: format!("{}{:.1} s", if m.moving_again_open { "> " } else { "" }, m.moving_again),
                met: (kind == Kind::Kill).then_some(!m.moving_again_open && m.moving_again <= takeover_bound),
            }),
        });
        rows.push(Row {
            event: String::new(),
            measure: "longest gap in stored rows, each member that stayed".into(),
            cells: cell(&|_, m| Cell {
                text: m.gaps.iter().map(|(name, gap)| format!("{name} {gap:.1} s")).collect::<Vec<_>>().join(", "),
                met: None,
            }),
        });
        rows.push(Row {
            event: String::new(),
            measure: "rows stored from a partition after its member logged giving it up (target 0)".into(),
            cells: cell(&|_, m| Cell { text: m.after_giving_up.to_string(), met: Some(m.after_giving_up == 0) }),
        });
    }
    rows
}

/// What the whole run stored, and how the members were rebalanced.
fn run_rows(runs: &[Run], logs: &[Vec<MemberLog>]) -> Vec<Row> {
    let sum = |f: fn(&MemberLog) -> usize| -> Vec<usize> { logs.iter().map(|l| l.iter().map(f).sum()).collect() };
    let (full, partial, stalls, again) =
        (sum(|m| m.full_revocations), sum(|m| m.partial_revocations), sum(|m| m.stalls), sum(|m| m.duplicates_skipped));
    let row = |measure: &str, texts: Vec<String>| Row {
        event: String::new(),
        measure: measure.into(),
        cells: texts.into_iter().map(|text| Cell { text, met: None }).collect(),
    };
    let mut first = row(
        "events produced / rows stored / lost",
        runs.iter().map(|r| format!("{} / {} / {}", r.produced, r.rows, r.produced.saturating_sub(r.rows))).collect(),
    );
    first.event = "the whole run".into();
    vec![
        first,
        row("lag at the end", runs.iter().map(|r| r.end_lag.map_or("not read".into(), |l| l.to_string())).collect()),
        row("events read again by a new owner (\"duplicate skipped\")", again.iter().map(usize::to_string).collect()),
        row(
            "revocations: of every partition the member held / of some (incremental)",
            full.iter().zip(&partial).map(|(f, p)| format!("{f} / {p}")).collect(),
        ),
        row("stall detections (\"consumer stalled\")", stalls.iter().map(usize::to_string).collect()),
    ]
}
