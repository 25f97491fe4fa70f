//! Rollout rules that do not depend on one workstation: durations, deadlines, maintenance
//! windows, waves, the state machine and when the next wave opens.
//!
//! Time is Unix milliseconds (UTC); "local" means the workstation's wall clock, given to these
//! functions as a UTC offset in minutes.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutRuleError {
    #[error("`{0}` is not a duration; use a number and a unit: 30s, 15m, 2h, 7d")]
    Duration(String),
    #[error("`{0}` is not a wave plan; use increasing percentages ending at 100, e.g. 5,25,100")]
    Waves(String),
    #[error("`{0}` is not a maintenance window; use DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 22:00-06:00\"")]
    Window(String),
    #[error("`{0}` is not a local date and time; use YYYY-MM-DDTHH:MM[:SS]")]
    LocalTime(String),
    #[error("the failure ratio must be between 0 and 1, not {0}")]
    Ratio(String),
}

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Parses `30s`, `15m`, `2h`, `7d` (or combinations such as `1h30m`) into milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, RolloutRuleError> {
    let fail = || RolloutRuleError::Duration(text.chars().take(40).collect());
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => SECOND,
            'm' => MINUTE,
            'h' => HOUR,
            'd' => DAY,
            'w' => 7 * DAY,
            _ => return Err(fail()),
        };
        let n: i64 = number.parse().map_err(|_| fail())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(fail)?;
        number.clear();
    }
    if !number.is_empty() || total <= 0 {
        return Err(fail());
    }
    Ok(total)
}

/// Formats milliseconds the way `parse_duration` reads them (`1d2h`, `90s`).
pub fn format_duration(mut ms: i64) -> String {
    if ms <= 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(DAY, 'd'), (HOUR, 'h'), (MINUTE, 'm'), (SECOND, 's')] {
        if ms >= unit {
            out.push_str(&format!("{}{name}", ms / unit));
            ms %= unit;
        }
    }
    if out.is_empty() { "1s".into() } else { out }
}

/// A local wall-clock time, read in each workstation's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDateTime {
    /// Milliseconds since 1970-01-01T00:00 *as if it were UTC*; subtract the workstation's offset.
    pub naive_ms: i64,
}

impl LocalDateTime {
    /// `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (a space instead of `T` is accepted).
    pub fn parse(text: &str) -> Result<Self, RolloutRuleError> {
        let fail = || RolloutRuleError::LocalTime(text.chars().take(40).collect());
        let normalized = text.trim().replace(' ', "T");
        let (date, time) = normalized.split_once('T').ok_or_else(fail)?;
        let d: Vec<&str> = date.split('-').collect();
        let t: Vec<&str> = time.split(':').collect();
        if d.len() != 3 || !(2..=3).contains(&t.len()) {
            return Err(fail());
        }
        let num = |s: &str| s.parse::<i64>().map_err(|_| fail());
        let (year, month, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
        let (hour, minute) = (num(t[0])?, num(t[1])?);
        let second = if t.len() == 3 { num(t[2])? } else { 0 };
        if !(1970..=9999).contains(&year)
            || !(1..=12).contains(&month)
            || !(1..=days_in_month(year, month)).contains(&day)
            || !(0..24).contains(&hour)
            || !(0..60).contains(&minute)
            || !(0..60).contains(&second)
        {
            return Err(fail());
        }
        let days = days_from_civil(year, month, day);
        Ok(LocalDateTime {
            naive_ms: days * DAY + hour * HOUR + minute * MINUTE + second * SECOND,
        })
    }

    /// The instant this wall-clock time happens on a workstation `utc_offset_minutes` from UTC.
    pub fn at_offset(self, utc_offset_minutes: i32) -> i64 {
        self.naive_ms - i64::from(utc_offset_minutes) * MINUTE
    }
}

impl fmt::Display for LocalDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.naive_ms.div_euclid(DAY);
        let rest = self.naive_ms.rem_euclid(DAY);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rest / HOUR,
            rest % HOUR / MINUTE,
            rest % MINUTE / SECOND
        )
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms (public domain), days relative to 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// When an optional rollout becomes required. One explicit time model, shown everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineRule {
    /// An absolute instant (from RFC 3339 with offset).
    At(i64),
    /// A wall-clock time read in each workstation's time zone.
    Local(LocalDateTime),
    /// A span counted from when each workstation was first offered the update.
    After(i64),
}

