//! The Continuum site agent (`continuum-agent`).
//!
//! `join` enrolls the site with a token: a key pair made here (the private key never
//! leaves the site), the control plane verified against the CA fingerprint the token
//! carries, a certificate issued for that key. `run` then holds one mutual-TLS QUIC
//! connection to the control plane, says hello, heartbeats, renews its certificate
//! before it expires, and reconnects with jittered backoff whenever the link drops.
//! `status` answers from local files, whether or not the control plane is reachable.
//!
//! # Layout
//!
//! - [`cli`]: the command line; [`paths`]: where state lives.
//! - [`identity`]: the site key, certificate and control-plane addresses on disk.
//! - [`join`], [`renew`]: enrollment and certificate renewal.
//! - [`connect`]: dialing the control plane; [`session`]: one connected session;
//!   [`run`]: the reconnect loop around sessions.
//! - [`trust`]: verifying desired state (TUF, as Uptane splits it).
//! - [`engine`]: the container engine; [`deploy`]: the reconcile loop that brings the
//!   site's containers to the verified desired state, health checks and rollback.
//! - [`admission`]: the site's own policy file, which refuses releases the site does not
//!   allow.
//! - [`labels`]: facts detected about this host; [`lock`]: the site admin's update lock.
//! - [`status`]: the status file the running agent keeps, and its display.
//! - [`upgrade`]: self-update, and the launcher that takes a bad update back.
//! - [`error`]: the agent's errors.

pub mod admission;
pub mod cli;
pub mod connect;
pub mod decommission;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod identity;
pub mod join;
pub mod labels;
pub mod lock;
pub mod logs;
pub mod paths;
pub mod renew;
pub mod run;
pub mod secrets;
pub mod session;
pub mod status;
pub mod telemetry;
pub mod trust;
pub mod upgrade;

/// The Rust target triple the agent was built for: it updates itself only with a
/// binary published for this triple.
pub const TARGET: &str = env!("CONTINUUM_AGENT_TARGET");

/// The agent's version: stamped at build time through `CONTINUUM_AGENT_VERSION`, else
/// the crate version.
pub const VERSION: &str = match option_env!("CONTINUUM_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
