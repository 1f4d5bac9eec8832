//! Telemetry at rest: its own sled database beside the state store (`telemetry.sled`),
//! so a busy fleet's ingestion never contends with the state that matters for trust.
//!
//! One tree, with the kind of entry as a key prefix:
//! - `c` site → [`Cursor`] (JSON);
//! - `e` id → [`StoredEvent`] (wire codec): the fleet's events in arrival order;
//! - `s` site, 0, time, seq, epoch → [`SampleSet`] (wire codec): a site's history in
//!   the order it was sampled;
//! - `d` site, 0, epoch, kind, number → event id: which events of a batch in progress
//!   already have an id.
//!
//! A batch is stored without sled's batches or transactions (their lock is
//! process-wide, and under load it deadlocked against the state store's readers), yet
//! exactly once: every write is idempotent (sample keys are deterministic; an event's
//! id is recorded under `d` before the event is written, and reused if the batch comes
//! again), and the cursor that marks the batch seen is written last. A crash part way
//! leaves writes that the retried batch repeats, never duplicates.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use continuum_shared::framing::{decode_payload, encode_value};
use continuum_shared::telemetry::{Batch, EventKind, Metric, RecordBody, Sample};
use serde::{Deserialize, Serialize};

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
    tree: sled::Tree,
    /// One batch is planned and written at a time, so two connections of one site
    /// cannot both store the same records.
    writer: std::sync::Mutex<()>,
    /// The id the next new event gets.
    next_event: AtomicU64,
    /// Batches written so far, and how many of them the last flush covered.
    written: AtomicU64,
    flushed: AtomicU64,
    /// Held by the one flush in progress.
    flushing: tokio::sync::Mutex<()>,
}

const CURSOR: u8 = b'c';
const EVENT: u8 = b'e';
const SAMPLES: u8 = b's';
const MARK: u8 = b'd';

