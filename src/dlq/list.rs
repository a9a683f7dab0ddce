//! `nasa-ingest dlq list`: every dead letter (time, nasa_id, reason, error, where it came from,
//! whether it was replayed), then the count of each reason.

use serde::Serialize;
use slog::Logger;
use std::collections::BTreeMap;

use super::error::DlqError;
use super::read::{read_letters, reader, replays_on, watermarks};
use super::record::DeadLetter;
use crate::config::DlqFilter;
use crate::shutdown::CancellationToken;

/// What `dlq list` reads.
#[derive(Clone, Debug)]
pub struct ListSettings {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub filter: DlqFilter,
    /// Only the last N matching dead letters (the counts cover every match).
    pub limit: Option<usize>,
}

/// What `dlq list` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// Matching dead letters, oldest first (the last `limit` of them).
    pub dead_letters: Vec<DeadLetter>,
    /// Every matching dead letter, by reason.
    pub by_reason: BTreeMap<String, u64>,
    pub total: u64,
    /// Matching dead letters that were replayed at least once.
    pub replayed: u64,
}

/// Every matching dead letter on the topic, and whether each was replayed.
pub fn list(s: &ListSettings, log: &Logger) -> Result<Listing, DlqError> {
    // A listing reads to the end and is not interrupted: its token is never cancelled.
    let never = CancellationToken::new();
    let c = reader(&s.brokers, "nasa-ingest-dlq-reader", log)?;
    let ranges = watermarks(&c, &s.brokers, &s.dlq_topic, log)?;
    let mut letters = read_letters(&c, &s.brokers, &s.dlq_topic, &ranges, &never)?.unwrap_or_default();
    letters.retain(|l| l.matches(&s.filter));
    letters.sort_by_key(|l| (l.time, l.partition, l.offset));
    let replays = replays_on(&s.brokers, &s.topic, letters.iter().filter_map(|l| l.time).min(), &never, log)?;
    for l in &mut letters {
        l.replayed = replays.get(&l.place()).copied().unwrap_or(0);
    }
    let listing = Listing {
        by_reason: count_by_reason(letters.iter().map(|l| l.reason.as_str())),
        total: letters.len() as u64,
        replayed: letters.iter().filter(|l| l.replayed > 0).count() as u64,
        dead_letters: letters.split_off(letters.len().saturating_sub(s.limit.unwrap_or(usize::MAX))),
    };
    Ok(listing)
}

fn count_by_reason<'a>(reasons: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in reasons {
        *counts.entry(r.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// `reason  count  ####`, widest bar 40.
fn histogram(counts: &BTreeMap<String, u64>) -> String {
    let widest = counts.values().copied().max().unwrap_or(0).max(1);
    let name_width = counts.keys().map(String::len).max().unwrap_or(0);
    counts
        .iter()
        .map(|(reason, n)| {
            let bar = "#".repeat(((n * 40).div_ceil(widest)) as usize);
            format!("  {reason:<name_width$}  {n:>6}  {bar}\n")
        })
        .collect()
}

pub(super) fn print_listing(listing: &Listing, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(listing).expect("a listing serializes"));
        return;
    }
    for l in &listing.dead_letters {
        println!("{}", l.line());
    }
    if listing.dead_letters.len() as u64 != listing.total {
        println!("(the last {} of {})", listing.dead_letters.len(), listing.total);
    }
    println!("{} dead letter(s), {} replayed; by reason:", listing.total, listing.replayed);
    print!("{}", histogram(&listing.by_reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_scales_to_the_largest_reason() {
        let counts: BTreeMap<String, u64> = [("host_not_allowed".to_owned(), 4), ("too_large".to_owned(), 1)].into();
        assert_eq!(
            histogram(&counts),
            format!("  host_not_allowed       4  {}\n  too_large              1  {}\n", "#".repeat(40), "#".repeat(10))
        );
    }
}
