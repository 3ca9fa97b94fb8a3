//! Peak windows: known events that raise the replica floor ahead of time.
//!
//! A window is either one-off (`start`/`end`, RFC 3339) or recurring (a five-field cron
//! expression read in an IANA time zone, plus a duration). Each window also has a lead time:
//! the floor applies from `open - lead` until `close`, so replicas are started and warm when
//! the event begins.
//!
//! Recurring windows are read in wall-clock time of their zone and last `durationMinutes` of
//! real (elapsed) time. Across daylight-saving changes: a fire time that falls in the
//! spring-forward gap opens at the first valid instant after the gap (02:30 becomes 03:00 in
//! Europe/Paris on the last Sunday of March); a fire time that occurs twice in the fall-back
//! overlap opens once, at its first occurrence. A window of 9:00 Europe/Paris therefore opens
//! at 08:00 UTC in winter and 07:00 UTC in summer.
//!
//! Time zones come from the tz database bundled into the binary, so lookups work in a
//! distroless image without `/usr/share/zoneinfo`.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::{Floors, Workload};
use crate::crd::scaling::PeakWindow;

/// Why a peak window cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("peak window {window:?}: {field} {value:?} is not an RFC 3339 timestamp ({detail})")]
    BadTimestamp { window: String, field: &'static str, value: String, detail: String },
    #[error("peak window {window:?}: start {start} is not before end {end}")]
    EmptyWindow { window: String, start: String, end: String },
    #[error("peak window {window:?}: set either start/end or schedule/durationMinutes, not both")]
    BothKinds { window: String },
    #[error("peak window {window:?}: needs start/end or schedule/durationMinutes")]
    NoKind { window: String },
    #[error("peak window {window:?}: {present} is set without {missing}")]
    Incomplete { window: String, present: &'static str, missing: &'static str },
    #[error("peak window {window:?}: schedule {schedule:?} is not a five-field cron expression (minute hour day-of-month month day-of-week): {detail}")]
    BadCron { window: String, schedule: String, detail: String },
    #[error("peak window {window:?}: schedule {schedule:?} never fires")]
    NeverFires { window: String, schedule: String },
    #[error("peak window {window:?}: unknown time zone {zone:?} (use an IANA name such as Europe/Paris)")]
    UnknownTimeZone { window: String, zone: String },
    #[error("peak window {window:?}: durationMinutes must be at least 1")]
    ZeroDuration { window: String },
    #[error("peak window {window:?}: floor for {workload} is negative ({value})")]
    NegativeFloor { window: String, workload: Workload, value: i32 },
    #[error("peak window {window:?}: raises no workload (set minReplicas.ingest, .matcher or .feeds)")]
    NoFloor { window: String },
}

/// When a compiled window is open.
#[derive(Clone, Debug)]
pub enum WindowKind {
    Once { start: Timestamp, end: Timestamp },
    Recurring { expr: String, cron: Box<Cron>, zone: TimeZone, duration: SignedDuration },
}

/// A validated peak window, ready to be evaluated at any instant.
#[derive(Clone, Debug)]
pub struct PeakSchedule {
    pub name: String,
    pub kind: WindowKind,
    pub lead: SignedDuration,
    pub floors: Floors,
}

/// One opening of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub opens_at: Timestamp,
    pub closes_at: Timestamp,
}

/// The floor in force at an instant, from every window that covers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveFloor {
    /// Names of the windows in force, joined with `+` (in the order given).
    pub name: String,
    /// Per workload, the highest floor of the windows in force.
    pub floors: Floors,
    /// True when every window in force is still in its lead time (not yet open).
    pub warming: bool,
    /// The latest close among the windows in force.
    pub closes_at: Timestamp,
}

fn parse_ts(window: &str, field: &'static str, value: &str) -> Result<Timestamp, ScheduleError> {
    value.parse::<Timestamp>().map_err(|e| ScheduleError::BadTimestamp {
        window: window.to_string(),
        field,
        value: value.to_string(),
        detail: e.to_string(),
    })
}

