//! The telemetry outbox: numbered records kept in sled until the control plane has
//! acknowledged them, so telemetry survives agent restarts and outages of any length.
//!
//! It is bounded in bytes. When a new record would exceed the bound, the oldest sample
//! records go first; events go only when no samples are left. Every dropped sequence
//! number is remembered in a range with exact counts and sent with the next batch, so
//! the control plane can tell reported loss from unexplained gaps.

use std::path::Path;
use std::sync::Mutex;

use continuum_shared::framing::{decode_payload, encode_value};
use continuum_shared::telemetry::{
    BATCH_TARGET_BYTES, Batch, Dropped, MAX_DROPPED_PER_BATCH, MAX_RECORDS_PER_BATCH, Record,
    RecordBody,
};

use crate::error::AgentError;

/// The outbox's file under the state directory.
pub const FILE: &str = "telemetry.sled";
/// sled's page cache for the outbox: records pass through it once, so a small one does.
const CACHE_BYTES: u64 = 256 << 10;
/// Largest stored record the outbox decodes.
const RECORD_LIMIT: usize = 256 * 1024;
/// Bytes each stored entry costs beside its value (key and bookkeeping).
const ENTRY_OVERHEAD: u64 = 16;

/// The durable queue of one agent's telemetry.
pub struct Outbox {
    db: sled::Db,
    samples: sled::Tree,
    events: sled::Tree,
    dropped: sled::Tree,
    meta: sled::Tree,
    epoch: u64,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    bytes: u64,
    /// Records up to here are in a batch on its way; they are not dropped meanwhile.
    in_flight: u64,
}

/// What the outbox holds, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Sample records waiting.
    pub samples: usize,
    /// Events waiting.
    pub events: usize,
    /// Dropped ranges not yet reported.
    pub dropped: usize,
    /// Bytes used, counted against the limit.
    pub bytes: u64,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn entry_cost(value: &[u8]) -> u64 {
    value.len() as u64 + ENTRY_OVERHEAD
}

impl Outbox {
    /// Opens (or creates, with a fresh epoch) the outbox under `state_dir`, holding at
    /// most `limit` bytes.
    pub fn open(state_dir: &Path, limit: u64) -> Result<Outbox, AgentError> {
        let path = state_dir.join(FILE);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            // Flushed after every push by the agent itself; no flusher thread needed.
            .flush_every_ms(None)
            .open()
            .map_err(|e| store_error(&path, e))?;
        let open = |name: &str| db.open_tree(name).map_err(|e| store_error(&path, e));
        let (samples, events, dropped, meta) = (
            open("samples")?,
            open("events")?,
            open("dropped")?,
            open("meta")?,
        );
        let read_u64 = |name: &str| -> Result<Option<u64>, AgentError> {
            Ok(meta
                .get(name)
                .map_err(|e| store_error(&path, e))?
                .map(|v| seq_of(&v)))
        };
        let epoch = match read_u64("epoch")? {
            Some(epoch) => epoch,
            None => {
                let epoch = fresh_epoch();
                meta.insert("epoch", &key(epoch))
                    .map_err(|e| store_error(&path, e))?;
                epoch
            }
        };
        let mut state = State {
            next_seq: read_u64("next_seq")?.unwrap_or(1).max(1),
            ..State::default()
        };
        for tree in [&samples, &events, &dropped] {
            for entry in tree.iter() {
                let (k, v) = entry.map_err(|e| store_error(&path, e))?;
                state.bytes += entry_cost(&v);
                // A dropped range's key is its first seq; its end is inside the value.
                let last = decode_payload::<Dropped>(&v, RECORD_LIMIT)
                    .map(|d| d.last)
                    .unwrap_or_else(|_| seq_of(&k));
                state.next_seq = state.next_seq.max(last.max(seq_of(&k)) + 1);
            }
        }
        Ok(Outbox {
            db,
            samples,
            events,
            dropped,
            meta,
            epoch,
            limit,
            state: Mutex::new(state),
        })
    }

