use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use postern_policy::condition::{Condition, IpOperator, TimeWindow};
use postern_policy::eval::{evaluate, Decision, DenyReason, EvalContext};

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn windows(specs: &[&str]) -> Condition {
    Condition::TimeWindow(TimeWindow::from_specs(specs.iter().copied()).unwrap())
}

fn source(operator: IpOperator, ranges: &[&str]) -> Condition {
    Condition::SourceIp {
        operator,
        ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
    }
}

fn decide(conditions: &[Condition], now: &str) -> Decision {
    evaluate(
        conditions,
        &EvalContext {
            source_ip: Some(ip("192.0.2.10")),
            now: utc(now),
        },
    )
}

/// Asserts the spec allows at `now` until exactly `until`, and that the
/// boundary is sharp: allowed one second before, not allowed at it.
fn assert_allowed_until(spec: &str, now: &str, until: &str) {
    let conditions = [windows(&[spec])];
    assert_eq!(
        decide(&conditions, now),
        Decision::Allow {
            until: Some(utc(until))
        },
        "{spec} at {now}"
    );
    let before = (utc(until) - TimeDelta::seconds(1)).to_rfc3339();
    assert!(
        decide(&conditions, &before).is_allowed(),
        "{spec} at {before}"
    );
    assert!(
        !decide(&conditions, until).is_allowed(),
        "{spec} at {until}"
    );
}

/// Asserts the spec denies at `now` and opens at exactly `next`.
fn assert_denied_until(spec: &str, now: &str, next: Option<&str>) {
    let conditions = [windows(&[spec])];
    assert_eq!(
        decide(&conditions, now),
        Decision::Deny(DenyReason::OutsideTimeWindow {
            next_start: next.map(utc)
        }),
        "{spec} at {now}"
    );
    if let Some(next) = next {
        assert!(decide(&conditions, next).is_allowed(), "{spec} at {next}");
        let before = (utc(next) - TimeDelta::seconds(1)).to_rfc3339();
        assert!(
            !decide(&conditions, &before).is_allowed(),
            "{spec} at {before}"
        );
    }
}

#[test]
fn no_conditions_allow_forever() {
    assert_eq!(
        decide(&[], "2026-01-05T10:00:00Z"),
        Decision::Allow { until: None }
    );
}

#[test]
fn berlin_office_hours_winter_and_summer() {
    let spec = "Mon-Fri 09:00-17:00 Europe/Berlin";
    // 2026-01-05 is a Monday; CET is UTC+1.
    assert_allowed_until(spec, "2026-01-05T08:00:00Z", "2026-01-05T16:00:00Z");
    assert_denied_until(spec, "2026-01-05T07:59:59Z", Some("2026-01-05T08:00:00Z"));
    // Friday evening: next start is Monday.
    assert_denied_until(spec, "2026-01-09T16:00:00Z", Some("2026-01-12T08:00:00Z"));
    // 2026-07-06 is a Monday; CEST is UTC+2.
    assert_allowed_until(spec, "2026-07-06T07:00:00Z", "2026-07-06T15:00:00Z");
    assert_denied_until(spec, "2026-07-06T06:30:00Z", Some("2026-07-06T07:00:00Z"));
}

#[test]
fn weekday_is_taken_in_the_window_zone() {
    let spec = "Mon 00:00-01:00 Europe/Berlin";
    // Sunday 23:30 UTC is Monday 00:30 in Berlin.
    assert_allowed_until(spec, "2026-01-04T23:30:00Z", "2026-01-05T00:00:00Z");
    // Monday 00:30 UTC is Monday 01:30 in Berlin: outside.
    assert_denied_until(spec, "2026-01-05T00:30:00Z", Some("2026-01-11T23:00:00Z"));
}

#[test]
fn window_crossing_midnight() {
    let spec = "Fri 22:00-02:00 Europe/Berlin";
    // Friday 2026-01-09 22:00 CET = 21:00Z until Saturday 02:00 CET = 01:00Z.
    assert_allowed_until(spec, "2026-01-09T21:00:00Z", "2026-01-10T01:00:00Z");
    assert_allowed_until(spec, "2026-01-10T00:30:00Z", "2026-01-10T01:00:00Z");
    // Saturday 22:30 local is not covered: Saturday is not a start day.
    assert_denied_until(spec, "2026-01-10T21:30:00Z", Some("2026-01-16T21:00:00Z"));
}

