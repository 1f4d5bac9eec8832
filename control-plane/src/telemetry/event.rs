//! Events as the control plane keeps and shows them: the site's event with where and
//! when it came from, or an event the control plane itself recorded about a site's
//! telemetry (drops, loss, a reset outbox).

use continuum_shared::telemetry::{Event, EventKind};
use serde::{Deserialize, Serialize};

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the fleet's event log (assigned when stored; grows).
    pub id: u64,
    /// The site.
    pub site: String,
    /// The site's sequence number (0 for events the control plane recorded).
    pub seq: u64,
    /// When it happened, Unix milliseconds.
    pub at_ms: i64,
    /// What happened.
    pub kind: EventKind,
    /// The service, if any.
    pub service: Option<String>,
    /// The release, if any.
    pub release: Option<String>,
    /// For people.
    pub message: String,
}

impl StoredEvent {
    /// A site's event.
    pub fn from_site(site: &str, seq: u64, at_ms: i64, event: &Event) -> StoredEvent {
        StoredEvent {
            id: 0,
            site: site.to_owned(),
            seq,
            at_ms,
            kind: event.kind,
            service: event.service.clone(),
            release: event.release.clone(),
            message: event.message.clone(),
        }
    }

    /// An event the control plane records about `site`.
    pub fn about(site: &str, at_ms: i64, kind: EventKind, message: String) -> StoredEvent {
        StoredEvent {
            id: 0,
            site: site.to_owned(),
            seq: 0,
            at_ms,
            kind,
            service: None,
            release: None,
            message,
        }
    }
}

/// What the API and CLI show of an event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// Position in the fleet's event log; pass as `after` to read on from here.
    pub id: u64,
    /// The site.
    pub site: String,
    /// The site's sequence number (0: recorded by the control plane).
    pub seq: u64,
    /// When, RFC 3339 with milliseconds.
    pub at: String,
    /// What kind of event (`deployed`, `rolled-back`, `health-changed`, …).
    pub kind: String,
    /// The service, if any.
    pub service: Option<String>,
    /// The release, if any.
    pub release: Option<String>,
    /// What happened.
    pub message: String,
}

impl From<&StoredEvent> for EventView {
    fn from(event: &StoredEvent) -> Self {
        EventView {
            id: event.id,
            site: event.site.clone(),
            seq: event.seq,
            at: rfc3339_millis(event.at_ms),
            kind: event.kind.name().to_owned(),
            service: event.service.clone(),
            release: event.release.clone(),
            message: event.message.clone(),
        }
    }
}

/// Unix milliseconds as RFC 3339 with milliseconds (UTC).
pub fn rfc3339_millis(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
