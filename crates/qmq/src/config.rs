//! The configuration file of the server commands (`--config qmq.toml`, `QMQ_CONFIG`), the
//! start-up rules that settings of different roles must keep, and `qmq config default`.
//!
//! The command-line definitions are the only definitions. A key is a server flag's long name
//! with `_` for `-`; the tables `[broker]`, `[meta]` and `[delay]` hold the keys of the
//! subcommand of that name, and the top level holds the keys every role has (`data_dir`,
//! `cluster_secret`, ...) and `log_format`. `standalone` reads every table: each of its keys
//! from the first of `[broker]`, `[meta]`, `[delay]` that has it, and its
//! `delay_max_message_bytes` from `[delay] max_message_bytes`. `[watchdog]` holds the keys of
//! `qmq watchdog`; `standalone` reads its `watchdog_<key>` flags from `[watchdog] <key>`, and
//! `[watchdog] enabled` is standalone's alone (`qmq watchdog` has no such flag and ignores it).
//! `[backup]` works the same way for `qmq backup` and standalone's `backup_<key>` flags.
//! A value in a table overrides the same key at the top level.
//!
//! The file's values become the flags' defaults, so clap's own order decides: command line,
//! then environment variable, then the file, then the built-in default.

use std::any::TypeId;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml_edit::{DocumentMut, Item, Value};

use crate::logs::LogFormat;
use crate::Cli;

/// The roles with a table in the file, in the order `standalone` looks a key up in them; each
/// is the server subcommand of the same name.
const ROLES: [&str; 3] = ["broker", "meta", "delay"];

/// The server subcommands, which take `--config`.
const SERVERS: [&str; 6] = [
    "standalone",
    "broker",
    "meta",
    "delay",
    "watchdog",
    "backup",
];

/// The watchdog's table: like a role's, but not part of the cluster's shared keys; `standalone`
/// reads its `watchdog_<key>` flags from `[watchdog] <key>`.
const WATCHDOG: &str = "watchdog";

/// The backup server's table, like the watchdog's: `standalone` reads its `backup_<key>`
/// flags from `[backup] <key>`.
const BACKUP: &str = "backup";

/// The servers with a table of their own that `standalone` also runs, under flags prefixed
/// with the table's name.
const SATELLITES: [&str; 2] = [WATCHDOG, BACKUP];

/// Whether `key` names a table of the file.
fn is_table(key: &str) -> bool {
    ROLES.contains(&key) || SATELLITES.contains(&key)
}

/// The id of the `--config` argument.
const CONFIG: &str = "config";

/// `qmq config` settings.
#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

/// `qmq config` subcommands.
#[derive(clap::Subcommand)]
enum ConfigCommand {
    /// Print a configuration file with every key at its built-in default, each with a comment
    /// (keys without a default are commented out).
    Default,
}

/// Runs `qmq config …`.
pub fn run(args: ConfigArgs) {
    match args.command {
        ConfigCommand::Default => print!("{}", default_file()),
    }
}

/// The command-line definition, with `--config` on every server subcommand.
fn command() -> Command {
    let mut cmd = Cli::command();
    for server in SERVERS {
        cmd = cmd.mut_subcommand(server, |s| {
            s.arg(
                Arg::new(CONFIG)
                    .long("config")
                    .env("QMQ_CONFIG")
                    .value_name("PATH")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "Configuration file (TOML; `-` reads standard input). Flags and \
                         environment variables override it; `qmq config default` prints one",
                    ),
            )
        });
    }
    cmd
}

/// Parses the command line (exiting as clap does on a usage error, `--help` or `--version`),
/// applying the configuration file of a server subcommand and checking the start-up rules.
/// Returns the log format to report a failure with, and the parsed command line.
pub fn parse(argv: Vec<OsString>) -> (LogFormat, anyhow::Result<Cli>) {
    let cmd = command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| e.exit());
    let format = matches
        .get_one::<LogFormat>("log_format")
        .copied()
        .unwrap_or(LogFormat::Text);
    (format, load(cmd, matches, &argv))
}

