use super::*;
use chrono::TimeZone;
use postern_domain::ResourceType;
use postern_policy::{Condition, IpOperator, TimeWindow};

fn resource(n: u128, address: &str) -> Resource {
    Resource {
        id: Uuid::from_u128(n),
        account_id: Uuid::nil(),
        site_id: Uuid::from_u128(1000),
        resource_type: ResourceType::Cidr,
        name: format!("r{n}"),
        address: address.to_string(),
        description: None,
        filters: vec![],
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn policy(n: u128, group: u128, resource: u128, conditions: Vec<Condition>) -> Policy {
    Policy {
        id: Uuid::from_u128(n),
        account_id: Uuid::nil(),
        group_id: Uuid::from_u128(group),
        resource_id: Uuid::from_u128(resource),
        description: None,
        conditions,
        disabled: false,
        disabled_at: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

const ACTOR: u128 = 7;
const GROUP: u128 = 50;

fn monday_noon_berlin() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 11, 0, 0).unwrap()
}

fn office_hours() -> Condition {
    Condition::TimeWindow(TimeWindow::from_specs(["Mon-Fri 09:00-17:00 Europe/Berlin"]).unwrap())
}

#[test]
fn a_member_sees_what_its_groups_policies_grant() {
    let snapshot = AccessSnapshot::new(
        vec![resource(1, "10.0.0.0/24"), resource(2, "10.1.0.0/24")],
        vec![policy(10, GROUP, 1, vec![])],
        vec![(Uuid::from_u128(GROUP), Uuid::from_u128(ACTOR))],
    );
    let view = snapshot.view(Uuid::from_u128(ACTOR), None, Utc::now());
    assert_eq!(
        view.keys().copied().collect::<Vec<_>>(),
        vec![Uuid::from_u128(1)]
    );
    assert!(
        snapshot
            .view(Uuid::from_u128(8), None, Utc::now())
            .is_empty(),
        "not a member"
    );
}

#[test]
fn disabled_policies_and_disabled_actors_grant_nothing() {
    let mut disabled = policy(10, GROUP, 1, vec![]);
    disabled.disabled = true;
    let snapshot = AccessSnapshot::new(
        vec![resource(1, "10.0.0.0/24")],
        vec![disabled],
        vec![(Uuid::from_u128(GROUP), Uuid::from_u128(ACTOR))],
    );
    assert!(snapshot
        .view(Uuid::from_u128(ACTOR), None, Utc::now())
        .is_empty());
    let mut snapshot = AccessSnapshot::new(
        vec![resource(1, "10.0.0.0/24")],
        vec![policy(10, GROUP, 1, vec![])],
        vec![(Uuid::from_u128(GROUP), Uuid::from_u128(ACTOR))],
    );
    snapshot.disabled_actors.insert(Uuid::from_u128(ACTOR));
    assert!(snapshot
        .view(Uuid::from_u128(ACTOR), None, Utc::now())
        .is_empty());
    assert!(snapshot
        .authorize(Uuid::from_u128(ACTOR), Uuid::from_u128(1), None, Utc::now())
        .is_err());
}

#[test]
fn time_windows_limit_and_date_the_grant() {
    let snapshot = AccessSnapshot::new(
        vec![resource(1, "10.0.0.0/24")],
        vec![policy(10, GROUP, 1, vec![office_hours()])],
        vec![(Uuid::from_u128(GROUP), Uuid::from_u128(ACTOR))],
    );
    let view = snapshot.view(Uuid::from_u128(ACTOR), None, monday_noon_berlin());
    let until = view[&Uuid::from_u128(1)]
        .access_until
        .expect("ends at 17:00 Berlin");
    assert_eq!(until, Utc.with_ymd_and_hms(2026, 11, 30, 16, 0, 0).unwrap());
    let night = Utc.with_ymd_and_hms(2026, 11, 30, 20, 0, 0).unwrap();
    assert!(snapshot
        .view(Uuid::from_u128(ACTOR), None, night)
        .is_empty());
    let err = snapshot
        .authorize(Uuid::from_u128(ACTOR), Uuid::from_u128(1), None, night)
        .unwrap_err();
    assert!(err.contains("condition"), "{err}");
    assert_eq!(
        next_time_boundary(&snapshot, monday_noon_berlin(), chrono::Duration::days(1)),
        until
    );
}

#[test]
fn an_unconditional_policy_outlives_a_windowed_one() {
    let snapshot = AccessSnapshot::new(
        vec![resource(1, "10.0.0.0/24")],
        vec![
            policy(10, GROUP, 1, vec![office_hours()]),
            policy(11, GROUP, 1, vec![]),
        ],
        vec![(Uuid::from_u128(GROUP), Uuid::from_u128(ACTOR))],
    );
    let view = snapshot.view(Uuid::from_u128(ACTOR), None, monday_noon_berlin());
    assert_eq!(view[&Uuid::from_u128(1)].access_until, None);
    assert_eq!(
        snapshot.authorize(
            Uuid::from_u128(ACTOR),
            Uuid::from_u128(1),
            None,
            monday_noon_berlin()
        ),
        Ok(None)
    );
}

#[test]
fn source_ip_conditions_depend_on_where_the_client_is() {
    let snapshot = AccessSnapshot::new(
        vec![resource(1, "10.0.0.0/24")],
        vec![policy(
            10,
            GROUP,
            1,
            vec![Condition::SourceIp {
                operator: IpOperator::In,
                ranges: vec!["203.0.113.0/24".parse().unwrap()],
            }],
        )],
        vec![(Uuid::from_u128(GROUP), Uuid::from_u128(ACTOR))],
    );
    let inside: IpAddr = "203.0.113.9".parse().unwrap();
    let outside: IpAddr = "198.51.100.1".parse().unwrap();
    assert_eq!(
        snapshot
            .view(Uuid::from_u128(ACTOR), Some(inside), Utc::now())
            .len(),
        1
    );
    assert!(snapshot
        .view(Uuid::from_u128(ACTOR), Some(outside), Utc::now())
        .is_empty());
    let err = snapshot
        .authorize(
            Uuid::from_u128(ACTOR),
            Uuid::from_u128(1),
            Some(outside),
            Utc::now(),
        )
        .unwrap_err();
    assert!(err.contains("condition"), "{err}");
    let err = snapshot
        .authorize(
            Uuid::from_u128(9),
            Uuid::from_u128(1),
            Some(inside),
            Utc::now(),
        )
        .unwrap_err();
    assert!(err.contains("no policy"), "{err}");
}

#[test]
fn diff_removes_upserts_and_skips_unchanged() {
    let a = resource_view(&resource(1, "10.0.0.0/24"), None);
    let b = resource_view(&resource(2, "10.1.0.0/24"), None);
    let mut b2 = b.clone();
    b2.address = "10.2.0.0/24".to_string();
    let c = resource_view(&resource(3, "10.3.0.0/24"), None);
    let old: View = [(a.id, a.clone()), (b.id, b)].into_iter().collect();
    let new: View = [(b2.id, b2.clone()), (c.id, c.clone())]
        .into_iter()
        .collect();
    let messages = diff(&old, &new);
    assert_eq!(
        messages,
        vec![
            PortalToClient::ResourceRemoved { id: a.id },
            PortalToClient::ResourceUpserted { resource: b2 },
            PortalToClient::ResourceUpserted { resource: c },
        ]
    );
    assert!(diff(&new, &new).is_empty());
}
