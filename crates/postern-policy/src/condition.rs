//! Policy conditions: who (source IP) and when (time windows) a policy
//! applies.
//!
//! JSON forms accepted and produced by the REST API:
//!
//! ```json
//! {"property":"source_ip","operator":"in","values":["10.0.0.0/8","192.168.1.7"]}
//! {"property":"time_window","values":["Mon-Fri 09:00-17:00 Europe/Berlin"]}
//! ```
//!
//! A window spec is `<days> <HH:MM>-<HH:MM> <IANA time zone>`. Days are
//! `Mon`..`Sun` (case-insensitive, full names accepted), wrapping ranges such
//! as `Fri-Mon`, comma lists such as `Mon,Wed,Fri`, or `Daily` / `*`. The end
//! may be `24:00`; an end earlier than the start means the window runs past
//! midnight into the next day.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{NaiveTime, Timelike, Weekday};
use chrono_tz::Tz;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::json::Object;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// One condition of a policy. A policy's conditions must all hold; the values
/// within one condition are alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Object<ConditionRepr>", into = "ConditionRepr")]
pub enum Condition {
    /// `In`: the source address lies in one of `ranges`. `NotIn`: it lies in
    /// none of them. An unknown source address fails both.
    SourceIp {
        operator: IpOperator,
        ranges: Vec<IpNet>,
    },
    /// The current instant lies in one of the windows.
    TimeWindow(TimeWindow),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpOperator {
    In,
    NotIn,
}

/// Weekly recurring windows, all interpreted in one time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    pub timezone: Tz,
    pub windows: Vec<DayWindow>,
}

/// A window starting at `start` local time on each of `days`. If `end` is
/// not after `start` the window ends on the following day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DayWindow {
    pub days: DaySet,
    pub start: NaiveTime,
    pub end: WindowEnd,
}

/// The end of a [`DayWindow`]: a wall-clock time or the end of the start day
/// (`24:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowEnd {
    At(NaiveTime),
    EndOfDay,
}

/// A set of weekdays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DaySet(u8);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("unknown time zone '{0}'")]
    UnknownTimeZone(String),
    #[error("'{0}' is not a day or day range")]
    InvalidDays(String),
    #[error("'{0}' is not a time of day (expected HH:MM)")]
    InvalidTime(String),
    #[error("'{0}' is not a time range (expected HH:MM-HH:MM)")]
    InvalidTimeRange(String),
    #[error("a window cannot start at 24:00 (in '{0}')")]
    StartsAtEndOfDay(String),
    #[error("time window '{0}' starts and ends at the same time")]
    EmptyWindow(String),
    #[error("window time {0} is not a whole minute")]
    NotWholeMinute(NaiveTime),
    #[error("a time window needs at least one day")]
    NoDays,
    #[error("'{0}' is not a time window (expected e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin')")]
    MalformedWindow(String),
    #[error(
        "all windows of one time_window condition must use the same time zone, \
         found '{first}' and '{other}'"
    )]
    MixedTimeZones { first: String, other: String },
    #[error("'{0}' is not an IP address or CIDR range")]
    InvalidIp(String),
    #[error("a {0} condition needs at least one value")]
    NoValues(&'static str),
    #[error("a source_ip condition needs an operator ('in' or 'not_in')")]
    MissingOperator,
    #[error("a time_window condition takes no operator")]
    UnexpectedOperator,
}

/// Parses one window spec such as `"Mon-Fri 09:00-17:00 Europe/Berlin"`.
pub fn parse_window_spec(s: &str) -> Result<(Tz, DayWindow), ConditionError> {
    let tokens: Vec<&str> = s.split_whitespace().collect();
    let malformed = || ConditionError::MalformedWindow(s.trim().to_owned());
    let (zone, rest) = tokens.split_last().ok_or_else(malformed)?;
    let (times, days) = rest.split_last().ok_or_else(malformed)?;
    if days.is_empty() {
        return Err(malformed());
    }
    let days: DaySet = days.join(" ").parse()?;
    let (start, end) = parse_time_range(times)?;
    let window = DayWindow { days, start, end };
    window.validate()?;
    Ok((parse_time_zone(zone)?, window))
}

/// The canonical spec of `window` in `tz`, the inverse of
/// [`parse_window_spec`].
pub fn format_window_spec(tz: Tz, window: &DayWindow) -> String {
    format!("{window} {}", tz.name())
}

impl Condition {
    pub fn validate(&self) -> Result<(), ConditionError> {
        match self {
            Condition::SourceIp { ranges, .. } if ranges.is_empty() => {
                Err(ConditionError::NoValues("source_ip"))
            }
            Condition::SourceIp { .. } => Ok(()),
            Condition::TimeWindow(window) => window.validate(),
        }
    }
}

