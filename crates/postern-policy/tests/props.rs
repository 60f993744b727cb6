use std::net::IpAddr;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use chrono_tz::{Tz, TZ_VARIANTS};
use postern_policy::condition::{
    format_window_spec, parse_window_spec, Condition, DaySet, DayWindow, IpOperator, TimeWindow,
    WindowEnd,
};
use postern_policy::eval::{evaluate, Decision, DenyReason, EvalContext};
use proptest::prelude::*;

/// Zones with DST in either hemisphere, odd offsets, and none at all.
const ZONES: [Tz; 10] = [
    Tz::Europe__Berlin,
    Tz::America__New_York,
    Tz::Asia__Kolkata,
    Tz::Pacific__Auckland,
    Tz::Australia__Lord_Howe,
    Tz::America__Santiago,
    Tz::Asia__Kathmandu,
    Tz::Pacific__Chatham,
    Tz::America__St_Johns,
    Tz::UTC,
];

fn any_zone() -> impl Strategy<Value = Tz> {
    (0..TZ_VARIANTS.len()).prop_map(|i| TZ_VARIANTS[i])
}

fn dst_zone() -> impl Strategy<Value = Tz> {
    (0..ZONES.len()).prop_map(|i| ZONES[i])
}

fn minute_time(minute: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(minute / 60, minute % 60, 0).unwrap()
}

fn day_window() -> impl Strategy<Value = DayWindow> {
    (1u8..=127, 0u32..1440, 1u32..1440).prop_map(|(bits, start, length)| {
        let days = (0..7)
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| chrono::Weekday::try_from(i as u8).unwrap())
            .collect::<DaySet>();
        let end_minute = start + length;
        let end = if end_minute == 1440 {
            WindowEnd::EndOfDay
        } else {
            WindowEnd::At(minute_time(end_minute % 1440))
        };
        DayWindow {
            days,
            start: minute_time(start),
            end,
        }
    })
}

/// Instants from 1990 to 2060, whole seconds.
fn modern_instant() -> impl Strategy<Value = DateTime<Utc>> {
    (631_152_000i64..2_871_763_200).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
}

/// Instants in the 2026 DST change seasons of every zone in [`ZONES`].
fn dst_season_instant() -> impl Strategy<Value = DateTime<Utc>> {
    let march = 1_772_323_200i64; // 2026-03-01
    let september = 1_788_220_800i64; // 2026-09-01
    prop_oneof![
        march..march + 45 * 86_400,
        september..september + 75 * 86_400
    ]
    .prop_map(|s| DateTime::from_timestamp(s - s % 60, 0).unwrap())
}

fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
    (
        DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
        0u32..1_000_000_000,
    )
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap_or(DateTime::<Utc>::MIN_UTC))
}

fn time_condition(zone: impl Strategy<Value = Tz>) -> impl Strategy<Value = Condition> {
    (zone, prop::collection::vec(day_window(), 1..4))
        .prop_map(|(timezone, windows)| Condition::TimeWindow(TimeWindow { timezone, windows }))
}

fn at(conditions: &[Condition], now: DateTime<Utc>) -> Decision {
    evaluate(
        conditions,
        &EvalContext {
            source_ip: Some(IpAddr::from([192, 0, 2, 1])),
            now,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn window_spec_round_trips(tz in any_zone(), window in day_window()) {
        let spec = format_window_spec(tz, &window);
        prop_assert_eq!(parse_window_spec(&spec), Ok((tz, window)), "{}", spec);
    }

    #[test]
    fn condition_json_round_trips(condition in time_condition(any_zone())) {
        let json = serde_json::to_string(&condition).unwrap();
        let back: Condition = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, condition);
    }

    #[test]
    fn evaluate_never_panics(
        conditions in prop::collection::vec(time_condition(any_zone()), 0..3),
        now in any_instant(),
        ip in prop::option::of(any::<[u8; 4]>().prop_map(IpAddr::from)),
        operator in prop_oneof![Just(IpOperator::In), Just(IpOperator::NotIn)],
    ) {
        let mut conditions = conditions;
        conditions.push(Condition::SourceIp { operator, ranges: vec!["10.0.0.0/8".parse().unwrap()] });
        let _ = evaluate(&conditions, &EvalContext { source_ip: ip, now });
        let _ = evaluate(&conditions[..conditions.len() - 1], &EvalContext { source_ip: ip, now });
    }

    #[test]
    fn until_is_a_sharp_boundary(
        conditions in prop::collection::vec(time_condition(dst_zone()), 1..3),
        now in prop_oneof![modern_instant(), dst_season_instant()],
    ) {
        match at(&conditions, now) {
            Decision::Allow { until: Some(until) } => {
                prop_assert!(until > now);
                let last = until - TimeDelta::seconds(1);
                prop_assert!(at(&conditions, last).is_allowed(), "not allowed at {}", last);
                prop_assert!(!at(&conditions, until).is_allowed(), "still allowed at {}", until);
            }
            Decision::Allow { until: None } => {
                for days in 1..=8 {
                    let later = now + TimeDelta::days(days) - TimeDelta::minutes(days * 37);
                    prop_assert!(at(&conditions, later).is_allowed(), "ended before {}", later);
                }
            }
            Decision::Deny(DenyReason::OutsideTimeWindow { next_start: Some(next) }) => {
                prop_assert!(next > now);
                prop_assert!(next <= now + TimeDelta::days(8));
                prop_assert!(at(&conditions, next).is_allowed(), "not open at {}", next);
                let before = next - TimeDelta::seconds(1);
                prop_assert!(!at(&conditions, before).is_allowed(), "open before {}", before);
            }
            Decision::Deny(DenyReason::OutsideTimeWindow { next_start: None }) => {
                for hours in 0..=(8 * 24) {
                    let later = now + TimeDelta::hours(hours);
                    prop_assert!(!at(&conditions, later).is_allowed(), "open at {}", later);
                }
            }
            Decision::Deny(reason) => prop_assert!(false, "unexpected {:?}", reason),
        }
    }
}

#[test]
fn evaluate_survives_the_ends_of_time() {
    let conditions = [Condition::TimeWindow(
        TimeWindow::from_specs(["Daily 23:00-01:00 Pacific/Kiritimati"]).unwrap(),
    )];
    for now in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
        assert_eq!(
            at(&conditions, now),
            Decision::Deny(DenyReason::OutsideTimeWindow { next_start: None })
        );
    }
}
