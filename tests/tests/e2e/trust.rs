//! Signed releases and per-site desired state, end to end: publish, assign, verify at
//! the site; offline release keys; a pinned image root; stale metadata.

use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::releases::{manifest, write};
use continuum_tests::server::{Server, ServerOptions};
use continuum_tests::wait;

fn image_root_sha256(server: &Server) -> String {
    let root = std::fs::read(server.data_dir().join("tuf/image/metadata/1.root.json")).unwrap();
    continuum_shared::tls::hex(&continuum_shared::tls::sha256(&root))
}

fn verified(server: &Server, site: &str, generation: u64) -> serde_json::Value {
    wait::until(
        Duration::from_secs(20),
        &format!("{site} to verify generation {generation}"),
        || {
            server.site(site).filter(|s| {
                s["trust"]["verified_generation"] == generation && s["trust"]["state"] == "verified"
            })
        },
    )
}

#[test]
fn a_published_release_assigned_to_a_site_is_verified_there_and_survives_a_restart() {
    let server = Server::start();
    let file = write(server.root(), "hello.toml", &manifest("hello", "1.0.0"));
    let out = server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    assert!(
        out.stdout.contains("published hello 1.0.0"),
        "{}",
        out.stdout
    );
    let releases = server.json(&["releases"]);
    assert_eq!(releases[0]["service"], "hello");
    assert_eq!(releases[0]["signed_by"], "control-plane");

    let mut agent = Agent::new(server.root(), "t1");
    let pin = image_root_sha256(&server);
    agent
        .join_with(&server.token("t1", &[]), &["--image-root-sha256", &pin])
        .ok();
    agent.start();
    server.wait_online("t1");
    let assigned = server.json(&["site", "assign", "t1", "hello", "1.0.0"]);
    assert_eq!(assigned["generation"], 1);
    verified(&server, "t1", 1);

    let status = agent.status();
    assert_eq!(status["desired"]["generation"], 1);
    assert_eq!(
        status["desired"]["releases"][0]["release"]["service"],
        "hello"
    );
    assert_eq!(status["desired_stale"], false);
    let text = continuum_tests::server::CliOutput::of(
        std::process::Command::new(continuum_tests::bins::binary("continuum-agent"))
            .arg("--state-dir")
            .arg(&agent.state_dir)
            .arg("status"),
    )
    .ok()
    .stdout;
    assert!(
        text.contains("generation 1 verified") && text.contains("hello 1.0.0"),
        "{text}"
    );

    // A second release and a second generation; a restart keeps what verified.
    let file = write(server.root(), "hello2.toml", &manifest("hello", "1.1.0"));
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    server.cli(&["site", "assign", "t1", "hello", "1.1.0"]).ok();
    verified(&server, "t1", 2);
    agent.kill();
    assert_eq!(
        agent.status()["desired"]["releases"][0]["release"]["version"],
        "1.1.0"
    );
    agent.start();
    agent.wait_online();
    assert_eq!(agent.status()["desired"]["generation"], 2);

    // Publishing the same bytes again is harmless; other bytes under a published
    // version are refused.
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    let changed = write(
        server.root(),
        "hello2b.toml",
        &manifest("hello", "1.1.0").replace("64MiB", "128MiB"),
    );
    let refused = server.cli(&["release", "publish", changed.to_str().unwrap()]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("already published with other content"),
        "{}",
        refused.stderr
    );
    // Assigning an unknown release is a clear error.
    let missing = server.cli(&["site", "assign", "t1", "hello", "9.9.9"]);
    assert!(
        missing.stderr.contains("not published"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_bad_manifest_is_refused_with_file_line_and_field_before_anything_is_signed() {
    let server = Server::start();
    let text =
        manifest("bad", "1.0.0").replace("memory = \"64MiB\"", "memory = \"lots\"\ncolour = 3");
    let file = write(server.root(), "bad.toml", &text);
    let out = server.cli(&["release", "publish", file.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("bad.toml:9: container.colour"),
        "{}",
        out.stderr
    );
    let text = manifest("bad", "1.0.0").replace("@sha256:", ":latest#");
    let file = write(server.root(), "unpinned.toml", &text);
    let out = server.cli(&["release", "publish", file.to_str().unwrap()]);
    assert!(
        out.stderr.contains("unpinned.toml:6: container.image"),
        "{}",
        out.stderr
    );
    assert_eq!(
        server.json(&["releases"]).as_array().unwrap().len(),
        0,
        "nothing was published"
    );
}

#[test]
fn a_release_key_kept_offline_signs_in_the_cli_and_a_foreign_key_is_refused() {
    let server = Server::start();
    let offline = server.root().join("release.key");
    std::fs::copy(server.data_dir().join("keys/release.key"), &offline).unwrap();
    let file = write(server.root(), "svc.toml", &manifest("svc", "2.0.0"));
    let out = server
        .cli(&[
            "release",
            "publish",
            file.to_str().unwrap(),
            "--key",
            offline.to_str().unwrap(),
        ])
        .ok();
    assert!(out.stdout.contains("offline release key"), "{}", out.stdout);
    assert_eq!(server.json(&["releases"])[0]["signed_by"], "offline");

    let foreign = server.data_dir().join("keys/image-online.key");
    let file = write(server.root(), "svc3.toml", &manifest("svc", "3.0.0"));
    let out = server.cli(&[
        "release",
        "publish",
        file.to_str().unwrap(),
        "--key",
        foreign.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not a release key"), "{}", out.stderr);
}

#[test]
fn a_site_that_pinned_another_image_root_refuses_the_control_planes_root() {
    let server = Server::start();
    let file = write(server.root(), "p.toml", &manifest("pinned", "1.0.0"));
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    let mut agent = Agent::new(server.root(), "wary");
    agent
        .join_with(
            &server.token("wary", &[]),
            &["--image-root-sha256", &"0".repeat(64)],
        )
        .ok();
    agent.start();
    server.wait_online("wary");
    server
        .cli(&["site", "assign", "wary", "pinned", "1.0.0"])
        .ok();
    let site = wait::until(Duration::from_secs(20), "the refusal", || {
        server
            .site("wary")
            .filter(|s| s["trust"]["state"] == "refused")
    });
    assert!(
        site["trust"]["reason"]
            .as_str()
            .unwrap()
            .contains("pinned at join"),
        "{site}"
    );
    assert!(agent.status()["desired"].is_null(), "nothing is in force");
}

#[test]
fn with_the_control_plane_gone_the_state_in_force_stays_and_is_reported_stale() {
    let mut server = Server::start_with(ServerOptions {
        extra: vec!["--timestamp-ttl".into(), "4s".into()],
        ..ServerOptions::default()
    });
    let file = write(server.root(), "s.toml", &manifest("steady", "1.0.0"));
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    let mut agent = Agent::new(server.root(), "lonely");
    agent.join(&server.token("lonely", &[]), None).ok();
    agent.start();
    server.wait_online("lonely");
    server
        .cli(&["site", "assign", "lonely", "steady", "1.0.0"])
        .ok();
    verified(&server, "lonely", 1);
    server.kill();
    agent.kill();
    // Restarted with no control plane, past the timestamp's expiry.
    agent.start();
    let status = wait::until(
        Duration::from_secs(15),
        "the desired state to go stale",
        || {
            let s = agent.status();
            (s["desired_stale"] == true).then_some(s)
        },
    );
    assert_eq!(
        status["desired"]["generation"], 1,
        "the state in force is kept"
    );
    assert!(status["running"].as_bool().unwrap());
}

#[test]
fn keys_move_offline_and_rotate_while_sites_follow_by_themselves() {
    let server = Server::start();
    let publish = |version: &str, key: Option<&std::path::Path>| {
        let file = write(
            server.root(),
            &format!("r{version}.toml"),
            &manifest("rot", version),
        );
        let mut args = vec!["release", "publish", file.to_str().unwrap()];
        if let Some(key) = key {
            args.extend(["--key", key.to_str().unwrap()]);
        }
        server.cli(&args)
    };
    publish("1.0.0", None).ok();
    let mut agent = Agent::new(server.root(), "follower");
    agent.join(&server.token("follower", &[]), None).ok();
    agent.start();
    server.wait_online("follower");
    server
        .cli(&["site", "assign", "follower", "rot", "1.0.0"])
        .ok();
    verified(&server, "follower", 1);

    // Root (2 of 3) and release keys move offline; the control plane deletes its copies.
    let offline = server.root().join("offline");
    let out = server
        .cli(&[
            "keys",
            "init",
            "--dir",
            offline.to_str().unwrap(),
            "--keys",
            "3",
            "--threshold",
            "2",
        ])
        .ok();
    assert!(out.stdout.contains("deleted its copy"), "{}", out.stdout);
    assert!(!server.data_dir().join("keys/image-root.key").exists());
    assert!(!server.data_dir().join("keys/release.key").exists());
    let keys = server.json(&["keys", "show"]);
    assert_eq!(keys["holds_release_key"], false);
    assert_eq!(keys["image_roles"]["root"]["threshold"], 2);
    let refused = publish("2.0.0", None);
    assert!(refused.stderr.contains("--key"), "{}", refused.stderr);
    publish("2.0.0", Some(&offline.join("release.key"))).ok();
    server
        .cli(&["site", "assign", "follower", "rot", "2.0.0"])
        .ok();
    verified(&server, "follower", 2);

    // The online key rotates, signed by two of the three offline root keys; one is not
    // enough.
    let one = offline.join("root-1.key");
    let two = offline.join("root-2.key");
    let short = server.cli(&[
        "keys",
        "rotate",
        "online",
        "--root-key",
        one.to_str().unwrap(),
    ]);
    assert!(short.stderr.contains("threshold"), "{}", short.stderr);
    server
        .cli(&[
            "keys",
            "rotate",
            "online",
            "--root-key",
            one.to_str().unwrap(),
            "--root-key",
            two.to_str().unwrap(),
        ])
        .ok();
    server
        .cli(&["site", "assign", "follower", "rot", "1.0.0"])
        .ok();
    verified(&server, "follower", 3);

    // The release key rotates; the old one no longer signs anything.
    let new_release = server.root().join("release-2.key");
    server
        .cli(&[
            "keys",
            "rotate",
            "release",
            "--out",
            new_release.to_str().unwrap(),
            "--root-key",
            one.to_str().unwrap(),
            "--root-key",
            two.to_str().unwrap(),
        ])
        .ok();
    let old_key = publish("3.0.0", Some(&offline.join("release.key")));
    assert!(
        old_key.stderr.contains("not a release key"),
        "{}",
        old_key.stderr
    );
    publish("3.0.0", Some(&new_release)).ok();
    server
        .cli(&["site", "assign", "follower", "rot", "3.0.0"])
        .ok();
    verified(&server, "follower", 4);

    // The director key rotates: every site's desired state is signed again.
    let rotated = server.json(&["keys", "rotate", "director"]);
    assert_eq!(rotated["sites_resigned"], 1);
    verified(&server, "follower", 5);
    assert_eq!(
        agent.status()["desired"]["releases"][0]["release"]["version"],
        "3.0.0"
    );
    let audit = server.json(&["audit"]).to_string();
    for action in [
        "keys.rotate-image-root",
        "keys.prepare-online",
        "keys.rotate-director",
    ] {
        assert!(audit.contains(action), "{action} is audited");
    }
}