impl DeadlineRule {
    /// The instant the deadline falls for one workstation; `None` when it is counted from a first
    /// offer that has not happened yet.
    pub fn instant(self, utc_offset_minutes: i32, first_offered_at: Option<i64>) -> Option<i64> {
        match self {
            DeadlineRule::At(at) => Some(at),
            DeadlineRule::Local(local) => Some(local.at_offset(utc_offset_minutes)),
            DeadlineRule::After(span) => first_offered_at.map(|first| first.saturating_add(span)),
        }
    }
}

/// Days and hours, in local time, when unattended installs may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Monday = 0 … Sunday = 6; `days[i]` is true when the window opens on that day.
    days: [bool; 7],
    /// Minutes after midnight; `end <= start` means the window runs past midnight.
    start: i64,
    end: i64,
    text: String,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl MaintenanceWindow {
    /// `Mon-Fri 22:00-06:00`, `Sat,Sun 00:00-24:00`, `daily 01:00-05:00`.
    pub fn parse(text: &str) -> Result<Self, RolloutRuleError> {
        let fail = || RolloutRuleError::Window(text.chars().take(60).collect());
        let (days_text, hours_text) = text.trim().split_once(' ').ok_or_else(fail)?;
        let mut days = [false; 7];
        let day_index = |name: &str| DAY_NAMES.iter().position(|d| name.to_ascii_lowercase().starts_with(d));
        if days_text.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for part in days_text.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day_index(a).ok_or_else(fail)?, day_index(b).ok_or_else(fail)?);
                        let mut i = a;
                        loop {
                            days[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => days[day_index(part).ok_or_else(fail)?] = true,
                }
            }
        }
        let (from, to) = hours_text.trim().split_once('-').ok_or_else(fail)?;
        let minutes = |hm: &str| -> Result<i64, RolloutRuleError> {
            let (h, m) = hm.trim().split_once(':').ok_or_else(fail)?;
            let (h, m): (i64, i64) = (h.parse().map_err(|_| fail())?, m.parse().map_err(|_| fail())?);
            if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
                return Err(fail());
            }
            Ok(h * 60 + m)
        };
        let (start, end) = (minutes(from)?, minutes(to)?);
        if start == end || start == 24 * 60 {
            return Err(fail());
        }
        Ok(MaintenanceWindow {
            days,
            start,
            end,
            text: text.trim().to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the window is open at `now` on a workstation `utc_offset_minutes` from UTC.
    pub fn is_open(&self, now: i64, utc_offset_minutes: i32) -> bool {
        let local = now + i64::from(utc_offset_minutes) * MINUTE;
        let day = local.div_euclid(DAY);
        let minute = local.rem_euclid(DAY) / MINUTE;
        // 1970-01-01 was a Thursday (index 3).
        let weekday = |d: i64| (d + 3).rem_euclid(7) as usize;
        if self.end > self.start {
            self.days[weekday(day)] && minute >= self.start && minute < self.end
        } else {
            // Past midnight: the evening part belongs to today, the morning part to yesterday.
            (self.days[weekday(day)] && minute >= self.start) || (self.days[weekday(day - 1)] && minute < self.end)
        }
    }

    /// The next instant at or after `now` when the window is open (minute precision).
    pub fn next_open(&self, now: i64, utc_offset_minutes: i32) -> i64 {
        if self.is_open(now, utc_offset_minutes) {
            return now;
        }
        let offset = i64::from(utc_offset_minutes) * MINUTE;
        let local = now + offset;
        let today = local.div_euclid(DAY);
        (0..=8)
            .map(|d| (today + d) * DAY + self.start * MINUTE - offset)
            .find(|&candidate| candidate >= now && self.is_open(candidate, utc_offset_minutes))
            .unwrap_or(now)
    }
}

/// Waves: cumulative percentages of the targeted workstations, e.g. `[5, 25, 100]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WavePlan {
    pub percents: Vec<u32>,
    /// How long a wave runs before the next may open.
    pub soak_ms: i64,
    /// Above this share of failures among finished installs, the rollout pauses itself.
    pub max_failure_ratio: f64,
    /// Failures are judged only once this many workstations have finished.
    pub min_sample: u32,
}

