//! OpenSearch (Elasticsearch's API) for the tests that index the daemon's log lines as a user's
//! ELK would: one node per test binary, run by `scripts/opensearch/node` and killed when the
//! binary exits, with the ECS index template of deploy/ecs/ installed. Spoken to in plain
//! HTTP/1.1 (`http_exchange`), as the other HTTP peers of the tests are.

use super::{broker_port, http_exchange, kill_at_exit, repo_root, tail};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The template's name in the engine; its index patterns are in the file.
const TEMPLATE: &str = "nasa-ingest-ecs";
const TEMPLATE_FILE: &str = "deploy/ecs/opensearch-template.json";

/// The node of this test binary.
pub struct OpenSearch {
    /// host:port of its HTTP API.
    pub addr: String,
    dir: tempfile::TempDir,
}

/// What `_bulk` made of a batch of lines.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub indexed: usize,
    pub rejected: Vec<Rejection>,
}

/// A line the engine would not index, and why (the error's type and reason, as the engine said).
#[derive(Debug)]
pub struct Rejection {
    pub line: String,
    pub status: u16,
    pub reason: String,
}

impl OpenSearch {
    /// The test binary's node, started on first use (the tests of a binary share it: each indexes
    /// into an index of its own, see `fresh_index`).
    pub fn start() -> &'static OpenSearch {
        static NODE: OnceLock<OpenSearch> = OnceLock::new();
        NODE.get_or_init(OpenSearch::launch)
    }

    /// Starts a node on a free port; one that cannot bind it (taken between the choice and the
    /// bind) is started again on another.
    fn launch() -> OpenSearch {
        for tries in 1.. {
            let dir = tempfile::Builder::new().prefix("opensearch").tempdir().unwrap();
            let node = OpenSearch { addr: format!("127.0.0.1:{}", broker_port()), dir };
            match node.spawn_and_wait() {
                Ok(()) => return node,
                Err(e) if tries < 3 => eprintln!("opensearch: {e}; starting again on another port"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn spawn_and_wait(&self) -> Result<(), String> {
        let started = Instant::now();
        let log = std::fs::File::create(self.log_path()).unwrap();
        let port = self.addr.rsplit(':').next().unwrap();
        let mut child = Command::new(repo_root().join("scripts/opensearch/node"))
            .args(["--dir", &self.dir.path().join("node").display().to_string(), "--port", port])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("scripts/opensearch/node starts (run scripts/test, which installs Java and OpenSearch)");
        kill_at_exit(child.id());
        self.wait_ready(&mut child)?;
        // One node holds no replica: without this every index would stay yellow.
        self.request("PUT", "/_cluster/settings", &json!({"persistent": {"cluster.default_number_of_replicas": 0}}).to_string());
        eprintln!("opensearch: ready in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Polls the HTTP API until it answers; an error when the node exits meanwhile.
    fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("OpenSearch exited with {status} while starting: {}", tail(&self.log_path())));
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() && http_exchange(&self.addr, "GET", "/", &[], "").0 == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("OpenSearch did not answer on {} within 120 s: {}", self.addr, tail(&self.log_path())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One request with a JSON (or NDJSON) body; panics on an HTTP error, with the engine's answer.
    fn request(&self, method: &str, path: &str, body: &str) -> Value {
        let content_type = if path.ends_with("/_bulk") { "application/x-ndjson" } else { "application/json" };
        let (status, _, answer) = http_exchange(&self.addr, method, path, &[("Content-Type", content_type)], body);
        assert!((200..300).contains(&status), "OpenSearch {method} {path}: {status} {answer}");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("OpenSearch {method} {path}: not JSON ({e}): {answer}"))
    }

    /// Installs (or replaces) deploy/ecs/opensearch-template.json, the ECS template users install.
    pub fn install_template(&self) {
        let template = std::fs::read_to_string(repo_root().join(TEMPLATE_FILE)).unwrap();
        self.request("PUT", &format!("/_index_template/{TEMPLATE}"), &template);
    }

    /// A name no other test uses, which the template's `nasa-ingest-*` pattern matches.
    pub fn fresh_index(&self) -> String {
        format!("nasa-ingest-{}", uuid::Uuid::new_v4().simple())
    }

    /// Sends each line as one document through `_bulk`, as a shipper would, and says which lines
    /// were rejected and why (a line that is not JSON is rejected too).
    pub fn bulk(&self, index: &str, lines: &[String]) -> BulkOutcome {
        let mut outcome = BulkOutcome::default();
        if lines.is_empty() {
            return outcome;
        }
        let body: String = lines.iter().map(|line| format!("{{\"create\":{{}}}}\n{line}\n")).collect();
        let answer = self.request("POST", &format!("/{index}/_bulk"), &body);
        let items = answer["items"].as_array().expect("_bulk answers an item per line");
        assert_eq!(items.len(), lines.len(), "one _bulk item per line: {answer}");
        for (line, item) in lines.iter().zip(items) {
            let result = &item["create"];
            match result.get("error") {
                None => outcome.indexed += 1,
                Some(error) => outcome.rejected.push(Rejection {
                    line: line.clone(),
                    status: result["status"].as_u64().unwrap_or(0) as u16,
                    reason: error_reason(error),
                }),
            }
        }
        outcome
    }

    /// Makes what was indexed into `index` searchable now.
    pub fn refresh(&self, index: &str) {
        self.request("POST", &format!("/{index}/_refresh"), "");
    }

    /// The `_source` of each hit of `request` (a search body: query, sort, size) in `index`.
    pub fn search(&self, index: &str, request: &Value) -> Vec<Value> {
        let answer = self.request("POST", &format!("/{index}/_search"), &request.to_string());
        answer["hits"]["hits"].as_array().expect("hits").iter().map(|hit| hit["_source"].clone()).collect()
    }

    /// The mapping of `field` in `index` (its type, sub-fields), or Null where it is not mapped.
    pub fn field_mapping(&self, index: &str, field: &str) -> Value {
        let answer = self.request("GET", &format!("/{index}/_mapping/field/{field}"), "");
        let leaf = field.rsplit('.').next().unwrap();
        answer[index]["mappings"][field]["mapping"][leaf].clone()
    }
}

/// "type: reason", followed by the causes the engine nested, e.g. the parse error behind a
/// mapper_parsing_exception.
fn error_reason(error: &Value) -> String {
    let mut reason = format!("{}: {}", error["type"].as_str().unwrap_or("?"), error["reason"].as_str().unwrap_or("?"));
    let mut cause = &error["caused_by"];
    while cause.is_object() {
        reason.push_str(&format!(" (caused by {}: {})", cause["type"].as_str().unwrap_or("?"), cause["reason"].as_str().unwrap_or("?")));
        cause = &cause["caused_by"];
    }
    reason
}
