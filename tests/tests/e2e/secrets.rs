//! Secrets end to end, with real agents, real containers and a real registry: a secret
//! reaches only the sites in its scope, sealed to each site's own key; a container sees
//! it as a read-only file on a tmpfs; a new value reaches the services that use it by a
//! rollout; a registry login kept as a secret pulls the image only when it is right;
//! and no value is ever written where it could be read back: not in the control plane's
//! or the agents' directories, their logs, the API's answers or the engine's files.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use continuum_shared::secrets::SecretsKey;
use continuum_tests::agent::Agent;
use continuum_tests::docker::{Cleanup, Registry, TestImage, containers_of, docker, unique};
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

/// A service that is healthy once it can read its secret.
fn release(image: &str) -> String {
    format!(
        r#"[service]
name = "keeper"
version = "1"

[container]
image = "{image}"
command = ["sh", "-c", "while true; do sleep 1; done"]

[health]
exec = ["sh", "-c", "test -s /run/secrets/db-password"]
interval = "1s"
timeout = "1s"

[placement]
rollout = "quick"

[[secrets]]
name = "db-password"
"#
    )
}

/// A tmpfs directory of the test's own (secrets never go to a disk, test files neither).
fn tmpfs_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("continuum-test-")
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// Starts an agent for `site` on the real engine, its secrets under `secrets_dir`.
fn agent(server: &Server, site: &str, secrets_dir: &Path) -> Agent {
    let mut agent = Agent::new(server.root(), site);
    agent.join(&server.token(site, &[]), None).ok();
    agent.start_on_docker(secrets_dir);
    server.wait_online(site);
    agent
}

/// `continuum secret set NAME --stdin ARGS…` with `value` on standard input.
fn set_secret(server: &Server, name: &str, value: &str, args: &[&str]) -> Value {
    let mut all = vec!["secret", "set", name, "--stdin", "-o", "json"];
    all.extend_from_slice(args);
    let mut child = server
        .cli_command(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "secret set failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Waits for rollout `id` to complete; shows it and the sites' reports if it does not.
fn wait_completed(server: &Server, id: &str) {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let r = server.json(&["rollout", "status", id]);
        match r["state"]["state"].as_str() {
            Some("completed") => return,
            Some("running") if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(300));
            }
            _ => panic!(
                "rollout {id} did not complete: {r:#}\nsites: {:#}",
                server.json(&["sites"])
            ),
        }
    }
}

/// The one running container of `site`.
fn running(site: &str) -> Value {
    wait::until(LIMIT, "one running container", || {
        let all = containers_of(site);
        let running: Vec<&Value> = all
            .iter()
            .filter(|c| c["State"]["Running"] == true)
            .collect();
        (running.len() == 1).then(|| running[0].clone())
    })
}

fn read_in(container: &Value, path: &str) -> String {
    docker(&["exec", container["Id"].as_str().unwrap(), "cat", path])
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// The secret sealed for `site` in its newest director metadata on the control plane.
fn sealed_for(server: &Server, site: &str, name: &str) -> String {
    let dir = server
        .data_dir()
        .join("tuf")
        .join("director")
        .join("sites")
        .join(site);
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let version: u64 = file.strip_suffix(".targets.json")?.parse().ok()?;
            Some((version, e.path()))
        })
        .max()
        .unwrap()
        .1;
    let targets: Value = serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    targets["signed"]["continuum"]["secrets"][name]["sealed"]
        .as_str()
        .unwrap_or_else(|| panic!("no sealed {name} for {site}: {targets}"))
        .to_owned()
}

fn site_key(agent: &Agent) -> SecretsKey {
    SecretsKey::parse(&std::fs::read_to_string(agent.state_dir.join("secrets.key")).unwrap())
        .unwrap()
}