impl TimeWindow {
    /// Builds a condition from window specs, which must all name the same
    /// time zone.
    pub fn from_specs<'a>(
        specs: impl IntoIterator<Item = &'a str>,
    ) -> Result<TimeWindow, ConditionError> {
        let mut result: Option<TimeWindow> = None;
        for spec in specs {
            let (tz, window) = parse_window_spec(spec)?;
            match &mut result {
                None => {
                    result = Some(TimeWindow {
                        timezone: tz,
                        windows: vec![window],
                    })
                }
                Some(tw) if tw.timezone == tz => tw.windows.push(window),
                Some(tw) => {
                    return Err(ConditionError::MixedTimeZones {
                        first: tw.timezone.name().to_owned(),
                        other: tz.name().to_owned(),
                    })
                }
            }
        }
        result.ok_or(ConditionError::NoValues("time_window"))
    }

    /// The canonical spec of every window, in order.
    pub fn specs(&self) -> Vec<String> {
        self.windows
            .iter()
            .map(|w| format_window_spec(self.timezone, w))
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConditionError> {
        if self.windows.is_empty() {
            return Err(ConditionError::NoValues("time_window"));
        }
        self.windows.iter().try_for_each(DayWindow::validate)
    }
}

impl DayWindow {
    pub fn validate(&self) -> Result<(), ConditionError> {
        if self.days.is_empty() {
            return Err(ConditionError::NoDays);
        }
        check_whole_minute(self.start)?;
        if let WindowEnd::At(end) = self.end {
            check_whole_minute(end)?;
            if end == self.start {
                return Err(ConditionError::EmptyWindow(self.to_string()));
            }
        }
        Ok(())
    }

    /// Whether the window ends on the day after the one it starts on
    /// (`24:00` counts as the start day).
    pub fn crosses_midnight(&self) -> bool {
        matches!(self.end, WindowEnd::At(end) if end <= self.start)
    }
}

impl fmt::Display for DayWindow {
    /// `"Mon-Fri 09:00-17:00"`, without the time zone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{}",
            self.days,
            self.start.format("%H:%M"),
            self.end
        )
    }
}

impl fmt::Display for WindowEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowEnd::At(time) => write!(f, "{}", time.format("%H:%M")),
            WindowEnd::EndOfDay => f.write_str("24:00"),
        }
    }
}

impl DaySet {
    pub const EMPTY: DaySet = DaySet(0);
    pub const ALL: DaySet = DaySet(0x7f);

    /// The days from `first` to `last` inclusive, wrapping past Sunday
    /// (`Fri..=Mon` is Friday, Saturday, Sunday and Monday).
    pub fn range(first: Weekday, last: Weekday) -> DaySet {
        let mut set = DaySet::EMPTY;
        let mut day = first;
        set.insert(day);
        while day != last {
            day = day.succ();
            set.insert(day);
        }
        set
    }

    pub fn contains(self, day: Weekday) -> bool {
        self.0 & day_bit(day) != 0
    }

    pub fn insert(&mut self, day: Weekday) {
        self.0 |= day_bit(day);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The days in the set, Monday first.
    pub fn iter(self) -> impl Iterator<Item = Weekday> {
        WEEK.into_iter().filter(move |day| self.contains(*day))
    }
}

impl FromIterator<Weekday> for DaySet {
    fn from_iter<I: IntoIterator<Item = Weekday>>(iter: I) -> Self {
        let mut set = DaySet::EMPTY;
        iter.into_iter().for_each(|day| set.insert(day));
        set
    }
}

impl From<Weekday> for DaySet {
    fn from(day: Weekday) -> Self {
        DaySet(day_bit(day))
    }
}

impl FromStr for DaySet {
    type Err = ConditionError;

    /// Parses `Daily`, `*`, or a comma list of days and (wrapping) day ranges.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "*" || s.eq_ignore_ascii_case("daily") {
            return Ok(DaySet::ALL);
        }
        let mut set = DaySet::EMPTY;
        for item in s.split(',').map(str::trim) {
            let invalid = || ConditionError::InvalidDays(item.to_owned());
            let days = match item.split_once('-') {
                Some((first, last)) => DaySet::range(
                    parse_day(first.trim()).ok_or_else(invalid)?,
                    parse_day(last.trim()).ok_or_else(invalid)?,
                ),
                None => DaySet::from(parse_day(item).ok_or_else(invalid)?),
            };
            set.0 |= days.0;
        }
        Ok(set)
    }
}

impl fmt::Display for DaySet {
    /// Canonical form: `Daily`, or runs of three or more consecutive days
    /// (Monday to Sunday) as ranges and other days listed, e.g. `Mon-Wed,Sat`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == DaySet::ALL {
            return f.write_str("Daily");
        }
        let mut parts = Vec::new();
        let mut i = 0;
        while i < WEEK.len() {
            if !self.contains(WEEK[i]) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < WEEK.len() && self.contains(WEEK[j + 1]) {
                j += 1;
            }
            if j - i >= 2 {
                parts.push(format!("{}-{}", day_name(WEEK[i]), day_name(WEEK[j])));
            } else {
                parts.extend((i..=j).map(|k| day_name(WEEK[k]).to_owned()));
            }
            i = j + 1;
        }
        f.write_str(&parts.join(","))
    }
}

impl PartialSchema for Condition {
    fn schema() -> RefOr<Schema> {
        ConditionRepr::schema()
    }
}

impl ToSchema for Condition {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Condition")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        ConditionRepr::schemas(schemas);
    }
}