/// See [`parse`].
fn load(cmd: Command, matches: ArgMatches, argv: &[OsString]) -> anyhow::Result<Cli> {
    let Some((server, sub)) = matches
        .subcommand()
        .filter(|(name, _)| SERVERS.contains(name))
    else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let server = server.to_owned();
    let (cmd, matches, file) = match sub.get_one::<PathBuf>(CONFIG) {
        None => (cmd, matches, None),
        Some(path) => {
            let file = File::read(path)?;
            file.check_keys(&cmd)?;
            let cmd = apply(cmd, &file)?;
            let matches = cmd
                .clone()
                .try_get_matches_from(argv)
                .unwrap_or_else(|e| e.exit());
            (cmd, matches, Some(file))
        }
    };
    let cli = Cli::from_arg_matches(&matches)?;
    check_rules(&cmd, &server, &matches, &cli, file.as_ref())?;
    Ok(cli)
}

/// A parsed configuration file.
struct File {
    /// The name it is reported by.
    name: String,
    doc: DocumentMut,
}

impl File {
    /// Reads and parses `path` (`-`: standard input).
    fn read(path: &Path) -> anyhow::Result<Self> {
        let (name, text) = if path == Path::new("-") {
            let text = std::io::read_to_string(std::io::stdin())
                .context("reading the configuration from standard input")?;
            ("<stdin>".to_owned(), text)
        } else {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the configuration file {name}"))?;
            (name, text)
        };
        let doc = text
            .parse::<DocumentMut>()
            .with_context(|| format!("parsing the configuration file {name}"))?;
        Ok(Self { name, doc })
    }

    /// `key` at the top level (`None`) or in the table `section`.
    fn get(&self, section: Option<&str>, key: &str) -> Option<&Item> {
        match section {
            None => self
                .doc
                .get(key)
                .filter(|_| !is_table(key))
                .filter(|item| !item.is_none()),
            Some(s) => self.doc.get(s)?.as_table_like()?.get(key),
        }
    }

    /// Refuses keys that no flag has (each named, with the file), and role keys that are not
    /// tables.
    fn check_keys(&self, cmd: &Command) -> anyhow::Result<()> {
        let mut bad = Vec::new();
        let top = top_level_keys(cmd);
        for (key, item) in self.doc.iter() {
            if is_table(key) {
                let Some(table) = item.as_table_like() else {
                    bad.push(format!("`{key}` must be a table ([{key}])"));
                    continue;
                };
                let role = subcommand(cmd, key);
                for (k, _) in table.iter() {
                    let standalone_only = SATELLITES.contains(&key)
                        && standalone_satellite_keys(cmd, key).any(|(sk, _)| sk == k);
                    if find_key(role, k).is_none() && !standalone_only {
                        bad.push(format!("unknown key `{k}` in [{key}]"));
                    }
                }
            } else if !top.contains(&key.to_owned()) {
                let roles: Vec<String> = ROLES
                    .iter()
                    .filter(|r| find_key(subcommand(cmd, r), key).is_some())
                    .map(|r| format!("[{r}]"))
                    .collect();
                if roles.is_empty() {
                    bad.push(format!("unknown key `{key}`"));
                } else {
                    bad.push(format!(
                        "key `{key}` is not shared by every role: set it in {}",
                        roles.join(" or ")
                    ));
                }
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        bail!("{}: {}", self.name, bad.join("; "))
    }
}

/// The server subcommand `name` of `cmd`.
fn subcommand<'c>(cmd: &'c Command, name: &str) -> &'c Command {
    cmd.find_subcommand(name)
        .expect("every role and server is a subcommand")
}

/// The file key of `arg`: its long name with `_` for `-` (none for `--config` and for
/// arguments without a long name).
fn key_of(arg: &Arg) -> Option<String> {
    let long = arg.get_long()?;
    (arg.get_id() != CONFIG).then(|| long.replace('-', "_"))
}

/// The argument of `cmd` whose key is `key`.
fn find_key<'c>(cmd: &'c Command, key: &str) -> Option<&'c Arg> {
    cmd.get_arguments()
        .find(|a| key_of(a).as_deref() == Some(key))
}

/// The keys of `cmd`'s own arguments, in definition order.
fn keys(cmd: &Command) -> impl Iterator<Item = (String, &Arg)> {
    cmd.get_arguments()
        .filter_map(|a| key_of(a).map(|k| (k, a)))
}

