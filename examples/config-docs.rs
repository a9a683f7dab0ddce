//! Prints the README's configuration table and `deploy/.env.example`, made from the settings'
//! definitions in src/config/ (each group's file); with `--write`, puts them in place.
//!
//!     cargo run --example config-docs              # both, on stdout
//!     cargo run --example config-docs -- readme    # the README table
//!     cargo run --example config-docs -- env       # deploy/.env.example
//!     cargo run --example config-docs -- --write   # rewrite README.md's table and deploy/.env.example
//!
//! An example rather than a subcommand of the daemon: it is a tool for whoever changes a
//! setting, and the shipped binary need not carry it.

use nasa_ingest::config::docs;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::args().nth(1).as_deref() {
        None => print!("{}\n{}", docs::readme_table(), docs::env_example()),
        Some("readme") => print!("{}", docs::readme_table()),
        Some("env") => print!("{}", docs::env_example()),
        Some("--write") => {
            let readme_path = root.join("README.md");
            let readme = std::fs::read_to_string(&readme_path).expect("README.md is readable");
            let Some(spliced) = docs::splice_readme(&readme) else {
                eprintln!("README.md lacks the lines {:?} and {:?} around the table", docs::README_BEGIN, docs::README_END);
                return ExitCode::FAILURE;
            };
            std::fs::write(&readme_path, spliced).expect("README.md is writable");
            std::fs::write(root.join("deploy/.env.example"), docs::env_example()).expect("deploy/.env.example is writable");
            eprintln!("wrote README.md's configuration table and deploy/.env.example");
        }
        Some(other) => {
            eprintln!("config-docs: unknown argument {other:?}; expected readme, env or --write");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
