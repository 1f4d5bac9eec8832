//! Yanked releases: never rolled out again, their sites moved to the newest good one.

use std::collections::BTreeSet;
use std::time::Duration;

use continuum_tests::fleet::Fleet;
use continuum_tests::server::Server;

use super::common::*;

/// Besides the shared `fast` policy.
const YANKS: &str = r#"[rollout.held]
waves = [{ name = "early", count = 10 }, { name = "rest", percent = 100 }]
bake = "1h"
healthy_for = "1s"
max_parallel = 100
"#;

#[test]
fn a_yanked_release_is_never_rolled_out_again_and_its_sites_move_to_the_newest_good_one() {
    let server = Server::start();
    server.install_policy("yanks.toml", &with_fast(YANKS), "held");
    let fleet = Fleet::start(&server, 40);
    publish(&server, "api", "1.0.0", None, "fast");
    publish(&server, "api", "1.1.0", None, "fast");
    publish(&server, "api", "2.0.0", None, "held");
    let first = start(&server, "api", "1.0.0");
    until(&server, &first, "completed");
    // 2.0.0 reaches its first ten sites, then bakes for an hour.
    let bad = start(&server, "api", "2.0.0");
    let baking = watch(
        &server,
        &bad,
        |_| {},
        |r| r["waves"][0]["baking_since"].is_i64(),
    );
    let early: BTreeSet<String> = waves(&baking)[0].iter().cloned().collect();
    settled(&fleet, "api", |s| {
        Some(
            if early.contains(&s.name) {
                "2.0.0"
            } else {
                "1.0.0"
            }
            .into(),
        )
    });

    // One of them fails the release it moves to: it may not go back to the yanked one.
    let unlucky = early.first().unwrap().clone();
    fleet.fail("1.1.0", [unlucky.as_str()]);
    let outcome = server.json(&[
        "release",
        "yank",
        "api",
        "2.0.0",
        "--reason",
        "corrupts the cache on restart",
    ]);
    let moved: BTreeSet<String> = serde_json::from_value(outcome["sites"].clone()).unwrap();
    assert_eq!(moved, early, "{outcome}");
    assert_eq!(
        outcome["moving_to"], "1.1.0",
        "the newest release not yanked"
    );
    let id = outcome["rollout"]
        .as_str()
        .expect("a rollout moves them")
        .to_owned();
    assert_eq!(outcome["stopped"][0], bad.as_str(), "{outcome}");
    assert_eq!(state(&status(&server, &bad)), "cancelled");
    let done = until(&server, &id, "paused");
    assert_eq!(
        waves(&done).concat().len(),
        early.len(),
        "only the sites that ran it"
    );
    assert_eq!(progress(&done, &unlucky), "failed");
    settled(&fleet, "api", |s| {
        Some(
            if early.contains(&s.name) {
                "1.1.0"
            } else {
                "1.0.0"
            }
            .into(),
        )
    });

    // Never again: not by a rollout, not by hand; and it says why wherever it appears.
    for args in [
        vec!["rollout", "start", "api", "2.0.0"],
        vec!["rollout", "start", "api", "2.0.0", "--dry-run"],
        vec!["site", "assign", "sim-000", "api", "2.0.0"],
    ] {
        let out = server.cli(&args);
        assert_ne!(out.code, 0, "{args:?}");
        assert!(
            out.stderr.contains("yanked") && out.stderr.contains("corrupts the cache on restart"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let table = server.cli(&["releases"]).ok().stdout;
    let row = table.lines().find(|l| l.contains("2.0.0")).unwrap();
    assert!(
        row.contains("yanked: corrupts the cache on restart"),
        "{table}"
    );
    let listed = server.json(&["releases"]);
    let record = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "2.0.0")
        .unwrap();
    assert_eq!(record["yanked"]["reason"], "corrupts the cache on restart");
    let audit = server.cli(&["audit"]).ok().stdout;
    assert!(audit.contains("release.yank"), "{audit}");

    // A second yank, an unknown release and a missing reason are refused plainly.
    let again = server.cli(&["release", "yank", "api", "2.0.0", "--reason", "x"]);
    assert!(
        again.code != 0 && again.stderr.contains("was yanked by"),
        "{}",
        again.stderr
    );
    let unknown = server.cli(&["release", "yank", "api", "9.9.9", "--reason", "x"]);
    assert!(
        unknown.code != 0 && unknown.stderr.contains("not published"),
        "{}",
        unknown.stderr
    );
    let blank = server.cli(&["release", "yank", "api", "1.1.0", "--reason", " "]);
    assert!(
        blank.code != 0 && blank.stderr.contains("--reason"),
        "{}",
        blank.stderr
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fleet.site(&unlucky).history("api"),
        ["1.0.0", "2.0.0", "1.1.0"]
    );

    // Its sites go back to 1.0.0 when 1.1.0 is yanked too (the paused move stops).
    let last = server.json(&["release", "yank", "api", "1.1.0", "--reason", "also bad"]);
    assert_eq!(last["moving_to"], "1.0.0");
    assert_eq!(last["stopped"][0], id.as_str(), "{last}");
    let id = last["rollout"].as_str().unwrap().to_owned();
    until(&server, &id, "completed");
    settled(&fleet, "api", |_| Some("1.0.0".into()));

    // A rollout of another release under way is left alone, and the answer says so.
    publish(&server, "api", "3.0.0", None, "held");
    let other = start(&server, "api", "3.0.0");
    watch(
        &server,
        &other,
        |_| {},
        |r| r["waves"][0]["baking_since"].is_i64(),
    );
    let left = server.json(&["release", "yank", "api", "1.0.0", "--reason", "old"]);
    assert!(left["rollout"].is_null(), "{left}");
    let note = left["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("rollout {other}")) && note.contains("left alone"),
        "{note}"
    );
    assert_eq!(state(&status(&server, &other)), "running");
    // With nothing left that is not yanked, its rollout stops and the sites stay.
    let none_left = server.json(&["release", "yank", "api", "3.0.0", "--reason", "worst"]);
    assert_eq!(none_left["stopped"][0], other.as_str(), "{none_left}");
    assert!(
        none_left["note"]
            .as_str()
            .unwrap_or_default()
            .contains("no release of api is left"),
        "{none_left}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let on_three = fleet
        .sites
        .iter()
        .filter(|s| s.current("api").as_deref() == Some("3.0.0"))
        .count();
    assert_eq!(on_three, 10);
    let stuck = fleet
        .sites
        .iter()
        .find(|s| s.current("api").as_deref() == Some("3.0.0"))
        .unwrap();
    let shown = server.cli(&["site", "desired", &stuck.name]).ok().stdout;
    assert!(shown.contains("yanked: worst"), "{shown}");

    // A yanked agent release takes no more binaries.
    let publish_agent = |target: &str| {
        server.cli(&[
            "agent-release",
            "publish",
            "/bin/true",
            "--version",
            "1.2.3",
            "--target",
            target,
        ])
    };
    publish_agent("x86_64-unknown-linux-gnu").ok();
    server
        .cli(&[
            "release",
            "yank",
            "continuum-agent",
            "1.2.3",
            "--reason",
            "bricks",
        ])
        .ok();
    let refused = publish_agent("aarch64-unknown-linux-gnu");
    assert!(
        refused.code != 0 && refused.stderr.contains("bricks"),
        "{}",
        refused.stderr
    );
}

#[test]
fn sites_the_replacement_may_not_run_on_keep_the_yanked_release_and_the_answer_says_so() {
    let server = Server::start();
    server.install_policy("fast.toml", &with_fast(""), "fast");
    let fleet = Fleet::start(&server, 21);
    publish(&server, "db", "1.0.0", None, "fast");
    publish(&server, "db", "2.0.0", None, "fast");
    until(&server, &start(&server, "db", "2.0.0"), "completed");
    // The newest release that is not yanked runs in eu only.
    publish(
        &server,
        "db",
        "1.5.0",
        Some(r#"labels.region == "eu""#),
        "fast",
    );
    let outcome = server.json(&["release", "yank", "db", "2.0.0", "--reason", "bad index"]);
    assert_eq!(outcome["moving_to"], "1.5.0");
    let eu = fleet.sites.iter().filter(|s| s.has("region", "eu")).count();
    let note = outcome["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!(
            "{} site(s) may not run 1.5.0",
            fleet.sites.len() - eu
        )),
        "{outcome}"
    );
    let id = outcome["rollout"].as_str().unwrap().to_owned();
    until(&server, &id, "completed");
    settled(&fleet, "db", |s| {
        Some(
            if s.has("region", "eu") {
                "1.5.0"
            } else {
                "2.0.0"
            }
            .to_owned(),
        )
    });
}