/// Parses a five-field cron expression (minute hour day-of-month month day-of-week).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(format!("has {fields} fields, expected 5"));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// Looks an IANA time zone up in the bundled tz database.
pub fn time_zone(name: &str) -> Option<TimeZone> {
    if name.trim().is_empty() {
        return None;
    }
    TimeZone::get(name).ok()
}

/// Validates a `PeakWindow` and compiles it.
pub fn compile_window(w: &PeakWindow) -> Result<PeakSchedule, ScheduleError> {
    let window = || w.name.clone();
    let mut floors = Floors::default();
    let mut any = false;
    for (wl, v) in [
        (Workload::Ingest, w.min_replicas.ingest),
        (Workload::Matcher, w.min_replicas.matcher),
        (Workload::Feeds, w.min_replicas.feeds),
    ] {
        if let Some(v) = v {
            any = true;
            if v < 0 {
                return Err(ScheduleError::NegativeFloor { window: window(), workload: wl, value: v });
            }
            floors.set(wl, v as u32);
        }
    }
    if !any {
        return Err(ScheduleError::NoFloor { window: window() });
    }
    let one_off = w.start.is_some() || w.end.is_some();
    let recurring = w.schedule.is_some() || w.duration_minutes.is_some();
    let kind = match (one_off, recurring) {
        (true, true) => return Err(ScheduleError::BothKinds { window: window() }),
        (false, false) => return Err(ScheduleError::NoKind { window: window() }),
        (true, false) => {
            let (Some(s), Some(e)) = (&w.start, &w.end) else {
                let (present, missing) = if w.start.is_some() { ("start", "end") } else { ("end", "start") };
                return Err(ScheduleError::Incomplete { window: window(), present, missing });
            };
            let start = parse_ts(&w.name, "start", s)?;
            let end = parse_ts(&w.name, "end", e)?;
            if start >= end {
                return Err(ScheduleError::EmptyWindow { window: window(), start: s.clone(), end: e.clone() });
            }
            WindowKind::Once { start, end }
        }
        (false, true) => {
            let (Some(expr), Some(minutes)) = (&w.schedule, w.duration_minutes) else {
                let (present, missing) = if w.schedule.is_some() {
                    ("schedule", "durationMinutes")
                } else {
                    ("durationMinutes", "schedule")
                };
                return Err(ScheduleError::Incomplete { window: window(), present, missing });
            };
            if minutes == 0 {
                return Err(ScheduleError::ZeroDuration { window: window() });
            }
            let cron = parse_cron(expr).map_err(|detail| ScheduleError::BadCron {
                window: window(),
                schedule: expr.clone(),
                detail,
            })?;
            let zone = time_zone(&w.time_zone)
                .ok_or_else(|| ScheduleError::UnknownTimeZone { window: window(), zone: w.time_zone.clone() })?;
            // A pattern such as "0 0 30 2 *" parses but never matches.
            let probe = Timestamp::UNIX_EPOCH.to_zoned(zone.clone());
            if cron.find_next_occurrence(&probe, true).is_err() {
                return Err(ScheduleError::NeverFires { window: window(), schedule: expr.clone() });
            }
            WindowKind::Recurring {
                expr: expr.clone(),
                cron: Box::new(cron),
                zone,
                duration: SignedDuration::from_secs(i64::from(minutes) * 60),
            }
        }
    };
    Ok(PeakSchedule {
        name: w.name.clone(),
        kind,
        lead: SignedDuration::from_secs(i64::from(w.lead_time_seconds)),
        floors,
    })
}

