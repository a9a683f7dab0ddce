//! The test harness: Apache Kafka (one broker shared by the tests of a binary, or one of a test's
//! own to stop and kill, or a three-node cluster), a Postgres database per test
//! (dropped after), the fake NASA API over HTTP, and the daemon as a child process whose JSON
//! log lines are collected. Everything is waited for by polling with a deadline.
#![allow(dead_code, unused_imports)]

use diesel::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod fake_nasa;
pub mod kibana;
pub mod opensearch;
pub mod trace;
pub use fake_nasa::{ApiMode, FakeNasa};
pub use trace::*;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nasa")
}

pub fn fake_nasa() -> FakeNasa {
    FakeNasa::start(&fixtures_dir()).expect("fake NASA API starts")
}

/// Makes each named test run once per consumer group protocol: `name::consumer` and
/// `name::classic` call `name(protocol)`, `protocol` being KAFKA_GROUP_PROTOCOL's value (one
/// filter, `cargo test -- name`, runs both).
#[macro_export]
macro_rules! for_both_protocols {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn consumer() {
                super::$test("consumer")
            }
            #[test]
            fn classic() {
                super::$test("classic")
            }
        }
    )*};
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// When the daemon wrote a log line (its `@timestamp`).
pub fn logged_at(line: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let written = chrono::DateTime::parse_from_rfc3339(line["@timestamp"].as_str()?).ok()?;
    Some(written.with_timezone(&chrono::Utc))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------- Kafka (Apache Kafka, KRaft)

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One Apache Kafka node (broker and controller in one process), run by `scripts/kafka/broker`
/// on its own storage, which outlives a stop or a kill so that it can start again on it.
struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn spawn(&self, voters: &str, replicas: usize, group_protocols: Option<&str>) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(child.is_none(), "node {} is already running", self.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log")).unwrap();
        let started = Command::new(repo_root().join("scripts/kafka/broker"))
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--port", &self.port.to_string(), "--controller-port", &self.controller_port.to_string()])
            .args(["--node-id", &self.id.to_string(), "--voters", voters, "--replicas", &replicas.to_string()])
            .args(group_protocols.map(|p| ["--group-protocols", p]).into_iter().flatten())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("scripts/kafka/broker starts (run scripts/test, which installs Java and Kafka)");
        kill_at_exit(started.id());
        *child = Some(started);
    }

    fn signal(&self, signal: i32) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            unsafe { libc::kill(c.id() as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    c.kill().ok();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            SHARED_PIDS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != c.id());
        }
    }

    fn running(&self) -> bool {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Every broker (and search engine) process this test binary started, killed when it exits (a
/// process shared by the tests of one binary has no owner whose drop could stop it).
static SHARED_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn kill_at_exit(pid: u32) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(kill_shared_at_exit);
    });
    SHARED_PIDS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