/// The keys of the satellite table `table` (`[watchdog]`, `[backup]`) that only `standalone`
/// reads (as its `<table>_<key>` flags; the satellite's own command has no such flag), with
/// their arguments.
fn standalone_satellite_keys<'c>(
    cmd: &'c Command,
    table: &str,
) -> impl Iterator<Item = (String, &'c Arg)> + 'c {
    let own = subcommand(cmd, table);
    let prefix = format!("{table}_");
    keys(subcommand(cmd, "standalone")).filter_map(move |(k, arg)| {
        let k = k.strip_prefix(&prefix)?.to_owned();
        find_key(own, &k).is_none().then_some((k, arg))
    })
}

/// The keys every role has (they may be set at the top level).
fn shared_keys(cmd: &Command) -> Vec<String> {
    keys(subcommand(cmd, ROLES[0]))
        .map(|(k, _)| k)
        .filter(|k| {
            ROLES[1..]
                .iter()
                .all(|r| find_key(subcommand(cmd, r), k).is_some())
        })
        .collect()
}

/// The keys allowed at the top level: the global flags' and the shared ones.
fn top_level_keys(cmd: &Command) -> Vec<String> {
    let mut top: Vec<String> = keys(cmd).map(|(k, _)| k).collect();
    top.extend(shared_keys(cmd));
    top
}

/// Where server subcommand `server` reads its key `key`: a table and the key in it (also
/// looked up at the top level when not in that table).
fn source(cmd: &Command, server: &str, key: &str) -> Option<(&'static str, String)> {
    if let Some(table) = SATELLITES.iter().find(|t| **t == server) {
        return Some((table, key.to_owned()));
    }
    if server != "standalone" {
        return ROLES
            .iter()
            .find(|r| **r == server)
            .map(|r| (*r, key.to_owned()));
    }
    for table in SATELLITES {
        if let Some(k) = key.strip_prefix(table).and_then(|k| k.strip_prefix('_')) {
            return Some((table, k.to_owned()));
        }
    }
    if key == "delay_max_message_bytes" {
        return Some(("delay", "max_message_bytes".to_owned()));
    }
    ROLES
        .iter()
        .find(|r| find_key(subcommand(cmd, r), key).is_some())
        .map(|r| (*r, key.to_owned()))
}

/// How a flag's value is written in the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Bool,
    String,
}

impl Kind {
    fn of(arg: &Arg) -> Self {
        let t = arg.get_value_parser().type_id();
        let integers = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
        ];
        if integers.iter().any(|i| t == *i) {
            Kind::Integer
        } else if t == TypeId::of::<bool>() {
            Kind::Bool
        } else {
            Kind::String
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::Bool => "a boolean",
            Kind::String => "a string",
        }
    }

    fn list_name(self) -> &'static str {
        match self {
            Kind::Integer => "an array of integers",
            Kind::Bool => "an array of booleans",
            Kind::String => "an array of strings",
        }
    }
}

/// Whether `arg` takes several values (an array in the file).
fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// `item` as the command-line values of `arg`, checked as clap checks them; the error names
/// the key (`origin`) and the file.
fn values(arg: &Arg, item: &Item, origin: &str, file: &str) -> Result<Vec<String>, String> {
    let kind = Kind::of(arg);
    let wrong = |found: &str| {
        let expected = if is_list(arg) {
            kind.list_name()
        } else {
            kind.name()
        };
        format!("{file}: `{origin}` must be {expected}, not {found}")
    };
    let Some(value) = item.as_value() else {
        return Err(wrong(item.type_name()));
    };
    let scalar = |v: &Value| -> Result<String, String> {
        match (kind, v) {
            (Kind::Integer, Value::Integer(i)) => Ok(i.value().to_string()),
            (Kind::Bool, Value::Boolean(b)) => Ok(b.value().to_string()),
            (Kind::String, Value::String(s)) => Ok(s.value().clone()),
            _ => Err(wrong(v.type_name())),
        }
    };
    let vals = if is_list(arg) {
        let Some(array) = value.as_array() else {
            return Err(wrong(value.type_name()));
        };
        array.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
    } else {
        vec![scalar(value)?]
    };
    if kind != Kind::Bool {
        // Parse them as if given on the command line, with clap's own parser for this flag.
        let long = arg.get_long().unwrap_or_default();
        let probe = Command::new("qmq")
            .no_binary_name(true)
            .arg(arg.clone().env(None));
        let argv = vals.iter().map(|v| format!("--{long}={v}"));
        if let Err(e) = probe.try_get_matches_from(argv) {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return Err(format!(
                "{file}: `{origin}`: {}",
                first.trim_start_matches("error: ")
            ));
        }
    }
    Ok(vals)
}

