//! Telemetry on the wire: what an agent measures and records, and how it hands it over.
//!
//! An agent numbers every record it makes (metric samples taken together, or one event)
//! with a sequence number that only grows within its outbox's *epoch* (a random number
//! drawn when the outbox is created, so a site whose store was wiped is told apart from
//! one replaying old records). It sends [`Batch`]es in sequence order on a
//! [`StreamKind::Telemetry`](crate::protocol::StreamKind::Telemetry) stream; the control
//! plane answers each with a [`TelemetryReply::Ack`] once what it holds is durable, and
//! the agent deletes only what was acknowledged. Records the agent had to drop when its
//! outbox was full are reported as [`Dropped`] ranges, so that loss is itself reported.
//!
//! Metric names come from a fixed catalogue ([`Metric`]), so a site cannot invent series:
//! the label cardinality the control plane exposes is bounded by sites × services.

use serde::{Deserialize, Serialize};

/// Longest event message a record carries.
pub const MAX_EVENT_MESSAGE: usize = 1024;
/// Longest service or release name in a record.
pub const MAX_NAME: usize = 128;
/// Most samples in one record.
pub const MAX_SAMPLES_PER_RECORD: usize = 512;
/// Most records in one batch.
pub const MAX_RECORDS_PER_BATCH: usize = 2048;
/// Most dropped ranges reported in one batch.
pub const MAX_DROPPED_PER_BATCH: usize = 1024;
/// Encoded size an agent aims to keep a batch under (the frame limit is larger).
pub const BATCH_TARGET_BYTES: usize = 192 * 1024;

/// What a measurement is about. The catalogue is closed: adding a metric means adding a
/// variant at the end (older peers reject batches naming one they do not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    /// Share of all CPUs busy since the previous sample, 0 to 1.
    HostCpuUsage,
    /// Memory in use (total minus available), bytes.
    HostMemoryUsed,
    /// Memory installed, bytes.
    HostMemoryTotal,
    /// Space used on the file system holding the agent's state, bytes.
    HostDiskUsed,
    /// Size of that file system, bytes.
    HostDiskTotal,
    /// One-minute load average.
    HostLoad1,
    /// Five-minute load average.
    HostLoad5,
    /// Fifteen-minute load average.
    HostLoad15,
    /// Bytes received on all non-loopback interfaces since boot.
    HostNetworkReceived,
    /// Bytes sent on all non-loopback interfaces since boot.
    HostNetworkSent,
    /// Seconds since the agent process started.
    AgentUptime,
    /// Bytes waiting in the agent's outbox when the sample was taken.
    AgentOutboxBytes,
    /// 1 when the service's running container is healthy, else 0.
    ServiceHealthy,
    /// 1 when the desired release runs, else 0.
    ServiceUpToDate,
    /// Restarts of the service's container counted by the engine.
    ServiceRestarts,
    /// CPU time used by the service's container, seconds.
    ServiceCpuSeconds,
    /// Memory used by the service's container, bytes.
    ServiceMemory,
}

/// How a metric's values behave, as Prometheus and OpenTelemetry distinguish them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only grows (until its source restarts).
    Counter,
}

impl Metric {
    /// Every metric, in catalogue order.
    pub const ALL: [Metric; 17] = [
        Metric::HostCpuUsage,
        Metric::HostMemoryUsed,
        Metric::HostMemoryTotal,
        Metric::HostDiskUsed,
        Metric::HostDiskTotal,
        Metric::HostLoad1,
        Metric::HostLoad5,
        Metric::HostLoad15,
        Metric::HostNetworkReceived,
        Metric::HostNetworkSent,
        Metric::AgentUptime,
        Metric::AgentOutboxBytes,
        Metric::ServiceHealthy,
        Metric::ServiceUpToDate,
        Metric::ServiceRestarts,
        Metric::ServiceCpuSeconds,
        Metric::ServiceMemory,
    ];

