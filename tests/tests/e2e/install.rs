//! The one-line install, run as printed by `continuum token create` in a clean Debian
//! container (debootstrap minbase with curl, no init system): as root and as a plain
//! user, again without change, uninstalled; and failures that leave nothing behind.

use std::process::Command;
use std::time::Duration;

use continuum_tests::docker::{Cleanup, unique};
use continuum_tests::server::Server;
use continuum_tests::wait;

/// A minimal Debian image, built once per machine from Debian's packages.
const IMAGE: &str = "continuum-test/debian-minbase:bookworm";

fn debian_image() -> &'static str {
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return IMAGE;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    let built = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=curl,ca-certificates",
            "bookworm",
        ])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap is needed (tests/run installs it)");
    assert!(
        built.status.success(),
        "debootstrap failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let import = format!(
        "tar -C '{}' -c . | docker import - {IMAGE}",
        rootfs.display()
    );
    let status = Command::new("sh").args(["-c", &import]).status().unwrap();
    assert!(status.success(), "importing the Debian root file system");
    IMAGE
}

/// A container of the Debian image on the host's network (so it reaches the control
/// plane on loopback), idle until commands are run in it.
struct Site {
    name: String,
    _cleanup: Cleanup,
}

struct Ran {
    code: i32,
    out: String,
}

impl Site {
    fn start() -> Site {
        let name = unique("install");
        let status = Command::new("docker")
            .args(["run", "-d", "--name", &name, "--network", "host"])
            .args([debian_image(), "sleep", "infinity"])
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        Site {
            _cleanup: Cleanup {
                sites: vec![],
                images: vec![],
                containers: vec![name.clone()],
            },
            name,
        }
    }

    /// Runs a shell command in the container as `user`.
    fn sh(&self, user: &str, command: &str) -> Ran {
        let home = if user == "root" {
            "/root".to_owned()
        } else {
            format!("/home/{user}")
        };
        let out = Command::new("docker")
            .args([
                "exec",
                "-u",
                user,
                "-e",
                &format!("HOME={home}"),
                "-w",
                &home,
            ])
            .args([&self.name, "sh", "-c", command])
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.sh("root", &format!("test -e '{path}'")).code == 0
    }

    /// How many agent processes run in the container.
    fn agents(&self) -> usize {
        let ran = self.sh(
            "root",
            "for p in /proc/[0-9]*; do readlink $p/exe; done 2>/dev/null | grep -c 'bin/continuum-agent$' || true",
        );
        ran.out.trim().parse().unwrap_or(0)
    }
}

fn install_line(server: &Server, site: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", site];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", "json"]);
    let created = server.cli(&args).ok();
    let created: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    created["install"]
        .as_str()
        .expect("token create prints the install line")
        .to_owned()
}

fn assert_ok(ran: &Ran, what: &str) {
    assert_eq!(ran.code, 0, "{what} failed:\n{}", ran.out);
}

#[test]
fn the_printed_line_installs_joins_repeats_harmlessly_and_uninstalls_as_root_and_as_a_user() {
    let server = Server::start();
    let site = Site::start();

    // As root: no init system in the container, so the agent runs supervised.
    let line = install_line(&server, "deb-root", &[]);
    assert!(
        line.starts_with("curl -fsSLk --pinnedpubkey 'sha256//"),
        "{line}"
    );
    let first = site.sh(
        "root",
        &format!("{line} --engine none --allow-registry archive --cpus 2"),
    );
    assert_ok(&first, "the install");
    assert!(first.out.contains("supervisor"), "{}", first.out);
    server.wait_online("deb-root");
    assert!(site.exists("/usr/local/bin/continuum-agent"));
    let policy = site.sh("root", "cat /var/lib/continuum-agent/site-policy.toml");
    assert!(
        policy.out.contains("allowed_registries = [\"archive\"]"),
        "{}",
        policy.out
    );
    assert!(policy.out.contains("cpus = 2"), "{}", policy.out);
    assert_eq!(site.agents(), 1);

    // Again: nothing changes, nothing is duplicated.
    let again = site.sh(
        "root",
        &format!("{line} --engine none --allow-registry archive --cpus 2"),
    );
    assert_ok(&again, "the second install");
    assert!(again.out.contains("is current"), "{}", again.out);
    assert!(again.out.contains("already joined"), "{}", again.out);
    assert_eq!(site.agents(), 1, "one agent after two installs");
    let sites: Vec<_> = server
        .sites()
        .into_iter()
        .filter(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("deb-root"))
        })
        .collect();
    assert_eq!(sites.len(), 1, "one site after two installs");

    // Uninstall: everything goes.
    let pin_and_url = line.split(" | ").next().unwrap();
    let removed = site.sh("root", &format!("{pin_and_url} | sh -s -- --uninstall"));
    assert_ok(&removed, "the uninstall");
    wait::until(Duration::from_secs(10), "the agent to stop", || {
        (site.agents() == 0).then_some(())
    });
    assert!(!site.exists("/usr/local/bin/continuum-agent"));
    assert!(!site.exists("/var/lib/continuum-agent"));
    assert!(!site.exists("/usr/local/lib/continuum-agent"));

    // As a plain user: everything under the home directory.
    assert_ok(&site.sh("root", "useradd -m edge"), "useradd");
    let line = install_line(&server, "deb-user", &[]);
    let user = site.sh("edge", &format!("{line} --engine none"));
    assert_ok(&user, "the user's install");
    server.wait_online("deb-user");
    assert!(site.exists("/home/edge/.local/bin/continuum-agent"));
    assert!(site.exists("/home/edge/.local/state/continuum-agent/identity.json"));
    let owner = site.sh(
        "root",
        "stat -c %U /home/edge/.local/state/continuum-agent/site.key",
    );
    assert_eq!(owner.out.trim(), "edge");
    let removed = site.sh("edge", &format!("{pin_and_url} | sh -s -- --uninstall"));
    assert_ok(&removed, "the user's uninstall");
    assert!(!site.exists("/home/edge/.local/bin/continuum-agent"));
    assert!(!site.exists("/home/edge/.local/state/continuum-agent"));
}

