//! Access decisions over a snapshot of one account: which resources an actor may reach now (for
//! a client's view), whether it may reach one resource (for an authorization), and the messages
//! that turn one view into another. Pure: the caller passes the snapshot and the instant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use postern_domain::{Policy, Resource};
use postern_policy::{evaluate, Decision, DenyReason, EvalContext};
use postern_protocol::{PortalToClient, ResourceView};
use uuid::Uuid;

/// What the decisions need to know of one account.
#[derive(Debug, Clone, Default)]
pub struct AccessSnapshot {
    pub resources: HashMap<Uuid, Resource>,
    /// Enabled policies only, by group.
    pub policies_by_group: HashMap<Uuid, Vec<Policy>>,
    /// Groups of each actor.
    pub groups_of_actor: HashMap<Uuid, HashSet<Uuid>>,
    /// Actors that may not connect at all (disabled).
    pub disabled_actors: HashSet<Uuid>,
}

/// A resource an actor may reach, and until when (`None`: until something changes).
pub type View = BTreeMap<Uuid, ResourceView>;

impl AccessSnapshot {
    pub fn new(
        resources: Vec<Resource>,
        policies: Vec<Policy>,
        memberships: Vec<(Uuid, Uuid)>,
    ) -> Self {
        let mut snapshot = AccessSnapshot {
            resources: resources.into_iter().map(|r| (r.id, r)).collect(),
            ..Default::default()
        };
        for policy in policies.into_iter().filter(|p| !p.disabled) {
            snapshot
                .policies_by_group
                .entry(policy.group_id)
                .or_default()
                .push(policy);
        }
        for (group_id, actor_id) in memberships {
            snapshot
                .groups_of_actor
                .entry(actor_id)
                .or_default()
                .insert(group_id);
        }
        snapshot
    }

    /// Every resource the actor may reach from `source_ip` at `now`.
    pub fn view(&self, actor_id: Uuid, source_ip: Option<IpAddr>, now: DateTime<Utc>) -> View {
        let mut view = View::new();
        if self.disabled_actors.contains(&actor_id) {
            return view;
        }
        let ctx = EvalContext { source_ip, now };
        for policy in self.policies_of(actor_id) {
            let Some(resource) = self.resources.get(&policy.resource_id) else {
                continue;
            };
            let Decision::Allow { until } = evaluate(&policy.conditions, &ctx) else {
                continue;
            };
            let entry = view
                .entry(resource.id)
                .or_insert_with(|| resource_view(resource, until));
            entry.access_until = later(entry.access_until, until);
        }
        view
    }

    /// Whether the actor may reach `resource_id` now, and until when; otherwise why not, in
    /// words for the client's log.
    pub fn authorize(
        &self,
        actor_id: Uuid,
        resource_id: Uuid,
        source_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, String> {
        if self.disabled_actors.contains(&actor_id) {
            return Err("the actor is disabled".to_string());
        }
        if !self.resources.contains_key(&resource_id) {
            return Err("no such resource".to_string());
        }
        let ctx = EvalContext { source_ip, now };
        let mut allowed: Option<Option<DateTime<Utc>>> = None;
        let mut reasons: Vec<DenyReason> = Vec::new();
        for policy in self
            .policies_of(actor_id)
            .filter(|p| p.resource_id == resource_id)
        {
            match evaluate(&policy.conditions, &ctx) {
                Decision::Allow { until } => {
                    allowed = Some(match allowed {
                        None => until,
                        Some(previous) => later(previous, until),
                    })
                }
                Decision::Deny(reason) => reasons.push(reason),
            }
        }
        if let Some(until) = allowed {
            return Ok(until);
        }
        match reasons.first() {
            None => Err("no policy grants this actor's groups access to the resource".to_string()),
            Some(reason) => Err(format!("a condition is not met: {reason}")),
        }
    }

    fn policies_of(&self, actor_id: Uuid) -> impl Iterator<Item = &Policy> {
        self.groups_of_actor
            .get(&actor_id)
            .into_iter()
            .flatten()
            .filter_map(|group| self.policies_by_group.get(group))
            .flatten()
    }
}

/// The messages that take a client from `old` to `new`.
pub fn diff(old: &View, new: &View) -> Vec<PortalToClient> {
    let mut messages = Vec::new();
    for id in old.keys() {
        if !new.contains_key(id) {
            messages.push(PortalToClient::ResourceRemoved { id: *id });
        }
    }
    for (id, resource) in new {
        if old.get(id) != Some(resource) {
            messages.push(PortalToClient::ResourceUpserted {
                resource: resource.clone(),
            });
        }
    }
    messages
}

/// The earliest instant at which a view computed at `now` may change on its own (a time window
/// opening or closing), looking at most `horizon` ahead.
pub fn next_time_boundary(
    snapshot: &AccessSnapshot,
    now: DateTime<Utc>,
    horizon: chrono::Duration,
) -> DateTime<Utc> {
    let limit = now + horizon;
    let ctx = EvalContext {
        source_ip: None,
        now,
    };
    let mut earliest = limit;
    for policy in snapshot.policies_by_group.values().flatten() {
        if !policy
            .conditions
            .iter()
            .any(|c| matches!(c, postern_policy::Condition::TimeWindow(_)))
        {
            continue;
        }
        let time_only: Vec<_> = policy
            .conditions
            .iter()
            .filter(|c| matches!(c, postern_policy::Condition::TimeWindow(_)))
            .cloned()
            .collect();
        let instant = match evaluate(&time_only, &ctx) {
            Decision::Allow { until } => until,
            Decision::Deny(DenyReason::OutsideTimeWindow { next_start }) => next_start,
            Decision::Deny(_) => None,
        };
        if let Some(instant) = instant.filter(|t| *t > now) {
            earliest = earliest.min(instant);
        }
    }
    earliest
}

pub fn resource_view(resource: &Resource, until: Option<DateTime<Utc>>) -> ResourceView {
    ResourceView {
        id: resource.id,
        name: resource.name.clone(),
        resource_type: resource.resource_type.as_str().to_string(),
        address: resource.address.clone(),
        description: resource.description.clone(),
        filters: resource.filters.clone(),
        site_id: resource.site_id,
        access_until: until,
    }
}

/// The later of two ends, where `None` means no end.
fn later(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