    /// The exported name (Prometheus conventions: base unit, `_total` on counters).
    pub const fn name(self) -> &'static str {
        match self {
            Metric::HostCpuUsage => "continuum_site_cpu_usage_ratio",
            Metric::HostMemoryUsed => "continuum_site_memory_used_bytes",
            Metric::HostMemoryTotal => "continuum_site_memory_total_bytes",
            Metric::HostDiskUsed => "continuum_site_disk_used_bytes",
            Metric::HostDiskTotal => "continuum_site_disk_total_bytes",
            Metric::HostLoad1 => "continuum_site_load1",
            Metric::HostLoad5 => "continuum_site_load5",
            Metric::HostLoad15 => "continuum_site_load15",
            Metric::HostNetworkReceived => "continuum_site_network_receive_bytes_total",
            Metric::HostNetworkSent => "continuum_site_network_transmit_bytes_total",
            Metric::AgentUptime => "continuum_agent_uptime_seconds",
            Metric::AgentOutboxBytes => "continuum_agent_outbox_bytes",
            Metric::ServiceHealthy => "continuum_service_healthy",
            Metric::ServiceUpToDate => "continuum_service_up_to_date",
            Metric::ServiceRestarts => "continuum_service_restarts_total",
            Metric::ServiceCpuSeconds => "continuum_service_cpu_seconds_total",
            Metric::ServiceMemory => "continuum_service_memory_bytes",
        }
    }

    /// One line saying what the metric measures.
    pub const fn help(self) -> &'static str {
        match self {
            Metric::HostCpuUsage => "Share of the site host's CPUs busy, 0 to 1.",
            Metric::HostMemoryUsed => "Memory in use on the site host.",
            Metric::HostMemoryTotal => "Memory installed on the site host.",
            Metric::HostDiskUsed => "Space used on the file system of the agent's state.",
            Metric::HostDiskTotal => "Size of the file system of the agent's state.",
            Metric::HostLoad1 => "One-minute load average of the site host.",
            Metric::HostLoad5 => "Five-minute load average of the site host.",
            Metric::HostLoad15 => "Fifteen-minute load average of the site host.",
            Metric::HostNetworkReceived => "Bytes received by the site host since boot.",
            Metric::HostNetworkSent => "Bytes sent by the site host since boot.",
            Metric::AgentUptime => "Seconds since the site agent started.",
            Metric::AgentOutboxBytes => "Telemetry bytes waiting in the agent's outbox.",
            Metric::ServiceHealthy => "1 when the service's container is healthy.",
            Metric::ServiceUpToDate => "1 when the service runs its desired release.",
            Metric::ServiceRestarts => "Restarts of the service's container.",
            Metric::ServiceCpuSeconds => "CPU time used by the service's container.",
            Metric::ServiceMemory => "Memory used by the service's container.",
        }
    }

    /// Whether the metric is a gauge or a counter.
    pub const fn kind(self) -> MetricKind {
        match self {
            Metric::HostNetworkReceived
            | Metric::HostNetworkSent
            | Metric::ServiceRestarts
            | Metric::ServiceCpuSeconds => MetricKind::Counter,
            _ => MetricKind::Gauge,
        }
    }

    /// Whether samples of this metric name a service.
    pub const fn per_service(self) -> bool {
        matches!(
            self,
            Metric::ServiceHealthy
                | Metric::ServiceUpToDate
                | Metric::ServiceRestarts
                | Metric::ServiceCpuSeconds
                | Metric::ServiceMemory
        )
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// What was measured.
    pub metric: Metric,
    /// The service, for per-service metrics.
    pub service: Option<String>,
    /// The value (finite).
    pub value: f64,
}

/// What happened, for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The agent process started.
    AgentStarted,
    /// The agent replaced itself with a new version.
    AgentUpdated,
    /// A release was deployed and proved healthy.
    Deployed,
    /// A release failed and the service went back to its last-known-good release.
    RolledBack,
    /// A release failed and there was nothing to go back to.
    DeployFailed,
    /// The service's health verdict changed.
    HealthChanged,
    /// The site's own policy refused a release.
    AdmissionRefused,
    /// A service was taken off the site.
    Removed,
    /// Newly verified desired state went into force.
    DesiredState,
    /// Desired state was refused by verification.
    TrustRefused,
    /// Recorded by the control plane: the agent reported records it dropped unsent.
    TelemetryDropped,
    /// Recorded by the control plane: records are missing and no drop report explains
    /// them.
    TelemetryLost,
    /// Recorded by the control plane: the agent's outbox was replaced (wiped state), so
    /// whatever the old one had not delivered is gone.
    TelemetryReset,
}

