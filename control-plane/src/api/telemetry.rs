//! Telemetry endpoints: the fleet's events (listed, and followed by long polling), a
//! site's latest metrics, and a service's container logs streamed from its site.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use continuum_shared::protocol::{LogFrame, LogRequest, PROTOCOL_VERSION, StreamKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, Caller};
use crate::model::Role;
use crate::plane::ControlPlane;
use crate::telemetry::event::{EventView, StoredEvent, rfc3339_millis};

type Cp = State<Arc<ControlPlane>>;

/// Most events one call returns.
const MAX_EVENTS: usize = 1000;
/// Longest a call waits for new events.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long the site has to start answering a logs request.
const LOGS_TIMEOUT: Duration = Duration::from_secs(15);

/// Which events to list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventQuery {
    /// Only this site's.
    pub site: Option<String>,
    /// Only this service's.
    pub service: Option<String>,
    /// Only events after this id (what `id` said in an earlier answer), oldest first.
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// With `after`: wait up to this many seconds (at most 30) for a new event.
    pub wait: Option<u64>,
}

/// Events, oldest first: the newest `limit` of them, or those after `after`.
#[utoipa::path(get, path = "/v1/events", params(EventQuery),
    responses((status = 200, body = Vec<EventView>)))]
pub async fn events(
    State(cp): Cp,
    caller: Caller,
    Query(query): Query<EventQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    caller.may_read(Role::Viewer)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    let keep = |e: &StoredEvent| {
        query.site.as_ref().is_none_or(|s| *s == e.site)
            && query
                .service
                .as_ref()
                .is_none_or(|s| e.service.as_ref() == Some(s))
    };
    // Subscribe before reading, so an event stored in between is not missed.
    let mut news = cp.telemetry.subscribe();
    let read = |cp: &ControlPlane| match query.after {
        Some(after) => cp.telemetry.events_after(after, limit, keep),
        None => {
            let mut newest = cp.telemetry.events(None, limit, keep);
            newest.reverse();
            newest
        }
    };
    let mut found = tokio::task::block_in_place(|| read(&cp));
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_WAIT);
    if found.is_empty() && query.after.is_some() && !wait.is_zero() {
        let arrived = tokio::time::timeout(wait, async {
            loop {
                match news.recv().await {
                    Ok(event) if keep(&event) => return,
                    Ok(_) => continue,
                    // Lagged: something arrived; read it from the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        })
        .await;
        if arrived.is_ok() {
            found = tokio::task::block_in_place(|| read(&cp));
        }
    }
    Ok(Json(found.iter().map(EventView::from).collect()))
}

/// A site's newest metrics and its telemetry counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteTelemetryView {
    /// The site.
    pub site: String,
    /// When the newest samples were taken (RFC 3339), if any arrived.
    pub at: Option<String>,
    /// Host and agent metrics by name.
    pub host: BTreeMap<String, f64>,
    /// Per-service metrics: service → metric name → value.
    pub services: BTreeMap<String, BTreeMap<String, f64>>,
    /// Samples stored since the control plane started.
    pub samples: u64,
    /// Events stored since the control plane started.
    pub events: u64,
    /// Records the agent reported dropped (outbox full).
    pub dropped: u64,
    /// Records missing without a drop report.
    pub lost: u64,
}

/// A site's newest metrics.
#[utoipa::path(get, path = "/v1/sites/{name}/telemetry", params(("name" = String, Path, description = "site name")),
    responses((status = 200, body = SiteTelemetryView), (status = 404, body = crate::views::ErrorBody)))]
pub async fn site_telemetry(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<SiteTelemetryView>, ApiError> {
    caller.may_read(Role::Viewer)?;
    let known = tokio::task::block_in_place(|| crate::sites::get(&cp, &name))?;
    if known.is_none() {
        return Err(ApiError::not_found(format!("no site named {name:?}")));
    }
    let telemetry = cp.telemetry.site(&name).unwrap_or_default();
    let mut view = SiteTelemetryView {
        site: name,
        at: telemetry.latest.as_ref().map(|l| rfc3339_millis(l.at_ms)),
        host: BTreeMap::new(),
        services: BTreeMap::new(),
        samples: telemetry.samples,
        events: telemetry.events,
        dropped: telemetry.dropped_samples + telemetry.dropped_events,
        lost: telemetry.lost,
    };
    for sample in telemetry.latest.iter().flat_map(|l| &l.samples) {
        let name = sample.metric.name().to_owned();
        match &sample.service {
            None => {
                view.host.insert(name, sample.value);
            }
            Some(service) => {
                view.services
                    .entry(service.clone())
                    .or_default()
                    .insert(name, sample.value);
            }
        }
    }
    Ok(Json(view))
}

/// How much of a service's logs.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LogsQuery {
    /// Lines from the end to start with (default 100).
    pub tail: Option<u32>,
    /// Keep streaming new lines until the caller hangs up.
    pub follow: Option<bool>,
}

/// A service's container output, streamed from its site as `text/plain`.
#[utoipa::path(get, path = "/v1/sites/{name}/services/{service}/logs",
    params(("name" = String, Path, description = "site name"), ("service" = String, Path, description = "service name"), LogsQuery),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 404, body = crate::views::ErrorBody), (status = 409, body = crate::views::ErrorBody)))]
pub async fn service_logs(
    State(cp): Cp,
    caller: Caller,
    Path((name, service)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    caller.may_read(Role::Operator)?;
    let Some((link, version)) = cp.fleet.link(&name) else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("site {name:?} is not connected; logs come live from the site"),
        ));
    };
    if version < 3 {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("site {name:?} runs an agent too old to stream logs (protocol {version})"),
        ));
    }
    let unavailable = |e: String| {
        ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            format!("asking site {name:?} for logs: {e}"),
        )
    };
    let mut stream = link
        .open(StreamKind::Logs, PROTOCOL_VERSION)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let request = LogRequest {
        service,
        tail: query.tail.unwrap_or(100),
        follow: query.follow.unwrap_or(false),
    };
    stream
        .send(&request)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    // The first frame says whether the site can serve it at all.
    let first = stream
        .recv_within::<LogFrame>(LOGS_TIMEOUT)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let first = match first {
        LogFrame::Refused(refusal) => return Err(ApiError::not_found(refusal.message)),
        frame => frame,
    };
    let body = futures_util::stream::unfold(
        (Some(first), Some(stream)),
        |(pending, stream)| async move {
            let mut stream = stream?;
            let frame = match pending {
                Some(frame) => frame,
                None => match stream.recv::<LogFrame>().await {
                    Ok(Some(frame)) => frame,
                    _ => return None,
                },
            };
            match frame {
                LogFrame::Text(text) => Some((
                    Ok::<_, std::io::Error>(Bytes::from(text)),
                    (None, Some(stream)),
                )),
                LogFrame::End | LogFrame::Refused(_) => None,
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}
