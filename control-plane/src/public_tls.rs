//! A publicly trusted certificate for the HTTPS listener (`--tls-cert`, `--tls-key`).
//!
//! Sites then fetch the installer with a plain `curl https://…` and operators' CLIs
//! trust the listener through their system's roots. The files are checked at start
//! (readable, the key matches, the names are covered) and read again whenever they
//! change, so a renewal (certbot, cert-manager) takes effect without a restart; a
//! renewal that does not check out is refused and the certificate in force stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the certificate chain and its key live.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One loaded certificate with what the banner and the checks need of it.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Unix seconds after which the leaf is no longer valid.
    not_after: i64,
}

/// The certificate the HTTPS listener presents; swapped in place on renewal.
#[derive(Debug)]
pub struct PublicCert {
    files: CertFiles,
    current: RwLock<Loaded>,
}

impl CertFiles {
    fn load(&self) -> Result<Loaded, String> {
        let cert_text = std::fs::read(&self.cert)
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        let Some(leaf) = chain.first() else {
            return Err(format!(
                "--tls-cert {}: no PEM certificate in it",
                self.cert.display()
            ));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            format!(
                "--tls-cert {}: the first certificate does not parse: {e}",
                self.cert.display()
            )
        })?;
        let not_after = parsed.validity().not_after.timestamp();
        let key_text = std::fs::read(&self.key)
            .map_err(|e| format!("--tls-key {}: {e}", self.key.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
            format!(
                "--tls-key {}: no usable PEM private key: {e}",
                self.key.display()
            )
        })?;
        let certified = CertifiedKey::from_der(chain, key, &continuum_shared::tls::provider())
            .map_err(|e| {
                format!(
                    "--tls-key {} does not go with --tls-cert {}: {e}",
                    self.key.display(),
                    self.cert.display()
                )
            })?;
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
        })
    }
}

impl PublicCert {
    /// Loads and checks the files.
    pub fn load(files: CertFiles) -> Result<PublicCert, String> {
        let loaded = files.load()?;
        Ok(PublicCert {
            files,
            current: RwLock::new(loaded),
        })
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }

    /// Whether the certificate in force is valid for `name` (a DNS name or an address).
    pub fn covers(&self, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        let loaded = self.current.read().unwrap_or_else(|e| e.into_inner());
        let Some(leaf) = loaded.key.end_entity_cert().ok() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
    }

    /// Whole days until the certificate in force expires (negative once it has).
    pub fn days_left(&self) -> i64 {
        let loaded = self.current.read().unwrap_or_else(|e| e.into_inner());
        (loaded.not_after - continuum_shared::unix_now()).div_euclid(86_400)
    }

    /// Reads the files again; the certificate in force changes only if they check out
    /// and still cover `names`.
    pub fn reload(&self, names: &[String]) -> Result<(), String> {
        let fresh = self.files.load()?;
        let candidate = PublicCert {
            files: self.files.clone(),
            current: RwLock::new(fresh),
        };
        if let Some(name) = names.iter().find(|n| !candidate.covers(n)) {
            return Err(format!(
                "the new certificate in {} does not cover {name}",
                self.files.cert.display()
            ));
        }
        let fresh = candidate
            .current
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads the certificate whenever its files change, for as long as the process
    /// runs. `names` are the advertised names a renewal must still cover.
    pub fn watch(self: &Arc<Self>, names: Vec<String>) -> Result<(), String> {
        let mut dirs = vec![parent(&self.files.cert), parent(&self.files.key)];
        dirs.dedup();
        let wanted = [self.files.cert.clone(), self.files.key.clone()];
        for dir in dirs {
            let wanted = wanted.clone();
            // Kubernetes secret volumes swap a `..data` link instead of the files.
            let mut changes = continuum_shared::watch::watch_dir(&dir, move |p| {
                wanted.iter().any(|w| w.file_name() == p.file_name())
                    || p.file_name().is_some_and(|n| n == "..data")
            })?;
            let this = self.clone();
            let names = names.clone();
            tokio::spawn(async move {
                while changes.next().await.is_some() {
                    match this.reload(&names) {
                        Ok(()) => tracing::info!(
                            cert = %this.files.cert.display(),
                            days_left = this.days_left(),
                            "HTTPS certificate reloaded"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "HTTPS certificate not reloaded; the previous one stays in force"
                        ),
                    }
                }
            });
        }
        Ok(())
    }

    /// The HTTPS listener's TLS settings with this certificate.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut tls =
            rustls::ServerConfig::builder_with_provider(continuum_shared::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        tls.alpn_protocols = alpn;
        Ok(tls)
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl ResolvesServerCert for PublicCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests;
