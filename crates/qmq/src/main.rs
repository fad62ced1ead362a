//! `qmq`: one executable for every qmq-rs server and tool.

mod cli;
mod directives;
mod servers;

use clap::{Parser, Subcommand};

/// qmq-rs: a QMQ-compatible message queue.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults: meta server (SQLite), broker and delay
    /// server, all data under one directory.
    Standalone(servers::StandaloneArgs),
    /// A meta server.
    Meta(servers::MetaOnlyArgs),
    /// A realtime broker.
    Broker(servers::BrokerOnlyArgs),
    /// A delay/scheduled-message server.
    Delay(servers::DelayOnlyArgs),
    /// Admin tools (talk to a meta server's admin API with a token).
    Tools(qmq_meta::cli::ToolsArgs),
    /// Send messages from the shell.
    Send(cli::SendArgs),
    /// Consume messages from the shell (printed one per line, then acked).
    Consume(cli::ConsumeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Standalone(args) => servers::standalone(args).await,
        Command::Meta(args) => servers::meta(args).await,
        Command::Broker(args) => servers::broker(args).await,
        Command::Delay(args) => servers::delay(args).await,
        Command::Tools(args) => {
            println!("{}", qmq_meta::cli::run_tools(args).await?);
            Ok(())
        }
        Command::Send(args) => cli::send(args).await,
        Command::Consume(args) => cli::consume(args).await,
    }
}
