//! Admin operations (what the tools call through the HTTP admin API).

use qmq_protocol::BrokerRole;
use serde::{Deserialize, Serialize};

use crate::cache::ANY;
use crate::core::MetaCore;
use crate::model::{
    now_ms, BrokerGroupInfo, BrokerSpec, ClientDb, ClientStateSetting, GroupKind, ReadonlySetting,
    ResetAction, ResetOffsetRequest, SubjectInfo, SubjectRoute,
};
use crate::{subject, MetaError};

/// Attempts of replace-broker against concurrent changes.
const REPLACE_TRIES: usize = 20;

/// Parameters of mark-readonly / unmark-readonly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadonlyParams {
    /// Broker group.
    pub broker_group: String,
    /// Subject, or `*` (the default) for every subject.
    #[serde(default = "any_subject")]
    pub subject: String,
}

fn any_subject() -> String {
    crate::cache::ANY.to_owned()
}

/// Parameters of reset-offset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetOffsetParams {
    /// Subject.
    pub subject: String,
    /// Consumer group.
    pub consumer_group: String,
    /// LATEST or EARLIEST.
    pub action: ResetAction,
}

/// Parameters of add-db: a database for the transactional-message watchdog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddDbParams {
    /// Database type (URL scheme), default `mysql`.
    #[serde(default = "default_db_type", rename = "type")]
    pub db_type: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Data centre, default `default`.
    #[serde(default = "default_room")]
    pub room: String,
    /// Database to connect to, for servers where the outbox is not reachable without one
    /// (PostgreSQL); appended to the URL as `/<database>`. QMQ has no such parameter: its
    /// watchdog addresses MySQL's `qmq_produce` schema from any connection.
    #[serde(default)]
    pub database: Option<String>,
}

fn default_db_type() -> String {
    "mysql".into()
}

fn default_room() -> String {
    "default".into()
}

/// Parameters of add-subject-broker-group and remove-subject-broker-group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectGroupParams {
    /// Broker group to add to or remove from the route.
    pub broker_group: String,
    /// Subject whose route changes; remove-subject-broker-group also takes `*` (every route).
    pub subject: String,
}

/// Parameters of add-new-subject (QMQ `AddNewSubject`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewSubjectParams {
    /// The subject (a real subject, not a retry or dead-letter one).
    pub subject: String,
    /// Its placement tag; empty = the default pool.
    #[serde(default)]
    pub tag: String,
}

/// Longest tag accepted (the MySQL column's size).
const MAX_TAG_CHARS: usize = 200;

/// Parameters of extend-subject-route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtendRouteParams {
    /// Subject whose route is extended, or `*` for every route.
    pub related_subject: String,
    /// Only routes containing this group are extended.
    pub related_broker_group: String,
    /// The group added to those routes.
    pub new_broker_group: String,
}

/// What extend-subject-route changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendRouteOutcome {
    /// How many routes got the new group.
    pub updated: usize,
    /// The subjects of those routes.
    pub subjects: Vec<String>,
}

impl ExtendRouteOutcome {
    /// A one-line, human-readable account of the outcome.
    pub fn summary(&self) -> String {
        let plural = if self.updated == 1 { "" } else { "s" };
        format!("updated the route of {} subject{plural}", self.updated)
    }
}

/// The result of one optimistic route update.
enum RouteChange {
    /// Written; the route as it is now.
    Saved(SubjectRoute),
    /// Not written, for this reason.
    Refused(String),
}

fn describe(route: &SubjectRoute) -> String {
    format!(
        "subject {}, version {}, groups [{}]",
        route.subject,
        route.version,
        route.groups.join(", ")
    )
}

/// One consumer group of a subject with its known clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupInfo {
    /// Subject.
    pub subject: String,
    /// Consumer group.
    pub consumer_group: String,
    /// Its clients.
    pub clients: Vec<ConsumerClient>,
}

/// One consumer client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerClient {
    /// Client id.
    pub client_id: String,
    /// Application.
    pub app_code: String,
    /// Data centre.
    pub room: String,
    /// Last registration/heartbeat recorded, ms since the epoch.
    pub last_seen_ms: i64,
    /// Whether an operator switched it offline.
    pub offline: bool,
}

fn require(what: &str, value: &str) -> Result<(), MetaError> {
    if value.trim().is_empty() {
        return Err(MetaError::InvalidArgument(format!("{what} is required")));
    }
    Ok(())
}

