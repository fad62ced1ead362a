//! `qmq`: one executable for every qmq-rs server and tool.

mod backup;
mod cli;
mod config;
mod directives;
mod listen;
mod logs;
mod otlp;
mod servers;
mod stat;
mod watchdog;

use clap::{Parser, Subcommand};

/// qmq-rs: a QMQ-compatible message queue.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on standard error: `text` (coloured only on a terminal) or `json` (one object
    /// per line, for log shippers).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "QMQ_LOG_FORMAT",
        global = true
    )]
    log_format: logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults: meta server (SQLite), broker and delay
    /// server, all data under one directory.
    Standalone(Box<servers::StandaloneArgs>),
    /// A meta server.
    Meta(servers::MetaOnlyArgs),
    /// A realtime broker.
    Broker(servers::BrokerOnlyArgs),
    /// A delay/scheduled-message server.
    Delay(servers::DelayOnlyArgs),
    /// The transactional-message watchdog: resends what producers left in the outbox tables of
    /// the registered databases (`tools add-db`); one active instance at a time.
    Watchdog(watchdog::WatchdogArgs),
    /// Admin tools (talk to a meta server's admin API with a token).
    Tools(qmq_meta::cli::ToolsArgs),
    /// Cluster overview: broker groups, subjects with rates and backlog, consumer groups with
    /// lag and online consumers, delay backlog (meta server admin API plus `--metrics`
    /// endpoints; `--json` for one JSON document).
    Stat(stat::StatArgs),
    /// Send messages from the shell (`--delay`/`--at` for delay messages, `--property k=v`).
    Send(cli::SendArgs),
    /// Configuration files: `qmq config default` prints one with every key at its default.
    Config(config::ConfigArgs),
    /// The backup server: follows broker groups' message index (sync type 5) and action log
    /// (sync type 1) into a local store and serves queries over HTTP (`qmq query`, `qmq
    /// trace`, QMQ's `/api/message` and `/api/message/records`).
    Backup(backup::BackupArgs),
    /// Find messages in a backup server's index: `--id <message-id>`, or `--subject s
    /// [--from t] [--to t]`; printed as a table.
    Query(backup::QueryArgs),
    /// A message's life from a backup server: created, stored, pulled and acked by which
    /// groups and consumers, retried, dead-lettered; one line per step (`--json`).
    Trace(backup::TraceArgs),
    /// Dead letters through a backup server: `dead list --subject s [--group g]`, `dead replay
    /// --subject s --group g [--id id] --token t` (back to the group's retry subject).
    Dead(backup::DeadArgs),
    /// Consume messages from the shell (printed one per line, then acked; `--json`,
    /// `--follow`).
    Consume(cli::ConsumeArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The configuration file is read (and the start-up rules checked) before anything else.
    let (format, cli) = config::parse(std::env::args_os().collect());
    let cli = match cli {
        Ok(cli) => cli,
        Err(e) => {
            logs::init(format);
            logs::fatal(format, &e);
            return std::process::ExitCode::FAILURE;
        }
    };
    let format = cli.log_format;
    logs::init(format);
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            logs::fatal(format, &e);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let server = matches!(
        command,
        Command::Standalone(_)
            | Command::Meta(_)
            | Command::Broker(_)
            | Command::Delay(_)
            | Command::Watchdog(_)
            | Command::Backup(_)
    );
    if server {
        // Before anything is started or printed: SIGTERM right after "ready" shuts down cleanly.
        servers::install_signal_handlers()?;
    }
    match command {
        Command::Standalone(args) => {
            let listeners = args.listeners();
            listen::explained(servers::standalone(*args).await, &listeners)
        }
        Command::Meta(args) => {
            let listeners = args.listeners();
            listen::explained(servers::meta(args).await, &listeners)
        }
        Command::Broker(args) => {
            let listeners = args.listeners();
            listen::explained(servers::broker(args).await, &listeners)
        }
        Command::Delay(args) => {
            let listeners = args.listeners();
            listen::explained(servers::delay(args).await, &listeners)
        }
        Command::Watchdog(args) => watchdog::run(args).await,
        Command::Backup(args) => {
            let listeners = args.listeners();
            listen::explained(backup::run(args).await, &listeners)
        }
        Command::Query(args) => backup::query(args).await,
        Command::Trace(args) => backup::trace(args).await,
        Command::Dead(args) => backup::dead(args).await,
        Command::Tools(args) => {
            println!("{}", qmq_meta::cli::run_tools(args).await?);
            Ok(())
        }
        Command::Stat(args) => stat::run(args).await,
        Command::Send(args) => cli::send(args).await,
        Command::Consume(args) => cli::consume(args).await,
        Command::Config(args) => {
            config::run(args);
            Ok(())
        }
    }
}
