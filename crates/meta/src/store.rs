//! The meta database: SQLite (embedded default), PostgreSQL or MySQL/MariaDB through sqlx.
//!
//! Every statement is written once with `?` placeholders and rewritten for PostgreSQL; the few
//! statements whose syntax differs (insert-or-ignore, upsert) come from [`Dialect`]. The schema
//! lives in versioned migrations, one directory per dialect, applied on every start.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use qmq_protocol::{BrokerRole, BrokerState};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use crate::model::{
    now_ms, BrokerGroupInfo, BrokerSpec, ClientDb, ClientRecord, ClientStateSetting, EpochRecord,
    GroupKind, GroupLeaseState, ReadonlySetting, ReplicaReport, ResetAction, ResetOffsetRequest,
    SubjectInfo, SubjectRoute,
};
use crate::MetaError;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");

/// The SQL dialect of the configured database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (embedded file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Dialect {
    /// The dialect of a connection URL, from its scheme.
    pub fn of_url(url: &str) -> Result<Self, MetaError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            other => Err(MetaError::Config(format!(
                "unsupported database URL scheme {other:?} (use sqlite:, postgres: or mysql:)"
            ))),
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Self::Sqlite => &SQLITE_MIGRATIONS,
            Self::Postgres => &POSTGRES_MIGRATIONS,
            Self::MySql => &MYSQL_MIGRATIONS,
        }
    }

    /// `INSERT ... ` that silently skips rows violating a unique key.
    fn insert_ignore(self, table_and_values: &str) -> String {
        match self {
            Self::MySql => format!("INSERT IGNORE INTO {table_and_values}"),
            Self::Sqlite | Self::Postgres => {
                format!("INSERT INTO {table_and_values} ON CONFLICT DO NOTHING")
            }
        }
    }

    /// `INSERT ... ` that updates `update_cols` when the key `key_cols` exists.
    fn upsert(self, table_and_values: &str, key_cols: &str, update_cols: &[&str]) -> String {
        match self {
            Self::MySql => {
                let sets: Vec<String> = update_cols
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect();
                format!(
                    "INSERT INTO {table_and_values} ON DUPLICATE KEY UPDATE {}",
                    sets.join(", ")
                )
            }
            Self::Sqlite | Self::Postgres => {
                let sets: Vec<String> = update_cols
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect();
                format!(
                    "INSERT INTO {table_and_values} ON CONFLICT ({key_cols}) DO UPDATE SET {}",
                    sets.join(", ")
                )
            }
        }
    }
}

/// The meta database. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

fn state_from(code: i64) -> Result<BrokerState, MetaError> {
    i32::try_from(code)
        .ok()
        .and_then(|c| BrokerState::from_code(c).ok())
        .ok_or_else(|| MetaError::Corrupt(format!("unknown broker state code {code}")))
}

