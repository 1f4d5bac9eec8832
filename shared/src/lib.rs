//! Code that both Continuum binaries need to agree on: the wire protocol between a
//! site agent and the control plane, how its messages are framed, what a join token
//! carries, and how each side proves who it is over TLS.
//!
//! Everything here except [`link`], [`tls`] and [`watch`] is plain functions over bytes and values:
//! no sockets and no clock, so it is unit-tested and fuzzed without a network.
//!
//! # Layout
//!
//! - [`protocol`]: versioned message types, stream kinds and their size limits, close codes.
//! - [`telemetry`]: the metric catalogue, events, numbered records and their batches.
//! - [`framing`]: the stream preamble and length-prefixed frames (the only user of bincode).
//! - [`labels`]: site labels, whose numeric facts stay numbers on the wire and in JSON.
//! - [`manifest`]: release manifests (TOML), checked with file, line and field.
//! - [`secrets`]: secret values sealed with age to one site's own key.
//! - [`token`]: join tokens (`ctj1.…`), which pin the control plane's CA on first contact.
//! - [`names`]: the rules for site and operator names.
//! - [`tls`]: the rustls crypto provider, the CA-pinning verifier used at join, QUIC configs.
//! - [`link`]: the transport seam: a connection that opens and accepts framed streams.
//! - [`backoff`]: jittered exponential backoff for reconnects.
//! - [`files`]: private (0600) files written atomically, streams written hashed.
//! - [`watch`]: a directory watched for edits, for files reloaded by themselves.
//! - [`error`]: the errors of all of the above.

pub mod backoff;
pub mod error;
pub mod files;
pub mod framing;
pub mod labels;
pub mod link;
pub mod manifest;
pub mod names;
pub mod protocol;
pub mod secrets;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod watch;

/// Milliseconds since the Unix epoch, for telemetry records, whose order within a
/// second matters.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, the one timestamp format on the wire and in storage.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
