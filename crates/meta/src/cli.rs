//! The admin tools (QMQ's `tools.sh`): each subcommand is one call to the meta server's JSON
//! admin API (`/admin/...`), authenticated with a token. (The Java `tools.sh` posts forms to
//! `/management` instead and reads QMQ's answer shapes; see `http_compat`.)

use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::{json, Value};

use crate::broker_api::encode;
use crate::model::ResetAction;
use crate::{http_client, MetaError};

/// Meta server admin tools.
#[derive(Debug, Clone, Parser)]
#[command(name = "tools", about = "qmq meta server admin tools")]
pub struct ToolsArgs {
    /// Meta server HTTP address, `host:port` (port 8080 if omitted).
    #[arg(long, env = "QMQ_METASERVER")]
    pub metaserver: String,
    /// Admin API token (one of the server's `admin_tokens`).
    #[arg(long, env = "QMQ_TOKEN", default_value = "")]
    pub token: String,
    /// What to do.
    #[command(subcommand)]
    pub command: ToolsCommand,
}

/// A server (machine) of a broker group.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker group name.
    #[arg(long = "broker-group", alias = "brokerGroup")]
    pub broker_group: String,
    /// Role code: 0 master, 1 slave, 4 backup, 5 delay master, 6 delay slave, 7 delay backup.
    #[arg(long)]
    pub role: i32,
    /// Hostname the server reports.
    #[arg(long)]
    pub hostname: String,
    /// IP address.
    #[arg(long)]
    pub ip: String,
    /// Client-facing port.
    #[arg(long = "serve-port", alias = "servePort")]
    pub serve_port: i32,
    /// Replication port (ignored for backups).
    #[arg(long = "sync-port", alias = "syncPort", default_value_t = -1)]
    pub sync_port: i32,
}

/// LATEST / EARLIEST.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ResetArg {
    /// Skip to the newest message.
    Latest,
    /// Restart from the oldest retained message.
    Earliest,
}

