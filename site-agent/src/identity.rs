//! The site's identity on disk.
//!
//! ```text
//! <state dir>/site.key        the site's private key (P-256, PEM, 0600); made here, never sent
//! <state dir>/identity.json   site name, control-plane addresses, CA and current certificate (0600)
//! ```
//!
//! Everything that changes at renewal lives in `identity.json`, replaced atomically, so
//! a crash mid-renewal leaves either the old certificate or the new one, never half.

use std::path::{Path, PathBuf};

use continuum_shared::files::{create_private_dir, read, write_private};
use continuum_shared::labels::Labels;
use continuum_shared::protocol::IssuedCertificate;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SigningKey};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

const KEY_FILE: &str = "site.key";
const IDENTITY_FILE: &str = "identity.json";

/// The site key, created once.
pub struct SiteKey(KeyPair);

impl SiteKey {
    /// Loads the key from the state directory, creating it (0600) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, AgentError> {
        create_private_dir(dir)?;
        let path = dir.join(KEY_FILE);
        if path.exists() {
            return Self::load(dir);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        write_private(&path, key.serialize_pem().as_bytes())?;
        Ok(SiteKey(key))
    }

    /// Loads the existing key.
    pub fn load(dir: &Path) -> Result<Self, AgentError> {
        let path = dir.join(KEY_FILE);
        let pem = String::from_utf8(read(&path)?)
            .map_err(|_| AgentError::State(format!("{} is not a PEM key", path.display())))?;
        let key = KeyPair::from_pem(&pem)
            .map_err(|e| AgentError::State(format!("{}: {e}", path.display())))?;
        Ok(SiteKey(key))
    }

    /// A certificate request for this key. The control plane takes only the key from
    /// it; the name is a hint for humans reading it.
    pub fn certificate_request(&self, name_hint: &str) -> Result<Vec<u8>, AgentError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name_hint);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.0).map_err(crypto)?;
        Ok(csr.der().to_vec())
    }

    /// Signs `message` (ECDSA P-256, SHA-256, ASN.1).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.0.sign(message).map_err(crypto)
    }

    /// The key in the form rustls wants.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0.serialize_der()))
    }
}

fn crypto(e: rcgen::Error) -> AgentError {
    AgentError::Crypto(e.to_string())
}

/// Who this site is and where its control plane is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The site's enrolled name.
    pub site: String,
    /// Control-plane QUIC addresses (`host:port`), tried in order.
    pub addresses: Vec<String>,
    /// The control plane's CA certificate (DER, base64 in the file).
    #[serde(with = "b64")]
    pub ca_der: Vec<u8>,
    /// The site's current certificate (DER).
    #[serde(with = "b64")]
    pub cert_der: Vec<u8>,
    /// Its validity start, Unix seconds.
    pub not_before: i64,
    /// Its validity end, Unix seconds.
    pub not_after: i64,
    /// Labels the central team gave this site through its token.
    #[serde(default)]
    pub labels: Labels,
    /// When the site joined.
    pub joined_at: i64,
    /// When this site received its current certificate (its own clock). Renewal is
    /// timed from here, not from the certificate's start, which is backdated.
    #[serde(default)]
    pub received_at: i64,
    /// SHA-256 (hex) of the image repository's first root, if the site pinned it at join
    /// (`--image-root-sha256`).
    #[serde(default)]
    pub image_root_sha256: Option<String>,
}

impl Identity {
    /// The identity in `dir`, if the agent has joined.
    pub fn load(dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = dir.join(IDENTITY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = read(&path)?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            AgentError::State(format!(
                "{} is damaged ({e}); join again with a new token",
                path.display()
            ))
        })
    }

    /// Whether `dir` holds an identity (the site has joined).
    pub fn exists(dir: &Path) -> bool {
        identity_path(dir).exists()
    }

    /// The identity in `dir`, or an error telling the admin to join.
    pub fn require(dir: &Path) -> Result<Self, AgentError> {
        Self::load(dir)?.ok_or_else(|| AgentError::NotJoined(dir.display().to_string()))
    }

    /// Stores the identity atomically (0600).
    pub fn save(&self, dir: &Path) -> Result<(), AgentError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| AgentError::State(e.to_string()))?;
        write_private(&identity_path(dir), &bytes)?;
        Ok(())
    }

    /// A new identity from a just-issued certificate.
    pub fn from_issued(issued: IssuedCertificate, addresses: Vec<String>) -> Self {
        Identity {
            site: issued.site,
            addresses,
            ca_der: issued.ca_der,
            cert_der: issued.cert_der,
            not_before: issued.not_before,
            not_after: issued.not_after,
            labels: issued.labels,
            joined_at: continuum_shared::unix_now(),
            received_at: continuum_shared::unix_now(),
            image_root_sha256: None,
        }
    }

    /// Takes a renewed certificate.
    pub fn renewed(&mut self, issued: IssuedCertificate) {
        self.cert_der = issued.cert_der;
        self.not_before = issued.not_before;
        self.not_after = issued.not_after;
        self.labels = issued.labels;
        self.received_at = continuum_shared::unix_now();
    }

    /// When to renew: once two thirds of the lifetime (as received) have passed, so a
    /// third is left to ride out outages.
    pub fn renew_at(&self) -> i64 {
        let start = self.received_at.clamp(self.not_before, self.not_after);
        start + (self.not_after - start) * 2 / 3
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }

    /// The CA certificate.
    pub fn ca(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.ca_der.clone())
    }

    /// The site certificate chain.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }
}

/// The identity file's path.
pub fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        STANDARD
            .decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn key_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = SiteKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = SiteKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.0.public_key_raw(), second.0.public_key_raw());
        assert!(!first.certificate_request("x").unwrap().is_empty());
    }

    #[test]
    fn identity_round_trips_and_renews_at_two_thirds() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            site: "s".into(),
            addresses: vec!["127.0.0.1:7443".into()],
            ca_der: vec![1, 2],
            cert_der: vec![3],
            not_before: 1000,
            not_after: 1300,
            labels: Labels::new(),
            joined_at: 1000,
            received_at: 1000,
            image_root_sha256: None,
        };
        identity.save(dir.path()).unwrap();
        assert_eq!(Identity::require(dir.path()).unwrap(), identity);
        assert_eq!(identity.renew_at(), 1200);
        assert!(!identity.expired(1299));
        assert!(identity.expired(1300));
        std::fs::write(identity_path(dir.path()), b"{").unwrap();
        assert!(
            Identity::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
    }
}
