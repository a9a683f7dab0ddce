//! Serves the fake NASA API from fixture files, for running the daemon offline (`scripts/run
//! --fake-nasa`): `fake-nasa [--listen 127.0.0.1:8090] [--fixtures tests/fixtures/nasa]`. The fake
//! is the tests' own (`tests/common/fake_nasa.rs`), kept out of the daemon's library.

#[path = "../tests/common/fake_nasa.rs"]
#[allow(dead_code)]
mod fake_nasa;

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "A fake NASA Images API and image server, built from fixture files")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "tests/fixtures/nasa")]
    fixtures: PathBuf,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let fake = fake_nasa::FakeNasa::start_on(&args.fixtures, args.listen, Arc::new(Default::default()))?;
    println!("fake NASA API on {} (fixtures: {})", fake.url, args.fixtures.display());
    loop {
        std::thread::park();
    }
}