/// The tools' subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ToolsCommand {
    /// Registers a server of a broker group.
    AddBroker(BrokerArgs),
    /// Lists registered servers.
    ListBrokers {
        /// Only this group.
        #[arg(long = "broker-group", alias = "brokerGroup")]
        broker_group: Option<String>,
    },
    /// Lists broker groups (address, state, heartbeat) with their replication state: epoch,
    /// lease (remaining or expired) and servers (role, epoch, offsets, lag, report age).
    ListBrokerGroups,
    /// Promotes a slave to master (planned maintenance): the named one, or the slave with the
    /// freshest report. The new master gets no lease before the current lease surely ended.
    Promote {
        /// Broker group name.
        #[arg(long = "broker-group", alias = "brokerGroup")]
        broker_group: String,
        /// Hostname of the slave to promote (with --serve-port).
        #[arg(long, requires = "serve_port")]
        hostname: Option<String>,
        /// Client port of the slave to promote (with --hostname).
        #[arg(long = "serve-port", alias = "servePort", requires = "hostname")]
        serve_port: Option<i32>,
    },
    /// Moves a group's role to another machine (manual failover).
    ReplaceBroker(BrokerArgs),
    /// Stops producers from sending a subject (default: all) to a broker group.
    MarkReadonly {
        /// Broker group name.
        #[arg(long = "broker-group", alias = "brokerGroup")]
        broker_group: String,
        /// Subject, `*` for all.
        #[arg(long, default_value = "*")]
        subject: String,
    },
    /// Undoes mark-readonly.
    UnmarkReadonly {
        /// Broker group name.
        #[arg(long = "broker-group", alias = "brokerGroup")]
        broker_group: String,
        /// Subject, `*` for all.
        #[arg(long, default_value = "*")]
        subject: String,
    },
    /// Moves a consumer group's position to the newest or oldest message.
    ResetOffset {
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Where to restart.
        #[arg(long, value_enum)]
        action: ResetArg,
    },
    /// Registers a database for the transactional-message watchdog.
    AddDb {
        /// Database type (URL scheme).
        #[arg(long = "type", default_value = "mysql")]
        db_type: String,
        /// Host.
        #[arg(long)]
        host: String,
        /// Port.
        #[arg(long)]
        port: u16,
        /// User name.
        #[arg(long)]
        username: String,
        /// Password.
        #[arg(long)]
        password: String,
        /// Data centre.
        #[arg(long, default_value = "default")]
        room: String,
        /// Database to connect to (PostgreSQL outboxes); added to the URL as `/<database>`.
        #[arg(long)]
        database: Option<String>,
    },
    /// Lists subjects and their broker groups.
    ListSubjects,
    /// Records a subject with a placement tag: its route takes broker groups with that tag
    /// (QMQ AddNewSubject).
    AddNewSubject {
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Tag (empty: the default pool).
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// Adds a broker group to the route of a subject that has one (QMQ AddSubjectBrokerGroup).
    AddSubjectBrokerGroup {
        /// Broker group to add.
        #[arg(long = "broker-group", alias = "brokerGroup")]
        broker_group: String,
        /// Subject.
        #[arg(long)]
        subject: String,
    },
    /// Removes a broker group from a subject's route, `*` for every route; a route's last group
    /// is never removed (QMQ RemoveSubjectBrokerGroup).
    RemoveSubjectBrokerGroup {
        /// Broker group to remove.
        #[arg(long = "broker-group", alias = "brokerGroup")]
        broker_group: String,
        /// Subject, `*` for all.
        #[arg(long)]
        subject: String,
    },
    /// Adds a broker group to every route (or one subject's) that contains another group
    /// (QMQ ExtendSubjectRoute).
    ExtendSubjectRoute {
        /// Subject, `*` for all.
        #[arg(long = "related-subject", alias = "relatedSubject")]
        related_subject: String,
        /// Only routes containing this group are extended.
        #[arg(long = "related-broker-group", alias = "relatedBrokerGroup")]
        related_broker_group: String,
        /// The group to add.
        #[arg(long = "new-broker-group", alias = "newBrokerGroup")]
        new_broker_group: String,
    },
    /// Lists consumer groups and clients.
    ListConsumers {
        /// Only this subject.
        #[arg(long)]
        subject: Option<String>,
    },
    /// Switches consumers offline (or back online).
    SetClientState {
        /// Client id, `*` for the whole group.
        #[arg(long = "client-id", default_value = "*")]
        client_id: String,
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// `offline` or `online`.
        #[arg(long)]
        state: ClientStateArg,
    },
}

/// online / offline.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClientStateArg {
    /// Consume.
    Online,
    /// Stop consuming.
    Offline,
}

fn broker_json(b: &BrokerArgs) -> Value {
    json!({
        "group": b.broker_group,
        "role": b.role,
        "hostname": b.hostname,
        "ip": b.ip,
        "serve_port": b.serve_port,
        "sync_port": b.sync_port,
    })
}

/// Runs one tools command against the meta server and returns the result as pretty JSON
/// (for the caller to print). Refusals (bad token, invalid input, conflicts) are errors
/// carrying the server's message.
pub async fn run_tools(args: ToolsArgs) -> Result<String, MetaError> {
    let addr = if args.metaserver.contains(':') {
        args.metaserver.clone()
    } else {
        format!("{}:8080", args.metaserver)
    };
    let token = Some(args.token.as_str());
    let (method, path, body) = request(&args.command);
    let data: Value = http_client::call(&addr, method, &path, token, body.as_ref()).await?;
    serde_json::to_string_pretty(&data).map_err(|e| MetaError::Http(e.to_string()))
}

