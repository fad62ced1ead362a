//! The cached view of the meta database every request is answered from.
//!
//! Refreshed from the database periodically and right after local writes. When a refresh
//! fails (database down), the previous view stays in place, so known routes keep being served.

use std::collections::{HashMap, HashSet};

use parking_lot::RwLock;
use qmq_protocol::{BrokerState, OnOfflineState};

use crate::model::{now_ms, BrokerGroupInfo, GroupKind, SubjectRoute};
use crate::store::Store;
use crate::MetaError;

/// Wildcard for "every subject" / "every client".
pub const ANY: &str = "*";

/// One consistent snapshot of the database.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Broker groups by name.
    pub groups: HashMap<String, BrokerGroupInfo>,
    /// Subject routes by subject.
    pub routes: HashMap<String, SubjectRoute>,
    /// Readonly subjects (or `*`) by broker group.
    pub readonly: HashMap<String, HashSet<String>>,
    /// Offline settings keyed by (client id, subject, consumer group); `*` wildcards allowed.
    pub offline: HashSet<(String, String, String)>,
    /// When the view was loaded, ms since the epoch.
    pub loaded_ms: i64,
}

impl View {
    /// Whether `group` is readonly for `subject`.
    pub fn is_readonly(&self, group: &str, subject: &str) -> bool {
        self.readonly
            .get(group)
            .is_some_and(|s| s.contains(subject) || s.contains(ANY))
    }

    /// The on/offline state of a consumer: exact setting, then group-wide, then client-wide.
    pub fn client_state(&self, client_id: &str, subject: &str, group: &str) -> OnOfflineState {
        let key = |c: &str, s: &str, g: &str| (c.to_owned(), s.to_owned(), g.to_owned());
        let offline = self.offline.contains(&key(client_id, subject, group))
            || self.offline.contains(&key(ANY, subject, group))
            || self.offline.contains(&key(client_id, ANY, ANY));
        if offline {
            OnOfflineState::Offline
        } else {
            OnOfflineState::Online
        }
    }

    /// Realtime groups that can take new subjects: registered, alive, not readonly for the
    /// subject, with `tag` (or the default pool when no group has the tag).
    pub fn assignable_groups(&self, subject: &str, tag: &str) -> Vec<&BrokerGroupInfo> {
        let usable = |g: &&BrokerGroupInfo| {
            g.kind == GroupKind::Normal
                && g.state != BrokerState::None
                && !self.is_readonly(&g.name, subject)
        };
        let tagged: Vec<&BrokerGroupInfo> = self
            .groups
            .values()
            .filter(|g| g.tag == tag)
            .filter(usable)
            .collect();
        if !tagged.is_empty() || tag.is_empty() {
            return tagged;
        }
        self.groups
            .values()
            .filter(|g| g.tag.is_empty())
            .filter(usable)
            .collect()
    }

    /// How many subjects each group serves.
    pub fn group_load(&self) -> HashMap<&str, usize> {
        let mut load = HashMap::new();
        for r in self.routes.values() {
            for g in &r.groups {
                *load.entry(g.as_str()).or_insert(0) += 1;
            }
        }
        load
    }
}

/// The shared cache.
#[derive(Debug, Default)]
pub struct Cache {
    view: RwLock<View>,
}

impl Cache {
    /// Loads a fresh view from `store`; on error the old view is kept and the error returned.
    pub async fn refresh(&self, store: &Store) -> Result<(), MetaError> {
        let loaded_ms = now_ms();
        let groups = store.broker_groups().await?;
        let routes = store.subject_routes().await?;
        let readonly_rows = store.readonly_settings().await?;
        let states = store.client_states().await?;
        let mut readonly: HashMap<String, HashSet<String>> = HashMap::new();
        for r in readonly_rows {
            readonly
                .entry(r.broker_group)
                .or_default()
                .insert(r.subject);
        }
        let view = View {
            groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
            routes: routes.into_iter().map(|r| (r.subject.clone(), r)).collect(),
            readonly,
            offline: states
                .into_iter()
                .filter(|s| s.offline)
                .map(|s| (s.client_id, s.subject, s.consumer_group))
                .collect(),
            loaded_ms,
        };
        *self.view.write() = view;
        Ok(())
    }

    /// Runs `f` on the current view.
    pub fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        f(&self.view.read())
    }

    /// Puts a route just written to the database into the view (newer versions win).
    pub fn put_route(&self, route: SubjectRoute) {
        let mut view = self.view.write();
        let newer = view
            .routes
            .get(&route.subject)
            .is_none_or(|old| old.version <= route.version);
        if newer {
            view.routes.insert(route.subject.clone(), route);
        }
    }

    /// Puts a group just written to the database into the view.
    pub fn put_group(&self, group: BrokerGroupInfo) {
        self.view.write().groups.insert(group.name.clone(), group);
    }
}