extern "C" fn kill_shared_at_exit() {
    if let Ok(pids) = SHARED_PIDS.lock() {
        for pid in pids.iter() {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

/// A broker or a three-node cluster of this process.
struct Kafka {
    nodes: Vec<Node>,
    replicas: usize,
    /// `group.coordinator.rebalance.protocols` when not Kafka's default.
    group_protocols: Option<&'static str>,
    _dir: tempfile::TempDir,
}

impl Kafka {
    /// Starts `nodes` nodes on fresh storage. A node that cannot bind its port (another
    /// process took it between the choice and the bind) is started again on other ports.
    fn launch(nodes: usize) -> Arc<Kafka> {
        Self::launch_with(nodes, None)
    }

    fn launch_with(nodes: usize, group_protocols: Option<&'static str>) -> Arc<Kafka> {
        let mut tries = 0;
        loop {
            let dir = tempfile::Builder::new().prefix("kafka").tempdir().unwrap();
            let nodes: Vec<Node> = (1..=nodes as u32)
                .map(|id| Node {
                    id,
                    port: broker_port(),
                    controller_port: broker_port(),
                    dir: dir.path().join(format!("node{id}")),
                    child: Mutex::new(None),
                })
                .collect();
            let kafka = Arc::new(Kafka { replicas: nodes.len().min(3), nodes, group_protocols, _dir: dir });
            for n in &kafka.nodes {
                std::fs::create_dir_all(&n.dir).unwrap();
                n.spawn(&kafka.voters(), kafka.replicas, group_protocols);
            }
            tries += 1;
            match kafka.try_wait_ready(kafka.nodes.len()) {
                Ok(()) => return kafka,
                Err(e) if tries < 3 => eprintln!("kafka: {e}; starting again on other ports"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn wait_ready(&self, brokers: usize) {
        if let Err(e) = self.try_wait_ready(brokers) {
            panic!("{e}");
        }
    }

    fn voters(&self) -> String {
        self.nodes.iter().map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port)).collect::<Vec<_>>().join(",")
    }

    fn bootstrap(&self) -> String {
        self.nodes.iter().map(Node::addr).collect::<Vec<_>>().join(",")
    }

    /// Polls the listeners with a metadata request until `brokers` of them answer as one
    /// cluster; an error when a node exits meanwhile.
    fn try_wait_ready(&self, brokers: usize) -> Result<(), String> {
        let bootstrap = self.bootstrap();
        let started = Instant::now();
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("log_level", "0")
            .set("reconnect.backoff.max.ms", "200")
            .create()
            .unwrap();
        let logs = self.nodes.iter().map(|n| n.dir.join("broker.log").display().to_string()).collect::<Vec<_>>();
        let deadline = started + Duration::from_secs(90);
        loop {
            for n in &self.nodes {
                if let Some(c) = n.child.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    if let Some(status) = c.try_wait().unwrap() {
                        return Err(format!(
                            "Kafka node {} exited with {status} while starting: {}",
                            n.id,
                            tail(&n.dir.join("broker.log"))
                        ));
                    }
                }
            }
            if client.fetch_metadata(None, Duration::from_millis(500)).is_ok_and(|m| m.brokers().len() >= brokers) {
                eprintln!("kafka: {brokers} broker(s) ready in {:.1} s", started.elapsed().as_secs_f64());
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{brokers} Kafka broker(s) did not answer metadata requests within 90 s (logs: {logs:?})"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A free port below the kernel's ephemeral range (32768 and up here), so that no client
/// socket or `:0` listener of the tests can take it while a broker is down for a restart.
fn broker_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::rng().random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What a test sees of Kafka: the broker (or cluster), and topic names of its own, so that tests
/// may share one broker. `shared()` is one broker per test binary that is never stopped; a test
/// that stops, kills or cuts the broker takes `own()` or `cluster()`.
pub struct Broker {
    kafka: Arc<Kafka>,
    pub addr: String,
    /// The events topic of this test (the daemon's `KAFKA_TOPIC`).
    pub topic: String,
    /// Its dead-letter topic.
    pub dlq: String,
    /// One client per group for reading committed offsets: a client made and closed per query
    /// would leave the group each time, which makes the broker rebalance the real members.
    offset_readers: Mutex<std::collections::HashMap<String, Arc<BaseConsumer>>>,
}

impl Broker {
    /// The test binary's shared broker, with fresh topic names.
    pub fn shared() -> Broker {
        static SHARED: std::sync::OnceLock<Arc<Kafka>> = std::sync::OnceLock::new();
        Self::view(SHARED.get_or_init(|| Kafka::launch(1)).clone())
    }

    /// A broker of this test's own, to stop, kill and restart.
    pub fn own() -> Broker {
        Self::view(Kafka::launch(1))
    }

    /// A broker of this test's own that refuses Kafka's consumer group protocol (KIP-848), as
    /// brokers before 4.0 or with it turned off do.
    pub fn own_classic_only() -> Broker {
        Self::view(Kafka::launch_with(1, Some("classic")))
    }

    /// Three brokers in one KRaft cluster (each node also a controller), of this test's own:
    /// topics are created with three replicas and `min.insync.replicas=2`.
    pub fn cluster() -> Broker {
        Self::view(Kafka::launch(3))
    }

    fn view(kafka: Arc<Kafka>) -> Broker {
        let topic = unique("images");
        Broker { addr: kafka.bootstrap(), dlq: format!("{topic}.dlq"), topic, kafka, offset_readers: Default::default() }
    }

    /// Stops every node with SIGTERM (a controlled shutdown) and waits for it to exit.
    pub fn stop(&self) {
        self.nodes().for_each(|i| self.stop_node(i));
    }

    /// kill -9 on every node: the broker vanishes without a goodbye.
    pub fn kill(&self) {
        self.nodes().for_each(|i| self.kill_node(i));
    }

    /// Starts every stopped node again on its storage and ports, and waits until all answer.
    pub fn resume(&self) {
        for n in self.kafka.nodes.iter().filter(|n| !n.running()) {
            n.spawn(&self.kafka.voters(), self.kafka.replicas, self.kafka.group_protocols);
        }
        self.kafka.wait_ready(self.kafka.nodes.len());
    }

    pub fn nodes(&self) -> std::ops::Range<usize> {
        0..self.kafka.nodes.len()
    }

    pub fn stop_node(&self, i: usize) {
        self.kafka.nodes[i].signal(libc::SIGTERM);
    }

    pub fn kill_node(&self, i: usize) {
        self.kafka.nodes[i].signal(libc::SIGKILL);
    }

    /// Starts node `i` again without waiting for it (the others may be down too).
    pub fn restart_node(&self, i: usize) {
        self.kafka.nodes[i].spawn(&self.kafka.voters(), self.kafka.replicas, self.kafka.group_protocols);
    }

    /// Another view of the same broker or cluster, with topic names of its own.
    pub fn with_new_topics(&self) -> Broker {
        Self::view(self.kafka.clone())
    }

    /// Starts the nodes that are down (a test before may have left one down) and waits for all.
    pub fn ensure_all_up(&self) {
        if self.kafka.nodes.iter().any(|n| !n.running()) {
            self.resume();
        }
    }

    /// Whether every partition of `topic` has all the cluster's replicas in sync.
    pub fn fully_replicated(&self, topic: &str) -> bool {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let Ok(md) = client.fetch_metadata(Some(topic), Duration::from_secs(5)) else { return false };
        md.topics()
            .first()
            .is_some_and(|t| !t.partitions().is_empty() && t.partitions().iter().all(|p| p.isr().len() == self.kafka.replicas))
    }

    /// Which node leads `partition` of `topic` now.
    pub fn leader_of(&self, topic: &str, partition: i32) -> usize {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let leader = md.topics()[0].partitions().iter().find(|p| p.id() == partition).expect("partition").leader();
        self.kafka.nodes.iter().position(|n| n.id as i32 == leader).expect("leader is a node of this cluster")
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(self.kafka.replicas as i32));
        let res = futures::executor::block_on(admin.create_topics(&[topic], &AdminOptions::new())).unwrap();
        res[0].as_ref().expect("topic created");
    }
    /// Many keyed messages through one producer (the key picks the partition).
    pub fn produce_many(&self, topic: &str, messages: impl IntoIterator<Item = (String, String)>) {
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &self.addr).set("linger.ms", "20").create().unwrap();
        for (key, payload) in messages {
            let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
            while let Err((e, back)) = producer.send(record) {
                assert!(matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)), "{e}");
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// The end offset of each partition of `topic`.
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        (0..partitions).map(|p| client.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1).collect()
    }

    pub fn produce(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        self.produce_with_headers(topic, key, payload, &[]);
    }

    pub fn produce_with_headers(&self, topic: &str, key: Option<&str>, payload: &[u8], headers: &[(&str, &str)]) {
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if !headers.is_empty() {
            let owned = headers.iter().fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
                h.insert(rdkafka::message::Header { key, value: Some(*value) })
            });
            record = record.headers(owned);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// Every message of `topic` (all partitions), read from the start by a fresh group: at least
    /// `expect_at_least`, then on until nothing new came for 1.5 s (so duplicates show too).
    pub fn read_all(&self, topic: &str, expect_at_least: usize, timeout: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut last_new = Instant::now();
        while Instant::now() < deadline && (out.len() < expect_at_least || last_new.elapsed() < Duration::from_millis(1500)) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                last_new = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter().map(|x| (x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())).collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    partition: m.partition(),
                    offset: m.offset(),
                    headers,
                });
            }
        }
        out
    }

    /// The group's committed offset per partition of `topic` (None where nothing is committed).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let consumer = self
            .offset_readers
            .lock()
            .unwrap()
            .entry(group.to_owned())
            .or_insert_with(|| Arc::new(ClientConfig::new().set("bootstrap.servers", &self.addr).set("group.id", group).create().unwrap()))
            .clone();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        // A fresh broker answers "coordinator not available" until its offsets topic exists.
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
                Ok(got) => break got,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("committed offsets not read yet ({e}); asking again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("committed offsets of {group}: {e}"),
            }
        };
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }
}