#[test]
fn berlin_spring_forward() {
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z.
    // An end inside the gap maps to the end of the gap.
    assert_allowed_until(
        "Sun 01:00-02:30 Europe/Berlin",
        "2026-03-29T00:30:00Z",
        "2026-03-29T01:00:00Z",
    );
    // A start inside the gap maps to the end of the gap too.
    let spec = "Sun 02:30-05:00 Europe/Berlin";
    assert_denied_until(spec, "2026-03-28T23:00:00Z", Some("2026-03-29T01:00:00Z"));
    assert_allowed_until(spec, "2026-03-29T01:00:00Z", "2026-03-29T03:00:00Z");
    // A night window spanning the change is an hour shorter.
    assert_allowed_until(
        "Sat 22:00-06:00 Europe/Berlin",
        "2026-03-28T21:00:00Z",
        "2026-03-29T04:00:00Z",
    );
    // Daily windows move by an hour in UTC across the change.
    let daily = "Daily 09:00-17:00 Europe/Berlin";
    assert_allowed_until(daily, "2026-03-28T15:30:00Z", "2026-03-28T16:00:00Z");
    assert_denied_until(daily, "2026-03-28T16:00:00Z", Some("2026-03-29T07:00:00Z"));
    assert_allowed_until(daily, "2026-03-29T07:00:00Z", "2026-03-29T15:00:00Z");
}

#[test]
fn window_swallowed_by_the_gap_is_skipped() {
    // 02:00-02:30 does not exist on 2026-03-29, so after 2026-03-22 the next
    // occurrence is 2026-04-05, beyond the 8-day horizon.
    let spec = "Sun 02:00-02:30 Europe/Berlin";
    assert_denied_until(spec, "2026-03-22T01:30:00Z", None);
    assert_denied_until(spec, "2026-03-29T00:00:00Z", Some("2026-04-05T00:00:00Z"));
}

#[test]
fn berlin_fall_back() {
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00Z, so 02:00-03:00
    // local happens at 00:00Z-01:00Z (CEST) and again at 01:00Z-02:00Z (CET).
    // An ambiguous end uses the later instant.
    assert_allowed_until(
        "Sun 00:00-02:30 Europe/Berlin",
        "2026-10-24T23:00:00Z",
        "2026-10-25T01:30:00Z",
    );
    // An ambiguous start uses the earlier instant.
    let spec = "Sun 02:30-05:00 Europe/Berlin";
    assert_denied_until(spec, "2026-10-25T00:00:00Z", Some("2026-10-25T00:30:00Z"));
    assert_allowed_until(spec, "2026-10-25T00:30:00Z", "2026-10-25T04:00:00Z");
    // A night window spanning the change is an hour longer.
    assert_allowed_until(
        "Sat 23:00-03:00 Europe/Berlin",
        "2026-10-24T21:00:00Z",
        "2026-10-25T02:00:00Z",
    );
}

#[test]
fn new_york_spring_forward() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00Z.
    assert_allowed_until(
        "Sun 01:00-02:30 America/New_York",
        "2026-03-08T06:30:00Z",
        "2026-03-08T07:00:00Z",
    );
    let spec = "Sun 02:15-04:00 America/New_York";
    assert_denied_until(spec, "2026-03-08T06:59:00Z", Some("2026-03-08T07:00:00Z"));
    assert_allowed_until(spec, "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z");
    assert_allowed_until(
        "Mon-Fri 09:00-17:00 America/New_York",
        "2026-03-09T13:00:00Z",
        "2026-03-09T21:00:00Z",
    );
}

#[test]
fn new_york_fall_back() {
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00Z, so 01:00-02:00
    // local happens at 05:00Z-06:00Z (EDT) and 06:00Z-07:00Z (EST).
    assert_allowed_until(
        "Sun 00:00-01:30 America/New_York",
        "2026-11-01T04:30:00Z",
        "2026-11-01T06:30:00Z",
    );
    let spec = "Sun 01:30-03:00 America/New_York";
    assert_denied_until(spec, "2026-11-01T05:29:59Z", Some("2026-11-01T05:30:00Z"));
    assert_allowed_until(spec, "2026-11-01T05:30:00Z", "2026-11-01T08:00:00Z");
    assert_allowed_until(
        "Mon-Fri 09:00-17:00 America/New_York",
        "2026-11-02T14:00:00Z",
        "2026-11-02T22:00:00Z",
    );
}

