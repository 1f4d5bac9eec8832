//! The one-line install, run as printed by `continuum token create` in a clean Debian
//! container (debootstrap minbase with curl, no init system): as root and as a plain
//! user, again without change, uninstalled; and failures that leave nothing behind.

use std::process::Command;
use std::time::Duration;

use continuum_tests::docker::{Cleanup, unique};
use continuum_tests::server::{Server, ServerOptions};
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

    /// How many agent processes run in the container (launchers not counted).
    fn agents(&self) -> usize {
        let ran = self.sh(
            "root",
            "for p in /proc/[0-9]*; do readlink $p/exe; done 2>/dev/null | grep -c '/continuum-agent$' || true",
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

/// A CA standing in for a public one, and a certificate it issued for loopback.
struct PublicPki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl PublicPki {
    fn new() -> PublicPki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Public Root CA");
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        PublicPki {
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Issues a certificate for loopback into tls.crt and tls.key; returns its DER.
    fn issue(&self) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.path("tls.key.new"), key.serialize_pem()).unwrap();
        std::fs::write(self.path("tls.crt.new"), cert.pem()).unwrap();
        // As renewal tools do: each file replaced whole.
        std::fs::rename(self.path("tls.key.new"), self.path("tls.key")).unwrap();
        std::fs::rename(self.path("tls.crt.new"), self.path("tls.crt")).unwrap();
        cert.der().to_vec()
    }

    /// The leaf certificate the listener at `api` (`https://host:port`) presents.
    fn served(&self, api: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(continuum_shared::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut tcp = std::net::TcpStream::connect(api.trim_start_matches("https://")).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)
                .expect("the handshake with the public certificate");
        }
        tls.peer_certificates().unwrap()[0].to_vec()
    }
}

#[test]
fn with_a_publicly_trusted_certificate_the_line_is_plain_https_and_renewals_need_no_restart() {
    let pki = PublicPki::new();
    let first = pki.issue();
    let server = Server::start_with(ServerOptions {
        extra: vec![
            "--tls-cert".into(),
            pki.path("tls.crt"),
            "--tls-key".into(),
            pki.path("tls.key"),
        ],
        // The operator's machine trusts the "public" CA as a system root.
        cli_env: vec![("SSL_CERT_FILE".into(), pki.path("ca.pem"))],
        ..ServerOptions::default()
    });
    assert_eq!(pki.served(&server.api), first);

    let line = install_line(&server, "deb-public", &[]);
    assert!(line.starts_with("curl -fsSL https://127.0.0.1:"), "{line}");
    assert!(
        !line.contains("pinnedpubkey") && !line.contains(" -k"),
        "{line}"
    );

    // A site that trusts the public roots installs with the line as printed.
    let site = Site::start();
    let copied = Command::new("docker")
        .args(["cp", &pki.path("ca.pem")])
        .arg(format!(
            "{}:/usr/local/share/ca-certificates/public-test-ca.crt",
            site.name
        ))
        .status()
        .unwrap();
    assert!(copied.success());
    assert_ok(
        &site.sh("root", "update-ca-certificates"),
        "update-ca-certificates",
    );
    let installed = site.sh("root", &format!("{line} --engine none"));
    assert_ok(&installed, "the install");
    assert!(installed.out.contains("supervisor"), "{}", installed.out);
    server.wait_online("deb-public");

    // The CLI trusts the listener through the system's roots; without them it says why.
    let untrusted = server
        .cli_command(&["sites"])
        .env_remove("SSL_CERT_FILE")
        .env("SSL_CERT_DIR", pki.path("no-such-dir"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success());
    assert!(
        said.contains("not publicly trusted") || said.contains("system's trust store"),
        "{said}"
    );

    // A renewal is served without a restart, and a broken one is not.
    let renewed = pki.issue();
    wait::until(Duration::from_secs(10), "the renewed certificate", || {
        (pki.served(&server.api) == renewed).then_some(())
    });
    std::fs::write(pki.path("tls.key"), "half-written").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pki.served(&server.api), renewed);
    server.cli(&["sites"]).ok();
}

