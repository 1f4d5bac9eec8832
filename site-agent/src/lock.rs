//! The site admin's update lock: `continuum-agent lock --reason …` defers rollouts to
//! this site until `continuum-agent unlock`. It is a file in the state directory, so it
//! holds across agent restarts and works whether or not the agent runs; the running
//! agent tells the control plane when it changes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// The lock file's name in the state directory.
pub const FILE: &str = "lock.json";

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Why, as the site admin said.
    pub reason: String,
    /// Since when, Unix seconds.
    pub since: i64,
}

/// Takes the lock (or changes its reason).
pub fn take(state_dir: &Path, reason: &str) -> Result<Lock, AgentError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > continuum_shared::protocol::MAX_LOCK_REASON {
        return Err(AgentError::State(format!(
            "give a reason of 1 to {} characters: the central team sees it",
            continuum_shared::protocol::MAX_LOCK_REASON
        )));
    }
    let lock = Lock {
        reason: reason.to_owned(),
        since: continuum_shared::unix_now(),
    };
    let bytes = serde_json::to_vec_pretty(&lock).map_err(|e| AgentError::State(e.to_string()))?;
    continuum_shared::files::write_private(&state_dir.join(FILE), &bytes)?;
    Ok(lock)
}

/// Releases the lock; releasing no lock is fine.
pub fn release(state_dir: &Path) -> Result<(), AgentError> {
    match std::fs::remove_file(state_dir.join(FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::State(format!("releasing the lock: {e}"))),
    }
}

/// The lock held now, if any (an unreadable file counts as held, with that said).
pub fn read(state_dir: &Path) -> Option<Lock> {
    let bytes = std::fs::read(state_dir.join(FILE)).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap_or(Lock {
        reason: format!("{FILE} is unreadable; run `continuum-agent unlock` or lock again"),
        since: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_taken_read_and_released() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        take(dir.path(), "kernel upgrade until Friday").unwrap();
        assert_eq!(
            read(dir.path()).unwrap().reason,
            "kernel upgrade until Friday"
        );
        assert!(take(dir.path(), "  ").is_err(), "a reason is required");
        release(dir.path()).unwrap();
        assert_eq!(read(dir.path()), None);
        release(dir.path()).unwrap();
    }
}