fn group_from_row(row: &AnyRow) -> Result<BrokerGroupInfo, MetaError> {
    let kind: i64 = row.try_get("kind")?;
    Ok(BrokerGroupInfo {
        name: row.try_get("group_name")?,
        kind: GroupKind::from_code(kind)
            .ok_or_else(|| MetaError::Corrupt(format!("unknown group kind {kind}")))?,
        master_address: row.try_get("master_address")?,
        state: state_from(row.try_get("state")?)?,
        tag: row.try_get("tag")?,
        heartbeat_ms: row.try_get("heartbeat_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn lease_state_from_row(row: &AnyRow) -> Result<GroupLeaseState, MetaError> {
    let kind: i64 = row.try_get("kind")?;
    Ok(GroupLeaseState {
        name: row.try_get("group_name")?,
        kind: GroupKind::from_code(kind)
            .ok_or_else(|| MetaError::Corrupt(format!("unknown group kind {kind}")))?,
        master_address: row.try_get("master_address")?,
        state: state_from(row.try_get("state")?)?,
        epoch: row.try_get("epoch")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        fence_until_ms: row.try_get("fence_until_ms")?,
    })
}

fn int32(row: &AnyRow, name: &str) -> Result<i32, MetaError> {
    let v: i64 = row.try_get(name)?;
    i32::try_from(v).map_err(|_| MetaError::Corrupt(format!("{name} {v} out of range")))
}

fn epoch_from_row(row: &AnyRow) -> Result<EpochRecord, MetaError> {
    Ok(EpochRecord {
        group: row.try_get("group_name")?,
        epoch: row.try_get("epoch")?,
        hostname: row.try_get("hostname")?,
        serve_port: int32(row, "serve_port")?,
        message_start: row.try_get("message_start")?,
        action_start: row.try_get("action_start")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn replica_from_row(row: &AnyRow) -> Result<ReplicaReport, MetaError> {
    Ok(ReplicaReport {
        hostname: row.try_get("hostname")?,
        serve_port: int32(row, "serve_port")?,
        group: row.try_get("group_name")?,
        role: int32(row, "role")?,
        epoch: row.try_get("epoch")?,
        message_offset: row.try_get("message_offset")?,
        action_offset: row.try_get("action_offset")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

/// Role code a master is parked at while a promotion swaps roles (the `broker` table allows one
/// server per group and role).
const PARKED_ROLE: i64 = -1;

/// Columns of [`GroupLeaseState`].
const LEASE_COLS: &str =
    "group_name, kind, master_address, state, epoch, lease_until_ms, fence_until_ms";

/// A promotion to apply in one transaction (see [`Store::promote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionPlan {
    /// The group.
    pub group: String,
    /// The epoch the decision was based on; the promotion fails if it changed.
    pub from_epoch: i64,
    /// The lease end the decision was based on; the promotion fails if it changed (the master
    /// renewed meanwhile).
    pub expected_lease_until_ms: i64,
    /// The group's master role code (0 or 5).
    pub master_role: i32,
    /// The group's slave role code (1 or 6).
    pub slave_role: i32,
    /// Hostname of the slave to promote.
    pub hostname: String,
    /// Client port of the slave to promote.
    pub serve_port: i32,
    /// Its client address, `ip:serve_port`, the group's new master address.
    pub master_address: String,
    /// No lease for the new master before this time, ms since the epoch.
    pub fence_until_ms: i64,
}

fn broker_from_row(row: &AnyRow) -> Result<BrokerSpec, MetaError> {
    let int = |name: &str| -> Result<i32, MetaError> {
        let v: i64 = row.try_get(name)?;
        i32::try_from(v).map_err(|_| MetaError::Corrupt(format!("{name} {v} out of range")))
    };
    Ok(BrokerSpec {
        group: row.try_get("group_name")?,
        role: int("role")?,
        hostname: row.try_get("hostname")?,
        ip: row.try_get("ip")?,
        serve_port: int("serve_port")?,
        sync_port: int("sync_port")?,
    })
}

fn route_from_row(row: &AnyRow) -> Result<SubjectRoute, MetaError> {
    let subject: String = row.try_get("subject")?;
    let json: String = row.try_get("broker_groups")?;
    let groups: Vec<String> = serde_json::from_str(&json)
        .map_err(|e| MetaError::Corrupt(format!("route of {subject}: {e}")))?;
    Ok(SubjectRoute {
        subject,
        groups,
        version: row.try_get("version")?,
        updated_ms: row.try_get("updated_ms")?,
        excluded: Vec::new(),
    })
}

fn client_from_row(row: &AnyRow) -> Result<ClientRecord, MetaError> {
    let client_type: i64 = row.try_get("client_type")?;
    Ok(ClientRecord {
        subject: row.try_get("subject")?,
        client_type: client_type as i32,
        consumer_group: row.try_get("consumer_group")?,
        client_id: row.try_get("client_id")?,
        app_code: row.try_get("app_code")?,
        room: row.try_get("room")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
    })
}

fn reset_from_row(row: &AnyRow) -> Result<ResetOffsetRequest, MetaError> {
    let action: i64 = row.try_get("action")?;
    Ok(ResetOffsetRequest {
        id: row.try_get("id")?,
        subject: row.try_get("subject")?,
        consumer_group: row.try_get("consumer_group")?,
        action: ResetAction::from_code(action)
            .ok_or_else(|| MetaError::Corrupt(format!("unknown reset action {action}")))?,
        created_ms: row.try_get("created_ms")?,
    })
}

impl Store {
    /// Connects to `url` (`sqlite:`, `postgres:` or `mysql:`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, MetaError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)?;
        // One SQLite connection: the meta load is tiny and a single writer never sees
        // "database is locked".
        let max = if dialect == Dialect::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        dialect.migrator().run(&pool).await?;
        Ok(Self { pool, dialect })
    }

    /// Opens (creating it if needed) the embedded SQLite database `meta.db` in `data_dir`.
    pub async fn open_sqlite_dir(data_dir: &Path) -> Result<Self, MetaError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("meta.db");
        let path = path
            .to_str()
            .ok_or_else(|| MetaError::Config(format!("data dir {data_dir:?} is not UTF-8")))?;
        Self::connect(&format!("sqlite://{path}?mode=rwc")).await
    }

    /// The dialect in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes every connection; later calls fail as if the database were down.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if self.dialect != Dialect::Postgres {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    // ---- broker groups ----

    /// Every registered broker group.
    pub async fn broker_groups(&self) -> Result<Vec<BrokerGroupInfo>, MetaError> {
        let rows = sqlx::query(
            "SELECT group_name, kind, master_address, state, tag, heartbeat_ms, updated_ms \
             FROM broker_group ORDER BY group_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(group_from_row).collect()
    }

    /// One broker group.
    pub async fn broker_group(&self, name: &str) -> Result<Option<BrokerGroupInfo>, MetaError> {
        let sql = self.sql(
            "SELECT group_name, kind, master_address, state, tag, heartbeat_ms, updated_ms \
             FROM broker_group WHERE group_name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(group_from_row).transpose()
    }

    /// Creates or updates a group's master address, kind and state, and records a heartbeat.
    pub async fn upsert_broker_group(
        &self,
        name: &str,
        kind: GroupKind,
        master_address: &str,
        state: BrokerState,
    ) -> Result<(), MetaError> {
        let now = now_ms();
        let stmt = self.dialect.upsert(
            "broker_group (group_name, kind, master_address, state, tag, heartbeat_ms, \
             created_ms, updated_ms) VALUES (?, ?, ?, ?, '', ?, ?, ?)",
            "group_name",
            &[
                "kind",
                "master_address",
                "state",
                "heartbeat_ms",
                "updated_ms",
            ],
        );
        let sql = self.sql(&stmt);
        sqlx::query(&sql)
            .bind(name)
            .bind(kind.code())
            .bind(master_address)
            .bind(i64::from(state.code()))
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a heartbeat and the reported state of an existing group; `false` if unknown.
    pub async fn heartbeat_broker_group(
        &self,
        name: &str,
        state: BrokerState,
    ) -> Result<bool, MetaError> {
        let now = now_ms();
        let code = i64::from(state.code());
        // updated_ms is assigned before state: MySQL evaluates assignments left to right.
        let sql = self.sql(
            "UPDATE broker_group SET heartbeat_ms = ?, \
             updated_ms = CASE WHEN state <> ? THEN ? ELSE updated_ms END, state = ? \
             WHERE group_name = ?",
        );
        let done = sqlx::query(&sql)
            .bind(now)
            .bind(code)
            .bind(now)
            .bind(code)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        // MySQL counts changed rows only: tell "unchanged" from "absent".
        Ok(self.broker_group(name).await?.is_some())
    }

    /// Marks `NRW` every group whose last heartbeat is older than `deadline_ms`; returns
    /// the names of the groups marked.
    pub async fn expire_broker_groups(&self, deadline_ms: i64) -> Result<Vec<String>, MetaError> {
        let nrw = i64::from(BrokerState::None.code());
        let sql =
            self.sql("SELECT group_name FROM broker_group WHERE state <> ? AND heartbeat_ms < ?");
        let rows = sqlx::query(&sql)
            .bind(nrw)
            .bind(deadline_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut expired = Vec::new();
        for row in rows {
            let name: String = row.try_get("group_name")?;
            // Re-check the deadline in the update: a heartbeat may have arrived meanwhile.
            let sql = self.sql(
                "UPDATE broker_group SET state = ?, updated_ms = ? \
                 WHERE group_name = ? AND state <> ? AND heartbeat_ms < ?",
            );
            let done = sqlx::query(&sql)
                .bind(nrw)
                .bind(now_ms())
                .bind(&name)
                .bind(nrw)
                .bind(deadline_ms)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() > 0 {
                expired.push(name);
            }
        }
        Ok(expired)
    }

    // ---- replication: epochs, leases, reports ----

    /// A group's replication state.
    pub async fn group_lease_state(
        &self,
        name: &str,
    ) -> Result<Option<GroupLeaseState>, MetaError> {
        let stmt = format!("SELECT {LEASE_COLS} FROM broker_group WHERE group_name = ?");
        let sql = self.sql(&stmt);
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(lease_state_from_row).transpose()
    }

    /// Every group whose master held a lease that ended before `deadline_ms`.
    pub async fn expired_leases(
        &self,
        deadline_ms: i64,
    ) -> Result<Vec<GroupLeaseState>, MetaError> {
        let stmt = format!(
            "SELECT {LEASE_COLS} FROM broker_group \
             WHERE epoch >= 1 AND lease_until_ms > 0 AND lease_until_ms < ? ORDER BY group_name"
        );
        let sql = self.sql(&stmt);
        let rows = sqlx::query(&sql)
            .bind(deadline_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(lease_state_from_row).collect()
    }

    /// Starts epoch 1 of a group whose master leases for the first time: creates the group (or
    /// raises a QMQ-registered one from epoch 0) with state `NRW` and records the epoch's master.
    /// `false` when the group had an epoch already (another request or meta server was first).
    pub async fn start_first_epoch(
        &self,
        name: &str,
        kind: GroupKind,
        master_address: &str,
        hostname: &str,
        serve_port: i32,
    ) -> Result<bool, MetaError> {
        let now = now_ms();
        let nrw = i64::from(BrokerState::None.code());
        let mut tx = self.pool.begin().await?;
        let stmt = self.dialect.insert_ignore(
            "broker_group (group_name, kind, master_address, state, tag, heartbeat_ms, \
             created_ms, updated_ms, epoch, lease_until_ms, fence_until_ms) \
             VALUES (?, ?, ?, ?, '', ?, ?, ?, 1, 0, 0)",
        );
        let sql = self.sql(&stmt);
        let inserted = sqlx::query(&sql)
            .bind(name)
            .bind(kind.code())
            .bind(master_address)
            .bind(nrw)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        let started = inserted || {
            let sql = self.sql(
                "UPDATE broker_group SET epoch = 1, kind = ?, master_address = ?, state = ?, \
                 lease_until_ms = 0, fence_until_ms = 0, updated_ms = ? \
                 WHERE group_name = ? AND epoch = 0",
            );
            sqlx::query(&sql)
                .bind(kind.code())
                .bind(master_address)
                .bind(nrw)
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        };
        if !started {
            tx.rollback().await?;
            return Ok(false);
        }
        self.insert_epoch(&mut tx, name, 1, hostname, serve_port, now)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_epoch(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        group: &str,
        epoch: i64,
        hostname: &str,
        serve_port: i32,
        now: i64,
    ) -> Result<(), MetaError> {
        let sql = self.sql(
            "INSERT INTO broker_group_epoch (group_name, epoch, hostname, serve_port, \
             message_start, action_start, created_ms) VALUES (?, ?, ?, ?, -1, -1, ?)",
        );
        sqlx::query(&sql)
            .bind(group)
            .bind(epoch)
            .bind(hostname)
            .bind(i64::from(serve_port))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The epochs of a group, oldest first.
    pub async fn group_epochs(&self, group: &str) -> Result<Vec<EpochRecord>, MetaError> {
        let sql = self.sql(
            "SELECT group_name, epoch, hostname, serve_port, message_start, action_start, \
             created_ms FROM broker_group_epoch WHERE group_name = ? ORDER BY epoch",
        );
        let rows = sqlx::query(&sql).bind(group).fetch_all(&self.pool).await?;
        rows.iter().map(epoch_from_row).collect()
    }

    /// Records where `epoch` of `group` starts, unless it is recorded already; `true` if
    /// this call recorded it.
    pub async fn set_epoch_starts(
        &self,
        group: &str,
        epoch: i64,
        message_start: i64,
        action_start: i64,
    ) -> Result<bool, MetaError> {
        let sql = self.sql(
            "UPDATE broker_group_epoch SET message_start = ?, action_start = ? \
             WHERE group_name = ? AND epoch = ? AND message_start < 0",
        );
        let done = sqlx::query(&sql)
            .bind(message_start)
            .bind(action_start)
            .bind(group)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Grants (renews) the lease of `epoch`'s master until `lease_until_ms`, marks the group
    /// `RW` at `master_address` and records a heartbeat. `false` when the group's epoch is no
    /// longer `epoch` or its fence has not passed at `now`.
    pub async fn renew_lease(
        &self,
        group: &str,
        epoch: i64,
        master_address: &str,
        now: i64,
        lease_until_ms: i64,
    ) -> Result<bool, MetaError> {
        let rw = i64::from(BrokerState::ReadWrite.code());
        // updated_ms is assigned before state and master_address: MySQL evaluates assignments
        // left to right.
        let sql = self.sql(
            "UPDATE broker_group SET \
             updated_ms = CASE WHEN state <> ? OR master_address <> ? THEN ? ELSE updated_ms END, \
             lease_until_ms = ?, heartbeat_ms = ?, state = ?, master_address = ? \
             WHERE group_name = ? AND epoch = ? AND fence_until_ms <= ?",
        );
        let done = sqlx::query(&sql)
            .bind(rw)
            .bind(master_address)
            .bind(now)
            .bind(lease_until_ms)
            .bind(now)
            .bind(rw)
            .bind(master_address)
            .bind(group)
            .bind(epoch)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a group `NRW` because its master's lease (ending at `lease_until_ms`, epoch
    /// `epoch`) ran out; `false` if it was `NRW` already or the lease or epoch changed.
    pub async fn mark_lease_lost(
        &self,
        group: &str,
        epoch: i64,
        lease_until_ms: i64,
    ) -> Result<bool, MetaError> {
        let nrw = i64::from(BrokerState::None.code());
        let sql = self.sql(
            "UPDATE broker_group SET state = ?, updated_ms = ? \
             WHERE group_name = ? AND epoch = ? AND lease_until_ms = ? AND state <> ?",
        );
        let done = sqlx::query(&sql)
            .bind(nrw)
            .bind(now_ms())
            .bind(group)
            .bind(epoch)
            .bind(lease_until_ms)
            .bind(nrw)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a server's GROUP_LEASE report (replacing its previous one).
    pub async fn upsert_replica(&self, r: &ReplicaReport) -> Result<(), MetaError> {
        let stmt = self.dialect.upsert(
            "broker_replica (hostname, serve_port, group_name, role, epoch, message_offset, \
             action_offset, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            "hostname, serve_port",
            &[
                "group_name",
                "role",
                "epoch",
                "message_offset",
                "action_offset",
                "updated_ms",
            ],
        );
        let sql = self.sql(&stmt);
        sqlx::query(&sql)
            .bind(&r.hostname)
            .bind(i64::from(r.serve_port))
            .bind(&r.group)
            .bind(i64::from(r.role))
            .bind(r.epoch)
            .bind(r.message_offset)
            .bind(r.action_offset)
            .bind(r.updated_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The last reports of the servers of `group`, or of every group.
    pub async fn replica_reports(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<ReplicaReport>, MetaError> {
        let cols = "SELECT hostname, serve_port, group_name, role, epoch, message_offset, \
                    action_offset, updated_ms FROM broker_replica";
        let rows = match group {
            Some(g) => {
                let stmt = format!("{cols} WHERE group_name = ? ORDER BY hostname, serve_port");
                let sql = self.sql(&stmt);
                sqlx::query(&sql).bind(g).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("{cols} ORDER BY group_name, hostname, serve_port");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(replica_from_row).collect()
    }

    /// Promotes a slave in one transaction: raises the group's epoch (only if it is still
    /// `from_epoch` with the same lease end), points it at the new master with state `NRW`, no
    /// lease and the fence, swaps the master and slave roles in `broker` and records the new
    /// epoch. `false` (nothing changed) when another meta server or a renewal came first, or
    /// the target is no longer the group's slave.
    pub async fn promote(&self, p: &PromotionPlan) -> Result<bool, MetaError> {
        let now = now_ms();
        let nrw = i64::from(BrokerState::None.code());
        let mut tx = self.pool.begin().await?;
        let sql = self.sql(
            "UPDATE broker_group SET epoch = epoch + 1, master_address = ?, state = ?, \
             lease_until_ms = 0, fence_until_ms = ?, updated_ms = ? \
             WHERE group_name = ? AND epoch = ? AND lease_until_ms = ?",
        );
        let won = sqlx::query(&sql)
            .bind(&p.master_address)
            .bind(nrw)
            .bind(p.fence_until_ms)
            .bind(now)
            .bind(&p.group)
            .bind(p.from_epoch)
            .bind(p.expected_lease_until_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !won {
            tx.rollback().await?;
            return Ok(false);
        }
        let set_role = self
            .sql("UPDATE broker SET role = ?, updated_ms = ? WHERE group_name = ? AND role = ?");
        sqlx::query(&set_role)
            .bind(PARKED_ROLE)
            .bind(now)
            .bind(&p.group)
            .bind(i64::from(p.master_role))
            .execute(&mut *tx)
            .await?;
        let sql = self.sql(
            "UPDATE broker SET role = ?, updated_ms = ? \
             WHERE group_name = ? AND hostname = ? AND serve_port = ? AND role = ?",
        );
        let moved = sqlx::query(&sql)
            .bind(i64::from(p.master_role))
            .bind(now)
            .bind(&p.group)
            .bind(&p.hostname)
            .bind(i64::from(p.serve_port))
            .bind(i64::from(p.slave_role))
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !moved {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(&set_role)
            .bind(i64::from(p.slave_role))
            .bind(now)
            .bind(&p.group)
            .bind(PARKED_ROLE)
            .execute(&mut *tx)
            .await?;
        self.insert_epoch(
            &mut tx,
            &p.group,
            p.from_epoch + 1,
            &p.hostname,
            p.serve_port,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- brokers (servers) ----

    /// The servers of `group`, or of every group.
    pub async fn brokers(&self, group: Option<&str>) -> Result<Vec<BrokerSpec>, MetaError> {
        let cols = "SELECT group_name, role, hostname, ip, serve_port, sync_port FROM broker";
        let rows = match group {
            Some(g) => {
                let stmt = format!("{cols} WHERE group_name = ? ORDER BY role");
                let sql = self.sql(&stmt);
                sqlx::query(&sql).bind(g).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("{cols} ORDER BY group_name, role");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(broker_from_row).collect()
    }

    /// The server listening on `hostname:serve_port`.
    pub async fn broker_by_host(
        &self,
        hostname: &str,
        serve_port: i32,
    ) -> Result<Option<BrokerSpec>, MetaError> {
        let sql = self.sql(
            "SELECT group_name, role, hostname, ip, serve_port, sync_port FROM broker \
             WHERE hostname = ? AND serve_port = ?",
        );
        let row = sqlx::query(&sql)
            .bind(hostname)
            .bind(i64::from(serve_port))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(broker_from_row).transpose()
    }

    /// Adds a server; `false` if its group already has that role or its host:port is taken.
    pub async fn insert_broker(&self, b: &BrokerSpec) -> Result<bool, MetaError> {
        let now = now_ms();
        let stmt = self.dialect.insert_ignore(
            "broker (group_name, role, hostname, ip, serve_port, sync_port, created_ms, \
             updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        );
        let sql = self.sql(&stmt);
        let done = sqlx::query(&sql)
            .bind(&b.group)
            .bind(i64::from(b.role))
            .bind(&b.hostname)
            .bind(&b.ip)
            .bind(i64::from(b.serve_port))
            .bind(i64::from(b.sync_port))
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces the machine of `new.group`'s `new.role` if it is still `old`'s; `false` if
    /// the row changed meanwhile.
    pub async fn replace_broker(
        &self,
        old: &BrokerSpec,
        new: &BrokerSpec,
    ) -> Result<bool, MetaError> {
        let sql = self.sql(
            "UPDATE broker SET hostname = ?, ip = ?, serve_port = ?, sync_port = ?, updated_ms = ? \
             WHERE group_name = ? AND role = ? AND hostname = ? AND serve_port = ?",
        );
        let done = sqlx::query(&sql)
            .bind(&new.hostname)
            .bind(&new.ip)
            .bind(i64::from(new.serve_port))
            .bind(i64::from(new.sync_port))
            .bind(now_ms())
            .bind(&old.group)
            .bind(i64::from(old.role))
            .bind(&old.hostname)
            .bind(i64::from(old.serve_port))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- subject routes ----

    /// Every subject route, with its exclusions.
    pub async fn subject_routes(&self) -> Result<Vec<SubjectRoute>, MetaError> {
        // Routes before exclusions: exclusions change only with a route's version, so a
        // route read before a concurrent change is stale by version and cannot be updated.
        let rows = sqlx::query(
            "SELECT subject, broker_groups, version, updated_ms FROM subject_route ORDER BY subject",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut routes = rows
            .iter()
            .map(route_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT subject, broker_group FROM subject_route_exclusion \
             ORDER BY subject, broker_group",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut excluded: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            excluded
                .entry(row.try_get("subject")?)
                .or_default()
                .push(row.try_get("broker_group")?);
        }
        for route in &mut routes {
            route.excluded = excluded.remove(&route.subject).unwrap_or_default();
        }
        Ok(routes)
    }

    /// One subject's route, with its exclusions.
    pub async fn subject_route(&self, subject: &str) -> Result<Option<SubjectRoute>, MetaError> {
        let sql = self.sql(
            "SELECT subject, broker_groups, version, updated_ms FROM subject_route WHERE subject = ?",
        );
        let row = sqlx::query(&sql)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        let Some(mut route) = row.as_ref().map(route_from_row).transpose()? else {
            return Ok(None);
        };
        // After the route: see `subject_routes`.
        let sql = self.sql(
            "SELECT broker_group FROM subject_route_exclusion WHERE subject = ? \
             ORDER BY broker_group",
        );
        route.excluded = sqlx::query(&sql)
            .bind(subject)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("broker_group"))
            .collect::<Result<_, _>>()?;
        Ok(Some(route))
    }

    fn groups_json(groups: &[String]) -> Result<String, MetaError> {
        serde_json::to_string(groups).map_err(|e| MetaError::Corrupt(e.to_string()))
    }

    /// Stores a first route for `subject` (version 1); `false` if one exists already.
    pub async fn insert_subject_route(
        &self,
        subject: &str,
        groups: &[String],
    ) -> Result<bool, MetaError> {
        let now = now_ms();
        let stmt = self.dialect.insert_ignore(
            "subject_route (subject, broker_groups, version, created_ms, updated_ms) \
             VALUES (?, ?, 1, ?, ?)",
        );
        let sql = self.sql(&stmt);
        let done = sqlx::query(&sql)
            .bind(subject)
            .bind(Self::groups_json(groups)?)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a route's groups if its version is still `version`; `false` otherwise.
    pub async fn update_subject_route(
        &self,
        subject: &str,
        version: i64,
        groups: &[String],
    ) -> Result<bool, MetaError> {
        let sql = self.sql(
            "UPDATE subject_route SET broker_groups = ?, version = version + 1, updated_ms = ? \
             WHERE subject = ? AND version = ?",
        );
        let done = sqlx::query(&sql)
            .bind(Self::groups_json(groups)?)
            .bind(now_ms())
            .bind(subject)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An operator's change of a route, in one transaction: replaces its groups if its version
    /// is still `version` and records `removed` as excluded from it (see
    /// [`SubjectRoute::excluded`]) and `added` as no longer excluded. `false` (nothing written)
    /// if the version changed.
    pub async fn edit_subject_route(
        &self,
        subject: &str,
        version: i64,
        groups: &[String],
        added: &[String],
        removed: &[String],
    ) -> Result<bool, MetaError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let sql = self.sql(
            "UPDATE subject_route SET broker_groups = ?, version = version + 1, updated_ms = ? \
             WHERE subject = ? AND version = ?",
        );
        let done = sqlx::query(&sql)
            .bind(Self::groups_json(groups)?)
            .bind(now)
            .bind(subject)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let delete =
            self.sql("DELETE FROM subject_route_exclusion WHERE subject = ? AND broker_group = ?");
        for group in added {
            sqlx::query(&delete)
                .bind(subject)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        let stmt = self.dialect.insert_ignore(
            "subject_route_exclusion (subject, broker_group, created_ms) VALUES (?, ?, ?)",
        );
        let insert = self.sql(&stmt);
        for group in removed {
            sqlx::query(&insert)
                .bind(subject)
                .bind(group)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    // ---- subject info ----

    /// Every subject added with AddNewSubject.
    pub async fn subject_infos(&self) -> Result<Vec<SubjectInfo>, MetaError> {
        let rows =
            sqlx::query("SELECT subject, tag, updated_ms FROM subject_info ORDER BY subject")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(SubjectInfo {
                    subject: r.try_get("subject")?,
                    tag: r.try_get("tag")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            })
            .collect()
    }

    /// Records `subject` with `tag`, or changes the tag of a recorded one.
    pub async fn upsert_subject_info(
        &self,
        subject: &str,
        tag: &str,
    ) -> Result<SubjectInfo, MetaError> {
        let now = now_ms();
        let stmt = self.dialect.upsert(
            "subject_info (subject, tag, created_ms, updated_ms) VALUES (?, ?, ?, ?)",
            "subject",
            &["tag", "updated_ms"],
        );
        let sql = self.sql(&stmt);
        sqlx::query(&sql)
            .bind(subject)
            .bind(tag)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(SubjectInfo {
            subject: subject.to_owned(),
            tag: tag.to_owned(),
            updated_ms: now,
        })
    }

    // ---- clients ----

    /// Records a client registration or heartbeat.
    pub async fn upsert_client(&self, c: &ClientRecord) -> Result<(), MetaError> {
        let stmt = self.dialect.upsert(
            "client_meta_info (subject, client_type, consumer_group, client_id, app_code, room, \
             created_ms, last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            "subject, client_type, consumer_group, client_id",
            &["app_code", "room", "last_seen_ms"],
        );
        let sql = self.sql(&stmt);
        sqlx::query(&sql)
            .bind(&c.subject)
            .bind(i64::from(c.client_type))
            .bind(&c.consumer_group)
            .bind(&c.client_id)
            .bind(&c.app_code)
            .bind(&c.room)
            .bind(c.last_seen_ms)
            .bind(c.last_seen_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Known consumers (client type 2) of `subject`, or of every subject.
    pub async fn consumers(&self, subject: Option<&str>) -> Result<Vec<ClientRecord>, MetaError> {
        let cols = "SELECT subject, client_type, consumer_group, client_id, app_code, room, \
                    last_seen_ms FROM client_meta_info WHERE client_type = 2";
        let order = "ORDER BY subject, consumer_group, client_id";
        let rows = match subject {
            Some(s) => {
                let stmt = format!("{cols} AND subject = ? {order}");
                let sql = self.sql(&stmt);
                sqlx::query(&sql).bind(s).fetch_all(&self.pool).await?
            }
            None => {
                sqlx::query(&format!("{cols} {order}"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(client_from_row).collect()
    }

    /// Every stored on/offline setting.
    pub async fn client_states(&self) -> Result<Vec<ClientStateSetting>, MetaError> {
        let rows = sqlx::query(
            "SELECT client_id, subject, consumer_group, state FROM client_offline_state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: i64 = r.try_get("state")?;
                Ok(ClientStateSetting {
                    client_id: r.try_get("client_id")?,
                    subject: r.try_get("subject")?,
                    consumer_group: r.try_get("consumer_group")?,
                    offline: state == 1,
                })
            })
            .collect()
    }

    /// Stores an offline setting, or deletes the setting when `offline` is false.
    pub async fn set_client_state(&self, s: &ClientStateSetting) -> Result<(), MetaError> {
        if s.offline {
            let stmt = self.dialect.upsert(
                "client_offline_state (client_id, subject, consumer_group, state, updated_ms) \
                 VALUES (?, ?, ?, 1, ?)",
                "client_id, subject, consumer_group",
                &["state", "updated_ms"],
            );
            let sql = self.sql(&stmt);
            sqlx::query(&sql)
                .bind(&s.client_id)
                .bind(&s.subject)
                .bind(&s.consumer_group)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        } else {
            let sql = self.sql(
                "DELETE FROM client_offline_state \
                 WHERE client_id = ? AND subject = ? AND consumer_group = ?",
            );
            sqlx::query(&sql)
                .bind(&s.client_id)
                .bind(&s.subject)
                .bind(&s.consumer_group)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    // ---- readonly settings ----

    /// Every readonly setting.
    pub async fn readonly_settings(&self) -> Result<Vec<ReadonlySetting>, MetaError> {
        let rows = sqlx::query(
            "SELECT subject, broker_group FROM readonly_broker_group ORDER BY broker_group, subject",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReadonlySetting {
                    subject: r.try_get("subject")?,
                    broker_group: r.try_get("broker_group")?,
                })
            })
            .collect()
    }

    /// Adds a readonly setting; `false` if it existed.
    pub async fn add_readonly(&self, s: &ReadonlySetting) -> Result<bool, MetaError> {
        let stmt = self.dialect.insert_ignore(
            "readonly_broker_group (subject, broker_group, created_ms) VALUES (?, ?, ?)",
        );
        let sql = self.sql(&stmt);
        let done = sqlx::query(&sql)
            .bind(&s.subject)
            .bind(&s.broker_group)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a readonly setting; `false` if it did not exist.
    pub async fn remove_readonly(&self, s: &ReadonlySetting) -> Result<bool, MetaError> {
        let sql =
            self.sql("DELETE FROM readonly_broker_group WHERE subject = ? AND broker_group = ?");
        let done = sqlx::query(&sql)
            .bind(&s.subject)
            .bind(&s.broker_group)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- client databases ----

    /// Registers a database; `false` if its URL is registered already.
    pub async fn add_client_db(&self, db: &ClientDb) -> Result<bool, MetaError> {
        let stmt = self.dialect.insert_ignore(
            "client_db (url, user_name, password, room, created_ms) VALUES (?, ?, ?, ?, ?)",
        );
        let sql = self.sql(&stmt);
        let done = sqlx::query(&sql)
            .bind(&db.url)
            .bind(&db.user_name)
            .bind(&db.password)
            .bind(&db.room)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every registered database (for the transactional-message watchdog).
    pub async fn client_dbs(&self) -> Result<Vec<ClientDb>, MetaError> {
        let rows = sqlx::query("SELECT url, user_name, password, room FROM client_db ORDER BY url")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ClientDb {
                    url: r.try_get("url")?,
                    user_name: r.try_get("user_name")?,
                    password: r.try_get("password")?,
                    room: r.try_get("room")?,
                })
            })
            .collect()
    }

    // ---- leases (leader election) ----

    /// The database's clock in milliseconds since the epoch, as an SQL expression: every
    /// contender compares times from the same clock.
    fn db_now_ms(&self) -> &'static str {
        match self.dialect {
            Dialect::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Takes or renews the lease `name` for `node` (not empty); `true` when `node` holds it
    /// now. The lease is `node`'s if the row is new, names `node` already, is free, or was
    /// last renewed more than `lease_ms` ago by the database's clock; one conditional statement
    /// decides, so two contenders never both win the same round.
    pub async fn acquire_lease(
        &self,
        name: &str,
        node: &str,
        lease_ms: i64,
    ) -> Result<bool, MetaError> {
        if node.is_empty() {
            return Err(MetaError::InvalidArgument(
                "lease node must not be empty".into(),
            ));
        }
        let now = self.db_now_ms();
        let insert = self.dialect.insert_ignore(&format!(
            "leader_election (name, node, last_seen_active, term) VALUES (?, ?, {now}, 1)"
        ));
        let done = sqlx::query(&self.sql(&insert))
            .bind(name)
            .bind(node)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        let update = format!(
            "UPDATE leader_election SET node = ?, last_seen_active = {now}, term = term + 1 \
             WHERE name = ? AND (node = ? OR node = '' OR last_seen_active < {now} - ?)"
        );
        let done = sqlx::query(&self.sql(&update))
            .bind(node)
            .bind(name)
            .bind(node)
            .bind(lease_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease `name` up if `node` holds it, so another contender takes it at once.
    pub async fn release_lease(&self, name: &str, node: &str) -> Result<(), MetaError> {
        let sql = self.sql("UPDATE leader_election SET node = '' WHERE name = ? AND node = ?");
        sqlx::query(&sql)
            .bind(name)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds the lease `name` (`None` when nobody ever took it, `Some("")` when free), by
    /// the row only: an expired holder is still named.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, MetaError> {
        let sql = self.sql("SELECT node FROM leader_election WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("node")).transpose()?)
    }

    // ---- reset offset requests ----

    /// Records a reset-offset request and returns it with its id.
    pub async fn add_reset_offset(
        &self,
        subject: &str,
        consumer_group: &str,
        action: ResetAction,
    ) -> Result<ResetOffsetRequest, MetaError> {
        let now = now_ms();
        let sql = self.sql(
            "INSERT INTO reset_offset_request (subject, consumer_group, action, created_ms) \
             VALUES (?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(subject)
            .bind(consumer_group)
            .bind(action.code())
            .bind(now)
            .execute(&self.pool)
            .await?;
        // Read the id back portably (no RETURNING on MySQL): the newest row with these values.
        let sql = self.sql(
            "SELECT id, subject, consumer_group, action, created_ms FROM reset_offset_request \
             WHERE subject = ? AND consumer_group = ? AND created_ms = ? ORDER BY id DESC",
        );
        let row = sqlx::query(&sql)
            .bind(subject)
            .bind(consumer_group)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        reset_from_row(&row)
    }

    /// Reset-offset requests with an id above `after`, oldest first.
    pub async fn reset_offsets_after(
        &self,
        after: i64,
    ) -> Result<Vec<ResetOffsetRequest>, MetaError> {
        let sql = self.sql(
            "SELECT id, subject, consumer_group, action, created_ms FROM reset_offset_request \
             WHERE id > ? ORDER BY id",
        );
        let rows = sqlx::query(&sql).bind(after).fetch_all(&self.pool).await?;
        rows.iter().map(reset_from_row).collect()
    }
}

/// Whether a role is a group's master (realtime or delay).
pub fn is_master(role: BrokerRole) -> bool {
    matches!(role, BrokerRole::Master | BrokerRole::DelayMaster)
}
