//! `qmq stat`: one look at a qmq-rs cluster, from the servers' own endpoints.
//!
//! - The meta server's admin API (the calls `qmq tools list-broker-groups`, `list-subjects` and
//!   `list-consumers` make): broker groups with their members, roles, epochs and replication
//!   lag; subjects and their broker groups; consumer groups and their clients.
//! - The Prometheus `/metrics` endpoints named with `--metrics` (the meta server does not know
//!   them), scraped twice `--interval` apart: messages received per second per subject (summed
//!   over brokers), pulled and acked per second per subject and group, each group's lag
//!   (messages and seconds) and unacked messages, and the delay servers' backlog.
//!
//! [`build_report`] makes the [`Report`] from those answers without any I/O, so it is tested
//! with hand-written expositions; [`run`] fetches them and prints the report as a text table or,
//! with `--json`, as one JSON document (the [`Report`]'s field names, documented in the README).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use qmq_meta::admin::ConsumerGroupInfo;
use qmq_meta::cli::{ToolsArgs, ToolsCommand};
use qmq_meta::failover::GroupReplication;
use qmq_meta::model::SubjectRoute;
use serde::Serialize;

/// A consumer client counts as online when an operator did not switch it offline and the meta
/// server saw it within this long (clients heartbeat every 30 s; the meta server records a
/// client at most once a minute).
pub const ONLINE_WITHIN_MS: i64 = 180_000;

/// The windows of `qmq_delay_due_messages` (its `within` label values).
const DUE_WINDOWS: [&str; 3] = ["1m", "1h", "1d"];

/// `qmq stat`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct StatArgs {
    /// Meta server HTTP address, `host:port` (port 8080 if omitted).
    #[arg(long, env = "QMQ_METASERVER")]
    pub metaserver: String,
    /// Admin API token (one of the meta server's admin tokens).
    #[arg(long, env = "QMQ_TOKEN", default_value = "")]
    pub token: String,
    /// Metrics endpoints (`host:port` of each server's `--metrics-listen`), comma-separated.
    /// The meta server does not know them; without any, only the meta server's view is shown.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Time between the two scrapes that rates are computed from.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// What the meta server answered.
#[derive(Debug, Clone, Default)]
pub struct MetaAnswers {
    /// `list-broker-groups` (`GET /admin/groups/replication`).
    pub groups: Vec<GroupReplication>,
    /// `list-subjects` (`GET /admin/subjects`).
    pub subjects: Vec<SubjectRoute>,
    /// `list-consumers` (`GET /admin/consumers`).
    pub consumers: Vec<ConsumerGroupInfo>,
}

/// The two scrapes of one metrics endpoint (each the exposition text, or why it failed).
#[derive(Debug, Clone)]
pub struct EndpointScrapes {
    /// The endpoint's address, as given.
    pub address: String,
    /// The first scrape.
    pub before: Result<String, String>,
    /// The second scrape, `interval` later.
    pub after: Result<String, String>,
}

/// The whole report (`qmq stat --json` prints it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Seconds between the two scrapes rates are computed over (null without endpoints).
    pub interval_seconds: Option<f64>,
    /// The metrics endpoints and what was read from them.
    pub endpoints: Vec<EndpointReport>,
    /// Broker groups (realtime and delay) as the meta server knows them.
    pub broker_groups: Vec<BrokerGroupReport>,
    /// Subjects known to the meta server or seen in the metrics, by name.
    pub subjects: Vec<SubjectReport>,
    /// Consumer groups known to the meta server or seen in the metrics, by subject and group.
    pub consumer_groups: Vec<ConsumerGroupReport>,
    /// The delay servers' backlog, summed over the delay masters scraped.
    pub delay: DelayReport,
}

/// One metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointReport {
    /// Its address.
    pub address: String,
    /// The broker role it reports (`master`, `slave`, `starting`), if it runs a broker.
    pub broker_role: Option<String>,
    /// The delay server role it reports, if it runs a replicated delay server.
    pub delay_role: Option<String>,
    /// Why a scrape failed or could not be parsed (null when both were read).
    pub error: Option<String>,
}

/// One broker group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerGroupReport {
    /// Group name.
    pub name: String,
    /// `normal` or `delay`.
    pub kind: String,
    /// The master's client address.
    pub master_address: String,
    /// `RW`, `R`, `W` or `NRW`.
    pub state: String,
    /// Placement tag.
    pub tag: String,
    /// The group's epoch.
    pub epoch: i64,
    /// The master's lease: `none`, `fenced`, `expired` or `<n> ms left`.
    pub lease: String,
    /// Its servers.
    pub members: Vec<MemberReport>,
}