/// The request (method, path, JSON body) for one tools command.
fn request(command: &ToolsCommand) -> (Method, String, Option<Value>) {
    match command {
        ToolsCommand::AddBroker(b) => (
            Method::POST,
            "/admin/brokers".to_owned(),
            Some(broker_json(b)),
        ),
        ToolsCommand::ReplaceBroker(b) => (
            Method::POST,
            "/admin/brokers/replace".to_owned(),
            Some(broker_json(b)),
        ),
        ToolsCommand::ListBrokers { broker_group } => {
            let path = match broker_group {
                Some(g) => format!("/admin/brokers?group={}", encode(g)),
                None => "/admin/brokers".to_owned(),
            };
            (Method::GET, path, None)
        }
        ToolsCommand::ListBrokerGroups => {
            (Method::GET, "/admin/groups/replication".to_owned(), None)
        }
        ToolsCommand::Promote {
            broker_group,
            hostname,
            serve_port,
        } => (
            Method::POST,
            "/admin/groups/promote".to_owned(),
            Some(json!({"broker_group": broker_group, "hostname": hostname,
                        "serve_port": serve_port})),
        ),
        ToolsCommand::MarkReadonly {
            broker_group,
            subject,
        } => (
            Method::POST,
            "/admin/readonly/mark".to_owned(),
            Some(json!({"broker_group": broker_group, "subject": subject})),
        ),
        ToolsCommand::UnmarkReadonly {
            broker_group,
            subject,
        } => (
            Method::POST,
            "/admin/readonly/unmark".to_owned(),
            Some(json!({"broker_group": broker_group, "subject": subject})),
        ),
        ToolsCommand::ResetOffset {
            subject,
            group,
            action,
        } => {
            let action = match action {
                ResetArg::Latest => ResetAction::Latest,
                ResetArg::Earliest => ResetAction::Earliest,
            };
            (
                Method::POST,
                "/admin/reset-offset".to_owned(),
                Some(json!({"subject": subject, "consumer_group": group, "action": action})),
            )
        }
        ToolsCommand::AddDb {
            db_type,
            host,
            port,
            username,
            password,
            room,
            database,
        } => (
            Method::POST,
            "/admin/dbs".to_owned(),
            Some(
                json!({"type": db_type, "host": host, "port": port, "username": username,
                        "password": password, "room": room, "database": database}),
            ),
        ),
        ToolsCommand::ListSubjects => (Method::GET, "/admin/subjects".to_owned(), None),
        ToolsCommand::ListConsumers { subject } => {
            let path = match subject {
                Some(s) => format!("/admin/consumers?subject={}", encode(s)),
                None => "/admin/consumers".to_owned(),
            };
            (Method::GET, path, None)
        }
        ToolsCommand::SetClientState {
            client_id,
            subject,
            group,
            state,
        } => (
            Method::POST,
            "/admin/client-state".to_owned(),
            Some(
                json!({"client_id": client_id, "subject": subject, "consumer_group": group,
                        "offline": matches!(state, ClientStateArg::Offline)}),
            ),
        ),
        ToolsCommand::AddNewSubject { subject, tag } => (
            Method::POST,
            "/admin/subjects".to_owned(),
            Some(json!({"subject": subject, "tag": tag})),
        ),
        ToolsCommand::AddSubjectBrokerGroup {
            broker_group,
            subject,
        } => (
            Method::POST,
            "/admin/subject-routes/add-group".to_owned(),
            Some(json!({"broker_group": broker_group, "subject": subject})),
        ),
        ToolsCommand::RemoveSubjectBrokerGroup {
            broker_group,
            subject,
        } => (
            Method::POST,
            "/admin/subject-routes/remove-group".to_owned(),
            Some(json!({"broker_group": broker_group, "subject": subject})),
        ),
        ToolsCommand::ExtendSubjectRoute {
            related_subject,
            related_broker_group,
            new_broker_group,
        } => (
            Method::POST,
            "/admin/subject-routes/extend".to_owned(),
            Some(json!({"related_subject": related_subject,
                        "related_broker_group": related_broker_group,
                        "new_broker_group": new_broker_group})),
        ),
    }
}
