//! What goes when nothing asks for it any more: a retired service's containers (and,
//! by the site policy, its named volumes), and images no release here needs.

use std::collections::BTreeSet;

use continuum_shared::protocol::{HealthState, ServicePhase};
use tracing::{info, warn};

use super::ledger::ServiceRecord;
use super::{Reconciler, Step, report, spec};
use crate::engine::{Engine, Ours};
use crate::trust::DesiredState;

impl Reconciler {
    /// Removes images this agent brought that neither a desired release nor a
    /// last-known-good one runs. An image still in use (by anyone) stays.
    pub(super) async fn sweep_images(&mut self, engine: &Engine, desired: &DesiredState) {
        let mut keep: BTreeSet<String> = desired.releases.iter().map(spec::image_of).collect();
        for service in self.ledger.services() {
            if let Ok(ServiceRecord {
                last_known_good: Some(lkg),
                ..
            }) = self.ledger.get(&service)
            {
                keep.insert(spec::image_of(&lkg));
            }
        }
        for image in self.ledger.tracked_images() {
            if keep.contains(&image) {
                continue;
            }
            let _ = engine.remove_image(&image).await;
            if matches!(engine.image_id(&image).await, Ok(None)) {
                info!(image = %image, "removed an image no release here needs");
                if let Err(e) = self.ledger.untrack_image(&image) {
                    warn!(error = %e, "could not forget a removed image");
                }
            }
        }
    }

    /// A service no longer desired: its containers go, and so does its record; its
    /// named volumes too if the site policy says so, unless a desired release mounts
    /// them. It is reported removed only once every container is gone; until then the
    /// error is reported and the removal tried again.
    pub(super) async fn retire(
        &mut self,
        engine: &Engine,
        desired: &DesiredState,
        name: &str,
        theirs: &[&Ours],
    ) -> Step {
        let remove_volumes = self.policy.borrow().remove_volumes;
        let in_use: BTreeSet<&str> = desired
            .releases
            .iter()
            .flat_map(|r| r.release.container.volumes.iter())
            .map(|v| v.source.as_str())
            .collect();
        let mut failed = None;
        for c in theirs {
            let volumes = match remove_volumes {
                true => engine.named_volumes(&c.id).await.unwrap_or_default(),
                false => Vec::new(),
            };
            info!(service = %name, container = %c.name, "not desired here; removing");
            if let Err(e) = engine.remove(&c.id).await {
                warn!(container = %c.name, error = %e, "could not remove a container");
                failed = Some(format!("could not remove container {}: {e}", c.name));
                continue;
            }
            for volume in volumes.iter().filter(|v| !in_use.contains(v.as_str())) {
                match engine.remove_volume(volume).await {
                    Ok(true) => {
                        info!(service = %name, %volume, "removed its volume, as the site policy says")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(service = %name, %volume, error = %e, "could not remove a volume")
                    }
                }
            }
        }
        if failed.is_none() {
            self.secrets.prune(name, &[]);
        }
        let mut report = report::blank(name);
        report.health = HealthState::Down;
        if let Some(error) = failed {
            report.phase = ServicePhase::Failed;
            report.last_error = Some(error);
            return Step { report, busy: true };
        }
        if let Err(e) = self.ledger.remove(name) {
            warn!(service = %name, error = %e, "could not forget the service");
        }
        self.probes.remove(name);
        self.errors.remove(name);
        report.phase = ServicePhase::Removed;
        Step {
            report,
            busy: false,
        }
    }
}
