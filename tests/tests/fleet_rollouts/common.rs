//! What the rollout tests share: publishing, starting and watching rollouts, and
//! waiting for every site to be told what a rollout decided.

use std::time::{Duration, Instant};

use continuum_tests::fleet::{Fleet, SimSite};
use continuum_tests::releases::write;
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

pub(super) const SITES: usize = 200;
pub(super) const LIMIT: Duration = Duration::from_secs(240);

/// Publishes `service` `version`, placed by `require`, rolled out under `policy`.
pub(super) fn publish(
    server: &Server,
    service: &str,
    version: &str,
    require: Option<&str>,
    policy: &str,
) {
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

pub(super) fn start(server: &Server, service: &str, version: &str) -> String {
    let started = server.json(&["rollout", "start", service, version]);
    started["id"].as_str().expect("rollout id").to_owned()
}

pub(super) fn status(server: &Server, id: &str) -> Value {
    server.json(&["rollout", "status", id])
}

pub(super) fn state(rollout: &Value) -> &str {
    rollout["state"]["state"].as_str().unwrap_or_default()
}

pub(super) fn progress<'a>(rollout: &'a Value, site: &str) -> &'a str {
    rollout["sites"][site]["state"].as_str().unwrap_or_default()
}

pub(super) fn waves(rollout: &Value) -> Vec<Vec<String>> {
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
pub(super) fn watch(
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

pub(super) fn until(server: &Server, id: &str, wanted: &str) -> Value {
    watch(server, id, |_| {}, |r| state(r) == wanted)
}

/// Like [`until`], but a timeout says, for each site not done, what it was told and
/// what the control plane sees of it.
pub(super) fn until_explained(
    server: &Server,
    fleet: &Fleet,
    service: &str,
    id: &str,
    wanted: &str,
) -> Value {
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
pub(super) fn settled(fleet: &Fleet, service: &str, expected: impl Fn(&SimSite) -> Option<String>) {
    wait::until(LIMIT, "every site told what the rollout decided", || {
        fleet
            .sites
            .iter()
            .all(|s| s.current(service) == expected(s))
            .then_some(())
    });
}

/// `policies` and a policy `fast` that takes every site at once and needs a site
/// healthy for one second.
pub(super) fn with_fast(policies: &str) -> String {
    format!(
        "[rollout.fast]\nwaves = [{{ name = \"all\", percent = 100 }}]\nbake = \"0s\"\nhealthy_for = \"1s\"\nmax_parallel = 200\n\n{policies}"
    )
}
