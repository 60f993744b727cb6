use postern_policy::filter::{
    filters_allow, format_ports, parse_ports, Filter, FilterError, PortRange, Protocol,
};
use serde_json::json;

fn range(start: u16, end: u16) -> PortRange {
    PortRange { start, end }
}

fn err(s: &str) -> String {
    parse_ports(s).unwrap_err().to_string()
}

#[test]
fn parses_ports_ranges_and_spacing() {
    assert_eq!(
        parse_ports("80, 443,8000-8100").unwrap(),
        vec![range(80, 80), range(443, 443), range(8000, 8100)]
    );
    assert_eq!(parse_ports(" 1 - 65535 ").unwrap(), vec![range(1, 65535)]);
    assert_eq!(parse_ports("022").unwrap(), vec![range(22, 22)]);
    assert_eq!(parse_ports("5-5").unwrap(), vec![range(5, 5)]);
    assert_eq!(parse_ports("").unwrap(), vec![]);
    assert_eq!(parse_ports("   ").unwrap(), vec![]);
}

#[test]
fn port_errors_name_the_bad_piece() {
    assert_eq!(
        err("80,9000-8000"),
        "port range '9000-8000' has its start after its end"
    );
    assert_eq!(err("80,abc"), "'abc' is not a port number");
    assert_eq!(
        err("-5"),
        "'-5' is not a port range (expected e.g. '8000-8100')"
    );
    assert_eq!(
        err("1-2-3"),
        "'1-2-3' is not a port range (expected e.g. '8000-8100')"
    );
    assert_eq!(err("80-x"), "'x' is not a port number");
    assert_eq!(err("+80"), "'+80' is not a port number");
    assert_eq!(err("0"), "port 0 is not allowed");
    assert_eq!(err("0-10"), "port 0 is not allowed");
    assert_eq!(err("70000"), "port 70000 is out of range (1-65535)");
    assert_eq!(err("65536"), "port 65536 is out of range (1-65535)");
    assert_eq!(
        err("99999999999999999999999"),
        "port 99999999999999999999999 is out of range (1-65535)"
    );
    assert_eq!(err("80,,443"), "the port list '80,,443' has an empty entry");
    assert_eq!(err("80,"), "the port list '80,' has an empty entry");
}

#[test]
fn filter_json_round_trip_is_canonical() {
    let filter: Filter =
        serde_json::from_value(json!({"protocol":"tcp","ports":"80, 443 ,8000 - 8100"})).unwrap();
    assert_eq!(
        filter,
        Filter {
            protocol: Protocol::Tcp,
            ports: vec![range(80, 80), range(443, 443), range(8000, 8100)],
        }
    );
    assert_eq!(
        serde_json::to_value(&filter).unwrap(),
        json!({"protocol":"tcp","ports":"80,443,8000-8100"})
    );
    assert_eq!(format_ports(&filter.ports), "80,443,8000-8100");
}

#[test]
fn filter_json_without_ports_means_all_ports() {
    for value in [
        json!({"protocol":"udp"}),
        json!({"protocol":"udp","ports":""}),
    ] {
        let filter: Filter = serde_json::from_value(value).unwrap();
        assert_eq!(filter.ports, vec![]);
        assert_eq!(
            serde_json::to_value(&filter).unwrap(),
            json!({"protocol":"udp"})
        );
    }
    let icmp: Filter = serde_json::from_value(json!({"protocol":"icmp"})).unwrap();
    assert_eq!(icmp.protocol, Protocol::Icmp);
}

#[test]
fn filter_json_errors() {
    let cases = [
        (
            json!({"protocol":"icmp","ports":"80"}),
            "icmp filters cannot list ports",
        ),
        (
            json!({"protocol":"tcp","ports":"0"}),
            "port 0 is not allowed",
        ),
        (json!({"protocol":"sctp"}), "unknown variant `sctp`"),
        (json!({"protocol":"TCP"}), "unknown variant `TCP`"),
        (json!({"ports":"80"}), "missing field `protocol`"),
        (
            json!({"protocol":"tcp","port":"80"}),
            "unknown field `port`",
        ),
    ];
    for (value, expected) in cases {
        let error = serde_json::from_value::<Filter>(value.clone()).unwrap_err();
        assert!(
            error.to_string().contains(expected),
            "{value}: {error} should contain {expected}"
        );
    }
}

#[test]
fn validate_checks_constructed_filters() {
    let bad = |protocol, ports| Filter { protocol, ports }.validate().unwrap_err();
    assert_eq!(bad(Protocol::Tcp, vec![range(0, 5)]), FilterError::PortZero);
    assert_eq!(
        bad(Protocol::Udp, vec![range(10, 5)]),
        FilterError::StartAfterEnd("10-5".into())
    );
    assert_eq!(
        bad(Protocol::Icmp, vec![range(1, 1)]),
        FilterError::IcmpWithPorts("1".into())
    );
    let good = Filter {
        protocol: Protocol::Tcp,
        ports: vec![range(1, 65535)],
    };
    assert_eq!(good.validate(), Ok(()));
}

#[test]
fn filters_allow_matrix() {
    use Protocol::*;
    let filters = vec![
        Filter {
            protocol: Tcp,
            ports: vec![range(22, 22), range(8000, 8100)],
        },
        Filter {
            protocol: Icmp,
            ports: vec![],
        },
    ];
    let cases: &[(Protocol, Option<u16>, bool)] = &[
        (Tcp, Some(22), true),
        (Tcp, Some(8000), true),
        (Tcp, Some(8050), true),
        (Tcp, Some(8100), true),
        (Tcp, Some(7999), false),
        (Tcp, Some(8101), false),
        (Tcp, Some(80), false),
        (Tcp, None, false),
        (Udp, Some(22), false),
        (Udp, None, false),
        (Icmp, None, true),
        (Icmp, Some(22), true),
    ];
    for &(protocol, port, expected) in cases {
        assert_eq!(
            filters_allow(&filters, protocol, port),
            expected,
            "{protocol} {port:?}"
        );
    }

    for (protocol, port) in [(Tcp, Some(1)), (Udp, None), (Icmp, Some(5))] {
        assert!(filters_allow(&[], protocol, port), "no filters allow all");
    }

    let all_udp = [Filter {
        protocol: Udp,
        ports: vec![],
    }];
    assert!(filters_allow(&all_udp, Udp, Some(53)));
    assert!(filters_allow(&all_udp, Udp, None));
    assert!(!filters_allow(&all_udp, Tcp, Some(53)));
    assert!(!filters_allow(&all_udp, Icmp, None));
}

#[test]
fn filter_has_openapi_schema() {
    use utoipa::{PartialSchema, ToSchema};
    assert_eq!(Filter::name(), "Filter");
    let schema = serde_json::to_string(&Filter::schema()).unwrap();
    assert!(schema.contains("\"ports\""), "{schema}");
    let mut refs = Vec::new();
    Filter::schemas(&mut refs);
    let names: Vec<&String> = refs.iter().map(|(name, _)| name).collect();
    assert!(names.iter().any(|name| *name == "Protocol"), "{names:?}");
}
