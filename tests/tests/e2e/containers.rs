//! Sites deploy their own containers on the real Docker engine: releases shipped as
//! image archives, applied as `docker inspect` shows, switched, rolled back by
//! themselves when unhealthy, repaired after hand edits, kept through control-plane
//! outages and agent restarts, and refused when the archive was tampered with.

use std::path::Path;
use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::docker::{
    Cleanup, ENGINE, Podman, Registry, SocketProxy, TestImage, containers_of, docker, free_port,
    http_get, unique,
};
use continuum_tests::releases::write;
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// A web service answering its version on `port`, with env, a volume and limits.
fn web(
    version: &str,
    image: &str,
    port: u16,
    volume: &Path,
    health_path: &str,
    within: &str,
) -> String {
    format!(
        r#"[service]
name = "web"
version = "{version}"

[container]
image = "{image}"
command = ["sh", "-c", "mkdir -p /www && echo $GREETING > /www/index.html && exec httpd -f -p 80 -h /www"]
env = {{ GREETING = "hello from {version}" }}
ports = ["127.0.0.1:{port}:80/tcp"]
volumes = ["{volume}:/data:ro"]
memory = "32MiB"
cpus = 0.5
restart = "unless-stopped"

[health]
http = "http://127.0.0.1:{port}{health_path}"
interval = "1s"
timeout = "1s"

[update]
healthy_within = "{within}"
"#,
        volume = volume.display()
    )
}

fn publish(server: &Server, name: &str, text: &str, archive: &Path) {
    server.publish_shipped(name, text, archive);
}

fn assign(server: &Server, site: &str, version: &str) {
    server.cli(&["site", "assign", site, "web", version]).ok();
}

/// Waits until the control plane shows `web` at `site` matching `check`.
fn service(server: &Server, site: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait::until(LIMIT, &format!("web at {site}: {what}"), || {
        server
            .site(site)
            .map(|s| s["services"]["web"].clone())
            .filter(|w| check(w))
    })
}

fn answers(port: u16, text: &str) {
    wait::until(LIMIT, &format!("port {port} to answer {text:?}"), || {
        http_get(port).filter(|body| body == text)
    });
}

fn web_containers(site: &str) -> Vec<Value> {
    containers_of(site)
        .into_iter()
        .filter(|c| c["Config"]["Labels"]["io.continuum.service"] == "web")
        .collect()
}

fn joined_agent(server: &Server, site: &str) -> Agent {
    let token = server.token(site, &[]);
    let mut agent = Agent::new(server.root(), site);
    agent.join(&token, None).ok();
    agent.start_with(&[
        "--reconnect-base",
        "300ms",
        "--reconnect-max",
        "2s",
        "--engine",
        ENGINE,
        "--reconcile-interval",
        "1s",
    ]);
    server.wait_online(site);
    agent
}

#[test]
fn a_site_runs_its_release_switches_rolls_back_by_itself_and_repairs_drift() {
    let server = Server::start();
    let site = unique("dock");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let bystander = unique("bystander");
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone()],
        containers: vec![bystander.clone()],
    };
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let _agent = joined_agent(&server, &site);

    // v1: shipped as an archive, loaded by the site, answering on its port.
    publish(
        &server,
        "v1.toml",
        &web("1", &image.tag, port, &volume, "/", "30s"),
        &image.archive,
    );
    assign(&server, &site, "1");
    answers(port, "hello from 1");
    service(&server, &site, "running 1, healthy", |w| {
        w["running"] == "1" && w["phase"] == "running" && w["health"] == "healthy"
    });
    let inspected = &web_containers(&site)[0];
    let env = inspected["Config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "GREETING=hello from 1"), "{env:?}");
    let host = &inspected["HostConfig"];
    assert_eq!(host["Memory"], 32 << 20);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(
        host["Binds"][0],
        format!("{}:/data:ro", volume.display()),
        "{host}"
    );
    assert_eq!(inspected["Image"], image.id);

    // A container that is not ours, from the same image, is never touched.
    docker(&["create", "--name", &bystander, &image.id, "sleep", "1000"]);

    // v2 (stop-first): the site switches.
    publish(
        &server,
        "v2.toml",
        &web("2", &image.tag, port, &volume, "/", "30s"),
        &image.archive,
    );
    assign(&server, &site, "2");
    answers(port, "hello from 2");
    let v2 = service(&server, &site, "running 2, healthy", |w| {
        w["running"] == "2" && w["phase"] == "running" && w["last_known_good"] == "2"
    });
    assert_eq!(v2["desired"], "2");
    wait::until(LIMIT, "one web container left", || {
        (web_containers(&site).len() == 1).then_some(())
    });

    // v3 never becomes healthy: the site goes back to v2 by itself and says why.
    publish(
        &server,
        "v3.toml",
        &web("3", &image.tag, port, &volume, "/missing", "4s"),
        &image.archive,
    );
    assign(&server, &site, "3");
    let failed = service(&server, &site, "rolled back from 3", |w| {
        w["failed"] == "3" && w["phase"] == "rolled-back" && w["running"] == "2"
    });
    let failure = failed["failure"].as_str().unwrap();
    assert!(
        failure.contains("did not become healthy within"),
        "{failure}"
    );
    assert!(
        failure.contains("404"),
        "the probe's answer is reported: {failure}"
    );
    answers(port, "hello from 2");
    let shown = server.cli(&["site", "show", &site]).ok().stdout;
    assert!(
        shown.contains("rolledback") || shown.contains("rolled"),
        "{shown}"
    );

    // Drift: removed by hand, it comes back; stopped by hand, it starts again.
    let before = web_containers(&site)[0]["Id"].as_str().unwrap().to_owned();
    docker(&["rm", "-f", &before]);
    answers(port, "hello from 2");
    let after = web_containers(&site)[0]["Id"].as_str().unwrap().to_owned();
    assert_ne!(before, after, "a new container replaced the removed one");
    docker(&["stop", "-t", "1", &after]);
    wait::until(LIMIT, "the stopped container to run again", || {
        (web_containers(&site)[0]["State"]["Running"] == true).then_some(())
    });
    answers(port, "hello from 2");

    // The bystander is still there, untouched.
    let state = docker(&["inspect", "-f", "{{.State.Status}}", &bystander]);
    assert_eq!(state, "created");
}