fn validate_broker(b: &BrokerSpec) -> Result<BrokerRole, MetaError> {
    require("broker group", &b.group)?;
    require("hostname", &b.hostname)?;
    require("ip", &b.ip)?;
    if b.ip.parse::<std::net::IpAddr>().is_err() {
        return Err(MetaError::InvalidArgument(format!(
            "ip {:?} is not an IP address",
            b.ip
        )));
    }
    let role = BrokerRole::from_code(b.role)
        .ok()
        .filter(|r| *r != BrokerRole::Standby && *r != BrokerRole::Delay)
        .ok_or_else(|| {
            MetaError::InvalidArgument(format!("invalid broker role code {}", b.role))
        })?;
    let backup = matches!(role, BrokerRole::Backup | BrokerRole::DelayBackup);
    let port_ok = |p: i32| (1..=65535).contains(&p);
    if !port_ok(b.serve_port) || (!backup && !port_ok(b.sync_port)) || b.serve_port == b.sync_port {
        return Err(MetaError::InvalidArgument(
            "serve port and sync port must be valid, different ports".into(),
        ));
    }
    Ok(role)
}

impl MetaCore {
    /// add-broker: registers a server (group, role, host, ports) for BROKER_ACQUIRE_META.
    pub async fn add_broker(&self, b: &BrokerSpec) -> Result<BrokerSpec, MetaError> {
        let role = validate_broker(b)?;
        let peers = self.store.brokers(Some(&b.group)).await?;
        if let Some(p) = peers.iter().find(|p| p.role == b.role) {
            return Err(MetaError::Conflict(format!(
                "broker group {} already has a {:?} ({}:{})",
                b.group, role, p.hostname, p.serve_port
            )));
        }
        if peers.len() >= 3 {
            return Err(MetaError::Conflict(format!(
                "broker group {} already has {} servers",
                b.group,
                peers.len()
            )));
        }
        if let Some(other) = self.store.broker_by_host(&b.hostname, b.serve_port).await? {
            return Err(MetaError::Conflict(format!(
                "{}:{} is already registered in group {}",
                b.hostname, b.serve_port, other.group
            )));
        }
        if !self.store.insert_broker(b).await? {
            return Err(MetaError::Conflict(
                "broker group role or host:port already registered".into(),
            ));
        }
        tracing::info!(group = b.group, ?role, host = b.hostname, "broker added");
        Ok(b.clone())
    }

    /// list-brokers: the registered servers, of one group or all.
    pub async fn list_brokers(&self, group: Option<&str>) -> Result<Vec<BrokerSpec>, MetaError> {
        self.store.brokers(group.filter(|g| !g.is_empty())).await
    }

    /// list-broker-groups: groups as registered by their masters, fresh from the database.
    pub async fn list_broker_groups(&self) -> Result<Vec<BrokerGroupInfo>, MetaError> {
        self.store.broker_groups().await
    }

    /// replace-broker: moves a group's role to another machine (manual failover). Returns the
    /// server that was replaced.
    pub async fn replace_broker(&self, b: &BrokerSpec) -> Result<BrokerSpec, MetaError> {
        validate_broker(b)?;
        if let Some(other) = self.store.broker_by_host(&b.hostname, b.serve_port).await? {
            if other.group != b.group || other.role != b.role {
                return Err(MetaError::Conflict(format!(
                    "{}:{} is already registered as role {} of group {}",
                    b.hostname, b.serve_port, other.role, other.group
                )));
            }
        }
        for _ in 0..REPLACE_TRIES {
            let peers = self.store.brokers(Some(&b.group)).await?;
            let current = peers
                .into_iter()
                .find(|p| p.role == b.role)
                .ok_or_else(|| {
                    MetaError::NotFound(format!(
                        "group {} has no server with role {}",
                        b.group, b.role
                    ))
                })?;
            if self.store.replace_broker(&current, b).await? {
                tracing::info!(
                    group = b.group,
                    role = b.role,
                    from = current.hostname,
                    to = b.hostname,
                    "broker replaced"
                );
                return Ok(current);
            }
        }
        Err(MetaError::Conflict(format!(
            "group {} kept changing; replace gave up after {REPLACE_TRIES} tries",
            b.group
        )))
    }

