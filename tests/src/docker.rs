//! The real Docker engine for end-to-end tests. No registry is reachable, so tests make
//! their own image: busybox (Debian's static build) imported as a one-file root
//! filesystem, saved as an image archive, then removed from the engine so that the
//! agent has to load it from the archive the release ships.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// The engine socket the tests use.
pub const ENGINE: &str = "unix:///var/run/docker.sock";

/// busybox applets linked into the test image.
const APPLETS: &[&str] = &[
    "sh", "httpd", "echo", "mkdir", "cat", "sleep", "ls", "true", "false", "wget", "rm",
];

/// Runs `docker ARGS`, failing the test with its output when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker is needed for this test (tests/run installs it): {e}"));
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A name unique to this test process and call, usable as a site or image name.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A test image saved as an archive and no longer on the engine.
pub struct TestImage {
    /// `name:tag`, as a manifest's `container.image` names it.
    pub tag: String,
    /// The image id.
    pub id: String,
    /// The `docker save` archive.
    pub archive: PathBuf,
}

impl TestImage {
    /// Builds an image tagged `name:1` with busybox and a marker file holding `marker`
    /// (so different markers make different images), saves it into `dir`, and removes
    /// it from the engine.
    pub fn build(dir: &Path, name: &str, marker: &str) -> TestImage {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox is needed (tests/run installs busybox-static)");
        let rootfs = dir.join(format!("{name}-rootfs.tar"));
        let mut builder = tar::Builder::new(std::fs::File::create(&rootfs).unwrap());
        let bytes = std::fs::read(busybox).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, "bin/busybox", bytes.as_slice())
            .unwrap();
        for applet in APPLETS {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_mode(0o777);
            builder
                .append_link(&mut link, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(marker.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "marker", marker.as_bytes())
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let tag = format!("continuum-test/{name}:1");
        let id = docker(&["import", rootfs.to_str().unwrap(), &tag]);
        let archive = dir.join(format!("{name}.tar"));
        docker(&["save", "-o", archive.to_str().unwrap(), &tag]);
        docker(&["image", "rm", "-f", &tag]);
        TestImage { tag, id, archive }
    }
}

/// Whether the engine has the named volume.
pub fn volume_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the engine holds the image (id or tag).
pub fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes the named volumes when a test ends, whatever happened.
pub struct Volumes(pub Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for volume in &self.0 {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", volume])
                .output();
        }
    }
}

/// The containers carrying `site`'s label, as `docker inspect` shows them.
pub fn containers_of(site: &str) -> Vec<Value> {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.continuum.site={site}"),
    ]);
    if ids.is_empty() {
        return Vec::new();
    }
    // A container may go between the listing and the inspection: `docker inspect`
    // then still prints the others, and fails for it alone.
    let out = Command::new("docker")
        .arg("inspect")
        .args(ids.lines())
        .output()
        .expect("docker inspect runs");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Removes every container of `site` and the given images, when a test ends.
pub struct Cleanup {
    /// Sites whose containers go.
    pub sites: Vec<String>,
    /// Images (ids or tags) that go.
    pub images: Vec<String>,
    /// Containers (names) that go.
    pub containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for site in &self.sites {
            for c in containers_of_quiet(site) {
                quiet(&["rm", "-f", &c]);
            }
        }
        for c in &self.containers {
            quiet(&["rm", "-f", c]);
        }
        for image in &self.images {
            quiet(&["image", "rm", "-f", image]);
        }
    }
}

