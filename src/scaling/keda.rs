//! KEDA mode: what the built-in scaler's inputs become as KEDA triggers.
//!
//! - A peak window becomes a `cron` trigger per workload it raises, from its opening minus
//!   the lead time to its close, asking for the window's floor. KEDA's cron trigger takes a
//!   five-field start and end expression in a time zone:
//!   - a recurring window keeps its time zone; the lead time and duration are applied to its
//!     minute and hour, which must therefore be plain numbers (a day-of-week list follows a
//!     shift across midnight; a day-of-month cannot, and is refused);
//!   - a one-off window is written for its date in UTC. KEDA's cron has no year field, so the
//!     trigger comes back on the same date every year until the window is removed.
//! - The intake lag (queued records) is the matcher's PostgreSQL-query trigger, with a target
//!   of [`LAG_PER_REPLICA`] queued records per replica.

use jiff::{SignedDuration, Timestamp, tz::TimeZone};

use super::Workload;
use crate::crd::scaling::PeakWindow;

/// Queued records per matcher replica the PostgreSQL trigger aims for.
pub const LAG_PER_REPLICA: u32 = 250;

/// Messages behind per intake replica a Kafka Source's trigger aims for: taken from the
/// topic and admitted at intake's pace (thousands a second per replica), a few hundred
/// milliseconds of work.
pub const KAFKA_LAG_PER_REPLICA: u32 = 1000;

/// The query of the intake-lag trigger.
pub const INTAKE_LAG_QUERY: &str = "SELECT COUNT(*) FROM intake WHERE state = 'queued'";

/// One KEDA `cron` trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronTrigger {
    pub window: String,
    pub timezone: String,
    pub start: String,
    pub end: String,
    pub desired_replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KedaError {
    #[error(
        "peak window {window:?}: schedule {schedule:?} cannot be a KEDA cron trigger: {detail} (KEDA mode needs plain minute and hour fields, and a day-of-month only when the window stays within the day)"
    )]
    Unrepresentable { window: String, schedule: String, detail: String },
    #[error("peak window {window:?}: {field} {value:?} is not an RFC 3339 timestamp")]
    BadTimestamp { window: String, field: &'static str, value: String },
}

impl KedaError {
    pub fn reason(&self) -> &'static str {
        match self {
            KedaError::Unrepresentable { .. } => "KedaUnrepresentable",
            KedaError::BadTimestamp { .. } => "BadTimestamp",
        }
    }
}

fn floor_of(window: &PeakWindow, workload: Workload) -> u32 {
    let floors = &window.min_replicas;
    let floor = match workload {
        Workload::Ingest => floors.ingest,
        Workload::Matcher => floors.matcher,
        Workload::Feeds => floors.feeds,
    };
    floor.unwrap_or(0).max(0) as u32
}

/// The cron trigger raising `workload` during `window`; `None` when the window does not raise it.
pub fn cron_trigger(window: &PeakWindow, workload: Workload) -> Result<Option<CronTrigger>, KedaError> {
    let desired_replicas = floor_of(window, workload);
    if desired_replicas == 0 {
        return Ok(None);
    }
    let (timezone, start, end) = cron_span(window)?;
    Ok(Some(CronTrigger { window: window.name.clone(), timezone, start, end, desired_replicas }))
}

