//! The rules each operation obeys, as pure functions over plain values.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::model::{AccountSettings, Actor, ActorType, GroupKind, Token};
use crate::validate::{self, ValidationError};

/// A token lives this long unless its creator chooses otherwise.
pub const DEFAULT_TOKEN_LIFETIME_DAYS: i64 = 365;
/// The default cap on how long a token may live (ten years): the account setting lowers it.
pub const DEFAULT_MAX_TOKEN_LIFETIME_DAYS: u32 = 3650;
/// The lowest and highest cap an account may configure.
pub const MAX_TOKEN_LIFETIME_RANGE: (u32, u32) = (1, 36500);
/// An ephemeral device that vanished is removed this long after its last session ended.
pub const DEFAULT_EPHEMERAL_DEVICE_TIMEOUT_SECONDS: u32 = 600;
pub const EPHEMERAL_DEVICE_TIMEOUT_RANGE: (u32, u32) = (1, 30 * 86_400);
/// Devices unseen for this many days are removed.
pub const DEFAULT_STALE_DEVICE_DAYS: u32 = 90;
pub const STALE_DEVICE_DAYS_RANGE: (u32, u32) = (1, 3650);
/// Tokens expiring within this many days are shown and listed as expiring soon.
pub const DEFAULT_TOKEN_EXPIRY_WARNING_DAYS: u32 = 30;
pub const TOKEN_EXPIRY_WARNING_DAYS_RANGE: (u32, u32) = (1, 365);

/// When a new token expires: the requested instant, or `now` + 365 days (capped by the account's
/// longest lifetime). A requested expiry must lie in the future and within the cap.
pub fn token_expiry(
    now: DateTime<Utc>,
    requested: Option<DateTime<Utc>>,
    settings: &AccountSettings,
) -> Result<DateTime<Utc>, ValidationError> {
    let cap = now + Duration::days(i64::from(settings.max_token_lifetime_days));
    let Some(expires_at) = requested else {
        return Ok(std::cmp::min(
            now + Duration::days(DEFAULT_TOKEN_LIFETIME_DAYS),
            cap,
        ));
    };
    if expires_at <= now {
        return Err(ValidationError::new(
            "expires_at",
            format!("must be in the future (it is {})", expires_at.to_rfc3339()),
        ));
    }
    if expires_at > cap {
        return Err(ValidationError::new(
            "expires_at",
            format!(
                "is later than this account allows: tokens may live at most {} days (until {})",
                settings.max_token_lifetime_days,
                cap.to_rfc3339()
            ),
        ));
    }
    Ok(expires_at)
}

pub fn validate_settings(settings: &AccountSettings) -> Result<(), ValidationError> {
    let checks = [
        (
            "settings.max_token_lifetime_days",
            settings.max_token_lifetime_days,
            MAX_TOKEN_LIFETIME_RANGE,
        ),
        (
            "settings.ephemeral_device_timeout_seconds",
            settings.ephemeral_device_timeout_seconds,
            EPHEMERAL_DEVICE_TIMEOUT_RANGE,
        ),
        (
            "settings.stale_device_days",
            settings.stale_device_days,
            STALE_DEVICE_DAYS_RANGE,
        ),
        (
            "settings.token_expiry_warning_days",
            settings.token_expiry_warning_days,
            TOKEN_EXPIRY_WARNING_DAYS_RANGE,
        ),
    ];
    for (field, value, (low, high)) in checks {
        if !(low..=high).contains(&value) {
            return Err(ValidationError::new(
                field,
                format!("must be between {low} and {high}"),
            ));
        }
    }
    Ok(())
}

/// Which actor types may be created through the API: people are invited by email, machines by
/// name. `admin` creation with a password is a local command (`postern admin create`).
pub fn check_creatable(actor_type: ActorType, email: Option<&str>) -> Result<(), ValidationError> {
    match actor_type {
        ActorType::User | ActorType::Admin if email.is_none() => Err(ValidationError::new(
            "email",
            format!("is required for {}", actor_type.described()),
        )),
        ActorType::ServiceAccount | ActorType::ApiClient if email.is_some() => {
            Err(ValidationError::new(
                "email",
                format!("{} has no email address", actor_type.described()),
            ))
        }
        _ => Ok(()),
    }
}

