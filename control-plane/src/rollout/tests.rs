//! The planner and the state machine on a simulated fleet of 200 sites with varied
//! labels, stepped second by second on a clock the test owns.

use std::collections::{BTreeMap, BTreeSet};

use continuum_shared::labels::{LabelValue, Labels};
use continuum_shared::protocol::{HealthState, ServicePhase, ServiceReport};

use super::plan::{Candidate, plan};
use super::step::{SetRelease, SiteNow, step};
use super::*;
use crate::policy::file::{self, PolicyFile};

const POLICY: &str = r#"
[rollout.default]
waves = [
  { name = "canary", count = 2, select = 'labels.canary == "true"' },
  { name = "early", percent = 10 },
  { name = "half", percent = 50 },
  { name = "all", percent = 100 },
]
bake = "30s"
healthy_for = "10s"
max_parallel = 7
failure_budget = 1
on_failure = "pause"

[[exclude]]
select = 'labels.retiring == "true"'
reason = "retiring"
"#;

fn fleet() -> Vec<Candidate> {
    (0..200)
        .map(|i| {
            let mut labels = Labels::new();
            let text = |s: &str| LabelValue::Text(s.into());
            labels.insert("tier".into(), text(["T1", "T2", "edge"][i % 3]));
            labels.insert("cpus".into(), LabelValue::Int([2, 8, 32][i % 3]));
            if i % 50 == 7 {
                labels.insert("canary".into(), text("true"));
            }
            if i % 40 == 3 {
                labels.insert("retiring".into(), text("true"));
            }
            Candidate {
                name: format!("site-{i:03}"),
                labels,
                revoked: i == 199,
            }
        })
        .collect()
}

fn policy_file(text: &str) -> PolicyFile {
    file::parse("test.toml", text).unwrap()
}

fn rollout_for(policy: &PolicyFile, require: Option<&str>) -> Rollout {
    let require = require.map(|r| crate::policy::selector::Selector::compile(r).unwrap());
    let excludes: Vec<_> = policy.excludes.iter().collect();
    let p = &policy.rollouts["default"];
    let planned = plan("web", "2", &fleet(), require.as_ref(), &excludes, p);
    let sites: BTreeMap<_, _> = planned
        .waves
        .iter()
        .flat_map(|w| w.sites.iter())
        .map(|s| (s.clone(), SiteProgress::Pending))
        .collect();
    Rollout {
        id: "r1".into(),
        service: "web".into(),
        version: "2".into(),
        removal: false,
        secret: None,
        gates: Gates {
            policy: "default".into(),
            bake_secs: p.bake.as_secs(),
            healthy_for_secs: p.healthy_for.as_secs(),
            max_parallel: p.max_parallel,
            failure_budget: p.failure_budget,
            on_failure: p.on_failure,
        },
        previous: sites
            .keys()
            .map(|s| (s.clone(), Some("1".into())))
            .collect(),
        sites,
        waves: planned.waves,
        excluded: planned.excluded,
        state: RolloutState::Running,
        wave: 0,
        started_by: "test".into(),
        started_at: String::new(),
        updated_at: 0,
    }
}

