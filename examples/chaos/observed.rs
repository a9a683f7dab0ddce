//! What the end of the run reads (the topic and the dead-letter topic, the group's offsets, the
//! images table, the feeder's log), and the lookups the checks make in it.

use crate::common::{Broker, Record, TestDb};
use crate::feeder::FeedLog;
use crate::observer::positions;
use crate::settings::{DLQ_PARTITIONS, PARTITIONS};
use diesel::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

#[derive(QueryableByName, Debug)]
pub struct RowCheck {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub nasa_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub sha256: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub actual: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub byte_size: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub length: i64,
}

pub struct Observed {
    /// The group's committed offset and the end of each partition of the topic (empty where the
    /// broker did not answer).
    pub committed: Vec<i64>,
    pub ends: Vec<i64>,
    /// The topic's messages in all (the sum of `ends`).
    pub total: i64,
    pub topic_msgs: Vec<Record>,
    pub dlq_msgs: Vec<Record>,
    pub rows: Vec<RowCheck>,
    pub feed: FeedLog,
}

impl Observed {
    pub fn read(broker: &Broker, offsets: &BaseConsumer, db: &TestDb, feed_log: &Mutex<FeedLog>) -> Observed {
        let (committed, ends) = positions(offsets, &broker.topic, PARTITIONS).unwrap_or_default();
        let total: i64 = ends.iter().sum();
        let topic_msgs = broker.read_all(&broker.topic, total as usize, Duration::from_secs(120));
        let dlq_ends: i64 =
            (0..DLQ_PARTITIONS).map(|p| offsets.fetch_watermarks(&broker.dlq, p, Duration::from_secs(5)).map(|w| w.1).unwrap_or(0)).sum();
        let dlq_msgs = broker.read_all(&broker.dlq, dlq_ends as usize, Duration::from_secs(60));
        let rows: Vec<RowCheck> = diesel::sql_query(
            "SELECT nasa_id, sha256, encode(sha256(image_bytes), 'hex') AS actual, byte_size, length(image_bytes)::bigint AS length FROM images",
        )
        .load(&mut db.conn())
        .unwrap_or_default();
        let feed = std::mem::take(&mut *feed_log.lock().unwrap());
        Observed { committed, ends, total, topic_msgs, dlq_msgs, rows, feed }
    }
}

/// The lookups the checks make: built once from what was read.
pub struct Index<'a> {
    /// The topic's messages by (partition, offset).
    pub by_place: HashMap<(i32, i64), &'a Record>,
    /// The dead letters by the (partition, offset) of the message they came from.
    pub dead: HashMap<(i32, i64), Vec<&'a Record>>,
    /// Rows per nasa_id.
    pub stored: HashMap<&'a str, usize>,
    /// The reason each poison message sent must be dead-lettered with, by key.
    pub expect_dlq: HashMap<&'a str, &'static str>,
}

impl<'a> Index<'a> {
    pub fn new(seen: &'a Observed, topic: &str) -> Index<'a> {
        let mut by_place: HashMap<(i32, i64), &Record> = HashMap::new();
        for r in &seen.topic_msgs {
            by_place.insert((r.partition, r.offset), r);
        }
        let mut dead: HashMap<(i32, i64), Vec<&Record>> = HashMap::new();
        for r in &seen.dlq_msgs {
            if header(r, "source_topic") == topic {
                let p = header(r, "source_partition").parse().unwrap_or(-1);
                let o = header(r, "source_offset").parse().unwrap_or(-1);
                dead.entry((p, o)).or_default().push(r);
            }
        }
        let mut stored: HashMap<&str, usize> = HashMap::new();
        for r in &seen.rows {
            *stored.entry(r.nasa_id.as_str()).or_default() += 1;
        }
        let expect_dlq = seen.feed.msgs.iter().filter_map(|m| m.expect_dlq.map(|r| (m.key.as_str(), r))).collect();
        Index { by_place, dead, stored, expect_dlq }
    }
}

pub fn header<'a>(r: &'a Record, k: &str) -> &'a str {
    r.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.as_str()).unwrap_or("")
}

/// A message's payload as JSON; None where it is not JSON (poison).
pub fn payload_json(r: &Record) -> Option<serde_json::Value> {
    serde_json::from_slice(&r.payload).ok()
}

/// The string `field` of each message's JSON payload, where it has one.
pub fn fields<'a>(records: impl Iterator<Item = &'a Record>, field: &str) -> HashSet<String> {
    records.filter_map(payload_json).filter_map(|v| v[field].as_str().map(str::to_owned)).collect()
}
