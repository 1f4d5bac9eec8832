//! A site's life: restarts on both sides, revocation, certificate renewal (before and
//! after expiry), and a control plane restored from backup onto a fresh machine.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::server::{Server, ServerOptions};
use continuum_tests::wait;

fn online_agents(server: &Server, names: &[&str]) -> Vec<Agent> {
    names
        .iter()
        .map(|name| {
            let mut agent = Agent::new(server.root(), name);
            agent.join(&server.token(name, &[]), None).ok();
            agent.start();
            agent
        })
        .inspect(|agent| {
            agent.wait_online();
        })
        .collect()
}

#[test]
fn sites_reconnect_by_themselves_after_a_control_plane_restart_with_jittered_backoff() {
    let mut server = Server::start();
    let agents = online_agents(&server, &["j1", "j2", "j3"]);
    server.stop();
    // Down long enough for several attempts each (base 300 ms, doubling).
    wait::until(
        Duration::from_secs(20),
        "every agent to retry a few times",
        || {
            agents
                .iter()
                .all(|a| {
                    a.status()["run"]["recent_retry_delays_ms"]
                        .as_array()
                        .is_some_and(|d| d.len() >= 3)
                })
                .then_some(())
        },
    );
    server.restart();
    for name in ["j1", "j2", "j3"] {
        server.wait_online(name);
    }
    let delays: Vec<Vec<u64>> = agents
        .iter()
        .map(|a| {
            a.wait_online()["run"]["recent_retry_delays_ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect()
        })
        .collect();
    for sequence in &delays {
        // Equal jitter: the first delay lies in the upper half of the 300 ms ceiling,
        // and the ceiling doubles per failure up to the 3 s cap.
        assert!((150..=300).contains(&sequence[0]), "{sequence:?}");
        assert!(sequence.iter().all(|d| *d <= 3000), "{sequence:?}");
        assert!(sequence[2] >= 600, "the ceiling grows: {sequence:?}");
    }
    assert!(
        delays[0] != delays[1] && delays[1] != delays[2] && delays[0] != delays[2],
        "agents back off in step: {delays:?}"
    );
    for agent in &agents {
        assert_eq!(agent.status()["site"], agent.identity()["site"]);
    }
}

#[test]
fn a_revoked_site_is_cut_off_at_once_and_refused_from_then_on() {
    let server = Server::start();
    let mut agents = online_agents(&server, &["victim", "bystander"]);
    let out = server.cli(&["site", "revoke", "victim"]).ok();
    assert!(out.stdout.contains("revoked"), "{}", out.stdout);
    let status = agents[0].wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "a revoked agent exits with code 3");
    assert_eq!(agents[0].status()["run"]["state"], "revoked");
    assert_eq!(server.site("victim").unwrap()["status"], "revoked");

    // Starting it again does not get it back in.
    agents[0].start();
    assert_eq!(agents[0].wait_exit(Duration::from_secs(10)).code(), Some(3));
    assert!(agents[0].log().contains("revoked"), "{}", agents[0].log());
    // The other site never noticed.
    assert_eq!(server.site("bystander").unwrap()["status"], "online");
    // Revoking an unknown site is a clear error.
    let missing = server.cli(&["site", "revoke", "nobody"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("no site named"),
        "{}",
        missing.stderr
    );
}

#[test]
fn certificates_renew_before_they_expire_without_dropping_the_session() {
    let server = Server::start_with(ServerOptions {
        site_cert_ttl: "9s".into(),
        ..ServerOptions::default()
    });
    let mut agents = online_agents(&server, &["renewer"]);
    let first = agents[0].identity();
    let renewed = wait::until(Duration::from_secs(20), "a renewed certificate", || {
        let now = agents[0].identity();
        (now["not_after"].as_i64() > first["not_after"].as_i64()).then_some(now)
    });
    assert_ne!(renewed["cert_der"], first["cert_der"]);
    assert_eq!(
        agents[0].status()["run"]["sessions"],
        1,
        "renewal happens inside the session"
    );
    // Past the first certificate's expiry, a restarted agent connects with the new one.
    wait::until(
        Duration::from_secs(15),
        "the first certificate to expire",
        || (continuum_shared::unix_now() > first["not_after"].as_i64().unwrap()).then_some(()),
    );
    agents[0].kill();
    agents[0].start();
    agents[0].wait_online();
    assert!(
        !agents[0].log().contains("expired while offline"),
        "{}",
        agents[0].log()
    );
    assert!(server.site("renewer").unwrap()["online"].as_bool().unwrap());
}

#[test]
fn a_certificate_that_expired_while_offline_is_renewed_on_return() {
    let server = Server::start_with(ServerOptions {
        site_cert_ttl: "5s".into(),
        ..ServerOptions::default()
    });
    let mut agent = Agent::new(server.root(), "sleeper");
    agent.join(&server.token("sleeper", &[]), None).ok();
    let first = agent.identity();
    wait::until(Duration::from_secs(15), "the certificate to expire", || {
        (continuum_shared::unix_now() > first["not_after"].as_i64().unwrap() + 1).then_some(())
    });
    agent.start();
    agent.wait_online();
    assert!(
        agent.log().contains("expired while offline"),
        "{}",
        agent.log()
    );
    assert!(agent.identity()["not_after"].as_i64() > first["not_after"].as_i64());
    server.wait_online("sleeper");
}

#[test]
fn a_backup_restored_onto_a_fresh_data_directory_takes_the_sites_back() {
    let mut server = Server::start();
    let _agents = online_agents(&server, &["b1", "b2"]);
    let archive = server.root().join("backup.tar");
    server.cli(&["backup", archive.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    server.kill(); // the machine is lost

    let fresh = server.root().join("new-machine-data");
    // Restoring over an existing control plane is refused.
    let refused = server.cli(&[
        "restore",
        archive.to_str().unwrap(),
        "--data-dir",
        server.data_dir().to_str().unwrap(),
    ]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("already holds a control plane"),
        "{}",
        refused.stderr
    );
    let restored = server
        .cli(&[
            "restore",
            archive.to_str().unwrap(),
            "--data-dir",
            fresh.to_str().unwrap(),
        ])
        .ok();
    assert!(restored.stdout.contains("Restored"), "{}", restored.stdout);

    server.set_data_dir(fresh);
    server.restart();
    assert!(
        !server.banner().contains("created:"),
        "nothing is created anew: {}",
        server.banner()
    );
    // The agents notice the old control plane is gone through QUIC's idle timeout
    // (20 s, nothing told them), then reconnect within their backoff.
    for name in ["b1", "b2"] {
        server.wait_online_within(name, Duration::from_secs(45));
    }
    // The admin credential from before the loss still works, and the audit log survived.
    let audit = server.json(&["audit"]);
    for name in ["b1", "b2"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "token.create" && e["target"] == name),
            "{audit}"
        );
    }
}
