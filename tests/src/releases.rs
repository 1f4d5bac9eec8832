//! Release manifests for tests.

use std::path::{Path, PathBuf};

/// A valid manifest for `service` `version` (image pinned by a made-up digest).
pub fn manifest(service: &str, version: &str) -> String {
    format!(
        r#"[service]
name = "{service}"
version = "{version}"

[container]
image = "registry.example.org/{service}@sha256:{digest}"
ports = ["8080:80/tcp"]
memory = "64MiB"

[health]
http = "http://127.0.0.1:8080/"
interval = "1s"
"#,
        digest = "ab".repeat(32)
    )
}

/// Writes `text` to `<dir>/<name>` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("manifest written");
    path
}