impl PeakSchedule {
    /// The occurrence whose floor applies at `now` (from `opens_at - lead` to `closes_at`).
    pub fn occurrence_at(&self, now: Timestamp) -> Option<Occurrence> {
        match &self.kind {
            WindowKind::Once { start, end } => {
                let from = start.checked_sub(self.lead).ok()?;
                (from <= now && now < *end).then_some(Occurrence { opens_at: *start, closes_at: *end })
            }
            WindowKind::Recurring { cron, zone, duration, .. } => {
                // Active iff some fire time s satisfies now - duration < s <= now + lead.
                let after = now.checked_sub(*duration).ok()?.to_zoned(zone.clone());
                let s = cron.find_next_occurrence(&after, false).ok()?.timestamp();
                let limit = now.checked_add(self.lead).ok()?;
                (s <= limit).then(|| Occurrence { opens_at: s, closes_at: s + *duration })
            }
        }
    }

    /// The next opening strictly after `after` (for status: "next peak at ...").
    pub fn next_opening(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            WindowKind::Once { start, .. } => (*start > after).then_some(*start),
            WindowKind::Recurring { cron, zone, .. } => {
                cron.find_next_occurrence(&after.to_zoned(zone.clone()), false).ok().map(|z| z.timestamp())
            }
        }
    }
}