impl EventKind {
    /// The kind's name, as JSON and the CLI show it.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::AgentStarted => "agent-started",
            EventKind::AgentUpdated => "agent-updated",
            EventKind::Deployed => "deployed",
            EventKind::RolledBack => "rolled-back",
            EventKind::DeployFailed => "deploy-failed",
            EventKind::HealthChanged => "health-changed",
            EventKind::AdmissionRefused => "admission-refused",
            EventKind::Removed => "removed",
            EventKind::DesiredState => "desired-state",
            EventKind::TrustRefused => "trust-refused",
            EventKind::TelemetryDropped => "telemetry-dropped",
            EventKind::TelemetryLost => "telemetry-lost",
            EventKind::TelemetryReset => "telemetry-reset",
        }
    }

    /// Whether only the control plane records events of this kind (an agent may not
    /// claim them).
    pub const fn control_plane_only(self) -> bool {
        matches!(
            self,
            EventKind::TelemetryDropped | EventKind::TelemetryLost | EventKind::TelemetryReset
        )
    }
}

/// Something that happened at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What kind of thing.
    pub kind: EventKind,
    /// The service it concerns, if any.
    pub service: Option<String>,
    /// The release it concerns, if any.
    pub release: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// Measurements taken together.
    Samples(Vec<Sample>),
    /// One event.
    Event(Event),
}

/// One numbered record of an agent's telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number within the outbox's epoch, from 1.
    pub seq: u64,
    /// When it was made, Unix milliseconds.
    pub at_ms: i64,
    /// The samples or the event.
    pub body: RecordBody,
}

impl Record {
    /// Whether this record is an event (kept longer than samples when space runs out).
    pub fn is_event(&self) -> bool {
        matches!(self.body, RecordBody::Event(_))
    }
}

/// Records an agent dropped unsent because its outbox was full: every sequence number
/// from `first` to `last` that was not (or will not be) sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// First sequence number of the range.
    pub first: u64,
    /// Last sequence number of the range (inclusive).
    pub last: u64,
    /// How many sample records it covers.
    pub samples: u64,
    /// How many events it covers.
    pub events: u64,
}

/// What an agent sends on a telemetry stream, one frame each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The outbox's epoch.
    pub epoch: u64,
    /// Records in increasing sequence order.
    pub records: Vec<Record>,
    /// Ranges dropped unsent, in increasing order, not overlapping any record.
    pub dropped: Vec<Dropped>,
}

/// The control plane's answer to one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TelemetryReply {
    /// Everything up to and including `through` in `epoch` is stored durably (or known
    /// dropped): delete it.
    Ack {
        /// The epoch acknowledged.
        epoch: u64,
        /// The highest sequence number accounted for.
        through: u64,
    },
    /// The batch was refused; the stream closes.
    Refused(crate::protocol::Refusal),
}

impl Batch {
    /// Checks what a decoder cannot: order, bounds, and sane values. Says what is wrong
    /// and where, so a refusal can be acted on.
    pub fn check(&self) -> Result<(), String> {
        if self.records.len() > MAX_RECORDS_PER_BATCH {
            return Err(format!(
                "{} records in one batch; at most {MAX_RECORDS_PER_BATCH}",
                self.records.len()
            ));
        }
        if self.dropped.len() > MAX_DROPPED_PER_BATCH {
            return Err(format!(
                "{} dropped ranges in one batch; at most {MAX_DROPPED_PER_BATCH}",
                self.dropped.len()
            ));
        }
        let mut previous = 0u64;
        for (index, record) in self.records.iter().enumerate() {
            if record.seq <= previous {
                return Err(format!(
                    "record {index}: sequence {} does not follow {previous}",
                    record.seq
                ));
            }
            previous = record.seq;
            check_record(record)
                .map_err(|e| format!("record {index} (seq {}): {e}", record.seq))?;
        }
        let mut previous = 0u64;
        for (index, range) in self.dropped.iter().enumerate() {
            if range.first == 0 || range.first > range.last || range.first <= previous {
                return Err(format!(
                    "dropped range {index} ({}..={}) is empty, out of order or overlapping",
                    range.first, range.last
                ));
            }
            if range.samples.saturating_add(range.events) > range.last - range.first + 1 {
                return Err(format!(
                    "dropped range {index} counts more records than it spans"
                ));
            }
            if self
                .records
                .iter()
                .any(|r| (range.first..=range.last).contains(&r.seq))
            {
                return Err(format!(
                    "dropped range {index} ({}..={}) covers a record sent in the same batch",
                    range.first, range.last
                ));
            }
            previous = range.last;
        }
        Ok(())
    }
}

