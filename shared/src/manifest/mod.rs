//! Release manifests: one signed version of one service, authored as TOML.
//!
//! ```toml
//! [service]
//! name = "xcache"
//! version = "1.4.2"
//!
//! [container]
//! image = "registry.example.org/osg/xcache@sha256:…"   # pinned by digest, or shipped as an archive
//! command = ["xrootd", "-c", "/etc/xcache.cfg"]
//! env = { CACHE_SIZE = "500G" }
//! ports = ["1094:1094/tcp"]
//! volumes = ["/srv/cache:/cache"]
//! memory = "4GiB"
//! cpus = 2.0
//! restart = "always"
//!
//! [health]                 # exactly one of http, tcp, exec
//! http = "http://127.0.0.1:1094/healthz"
//! interval = "5s"
//! timeout = "2s"
//! start_period = "30s"
//! healthy_after = 3
//!
//! [update]
//! strategy = "stop-first"  # or "start-first"
//! healthy_within = "2m"
//!
//! [placement]
//! require = 'labels.tier in ["T1", "T2"]'
//! rollout = "default"
//!
//! [[secrets]]              # set with `continuum secret set`; a file on a tmpfs
//! name = "db-password"
//! path = "/run/secrets/db-password"   # the default: /run/secrets/<name>
//! ```
//!
//! `container.registry_secret = "NAME"` names a secret holding `USER:PASSWORD` for
//! pulling the image.
//!
//! [`parse`] checks everything before anything is signed and reports every problem it
//! finds with file, line and field. The same parser runs on the site after the bytes
//! have been verified, so both ends agree on what a release means.

mod check;
mod raw;
pub mod units;

pub use check::pinned_by_digest;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST: usize = 64 * 1024;

/// A checked release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Service name.
    pub service: String,
    /// Release version.
    pub version: String,
    /// What to run.
    pub container: Container,
    /// How to tell it works.
    pub health: Health,
    /// How to replace the previous release.
    pub update: Update,
    /// Where it may run.
    pub placement: Placement,
    /// Secrets it gets as read-only files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretFile>,
}

impl Release {
    /// Every secret the release needs: its files and its registry login.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.container.registry_secret.as_deref())
    }
}

/// A secret handed to the container as a read-only file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    /// The secret's name (`continuum secret set NAME`).
    pub name: String,
    /// Where the container sees it (absolute).
    pub path: String,
}

/// Most secrets one release may name.
pub const MAX_RELEASE_SECRETS: usize = 32;

/// The container of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Image reference; pinned by digest unless shipped as an archive.
    pub image: String,
    /// Command and arguments, if not the image's default.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Mounted volumes.
    pub volumes: Vec<Volume>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Restart policy.
    pub restart: Restart,
    /// Whether it asks for a privileged container.
    pub privileged: bool,
    /// Whether it asks for the host's network.
    pub host_network: bool,
    /// The secret holding the registry login (`USER:PASSWORD`) for pulling the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_secret: Option<String>,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Host address to bind, if not all.
    pub host_ip: Option<String>,
    /// Host port.
    pub host: u16,
    /// Container port.
    pub container: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// A mounted volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Host path (absolute) or named volume.
    pub source: String,
    /// Path inside the container (absolute).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Container restart policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never restart.
    No,
    /// Restart when it exits with an error.
    OnFailure,
    /// Always restart.
    Always,
    /// Restart unless stopped by hand.
    UnlessStopped,
}

/// The health check of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// What to probe.
    pub check: HealthCheck,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Grace time after start during which failures do not count.
    pub start_period: Duration,
    /// Consecutive successes that make it healthy.
    pub healthy_after: u32,
}

/// The kinds of health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheck {
    /// An HTTP GET that must answer 2xx.
    Http(String),
    /// A TCP connect that must succeed.
    Tcp(String),
    /// A command run inside the container that must exit 0.
    Exec(Vec<String>),
}

/// How a release replaces the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Order of stopping the old and starting the new.
    pub strategy: Strategy,
    /// The new release must be healthy within this, or the site goes back.
    pub healthy_within: Duration,
}

