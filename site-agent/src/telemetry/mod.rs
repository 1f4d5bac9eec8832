//! The agent's telemetry: host and service metrics taken on an interval, events as they
//! happen, all kept in a durable [`Outbox`] and delivered to the control plane exactly
//! once, in order, whenever a link is up.

mod collect;
mod events;
pub mod host;
pub mod outbox;
mod send;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use continuum_shared::telemetry::{Event, EventKind, RecordBody, Sample};
use tokio::sync::watch;
use tracing::warn;

pub use collect::{Sources, collect};
pub use events::service_events;
pub use outbox::Outbox;

use crate::error::AgentError;

/// How telemetry is taken and kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between metric samples.
    pub interval: Duration,
    /// Most bytes the outbox holds before it drops the oldest samples.
    pub outbox_limit: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(60),
            outbox_limit: 16 << 20,
        }
    }
}

/// A handle to record telemetry; cheap to clone, shared by every part of the agent.
#[derive(Clone)]
pub struct Telemetry {
    outbox: Arc<Outbox>,
    /// Counts records pushed, so the sender and the flusher wake on new ones.
    pushed: Arc<watch::Sender<u64>>,
}

impl Telemetry {
    /// Opens the outbox under `state_dir`.
    pub fn open(state_dir: &Path, settings: &Settings) -> Result<Telemetry, AgentError> {
        let outbox = Outbox::open(state_dir, settings.outbox_limit)?;
        Ok(Telemetry {
            outbox: Arc::new(outbox),
            pushed: Arc::new(watch::channel(0).0),
        })
    }

    /// Records that something happened.
    pub fn event(
        &self,
        kind: EventKind,
        service: Option<&str>,
        release: Option<&str>,
        message: String,
    ) {
        let message = continuum_shared::protocol::keep_end(
            message,
            continuum_shared::telemetry::MAX_EVENT_MESSAGE,
        );
        self.push(RecordBody::Event(Event {
            kind,
            service: service.map(str::to_owned),
            release: release.map(str::to_owned),
            message,
        }));
    }

    /// Records samples taken together.
    pub fn samples(&self, samples: Vec<Sample>) {
        if !samples.is_empty() {
            self.push(RecordBody::Samples(samples));
        }
    }

    fn push(&self, body: RecordBody) {
        let at_ms = continuum_shared::unix_millis();
        match self.outbox.push(at_ms, body) {
            Ok(_) => {
                self.pushed.send_modify(|n| *n += 1);
            }
            Err(e) => warn!(error = %e, "cannot record telemetry"),
        }
    }

    /// The outbox, for status and delivery.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Wakes when records are pushed.
    fn pushes(&self) -> watch::Receiver<u64> {
        self.pushed.subscribe()
    }

    /// Keeps the outbox durable: flushes it to disk soon after each push, so a record
    /// survives even an agent killed without warning. Runs for the life of the agent.
    pub async fn keep_flushed(self) {
        let mut pushes = self.pushes();
        while pushes.changed().await.is_ok() {
            if let Err(e) = self.outbox.flush() {
                warn!(error = %e, "cannot flush the telemetry outbox");
            }
        }
    }

    /// Delivers batches over `link`, one at a time, each deleted only once acknowledged,
    /// until the link breaks or the control plane refuses a batch.
    pub async fn deliver(&self, link: continuum_shared::link::Link) -> Result<(), AgentError> {
        send::deliver(self, link).await
    }
}
