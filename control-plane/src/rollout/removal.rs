//! Planning the removal of a service: the sites whose desired state names it (those
//! `--select` picks, if given) are taken in the waves of a rollout policy, so a
//! removal has the same gates, pause and cancel as any rollout. Fleet-wide exclusions
//! do not apply: they keep services off sites, which is what a removal does too.

use std::collections::{BTreeMap, BTreeSet};

use super::Gates;
use super::controller::{RolloutError, gates_of};
use super::plan::{Candidate, Plan, plan};
use crate::model::DesiredRecord;
use crate::plane::ControlPlane;
use crate::policy::selector::Selector;
use crate::sites;
use crate::store::{StoreExt, Tree};

/// Plans taking `service` off the sites `select` picks, by `policy` (`default`).
pub fn plan_removal(
    cp: &ControlPlane,
    service: &str,
    select: Option<&str>,
    policy: Option<&str>,
) -> Result<(Gates, Plan), RolloutError> {
    if service == continuum_shared::manifest::AGENT_SERVICE {
        return Err(RolloutError::Invalid(
            "the agent is not a service that can be removed from sites".into(),
        ));
    }
    let policy_name = policy.unwrap_or("default");
    let snapshot = cp.policies.snapshot();
    let policy = snapshot.rollout(policy_name).ok_or_else(|| {
        RolloutError::Invalid(format!(
            "no rollout policy named {policy_name:?} is in force; see `continuum policies`"
        ))
    })?;
    let select = select
        .map(Selector::compile)
        .transpose()
        .map_err(|e| RolloutError::Invalid(format!("--select: the expression {e}")))?;
    let having: BTreeSet<String> = cp
        .store
        .list_json::<DesiredRecord>(Tree::Desired)?
        .into_iter()
        .filter(|d| d.releases.contains_key(service))
        .map(|d| d.site)
        .collect();
    if having.is_empty() {
        return Err(RolloutError::Invalid(format!(
            "no site's desired state names {service}: there is nothing to remove"
        )));
    }
    let mut unselected = BTreeMap::new();
    let candidates: Vec<Candidate> = sites::list(cp)?
        .into_iter()
        .filter(|s| having.contains(&s.name))
        .filter(|s| match &select {
            Some(select) if !select.matches(&s.labels()) => {
                unselected.insert(s.name.clone(), format!("not selected by {}", select.text()));
                false
            }
            _ => true,
        })
        .map(|s| Candidate {
            labels: s.labels(),
            revoked: s.revoked_at.is_some(),
            name: s.name,
        })
        .collect();
    let mut planned = plan(service, "removal", &candidates, None, &[], policy);
    planned.excluded.extend(unselected);
    Ok((gates_of(policy), planned))
}
