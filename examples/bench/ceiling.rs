//! The ceiling: the consumer role's external work and nothing else, to tell what any design could
//! reach on this machine from what the daemon reaches.
//!
//! Each event is read from Kafka, its image fetched from nginx over a kept-alive connection, hashed
//! (SHA-256, as the daemon stores it), and written to Postgres by binary COPY in statements of up
//! to 64 rows, two at a time, over TLS: the daemon's batch limits and connection. Left out, so
//! that this is an upper bound: the check before each download, every log line, retries, the
//! actors, offset commits, and any size or host limit. Plain threads: one reads, `concurrency`
//! download (blocking sockets, a hand-written HTTP/1.1 GET), two write.

use diesel::prelude::*;
use nasa_ingest::actors::storer::BatchLimits;
use nasa_ingest::db::{schema::images, NewImage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use sha2::Digest;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a run of the ceiling measured.
pub struct Ceiling {
    pub rate: f64,
    /// The bench process's CPU time over the run (the pipeline's threads), per event.
    pub cpu_us_per_event: f64,
    pub rows_per_statement: f64,
    /// The shares of the time from the first event read to the last row committed that the
    /// machine sat idle and that the hypervisor took.
    pub machine_idle: f64,
    pub machine_stolen: f64,
}

struct Job {
    nasa_id: String,
    path: String,
    partition: i32,
    offset: i64,
}

/// Reads `count` events from `topic` (a group of its own, from the start), stores their images
/// into the database at `db_url`, and measures from the first event read to the last row committed.
pub fn run(brokers: &str, topic: &str, db_url: &str, image_host: &str, count: usize, concurrency: usize) -> Ceiling {
    // The Storer's limits: rows and image bytes per statement, statements at once.
    let limits = BatchLimits::default();
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(1024);
    // Beside the statements running, a statement's worth of rows may wait for each.
    let (rows_tx, rows_rx) = sync_channel::<NewImage>(limits.max_rows * limits.max_in_flight);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let downloaders: Vec<_> = (0..concurrency)
        .map(|_| {
            let (jobs, rows, host) = (jobs_rx.clone(), rows_tx.clone(), image_host.to_owned());
            std::thread::spawn(move || download_all(&host, &jobs, &rows))
        })
        .collect();
    drop(rows_tx);
    let rows_rx = Arc::new(Mutex::new(rows_rx));
    let writers: Vec<_> = (0..limits.max_in_flight)
        .map(|_| {
            let (url, rows) = (db_url.to_owned(), rows_rx.clone());
            std::thread::spawn(move || write_all(&url, &rows, limits))
        })
        .collect();
    let cpu_before = super::cpu_ms(std::process::id());
    let (started, machine_at_start) = read_all(brokers, topic, count, &jobs_tx);
    drop(jobs_tx);
    for d in downloaders {
        d.join().expect("a download thread");
    }
    let statements: usize = writers.into_iter().map(|w| w.join().expect("a writer thread")).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let (machine_idle, machine_stolen) = super::machine_ticks().idle_and_stolen_since(&machine_at_start);
    Ceiling {
        machine_idle,
        machine_stolen,
        rate: count as f64 / elapsed,
        cpu_us_per_event: (super::cpu_ms(std::process::id()) - cpu_before) * 1000.0 / count as f64,
        rows_per_statement: count as f64 / statements.max(1) as f64,
    }
}

/// Hands out `count` events; returns when the first was read, and the machine's ticks then.
fn read_all(brokers: &str, topic: &str, count: usize, jobs: &SyncSender<Job>) -> (Instant, super::MachineTicks) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-ceiling")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribed");
    let mut first = None;
    let mut read = 0;
    while read < count {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.expect("a message");
        first.get_or_insert_with(|| (Instant::now(), super::machine_ticks()));
        let event: serde_json::Value = serde_json::from_slice(m.payload().expect("a payload")).expect("JSON");
        let url = event["image_url"].as_str().expect("image_url");
        let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).expect("a path");
        let nasa_id = event["nasa_id"].as_str().expect("nasa_id").to_owned();
        jobs.send(Job { nasa_id, path, partition: m.partition(), offset: m.offset() }).expect("downloaders running");
        read += 1;
    }
    first.expect("events read")
}

fn download_all(host: &str, jobs: &Mutex<Receiver<Job>>, rows: &SyncSender<NewImage>) {
    let mut conn = TcpStream::connect(host).expect("nginx");
    conn.set_nodelay(true).unwrap();
    // For the response head (nginx's is about 250 bytes); a read may bring the body's first bytes.
    let mut head = vec![0u8; 4096];
    loop {
        let Ok(job) = jobs.lock().expect("jobs lock").recv() else { return };
        let body = get(&mut conn, host, &job.path, &mut head);
        let sha256 = format!("{:x}", sha2::Sha256::digest(&body));
        let row = NewImage {
            title: Some(job.nasa_id.clone()),
            query: Some("bench".into()),
            image_url: format!("http://{host}{}", job.path),
            content_type: "image/jpeg".into(),
            byte_size: body.len() as i64,
            sha256,
            image_bytes: body,
            event_id: None,
            kafka_partition: Some(job.partition),
            kafka_offset: Some(job.offset),
            trace_id: None,
            nasa_id: job.nasa_id,
        };
        rows.send(row).expect("the writer running");
    }
}

/// One GET on a kept-alive connection: the body, by its Content-Length, read straight into place.
/// `head` is a reused buffer for the response's head.
fn get(conn: &mut TcpStream, host: &str, path: &str, head: &mut [u8]) -> Vec<u8> {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("request sent");
    let mut filled = 0;
    let head_end = loop {
        let n = conn.read(&mut head[filled..]).expect("response read");
        assert!(n > 0, "nginx closed the connection");
        filled += n;
        if let Some(i) = head[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = std::str::from_utf8(&head[..head_end]).expect("ASCII headers");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let length: usize = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("a length")))
        .expect("Content-Length");
    let mut body = vec![0u8; length];
    let early = filled - head_end;
    body[..early].copy_from_slice(&head[head_end..filled]);
    conn.read_exact(&mut body[early..]).expect("body read");
    body
}

/// Writes what has come, within the limits (64 rows or 8 MiB a statement), until the downloaders
/// are done; returns how many statements it took.
fn write_all(url: &str, rows: &Mutex<Receiver<NewImage>>, limits: BatchLimits) -> usize {
    let mut conn = PgConnection::establish(url).expect("Postgres");
    let mut statements = 0;
    // A row taken that would have made the statement too large: the next one's first.
    let mut carried: Option<NewImage> = None;
    loop {
        let batch = {
            let rows = rows.lock().expect("rows lock");
            let Some(first) = carried.take().or_else(|| rows.recv().ok()) else { break };
            let mut bytes = first.image_bytes.len();
            let mut batch = vec![first];
            while batch.len() < limits.max_rows {
                let Ok(row) = rows.try_recv() else { break };
                if bytes + row.image_bytes.len() > limits.max_bytes {
                    carried = Some(row);
                    break;
                }
                bytes += row.image_bytes.len();
                batch.push(row);
            }
            batch
        };
        diesel::copy_from(images::table).from_insertable(&batch).execute(&mut conn).expect("COPY");
        statements += 1;
    }
    statements
}
