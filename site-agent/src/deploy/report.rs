//! The service reports the reconciler publishes: to the session (which sends what
//! changed to the control plane) and to `<state dir>/services.json` (which
//! `continuum-agent status` reads, with or without a running agent).

use std::collections::BTreeMap;
use std::path::Path;

use continuum_shared::protocol::{HealthState, MAX_REPORT_TEXT, ServicePhase, ServiceReport};

const FILE: &str = "services.json";

/// Every service's latest report, by name.
pub type Reports = BTreeMap<String, ServiceReport>;

/// A report for a service nothing is known about yet.
pub fn blank(service: &str) -> ServiceReport {
    ServiceReport {
        service: service.to_owned(),
        desired: None,
        running: None,
        last_known_good: None,
        phase: ServicePhase::Deploying,
        health: HealthState::Starting,
        restarts: 0,
        last_error: None,
        failed: None,
        failure: None,
        at: 0,
        secrets: Default::default(),
    }
}

/// Whether two reports say the same, whenever they were made.
pub fn same_report(a: &ServiceReport, b: &ServiceReport) -> bool {
    ServiceReport { at: 0, ..a.clone() } == ServiceReport { at: 0, ..b.clone() }
}

/// Whether two sets of reports say the same, whenever they were made.
pub fn same(a: &Reports, b: &Reports) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, ra), (kb, rb))| ka == kb && same_report(ra, rb))
}

/// Cuts text to what a report may carry, keeping its end (where log tails say most).
pub fn bounded(text: String) -> String {
    continuum_shared::protocol::keep_end(text, MAX_REPORT_TEXT)
}

/// Writes the reports for `continuum-agent status`.
pub fn save(state_dir: &Path, reports: &Reports) {
    if let Ok(bytes) = serde_json::to_vec_pretty(reports) {
        let _ = continuum_shared::files::write_private_fast(&state_dir.join(FILE), &bytes);
    }
}

/// The reports the agent wrote last, if any.
pub fn load_reports(state_dir: &Path) -> Reports {
    std::fs::read(state_dir.join(FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}
