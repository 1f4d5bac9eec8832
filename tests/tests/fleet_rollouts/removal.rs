//! Removing a service in waves from the sites selected, and putting it back.

use std::collections::{BTreeMap, BTreeSet};

use continuum_tests::fleet::{Fleet, SimSite};
use continuum_tests::server::Server;

use super::common::*;

/// Besides the shared `fast` policy.
const REMOVALS: &str = r#"[rollout.trickle]
waves = [{ name = "first", count = 3 }, { name = "rest", percent = 100 }]
bake = "1s"
healthy_for = "1s"
max_parallel = 4
"#;

#[test]
fn a_service_is_removed_in_waves_from_the_sites_selected_and_a_rollback_puts_it_back() {
    let server = Server::start();
    server.install_policy("removals.toml", &with_fast(REMOVALS), "trickle");
    let fleet = Fleet::start(&server, 60);
    publish(&server, "cache", "1.0.0", None, "fast");
    until(&server, &start(&server, "cache", "1.0.0"), "completed");
    settled(&fleet, "cache", |_| Some("1.0.0".into()));

    let eu = |s: &SimSite| s.has("region", "eu");
    let select = r#"labels.region == "eu""#;
    let remove = [
        "service", "remove", "cache", "--select", select, "--policy", "trickle",
    ];
    let plan = server.json(&[&remove[..], &["--dry-run"]].concat());
    let planned = waves(&plan);
    let chosen: BTreeSet<String> = planned.concat().into_iter().collect();
    let expected: BTreeSet<String> = fleet
        .sites
        .iter()
        .filter(|s| eu(s))
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(chosen, expected);
    assert_eq!(planned[0].len(), 3);
    let excluded: BTreeMap<String, String> =
        serde_json::from_value(plan["excluded"].clone()).unwrap();
    assert_eq!(excluded.len(), fleet.sites.len() - expected.len());
    assert!(
        excluded.values().all(|why| why.contains("not selected")),
        "{plan}"
    );

    let id = server.json(&remove)["id"].as_str().unwrap().to_owned();
    let done = watch(
        &server,
        &id,
        |r| {
            let in_flight = planned
                .concat()
                .iter()
                .filter(|s| matches!(progress(r, s), "updating" | "healthy"))
                .count();
            assert!(in_flight <= 4, "{r}");
            if planned[1].iter().any(|s| progress(r, s) != "pending") {
                assert!(planned[0].iter().all(|s| progress(r, s) == "done"), "{r}");
            }
        },
        |r| state(r) == "completed",
    );
    assert_eq!(waves(&done), planned, "the removal ran the plan");
    settled(&fleet, "cache", |s| (!eu(s)).then(|| "1.0.0".to_owned()));

    // The rest, rolled back part-way: the service is back where it was taken off.
    let rest = server.json(&["service", "remove", "cache", "--policy", "trickle"]);
    let id = rest["id"].as_str().unwrap().to_owned();
    watch(
        &server,
        &id,
        |_| {},
        |r| {
            r["sites"]
                .as_object()
                .is_some_and(|s| s.values().any(|p| p["state"] == "done"))
        },
    );
    // Never two at once: a removal does not cut a rollout of the service short.
    let second = server.cli(&["service", "remove", "cache", "--policy", "trickle"]);
    assert!(
        second.code != 0 && second.stderr.contains(&format!("rollout {id}")),
        "{}",
        second.stderr
    );
    let agent = server.cli(&["service", "remove", "continuum-agent"]);
    assert!(
        agent.code != 0 && agent.stderr.contains("can be removed"),
        "{}",
        agent.stderr
    );
    server.cli(&["rollout", "rollback", &id]).ok();
    until(&server, &id, "rolled-back");
    settled(&fleet, "cache", |s| (!eu(s)).then(|| "1.0.0".to_owned()));
    let taken_off_and_back = fleet
        .sites
        .iter()
        .filter(|s| s.history("cache") == ["1.0.0", "", "1.0.0"])
        .count();
    assert!(taken_off_and_back > 0, "the rollback put it back");
}
