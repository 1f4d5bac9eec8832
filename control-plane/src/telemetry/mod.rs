//! Telemetry from the fleet: ingestion with de-duplication by (site, sequence), bounded
//! retention, the latest state of each site in memory, events for the CLI and API, and
//! the feeds for Prometheus and OpenTelemetry.

pub mod cursor;
pub mod event;
pub mod otlp;
pub mod prometheus;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use continuum_shared::telemetry::{Batch, Metric};
use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{info, warn};

use event::StoredEvent;
use store::{Outcome, SampleSet, StoreFailure, TelemetryStore};

/// How long telemetry is kept and how much.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Samples and events older than this are deleted.
    pub retention: Duration,
    /// Most sample sets kept per site (a site sampling every minute fills a week with
    /// 10 080).
    pub max_sets_per_site: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_sets_per_site: 20_160,
        }
    }
}

/// What is known about one site's telemetry, kept in memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SiteTelemetry {
    /// The newest samples.
    pub latest: Option<SampleSet>,
    /// Sample records stored since the control plane started.
    pub sample_records: u64,
    /// Samples stored since the control plane started.
    pub samples: u64,
    /// Events stored since the control plane started.
    pub events: u64,
    /// Sample records the agent reported dropped.
    pub dropped_samples: u64,
    /// Events the agent reported dropped.
    pub dropped_events: u64,
    /// Records missing without a drop report.
    pub lost: u64,
}

/// Telemetry of the whole fleet.
pub struct Telemetry {
    store: TelemetryStore,
    latest: RwLock<HashMap<String, SiteTelemetry>>,
    events: broadcast::Sender<StoredEvent>,
    export: Option<otlp::Queue>,
    settings: Settings,
    samples_total: AtomicU64,
}

impl Telemetry {
    /// Opens the telemetry store at `path` and loads each site's latest samples.
    pub fn open(
        path: &Path,
        settings: Settings,
        export: Option<otlp::Queue>,
    ) -> Result<Telemetry, StoreFailure> {
        let store = TelemetryStore::open(path)?;
        let mut latest = HashMap::new();
        for site in store.sites() {
            let known = SiteTelemetry {
                latest: store.latest_samples(&site),
                ..SiteTelemetry::default()
            };
            latest.insert(site, known);
        }
        Ok(Telemetry {
            store,
            latest: RwLock::new(latest),
            events: broadcast::channel(4096).0,
            export,
            settings,
            samples_total: AtomicU64::new(0),
        })
    }

    /// Stores what is new in `batch` from `site` and makes it durable; returns the
    /// cursor whose `through` the agent may delete up to. The batch must have passed
    /// [`Batch::check`]. The storing runs on a blocking thread, so a busy store never
    /// stalls the connections the runtime drives.
    pub async fn ingest(
        self: &Arc<Self>,
        site: &str,
        batch: Batch,
    ) -> Result<cursor::Cursor, StoreFailure> {
        let (this, owner) = (self.clone(), site.to_owned());
        let outcome = tokio::task::spawn_blocking(move || {
            this.store
                .ingest(&owner, &batch, continuum_shared::unix_millis())
        })
        .await
        .map_err(|e| StoreFailure(format!("storing a batch failed: {e}")))??;
        self.store.flush().await?;
        self.account(site, &outcome);
        Ok(outcome.cursor)
    }

    fn account(&self, site: &str, outcome: &Outcome) {
        let samples: u64 = outcome.samples.iter().map(|s| s.samples.len() as u64).sum();
        self.samples_total.fetch_add(samples, Ordering::Relaxed);
        {
            let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
            let entry = latest.entry(site.to_owned()).or_default();
            if let Some(newest) = outcome.samples.iter().max_by_key(|s| s.seq)
                && entry
                    .latest
                    .as_ref()
                    .is_none_or(|l| l.at_ms <= newest.at_ms)
            {
                entry.latest = Some(newest.clone());
            }
            entry.sample_records += outcome.samples.len() as u64;
            entry.samples += samples;
            entry.events += outcome.events.len() as u64;
            entry.dropped_samples += outcome.dropped_samples;
            entry.dropped_events += outcome.dropped_events;
            entry.lost += outcome.lost;
        }
        for event in &outcome.events {
            if event.kind.control_plane_only() {
                warn!(site, kind = event.kind.name(), message = %event.message, "telemetry accounting");
            }
            let _ = self.events.send(event.clone());
        }
        if let Some(export) = &self.export {
            export.offer(site, &outcome.samples, &outcome.events);
        }
    }

    /// Makes everything stored durable (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreFailure> {
        self.store.flush().await
    }

    /// Samples stored since start, over all sites (for the ingest benchmark).
    pub fn samples_total(&self) -> u64 {
        self.samples_total.load(Ordering::Relaxed)
    }

    /// One site's telemetry.
    pub fn site(&self, site: &str) -> Option<SiteTelemetry> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
            .cloned()
    }

    /// Every site's telemetry.
    pub fn snapshot(&self) -> HashMap<String, SiteTelemetry> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A site's sample history since `since_ms`, oldest first.
    pub fn history(&self, site: &str, since_ms: i64, limit: usize) -> Vec<SampleSet> {
        self.store.samples_since(site, since_ms, limit)
    }

    /// Stored events, newest first, after id `after`, matching `keep`.
    pub fn events(
        &self,
        after: Option<u64>,
        limit: usize,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Vec<StoredEvent> {
        self.store.events(after, limit, keep)
    }

    /// Stored events after id `after`, oldest first, matching `keep`.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Vec<StoredEvent> {
        self.store.events_after(after, limit, keep)
    }

    /// New events as they are stored.
    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    /// Deletes what is past retention, now and every few minutes, for the life of the
    /// control plane.
    pub async fn keep_retention(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(300));
        loop {
            ticker.tick().await;
            let this = self.clone();
            let swept = tokio::task::spawn_blocking(move || {
                let cutoff =
                    continuum_shared::unix_millis() - this.settings.retention.as_millis() as i64;
                this.store.sweep(cutoff, this.settings.max_sets_per_site)
            })
            .await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => info!(removed, "telemetry past retention deleted"),
                Ok(Err(e)) => warn!(error = %e, "telemetry retention sweep failed"),
                Err(e) => warn!(error = %e, "telemetry retention sweep failed"),
            }
        }
    }
}

