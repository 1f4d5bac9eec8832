//! Private files: keys, credentials and state that must be readable by their owner
//! only (mode 0600, directories 0700), written so that a crash never leaves half a file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::FileError;

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes every file and directory this process creates private to its user (umask
/// 077), including those that libraries create (the state store's files).
pub fn private_umask() {
    // SAFETY: umask only changes this process's file-creation mask and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` (and parents) if missing and makes it private (0700).
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    fs::create_dir_all(dir).map_err(err("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(err("set permissions of", dir))
}

/// Writes `bytes` to `path` with mode 0600, atomically: a temporary file in the same
/// directory is written, synced and renamed over the target.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    replace_private(path, bytes, true)
}

/// Like [`write_private`] but without waiting for the disk: for files that are
/// rewritten often and whose loss in a power cut costs nothing (status snapshots).
pub fn write_private_fast(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    replace_private(path, bytes, false)
}

fn replace_private(path: &Path, bytes: &[u8], durable: bool) -> Result<(), FileError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let (true, Some(dir)) = (durable, path.parent())
            && let Ok(dir) = fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err("write", path))
}

/// SHA-256 of a file's content, lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
    }
    Ok(crate::tls::hex(context.finish().as_ref()))
}

/// Reads a whole file, with the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(err("read", path))
}

/// Why a stream could not be written to a file.
#[derive(Debug, thiserror::Error)]
pub enum StreamWriteError {
    /// More bytes came than allowed.
    #[error("more than {0} bytes")]
    TooLong(u64),
    /// The stream failed.
    #[error("{0}")]
    Source(String),
    /// The file could not be written.
    #[error("{0}")]
    Io(String),
}

/// Writes a stream of chunks to a new file at `path`, hashing (SHA-256) as it goes and
/// refusing more than `max` bytes; returns the hash and the length. On failure the file
/// is removed.
pub async fn write_stream_hashed<S, B, E>(
    path: &Path,
    mut chunks: S,
    max: u64,
) -> Result<([u8; 32], u64), StreamWriteError>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| StreamWriteError::Io(format!("{}: {e}", path.display()));
    let written = async {
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut length = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| StreamWriteError::Source(e.to_string()))?;
            let chunk = chunk.as_ref();
            length += chunk.len() as u64;
            if length > max {
                return Err(StreamWriteError::TooLong(max));
            }
            hasher.update(chunk);
            file.write_all(chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(hasher.finish().as_ref());
        Ok((sha256, length))
    }
    .await;
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        create_private_dir(&sub).unwrap();
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let key = sub.join("site.key");
        write_private(&key, b"one").unwrap();
        write_private(&key, b"two").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(&sub).unwrap().count(),
            1,
            "no temporary file left behind"
        );
        let missing = read(&sub.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[tokio::test]
    async fn a_stream_is_written_hashed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let chunks = || {
            futures_util::stream::iter(vec![
                Ok::<_, String>(b"hello ".to_vec()),
                Ok(b"world".to_vec()),
            ])
        };
        let (sha256, length) = write_stream_hashed(&path, chunks(), 11).await.unwrap();
        assert_eq!((sha256, length), (crate::tls::sha256(b"hello world"), 11));
        assert_eq!(fs::read(&path).unwrap(), b"hello world");
        let error = write_stream_hashed(&path, chunks(), 10).await.unwrap_err();
        assert!(matches!(error, StreamWriteError::TooLong(10)), "{error}");
        assert!(!path.exists(), "nothing is left behind");
    }
}
