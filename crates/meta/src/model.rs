//! Records the meta server keeps: broker groups, brokers, routes, clients, settings.

use qmq_protocol::{BrokerRole, BrokerState};
use serde::{Deserialize, Serialize};

/// Whether a broker group stores realtime messages or delay messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// A realtime broker group (QMQ code 1).
    Normal,
    /// A delay server group (QMQ code 2).
    Delay,
}

impl GroupKind {
    /// The stored code (QMQ's BrokerGroupKind numbering).
    pub fn code(self) -> i64 {
        match self {
            Self::Normal => 1,
            Self::Delay => 2,
        }
    }

    /// The kind for a stored code.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Normal),
            2 => Some(Self::Delay),
            _ => None,
        }
    }

    /// The kind of group a server with `role` belongs to.
    pub fn of_role(role: BrokerRole) -> Self {
        if role.is_delay() {
            Self::Delay
        } else {
            Self::Normal
        }
    }
}

/// Serde helpers writing protocol enums as their names.
pub(crate) mod state_serde {
    use qmq_protocol::BrokerState;
    use serde::{Deserialize, Deserializer, Serializer};

    /// The name of a state.
    pub fn name(state: BrokerState) -> &'static str {
        match state {
            BrokerState::ReadWrite => "RW",
            BrokerState::Read => "R",
            BrokerState::Write => "W",
            BrokerState::None => "NRW",
        }
    }

    pub fn serialize<S: Serializer>(state: &BrokerState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name(*state))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BrokerState, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "RW" => Ok(BrokerState::ReadWrite),
            "R" => Ok(BrokerState::Read),
            "W" => Ok(BrokerState::Write),
            "NRW" => Ok(BrokerState::None),
            other => Err(serde::de::Error::custom(format!(
                "unknown broker state {other}"
            ))),
        }
    }
}

/// A broker group as registered by its master (BROKER_REGISTER): what routes point to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerGroupInfo {
    /// Unique group name.
    pub name: String,
    /// Realtime or delay.
    pub kind: GroupKind,
    /// The master's client-facing address, `host:port`.
    pub master_address: String,
    /// What the group may do; `NRW` after an offline request or a heartbeat timeout.
    #[serde(with = "state_serde")]
    pub state: BrokerState,
    /// Placement tag (empty = default pool).
    pub tag: String,
    /// Last heartbeat seen by any meta server, ms since the epoch.
    pub heartbeat_ms: i64,
    /// Last change of address or state, ms since the epoch (sent to clients as update time).
    pub updated_ms: i64,
}

/// One server of a broker group, added by an operator (add-broker), used by BROKER_ACQUIRE_META.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSpec {
    /// The group the server belongs to.
    pub group: String,
    /// Its role code (0 master, 1 slave, 4 backup, 5 delay master, 6 delay slave, 7 delay backup).
    pub role: i32,
    /// Its hostname, as it reports itself in BROKER_ACQUIRE_META.
    pub hostname: String,
    /// Its IP address (slaves replicate from `ip:sync_port` of the master).
    pub ip: String,
    /// The port clients use.
    pub serve_port: i32,
    /// The replication port (`-1` or `0` for backups).
    pub sync_port: i32,
}

/// A subject registered by the admin action AddNewSubject, with its placement tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectInfo {
    /// The (real) subject.
    pub subject: String,
    /// Placement tag: a new route of the subject takes groups with this tag (the default
    /// pool when none has it).
    pub tag: String,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
}

/// A subject's persisted assignment to broker groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRoute {
    /// The (real) subject.
    pub subject: String,
    /// Assigned group names, in assignment order.
    pub groups: Vec<String>,
    /// Optimistic-concurrency version, bumped on every change.
    pub version: i64,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
    /// Groups an operator removed from the route (remove-subject-broker-group), sorted: the
    /// route is not topped up to `min.group.num` with them until an operator adds them back.
    /// They change only together with the version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// A client seen through CLIENT_REGISTER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The subject the client registered for.
    pub subject: String,
    /// Client type code (1 producer, 2 consumer, 3 other, 4 delay producer).
    pub client_type: i32,
    /// Consumer group ("" for producers).
    pub consumer_group: String,
    /// Client id.
    pub client_id: String,
    /// Application code.
    pub app_code: String,
    /// Data centre the client reported ("" if none).
    pub room: String,
    /// Last registration or heartbeat recorded, ms since the epoch.
    pub last_seen_ms: i64,
}