/// The value of a host metric in a site's latest samples.
pub fn host_value(site: &SiteTelemetry, metric: Metric) -> Option<f64> {
    site.latest.as_ref().and_then(|l| l.host(metric))
}

#[cfg(test)]
mod tests {
    use continuum_shared::telemetry::{
        Batch, Dropped, Event, EventKind, Metric, Record, RecordBody, Sample,
    };

    use super::*;

    fn record(seq: u64, event: bool) -> Record {
        let body = if event {
            RecordBody::Event(Event {
                kind: EventKind::Deployed,
                service: Some("web".into()),
                release: Some("1".into()),
                message: format!("event {seq}"),
            })
        } else {
            RecordBody::Samples(vec![Sample {
                metric: Metric::HostLoad1,
                service: None,
                value: seq as f64,
            }])
        };
        Record {
            seq,
            at_ms: continuum_shared::unix_millis(),
            body,
        }
    }

    fn batch(seqs: &[(u64, bool)], dropped: Vec<Dropped>) -> Batch {
        Batch {
            epoch: 5,
            records: seqs.iter().map(|&(s, e)| record(s, e)).collect(),
            dropped,
        }
    }

    fn kinds(telemetry: &Telemetry, site: &str) -> Vec<EventKind> {
        let mut all = telemetry.events(None, 100, |e| e.site == site);
        all.reverse();
        all.iter().map(|e| e.kind).collect()
    }

    #[tokio::test]
    async fn duplicates_are_stored_once_and_gaps_without_a_drop_report_are_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.sled");
        {
            let telemetry = Arc::new(Telemetry::open(&path, Settings::default(), None).unwrap());
            let first = batch(&[(1, true), (2, false)], vec![]);
            assert_eq!(
                telemetry.ingest("a", first.clone()).await.unwrap().through,
                2
            );
            // The same batch again (the ack was lost): nothing new.
            assert_eq!(
                telemetry.ingest("a", first.clone()).await.unwrap().through,
                2
            );
            assert_eq!(kinds(&telemetry, "a"), [EventKind::Deployed]);
            // 3 and 4 dropped and reported; 6 missing without a report.
            let dropped = vec![Dropped {
                first: 3,
                last: 4,
                samples: 2,
                events: 0,
            }];
            let next = batch(&[(5, true), (7, false)], dropped);
            assert_eq!(
                telemetry.ingest("a", next.clone()).await.unwrap().through,
                7
            );
            assert_eq!(
                kinds(&telemetry, "a"),
                [
                    EventKind::Deployed,
                    EventKind::Deployed,
                    EventKind::TelemetryDropped,
                    EventKind::TelemetryLost
                ]
            );
            let site = telemetry.site("a").unwrap();
            assert_eq!((site.dropped_samples, site.lost, site.events), (2, 1, 4));
            assert_eq!(site.sample_records, 2);
            assert!(
                telemetry.site("b").is_none(),
                "nothing lands under another site"
            );
        }
        // After a restart the cursor holds: a replay stores nothing, the latest samples
        // are known again.
        let telemetry = Arc::new(Telemetry::open(&path, Settings::default(), None).unwrap());
        assert_eq!(
            telemetry
                .site("a")
                .unwrap()
                .latest
                .unwrap()
                .host(Metric::HostLoad1),
            Some(7.0)
        );
        let replay = batch(&[(5, true), (7, false)], vec![]);
        assert_eq!(
            telemetry.ingest("a", replay.clone()).await.unwrap().through,
            7
        );
        assert_eq!(kinds(&telemetry, "a").len(), 4);
        // A wiped agent starts a new epoch: said so, and its records are taken.
        let fresh = Batch {
            epoch: 6,
            ..batch(&[(1, true)], vec![])
        };
        let cursor = telemetry.ingest("a", fresh.clone()).await.unwrap();
        assert_eq!((cursor.epoch, cursor.through), (6, 1));
        let all = kinds(&telemetry, "a");
        assert_eq!(all[4..], [EventKind::Deployed, EventKind::TelemetryReset]);
    }

    #[tokio::test]
    async fn retention_deletes_what_is_too_old_or_too_much() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Arc::new(
            Telemetry::open(&dir.path().join("t.sled"), Settings::default(), None).unwrap(),
        );
        let mut old = batch(&[(1, true), (2, false), (3, false), (4, false)], vec![]);
        old.records[0].at_ms = 1_000;
        old.records[1].at_ms = 1_000;
        telemetry.ingest("a", old.clone()).await.unwrap();
        let removed = telemetry
            .store
            .sweep(continuum_shared::unix_millis() - 60_000, 1)
            .unwrap();
        // The old event and sample go by age, and of the two recent sample sets only
        // the newest stays by count.
        assert_eq!(removed, 3);
        assert!(telemetry.events(None, 10, |_| true).is_empty());
        let left = telemetry.history("a", 0, 10);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].seq, 4);
    }
}
