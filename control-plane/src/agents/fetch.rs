//! The fetch stream: TUF metadata and targets for an enrolled site, from any offset so
//! that a broken download resumes where it stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use continuum_shared::link::{FramedStream, Link};
use continuum_shared::protocol::{FetchRequest, FetchResponse, Refusal, RefusalCode, Repository};
use tokio::io::AsyncReadExt;
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

/// The start of a file to send: its length, and its first chunk from `offset` (for
/// metadata, the whole file), with the file still open if more follows.
struct Opened {
    length: u64,
    first: Vec<u8>,
    rest: Option<std::fs::File>,
}

/// Opens `path` and reads its first chunk from `offset` in one trip to the blocking
/// pool: metadata files are a few kilobytes, and every agent fetches several of them
/// after each change, so one hand-off per fetch instead of one per file operation
/// keeps a fleet-wide change cheap.
fn open_at(path: &std::path::Path, offset: u64) -> std::io::Result<Opened> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    if offset > length {
        return Ok(Opened {
            length,
            first: Vec::new(),
            rest: None,
        });
    }
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut first = Vec::with_capacity(CHUNK.min((length - offset) as usize));
    (&mut file).take(CHUNK as u64).read_to_end(&mut first)?;
    let more = offset + (first.len() as u64) < length;
    Ok(Opened {
        length,
        first,
        rest: more.then_some(file),
    })
}

async fn send_file(
    writer: &mut continuum_shared::link::FrameWriter,
    path: PathBuf,
    offset: u64,
) -> Result<(), String> {
    let opened = tokio::task::spawn_blocking(move || open_at(&path, offset))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let length = opened.length;
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
    if !opened.first.is_empty() {
        writer
            .send_raw(&opened.first)
            .await
            .map_err(|e| e.to_string())?;
    }
    let Some(rest) = opened.rest else {
        return Ok(());
    };
    let mut file = tokio::fs::File::from_std(rest);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_opens_with_its_first_chunk_and_the_rest_left_to_stream() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("timestamp.json");
        std::fs::write(&small, b"{\"signed\":{}}").unwrap();
        let opened = open_at(&small, 0).unwrap();
        assert_eq!(
            (opened.length, opened.first.as_slice()),
            (13, &b"{\"signed\":{}}"[..])
        );
        assert!(
            opened.rest.is_none(),
            "a metadata file is sent whole at once"
        );
        let resumed = open_at(&small, 10).unwrap();
        assert_eq!(resumed.first, b"{}}");
        let at_end = open_at(&small, 13).unwrap();
        assert!(at_end.first.is_empty() && at_end.rest.is_none());
        let past = open_at(&small, 14).unwrap();
        assert_eq!(past.length, 13);
        assert!(past.first.is_empty());

        let big = dir.path().join("blob");
        let bytes: Vec<u8> = (0..CHUNK * 2 + 7).map(|i| i as u8).collect();
        std::fs::write(&big, &bytes).unwrap();
        let opened = open_at(&big, 5).unwrap();
        assert_eq!(opened.first, bytes[5..5 + CHUNK]);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut opened.rest.unwrap(), &mut rest).unwrap();
        assert_eq!(rest, bytes[5 + CHUNK..]);
    }
}
