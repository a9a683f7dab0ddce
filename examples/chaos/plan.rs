//! The run's arguments and its fault schedule: what is injected when, drawn from the seed alone.

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

pub struct Args {
    pub minutes: f64,
    pub seed: u64,
    pub cluster: bool,
    /// The daemons' `KAFKA_GROUP_PROTOCOL`.
    pub protocol: Protocol,
}

/// The consumer group protocol the daemons run: Kafka's classic one, or KIP-848's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Classic,
    Consumer,
}

impl Protocol {
    /// As `KAFKA_GROUP_PROTOCOL` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Classic => "classic",
            Protocol::Consumer => "consumer",
        }
    }

    fn parse(v: &str) -> Protocol {
        match v {
            "classic" => Protocol::Classic,
            "consumer" => Protocol::Consumer,
            _ => panic!("--protocol classic|consumer"),
        }
    }

    /// The seed's choice: its second bit, so that with `--cluster-by-seed` (the first bit) seeds
    /// draw all four pairs of layout and protocol.
    fn by_seed(seed: u64) -> Protocol {
        if seed >> 1 & 1 == 1 {
            Protocol::Consumer
        } else {
            Protocol::Classic
        }
    }
}

impl Args {
    /// The broker layout and the group protocol, as the run's first line and its report say them.
    pub fn layout(&self) -> String {
        format!("{}, group protocol {}", if self.cluster { "three-node cluster" } else { "one broker" }, self.protocol.name())
    }

    /// The command that replays this run's schedule, on the same layout and protocol.
    pub fn replay_command(&self) -> String {
        format!(
            "scripts/chaos --seed {} --minutes {}{} --protocol {}",
            self.seed,
            self.minutes,
            if self.cluster { " --cluster" } else { "" },
            self.protocol.name()
        )
    }
}