#[test]
fn services_keep_running_through_an_outage_and_an_agent_restart_and_a_tampered_archive_is_refused()
{
    let mut server = Server::start();
    let site = unique("dock");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let other = TestImage::build(server.root(), &unique("web"), "two");
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone(), other.id.clone()],
        containers: vec![],
    };
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let mut agent = joined_agent(&server, &site);
    publish(
        &server,
        "v1.toml",
        &web("1", &image.tag, port, &volume, "/", "30s"),
        &image.archive,
    );
    assign(&server, &site, "1");
    answers(port, "hello from 1");
    service(&server, &site, "running 1", |w| w["phase"] == "running");
    let id = web_containers(&site)[0]["Id"].as_str().unwrap().to_owned();

    // Control plane down, agent restarted: the service never stops.
    server.stop();
    agent.stop();
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
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(http_get(port).as_deref(), Some("hello from 1"));
    }
    let containers = web_containers(&site);
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers[0]["Id"],
        id.as_str(),
        "the same container still runs"
    );
    let local = agent.status();
    assert_eq!(local["services"]["web"]["running"], "1", "{local}");
    server.restart();
    server.wait_online(&site);
    service(&server, &site, "resynced", |w| w["running"] == "1");

    // v2's archive is altered in the control plane's store: the site refuses it and
    // keeps v1 running.
    let v2 = web("2", &other.tag, port, &volume, "/", "30s");
    publish(&server, "v2.toml", &v2, &other.archive);
    let sha = continuum_shared::tls::hex(&continuum_shared::tls::sha256(
        &std::fs::read(&other.archive).unwrap(),
    ));
    let blob = server.data_dir().join("tuf/image/blobs").join(&sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    assign(&server, &site, "2");
    let refused = service(&server, &site, "refusing 2, keeping 1", |w| {
        w["failed"] == "2" && w["phase"] == "rolled-back" && w["running"] == "1"
    });
    let failure = refused["failure"].as_str().unwrap();
    assert!(failure.contains("SHA-256"), "{failure}");
    assert_eq!(refused["running"], "1");
    assert_eq!(http_get(port).as_deref(), Some("hello from 1"));
    assert_eq!(web_containers(&site)[0]["Id"], id.as_str());
}

/// A web service publishing no host port, probed on the container's own address.
fn internal(version: &str, image: &str) -> String {
    format!(
        r#"[service]
name = "web"
version = "{version}"

[container]
image = "{image}"
command = ["sh", "-c", "mkdir -p /www && echo {version} > /www/index.html && exec httpd -f -p 80 -h /www"]

[health]
http = "http://container:80/"
interval = "1s"
timeout = "1s"

[update]
strategy = "start-first"
healthy_within = "30s"
"#
    )
}

