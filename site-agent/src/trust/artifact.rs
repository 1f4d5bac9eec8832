//! Downloading a signed target (an image archive, an agent binary) over the
//! control-plane link into a file, checking its length and SHA-256 as the bytes arrive.
//! The transport resumes a broken transfer from where it stopped.

use std::path::Path;

use continuum_shared::files::{StreamWriteError, write_stream_hashed};
use tough::Transport;

use super::{FetchLimits, LinkSlot, LinkTransport};

/// Why a target is not on disk.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// It could not be fetched now (link down, disk): try again later.
    #[error("{0}")]
    Unavailable(String),
    /// What arrived is not what was signed: refused, nothing kept.
    #[error("{0}")]
    Tampered(String),
}

/// A target as the image repository lists it.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// Its target name.
    pub name: &'a str,
    /// SHA-256, lower-case hex.
    pub sha256: &'a str,
    /// Length in bytes.
    pub length: u64,
}

/// Fetches `target` into `path`; on any mismatch the file is removed.
pub async fn fetch(link: &LinkSlot, target: Signed<'_>, path: &Path) -> Result<(), ArtifactError> {
    let url = url::Url::parse(&format!(
        "continuum://image/targets/{}.{}",
        target.sha256, target.name
    ))
    .map_err(|e| ArtifactError::Unavailable(e.to_string()))?;
    let limits = FetchLimits {
        max_target: target.length,
        ..FetchLimits::default()
    };
    let transport = LinkTransport::new(link.clone(), limits);
    let stream = transport
        .fetch(url)
        .await
        .map_err(|e| ArtifactError::Unavailable(e.to_string()))?;
    let written = write_stream_hashed(path, stream, target.length).await;
    let (sha256, length) = match written {
        Ok((sha256, length)) => (continuum_shared::tls::hex(&sha256), length),
        Err(StreamWriteError::TooLong(_)) => {
            let _ = std::fs::remove_file(path);
            return Err(ArtifactError::Tampered(format!(
                "{} is longer than the {} bytes signed: refused",
                target.name, target.length
            )));
        }
        Err(e) => return Err(ArtifactError::Unavailable(e.to_string())),
    };
    if length != target.length || sha256 != target.sha256 {
        let _ = std::fs::remove_file(path);
        return Err(ArtifactError::Tampered(format!(
            "{} arrived as {length} bytes with SHA-256 {sha256}; {} bytes with {} were signed: refused",
            target.name, target.length, target.sha256
        )));
    }
    Ok(())
}