impl WavePlan {
    pub fn parse_percents(text: &str) -> Result<Vec<u32>, RolloutRuleError> {
        let fail = || RolloutRuleError::Waves(text.chars().take(60).collect());
        let percents: Vec<u32> = text
            .split(',')
            .map(|p| p.trim().trim_end_matches('%').parse::<u32>().map_err(|_| fail()))
            .collect::<Result<_, _>>()?;
        Self::check_percents(&percents).map_err(|_| fail())?;
        Ok(percents)
    }

    pub fn check_percents(percents: &[u32]) -> Result<(), RolloutRuleError> {
        let text = || percents.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        if percents.is_empty()
            || percents.len() > 20
            || percents.last() != Some(&100)
            || percents.windows(2).any(|w| w[0] >= w[1])
            || percents[0] == 0
        {
            return Err(RolloutRuleError::Waves(text()));
        }
        Ok(())
    }

    pub fn check_ratio(ratio: f64) -> Result<(), RolloutRuleError> {
        if (0.0..=1.0).contains(&ratio) {
            Ok(())
        } else {
            Err(RolloutRuleError::Ratio(ratio.to_string()))
        }
    }
}

/// A workstation's place in a rollout: a stable 64-bit hash of the rollout id and the
/// workstation id, so its wave never moves, and different per rollout, so the same machines are
/// not always first.
pub fn placement(rollout_id: i64, workstation_id: &str) -> u64 {
    // FNV-1a: tiny, stable across versions and platforms (unlike std's hasher).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rollout_id.to_le_bytes().iter().chain(workstation_id.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the high bits down; FNV's low bits alone are weak for short keys.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash
}