/// One server of a broker group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberReport {
    /// `hostname:port`.
    pub server: String,
    /// Its role name in the meta server's table.
    pub role: String,
    /// The epoch it last reported (null if it never reported).
    pub epoch: Option<i64>,
    /// The master's message-log end minus its own.
    pub message_lag: Option<i64>,
    /// The master's action-log end minus its own.
    pub action_lag: Option<i64>,
    /// Age of its last report, ms.
    pub report_age_ms: Option<i64>,
}

/// One subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectReport {
    /// The subject.
    pub subject: String,
    /// The broker groups its route names (empty if it has none).
    pub broker_groups: Vec<String>,
    /// Its consumer groups.
    pub consumer_groups: Vec<String>,
    /// Messages received since the brokers started, summed over brokers (null: no endpoint
    /// reports it).
    pub received_total: Option<u64>,
    /// Messages received per second over the interval, summed over brokers.
    pub received_per_second: Option<f64>,
    /// Its backlog: the largest lag (messages) of its consumer groups.
    pub backlog_messages: Option<u64>,
}

/// One consumer group of one subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerGroupReport {
    /// The subject.
    pub subject: String,
    /// The consumer group.
    pub group: String,
    /// How many of its clients are online (see [`ONLINE_WITHIN_MS`]).
    pub online_consumers: usize,
    /// Its clients as the meta server knows them.
    pub consumers: Vec<ConsumerReport>,
    /// Messages stored and not yet handed to the group, summed over brokers.
    pub lag_messages: Option<u64>,
    /// Age of its oldest message not handed out yet, the largest over brokers.
    pub lag_seconds: Option<f64>,
    /// Messages handed out and not acked, summed over brokers.
    pub unacked_messages: Option<u64>,
    /// Messages pulled per second (redeliveries included), summed over brokers.
    pub pulled_per_second: Option<f64>,
    /// Messages acked per second, summed over brokers.
    pub acked_per_second: Option<f64>,
}

/// One consumer client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerReport {
    /// Client id.
    pub client_id: String,
    /// Application code.
    pub app_code: String,
    /// Data centre.
    pub room: String,
    /// Not switched offline and seen within [`ONLINE_WITHIN_MS`].
    pub online: bool,
    /// Switched offline by an operator.
    pub offline: bool,
    /// How long ago the meta server last recorded it, ms.
    pub last_seen_ago_ms: i64,
}

/// The delay servers' backlog (null: no endpoint serves the delay metrics).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayReport {
    /// Scheduled and not dispatched yet (`qmq_delay_pending_messages`).
    pub pending_messages: Option<u64>,
    /// Due within the next minute (`qmq_delay_due_messages{within="1m"}`).
    pub due_within_1m: Option<u64>,
    /// Due within the next hour.
    pub due_within_1h: Option<u64>,
    /// Due within the next day.
    pub due_within_1d: Option<u64>,
}

/// The samples of one exposition: (name, labels) → value.
#[derive(Debug, Default)]
struct Samples(Vec<(String, HashMap<String, String>, f64)>);

impl Samples {
    fn parse(text: &str) -> Result<Self, String> {
        use prometheus_parse::Value;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .map_err(|e| format!("unreadable exposition: {e}"))?;
        let samples = scrape
            .samples
            .into_iter()
            .filter_map(|s| {
                let v = match s.value {
                    Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                    _ => return None,
                };
                let labels = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Some((s.metric, labels, v))
            })
            .collect();
        Ok(Self(samples))
    }

    /// Every sample of `name`.
    fn of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a HashMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(n, _, _)| n == name)
            .map(|(_, l, v)| (l, *v))
    }

    /// The value of `name` with `labels` (at least).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.of(name)
            .find(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, v)| v)
    }

    /// The role a `<family>{role=...}` gauge says is current (value 1).
    fn role(&self, family: &str) -> Option<String> {
        self.of(family)
            .find(|(_, v)| *v == 1.0)
            .and_then(|(l, _)| l.get("role").cloned())
    }

    /// Values of `name` keyed by the values of `keys` (labels).
    fn keyed(&self, name: &str, keys: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for (l, v) in self.of(name) {
            let key: Option<Vec<String>> = keys.iter().map(|k| l.get(*k).cloned()).collect();
            if let Some(key) = key {
                *out.entry(key).or_insert(0.0) += v;
            }
        }
        out
    }
}

/// A counter's increase from `before` to `after` (a restart resets it: then all of `after`).
fn increase(before: Option<f64>, after: f64) -> f64 {
    match before {
        Some(b) if b <= after => after - b,
        _ => after,
    }
}

/// Adds `v` into an optional sum.
fn add(sum: &mut Option<f64>, v: f64) {
    *sum = Some(sum.unwrap_or(0.0) + v);
}

fn count(v: Option<f64>) -> Option<u64> {
    // Counts in the exposition are whole numbers; the cast saturates.
    v.map(|v| v.max(0.0).round() as u64)
}

