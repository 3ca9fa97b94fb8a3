//! Pure scaling decisions for the scaled workloads (ingest, matcher, feeds), and the
//! simulator that exercises them on load traces.
//!
//! Nothing in this module does I/O or reads a clock: time is always an input. The operator
//! (and `cdp local`) gather load figures, call [`decision::decide`], and apply the result.
//!
//! - [`policy`]: the effective bounds and peak windows from the `ScalingPolicy` objects of a
//!   platform, with the rules that combine several of them.
//! - [`schedule`]: peak windows (one-off or cron in an IANA time zone) and the floor they
//!   impose at an instant.
//! - [`decision`]: desired replicas from observed load.
//! - [`simulate`]: a discrete-time simulator comparing this scaler with HPA, KEDA and a
//!   hindsight oracle on load traces (`cdp simulate`).

pub mod decision;
pub mod keda;
pub mod load;
pub mod policy;
pub mod schedule;
pub mod simulate;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A workload whose replica count the operator owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Workload {
    Ingest,
    Matcher,
    Feeds,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Ingest, Workload::Matcher, Workload::Feeds];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Ingest => "ingest",
            Workload::Matcher => "matcher",
            Workload::Feeds => "feeds",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replica floors per workload (0: no floor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floors {
    pub ingest: u32,
    pub matcher: u32,
    pub feeds: u32,
}

impl Floors {
    pub fn get(&self, w: Workload) -> u32 {
        match w {
            Workload::Ingest => self.ingest,
            Workload::Matcher => self.matcher,
            Workload::Feeds => self.feeds,
        }
    }

    pub fn set(&mut self, w: Workload, v: u32) {
        match w {
            Workload::Ingest => self.ingest = v,
            Workload::Matcher => self.matcher = v,
            Workload::Feeds => self.feeds = v,
        }
    }

    /// Per-workload maximum of two sets of floors.
    pub fn max(self, other: Floors) -> Floors {
        Floors {
            ingest: self.ingest.max(other.ingest),
            matcher: self.matcher.max(other.matcher),
            feeds: self.feeds.max(other.feeds),
        }
    }
}

/// Compact human form of a count: 950, 42k, 1.2M.
pub(crate) fn human_count(v: f64) -> String {
    let a = v.abs();
    if a >= 9_950_000.0 {
        format!("{:.0}M", v / 1e6)
    } else if a >= 999_500.0 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 9_950.0 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 999.5 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_counts() {
        assert_eq!(human_count(0.0), "0");
        assert_eq!(human_count(950.0), "950");
        assert_eq!(human_count(1234.0), "1.2k");
        assert_eq!(human_count(42_000.0), "42k");
        assert_eq!(human_count(1_500_000.0), "1.5M");
        assert_eq!(human_count(2.5), "2.5");
    }
}
