//! The end of the run, after the schedule: every fault healed, the fetchers quiesced, the pipeline
//! left to go idle, a last probe batch, and the replay of the dead letters whose cause was fixed.

use crate::common::ApiMode;
use crate::feeder::{good_event, FeedCmd};
use crate::settings::PARTITIONS;
use crate::world::World;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::{Duration, Instant};

pub type Replayed = Result<nasa_ingest::dlq::ReplaySummary, nasa_ingest::dlq::DlqError>;

/// How the end went, for the checks and the report.
pub struct Ending {
    /// When the fetchers were quiesced: a producer-side fault healed shortly before cannot be measured.
    pub quiesced_at: Instant,
    pub idle_after_heal: Option<Duration>,
    /// Good events sent after every fault was healed.
    pub probes: usize,
    pub idle_after_probe: Option<Duration>,
    pub replayed: Replayed,
    pub idle_after_replay: Option<Duration>,
    pub replayed_again: Replayed,
}

/// Heals every fault, restarts every broker node and lets running backfills finish.
pub fn heal_everything(w: &mut World) {
    w.say("the schedule is over: healing everything".into());
    w.heal_while(Duration::from_secs(90), |w| !w.pending.is_empty());
    for t in std::mem::take(&mut w.threads) {
        let _ = t.join();
    }
    w.tick(true);
    w.heal_while(Duration::from_secs(60), |w| !w.all_nodes_up());
    w.broker.ensure_all_up();
    // A backfill still running needs the NASA API to finish: let it, before the API is quiesced.
    w.heal_while(Duration::from_secs(120), |w| w.backfills.iter_mut().any(|b| b.running()));
}

/// Quiesces the fetchers (the NASA API answers 503 from here on, so the producers add nothing new)
/// and stops the feeder once it has flushed: when that began.
pub fn quiesce(w: &mut World, feeder: std::thread::JoinHandle<()>) -> Instant {
    w.nasa.state.set_api_mode(ApiMode::Status(503));
    let quiesced_at = Instant::now();
    w.say("healed; the fetchers are quiesced (NASA API 503); waiting for the pipeline to be idle".into());
    let _ = w.feed.send(FeedCmd::Stop);
    let _ = feeder.join();
    quiesced_at
}

/// Waits until idle, proves the pipeline still moves with a probe batch, and replays the fixed
/// dead letters (twice: the second must replay nothing).
pub fn settle(w: &mut World, offsets: &BaseConsumer, group: &str, quiesced_at: Instant) -> Ending {
    let idle_after_heal = w.wait_idle(offsets, "after healing", Duration::from_secs(300));
    let probes = send_probes(w);
    let idle_after_probe = w.wait_idle(offsets, "after the probe batch", Duration::from_secs(120));
    // The replay after healing (issue 15): the image host serves the images it refused with 404
    // again, as a host that came back would, and the dead letters of that reason are replayed.
    w.nasa.state.image_status.lock().unwrap().remove("poison-404-");
    let replayed = replay_image_4xx(w, group);
    w.say(format!("replayed the image_http_4xx dead letters: {replayed:?}"));
    let idle_after_replay = w.wait_idle(offsets, "after the replay", Duration::from_secs(120));
    let replayed_again = replay_image_4xx(w, group);
    w.say(format!("the same replay again: {replayed_again:?}"));
    Ending { quiesced_at, idle_after_heal, probes, idle_after_probe, replayed, idle_after_replay, replayed_again }
}

/// A last batch of good events, two per partition: how many were sent.
fn send_probes(w: &World) -> usize {
    let broker = &w.broker;
    let probes: Vec<String> = (0..2 * PARTITIONS).map(|i| format!("chaos-probe-{i:02}")).collect();
    let probe_producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker.addr).set("acks", "all").create().unwrap();
    for id in &probes {
        let payload = good_event(&w.nasa.url, id);
        let _ = probe_producer.send(BaseRecord::to(&broker.topic).key(id.as_str()).payload(&payload));
    }
    let _ = probe_producer.flush(Duration::from_secs(30));
    probes.len()
}

/// `nasa-ingest dlq replay --reason image_http_4xx`, as the daemons' group's replay group.
fn replay_image_4xx(w: &World, group: &str) -> Replayed {
    let broker = &w.broker;
    let replay_settings = nasa_ingest::dlq::ReplaySettings {
        filter: nasa_ingest::config::DlqFilter { reason: Some("image_http_4xx".into()), since: None },
        ..nasa_ingest::dlq::ReplaySettings::quiet(&broker.addr, &broker.topic, &broker.dlq, &nasa_ingest::dlq::default_replay_group(group))
    };
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    nasa_ingest::dlq::replay(&replay_settings, &nasa_ingest::shutdown::CancellationToken::new(), &quiet)
}
