//! TUF metadata and targets over the agent's link to the control plane.
//!
//! URLs look like `continuum://image/metadata/3.root.json`: the host names the
//! repository, the path is what the TUF client asks for. Every download is capped in
//! size while it streams, must keep moving (idle timeout) and must finish in time
//! (total timeout). A download interrupted by a broken link resumes from the byte it
//! reached, on the same connection or the next one. A missing file is reported as
//! not-found, which TUF clients need to end root rotation correctly.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use continuum_shared::link::{Link, LinkError};
use continuum_shared::protocol::{
    FetchRequest, FetchResponse, PROTOCOL_VERSION, Repository, StreamKind,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// Marks errors that come from reaching the control plane rather than from what it
/// sent, so that they make desired state stale instead of refused.
pub const LINK_TROUBLE: &str = "link trouble: ";

/// Limits of one download.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Most bytes of one metadata file.
    pub max_metadata: u64,
    /// Most bytes of one target.
    pub max_target: u64,
    /// Longest wait for the next bytes.
    pub idle: Duration,
    /// Longest time for one metadata file.
    pub metadata_total: Duration,
    /// Longest time for one target.
    pub target_total: Duration,
    /// How often a broken download is resumed before it fails.
    pub resumes: u32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_metadata: 16 << 20,
            max_target: 8 << 30,
            idle: Duration::from_secs(30),
            metadata_total: Duration::from_secs(120),
            target_total: Duration::from_secs(3600),
            resumes: 8,
        }
    }
}

/// The agent's current link, if connected; downloads wait on it to resume.
pub type LinkSlot = watch::Receiver<Option<Link>>;

/// A tough transport over the control-plane link.
#[derive(Debug, Clone)]
pub struct LinkTransport {
    link: LinkSlot,
    limits: FetchLimits,
}

impl LinkTransport {
    /// A transport using whatever link `slot` holds.
    pub fn new(link: LinkSlot, limits: FetchLimits) -> Self {
        LinkTransport { link, limits }
    }
}

fn parse(url: &Url) -> Option<(Repository, String)> {
    if url.scheme() != "continuum" {
        return None;
    }
    let repository = match url.host_str()? {
        "image" => Repository::Image,
        "director" => Repository::Director,
        _ => return None,
    };
    Some((repository, url.path().trim_start_matches('/').to_owned()))
}

/// Why one attempt of a download ended early.
enum Attempt {
    NotFound,
    Refused(String),
    /// Link trouble: worth resuming.
    Broken(String),
    /// Over a limit: not worth resuming.
    Fatal(String),
}

#[async_trait]
impl Transport for LinkTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let (repository, path) = parse(&url).ok_or_else(|| {
            TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url.as_str())
        })?;
        let metadata = path.starts_with("metadata/");
        let (max, total) = if metadata {
            (self.limits.max_metadata, self.limits.metadata_total)
        } else {
            (self.limits.max_target, self.limits.target_total)
        };
        let (tx, rx) = mpsc::channel(4);
        let download = Download {
            slot: self.link.clone(),
            repository,
            path,
            max,
            limits: self.limits,
            url: url.to_string(),
        };
        // The first answer decides between not-found and a stream; the rest streams.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(total, download.run(tx, first_tx)).await;
        });
        match first_rx.await {
            Ok(Ok(())) => Ok(Box::pin(ChunkStream { rx })),
            Ok(Err(Attempt::NotFound)) => Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            )),
            Ok(Err(Attempt::Broken(m))) => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                format!("{LINK_TROUBLE}{m}"),
            )),
            Ok(Err(Attempt::Refused(m) | Attempt::Fatal(m))) => Err(
                TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), m),
            ),
            Err(_) => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                format!("{LINK_TROUBLE}timed out"),
            )),
        }
    }
}

struct Download {
    slot: LinkSlot,
    repository: Repository,
    path: String,
    max: u64,
    limits: FetchLimits,
    url: String,
}

type Chunks = mpsc::Sender<Result<Bytes, TransportError>>;