/// Update strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old container, then start the new one.
    StopFirst,
    /// Start the new one, and stop the old once the new is healthy.
    StartFirst,
}

/// Where a release may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// An expression over site labels; absent means every site.
    pub require: Option<String>,
    /// The rollout policy to use.
    pub rollout: String,
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// Dotted field path, e.g. `container.image`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Everything wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file, as the author named it.
    pub file: String,
    /// The problems, in line order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}:{}: {}: {}", self.file, p.line, p.field, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// How the release's image reaches sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// Pulled from a registry: the image must be pinned by digest.
    Registry,
    /// Shipped by the control plane as an image archive published with the release.
    Archive,
}

/// Parses and checks a manifest. `file` names it in errors.
pub fn parse(file: &str, text: &str, source: ImageSource) -> Result<Release, ManifestError> {
    let fail = |problems: Vec<Problem>| ManifestError {
        file: file.to_owned(),
        problems,
    };
    if text.len() > MAX_MANIFEST {
        return Err(fail(vec![Problem {
            line: 1,
            field: "-".into(),
            message: format!(
                "the manifest is {} bytes; at most {MAX_MANIFEST} are allowed",
                text.len()
            ),
        }]));
    }
    let raw: raw::Manifest =
        toml::from_str(text).map_err(|e| fail(vec![raw::syntax_problem(text, &e)]))?;
    check::release(text, raw, source).map_err(fail)
}

/// An image archive shipped with a release. The release's signed image-repository entry
/// records it (custom field `archive`), so a site checks the archive's bytes and the
/// image it loads against what the release managers signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageArchive {
    /// Its image-repository target name.
    pub target: String,
    /// SHA-256 of the archive, lower-case hex.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
    /// The id of the image it holds (`sha256:<hex>`).
    pub image_id: String,
}

impl ImageArchive {
    /// Checks the fields' shapes, for records read from the network.
    pub fn check(&self, service: &str, version: &str) -> Result<(), String> {
        let hex64 =
            |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if self.target != archive_target_name(service, version) {
            return Err(format!(
                "the image archive is named {:?}, not {:?}",
                self.target,
                archive_target_name(service, version)
            ));
        }
        if !hex64(&self.sha256) {
            return Err("the image archive's sha256 is not 64 lower-case hex digits".into());
        }
        match self.image_id.strip_prefix("sha256:") {
            Some(id) if hex64(id) => Ok(()),
            _ => Err(format!(
                "{:?} is not an image id (sha256:<64 hex>)",
                self.image_id
            )),
        }
    }
}

/// The service name under which agent releases are rolled out; no service may take it.
pub const AGENT_SERVICE: &str = "continuum-agent";

/// The image-repository target name of the agent binary of `version` for `triple`
/// (a Rust target triple such as `x86_64-unknown-linux-gnu`).
pub fn agent_target_name(version: &str, triple: &str) -> String {
    format!("agents/{AGENT_SERVICE}/{version}/{triple}")
}

/// The version and target triple an agent binary's target name holds.
pub fn parse_agent_target_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("agents/")?.strip_prefix(AGENT_SERVICE)?;
    let (version, triple) = rest.strip_prefix('/')?.split_once('/')?;
    (check::version_ok(version) && triple_ok(triple)).then_some((version, triple))
}

/// Whether `version` is a release version: 1 to 64 letters, digits, `. _ + -`,
/// starting with a letter or digit.
pub fn version_ok(version: &str) -> bool {
    check::version_ok(version)
}

/// Whether `triple` looks like a Rust target triple: 2 to 5 parts of lower-case
/// letters, digits and `_`, joined by `-`.
pub fn triple_ok(triple: &str) -> bool {
    let parts = triple.split('-').count();
    (2..=5).contains(&parts)
        && triple.len() <= 64
        && triple.split('-').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// The image-repository target name of a release's image archive.
pub fn archive_target_name(service: &str, version: &str) -> String {
    format!("images/{service}/{version}.tar")
}

/// The image-repository target name of a release's manifest.
pub fn target_name(service: &str, version: &str) -> String {
    format!("releases/{service}/{version}.toml")
}

#[cfg(test)]
mod tests;
