//! Events read off the reconciler's service reports: what changed between two reports
//! of the same service is what happened to it.

use continuum_shared::protocol::{HealthState, ServicePhase, ServiceReport};
use continuum_shared::telemetry::EventKind;

use crate::deploy::Reports;

/// One event to record: kind, service, release, message.
pub type ServiceEvent = (EventKind, String, Option<String>, String);

/// The events that take `old` to `new`.
pub fn service_events(old: &Reports, new: &Reports) -> Vec<ServiceEvent> {
    let mut events = Vec::new();
    for (name, now) in new {
        let before = old.get(name);
        if let Some(event) = phase_event(before, now) {
            events.push(event);
        }
        if let Some(before) = before
            && before.health != now.health
            && now.phase != ServicePhase::Removed
            && now.health != HealthState::Starting
        {
            events.push((
                EventKind::HealthChanged,
                name.clone(),
                now.running.clone(),
                format!("{} → {}", before.health.name(), now.health.name()),
            ));
        }
    }
    events
}

fn phase_event(before: Option<&ServiceReport>, now: &ServiceReport) -> Option<ServiceEvent> {
    let same_phase = before.is_some_and(|b| b.phase == now.phase && b.running == now.running);
    if same_phase {
        return None;
    }
    let service = now.service.clone();
    let why = || {
        now.failure
            .clone()
            .or_else(|| now.last_error.clone())
            .unwrap_or_default()
    };
    Some(match now.phase {
        ServicePhase::Running => (
            EventKind::Deployed,
            service,
            now.running.clone(),
            format!(
                "release {} runs and is healthy",
                now.running.as_deref().unwrap_or("?")
            ),
        ),
        ServicePhase::RolledBack => (
            EventKind::RolledBack,
            service,
            now.failed.clone(),
            format!(
                "release {} failed; back on {}: {}",
                now.failed.as_deref().unwrap_or("?"),
                now.running.as_deref().unwrap_or("?"),
                why()
            ),
        ),
        ServicePhase::Failed => (
            EventKind::DeployFailed,
            service,
            now.failed.clone().or_else(|| now.desired.clone()),
            format!("nothing to go back to: {}", why()),
        ),
        ServicePhase::Refused => (
            EventKind::AdmissionRefused,
            service,
            now.desired.clone(),
            why(),
        ),
        ServicePhase::Removed => (
            EventKind::Removed,
            service,
            before.and_then(|b| b.running.clone()),
            "no longer desired here; its containers are gone".to_owned(),
        ),
        ServicePhase::Deploying | ServicePhase::Trial => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::report::blank;

    fn report(phase: ServicePhase, health: HealthState, running: Option<&str>) -> ServiceReport {
        ServiceReport {
            phase,
            health,
            running: running.map(str::to_owned),
            ..blank("web")
        }
    }

    fn reports(report: ServiceReport) -> Reports {
        Reports::from([(report.service.clone(), report)])
    }

    fn kinds(old: &Reports, new: &Reports) -> Vec<EventKind> {
        service_events(old, new).into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn a_deploy_a_health_change_and_a_rollback_are_events() {
        let trial = reports(report(
            ServicePhase::Trial,
            HealthState::Starting,
            Some("1"),
        ));
        let running = reports(report(
            ServicePhase::Running,
            HealthState::Healthy,
            Some("1"),
        ));
        let sick = reports(report(
            ServicePhase::Running,
            HealthState::Unhealthy,
            Some("1"),
        ));
        let mut back = report(ServicePhase::RolledBack, HealthState::Healthy, Some("1"));
        back.failed = Some("2".into());
        back.failure = Some("exit 1".into());
        let back = reports(back);
        assert_eq!(kinds(&Reports::new(), &trial), []);
        assert_eq!(
            kinds(&trial, &running),
            [EventKind::Deployed, EventKind::HealthChanged]
        );
        assert_eq!(kinds(&running, &running), []);
        assert_eq!(kinds(&running, &sick), [EventKind::HealthChanged]);
        let events = service_events(&sick, &back);
        assert_eq!(events[0].0, EventKind::RolledBack);
        assert_eq!(events[0].2.as_deref(), Some("2"));
        assert!(events[0].3.contains("exit 1"), "{}", events[0].3);
    }

    #[test]
    fn refusals_and_removals_are_events() {
        let running = reports(report(
            ServicePhase::Running,
            HealthState::Healthy,
            Some("1"),
        ));
        let mut refused = report(ServicePhase::Refused, HealthState::Down, None);
        refused.last_error = Some("registry not allowed".into());
        let events = service_events(&Reports::new(), &reports(refused));
        assert_eq!(events[0].0, EventKind::AdmissionRefused);
        assert_eq!(events[0].3, "registry not allowed");
        let removed = reports(report(ServicePhase::Removed, HealthState::Down, None));
        assert_eq!(kinds(&running, &removed), [EventKind::Removed]);
    }
}