const WEEK: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn day_bit(day: Weekday) -> u8 {
    1 << day.num_days_from_monday()
}

fn day_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Mon",
        Weekday::Tue => "Tue",
        Weekday::Wed => "Wed",
        Weekday::Thu => "Thu",
        Weekday::Fri => "Fri",
        Weekday::Sat => "Sat",
        Weekday::Sun => "Sun",
    }
}

fn parse_day(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Mon,
        "tue" | "tues" | "tuesday" => Weekday::Tue,
        "wed" | "weds" | "wednesday" => Weekday::Wed,
        "thu" | "thur" | "thurs" | "thursday" => Weekday::Thu,
        "fri" | "friday" => Weekday::Fri,
        "sat" | "saturday" => Weekday::Sat,
        "sun" | "sunday" => Weekday::Sun,
        _ => return None,
    })
}

fn parse_time_zone(s: &str) -> Result<Tz, ConditionError> {
    s.parse()
        .map_err(|_| ConditionError::UnknownTimeZone(s.to_owned()))
}

fn parse_time_range(s: &str) -> Result<(NaiveTime, WindowEnd), ConditionError> {
    let (start, end) = s
        .split_once('-')
        .ok_or_else(|| ConditionError::InvalidTimeRange(s.to_owned()))?;
    let start = match parse_clock(start)? {
        (24, 0) => return Err(ConditionError::StartsAtEndOfDay(s.to_owned())),
        (h, m) => clock_time(h, m, start)?,
    };
    let end = match parse_clock(end)? {
        (24, 0) => WindowEnd::EndOfDay,
        (h, m) => WindowEnd::At(clock_time(h, m, end)?),
    };
    Ok((start, end))
}

/// Parses `H:MM` or `HH:MM` into hour and minute without range checks beyond
/// the digit counts.
fn parse_clock(s: &str) -> Result<(u32, u32), ConditionError> {
    let invalid = || ConditionError::InvalidTime(s.to_owned());
    let (h, m) = s.split_once(':').ok_or_else(invalid)?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) || h.len() > 2 || m.len() != 2 {
        return Err(invalid());
    }
    Ok((
        h.parse().map_err(|_| invalid())?,
        m.parse().map_err(|_| invalid())?,
    ))
}

fn clock_time(hour: u32, minute: u32, text: &str) -> Result<NaiveTime, ConditionError> {
    NaiveTime::from_hms_opt(hour, minute, 0)
        .ok_or_else(|| ConditionError::InvalidTime(text.to_owned()))
}

fn check_whole_minute(time: NaiveTime) -> Result<(), ConditionError> {
    if time.second() != 0 || time.nanosecond() != 0 {
        return Err(ConditionError::NotWholeMinute(time));
    }
    Ok(())
}

fn parse_ip_range(s: &str) -> Result<IpNet, ConditionError> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ConditionError::InvalidIp(s.to_owned()))
}

/// Wire form of [`Condition`].
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "A policy condition. All conditions of a policy must hold; \
    the values of one condition are alternatives."
)]
struct ConditionRepr {
    #[schema(inline)]
    property: Property,
    /// Required for `source_ip`, not allowed for `time_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    operator: Option<IpOperator>,
    /// `source_ip`: IP addresses or CIDR ranges. `time_window`: window specs
    /// like `Mon-Fri 09:00-17:00 Europe/Berlin`, all in the same time zone.
    #[schema(example = json!(["Mon-Fri 09:00-17:00 Europe/Berlin"]))]
    values: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Property {
    SourceIp,
    TimeWindow,
}

impl TryFrom<Object<ConditionRepr>> for Condition {
    type Error = ConditionError;

    fn try_from(Object(repr): Object<ConditionRepr>) -> Result<Self, Self::Error> {
        repr.try_into()
    }
}

impl TryFrom<ConditionRepr> for Condition {
    type Error = ConditionError;

    fn try_from(repr: ConditionRepr) -> Result<Self, Self::Error> {
        let condition = match repr.property {
            Property::SourceIp => Condition::SourceIp {
                operator: repr.operator.ok_or(ConditionError::MissingOperator)?,
                ranges: repr
                    .values
                    .iter()
                    .map(|v| parse_ip_range(v))
                    .collect::<Result<_, _>>()?,
            },
            Property::TimeWindow => {
                if repr.operator.is_some() {
                    return Err(ConditionError::UnexpectedOperator);
                }
                Condition::TimeWindow(TimeWindow::from_specs(
                    repr.values.iter().map(String::as_str),
                )?)
            }
        };
        condition.validate()?;
        Ok(condition)
    }
}

impl From<Condition> for ConditionRepr {
    fn from(condition: Condition) -> Self {
        match condition {
            Condition::SourceIp { operator, ranges } => ConditionRepr {
                property: Property::SourceIp,
                operator: Some(operator),
                values: ranges.iter().map(IpNet::to_string).collect(),
            },
            Condition::TimeWindow(window) => ConditionRepr {
                property: Property::TimeWindow,
                operator: None,
                values: window.specs(),
            },
        }
    }
}