#[test]
fn kolkata_half_hour_offset_and_utc_date_difference() {
    let spec = "Mon-Fri 09:00-17:30 Asia/Kolkata";
    assert_allowed_until(spec, "2026-01-05T03:30:00Z", "2026-01-05T12:00:00Z");
    assert_denied_until(spec, "2026-01-05T03:29:59Z", Some("2026-01-05T03:30:00Z"));
    // Tuesday 00:00 IST is Monday 18:30 UTC.
    let spec = "Tue 00:00-04:00 Asia/Kolkata";
    assert_allowed_until(spec, "2026-01-05T18:30:00Z", "2026-01-05T22:30:00Z");
    assert_denied_until(spec, "2026-01-05T18:29:00Z", Some("2026-01-05T18:30:00Z"));
}

#[test]
fn auckland_southern_hemisphere_dst() {
    let spec = "Daily 09:00-17:00 Pacific/Auckland";
    // January is summer (NZDT, UTC+13); July is winter (NZST, UTC+12).
    assert_allowed_until(spec, "2026-01-04T20:00:00Z", "2026-01-05T04:00:00Z");
    assert_allowed_until(spec, "2026-07-05T21:00:00Z", "2026-07-06T05:00:00Z");
    // 2026-04-05 03:00 NZDT falls back to 02:00 NZST at 14:00Z on 04-04.
    assert_allowed_until(
        "Sun 00:00-02:30 Pacific/Auckland",
        "2026-04-04T11:00:00Z",
        "2026-04-04T14:30:00Z",
    );
    // 2026-09-27 02:00 NZST jumps to 03:00 NZDT at 14:00Z on 09-26.
    let spec = "Sun 02:30-06:00 Pacific/Auckland";
    assert_denied_until(spec, "2026-09-26T13:00:00Z", Some("2026-09-26T14:00:00Z"));
    assert_allowed_until(spec, "2026-09-26T14:00:00Z", "2026-09-26T17:00:00Z");
}

#[test]
fn touching_and_overlapping_windows_merge() {
    assert_allowed_until(
        "Mon-Fri 00:00-24:00 Europe/Berlin",
        "2026-01-05T09:00:00Z",
        "2026-01-09T23:00:00Z",
    );
    let conditions = [windows(&[
        "Mon 08:00-12:00 UTC",
        "Mon 12:00-14:00 UTC",
        "Mon 13:00-18:00 UTC",
        "Mon 20:00-21:00 UTC",
    ])];
    assert_eq!(
        decide(&conditions, "2026-01-05T09:00:00Z"),
        Decision::Allow {
            until: Some(utc("2026-01-05T18:00:00Z"))
        }
    );
    // A night window touching a morning window.
    let conditions = [windows(&[
        "Sun 22:00-24:00 Europe/Berlin",
        "Mon 00:00-06:00 Europe/Berlin",
    ])];
    assert_eq!(
        decide(&conditions, "2026-01-04T21:30:00Z"),
        Decision::Allow {
            until: Some(utc("2026-01-05T05:00:00Z"))
        }
    );
}

#[test]
fn always_open_windows_have_no_end() {
    let cases = [
        windows(&["Daily 00:00-24:00 Europe/Berlin"]),
        windows(&["Daily 12:00-24:00 UTC", "Daily 00:00-12:00 UTC"]),
        windows(&[
            "Daily 18:00-06:00 America/New_York",
            "Daily 06:00-18:00 America/New_York",
        ]),
    ];
    for condition in cases {
        for now in [
            "2026-03-08T07:00:00Z",
            "2026-03-29T00:59:59Z",
            "2026-10-25T01:30:00Z",
            "2026-11-01T06:00:00Z",
        ] {
            assert_eq!(
                decide(std::slice::from_ref(&condition), now),
                Decision::Allow { until: None },
                "{condition:?} at {now}"
            );
        }
    }
}

