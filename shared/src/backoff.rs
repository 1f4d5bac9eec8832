//! Jittered exponential backoff, so that ten thousand agents that lose the control plane
//! at the same moment do not all come back at the same moment.
//!
//! The ceiling doubles with each failed attempt up to a cap; the delay is drawn
//! uniformly from the upper half of the ceiling ("equal jitter"): never a hot loop, and
//! spread over a window that grows as the outage lasts.

use std::time::Duration;

/// Reconnect delays for one agent.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self::with_rng(base, cap, fastrand::Rng::new())
    }

    /// Same, with a given random source (tests seed it).
    pub fn with_rng(base: Duration, cap: Duration, rng: fastrand::Rng) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng,
        }
    }

    /// The ceiling for the next delay: `base * 2^attempt`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros() as u64;
        half + Duration::from_micros(self.rng.u64(0..=spread))
    }

    /// Forgets past failures, after a connection that held.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn delays_grow_stay_in_the_upper_half_and_stop_at_the_cap() {
        let mut backoff = Backoff::with_rng(BASE, CAP, fastrand::Rng::with_seed(7));
        for attempt in 0..20u32 {
            let ceiling = (BASE * 2u32.saturating_pow(attempt)).min(CAP);
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "attempt {attempt}: {delay:?} vs {ceiling:?}"
            );
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert!(backoff.next_delay() <= BASE);
    }

    #[test]
    fn agents_failing_together_spread_out() {
        // 1000 agents at their fifth attempt: the delays cover the window, not one instant.
        let delays: Vec<Duration> = (0..1000)
            .map(|seed| {
                let mut b = Backoff::with_rng(BASE, CAP, fastrand::Rng::with_seed(seed));
                (0..4).for_each(|_| {
                    b.next_delay();
                });
                b.next_delay()
            })
            .collect();
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        let ceiling = BASE * 16;
        assert!(min >= ceiling / 2 && max <= ceiling);
        assert!(
            max - min > ceiling / 3,
            "spread {:?}..{:?} too narrow",
            min,
            max
        );
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 900,
            "only {} distinct delays",
            distinct.len()
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::with_rng(BASE, CAP, fastrand::Rng::with_seed(1));
        for _ in 0..200 {
            assert!(backoff.next_delay() <= CAP);
        }
    }
}
