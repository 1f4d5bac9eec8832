//! Errors of the control plane library. Each names what failed and where.

use std::path::PathBuf;

use thiserror::Error;

/// The state store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error(
        "cannot open the state store at {path}: {reason} (is another `continuum serve` using this data directory?)"
    )]
    Open {
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The backend reported an error.
    #[error("state store error: {0}")]
    Backend(String),
    /// A stored record does not decode.
    #[error("state store is damaged: {0}")]
    Corrupt(String),
}

/// Creating or loading keys and certificates failed.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] continuum_shared::error::FileError),
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// A key or certificate file holds something unusable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}
