//! Subject -> broker group assignment.
//!
//! Realtime subjects get `min_group_num` groups (fewer when fewer exist), chosen among alive,
//! non-readonly groups carrying the subject's tag (AddNewSubject; the default pool when no
//! group has it) with the fewest subjects (ties broken by a hash of subject and group, so
//! new groups take new subjects first). The assignment is stored and, unless an operator edits
//! it, only ever grows: when groups are added later, routes with fewer than `min_group_num`
//! groups are extended with an optimistic version check, so concurrent meta servers on one
//! database agree. A top-up never takes a group an operator removed from the route
//! ([`SubjectRoute::excluded`]): an explicit removal wins over `min_group_num`, and the route
//! may stay shorter until the operator adds a group back.
//! Delay producers get delay groups, chosen by hash and not stored (delay servers forward to
//! the realtime route themselves).

use qmq_protocol::BrokerState;

use crate::cache::{Cache, View};
use crate::model::{GroupKind, SubjectRoute};
use crate::store::Store;
use crate::MetaError;

const MAX_UPDATE_TRIES: usize = 5;

/// FNV-1a of subject and group: a stable tie-breaker that spreads subjects over groups.
fn spread(subject: &str, group: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.bytes().chain([0]).chain(group.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Up to `n` assignable groups not in `taken`, least loaded first.
fn pick(view: &View, subject: &str, taken: &[String], n: usize) -> Vec<String> {
    let load = view.group_load();
    let mut candidates: Vec<(usize, u64, &str)> = view
        .assignable_groups(
            subject,
            view.subject_tags.get(subject).map_or("", String::as_str),
        )
        .into_iter()
        .filter(|g| !taken.contains(&g.name))
        .map(|g| {
            let l = load.get(g.name.as_str()).copied().unwrap_or(0);
            (l, spread(subject, &g.name), g.name.as_str())
        })
        .collect();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .take(n)
        .map(|(_, _, name)| name.to_owned())
        .collect()
}

/// The stored realtime route of `subject`, creating or extending it as needed.
pub async fn realtime_groups(
    store: &Store,
    cache: &Cache,
    subject: &str,
    min_groups: usize,
) -> Result<Vec<String>, MetaError> {
    let cached = cache.read(|v| v.routes.get(subject).cloned());
    if let Some(route) = cached {
        return extend_if_needed(store, cache, route, min_groups).await;
    }
    let picks = cache.read(|v| pick(v, subject, &[], min_groups));
    if picks.is_empty() {
        return Err(MetaError::NoBrokerGroups(subject.to_owned()));
    }
    if store.insert_subject_route(subject, &picks).await? {
        tracing::info!(subject, groups = ?picks, "assigned new subject route");
        if let Some(route) = store.subject_route(subject).await? {
            cache.put_route(route);
        }
        return Ok(picks);
    }
    // Another meta server created it first: use theirs.
    let route = store.subject_route(subject).await?.ok_or_else(|| {
        MetaError::Corrupt(format!(
            "route of {subject} vanished after a conflicting insert"
        ))
    })?;
    cache.put_route(route.clone());
    extend_if_needed(store, cache, route, min_groups).await
}

/// Groups a top-up of `route` must not pick: its own and those an operator removed.
fn taken(route: &SubjectRoute) -> Vec<String> {
    route
        .groups
        .iter()
        .chain(&route.excluded)
        .cloned()
        .collect()
}

async fn extend_if_needed(
    store: &Store,
    cache: &Cache,
    route: SubjectRoute,
    min_groups: usize,
) -> Result<Vec<String>, MetaError> {
    let lacking = |r: &SubjectRoute| {
        r.groups.len() < min_groups
            && !cache
                .read(|v| pick(v, &r.subject, &taken(r), min_groups - r.groups.len()))
                .is_empty()
    };
    if !lacking(&route) {
        return Ok(route.groups);
    }
    let subject = route.subject.clone();
    for _ in 0..MAX_UPDATE_TRIES {
        let Some(current) = store.subject_route(&subject).await? else {
            return Err(MetaError::NotFound(format!("route of {subject}")));
        };
        if !lacking(&current) {
            cache.put_route(current.clone());
            return Ok(current.groups);
        }
        let mut groups = current.groups.clone();
        let more = cache.read(|v| pick(v, &subject, &taken(&current), min_groups - groups.len()));
        groups.extend(more);
        if store
            .update_subject_route(&subject, current.version, &groups)
            .await?
        {
            tracing::info!(subject, groups = ?groups, "extended subject route");
            cache.put_route(SubjectRoute {
                version: current.version + 1,
                groups: groups.clone(),
                ..current
            });
            return Ok(groups);
        }
    }
    Err(MetaError::Conflict(format!(
        "route of {subject} kept changing; gave up after {MAX_UPDATE_TRIES} tries"
    )))
}

/// Delay groups for a delay producer of `subject`: alive, not readonly, up to `min_groups`.
pub fn delay_groups(view: &View, subject: &str, min_groups: usize) -> Vec<String> {
    let mut groups: Vec<(u64, &str)> = view
        .groups
        .values()
        .filter(|g| g.kind == GroupKind::Delay && g.state != BrokerState::None)
        .filter(|g| !view.is_readonly(&g.name, subject))
        .map(|g| (spread(subject, &g.name), g.name.as_str()))
        .collect();
    groups.sort_unstable();
    groups
        .into_iter()
        .take(min_groups)
        .map(|(_, n)| n.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BrokerGroupInfo;

    fn group(name: &str, tag: &str) -> BrokerGroupInfo {
        BrokerGroupInfo {
            name: name.into(),
            kind: GroupKind::Normal,
            master_address: format!("{name}:1"),
            state: BrokerState::ReadWrite,
            tag: tag.into(),
            heartbeat_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn a_tagged_subject_takes_groups_with_its_tag() {
        let mut view = View::default();
        for g in [group("plain", ""), group("blue", "blue")] {
            view.groups.insert(g.name.clone(), g);
        }
        view.subject_tags.insert("s.blue".into(), "blue".into());
        view.subject_tags.insert("s.red".into(), "red".into());
        assert_eq!(pick(&view, "s.blue", &[], 2), ["blue"]);
        assert_eq!(pick(&view, "s.plain", &[], 2), ["plain"]);
        // No group has the tag: the default pool.
        assert_eq!(pick(&view, "s.red", &[], 2), ["plain"]);
    }
}