    /// The outbox's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends a record made now and returns its sequence number, dropping the oldest
    /// records if the outbox is over its limit.
    pub fn push(&self, at_ms: i64, body: RecordBody) -> Result<u64, AgentError> {
        let mut state = self.lock();
        let seq = state.next_seq;
        let record = Record { seq, at_ms, body };
        let value = encode_value(&record).map_err(|e| AgentError::State(e.to_string()))?;
        let tree = if record.is_event() {
            &self.events
        } else {
            &self.samples
        };
        tree.insert(key(seq), value.as_slice()).map_err(db_error)?;
        state.next_seq = seq + 1;
        self.meta
            .insert("next_seq", &key(state.next_seq))
            .map_err(db_error)?;
        state.bytes += entry_cost(&value);
        while state.bytes > self.limit {
            if !self.drop_oldest(&mut state)? {
                break;
            }
        }
        Ok(seq)
    }

    /// Makes what was pushed so far durable on disk. Synchronous on purpose: a flush of a
    /// few records takes about a millisecond, and sled's asynchronous flush would start
    /// a pool of IO threads that an idle agent does not need.
    pub fn flush(&self) -> Result<(), AgentError> {
        self.db.flush().map_err(db_error)?;
        Ok(())
    }

    /// Drops the oldest sample record, or the oldest event when no samples are left,
    /// never one in flight. Returns false when nothing could be dropped.
    fn drop_oldest(&self, state: &mut State) -> Result<bool, AgentError> {
        let after = key(state.in_flight.saturating_add(1));
        let mut victim = None;
        for (tree, is_event) in [(&self.samples, false), (&self.events, true)] {
            if let Some((k, v)) = tree.range(after..).next().transpose().map_err(db_error)? {
                victim = Some((tree, is_event, seq_of(&k), entry_cost(&v)));
                break;
            }
        }
        let Some((tree, is_event, seq, cost)) = victim else {
            return Ok(false);
        };
        tree.remove(key(seq)).map_err(db_error)?;
        state.bytes -= cost.min(state.bytes);
        let (samples, events) = if is_event { (0, 1) } else { (1, 0) };
        // Extend the newest range when this seq directly follows it; else start one.
        let last = self.dropped.last().map_err(db_error)?;
        let mut range = match last {
            Some((k, v)) => match decode_payload::<Dropped>(&v, RECORD_LIMIT) {
                Ok(range) if range.last + 1 == seq => {
                    state.bytes -= entry_cost(&v).min(state.bytes);
                    self.dropped.remove(k).map_err(db_error)?;
                    range
                }
                _ => Dropped {
                    first: seq,
                    last: seq,
                    samples: 0,
                    events: 0,
                },
            },
            None => Dropped {
                first: seq,
                last: seq,
                samples: 0,
                events: 0,
            },
        };
        range.last = seq;
        range.samples += samples;
        range.events += events;
        let value = encode_value(&range).map_err(|e| AgentError::State(e.to_string()))?;
        self.dropped
            .insert(key(range.first), value.as_slice())
            .map_err(db_error)?;
        state.bytes += entry_cost(&value);
        Ok(true)
    }

