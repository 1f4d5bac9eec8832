//! Telemetry at rest: its own sled database beside the state store (`telemetry.sled`),
//! so a busy fleet's ingestion never contends with the state that matters for trust.
//!
//! - `cursors`: site → [`Cursor`] (JSON);
//! - `samples`: site, 0, ingest id → [`SampleSet`] (wire codec), a site's history in
//!   arrival order;
//! - `events`: ingest id → [`StoredEvent`] (wire codec), the fleet's events in arrival
//!   order.
//!
//! A batch is stored in one transaction over all three, so its records and the cursor
//! that marks them seen are durable together: a batch retried after a crash is never
//! stored twice.

use std::path::Path;

use continuum_shared::framing::{decode_payload, encode_value};
use continuum_shared::telemetry::{Batch, EventKind, Metric, RecordBody, Sample};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::cursor::{Cursor, Plan, plan};
use super::event::StoredEvent;

/// Largest stored value decoded.
const VALUE_LIMIT: usize = 1 << 20;
/// sled's page cache for telemetry.
const CACHE_BYTES: u64 = 64 << 20;

/// Samples a site took together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSet {
    /// The site's sequence number for them.
    pub seq: u64,
    /// When they were taken, Unix milliseconds.
    pub at_ms: i64,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl SampleSet {
    /// The value of one host metric, if present.
    pub fn host(&self, metric: Metric) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.metric == metric && s.service.is_none())
            .map(|s| s.value)
    }
}

/// What storing one batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The site's cursor now (its `through` is what the agent may delete).
    pub cursor: Cursor,
    /// New sample sets stored.
    pub samples: Vec<SampleSet>,
    /// New events stored, with their ids (the site's, then any the control plane
    /// recorded about drops, loss or a reset).
    pub events: Vec<StoredEvent>,
    /// Sample records the agent reported dropped, newly accounted for.
    pub dropped_samples: u64,
    /// Events the agent reported dropped, newly accounted for.
    pub dropped_events: u64,
    /// Records missing without a drop report.
    pub lost: u64,
}

/// The telemetry database.
pub struct TelemetryStore {
    db: sled::Db,
    cursors: sled::Tree,
    samples: sled::Tree,
    events: sled::Tree,
}

fn site_prefix(site: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(site.len() + 9);
    key.extend_from_slice(site.as_bytes());
    key.push(0);
    key
}

/// A storage failure, said plainly.
#[derive(Debug, thiserror::Error)]
#[error("telemetry store: {0}")]
pub struct StoreFailure(pub String);

impl From<sled::Error> for StoreFailure {
    fn from(e: sled::Error) -> Self {
        StoreFailure(e.to_string())
    }
}