/// The placement boundaries between waves, fixed when a rollout is created: wave `i` holds the
/// placements below `cuts[i]` (and at or above `cuts[i-1]`); the last wave holds the rest.
///
/// Cutting the targeted fleet's sorted placements (rather than the hash range) makes each wave
/// exactly its share of that fleet — 5% of 40 machines is 2, never 0 by chance — while every
/// workstation's wave still follows from its own stable placement, so it never moves. Machines
/// enrolled later fall into waves by the same cuts, in proportion on average.
pub fn wave_cuts(percents: &[u32], mut placements: Vec<u64>) -> Vec<u64> {
    let inner = &percents[..percents.len().saturating_sub(1)];
    if placements.is_empty() {
        // Nothing to cut yet: split the hash range itself.
        let step = u64::MAX / 100;
        return inner.iter().map(|p| step * u64::from(*p)).collect();
    }
    placements.sort_unstable();
    let n = placements.len() as u64;
    inner
        .iter()
        // Round up so a non-empty wave share never rounds down to nobody.
        .map(|p| (n * u64::from(*p)).div_ceil(100))
        .map(|k| {
            usize::try_from(k)
                .ok()
                .and_then(|k| placements.get(k))
                .copied()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// The wave (0-based) of a placement under a rollout's cuts.
pub fn wave_by_cuts(cuts: &[u64], placement: u64) -> u32 {
    cuts.iter().position(|cut| placement < *cut).unwrap_or(cuts.len()) as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Scheduled,
    Active,
    Paused,
    Completed,
    Cancelled,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Scheduled => "scheduled",
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Scheduled,
            Self::Active,
            Self::Paused,
            Self::Completed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    /// Whether it delivers updates at `now`, given its start. A completed rollout still serves
    /// workstations that join its targets later.
    pub fn delivers(self, starts_at: i64, now: i64) -> bool {
        matches!(
            self,
            RolloutState::Scheduled | RolloutState::Active | RolloutState::Completed
        ) && now >= starts_at
    }

    pub fn pause(self) -> Option<Self> {
        matches!(self, RolloutState::Scheduled | RolloutState::Active).then_some(RolloutState::Paused)
    }

    pub fn resume(self) -> Option<Self> {
        (self == RolloutState::Paused).then_some(RolloutState::Active)
    }

    pub fn cancel(self) -> Option<Self> {
        matches!(
            self,
            RolloutState::Scheduled | RolloutState::Active | RolloutState::Paused
        )
        .then_some(RolloutState::Cancelled)
    }
}

/// How the workstations of the opened waves are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveStats {
    pub installed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaveStep {
    Nothing,
    /// Open the wave with this (0-based) index.
    Open(u32),
    /// Too many failures: pause, with the ratio seen.
    Pause {
        ratio: f64,
    },
}

/// Decides what happens to a rollout's waves now. `opened` waves are open (at least 1), the last
/// one since `opened_at`; `stats` covers the workstations of the opened waves.
pub fn next_wave_step(plan: &WavePlan, opened: u32, opened_at: i64, now: i64, stats: WaveStats) -> WaveStep {
    let finished = stats.installed + stats.failed;
    if finished >= u64::from(plan.min_sample.max(1)) {
        let ratio = stats.failed as f64 / finished as f64;
        if ratio > plan.max_failure_ratio {
            return WaveStep::Pause { ratio };
        }
    }
    if (opened as usize) < plan.percents.len() && now >= opened_at.saturating_add(plan.soak_ms) {
        return WaveStep::Open(opened);
    }
    WaveStep::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("7d"), Ok(7 * DAY));
        assert_eq!(parse_duration("1h30m"), Ok(90 * MINUTE));
        for bad in ["", "5", "m", "-5m", "5x", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(90 * MINUTE), "1h30m");
        assert_eq!(format_duration(2 * DAY + 3 * HOUR), "2d3h");
    }

    #[test]
    fn local_times() {
        let t = LocalDateTime::parse("2026-12-01T18:00").unwrap();
        assert_eq!(t.to_string(), "2026-12-01T18:00:00");
        // 18:00 in UTC-3 is 21:00 UTC.
        assert_eq!(t.at_offset(-180) - t.at_offset(0), 3 * HOUR);
        assert_eq!(t.at_offset(0), 1_796_148_000_000);
        assert!(LocalDateTime::parse("2026-02-30T10:00").is_err());
        assert!(LocalDateTime::parse("2026-12-01").is_err());
        assert!(LocalDateTime::parse("2024-02-29 23:59:59").is_ok());
    }

    #[test]
    fn windows() {
        let w = MaintenanceWindow::parse("Mon-Fri 22:00-06:00").unwrap();
        // 2026-11-23 is a Monday. 23:00 UTC Monday: open. 12:00 Monday: closed.
        let monday = LocalDateTime::parse("2026-11-23T00:00").unwrap().at_offset(0);
        assert!(w.is_open(monday + 23 * HOUR, 0));
        assert!(!w.is_open(monday + 12 * HOUR, 0));
        // Saturday 03:00 is still Friday night's window; Sunday 03:00 is not.
        assert!(w.is_open(monday + 5 * DAY + 3 * HOUR, 0));
        assert!(!w.is_open(monday + 6 * DAY + 3 * HOUR, 0));
        // Monday 03:00 belongs to Sunday night: closed.
        assert!(!w.is_open(monday + 3 * HOUR, 0));
        // In UTC-3, 23:00 local on Monday is 02:00 UTC Tuesday.
        assert!(w.is_open(monday + 26 * HOUR, -180));
        assert_eq!(w.next_open(monday + 12 * HOUR, 0), monday + 22 * HOUR);
        assert_eq!(w.next_open(monday + 6 * DAY, 0), monday + 7 * DAY + 22 * HOUR);
        assert!(
            MaintenanceWindow::parse("Sat,Sun 00:00-24:00")
                .unwrap()
                .is_open(monday - HOUR, 0)
        );
        assert!(
            MaintenanceWindow::parse("daily 01:00-05:00")
                .unwrap()
                .is_open(monday + 2 * HOUR, 0)
        );
        for bad in ["Mon-Fri", "Xyz 10:00-11:00", "Mon 25:00-26:00", "Mon 10:00-10:00"] {
            assert!(MaintenanceWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wave_plans() {
        assert_eq!(WavePlan::parse_percents("5,25,100"), Ok(vec![5, 25, 100]));
        assert_eq!(WavePlan::parse_percents("100"), Ok(vec![100]));
        for bad in ["", "5,25", "25,5,100", "0,100", "5,5,100", "a,100"] {
            assert!(WavePlan::parse_percents(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states() {
        use RolloutState::*;
        assert_eq!(Active.pause(), Some(Paused));
        assert_eq!(Paused.resume(), Some(Active));
        assert_eq!(Completed.cancel(), None);
        assert_eq!(Cancelled.resume(), None);
        assert!(Scheduled.delivers(10, 10));
        assert!(!Scheduled.delivers(10, 9));
        assert!(!Paused.delivers(0, 10));
    }

    #[test]
    fn wave_steps() {
        let plan = WavePlan {
            percents: vec![5, 25, 100],
            soak_ms: 1000,
            max_failure_ratio: 0.2,
            min_sample: 3,
        };
        let ok = WaveStats {
            installed: 10,
            failed: 1,
        };
        assert_eq!(next_wave_step(&plan, 1, 0, 999, ok), WaveStep::Nothing);
        assert_eq!(next_wave_step(&plan, 1, 0, 1000, ok), WaveStep::Open(1));
        assert_eq!(next_wave_step(&plan, 3, 0, 5000, ok), WaveStep::Nothing);
        // One early failure is not enough to judge.
        assert_eq!(
            next_wave_step(
                &plan,
                1,
                0,
                1000,
                WaveStats {
                    installed: 0,
                    failed: 1
                }
            ),
            WaveStep::Open(1)
        );
        assert!(matches!(
            next_wave_step(
                &plan,
                1,
                0,
                10,
                WaveStats {
                    installed: 1,
                    failed: 2
                }
            ),
            WaveStep::Pause { .. }
        ));
    }

    #[test]
    fn cuts_give_each_wave_its_exact_share() {
        let fleet: Vec<String> = (0..10_000).map(|i| format!("ws-{i}")).collect();
        let places: Vec<u64> = fleet.iter().map(|ws| placement(7, ws)).collect();
        let cuts = wave_cuts(&[5, 25, 100], places.clone());
        let mut sizes = [0u32; 3];
        for p in &places {
            sizes[wave_by_cuts(&cuts, *p) as usize] += 1;
        }
        assert_eq!(sizes, [500, 2000, 7500]);
        // A small fleet still gets a first wave.
        let few: Vec<u64> = fleet[..10].iter().map(|ws| placement(7, ws)).collect();
        let cuts = wave_cuts(&[5, 25, 100], few.clone());
        let first = few.iter().filter(|p| wave_by_cuts(&cuts, **p) == 0).count();
        assert_eq!(first, 1);
        // No fleet yet: the hash range is split by the shares.
        let cuts = wave_cuts(&[50, 100], Vec::new());
        assert_eq!(wave_by_cuts(&cuts, 0), 0);
        assert_eq!(wave_by_cuts(&cuts, u64::MAX), 1);
        assert!(wave_cuts(&[100], vec![1, 2, 3]).is_empty());
    }

    proptest! {
        #[test]
        fn cut_waves_are_stable_and_ordered(ids in proptest::collection::vec("[a-z0-9-]{1,20}", 1..200), extra in "[a-z0-9-]{1,20}") {
            let places: Vec<u64> = ids.iter().map(|ws| placement(3, ws)).collect();
            let cuts = wave_cuts(&[5, 25, 100], places.clone());
            prop_assert!(cuts.windows(2).all(|w| w[0] <= w[1]));
            // A machine enrolled later is placed by the same cuts and moves no one else.
            let again = wave_cuts(&[5, 25, 100], places.clone());
            prop_assert_eq!(&cuts, &again);
            prop_assert!(wave_by_cuts(&cuts, placement(3, &extra)) <= 2);
        }

        #[test]
        fn local_dates_round_trip(days in 0i64..2_900_000, minutes in 0i64..1440) {
            let t = LocalDateTime { naive_ms: days * DAY + minutes * MINUTE };
            prop_assert_eq!(LocalDateTime::parse(&t.to_string()), Ok(t));
        }
    }
}
