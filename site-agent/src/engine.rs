//! The container engine, through the Docker Engine API (Docker, or Podman's compatible
//! socket). The agent touches only containers that carry its own site label, so several
//! agents, and whatever else the host runs, can share one engine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

/// Label naming the site whose agent manages a container.
pub const LABEL_SITE: &str = "io.continuum.site";
/// Label naming the service a container runs.
pub const LABEL_SERVICE: &str = "io.continuum.service";
/// Label naming the release version a container runs.
pub const LABEL_RELEASE: &str = "io.continuum.release";
/// Label holding the hash of the container's specification.
pub const LABEL_SPEC: &str = "io.continuum.spec";

/// The default engine address: `DOCKER_HOST` if set, else Docker's socket.
pub fn default_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Something the engine did not do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot be reached (socket missing, connection refused or cut).
    #[error(
        "the container engine at {address} is unreachable: {reason} (is Docker or Podman running? `continuum-agent run --engine unix:///path/to.sock` chooses the socket)"
    )]
    Unreachable {
        /// The engine's address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The engine answered with an error.
    #[error("the container engine refused: {0}")]
    Refused(String),
}

/// A container of ours, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    /// Container id.
    pub id: String,
    /// Container name (without the leading slash).
    pub name: String,
    /// The service it runs.
    pub service: String,
    /// The release it runs.
    pub release: String,
    /// Its specification hash.
    pub spec: String,
    /// Whether it is running.
    pub running: bool,
}

/// A connection to one engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    address: String,
    requests: Arc<AtomicU64>,
    /// Resource limits every container gets explicitly (Podman needs them; see
    /// [`explicit_rlimits`]).
    rlimits: Option<Vec<ResourcesUlimits>>,
}

