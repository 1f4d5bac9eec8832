//! Which sites a rollout reaches, and in which wave.
//!
//! A site is eligible when it is not revoked, the release's `[placement] require` holds
//! for its labels, and no fleet-wide exclusion selects it. Eligible sites are ordered by
//! a hash of the service, the release and the site name (so every release gets its own
//! canaries, and a dry run plans exactly what the rollout then does), and the waves
//! take them in turn: a `count` wave takes that many, a `percent` wave takes sites until
//! that cumulative share of the eligible sites is reached; a wave with `select` takes
//! only sites it selects.

use std::collections::BTreeMap;

use continuum_shared::labels::Labels;

use super::WaveRun;
use crate::policy::file::{Exclusion, RolloutPolicy, WaveSize};
use crate::policy::selector::Selector;

/// A site the planner considers.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Whether it is revoked.
    pub revoked: bool,
}

/// The planned waves, and the sites left out with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Waves with their sites.
    pub waves: Vec<WaveRun>,
    /// Sites left out, with why.
    pub excluded: BTreeMap<String, String>,
}

/// Plans a rollout of `service` `version` over `sites`.
pub fn plan(
    service: &str,
    version: &str,
    sites: &[Candidate],
    require: Option<&Selector>,
    excludes: &[&Exclusion],
    policy: &RolloutPolicy,
) -> Plan {
    let mut excluded = BTreeMap::new();
    let mut eligible: Vec<&Candidate> = Vec::new();
    for site in sites {
        if site.revoked {
            excluded.insert(site.name.clone(), "revoked".to_owned());
        } else if let Some(require) = require.filter(|r| !r.matches(&site.labels)) {
            excluded.insert(
                site.name.clone(),
                format!("the release requires {}", require.text()),
            );
        } else if let Some(x) = excludes.iter().find(|x| x.select.matches(&site.labels)) {
            let why = x
                .reason
                .clone()
                .unwrap_or_else(|| x.select.text().to_owned());
            excluded.insert(site.name.clone(), format!("excluded by {}: {why}", x.file));
        } else {
            eligible.push(site);
        }
    }
    let order = |site: &Candidate| {
        continuum_shared::tls::sha256(format!("{service}/{version}/{}", site.name).as_bytes())
    };
    eligible.sort_by_key(|s| (order(s), s.name.clone()));
    let total = eligible.len();
    let mut taken = vec![false; total];
    let mut assigned = 0usize;
    let mut waves = Vec::new();
    for wave in &policy.waves {
        let want = match wave.size {
            WaveSize::Count(n) => n as usize,
            WaveSize::Percent(p) => (total * p as usize).div_ceil(100).saturating_sub(assigned),
        };
        let mut members = Vec::new();
        for (i, site) in eligible.iter().enumerate() {
            if members.len() >= want {
                break;
            }
            if !taken[i] && wave.select.as_ref().is_none_or(|s| s.matches(&site.labels)) {
                taken[i] = true;
                members.push(site.name.clone());
            }
        }
        assigned += members.len();
        waves.push(WaveRun {
            name: wave.name.clone(),
            sites: members,
            baking_since: None,
        });
    }
    Plan { waves, excluded }
}
