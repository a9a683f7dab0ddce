//! The observer: the group's progress (committed offsets and lag) sampled over the run, from which
//! the report measures how long the pipeline took to move again after each heal.

use crate::settings::{kafka_client, PARTITIONS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub committed: i64,
    pub lag: i64,
}

pub fn offsets_client(addr: &str, group: &str) -> BaseConsumer {
    kafka_client(addr, "500").set("group.id", group).create().expect("offsets client")
}

/// (committed, end) per partition; None when the broker does not answer in time.
pub fn positions(client: &BaseConsumer, topic: &str, partitions: i32) -> Option<(Vec<i64>, Vec<i64>)> {
    positions_or_error(client, topic, partitions).ok()
}

fn positions_or_error(client: &BaseConsumer, topic: &str, partitions: i32) -> Result<(Vec<i64>, Vec<i64>), String> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = client.committed_offsets(tpl, Duration::from_secs(2)).map_err(|e| format!("committed offsets: {e}"))?;
    let committed = (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect();
    let mut ends = Vec::new();
    for p in 0..partitions {
        ends.push(client.fetch_watermarks(topic, p, Duration::from_secs(2)).map_err(|e| format!("end offset of partition {p}: {e}"))?.1);
    }
    Ok((committed, ends))
}

/// Samples the group's progress every 500 ms. Its client is replaced after 30 s without an
/// answer (said in the journal, with the error): the run must measure, whatever the client does.
pub fn observer(
    addr: String,
    topic: String,
    group: String,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    notes: Arc<Mutex<Vec<String>>>,
) {
    let mut client = offsets_client(&addr, &group);
    let mut failing_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        match positions_or_error(&client, &topic, PARTITIONS) {
            Ok((c, e)) => {
                failing_since = None;
                let committed: i64 = c.iter().sum();
                let lag: i64 = c.iter().zip(&e).map(|(c, e)| (e - c).max(0)).sum();
                samples.lock().unwrap().push(Sample { at: Instant::now(), committed, lag });
            }
            Err(e) => {
                let since = *failing_since.get_or_insert(started);
                if since.elapsed() > Duration::from_secs(30) {
                    notes.lock().unwrap().push(format!("observer: no answer for 30 s ({e}); a new offsets client replaces it"));
                    client = offsets_client(&addr, &group);
                    failing_since = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
    }
}