impl Broker {
    pub fn log(&self) -> String {
        self.kafka.nodes.iter().map(|n| std::fs::read_to_string(n.dir.join("broker.log")).unwrap_or_default()).collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Close the offset readers while the broker still answers.
        self.offset_readers.lock().unwrap().clear();
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.signal(libc::SIGKILL);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    pub headers: Vec<(String, String)>,
}

// ---------------------------------------------------------------- Postgres

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own, dropped when the test ends.
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let name = unique("nasa_test");
        let mut admin = PgConnection::establish(ADMIN_URL).expect("Postgres on 127.0.0.1:5432: run scripts/test");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).unwrap();
        TestDb { url: format!("postgres://postgres@127.0.0.1:5432/{name}"), name }
    }

    pub fn rows_count(&self) -> usize {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query("SELECT count(*) AS n FROM images").get_result::<Count>(&mut self.conn()).map(|c| c.n as usize).unwrap_or(0)
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).unwrap()
    }

    /// The stored rows, or none when the table does not exist yet.
    pub fn rows(&self) -> Vec<ImageRow> {
        diesel::sql_query(
            "SELECT nasa_id, title, query, image_url, content_type, byte_size, sha256, image_bytes, \
             event_id::text AS event_id, kafka_partition, kafka_offset, trace_id FROM images ORDER BY id",
        )
        .load(&mut self.conn())
        .unwrap_or_default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(ADMIN_URL) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut admin);
        }
    }
}