fn containers_of_quiet(site: &str) -> Vec<String> {
    Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.continuum.site={site}"),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// GETs `http://127.0.0.1:PORT/` with a short timeout; the body, if it answered 200.
pub fn http_get(port: u16) -> Option<String> {
    http_get_path(port, "/")
}

/// GETs `http://127.0.0.1:PORT{path}` with a short timeout; the body (trimmed), if it
/// answered 200.
pub fn http_get_path(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.lines()
        .next()?
        .contains(" 200")
        .then(|| body.trim().to_owned())
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A socket proxy in front of the engine that a test can cut and restore, to see the
/// agent lose its engine and find it again without touching the machine's daemon.
pub struct SocketProxy {
    path: PathBuf,
    running: Option<ProxyRun>,
}

struct ProxyRun {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    accept: std::thread::JoinHandle<()>,
}

impl SocketProxy {
    /// A proxy listening at `path`, forwarding to the engine's socket.
    pub fn start(path: &Path) -> SocketProxy {
        let mut proxy = SocketProxy {
            path: path.to_owned(),
            running: None,
        };
        proxy.restore();
        proxy
    }

    /// The engine address agents use to go through the proxy.
    pub fn address(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Starts listening (again).
    pub fn restore(&mut self) {
        use std::os::unix::net::{UnixListener, UnixStream};
        assert!(self.running.is_none(), "the proxy already runs");
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, open) = (stop.clone(), connections.clone());
        let accept = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = UnixStream::connect(ENGINE.trim_start_matches("unix://")) else {
                    continue;
                };
                let mut list = open.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        self.running = Some(ProxyRun {
            stop,
            connections,
            accept,
        });
    }

    /// Cuts every connection and stops listening.
    pub fn cut(&mut self) {
        let Some(run) = self.running.take() else {
            return;
        };
        run.stop.store(true, Ordering::Relaxed);
        let _ = run.accept.join();
        for c in run.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A real registry on loopback (Debian's `docker-registry`), storing in a test directory.
pub struct Registry {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: std::process::Child,
}

impl Registry {
    /// Starts a registry storing under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Registry {
        let port = free_port();
        let child = Self::spawn(dir, port, "");
        Registry {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// Starts it again on the same port and storage, now wanting `user` and `password`
    /// (HTTP basic authentication, checked against a bcrypt htpasswd file).
    pub fn require_login(&mut self, user: &str, password: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let htpasswd = self.dir.join("registry.htpasswd");
        let hash = bcrypt::hash(password, 4).unwrap();
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: continuum-test\n    path: {}\n",
            htpasswd.display()
        );
        self.child = Self::spawn(&self.dir, self.port, &auth);
    }

    fn spawn(dir: &Path, port: u16, extra: &str) -> std::process::Child {
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("docker-registry is needed (tests/run installs the docker-registry package): {e}")
            });
        crate::wait::until(
            std::time::Duration::from_secs(20),
            "the registry to answer",
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        child
    }

    /// Pushes `image` here and removes it from the engine again; returns the reference
    /// pinned by digest.
    pub fn push(&self, image: &TestImage) -> String {
        docker(&["load", "-i", image.archive.to_str().unwrap()]);
        let name = image
            .tag
            .rsplit_once(':')
            .map_or(image.tag.as_str(), |(n, _)| n);
        let remote = format!("127.0.0.1:{}/{name}", self.port);
        docker(&["tag", &image.tag, &format!("{remote}:1")]);
        let out = docker(&["push", &format!("{remote}:1")]);
        let digest = out
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no digest in the push output:\n{out}"))
            .to_owned();
        docker(&["image", "rm", "-f", &image.tag, &format!("{remote}:1")]);
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &image.id])
            .output();
        format!("{remote}@{digest}")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Podman API service on a socket of its own (Podman 4 with runc, the runtime that
/// works under this machine's cgroup setup), for the same scenarios as Docker.
pub struct Podman {
    /// The socket's path.
    pub socket: PathBuf,
    child: std::process::Child,
    sites: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    /// Starts `podman system service` on `<dir>/podman.sock` and waits until it answers.
    pub fn start(dir: &Path) -> Podman {
        let socket = dir.join("podman.sock");
        let child = Command::new("podman")
            .args(["--runtime", "runc", "system", "service", "--time", "0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("podman.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("podman is needed (tests/run installs podman and runc): {e}")
            });
        crate::wait::until(
            std::time::Duration::from_secs(30),
            "the podman service to answer",
            || std::os::unix::net::UnixStream::connect(&socket).ok(),
        );
        Podman {
            socket,
            child,
            sites: Vec::new(),
            images: Vec::new(),
        }
    }

    /// The engine address agents use.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Removes `site`'s containers and these images from Podman when the test ends.
    pub fn clean_up_after(&mut self, site: &str, image: &str) {
        self.sites.push(site.to_owned());
        self.images.push(image.to_owned());
    }

    /// Ids of the containers carrying `site`'s label, in Podman.
    pub fn containers_of(&self, site: &str) -> Vec<String> {
        let out = Command::new("podman")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.continuum.site={site}"))
            .output()
            .expect("podman ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for site in self.sites.clone() {
            for id in self.containers_of(&site) {
                let _ = Command::new("podman").args(["rm", "-f", &id]).output();
            }
        }
        for image in &self.images {
            let _ = Command::new("podman").args(["rmi", "-f", image]).output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
