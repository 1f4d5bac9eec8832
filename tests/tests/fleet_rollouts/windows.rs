//! Maintenance windows open with the clock, and site locks hold sites until released.

use continuum_tests::fleet::{Fleet, SimSite};
use continuum_tests::server::Server;
use continuum_tests::wait;

use super::common::*;

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
    // Every unlocked site inside (or outside) the asia window done.
    let done_in = |r: &serde_json::Value, in_asia: bool| {
        fleet
            .sites
            .iter()
            .filter(|s| asia(s) == in_asia && !locked.contains(&s.name.as_str()))
            .all(|s| progress(r, &s.name) == "done")
    };
    let waiting = watch(&server, &id, |_| {}, |r| done_in(r, false));
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
    watch(&server, &id, |_| {}, |r| done_in(r, true));
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
