//! Errors of the shared crate. Each says what went wrong in words a site admin can act on.

use thiserror::Error;

/// A stream did not carry what the protocol says it must.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream does not start with the Continuum preamble.
    #[error("the peer is not speaking the Continuum protocol (bad stream preamble)")]
    BadMagic,
    /// The preamble names a stream kind this build does not know.
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
    /// A frame's declared length is over the stream kind's limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Declared payload size.
        size: usize,
        /// Limit of the stream kind.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    /// The payload does not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message could not be encoded.
    #[error("could not encode a message: {0}")]
    Encode(String),
    /// Reading or writing the stream failed.
    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A join token could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// It does not have the `ctj1.` prefix.
    #[error(
        "this is not a Continuum join token (it should start with \"ctj1.\"); copy the whole token that `continuum token create` printed"
    )]
    NotAToken,
    /// The text after the prefix is not valid base64url.
    #[error("the join token is damaged (not valid base64url); copy it again in one piece")]
    Encoding,
    /// The decoded content is not a valid token.
    #[error("the join token is damaged: {0}")]
    Content(String),
    /// The token is longer than any real token.
    #[error("the join token is too long ({0} bytes)")]
    TooLong(usize),
}

/// A name does not follow the rules for site or operator names.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "{what} name {name:?} is invalid: use 1 to 63 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit"
)]
pub struct NameError {
    /// What kind of name ("site", "operator").
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

/// A private file could not be written or read.
#[derive(Debug, Error)]
#[error("{action} {path}: {source}")]
pub struct FileError {
    /// What was being done ("write", "read", "create directory").
    pub action: &'static str,
    /// The file.
    pub path: std::path::PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}
