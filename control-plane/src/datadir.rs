//! The data directory: where the control plane keeps its keys and state, and what it
//! creates there on first start. Every file is private (0600) in a private directory.
//!
//! ```text
//! continuum-data/
//!   ca.crt  ca.key            the CA that identifies the control plane and its sites
//!   server.crt  server.key    the QUIC/HTTPS server certificate (reissued when names change)
//!   server-cert.json          which names the server certificate covers, and until when
//!   director.key              Ed25519 key that signs each site's desired state
//!   secrets.key               age key that seals every secret at rest
//!   client.toml               server URL, CA and the first admin's credential, for the CLI
//!   state/                    sled: sites, tokens, operators, audit log
//! ```

use std::path::{Path, PathBuf};

use continuum_shared::files::{create_private_dir, write_private};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::Duration;

use crate::ca::CertificateAuthority;
use crate::error::PkiError;

/// Server certificates are valid this long, and reissued at start when less than
/// [`SERVER_RENEW_BEFORE`] is left.
const SERVER_VALIDITY: Duration = Duration::days(365);
const SERVER_RENEW_BEFORE: Duration = Duration::days(30);

/// The files of one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file inside it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The sled directory.
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The CLI's client file written by `serve`.
    pub fn client_file(&self) -> PathBuf {
        self.root.join("client.toml")
    }

    /// Whether a control plane was ever started here.
    pub fn is_initialized(&self) -> bool {
        self.file("ca.key").exists()
    }

    /// Creates the directory (0700) if needed.
    pub fn prepare(&self) -> Result<(), PkiError> {
        Ok(create_private_dir(&self.root)?)
    }
}

/// The server's TLS identity: its certificate chain (leaf, then CA) and key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first, then the CA, so an agent pinning the CA finds it in the chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        ServerIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// What the control plane needs from its data directory to run.
pub struct Keys {
    /// The CA.
    pub ca: CertificateAuthority,
    /// The server certificate and key.
    pub server: ServerIdentity,
    /// Which files were created on this start, for the start banner.
    pub created: Vec<&'static str>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ServerCertInfo {
    names: Vec<String>,
    not_after: i64,
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    let bytes = continuum_shared::files::read(path)?;
    String::from_utf8(bytes).map_err(|_| PkiError::Invalid {
        path: path.to_path_buf(),
        reason: "not a text file".into(),
    })
}

/// Loads the keys, creating whatever is missing: the CA and director key once, the
/// server certificate whenever `server_names` changed or it nears expiry.
pub fn load_or_create_keys(dir: &DataDir, server_names: &[String]) -> Result<Keys, PkiError> {
    dir.prepare()?;
    let mut created = Vec::new();

    let ca = if dir.is_initialized() {
        CertificateAuthority::load(
            &read_text(&dir.file("ca.crt"))?,
            &read_text(&dir.file("ca.key"))?,
        )?
    } else {
        let (ca, key_pem) = CertificateAuthority::create()?;
        write_private(&dir.file("ca.crt"), ca.cert_pem().as_bytes())?;
        write_private(&dir.file("ca.key"), key_pem.as_bytes())?;
        created.push("CA");
        ca
    };

    if !dir.file("director.key").exists() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        write_private(&dir.file("director.key"), key.serialize_pem().as_bytes())?;
        created.push("director signing key");
    }

    let info_path = dir.file("server-cert.json");
    let info: Option<ServerCertInfo> = std::fs::read(&info_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let now = continuum_shared::unix_now();
    let fresh = info.as_ref().is_some_and(|i| {
        i.names == server_names && i.not_after - now > SERVER_RENEW_BEFORE.whole_seconds()
    }) && dir.file("server.crt").exists()
        && dir.file("server.key").exists();

    let (leaf, key) = if fresh {
        use rustls::pki_types::pem::PemObject;
        let cert_path = dir.file("server.crt");
        let leaf =
            CertificateDer::from_pem_slice(read_text(&cert_path)?.as_bytes()).map_err(|e| {
                PkiError::Invalid {
                    path: cert_path,
                    reason: e.to_string(),
                }
            })?;
        let key = KeyPair::from_pem(&read_text(&dir.file("server.key"))?)?;
        (leaf, key)
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issued = ca.issue_server(server_names, &key, SERVER_VALIDITY)?;
        let pem = pem_certificate(&issued.der);
        write_private(&dir.file("server.key"), key.serialize_pem().as_bytes())?;
        write_private(&dir.file("server.crt"), pem.as_bytes())?;
        let info = ServerCertInfo {
            names: server_names.to_vec(),
            not_after: issued.not_after,
        };
        write_private(
            &info_path,
            &serde_json::to_vec_pretty(&info).unwrap_or_default(),
        )?;
        created.push("server certificate");
        (issued.der, key)
    };

    let server = ServerIdentity {
        chain: vec![leaf, ca.cert_der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    Ok(Keys {
        ca,
        server,
        created,
    })
}

/// A certificate in PEM.
pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn first_start_creates_private_keys_and_later_starts_reuse_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_create_keys(&dir, &names).unwrap();
        assert_eq!(
            first.created,
            ["CA", "director signing key", "server certificate"]
        );
        for entry in std::fs::read_dir(dir.root()).unwrap() {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}", entry.path());
        }
        let second = load_or_create_keys(&dir, &names).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(second.ca.fingerprint(), first.ca.fingerprint());
        assert_eq!(second.server.chain, first.server.chain);

        let renamed = load_or_create_keys(&dir, &["cp.example.org".to_string()]).unwrap();
        assert_eq!(renamed.created, ["server certificate"]);
        assert_eq!(renamed.ca.fingerprint(), first.ca.fingerprint());
    }
}
