//! OpenTelemetry export (`continuum serve --otlp-endpoint http://collector:4318`):
//! every stored sample set goes out as OTLP metrics and every event as an OTLP log
//! record, over OTLP/HTTP with protobuf bodies, to `/v1/metrics` and `/v1/logs`.
//!
//! Export is best effort and never slows ingestion: records wait in a bounded queue;
//! when the collector is away long enough for it to fill, the newest are counted and
//! dropped (the data stays queryable here).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use continuum_shared::telemetry::{Metric as CatalogueMetric, MetricKind};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::event::StoredEvent;
use super::store::SampleSet;

/// Records waiting for export at most.
const QUEUE: usize = 65_536;
/// Records sent in one request at most.
const BATCH: usize = 2048;
/// How long records wait to be batched.
const LINGER: Duration = Duration::from_secs(2);
/// Attempts per request before its records are given up.
const ATTEMPTS: u32 = 3;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One record to export.
enum Item {
    Samples(String, SampleSet),
    Event(StoredEvent),
}

/// The sending side, held by ingestion.
pub struct Queue {
    sender: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
}

impl Queue {
    /// Queues a batch's new records; drops (and counts) what does not fit.
    pub fn offer(&self, site: &str, samples: &[SampleSet], events: &[StoredEvent]) {
        let items = samples
            .iter()
            .map(|s| Item::Samples(site.to_owned(), s.clone()))
            .chain(events.iter().cloned().map(Item::Event));
        for item in items {
            if self.sender.try_send(item).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Where to send: `http://host:port[/base]`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    authority: String,
    base: String,
}

impl Endpoint {
    /// Parses `--otlp-endpoint`. Plain HTTP only: point it at a collector beside the
    /// control plane, which forwards over TLS if the backend is remote.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("--otlp-endpoint {text:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--otlp-endpoint {text:?}: only http:// is supported; run an OpenTelemetry collector beside the control plane to forward over TLS"
            ));
        }
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| format!("--otlp-endpoint {text:?}: no host"))?;
        let base = uri.path().trim_end_matches('/').to_owned();
        Ok(Endpoint { authority, base })
    }
}

/// Starts the exporter; returns the queue ingestion offers records to.
pub fn start(endpoint: Endpoint) -> Queue {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(export(endpoint, receiver, dropped.clone()));
    Queue { sender, dropped }
}

async fn export(endpoint: Endpoint, mut receiver: mpsc::Receiver<Item>, dropped: Arc<AtomicU64>) {
    info!(endpoint = %endpoint.authority, "exporting telemetry over OTLP/HTTP");
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while items.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let (metrics, logs) = requests(&items);
        let mut failed = 0;
        if !metrics.resource_metrics.is_empty() {
            let body = metrics.encode_to_vec();
            failed += send(&endpoint, "/v1/metrics", body)
                .await
                .err()
                .map_or(0, |e| {
                    warn!(error = %e, "OTLP metrics export failed");
                    items
                        .iter()
                        .filter(|i| matches!(i, Item::Samples(..)))
                        .count()
                });
        }
        if !logs.resource_logs.is_empty() {
            let body = logs.encode_to_vec();
            failed += send(&endpoint, "/v1/logs", body)
                .await
                .err()
                .map_or(0, |e| {
                    warn!(error = %e, "OTLP logs export failed");
                    items.iter().filter(|i| matches!(i, Item::Event(_))).count()
                });
        }
        if failed > 0 {
            let total = dropped.fetch_add(failed as u64, Ordering::Relaxed) + failed as u64;
            warn!(records = failed, total, "telemetry records not exported");
        }
    }
}

