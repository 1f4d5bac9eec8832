//! Rollouts over a simulated fleet of 200 sites with varied labels, driven through a
//! real control plane: real agents in one process (own keys, QUIC links, TUF
//! verification) whose services report what each test says. Each test watches the
//! rollout through the API while it runs and checks what every site was told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use continuum_tests::fleet::{Fleet, SimSite};
use continuum_tests::releases::write;
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const SITES: usize = 200;
const LIMIT: Duration = Duration::from_secs(240);

/// Publishes `service` `version`, placed by `require`, rolled out under `policy`.
fn publish(server: &Server, service: &str, version: &str, require: Option<&str>, policy: &str) {
    let mut text = continuum_tests::releases::manifest(service, version);
    text.push_str(&format!("\n[placement]\nrollout = \"{policy}\"\n"));
    if let Some(require) = require {
        text.push_str(&format!("require = '{require}'\n"));
    }
    let file = write(server.root(), &format!("{service}-{version}.toml"), &text);
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
}

fn start(server: &Server, service: &str, version: &str) -> String {
    let started = server.json(&["rollout", "start", service, version]);
    started["id"].as_str().expect("rollout id").to_owned()
}

fn status(server: &Server, id: &str) -> Value {
    server.json(&["rollout", "status", id])
}

fn state(rollout: &Value) -> &str {
    rollout["state"]["state"].as_str().unwrap_or_default()
}

fn progress<'a>(rollout: &'a Value, site: &str) -> &'a str {
    rollout["sites"][site]["state"].as_str().unwrap_or_default()
}

