//! A `continuum-agent` with its own state directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins::binary;
use crate::server::{CliOutput, signal};
use crate::wait;

/// One site's agent.
pub struct Agent {
    /// Its state directory.
    pub state_dir: PathBuf,
    name: String,
    child: Option<Child>,
    runs: usize,
    log_dir: PathBuf,
}

impl Agent {
    /// An agent whose state lives in `<root>/agents/<name>`.
    pub fn new(root: &Path, name: &str) -> Self {
        let log_dir = root.join("agent-logs");
        std::fs::create_dir_all(&log_dir).expect("log directory");
        Agent {
            state_dir: root.join("agents").join(name),
            name: name.to_owned(),
            child: None,
            runs: 0,
            log_dir,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary("continuum-agent"));
        command
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env_remove("CONTINUUM_JOIN_TOKEN");
        command
    }

    /// `continuum-agent join TOKEN [--name NAME]`.
    pub fn join(&self, token: &str, name: Option<&str>) -> CliOutput {
        let mut args = vec![];
        if let Some(name) = name {
            args.extend(["--name", name]);
        }
        self.join_with(token, &args)
    }

    /// `continuum-agent join TOKEN ARGS…`.
    pub fn join_with(&self, token: &str, args: &[&str]) -> CliOutput {
        let mut command = self.command();
        command.args(["join", token]).args(args);
        CliOutput::of(&mut command)
    }

    /// Starts `continuum-agent run` with fast reconnects.
    pub fn start(&mut self) {
        self.start_with(&["--reconnect-base", "300ms", "--reconnect-max", "3s"]);
    }

    /// Starts `continuum-agent run` with the given options.
    pub fn start_with(&mut self, options: &[&str]) {
        self.start_with_env(options, &[]);
    }

    /// Starts `continuum-agent run` with the given options and environment variables.
    pub fn start_with_env(&mut self, options: &[&str], env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "agent {} already running", self.name);
        self.runs += 1;
        let log = File::create(self.log_path()).expect("log file");
        // Agents deploy nothing unless a test gives them an engine.
        let engine: &[&str] = if options.contains(&"--engine") {
            &[]
        } else {
            &["--engine", "none"]
        };
        let child = self
            .command()
            .arg("run")
            .args(engine)
            .args(options)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("continuum-agent run starts");
        self.child = Some(child);
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}-{}.log", self.name, self.runs))
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `continuum-agent run` on the real Docker engine, reconciling every second, with
    /// its opened secrets under `secrets_dir` (a tmpfs).
    pub fn start_on_docker(&mut self, secrets_dir: &Path) {
        self.start_with(&[
            "--engine",
            crate::docker::ENGINE,
            "--reconcile-interval",
            "1s",
            "--secrets-dir",
            &secrets_dir.to_string_lossy(),
        ]);
    }

    /// Kills the agent with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            signal(child, "TERM");
        }
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    /// Waits for the running agent to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("agent running");
        let status = wait::until(limit, "the agent to exit", || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status
    }

    /// `continuum-agent status -o json`.
    pub fn status(&self) -> Value {
        let out = CliOutput::of(self.command().args(["status", "-o", "json"]));
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {out:?}"))
    }

    /// Waits until the agent reports itself online.
    pub fn wait_online(&self) -> Value {
        wait::until(
            Duration::from_secs(20),
            &format!("agent {} online", self.name),
            || {
                let status = self.status();
                (status["run"]["state"] == "online").then_some(status)
            },
        )
    }

    /// The agent's identity file.
    pub fn identity(&self) -> Value {
        let bytes = std::fs::read(self.state_dir.join("identity.json")).expect("identity file");
        serde_json::from_slice(&bytes).expect("identity is JSON")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
