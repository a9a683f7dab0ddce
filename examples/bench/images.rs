//! The images the benchmarks download, and the events that point at them: generated,
//! incompressible "JPEG" bodies, served by nginx (`bench`) or by a slow host (`scale-out`).
#![allow(dead_code)] // shared by two examples, each uses a part

use crate::common::{free_port, wait_until};
use rand::RngCore;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// nginx serving `root` on a free port, one worker (the machine has 2 cores to share).
pub struct Nginx {
    pub addr: String,
    child: std::process::Child,
}

impl Nginx {
    /// Serves the files `write_images` wrote under `dir`.
    pub fn start(dir: &Path) -> Nginx {
        let port = free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 120s;\n\
                   types {{ image/jpeg jpg; }}\n\
                   client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
                   server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let child = Command::new("nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (Debian package nginx-light; scripts/bench installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(10), "nginx listening", || std::net::TcpStream::connect(&addr).is_ok());
        Nginx { addr, child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends the event of image `i` (waits while librdkafka's queue is full).
pub fn produce(producer: &rdkafka::producer::BaseProducer, topic: &str, base_url: &str, i: usize) {
    let event = serde_json::json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4(), "event_type": "image_discovered",
        "nasa_id": id(i), "image_url": format!("{base_url}/image/{}/{}~orig.jpg", id(i), id(i)),
        "title": format!("bench image {i}"), "query": "bench", "center": "JSC",
        "date_created": "2020-01-01T00:00:00Z", "produced_at": chrono::Utc::now(),
    })
    .to_string();
    let key = id(i);
    while producer.send(rdkafka::producer::BaseRecord::to(topic).key(&key).payload(&event)).is_err() {
        producer.poll(Duration::from_millis(10));
    }
}

pub fn id(i: usize) -> String {
    format!("bench-{i:06}")
}

/// `size` bytes: JPEG magic, then random (incompressible) bytes.
pub fn image_body(size: usize) -> Vec<u8> {
    let mut body = vec![0u8; size];
    rand::rng().fill_bytes(&mut body);
    body[..4].copy_from_slice(b"\xFF\xD8\xFF\xE0");
    body
}

/// N files of `size` bytes, each different (its number after the magic).
pub fn write_images(root: &Path, count: usize, size: usize) {
    let mut body = image_body(size);
    for i in 0..count {
        let dir = root.join("www/image").join(id(i));
        std::fs::create_dir_all(&dir).unwrap();
        body[4..16].copy_from_slice(format!("{i:012}").as_bytes());
        std::fs::write(dir.join(format!("{}~orig.jpg", id(i))), &body).unwrap();
    }
}