/// Per-(subject[, group]) figures summed over the endpoints.
#[derive(Debug, Default)]
struct Figures {
    received_total: Option<f64>,
    received_rate: Option<f64>,
    lag_messages: Option<f64>,
    lag_seconds: Option<f64>,
    unacked: Option<f64>,
    pulled_rate: Option<f64>,
    acked_rate: Option<f64>,
}

/// Which figure of [`Figures`] a metric goes into.
type Field = fn(&mut Figures) -> &mut Option<f64>;

/// Rates of counter `name` (keyed by `keys`) between two scrapes, added into `into`.
fn add_rates(
    before: &Samples,
    after: &Samples,
    name: &str,
    keys: &[&str],
    seconds: f64,
    into: &mut BTreeMap<Vec<String>, Figures>,
    field: Field,
) {
    let old = before.keyed(name, keys);
    for (key, v) in after.keyed(name, keys) {
        // A series absent from the first scrape started at 0 in between.
        let delta = increase(Some(old.get(&key).copied().unwrap_or(0.0)), v);
        add(field(into.entry(key).or_default()), delta / seconds);
    }
}

/// A broker group state as the admin API and `qmq tools` name it.
fn state_name(state: qmq_protocol::BrokerState) -> &'static str {
    match state {
        qmq_protocol::BrokerState::ReadWrite => "RW",
        qmq_protocol::BrokerState::Read => "R",
        qmq_protocol::BrokerState::Write => "W",
        qmq_protocol::BrokerState::None => "NRW",
    }
}