/// Whether a token may be issued to this actor, and of which kind.
pub fn check_token_holder(actor: &Actor) -> Result<postern_token::TokenKind, ValidationError> {
    actor.actor_type.token_kind().ok_or_else(|| {
        ValidationError::new(
            "actor_id",
            format!(
                "{} signs in and holds no tokens; tokens belong to service accounts and API clients",
                actor.actor_type.described()
            ),
        )
    })
}

/// Manual membership changes: never on the portal-managed `Everyone` group, and an actor can be
/// added only once it exists in the same account (the caller resolves ids within the account).
pub fn check_membership_change(group_kind: GroupKind) -> Result<(), ValidationError> {
    match group_kind {
        GroupKind::Everyone => Err(ValidationError::new(
            "group_id",
            "the Everyone group is managed by the portal: every user and admin is a member, service accounts never are",
        )),
        GroupKind::Directory => Err(ValidationError::new(
            "group_id",
            "the group is synced from a directory: its members change there (service accounts go in groups made here)",
        )),
        GroupKind::Static => Ok(()),
    }
}

/// Groups that a new actor joins automatically.
pub fn automatic_groups(actor_type: ActorType, everyone_group: Uuid) -> Vec<Uuid> {
    if actor_type.joins_everyone() {
        vec![everyone_group]
    } else {
        Vec::new()
    }
}

/// Parses a human duration such as `30d`, `12h`, `90m`, `2w` or `1y` (365 days).
pub fn parse_duration(value: &str) -> Result<Duration, ValidationError> {
    parse_duration_of("expires_in", value)
}

/// [`parse_duration`] of the field `field`, which errors name.
pub fn parse_duration_of(field: &str, value: &str) -> Result<Duration, ValidationError> {
    let value = value.trim();
    let invalid = || {
        ValidationError::new(
            field,
            format!(
                "'{value}' is not a duration: use a number and a unit, such as 30d, 12h, 2w or 1y (also s and m)"
            ),
        )
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = value.split_at(split);
    let number: i64 = number.parse().map_err(|_| invalid())?;
    if number <= 0 {
        return Err(ValidationError::new(field, "must be longer than zero"));
    }
    let days_limit = 36_500;
    let duration = match unit {
        "s" => Duration::try_seconds(number),
        "m" | "min" => Duration::try_minutes(number),
        "h" => Duration::try_hours(number),
        "d" => Duration::try_days(number),
        "w" => Duration::try_weeks(number),
        "y" => number.checked_mul(365).and_then(Duration::try_days),
        _ => return Err(invalid()),
    }
    .ok_or_else(invalid)?;
    if duration > Duration::days(days_limit) {
        return Err(ValidationError::new(field, "must be at most 100 years"));
    }
    Ok(duration)
}

/// How long a rotated token keeps working beside its successor unless the caller says.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::hours(24);

/// What a rotation does to a token and its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// The rotated token's new expiry: the end of the overlap window (never later than it was).
    pub predecessor_expires_at: DateTime<Utc>,
    /// The successor lives as long as the rotated token was meant to, within the account's cap.
    pub successor_expires_at: DateTime<Utc>,
    /// The rotated token's name with ` (rotated YYYY-MM-DD)`, an earlier such suffix replaced.
    pub successor_name: String,
}

/// Why a token cannot be rotated: bad input, or a conflict with the token's state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("the token is revoked; create a new one instead")]
    Revoked,
    #[error("the token has expired; create a new one instead")]
    Expired,
    #[error("the token was already rotated (its successor is {0}); rotate the successor instead")]
    AlreadyRotated(Uuid),
}

