//! De-duplication and loss accounting for one site's telemetry stream, as pure logic.
//!
//! The control plane keeps, per site, the agent's outbox epoch and the highest sequence
//! number accounted for (`through`): stored, or reported dropped, or flagged lost.
//! A batch is walked in sequence order: what is at or below `through` was seen before
//! and is skipped; a hole that no drop report covers is loss, recorded as such and never
//! silently accepted.

use continuum_shared::telemetry::{Batch, Dropped};
use serde::{Deserialize, Serialize};

/// Where a site's telemetry stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The agent outbox's epoch.
    pub epoch: u64,
    /// Everything up to here is accounted for.
    pub through: u64,
}

/// What to do with one batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexes into the batch's records that are new.
    pub fresh: Vec<usize>,
    /// Drop reports for sequence numbers not accounted for before.
    pub dropped: Vec<Dropped>,
    /// Holes no drop report explains: `(first, last)`.
    pub lost: Vec<(u64, u64)>,
    /// The agent's outbox is not the one seen before (it was wiped or replaced); the
    /// old epoch's unsent records are gone. Holds the old cursor.
    pub reset: Option<Cursor>,
    /// The cursor after the batch.
    pub cursor: Cursor,
}

/// Plans what to store of `batch` given the site's `cursor` (none: first contact).
pub fn plan(cursor: Option<Cursor>, batch: &Batch) -> Plan {
    let mut plan = Plan::default();
    let mut at = match cursor {
        Some(c) if c.epoch == batch.epoch => c,
        other => {
            plan.reset = other;
            Cursor {
                epoch: batch.epoch,
                through: 0,
            }
        }
    };
    // Walk records and drop reports together, in sequence order.
    let (mut r, mut d) = (0, 0);
    loop {
        let next_record = batch.records.get(r).map(|rec| rec.seq);
        let next_range = batch.dropped.get(d).map(|range| range.first);
        let take_record = match (next_record, next_range) {
            (None, None) => break,
            (Some(s), Some(f)) => s < f,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_record {
            let seq = batch.records[r].seq;
            if seq > at.through {
                if seq > at.through + 1 {
                    plan.lost.push((at.through + 1, seq - 1));
                }
                plan.fresh.push(r);
                at.through = seq;
            }
            r += 1;
        } else {
            let range = batch.dropped[d];
            if range.last > at.through {
                if range.first > at.through + 1 {
                    plan.lost.push((at.through + 1, range.first - 1));
                }
                plan.dropped.push(range);
                at.through = range.last;
            }
            d += 1;
        }
    }
    plan.cursor = at;
    plan
}

#[cfg(test)]
mod tests {
    use continuum_shared::telemetry::{Record, RecordBody};

    use super::*;

    fn batch(epoch: u64, seqs: &[u64], dropped: &[(u64, u64)]) -> Batch {
        Batch {
            epoch,
            records: seqs
                .iter()
                .map(|&seq| Record {
                    seq,
                    at_ms: 0,
                    body: RecordBody::Samples(vec![]),
                })
                .collect(),
            dropped: dropped
                .iter()
                .map(|&(first, last)| Dropped {
                    first,
                    last,
                    samples: last - first + 1,
                    events: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_first_batch_is_taken_whole() {
        let plan = plan(None, &batch(9, &[1, 2, 3], &[]));
        assert_eq!(plan.fresh, [0, 1, 2]);
        assert_eq!(
            plan.cursor,
            Cursor {
                epoch: 9,
                through: 3
            }
        );
        assert!(plan.lost.is_empty() && plan.reset.is_none());
    }

    #[test]
    fn a_resent_batch_is_skipped_and_an_overlapping_one_keeps_only_the_new_part() {
        let seen = Some(Cursor {
            epoch: 9,
            through: 3,
        });
        let again = plan(seen, &batch(9, &[1, 2, 3], &[]));
        assert!(again.fresh.is_empty());
        assert_eq!(again.cursor.through, 3);
        let overlap = plan(seen, &batch(9, &[2, 3, 4, 5], &[]));
        assert_eq!(overlap.fresh, [2, 3]);
        assert_eq!(overlap.cursor.through, 5);
    }

    #[test]
    fn reported_drops_explain_holes_and_unexplained_holes_are_loss() {
        let seen = Some(Cursor {
            epoch: 9,
            through: 3,
        });
        let explained = plan(seen, &batch(9, &[6, 9], &[(4, 5), (7, 8)]));
        assert_eq!(explained.fresh, [0, 1]);
        assert!(explained.lost.is_empty());
        assert_eq!(explained.dropped.len(), 2);
        assert_eq!(explained.cursor.through, 9);

        let unexplained = plan(seen, &batch(9, &[6, 12], &[(4, 4), (7, 8)]));
        assert_eq!(unexplained.lost, [(5, 5), (9, 11)]);
        assert_eq!(unexplained.cursor.through, 12);
    }

    #[test]
    fn a_drop_report_already_accounted_for_is_not_counted_twice() {
        let seen = Some(Cursor {
            epoch: 9,
            through: 8,
        });
        let plan = plan(seen, &batch(9, &[9], &[(4, 5)]));
        assert!(plan.dropped.is_empty());
        assert_eq!(plan.fresh, [0]);
    }

    #[test]
    fn a_new_epoch_starts_over_and_says_so() {
        let seen = Some(Cursor {
            epoch: 9,
            through: 40,
        });
        let plan = plan(seen, &batch(10, &[1, 2], &[]));
        assert_eq!(plan.reset, seen);
        assert_eq!(plan.fresh, [0, 1]);
        assert_eq!(
            plan.cursor,
            Cursor {
                epoch: 10,
                through: 2
            }
        );
    }
}
