//! The launcher that services run, with the real agent: it starts the agent again when
//! it dies, and it takes back a new binary that fails its trial (one that exits at
//! once, one that hangs) without that binary's help.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use continuum_agent::upgrade::state::{Build, Trial, UpgradeDir, install_binary, sha256_file};
use continuum_tests::agent::Agent;
use continuum_tests::bins::binary;
use continuum_tests::server::Server;
use continuum_tests::wait;

/// An agent installed at `<root>/<name>-bin/continuum-agent` and run by its launcher.
struct Launched {
    child: Option<Child>,
    name: String,
    bin: PathBuf,
    state: PathBuf,
    log: PathBuf,
    trial_timeout: String,
}

impl Launched {
    fn start(server: &Server, name: &str) -> Launched {
        Self::start_with(server, name, "6s", &[])
    }

    fn start_with(
        server: &Server,
        name: &str,
        trial_timeout: &str,
        env: &[(&str, &str)],
    ) -> Launched {
        let agent = Agent::new(server.root(), name);
        agent.join(&server.token(name, &[]), None).ok();
        let bin_dir = server.root().join(format!("{name}-bin"));
        std::fs::create_dir_all(&bin_dir).unwrap();
        let bin = bin_dir.join("continuum-agent");
        install_binary(&binary("continuum-agent"), &bin).unwrap();
        let mut launched = Launched {
            child: None,
            name: name.to_owned(),
            bin,
            state: agent.state_dir.clone(),
            log: server.root().join(format!("{name}-launch.log")),
            trial_timeout: trial_timeout.to_owned(),
        };
        launched.launch(env);
        server.wait_online(name);
        launched
    }