#[derive(QueryableByName, Debug, Clone)]
pub struct ImageRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub nasa_id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub title: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub query: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub image_url: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub content_type: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub byte_size: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub sha256: String,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub image_bytes: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub event_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pub kafka_partition: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub kafka_offset: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub trace_id: Option<String>,
}

// ---------------------------------------------------------------- the daemon

/// The daemon binary: cargo's for tests, else `DAEMON_BIN`, else the one built with this example
/// (`target/<profile>/examples/x` runs `target/<profile>/nasa-ingest`), else the release build.
pub fn daemon_bin() -> String {
    match option_env!("CARGO_BIN_EXE_nasa-ingest") {
        Some(bin) => bin.to_owned(),
        None => std::env::var("DAEMON_BIN").unwrap_or_else(|_| {
            let beside = std::env::current_exe().ok().and_then(|exe| {
                let dir = exe.parent()?;
                (dir.file_name()? == "examples").then(|| dir.parent().map(|p| p.join("nasa-ingest")))?
            });
            match beside {
                Some(bin) if bin.exists() => bin.display().to_string(),
                _ => concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/nasa-ingest").to_owned(),
            }
        }),
    }
}

/// The daemon as a child process; its stdout and stderr lines are collected as they come.
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub data_dir: PathBuf,
}

