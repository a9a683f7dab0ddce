//! The feeder: a producer of the run's own that sends a good event every few hundred milliseconds,
//! and the poison messages the schedule asks for, and keeps a log of what the broker acknowledged
//! where (the checks compare the topic with it).

use crate::common::FakeNasa;
use crate::settings::kafka_client;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Outgoing {
    pub key: String,
    pub payload: Vec<u8>,
    /// The reason it must be dead-lettered with, for poison; None for a good event.
    pub expect_dlq: Option<&'static str>,
}

#[derive(Default)]
pub struct FeedLog {
    pub msgs: Vec<Outgoing>,
    pub acked: HashMap<usize, (i32, i64)>,
    failed: Vec<usize>,
}

struct FeedCtx(Arc<Mutex<FeedLog>>);

impl ClientContext for FeedCtx {}

impl ProducerContext for FeedCtx {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        let mut log = self.0.lock().unwrap();
        match result {
            Ok(m) => {
                log.acked.insert(*id, (m.partition(), m.offset()));
            }
            Err(_) => log.failed.push(*id),
        }
    }
}

pub enum FeedCmd {
    Send(Outgoing),
    Stop,
}

fn feeder_producer(addr: &str, log: &Arc<Mutex<FeedLog>>) -> BaseProducer<FeedCtx> {
    kafka_client(addr, "1000")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Infinite: a message waits for the broker instead of failing; the run checks what landed.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .create_with_context(FeedCtx(log.clone()))
        .expect("feeder producer")
}

/// Produces a good event every `every`, and whatever it is sent; on Stop flushes (2 min at most).
pub fn feeder(addr: String, topic: String, image_base: String, every: Duration, log: Arc<Mutex<FeedLog>>, cmds: mpsc::Receiver<FeedCmd>) {
    let mut producer = feeder_producer(&addr, &log);
    let mut next_good = Instant::now();
    let mut n = 0usize;
    let mut stopping = false;
    let mut queue: Vec<usize> = Vec::new();
    loop {
        match cmds.recv_timeout(Duration::from_millis(20)) {
            Ok(FeedCmd::Send(m)) => {
                let mut l = log.lock().unwrap();
                l.msgs.push(m);
                queue.push(l.msgs.len() - 1);
            }
            Ok(FeedCmd::Stop) => stopping = true,
            Err(_) => {}
        }
        if !stopping && Instant::now() >= next_good {
            next_good += every;
            let id = format!("chaos-{n:06}");
            n += 1;
            let m = Outgoing { payload: good_event(&image_base, &id).into_bytes(), key: id, expect_dlq: None };
            let mut l = log.lock().unwrap();
            l.msgs.push(m);
            queue.push(l.msgs.len() - 1);
        }
        {
            let mut l = log.lock().unwrap();
            let failed: Vec<usize> = l.failed.drain(..).collect();
            queue.extend(failed);
        }
        if producer.client().fatal_error().is_some() {
            eprintln!("chaos: feeder producer hit a fatal error; a new one resends what was not acknowledged");
            let l = log.lock().unwrap();
            queue = (0..l.msgs.len()).filter(|i| !l.acked.contains_key(i)).collect();
            drop(l);
            producer = feeder_producer(&addr, &log);
        }
        while let Some(&i) = queue.first() {
            let m = log.lock().unwrap().msgs[i].clone();
            let record = BaseRecord::with_opaque_to(&topic, Box::new(i)).key(&m.key).payload(&m.payload);
            match producer.send(record) {
                Ok(()) => {
                    queue.remove(0);
                }
                Err(_) => break,
            }
        }
        producer.poll(Duration::ZERO);
        if stopping && queue.is_empty() {
            let _ = producer.flush(Duration::from_secs(120));
            producer.poll(Duration::ZERO);
            return;
        }
    }
}

pub fn good_event(image_base: &str, id: &str) -> String {
    serde_json::json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4(), "event_type": "image_discovered",
        "nasa_id": id, "image_url": format!("{image_base}/image/{id}/{id}~medium.jpg"),
        "title": format!("chaos {id}"), "query": "chaos", "center": "JSC",
        "date_created": "2020-01-01T00:00:00Z", "produced_at": chrono::Utc::now(),
    })
    .to_string()
}

/// Poison messages of the kinds the schedule's `param` picks, each with the reason it must get.
pub fn poison(nasa: &FakeNasa, param: u32, serial: &mut usize) -> Vec<Outgoing> {
    let mut rng = StdRng::seed_from_u64(param as u64);
    let count = rng.random_range(1..=4);
    (0..count)
        .map(|_| {
            let kind = rng.random_range(0..7);
            poison_of_kind(nasa, kind, serial, &mut rng)
        })
        .collect()
}

/// Poison whose image host answers 404 until the run heals it, then replays it (issue 15).
pub const POISON_404: u32 = 4;

pub fn poison_of_kind(nasa: &FakeNasa, kind: u32, serial: &mut usize, rng: &mut StdRng) -> Outgoing {
    *serial += 1;
    let n = *serial;
    let with = |id: &str, url: String| {
        let mut v: serde_json::Value = serde_json::from_str(&good_event(&nasa.url, id)).unwrap();
        v["image_url"] = url.into();
        v.to_string()
    };
    let (reason, payload) = match kind {
        0 => ("not_json", format!("this is not json {n}")),
        1 => (
            "missing_field",
            serde_json::json!({"event_type": "image_discovered", "event_id": uuid::Uuid::new_v4(), "nasa_id": format!("poison-mf-{n}")})
                .to_string(),
        ),
        2 => (
            "host_not_allowed",
            with(&format!("poison-host-{n}"), format!("http://localhost:{}/image/x{n}/x{n}~orig.jpg", nasa.addr.port())),
        ),
        3 => {
            let long: String = (0..10_000).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect();
            let mut v: serde_json::Value = serde_json::from_str(&good_event(&nasa.url, "x")).unwrap();
            v["nasa_id"] = long.clone().into();
            v["image_url"] = format!("{}/image/poison-long-{n}/poison-long-{n}~medium.jpg", nasa.url).into();
            ("db_rejected", v.to_string())
        }
        4 => ("image_http_4xx", with(&format!("poison-404-{n}"), format!("{}/image/poison-404-{n}/poison-404-{n}~orig.jpg", nasa.url))),
        5 => ("not_an_image", with(&format!("poison-html-{n}"), format!("{}/image/poison-html-{n}/page.html", nasa.url))),
        _ => ("too_large", with(&format!("poison-huge-{n}"), format!("{}/image/poison-huge-{n}/poison-huge-{n}~huge.jpg", nasa.url))),
    };
    Outgoing { key: format!("poison-{reason}-{n}"), payload: payload.into_bytes(), expect_dlq: Some(reason) }
}