#[test]
fn waves_take_cumulative_shares_counts_and_selections_and_placement_excludes() {
    let policy = policy_file(POLICY);
    let rollout = rollout_for(&policy, Some(r#"labels.tier != "edge""#));
    let sizes: Vec<usize> = rollout.waves.iter().map(|w| w.sites.len()).collect();
    // 200 sites: 1 revoked, 67 edge (site 199 is edge too), and retiring ones out.
    let eligible = rollout.sites.len();
    assert_eq!(sizes.iter().sum::<usize>(), eligible);
    assert_eq!(sizes[0], 2, "the canary count");
    assert_eq!(
        sizes[0] + sizes[1],
        eligible.div_ceil(10),
        "10 % cumulative"
    );
    assert_eq!(
        sizes[0] + sizes[1] + sizes[2],
        (eligible * 50).div_ceil(100),
        "50 % cumulative"
    );
    let canaries = &rollout.waves[0].sites;
    assert!(
        canaries
            .iter()
            .all(|s| s == "site-007" || s == "site-157" || s == "site-107" || s == "site-057")
    );
    assert_eq!(rollout.excluded["site-199"], "revoked");
    assert!(
        rollout.excluded["site-002"].contains("requires"),
        "{:?}",
        rollout.excluded["site-002"]
    );
    assert!(rollout.excluded["site-003"].contains("retiring"));
    for (site, why) in &rollout.excluded {
        assert!(
            !rollout.sites.contains_key(site),
            "{site} excluded ({why}) yet planned"
        );
    }
    let again = rollout_for(&policy, Some(r#"labels.tier != "edge""#));
    assert_eq!(
        again.waves, rollout.waves,
        "the plan is the same every time"
    );
}

/// A simulated fleet: each site runs what it was last told, healthy unless listed in
/// `failing` (then it reports the new release failed).
struct Sim {
    desired: BTreeMap<String, Option<String>>,
    failing: BTreeSet<String>,
    closed: BTreeSet<String>,
    locked: BTreeSet<String>,
}

impl Sim {
    fn view(&self, rollout: &Rollout) -> BTreeMap<String, SiteNow> {
        rollout
            .sites
            .keys()
            .map(|site| {
                let wants = self.desired.get(site).cloned().flatten();
                let failed = self.failing.contains(site) && wants.as_deref() == Some("2");
                let report = ServiceReport {
                    service: "web".into(),
                    desired: wants.clone(),
                    running: if failed {
                        Some("1".into())
                    } else {
                        wants.clone()
                    },
                    last_known_good: Some("1".into()),
                    phase: if failed {
                        ServicePhase::RolledBack
                    } else if self.desired.get(site) == Some(&None) {
                        ServicePhase::Removed
                    } else {
                        ServicePhase::Running
                    },
                    health: HealthState::Healthy,
                    restarts: 0,
                    last_error: None,
                    failed: failed.then(|| "2".into()),
                    failure: failed.then(|| "did not become healthy".into()),
                    at: 0,
                    secrets: Default::default(),
                };
                let now = SiteNow {
                    online: true,
                    report: Some(report),
                    window_open: !self.closed.contains(site),
                    lock: self.locked.contains(site).then(|| "maintenance".into()),
                    caught_up: true,
                };
                (site.clone(), now)
            })
            .collect()
    }

    /// Steps once at `now`, applying the actions; checks the invariants.
    fn step(&mut self, rollout: &mut Rollout, now: i64) {
        let view = self.view(rollout);
        for action in step(rollout, &view, now) {
            self.desired.insert(action.site, action.version);
        }
        let in_flight = rollout
            .sites
            .values()
            .filter(|p| {
                matches!(
                    p,
                    SiteProgress::Updating { .. } | SiteProgress::Healthy { .. }
                )
            })
            .count();
        assert!(
            in_flight <= rollout.gates.max_parallel as usize,
            "max_parallel exceeded at {now}"
        );
        // No site of a later wave moves before every site of the earlier waves settled.
        for (i, wave) in rollout.waves.iter().enumerate() {
            let started = wave.sites.iter().any(|s| {
                !matches!(
                    rollout.sites[s],
                    SiteProgress::Pending | SiteProgress::Waiting { .. }
                )
            });
            if started {
                for earlier in &rollout.waves[..i] {
                    for s in &earlier.sites {
                        assert!(
                            matches!(
                                rollout.sites[s],
                                SiteProgress::Done
                                    | SiteProgress::Failed { .. }
                                    | SiteProgress::Reverted
                            ),
                            "wave {} started while {s} of {} was {:?}",
                            wave.name,
                            earlier.name,
                            rollout.sites[s]
                        );
                    }
                }
            }
        }
    }

    fn new() -> Sim {
        Sim {
            desired: BTreeMap::new(),
            failing: BTreeSet::new(),
            closed: BTreeSet::new(),
            locked: BTreeSet::new(),
        }
    }
}

#[test]
fn a_healthy_rollout_runs_its_waves_in_order_within_max_parallel_and_completes() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    let mut sim = Sim::new();
    let mut completed_at = None;
    for now in 0..3000 {
        sim.step(&mut rollout, now);
        if rollout.state == RolloutState::Completed {
            completed_at = Some(now);
            break;
        }
    }
    let at = completed_at.expect("the rollout completes");
    assert!(rollout.sites.values().all(|p| *p == SiteProgress::Done));
    assert!(sim.desired.values().all(|v| v.as_deref() == Some("2")));
    // Three bakes of 30 s, and each site healthy for 10 s, at most 7 at a time.
    assert!(at >= 3 * 30 + 10, "finished too early, at {at}");
}

#[test]
fn a_spent_failure_budget_pauses_and_a_rollback_policy_reverts_every_updated_site() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    let mut sim = Sim::new();
    // Two early-wave sites fail: one is within the budget, the second spends it.
    let early: Vec<String> = rollout.waves[1].sites.iter().take(2).cloned().collect();
    sim.failing.extend(early.iter().cloned());
    for now in 0..500 {
        sim.step(&mut rollout, now);
    }
    assert!(
        matches!(rollout.state, RolloutState::Paused(ref why) if why.contains("failure budget")),
        "{:?}",
        rollout.state
    );
    assert_eq!(rollout.failures(), 2);
    for site in &early {
        assert_eq!(
            sim.desired[site].as_deref(),
            Some("1"),
            "a failed site is put back"
        );
    }
    assert!(
        rollout.waves[2]
            .sites
            .iter()
            .all(|s| rollout.sites[s] == SiteProgress::Pending),
        "nothing after the pause"
    );

    let rollback = POLICY.replace("on_failure = \"pause\"", "on_failure = \"rollback\"");
    let policy = policy_file(&rollback);
    let mut rollout = rollout_for(&policy, None);
    let mut sim = Sim::new();
    sim.failing
        .extend(rollout.waves[1].sites.iter().take(2).cloned());
    for now in 0..500 {
        sim.step(&mut rollout, now);
    }
    assert!(
        matches!(rollout.state, RolloutState::RolledBack(_)),
        "{:?}",
        rollout.state
    );
    let touched: Vec<&String> = sim.desired.keys().collect();
    assert!(touched.len() > 2);
    for site in touched {
        assert_eq!(
            sim.desired[site].as_deref(),
            Some("1"),
            "{site} is back on 1"
        );
    }
}

#[test]
fn windows_and_locks_make_sites_wait_not_fail_until_they_open() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    let mut sim = Sim::new();
    let canaries = rollout.waves[0].sites.clone();
    sim.closed.insert(canaries[0].clone());
    sim.locked.insert(canaries[1].clone());
    for now in 0..100 {
        sim.step(&mut rollout, now);
    }
    assert_eq!(
        rollout.sites[&canaries[0]],
        SiteProgress::Waiting {
            reason: "outside its maintenance window".into()
        }
    );
    assert!(
        matches!(&rollout.sites[&canaries[1]], SiteProgress::Waiting { reason } if reason.contains("locked"))
    );
    assert_eq!(rollout.wave, 0, "the wave waits for them");
    assert_eq!(rollout.state, RolloutState::Running);
    sim.closed.clear();
    sim.locked.clear();
    for now in 100..200 {
        sim.step(&mut rollout, now);
    }
    assert_eq!(rollout.sites[&canaries[0]], SiteProgress::Done);
    assert!(rollout.wave >= 1);
}

#[test]
fn an_operators_rollback_reverts_and_nothing_is_left_in_between() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    let mut sim = Sim::new();
    for now in 0..60 {
        sim.step(&mut rollout, now);
    }
    rollout.state = RolloutState::RollingBack("operator".into());
    sim.step(&mut rollout, 61);
    assert!(matches!(rollout.state, RolloutState::RolledBack(_)));
    assert!(rollout.sites.values().all(|p| matches!(
        p,
        SiteProgress::Pending | SiteProgress::Reverted | SiteProgress::Waiting { .. }
    )));
    assert!(sim.desired.values().all(|v| v.as_deref() == Some("1")));
}

