//! Errors of the agent, each saying what a site admin can do about it.

use continuum_shared::error::{FileError, TokenError};
use continuum_shared::link::{LinkClosed, LinkError};
use continuum_shared::protocol::Refusal;
use thiserror::Error;

/// Something the agent could not do.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The token does not parse.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A state file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The state directory holds something unusable.
    #[error("{0}")]
    State(String),
    /// This state directory already belongs to an enrolled site.
    #[error(
        "this agent already joined as site {site:?} (state in {dir}); to join again, remove that directory or use another --state-dir"
    )]
    AlreadyJoined {
        /// The enrolled site.
        site: String,
        /// The state directory.
        dir: String,
    },
    /// Not joined yet.
    #[error(
        "this agent has not joined a control plane yet (no identity in {0}); run `continuum-agent join TOKEN` first"
    )]
    NotJoined(String),
    /// No address of the control plane answered.
    #[error("cannot reach the control plane: {0}")]
    Unreachable(String),
    /// The control plane refused the request.
    #[error("the control plane refused: {}", .0.message)]
    Refused(Refusal),
    /// The site was revoked.
    #[error("this site was revoked by the central team: {0}")]
    Revoked(String),
    /// A new agent binary is in place: the process ends so the launcher starts it.
    #[error("restarting into the new agent binary")]
    Restart,
    /// The central team ordered this site decommissioned; the order is recorded and the
    /// run carries it out.
    #[error("this site is being decommissioned")]
    Decommission,
    /// The link broke mid-exchange.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Key or certificate handling failed.
    #[error("key or certificate error: {0}")]
    Crypto(String),
}

impl From<LinkClosed> for AgentError {
    fn from(closed: LinkClosed) -> Self {
        AgentError::Link(LinkError::Closed(closed))
    }
}
