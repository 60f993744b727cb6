//! Evaluation of policy conditions against a request context.
//!
//! # Time zones and daylight saving time
//!
//! Windows are wall-clock times in their own time zone, and the weekday is
//! the local weekday. Window boundaries are turned into instants like this:
//!
//! * A boundary in a DST gap (a local time that does not exist, such as 02:30
//!   on the spring-forward day in Europe/Berlin) maps to the first instant
//!   after the gap (03:00 local time), for starts and ends alike.
//! * A boundary in a DST fold (a local time that happens twice, such as 02:30
//!   on the fall-back day in Europe/Berlin) maps to the EARLIER instant when
//!   it starts a window and to the LATER instant when it ends one. A window
//!   therefore covers every instant whose local time lies inside it, and
//!   windows that touch in local time touch in real time too.
//!
//! Touching or overlapping windows of one condition are merged, so
//! [`Decision::Allow::until`] is the instant access really ends.

use std::cmp::{max, min};
use std::fmt;
use std::net::IpAddr;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;
use ipnet::IpNet;

use crate::condition::{Condition, DayWindow, IpOperator, TimeWindow, WindowEnd};

/// How far ahead [`DenyReason::OutsideTimeWindow::next_start`] is searched.
pub const NEXT_START_HORIZON: TimeDelta = TimeDelta::days(8);

/// What is known about a request when its policy is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalContext {
    pub source_ip: Option<IpAddr>,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Access is allowed. `until` is when the time-window conditions stop
    /// allowing it, or `None` if they never do (or there are none).
    Allow {
        until: Option<DateTime<Utc>>,
    },
    Deny(DenyReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    SourceIpNotAllowed {
        ip: Option<IpAddr>,
    },
    /// `next_start` is when the time-window conditions next allow access,
    /// if that is within [`NEXT_START_HORIZON`].
    OutsideTimeWindow {
        next_start: Option<DateTime<Utc>>,
    },
}

/// Evaluates `conditions`, which must all hold.
///
/// Source IP conditions are checked before time windows, so a request that
/// fails both is told about its address rather than about a window it could
/// not use anyway. Windows that fail [`DayWindow::validate`] match nothing.
pub fn evaluate(conditions: &[Condition], ctx: &EvalContext) -> Decision {
    for condition in conditions {
        if let Condition::SourceIp { operator, ranges } = condition {
            if !source_ip_allowed(*operator, ranges, ctx.source_ip) {
                return Decision::Deny(DenyReason::SourceIpNotAllowed { ip: ctx.source_ip });
            }
        }
    }
    let mut until = None;
    for window in time_windows(conditions) {
        match current_span_end(window, ctx.now) {
            Presence::Inside { until: Some(end) } => {
                until = Some(until.map_or(end, |u: DateTime<Utc>| min(u, end)));
            }
            Presence::Inside { until: None } => {}
            Presence::Outside => {
                return Decision::Deny(DenyReason::OutsideTimeWindow {
                    next_start: next_start(conditions, ctx.now),
                })
            }
        }
    }
    Decision::Allow { until }
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::SourceIpNotAllowed { ip: Some(ip) } => {
                write!(
                    f,
                    "Access from your IP address {ip} is not allowed by this policy."
                )
            }
            DenyReason::SourceIpNotAllowed { ip: None } => {
                f.write_str("Access is denied because your IP address could not be determined.")
            }
            DenyReason::OutsideTimeWindow {
                next_start: Some(at),
            } => write!(
                f,
                "Access is only allowed during set hours; it opens again at {} UTC.",
                at.format("%Y-%m-%d %H:%M:%S")
            ),
            DenyReason::OutsideTimeWindow { next_start: None } => f.write_str(
                "Access is only allowed during set hours, and it does not open again \
                 within the next 8 days.",
            ),
        }
    }
}

/// A half-open interval of instants, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

enum Presence {
    Outside,
    Inside { until: Option<DateTime<Utc>> },
}

#[derive(Clone, Copy)]
enum Fold {
    Earlier,
    Later,
}

fn source_ip_allowed(operator: IpOperator, ranges: &[IpNet], ip: Option<IpAddr>) -> bool {
    let Some(ip) = ip else {
        return false;
    };
    // An IPv4-mapped IPv6 address is the IPv4 host; matching only one form
    // would let `not_in` be bypassed.
    let canonical = ip.to_canonical();
    let inside = ranges
        .iter()
        .any(|range| range.contains(&ip) || range.contains(&canonical));
    match operator {
        IpOperator::In => inside,
        IpOperator::NotIn => !inside,
    }
}