#[test]
fn a_removal_takes_the_service_off_every_site_in_waves() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    rollout.removal = true;
    rollout.version = String::new();
    let mut sim = Sim::new();
    for now in 0..3000 {
        sim.step(&mut rollout, now);
        if rollout.state == RolloutState::Completed {
            break;
        }
    }
    assert_eq!(rollout.state, RolloutState::Completed);
    assert_eq!(sim.desired.len(), rollout.sites.len());
    assert!(
        sim.desired.values().all(Option::is_none),
        "every site told to remove it"
    );
    assert!(rollout.sites.values().all(|p| *p == SiteProgress::Done));
}

#[test]
fn a_removal_waits_for_the_site_to_catch_up_and_counts_a_site_that_cannot_remove_as_failed() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    rollout.removal = true;
    rollout.version = String::new();
    let sites: Vec<String> = rollout.sites.keys().take(2).cloned().collect();
    for site in &sites {
        rollout
            .sites
            .insert(site.clone(), SiteProgress::Updating { since: 0 });
    }
    let stuck = ServiceReport {
        service: "web".into(),
        desired: None,
        running: Some("1".into()),
        last_known_good: Some("1".into()),
        phase: ServicePhase::Failed,
        health: HealthState::Down,
        restarts: 0,
        last_error: Some("could not remove container web-1".into()),
        failed: None,
        failure: None,
        at: 0,
        secrets: Default::default(),
    };
    let view = |caught_up: bool| -> BTreeMap<String, SiteNow> {
        BTreeMap::from([
            (
                sites[0].clone(),
                SiteNow {
                    online: true,
                    report: None,
                    window_open: true,
                    lock: None,
                    caught_up,
                },
            ),
            (
                sites[1].clone(),
                SiteNow {
                    online: true,
                    report: Some(stuck.clone()),
                    window_open: true,
                    lock: None,
                    caught_up,
                },
            ),
        ])
    };
    // No report yet, but the site has not verified the removal: not done.
    step(&mut rollout, &view(false), 1);
    assert_eq!(
        rollout.sites[&sites[0]],
        SiteProgress::Updating { since: 0 }
    );
    step(&mut rollout, &view(true), 2);
    assert_eq!(rollout.sites[&sites[0]], SiteProgress::Healthy { since: 2 });
    assert!(
        matches!(&rollout.sites[&sites[1]], SiteProgress::Failed { .. }),
        "{:?}",
        rollout.sites[&sites[1]]
    );
}

