use continuum_shared::telemetry::{Event, EventKind, Metric, Sample};

use super::*;

fn sample() -> RecordBody {
    RecordBody::Samples(vec![Sample {
        metric: Metric::HostLoad1,
        service: None,
        value: 0.5,
    }])
}

fn event(message: &str) -> RecordBody {
    RecordBody::Event(Event {
        kind: EventKind::Deployed,
        service: Some("web".into()),
        release: Some("1.0".into()),
        message: message.into(),
    })
}

fn seqs(batch: &Batch) -> Vec<u64> {
    batch.records.iter().map(|r| r.seq).collect()
}

/// The cost of one stored record, measured rather than assumed.
fn cost_of(body: RecordBody) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), u64::MAX).unwrap();
    outbox.push(0, body).unwrap();
    outbox.depth().bytes
}

/// The cost of one stored drop range with small numbers.
fn range_cost() -> u64 {
    let range = Dropped {
        first: 1,
        last: 9,
        samples: 1,
        events: 1,
    };
    entry_cost(&encode_value(&range).unwrap())
}

#[test]
fn records_come_out_in_sequence_order_and_go_only_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(outbox.push(1, sample()).unwrap(), 1);
    assert_eq!(outbox.push(2, event("a")).unwrap(), 2);
    assert_eq!(outbox.push(3, sample()).unwrap(), 3);
    let batch = outbox.batch().unwrap().unwrap();
    assert_eq!(seqs(&batch), [1, 2, 3]);
    assert_eq!(batch.check(), Ok(()));
    outbox.unsent();
    assert_eq!(seqs(&outbox.batch().unwrap().unwrap()), [1, 2, 3]);
    outbox.ack(batch.epoch, 2).unwrap();
    assert_eq!(seqs(&outbox.batch().unwrap().unwrap()), [3]);
    outbox.ack(batch.epoch.wrapping_add(1), 3).unwrap();
    assert_eq!(
        seqs(&outbox.batch().unwrap().unwrap()),
        [3],
        "an ack for another epoch deletes nothing"
    );
    outbox.ack(batch.epoch, 3).unwrap();
    assert!(outbox.batch().unwrap().is_none());
    assert_eq!(outbox.depth().bytes, 0);
}

#[test]
fn the_outbox_survives_a_restart_with_its_epoch_and_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = {
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        outbox.push(1, event("before")).unwrap();
        outbox.push(2, sample()).unwrap();
        let epoch = outbox.epoch();
        outbox.ack(epoch, 2).unwrap();
        outbox.push(3, event("kept")).unwrap();
        epoch
    };
    let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(outbox.epoch(), epoch);
    let batch = outbox.batch().unwrap().unwrap();
    assert_eq!(seqs(&batch), [3]);
    assert_eq!(
        outbox.push(4, sample()).unwrap(),
        4,
        "numbers never repeat, even after everything was acknowledged"
    );
    let other = tempfile::tempdir().unwrap();
    assert_ne!(Outbox::open(other.path(), 1).unwrap().epoch(), epoch);
}

#[test]
fn when_full_the_oldest_samples_go_first_and_each_drop_is_reported_exactly() {
    let per_sample = cost_of(sample());
    let per_event = cost_of(event("e"));
    let dir = tempfile::tempdir().unwrap();
    // Room for two events, three samples and two drop ranges.
    let limit = 2 * per_event + 3 * per_sample + 2 * range_cost();
    let outbox = Outbox::open(dir.path(), limit).unwrap();
    // seq: 1 s, 2 s, 3 e, 4 s, 5 s, 6 e, 7 s, 8 s
    for body in [
        sample(),
        sample(),
        event("e"),
        sample(),
        sample(),
        event("e"),
        sample(),
        sample(),
    ] {
        outbox.push(0, body).unwrap();
    }
    assert!(outbox.depth().bytes <= limit);
    let batch = outbox.batch().unwrap().unwrap();
    let kept = seqs(&batch);
    assert!(
        kept.contains(&3) && kept.contains(&6),
        "events kept: {kept:?}"
    );
    assert!(kept.contains(&8), "the newest sample is kept: {kept:?}");
    // Everything missing is covered by exactly one range, with exact counts.
    let mut covered = Vec::new();
    let (mut samples, mut events) = (0, 0);
    for range in &batch.dropped {
        covered.extend(range.first..=range.last);
        samples += range.samples;
        events += range.events;
    }
    let mut all: Vec<u64> = kept
        .iter()
        .copied()
        .chain(covered.iter().copied())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=8).collect::<Vec<_>>(), "{batch:?}");
    assert_eq!(events, 0);
    assert_eq!(samples as usize, covered.len());
    assert_eq!(
        batch.dropped.first().map(|r| (r.first, r.last)),
        Some((1, 2)),
        "the two oldest samples went first, as one range"
    );
    assert_eq!(batch.check(), Ok(()));
}

#[test]
fn events_go_only_when_no_samples_are_left() {
    let per_event = cost_of(event("e"));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), 2 * per_event + range_cost()).unwrap();
    outbox.push(0, sample()).unwrap(); // 1
    for _ in 0..4 {
        outbox.push(0, event("e")).unwrap(); // 2..=5
    }
    let batch = outbox.batch().unwrap().unwrap();
    assert_eq!(seqs(&batch), [4, 5]);
    assert_eq!(
        batch.dropped,
        [Dropped {
            first: 1,
            last: 3,
            samples: 1,
            events: 2
        }]
    );
    outbox.ack(batch.epoch, 5).unwrap();
    assert!(
        outbox.batch().unwrap().is_none(),
        "acked ranges are not resent"
    );
}

#[test]
fn records_in_flight_are_not_dropped() {
    let per_sample = cost_of(sample());
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), 2 * per_sample + range_cost()).unwrap();
    outbox.push(0, sample()).unwrap();
    outbox.push(0, sample()).unwrap();
    let batch = outbox.batch().unwrap().unwrap();
    assert_eq!(seqs(&batch), [1, 2]);
    outbox.push(0, sample()).unwrap(); // over the limit: 3 is the only candidate
    outbox.ack(batch.epoch, 2).unwrap();
    let next = outbox.batch().unwrap().unwrap();
    assert!(next.records.is_empty());
    assert_eq!((next.dropped[0].first, next.dropped[0].last), (3, 3));
}
