//! The cached view of the meta database every request is answered from.
//!
//! Refreshed from the database periodically and right after local writes. When a refresh
//! fails (database down), the previous view stays in place, so known routes keep being served.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use qmq_protocol::{BrokerState, OnOfflineState};

use crate::model::{now_ms, BrokerGroupInfo, GroupKind, SubjectInfo, SubjectRoute};
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
    /// Placement tags of subjects added with AddNewSubject.
    pub subject_tags: HashMap<String, String>,
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
    /// Bumped by every local put, so a refresh can tell it raced with one.
    generation: AtomicU64,
}

/// Attempts of a refresh that keeps racing with local puts before it merges.
const REFRESH_TRIES: usize = 3;

async fn load(store: &Store) -> Result<View, MetaError> {
    let loaded_ms = now_ms();
    let groups = store.broker_groups().await?;
    let routes = store.subject_routes().await?;
    let readonly_rows = store.readonly_settings().await?;
    let states = store.client_states().await?;
    let infos = store.subject_infos().await?;
    let mut readonly: HashMap<String, HashSet<String>> = HashMap::new();
    for r in readonly_rows {
        readonly
            .entry(r.broker_group)
            .or_default()
            .insert(r.subject);
    }
    Ok(View {
        groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
        routes: routes.into_iter().map(|r| (r.subject.clone(), r)).collect(),
        subject_tags: infos.into_iter().map(|i| (i.subject, i.tag)).collect(),
        readonly,
        offline: states
            .into_iter()
            .filter(|s| s.offline)
            .map(|s| (s.client_id, s.subject, s.consumer_group))
            .collect(),
        loaded_ms,
    })
}

impl Cache {
    /// Loads a fresh view from `store`; on error the old view is kept and the error returned.
    ///
    /// A load that overlapped a local put (a route or group written meanwhile) is retried; if
    /// it keeps overlapping, it is merged: routes keep the higher version, and groups the load
    /// missed are kept (neither is ever deleted).
    pub async fn refresh(&self, store: &Store) -> Result<(), MetaError> {
        for attempt in 1..=REFRESH_TRIES {
            let generation = self.generation.load(Ordering::Acquire);
            let mut fresh = load(store).await?;
            let mut view = self.view.write();
            let raced = self.generation.load(Ordering::Acquire) != generation;
            if raced && attempt < REFRESH_TRIES {
                continue;
            }
            for (subject, route) in &view.routes {
                let newer = fresh
                    .routes
                    .get(subject)
                    .is_none_or(|r| r.version < route.version);
                if newer {
                    fresh.routes.insert(subject.clone(), route.clone());
                }
            }
            if raced {
                for (name, group) in &view.groups {
                    if !fresh.groups.contains_key(name) {
                        fresh.groups.insert(name.clone(), group.clone());
                    }
                }
            }
            *view = fresh;
            return Ok(());
        }
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
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Puts a subject's tag just written to the database into the view.
    pub fn put_subject_info(&self, info: SubjectInfo) {
        let mut view = self.view.write();
        view.subject_tags.insert(info.subject, info.tag);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Puts a group just written to the database into the view.
    pub fn put_group(&self, group: BrokerGroupInfo) {
        let mut view = self.view.write();
        view.groups.insert(group.name.clone(), group);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refresh_never_rolls_a_route_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_dir(dir.path()).await.unwrap();
        assert!(store
            .insert_subject_route("s", &["g1".to_owned()])
            .await
            .unwrap());
        let cache = Cache::default();
        cache.refresh(&store).await.unwrap();
        assert_eq!(cache.read(|v| v.routes["s"].version), 1);
        // A newer version written by this server after the load started must survive it.
        let newer = SubjectRoute {
            subject: "s".into(),
            groups: vec!["g1".into(), "g2".into()],
            version: 2,
            updated_ms: 0,
            excluded: Vec::new(),
        };
        cache.put_route(newer.clone());
        cache.refresh(&store).await.unwrap();
        assert_eq!(cache.read(|v| v.routes["s"].clone()), newer);
        // Older puts do not win over the cache either.
        cache.put_route(SubjectRoute {
            version: 1,
            ..newer.clone()
        });
        assert_eq!(cache.read(|v| v.routes["s"].version), 2);
    }
}