/// Time zone, start and end expressions of a window (lead time included).
pub fn cron_span(window: &PeakWindow) -> Result<(String, String, String), KedaError> {
    let lead_minutes = u64::from(window.lead_time_seconds).div_ceil(60) as i64;
    match (&window.start, &window.end, &window.schedule, window.duration_minutes) {
        (Some(start), Some(end), _, _) => {
            let at = |field: &'static str, value: &str| {
                value.parse::<Timestamp>().map_err(|_| KedaError::BadTimestamp {
                    window: window.name.clone(),
                    field,
                    value: value.to_string(),
                })
            };
            let opens = at("start", start)? - SignedDuration::from_mins(lead_minutes);
            let closes = at("end", end)?;
            let cron = |t: Timestamp| {
                let t = t.to_zoned(TimeZone::UTC);
                format!("{} {} {} {} *", t.minute(), t.hour(), t.day(), t.month())
            };
            Ok(("UTC".to_string(), cron(opens), cron(closes)))
        }
        (_, _, Some(schedule), Some(duration)) => {
            let refuse = |detail: &str| KedaError::Unrepresentable {
                window: window.name.clone(),
                schedule: schedule.clone(),
                detail: detail.to_string(),
            };
            let fields: Vec<&str> = schedule.split_whitespace().collect();
            let [minute, hour, day, month, weekday] = fields[..] else { return Err(refuse("not five fields")) };
            let (Ok(minute), Ok(hour)) = (minute.parse::<i64>(), hour.parse::<i64>()) else {
                return Err(refuse("minute or hour is not a plain number"));
            };
            let at = hour * 60 + minute;
            let shifted = |minutes: i64| -> Result<String, KedaError> {
                let days = minutes.div_euclid(24 * 60);
                let in_day = minutes.rem_euclid(24 * 60);
                let weekday = shift_weekdays(weekday, days).ok_or_else(|| refuse("its day of week is not a list of numbers"))?;
                if days != 0 && day != "*" {
                    return Err(refuse("the window crosses midnight on a day of month"));
                }
                Ok(format!("{} {} {day} {month} {weekday}", in_day % 60, in_day / 60))
            };
            Ok((window.time_zone.clone(), shifted(at - lead_minutes)?, shifted(at + i64::from(duration))?))
        }
        _ => Err(KedaError::Unrepresentable {
            window: window.name.clone(),
            schedule: String::new(),
            detail: "neither start/end nor schedule/durationMinutes".to_string(),
        }),
    }
}

/// `field` (a day-of-week: `*` or a list of numbers) moved by `days`; `None` when it cannot be.
fn shift_weekdays(field: &str, days: i64) -> Option<String> {
    if days == 0 || field == "*" {
        return Some(field.to_string());
    }
    let shifted: Option<Vec<String>> =
        field.split(',').map(|d| d.parse::<i64>().ok().filter(|d| (0..=7).contains(d)).map(|d| (d + days).rem_euclid(7).to_string())).collect();
    shifted.map(|days| days.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::scaling::PeakFloors;

    fn window(start_end: Option<(&str, &str)>, schedule: Option<(&str, u32)>, lead: u32) -> PeakWindow {
        PeakWindow {
            name: "w".into(),
            start: start_end.map(|s| s.0.into()),
            end: start_end.map(|s| s.1.into()),
            schedule: schedule.map(|s| s.0.into()),
            duration_minutes: schedule.map(|s| s.1),
            time_zone: "Europe/Paris".into(),
            lead_time_seconds: lead,
            min_replicas: PeakFloors { ingest: Some(8), matcher: Some(6), feeds: None },
        }
    }

    #[test]
    fn one_off_windows_are_written_for_their_date_in_utc() {
        let w = window(Some(("2026-12-11T18:00:00+01:00", "2026-12-11T23:00:00+01:00")), None, 600);
        let t = cron_trigger(&w, Workload::Matcher).unwrap().unwrap();
        assert_eq!((t.timezone.as_str(), t.start.as_str(), t.end.as_str(), t.desired_replicas), ("UTC", "50 16 11 12 *", "0 22 11 12 *", 6));
        assert_eq!(cron_trigger(&w, Workload::Feeds).unwrap(), None, "the window does not raise feeds");
    }

    #[test]
    fn recurring_windows_keep_their_zone_and_shift_by_lead_and_duration() {
        let w = window(None, Some(("0 14 * * 6", 240)), 300);
        assert_eq!(cron_span(&w).unwrap(), ("Europe/Paris".into(), "55 13 * * 6".into(), "0 18 * * 6".into()));
        // Across midnight the days of week follow.
        let w = window(None, Some(("5 0 * * 0,6", 120)), 600);
        assert_eq!(cron_span(&w).unwrap().1, "55 23 * * 6,5");
        let w = window(None, Some(("0 23 * * 5", 120)), 0);
        assert_eq!(cron_span(&w).unwrap().2, "0 1 * * 6");
    }

    #[test]
    fn schedules_keda_cannot_express_are_refused_with_the_reason() {
        for (schedule, detail) in [
            ("*/15 9 * * *", "minute or hour is not a plain number"),
            ("0 23 1 * *", "crosses midnight on a day of month"),
            ("0 0 * * 1-5", "day of week is not a list of numbers"),
        ] {
            let error = cron_span(&window(None, Some((schedule, 120)), 300)).unwrap_err();
            assert!(error.to_string().contains(detail), "{schedule}: {error}");
        }
    }
}