impl TelemetryStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<TelemetryStore, StoreFailure> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| StoreFailure(format!("{}: {e}", path.display())))?;
        Ok(TelemetryStore {
            cursors: db.open_tree("cursors")?,
            samples: db.open_tree("samples")?,
            events: db.open_tree("events")?,
            db,
        })
    }

    /// Every site with a cursor.
    pub fn sites(&self) -> Vec<String> {
        self.cursors
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| String::from_utf8(k.to_vec()).ok())
            .collect()
    }

    /// Stores what is new in `batch` and the site's cursor in one transaction, so a
    /// batch that arrives twice (a retry, two connections of one site overlapping) is
    /// stored once. Not durable until [`TelemetryStore::flush`].
    pub fn ingest(&self, site: &str, batch: &Batch, now_ms: i64) -> Result<Outcome, StoreFailure> {
        let prefix = site_prefix(site);
        let result =
            (&self.cursors, &self.samples, &self.events).transaction(
                |(cursors, samples, events)| {
                    let cursor = cursors
                        .get(site.as_bytes())?
                        .and_then(|v| serde_json::from_slice::<Cursor>(&v).ok());
                    let plan = plan(cursor, batch);
                    let mut outcome = Outcome {
                        cursor: plan.cursor,
                        ..Outcome::default()
                    };
                    for &index in &plan.fresh {
                        let record = &batch.records[index];
                        match &record.body {
                            RecordBody::Samples(list) => outcome.samples.push(SampleSet {
                                seq: record.seq,
                                at_ms: record.at_ms,
                                samples: list.clone(),
                            }),
                            RecordBody::Event(event) => outcome.events.push(
                                StoredEvent::from_site(site, record.seq, record.at_ms, event),
                            ),
                        }
                    }
                    let accounting = accounting_events(site, &plan, now_ms, &mut outcome);
                    outcome.events.extend(accounting);
                    for set in &outcome.samples {
                        let mut key = prefix.clone();
                        key.extend_from_slice(&cursors.generate_id()?.to_be_bytes());
                        samples.insert(key, encode_value(set).map_err(abort)?)?;
                    }
                    for event in &mut outcome.events {
                        event.id = events.generate_id()?;
                        events.insert(
                            &event.id.to_be_bytes(),
                            encode_value(&*event).map_err(abort)?,
                        )?;
                    }
                    let cursor = serde_json::to_vec(&plan.cursor).map_err(abort)?;
                    cursors.insert(site.as_bytes(), cursor)?;
                    Ok(outcome)
                },
            );
        result.map_err(|e| match e {
            TransactionError::Abort(failure) => failure,
            TransactionError::Storage(e) => e.into(),
        })
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreFailure> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// The newest sample set of `site`.
    pub fn latest_samples(&self, site: &str) -> Option<SampleSet> {
        let (_, value) = self.samples.scan_prefix(site_prefix(site)).last()?.ok()?;
        decode_payload(&value, VALUE_LIMIT).ok()
    }

    /// `site`'s sample sets taken at or after `since_ms`, oldest first, at most `limit`.
    pub fn samples_since(&self, site: &str, since_ms: i64, limit: usize) -> Vec<SampleSet> {
        let mut sets: Vec<SampleSet> = self
            .samples
            .scan_prefix(site_prefix(site))
            .rev()
            .filter_map(|entry| entry.ok())
            .filter_map(|(_, v)| decode_payload::<SampleSet>(&v, VALUE_LIMIT).ok())
            .take_while(|set| set.at_ms >= since_ms)
            .take(limit)
            .collect();
        sets.reverse();
        sets
    }

    /// Events newest first, after id `after` (exclusive) when given, that `keep` accepts,
    /// at most `limit`.
    pub fn events(
        &self,
        after: Option<u64>,
        limit: usize,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Vec<StoredEvent> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        self.events
            .range(start.to_be_bytes()..)
            .rev()
            .filter_map(|entry| entry.ok())
            .filter_map(|(_, v)| decode_payload::<StoredEvent>(&v, VALUE_LIMIT).ok())
            .filter(|event| keep(event))
            .take(limit)
            .collect()
    }

    /// Events after id `after` (exclusive), oldest first, that `keep` accepts, at most
    /// `limit`.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Vec<StoredEvent> {
        self.events
            .range(after.saturating_add(1).to_be_bytes()..)
            .filter_map(|entry| entry.ok())
            .filter_map(|(_, v)| decode_payload::<StoredEvent>(&v, VALUE_LIMIT).ok())
            .filter(|event| keep(event))
            .take(limit)
            .collect()
    }

    /// Deletes samples and events older than `cutoff_ms`, and a site's oldest sample
    /// sets beyond `max_sets_per_site`. Returns how many entries went.
    pub fn sweep(&self, cutoff_ms: i64, max_sets_per_site: usize) -> Result<usize, StoreFailure> {
        let mut removed = 0;
        for entry in self.events.iter() {
            let (key, value) = entry?;
            match decode_payload::<StoredEvent>(&value, VALUE_LIMIT) {
                Ok(event) if event.at_ms >= cutoff_ms => break,
                _ => {
                    self.events.remove(key)?;
                    removed += 1;
                }
            }
        }
        for site in self.sites() {
            let prefix = site_prefix(&site);
            let count = self.samples.scan_prefix(&prefix).keys().count();
            let mut excess = count.saturating_sub(max_sets_per_site);
            for entry in self.samples.scan_prefix(&prefix) {
                let (key, value) = entry?;
                let old = decode_payload::<SampleSet>(&value, VALUE_LIMIT)
                    .map_or(true, |set| set.at_ms < cutoff_ms);
                if excess == 0 && !old {
                    break;
                }
                self.samples.remove(key)?;
                excess = excess.saturating_sub(1);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn abort(e: impl std::fmt::Display) -> ConflictableTransactionError<StoreFailure> {
    ConflictableTransactionError::Abort(StoreFailure(e.to_string()))
}

/// The events the control plane records about a batch's drops, loss and reset, with the
/// counts added to `outcome`.
fn accounting_events(
    site: &str,
    plan: &Plan,
    now_ms: i64,
    outcome: &mut Outcome,
) -> Vec<StoredEvent> {
    let mut events = Vec::new();
    if let Some(old) = plan.reset {
        events.push(StoredEvent::about(
            site,
            now_ms,
            EventKind::TelemetryReset,
            format!(
                "the agent's telemetry outbox was replaced (epoch {:x} after {:x}, which had delivered through {}); anything it had not delivered is lost",
                plan.cursor.epoch, old.epoch, old.through
            ),
        ));
    }
    for range in &plan.dropped {
        outcome.dropped_samples += range.samples;
        outcome.dropped_events += range.events;
        events.push(StoredEvent::about(
            site,
            now_ms,
            EventKind::TelemetryDropped,
            format!(
                "the agent's outbox was full and dropped records {}..={} unsent ({} sample records, {} events)",
                range.first, range.last, range.samples, range.events
            ),
        ));
    }
    for &(first, last) in &plan.lost {
        outcome.lost += last - first + 1;
        events.push(StoredEvent::about(
            site,
            now_ms,
            EventKind::TelemetryLost,
            format!("records {first}..={last} never arrived and no drop report explains them"),
        ));
    }
    events
}
