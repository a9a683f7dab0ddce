//! The HTTP endpoint's settings and [`HttpConfig`].

use std::net::SocketAddr;

use super::error::{ConfigError, Errors};
use super::parse::{default_of, invalid, non_empty, or_default};
use super::setting::define_settings;

define_settings! {
    /// The raw settings of the HTTP endpoint.
    HttpSettings, heading "HTTP endpoint";
    http_addr => HTTP_ADDR {
        default: "0.0.0.0:8081",
        about: "the HTTP endpoint (`/healthz`, `/status`, `/metrics`, admin routes); port 0 picks a free port (logged)",
    },
    admin_token => ADMIN_TOKEN {
        unset: "empty",
        about: "bearer token of the admin routes (fault injection, such as `POST /admin/actors/{name}/crash`); empty: the routes do not exist",
    },
}

/// `HTTP_ADDR`, `ADMIN_TOKEN`.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// None: the admin routes do not exist.
    pub admin_token: Option<String>,
}

impl HttpConfig {
    pub(super) fn from_settings(s: &HttpSettings, e: &mut Errors) -> HttpConfig {
        HttpConfig {
            addr: e.take_or(parse_socket_addr(&s.http_addr), || default_of(&vars::HTTP_ADDR).parse().expect("a valid address")),
            admin_token: non_empty(&s.admin_token).map(str::to_owned),
        }
    }
}

fn parse_socket_addr(v: &Option<String>) -> Result<SocketAddr, ConfigError> {
    let raw = or_default(&vars::HTTP_ADDR, v);
    raw.parse().map_err(|_| invalid(vars::HTTP_ADDR.var, raw, "ip:port such as 0.0.0.0:8081 (port 0 picks a free one)"))
}
