//! Prints the README's configuration table and `deploy/.env.example`, made from the settings'
//! definitions in src/config/ (each group's file), and the table of dead-letter reasons in
//! docs/dead-letters.md, made from src/dlq/reason.rs; with `--write`, puts them in place.
//!
//!     cargo run --example config-docs              # all three, on stdout
//!     cargo run --example config-docs -- readme    # the README table
//!     cargo run --example config-docs -- env       # deploy/.env.example
//!     cargo run --example config-docs -- reasons   # the table of dead-letter reasons
//!     cargo run --example config-docs -- --write   # rewrite both tables and deploy/.env.example
//!
//! An example rather than a subcommand of the daemon: it is a tool for whoever changes a
//! setting or a reason, and the shipped binary need not carry it.

use nasa_ingest::config::docs;
use nasa_ingest::dlq::docs as dlq_docs;
use nasa_ingest::generated::Markers;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::args().nth(1).as_deref() {
        None => print!("{}\n{}\n{}", docs::readme_table(), docs::env_example(), dlq_docs::reasons_table()),
        Some("readme") => print!("{}", docs::readme_table()),
        Some("env") => print!("{}", docs::env_example()),
        Some("reasons") => print!("{}", dlq_docs::reasons_table()),
        Some("--write") => {
            let rewritten = splice_into(&root.join("README.md"), docs::README, &docs::readme_table())
                && splice_into(&root.join(dlq_docs::PAGE), dlq_docs::MARKERS, &dlq_docs::reasons_table());
            if !rewritten {
                return ExitCode::FAILURE;
            }
            std::fs::write(root.join("deploy/.env.example"), docs::env_example()).expect("deploy/.env.example is writable");
            eprintln!("wrote README.md's configuration table, {}'s table of reasons and deploy/.env.example", dlq_docs::PAGE);
        }
        Some(other) => {
            eprintln!("config-docs: unknown argument {other:?}; expected readme, env, reasons or --write");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// Replaces the generated part of the file at `path` with `made`; false (and why, on stderr) when
/// the file lacks the marker lines.
fn splice_into(path: &Path, markers: Markers, made: &str) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()));
    let Some(spliced) = markers.splice(&text, made) else {
        eprintln!("{} lacks the lines {:?} and {:?} around its generated part", path.display(), markers.begin, markers.end);
        return false;
    };
    std::fs::write(path, spliced).unwrap_or_else(|e| panic!("{} is writable: {e}", path.display()));
    true
}