fn waves(rollout: &Value) -> Vec<Vec<String>> {
    rollout["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| {
            w["sites"]
                .as_array()
                .expect("wave sites")
                .iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect()
}

/// Watches rollout `id` until `done` holds, checking `each` on every look.
fn watch(
    server: &Server,
    id: &str,
    mut each: impl FnMut(&Value),
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let rollout = status(server, id);
        each(&rollout);
        if done(&rollout) {
            return rollout;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} did not get there in {LIMIT:?}: {rollout}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn until(server: &Server, id: &str, wanted: &str) -> Value {
    watch(server, id, |_| {}, |r| state(r) == wanted)
}

/// Like [`until`], but a timeout says, for each site not done, what it was told and
/// what the control plane sees of it.
fn until_explained(server: &Server, fleet: &Fleet, service: &str, id: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let rollout = status(server, id);
        if state(&rollout) == wanted {
            return rollout;
        }
        if Instant::now() >= deadline {
            let stuck: Vec<String> = fleet
                .sites
                .iter()
                .filter(|s| progress(&rollout, &s.name) != "done")
                .map(|s| {
                    format!(
                        "{} is {}; told {:?}; the control plane sees {}",
                        s.name,
                        progress(&rollout, &s.name),
                        s.history(service),
                        server.site(&s.name).unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "rollout {id} is not {wanted} after {LIMIT:?}:\n{}",
                stuck.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every site's desired state names what `expected` says for it.
fn settled(fleet: &Fleet, service: &str, expected: impl Fn(&SimSite) -> Option<String>) {
    wait::until(LIMIT, "every site told what the rollout decided", || {
        fleet
            .sites
            .iter()
            .all(|s| s.current(service) == expected(s))
            .then_some(())
    });
}

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

const BUDGETS: &str = r#"[rollout.fast]
waves = [{ name = "all", percent = 100 }]
bake = "0s"
healthy_for = "1s"
max_parallel = 200

[rollout.careful]
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
    server.install_policy("budgets.toml", BUDGETS, "strict");
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

const STEADY: &str = r#"[rollout.steady]
waves = [{ name = "all", percent = 100 }]
bake = "0s"
healthy_for = "1s"
max_parallel = 25
"#;

#[test]
fn a_killed_control_plane_resumes_and_supersede_and_cancel_leave_no_site_between() {
    let mut server = Server::start();
    server.install_policy("steady.toml", STEADY, "steady");
    let fleet = Fleet::start(&server, SITES);
    for version in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"] {
        publish(&server, "web", version, None, "steady");
    }

    // SIGKILL mid-rollout: the restarted control plane carries on from its store.
    let id = start(&server, "web", "1.0.0");
    let before = watch(
        &server,
        &id,
        |_| {},
        |r| {
            let done = r["sites"]
                .as_object()
                .map_or(0, |s| s.values().filter(|p| p["state"] == "done").count());
            (40..SITES - 50).contains(&done)
        },
    );
    assert_eq!(state(&before), "running");
    server.kill();
    server.restart();
    until_explained(&server, &fleet, "web", &id, "completed");
    for site in &fleet.sites {
        assert_eq!(site.history("web"), ["1.0.0"], "{}", site.name);
    }

    // A newer rollout takes over an older one under way.
    let older = start(&server, "web", "2.0.0");
    watch(
        &server,
        &older,
        |_| {},
        |r| {
            r["sites"]
                .as_object()
                .is_some_and(|s| s.values().any(|p| p["state"] == "done"))
        },
    );
    let newer = start(&server, "web", "3.0.0");
    let superseded = status(&server, &older);
    assert_eq!(state(&superseded), "superseded", "{superseded}");
    until(&server, &newer, "completed");
    settled(&fleet, "web", |_| Some("3.0.0".into()));
    assert_eq!(state(&status(&server, &older)), "superseded");
    // Every site went straight on: the older release or not, then the newer one.
    let mut took_older = 0;
    for site in &fleet.sites {
        match site.history("web").as_slice() {
            [a, b, c] if a == "1.0.0" && b == "2.0.0" && c == "3.0.0" => took_older += 1,
            [a, c] if a == "1.0.0" && c == "3.0.0" => {}
            other => panic!("{}: {other:?}", site.name),
        }
    }
    assert!(took_older > 0 && took_older < SITES, "{took_older}");

    // Cancelled mid-way: the sites it told keep the new release, the others the old,
    // and nothing moves after.
    let cancelled = start(&server, "web", "4.0.0");
    watch(
        &server,
        &cancelled,
        |_| {},
        |r| {
            r["sites"]
                .as_object()
                .is_some_and(|s| s.values().any(|p| p["state"] == "done"))
        },
    );
    server.cli(&["rollout", "cancel", &cancelled]).ok();
    let at_cancel = status(&server, &cancelled);
    assert_eq!(state(&at_cancel), "cancelled");
    let told = |name: &str| matches!(progress(&at_cancel, name), "updating" | "healthy" | "done");
    let expected = |s: &SimSite| Some(if told(&s.name) { "4.0.0" } else { "3.0.0" }.to_owned());
    settled(&fleet, "web", expected);
    let moved = fleet.sites.iter().filter(|s| told(&s.name)).count();
    assert!(moved > 0 && moved < SITES, "{moved}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&server, &cancelled)["sites"], at_cancel["sites"]);
    for site in &fleet.sites {
        assert_eq!(site.current("web"), expected(site), "{}", site.name);
    }
}

#[test]
fn maintenance_windows_and_site_locks_defer_sites_until_they_open() {
    let server = Server::start();
    let fleet = Fleet::start(&server, 60);
    // A window in UTC+5 that opens at the start of a coming minute, for the asia sites.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(5)));
    let lead = if now.second() < 30 { 1 } else { 2 };
    let opens = now
        .checked_add(jiff::Span::new().minutes(lead))
        .and_then(|t| t.with().second(0).subsec_nanosecond(0).build())
        .unwrap();
    let closes = opens.checked_add(jiff::Span::new().hours(1)).unwrap();
    let policy = format!(
        r#"[rollout.windowed]
waves = [{{ name = "all", percent = 100 }}]
bake = "0s"
healthy_for = "1s"
max_parallel = 200

[[window]]
select = 'labels.region == "asia"'
days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
hours = "{:02}:{:02}-{:02}:{:02}"
timezone = "Etc/GMT-5"
"#,
        opens.hour(),
        opens.minute(),
        closes.hour(),
        closes.minute()
    );
    server.install_policy("windowed.toml", &policy, "windowed");
    let locked = ["sim-000", "sim-001"];
    for name in locked {
        let out = std::process::Command::new(continuum_tests::bins::binary("continuum-agent"))
            .arg("--state-dir")
            .arg(&fleet.site(name).dir)
            .args(["lock", "--reason", "experiment running"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    wait::until(LIMIT, "the locks shown centrally", || {
        locked
            .iter()
            .all(|name| {
                server
                    .site(name)
                    .is_some_and(|s| s.to_string().contains("experiment running"))
            })
            .then_some(())
    });
    publish(&server, "edge", "1.0.0", None, "windowed");
    let id = start(&server, "edge", "1.0.0");
    let asia = |s: &SimSite| s.has("region", "asia");
    let waiting = watch(
        &server,
        &id,
        |_| {},
        |r| {
            fleet
                .sites
                .iter()
                .filter(|s| !asia(s) && !locked.contains(&s.name.as_str()))
                .all(|s| progress(r, &s.name) == "done")
        },
    );
    assert!(
        jiff::Timestamp::now() < opens.timestamp(),
        "the window opened too soon for the test"
    );
    for site in &fleet.sites {
        let why = waiting["sites"][&site.name]["reason"]
            .as_str()
            .unwrap_or_default();
        if locked.contains(&site.name.as_str()) {
            assert_eq!(why, "locked at the site: experiment running");
            assert!(site.current("edge").is_none());
        } else if asia(site) {
            assert_eq!(why, "outside its maintenance window", "{}", site.name);
            assert!(site.current("edge").is_none());
        }
    }
    // The window opens with the clock: the asia sites follow by themselves.
    watch(
        &server,
        &id,
        |_| {},
        |r| {
            fleet
                .sites
                .iter()
                .filter(|s| asia(s) && !locked.contains(&s.name.as_str()))
                .all(|s| progress(r, &s.name) == "done")
        },
    );
    assert!(jiff::Timestamp::now() >= opens.timestamp());
    let held = status(&server, &id);
    assert_eq!(
        state(&held),
        "running",
        "locked sites hold the rollout open"
    );
    for name in locked {
        let out = std::process::Command::new(continuum_tests::bins::binary("continuum-agent"))
            .arg("--state-dir")
            .arg(&fleet.site(name).dir)
            .arg("unlock")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    until(&server, &id, "completed");
    settled(&fleet, "edge", |_| Some("1.0.0".into()));
}

const YANKS: &str = r#"[rollout.fast]
waves = [{ name = "all", percent = 100 }]
bake = "0s"
healthy_for = "1s"
max_parallel = 100

[rollout.held]
waves = [{ name = "early", count = 10 }, { name = "rest", percent = 100 }]
bake = "1h"
healthy_for = "1s"
max_parallel = 100
"#;

#[test]
fn a_yanked_release_is_never_rolled_out_again_and_its_sites_move_to_the_newest_good_one() {
    let server = Server::start();
    server.install_policy("yanks.toml", YANKS, "held");
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

const REMOVALS: &str = r#"[rollout.fast]
waves = [{ name = "all", percent = 100 }]
bake = "0s"
healthy_for = "1s"
max_parallel = 100

[rollout.trickle]
waves = [{ name = "first", count = 3 }, { name = "rest", percent = 100 }]
bake = "1s"
healthy_for = "1s"
max_parallel = 4
"#;

#[test]
fn a_service_is_removed_in_waves_from_the_sites_selected_and_a_rollback_puts_it_back() {
    let server = Server::start();
    server.install_policy("removals.toml", REMOVALS, "trickle");
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
