//! Schedule presets and their slots, in the platform timezone. Pure functions: the
//! scheduler asks for the latest slot at or before "now" and fires it once.
//!
//! DST: a slot time that does not exist locally (the clocks jump over it) runs at the
//! first instant after the gap; a slot time that exists twice (the clocks fall back)
//! runs at the first of the two.

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// The schedule presets. There is no per-org cron: one preset for the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Daily2am,
    Daily3am,
    Every12h,
    WeeklySun2am,
    Disabled,
}

impl Preset {
    pub const ALL: [Preset; 5] = [Self::Daily2am, Self::Daily3am, Self::Every12h, Self::WeeklySun2am, Self::Disabled];

    /// The stored key (a check constraint lists the same keys).
    pub fn key(self) -> &'static str {
        match self {
            Self::Daily2am => "daily_2am",
            Self::Daily3am => "daily_3am",
            Self::Every12h => "every_12h",
            Self::WeeklySun2am => "weekly_sun_2am",
            Self::Disabled => "disabled",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Daily2am => "Daily at 2 AM",
            Self::Daily3am => "Daily at 3 AM",
            Self::Every12h => "Every 12 hours (midnight and noon)",
            Self::WeeklySun2am => "Weekly on Sunday at 2 AM",
            Self::Disabled => "Disabled",
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.key() == key)
    }

    /// How old an org's newest completed export may be before the org counts as
    /// overdue: twice the preset's period (daily: 48 h, every 12 h: 24 h, weekly:
    /// 14 days), or 30 days while the schedule is disabled.
    pub fn overdue_after(self) -> chrono::Duration {
        match self {
            Self::Daily2am | Self::Daily3am => chrono::Duration::hours(48),
            Self::Every12h => chrono::Duration::hours(24),
            Self::WeeklySun2am => chrono::Duration::days(14),
            Self::Disabled => chrono::Duration::days(30),
        }
    }

    /// Local times of day the preset fires at, and the weekday it is limited to.
    fn times(self) -> (&'static [u32], Option<Weekday>) {
        match self {
            Self::Daily2am => (&[2], None),
            Self::Daily3am => (&[3], None),
            Self::Every12h => (&[0, 12], None),
            Self::WeeklySun2am => (&[2], Some(Weekday::Sun)),
            Self::Disabled => (&[], None),
        }
    }

    /// The slots of one local date, earliest first.
    fn slots_on(self, date: NaiveDate, tz: Tz) -> Vec<DateTime<Utc>> {
        let (hours, weekday) = self.times();
        if weekday.is_some_and(|w| date.weekday() != w) {
            return Vec::new();
        }
        hours
            .iter()
            .map(|h| resolve(tz, date.and_time(NaiveTime::from_hms_opt(*h, 0, 0).unwrap_or_default())))
            .collect()
    }

    /// The latest slot at or before `now`, if the preset fires at all.
    pub fn latest_at_or_before(self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&tz).date_naive();
        // Weekly needs at most 7 days back; one more covers a DST-shifted slot.
        (0..=8u64)
            .filter_map(|back| today.checked_sub_days(Days::new(back)))
            .flat_map(|d| self.slots_on(d, tz).into_iter().rev())
            .find(|slot| *slot <= now)
    }

    /// The first slot strictly after `now`.
    pub fn next_after(self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&tz).date_naive();
        (0..=8u64)
            .filter_map(|ahead| today.checked_add_days(Days::new(ahead)))
            .flat_map(|d| self.slots_on(d, tz))
            .find(|slot| *slot > now)
    }
}

/// A local wall-clock time as an instant: the earlier of two on a fall-back, the
/// first instant after the gap on a spring-forward.
fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // Walk forward minute by minute to the end of the gap (gaps are at most
            // a few hours); the first valid local minute is where the slot runs.
            (1..=24 * 60)
                .find_map(|m| tz.from_local_datetime(&(local + chrono::Duration::minutes(m))).earliest())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| Utc.from_utc_datetime(&local))
        }
    }
}

