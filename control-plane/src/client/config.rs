//! Where the CLI finds its control plane.
//!
//! Each setting comes from the first place that has it: the `--server`, `--token` and
//! `--ca` flags (or `CONTINUUM_SERVER`, `CONTINUUM_TOKEN`, `CONTINUUM_CA`), then the
//! client file that `continuum serve` writes: `./continuum-data/client.toml`, then
//! `$XDG_CONFIG_HOME/continuum/client.toml` (`~/.config/continuum/client.toml`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientError;

/// The client file: everything the CLI needs to reach one control plane. It holds a
/// credential, so it is written 0600.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFile {
    /// `https://host:port` of the API.
    pub server: String,
    /// The operator credential.
    pub token: String,
    /// The control plane's CA certificate (PEM), which the CLI trusts; empty when the
    /// control plane has a publicly trusted certificate and the system's roots apply.
    #[serde(default)]
    pub ca: String,
}

impl ClientFile {
    /// Reads a client file.
    pub fn read(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
    }

    /// Writes a client file (0600).
    pub fn write(&self, path: &Path) -> Result<(), ClientError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::Config(format!("{}: {e}", dir.display())))?;
        }
        let text = toml::to_string(self).map_err(|e| ClientError::Config(e.to_string()))?;
        continuum_shared::files::write_private(path, text.as_bytes())
            .map_err(|e| ClientError::Config(e.to_string()))
    }
}

/// The user's client file: `$XDG_CONFIG_HOME/continuum/client.toml`, else under
/// `$HOME/.config`.
pub fn user_client_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("continuum").join("client.toml"))
}

/// The client files looked at, in order.
pub fn search_path() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("continuum-data").join("client.toml")];
    paths.extend(user_client_file());
    paths
}

/// A resolved control plane to talk to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port`.
    pub server: String,
    /// Operator credential.
    pub token: String,
    /// CA certificate to trust (PEM); empty: the system's roots.
    pub ca_pem: String,
}

/// Resolves the endpoint from explicit settings and the client files.
pub fn resolve(
    server: Option<&str>,
    token: Option<&str>,
    ca: Option<&Path>,
) -> Result<Endpoint, ClientError> {
    let file = search_path()
        .into_iter()
        .find(|p| p.exists())
        .map(|p| ClientFile::read(&p))
        .transpose()?;
    let ca_pem = match ca {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("--ca {}: {e}", path.display())))?,
        None => file.as_ref().map(|f| f.ca.clone()).unwrap_or_default(),
    };
    let server = server
        .map(str::to_owned)
        .or_else(|| file.as_ref().map(|f| f.server.clone()));
    let token = token
        .map(str::to_owned)
        .or_else(|| file.as_ref().map(|f| f.token.clone()));
    match (server, token) {
        (Some(server), Some(token)) => Ok(Endpoint {
            server,
            token,
            ca_pem,
        }),
        _ => Err(ClientError::Config(
            "no control plane configured: run `continuum serve` in this directory, or pass --server URL and --token CREDENTIAL (or set CONTINUUM_SERVER and CONTINUUM_TOKEN)".into(),
        )),
    }
}
