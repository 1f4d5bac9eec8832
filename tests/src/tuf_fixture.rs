//! Serving a TUF fixture from files, as the control plane would over the fetch stream,
//! for the attack tests and the fixture generator.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// The site name every fixture is built for.
pub const SITE: &str = "site-a";

/// Serves `<fixture>/repo/…` to `continuum://image/…` and `continuum://director/…` URLs.
#[derive(Debug, Clone)]
pub struct FixtureTransport {
    repo: PathBuf,
}

impl FixtureTransport {
    /// Serves the repositories under `fixture/repo`.
    pub fn new(fixture: &Path) -> Self {
        FixtureTransport {
            repo: fixture.join("repo"),
        }
    }

    /// The file a URL maps to.
    pub fn file(&self, url: &Url) -> Option<PathBuf> {
        let path = url.path().trim_start_matches('/');
        match (url.host_str()?, path.split_once('/')?) {
            ("image", ("metadata", name)) => Some(self.repo.join("image/metadata").join(name)),
            ("image", ("targets", target)) => {
                let last = target.rsplit('/').next().unwrap_or(target);
                let hash = [target, last]
                    .into_iter()
                    .find_map(|s| s.get(..64).filter(|_| s.as_bytes().get(64) == Some(&b'.')))?;
                Some(self.repo.join("image/blobs").join(hash))
            }
            ("director", ("metadata", name)) if name.ends_with(".root.json") => {
                Some(self.repo.join("director/metadata").join(name))
            }
            ("director", ("metadata", name)) => {
                Some(self.repo.join("director/sites").join(SITE).join(name))
            }
            _ => None,
        }
    }
}

#[async_trait]
impl Transport for FixtureTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let not_found = || TransportError::new(TransportErrorKind::FileNotFound, url.as_str());
        let path = self.file(&url).ok_or_else(not_found)?;
        let bytes = std::fs::read(path).map_err(|_| not_found())?;
        let stream = Once(Some(Ok(Bytes::from(bytes))));
        Ok(Box::pin(stream))
    }
}

struct Once(Option<Result<Bytes, TransportError>>);

impl futures_core::Stream for Once {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.take())
    }
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
