use chrono::{NaiveTime, Weekday};
use chrono_tz::Tz;
use postern_policy::condition::{
    format_window_spec, parse_window_spec, Condition, ConditionError, DaySet, DayWindow,
    IpOperator, TimeWindow, WindowEnd,
};
use serde_json::{json, Value};

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap()
}

fn spec_err(s: &str) -> String {
    parse_window_spec(s).unwrap_err().to_string()
}

fn canonical(s: &str) -> String {
    let (tz, window) = parse_window_spec(s).unwrap();
    format_window_spec(tz, &window)
}

fn json_err(value: Value) -> String {
    serde_json::from_value::<Condition>(value)
        .unwrap_err()
        .to_string()
}

#[test]
fn parses_a_window_spec() {
    let (tz, window) = parse_window_spec("Mon-Fri 09:00-17:00 Europe/Berlin").unwrap();
    assert_eq!(tz, Tz::Europe__Berlin);
    assert_eq!(
        window,
        DayWindow {
            days: DaySet::range(Weekday::Mon, Weekday::Fri),
            start: hm(9, 0),
            end: WindowEnd::At(hm(17, 0)),
        }
    );
    assert!(!window.crosses_midnight());
}

#[test]
fn day_forms() {
    use Weekday::*;
    let days = |s: &str| parse_window_spec(s).unwrap().1.days;
    let set = |d: &[Weekday]| d.iter().copied().collect::<DaySet>();
    assert_eq!(days("Daily 09:00-10:00 UTC"), DaySet::ALL);
    assert_eq!(days("daily 09:00-10:00 UTC"), DaySet::ALL);
    assert_eq!(days("* 09:00-10:00 UTC"), DaySet::ALL);
    assert_eq!(days("sat 09:00-10:00 UTC"), set(&[Sat]));
    assert_eq!(days("SUNDAY 09:00-10:00 UTC"), set(&[Sun]));
    assert_eq!(days("Mon,Wed,Fri 09:00-10:00 UTC"), set(&[Mon, Wed, Fri]));
    assert_eq!(days("Mon, Wed 09:00-10:00 UTC"), set(&[Mon, Wed]));
    assert_eq!(days("Fri-Mon 09:00-10:00 UTC"), set(&[Fri, Sat, Sun, Mon]));
    assert_eq!(
        days("monday-wednesday,Sat 09:00-10:00 UTC"),
        set(&[Mon, Tue, Wed, Sat])
    );
    assert_eq!(days("Tue-Tue 09:00-10:00 UTC"), set(&[Tue]));
    assert_eq!(days("Sun-Sat 09:00-10:00 UTC"), DaySet::ALL);
}

#[test]
fn times_end_of_day_and_midnight_crossing() {
    let window = |s: &str| parse_window_spec(s).unwrap().1;
    let w = window("Mon 9:05-24:00 UTC");
    assert_eq!((w.start, w.end), (hm(9, 5), WindowEnd::EndOfDay));
    assert!(!w.crosses_midnight());
    let w = window("Fri 22:00-02:00 Europe/Berlin");
    assert_eq!((w.start, w.end), (hm(22, 0), WindowEnd::At(hm(2, 0))));
    assert!(w.crosses_midnight());
    let w = window("Mon 00:00-24:00 UTC");
    assert_eq!((w.start, w.end), (hm(0, 0), WindowEnd::EndOfDay));
}

#[test]
fn display_is_canonical() {
    assert_eq!(
        canonical("  mon-FRI   9:00-17:00  Europe/Berlin "),
        "Mon-Fri 09:00-17:00 Europe/Berlin"
    );
    assert_eq!(
        canonical("Fri-Mon 22:00-02:00 UTC"),
        "Mon,Fri-Sun 22:00-02:00 UTC"
    );
    assert_eq!(
        canonical("Sun,Sat 10:00-24:00 UTC"),
        "Sat,Sun 10:00-24:00 UTC"
    );
    assert_eq!(
        canonical("Mon,Tue,Wed 10:00-11:00 UTC"),
        "Mon-Wed 10:00-11:00 UTC"
    );
    assert_eq!(
        canonical("Mon-Sun 10:00-11:00 UTC"),
        "Daily 10:00-11:00 UTC"
    );
    assert_eq!(
        canonical("Tue,Thu 10:00-11:00 Asia/Kolkata"),
        "Tue,Thu 10:00-11:00 Asia/Kolkata"
    );
}