    /// The next batch to send: the oldest records in sequence order up to the batch
    /// size target, with every unreported dropped range. `None` when there is nothing.
    /// The records in it are not dropped until [`Outbox::ack`] or [`Outbox::unsent`].
    pub fn batch(&self) -> Result<Option<Batch>, AgentError> {
        let mut state = self.lock();
        let mut samples = self.samples.iter().peekable();
        let mut events = self.events.iter().peekable();
        let mut records = Vec::new();
        let mut size = 0usize;
        while records.len() < MAX_RECORDS_PER_BATCH && size < BATCH_TARGET_BYTES {
            let next_sample = peek_seq(&mut samples);
            let next_event = peek_seq(&mut events);
            let source = match (next_sample, next_event) {
                (Some(s), Some(e)) if s < e => &mut samples,
                (Some(_), None) => &mut samples,
                (_, Some(_)) => &mut events,
                (None, None) => break,
            };
            let Some(entry) = source.next() else { break };
            let (k, v) = entry.map_err(db_error)?;
            match decode_payload::<Record>(&v, RECORD_LIMIT) {
                Ok(record) => {
                    size += v.len();
                    records.push(record);
                }
                // A record this build cannot read is reported as dropped, not resent
                // forever.
                Err(_) => self.forget_unreadable(seq_of(&k))?,
            }
        }
        let mut dropped = Vec::new();
        for entry in self.dropped.iter().take(MAX_DROPPED_PER_BATCH + 1) {
            let (_, v) = entry.map_err(db_error)?;
            if let Ok(range) = decode_payload::<Dropped>(&v, RECORD_LIMIT) {
                dropped.push(range);
            }
        }
        // Ranges that do not fit go with a later batch; records after them wait too, so
        // the control plane never sees a hole whose drop report has not come yet.
        if dropped.len() > MAX_DROPPED_PER_BATCH
            && let Some(next) = dropped.pop()
        {
            records.retain(|r| r.seq < next.first);
        }
        if records.is_empty() && dropped.is_empty() {
            return Ok(None);
        }
        state.in_flight = records.last().map_or(0, |r| r.seq);
        Ok(Some(Batch {
            epoch: self.epoch,
            records,
            dropped,
        }))
    }

    fn forget_unreadable(&self, seq: u64) -> Result<(), AgentError> {
        self.samples.remove(key(seq)).map_err(db_error)?;
        self.events.remove(key(seq)).map_err(db_error)?;
        Ok(())
    }

    /// The batch in flight was not acknowledged (the link broke): its records may be
    /// dropped again if space runs out.
    pub fn unsent(&self) {
        self.lock().in_flight = 0;
    }

    /// Deletes everything up to and including `through`, which the control plane has
    /// stored (or knows was dropped).
    pub fn ack(&self, epoch: u64, through: u64) -> Result<(), AgentError> {
        if epoch != self.epoch {
            return Ok(());
        }
        let mut state = self.lock();
        for tree in [&self.samples, &self.events] {
            for entry in tree.range(..=key(through)) {
                let (k, v) = entry.map_err(db_error)?;
                tree.remove(k).map_err(db_error)?;
                state.bytes -= entry_cost(&v).min(state.bytes);
            }
        }
        for entry in self.dropped.iter() {
            let (k, v) = entry.map_err(db_error)?;
            match decode_payload::<Dropped>(&v, RECORD_LIMIT) {
                Ok(range) if range.last > through => break,
                _ => {
                    self.dropped.remove(k).map_err(db_error)?;
                    state.bytes -= entry_cost(&v).min(state.bytes);
                }
            }
        }
        state.in_flight = 0;
        Ok(())
    }

    /// What the outbox holds now.
    pub fn depth(&self) -> Depth {
        let state = self.lock();
        Depth {
            samples: self.samples.len(),
            events: self.events.len(),
            dropped: self.dropped.len(),
            bytes: state.bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn peek_seq(iter: &mut std::iter::Peekable<sled::Iter>) -> Option<u64> {
    match iter.peek() {
        Some(Ok((k, _))) => Some(seq_of(k)),
        Some(Err(_)) => Some(0),
        None => None,
    }
}

/// A random epoch, so a wiped outbox never reuses the sequence numbers of the old one.
fn fresh_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Unreachable on Linux; time still differs between two creations.
        return continuum_shared::unix_now() as u64;
    }
    u64::from_be_bytes(bytes).max(1)
}

fn store_error(path: &Path, e: sled::Error) -> AgentError {
    AgentError::State(format!("telemetry outbox {}: {e}", path.display()))
}

fn db_error(e: sled::Error) -> AgentError {
    AgentError::State(format!("telemetry outbox: {e}"))
}

#[cfg(test)]
mod tests;
