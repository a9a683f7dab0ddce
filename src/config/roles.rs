//! The role switches (`PRODUCER_ENABLED`, `CONSUMER_ENABLED`) and [`Roles`].

use super::error::{ConfigError, Errors};
use super::parse::parse_bool;
use super::setting::define_settings;

define_settings! {
    /// The raw role switches.
    RoleSettings, heading "Roles";
    producer_enabled => PRODUCER_ENABLED { default: "true", about: "run the producer role: the Fetcher and Publisher" },
    consumer_enabled => CONSUMER_ENABLED {
        default: "true",
        about: "run the consumer role: the Subscriber, Downloader and Storer (at least one role must be on)",
    },
}

/// `PRODUCER_ENABLED`, `CONSUMER_ENABLED`: at least one is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub producer: bool,
    pub consumer: bool,
}

impl Roles {
    /// `publish_only`: the command only publishes (the producer's side), whatever the switches say.
    pub(super) fn from_settings(s: &RoleSettings, publish_only: bool, e: &mut Errors) -> Roles {
        let producer = parse_bool(&vars::PRODUCER_ENABLED, &s.producer_enabled);
        let consumer = parse_bool(&vars::CONSUMER_ENABLED, &s.consumer_enabled);
        let both_off = matches!((&producer, &consumer), (Ok(false), Ok(false)));
        let roles = Roles { producer: e.take(producer), consumer: e.take(consumer) };
        if publish_only {
            return Roles { producer: true, consumer: false };
        }
        if both_off {
            e.push(ConfigError::NoRole);
        }
        roles
    }

    /// For logs and Sentry tags: "producer", "consumer" or "producer+consumer".
    pub fn label(&self) -> &'static str {
        match (self.producer, self.consumer) {
            (true, true) => "producer+consumer",
            (true, false) => "producer",
            _ => "consumer",
        }
    }
}
