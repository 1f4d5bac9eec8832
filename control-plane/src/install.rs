//! The one-line site install: the control plane serves `deploy/install.sh` and the
//! agent binaries on its HTTPS listener without a credential, and knows the line an
//! operator pastes at a site, which pins the listener's public key (with the control
//! plane's own CA, the pin is the whole trust of the download).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::datadir::ServerIdentity;
use crate::plane::ControlPlane;

/// The installer, as shipped in `deploy/`.
pub const SCRIPT: &str = include_str!("../../deploy/install.sh");

/// Agent binaries the control plane hands out, by architecture (`uname -m`).
#[derive(Debug, Clone, Default)]
pub struct AgentBinaries {
    by_arch: BTreeMap<String, (PathBuf, String)>,
}

impl AgentBinaries {
    /// Finds agent binaries: `continuum-agent-linux-ARCH` files in `dir`, or else the
    /// `continuum-agent` beside this executable, for this machine's architecture.
    pub fn find(dir: Option<&Path>) -> std::io::Result<AgentBinaries> {
        let mut found = Vec::new();
        match dir {
            Some(dir) => {
                for entry in std::fs::read_dir(dir)? {
                    let path = entry?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if let Some(arch) = name.strip_prefix("continuum-agent-linux-") {
                        found.push((arch.to_owned(), path.clone()));
                    }
                }
            }
            None => {
                let beside = std::env::current_exe()?.with_file_name("continuum-agent");
                if beside.is_file() {
                    found.push((std::env::consts::ARCH.to_owned(), beside));
                }
            }
        }
        let mut by_arch = BTreeMap::new();
        for (arch, path) in found {
            let digest = continuum_shared::files::sha256_file(&path)?;
            by_arch.insert(arch, (path, digest));
        }
        Ok(AgentBinaries { by_arch })
    }

    /// The architectures on offer.
    pub fn arches(&self) -> Vec<&str> {
        self.by_arch.keys().map(String::as_str).collect()
    }

    fn get(&self, arch: &str) -> Option<&(PathBuf, String)> {
        self.by_arch.get(arch)
    }
}

/// curl's pin of the HTTPS listener's key: `sha256//` and the base64 SHA-256 of its
/// SubjectPublicKeyInfo.
pub fn key_pin(identity: &ServerIdentity) -> Result<String, rcgen::Error> {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::try_from(&identity.key)?;
    let spki = key.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    Ok(format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    ))
}

/// The line a site admin pastes: fetch the installer and run it with the token. With
/// the control plane's own CA the download is pinned to the listener's key (`-k` only
/// skips the public-CA check; curl still enforces the pin); with a publicly trusted
/// certificate it is a plain https download.
pub fn one_liner(url: &str, pin: Option<&str>, token: &str) -> String {
    match pin {
        Some(pin) => {
            format!("curl -fsSLk --pinnedpubkey '{pin}' {url}/install.sh | sh -s -- {token}")
        }
        None => format!("curl -fsSL {url}/install.sh | sh -s -- {token}"),
    }
}

/// A `Host` header fit to go into the script: a host name or address and a port.
fn clean_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let fine = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    fine.then_some(host)
}

/// `GET /install.sh`: the installer, told where it came from and which key to pin.
pub async fn script(
    State(cp): State<std::sync::Arc<ControlPlane>>,
    headers: HeaderMap,
) -> Response {
    let url = match clean_host(&headers) {
        Some(host) => format!("https://{host}"),
        None => match cp.settings.install_urls.first() {
            Some(url) => url.clone(),
            None => return (StatusCode::BAD_REQUEST, "no usable Host header\n").into_response(),
        },
    };
    let text = SCRIPT
        .replacen(
            "CONTINUUM_URL=${CONTINUUM_URL:-}",
            &format!("CONTINUUM_URL=${{CONTINUUM_URL:-{url}}}"),
            1,
        )
        .replacen(
            "CONTINUUM_PIN=${CONTINUUM_PIN:-}",
            &format!(
                "CONTINUUM_PIN=${{CONTINUUM_PIN:-{}}}",
                cp.settings.tls_pin.as_deref().unwrap_or("")
            ),
            1,
        );
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `GET /agent/linux/{arch}`: the agent binary.
pub async fn binary(
    State(cp): State<std::sync::Arc<ControlPlane>>,
    UrlPath(arch): UrlPath<String>,
) -> Response {
    let Some((path, _)) = cp.settings.agents.get(&arch) else {
        return missing(&cp, &arch);
    };
    match tokio::fs::File::open(path).await {
        Ok(file) => {
            let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_LENGTH, length.to_string()),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the agent binary for {arch} is unreadable: {e}\n"),
        )
            .into_response(),
    }
}

/// `GET /agent/linux/{arch}/sha256`: the binary's SHA-256, hex.
pub async fn digest(
    State(cp): State<std::sync::Arc<ControlPlane>>,
    UrlPath(arch): UrlPath<String>,
) -> Response {
    match cp.settings.agents.get(&arch) {
        Some((_, digest)) => format!("{digest}\n").into_response(),
        None => missing(&cp, &arch),
    }
}

fn missing(cp: &ControlPlane, arch: &str) -> Response {
    let offered = cp.settings.agents.arches().join(", ");
    (
        StatusCode::NOT_FOUND,
        format!("no agent for linux/{arch} here; this control plane offers: {offered}\n"),
    )
        .into_response()
}
