//! Waves in order, within `max_parallel`, exactly as the dry run planned, with placement
//! and exclusions.

use std::collections::{BTreeMap, BTreeSet};

use continuum_tests::fleet::Fleet;
use continuum_tests::server::Server;

use super::common::*;

const TIERED: &str = r#"[rollout.tiered]
waves = [
  { name = "canary", count = 2, select = 'labels.canary == "true"' },
  { name = "tenth", percent = 10 },
  { name = "half", percent = 50 },
  { name = "all", percent = 100 },
]
bake = "1s"
healthy_for = "1s"
max_parallel = 12
failure_budget = 0
on_failure = "pause"

[[exclude]]
select = 'labels.retiring == "true"'
reason = "retiring from the grid"
"#;

#[test]
fn waves_run_in_order_within_max_parallel_exactly_as_the_dry_run_planned() {
    let server = Server::start();
    server.install_policy("tiered.toml", TIERED, "tiered");
    let fleet = Fleet::start(&server, SITES);
    let require = r#"labels.tier != "T3" || labels.region == "eu""#;
    publish(&server, "grid", "1.0.0", Some(require), "tiered");

    // Eligibility worked out here from the labels, independently of the planner.
    let eligible: BTreeSet<String> = fleet
        .sites
        .iter()
        .filter(|s| (!s.has("tier", "T3") || s.has("region", "eu")) && !s.has("retiring", "true"))
        .map(|s| s.name.clone())
        .collect();
    let total = eligible.len();
    assert!(total > 50 && total < SITES, "{total}");

    let plan = server.json(&["rollout", "start", "grid", "1.0.0", "--dry-run"]);
    let excluded: BTreeMap<String, String> =
        serde_json::from_value(plan["excluded"].clone()).unwrap();
    for site in &fleet.sites {
        match excluded.get(&site.name) {
            Some(why) => {
                assert!(
                    !eligible.contains(&site.name),
                    "{} excluded: {why}",
                    site.name
                );
                let expected = if site.has("tier", "T3") && !site.has("region", "eu") {
                    "requires"
                } else {
                    "retiring from the grid"
                };
                assert!(why.contains(expected), "{}: {why}", site.name);
            }
            None => assert!(eligible.contains(&site.name), "{} not excluded", site.name),
        }
    }
    let planned = waves(&plan);
    let sizes: Vec<usize> = planned.iter().map(Vec::len).collect();
    let (tenth, half) = (total.div_ceil(10), total.div_ceil(2));
    assert_eq!(sizes, [2, tenth - 2, half - tenth, total - half], "{plan}");
    assert!(
        planned[0]
            .iter()
            .all(|s| fleet.site(s).has("canary", "true"))
    );

    let id = start(&server, "grid", "1.0.0");
    let mut most_in_flight = 0;
    let mut looks = 0;
    let done = watch(
        &server,
        &id,
        |r| {
            looks += 1;
            let moving = |s: &str| !matches!(progress(r, s), "pending" | "waiting");
            let in_flight = planned
                .iter()
                .flatten()
                .filter(|s| matches!(progress(r, s), "updating" | "healthy"))
                .count();
            assert!(in_flight <= 12, "{in_flight} sites updating at once: {r}");
            most_in_flight = most_in_flight.max(in_flight);
            // A wave starts only once every earlier wave is done.
            for (k, wave) in planned.iter().enumerate() {
                if wave.iter().any(|s| moving(s)) {
                    for earlier in &planned[..k] {
                        assert!(
                            earlier.iter().all(|s| progress(r, s) == "done"),
                            "wave {k} started before the waves before it were done: {r}"
                        );
                    }
                }
            }
        },
        |r| state(r) == "completed",
    );
    assert_eq!(waves(&done), planned, "the rollout ran the plan");
    assert!(most_in_flight > 1, "sites updated side by side");
    assert!(looks > 5);
    for site in &fleet.sites {
        let expected: &[&str] = if eligible.contains(&site.name) {
            &["1.0.0"]
        } else {
            &[]
        };
        assert_eq!(site.history("grid"), expected, "{}", site.name);
    }
}
