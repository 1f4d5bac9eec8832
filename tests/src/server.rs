//! A `continuum serve` process in its own directory, and the CLI pointed at it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins::binary;
use crate::wait;

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Runs `command` to completion and captures its output.
    pub fn of(command: &mut Command) -> Self {
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("command starts");
        CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Options for a test control plane.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Heartbeat interval given to agents.
    pub heartbeat: String,
    /// Lifetime of site certificates.
    pub site_cert_ttl: String,
    /// Further `serve` arguments.
    pub extra: Vec<String>,
    /// Environment of the CLI commands run against it.
    pub cli_env: Vec<(String, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            heartbeat: "1s".into(),
            site_cert_ttl: "30days".into(),
            extra: Vec::new(),
            cli_env: Vec::new(),
        }
    }
}

/// A running (or stopped) control plane.
pub struct Server {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
    options: ServerOptions,
    runs: usize,
    /// Where agents reach it.
    pub quic: SocketAddr,
    /// Its API URL.
    pub api: String,
    /// Its Prometheus listener (`None` when turned off).
    pub metrics: Option<SocketAddr>,
    /// The first admin's credential.
    pub admin: String,
}

/// Sends a signal to a process.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
}

impl Server {
    /// Starts a control plane with default test options.
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a control plane in a new temporary directory.
    pub fn start_with(options: ServerOptions) -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let root = tmp.path().to_path_buf();
        let mut server = Server {
            _tmp: Some(tmp),
            data_dir: root.join("continuum-data"),
            root,
            child: None,
            options,
            runs: 0,
            quic: "127.0.0.1:0".parse().expect("address"),
            api: "https://127.0.0.1:0".into(),
            metrics: None,
            admin: String::new(),
        };
        server.spawn("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0");
        server
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory the server and its CLI run in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Uses another data directory from the next (re)start on.
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        self.data_dir = dir;
    }

    fn spawn(&mut self, quic: &str, http: &str, metrics: &str) {
        let metrics_listen = if self.options.extra.iter().any(|a| a == "--metrics-listen") {
            Vec::new()
        } else {
            vec!["--metrics-listen".to_owned(), metrics.to_owned()]
        };
        self.runs += 1;
        let out = self.root.join(format!("serve-{}.out", self.runs));
        let err = self.root.join(format!("serve-{}.log", self.runs));
        let child = Command::new(binary("continuum"))
            .current_dir(&self.root)
            .env("HOME", self.root.join("home"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CONTINUUM_SERVER")
            .env_remove("CONTINUUM_TOKEN")
            .args(["serve", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--quic-listen",
                quic,
                "--http-listen",
                http,
                "--advertise",
                "127.0.0.1",
            ])
            .args([
                "--heartbeat-interval",
                &self.options.heartbeat,
                "--site-cert-ttl",
                &self.options.site_cert_ttl,
            ])
            .args(&metrics_listen)
            .args(&self.options.extra)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("log file"))
            .stderr(File::create(&err).expect("log file"))
            .spawn()
            .expect("continuum serve starts");
        self.child = Some(child);
        let banner = wait::until(
            Duration::from_secs(30),
            "the control plane to start",
            || {
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "continuum serve exited with {status}:\n{}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                }
                text.contains("Use the CLI").then_some(text)
            },
        );
        let field = |label: &str| -> String {
            banner
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no {label:?} in the banner:\n{banner}"))
                .to_owned()
        };
        self.quic = field("agents (QUIC):").parse().expect("QUIC address");
        self.api = field("API (HTTPS):");
        self.metrics = field("metrics:")
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .and_then(|address| address.parse().ok());
        if let Some(credential) = banner
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("ctn_"))
        {
            self.admin = credential.to_owned();
        }
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let start = std::time::Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports (after `stop` or `kill`).
    pub fn restart(&mut self) {
        self.stop();
        let (quic, api) = (
            self.quic.to_string(),
            self.api.trim_start_matches("https://").to_owned(),
        );
        let metrics = self
            .metrics
            .map_or_else(|| "none".to_owned(), |m| m.to_string());
        self.spawn(&quic, &api, &metrics);
    }

    /// Runs the CLI against this server (from its directory, so it finds the client file).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        CliOutput::of(&mut self.cli_command(args))
    }

    /// The CLI command against this server, not yet run (for commands that stream).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("continuum"));
        command
            .current_dir(&self.root)
            .env("HOME", self.root.join("home"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CONTINUUM_SERVER")
            .env_remove("CONTINUUM_TOKEN")
            .env_remove("CONTINUUM_CA")
            .envs(self.options.cli_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .args(args);
        command
    }

    /// Writes a policy file into the policies directory and waits until the rollout
    /// policy `name` it defines is in force.
    pub fn install_policy(&self, file: &str, text: &str, name: &str) {
        std::fs::write(self.data_dir.join("policies").join(file), text).expect("policy file");
        wait::until(Duration::from_secs(20), "the policy to load", || {
            let view = self.json(&["policies"]);
            view["rollouts"]
                .as_array()?
                .iter()
                .any(|r| r["name"] == name)
                .then_some(())
        });
    }

    /// Installs the rollout policy `quick` (one wave of every site, no bake, healthy for
    /// a second), which end-to-end tests name in their releases.
    pub fn install_quick_policy(&self) {
        const QUICK: &str = r#"[rollout.quick]
waves = [{ name = "all", percent = 100 }]
bake = "0s"
healthy_for = "1s"
max_parallel = 10
"#;
        self.install_policy("quick.toml", QUICK, "quick");
    }

    /// Runs the CLI as another operator.
    pub fn cli_as(&self, credential: &str, args: &[&str]) -> CliOutput {
        let mut all = vec!["--token", credential];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// Runs a CLI listing with `-o json` and parses it.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        let out = self.cli(&all).ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
    }

    /// Writes the manifest `text` as `name` and publishes it with the image archive it
    /// ships.
    pub fn publish_shipped(&self, name: &str, text: &str, archive: &Path) {
        let file = crate::releases::write(self.root(), name, text);
        self.cli(&[
            "release",
            "publish",
            &file.to_string_lossy(),
            "--image-archive",
            &archive.to_string_lossy(),
        ])
        .ok();
    }

    /// Creates a join token.
    pub fn token(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--name", name];
        args.extend_from_slice(extra);
        self.json(&args)["token"]
            .as_str()
            .expect("token text")
            .to_owned()
    }

    /// Every site, as `continuum sites -o json` shows them.
    pub fn sites(&self) -> Vec<Value> {
        self.json(&["sites"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// One site, if enrolled.
    pub fn site(&self, name: &str) -> Option<Value> {
        self.sites().into_iter().find(|s| s["name"] == name)
    }

    /// Waits until `name` is online and returns its listing.
    pub fn wait_online(&self, name: &str) -> Value {
        self.wait_online_within(name, Duration::from_secs(20))
    }

    /// Waits until `name` is online, at most `limit`.
    pub fn wait_online_within(&self, name: &str, limit: Duration) -> Value {
        wait::until(limit, &format!("site {name} online"), || {
            self.site(name).filter(|s| s["online"] == true)
        })
    }

    /// What the current run printed on standard output (its start banner).
    pub fn banner(&self) -> String {
        std::fs::read_to_string(self.root.join(format!("serve-{}.out", self.runs)))
            .unwrap_or_default()
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join(format!("serve-{}.log", self.runs)))
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