impl Download {
    async fn run(mut self, tx: Chunks, first: tokio::sync::oneshot::Sender<Result<(), Attempt>>) {
        let mut first = Some(first);
        let mut offset = 0u64;
        let mut resumes = 0;
        loop {
            let outcome = self.attempt(&tx, &mut offset, &mut first).await;
            let error = match outcome {
                Ok(()) => return,
                Err(Attempt::Broken(m)) if resumes < self.limits.resumes => {
                    resumes += 1;
                    tracing::info!(path = %self.path, offset, resumes, reason = %m, "download interrupted; resuming");
                    continue;
                }
                Err(e) => e,
            };
            match first.take() {
                Some(first) => {
                    let _ = first.send(Err(error));
                }
                None => {
                    let message = match error {
                        Attempt::NotFound => format!("{LINK_TROUBLE}the file disappeared"),
                        Attempt::Broken(m) => format!("{LINK_TROUBLE}{m}"),
                        Attempt::Refused(m) | Attempt::Fatal(m) => m,
                    };
                    let _ = tx
                        .send(Err(TransportError::new_with_cause(
                            TransportErrorKind::Other,
                            &self.url,
                            message,
                        )))
                        .await;
                }
            }
            return;
        }
    }

    /// Waits (at most the idle timeout) for a live link.
    async fn link(&mut self) -> Result<Link, Attempt> {
        let wait = self
            .slot
            .wait_for(|l| l.as_ref().is_some_and(|l| l.close_reason().is_none()));
        match tokio::time::timeout(self.limits.idle, wait).await {
            Ok(Ok(link)) => link
                .clone()
                .ok_or_else(|| Attempt::Broken("no link".into())),
            _ => Err(Attempt::Broken("no connection to the control plane".into())),
        }
    }

    async fn attempt(
        &mut self,
        tx: &Chunks,
        offset: &mut u64,
        first: &mut Option<tokio::sync::oneshot::Sender<Result<(), Attempt>>>,
    ) -> Result<(), Attempt> {
        let link = self.link().await?;
        let broken = |e: LinkError| Attempt::Broken(e.to_string());
        let mut stream = link
            .open(StreamKind::Fetch, PROTOCOL_VERSION)
            .await
            .map_err(broken)?;
        let request = FetchRequest {
            repository: self.repository,
            path: self.path.clone(),
            offset: *offset,
        };
        stream.send(&request).await.map_err(broken)?;
        let answer = stream
            .recv_within::<FetchResponse>(self.limits.idle)
            .await
            .map_err(broken)?;
        let length = match answer {
            FetchResponse::Found { length } => length,
            FetchResponse::NotFound => return Err(Attempt::NotFound),
            FetchResponse::Refused(r) => return Err(Attempt::Refused(r.message)),
        };
        if length > self.max {
            return Err(Attempt::Fatal(format!(
                "{} is {length} bytes, over the limit of {}",
                self.path, self.max
            )));
        }
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        let mut reader = stream.into_raw_reader();
        let mut buffer = vec![0u8; 64 * 1024];
        while *offset < length {
            let want = buffer.len().min((length - *offset) as usize);
            let n = match tokio::time::timeout(self.limits.idle, reader.read(&mut buffer[..want]))
                .await
            {
                Ok(Ok(0)) => {
                    return Err(Attempt::Broken(format!(
                        "the stream ended at byte {offset} of {length}"
                    )));
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Attempt::Broken(e.to_string())),
                Err(_) => {
                    return Err(Attempt::Broken(format!(
                        "no data for {}s",
                        self.limits.idle.as_secs()
                    )));
                }
            };
            *offset += n as u64;
            if tx
                .send(Ok(Bytes::copy_from_slice(&buffer[..n])))
                .await
                .is_err()
            {
                return Ok(()); // the reader stopped listening (it has enough, or gave up)
            }
        }
        Ok(())
    }
}

/// The receiving end of a download, as the stream tough reads.
struct ChunkStream {
    rx: mpsc::Receiver<Result<Bytes, TransportError>>,
}

impl futures_core::Stream for ChunkStream {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
