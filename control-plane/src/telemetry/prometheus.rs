//! The Prometheus exposition endpoint (`continuum serve --metrics-listen`): fleet, site
//! and service metrics in the text format (version 0.0.4), on a plain-HTTP listener of
//! its own, as exporters do.
//!
//! Label cardinality is bounded: metric names come from a closed catalogue, `site`
//! takes only enrolled, unrevoked sites, and `service` at most [`MAX_SERVICES_PER_SITE`]
//! services per site.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use continuum_shared::protocol::{HealthState, ServicePhase};
use continuum_shared::telemetry::{Metric, MetricKind};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::plane::ControlPlane;

/// Most services of one site exposed.
pub const MAX_SERVICES_PER_SITE: usize = 64;
/// The content type of the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    cp: Arc<ControlPlane>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "Prometheus metrics at http://{address}/metrics");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
            _ = crate::server::stopping(&mut shutdown) => return,
        };
        let cp = cp.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let cp = cp.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&cp, &request)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, service);
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer<B>(cp: &ControlPlane, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        );
    }
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    reply(StatusCode::OK, CONTENT_TYPE, render(cp))
}

/// Where `--metrics-listen` points: an address, or nowhere (`none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

/// Parses `--metrics-listen`.
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "none" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|address| Listen(Some(address)))
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9464, nor `none`"))
}

/// The exposition of the whole fleet as it is now.
pub fn render(cp: &ControlPlane) -> String {
    let sites = crate::sites::list(cp).unwrap_or_default();
    let live = cp.fleet.snapshot();
    let telemetry = cp.telemetry.snapshot();
    let mut out = Exposition::default();
    let enrolled: Vec<_> = sites.iter().filter(|s| s.revoked_at.is_none()).collect();
    let online = enrolled
        .iter()
        .filter(|s| live.contains_key(&s.name))
        .count();

    out.family(
        "continuum_sites",
        "Enrolled sites by connection state.",
        MetricKind::Gauge,
    );
    out.sample("continuum_sites", &[("state", "online")], online as f64);
    out.sample(
        "continuum_sites",
        &[("state", "offline")],
        (enrolled.len() - online) as f64,
    );

    out.family(
        "continuum_site_up",
        "1 when the site's agent is connected.",
        MetricKind::Gauge,
    );
    for site in &enrolled {
        let up = f64::from(u8::from(live.contains_key(&site.name)));
        out.sample("continuum_site_up", &[("site", &site.name)], up);
    }

    out.family(
        "continuum_site_info",
        "The site's agent version, as a label (value 1).",
        MetricKind::Gauge,
    );
    for site in &enrolled {
        let version = site.agent_version.as_deref().unwrap_or("unknown");
        out.sample(
            "continuum_site_info",
            &[("site", &site.name), ("agent_version", version)],
            1.0,
        );
    }

    for metric in Metric::ALL {
        out.family(metric.name(), metric.help(), metric.kind());
        for site in &enrolled {
            let Some(latest) = telemetry.get(&site.name).and_then(|t| t.latest.as_ref()) else {
                continue;
            };
            let mut services = BTreeSet::new();
            for sample in latest.samples.iter().filter(|s| s.metric == metric) {
                match &sample.service {
                    None => out.sample(metric.name(), &[("site", &site.name)], sample.value),
                    Some(service) => {
                        let known = services.contains(service.as_str());
                        if known || services.len() < MAX_SERVICES_PER_SITE {
                            services.insert(service.as_str());
                            out.sample(
                                metric.name(),
                                &[("site", &site.name), ("service", service)],
                                sample.value,
                            );
                        }
                    }
                }
            }
        }
    }

    // Fleet view of each service, from the sites' service reports.
    let mut by_service: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for site in &enrolled {
        for report in site.services.values().take(MAX_SERVICES_PER_SITE) {
            if report.phase == ServicePhase::Removed {
                continue;
            }
            let health = match report.health {
                HealthState::Healthy => "healthy",
                HealthState::Unhealthy => "unhealthy",
                HealthState::Starting => "starting",
                HealthState::Down => "down",
            };
            *by_service
                .entry((report.service.as_str(), health))
                .or_default() += 1;
        }
    }
    out.family(
        "continuum_service_sites",
        "Sites running each service, by health.",
        MetricKind::Gauge,
    );
    for ((service, health), count) in by_service {
        out.sample(
            "continuum_service_sites",
            &[("service", service), ("health", health)],
            count as f64,
        );
    }

    type Count = fn(&super::SiteTelemetry) -> u64;
    let counters: [(&str, &str, Count); 4] = [
        (
            "continuum_telemetry_samples_total",
            "Samples stored since the control plane started.",
            |t| t.samples,
        ),
        (
            "continuum_telemetry_events_total",
            "Events stored since the control plane started.",
            |t| t.events,
        ),
        (
            "continuum_telemetry_dropped_records_total",
            "Records the agent dropped unsent because its outbox was full.",
            |t| t.dropped_samples + t.dropped_events,
        ),
        (
            "continuum_telemetry_lost_records_total",
            "Records missing without a drop report.",
            |t| t.lost,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, help, MetricKind::Counter);
        for site in &enrolled {
            let count = telemetry.get(&site.name).map_or(0, value);
            out.sample(name, &[("site", &site.name)], count as f64);
        }
    }
    out.text
}

/// Text-format writer: `# HELP`/`# TYPE` once per family, then its samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: MetricKind) {
        let kind = match kind {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_numbers_written_as_prometheus_reads_them() {
        let mut out = Exposition::default();
        out.family("x_total", "a \\ b\nc", MetricKind::Counter);
        out.sample("x_total", &[("site", "a\"b\\c\nd")], 1.5);
        out.sample("x_total", &[], f64::INFINITY);
        assert_eq!(
            out.text,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{site=\"a\\\"b\\\\c\\nd\"} 1.5\nx_total +Inf\n"
        );
    }

    #[test]
    fn listen_takes_an_address_or_none() {
        assert_eq!(parse_listen("none"), Ok(Listen(None)));
        assert!(parse_listen("127.0.0.1:9464").unwrap().0.is_some());
        assert!(parse_listen("localhost").is_err());
    }
}