/// Plans the rotation of `token` at `now` with an overlap window of `overlap` (default 24 h; at
/// most the account's longest token lifetime).
pub fn plan_rotation(
    token: &Token,
    overlap: Option<Duration>,
    now: DateTime<Utc>,
    settings: &AccountSettings,
) -> Result<RotationPlan, RotationError> {
    let cap = Duration::days(i64::from(settings.max_token_lifetime_days));
    let overlap = overlap.unwrap_or(DEFAULT_ROTATION_OVERLAP);
    if overlap <= Duration::zero() {
        return Err(ValidationError::new("overlap", "must be longer than zero").into());
    }
    if overlap > cap {
        return Err(ValidationError::new(
            "overlap",
            format!(
                "is longer than this account's longest token lifetime ({} days)",
                settings.max_token_lifetime_days
            ),
        )
        .into());
    }
    if token.revoked_at.is_some() {
        return Err(RotationError::Revoked);
    }
    if token.expires_at <= now {
        return Err(RotationError::Expired);
    }
    if let Some(successor) = token.successor_id {
        return Err(RotationError::AlreadyRotated(successor));
    }
    let lifetime = (token.expires_at - token.created_at).clamp(Duration::days(1), cap);
    Ok(RotationPlan {
        predecessor_expires_at: token.expires_at.min(now + overlap),
        successor_expires_at: now + lifetime,
        successor_name: successor_name(&token.name, now),
    })
}

const ROTATED_SUFFIX: &str = " (rotated ";

