//! The Postgres setting (`DATABASE_URL`), [`PostgresConfig`] and the [`DatabaseUrl`] that never
//! shows its password.

use url::Url;

use super::error::{ConfigError, Errors};
use super::parse::non_empty;
use super::setting::define_settings;

define_settings! {
    /// The raw `DATABASE_URL`.
    PostgresSettings, heading "Postgres";
    database_url => DATABASE_URL {
        unset: "(none)",
        about: "`postgres://user[:password]@host[:port]/database`, with libpq's parameters (`?sslmode=require`, ...) but not Kerberos or LDAP, which the built-in libpq leaves out; required by the consumer role and `migrate`; never logged",
    },
}

const DATABASE_URL_FORM: &str = "postgres://user[:password]@host[:port]/database";

/// `DATABASE_URL`.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// None only when neither the consumer role nor `migrate` needs it.
    pub url: Option<DatabaseUrl>,
}

impl PostgresConfig {
    /// `required`: the command or the roles need the database.
    pub(super) fn from_settings(s: &PostgresSettings, required: bool, e: &mut Errors) -> PostgresConfig {
        let url = match parse_database_url(&s.database_url) {
            Ok(None) if required => {
                e.push(ConfigError::Missing { var: vars::DATABASE_URL.var, accepted: DATABASE_URL_FORM.into() });
                None
            }
            parsed => e.take(parsed),
        };
        PostgresConfig { url }
    }
}

fn parse_database_url(v: &Option<String>) -> Result<Option<DatabaseUrl>, ConfigError> {
    let Some(raw) = non_empty(v) else { return Ok(None) };
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.path().len() > 1 => Ok(Some(DatabaseUrl(raw.to_owned()))),
        _ => Err(ConfigError::InvalidSecret { var: vars::DATABASE_URL.var, accepted: DATABASE_URL_FORM.into() }),
    }
}

/// A database URL whose `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, password included: only for opening connections.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// host:port, for logs.
    pub fn address(&self) -> String {
        match Url::parse(&self.0) {
            Ok(u) => format!("{}:{}", u.host_str().unwrap_or(""), u.port().unwrap_or(5432)),
            Err(_) => "<unparsable>".into(),
        }
    }
    /// host:port/database, for logs.
    pub fn redacted(&self) -> String {
        match Url::parse(&self.0) {
            Ok(u) => format!("{}:{}{}", u.host_str().unwrap_or(""), u.port().unwrap_or(5432), u.path()),
            Err(_) => "<unparsable>".into(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}
