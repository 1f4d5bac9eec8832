//! A control plane killed mid-rollout finishes it; supersede and cancel leave no site
//! in between.

use std::time::Duration;

use continuum_tests::fleet::{Fleet, SimSite};
use continuum_tests::server::Server;

use super::common::*;

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
