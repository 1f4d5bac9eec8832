//! TUF signing keys: Ed25519, stored as PKCS#8 PEM files with mode 0600.
//!
//! Online keys (snapshot, timestamp, director) live in the data directory; root and
//! release keys may live there too (the embedded default) or offline with the release
//! managers, who pass them to the CLI with `--key`.

use std::path::Path;

use async_trait::async_trait;
use aws_lc_rs::signature::Ed25519KeyPair;
use continuum_shared::files::write_private;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::sign::Sign;

use crate::error::PkiError;

/// One Ed25519 signing key, kept as its PEM text.
#[derive(Clone)]
pub struct SigningKey {
    pem: String,
    key_id: Decoded<Hex>,
    public: Key,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        write!(
            f,
            "SigningKey({})",
            continuum_shared::tls::hex(&self.key_id)
        )
    }
}

fn pair(pem: &str) -> Result<Ed25519KeyPair, String> {
    let der = match PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())? {
        PrivateKeyDer::Pkcs8(der) => der,
        _ => return Err("not a PKCS#8 key".into()),
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|e| format!("not an Ed25519 key: {e}"))
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, PkiError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_pem(&key.serialize_pem()).map_err(|reason| PkiError::Invalid {
            path: "(generated key)".into(),
            reason,
        })
    }

    /// A key from its PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let pair = pair(pem)?;
        let public = Sign::tuf_key(&pair);
        let key_id = public.key_id().map_err(|e| e.to_string())?;
        Ok(SigningKey {
            pem: pem.to_owned(),
            key_id,
            public,
        })
    }

    /// Loads a key file.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        let text = std::fs::read_to_string(path).map_err(|e| PkiError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&text).map_err(|reason| PkiError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Loads a key file, creating it first if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), PkiError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok((key, true))
    }

    /// Writes the key (0600).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        if let Some(dir) = path.parent() {
            continuum_shared::files::create_private_dir(dir)?;
        }
        Ok(write_private(path, self.pem.as_bytes())?)
    }

    /// The TUF key id.
    pub fn key_id(&self) -> &Decoded<Hex> {
        &self.key_id
    }

    /// The public key as TUF lists it.
    pub fn public(&self) -> &Key {
        &self.public
    }

    /// As a key source for tough's signing functions.
    pub fn source(&self) -> Box<dyn KeySource> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl KeySource for SigningKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(pair(&self.pem)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("keys are written by continuum, not through tough".into())
    }
}
