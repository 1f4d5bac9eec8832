//! The image repository as last verified, reused while the control plane serves the
//! very same timestamp. The timestamp pins the snapshot, which pins the targets, so
//! with identical timestamp bytes nothing in the repository changed, and fetching and
//! verifying its snapshot and targets again (targets list every release) would only
//! cost both sides. A different timestamp, a newer root, or any role expiring within a
//! minute loads the repository in full, as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use futures_util::StreamExt;
use tough::{Repository, Transport, TransportErrorKind};
use url::Url;

use super::{Repo, limits};

/// Verified image repositories, by state directory (one per agent; the fleet simulator
/// runs many agents in one process).
static CACHE: LazyLock<Mutex<HashMap<PathBuf, Cached>>> = LazyLock::new(Default::default);

#[derive(Clone)]
struct Cached {
    timestamp: Vec<u8>,
    repository: Repository,
}

/// What the cache has for a verification.
pub enum Lookup {
    /// The repository verified before: still current.
    Hit(Box<Repository>),
    /// Load it in full; the timestamp bytes served just before, if they were fetched,
    /// to remember with it.
    Miss(Option<Vec<u8>>),
}

/// The repository verified before, if the control plane still serves the same
/// timestamp and no newer root, and nothing in it is about to expire.
pub async fn reuse<T: Transport>(state_dir: &Path, transport: &T) -> Lookup {
    let served = fetch(transport, "timestamp.json", limits().max_timestamp_size)
        .await
        .ok();
    match current(state_dir, transport, served.as_deref()).await {
        Some(repository) => Lookup::Hit(Box::new(repository)),
        None => {
            // Whatever was remembered is no longer current, and must never come back.
            CACHE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(state_dir);
            Lookup::Miss(served)
        }
    }
}

async fn current<T: Transport>(
    state_dir: &Path,
    transport: &T,
    served: Option<&[u8]>,
) -> Option<Repository> {
    let cached = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(state_dir)?
        .clone();
    if served? != cached.timestamp.as_slice() {
        return None;
    }
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    let repository = &cached.repository;
    if repository.timestamp().signed.expires <= soon
        || repository.snapshot().signed.expires <= soon
        || repository.targets().signed.expires <= soon
        || repository.root().signed.expires <= soon
    {
        return None;
    }
    let next_root = repository.root().signed.version.get() + 1;
    match fetch(
        transport,
        &format!("{next_root}.root.json"),
        limits().max_root_size,
    )
    .await
    {
        Err(TransportErrorKind::FileNotFound) => Some(cached.repository),
        _ => None,
    }
}

/// Remembers a repository just verified in full, with the timestamp bytes served just
/// before it was loaded (the repository is at least that new: a later timestamp only
/// makes the next lookup miss).
pub fn remember(state_dir: &Path, timestamp: Vec<u8>, repository: &Repository) {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).insert(
        state_dir.to_path_buf(),
        Cached {
            timestamp,
            repository: repository.clone(),
        },
    );
}

/// Fetches an image-repository metadata file, at most `max` bytes.
async fn fetch<T: Transport>(
    transport: &T,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, TransportErrorKind> {
    let url = Url::parse(&format!(
        "continuum://{}/metadata/{name}",
        Repo::Image.host()
    ))
    .map_err(|_| TransportErrorKind::UnsupportedUrlScheme)?;
    let mut stream = transport.fetch(url).await.map_err(|e| e.kind())?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.kind())?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > max {
            return Err(TransportErrorKind::Other);
        }
    }
    Ok(bytes)
}

/// A transport that answers the first fetch of the image timestamp with the bytes the
/// cache lookup fetched just before, so that a full load does not fetch it twice. They
/// are verified exactly as fetched ones would be.
#[derive(Debug, Clone)]
pub struct Prefetched<T> {
    inner: T,
    timestamp: std::sync::Arc<Mutex<Option<Vec<u8>>>>,
}

impl<T> Prefetched<T> {
    /// `inner`, with `timestamp` to hand out once.
    pub fn new(inner: T, timestamp: Option<Vec<u8>>) -> Self {
        Prefetched {
            inner,
            timestamp: std::sync::Arc::new(Mutex::new(timestamp)),
        }
    }
}

#[async_trait::async_trait]
impl<T: Transport + Clone + 'static> Transport for Prefetched<T> {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, tough::TransportError> {
        if url.path().ends_with("/metadata/timestamp.json")
            && url.host_str() == Some(Repo::Image.host())
        {
            let held = self
                .timestamp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(bytes) = held {
                let chunk: Result<bytes::Bytes, tough::TransportError> = Ok(bytes.into());
                return Ok(Box::pin(futures_util::stream::once(async move { chunk })));
            }
        }
        self.inner.fetch(url).await
    }
}
