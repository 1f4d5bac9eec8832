//! Rollouts end to end: real agents running real containers, a policy file loaded by
//! the control plane, a two-wave rollout that completes, and a rollout of a release
//! that fails health stopping after the canary, which returns to the previous release.

use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::docker::{Cleanup, ENGINE, TestImage, unique};
use continuum_tests::releases::write;
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

const POLICY: &str = r#"[rollout.two]
waves = [
  { name = "first", count = 1 },
  { name = "rest", percent = 100 },
]
bake = "2s"
healthy_for = "2s"
max_parallel = 5
failure_budget = 0
on_failure = "pause"
"#;

fn release(version: &str, image: &str, health_path: &str) -> String {
    format!(
        r#"[service]
name = "web"
version = "{version}"

[container]
image = "{image}"
command = ["sh", "-c", "mkdir -p /www && echo {version} > /www/index.html && exec httpd -f -p 80 -h /www"]

[health]
http = "http://container:80{health_path}"
interval = "1s"
timeout = "1s"

[update]
strategy = "start-first"
healthy_within = "5s"
"#
    )
}

fn rollout(server: &Server, id: &str) -> Value {
    server.json(&["rollout", "status", id])
}

fn until_state(server: &Server, id: &str, state: &str) -> Value {
    wait::until(LIMIT, &format!("rollout {id} {state}"), || {
        Some(rollout(server, id)).filter(|r| r["state"]["state"] == state)
    })
}

fn running(server: &Server, site: &str) -> Value {
    server.site(site).unwrap()["services"]["web"]["running"].clone()
}