pub fn args() -> Args {
    let mut a = Args { minutes: 3.0, seed: rand::random(), cluster: false, protocol: Protocol::Consumer };
    let (mut by_seed, mut protocol_by_seed) = (false, false);
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).map(String::as_str).unwrap_or("");
        match argv[i].as_str() {
            "--minutes" => {
                a.minutes = v.parse().expect("--minutes M");
                i += 1
            }
            "--seed" => {
                a.seed = v.parse().expect("--seed S (a whole number)");
                i += 1
            }
            "--cluster" => a.cluster = true,
            "--cluster-by-seed" => by_seed = true,
            "--protocol" => {
                a.protocol = Protocol::parse(v);
                i += 1
            }
            "--protocol-by-seed" => protocol_by_seed = true,
            other => panic!(
                "unknown argument {other}; usage: chaos [--minutes M] [--seed S] [--cluster | --cluster-by-seed] [--protocol classic|consumer | --protocol-by-seed]"
            ),
        }
        i += 1;
    }
    if by_seed {
        a.cluster = a.seed % 2 == 1;
    }
    if protocol_by_seed {
        a.protocol = Protocol::by_seed(a.seed);
    }
    a
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    BrokerKill,
    BrokerStop,
    BrokerTwoDown,
    PgCut,
    PgStall,
    Api503,
    ApiHang,
    ApiSlow,
    ApiMalformed,
    Image503,
    ImageSlow,
    DaemonKill,
    DaemonStop,
    MemberJoin,
    ActorCrash,
    EventPanic,
    Poison,
    DataDirFull,
    DataDirReadOnly,
    Backfill,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::BrokerKill => "broker kill -9",
            Kind::BrokerStop => "broker SIGTERM",
            Kind::BrokerTwoDown => "two brokers down",
            Kind::PgCut => "Postgres cut",
            Kind::PgStall => "Postgres stalled",
            Kind::Api503 => "NASA API 503",
            Kind::ApiHang => "NASA API hang",
            Kind::ApiSlow => "NASA API slow",
            Kind::ApiMalformed => "NASA API malformed JSON",
            Kind::Image503 => "image host 503",
            Kind::ImageSlow => "image host slow",
            Kind::DaemonKill => "daemon kill -9",
            Kind::DaemonStop => "daemon SIGTERM",
            Kind::MemberJoin => "consumer member joins, leaves",
            Kind::ActorCrash => "actor crashes (admin)",
            Kind::EventPanic => "event panics (admin)",
            Kind::Poison => "poison messages",
            Kind::DataDirFull => "producer DATA_DIR full",
            Kind::DataDirReadOnly => "producer DATA_DIR read-only",
            Kind::Backfill => "backfill beside a daemon",
        }
    }

    /// (weight, pause range in ms) of each kind.
    fn table(cluster: bool) -> Vec<(Kind, u32, (u64, u64))> {
        let mut t = vec![
            (Kind::BrokerKill, 3, (3_000, 20_000)),
            (Kind::BrokerStop, 2, (3_000, 15_000)),
            (Kind::PgCut, 3, (2_000, 20_000)),
            (Kind::Api503, 1, (3_000, 20_000)),
            (Kind::ApiHang, 1, (3_000, 20_000)),
            (Kind::ApiSlow, 1, (3_000, 20_000)),
            (Kind::ApiMalformed, 1, (3_000, 20_000)),
            (Kind::Image503, 2, (3_000, 15_000)),
            (Kind::ImageSlow, 2, (3_000, 15_000)),
            (Kind::DaemonKill, 3, (1_000, 12_000)),
            (Kind::DaemonStop, 2, (1_000, 12_000)),
            (Kind::MemberJoin, 1, (10_000, 40_000)),
            (Kind::ActorCrash, 2, (0, 1)),
            (Kind::EventPanic, 1, (0, 1)),
            (Kind::Poison, 2, (0, 1)),
            (Kind::DataDirFull, 1, (3_000, 20_000)),
            (Kind::DataDirReadOnly, 1, (3_000, 20_000)),
            (Kind::PgStall, 2, (2_000, 20_000)),
            (Kind::Backfill, 1, (0, 1)),
        ];
        if cluster {
            t.push((Kind::BrokerTwoDown, 1, (3_000, 12_000)));
        }
        t
    }

    /// A fault on the producers' side (the NASA API, DATA_DIR): its recovery shows as a daemon
    /// sending an event, not as the group's offsets moving.
    pub fn producer_side(self) -> bool {
        matches!(self, Kind::Api503 | Kind::ApiHang | Kind::ApiSlow | Kind::ApiMalformed | Kind::DataDirFull | Kind::DataDirReadOnly)
    }
}

#[derive(Clone, Debug)]
pub struct Planned {
    pub at: Duration,
    pub kind: Kind,
    pub target: u32,
    pub pause: Duration,
    pub param: u32,
}

/// The whole fault schedule, a function of the seed, the length and the broker layout only.
pub fn schedule(seed: u64, minutes: f64, cluster: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let table = Kind::table(cluster);
    let total: u32 = table.iter().map(|t| t.1).sum();
    let end = Duration::from_secs_f64(minutes * 60.0);
    let mut at = Duration::from_secs(10);
    let mut out = Vec::new();
    while at < end {
        let mut pick = rng.random_range(0..total);
        let &(kind, _, (lo, hi)) = table
            .iter()
            .find(|t| {
                if pick < t.1 {
                    true
                } else {
                    pick -= t.1;
                    false
                }
            })
            .expect("weights add up");
        let pause = Duration::from_millis(rng.random_range(lo..hi));
        out.push(Planned { at, kind, target: rng.random(), pause, param: rng.random() });
        at += Duration::from_millis(rng.random_range(2_000..7_000));
    }
    out
}

/// The schedule as `schedule.txt` keeps it: one fault a line.
pub fn write_schedule(plan: &[Planned], path: &Path) {
    let mut plan_file = std::fs::File::create(path).unwrap();
    for f in plan {
        let _ = writeln!(
            plan_file,
            "{:>7.1}s {:<30} target {:>10} pause {:>5.1}s param {}",
            f.at.as_secs_f64(),
            f.kind.name(),
            f.target,
            f.pause.as_secs_f64(),
            f.param
        );
    }
}