/// Parses an IANA timezone name ("UTC", "Europe/Berlin").
pub fn parse_timezone(name: &str) -> Option<Tz> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    name.parse::<Tz>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn presets_round_trip() {
        for p in Preset::ALL {
            assert_eq!(Preset::parse(p.key()), Some(p));
        }
        assert_eq!(Preset::parse("hourly"), None);
        assert_eq!(Preset::parse(""), None);
    }

    #[test]
    fn latest_and_next_slots() {
        let tz = chrono_tz::UTC;
        // (preset, now, latest at or before, next after)
        let cases = [
            (Preset::Daily2am, "2026-11-27T10:00:00Z", Some("2026-11-27T02:00:00Z"), Some("2026-11-28T02:00:00Z")),
            (Preset::Daily2am, "2026-11-27T02:00:00Z", Some("2026-11-27T02:00:00Z"), Some("2026-11-28T02:00:00Z")),
            (Preset::Daily2am, "2026-11-27T01:59:59Z", Some("2026-11-26T02:00:00Z"), Some("2026-11-27T02:00:00Z")),
            (Preset::Daily3am, "2026-11-27T02:30:00Z", Some("2026-11-26T03:00:00Z"), Some("2026-11-27T03:00:00Z")),
            (Preset::Every12h, "2026-11-27T11:59:00Z", Some("2026-11-27T00:00:00Z"), Some("2026-11-27T12:00:00Z")),
            (Preset::Every12h, "2026-11-27T12:00:01Z", Some("2026-11-27T12:00:00Z"), Some("2026-11-28T00:00:00Z")),
            // 2026-11-27 is a Friday; the Sundays around it are the 22nd and the 29th.
            (Preset::WeeklySun2am, "2026-11-27T10:00:00Z", Some("2026-11-22T02:00:00Z"), Some("2026-11-29T02:00:00Z")),
            (Preset::WeeklySun2am, "2026-11-29T02:00:00Z", Some("2026-11-29T02:00:00Z"), Some("2026-12-06T02:00:00Z")),
            // Month and year ends.
            (Preset::Daily2am, "2027-01-01T01:00:00Z", Some("2026-12-31T02:00:00Z"), Some("2027-01-01T02:00:00Z")),
            (Preset::Disabled, "2026-11-27T10:00:00Z", None, None),
        ];
        for (preset, now, latest, next) in cases {
            let now = utc(now);
            assert_eq!(preset.latest_at_or_before(tz, now), latest.map(utc), "{preset:?} latest at {now}");
            assert_eq!(preset.next_after(tz, now), next.map(utc), "{preset:?} next after {now}");
        }
    }

    #[test]
    fn slots_follow_the_timezone_across_dst() {
        let berlin: Tz = parse_timezone("Europe/Berlin").unwrap();
        // Winter (CET, UTC+1): 2 AM local is 01:00 UTC.
        assert_eq!(Preset::Daily2am.next_after(berlin, utc("2026-11-27T10:00:00Z")), Some(utc("2026-11-28T01:00:00Z")));
        // Summer (CEST, UTC+2): 2 AM local is 00:00 UTC.
        assert_eq!(Preset::Daily2am.next_after(berlin, utc("2026-07-01T10:00:00Z")), Some(utc("2026-07-02T00:00:00Z")));
        // 2026-03-29: the clocks jump from 02:00 to 03:00; the 2 AM slot runs at 03:00
        // CEST (01:00 UTC), once.
        assert_eq!(Preset::Daily2am.next_after(berlin, utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));
        assert_eq!(Preset::Daily2am.next_after(berlin, utc("2026-03-29T01:00:00Z")), Some(utc("2026-03-30T00:00:00Z")));
        // 2026-10-25: 02:00 to 03:00 happens twice; the slot runs at the first (00:00 UTC).
        assert_eq!(Preset::Daily2am.next_after(berlin, utc("2026-10-24T12:00:00Z")), Some(utc("2026-10-25T00:00:00Z")));
        assert_eq!(Preset::Daily2am.next_after(berlin, utc("2026-10-25T00:00:00Z")), Some(utc("2026-10-26T01:00:00Z")));
        // Every 12 hours in New York: midnight and noon local, EST (UTC-5).
        let ny: Tz = parse_timezone("America/New_York").unwrap();
        assert_eq!(
            Preset::Every12h.latest_at_or_before(ny, utc("2026-11-27T16:00:00Z")),
            Some(utc("2026-11-27T05:00:00Z"))
        );
        assert_eq!(Preset::Every12h.next_after(ny, utc("2026-11-27T16:00:00Z")), Some(utc("2026-11-27T17:00:00Z")));
    }

    #[test]
    fn timezones() {
        assert!(parse_timezone("UTC").is_some());
        assert!(parse_timezone("Europe/Berlin").is_some());
        assert!(parse_timezone(" Asia/Tokyo ").is_some());
        for bad in ["", "Mars/Olympus", "utc+1", "../etc/passwd", &"x".repeat(100)] {
            assert!(parse_timezone(bad).is_none(), "{bad}");
        }
    }
}