/// Settings for a daemon wired to this test's broker, database and fake API.
pub fn daemon_env(broker: &Broker, db: &TestDb, nasa: &FakeNasa, data_dir: &std::path::Path) -> Vec<(String, String)> {
    [
        ("KAFKA_BROKERS", broker.addr.clone()),
        ("KAFKA_TOPIC", broker.topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("DATABASE_URL", db.url.clone()),
        ("NASA_API_URL", nasa.url.clone()),
        ("ALLOWED_IMAGE_HOSTS", "127.0.0.1".into()),
        ("INTERVAL_SECONDS", "1".into()),
        ("DATA_DIR", data_dir.display().to_string()),
        ("RETRY_MIN_BACKOFF_MS", "100".into()),
        ("RETRY_MAX_BACKOFF_MS", "1000".into()),
        ("PUBLISH_MIN_BACKOFF_MS", "200".into()),
        ("PUBLISH_MAX_BACKOFF_MS", "2000".into()),
        ("ENVIRONMENT", "test".into()),
        ("HTTP_ADDR", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

pub fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("")
}

impl Daemon {
    pub fn spawn(env: &[(String, String)]) -> Daemon {
        let mut cmd = Command::new(daemon_bin());
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("daemon starts");
        let lines = collect_lines(child.stdout.take().unwrap(), false);
        let stderr = collect_lines(child.stderr.take().unwrap(), true);
        Daemon { child, lines, stderr, data_dir: PathBuf::from(get(env, "DATA_DIR")) }
    }

    /// Its stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Its stderr lines so far (they are passed on to the test's stderr too, as they come).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Parsed log lines whose `message` is `message`.
    pub fn logs_with(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v["message"] == message).collect()
    }

    pub fn wait_for_log(&self, message: &str, count: usize, timeout: Duration) {
        wait_until(timeout, &format!("{count} log line(s) {message:?}"), || self.logs_with(message).len() >= count);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.wait_exit(Duration::from_secs(30));
        (status, started.elapsed())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }
}

/// The lines of `out`, collected by a thread as they come; `echo` writes each to this process's
/// stderr too (not captured by the test harness, as an inherited stderr would not be).
fn collect_lines(out: impl std::io::Read + Send + 'static, echo: bool) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if echo {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.dump());
        }
    }
}

/// The `dlq` command with the settings of the daemon `env` runs with.
pub fn dlq_command(env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(daemon_bin());
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).arg("dlq").args(args);
    for k in ["KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID"] {
        cmd.env(k, get(env, k));
    }
    cmd
}

/// A current-format event for `nasa_id`, its image on the fake server.
pub fn event_json(nasa: &FakeNasa, nasa_id: &str) -> String {
    serde_json::json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4(), "event_type": "image_discovered",
        "nasa_id": nasa_id, "image_url": format!("{}/image/{nasa_id}/{nasa_id}~medium.jpg", nasa.url),
        "title": format!("title of {nasa_id}"), "query": "test", "center": "JSC",
        "date_created": "2020-01-01T00:00:00Z", "produced_at": chrono::Utc::now(),
    })
    .to_string()
}

/// The daemon's `MAX_IMAGE_BYTES` under which [`poison_events`]'s `too_large` image (2 MiB and
/// more) is too large and the others are not.
pub const POISON_MAX_IMAGE_BYTES: &str = "1048576";