#[test]
fn failures_say_what_went_wrong_and_leave_the_site_as_it_was() {
    let server = Server::start();
    let site = Site::start();
    let untouched = |site: &Site| {
        for path in [
            "/usr/local/bin/continuum-agent",
            "/var/lib/continuum-agent",
            "/usr/local/lib/continuum-agent",
        ] {
            assert!(!site.exists(path), "{path} was left behind");
        }
    };
    let line = install_line(&server, "deb-fail", &[]);
    let (fetch, run) = line.split_once(" | ").unwrap();

    // Another key than the control plane's: curl refuses before anything runs.
    let pin_start = fetch.find("sha256//").unwrap() + "sha256//".len();
    let mut wrong = fetch.to_owned();
    wrong.replace_range(pin_start..pin_start + 4, "AAAA");
    let ran = site.sh("root", &format!("{wrong} | {run}"));
    assert!(ran.out.contains("pinned public key"), "{}", ran.out);
    untouched(&site);

    // An architecture nobody built the agent for.
    let ran = site.sh(
        "root",
        &format!("{fetch} | CONTINUUM_INSTALL_ARCH=riscv64 {run}"),
    );
    assert_ne!(ran.code, 0);
    assert!(
        ran.out.contains("no agent for linux/riscv64"),
        "{}",
        ran.out
    );
    untouched(&site);

    // A control plane that does not answer.
    let ran = site.sh(
        "root",
        &format!("{fetch} | CONTINUUM_URL=https://127.0.0.1:9 {run}"),
    );
    assert_ne!(ran.code, 0);
    assert!(
        ran.out.contains("cannot reach the control plane"),
        "{}",
        ran.out
    );
    untouched(&site);

    // An expired token: the agent was downloaded, the join is refused, all undone.
    let expired = install_line(&server, "deb-late", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_secs(2));
    let ran = site.sh("root", &expired);
    assert_ne!(ran.code, 0);
    assert!(ran.out.contains("expired"), "{}", ran.out);
    assert!(ran.out.contains("nothing was left behind"), "{}", ran.out);
    untouched(&site);
}

#[test]
fn the_generated_systemd_unit_passes_systemd_analyze_and_the_script_passes_shellcheck() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/install.sh");
    let check = Command::new("shellcheck")
        .arg(script)
        .output()
        .expect("shellcheck is needed (tests/run installs it)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir(prefix.path().join("bin")).unwrap();
    std::os::unix::fs::symlink(
        continuum_tests::bins::binary("continuum-agent"),
        prefix.path().join("bin/continuum-agent"),
    )
    .unwrap();
    let unit = Command::new("sh")
        .arg(script)
        .args(["--print-systemd-unit", "--prefix"])
        .arg(prefix.path())
        .output()
        .unwrap();
    assert!(unit.status.success());
    let file = prefix.path().join("continuum-agent.service");
    std::fs::write(&file, &unit.stdout).unwrap();
    let text = String::from_utf8_lossy(&unit.stdout);
    assert!(text.contains("RestartPreventExitStatus=3"), "{text}");
    assert!(text.contains("StartLimitIntervalSec=0"), "{text}");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze is needed (tests/run installs systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify:\n{complaints}"
    );
}