#[test]
fn window_spec_errors_name_the_value() {
    assert_eq!(
        spec_err("Mon-Fri 09:00-17:00 Europe/Berlyn"),
        "unknown time zone 'Europe/Berlyn'"
    );
    assert_eq!(
        spec_err("Mon-Fry 09:00-17:00 Europe/Berlin"),
        "'Mon-Fry' is not a day or day range"
    );
    assert_eq!(
        spec_err("Mon,Fry 09:00-17:00 UTC"),
        "'Fry' is not a day or day range"
    );
    assert_eq!(
        spec_err("Mon,,Tue 09:00-17:00 UTC"),
        "'' is not a day or day range"
    );
    assert_eq!(
        spec_err("Mon 09:00-09:00 UTC"),
        "time window 'Mon 09:00-09:00' starts and ends at the same time"
    );
    assert_eq!(
        spec_err("Mon 24:00-09:00 UTC"),
        "a window cannot start at 24:00 (in '24:00-09:00')"
    );
    assert_eq!(
        spec_err("Mon 0900-1000 UTC"),
        "'0900' is not a time of day (expected HH:MM)"
    );
    assert_eq!(
        spec_err("Mon 25:00-26:00 UTC"),
        "'25:00' is not a time of day (expected HH:MM)"
    );
    assert_eq!(
        spec_err("Mon 09:60-10:00 UTC"),
        "'09:60' is not a time of day (expected HH:MM)"
    );
    assert_eq!(
        spec_err("Mon 09:00-24:01 UTC"),
        "'24:01' is not a time of day (expected HH:MM)"
    );
    assert_eq!(
        spec_err("Mon 9:5-10:00 UTC"),
        "'9:5' is not a time of day (expected HH:MM)"
    );
    assert_eq!(
        spec_err("Mon 09:00 UTC"),
        "'09:00' is not a time range (expected HH:MM-HH:MM)"
    );
    let malformed = "is not a time window (expected e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin')";
    assert_eq!(
        spec_err("09:00-17:00 UTC"),
        format!("'09:00-17:00 UTC' {malformed}")
    );
    assert_eq!(spec_err(""), format!("'' {malformed}"));
}

#[test]
fn validate_rejects_constructed_nonsense() {
    let window = DayWindow {
        days: DaySet::EMPTY,
        start: hm(9, 0),
        end: WindowEnd::EndOfDay,
    };
    assert_eq!(window.validate(), Err(ConditionError::NoDays));
    let seconds = NaiveTime::from_hms_opt(9, 0, 30).unwrap();
    let window = DayWindow {
        days: DaySet::ALL,
        start: seconds,
        end: WindowEnd::EndOfDay,
    };
    assert_eq!(
        window.validate(),
        Err(ConditionError::NotWholeMinute(seconds))
    );
    let window = DayWindow {
        days: DaySet::ALL,
        start: hm(9, 0),
        end: WindowEnd::At(seconds),
    };
    assert_eq!(
        window.validate(),
        Err(ConditionError::NotWholeMinute(seconds))
    );

    let no_windows = Condition::TimeWindow(TimeWindow {
        timezone: Tz::UTC,
        windows: vec![],
    });
    assert_eq!(
        no_windows.validate(),
        Err(ConditionError::NoValues("time_window"))
    );
    let no_ranges = Condition::SourceIp {
        operator: IpOperator::NotIn,
        ranges: vec![],
    };
    assert_eq!(
        no_ranges.validate(),
        Err(ConditionError::NoValues("source_ip"))
    );
}