/// Builds the report from the meta server's answers and the endpoints' scrapes; `interval` is
/// the time between the two scrapes, `now_ms` the current time (ms since the epoch) for the
/// consumers' ages.
///
/// Broker figures are summed over the endpoints whose broker is a master (or runs without
/// replication): a slave's store holds the same consumers as its master's. Delay figures
/// likewise come from delay masters only.
pub fn build_report(
    meta: &MetaAnswers,
    scrapes: &[EndpointScrapes],
    interval: Duration,
    now_ms: i64,
) -> Report {
    let seconds = interval.as_secs_f64();
    let mut endpoints = Vec::new();
    let mut subjects: BTreeMap<Vec<String>, Figures> = BTreeMap::new();
    let mut groups: BTreeMap<Vec<String>, Figures> = BTreeMap::new();
    let mut delay_pending: Option<f64> = None;
    let mut delay_due: [Option<f64>; 3] = [None; 3];
    for e in scrapes {
        let mut errors = Vec::new();
        let mut parse = |which: &str, r: &Result<String, String>| match r {
            Ok(text) => match Samples::parse(text) {
                Ok(s) => Some(s),
                Err(err) => {
                    errors.push(format!("{which} scrape: {err}"));
                    None
                }
            },
            Err(err) => {
                errors.push(format!("{which} scrape: {err}"));
                None
            }
        };
        let before = parse("first", &e.before);
        let after = parse("second", &e.after);
        let latest = after.as_ref().or(before.as_ref());
        let broker_role = latest.and_then(|s| s.role("qmq_broker_role"));
        let delay_role = latest.and_then(|s| s.role("qmq_delay_role"));
        endpoints.push(EndpointReport {
            address: e.address.clone(),
            broker_role: broker_role.clone(),
            delay_role: delay_role.clone(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        });
        let Some(latest) = latest else { continue };
        if broker_role.as_deref().is_none_or(|r| r == "master") {
            for (key, v) in latest.keyed("qmq_received_messages_total", &["subject"]) {
                add(&mut subjects.entry(key).or_default().received_total, v);
            }
            let gauges: [(&str, Field); 2] = [
                ("qmq_consumer_lag_messages", |f| &mut f.lag_messages),
                ("qmq_consumer_unacked_messages", |f| &mut f.unacked),
            ];
            for (name, field) in gauges {
                for (key, v) in latest.keyed(name, &["subject", "group"]) {
                    add(field(groups.entry(key).or_default()), v);
                }
            }
            for (key, v) in latest.keyed("qmq_consumer_lag_seconds", &["subject", "group"]) {
                let f = groups.entry(key).or_default();
                f.lag_seconds = Some(f.lag_seconds.map_or(v, |s: f64| s.max(v)));
            }
            if let (Some(before), Some(after)) = (&before, &after) {
                if seconds > 0.0 {
                    add_rates(
                        before,
                        after,
                        "qmq_received_messages_total",
                        &["subject"],
                        seconds,
                        &mut subjects,
                        |f| &mut f.received_rate,
                    );
                    add_rates(
                        before,
                        after,
                        "qmq_pulled_messages_total",
                        &["subject", "group"],
                        seconds,
                        &mut groups,
                        |f| &mut f.pulled_rate,
                    );
                    add_rates(
                        before,
                        after,
                        "qmq_acked_messages_total",
                        &["subject", "group"],
                        seconds,
                        &mut groups,
                        |f| &mut f.acked_rate,
                    );
                }
            }
        }
        if delay_role.as_deref().is_none_or(|r| r == "master") {
            if let Some(v) = latest.get("qmq_delay_pending_messages", &[]) {
                add(&mut delay_pending, v);
            }
            for (slot, within) in delay_due.iter_mut().zip(DUE_WINDOWS) {
                if let Some(v) = latest.get("qmq_delay_due_messages", &[("within", within)]) {
                    add(slot, v);
                }
            }
        }
    }

    // Every (subject, group) pair: the meta server's and the metrics'.
    let mut pairs: BTreeSet<(String, String)> = groups
        .keys()
        .filter_map(|k| match k.as_slice() {
            [s, g] => Some((s.clone(), g.clone())),
            _ => None,
        })
        .collect();
    pairs.extend(
        meta.consumers
            .iter()
            .map(|c| (c.subject.clone(), c.consumer_group.clone())),
    );
    let consumer_groups: Vec<ConsumerGroupReport> = pairs
        .into_iter()
        .map(|(subject, group)| {
            let consumers: Vec<ConsumerReport> = meta
                .consumers
                .iter()
                .filter(|c| c.subject == subject && c.consumer_group == group)
                .flat_map(|c| &c.clients)
                .map(|c| {
                    let ago = now_ms.saturating_sub(c.last_seen_ms).max(0);
                    ConsumerReport {
                        client_id: c.client_id.clone(),
                        app_code: c.app_code.clone(),
                        room: c.room.clone(),
                        online: !c.offline && ago <= ONLINE_WITHIN_MS,
                        offline: c.offline,
                        last_seen_ago_ms: ago,
                    }
                })
                .collect();
            let f = groups.remove(&vec![subject.clone(), group.clone()]);
            let f = f.unwrap_or_default();
            ConsumerGroupReport {
                online_consumers: consumers.iter().filter(|c| c.online).count(),
                consumers,
                lag_messages: count(f.lag_messages),
                lag_seconds: f.lag_seconds,
                unacked_messages: count(f.unacked),
                pulled_per_second: f.pulled_rate,
                acked_per_second: f.acked_rate,
                subject,
                group,
            }
        })
        .collect();

    let mut names: BTreeSet<String> = meta.subjects.iter().map(|r| r.subject.clone()).collect();
    names.extend(subjects.keys().filter_map(|k| k.first().cloned()));
    names.extend(consumer_groups.iter().map(|g| g.subject.clone()));
    let subjects = names
        .into_iter()
        .map(|subject| {
            let f = subjects.remove(&vec![subject.clone()]).unwrap_or_default();
            let mine: Vec<&ConsumerGroupReport> = consumer_groups
                .iter()
                .filter(|g| g.subject == subject)
                .collect();
            SubjectReport {
                broker_groups: meta
                    .subjects
                    .iter()
                    .filter(|r| r.subject == subject)
                    .flat_map(|r| r.groups.iter().cloned())
                    .collect(),
                consumer_groups: mine.iter().map(|g| g.group.clone()).collect(),
                received_total: count(f.received_total),
                received_per_second: f.received_rate,
                backlog_messages: mine.iter().filter_map(|g| g.lag_messages).max(),
                subject,
            }
        })
        .collect();

    let broker_groups = meta
        .groups
        .iter()
        .map(|g| BrokerGroupReport {
            name: g.group.name.clone(),
            kind: match g.group.kind {
                qmq_meta::model::GroupKind::Normal => "normal".to_owned(),
                qmq_meta::model::GroupKind::Delay => "delay".to_owned(),
            },
            master_address: g.group.master_address.clone(),
            state: state_name(g.group.state).to_owned(),
            tag: g.group.tag.clone(),
            epoch: g.epoch,
            lease: g.lease.clone(),
            members: g
                .members
                .iter()
                .map(|m| MemberReport {
                    server: m.server.clone(),
                    role: m.role_name.clone(),
                    epoch: m.epoch,
                    message_lag: m.message_lag,
                    action_lag: m.action_lag,
                    report_age_ms: m.report_age_ms,
                })
                .collect(),
        })
        .collect();

    Report {
        interval_seconds: (!scrapes.is_empty()).then_some(seconds),
        endpoints,
        broker_groups,
        subjects,
        consumer_groups,
        delay: DelayReport {
            pending_messages: count(delay_pending),
            due_within_1m: count(delay_due[0]),
            due_within_1h: count(delay_due[1]),
            due_within_1d: count(delay_due[2]),
        },
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// The report as text tables: broker groups, subjects, consumer groups, delay backlog
/// (`-`: not known, e.g. no metrics endpoint reports it).
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    out.push_str("BROKER GROUPS\n");
    let mut rows = Vec::new();
    for g in &r.broker_groups {
        for (i, m) in g.members.iter().enumerate() {
            let group = if i == 0 {
                vec![
                    g.name.clone(),
                    g.kind.clone(),
                    g.state.clone(),
                    g.epoch.to_string(),
                    g.lease.clone(),
                ]
            } else {
                vec![String::new(); 5]
            };
            let mut row = group;
            row.extend([
                m.server.clone(),
                m.role.clone(),
                opt(m.epoch),
                opt(m.message_lag),
                opt(m.action_lag),
                opt(m.report_age_ms),
            ]);
            rows.push(row);
        }
        if g.members.is_empty() {
            let mut row = vec![
                g.name.clone(),
                g.kind.clone(),
                g.state.clone(),
                g.epoch.to_string(),
                g.lease.clone(),
                g.master_address.clone(),
            ];
            row.extend(vec!["-".to_owned(); 5]);
            rows.push(row);
        }
    }
    table(
        &mut out,
        &[
            "GROUP",
            "KIND",
            "STATE",
            "EPOCH",
            "LEASE",
            "SERVER",
            "ROLE",
            "SRV EPOCH",
            "MSG LAG",
            "ACTION LAG",
            "REPORT AGE MS",
        ],
        &rows,
    );

    out.push_str("\nSUBJECTS\n");
    let rows: Vec<Vec<String>> = r
        .subjects
        .iter()
        .map(|s| {
            vec![
                s.subject.clone(),
                if s.broker_groups.is_empty() {
                    "-".to_owned()
                } else {
                    s.broker_groups.join(",")
                },
                opt(s.received_total),
                rate(s.received_per_second),
                opt(s.backlog_messages),
                if s.consumer_groups.is_empty() {
                    "-".to_owned()
                } else {
                    s.consumer_groups.join(",")
                },
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "SUBJECT",
            "BROKER GROUPS",
            "RECEIVED",
            "RECEIVED/S",
            "BACKLOG",
            "CONSUMED BY",
        ],
        &rows,
    );

    out.push_str("\nCONSUMER GROUPS\n");
    let rows: Vec<Vec<String>> = r
        .consumer_groups
        .iter()
        .map(|g| {
            vec![
                g.subject.clone(),
                g.group.clone(),
                format!("{}/{}", g.online_consumers, g.consumers.len()),
                opt(g.lag_messages),
                g.lag_seconds
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                opt(g.unacked_messages),
                rate(g.pulled_per_second),
                rate(g.acked_per_second),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "SUBJECT", "GROUP", "ONLINE", "LAG", "LAG S", "UNACKED", "PULLED/S", "ACKED/S",
        ],
        &rows,
    );

    out.push_str("\nDELAY BACKLOG\n");
    let d = &r.delay;
    table(
        &mut out,
        &["PENDING", "DUE 1M", "DUE 1H", "DUE 1D"],
        &[vec![
            opt(d.pending_messages),
            opt(d.due_within_1m),
            opt(d.due_within_1h),
            opt(d.due_within_1d),
        ]],
    );

    if !r.endpoints.is_empty() {
        out.push_str("\nMETRICS ENDPOINTS\n");
        let rows: Vec<Vec<String>> = r
            .endpoints
            .iter()
            .map(|e| {
                vec![
                    e.address.clone(),
                    opt(e.broker_role.clone()),
                    opt(e.delay_role.clone()),
                    e.error.clone().unwrap_or_else(|| "ok".to_owned()),
                ]
            })
            .collect();
        table(
            &mut out,
            &["ADDRESS", "BROKER ROLE", "DELAY ROLE", "STATUS"],
            &rows,
        );
    }
    out
}

/// One admin API call through the tools' client; its answer's `data`, decoded.
async fn ask<T: serde::de::DeserializeOwned>(
    args: &StatArgs,
    command: ToolsCommand,
    what: &str,
) -> anyhow::Result<T> {
    let text = qmq_meta::cli::run_tools(ToolsArgs {
        metaserver: args.metaserver.clone(),
        token: args.token.clone(),
        command,
    })
    .await
    .with_context(|| format!("asking the meta server at {} for {what}", args.metaserver))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the meta server's answer for {what} is not understood"))
}

/// Scrapes every endpoint (concurrently).
async fn scrape_all(addrs: &[String]) -> Vec<Result<String, String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, a) in addrs.iter().enumerate() {
        let a = a.clone();
        tasks.spawn(async move {
            let r = qmq_metrics::scrape(&a)
                .await
                .map(|e| e.text)
                .map_err(|e| e.to_string());
            (i, r)
        });
    }
    let mut out: Vec<Result<String, String>> =
        vec![Err("scrape did not finish".to_owned()); addrs.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, r)) = done {
            out[i] = r;
        }
    }
    out
}