    /// mark-readonly: producers stop getting the group for the subject (or `*`); consumers
    /// keep it. Returns `false` if it was marked already.
    pub async fn mark_readonly(&self, p: &ReadonlyParams) -> Result<bool, MetaError> {
        require("broker group", &p.broker_group)?;
        require("subject", &p.subject)?;
        if self.store.broker_group(&p.broker_group).await?.is_none()
            && self.store.brokers(Some(&p.broker_group)).await?.is_empty()
        {
            return Err(MetaError::NotFound(format!(
                "broker group {}",
                p.broker_group
            )));
        }
        let added = self
            .store
            .add_readonly(&ReadonlySetting {
                subject: p.subject.clone(),
                broker_group: p.broker_group.clone(),
            })
            .await?;
        self.refresh().await?;
        Ok(added)
    }

    /// unmark-readonly: undoes mark-readonly. Returns `false` if it was not marked.
    pub async fn unmark_readonly(&self, p: &ReadonlyParams) -> Result<bool, MetaError> {
        require("broker group", &p.broker_group)?;
        require("subject", &p.subject)?;
        let removed = self
            .store
            .remove_readonly(&ReadonlySetting {
                subject: p.subject.clone(),
                broker_group: p.broker_group.clone(),
            })
            .await?;
        self.refresh().await?;
        Ok(removed)
    }

    /// reset-offset: records the request; the brokers serving the subject pick it up through
    /// the broker directives endpoint and apply it.
    pub async fn reset_offset(
        &self,
        p: &ResetOffsetParams,
    ) -> Result<ResetOffsetRequest, MetaError> {
        require("subject", &p.subject)?;
        require("consumer group", &p.consumer_group)?;
        let real = subject::real_subject(&p.subject);
        if self.store.subject_route(real).await?.is_none() {
            return Err(MetaError::NotFound(format!(
                "no route for subject {}",
                p.subject
            )));
        }
        let req = self
            .store
            .add_reset_offset(&p.subject, &p.consumer_group, p.action)
            .await?;
        tracing::info!(subject = p.subject, group = p.consumer_group, action = ?p.action,
            id = req.id, "reset offset recorded");
        Ok(req)
    }

