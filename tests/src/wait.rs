//! Bounded polling: every wait has a deadline and says what it was waiting for.

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`.
pub fn until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