#[test]
fn start_first_switches_and_two_agents_on_one_engine_keep_to_their_own() {
    let server = Server::start();
    let (a, b) = (unique("dock"), unique("dock"));
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let _cleanup = Cleanup {
        sites: vec![a.clone(), b.clone()],
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let _agent_a = joined_agent(&server, &a);
    let _agent_b = joined_agent(&server, &b);
    for version in ["1", "2"] {
        publish(
            &server,
            &format!("i{version}.toml"),
            &internal(version, &image.tag),
            &image.archive,
        );
    }
    assign(&server, &a, "1");
    assign(&server, &b, "1");
    for site in [&a, &b] {
        service(&server, site, "running 1, healthy", |w| {
            w["running"] == "1" && w["health"] == "healthy"
        });
    }
    let b_container = web_containers(&b)[0]["Id"].clone();

    // Site a moves to 2, starting it before stopping 1; site b is not touched.
    assign(&server, &a, "2");
    service(&server, &a, "running 2, healthy", |w| {
        w["running"] == "2" && w["phase"] == "running" && w["health"] == "healthy"
    });
    wait::until(LIMIT, "site a's old container to go", || {
        let left = web_containers(&a);
        (left.len() == 1).then_some(left)
    });
    assert_eq!(
        web_containers(&a)[0]["Config"]["Labels"]["io.continuum.release"],
        "2"
    );
    let at_b = web_containers(&b);
    assert_eq!(at_b.len(), 1);
    assert_eq!(
        at_b[0]["Id"], b_container,
        "the other site's container is untouched"
    );
    assert_eq!(at_b[0]["State"]["Running"], true);
}

#[test]
fn an_agent_killed_at_any_step_of_a_deploy_converges_after_restart() {
    let server = Server::start();
    let site = unique("dock");
    let steps = [
        "after-fetch",
        "after-load",
        "after-stop",
        "after-create",
        "before-commit",
    ];
    let images: Vec<TestImage> = (0..=steps.len())
        .map(|i| TestImage::build(server.root(), &unique("web"), &format!("marker {i}")))
        .collect();
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: images.iter().map(|i| i.id.clone()).collect(),
        containers: vec![],
    };
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let mut agent = joined_agent(&server, &site);
    for (i, image) in images.iter().enumerate() {
        let version = (i + 1).to_string();
        let text = web(&version, &image.tag, port, &volume, "/", "30s");
        publish(&server, &format!("v{version}.toml"), &text, &image.archive);
    }
    assign(&server, &site, "1");
    answers(port, "hello from 1");
    service(&server, &site, "running 1", |w| w["phase"] == "running");

    let options = [
        "--engine",
        ENGINE,
        "--reconcile-interval",
        "1s",
        "--reconnect-base",
        "300ms",
        "--reconnect-max",
        "2s",
    ];
    for (i, step) in steps.iter().enumerate() {
        let version = (i + 2).to_string();
        agent.stop();
        agent.start_with_env(&options, &[("CONTINUUM_AGENT_CRASH_AT", step)]);
        server.wait_online(&site);
        assign(&server, &site, &version);
        let status = agent.wait_exit(LIMIT);
        assert!(!status.success(), "the agent stopped at {step}: {status:?}");
        agent.start_with(&options);
        answers(port, &format!("hello from {version}"));
        let report = service(
            &server,
            &site,
            &format!("running {version} after a crash {step}"),
            |w| {
                w["running"] == version.as_str()
                    && w["phase"] == "running"
                    && w["last_known_good"] == version.as_str()
            },
        );
        assert!(report["failed"].is_null(), "{step}: {report}");
        wait::until(LIMIT, "one web container", || {
            (web_containers(&site).len() == 1).then_some(())
        });
    }
    // Images of releases nothing runs any more are removed; the one in use stays.
    let (current, old) = images.split_last().unwrap();
    wait::until(LIMIT, "old images to be removed", || {
        old.iter().all(|i| !image_held(&i.id)).then_some(())
    });
    assert!(image_held(&current.id));
}

