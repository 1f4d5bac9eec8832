//! The fetch stream: TUF metadata and targets for an enrolled site, from any offset so
//! that a broken download resumes where it stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use continuum_shared::link::{FramedStream, Link};
use continuum_shared::protocol::{FetchRequest, FetchResponse, Refusal, RefusalCode, Repository};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::debug;

use super::protocol_violation;
use crate::plane::ControlPlane;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        code: RefusalCode::BadRequest,
        message: message.into(),
    }
}

/// Maps a request to a file: `metadata/<name>` in the repository (the director's from
/// this site's own directory, roots from the shared one), or `targets/…/<sha256>.<name>`
/// to the content-addressed blob of that hash.
pub fn resolve(
    cp: &ControlPlane,
    site: &str,
    request: &FetchRequest,
) -> Result<Option<PathBuf>, Refusal> {
    let path = request.path.as_str();
    if path.len() > 512 || path.contains("..") || path.contains('\\') || path.contains("//") {
        return Err(bad(format!("invalid fetch path {path:?}")));
    }
    if let Some(name) = path.strip_prefix("metadata/") {
        return Ok(match request.repository {
            Repository::Image => cp.image.metadata().file(name),
            Repository::Director if name.ends_with(".root.json") => cp.director.roots().file(name),
            Repository::Director => cp.director.site(site).file(name),
        });
    }
    if let Some(target) = path.strip_prefix("targets/") {
        if request.repository == Repository::Director {
            return Ok(None);
        }
        // Consistent snapshots prefix the hash either to the whole name or to its last
        // segment; either way the content is found by that hash alone.
        let hashed = |s: &str| {
            s.get(..64)
                .filter(|h| {
                    h.chars().all(|c| c.is_ascii_hexdigit()) && s.as_bytes().get(64) == Some(&b'.')
                })
                .map(str::to_owned)
        };
        let last = target.rsplit('/').next().unwrap_or(target);
        return Ok(hashed(target)
            .or_else(|| hashed(last))
            .and_then(|hash| cp.image.blob(&hash)));
    }
    Err(bad(format!(
        "fetch path {path:?} is neither metadata/… nor targets/…"
    )))
}

/// Serves one fetch stream.
pub async fn serve(cp: Arc<ControlPlane>, link: Link, stream: FramedStream, site: String) {
    let (mut writer, mut reader) = stream.split();
    let request: FetchRequest = match tokio::time::timeout(REQUEST_TIMEOUT, reader.recv()).await {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return protocol_violation(&link, &format!("fetch request: {e}")),
        Err(_) => return protocol_violation(&link, "no fetch request in time"),
    };
    let answer = match resolve(&cp, &site, &request) {
        Err(refusal) => FetchResponse::Refused(refusal),
        Ok(None) => FetchResponse::NotFound,
        Ok(Some(path)) => match send_file(&mut writer, path, request.offset).await {
            Ok(()) => return writer.finish().await,
            Err(e) => {
                debug!(site, path = %request.path, error = %e, "fetch ended early");
                return;
            }
        },
    };
    let _ = writer.send(&answer).await;
    writer.finish().await;
}

async fn send_file(
    writer: &mut continuum_shared::link::FrameWriter,
    path: PathBuf,
    offset: u64,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| e.to_string())?;
    let length = file.metadata().await.map_err(|e| e.to_string())?.len();
    if offset > length {
        let refusal = bad(format!("offset {offset} is past the end ({length} bytes)"));
        writer
            .send(&FetchResponse::Refused(refusal))
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    writer
        .send(&FetchResponse::Found { length })
        .await
        .map_err(|e| e.to_string())?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        writer
            .send_raw(&buffer[..n])
            .await
            .map_err(|e| e.to_string())?;
    }
}
