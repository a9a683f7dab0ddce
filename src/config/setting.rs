//! What a setting is ([`Setting`]), and `define_settings!`, which defines a group of them: each
//! setting is written once, and its raw clap field, its `Setting` and the group's list are all
//! made from that one definition.

/// One setting: its variable, the `--help` heading it is listed under, its default and what it
/// does. clap's help, the parser's default, the README's configuration table and
/// `deploy/.env.example` are all made from it (see [`super::docs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub var: &'static str,
    pub heading: &'static str,
    pub if_unset: IfUnset,
    /// What it does, in a line (backticks mark literal values, in `--help` too).
    pub about: &'static str,
}

/// What an unset (or empty) setting means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfUnset {
    /// This value is used, and `--help` shows it as `[default: ...]`.
    Value(&'static str),
    /// There is no value; the text says what that means, for the README's default column.
    Nothing(&'static str),
}

impl Setting {
    /// The value used when the setting is unset or empty.
    pub const fn default_value(&self) -> Option<&'static str> {
        match self.if_unset {
            IfUnset::Value(v) => Some(v),
            IfUnset::Nothing(_) => None,
        }
    }

    /// The line `--help` shows.
    pub fn help(&self) -> String {
        match self.if_unset {
            IfUnset::Value(v) => format!("{} [default: {v}]", self.about),
            IfUnset::Nothing(_) => self.about.to_owned(),
        }
    }

    /// The flag's id (its long name with `_`), as clap derives it from the field.
    pub fn id(&self) -> String {
        self.var.to_ascii_lowercase()
    }
}

/// Defines one group of settings, all listed under one `--help` heading:
///
/// ```ignore
/// define_settings! {
///     /// The raw `KAFKA_*` settings.
///     KafkaSettings, heading "Kafka";
///     kafka_topic => KAFKA_TOPIC { default: "images", about: "topic of the events" },
///     // `unset:` instead of `default:` when there is no value; the text says what that means.
///     database_url => DATABASE_URL { unset: "(none)", about: "..." },
/// }
/// ```
///
/// makes the clap struct `KafkaSettings` (one global `Option<String>` flag per setting, read from
/// its variable: every field is a string so that validation can name the variable), a module
/// `vars` holding each setting's [`Setting`] under its variable's name, and
/// `KafkaSettings::LIST`, the group's settings in order. The field must be the variable in lower
/// case (a test checks it): it is the flag's id.
macro_rules! define_settings {
    (@default $value:literal) => { $crate::config::setting::IfUnset::Value($value) };
    (@unset $value:literal) => { $crate::config::setting::IfUnset::Nothing($value) };
    (
        $(#[$meta:meta])*
        $name:ident, heading $heading:literal;
        $( $field:ident => $var:ident { $if_unset:ident: $value:literal, about: $about:literal $(,)? } ),* $(,)?
    ) => {
        $(#[$meta])*
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct $name {
            $(
                #[arg(long, env = vars::$var.var, help = vars::$var.help(), help_heading = vars::$var.heading, global = true, hide_env_values = true)]
                pub $field: Option<String>,
            )*
        }

        impl $name {
            /// This group's settings, in `--help`'s order.
            pub const LIST: &'static [$crate::config::setting::Setting] = &[$(vars::$var),*];
        }

        /// This group's settings, each under its variable's name.
        pub mod vars {
            $(
                pub const $var: $crate::config::setting::Setting = $crate::config::setting::Setting {
                    var: stringify!($var),
                    heading: $heading,
                    if_unset: $crate::config::setting::define_settings!(@$if_unset $value),
                    about: $about,
                };
            )*
        }
    };
}

pub(crate) use define_settings;
