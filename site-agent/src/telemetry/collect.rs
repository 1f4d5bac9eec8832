//! The sampling loop: host metrics, the agent's own, and each service's state and
//! container statistics, taken together every interval as one record.

use std::collections::HashMap;
use std::path::PathBuf;

use continuum_shared::protocol::{HealthState, ServicePhase};
use continuum_shared::telemetry::{MAX_SAMPLES_PER_RECORD, Metric, Sample};
use tokio::sync::watch;

use super::host::HostSampler;
use super::{Settings, Telemetry};
use crate::deploy::Reports;
use crate::engine::Engine;

/// Samples per service in one record.
const PER_SERVICE: usize = 5;
/// Room kept for host and agent samples in one record.
const HOST_SAMPLES: usize = 16;

/// Where the sampling loop reads from.
pub struct Sources {
    /// The site's name (its containers carry it as a label).
    pub site: String,
    /// The state directory (its file system is the one measured).
    pub state_dir: PathBuf,
    /// The container engine's address, when the agent deploys.
    pub engine: Option<String>,
    /// The reconciler's service reports.
    pub reports: watch::Receiver<Reports>,
    /// When the agent started, Unix seconds.
    pub started_at: i64,
}

/// Takes a sample record every interval, for the life of the agent.
pub async fn collect(telemetry: Telemetry, settings: Settings, sources: Sources) {
    let mut host = HostSampler::new(&sources.state_dir);
    let mut engine: Option<Engine> = None;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut samples = host.sample();
        let uptime = (continuum_shared::unix_now() - sources.started_at).max(0);
        samples.push(host_sample(Metric::AgentUptime, uptime as f64));
        let queued = telemetry.outbox().depth().bytes;
        samples.push(host_sample(Metric::AgentOutboxBytes, queued as f64));
        let reports = sources.reports.borrow().clone();
        let stats = match &sources.engine {
            Some(address) => container_stats(&mut engine, address, &sources.site).await,
            None => HashMap::new(),
        };
        let room = (MAX_SAMPLES_PER_RECORD - HOST_SAMPLES) / PER_SERVICE;
        for report in reports
            .values()
            .filter(|r| r.phase != ServicePhase::Removed)
            .take(room)
        {
            let service = |metric, value: f64| Sample {
                metric,
                service: Some(report.service.clone()),
                value,
            };
            let healthy = report.health == HealthState::Healthy;
            let current = report.phase == ServicePhase::Running && report.running == report.desired;
            samples.push(service(
                Metric::ServiceHealthy,
                f64::from(u8::from(healthy)),
            ));
            samples.push(service(
                Metric::ServiceUpToDate,
                f64::from(u8::from(current)),
            ));
            samples.push(service(Metric::ServiceRestarts, f64::from(report.restarts)));
            if let Some((cpu, memory)) = stats.get(&report.service) {
                samples.push(service(Metric::ServiceCpuSeconds, *cpu));
                samples.push(service(Metric::ServiceMemory, *memory as f64));
            }
        }
        telemetry.samples(samples);
    }
}

fn host_sample(metric: Metric, value: f64) -> Sample {
    Sample {
        metric,
        service: None,
        value,
    }
}

/// CPU seconds and memory of each service's running container; empty when the engine
/// cannot be reached (the reconciler reports that).
async fn container_stats(
    engine: &mut Option<Engine>,
    address: &str,
    site: &str,
) -> HashMap<String, (f64, u64)> {
    let mut stats = HashMap::new();
    if engine.is_none() {
        *engine = Engine::connect(address).await.ok();
    }
    let Some(connected) = engine.as_ref() else {
        return stats;
    };
    let containers = match connected.ours(site).await {
        Ok(containers) => containers,
        Err(_) => {
            *engine = None;
            return stats;
        }
    };
    for container in containers.iter().filter(|c| c.running) {
        if let Ok(numbers) = connected.stats(&container.id).await {
            stats.insert(container.service.clone(), numbers);
        }
    }
    stats
}
