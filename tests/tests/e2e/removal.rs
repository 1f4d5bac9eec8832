//! Taking a service off sites with real agents and real containers: `continuum service
//! remove` runs as a rollout, each agent removes the service's containers, and the site
//! policy decides whether its image and its named volumes go too.

use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::docker::{
    Cleanup, ENGINE, TestImage, Volumes, containers_of, docker, image_exists, unique, volume_exists,
};
use continuum_tests::server::Server;
use continuum_tests::wait;

const LIMIT: Duration = Duration::from_secs(90);

/// A service writing into a named volume, served from it.
fn release(service: &str, image: &str, volume: &str) -> String {
    format!(
        r#"[service]
name = "{service}"
version = "1"

[container]
image = "{image}"
command = ["sh", "-c", "echo {service} > /data/index.html && exec httpd -f -p 80 -h /data"]
volumes = ["{volume}:/data"]

[health]
http = "http://container:80/"
interval = "1s"
timeout = "1s"

[placement]
rollout = "quick"
"#
    )
}

#[test]
fn a_removed_service_leaves_its_sites_and_the_site_policy_decides_about_images_and_volumes() {
    let server = Server::start();
    server.install_quick_policy();
    // Site `tidy` keeps the defaults (images go, volumes stay); site `wipe` keeps
    // images and removes volumes.
    let (tidy, wipe) = (unique("tidy"), unique("wipe"));
    let (image_t, image_w) = (
        TestImage::build(server.root(), &unique("rmt"), "t"),
        TestImage::build(server.root(), &unique("rmw"), "w"),
    );
    let (volume_t, volume_w) = (unique("vol"), unique("vol"));
    let _volumes = Volumes(vec![volume_t.clone(), volume_w.clone()]);
    let _cleanup = Cleanup {
        sites: vec![tidy.clone(), wipe.clone()],
        images: vec![image_t.id.clone(), image_w.id.clone()],
        containers: vec![],
    };
    let mut agents = Vec::new();
    for (site, policy) in [
        (&tidy, None),
        (
            &wipe,
            Some("[cleanup]\nkeep_images = true\nremove_volumes = true\n"),
        ),
    ] {
        let mut agent = Agent::new(server.root(), site);
        agent.join(&server.token(site, &[]), None).ok();
        if let Some(policy) = policy {
            std::fs::write(agent.state_dir.join("site-policy.toml"), policy).unwrap();
        }
        agent.start_with(&["--engine", ENGINE, "--reconcile-interval", "1s"]);
        server.wait_online(site);
        agents.push(agent);
    }
    for (site, service, image, volume) in [
        (&tidy, "svc-t", &image_t, &volume_t),
        (&wipe, "svc-w", &image_w, &volume_w),
    ] {
        server.publish_shipped(
            &format!("{service}.toml"),
            &release(service, &image.tag, volume),
            &image.archive,
        );
        server.cli(&["site", "assign", site, service, "1"]).ok();
        wait::until(LIMIT, "the service healthy", || {
            let s = server.site(site)?;
            (s["services"][service]["health"] == "healthy").then_some(())
        });
        assert!(volume_exists(volume));
    }

    // The plan names the one site that has it; the removal runs as a rollout.
    for (site, service) in [(&tidy, "svc-t"), (&wipe, "svc-w")] {
        let plan = server.json(&[
            "service",
            "remove",
            service,
            "--policy",
            "quick",
            "--dry-run",
        ]);
        assert_eq!(
            plan["waves"][0]["sites"],
            serde_json::json!([site]),
            "{plan}"
        );
        let started = server.json(&["service", "remove", service, "--policy", "quick"]);
        assert_eq!(started["removal"], true);
        let id = started["id"].as_str().unwrap().to_owned();
        wait::until(LIMIT, "the removal completed", || {
            let r = server.json(&["rollout", "status", &id]);
            (r["state"]["state"] == "completed").then_some(())
        });
        let listing = server.cli(&["rollout", "status"]).ok().stdout;
        assert!(listing.contains("(removed)"), "{listing}");
        wait::until(LIMIT, "its containers gone", || {
            containers_of(site).is_empty().then_some(())
        });
        let desired = server.json(&["site", "desired", site]);
        assert!(desired["releases"][service].is_null(), "{desired}");
        assert!(server.site(site).unwrap()["services"][service].is_null());
    }
    // The defaults: the image no release needs goes, the data stays.
    wait::until(LIMIT, "the unneeded image removed", || {
        (!image_exists(&image_t.tag)).then_some(())
    });
    assert!(
        volume_exists(&volume_t),
        "volumes are kept unless the site says"
    );
    // The site that asked: its volume went, its image stays.
    assert!(!volume_exists(&volume_w), "{}", docker(&["volume", "ls"]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(image_exists(&image_w.tag), "keep_images keeps it");

    // Nothing left to remove is said plainly.
    let again = server.cli(&["service", "remove", "svc-t"]);
    assert!(
        again.code != 0 && again.stderr.contains("nothing to remove"),
        "{}",
        again.stderr
    );
    let bad = server.cli(&["service", "remove", "svc-t", "--select", "labels.tier =="]);
    assert!(
        bad.code != 0 && bad.stderr.contains("--select"),
        "{}",
        bad.stderr
    );
}
