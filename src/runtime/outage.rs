//! What a feed or an enricher says in its log about its destination failing: once when it
//! starts (with how sends are retried), then at growing intervals while it goes on, and once
//! when it recovers. A line per attempt would bury everything else during an outage (every
//! waiting event or record is retried, each with its own backoff); the metrics count every
//! attempt.

use std::time::Duration;

use tokio::time::Instant;

/// The first interval between two reports of one outage; it doubles up to [`LONGEST_GAP`].
pub const FIRST_GAP: Duration = Duration::from_secs(60);
pub const LONGEST_GAP: Duration = Duration::from_secs(3600);

/// A line to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The destination started failing.
    Failing { failed: u64, dead_lettered: u64, next_in: Duration },
    /// It still fails, and has since `for_`.
    StillFailing { for_: Duration, failed: u64, dead_lettered: u64, next_in: Duration },
    /// It delivered again, after failing for `after`.
    Recovered { after: Duration, failed: u64, dead_lettered: u64 },
}

/// A destination, as its log has told it. `failed` and `dead_lettered` count what the
/// log has not told yet.
#[derive(Debug)]
pub struct OutageLog {
    /// The current run of failures: when it began and whether the log said so.
    failing: Option<(Instant, bool)>,
    failed: u64,
    dead_lettered: u64,
    /// No report before then: a destination that keeps failing, or recovers and fails again
    /// and again, is reported less and less often.
    next_report: Option<Instant>,
    gap: Duration,
    recovered_at: Option<Instant>,
}

impl Default for OutageLog {
    fn default() -> Self {
        OutageLog { failing: None, failed: 0, dead_lettered: 0, next_report: None, gap: FIRST_GAP, recovered_at: None }
    }
}

impl OutageLog {
    /// An attempt failed (and its event went to the dead letters when `dead`).
    pub fn failed(&mut self, now: Instant, dead: bool) -> Option<Report> {
        self.failed += 1;
        self.dead_lettered += u64::from(dead);
        let (since, reported) = match self.failing {
            Some(run) => run,
            None => {
                // healthy for a whole gap since it last recovered: a new outage, told at once
                if self.recovered_at.is_none_or(|at| now - at >= self.gap) {
                    self.gap = FIRST_GAP;
                    self.next_report = None;
                }
                (now, false)
            }
        };
        self.failing = Some((since, reported));
        if self.next_report.is_some_and(|at| now < at) {
            return None;
        }
        let (failed, dead_lettered, next_in) = (self.failed, self.dead_lettered, self.gap);
        let report = if reported {
            Report::StillFailing { for_: now - since, failed, dead_lettered, next_in }
        } else {
            Report::Failing { failed, dead_lettered, next_in }
        };
        self.failing = Some((since, true));
        self.next_report = Some(now + self.gap);
        self.gap = (self.gap * 2).min(LONGEST_GAP);
        (self.failed, self.dead_lettered) = (0, 0);
        Some(report)
    }

    /// An attempt was acknowledged.
    pub fn delivered(&mut self, now: Instant) -> Option<Report> {
        let (since, reported) = self.failing.take()?;
        self.recovered_at = Some(now);
        // a run the log did not tell of ends quietly; its counts go with the next report
        if !reported {
            return None;
        }
        let report = Report::Recovered { after: now - since, failed: self.failed, dead_lettered: self.dead_lettered };
        (self.failed, self.dead_lettered) = (0, 0);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_outage_is_told_when_it_starts_then_rarely_then_when_it_ends() {
        let t0 = Instant::now();
        let mut log = OutageLog::default();
        assert_eq!(log.failed(t0, false), Some(Report::Failing { failed: 1, dead_lettered: 0, next_in: secs(60) }));
        // an attempt a second, some of them dead-lettered: nothing until the minute is up
        for s in 1..60 {
            assert_eq!(log.failed(t0 + secs(s), s % 10 == 0), None, "second {s}");
        }
        assert_eq!(
            log.failed(t0 + secs(60), false),
            Some(Report::StillFailing { for_: secs(60), failed: 60, dead_lettered: 5, next_in: secs(120) })
        );
        let reports = (61..600).filter_map(|s| log.failed(t0 + secs(s), false)).count();
        assert_eq!(reports, 2, "at 3 and 7 minutes");
        assert_eq!(log.delivered(t0 + secs(600)), Some(Report::Recovered { after: secs(600), failed: 179, dead_lettered: 0 }));
        assert_eq!(log.delivered(t0 + secs(601)), None);
    }

    #[test]
    fn a_flapping_destination_is_told_less_and_less_often() {
        let t0 = Instant::now();
        let mut log = OutageLog::default();
        let mut lines = 0;
        // fails and recovers every 10 s for an hour
        for s in (0..3600).step_by(10) {
            lines += usize::from(log.failed(t0 + secs(s), false).is_some());
            lines += usize::from(log.delivered(t0 + secs(s + 5)).is_some());
        }
        assert!(lines <= 14, "{lines} lines in an hour");
        // then a long healthy stretch: the next outage is told at once
        assert!(matches!(log.failed(t0 + secs(3600 + 7200), false), Some(Report::Failing { .. })));
    }
}
