//! Self-update: the agent replaces its own binary with a signed agent release and the
//! launcher takes the new binary back unless it proves itself within its trial.
//!
//! - [`updater`]: the running agent's half (fetch, stage, swap, report, commit).
//! - [`launch`]: the launcher that services run, which owns trials and reverts.
//! - [`state`]: what both keep on disk.

pub mod launch;
pub mod state;
pub mod updater;
