//! The README's configuration table and `deploy/.env.example`, made from the settings' one
//! definitions ([`all`]): `cargo run --example config-docs -- --write` rewrites both, and
//! `tests/deploy.rs` fails when either differs from what this makes.

use super::setting::{IfUnset, Setting};
use super::settings::all;

/// The command that regenerates both files from the settings' definitions.
pub const REGENERATE: &str = "cargo run --example config-docs -- --write";

/// The lines between which README.md holds the generated table.
pub const README_BEGIN: &str =
    "<!-- config-docs: generated from src/config/ by `cargo run --example config-docs -- --write`; edit there -->";
pub const README_END: &str = "<!-- /config-docs -->";

/// Values that the container image sets (deploy/Dockerfile's `ENV`), shown in `.env.example` instead of the built-in default.
pub const CONTAINER_VALUES: [(&str, &str); 1] = [("DATA_DIR", "/data")];

/// What `.env.example` says before the settings: how to use it, and what only Compose reads.
const ENV_EXAMPLE_HEAD: &str = "\
# Settings of nasa-ingest for deploy/docker-compose.yml: copy to deploy/.env (git-ignored) and edit.
# Every variable the daemon reads is listed, commented out at its default: uncomment to change it.
# KAFKA_BROKERS and DATABASE_URL are set by the compose file for the containers.
# Generated from src/config/ by `cargo run --example config-docs -- --write`.

# Postgres password of the compose stack (the postgres service, and DATABASE_URL of the daemon).
POSTGRES_PASSWORD=nasa
";

/// The settings, each heading's in one run, in `--help`'s order.
fn by_heading() -> Vec<(&'static str, Vec<&'static Setting>)> {
    let mut groups: Vec<(&'static str, Vec<&'static Setting>)> = Vec::new();
    for s in all() {
        match groups.last_mut() {
            Some((heading, list)) if *heading == s.heading => list.push(s),
            _ => groups.push((s.heading, vec![s])),
        }
    }
    groups
}

/// The README's table, markers included: a row per heading, then one per variable.
pub fn readme_table() -> String {
    let mut out = format!("{README_BEGIN}\n| variable | default | meaning |\n|---|---|---|\n");
    for (heading, settings) in by_heading() {
        out += &format!("| **{heading}** | | |\n");
        for s in settings {
            let default = match s.if_unset {
                IfUnset::Value(v) => format!("`{v}`"),
                IfUnset::Nothing(meaning) => meaning.to_owned(),
            };
            out += &format!("| `{}` | {default} | {} |\n", s.var, s.about.replace('|', "\\|"));
        }
    }
    out + README_END + "\n"
}

/// The whole of `deploy/.env.example`: each variable commented out at its default, under its description.
pub fn env_example() -> String {
    let mut out = ENV_EXAMPLE_HEAD.to_owned();
    for (heading, settings) in by_heading() {
        out += &format!("\n# ==== {heading} ====\n");
        for s in settings {
            let value = CONTAINER_VALUES.iter().find(|(var, _)| *var == s.var).map(|(_, v)| *v).or(s.default_value()).unwrap_or("");
            out += &format!("\n# {}\n#{}={value}\n", s.about, s.var);
        }
    }
    out
}

/// The lines around README.md's generated table.
pub const README: crate::generated::Markers = crate::generated::Markers { begin: README_BEGIN, end: README_END };

/// `readme` with the text between the markers replaced by [`readme_table`]; None when the markers are missing.
pub fn splice_readme(readme: &str) -> Option<String> {
    README.splice(readme, &readme_table())
}

/// The generated part of `readme` (markers included), if it has one.
pub fn readme_part(readme: &str) -> Option<&str> {
    README.part(readme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_heading_is_one_run_and_every_variable_is_listed() {
        let groups = by_heading();
        let headings: std::collections::BTreeSet<_> = groups.iter().map(|(h, _)| h).collect();
        assert_eq!(headings.len(), groups.len(), "a heading's settings are not together in settings::all()");
        let table = readme_table();
        let example = env_example();
        for s in all() {
            assert!(table.contains(&format!("| `{}` |", s.var)), "{}", s.var);
            assert!(example.contains(&format!("\n#{}=", s.var)), "{}", s.var);
        }
    }

    #[test]
    fn splicing_replaces_only_the_table() {
        let readme = format!("intro\n{README_BEGIN}\nold\n{README_END}\nafter\n");
        let spliced = splice_readme(&readme).unwrap();
        assert_eq!(spliced, format!("intro\n{}after\n", readme_table()));
        assert_eq!(readme_part(&spliced), Some(readme_table().as_str()));
        assert_eq!(splice_readme(&spliced).unwrap(), spliced);
    }
}
