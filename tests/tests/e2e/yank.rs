//! A yanked release with real agents and real containers: half the fleet runs it, the
//! yank moves exactly that half to the newest release that is not yanked, in new
//! containers, and the other half is not touched.

use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::docker::{Cleanup, ENGINE, TestImage, containers_of, unique};
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

fn release(version: &str, image: &str) -> String {
    format!(
        r#"[service]
name = "cache"
version = "{version}"

[container]
image = "{image}"
command = ["sh", "-c", "echo {version} > /release && while true; do sleep 1; done"]

[health]
exec = ["cat", "/release"]
interval = "1s"
timeout = "1s"

[placement]
rollout = "quick"
"#
    )
}

/// The release and id of the one running container of `site`.
fn running(site: &str, version: &str) -> String {
    wait::until(LIMIT, &format!("{site} running {version}"), || {
        let all = containers_of(site);
        let up: Vec<&Value> = all
            .iter()
            .filter(|c| c["State"]["Running"] == true)
            .collect();
        (up.len() == 1 && up[0]["Config"]["Labels"]["io.continuum.release"] == version)
            .then(|| up[0]["Id"].as_str().unwrap_or_default().to_owned())
    })
}

#[test]
fn a_yanked_release_on_half_the_fleet_moves_that_half_to_the_newest_good_release() {
    let server = Server::start();
    server.install_quick_policy();
    let sites: Vec<String> = (0..4).map(|_| unique("yk")).collect();
    let image = TestImage::build(server.root(), &unique("yank"), "y");
    let _cleanup = Cleanup {
        sites: sites.clone(),
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let mut agents = Vec::new();
    for site in &sites {
        let mut agent = Agent::new(server.root(), site);
        agent.join(&server.token(site, &[]), None).ok();
        agent.start_with(&["--engine", ENGINE, "--reconcile-interval", "1s"]);
        server.wait_online(site);
        agents.push(agent);
    }
    for version in ["1", "2"] {
        server.publish_shipped(
            &format!("cache-{version}.toml"),
            &release(version, &image.tag),
            &image.archive,
        );
    }
    let started = server.json(&["rollout", "start", "cache", "1"]);
    wait::until(LIMIT, "release 1 everywhere", || {
        let r = server.json(&["rollout", "status", started["id"].as_str()?]);
        (r["state"]["state"] == "completed").then_some(())
    });
    // Half the fleet moves to 2.
    let (moved, stayed) = sites.split_at(2);
    for site in moved {
        server.cli(&["site", "assign", site, "cache", "2"]).ok();
    }
    let before: Vec<String> = stayed.iter().map(|s| running(s, "1")).collect();
    for site in moved {
        running(site, "2");
    }

    let yanked = server.json(&[
        "release",
        "yank",
        "cache",
        "2",
        "--reason",
        "leaks file handles",
    ]);
    assert_eq!(yanked["moving_to"], "1", "{yanked}");
    let mut named: Vec<&str> = yanked["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    named.sort_unstable();
    let mut expected: Vec<&str> = moved.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(named, expected);
    let id = yanked["rollout"].as_str().unwrap().to_owned();
    wait::until(LIMIT, "the move completed", || {
        let r = server.json(&["rollout", "status", &id]);
        (r["state"]["state"] == "completed").then_some(())
    });
    for site in moved {
        running(site, "1");
    }
    let after: Vec<String> = stayed.iter().map(|s| running(s, "1")).collect();
    assert_eq!(before, after, "the sites that never ran 2 were not touched");

    // The yank shows wherever the release does, and nothing can give it out again.
    let releases = server.cli(&["releases"]).ok().stdout;
    assert!(
        releases.contains("yanked: leaks file handles"),
        "{releases}"
    );
    let refused = server.cli(&["site", "assign", &stayed[0], "cache", "2"]);
    assert!(
        refused.code != 0 && refused.stderr.contains("leaks file handles"),
        "{}",
        refused.stderr
    );
}
