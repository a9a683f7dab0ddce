//! The daemons: a slot per daemon (restarted as Docker would, its logs kept across processes), the
//! `backfill` runs beside them, and the admin/status requests the run sends them.

use crate::common::{daemon_bin, dechunk, get, Daemon};
use crate::settings::TOKEN;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Slot {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub producer: bool,
    pub daemon: Option<Daemon>,
    started_at: Instant,
    /// Log lines of the earlier processes of this slot.
    past: Vec<String>,
    /// Should a process run in this slot (a daemon killed by the schedule is wanted back).
    pub wanted: bool,
    pub restart_at: Option<Instant>,
    /// The signal the schedule sent to the current process, if any.
    signalled: Option<i32>,
    pub processes: u32,
    pub panics_injected: u32,
    pub crashes: Vec<Instant>,
    /// Exits nobody asked for: (description, the last log lines).
    pub unexpected_exits: Vec<(String, Vec<String>)>,
    pub peak_rss_kib: u64,
    http: Option<String>,
}

impl Slot {
    pub fn new(name: &str, env: Vec<(String, String)>, producer: bool, wanted: bool) -> Slot {
        Slot {
            name: name.into(),
            env,
            producer,
            daemon: None,
            started_at: Instant::now(),
            past: Vec::new(),
            wanted,
            restart_at: if wanted { Some(Instant::now()) } else { None },
            signalled: None,
            processes: 0,
            panics_injected: 0,
            crashes: Vec::new(),
            unexpected_exits: Vec::new(),
            peak_rss_kib: 0,
            http: None,
        }
    }

    pub fn running(&self) -> bool {
        self.daemon.is_some() && self.signalled.is_none()
    }

    pub fn spawn(&mut self) {
        self.daemon = Some(Daemon::spawn(&self.env));
        self.started_at = Instant::now();
        self.processes += 1;
        self.signalled = None;
        self.panics_injected = 0;
        self.http = None;
        self.restart_at = None;
    }

    pub fn signal(&mut self, sig: i32) {
        if let Some(d) = &self.daemon {
            unsafe { libc::kill(d.pid() as i32, sig) };
            self.signalled = Some(sig);
        }
    }

    pub fn http(&mut self) -> Option<String> {
        if self.http.is_none() {
            let d = self.daemon.as_ref()?;
            self.http = d.logs_with("HTTP endpoint listening").first().and_then(|l| l["labels.addr"].as_str().map(str::to_owned));
        }
        self.http.clone()
    }

    pub fn all_lines(&self) -> Vec<String> {
        let mut out = self.past.clone();
        if let Some(d) = &self.daemon {
            out.extend(d.lines());
        }
        out
    }

    /// Reaps an exited process; true when it exited.
    /// Its DATA_DIR (where a producer keeps its outbox).
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(get(&self.env, "DATA_DIR"))
    }

    pub fn reap(&mut self, restart_after: Duration) -> bool {
        let Some(d) = self.daemon.as_mut() else { return false };
        let Some(status) = d.try_wait() else { return false };
        let lines = d.lines();
        // Past the restart limit after crashes the schedule asked for: exit 1, as documented.
        let past_limit = status.code() == Some(1)
            && self.crashes.iter().any(|t| t.elapsed() < Duration::from_secs(120))
            && lines.iter().any(|l| l.contains("passed its restart limit"));
        let expected = match self.signalled {
            Some(libc::SIGKILL) => true,
            Some(libc::SIGTERM) => status.code() == Some(0) || past_limit,
            _ => past_limit,
        };
        if !expected {
            let tail = last(&lines, 25).to_vec();
            self.unexpected_exits
                .push((format!("process {} exited with {status} (signal sent: {:?})", self.processes, self.signalled), tail));
        }
        self.past.push(format!("---- {} process {} exited: {status}", self.name, self.processes));
        self.past.extend(lines);
        self.past.push(format!("---- {} process {} ended", self.name, self.processes));
        self.daemon = None;
        self.signalled = None;
        self.http = None;
        if self.wanted && self.restart_at.is_none() {
            self.restart_at = Some(Instant::now() + restart_after);
        }
        true
    }

    pub fn sample_rss(&mut self) {
        if let Some(d) = &self.daemon {
            let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap_or_default();
            for field in ["VmHWM:", "VmRSS:"] {
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                self.peak_rss_kib = self.peak_rss_kib.max(kib);
            }
        }
    }
}

/// A `nasa-ingest backfill` run on the DATA_DIR of a producer slot; its logs (stderr) are kept.
pub struct BackfillRun {
    pub slot: usize,
    pub what: String,
    pub child: std::process::Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub status: Option<std::process::ExitStatus>,
}

impl BackfillRun {
    pub fn spawn(slot: usize, env: &[(String, String)], query: &str, limit: u32) -> std::io::Result<BackfillRun> {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(daemon_bin());
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let limit = limit.to_string();
        cmd.args(["backfill", "--query", query, "--limit", &limit]);
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (err, sink) = (child.stderr.take().expect("piped"), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(BackfillRun { slot, what: format!("--query {query} --limit {limit}"), child, lines, status: None })
    }

    pub fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }
}

/// One HTTP request with timeouts that never panics: (status, body).
pub fn request(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    Some((status, body))
}

/// A GET whose answer is JSON: (status, body); None where the request fails or the body is not JSON.
pub fn get_json(addr: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let (status, body) = request(addr, "GET", path)?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// The last `n` of `lines` (all of them where there are fewer).
pub fn last<T>(lines: &[T], n: usize) -> &[T] {
    &lines[lines.len().saturating_sub(n)..]
}
