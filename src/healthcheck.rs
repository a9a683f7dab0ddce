//! `nasa-ingest healthcheck`: the container's HEALTHCHECK. It reads the same settings as the
//! daemon (HTTP_ADDR above all) and asks the daemon's own `/healthz`, so the check follows
//! whatever address the daemon was given, and the image needs no curl.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Why the daemon is not healthy, or cannot be asked. Each says which request failed and how.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("HTTP_ADDR has port 0 (a free port picked at start): there is no fixed port to check")]
    NoFixedPort,
    /// No connection, or it broke or timed out before the status line.
    #[error("GET http://{addr}/healthz: {source}")]
    Request { addr: SocketAddr, source: std::io::Error },
    #[error("GET http://{addr}/healthz: no answer")]
    NoAnswer { addr: SocketAddr },
    /// The daemon answered something else than 200: its status line.
    #[error("GET http://{addr}/healthz: {status_line}")]
    NotOk { addr: SocketAddr, status_line: String },
}

/// Where to reach an endpoint bound to `bind`: a wildcard address is asked on loopback.
pub fn target(bind: SocketAddr) -> Result<SocketAddr, HealthcheckError> {
    if bind.port() == 0 {
        return Err(HealthcheckError::NoFixedPort);
    }
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, bind.port()))
}

/// GET /healthz on the address the daemon binds; Ok when it answers 200 within `timeout`.
pub fn check(bind: SocketAddr, timeout: Duration) -> Result<(), HealthcheckError> {
    let addr = target(bind)?;
    let status_line = status_line(addr, timeout).map_err(|source| HealthcheckError::Request { addr, source })?;
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ if status_line.is_empty() => Err(HealthcheckError::NoAnswer { addr }),
        _ => Err(HealthcheckError::NotOk { addr, status_line }),
    }
}

/// The first line of the answer to `GET /healthz`, trimmed; empty if the daemon closed at once.
fn status_line(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    // The status line is all that matters; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    Ok(head.lines().next().unwrap_or("").trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(reply: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(reply.as_bytes());
        });
        addr
    }

    #[test]
    fn wildcard_addresses_are_asked_on_loopback() {
        assert_eq!(target("0.0.0.0:9000".parse().unwrap()).unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(target("[::]:9000".parse().unwrap()).unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(target("10.1.2.3:9000".parse().unwrap()).unwrap(), "10.1.2.3:9000".parse().unwrap());
        assert!(target("0.0.0.0:0".parse().unwrap()).is_err());
    }

    #[test]
    fn only_200_is_healthy() {
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        check(ok, Duration::from_secs(2)).unwrap();
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let err = check(bad, Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.to_string(), format!("GET http://{bad}/healthz: HTTP/1.1 503 Service Unavailable"));
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = check(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HealthcheckError::Request { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("GET http://127.0.0.1:{port}/healthz: ")), "{err}");
    }
}