#[test]
fn a_secret_reaches_only_its_sites_as_a_read_only_file_changes_by_rollout_and_is_never_stored_in_plaintext()
 {
    let server = Server::start();
    server.install_quick_policy();
    let (inside, outside) = (unique("in"), unique("out"));
    let image = TestImage::build(server.root(), &unique("sec"), "s");
    let _cleanup = Cleanup {
        sites: vec![inside.clone(), outside.clone()],
        images: vec![image.id.clone()],
        containers: vec![],
    };
    let shm = tmpfs_dir();
    let agent_in = agent(&server, &inside, &shm.path().join("in"));
    let agent_out = agent(&server, &outside, &shm.path().join("out"));
    let first = format!("s3cret-first-{}", unique("v"));
    let second = format!("s3cret-second-{}", unique("v"));

    // A release cannot roll out before its secret exists.
    server.publish_shipped("keeper.toml", &release(&image.tag), &image.archive);
    let early = server.cli(&["rollout", "start", "keeper", "1"]);
    assert!(
        early.code != 0 && early.stderr.contains("secret set db-password"),
        "{}",
        early.stderr
    );

    let set = set_secret(&server, "db-password", &first, &["--site", &inside]);
    assert_eq!(set["secret"]["version"], 1);
    assert!(
        set["rollouts"].as_object().unwrap().is_empty(),
        "a first value rolls nothing"
    );

    // The site outside the scope is left out of the rollout, and says why.
    let plan = server.json(&["rollout", "start", "keeper", "1", "--dry-run"]);
    let why = plan["excluded"][&outside].as_str().unwrap_or_default();
    assert!(why.contains("outside the scope of secret"), "{plan}");
    let started = server.json(&["rollout", "start", "keeper", "1"]);
    wait_completed(&server, started["id"].as_str().unwrap());

    // The container reads the value from a read-only file on the tmpfs.
    let container = running(&inside);
    assert_eq!(read_in(&container, "/run/secrets/db-password"), first);
    let mount = container["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/run/secrets/db-password")
        .unwrap_or_else(|| panic!("no secret mount: {}", container["Mounts"]));
    assert_eq!(mount["RW"], false, "{mount}");
    assert!(
        mount["Source"]
            .as_str()
            .unwrap()
            .starts_with(&shm.path().to_string_lossy().into_owned()),
        "{mount}"
    );
    assert!(containers_of(&outside).is_empty());

    // What the control plane sealed for the site inside opens only with that site's
    // key: the site outside cannot open it, even handed the ciphertext.
    let sealed = sealed_for(&server, &inside, "db-password");
    assert_eq!(site_key(&agent_in).open(&sealed).unwrap(), first.as_bytes());
    assert!(site_key(&agent_out).open(&sealed).is_err());

    // A new value reaches the service by a rollout, in a new container.
    let changed = set_secret(&server, "db-password", &second, &["--site", &inside]);
    assert_eq!(changed["secret"]["version"], 2);
    let id = changed["rollouts"]["keeper"]
        .as_str()
        .unwrap_or_else(|| panic!("no rollout for keeper: {changed}"))
        .to_owned();
    let rollout = server.json(&["rollout", "status", &id]);
    assert_eq!(rollout["secret"], "db-password", "{rollout}");
    wait_completed(&server, &id);
    let replaced = running(&inside);
    assert_ne!(replaced["Id"], container["Id"]);
    assert_eq!(read_in(&replaced, "/run/secrets/db-password"), second);
    wait::until(LIMIT, "the old value's file gone", || {
        (files_holding(shm.path(), first.as_bytes()).is_empty()).then_some(())
    });

    // Listings show names, scopes, versions and users; never a value.
    let listed = server.json(&["secret", "list"]);
    assert_eq!(listed[0]["name"], "db-password");
    assert_eq!(listed[0]["version"], 2);
    assert_eq!(listed[0]["used_by"], serde_json::json!(["keeper"]));
    // A secret still in use is not removed.
    let refused = server.cli(&["secret", "rm", "db-password"]);
    assert!(
        refused.code != 0 && refused.stderr.contains(&inside),
        "{}",
        refused.stderr
    );

    // A secret nobody uses goes; set again, it never takes a version used before.
    set_secret(&server, "spare", "x", &[]);
    server.cli(&["secret", "rm", "spare"]).ok();
    let listed = server.json(&["secret", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let again = set_secret(&server, "spare", "y", &[]);
    assert_eq!(again["secret"]["version"], 2, "{again}");

    // No value anywhere it could be read back.
    let answers = [
        server.cli(&["secret", "list", "-o", "json"]).ok().stdout,
        server.cli(&["sites", "-o", "json"]).ok().stdout,
        server
            .cli(&["site", "desired", &inside, "-o", "json"])
            .ok()
            .stdout,
        server.cli(&["audit", "-o", "json"]).ok().stdout,
        server.cli(&["rollout", "status", "-o", "json"]).ok().stdout,
        server.log(),
        agent_in.log(),
        agent_out.log(),
    ];
    let engine_dir = Path::new("/var/lib/docker/containers").join(replaced["Id"].as_str().unwrap());
    for value in [&first, &second] {
        for answer in &answers {
            assert!(!answer.contains(value.as_str()), "a value leaked: {answer}");
        }
        for dir in [
            server.root(),
            agent_in.state_dir.as_path(),
            agent_out.state_dir.as_path(),
            engine_dir.as_path(),
        ] {
            let found = files_holding(dir, value.as_bytes());
            assert!(
                found.is_empty(),
                "a value is stored in plaintext in {found:?}"
            );
        }
    }
    assert!(
        engine_dir.is_dir(),
        "the engine's container files were searched"
    );
    assert!(
        files_holding(shm.path(), second.as_bytes()).len() == 1,
        "the tmpfs holds the value the container mounts"
    );
}

/// A service pulled from a registry that wants a login.
fn pulled_release(reference: &str) -> String {
    format!(
        r#"[service]
name = "pulled"
version = "1"

[container]
image = "{reference}"
command = ["sh", "-c", "while true; do sleep 1; done"]
registry_secret = "registry-login"

[health]
exec = ["true"]
interval = "1s"
timeout = "1s"

[update]
healthy_within = "20s"

[placement]
rollout = "quick"
"#
    )
}

#[test]
fn a_release_pulls_from_a_registry_that_wants_a_login_only_with_the_right_secret() {
    let server = Server::start();
    server.install_quick_policy();
    let site = unique("pull");
    let image = TestImage::build(server.root(), &unique("pulled"), "p");
    let mut registry = Registry::start(server.root());
    let reference = registry.push(&image);
    let password = format!("pw-{}", unique("r"));
    registry.require_login("robot", &password);
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.id.clone(), reference.clone()],
        containers: vec![],
    };
    let shm = tmpfs_dir();
    let _agent = agent(&server, &site, shm.path());

    // A wrong password: the pull is refused and the release fails at the site.
    set_secret(&server, "registry-login", "robot:wrong", &[]);
    let file =
        continuum_tests::releases::write(server.root(), "pulled.toml", &pulled_release(&reference));
    server
        .cli(&["release", "publish", &file.to_string_lossy()])
        .ok();
    server.cli(&["site", "assign", &site, "pulled", "1"]).ok();
    let failure = wait::until(LIMIT, "the pull refused", || {
        let s = server.site(&site)?;
        s["services"]["pulled"]["failure"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(failure.contains("registry refused"), "{failure}");
    assert!(containers_of(&site).is_empty());

    // The right login, rolled out as a new value of the secret: the image is pulled.
    let changed = set_secret(&server, "registry-login", &format!("robot:{password}"), &[]);
    let id = changed["rollouts"]["pulled"]
        .as_str()
        .unwrap_or_else(|| panic!("no rollout for pulled: {changed}"))
        .to_owned();
    wait_completed(&server, &id);
    let container = running(&site);
    assert_eq!(container["Config"]["Image"], reference);
    assert!(!server.log().contains(&password));
}