#[test]
fn a_secret_rollout_counts_only_reports_about_the_new_version_and_puts_failures_back() {
    let policy = policy_file(POLICY);
    let mut rollout = rollout_for(&policy, None);
    rollout.secret = Some("db".into());
    rollout.version = "2".into();
    let sites: Vec<String> = rollout.sites.keys().take(3).cloned().collect();
    for site in &sites {
        rollout
            .sites
            .insert(site.clone(), SiteProgress::Updating { since: 0 });
    }
    let report = |version: u64, failed: bool| ServiceReport {
        service: "web".into(),
        desired: Some("1".into()),
        running: Some("1".into()),
        last_known_good: Some("1".into()),
        phase: if failed {
            ServicePhase::RolledBack
        } else {
            ServicePhase::Running
        },
        health: HealthState::Healthy,
        restarts: 0,
        last_error: None,
        failed: failed.then(|| "1".into()),
        failure: failed.then(|| "did not become healthy".into()),
        at: 0,
        secrets: BTreeMap::from([("db".to_owned(), version)]),
    };
    let now = |report: ServiceReport| SiteNow {
        online: true,
        report: Some(report),
        window_open: true,
        lock: None,
        caught_up: true,
    };
    let view = BTreeMap::from([
        // Healthy, but on the old value: not yet done.
        (sites[0].clone(), now(report(1, false))),
        // Healthy on the new value.
        (sites[1].clone(), now(report(2, false))),
        // Failed with the new value: put back on the old one.
        (sites[2].clone(), now(report(2, true))),
    ]);
    let actions = step(&mut rollout, &view, 5);
    assert_eq!(
        rollout.sites[&sites[0]],
        SiteProgress::Updating { since: 0 }
    );
    assert_eq!(rollout.sites[&sites[1]], SiteProgress::Healthy { since: 5 });
    assert!(matches!(
        &rollout.sites[&sites[2]],
        SiteProgress::Failed { .. }
    ));
    assert!(actions.contains(&SetRelease {
        site: sites[2].clone(),
        version: Some("1".into()),
    }));
    assert_eq!(rollout.describe(), "secret db v2 for web");
}