fn time_windows(conditions: &[Condition]) -> impl Iterator<Item = &TimeWindow> {
    conditions.iter().filter_map(|c| match c {
        Condition::TimeWindow(window) => Some(window),
        Condition::SourceIp { .. } => None,
    })
}

/// Whether `now` is inside `window`, and if so when the merged span ends.
/// A span lasting past the search horizon covers every hour of the week, so
/// it never ends.
fn current_span_end(window: &TimeWindow, now: DateTime<Utc>) -> Presence {
    let Some(horizon) = now.checked_add_signed(NEXT_START_HORIZON) else {
        return Presence::Outside;
    };
    let Some(spans) = covered_spans(window, now, horizon) else {
        return Presence::Outside;
    };
    match spans.iter().find(|s| s.start <= now && now < s.end) {
        None => Presence::Outside,
        Some(span) if span.end >= horizon => Presence::Inside { until: None },
        Some(span) => Presence::Inside {
            until: Some(span.end),
        },
    }
}

/// The first instant after `now` within the horizon at which every time
/// window condition holds.
fn next_start(conditions: &[Condition], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let horizon = now.checked_add_signed(NEXT_START_HORIZON)?;
    let mut allowed: Option<Vec<Span>> = None;
    for window in time_windows(conditions) {
        let spans = covered_spans(window, now, horizon)?;
        allowed = Some(match allowed {
            None => spans,
            Some(previous) => intersect(&previous, &spans),
        });
    }
    allowed?
        .into_iter()
        .map(|s| s.start)
        .find(|start| *start > now && *start <= horizon)
}

/// The merged spans of `window` that can overlap `[from, to]`, sorted and
/// neither touching nor overlapping. `None` if the dates leave chrono's range.
fn covered_spans(window: &TimeWindow, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Vec<Span>> {
    let tz = window.timezone;
    // A window reaches at most into the day after it starts, and a span
    // started two local days before `from` cannot reach it.
    let first = local_time(tz, from)?
        .date()
        .checked_sub_days(Days::new(2))?;
    let last = local_time(tz, to)?.date().checked_add_days(Days::new(1))?;
    let mut spans = Vec::new();
    let valid: Vec<&DayWindow> = window
        .windows
        .iter()
        .filter(|w| w.validate().is_ok())
        .collect();
    let mut date = first;
    while date <= last {
        for day_window in &valid {
            if day_window.days.contains(date.weekday()) {
                if let Some(span) = span_on(tz, day_window, date)? {
                    spans.push(span);
                }
            }
        }
        date = date.checked_add_days(Days::new(1))?;
    }
    Some(merge(spans))
}

/// The instants `window` covers when it starts on local date `date`; the
/// inner `None` if DST swallows the whole window.
fn span_on(tz: Tz, window: &DayWindow, date: NaiveDate) -> Option<Option<Span>> {
    let next_day = || date.checked_add_days(Days::new(1));
    let end = match window.end {
        WindowEnd::EndOfDay => next_day()?.and_time(NaiveTime::MIN),
        WindowEnd::At(end) if end > window.start => date.and_time(end),
        WindowEnd::At(end) => next_day()?.and_time(end),
    };
    let start = to_instant(tz, date.and_time(window.start), Fold::Earlier)?;
    let end = to_instant(tz, end, Fold::Later)?;
    Some((start < end).then_some(Span { start, end }))
}

fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| s.start);
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = max(last.end, span.end),
            _ => merged.push(span),
        }
    }
    merged
}

fn intersect(a: &[Span], b: &[Span]) -> Vec<Span> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let start = max(x.start, y.start);
        let end = min(x.end, y.end);
        if start < end {
            out.push(Span { start, end });
        }
        if x.end < y.end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Maps a local wall-clock time to an instant using the module's DST rule.
fn to_instant(tz: Tz, local: NaiveDateTime, fold: Fold) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(earlier, later) => Some(
            match fold {
                Fold::Earlier => earlier,
                Fold::Later => later,
            }
            .with_timezone(&Utc),
        ),
        chrono::LocalResult::None => first_instant_not_before(tz, local),
    }
}

/// The first instant whose local time is at or after `local`; for a time in
/// a DST gap that is the end of the gap.
fn first_instant_not_before(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // UTC offsets stay well within ±36 hours, which brackets the answer.
    const BRACKET: i64 = 36 * 3600;
    let guess = local.and_utc().timestamp();
    let (mut lo, mut hi) = (guess.checked_sub(BRACKET)?, guess.checked_add(BRACKET)?);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_time(tz, DateTime::from_timestamp(mid, 0)?)? >= local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// Local wall-clock time of `instant` in `tz`, without chrono's panic when it
/// leaves the representable range.
fn local_time(tz: Tz, instant: DateTime<Utc>) -> Option<NaiveDateTime> {
    let utc = instant.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
}
