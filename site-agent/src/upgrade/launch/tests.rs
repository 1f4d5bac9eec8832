//! The launcher against small shell scripts standing in for agent builds.

use std::path::Path;

use super::*;
use crate::upgrade::state::Build;

struct Site {
    _dir: tempfile::TempDir,
    state: PathBuf,
    agent: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let agent = dir.path().join("continuum-agent");
        Site {
            state,
            agent,
            _dir: dir,
        }
    }

    fn options(&self, trial_timeout: Duration) -> LaunchOptions {
        LaunchOptions {
            agent: self.agent.clone(),
            state_dir: self.state.clone(),
            trial_timeout,
            restart_base: Duration::from_millis(50),
            restart_max: Duration::from_millis(200),
            args: vec!["run".into()],
        }
    }

    fn upgrade(&self) -> UpgradeDir {
        UpgradeDir::new(&self.state)
    }

    /// Puts `new` in place of `old` as the agent would: previous copy, trial record,
    /// then the swap.
    fn swap(&self, old: &str, new: &str) {
        write_script(&self.agent, old);
        let dir = self.upgrade();
        dir.create().unwrap();
        install_binary(&self.agent, &dir.previous()).unwrap();
        let from = build("1.0.0", &self.agent);
        let staged = dir.staged("x");
        write_script(&staged, new);
        let to = build("2.0.0", &staged);
        dir.save_trial(&Trial {
            from,
            to,
            binary: self.agent.clone(),
            started_at: None,
            committed: false,
        })
        .unwrap();
        install_binary(&staged, &self.agent).unwrap();
    }
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

use std::os::unix::fs::PermissionsExt;

fn build(version: &str, path: &Path) -> Build {
    Build {
        version: version.into(),
        sha256: sha256_file(path).unwrap(),
    }
}

const GOOD: &str = "sleep 30";
/// A build that commits its trial as soon as it starts (the real agent does so once
/// connected, verified and reported).
const COMMITS: &str =
    "sed -i 's/\"committed\": false/\"committed\": true/' \"$2/upgrade/trial.json\"; sleep 30";

/// Runs the launcher until `done` holds (checked every 50 ms), at most 20 s.
async fn launch_until(options: LaunchOptions, done: impl Fn() -> bool) -> Result<u8, String> {
    let stop = async move {
        for _ in 0..400 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the launcher did not get there within 20 s");
    };
    launch(options, stop).await
}

fn previous_back(site: &Site) -> bool {
    std::fs::read_to_string(&site.agent).is_ok_and(|s| s.contains(GOOD))
        && site.upgrade().trial().is_ok_and(|t| t.is_none())
}

#[tokio::test]
async fn a_new_binary_that_exits_at_once_is_replaced_by_the_previous_one() {
    let site = Site::new();
    site.swap(GOOD, "exit 1");
    launch_until(site.options(Duration::from_secs(60)), || {
        previous_back(&site)
    })
    .await
    .unwrap();
    let failed = site.upgrade().failed();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].build.version, "2.0.0");
    assert!(
        failed[0].reason.contains("during its trial"),
        "{}",
        failed[0].reason
    );
    assert!(!site.upgrade().previous().exists());
}

#[tokio::test]
async fn a_new_binary_that_hangs_is_replaced_when_its_trial_runs_out() {
    let site = Site::new();
    site.swap(GOOD, "sleep 600");
    launch_until(site.options(Duration::from_secs(1)), || {
        previous_back(&site)
    })
    .await
    .unwrap();
    let failed = site.upgrade().failed();
    assert!(
        failed[0].reason.contains("within 1s"),
        "{}",
        failed[0].reason
    );
}

#[tokio::test]
async fn a_new_binary_that_commits_stays_and_the_previous_copy_goes() {
    let site = Site::new();
    site.swap(GOOD, COMMITS);
    let upgrade = site.upgrade();
    launch_until(site.options(Duration::from_secs(60)), || {
        upgrade.trial().is_ok_and(|t| t.is_none())
    })
    .await
    .unwrap();
    assert!(
        std::fs::read_to_string(&site.agent)
            .unwrap()
            .contains("committed")
    );
    assert!(!upgrade.previous().exists());
    assert!(upgrade.failed().is_empty());
}

#[tokio::test]
async fn a_trial_whose_swap_never_happened_is_dropped() {
    let site = Site::new();
    site.swap(GOOD, "exit 1");
    // As if killed between writing the trial and swapping: the old binary is back.
    install_binary(&site.upgrade().previous(), &site.agent).unwrap();
    let upgrade = site.upgrade();
    launch_until(site.options(Duration::from_secs(60)), || {
        upgrade.trial().is_ok_and(|t| t.is_none())
    })
    .await
    .unwrap();
    assert!(upgrade.failed().is_empty(), "nothing failed");
}