/// `cmd` with the file's values as the defaults of the flags they set, on every server
/// subcommand (and the global flags); every wrong value is reported.
fn apply(mut cmd: Command, file: &File) -> anyhow::Result<Command> {
    let mut errors = Vec::new();
    let mut global = Vec::new();
    for (key, arg) in keys(&cmd) {
        if let Some(item) = file.get(None, &key) {
            match values(arg, item, &key, &file.name) {
                Ok(v) => global.push((arg.get_id().to_string(), v)),
                Err(e) => errors.push(e),
            }
        }
    }
    for (id, v) in global {
        cmd = cmd.mut_arg(id, |a| a.default_values(v));
    }
    for server in SERVERS {
        let mut set = Vec::new();
        for (key, arg) in keys(subcommand(&cmd, server)) {
            let Some((role, role_key)) = source(&cmd, server, &key) else {
                continue;
            };
            let found = file
                .get(Some(role), &role_key)
                .map(|item| (item, format!("[{role}] {role_key}")))
                .or_else(|| file.get(None, &key).map(|item| (item, key.clone())));
            if let Some((item, origin)) = found {
                match values(arg, item, &origin, &file.name) {
                    Ok(v) => set.push((arg.get_id().to_string(), v)),
                    Err(e) if !errors.contains(&e) => errors.push(e),
                    Err(_) => {}
                }
            }
        }
        cmd = cmd.mut_subcommand(server, |mut s| {
            for (id, v) in set {
                s = s.mut_arg(id, |a| a.default_values(v));
            }
            s
        });
    }
    if errors.is_empty() {
        Ok(cmd)
    } else {
        bail!("{}", errors.join("\n"))
    }
}