    /// add-db: registers a database for the transactional-message watchdog.
    pub async fn add_db(&self, p: &AddDbParams) -> Result<ClientDb, MetaError> {
        require("type", &p.db_type)?;
        require("host", &p.host)?;
        require("username", &p.username)?;
        if p.port == 0 {
            return Err(MetaError::InvalidArgument("port must be positive".into()));
        }
        let room = if p.room.trim().is_empty() {
            default_room()
        } else {
            p.room.clone()
        };
        let mut url = format!("{}://{}:{}", p.db_type, p.host, p.port);
        if let Some(name) = p.database.as_deref().filter(|d| !d.trim().is_empty()) {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(MetaError::InvalidArgument(format!(
                    "database name {name:?} may hold only letters, digits, '_' and '-'"
                )));
            }
            url.push('/');
            url.push_str(name);
        }
        let db = ClientDb {
            url,
            user_name: p.username.clone(),
            password: p.password.clone(),
            room,
        };
        if !self.store.add_client_db(&db).await? {
            return Err(MetaError::Conflict(format!(
                "database {} is registered already",
                db.url
            )));
        }
        Ok(ClientDb {
            password: String::new(),
            ..db
        })
    }

    /// A broker group that may be put into realtime routes: registered, not a delay group.
    async fn routable_group(&self, name: &str) -> Result<BrokerGroupInfo, MetaError> {
        let group =
            self.store.broker_group(name).await?.ok_or_else(|| {
                MetaError::NotFound(format!("broker group {name} does not exist"))
            })?;
        if group.kind == GroupKind::Delay {
            return Err(MetaError::InvalidArgument(format!(
                "broker group {name} is a delay group; subject routes take realtime groups"
            )));
        }
        Ok(group)
    }

    /// The stored route of `subject` (or of its real subject), if it has one.
    async fn existing_route(&self, subject: &str) -> Result<SubjectRoute, MetaError> {
        let real = subject::real_subject(subject);
        self.store.subject_route(real).await?.ok_or_else(|| {
            MetaError::NotFound(format!(
                "subject {subject} has no route yet (it gets one when a producer or consumer \
                 first asks for it)"
            ))
        })
    }

    /// Replaces `old`'s groups by `groups` if nobody changed the route meanwhile, recording
    /// `removed` as excluded from the route (a top-up to `min.group.num` never re-adds it) and
    /// the groups `groups` has and `old` had not as no longer excluded; on success the cached
    /// view gets the new route at once, so clients are answered from it.
    async fn save_route(
        &self,
        old: &SubjectRoute,
        groups: Vec<String>,
        removed: Option<&str>,
    ) -> Result<Option<SubjectRoute>, MetaError> {
        let added: Vec<String> = groups
            .iter()
            .filter(|g| !old.groups.contains(g))
            .cloned()
            .collect();
        let removed: Vec<String> = removed.into_iter().map(str::to_owned).collect();
        if !self
            .store
            .edit_subject_route(&old.subject, old.version, &groups, &added, &removed)
            .await?
        {
            return Ok(None);
        }
        let mut excluded: Vec<String> = old
            .excluded
            .iter()
            .filter(|g| !added.contains(g))
            .chain(&removed)
            .cloned()
            .collect();
        excluded.sort();
        excluded.dedup();
        let route = SubjectRoute {
            subject: old.subject.clone(),
            groups,
            version: old.version + 1,
            updated_ms: now_ms(),
            excluded,
        };
        tracing::info!(subject = route.subject, from = ?old.groups, to = ?route.groups,
            excluded = ?route.excluded, version = route.version,
            "subject route changed by an operator");
        self.cache.put_route(route.clone());
        Ok(Some(route))
    }

    /// Why a route update lost the race: the route as it is now.
    async fn changed_meanwhile(&self, subject: &str) -> Result<String, MetaError> {
        Ok(match self.store.subject_route(subject).await? {
            Some(current) => format!(
                "the route changed meanwhile, nothing was written; current route: {}",
                describe(&current)
            ),
            None => "the route vanished meanwhile, nothing was written".to_owned(),
        })
    }

    /// add-subject-broker-group (QMQ `AddSubjectBrokerGroup`): adds an existing broker group
    /// to the route of a subject that has one, ending its exclusion if an operator had removed
    /// it. Returns the route as it is afterwards; if the route changed concurrently, nothing is
    /// written and the error shows the current route.
    pub async fn add_subject_broker_group(
        &self,
        p: &SubjectGroupParams,
    ) -> Result<SubjectRoute, MetaError> {
        require("broker group", &p.broker_group)?;
        require("subject", &p.subject)?;
        self.routable_group(&p.broker_group).await?;
        let route = self.existing_route(&p.subject).await?;
        if route.groups.contains(&p.broker_group) {
            return Ok(route);
        }
        let mut groups = route.groups.clone();
        groups.push(p.broker_group.clone());
        match self.save_route(&route, groups, None).await? {
            Some(saved) => Ok(saved),
            None => Err(MetaError::Conflict(format!(
                "cannot add broker group {} to subject {}: {}",
                p.broker_group,
                route.subject,
                self.changed_meanwhile(&route.subject).await?
            ))),
        }
    }

    /// Removes `group` from one route, refusing to leave the route without groups.
    async fn remove_group_from(
        &self,
        route: &SubjectRoute,
        group: &str,
    ) -> Result<RouteChange, MetaError> {
        let groups: Vec<String> = route
            .groups
            .iter()
            .filter(|g| g.as_str() != group)
            .cloned()
            .collect();
        if groups.is_empty() {
            return Ok(RouteChange::Refused(format!(
                "{group} is its last broker group and a route cannot be left empty"
            )));
        }
        Ok(match self.save_route(route, groups, Some(group)).await? {
            Some(saved) => RouteChange::Saved(saved),
            None => RouteChange::Refused(self.changed_meanwhile(&route.subject).await?),
        })
    }

    /// The routes remove-subject-broker-group looks at: every route for `*`, else the route
    /// of the one subject (which must exist).
    async fn routes_of(&self, subject: &str) -> Result<Vec<SubjectRoute>, MetaError> {
        if subject == ANY {
            self.store.subject_routes().await
        } else {
            Ok(vec![self.existing_route(subject).await?])
        }
    }

    /// remove-subject-broker-group (QMQ `RemoveSubjectBrokerGroup`): takes a broker group out
    /// of one subject's route, or out of every route containing it for subject `*`, and
    /// excludes it from each route it left: the top-up to `min.group.num` never puts it back
    /// (only add-subject-broker-group or extend-subject-route do). A route's last group is
    /// never removed. Routes that could not be changed (last group, concurrent
    /// change) are listed in the error; the others are changed all the same. Returns the
    /// changed routes (none if no route contained the group).
    pub async fn remove_subject_broker_group(
        &self,
        p: &SubjectGroupParams,
    ) -> Result<Vec<SubjectRoute>, MetaError> {
        require("broker group", &p.broker_group)?;
        require("subject", &p.subject)?;
        let mut changed = Vec::new();
        let mut failures = Vec::new();
        for route in self.routes_of(&p.subject).await? {
            if !route.groups.contains(&p.broker_group) {
                continue;
            }
            match self.remove_group_from(&route, &p.broker_group).await? {
                RouteChange::Saved(saved) => changed.push(saved),
                RouteChange::Refused(why) => failures.push(format!("{}: {why}", route.subject)),
            }
        }
        if failures.is_empty() {
            return Ok(changed);
        }
        tracing::warn!(
            group = p.broker_group,
            subject = p.subject,
            ?failures,
            "broker group not removed from some routes"
        );
        Err(MetaError::Conflict(format!(
            "could not remove broker group {} from {} route(s) (removed from {}): {}",
            p.broker_group,
            failures.len(),
            changed.len(),
            failures.join("; ")
        )))
    }

    /// extend-subject-route (QMQ `ExtendSubjectRoute`): adds an existing broker group to every
    /// route (or only `related_subject`'s, unless it is `*`) that contains
    /// `related_broker_group` and not the new group yet (ending the new group's exclusion from
    /// those routes, if an operator had removed it). Routes changed concurrently are
    /// skipped, as in QMQ; the outcome counts and names the routes that were extended.
    pub async fn extend_subject_route(
        &self,
        p: &ExtendRouteParams,
    ) -> Result<ExtendRouteOutcome, MetaError> {
        require("related subject", &p.related_subject)?;
        require("related broker group", &p.related_broker_group)?;
        require("new broker group", &p.new_broker_group)?;
        self.routable_group(&p.new_broker_group).await?;
        let any = p.related_subject == ANY;
        let real = subject::real_subject(&p.related_subject);
        let mut subjects = Vec::new();
        for route in self.store.subject_routes().await? {
            let wanted = (any || route.subject == real)
                && route.groups.contains(&p.related_broker_group)
                && !route.groups.contains(&p.new_broker_group);
            if !wanted {
                continue;
            }
            let mut groups = route.groups.clone();
            groups.push(p.new_broker_group.clone());
            match self.save_route(&route, groups, None).await? {
                Some(saved) => subjects.push(saved.subject),
                None => tracing::warn!(
                    subject = route.subject,
                    "route changed meanwhile; not extended"
                ),
            }
        }
        Ok(ExtendRouteOutcome {
            updated: subjects.len(),
            subjects,
        })
    }

    /// add-new-subject (QMQ `AddNewSubject`): records `subject` with a placement tag, so its
    /// route, when first created (or topped up), takes broker groups with that tag (the
    /// default pool when no live group has it). Changing the tag of a subject that has a route
    /// does not move it: routes only grow (use the route editors for that).
    pub async fn add_new_subject(&self, p: &NewSubjectParams) -> Result<SubjectInfo, MetaError> {
        require("subject", &p.subject)?;
        if !subject::is_valid(&p.subject)
            || p.subject.starts_with('%')
            || subject::real_subject(&p.subject) != p.subject
        {
            return Err(MetaError::InvalidArgument(format!(
                "{:?} is not a valid subject (no '/', whitespace, retry or dead-letter prefix)",
                p.subject
            )));
        }
        if p.tag.chars().count() > MAX_TAG_CHARS || p.tag.chars().any(char::is_whitespace) {
            return Err(MetaError::InvalidArgument(format!(
                "tag must be at most {MAX_TAG_CHARS} characters without whitespace"
            )));
        }
        let info = self.store.upsert_subject_info(&p.subject, &p.tag).await?;
        tracing::info!(subject = info.subject, tag = info.tag, "subject added");
        self.cache.put_subject_info(info.clone());
        Ok(info)
    }

    /// The recorded placement of one subject (add-new-subject), if any.
    pub async fn subject_info(&self, subject: &str) -> Result<Option<SubjectInfo>, MetaError> {
        let infos = self.store.subject_infos().await?;
        Ok(infos.into_iter().find(|i| i.subject == subject))
    }

    /// list-subjects: every subject route, fresh from the database.
    pub async fn list_subjects(&self) -> Result<Vec<SubjectRoute>, MetaError> {
        self.store.subject_routes().await
    }

    /// list-consumers: consumer groups and their clients, of one subject or all.
    pub async fn list_consumers(
        &self,
        subject: Option<&str>,
    ) -> Result<Vec<ConsumerGroupInfo>, MetaError> {
        let records = self
            .store
            .consumers(subject.filter(|s| !s.is_empty()))
            .await?;
        let mut out: Vec<ConsumerGroupInfo> = Vec::new();
        for r in records {
            let offline = self.cache.read(|v| {
                v.client_state(&r.client_id, &r.subject, &r.consumer_group)
                    == qmq_protocol::OnOfflineState::Offline
            });
            let client = ConsumerClient {
                client_id: r.client_id,
                app_code: r.app_code,
                room: r.room,
                last_seen_ms: r.last_seen_ms,
                offline,
            };
            match out.last_mut() {
                Some(g) if g.subject == r.subject && g.consumer_group == r.consumer_group => {
                    g.clients.push(client)
                }
                _ => out.push(ConsumerGroupInfo {
                    subject: r.subject,
                    consumer_group: r.consumer_group,
                    clients: vec![client],
                }),
            }
        }
        Ok(out)
    }

    /// set-client-state: switches consumers on or offline (client id `*` = whole group).
    pub async fn set_client_state(&self, s: &ClientStateSetting) -> Result<(), MetaError> {
        require("client id", &s.client_id)?;
        require("subject", &s.subject)?;
        require("consumer group", &s.consumer_group)?;
        self.store.set_client_state(s).await?;
        self.refresh().await
    }

    /// What a broker group must know from the meta server: the subjects it is readonly for
    /// and the reset-offset requests (above `after`) for subjects it serves.
    pub async fn broker_directives(
        &self,
        group: &str,
        after: i64,
    ) -> Result<crate::broker_api::BrokerDirectives, MetaError> {
        require("group", group)?;
        let known = self.store.broker_group(group).await?;
        let resets = self.store.reset_offsets_after(after).await?;
        let routes = self.store.subject_routes().await?;
        let serves = |subject: &str| {
            let real = subject::real_subject(subject);
            routes
                .iter()
                .any(|r| r.subject == real && r.groups.iter().any(|g| g == group))
        };
        let mut readonly_subjects: Vec<String> = self
            .store
            .readonly_settings()
            .await?
            .into_iter()
            .filter(|s| s.broker_group == group)
            .map(|s| s.subject)
            .collect();
        readonly_subjects.sort();
        let last_id = resets.last().map_or(after, |r| r.id);
        Ok(crate::broker_api::BrokerDirectives {
            group: group.to_owned(),
            registered: known.is_some(),
            readonly_subjects,
            reset_offsets: resets.into_iter().filter(|r| serves(&r.subject)).collect(),
            last_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::MetaConfig;

    fn names(groups: &[&str]) -> Vec<String> {
        groups.iter().map(|g| (*g).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_route_changed_meanwhile_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_dir(dir.path()).await.unwrap();
        assert!(store
            .insert_subject_route("s", &names(&["g1", "g2"]))
            .await
            .unwrap());
        let core = MetaCore::new(store, MetaConfig::default()).await.unwrap();
        let stale = core.store.subject_route("s").await.unwrap().unwrap();
        // Another meta server extends the route after this one read it.
        assert!(core
            .store
            .update_subject_route("s", stale.version, &names(&["g1", "g2", "g3"]))
            .await
            .unwrap());
        match core.remove_group_from(&stale, "g2").await.unwrap() {
            RouteChange::Refused(why) => {
                assert!(why.contains("changed meanwhile"), "{why}");
                assert!(why.contains("version 2, groups [g1, g2, g3]"), "{why}");
            }
            RouteChange::Saved(r) => panic!("stale update written: {r:?}"),
        }
        let now = core.store.subject_route("s").await.unwrap().unwrap();
        assert_eq!((now.version, now.groups), (2, names(&["g1", "g2", "g3"])));
    }

    #[tokio::test]
    async fn the_last_group_of_a_route_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_dir(dir.path()).await.unwrap();
        assert!(store
            .insert_subject_route("s", &names(&["g1"]))
            .await
            .unwrap());
        let core = MetaCore::new(store, MetaConfig::default()).await.unwrap();
        let route = core.store.subject_route("s").await.unwrap().unwrap();
        assert!(matches!(
            core.remove_group_from(&route, "g1").await.unwrap(),
            RouteChange::Refused(why) if why.contains("last broker group")
        ));
        assert_eq!(core.store.subject_route("s").await.unwrap(), Some(route));
    }
}