fn sample_key(site: &str, at_ms: i64, seq: u64, epoch: u64) -> Vec<u8> {
    let mut key = samples_prefix(site);
    // Offset so that times before 1970 (a badly set clock) still sort first.
    key.extend_from_slice(&(at_ms as u64 ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

fn mark_key(site: &str, epoch: u64, tag: u8, number: u64) -> Vec<u8> {
    let mut key = vec![MARK];
    key.extend_from_slice(site.as_bytes());
    key.push(0);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.push(tag);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

fn decode_id(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn cursor_key(site: &str) -> Vec<u8> {
    let mut key = vec![CURSOR];
    key.extend_from_slice(site.as_bytes());
    key
}

fn event_key(id: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn samples_prefix(site: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(site.len() + 10);
    key.push(SAMPLES);
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
        let tree = db.open_tree("telemetry")?;
        let last_event = tree
            .scan_prefix([EVENT])
            .keys()
            .next_back()
            .transpose()?
            .map_or(0, |key| decode_id(&key[1..]));
        Ok(TelemetryStore {
            tree,
            writer: std::sync::Mutex::new(()),
            next_event: AtomicU64::new(last_event + 1),
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            db,
        })
    }

    /// Every site with a cursor.
    pub fn sites(&self) -> Vec<String> {
        self.tree
            .scan_prefix([CURSOR])
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| String::from_utf8(k[1..].to_vec()).ok())
            .collect()
    }

    /// Stores what is new in `batch` and then the site's cursor, so a batch that
    /// arrives twice (a retry, a crash part way, two connections of one site
    /// overlapping) is stored once. Not durable until [`TelemetryStore::flush`].
    pub fn ingest(&self, site: &str, batch: &Batch, now_ms: i64) -> Result<Outcome, StoreFailure> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = self
            .tree
            .get(cursor_key(site))?
            .and_then(|v| serde_json::from_slice::<Cursor>(&v).ok());
        let plan = plan(cursor, batch);
        let mut outcome = Outcome {
            cursor: plan.cursor,
            ..Outcome::default()
        };
        let mut marks = Vec::new();
        for &index in &plan.fresh {
            let record = &batch.records[index];
            match &record.body {
                RecordBody::Samples(list) => outcome.samples.push(SampleSet {
                    seq: record.seq,
                    at_ms: record.at_ms,
                    samples: list.clone(),
                }),
                RecordBody::Event(event) => {
                    marks.push(mark_key(site, batch.epoch, 0, record.seq));
                    outcome.events.push(StoredEvent::from_site(
                        site,
                        record.seq,
                        record.at_ms,
                        event,
                    ));
                }
            }
        }
        for (tag, number, event) in accounting_events(site, &plan, now_ms, &mut outcome) {
            marks.push(mark_key(site, batch.epoch, tag, number));
            outcome.events.push(event);
        }
        for set in &outcome.samples {
            let key = sample_key(site, set.at_ms, set.seq, batch.epoch);
            self.tree.insert(key, encode_value(set).map_err(failure)?)?;
        }
        for (event, mark) in outcome.events.iter_mut().zip(&marks) {
            event.id = match self.tree.get(mark)? {
                Some(id) => decode_id(&id),
                None => {
                    let id = self.next_event.fetch_add(1, Ordering::Relaxed);
                    self.tree.insert(mark, &id.to_be_bytes())?;
                    id
                }
            };
            self.tree
                .insert(event_key(event.id), encode_value(&*event).map_err(failure)?)?;
        }
        let cursor = serde_json::to_vec(&plan.cursor).map_err(failure)?;
        self.tree.insert(cursor_key(site), cursor)?;
        self.written.fetch_add(1, Ordering::Release);
        // The cursor now skips this batch; its marks are no longer needed.
        for mark in &marks {
            self.tree.remove(mark)?;
        }
        Ok(outcome)
    }

    /// Makes everything written so far durable. One flush runs at a time and covers
    /// every write made before it began (group commit): a waiter whose writes a flush
    /// already covered returns at once. (Many concurrent sled flushes exhaust the
    /// threads that would write the log, and stall.)
    pub async fn flush(&self) -> Result<(), StoreFailure> {
        let mine = self.written.load(Ordering::Acquire);
        let _turn = self.flushing.lock().await;
        if self.flushed.load(Ordering::Acquire) >= mine {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        self.db.flush_async().await?;
        self.flushed.fetch_max(target, Ordering::Release);
        Ok(())
    }

    /// The newest sample set of `site`.
    pub fn latest_samples(&self, site: &str) -> Option<SampleSet> {
        let (_, value) = self.tree.scan_prefix(samples_prefix(site)).last()?.ok()?;
        decode_payload(&value, VALUE_LIMIT).ok()
    }

    /// `site`'s sample sets taken at or after `since_ms`, oldest first, at most `limit`.
    pub fn samples_since(&self, site: &str, since_ms: i64, limit: usize) -> Vec<SampleSet> {
        let mut sets: Vec<SampleSet> = self
            .tree
            .scan_prefix(samples_prefix(site))
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
        self.tree
            .range(event_key(start)..=event_key(u64::MAX))
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
        self.tree
            .range(event_key(after.saturating_add(1))..=event_key(u64::MAX))
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
        for entry in self.tree.scan_prefix([EVENT]) {
            let (key, value) = entry?;
            match decode_payload::<StoredEvent>(&value, VALUE_LIMIT) {
                Ok(event) if event.at_ms >= cutoff_ms => break,
                _ => {
                    self.tree.remove(key)?;
                    removed += 1;
                }
            }
        }
        for site in self.sites() {
            let prefix = samples_prefix(&site);
            let count = self.tree.scan_prefix(&prefix).keys().count();
            let mut excess = count.saturating_sub(max_sets_per_site);
            for entry in self.tree.scan_prefix(&prefix) {
                let (key, value) = entry?;
                let old = decode_payload::<SampleSet>(&value, VALUE_LIMIT)
                    .map_or(true, |set| set.at_ms < cutoff_ms);
                if excess == 0 && !old {
                    break;
                }
                self.tree.remove(key)?;
                excess = excess.saturating_sub(1);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn failure(e: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(e.to_string())
}

/// The events the control plane records about a batch's drops, loss and reset, each
/// with its mark (kind tag and number, unique within the batch's epoch), with the
/// counts added to `outcome`.
fn accounting_events(
    site: &str,
    plan: &Plan,
    now_ms: i64,
    outcome: &mut Outcome,
) -> Vec<(u8, u64, StoredEvent)> {
    let mut events = Vec::new();
    if let Some(old) = plan.reset {
        let message = format!(
            "the agent's telemetry outbox was replaced (epoch {:x} after {:x}, which had delivered through {}); anything it had not delivered is lost",
            plan.cursor.epoch, old.epoch, old.through
        );
        let event = StoredEvent::about(site, now_ms, EventKind::TelemetryReset, message);
        events.push((3, 0, event));
    }
    for range in &plan.dropped {
        outcome.dropped_samples += range.samples;
        outcome.dropped_events += range.events;
        let message = format!(
            "the agent's outbox was full and dropped records {}..={} unsent ({} sample records, {} events)",
            range.first, range.last, range.samples, range.events
        );
        let event = StoredEvent::about(site, now_ms, EventKind::TelemetryDropped, message);
        events.push((1, range.first, event));
    }
    for &(first, last) in &plan.lost {
        outcome.lost += last - first + 1;
        let message =
            format!("records {first}..={last} never arrived and no drop report explains them");
        let event = StoredEvent::about(site, now_ms, EventKind::TelemetryLost, message);
        events.push((2, first, event));
    }
    events
}