impl Engine {
    /// Connects to the engine at `address` (`unix:///path` or a socket path) and agrees
    /// on an API version with it.
    pub async fn connect(address: &str) -> Result<Engine, EngineError> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let unreachable = |reason: String| EngineError::Unreachable {
            address: address.to_owned(),
            reason,
        };
        if !path.starts_with('/') {
            return Err(unreachable(
                "only local engines are supported: give unix:///path/to/socket".into(),
            ));
        }
        if !Path::new(path).exists() {
            return Err(unreachable(format!("{path} does not exist")));
        }
        let requests = Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?
            .with_request_modifier(move |request| {
                counted.fetch_add(1, Ordering::Relaxed);
                request
            })
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let version = docker
            .version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let podman = version
            .components
            .unwrap_or_default()
            .iter()
            .any(|c| c.name.to_lowercase().contains("podman"));
        Ok(Engine {
            docker,
            address: address.to_owned(),
            requests,
            rlimits: podman.then(explicit_rlimits),
        })
    }

    /// How many API requests this connection has made (for the reconcile benchmark).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn error(&self, error: BollardError) -> EngineError {
        match error {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Refused(format!("{message} (HTTP {status_code})")),
            BollardError::DockerStreamError { error } => EngineError::Refused(error),
            other => EngineError::Unreachable {
                address: self.address.clone(),
                reason: other.to_string(),
            },
        }
    }

    /// Every container, running or not, that carries `site`'s label.
    pub async fn ours(&self, site: &str) -> Result<Vec<Ours>, EngineError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_SITE}={site}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(e))?;
        Ok(listed.into_iter().filter_map(|c| ours(c, site)).collect())
    }

    /// Creates a container named `name`; returns its id.
    pub async fn create(
        &self,
        name: &str,
        mut body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        if let Some(rlimits) = &self.rlimits {
            let host = body.host_config.get_or_insert_with(Default::default);
            host.ulimits.get_or_insert_with(|| rlimits.clone());
        }
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map(|r| r.id)
            .map_err(|e| self.error(e))
    }

    /// Starts a container.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| self.error(e))
    }

    /// Stops a container, giving it `grace` before it is killed. Already stopped is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let options = StopContainerOptionsBuilder::new()
            .t(grace.as_secs().min(600) as i32)
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Removes a container (stopping it first if needed). Already gone is fine.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Inspects a container.
    pub async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, EngineError> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.error(e))
    }

    /// The last `lines` lines of a container's output, bounded to `max_bytes`.
    pub async fn log_tail(&self, id: &str, lines: usize, max_bytes: usize) -> String {
        let tail = lines.to_string();
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        continuum_shared::protocol::keep_end(text, max_bytes)
    }

    /// A container's CPU time so far (seconds) and memory in use (bytes), read once.
    pub async fn stats(&self, id: &str) -> Result<(f64, u64), EngineError> {
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stream = self.docker.stats(id, Some(options));
        let stats = match stream.next().await {
            Some(Ok(stats)) => stats,
            Some(Err(e)) => return Err(self.error(e)),
            None => return Err(EngineError::Refused(format!("no statistics for {id}"))),
        };
        let cpu_ns = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = stats.memory_stats.and_then(|m| m.usage).unwrap_or(0);
        Ok((cpu_ns as f64 / 1e9, memory))
    }

    /// A container's output from `tail` lines before the end, and as it is written
    /// when `follow` is set, in chunks as the engine delivers them.
    pub fn logs(
        &self,
        id: &str,
        tail: u32,
        follow: bool,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, EngineError>> + Send + 'static {
        let tail = tail.to_string();
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        let this = self.clone();
        self.docker
            .logs(id, Some(options))
            .map(move |chunk| chunk.map(|c| c.into_bytes()).map_err(|e| this.error(e)))
    }

    /// Runs `command` inside a running container; returns its exit code.
    pub async fn exec(&self, id: &str, command: &[String]) -> Result<i64, EngineError> {
        use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error(e))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.error(e))?;
        if let StartExecResults::Attached { mut output, .. } = started {
            // Drain (and drop) the output: the exit code is known when it ends.
            while let Some(Ok(_)) = output.next().await {}
        }
        let inspected = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| self.error(e))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }

    /// The id of an image, if the engine has it.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The size of an image in bytes, if the engine has it.
    pub async fn image_size(&self, reference: &str) -> Result<Option<u64>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.size.map(|s| s.max(0) as u64)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Pulls `reference` from its registry.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
    ) -> Result<(), EngineError> {
        let options = CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            item.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Loads an image archive (`docker save` format) from a file.
    pub async fn load(&self, archive: &Path) -> Result<(), EngineError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| EngineError::Refused(format!("{}: {e}", archive.display())))?;
        let body = tokio_util::io::ReaderStream::new(file);
        let options = ImportImageOptionsBuilder::new().quiet(true).build();
        let mut stream = self.docker.import_image_stream(options, body, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// The named volumes a container mounts (host directories are not volumes).
    pub async fn named_volumes(&self, id: &str) -> Result<Vec<String>, EngineError> {
        let inspected = self.inspect(id).await?;
        Ok(inspected
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .filter_map(|m| m.name)
            .collect())
    }

    /// Removes a named volume that no container uses; one in use or gone is left alone.
    pub async fn remove_volume(&self, name: &str) -> Result<bool, EngineError> {
        match self
            .docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Removes an image that no container uses; an image in use or gone is left alone.
    pub async fn remove_image(&self, id: &str) -> Result<bool, EngineError> {
        let options = RemoveImageOptionsBuilder::new().build();
        match self.docker.remove_image(id, Some(options), None).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// Open-file and process limits to give containers explicitly. Podman 4 with runc (the
/// runtime that works under this cgroup setup) cannot create a container without
/// explicit limits it is allowed to set: the agent's own open-file limit, and its
/// process limit capped at the kernel's `pid_max` (Podman caps its own there). Docker
/// sets its daemon's defaults itself, so it gets none.
fn explicit_rlimits() -> Vec<ResourcesUlimits> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(32768);
    let own = |label: &str| -> Option<(i64, i64)> {
        let line = limits.lines().find(|l| l.starts_with(label))?;
        let mut numbers = line[label.len()..].split_whitespace();
        let mut next = || match numbers.next()? {
            "unlimited" => Some(i64::MAX),
            n => n.parse::<i64>().ok(),
        };
        Some((next()?, next()?))
    };
    let (files, _) = own("Max open files").unwrap_or((1024, 1024));
    let (processes, _) = own("Max processes").unwrap_or((pid_max, pid_max));
    let processes = processes.min(pid_max);
    [("nofile", files.min(1 << 20)), ("nproc", processes)]
        .into_iter()
        .map(|(name, value)| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(value),
            hard: Some(value),
        })
        .collect()
}

fn ours(summary: ContainerSummary, site: &str) -> Option<Ours> {
    let labels = summary.labels?;
    if labels.get(LABEL_SITE).map(String::as_str) != Some(site) {
        return None;
    }
    Some(Ours {
        id: summary.id?,
        name: summary
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        service: labels.get(LABEL_SERVICE)?.clone(),
        release: labels.get(LABEL_RELEASE).cloned().unwrap_or_default(),
        spec: labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
        running: summary.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
    })
}