#[test]
fn source_ip_json_round_trip() {
    let condition: Condition = serde_json::from_value(json!({
        "property": "source_ip",
        "operator": "in",
        "values": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "2001:db8::1"]
    }))
    .unwrap();
    assert_eq!(
        condition,
        Condition::SourceIp {
            operator: IpOperator::In,
            ranges: vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.1.7/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
                "2001:db8::1/128".parse().unwrap(),
            ],
        }
    );
    let value = serde_json::to_value(&condition).unwrap();
    assert_eq!(
        value,
        json!({
            "property": "source_ip",
            "operator": "in",
            "values": ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "2001:db8::1/128"]
        })
    );
    assert_eq!(
        serde_json::from_value::<Condition>(value).unwrap(),
        condition
    );

    let not_in: Condition = serde_json::from_value(json!({
        "property": "source_ip", "operator": "not_in", "values": ["1.2.3.4"]
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&not_in).unwrap()["operator"],
        json!("not_in")
    );
}

#[test]
fn time_window_json_round_trip() {
    let condition: Condition = serde_json::from_value(json!({
        "property": "time_window",
        "values": ["mon-fri 9:00-17:00 Europe/Berlin", "Sat 10:00-14:00 Europe/Berlin"]
    }))
    .unwrap();
    let Condition::TimeWindow(window) = &condition else {
        panic!("expected a time window, got {condition:?}");
    };
    assert_eq!(window.timezone, Tz::Europe__Berlin);
    assert_eq!(window.windows.len(), 2);
    let value = serde_json::to_value(&condition).unwrap();
    assert_eq!(
        value,
        json!({
            "property": "time_window",
            "values": ["Mon-Fri 09:00-17:00 Europe/Berlin", "Sat 10:00-14:00 Europe/Berlin"]
        })
    );
    assert_eq!(
        serde_json::from_value::<Condition>(value).unwrap(),
        condition
    );
}

#[test]
fn condition_json_errors() {
    let cases = [
        (
            json!({"property":"source_ip","values":["10.0.0.0/8"]}),
            "a source_ip condition needs an operator ('in' or 'not_in')",
        ),
        (
            json!({"property":"source_ip","operator":"in","values":["10.0.0.300"]}),
            "'10.0.0.300' is not an IP address or CIDR range",
        ),
        (
            json!({"property":"source_ip","operator":"in","values":["10.0.0.0/33"]}),
            "'10.0.0.0/33' is not an IP address or CIDR range",
        ),
        (
            json!({"property":"source_ip","operator":"in","values":[]}),
            "a source_ip condition needs at least one value",
        ),
        (
            json!({"property":"source_ip","operator":"equals","values":["1.2.3.4"]}),
            "unknown variant `equals`",
        ),
        (
            json!({"property":"time_window","values":[]}),
            "a time_window condition needs at least one value",
        ),
        (
            json!({"property":"time_window","operator":"in","values":["Mon 09:00-10:00 UTC"]}),
            "a time_window condition takes no operator",
        ),
        (
            json!({"property":"time_window","values":[
                "Mon 09:00-10:00 Europe/Berlin", "Tue 09:00-10:00 Europe/Paris"]}),
            "all windows of one time_window condition must use the same time zone, \
             found 'Europe/Berlin' and 'Europe/Paris'",
        ),
        (
            json!({"property":"time_window","values":["Mon-Fri 09:00-17:00 Europe/Berlyn"]}),
            "unknown time zone 'Europe/Berlyn'",
        ),
        (
            json!({"property":"time_window","values":["Mon-Fry 09:00-17:00 Europe/Berlin"]}),
            "'Mon-Fry' is not a day or day range",
        ),
        (
            json!({"property":"device","values":["x"]}),
            "unknown variant `device`, expected `source_ip` or `time_window`",
        ),
        (
            json!({"property":"source_ip","operator":"in","values":["1.2.3.4"],"extra":1}),
            "unknown field `extra`",
        ),
        (
            json!({"property":"source_ip","operator":"in"}),
            "missing field `values`",
        ),
    ];
    for (value, expected) in cases {
        let error = json_err(value.clone());
        assert!(
            error.contains(expected),
            "{value}: '{error}' should contain '{expected}'"
        );
    }
}

#[test]
fn condition_has_openapi_schema() {
    use utoipa::{PartialSchema, ToSchema};
    assert_eq!(Condition::name(), "Condition");
    let schema = serde_json::to_string(&Condition::schema()).unwrap();
    for needle in ["property", "source_ip", "time_window", "not_in", "values"] {
        assert!(schema.contains(needle), "{needle} missing from {schema}");
    }
}