    fn launch(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary("continuum-agent"))
            .arg("--state-dir")
            .arg(&self.state)
            .args(["launch", "--agent"])
            .arg(&self.bin)
            .args(["--trial-timeout", &self.trial_timeout, "--"])
            .args([
                "run",
                "--engine",
                "none",
                "--reconnect-base",
                "300ms",
                "--reconnect-max",
                "2s",
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Kills the launcher (and with it the agent) with SIGKILL, as a crash or a power
    /// cut would, and starts it again, as systemd would.
    fn kill_and_relaunch(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.launch(&[]);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent process the launcher runs now.
    fn agent_pid(&self) -> Option<u32> {
        let id = self.child.as_ref()?.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    fn kill_agent(&self) -> u32 {
        let pid = wait::until(Duration::from_secs(10), "the launched agent", || {
            self.agent_pid()
        });
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        pid
    }

    /// Swaps `new` in as the updater does (copy of the current binary, trial record,
    /// swap), then ends the agent as the swap's restart would.
    fn swap_in(&self, new: &Path, version: &str) {
        let upgrade = UpgradeDir::new(&self.state);
        upgrade.create().unwrap();
        install_binary(&self.bin, &upgrade.previous()).unwrap();
        upgrade
            .save_trial(&Trial {
                from: Build {
                    version: "current".into(),
                    sha256: sha256_file(&self.bin).unwrap(),
                },
                to: Build {
                    version: version.into(),
                    sha256: sha256_file(new).unwrap(),
                },
                binary: self.bin.clone(),
                started_at: None,
                committed: false,
            })
            .unwrap();
        install_binary(new, &self.bin).unwrap();
        self.kill_agent();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} (launcher and agent log) ---\n{}",
                self.name,
                self.log()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    path
}

#[test]
fn the_launcher_starts_a_killed_agent_again() {
    let server = Server::start();
    let launched = Launched::start(&server, "relaunched");
    let first = launched.kill_agent();
    let second = wait::until(Duration::from_secs(20), "a new agent process", || {
        launched.agent_pid().filter(|pid| *pid != first)
    });
    assert_ne!(first, second);
    wait::until(Duration::from_secs(20), "the site back online", || {
        server
            .site("relaunched")
            .filter(|s| s["online"] == true)
            .filter(|_| launched.agent_pid() == Some(second))
    });
}

#[test]
fn a_new_binary_that_exits_or_hangs_is_replaced_by_the_previous_one_without_its_help() {
    let server = Server::start();
    let launched = Launched::start(&server, "trial");
    let original = sha256_file(&launched.bin).unwrap();
    let upgrade = UpgradeDir::new(&launched.state);
    let dir = tempfile::tempdir().unwrap();
    for (name, body, why) in [
        ("exits", "exit 1", "during its trial"),
        ("hangs", "exec sleep 600", "within 6s"),
    ] {
        let new = script(dir.path(), name, body);
        launched.swap_in(&new, &format!("9.9.9-{name}"));
        let failed = wait::until(Duration::from_secs(30), "the revert", || {
            upgrade
                .failed()
                .into_iter()
                .find(|f| f.build.version == format!("9.9.9-{name}"))
                .filter(|_| upgrade.trial().is_ok_and(|t| t.is_none()))
        });
        assert!(failed.reason.contains(why), "{}", failed.reason);
        assert_eq!(sha256_file(&launched.bin).unwrap(), original);
        assert_eq!(upgrade.trial(), Ok(None));
        wait::until(
            Duration::from_secs(20),
            "the previous agent back online",
            || {
                launched
                    .agent_pid()
                    .and_then(|_| server.site("trial"))
                    .filter(|s| s["online"] == true)
            },
        );
    }
}

/// One wave of every site, no bake to speak of, failures tolerated so each site's
/// outcome shows.
const POLICY: &str = r#"[rollout.agents]
waves = [{ name = "all", percent = 100 }]
bake = "1s"
healthy_for = "1s"
max_parallel = 10
failure_budget = 10
on_failure = "pause"
"#;

fn agent_policy(server: &Server) {
    server.install_policy("agents.toml", POLICY, "agents");
}

fn publish(server: &Server, binary: &Path, version: &str, target: &str) {
    server
        .cli(&[
            "agent-release",
            "publish",
            binary.to_str().unwrap(),
            "--version",
            version,
            "--target",
            target,
        ])
        .ok();
}

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn start_rollout(server: &Server, version: &str) -> String {
    let started = server.json(&[
        "rollout",
        "start",
        "continuum-agent",
        version,
        "--policy",
        "agents",
    ]);
    started["id"].as_str().unwrap().to_owned()
}

fn agent_version(server: &Server, site: &str) -> Option<String> {
    server.site(site)?["agent_version"]
        .as_str()
        .map(str::to_owned)
}

fn variant() -> PathBuf {
    let path = continuum_tests::bins::bin_dir().join("agent-variants/continuum-agent-99.0.0-next");
    assert!(
        path.exists(),
        "{} is missing: tests/run builds it",
        path.display()
    );
    path
}

#[test]
fn a_new_agent_version_reaches_every_site_even_killed_at_each_step() {
    let server = Server::start();
    agent_policy(&server);
    let new = variant();
    let dir = tempfile::tempdir().unwrap();
    // Another architecture's build under the same version: never this site's.
    let foreign = script(dir.path(), "foreign", "exit 1");
    publish(
        &server,
        &foreign,
        "99.0.0-next",
        "aarch64-unknown-linux-gnu",
    );
    publish(&server, &new, "99.0.0-next", TARGET);

    let mut sites: Vec<(&str, Launched)> = [
        "",
        "upgrade-staged",
        "upgrade-trial",
        "upgrade-swapped",
        "upgrade-before-commit",
    ]
    .into_iter()
    .enumerate()
    .map(|(i, point)| {
        let env: &[(&str, &str)] = if point.is_empty() {
            &[]
        } else {
            &[("CONTINUUM_AGENT_CRASH_AT", point)]
        };
        (
            point,
            Launched::start_with(&server, &format!("up-{i}"), "60s", env),
        )
    })
    .collect();
    let original = sha256_file(&sites[0].1.bin).unwrap();
    let started = std::time::Instant::now();
    start_rollout(&server, "99.0.0-next");

    // Killed before the swap (downloaded, or trial recorded): started again as systemd
    // would, without the fault, the update goes through.
    for (point, site) in sites.iter_mut() {
        if matches!(*point, "upgrade-staged" | "upgrade-trial") {
            let crashed = format!("crash point {point}");
            wait::until(Duration::from_secs(60), &crashed, || {
                site.log().contains(&crashed).then_some(())
            });
            site.kill_and_relaunch();
        }
    }
    for (point, site) in &sites {
        if *point == "upgrade-before-commit" {
            // Killed on trial: the launcher puts the previous build back.
            let failed = wait::until(Duration::from_secs(90), "the revert", || {
                UpgradeDir::new(&site.state).failed().into_iter().next()
            });
            assert_eq!(failed.build.version, "99.0.0-next");
            assert_eq!(sha256_file(&site.bin).unwrap(), original);
            wait::until(Duration::from_secs(60), "the failure reported", || {
                server
                    .site(&site.name)
                    .and_then(|s| s["agent_failed"].as_str().map(str::to_owned))
            });
            assert_eq!(
                agent_version(&server, &site.name).as_deref(),
                Some(env!("CARGO_PKG_VERSION"))
            );
            continue;
        }
        wait::until(Duration::from_secs(90), "the new agent version", || {
            (agent_version(&server, &site.name).as_deref() == Some("99.0.0-next")).then_some(())
        });
        eprintln!(
            "{}: on the new agent {:.1}s after the rollout started",
            site.name,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(sha256_file(&site.bin).unwrap(), sha256_file(&new).unwrap());
        wait::until(Duration::from_secs(30), "the trial committed", || {
            UpgradeDir::new(&site.state)
                .trial()
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        });
        assert!(
            UpgradeDir::new(&site.state).failed().is_empty(),
            "{}",
            site.name
        );
    }
    eprintln!(
        "agent binary: {} bytes per site",
        std::fs::metadata(&new).unwrap().len()
    );
    assert!(sites[3].1.log().contains("crash point upgrade-swapped"));
    let events = server
        .cli(&["events", "--service", "continuum-agent"])
        .ok()
        .stdout;
    assert!(events.contains("agent-updated"), "{events}");
}

#[test]
fn agent_versions_that_exit_or_hang_come_back_by_themselves_and_are_not_tried_again() {
    let server = Server::start();
    agent_policy(&server);
    let sites = [
        Launched::start(&server, "bad-1"),
        Launched::start(&server, "bad-2"),
    ];
    let original = sha256_file(&sites[0].bin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hangs = script(dir.path(), "hangs", "exec sleep 600");
    for (version, binary, why) in [
        ("99.0.1-false", Path::new("/bin/false"), "during its trial"),
        ("99.0.2-hang", hangs.as_path(), "within 6s"),
    ] {
        publish(&server, binary, version, TARGET);
        start_rollout(&server, version);
        for site in &sites {
            // The launcher's record (the control plane's view moves on as the rollouts
            // put the site back on its previous release).
            let upgrade = UpgradeDir::new(&site.state);
            let failed = wait::until(Duration::from_secs(90), "the revert", || {
                upgrade
                    .failed()
                    .into_iter()
                    .find(|f| f.build.version == version)
                    .filter(|_| upgrade.trial().is_ok_and(|t| t.is_none()))
            });
            assert!(failed.reason.contains(why), "{}", failed.reason);
            assert_eq!(sha256_file(&site.bin).unwrap(), original);
            wait::until(Duration::from_secs(60), "a failure reported", || {
                server.site(&site.name)?["agent_failed"]
                    .as_str()
                    .map(str::to_owned)
            });
            assert_eq!(
                agent_version(&server, &site.name).as_deref(),
                Some(env!("CARGO_PKG_VERSION"))
            );
        }
    }
    // Not tried again: the failures stay one each, and no trial starts.
    std::thread::sleep(Duration::from_secs(3));
    for site in &sites {
        let upgrade = UpgradeDir::new(&site.state);
        assert_eq!(upgrade.failed().len(), 2);
        assert_eq!(upgrade.trial(), Ok(None));
    }
    // The listing shows the failed version the site's desired state names now (the
    // first rollout's or the second's, as the rollouts put the sites back).
    let listing = server.cli(&["sites"]).ok().stdout;
    assert!(listing.contains(" failed)"), "{listing}");
}

#[test]
fn a_tampered_binary_is_refused_and_other_targets_or_unlaunched_agents_are_left_alone() {
    let server = Server::start();
    agent_policy(&server);
    let site = Launched::start(&server, "guarded");
    let original = sha256_file(&site.bin).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Only an aarch64 build: no site here is eligible, and the plan says why.
    publish(
        &server,
        Path::new("/bin/false"),
        "99.0.3-arm",
        "aarch64-unknown-linux-gnu",
    );
    let plan = server.json(&[
        "rollout",
        "start",
        "continuum-agent",
        "99.0.3-arm",
        "--policy",
        "agents",
        "--dry-run",
    ]);
    let why = plan["excluded"]["guarded"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains("no binary for x86_64-unknown-linux-gnu"),
        "{plan}"
    );

    // Bytes in the control plane's store that are not what was signed.
    let copy = dir.path().join("agent");
    std::fs::copy(binary("continuum-agent"), &copy).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .unwrap()
        .write_all(b"tampered")
        .unwrap();
    publish(&server, &copy, "0.1.1-tampered", TARGET);
    let sha = sha256_file(&copy).unwrap();
    let blob = find_named(server.data_dir(), &sha).expect("the stored binary");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let id = start_rollout(&server, "0.1.1-tampered");
    let error = wait::until(Duration::from_secs(60), "the refusal reported", || {
        server.site("guarded")?["services"]["continuum-agent"]["last_error"]
            .as_str()
            .filter(|e| e.contains("refused"))
            .map(str::to_owned)
    });
    assert!(error.contains("were signed"), "{error}");
    assert_eq!(sha256_file(&site.bin).unwrap(), original);
    assert_eq!(UpgradeDir::new(&site.state).trial(), Ok(None));
    server.cli(&["rollout", "cancel", &id]).ok();

    // An agent run without its launcher does not replace itself.
    let mut plain = Agent::new(server.root(), "plain");
    plain.join(&server.token("plain", &[]), None).ok();
    plain.start();
    server.wait_online("plain");
    publish(&server, &variant(), "99.0.0-next", TARGET);
    start_rollout(&server, "99.0.0-next");
    let refused = wait::until(Duration::from_secs(60), "the refusal reported", || {
        server.site("plain")?["services"]["continuum-agent"]["last_error"]
            .as_str()
            .filter(|e| e.contains("launcher"))
            .map(str::to_owned)
    });
    assert!(refused.contains("cannot update itself"), "{refused}");
    assert_eq!(
        agent_version(&server, "plain").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

/// A file under `dir` whose name contains `part`.
fn find_named(dir: &Path, part: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_named(&path, part) {
                return Some(found);
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(part))
        {
            return Some(path);
        }
    }
    None
}
