//! Rollout policies: the files in the policies directory, and the expressions they and
//! releases use to select sites.

pub mod file;
pub mod selector;
pub mod set;