#[test]
fn source_ip_in_and_not_in() {
    let ctx = |source_ip: Option<&str>| EvalContext {
        source_ip: source_ip.map(ip),
        now: utc("2026-01-05T10:00:00Z"),
    };
    let allowed = |conditions: &[Condition], source_ip| evaluate(conditions, &ctx(source_ip));
    let inside = [source(IpOperator::In, &["10.0.0.0/8", "2001:db8::/32"])];
    let outside = [source(IpOperator::NotIn, &["10.0.0.0/8", "2001:db8::/32"])];
    let allow = Decision::Allow { until: None };
    let deny = |ip: Option<&str>| {
        Decision::Deny(DenyReason::SourceIpNotAllowed {
            ip: ip.map(|s| s.parse().unwrap()),
        })
    };

    assert_eq!(allowed(&inside, Some("10.1.2.3")), allow);
    assert_eq!(allowed(&inside, Some("2001:db8::5")), allow);
    assert_eq!(allowed(&inside, Some("11.0.0.1")), deny(Some("11.0.0.1")));
    assert_eq!(allowed(&outside, Some("11.0.0.1")), allow);
    assert_eq!(allowed(&outside, Some("10.1.2.3")), deny(Some("10.1.2.3")));
    assert_eq!(
        allowed(&outside, Some("2001:db8::5")),
        deny(Some("2001:db8::5"))
    );
    // An IPv4-mapped IPv6 address is its IPv4 host for both operators.
    assert_eq!(allowed(&inside, Some("::ffff:10.1.2.3")), allow);
    assert_eq!(
        allowed(&outside, Some("::ffff:10.1.2.3")),
        deny(Some("::ffff:10.1.2.3"))
    );
    // An unknown address fails closed for both operators.
    assert_eq!(allowed(&inside, None), deny(None));
    assert_eq!(allowed(&outside, None), deny(None));
}

#[test]
fn all_conditions_must_hold() {
    let office = windows(&["Mon-Fri 09:00-17:00 Europe/Berlin"]);
    let lunch_utc = windows(&["Daily 12:00-20:00 UTC"]);
    let lan = source(IpOperator::In, &["192.0.2.0/24"]);
    let blocked = source(IpOperator::NotIn, &["192.0.2.10/32"]);

    let both_windows = [lan.clone(), office.clone(), lunch_utc.clone()];
    // Monday 2026-01-05: office is 08:00Z-16:00Z, the other 12:00Z-20:00Z.
    assert_eq!(
        decide(&both_windows, "2026-01-05T13:00:00Z"),
        Decision::Allow {
            until: Some(utc("2026-01-05T16:00:00Z"))
        }
    );
    assert_eq!(
        decide(&both_windows, "2026-01-05T10:00:00Z"),
        Decision::Deny(DenyReason::OutsideTimeWindow {
            next_start: Some(utc("2026-01-05T12:00:00Z"))
        })
    );
    assert_eq!(
        decide(&both_windows, "2026-01-05T17:00:00Z"),
        Decision::Deny(DenyReason::OutsideTimeWindow {
            next_start: Some(utc("2026-01-06T12:00:00Z"))
        })
    );
    // An address failure wins over a time failure, wherever it is listed.
    let with_blocked = [office, blocked];
    assert_eq!(
        decide(&with_blocked, "2026-01-05T03:00:00Z"),
        Decision::Deny(DenyReason::SourceIpNotAllowed {
            ip: Some(ip("192.0.2.10"))
        })
    );
    assert_eq!(
        decide(&with_blocked, "2026-01-05T10:00:00Z"),
        Decision::Deny(DenyReason::SourceIpNotAllowed {
            ip: Some(ip("192.0.2.10"))
        })
    );
    assert_eq!(
        decide(&[lan, lunch_utc], "2026-01-05T13:00:00Z"),
        Decision::Allow {
            until: Some(utc("2026-01-05T20:00:00Z"))
        }
    );
}

#[test]
fn deny_reasons_read_as_sentences() {
    let text = |reason: DenyReason| reason.to_string();
    assert_eq!(
        text(DenyReason::SourceIpNotAllowed {
            ip: Some(ip("203.0.113.9"))
        }),
        "Access from your IP address 203.0.113.9 is not allowed by this policy."
    );
    assert_eq!(
        text(DenyReason::SourceIpNotAllowed { ip: None }),
        "Access is denied because your IP address could not be determined."
    );
    assert_eq!(
        text(DenyReason::OutsideTimeWindow {
            next_start: Some(utc("2026-01-05T08:00:00Z"))
        }),
        "Access is only allowed during set hours; it opens again at 2026-01-05 08:00:00 UTC."
    );
    assert_eq!(
        text(DenyReason::OutsideTimeWindow { next_start: None }),
        "Access is only allowed during set hours, and it does not open again within the \
         next 8 days."
    );
}
