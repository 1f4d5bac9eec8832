//! Where the agent keeps its state: `/var/lib/continuum-agent` when run as root,
//! otherwise the user's state directory (`$XDG_STATE_HOME/continuum-agent`, else
//! `~/.local/state/continuum-agent`), because many sites give no root.

use std::path::PathBuf;

/// The default state directory for this user.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/continuum-agent");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("continuum-agent")
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}