/// One event of every kind that no retry can handle, with the dead-letter reason each must get:
/// every reason but `panic`, which only an injected panic makes (`POST /admin/events/panic`).
/// The daemon needs `MAX_IMAGE_BYTES` at [`POISON_MAX_IMAGE_BYTES`] and only 127.0.0.1 allowed.
pub fn poison_events(nasa: &FakeNasa) -> Vec<(&'static str, String)> {
    let with = |id: &str, field: &str, value: String| {
        let mut v: serde_json::Value = serde_json::from_str(&event_json(nasa, id)).unwrap();
        v[field] = value.into();
        v.to_string()
    };
    nasa.state.set_image_status("gone-404", 404);
    // An index row over Postgres's limit: random, so that the index cannot compress it.
    let too_long_id: String = {
        use rand::Rng;
        (0..10_000).map(|_| rand::rng().sample(rand::distr::Alphanumeric) as char).collect()
    };
    vec![
        ("not_json", "this is not json".into()),
        (
            "missing_field",
            r#"{"event_type": "image_discovered", "event_id": "0b9c6f0e-8a57-4a53-9d5c-1f0e3c1b2a77", "nasa_id": "x"}"#.into(),
        ),
        ("unknown_event_type", with("odd-type", "event_type", "image_deleted".into())),
        ("bad_url", with("bad-url", "image_url", "not a url".into())),
        ("image_http_4xx", with("gone-404", "image_url", format!("{}/image/gone-404/gone-404~orig.jpg", nasa.url))),
        ("not_an_image", with("page", "image_url", format!("{}/image/page/page.html", nasa.url))),
        ("too_large", with("big", "image_url", format!("{}/image/big/big~huge.jpg", nasa.url))),
        ("host_not_allowed", with("elsewhere", "image_url", format!("http://localhost:{}/image/x/x~orig.jpg", nasa.addr.port()))),
        ("db_rejected", with("as11-40-5874", "nasa_id", too_long_id)),
    ]
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

// ---------------------------------------------------------------- a TCP proxy that can cut or stall

const OPEN: u8 = 0;
const CUT: u8 = 1;
const STALLED: u8 = 2;

/// Forwards 127.0.0.1:port to `target`. `cut()` resets every connection and refuses new ones
/// (accepts and closes them at once); `stall()` moves no byte either way and keeps every
/// connection open (new ones too), as a network that silently drops packets; `restore()`
/// forwards again (what was held flows on).
pub struct TcpProxy {
    pub port: u16,
    mode: Arc<std::sync::atomic::AtomicU8>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    pub fn start(target: &str) -> TcpProxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(OPEN));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (target, mode2, conns2) = (target.to_owned(), mode.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if mode2.load(Ordering::SeqCst) == CUT {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut list = conns2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let mode = mode2.clone();
                    std::thread::spawn(move || pump(from, to, &mode));
                }
            }
        });
        TcpProxy { port, mode, conns }
    }

    pub fn cut(&self) {
        self.mode.store(CUT, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn stall(&self) {
        self.mode.store(STALLED, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.mode.store(OPEN, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; holds whatever it has while the proxy is stalled.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, mode: &std::sync::atomic::AtomicU8) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode.load(Ordering::SeqCst) == STALLED {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                while mode.load(Ordering::SeqCst) == STALLED {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------- HTTP without a client crate

/// A plain HTTP/1.1 request; returns (status, headers and body as text).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, head, body) = http_exchange(addr, method, path, headers, "");
    (status, format!("{head}\r\n{body}"))
}

impl Daemon {
    /// The address the HTTP endpoint bound (HTTP_ADDR=127.0.0.1:0 picks a free port).
    pub fn http_addr(&self) -> String {
        self.wait_for_log("HTTP endpoint listening", 1, Duration::from_secs(30));
        self.logs_with("HTTP endpoint listening")[0]["labels.addr"].as_str().unwrap().to_owned()
    }

    /// The actors started, in order (from the supervisor's `actor started` lines).
    pub fn started_actors(&self) -> Vec<String> {
        self.logs_with("actor started").iter().map(|v| v["labels.actor"].as_str().unwrap().to_owned()).collect()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon still running after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A JSON request; returns (status, parsed body or Null).
pub fn http_json(addr: &str, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, _, body) = http_exchange(addr, method, path, &[("Content-Type", "application/json")], &payload);
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// One HTTP/1.1 exchange: (status, head, body). Reads by Content-Length or chunks, so servers
/// that keep the connection open answer at once.
pub fn http_exchange(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], payload: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", payload.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(payload);
    (&s).write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let lower = head.to_ascii_lowercase();
    let length = lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            let _ = reader.read_exact(&mut body);
        }
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let body = if length.is_none() && lower.contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    (status, head, body)
}

/// The body of a chunked HTTP/1.1 response, put together.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------- a Sentry ingest endpoint

/// Accepts Sentry envelopes over HTTP and keeps the events in them.
pub struct FakeSentry {
    pub port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl FakeSentry {
    pub fn start() -> FakeSentry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = events.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let sink = sink.clone();
                std::thread::spawn(move || serve_sentry(conn, sink));
            }
        });
        FakeSentry { port, events }
    }

    pub fn dsn(&self) -> String {
        format!("http://publickey@127.0.0.1:{}/42", self.port)
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }
}

fn serve_sentry(conn: std::net::TcpStream, sink: Arc<Mutex<Vec<serde_json::Value>>>) {
    use std::io::{Read, Write};
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        let len = lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // An envelope: a header line, then (item header, payload) line pairs.
        let text = String::from_utf8_lossy(&body).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 1;
        while i + 1 < lines.len() {
            let item: serde_json::Value = serde_json::from_str(lines[i]).unwrap_or_default();
            if item["type"] == "event" {
                if let Ok(event) = serde_json::from_str(lines[i + 1]) {
                    sink.lock().unwrap().push(event);
                }
            }
            i += 2;
        }
        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