fn image_held(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_running_service_is_probed_at_its_own_interval_not_the_reconcile_interval() {
    let server = Server::start();
    let site = unique("dock");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let token = server.token(&site, &[]);
    let mut agent = Agent::new(server.root(), &site);
    agent.join(&token, None).ok();
    agent.start_with(&["--engine", ENGINE, "--reconcile-interval", "120s"]);
    server.wait_online(&site);
    publish(
        &server,
        "v1.toml",
        &web("1", &image.tag, port, &volume, "/", "30s"),
        &image.archive,
    );
    assign(&server, &site, "1");
    service(&server, &site, "running 1, healthy", |w| {
        w["phase"] == "running" && w["health"] == "healthy"
    });
    let id = web_containers(&site)[0]["Id"].as_str().unwrap().to_owned();
    docker(&["exec", &id, "rm", "/www/index.html"]);
    let sick = wait::until(
        Duration::from_secs(20),
        "the service reported unhealthy",
        || {
            server
                .site(&site)
                .map(|s| s["services"]["web"].clone())
                .filter(|w| w["health"] == "unhealthy")
        },
    );
    assert!(
        sick["last_error"].as_str().unwrap().contains("404"),
        "{sick}"
    );
}

#[test]
fn the_site_policy_refuses_what_the_site_does_not_allow_and_reloads_by_itself() {
    let server = Server::start();
    let site = unique("dock");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let token = server.token(&site, &[]);
    let agent = Agent::new(server.root(), &site);
    agent.join(&token, None).ok();
    let policy = agent.state_dir.join("site-policy.toml");
    std::fs::write(
        &policy,
        "[admission]\nallowed_registries = [\"registry.example.org\"]\n",
    )
    .unwrap();
    let mut agent = agent;
    agent.start_with(&["--engine", ENGINE, "--reconcile-interval", "1s"]);
    server.wait_online(&site);

    // Archives are not among the allowed sources: refused, nothing runs.
    publish(
        &server,
        "v1.toml",
        &web("1", &image.tag, port, &volume, "/", "30s"),
        &image.archive,
    );
    assign(&server, &site, "1");
    let refused = service(&server, &site, "refused", |w| w["phase"] == "refused");
    let why = refused["last_error"].as_str().unwrap();
    assert!(why.contains("images from archive are not allowed"), "{why}");
    assert!(web_containers(&site).is_empty());

    // The site admin allows archives within a budget: picked up without a restart.
    std::fs::write(
        &policy,
        "[admission]\nallowed_registries = [\"archive\"]\n\n[budget]\ncpus = 1.0\nmemory = \"48MiB\"\n",
    )
    .unwrap();
    answers(port, "hello from 1");
    service(&server, &site, "running 1", |w| w["phase"] == "running");

    // A bad edit is rejected with its line; the previous policy stays in force.
    std::fs::write(&policy, "[budget]\nmemory = \"lots\"\n").unwrap();
    let status = wait::until(LIMIT, "the rejected edit in the agent's status", || {
        let status = agent.status();
        status["site_policy"]["Err"].is_string().then_some(status)
    });
    let error = status["site_policy"]["Err"].as_str().unwrap();
    assert!(
        error.contains("site-policy.toml:2: budget.memory"),
        "{error}"
    );

    // v2 needs more memory than the budget (of the policy still in force) allows.
    let v2 = web("2", &image.tag, port, &volume, "/", "30s").replace("32MiB", "64MiB");
    publish(&server, "v2.toml", &v2, &image.archive);
    assign(&server, &site, "2");
    let refused = service(&server, &site, "2 refused by the budget", |w| {
        w["phase"] == "refused" && w["desired"] == "2"
    });
    let why = refused["last_error"].as_str().unwrap();
    assert!(why.contains("bytes of memory"), "{why}");
    assert_eq!(refused["running"], "1");
    assert_eq!(http_get(port).as_deref(), Some("hello from 1"));
}

#[test]
fn losing_the_engine_connection_is_reported_and_the_agent_reconverges_when_it_returns() {
    let server = Server::start();
    let site = unique("dock");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let mut proxy = SocketProxy::start(&server.root().join("engine.sock"));
    let token = server.token(&site, &[]);
    let mut agent = Agent::new(server.root(), &site);
    agent.join(&token, None).ok();
    let engine = proxy.address();
    agent.start_with(&["--engine", &engine, "--reconcile-interval", "1s"]);
    server.wait_online(&site);
    publish(
        &server,
        "v1.toml",
        &web("1", &image.tag, port, &volume, "/", "30s"),
        &image.archive,
    );
    assign(&server, &site, "1");
    answers(port, "hello from 1");
    service(&server, &site, "running 1", |w| w["phase"] == "running");

    // The engine goes away: the site says so, and the service keeps running.
    proxy.cut();
    let lost = service(&server, &site, "engine unreachable", |w| {
        w["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable"))
    });
    assert!(
        lost["last_error"].as_str().unwrap().contains("--engine"),
        "the error says what to check: {lost}"
    );
    assert_eq!(http_get(port).as_deref(), Some("hello from 1"));

    // Meanwhile someone removes the container; once the engine is back, it returns.
    let before = web_containers(&site)[0]["Id"].as_str().unwrap().to_owned();
    docker(&["rm", "-f", &before]);
    proxy.restore();
    answers(port, "hello from 1");
    service(&server, &site, "healthy again, no error", |w| {
        w["phase"] == "running" && w["health"] == "healthy" && w["last_error"].is_null()
    });
    assert_ne!(web_containers(&site)[0]["Id"], before.as_str());
}

