//! A bad setting ([`ConfigError`]), every bad setting at once ([`ConfigErrors`]), and the
//! collector that lets validation go on past the first one.

/// One bad setting: each names the variable to fix and what it accepts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: expected {accepted}")]
    Invalid { var: &'static str, value: String, accepted: String },
    #[error("{var} is not valid (value hidden: it may hold a secret): expected {accepted}")]
    InvalidSecret { var: &'static str, accepted: String },
    #[error("{var} is not set: expected {accepted}")]
    Missing { var: &'static str, accepted: String },
    #[error("PRODUCER_ENABLED and CONSUMER_ENABLED are both false: accepted is at least one of them true")]
    NoRole,
}

impl ConfigError {
    /// The variable to fix.
    pub fn var(&self) -> &'static str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::InvalidSecret { var, .. } | ConfigError::Missing { var, .. } => var,
            ConfigError::NoRole => "PRODUCER_ENABLED",
        }
    }
}

/// Every bad setting, one per line.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}", one_per_line(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn one_per_line(errors: &[ConfigError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// The errors found so far; a bad setting's value is replaced by a stand-in so that validation
/// goes on to the next setting (the stand-ins are never used: any error fails the whole config).
#[derive(Default)]
pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    /// The value, or the type's default as its stand-in.
    pub(super) fn take<T: Default>(&mut self, r: Result<T, ConfigError>) -> T {
        self.take_or(r, T::default)
    }

    pub(super) fn take_or<T>(&mut self, r: Result<T, ConfigError>, stand_in: impl FnOnce() -> T) -> T {
        r.unwrap_or_else(|e| {
            self.push(e);
            stand_in()
        })
    }

    pub(super) fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// `value` when nothing was wrong, else every error found.
    pub(super) fn or_value<T>(self, value: T) -> Result<T, ConfigErrors> {
        match self.0.is_empty() {
            true => Ok(value),
            false => Err(ConfigErrors(self.0)),
        }
    }
}
