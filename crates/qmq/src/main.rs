//! `qmq`: one executable for every qmq-rs server and tool.

use clap::Parser;

/// qmq-rs: a QMQ-compatible message queue.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