/// Builds the two OTLP requests for a set of records: one resource per site.
fn requests(items: &[Item]) -> (ExportMetricsServiceRequest, ExportLogsServiceRequest) {
    use std::collections::BTreeMap;
    let mut metrics: BTreeMap<&str, BTreeMap<CatalogueMetric, Vec<NumberDataPoint>>> =
        BTreeMap::new();
    let mut logs: BTreeMap<&str, Vec<LogRecord>> = BTreeMap::new();
    for item in items {
        match item {
            Item::Samples(site, set) => {
                let nanos = millis_to_nanos(set.at_ms);
                let by_metric = metrics.entry(site).or_default();
                for sample in &set.samples {
                    let attributes = sample
                        .service
                        .iter()
                        .map(|s| text_attribute("service", s))
                        .collect();
                    by_metric
                        .entry(sample.metric)
                        .or_default()
                        .push(NumberDataPoint {
                            attributes,
                            time_unix_nano: nanos,
                            value: Some(number_data_point::Value::AsDouble(sample.value)),
                            ..Default::default()
                        });
                }
            }
            Item::Event(event) => {
                let mut attributes = vec![
                    text_attribute("continuum.event.kind", event.kind.name()),
                    text_attribute("continuum.site", &event.site),
                ];
                if let Some(service) = &event.service {
                    attributes.push(text_attribute("service", service));
                }
                if let Some(release) = &event.release {
                    attributes.push(text_attribute("continuum.release", release));
                }
                logs.entry(&event.site).or_default().push(LogRecord {
                    time_unix_nano: millis_to_nanos(event.at_ms),
                    observed_time_unix_nano: millis_to_nanos(continuum_shared::unix_millis()),
                    severity_number: 9, // INFO
                    severity_text: "INFO".into(),
                    body: Some(text(&event.message)),
                    attributes,
                    event_name: event.kind.name().into(),
                    ..Default::default()
                });
            }
        }
    }
    let scope = || {
        Some(InstrumentationScope {
            name: "continuum".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    };
    let metrics_request = ExportMetricsServiceRequest {
        resource_metrics: metrics
            .into_iter()
            .map(|(site, by_metric)| ResourceMetrics {
                resource: Some(resource(site)),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope(),
                    metrics: by_metric
                        .into_iter()
                        .map(|(metric, points)| otlp_metric(metric, points))
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let logs_request = ExportLogsServiceRequest {
        resource_logs: logs
            .into_iter()
            .map(|(site, records)| ResourceLogs {
                resource: Some(resource(site)),
                scope_logs: vec![ScopeLogs {
                    scope: scope(),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    (metrics_request, logs_request)
}

fn otlp_metric(metric: CatalogueMetric, data_points: Vec<NumberDataPoint>) -> Metric {
    let data = match metric.kind() {
        MetricKind::Gauge => metric::Data::Gauge(Gauge { data_points }),
        MetricKind::Counter => metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
    };
    Metric {
        name: metric.name().into(),
        description: metric.help().into(),
        data: Some(data),
        ..Default::default()
    }
}

fn resource(site: &str) -> Resource {
    Resource {
        attributes: vec![
            text_attribute("service.name", "continuum-site"),
            text_attribute("continuum.site", site),
            text_attribute("host.name", site),
        ],
        ..Default::default()
    }
}

fn text(value: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.to_owned())),
    }
}

fn text_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(text(value)),
        ..Default::default()
    }
}

fn millis_to_nanos(ms: i64) -> u64 {
    (ms.max(0) as u64).saturating_mul(1_000_000)
}

/// POSTs one protobuf body, retrying a few times.
async fn send(endpoint: &Endpoint, path: &str, body: Vec<u8>) -> Result<(), String> {
    let body = Bytes::from(body);
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, post(endpoint, path, body.clone())).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
    Err(last)
}

async fn post(endpoint: &Endpoint, path: &str, body: Bytes) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|e| format!("connecting to {}: {e}", endpoint.authority))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", endpoint.base))
        .header(hyper::header::HOST, &endpoint.authority)
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{}{path} answered HTTP {status}",
            endpoint.authority
        ))
    }
}

#[cfg(test)]
mod tests {
    use continuum_shared::telemetry::{EventKind, Sample};

    use super::*;

    #[test]
    fn samples_become_metrics_and_events_become_logs_per_site() {
        let set = SampleSet {
            seq: 1,
            at_ms: 1_000,
            samples: vec![
                Sample {
                    metric: CatalogueMetric::HostLoad1,
                    service: None,
                    value: 0.5,
                },
                Sample {
                    metric: CatalogueMetric::ServiceRestarts,
                    service: Some("web".into()),
                    value: 2.0,
                },
            ],
        };
        let event = StoredEvent::about("b", 2_000, EventKind::TelemetryLost, "gone".into());
        let items = vec![Item::Samples("a".into(), set), Item::Event(event)];
        let (metrics, logs) = requests(&items);
        let decoded =
            ExportMetricsServiceRequest::decode(metrics.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.resource_metrics.len(), 1);
        let names: Vec<_> = decoded.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["continuum_site_load1", "continuum_service_restarts_total"]
        );
        assert!(matches!(
            decoded.resource_metrics[0].scope_metrics[0].metrics[1].data,
            Some(metric::Data::Sum(_))
        ));
        let record = &logs.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.event_name, "telemetry-lost");
        assert_eq!(record.time_unix_nano, 2_000_000_000);
    }

    #[test]
    fn only_plain_http_endpoints_are_taken() {
        let endpoint = Endpoint::parse("http://127.0.0.1:4318/otlp/").unwrap();
        assert_eq!(endpoint.authority, "127.0.0.1:4318");
        assert_eq!(endpoint.base, "/otlp");
        assert!(Endpoint::parse("https://collector:4318").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
