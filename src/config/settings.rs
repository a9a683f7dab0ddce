//! [`Settings`]: every group's raw settings together, in `--help`'s order, and [`all`], every
//! [`Setting`] in that order (for the docs and the tests). Both are made from one list of the
//! groups; a group's own settings are defined in its file.

use super::setting::Setting;

/// Makes [`Settings`] (one flattened field per group, named after the group's module) and
/// [`all`] from the list of groups.
macro_rules! setting_groups {
    ($($group:ident: $raw:ident),* $(,)?) => {
        /// The raw settings, as given, by group.
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct Settings {
            $(
                #[command(flatten)]
                pub $group: super::$group::$raw,
            )*
        }

        /// Every setting, in `--help`'s order (the README and `.env.example` follow it too).
        pub fn all() -> impl Iterator<Item = &'static Setting> {
            [$(super::$group::$raw::LIST),*].into_iter().flatten()
        }
    };
}

// In `--help`'s order: each heading's settings are listed together, in this order.
setting_groups! {
    kafka: KafkaSettings,
    postgres: PostgresSettings,
    nasa: NasaSettings,
    roles: RoleSettings,
    consumer: ConsumerSettings,
    outbox: OutboxSettings,
    retries: RetrySettings,
    http: HttpSettings,
    observability: ObservabilitySettings,
}

/// The names of every env var the program reads (each setting's own; KAFKA_BROKERS's two old
/// names are read as fallbacks).
pub fn env_var_names() -> std::collections::BTreeSet<String> {
    all().map(|s| s.var.to_owned()).collect()
}