#[test]
fn a_release_pinned_by_digest_is_pulled_from_a_registry() {
    let server = Server::start();
    let site = unique("dock");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let registry = Registry::start(server.root());
    let reference = registry.push(&image);
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone(), reference.clone()],
        containers: vec![],
    };
    let held = std::process::Command::new("docker")
        .args(["image", "inspect", &image.id])
        .output()
        .unwrap();
    assert!(
        !held.status.success(),
        "the engine does not hold the image before the site pulls it"
    );
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let agent = joined_agent(&server, &site);
    let file = write(
        server.root(),
        "v1.toml",
        &web("1", &reference, port, &volume, "/", "30s"),
    );
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    assign(&server, &site, "1");
    answers(port, "hello from 1");
    service(&server, &site, "running 1", |w| w["phase"] == "running");
    assert_eq!(
        web_containers(&site)[0]["Config"]["Image"],
        reference.as_str()
    );

    // The site's disk budget counts a pulled image once its size is known: v2's image
    // does not fit, so it is refused and removed, and v1 keeps running.
    let bigger = TestImage::build(server.root(), &unique("web"), &"x".repeat(64 << 10));
    let bigger_reference = registry.push(&bigger);
    let _cleanup_bigger = Cleanup {
        sites: vec![],
        images: vec![bigger.id.clone(), bigger_reference.clone()],
        containers: vec![],
    };
    let state_dir = agent.state_dir.clone();
    let v1_size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &reference])
        .parse()
        .unwrap();
    std::fs::write(
        state_dir.join("site-policy.toml"),
        format!("[budget]\ndisk = \"{}\"\n", v1_size + 1024),
    )
    .unwrap();
    wait::until(LIMIT, "the agent to load the new site policy", || {
        agent.log().contains("site policy reloaded").then_some(())
    });
    let file = write(
        server.root(),
        "v2.toml",
        &web("2", &bigger_reference, port, &volume, "/", "30s"),
    );
    server
        .cli(&["release", "publish", file.to_str().unwrap()])
        .ok();
    assign(&server, &site, "2");
    let refused = service(&server, &site, "2 refused by the disk budget", |w| {
        w["phase"] == "refused" && w["desired"] == "2"
    });
    let why = refused["last_error"].as_str().unwrap();
    assert!(why.contains("disk budget"), "{why}");
    assert_eq!(http_get(port).as_deref(), Some("hello from 1"));
    assert!(!image_held(&bigger.id), "the refused image was removed");
}

#[test]
fn the_core_scenario_runs_the_same_through_podmans_socket() {
    let server = Server::start();
    let site = unique("pod");
    let image = TestImage::build(server.root(), &unique("web"), "one");
    let _cleanup = Cleanup {
        sites: vec![],
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let mut podman = Podman::start(server.root());
    podman.clean_up_after(&site, &image.id);
    let volume = server.root().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let port = free_port();
    let token = server.token(&site, &[]);
    let mut agent = Agent::new(server.root(), &site);
    agent.join(&token, None).ok();
    let engine = podman.address();
    agent.start_with(&["--engine", &engine, "--reconcile-interval", "1s"]);
    server.wait_online(&site);
    for (version, path, within) in [
        ("1", "/", "30s"),
        ("2", "/", "30s"),
        ("3", "/missing", "4s"),
    ] {
        let text = web(version, &image.tag, port, &volume, path, within);
        publish(&server, &format!("v{version}.toml"), &text, &image.archive);
    }

    assign(&server, &site, "1");
    answers(port, "hello from 1");
    service(&server, &site, "running 1", |w| w["phase"] == "running");
    assign(&server, &site, "2");
    answers(port, "hello from 2");
    service(&server, &site, "running 2", |w| {
        w["running"] == "2" && w["phase"] == "running"
    });
    assign(&server, &site, "3");
    let failed = service(&server, &site, "rolled back from 3", |w| {
        w["failed"] == "3" && w["phase"] == "rolled-back" && w["running"] == "2"
    });
    assert!(
        failed["failure"]
            .as_str()
            .unwrap()
            .contains("did not become healthy"),
        "{failed}"
    );
    answers(port, "hello from 2");
    assert_eq!(podman.containers_of(&site).len(), 1);
    assert!(
        containers_of(&site).is_empty(),
        "nothing of this site went to Docker"
    );
}