#[tokio::test]
async fn a_relaunched_launcher_gives_the_trial_a_whole_window_and_then_reverts() {
    let site = Site::new();
    site.swap(GOOD, "sleep 600");
    let upgrade = site.upgrade();
    // Started long ago, by a launcher that then went down (a reboot).
    let mut trial = upgrade.trial().unwrap().unwrap();
    trial.started_at = Some(unix_now() - 120);
    upgrade.save_trial(&trial).unwrap();
    let started = std::time::Instant::now();
    launch_until(site.options(Duration::from_secs(2)), || {
        previous_back(&site)
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it got its window"
    );
    assert!(upgrade.failed()[0].reason.contains("within 2s"));
}

#[tokio::test]
async fn a_new_binary_that_cannot_be_started_is_replaced_at_once() {
    let site = Site::new();
    site.swap(GOOD, "exit 1");
    // Not executable at all.
    std::fs::write(&site.agent, b"not a program").unwrap();
    std::fs::set_permissions(&site.agent, std::fs::Permissions::from_mode(0o644)).unwrap();
    let upgrade = site.upgrade();
    let mut trial = upgrade.trial().unwrap().unwrap();
    trial.to.sha256 = sha256_file(&site.agent).unwrap();
    upgrade.save_trial(&trial).unwrap();
    launch_until(site.options(Duration::from_secs(60)), || {
        previous_back(&site)
    })
    .await
    .unwrap();
    let reason = &upgrade.failed()[0].reason;
    assert!(reason.contains("could not be started"), "{reason}");
}

#[tokio::test]
async fn without_a_whole_previous_copy_the_launchers_own_build_is_put_back() {
    let site = Site::new();
    site.swap(GOOD, "exit 1");
    std::fs::write(site.upgrade().previous(), b"damaged").unwrap();
    let own = std::env::current_exe().unwrap();
    let upgrade = site.upgrade();
    launch_until(site.options(Duration::from_secs(60)), || {
        upgrade.trial().is_ok_and(|t| t.is_none())
    })
    .await
    .unwrap();
    assert_eq!(
        sha256_file(&site.agent).unwrap(),
        sha256_file(&own).unwrap(),
        "the launcher's own executable stands in"
    );
    assert_eq!(upgrade.failed().len(), 1);
}

#[tokio::test]
async fn the_restart_status_starts_the_swapped_binary_on_trial() {
    let site = Site::new();
    let dir = site.upgrade();
    dir.create().unwrap();
    // The old build swaps itself as the agent does, then asks to be started again.
    let staged = dir.staged("x");
    write_script(&staged, "exit 1");
    let swap = format!(
        "[ -f {failed} ] && exec sleep 30; cp \"$0\" {previous}; printf '{{\"from\":{{\"version\":\"1\",\"sha256\":\"'$(sha256sum \"$0\" | cut -c1-64)'\"}},\"to\":{{\"version\":\"2\",\"sha256\":\"'$(sha256sum {staged} | cut -c1-64)'\"}},\"binary\":\"'$0'\"}}' > {trial}; cp {staged} \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exit 75\n{GOOD}",
        previous = dir.previous().display(),
        staged = staged.display(),
        trial = site.state.join("upgrade/trial.json").display(),
        failed = site.state.join("upgrade/failed.json").display(),
    );
    write_script(&site.agent, &swap);
    launch_until(site.options(Duration::from_secs(60)), || {
        !dir.failed().is_empty() && dir.trial().is_ok_and(|t| t.is_none())
    })
    .await
    .unwrap();
    assert_eq!(dir.failed()[0].build.version, "2");
    assert!(
        std::fs::read_to_string(&site.agent)
            .unwrap()
            .contains("exit 75")
    );
}

#[tokio::test]
async fn a_revoked_agent_is_not_started_again() {
    let site = Site::new();
    write_script(&site.agent, "exit 3");
    let code = launch(
        site.options(Duration::from_secs(60)),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(code, 3);
}

#[tokio::test]
async fn a_crashing_agent_is_started_again_and_again() {
    let site = Site::new();
    let count = site.state.join("starts");
    write_script(
        &site.agent,
        &format!("echo x >> {}; exit 1", count.display()),
    );
    launch_until(site.options(Duration::from_secs(60)), || {
        std::fs::read_to_string(&count).is_ok_and(|s| s.lines().count() >= 4)
    })
    .await
    .unwrap();
}