/// `qmq stat`: asks the meta server, scrapes the endpoints twice `--interval` apart, prints.
pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    let metrics: Vec<String> = args
        .metrics
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if !metrics.is_empty() && args.interval.is_zero() {
        bail!("--interval must be longer than 0 (rates are measured over it)");
    }
    // The meta server first: an unreachable one or a refused token fails before any wait.
    let meta = MetaAnswers {
        groups: ask(&args, ToolsCommand::ListBrokerGroups, "broker groups").await?,
        subjects: ask(&args, ToolsCommand::ListSubjects, "subjects").await?,
        consumers: ask(
            &args,
            ToolsCommand::ListConsumers { subject: None },
            "consumers",
        )
        .await?,
    };
    let (scrapes, elapsed) = if metrics.is_empty() {
        (Vec::new(), Duration::ZERO)
    } else {
        // The servers read their counters when a scrape arrives: rates are over the time
        // between the starts of the two rounds.
        let started = Instant::now();
        let first = scrape_all(&metrics).await;
        tokio::time::sleep_until((started + args.interval).into()).await;
        let elapsed = started.elapsed();
        let second = scrape_all(&metrics).await;
        let scrapes: Vec<EndpointScrapes> = metrics
            .iter()
            .zip(first.into_iter().zip(second))
            .map(|(address, (before, after))| EndpointScrapes {
                address: address.clone(),
                before,
                after,
            })
            .collect();
        (scrapes, elapsed)
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let report = build_report(&meta, &scrapes, elapsed, now_ms);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000_000;

    fn meta() -> MetaAnswers {
        MetaAnswers {
            groups: serde_json::from_value(json!([{
                "name": "bg1", "kind": "normal", "master_address": "10.0.0.1:20881",
                "state": "RW", "tag": "", "heartbeat_ms": NOW, "updated_ms": NOW,
                "epoch": 3, "lease": "4000 ms left", "lease_remaining_ms": 4000,
                "lease_until_ms": NOW + 4000, "fence_until_ms": 0,
                "members": [
                    {"server": "a:20881", "ip": "10.0.0.1", "role": 0, "role_name": "Master",
                     "reported_role": 0, "epoch": 3, "message_offset": 100, "action_offset": 10,
                     "message_lag": 0, "action_lag": 0, "report_age_ms": 500},
                    {"server": "b:20881", "ip": "10.0.0.2", "role": 1, "role_name": "Slave",
                     "reported_role": null, "epoch": null, "message_offset": null,
                     "action_offset": null, "message_lag": null, "action_lag": null,
                     "report_age_ms": null}
                ],
                "epochs": []
            }]))
            .unwrap(),
            subjects: serde_json::from_value(json!([
                {"subject": "orders", "groups": ["bg1", "bg2"], "version": 1, "updated_ms": NOW},
                {"subject": "quiet", "groups": ["bg1"], "version": 1, "updated_ms": NOW}
            ]))
            .unwrap(),
            consumers: serde_json::from_value(json!([{
                "subject": "orders", "consumer_group": "billing",
                "clients": [
                    {"client_id": "c1", "app_code": "app", "room": "", "last_seen_ms": NOW - 1000,
                     "offline": false},
                    {"client_id": "c2", "app_code": "app", "room": "", "last_seen_ms": NOW - 1000,
                     "offline": true},
                    {"client_id": "c3", "app_code": "app", "room": "",
                     "last_seen_ms": NOW - ONLINE_WITHIN_MS - 1, "offline": false}
                ]
            }]))
            .unwrap(),
        }
    }

    fn ok(address: &str, before: &str, after: &str) -> EndpointScrapes {
        EndpointScrapes {
            address: address.to_owned(),
            before: Ok(before.to_owned()),
            after: Ok(after.to_owned()),
        }
    }

    /// A broker exposition: role, received, pulled and acked counters, lag gauges.
    fn broker(role: &str, received: f64, pulled: Option<f64>, acked: f64, lag: &str) -> String {
        let mut s = String::new();
        s.push_str("# TYPE qmq_broker_role gauge\n");
        for r in ["master", "slave", "starting"] {
            let v = i32::from(r == role);
            s.push_str(&format!("qmq_broker_role{{role=\"{r}\"}} {v}\n"));
        }
        s.push_str("# TYPE qmq_received_messages counter\n");
        s.push_str(&format!(
            "qmq_received_messages_total{{subject=\"orders\"}} {received}\n"
        ));
        s.push_str("# TYPE qmq_pulled_messages counter\n");
        if let Some(p) = pulled {
            s.push_str(&format!(
                "qmq_pulled_messages_total{{subject=\"orders\",group=\"billing\"}} {p}\n"
            ));
        }
        s.push_str("# TYPE qmq_acked_messages counter\n");
        s.push_str(&format!(
            "qmq_acked_messages_total{{subject=\"orders\",group=\"billing\"}} {acked}\n"
        ));
        s.push_str(lag);
        s.push_str("# EOF\n");
        s
    }

    fn lag(messages: f64, seconds: f64, unacked: f64) -> String {
        format!(
            "# TYPE qmq_consumer_lag_messages gauge\n\
             qmq_consumer_lag_messages{{subject=\"orders\",group=\"billing\"}} {messages}\n\
             # TYPE qmq_consumer_lag_seconds gauge\n\
             qmq_consumer_lag_seconds{{subject=\"orders\",group=\"billing\"}} {seconds}\n\
             # TYPE qmq_consumer_unacked_messages gauge\n\
             qmq_consumer_unacked_messages{{subject=\"orders\",group=\"billing\"}} {unacked}\n"
        )
    }

    fn two_brokers_and_a_slave() -> Vec<EndpointScrapes> {
        vec![
            // a: +20 received, +10 pulled, +10 acked over 2 s.
            ok(
                "a:9100",
                &broker("master", 10.0, Some(4.0), 2.0, &lag(9.0, 1.0, 0.0)),
                &broker("master", 30.0, Some(14.0), 12.0, &lag(5.0, 2.5, 1.0)),
            ),
            // b: +20 received; its pulled series appears in between (6 since 0); acked reset
            // by a restart (8 -> 4: 4 since).
            ok(
                "b:9100",
                &broker("master", 0.0, None, 8.0, ""),
                &broker("master", 20.0, Some(6.0), 4.0, &lag(3.0, 7.0, 2.0)),
            ),
            // A slave holds the same consumers as its master: not counted.
            ok(
                "a-slave:9100",
                &broker("slave", 0.0, Some(0.0), 0.0, &lag(5.0, 2.5, 1.0)),
                &broker("slave", 999.0, Some(999.0), 999.0, &lag(500.0, 99.0, 100.0)),
            ),
        ]
    }

    #[test]
    fn rates_are_summed_over_brokers_and_groups_merged() {
        let r = build_report(
            &meta(),
            &two_brokers_and_a_slave(),
            Duration::from_secs(2),
            NOW,
        );
        assert_eq!(r.interval_seconds, Some(2.0));
        let orders = r.subjects.iter().find(|s| s.subject == "orders").unwrap();
        assert_eq!(orders.broker_groups, ["bg1", "bg2"]);
        assert_eq!(orders.consumer_groups, ["billing"]);
        assert_eq!(orders.received_total, Some(50));
        assert_eq!(orders.received_per_second, Some(20.0));
        assert_eq!(orders.backlog_messages, Some(8));

        assert_eq!(r.consumer_groups.len(), 1);
        let g = &r.consumer_groups[0];
        assert_eq!(
            (g.subject.as_str(), g.group.as_str()),
            ("orders", "billing")
        );
        assert_eq!(g.lag_messages, Some(8));
        assert_eq!(g.lag_seconds, Some(7.0), "the oldest over brokers");
        assert_eq!(g.unacked_messages, Some(3));
        assert_eq!(g.pulled_per_second, Some(8.0));
        assert_eq!(g.acked_per_second, Some(7.0));
        assert_eq!(g.consumers.len(), 3);
        assert_eq!(g.online_consumers, 1, "c2 is offline, c3 not seen lately");
        let online: Vec<&str> = g
            .consumers
            .iter()
            .filter(|c| c.online)
            .map(|c| c.client_id.as_str())
            .collect();
        assert_eq!(online, ["c1"]);

        let roles: Vec<Option<&str>> = r
            .endpoints
            .iter()
            .map(|e| e.broker_role.as_deref())
            .collect();
        assert_eq!(roles, [Some("master"), Some("master"), Some("slave")]);
        assert!(r.endpoints.iter().all(|e| e.error.is_none()));
    }

    #[test]
    fn meta_only_subjects_and_groups_are_listed_without_figures() {
        let r = build_report(&meta(), &[], Duration::ZERO, NOW);
        assert_eq!(r.interval_seconds, None);
        let names: Vec<&str> = r.subjects.iter().map(|s| s.subject.as_str()).collect();
        assert_eq!(names, ["orders", "quiet"]);
        let quiet = &r.subjects[1];
        assert_eq!(quiet.broker_groups, ["bg1"]);
        assert_eq!(quiet.received_per_second, None);
        assert_eq!(quiet.backlog_messages, None);
        let g = &r.consumer_groups[0];
        assert_eq!(g.lag_messages, None);
        assert_eq!(g.pulled_per_second, None);
        assert_eq!(g.online_consumers, 1);

        let bg = &r.broker_groups[0];
        assert_eq!(
            (
                bg.name.as_str(),
                bg.kind.as_str(),
                bg.state.as_str(),
                bg.epoch
            ),
            ("bg1", "normal", "RW", 3)
        );
        assert_eq!(bg.members.len(), 2);
        assert_eq!(bg.members[1].role, "Slave");
        assert_eq!(bg.members[1].message_lag, None);
    }

    #[test]
    fn missing_delay_metrics_are_absent_and_shown_as_dashes() {
        let r = build_report(
            &meta(),
            &two_brokers_and_a_slave(),
            Duration::from_secs(2),
            NOW,
        );
        assert_eq!(
            r.delay,
            DelayReport {
                pending_messages: None,
                due_within_1m: None,
                due_within_1h: None,
                due_within_1d: None,
            }
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["delay"]["pending_messages"], serde_json::Value::Null);
        let text = render_text(&r);
        let delay = text.split("DELAY BACKLOG\n").nth(1).unwrap();
        let values = delay.lines().nth(1).unwrap();
        assert_eq!(values.split_whitespace().collect::<Vec<_>>(), ["-"; 4]);
    }

    #[test]
    fn delay_backlog_is_summed_over_delay_masters() {
        let delay = |pending: u32, role: Option<&str>| {
            let mut s = String::new();
            if let Some(role) = role {
                s.push_str("# TYPE qmq_delay_role gauge\n");
                for r in ["master", "slave", "starting"] {
                    let v = i32::from(r == role);
                    s.push_str(&format!("qmq_delay_role{{role=\"{r}\"}} {v}\n"));
                }
            }
            s.push_str(&format!(
                "# TYPE qmq_delay_pending_messages gauge\n\
                 qmq_delay_pending_messages {pending}\n\
                 # TYPE qmq_delay_due_messages gauge\n\
                 qmq_delay_due_messages{{within=\"1m\"}} 1\n\
                 qmq_delay_due_messages{{within=\"1h\"}} 2\n\
                 qmq_delay_due_messages{{within=\"1d\"}} 3\n\
                 # EOF\n"
            ));
            s
        };
        // An unreplicated delay server (no role gauge) and a replicated master and slave.
        let plain = delay(10, None);
        let scrapes = [
            ok("d1:9100", &plain, &plain),
            ok(
                "d2:9100",
                &delay(5, Some("master")),
                &delay(5, Some("master")),
            ),
            ok(
                "d3:9100",
                &delay(7, Some("slave")),
                &delay(7, Some("slave")),
            ),
        ];
        let r = build_report(
            &MetaAnswers::default(),
            &scrapes,
            Duration::from_secs(1),
            NOW,
        );
        assert_eq!(
            r.delay,
            DelayReport {
                pending_messages: Some(15),
                due_within_1m: Some(2),
                due_within_1h: Some(4),
                due_within_1d: Some(6),
            }
        );
        assert_eq!(r.endpoints[0].delay_role, None);
        assert_eq!(r.endpoints[2].delay_role.as_deref(), Some("slave"));
        let text = render_text(&r);
        let values = text.split("DELAY BACKLOG\n").nth(1).unwrap();
        let values = values.lines().nth(1).unwrap();
        assert_eq!(
            values.split_whitespace().collect::<Vec<_>>(),
            ["15", "2", "4", "6"]
        );
    }

    #[test]
    fn a_failed_scrape_is_reported_and_the_other_still_gives_gauges() {
        let after = broker("master", 30.0, Some(14.0), 12.0, &lag(5.0, 2.5, 1.0));
        let scrapes = [EndpointScrapes {
            address: "a:9100".to_owned(),
            before: Err("cannot connect".to_owned()),
            after: Ok(after),
        }];
        let r = build_report(&meta(), &scrapes, Duration::from_secs(1), NOW);
        let e = &r.endpoints[0];
        assert_eq!(e.error.as_deref(), Some("first scrape: cannot connect"));
        let g = &r.consumer_groups[0];
        assert_eq!(g.lag_messages, Some(5));
        assert_eq!(g.pulled_per_second, None, "no rate from one scrape");
        let orders = &r.subjects[0];
        assert_eq!(orders.received_total, Some(30));
        assert_eq!(orders.received_per_second, None);
        assert!(render_text(&r).contains("first scrape: cannot connect"));
    }

    #[test]
    fn text_has_every_section_with_the_figures() {
        let r = build_report(
            &meta(),
            &two_brokers_and_a_slave(),
            Duration::from_secs(2),
            NOW,
        );
        let text = render_text(&r);
        for section in [
            "BROKER GROUPS",
            "SUBJECTS",
            "CONSUMER GROUPS",
            "DELAY BACKLOG",
            "METRICS ENDPOINTS",
        ] {
            assert!(text.lines().any(|l| l == section), "{section}: {text}");
        }
        let row = text
            .lines()
            .find(|l| l.starts_with("orders") && l.contains("billing") && l.contains("1/3"))
            .unwrap_or_else(|| panic!("no consumer group row: {text}"));
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["orders", "billing", "1/3", "8", "7.0", "3", "8.0", "7.0"]
        );
    }
}