/// The settings of one role that the start-up rules look at.
struct View {
    /// `broker`, `delay`, `meta` or `standalone`.
    role: String,
    /// Largest message the role's broker accepts.
    broker_max: Option<usize>,
    /// Largest message the role's delay server accepts, and the key that sets it.
    delay_max: Option<(usize, &'static str)>,
    lease_renew_ms: Option<u64>,
    cluster_secret: Option<String>,
}

impl View {
    fn of(role: &str, m: &ArgMatches) -> Self {
        fn one<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Option<T> {
            m.try_get_one::<T>(id).ok().flatten().cloned()
        }
        let max = one::<usize>(m, "max_message_bytes");
        let (broker_max, delay_max) = match role {
            "broker" => (max, None),
            "delay" => (None, max.map(|d| (d, "max_message_bytes"))),
            "standalone" => (
                max,
                one::<usize>(m, "delay_max_message_bytes")
                    .map(|d| (d, "delay_max_message_bytes"))
                    .or(max.map(|d| (d, "max_message_bytes"))),
            ),
            _ => (None, None),
        };
        Self {
            role: role.to_owned(),
            broker_max,
            delay_max,
            lease_renew_ms: one(m, "lease_renew_ms"),
            cluster_secret: one(m, "cluster_secret"),
        }
    }
}

/// The rules `views` (one per role of the cluster) and `listeners` (of this process) break,
/// each as `rule-name: explanation`.
fn violations(views: &[View], listeners: &[crate::listen::Listener]) -> Vec<String> {
    let mut broken = Vec::new();
    let lease_ms = qmq_meta::MetaConfig::default().lease_ms;
    let frame = qmq_broker::BrokerConfig::new(qmq_store::StoreConfig::new("")).max_frame_bytes;
    for v in views {
        if let Some(renew) = v.lease_renew_ms.filter(|r| *r >= lease_ms) {
            broken.push(format!(
                "lease-renew: {} lease_renew_ms = {renew} must be below the meta server's lease \
                 of {lease_ms} ms (a master would lose its lease between renewals)",
                v.role
            ));
        }
        if let Some(max) = v.broker_max.filter(|m| *m >= frame) {
            broken.push(format!(
                "frame-limit: {} max_message_bytes = {max} must be below the {frame}-byte frame \
                 limit (such a message could never be sent)",
                v.role
            ));
        }
    }
    for d in views {
        let Some((delay, key)) = d.delay_max else {
            continue;
        };
        for b in views {
            if let Some(broker) = b.broker_max.filter(|b| delay > *b) {
                broken.push(format!(
                    "delay-message-limit: {} {key} = {delay} exceeds {} max_message_bytes = \
                     {broker} (the broker would refuse such a delayed message when it falls due)",
                    d.role, b.role
                ));
            }
        }
    }
    let secrets: Vec<&View> = views
        .iter()
        .filter(|v| v.cluster_secret.is_some())
        .collect();
    for pair in secrets.windows(2) {
        if pair[0].cluster_secret != pair[1].cluster_secret {
            broken.push(format!(
                "cluster-secret: cluster_secret differs between {} and {} (the meta server \
                 would refuse the other roles' registrations)",
                pair[0].role, pair[1].role
            ));
        }
    }
    for (i, (a, flag_a)) in listeners.iter().enumerate() {
        for (b, flag_b) in &listeners[i + 1..] {
            if clash(*a, *b) {
                broken.push(format!(
                    "distinct-ports: {a} ({flag_a}) and {b} ({flag_b}) share port {}",
                    a.port()
                ));
            }
        }
    }
    broken
}

/// The addresses `cli`'s server command listens on, with the flags that set them.
fn listeners(cli: &Cli) -> Vec<crate::listen::Listener> {
    match &cli.command {
        crate::Command::Standalone(a) => a.listeners(),
        crate::Command::Broker(a) => a.listeners(),
        crate::Command::Meta(a) => a.listeners(),
        crate::Command::Delay(a) => a.listeners(),
        _ => Vec::new(),
    }
}

/// Whether two listen addresses cannot both be bound.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks the start-up rules for `server` (its matches `m`, parsed as `cli`): with a file, the
/// roles it describes are checked against each other, this process standing for its own role;
/// every broken rule is listed.
fn check_rules(
    cmd: &Command,
    server: &str,
    m: &ArgMatches,
    cli: &Cli,
    file: Option<&File>,
) -> anyhow::Result<()> {
    let Some((_, sub)) = m.subcommand() else {
        return Ok(());
    };
    let mut views = vec![View::of(server, sub)];
    if let (Some(file), true) = (file, server != "standalone") {
        for role in ROLES.iter().filter(|r| **r != server) {
            let other = cmd
                .clone()
                .try_get_matches_from(["qmq", role])
                .with_context(|| format!("{}: reading the settings of [{role}]", file.name))?;
            if let Some((_, sub)) = other.subcommand() {
                views.push(View::of(role, sub));
            }
        }
    }
    let broken = violations(&views, &listeners(cli));
    if broken.is_empty() {
        return Ok(());
    }
    let from = file.map_or(String::new(), |f| format!(" (with {})", f.name));
    bail!(
        "refusing to start: the configuration{from} breaks {} rule{}:\n  - {}",
        broken.len(),
        if broken.len() == 1 { "" } else { "s" },
        broken.join("\n  - ")
    )
}

/// `qmq config default`: every key of every role at its built-in default, with a comment each;
/// generated from the command-line definitions.
pub fn default_file() -> String {
    let cmd = command();
    let mut out = String::from(
        "# qmq-rs configuration (`qmq <server> --config qmq.toml`).\n\
         # Keys are the long flag names with `_` for `-`. Command-line flags and environment\n\
         # variables override this file. Top-level keys apply to every role; each table holds\n\
         # one role's keys; `standalone` reads every table.\n",
    );
    let shared = shared_keys(&cmd);
    out.push('\n');
    for (_, arg) in keys(&cmd) {
        entry(&mut out, arg);
    }
    for key in &shared {
        if let Some(arg) = find_key(subcommand(&cmd, ROLES[0]), key) {
            entry(&mut out, arg);
        }
    }
    for role in ROLES.into_iter().chain(SATELLITES) {
        let _ = write!(out, "\n[{role}]\n");
        for (key, arg) in keys(subcommand(&cmd, role)) {
            if !shared.contains(&key) {
                entry(&mut out, arg);
            }
        }
        if SATELLITES.contains(&role) {
            for (key, arg) in standalone_satellite_keys(&cmd, role) {
                entry_as(&mut out, arg, &key);
            }
        }
    }
    out
}

/// Writes `arg`'s comment and `key = default` (commented out without a default); hidden
/// (testing-only) flags are left out.
fn entry(out: &mut String, arg: &Arg) {
    if let Some(key) = key_of(arg) {
        entry_as(out, arg, &key);
    }
}

/// [`entry`] under the key `key`.
fn entry_as(out: &mut String, arg: &Arg, key: &str) {
    if arg.is_hide_set() {
        return;
    }
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let mut comment = help.split_whitespace().collect::<Vec<_>>().join(" ");
    if !comment.ends_with('.') {
        comment.push('.');
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().to_owned())
        .collect();
    if !possible.is_empty() && Kind::of(arg) != Kind::Bool {
        let _ = write!(comment, " One of: {}.", possible.join(", "));
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(comment, " Env: {}.", env.to_string_lossy());
    }
    for line in wrap(&comment, 96) {
        let _ = writeln!(out, "# {line}");
    }
    let kind = Kind::of(arg);
    let literal = |s: &str| match kind {
        Kind::Integer | Kind::Bool => s.to_owned(),
        Kind::String => Value::from(s).to_string(),
    };
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| literal(&d.to_string_lossy()))
        .collect();
    if is_list(arg) {
        let _ = writeln!(out, "{key} = [{}]", defaults.join(", "));
    } else if let Some(d) = defaults.first() {
        let _ = writeln!(out, "{key} = {d}");
    } else {
        let _ = writeln!(out, "# {key} = … (unset by default)");
    }
}

