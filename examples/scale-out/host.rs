//! A slow image host: every GET is answered with the same image, its bytes sent at a fixed rate
//! per download (a slice every 10 ms), so each download takes size / rate however many run at once.
//! nginx's `limit_rate` cannot do this: it lets the first second's worth of bytes out at once, so
//! an image smaller than the rate arrives unpaced.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(10);

/// Serves `body` on a free port of 127.0.0.1 at `bytes_per_s` per download, until the process
/// ends; its address.
pub fn start(body: Vec<u8>, bytes_per_s: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("bound").to_string();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let body = body.clone();
            // One thread a connection: the daemons keep a few connections each, alive.
            std::thread::spawn(move || serve(stream, &body, bytes_per_s));
        }
    });
    addr
}

/// Answers the requests of one connection, one after the other, until the client closes it.
fn serve(mut stream: TcpStream, body: &[u8], bytes_per_s: u64) -> Option<()> {
    let mut requests = BufReader::new(stream.try_clone().ok()?);
    let slice = ((bytes_per_s as f64 * TICK.as_secs_f64()) as usize).max(1);
    loop {
        // The request's head (a GET has no body).
        let mut line = String::new();
        loop {
            line.clear();
            if requests.read_line(&mut line).ok()? == 0 {
                return Some(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).ok()?;
        let started = Instant::now();
        for (i, part) in body.chunks(slice).enumerate() {
            // The pace is the host being measured, not a wait for a condition.
            std::thread::sleep((started + TICK * i as u32).saturating_duration_since(Instant::now()));
            stream.write_all(part).ok()?;
        }
    }
}
