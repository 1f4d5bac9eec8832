//! Decommissioning sites with real agents and real containers: a site online removes
//! every container of ours with its volumes, image and secrets, reports it, is revoked,
//! wipes its state and stays stopped; a site offline when ordered does it on return
//! (keeping its data when told); one that never returns is revoked at the deadline.

use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::docker::{
    Cleanup, TestImage, Volumes, containers_of, image_exists, unique, volume_exists,
};
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

/// A service with a named volume and a secret file.
fn release(service: &str, image: &str, volume: &str) -> String {
    format!(
        r#"[service]
name = "{service}"
version = "1"

[container]
image = "{image}"
command = ["sh", "-c", "echo up > /data/state && while true; do sleep 1; done"]
volumes = ["{volume}:/data"]

[health]
exec = ["sh", "-c", "test -s /run/secrets/token"]
interval = "1s"
timeout = "1s"

[[secrets]]
name = "token"
"#
    )
}

/// Waits until `site` shows `status`; shows the site and the agents' logs if it does not.
fn wait_status(server: &Server, site: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let now = server.site(site);
        if let Some(now) = now.as_ref().filter(|s| s["status"] == status) {
            return now.clone();
        }
        if std::time::Instant::now() > deadline {
            let logs = std::fs::read_dir(server.root().join("agent-logs"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n");
            panic!("site {site} not {status}: {now:?}\nagent logs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn decommissioned_sites_remove_everything_of_ours_now_on_return_or_are_revoked_at_the_deadline() {
    let server = Server::start();
    let shm = tempfile::Builder::new()
        .prefix("continuum-test-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let secret = shm.path().join("token-value");
    std::fs::write(&secret, "decommission-test-token").unwrap();
    server
        .cli(&[
            "secret",
            "set",
            "token",
            "--from-file",
            &secret.to_string_lossy(),
        ])
        .ok();
    let (now, later, never) = (unique("now"), unique("later"), unique("never"));
    let images = [
        TestImage::build(server.root(), &unique("dcn"), "n"),
        TestImage::build(server.root(), &unique("dcl"), "l"),
    ];
    let volumes = [unique("vol"), unique("vol")];
    let _volumes = Volumes(volumes.to_vec());
    let _cleanup = Cleanup {
        sites: vec![now.clone(), later.clone()],
        images: images.iter().map(|i| i.id.clone()).collect(),
        containers: vec![],
    };
    let mut agents = Vec::new();
    for (i, site) in [&now, &later].into_iter().enumerate() {
        let mut agent = Agent::new(server.root(), site);
        agent.join(&server.token(site, &[]), None).ok();
        agent.start_on_docker(&shm.path().join(site));
        server.wait_online(site);
        let service = format!("svc-{i}");
        server.publish_shipped(
            &format!("{service}.toml"),
            &release(&service, &images[i].tag, &volumes[i]),
            &images[i].archive,
        );
        server.cli(&["site", "assign", site, &service, "1"]).ok();
        wait::until(LIMIT, "the service healthy", || {
            let s = server.site(site)?;
            (s["services"][&service]["health"] == "healthy").then_some(())
        });
        assert!(volume_exists(&volumes[i]));
        assert!(shm.path().join(site).join(&service).is_dir());
        agents.push(agent);
    }
    let mut never_agent = Agent::new(server.root(), &never);
    never_agent.join(&server.token(&never, &[]), None).ok();

    // Online: done at once, and revoked.
    server.wait_online(&now);
    let told = server.cli(&["site", "decommission", &now]).ok().stdout;
    assert!(told.contains(&now), "{told}");
    let done = wait_status(&server, &now, "decommissioned");
    let report = done["decommission"]["report"].as_str().unwrap_or_default();
    assert!(
        report.contains("removed 1 container(s), 1 volume(s), 1 image(s)"),
        "{done}"
    );
    assert!(report.contains("secrets wiped"), "{report}");
    let status = agents[0].wait_exit(LIMIT);
    assert_eq!(status.code(), Some(3), "the agent stays stopped");
    assert!(containers_of(&now).is_empty());
    assert!(!volume_exists(&volumes[0]));
    assert!(!image_exists(&images[0].id));
    assert!(!shm.path().join(&now).exists(), "its secrets are gone");
    assert!(!agents[0].state_dir.exists(), "its state is wiped");

    // Offline: it waits for the site, which is left out of new rollouts meanwhile.
    agents[1].stop();
    wait::until(LIMIT, "the site offline", || {
        server
            .site(&later)
            .filter(|s| s["online"] == false)
            .map(drop)
    });
    let told = server
        .cli(&["site", "decommission", &later, "--keep-data"])
        .ok()
        .stdout;
    assert!(told.contains("is offline"), "{told}");
    let waiting = wait_status(&server, &later, "decommissioning");
    assert_eq!(waiting["decommission"]["keep_data"], true);
    let plan = server.json(&["rollout", "start", "svc-1", "1", "--dry-run"]);
    assert_eq!(plan["excluded"][&later], "being decommissioned", "{plan}");
    agents[1].start_on_docker(&shm.path().join(&later));
    let done = wait_status(&server, &later, "decommissioned");
    let report = done["decommission"]["report"].as_str().unwrap_or_default();
    assert!(
        report
            .contains("removed 1 container(s), 0 volume(s), 0 image(s) (volumes and images kept)"),
        "{done}"
    );
    assert_eq!(agents[1].wait_exit(LIMIT).code(), Some(3));
    assert!(containers_of(&later).is_empty());
    assert!(volume_exists(&volumes[1]), "--keep-data keeps the volume");
    assert!(image_exists(&images[1].id), "and the image");
    assert!(!agents[1].state_dir.exists());

    // Never back: revoked at the deadline, without its word.
    server
        .cli(&["site", "decommission", &never, "--deadline", "1s"])
        .ok();
    let revoked = wait_status(&server, &never, "revoked");
    assert!(revoked["decommission"]["done_at"].is_null(), "{revoked}");
    never_agent.start_with(&["--engine", "none"]);
    assert_eq!(never_agent.wait_exit(LIMIT).code(), Some(3));

    // Nothing is left to tell a revoked site.
    let again = server.cli(&["site", "decommission", &now]);
    assert!(
        again.code != 0 && again.stderr.contains("revoked already"),
        "{}",
        again.stderr
    );
    let audit = server.cli(&["audit"]).ok().stdout;
    assert!(audit.contains("site.decommission"), "{audit}");
}