fn successor_name(name: &str, now: DateTime<Utc>) -> String {
    let base = match name.rfind(ROTATED_SUFFIX) {
        Some(at) if name.ends_with(')') => &name[..at],
        _ => name,
    };
    let suffix = format!("{ROTATED_SUFFIX}{})", now.format("%Y-%m-%d"));
    let room = validate::MAX_NAME_LEN.saturating_sub(suffix.chars().count());
    let base: String = base.chars().take(room).collect();
    format!("{}{suffix}", base.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    #[test]
    fn default_expiry_is_365_days() {
        let settings = AccountSettings::default();
        assert_eq!(
            token_expiry(now(), None, &settings).unwrap(),
            now() + Duration::days(365)
        );
    }

    #[test]
    fn default_expiry_respects_a_lower_cap() {
        let settings = AccountSettings {
            max_token_lifetime_days: 90,
            ..AccountSettings::default()
        };
        assert_eq!(
            token_expiry(now(), None, &settings).unwrap(),
            now() + Duration::days(90)
        );
    }

    #[test]
    fn explicit_expiry_must_be_future_and_within_cap() {
        let settings = AccountSettings {
            max_token_lifetime_days: 30,
            ..AccountSettings::default()
        };
        let past = token_expiry(now(), Some(now() - Duration::seconds(1)), &settings).unwrap_err();
        assert_eq!(past.field, "expires_at");
        assert!(token_expiry(now(), Some(now()), &settings).is_err());
        assert!(token_expiry(now(), Some(now() + Duration::days(31)), &settings).is_err());
        let ok = now() + Duration::days(30);
        assert_eq!(token_expiry(now(), Some(ok), &settings).unwrap(), ok);
    }

    #[test]
    fn service_accounts_never_join_everyone() {
        let everyone = Uuid::now_v7();
        assert!(automatic_groups(ActorType::ServiceAccount, everyone).is_empty());
        assert!(automatic_groups(ActorType::ApiClient, everyone).is_empty());
        assert_eq!(automatic_groups(ActorType::User, everyone), vec![everyone]);
        assert_eq!(automatic_groups(ActorType::Admin, everyone), vec![everyone]);
        assert!(check_membership_change(GroupKind::Everyone).is_err());
        assert!(check_membership_change(GroupKind::Static).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_duration("12h").unwrap(), Duration::hours(12));
        assert_eq!(parse_duration("1y").unwrap(), Duration::days(365));
        assert_eq!(parse_duration("2w").unwrap(), Duration::days(14));
        for bad in ["", "d", "30", "30x", "-1d", "0d", "999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    fn token(name: &str, created: DateTime<Utc>, expires: DateTime<Utc>) -> Token {
        Token {
            id: Uuid::now_v7(),
            account_id: Uuid::now_v7(),
            kind: postern_token::TokenKind::Client,
            actor_id: Some(Uuid::now_v7()),
            site_id: None,
            name: name.into(),
            created_at: created,
            created_by: None,
            expires_at: expires,
            last_used_at: None,
            last_used_ip: None,
            last_used_user_agent: None,
            revoked_at: None,
            revoked_by: None,
            guardrails: Default::default(),
            rotated_from: None,
            successor_id: None,
            rotated_at: None,
            workload_identity_id: None,
        }
    }

    #[test]
    fn a_rotation_ends_the_old_token_after_the_window_and_renews_its_lifetime() {
        let settings = AccountSettings::default();
        let created = now() - Duration::days(300);
        let old = token("ci", created, created + Duration::days(365));
        let plan = plan_rotation(&old, None, now(), &settings).unwrap();
        assert_eq!(plan.predecessor_expires_at, now() + Duration::hours(24));
        assert_eq!(plan.successor_expires_at, now() + Duration::days(365));
        assert_eq!(plan.successor_name, "ci (rotated 2026-11-28)");
        // A window longer than what is left of the token does not extend it.
        let plan = plan_rotation(&old, Some(Duration::days(90)), now(), &settings).unwrap();
        assert_eq!(plan.predecessor_expires_at, old.expires_at);
        // Rotating the successor replaces the suffix; the account's cap bounds the lifetime.
        let capped = AccountSettings {
            max_token_lifetime_days: 30,
            ..AccountSettings::default()
        };
        let plan = plan_rotation(
            &token(
                "ci (rotated 2026-01-01)",
                created,
                created + Duration::days(365),
            ),
            Some(Duration::hours(1)),
            now(),
            &capped,
        )
        .unwrap();
        assert_eq!(plan.successor_name, "ci (rotated 2026-11-28)");
        assert_eq!(plan.successor_expires_at, now() + Duration::days(30));
        let long = token(&"x".repeat(255), created, created + Duration::days(365));
        let plan = plan_rotation(&long, None, now(), &settings).unwrap();
        assert_eq!(plan.successor_name.chars().count(), 255);
        assert!(plan.successor_name.ends_with(" (rotated 2026-11-28)"));
    }

    #[test]
    fn a_rotation_is_refused_for_a_dead_or_rotated_token_and_a_bad_window() {
        let settings = AccountSettings::default();
        let live = token("ci", now() - Duration::days(1), now() + Duration::days(1));
        for overlap in [Duration::zero(), Duration::days(3651)] {
            assert!(matches!(
                plan_rotation(&live, Some(overlap), now(), &settings),
                Err(RotationError::Invalid(e)) if e.field == "overlap"
            ));
        }
        let mut revoked = live.clone();
        revoked.revoked_at = Some(now());
        assert_eq!(
            plan_rotation(&revoked, None, now(), &settings),
            Err(RotationError::Revoked)
        );
        let expired = token("ci", now() - Duration::days(2), now());
        assert_eq!(
            plan_rotation(&expired, None, now(), &settings),
            Err(RotationError::Expired)
        );
        let mut rotated = live;
        let successor = Uuid::now_v7();
        rotated.successor_id = Some(successor);
        assert_eq!(
            plan_rotation(&rotated, None, now(), &settings),
            Err(RotationError::AlreadyRotated(successor))
        );
    }

    #[test]
    fn people_need_an_email_and_machines_have_none() {
        assert!(check_creatable(ActorType::User, None).is_err());
        assert!(check_creatable(ActorType::User, Some("a@b.c")).is_ok());
        assert!(check_creatable(ActorType::ServiceAccount, Some("a@b.c")).is_err());
        assert!(check_creatable(ActorType::ServiceAccount, None).is_ok());
    }
}