#[test]
fn a_two_wave_rollout_completes_and_a_failing_release_stops_after_the_canary() {
    let mut server = Server::start();
    let sites = [unique("roll"), unique("roll")];
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let _cleanup = Cleanup {
        sites: sites.to_vec(),
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let mut agents = Vec::new();
    for site in &sites {
        let token = server.token(site, &[]);
        let mut agent = Agent::new(server.root(), site);
        agent.join(&token, None).ok();
        agent.start_with(&[
            "--engine",
            ENGINE,
            "--reconcile-interval",
            "1s",
            "--reconnect-base",
            "300ms",
            "--reconnect-max",
            "2s",
        ]);
        server.wait_online(site);
        agents.push(agent);
    }
    server.install_policy("two.toml", POLICY, "two");
    for (version, path) in [("1", "/"), ("2", "/"), ("3", "/missing")] {
        server.publish_shipped(
            &format!("v{version}.toml"),
            &release(version, &image.tag, path),
            &image.archive,
        );
    }

    for version in ["1", "2"] {
        let plan = server.json(&[
            "rollout",
            "start",
            "web",
            version,
            "--policy",
            "two",
            "--dry-run",
        ]);
        assert_eq!(
            plan["waves"][0]["sites"].as_array().unwrap().len(),
            1,
            "{plan}"
        );
        let started = server.json(&["rollout", "start", "web", version, "--policy", "two"]);
        assert_eq!(
            started["waves"], plan["waves"],
            "the dry run planned what the rollout does"
        );
        let id = started["id"].as_str().unwrap().to_owned();
        if version == "2" {
            // Killed mid-rollout, the control plane picks it up again after restart.
            server.kill();
            server.restart();
            for site in &sites {
                // The agents notice the dead connection at QUIC's idle timeout.
                server.wait_online_within(site, LIMIT);
            }
        }
        let done = until_state(&server, &id, "completed");
        assert!(
            done["sites"]
                .as_object()
                .unwrap()
                .values()
                .all(|p| p["state"] == "done"),
            "{done}"
        );
        for site in &sites {
            assert_eq!(running(&server, site), version);
        }
    }

    // 3 never becomes healthy: the canary fails, the budget (0) is spent, the rollout
    // pauses, the canary is back on 2 and the other site never got 3.
    let started = server.json(&["rollout", "start", "web", "3", "--policy", "two"]);
    let id = started["id"].as_str().unwrap().to_owned();
    let canary = started["waves"][0]["sites"][0].as_str().unwrap().to_owned();
    let other = sites.iter().find(|s| **s != canary).unwrap();
    let paused = until_state(&server, &id, "paused");
    assert!(
        paused["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("failure budget"),
        "{paused}"
    );
    assert_eq!(paused["sites"][&canary]["state"], "failed");
    assert_eq!(paused["sites"][other.as_str()]["state"], "pending");
    wait::until(LIMIT, "the canary back on 2", || {
        (running(&server, &canary) == "2").then_some(())
    });
    let desired = server.json(&["site", "desired", &canary]);
    assert_eq!(desired["releases"]["web"]["version"], "2", "{desired}");
    assert_eq!(running(&server, other), "2");
    let shown = server.cli(&["rollout", "status", &id]).ok().stdout;
    assert!(
        shown.contains("paused") && shown.contains(&format!("failed: {canary}")),
        "{shown}"
    );

    // The operator cancels it: nothing is left in progress.
    let cancelled = server.json(&["rollout", "cancel", &id]);
    assert_eq!(cancelled["state"]["state"], "cancelled");
}

#[test]
fn a_site_lock_defers_its_update_until_released_and_is_shown_centrally() {
    let server = Server::start();
    let (a, b) = ("lock-a", "lock-b");
    let mut agents = Vec::new();
    for site in [a, b] {
        let token = server.token(site, &[]);
        let mut agent = Agent::new(server.root(), site);
        agent.join(&token, None).ok();
        agent.start();
        server.wait_online(site);
        agents.push(agent);
    }
    let lock = std::process::Command::new(continuum_tests::bins::binary("continuum-agent"))
        .arg("--state-dir")
        .arg(&agents[1].state_dir)
        .args(["lock", "--reason", "kernel upgrade until Friday"])
        .output()
        .unwrap();
    assert!(lock.status.success(), "{lock:?}");
    wait::until(Duration::from_secs(20), "the lock shown centrally", || {
        server
            .site(b)
            .filter(|s| s["lock"]["reason"] == "kernel upgrade until Friday")
    });
    assert!(
        server
            .cli(&["sites"])
            .ok()
            .stdout
            .contains("online (locked)")
    );
    assert!(agents[1].status()["lock"]["reason"] == "kernel upgrade until Friday");

    std::fs::write(
        server.data_dir().join("policies/once.toml"),
        "[rollout.once]\nwaves = [{ name = \"all\", percent = 100 }]\nmax_parallel = 5\n",
    )
    .unwrap();
    wait::until(Duration::from_secs(20), "the policy", || {
        server.json(&["policies"])["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "once")
            .then_some(())
    });
    let file = write(
        server.root(),
        "hello.toml",
        &continuum_tests::releases::manifest("hello", "1.0.0"),
    );
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    let started = server.json(&["rollout", "start", "hello", "1.0.0", "--policy", "once"]);
    let id = started["id"].as_str().unwrap().to_owned();
    let waiting = wait::until(Duration::from_secs(20), "the locked site waiting", || {
        Some(rollout(&server, &id)).filter(|r| r["sites"][b]["state"] == "waiting")
    });
    assert_eq!(
        waiting["sites"][b]["reason"],
        "locked at the site: kernel upgrade until Friday"
    );
    assert_eq!(waiting["sites"][a]["state"], "updating");
    let none = server.cli(&["site", "desired", b]);
    assert!(none.stderr.contains("no desired state"), "{none:?}");

    let unlock = std::process::Command::new(continuum_tests::bins::binary("continuum-agent"))
        .arg("--state-dir")
        .arg(&agents[1].state_dir)
        .arg("unlock")
        .output()
        .unwrap();
    assert!(unlock.status.success());
    wait::until(
        Duration::from_secs(20),
        "the released site updating",
        || Some(rollout(&server, &id)).filter(|r| r["sites"][b]["state"] == "updating"),
    );
    assert_eq!(
        server.json(&["site", "desired", b])["releases"]["hello"]["version"],
        "1.0.0"
    );
    assert!(server.site(b).unwrap()["lock"].is_null());

    // A newer rollout of the same service supersedes this one.
    let file = write(
        server.root(),
        "hello2.toml",
        &continuum_tests::releases::manifest("hello", "1.0.1"),
    );
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    let newer = server.json(&["rollout", "start", "hello", "1.0.1", "--policy", "once"]);
    let old = rollout(&server, &id);
    assert_eq!(old["state"]["state"], "superseded");
    assert_eq!(old["state"]["reason"], newer["id"]);
    wait::until(
        Duration::from_secs(20),
        "both sites told to run 1.0.1",
        || {
            [a, b]
                .iter()
                .all(|s| {
                    server.json(&["site", "desired", s])["releases"]["hello"]["version"] == "1.0.1"
                })
                .then_some(())
        },
    );
}