/// The floor in force at `now`: per workload the highest floor among the windows whose
/// `[open - lead, close)` contains `now`; `None` when no window applies.
pub fn active_floor(windows: &[PeakSchedule], now: Timestamp) -> Option<ActiveFloor> {
    let mut out: Option<ActiveFloor> = None;
    for w in windows {
        let Some(occ) = w.occurrence_at(now) else { continue };
        let warming = now < occ.opens_at;
        out = Some(match out {
            None => ActiveFloor { name: w.name.clone(), floors: w.floors, warming, closes_at: occ.closes_at },
            Some(prev) => ActiveFloor {
                name: format!("{}+{}", prev.name, w.name),
                floors: prev.floors.max(w.floors),
                warming: prev.warming && warming,
                closes_at: prev.closes_at.max(occ.closes_at),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::scaling::PeakFloors;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn once(name: &str, start: &str, end: &str, lead: u32, matcher: i32) -> PeakWindow {
        PeakWindow {
            name: name.into(),
            start: Some(start.into()),
            end: Some(end.into()),
            schedule: None,
            duration_minutes: None,
            time_zone: "UTC".into(),
            lead_time_seconds: lead,
            min_replicas: PeakFloors { matcher: Some(matcher), ..Default::default() },
        }
    }

    fn cron(name: &str, expr: &str, minutes: u32, tz: &str, lead: u32, matcher: i32) -> PeakWindow {
        PeakWindow {
            name: name.into(),
            start: None,
            end: None,
            schedule: Some(expr.into()),
            duration_minutes: Some(minutes),
            time_zone: tz.into(),
            lead_time_seconds: lead,
            min_replicas: PeakFloors { matcher: Some(matcher), ..Default::default() },
        }
    }

    #[test]
    fn one_off_boundaries_and_lead() {
        let w = compile_window(&once("opening", "2025-05-17T10:00:00+02:00", "2025-05-17T12:00:00+02:00", 300, 12))
            .unwrap();
        let ws = [w];
        // Lead time: floor from 07:55Z.
        assert_eq!(active_floor(&ws, ts("2025-05-17T07:54:59Z")), None);
        let a = active_floor(&ws, ts("2025-05-17T07:55:00Z")).unwrap();
        assert!(a.warming);
        assert_eq!(a.floors.matcher, 12);
        assert_eq!(a.name, "opening");
        let a = active_floor(&ws, ts("2025-05-17T08:00:00Z")).unwrap();
        assert!(!a.warming);
        assert!(active_floor(&ws, ts("2025-05-17T09:59:59Z")).is_some());
        // End is exclusive.
        assert_eq!(active_floor(&ws, ts("2025-05-17T10:00:00Z")), None);
    }

    #[test]
    fn overlapping_windows_take_the_max_floor_per_workload() {
        let mut a = once("a", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z", 0, 5);
        a.min_replicas.feeds = Some(9);
        let b = once("b", "2025-01-01T10:30:00Z", "2025-01-01T12:00:00Z", 0, 8);
        let ws = [compile_window(&a).unwrap(), compile_window(&b).unwrap()];
        let f = active_floor(&ws, ts("2025-01-01T10:45:00Z")).unwrap();
        assert_eq!(f.name, "a+b");
        assert_eq!((f.floors.matcher, f.floors.feeds, f.floors.ingest), (8, 9, 0));
        assert_eq!(f.closes_at, ts("2025-01-01T12:00:00Z"));
        let f = active_floor(&ws, ts("2025-01-01T11:15:00Z")).unwrap();
        assert_eq!((f.name.as_str(), f.floors.matcher, f.floors.feeds), ("b", 8, 0));
    }

    #[test]
    fn cron_in_a_time_zone_follows_dst() {
        // Every day 09:00-10:00 Europe/Paris, no lead.
        let w = compile_window(&cron("tills", "0 9 * * *", 60, "Europe/Paris", 0, 4)).unwrap();
        let ws = [w];
        // Winter: UTC+1, opens 08:00Z.
        assert!(active_floor(&ws, ts("2025-01-15T07:59:59Z")).is_none());
        assert!(active_floor(&ws, ts("2025-01-15T08:00:00Z")).is_some());
        assert!(active_floor(&ws, ts("2025-01-15T08:59:59Z")).is_some());
        assert!(active_floor(&ws, ts("2025-01-15T09:00:00Z")).is_none());
        // Summer: UTC+2, opens 07:00Z.
        assert!(active_floor(&ws, ts("2025-07-15T06:59:59Z")).is_none());
        assert!(active_floor(&ws, ts("2025-07-15T07:00:00Z")).is_some());
        assert!(active_floor(&ws, ts("2025-07-15T08:00:00Z")).is_none());
        // The day of the spring change (2025-03-30) already runs on summer time at 09:00.
        assert!(active_floor(&ws, ts("2025-03-30T07:00:00Z")).is_some());
        assert!(active_floor(&ws, ts("2025-03-30T08:00:00Z")).is_none());
        // The day of the autumn change (2025-10-26) runs on winter time at 09:00.
        assert!(active_floor(&ws, ts("2025-10-26T07:30:00Z")).is_none());
        assert!(active_floor(&ws, ts("2025-10-26T08:30:00Z")).is_some());
    }

    #[test]
    fn cron_in_the_spring_forward_gap_opens_after_the_gap() {
        // 02:30 does not exist in Paris on 2025-03-30 (02:00 -> 03:00 local, at 01:00Z).
        let w = compile_window(&cron("night", "30 2 * * *", 60, "Europe/Paris", 0, 3)).unwrap();
        let occ = w.occurrence_at(ts("2025-03-30T01:30:00Z")).expect("window open after the gap");
        assert_eq!(occ.opens_at, ts("2025-03-30T01:00:00Z"));
        assert_eq!(occ.closes_at, ts("2025-03-30T02:00:00Z"));
        // Elapsed duration is kept: 60 real minutes.
        assert!(w.occurrence_at(ts("2025-03-30T02:00:00Z")).is_none());
    }

    #[test]
    fn cron_in_the_fall_back_overlap_opens_once() {
        // 02:30 occurs twice in Paris on 2025-10-26 (00:30Z at +02:00, then 01:30Z at +01:00).
        let w = compile_window(&cron("night", "30 2 * * *", 30, "Europe/Paris", 0, 3)).unwrap();
        let occ = w.occurrence_at(ts("2025-10-26T00:45:00Z")).unwrap();
        assert_eq!(occ.opens_at, ts("2025-10-26T00:30:00Z"));
        // The repeated 02:30 does not reopen the window.
        assert!(w.occurrence_at(ts("2025-10-26T01:45:00Z")).is_none());
        assert_eq!(w.next_opening(ts("2025-10-26T00:30:00Z")), Some(ts("2025-10-27T01:30:00Z")));
    }

    #[test]
    fn cron_lead_time_and_week_days() {
        // Saturdays 10:00 New York, 2 h, floor from 09:45 local.
        let w = compile_window(&cron("sale", "0 10 * * SAT", 120, "America/New_York", 900, 20)).unwrap();
        let ws = [w];
        // 2025-06-14 is a Saturday; New York is UTC-4 in June.
        assert!(active_floor(&ws, ts("2025-06-14T13:44:59Z")).is_none());
        let f = active_floor(&ws, ts("2025-06-14T13:45:00Z")).unwrap();
        assert!(f.warming);
        let f = active_floor(&ws, ts("2025-06-14T14:00:00Z")).unwrap();
        assert!(!f.warming);
        assert!(active_floor(&ws, ts("2025-06-14T15:59:59Z")).is_some());
        assert!(active_floor(&ws, ts("2025-06-14T16:00:00Z")).is_none());
        // Sunday: nothing.
        assert!(active_floor(&ws, ts("2025-06-15T14:30:00Z")).is_none());
    }

    #[test]
    fn windows_longer_than_their_period_stay_open() {
        // Fires every hour, lasts 90 minutes: always open once started.
        let w = compile_window(&cron("busy", "0 * * * *", 90, "UTC", 0, 2)).unwrap();
        for m in [0, 15, 59, 61, 89, 91, 150] {
            let t = ts("2025-01-01T10:00:00Z") + SignedDuration::from_mins(m);
            assert!(w.occurrence_at(t).is_some(), "minute {m}");
        }
    }

    #[test]
    fn validation_errors_are_precise() {
        let bad_cron = compile_window(&cron("x", "61 * * * *", 10, "UTC", 0, 1)).unwrap_err();
        assert!(matches!(bad_cron, ScheduleError::BadCron { .. }), "{bad_cron}");
        let six = compile_window(&cron("x", "0 0 9 * * *", 10, "UTC", 0, 1)).unwrap_err();
        assert!(six.to_string().contains("has 6 fields, expected 5"), "{six}");
        let tz = compile_window(&cron("x", "0 9 * * *", 10, "Europe/Atlantis", 0, 1)).unwrap_err();
        assert_eq!(
            tz.to_string(),
            "peak window \"x\": unknown time zone \"Europe/Atlantis\" (use an IANA name such as Europe/Paris)"
        );
        let never = compile_window(&cron("x", "0 0 30 2 *", 10, "UTC", 0, 1)).unwrap_err();
        assert!(matches!(never, ScheduleError::NeverFires { .. }), "{never}");
        let empty = compile_window(&once("x", "2025-01-01T10:00:00Z", "2025-01-01T10:00:00Z", 0, 1)).unwrap_err();
        assert!(matches!(empty, ScheduleError::EmptyWindow { .. }));
        let badts = compile_window(&once("x", "2025-01-01 10:00", "2025-01-01T11:00:00Z", 0, 1)).unwrap_err();
        assert!(matches!(badts, ScheduleError::BadTimestamp { field: "start", .. }), "{badts}");
        let mut both = once("x", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z", 0, 1);
        both.schedule = Some("0 9 * * *".into());
        assert!(matches!(compile_window(&both).unwrap_err(), ScheduleError::BothKinds { .. }));
        let mut half = cron("x", "0 9 * * *", 10, "UTC", 0, 1);
        half.duration_minutes = None;
        assert!(matches!(
            compile_window(&half).unwrap_err(),
            ScheduleError::Incomplete { present: "schedule", missing: "durationMinutes", .. }
        ));
        let mut none = once("x", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z", 0, 1);
        none.min_replicas = PeakFloors::default();
        assert!(matches!(compile_window(&none).unwrap_err(), ScheduleError::NoFloor { .. }));
        let neg = once("x", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z", 0, -1);
        assert!(matches!(compile_window(&neg).unwrap_err(), ScheduleError::NegativeFloor { .. }));
    }

    #[test]
    fn bundled_time_zones_resolve() {
        for z in ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Lord_Howe"] {
            assert!(time_zone(z).is_some(), "{z}");
        }
        assert!(time_zone("").is_none());
        assert!(time_zone("Not/AZone").is_none());
    }
}
