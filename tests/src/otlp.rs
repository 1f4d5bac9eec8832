//! An OTLP/HTTP receiver for tests: accepts `/v1/metrics` and `/v1/logs` posts on
//! loopback, decodes their protobuf bodies, and remembers what each site sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;

/// What arrived, by site (the `continuum.site` resource attribute).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Metric names per site.
    pub metrics: BTreeMap<String, BTreeSet<String>>,
    /// Event kinds (log records' event names) per site.
    pub events: BTreeMap<String, BTreeSet<String>>,
    /// Bodies that did not decode.
    pub undecodable: usize,
}

/// A receiver running on its own thread until dropped.
pub struct Receiver {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    _runtime: tokio::runtime::Runtime,
}

fn site_of(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "continuum.site")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl Receiver {
    /// Starts listening on a free loopback port.
    pub fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("listens");
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let path = request.uri().path().to_owned();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = record(&seen, &path, &body);
                                Ok::<_, std::convert::Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap_or_default(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            port,
            seen,
            _runtime: runtime,
        }
    }

    /// The endpoint to give `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What arrived so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn record(seen: &Mutex<Seen>, path: &str, body: &[u8]) -> StatusCode {
    let Ok(mut seen) = seen.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    match path {
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(request) => {
                for resource in request.resource_metrics {
                    let site = site_of(&resource.resource.unwrap_or_default().attributes);
                    let names = seen.metrics.entry(site).or_default();
                    for scope in resource.scope_metrics {
                        names.extend(scope.metrics.into_iter().map(|m| m.name));
                    }
                }
                StatusCode::OK
            }
            Err(_) => {
                seen.undecodable += 1;
                StatusCode::BAD_REQUEST
            }
        },
        "/v1/logs" => match ExportLogsServiceRequest::decode(body) {
            Ok(request) => {
                for resource in request.resource_logs {
                    let site = site_of(&resource.resource.unwrap_or_default().attributes);
                    let kinds = seen.events.entry(site).or_default();
                    for scope in resource.scope_logs {
                        kinds.extend(scope.log_records.into_iter().map(|r| r.event_name));
                    }
                }
                StatusCode::OK
            }
            Err(_) => {
                seen.undecodable += 1;
                StatusCode::BAD_REQUEST
            }
        },
        _ => StatusCode::NOT_FOUND,
    }
}
