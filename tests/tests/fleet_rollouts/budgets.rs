//! A spent failure budget pauses or rolls back as the policy says; cancel freezes.

use std::collections::BTreeSet;
use std::time::Duration;

use continuum_tests::fleet::Fleet;
use continuum_tests::server::Server;

use super::common::*;

/// Besides the shared `fast` policy.
const BUDGETS: &str = r#"[rollout.careful]
waves = [{ name = "first", count = 4 }, { name = "rest", percent = 100 }]
bake = "1s"
healthy_for = "1s"
max_parallel = 4
failure_budget = 1
on_failure = "pause"

[rollout.strict]
waves = [{ name = "first", percent = 20 }, { name = "rest", percent = 100 }]
bake = "1s"
healthy_for = "1s"
max_parallel = 200
failure_budget = 0
on_failure = "rollback"
"#;

#[test]
fn a_spent_failure_budget_pauses_or_rolls_back_as_the_policy_says_and_cancel_leaves_no_site_between()
 {
    let server = Server::start();
    server.install_policy("budgets.toml", &with_fast(BUDGETS), "strict");
    let fleet = Fleet::start(&server, SITES);
    for service in ["pay", "log"] {
        publish(&server, service, "1.0.0", None, "fast");
        let id = start(&server, service, "1.0.0");
        until(&server, &id, "completed");
    }
    settled(&fleet, "pay", |_| Some("1.0.0".into()));

    // Budget 1, then pause: two of the first wave's four sites fail.
    publish(&server, "pay", "2.0.0", None, "careful");
    let plan = waves(&server.json(&["rollout", "start", "pay", "2.0.0", "--dry-run"]));
    let failing = &plan[0][..2];
    fleet.fail("2.0.0", failing.iter().map(String::as_str));
    let id = start(&server, "pay", "2.0.0");
    let paused = until(&server, &id, "paused");
    let reason = paused["state"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("failure budget of 1"), "{reason}");
    let first: BTreeSet<&String> = plan[0].iter().collect();
    settled(&fleet, "pay", |s| {
        let updated = first.contains(&s.name) && !failing.contains(&s.name);
        Some(if updated { "2.0.0" } else { "1.0.0" }.into())
    });
    for name in failing {
        assert_eq!(fleet.site(name).history("pay"), ["1.0.0", "2.0.0", "1.0.0"]);
    }
    for name in &plan[1] {
        assert_eq!(fleet.site(name).history("pay"), ["1.0.0"], "{name}");
    }
    // Cancelled: nothing moves any more, and each site keeps what it runs.
    server.cli(&["rollout", "cancel", &id]).ok();
    assert_eq!(state(&status(&server, &id)), "cancelled");
    std::thread::sleep(Duration::from_secs(2));
    for site in &fleet.sites {
        let expected = if first.contains(&site.name) && !failing.contains(&site.name) {
            "2.0.0"
        } else {
            "1.0.0"
        };
        assert_eq!(
            site.current("pay").as_deref(),
            Some(expected),
            "{}",
            site.name
        );
    }

    // Budget 0, then roll back: one failure takes the whole first wave back.
    publish(&server, "log", "2.0.0", None, "strict");
    let plan = waves(&server.json(&["rollout", "start", "log", "2.0.0", "--dry-run"]));
    assert_eq!(plan[0].len(), SITES / 5);
    fleet.fail("2.0.0", [plan[0][0].as_str()]);
    let id = start(&server, "log", "2.0.0");
    let rolled_back = until(&server, &id, "rolled-back");
    for site in &plan[0][1..] {
        assert!(
            matches!(progress(&rolled_back, site), "reverted" | "pending"),
            "{site}: {rolled_back}"
        );
    }
    settled(&fleet, "log", |_| Some("1.0.0".into()));
    for name in &plan[1] {
        assert_eq!(fleet.site(name).history("log"), ["1.0.0"], "{name}");
    }
}
