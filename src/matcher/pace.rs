//! How many records a worker claims at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Claim size before a worker has timed a batch.
const FIRST_BATCH: usize = 256;

/// Sizes a worker's claims so that one batch takes about `budget`. A larger batch amortises
/// its commit and writes each index page it shares with other records once; but a batch holds
/// the store's one writer (SQLite) or its keys' locks (PostgreSQL) until it commits, so intake
/// and the other workers wait up to that long. The time per record is not a constant to
/// configure: it grows with the store and with how many candidates records meet.
#[derive(Debug)]
pub struct BatchSizer {
    budget: Duration,
    max: usize,
    /// Smoothed nanoseconds per record of the batches so far; 0 before the first.
    per_record_ns: AtomicU64,
}

impl BatchSizer {
    pub fn new(budget: Duration, max: usize) -> BatchSizer {
        BatchSizer { budget, max: max.max(1), per_record_ns: AtomicU64::new(0) }
    }

    /// Records to claim next: as many as the budget holds at the recent pace, 1 to `max`.
    pub fn next(&self) -> usize {
        self.next_within(self.budget)
    }

    /// Records to claim next under a tighter `budget` than the worker's own (never a looser
    /// one): while intake waits for the same writer, a batch must not keep it waiting long.
    pub fn next_within(&self, budget: Duration) -> usize {
        let budget = budget.min(self.budget);
        match self.per_record_ns.load(Ordering::Relaxed) {
            // untimed yet: the first batch's size, in proportion to the budget
            0 => ((FIRST_BATCH as u128 * budget.as_nanos() / self.budget.as_nanos().max(1)) as usize).clamp(1, self.max),
            per_record => ((budget.as_nanos() / u128::from(per_record)) as usize).clamp(1, self.max),
        }
    }

    /// A batch of `records` took `took`. Smoothed over about four batches, so one slow batch
    /// (a checkpoint, a retry) does not shrink the next one to nothing.
    pub fn observe(&self, records: usize, took: Duration) {
        if records == 0 {
            return;
        }
        let sample = (took.as_nanos() / records as u128).clamp(1, u128::from(u64::MAX)) as u64;
        let _ = self.per_record_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { sample } else { old - old / 4 + sample / 4 })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_tighter_budget_claims_fewer_records_and_a_looser_one_no_more() {
        let sizer = BatchSizer::new(250 * MS, 4096);
        assert_eq!(sizer.next_within(25 * MS), FIRST_BATCH / 10);
        sizer.observe(1000, 100 * MS); // 100 µs a record
        assert_eq!(sizer.next(), 2500);
        assert_eq!(sizer.next_within(20 * MS), 200);
        assert_eq!(sizer.next_within(Duration::from_secs(5)), 2500);
    }

    #[test]
    fn starts_at_the_first_batch_within_the_maximum() {
        assert_eq!(BatchSizer::new(100 * MS, 4096).next(), FIRST_BATCH);
        assert_eq!(BatchSizer::new(100 * MS, 16).next(), 16);
    }

    #[test]
    fn sizes_batches_to_the_budget_at_the_measured_pace() {
        let sizer = BatchSizer::new(100 * MS, 100_000);
        sizer.observe(200, 20 * MS); // 100 µs per record
        assert_eq!(sizer.next(), 1000);
    }

    #[test]
    fn grows_while_batches_finish_under_budget_and_shrinks_when_they_overrun() {
        let sizer = BatchSizer::new(100 * MS, 100_000);
        sizer.observe(256, 256 * MS / 10); // 100 µs per record
        let mut size = sizer.next();
        assert_eq!(size, 1000);
        // the pace halves: batches grow toward 2,000, a quarter of the way per batch
        for _ in 0..3 {
            sizer.observe(size, Duration::from_micros(50) * size as u32);
            let next = sizer.next();
            assert!(next > size && next <= 2000, "{size} → {next}");
            size = next;
        }
        // a slow stretch (a larger store, busier candidates): they shrink again
        sizer.observe(size, Duration::from_micros(400) * size as u32);
        assert!(sizer.next() < size, "{size} → {}", sizer.next());
    }

    #[test]
    fn stays_within_one_and_the_maximum() {
        let sizer = BatchSizer::new(100 * MS, 500);
        sizer.observe(10, Duration::from_nanos(10));
        assert_eq!(sizer.next(), 500);
        let sizer = BatchSizer::new(100 * MS, 500);
        sizer.observe(1, Duration::from_secs(5));
        assert_eq!(sizer.next(), 1);
        sizer.observe(0, Duration::ZERO);
        assert_eq!(sizer.next(), 1, "an empty claim says nothing about the pace");
    }
}
