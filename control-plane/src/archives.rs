//! Image archives (`docker save` format) shipped with releases, for sites that may
//! reach nothing but the control plane: reading which image an archive holds, and
//! taking uploads into the image repository's content store.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

/// Largest image archive accepted (as large as a site will fetch).
pub const MAX_ARCHIVE: u64 = 8 << 30;

/// Largest `manifest.json` or image config read from an archive.
const MAX_META: u64 = 4 << 20;

/// The one image an archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedImage {
    /// Its id, `sha256:<hex>` (the hash of its config).
    pub image_id: String,
    /// The names it is tagged with.
    pub repo_tags: Vec<String>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// Reads which image the archive at `path` holds, checking that its config's bytes
/// hash to the id its name claims. An archive must hold exactly one image.
pub fn inspect(path: &Path) -> Result<ArchivedImage, String> {
    let manifest = read_entry(path, "manifest.json")?
        .ok_or("it has no manifest.json: is it a `docker save` archive?")?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest)
        .map_err(|e| format!("its manifest.json is unreadable: {e}"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "it holds {} images; ship exactly one per release",
            entries.len()
        ));
    };
    let file_name = entry.config.rsplit('/').next().unwrap_or_default();
    let claimed = file_name.strip_suffix(".json").unwrap_or(file_name);
    let config = read_entry(path, &entry.config)?
        .ok_or_else(|| format!("its image config {} is missing", entry.config))?;
    let actual = continuum_shared::tls::hex(&continuum_shared::tls::sha256(&config));
    if actual != claimed {
        return Err(format!(
            "its image config {} hashes to {actual}, not to the id its name claims",
            entry.config
        ));
    }
    Ok(ArchivedImage {
        image_id: format!("sha256:{actual}"),
        repo_tags: entry.repo_tags.clone().unwrap_or_default(),
    })
}

fn read_entry(path: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| format!("it is not a tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("it is not a readable tar archive: {e}"))?;
        let entry_path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if entry_path.to_string_lossy().trim_start_matches("./") != name {
            continue;
        }
        if entry.header().size().unwrap_or(u64::MAX) > MAX_META {
            return Err(format!("its {name} is larger than {MAX_META} bytes"));
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_META)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        return Ok(Some(bytes));
    }
    Ok(None)
}

/// Whether the manifest's `container.image` names a tag the archive holds (a bare
/// name means `:latest`, as the engine reads it).
pub fn names(image: &ArchivedImage, reference: &str) -> bool {
    let wanted = if reference
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        reference.to_owned()
    } else {
        format!("{reference}:latest")
    };
    image.repo_tags.contains(&wanted)
}

/// An upload taken into the content store.
#[derive(Debug, Clone)]
pub struct Stored {
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Their length.
    pub length: u64,
    /// Where they are.
    pub path: std::path::PathBuf,
}

/// Writes an upload into the image repository's content store, hashing as it goes and
/// refusing more than `max` bytes. Nothing is left behind when it fails.
pub async fn store<S, E>(
    image: &crate::tuf::image::ImageRepo,
    body: S,
    max: u64,
) -> Result<Stored, String>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use continuum_shared::files::{StreamWriteError, write_stream_hashed};
    let dir = image.staging_dir().map_err(|e| e.to_string())?;
    let staged = dir.join(format!("upload-{:016x}", fastrand::u64(..)));
    let (sha256, length) = write_stream_hashed(&staged, body, max)
        .await
        .map_err(|e| match e {
            StreamWriteError::TooLong(max) => format!("the archive is larger than {max} bytes"),
            StreamWriteError::Source(e) => format!("the upload broke off: {e}"),
            StreamWriteError::Io(e) => e,
        })?;
    let path = image
        .adopt_blob(&staged, &continuum_shared::tls::hex(&sha256))
        .map_err(|e| e.to_string())?;
    Ok(Stored {
        sha256,
        length,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(
        dir: &Path,
        config: &[u8],
        claimed: Option<&str>,
        tags: &[&str],
    ) -> std::path::PathBuf {
        let hash = continuum_shared::tls::hex(&continuum_shared::tls::sha256(config));
        let name = format!("{}.json", claimed.unwrap_or(&hash));
        let manifest = serde_json::json!([{ "Config": name, "RepoTags": tags, "Layers": [] }]);
        let path = dir.join("a.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (entry, bytes) in [
            ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
            (name.as_str(), config.to_vec()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, entry, bytes.as_slice())
                .unwrap();
        }
        builder.finish().unwrap();
        path
    }

    #[test]
    fn the_image_id_is_the_hash_of_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), b"{\"config\":1}", None, &["web:1"]);
        let image = inspect(&path).unwrap();
        let hash = continuum_shared::tls::hex(&continuum_shared::tls::sha256(b"{\"config\":1}"));
        assert_eq!(image.image_id, format!("sha256:{hash}"));
        assert!(names(&image, "web:1"));
        assert!(!names(&image, "web:2"));
        assert!(!names(&image, "web"), "a bare name means :latest");
    }

    #[test]
    fn a_config_that_does_not_match_its_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), b"{}", Some(&"ab".repeat(32)), &["web:1"]);
        let error = inspect(&path).unwrap_err();
        assert!(error.contains("not to the id its name claims"), "{error}");
    }

    #[test]
    fn something_that_is_not_an_archive_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, b"hello").unwrap();
        assert!(inspect(&path).is_err());
    }
}