#[test]
fn the_systemd_units_and_openrc_script_pass_their_checks_and_so_does_the_installer() {
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
    std::fs::create_dir_all(prefix.path().join("lib/continuum-agent")).unwrap();
    for installed in [
        "lib/continuum-agent/launcher",
        "lib/continuum-agent/continuum-agent",
    ] {
        std::os::unix::fs::symlink(
            continuum_tests::bins::binary("continuum-agent"),
            prefix.path().join(installed),
        )
        .unwrap();
    }
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
    assert!(text.contains("launcher --state-dir"), "{text}");
    assert!(text.contains("launch --agent"), "{text}");
    verify_unit(&file);

    // The user unit a site without root gets.
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let as_user = Command::new("su")
        .args(["-s", "/bin/sh", "nobody", "-c"])
        .arg(format!(
            "HOME={} sh {script} --print-systemd-unit --prefix {}",
            home.path().display(),
            prefix.path().display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&as_user.stdout);
    assert!(text.contains("WantedBy=default.target"), "{text}");
    let file = prefix.path().join("continuum-agent-user.service");
    std::fs::write(&file, text.as_bytes()).unwrap();
    verify_unit(&file);

    // The OpenRC script: plain sh, supervised by supervise-daemon. (shellcheck cannot
    // know that openrc-run reads its variables.)
    let openrc = Command::new("sh")
        .arg(script)
        .arg("--print-openrc-script")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&openrc.stdout);
    assert!(text.starts_with("#!/sbin/openrc-run"), "{text}");
    assert!(text.contains("supervisor=supervise-daemon"), "{text}");
    let file = prefix.path().join("continuum-agent.openrc");
    std::fs::write(&file, text.as_bytes()).unwrap();
    let check = Command::new("shellcheck")
        .args(["-s", "sh", "-e", "SC2034"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // The control plane's unit, pointed at the binary under test.
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/continuum.service"
    );
    let binary = continuum_tests::bins::binary("continuum");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("/usr/local/bin/continuum", binary.to_str().unwrap());
    let file = prefix.path().join("continuum.service");
    std::fs::write(&file, text).unwrap();
    verify_unit(&file);
}

fn verify_unit(file: &std::path::Path) {
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(file)
        .output()
        .expect("systemd-analyze is needed (tests/run installs systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify {}:\n{complaints}",
        file.display()
    );
}

/// A compose project, taken down with its volumes and images when dropped.
struct Demo {
    project: String,
    tag: String,
}

impl Demo {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/compose.yml");
        Command::new("docker-compose")
            .env("TAG", &self.tag)
            .args(["-p", &self.project, "-f", file])
            .args(args)
            .output()
            .expect("docker-compose is needed (tests/run installs it)")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        for image in ["continuum/control-plane", "continuum/agent"] {
            let _ = Command::new("docker")
                .args(["rmi", &format!("{image}:{}", self.tag)])
                .output();
        }
    }
}

#[test]
fn the_container_files_build_from_scratch_and_the_compose_demo_brings_three_sites_online() {
    let tag = unique("t");
    let bins = continuum_tests::bins::binary("continuum");
    let build = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/container/build"
    ))
    .arg(bins.parent().unwrap())
    .arg(&tag)
    .output()
    .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let demo = Demo {
        project: unique("demo").replace('-', ""),
        tag,
    };
    let up = demo.compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let sites = wait::until(Duration::from_secs(90), "three demo sites online", || {
        let out = demo.compose(&["run", "--rm", "token", "sites", "-o", "json"]);
        let sites: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let online = sites
            .as_array()?
            .iter()
            .filter(|s| s["online"] == true)
            .count();
        (online == 3).then_some(sites)
    });
    assert!(
        sites
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"].as_str().unwrap().starts_with("demo-")),
        "{sites}"
    );
}

#[test]
fn the_kubernetes_manifests_pass_kubernetes_validate() {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/base");
    let kustomization = std::fs::read_to_string(format!("{base}/kustomization.yaml")).unwrap();
    let resources: Vec<String> = kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(|r| format!("{base}/{r}")))
        .collect();
    assert_eq!(resources.len(), 3, "{kustomization}");
    let validate = |files: &[String]| {
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(files)
            .output()
            .expect("kubernetes-validate is needed (tests/run installs it from PyPI)")
    };
    let checked = validate(&resources);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The validator does reject a broken manifest.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&resources[1])
        .unwrap()
        .replace("replicas: 1", "replicas: one");
    std::fs::write(&broken, text).unwrap();
    assert!(!validate(&[broken.display().to_string()]).status.success());
}

#[test]
fn an_installed_site_that_is_decommissioned_uninstalls_itself_and_stays_stopped() {
    let server = Server::start();
    let site = Site::start();
    let line = install_line(&server, "deb-gone", &[]);
    assert_ok(
        &site.sh("root", &format!("{line} --engine none")),
        "the install",
    );
    server.wait_online("deb-gone");
    assert!(site.exists("/usr/local/lib/continuum-agent/uninstall.sh"));

    server.cli(&["site", "decommission", "deb-gone"]).ok();
    wait::until(Duration::from_secs(60), "the site decommissioned", || {
        let s = server.site("deb-gone")?;
        (s["status"] == "decommissioned").then_some(())
    });
    wait::until(Duration::from_secs(30), "the agent uninstalled", || {
        (site.agents() == 0 && !site.exists("/usr/local/bin/continuum-agent")).then_some(())
    });
    assert!(!site.exists("/var/lib/continuum-agent"));
    assert!(!site.exists("/usr/local/lib/continuum-agent"));
    // The supervisor let it go: nothing starts again.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(site.agents(), 0);
    let supervisors = site.sh(
        "root",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null | grep -c '[s]upervise' || true",
    );
    assert_eq!(supervisors.out.trim(), "0", "{}", supervisors.out);
}