fn check_name(what: &str, name: &Option<String>) -> Result<(), String> {
    match name {
        Some(name) if name.is_empty() || name.len() > MAX_NAME => Err(format!(
            "{what} name must be 1 to {MAX_NAME} bytes, got {}",
            name.len()
        )),
        _ => Ok(()),
    }
}

fn check_record(record: &Record) -> Result<(), String> {
    match &record.body {
        RecordBody::Samples(samples) => {
            if samples.len() > MAX_SAMPLES_PER_RECORD {
                return Err(format!(
                    "{} samples; at most {MAX_SAMPLES_PER_RECORD}",
                    samples.len()
                ));
            }
            for sample in samples {
                if !sample.value.is_finite() {
                    return Err(format!("{} is not a finite number", sample.metric.name()));
                }
                if sample.metric.per_service() != sample.service.is_some() {
                    let rule = if sample.metric.per_service() {
                        "needs a service"
                    } else {
                        "takes no service"
                    };
                    return Err(format!("{} {rule}", sample.metric.name()));
                }
                check_name("service", &sample.service)?;
            }
        }
        RecordBody::Event(event) => {
            if event.kind.control_plane_only() {
                return Err(format!(
                    "{} events are recorded by the control plane, not sent",
                    event.kind.name()
                ));
            }
            if event.message.len() > MAX_EVENT_MESSAGE {
                return Err(format!(
                    "event message of {} bytes; at most {MAX_EVENT_MESSAGE}",
                    event.message.len()
                ));
            }
            check_name("service", &event.service)?;
            check_name("release", &event.release)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Record {
        Record {
            seq,
            at_ms: 1,
            body: RecordBody::Event(Event {
                kind: EventKind::Deployed,
                service: Some("web".into()),
                release: Some("1.0".into()),
                message: "ok".into(),
            }),
        }
    }

    fn batch(records: Vec<Record>, dropped: Vec<Dropped>) -> Batch {
        Batch {
            epoch: 7,
            records,
            dropped,
        }
    }

    #[test]
    fn a_well_formed_batch_passes() {
        let dropped = vec![Dropped {
            first: 2,
            last: 3,
            samples: 2,
            events: 0,
        }];
        assert_eq!(batch(vec![event(1), event(4)], dropped).check(), Ok(()));
    }

    #[test]
    fn out_of_order_records_are_refused() {
        let error = batch(vec![event(2), event(2)], vec![]).check().unwrap_err();
        assert!(error.contains("record 1"), "{error}");
    }

    #[test]
    fn a_drop_report_may_not_hide_a_sent_record() {
        let dropped = vec![Dropped {
            first: 1,
            last: 5,
            samples: 1,
            events: 0,
        }];
        let error = batch(vec![event(3)], dropped).check().unwrap_err();
        assert!(error.contains("covers a record"), "{error}");
    }

    #[test]
    fn counts_beyond_the_span_are_refused() {
        let dropped = vec![Dropped {
            first: 1,
            last: 1,
            samples: 1,
            events: 1,
        }];
        assert!(batch(vec![], dropped).check().is_err());
    }

    #[test]
    fn samples_must_be_finite_and_name_services_exactly_when_per_service() {
        let samples = |sample: Sample| {
            batch(
                vec![Record {
                    seq: 1,
                    at_ms: 0,
                    body: RecordBody::Samples(vec![sample]),
                }],
                vec![],
            )
            .check()
        };
        let nan = samples(Sample {
            metric: Metric::HostLoad1,
            service: None,
            value: f64::NAN,
        });
        assert!(nan.unwrap_err().contains("finite"));
        let missing = samples(Sample {
            metric: Metric::ServiceHealthy,
            service: None,
            value: 1.0,
        });
        assert!(missing.unwrap_err().contains("needs a service"));
        let extra = samples(Sample {
            metric: Metric::HostLoad1,
            service: Some("web".into()),
            value: 1.0,
        });
        assert!(extra.unwrap_err().contains("takes no service"));
    }

    #[test]
    fn the_catalogue_lists_every_metric_once_with_prometheus_names() {
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
        for metric in Metric::ALL {
            assert_eq!(
                metric.kind() == MetricKind::Counter,
                metric.name().ends_with("_total"),
                "{}",
                metric.name()
            );
        }
    }
}