/// `text` in lines of at most `width` characters (a longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration file holding `text`.
    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    /// `qmq <argv>`, parsed with its configuration file.
    fn parse(argv: &[&str]) -> anyhow::Result<Cli> {
        let argv: Vec<OsString> = std::iter::once("qmq")
            .chain(argv.iter().copied())
            .map(OsString::from)
            .collect();
        let cmd = command();
        let matches = cmd.clone().try_get_matches_from(&argv)?;
        load(cmd, matches, &argv)
    }

    /// `qmq <argv>` with `--config` holding `text`.
    fn with_file(text: &str, argv: &[&str]) -> anyhow::Result<Cli> {
        let f = file(text);
        let path = f.path().to_str().unwrap().to_owned();
        let mut argv = argv.to_vec();
        argv.extend(["--config", &path]);
        parse(&argv)
    }

    /// The parsed settings of a server command.
    fn settings(cli: &Cli) -> String {
        let text = match &cli.command {
            crate::Command::Standalone(a) => format!("{a:?}"),
            crate::Command::Broker(a) => format!("{a:?}"),
            crate::Command::Meta(a) => format!("{a:?}"),
            crate::Command::Delay(a) => format!("{a:?}"),
            crate::Command::Watchdog(a) => format!("{a:?}"),
            crate::Command::Backup(a) => format!("{a:?}"),
            _ => panic!("not a server"),
        };
        format!("log_format: {:?} {text}", cli.log_format)
    }

    fn error(result: anyhow::Result<Cli>) -> String {
        match result {
            Ok(cli) => panic!("accepted: {}", settings(&cli)),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_default_file_sets_exactly_the_defaults() {
        let text = default_file();
        for server in SERVERS {
            let argv: &[&str] = if server == WATCHDOG {
                &[
                    server,
                    "--meta-database-url",
                    "sqlite://m.db",
                    "--meta-http",
                    "m:8080",
                ]
            } else {
                &[server]
            };
            let plain = settings(&parse(argv).unwrap());
            let mut from_file = settings(&with_file(&text, argv).unwrap());
            if server == "standalone" {
                // `[delay] max_message_bytes` is the delay role's 4 MiB; standalone's own
                // default is "the broker's", also 4 MiB.
                let set = format!(
                    "delay_max_message_bytes: Some({})",
                    qmq_delay::config::DEFAULT_MAX_MESSAGE_BYTES
                );
                assert!(from_file.contains(&set), "{from_file}");
                from_file = from_file.replace(&set, "delay_max_message_bytes: None");
            }
            assert_eq!(plain, from_file, "{server}");
        }
    }

    #[test]
    fn the_default_file_has_every_visible_key_with_a_comment() {
        let text = default_file();
        let cmd = command();
        for server in SERVERS {
            for (key, arg) in keys(subcommand(&cmd, server)) {
                // Standalone's own names for keys of [delay], [watchdog] and [backup].
                if arg.is_hide_set()
                    || key == "delay_max_message_bytes"
                    || key.starts_with("watchdog_")
                    || key.starts_with("backup_")
                {
                    continue;
                }
                let set = format!("\n{key} = ");
                let unset = format!("\n# {key} = ");
                assert!(text.contains(&set) || text.contains(&unset), "{key}");
            }
        }
        assert!(
            text.contains("\n# Data directory. Env: QMQ_DATA_DIR.\ndata_dir = \"./qmq-data\"\n")
        );
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
        assert!(text.contains("\nmax_message_bytes = 4194304\n"));
        assert!(text.contains("\nflush = \"async\"\n"));
        assert!(text.contains("\nadmin_token = []\n"));
        assert!(text.contains("\n[meta]\n"));
        let meta = &text[text.find("\n[meta]\n").unwrap()..text.find("\n[delay]\n").unwrap()];
        assert!(
            meta.contains("Env: QMQ_META_MIN_GROUP_NUM.\nmin_group_num = 2\n"),
            "{meta}"
        );
        assert!(text.contains("\n# advertise = "));
        assert!(!text.contains("test_retention_secs"));
        assert!(text.parse::<DocumentMut>().is_ok());
    }

    #[test]
    fn a_file_sets_each_role_and_flags_override_it() {
        let text = "data_dir = \"/top\"\nlog_format = \"json\"\n\
                    [broker]\nlisten = \"127.0.0.1:1234\"\nmax_message_bytes = 1000\n\
                    [meta]\nadvertised_host = \"meta.example\"\nadmin_token = [\"a\", \"b\"]\n\
                    [delay]\ndata_dir = \"/delay\"\nadvertised_host = \"delay.example\"\n\
                    max_message_bytes = 900\n";
        let s = settings(&with_file(text, &["broker"]).unwrap());
        assert!(s.contains("log_format: Json"), "{s}");
        assert!(s.contains("listen: 127.0.0.1:1234"), "{s}");
        assert!(s.contains("data_dir: \"/top\""), "{s}");
        assert!(s.contains("max_message_bytes: 1000"), "{s}");
        let s = settings(&with_file(text, &["broker", "--listen", "127.0.0.1:99"]).unwrap());
        assert!(s.contains("listen: 127.0.0.1:99"), "{s}");
        let s = settings(&with_file(text, &["--log-format", "text", "delay"]).unwrap());
        assert!(s.contains("log_format: Text"), "{s}");
        assert!(s.contains("data_dir: \"/delay\""), "{s}");
        assert!(s.contains("advertised_host: \"delay.example\""), "{s}");
        // Standalone: each key from its own role's table.
        let s = settings(&with_file(text, &["standalone"]).unwrap());
        assert!(s.contains("data_dir: \"/top\""), "{s}");
        assert!(s.contains("advertised_host: Some(\"meta.example\")"), "{s}");
        assert!(s.contains("admin_tokens: [\"a\", \"b\"]"), "{s}");
        assert!(s.contains("delay_max_message_bytes: Some(900)"), "{s}");
        assert!(s.contains("listen: 127.0.0.1:1234"), "{s}");
    }

    #[test]
    fn min_group_num_comes_from_the_meta_table() {
        let text = "[meta]\nmin_group_num = 3\n";
        for server in ["meta", "standalone"] {
            let s = settings(&with_file(text, &[server]).unwrap());
            assert!(s.contains("min_group_num: 3"), "{server}: {s}");
            let s = settings(&with_file(text, &[server, "--min-group-num", "1"]).unwrap());
            assert!(s.contains("min_group_num: 1"), "{server}: {s}");
        }
        let e = error(with_file("[meta]\nmin_group_num = 0\n", &["meta"]));
        assert!(e.contains("min_group_num"), "{e}");
    }

    #[test]
    fn the_watchdog_table_sets_watchdog_and_standalone() {
        let text = "[watchdog]\ngrace_ms = 5\nnamespace = \"ns\"\nlease_ms = 9000\n";
        let argv = [
            "watchdog",
            "--meta-database-url",
            "sqlite://m.db",
            "--meta-http",
            "m:1",
        ];
        let s = settings(&with_file(text, &argv).unwrap());
        assert!(s.contains("grace_ms: 5"), "{s}");
        assert!(s.contains("namespace: \"ns\""), "{s}");
        assert!(s.contains("lease_ms: 9000"), "{s}");
        let s = settings(&with_file(text, &["standalone"]).unwrap());
        assert!(s.contains("grace_ms: 5"), "{s}");
        assert!(s.contains("enabled: true"), "{s}");
        // `enabled` is standalone's only: `qmq watchdog` accepts the key and has no such flag.
        let off = "[watchdog]\nenabled = false\nmetrics_listen = \"127.0.0.1:9\"\n";
        let s = settings(&with_file(off, &["standalone"]).unwrap());
        assert!(s.contains("enabled: false"), "{s}");
        let s = settings(&with_file(off, &argv).unwrap());
        assert!(s.contains("metrics_listen: Some(127.0.0.1:9)"), "{s}");
        assert!(default_file().contains("\n[watchdog]\n"));
        assert!(default_file().contains("\nenabled = true\n"));
        let e = error(with_file("[watchdog]\nbogus = 1\n", &["standalone"]));
        assert!(e.contains("unknown key `bogus` in [watchdog]"), "{e}");
    }

    #[test]
    fn the_backup_table_sets_backup_and_standalone() {
        let text = "[backup]\nenabled = false\nhttp_listen = \"127.0.0.1:9\"\nretention_days = 3\n";
        let s = settings(&with_file(text, &["standalone"]).unwrap());
        assert!(s.contains("backup_enabled: false"), "{s}");
        assert!(s.contains("backup_http_listen: 127.0.0.1:9"), "{s}");
        assert!(s.contains("backup_retention_days: 3"), "{s}");
        let s = settings(&with_file(text, &["backup"]).unwrap());
        assert!(s.contains("http_listen: 127.0.0.1:9"), "{s}");
        assert!(s.contains("retention_days: 3"), "{s}");
        let text = default_file();
        let backup = &text[text.find("\n[backup]\n").unwrap()..];
        assert!(
            backup.contains("\nhttp_listen = \"0.0.0.0:20883\"\n"),
            "{backup}"
        );
        assert!(backup.contains("\nenabled = true\n"), "{backup}");
        let e = error(with_file("[backup]\nbogus = 1\n", &["standalone"]));
        assert!(e.contains("unknown key `bogus` in [backup]"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = error(with_file("[broker]\nlissten = \"x\"\nfoo = 1\n", &["meta"]));
        assert!(e.contains("unknown key `lissten` in [broker]"), "{e}");
        assert!(e.contains("unknown key `foo` in [broker]"), "{e}");
        let e = error(with_file("bogus = 1\n", &["broker"]));
        assert!(e.contains("unknown key `bogus`"), "{e}");
        let e = error(with_file("listen = \"127.0.0.1:1\"\n", &["broker"]));
        assert!(e.contains("set it in [broker]"), "{e}");
        let e = error(with_file("broker = 1\n", &["broker"]));
        assert!(e.contains("`broker` must be a table"), "{e}");
        let e = error(with_file(
            "[broker]\nmax_message_bytes = \"big\"\n",
            &["broker"],
        ));
        assert!(
            e.contains("`[broker] max_message_bytes` must be an integer, not string"),
            "{e}"
        );
        let e = error(with_file("[broker]\nlisten = \"nowhere\"\n", &["broker"]));
        assert!(
            e.contains("`[broker] listen`: invalid value 'nowhere'"),
            "{e}"
        );
        let e = error(with_file("[broker]\nflush = \"sometimes\"\n", &["broker"]));
        assert!(e.contains("`[broker] flush`"), "{e}");
        let e = error(with_file("[meta]\nadmin_token = \"a\"\n", &["meta"]));
        assert!(e.contains("must be an array of strings"), "{e}");
        let e = error(with_file("[broker\n", &["broker"]));
        assert!(e.contains("parsing the configuration file"), "{e}");
    }

    #[test]
    fn limits_that_must_agree_across_roles_are_checked() {
        let text = "[broker]\nmax_message_bytes = 1000\n[delay]\nmax_message_bytes = 2000\n";
        for server in ["broker", "delay", "meta", "standalone"] {
            let e = error(with_file(text, &[server]));
            assert!(e.contains("delay-message-limit"), "{server}: {e}");
        }
        // The process's own flag stands for its role.
        assert!(with_file(text, &["delay", "--max-message-bytes", "1000"]).is_ok());
        // Every broken rule is listed.
        let text = "[broker]\nlease_renew_ms = 5000\ncluster_secret = \"a\"\n\
                    [meta]\ncluster_secret = \"b\"\n[delay]\nmax_message_bytes = 8388608\n";
        let e = error(with_file(text, &["broker"]));
        assert!(e.contains("breaks 3 rules"), "{e}");
        assert!(
            e.contains("lease-renew: broker lease_renew_ms = 5000"),
            "{e}"
        );
        assert!(e.contains("cluster-secret: cluster_secret differs between broker and meta"));
        assert!(
            !e.contains("\"a\"") && !e.contains("\"b\""),
            "secrets printed: {e}"
        );
        assert!(e.contains("delay-message-limit: delay max_message_bytes = 8388608"));
        // Without a file: this process's own rules.
        let e = error(parse(&["broker", "--max-message-bytes", "16777216"]));
        assert!(e.contains("frame-limit"), "{e}");
        let e = error(parse(&[
            "standalone",
            "--listen",
            "127.0.0.1:7000",
            "--delay-listen",
            "0.0.0.0:7000",
        ]));
        assert!(e.contains("distinct-ports"), "{e}");
        assert!(parse(&["standalone", "--listen", "127.0.0.1:0"]).is_ok());
    }
}