/// An operator's on/offline setting for consumers (`*` client id = every client of the group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStateSetting {
    /// Client id or `*`.
    pub client_id: String,
    /// Subject.
    pub subject: String,
    /// Consumer group.
    pub consumer_group: String,
    /// `true` = the consumers must stop consuming.
    pub offline: bool,
}

/// A group marked readonly for a subject (`*` = all subjects): producers no longer get it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReadonlySetting {
    /// Subject or `*`.
    pub subject: String,
    /// Broker group name.
    pub broker_group: String,
}

/// A database registered for the transactional-message watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDb {
    /// Connection URL, `type://host:port`, or `type://host:port/database` when add-db named one.
    pub url: String,
    /// User name.
    pub user_name: String,
    /// Password.
    pub password: String,
    /// Data centre.
    pub room: String,
}

/// Where a consumer group restarts consuming after a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ResetAction {
    /// Skip to the newest message (QMQ code 1).
    Latest,
    /// Go back to the oldest retained message (QMQ code 2).
    Earliest,
}

impl ResetAction {
    /// QMQ's code (as in CONSUME_MANAGE).
    pub fn code(self) -> i64 {
        match self {
            Self::Latest => 1,
            Self::Earliest => 2,
        }
    }

    /// The action for a QMQ code.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Latest),
            2 => Some(Self::Earliest),
            _ => None,
        }
    }
}

/// A recorded reset-offset request. Brokers serving the subject fetch the requests with an id
/// above the last one they applied (see [`crate::broker_api`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOffsetRequest {
    /// Increasing id; brokers remember the highest applied.
    pub id: i64,
    /// Subject.
    pub subject: String,
    /// Consumer group.
    pub consumer_group: String,
    /// Where to restart.
    pub action: ResetAction,
    /// When it was requested, ms since the epoch.
    pub created_ms: i64,
}

/// A broker group's replication state: its epoch (term), the current master's lease and the
/// fence a newly promoted master must wait out. Promotions change it with conditional updates
/// on `epoch`, so the database arbitrates between meta servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLeaseState {
    /// Group name.
    pub name: String,
    /// Realtime or delay.
    pub kind: GroupKind,
    /// The master's client address, `ip:serve_port`.
    pub master_address: String,
    /// What clients may do with the group.
    #[serde(with = "state_serde")]
    pub state: BrokerState,
    /// The group's epoch (0: never leased, QMQ-style registration only).
    pub epoch: i64,
    /// End of the current master's lease, ms since the epoch (0: none granted this epoch).
    pub lease_until_ms: i64,
    /// No lease is granted before this time (covers the previous master's lease), ms.
    pub fence_until_ms: i64,
}

/// Where one epoch of a group started: who its master was and its log ends when it took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Group name.
    pub group: String,
    /// The epoch.
    pub epoch: i64,
    /// Hostname of the epoch's master.
    pub hostname: String,
    /// Client port of the epoch's master.
    pub serve_port: i32,
    /// The master's message-log end when the epoch began (-1 until it reports it).
    pub message_start: i64,
    /// The master's action-log end when the epoch began (-1 until it reports it).
    pub action_start: i64,
    /// When the epoch was created, ms since the epoch.
    pub created_ms: i64,
}

/// The last GROUP_LEASE report of one server: what it runs as and how far its logs reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Hostname, as in its `broker` row.
    pub hostname: String,
    /// Client port, as in its `broker` row.
    pub serve_port: i32,
    /// Its group.
    pub group: String,
    /// The role code it reported running as.
    pub role: i32,
    /// The epoch it reported following.
    pub epoch: i64,
    /// Its message-log end.
    pub message_offset: i64,
    /// Its action-log (delay: dispatch-log) end.
    pub action_offset: i64,
    /// When the report arrived, ms since the epoch.
    pub updated_ms: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
