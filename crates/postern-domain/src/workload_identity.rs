//! Workload identity federation: a service account trusts ID tokens from an OIDC issuer (a CI
//! system, Kubernetes, a cloud's instance identity) whose claims match a rule, and a workload
//! holding such a token exchanges it for a short-lived client token: no stored secret.
//!
//! Pure: the rule, its validation, the claim patterns and the exchanged token's lifetime. The
//! signature check lives in `postern-workload-identity`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::AccountSettings;
use crate::validate::{self, ValidationError};

/// An exchanged token lives this long unless the rule says otherwise.
pub const DEFAULT_EXCHANGED_TOKEN_LIFETIME: Duration = Duration::hours(1);
/// The longest life a rule may give an exchanged token.
pub const MAX_EXCHANGED_TOKEN_LIFETIME: Duration = Duration::hours(24);
/// The shortest (a client renews its token with a third of its life left).
pub const MIN_EXCHANGED_TOKEN_LIFETIME: Duration = Duration::minutes(1);
/// The most claim rules one trust rule holds.
pub const MAX_CLAIM_RULES: usize = 16;
/// The most trust rules one service account holds.
pub const MAX_WORKLOAD_IDENTITIES_PER_ACTOR: usize = 50;
/// The longest pattern, audience or issuer.
pub const MAX_PATTERN_LEN: usize = 255;
pub const MAX_ISSUER_LEN: usize = 2048;
/// The largest inline key set (JSON), for sites that cannot reach the issuer.
pub const MAX_INLINE_JWKS_BYTES: usize = 64 * 1024;

/// Claims a rule may not constrain through `claims`: they have their own fields, or are
/// checked for every token.
const RESERVED_CLAIMS: [&str; 7] = ["iss", "aud", "sub", "exp", "nbf", "iat", "jti"];

/// A trust rule on a service account: ID tokens from `issuer`, for `audience`, whose subject
/// and claims match, are exchanged for client tokens of the service account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub id: Uuid,
    pub account_id: Uuid,
    /// The service account the exchanged tokens belong to.
    pub actor_id: Uuid,
    pub name: String,
    /// The OIDC issuer (`iss`), compared exactly; its keys come from
    /// `<issuer>/.well-known/openid-configuration` unless `jwks` is set.
    pub issuer: String,
    /// The audience the ID token must be issued for (one of its `aud`).
    pub audience: String,
    /// The subject (`sub`) pattern: `*` stands for any run of characters.
    #[schema(value_type = String)]
    pub subject: ClaimPattern,
    /// Further claims and their patterns, e.g. `{"repository_owner": "acme", "ref":
    /// "refs/heads/main"}`; every one must match.
    #[schema(value_type = BTreeMap<String, String>)]
    pub claims: BTreeMap<String, ClaimPattern>,
    /// How long an exchanged token lives, in seconds (default 3600, at most 86400, never past
    /// the account's longest token lifetime).
    pub token_lifetime_seconds: u32,
    /// The issuer's keys (a JWKS), kept here for sites that cannot reach the issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    /// The last successful exchange.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A new trust rule, as sent.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkloadIdentity {
    /// A name for people (default: the issuer's host and the subject).
    #[schema(max_length = 255)]
    pub name: Option<String>,
    #[schema(
        max_length = 2048,
        example = "https://token.actions.githubusercontent.com"
    )]
    pub issuer: String,
    #[schema(max_length = 255, example = "postern")]
    pub audience: String,
    /// `*` stands for any run of characters; a pattern of only `*` is refused (it would trust
    /// every workload of the issuer).
    #[schema(max_length = 255, example = "repo:acme/deploy:ref:refs/heads/main")]
    pub subject: String,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// A duration such as `1h` or `30m` (default 1 h; 1 min to 24 h).
    #[schema(example = "1h")]
    pub token_lifetime: Option<String>,
    /// The issuer's key set (JWKS) for offline sites; otherwise it is fetched through
    /// discovery.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
}

/// A checked new trust rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidWorkloadIdentity {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub subject: ClaimPattern,
    pub claims: BTreeMap<String, ClaimPattern>,
    pub token_lifetime: Duration,
    pub jwks: Option<serde_json::Value>,
}

/// A pattern over a claim's value: `*` stands for any run of characters (also none, also `/`
/// and `:`); every other character stands for itself, case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClaimPattern(String);

impl ClaimPattern {
    pub fn parse(field: &str, text: &str) -> Result<Self, ValidationError> {
        if text.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if text.chars().count() > MAX_PATTERN_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_PATTERN_LEN} characters"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern is only wildcards (matches everything).
    pub fn matches_everything(&self) -> bool {
        self.0.chars().all(|c| c == '*')
    }

    /// Whether `value` matches: the literal parts in order, the first anchored at the start
    /// and the last at the end. Linear in the value's length per literal part.
    pub fn matches(&self, value: &str) -> bool {
        let mut parts = self.0.split('*');
        let Some(first) = parts.next() else {
            return value.is_empty();
        };
        let Some(mut rest) = value.strip_prefix(first) else {
            return false;
        };
        let middle: Vec<&str> = parts.collect();
        let Some((last, between)) = middle.split_last() else {
            // No `*` at all: the whole value must have been the literal.
            return rest.is_empty();
        };
        for part in between {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl std::fmt::Display for ClaimPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a new trust rule; errors name the field.
pub fn validate(input: NewWorkloadIdentity) -> Result<ValidWorkloadIdentity, ValidationError> {
    let issuer = validate_issuer("issuer", &input.issuer)?;
    let audience = input.audience.trim();
    if audience.is_empty() {
        return Err(ValidationError::new("audience", "must not be empty"));
    }
    if audience.chars().count() > MAX_PATTERN_LEN || audience.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "audience",
            format!("must be at most {MAX_PATTERN_LEN} characters, without control characters"),
        ));
    }
    let subject = ClaimPattern::parse("subject", input.subject.trim())?;
    if subject.matches_everything() {
        return Err(ValidationError::new(
            "subject",
            "must name something besides *: a subject of only wildcards would trust every \
             workload the issuer signs for (on GitHub, every repository in the world)",
        ));
    }
    if input.claims.len() > MAX_CLAIM_RULES {
        return Err(ValidationError::new(
            "claims",
            format!("must hold at most {MAX_CLAIM_RULES} claims"),
        ));
    }
    let mut claims = BTreeMap::new();
    for (name, pattern) in input.claims {
        let field = format!("claims.{name}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            return Err(ValidationError::new(
                field,
                "a claim name is 1 to 64 letters, digits, `_`, `-`, `.` or `:`",
            ));
        }
        if RESERVED_CLAIMS.contains(&name.as_str()) {
            return Err(ValidationError::new(
                field,
                "is checked by its own field (issuer, audience, subject) or for every token",
            ));
        }
        let pattern = ClaimPattern::parse(&field, &pattern)?;
        claims.insert(name, pattern);
    }
    let token_lifetime = match input.token_lifetime.as_deref() {
        None => DEFAULT_EXCHANGED_TOKEN_LIFETIME,
        Some(text) => crate::rules::parse_duration_of("token_lifetime", text)?,
    };
    if !(MIN_EXCHANGED_TOKEN_LIFETIME..=MAX_EXCHANGED_TOKEN_LIFETIME).contains(&token_lifetime) {
        return Err(ValidationError::new(
            "token_lifetime",
            "must be from 1m to 24h",
        ));
    }
    if let Some(jwks) = &input.jwks {
        let size = serde_json::to_vec(jwks)
            .map(|bytes| bytes.len())
            .unwrap_or(usize::MAX);
        if size > MAX_INLINE_JWKS_BYTES {
            return Err(ValidationError::new(
                "jwks",
                format!("must be at most {MAX_INLINE_JWKS_BYTES} bytes"),
            ));
        }
    }
    let name = match input.name.as_deref() {
        Some(name) => validate::name("name", name)?,
        None => default_name(&issuer, &subject),
    };
    Ok(ValidWorkloadIdentity {
        name,
        issuer,
        audience: audience.to_string(),
        subject,
        claims,
        token_lifetime,
        jwks: input.jwks,
    })
}

/// An issuer: `https://` (plain `http://` only to this machine), a host, no credentials, query
/// or fragment. Kept as written: ID tokens name their issuer exactly.
pub fn validate_issuer(field: &str, text: &str) -> Result<String, ValidationError> {
    let text = text.trim();
    if text.len() > MAX_ISSUER_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_ISSUER_LEN} characters"),
        ));
    }
    let url = crate::webhooks::validate_url(field, text)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ValidationError::new(
            field,
            "must not have a query or a fragment",
        ));
    }
    Ok(text.to_string())
}

fn default_name(issuer: &str, subject: &ClaimPattern) -> String {
    let host = url::Url::parse(issuer)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string))
        .unwrap_or_default();
    let name = format!("{host}: {subject}");
    name.chars().take(validate::MAX_NAME_LEN).collect()
}

/// When a token exchanged now under a rule with `lifetime` expires: never past the account's
/// longest token lifetime.
pub fn exchanged_token_expiry(
    lifetime: Duration,
    now: DateTime<Utc>,
    settings: &AccountSettings,
) -> DateTime<Utc> {
    let cap = Duration::days(i64::from(settings.max_token_lifetime_days));
    now + lifetime.min(cap).min(MAX_EXCHANGED_TOKEN_LIFETIME)
}

/// The claims of a verified ID token that a rule matched, for the audit log.
pub type MatchedClaims = BTreeMap<String, String>;

/// Why a verified ID token's claims do not satisfy a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimMismatch {
    #[error("the ID token's subject '{0}' does not match the trust rule's subject")]
    Subject(String),
    #[error("the ID token has no claim '{0}', which the trust rule requires")]
    Missing(String),
    #[error("the ID token's claim '{claim}' is '{value}', which the trust rule does not allow")]
    Claim { claim: String, value: String },
}

/// The text a claim's value is matched as: strings as they are, numbers and booleans as JSON
/// writes them; anything else has no text.
fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Checks the subject and claim rules of `rule` against a verified token's claims (issuer,
/// audience and times are checked with the signature); returns the matched claims.
pub fn match_claims(
    rule: &WorkloadIdentity,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<MatchedClaims, ClaimMismatch> {
    let subject = claims
        .get("sub")
        .and_then(claim_text)
        .ok_or_else(|| ClaimMismatch::Missing("sub".into()))?;
    if !rule.subject.matches(&subject) {
        return Err(ClaimMismatch::Subject(subject));
    }
    let mut matched = MatchedClaims::new();
    matched.insert("iss".into(), rule.issuer.clone());
    matched.insert("aud".into(), rule.audience.clone());
    matched.insert("sub".into(), subject);
    for (name, pattern) in &rule.claims {
        let value = claims
            .get(name)
            .ok_or_else(|| ClaimMismatch::Missing(name.clone()))?;
        // A list claim (groups, say) matches when one of its items does.
        let texts: Vec<String> = match value {
            serde_json::Value::Array(items) => items.iter().filter_map(claim_text).collect(),
            other => claim_text(other).into_iter().collect(),
        };
        let Some(hit) = texts.into_iter().find(|text| pattern.matches(text)) else {
            let shown = claim_text(value).unwrap_or_else(|| value.to_string());
            return Err(ClaimMismatch::Claim {
                claim: name.clone(),
                value: shown.chars().take(200).collect(),
            });
        };
        matched.insert(name.clone(), hit);
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pattern(text: &str) -> ClaimPattern {
        ClaimPattern::parse("p", text).unwrap()
    }

    #[test]
    fn patterns_match_literals_and_runs() {
        assert!(pattern("repo:acme/deploy:ref:refs/heads/main")
            .matches("repo:acme/deploy:ref:refs/heads/main"));
        assert!(!pattern("repo:acme/deploy").matches("repo:acme/deploy2"));
        assert!(!pattern("repo:acme/deploy").matches("repo:acme/deplo"));
        assert!(pattern("repo:acme/*").matches("repo:acme/x:ref:refs/heads/main"));
        assert!(pattern("repo:acme/*").matches("repo:acme/"));
        assert!(!pattern("repo:acme/*").matches("repo:acme"));
        assert!(!pattern("repo:acme/*").matches("repo:acmecorp/x"));
        assert!(pattern("repo:*:ref:refs/heads/main").matches("repo:a/b:ref:refs/heads/main"));
        assert!(!pattern("repo:*:ref:refs/heads/main").matches("repo:a/b:ref:refs/heads/dev"));
        assert!(pattern("*:prod").matches("system:serviceaccount:ns:prod"));
        assert!(pattern("a*b*c").matches("abc"));
        assert!(pattern("a*b*c").matches("a-b-b-c"));
        assert!(!pattern("a*b*c").matches("acb"));
        // The last literal may not overlap the middle ones.
        assert!(!pattern("ab*b").matches("ab"));
        assert!(pattern("ab*b").matches("abb"));
        assert!(!pattern("Repo:*").matches("repo:x"));
    }

    /// A pattern compiled to a regex, as the reference.
    fn reference(pattern: &str, value: &str) -> bool {
        fn go(p: &[char], v: &[char]) -> bool {
            match p.split_first() {
                None => v.is_empty(),
                Some(('*', rest)) => (0..=v.len()).any(|skip| go(rest, &v[skip..])),
                Some((c, rest)) => v.first() == Some(c) && go(rest, &v[1..]),
            }
        }
        let p: Vec<char> = pattern.chars().collect();
        let v: Vec<char> = value.chars().collect();
        go(&p, &v)
    }

    proptest! {
        #[test]
        fn matching_agrees_with_a_backtracking_reference(
            pattern_text in "[ab*:/]{1,8}",
            value in "[ab:/]{0,10}",
        ) {
            let pattern = ClaimPattern::parse("p", &pattern_text).unwrap();
            prop_assert_eq!(pattern.matches(&value), reference(&pattern_text, &value));
        }
    }

    fn input() -> NewWorkloadIdentity {
        NewWorkloadIdentity {
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "postern".into(),
            subject: "repo:acme/deploy:*".into(),
            claims: [("repository_owner".to_string(), "acme".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_rule_is_checked_field_by_field() {
        let valid = validate(input()).unwrap();
        assert_eq!(valid.token_lifetime, Duration::hours(1));
        assert_eq!(
            valid.name,
            "token.actions.githubusercontent.com: repo:acme/deploy:*"
        );
        let refused = |change: fn(&mut NewWorkloadIdentity)| {
            let mut input = input();
            change(&mut input);
            validate(input).unwrap_err().field
        };
        assert_eq!(
            refused(|i| i.issuer = "http://issuer.example".into()),
            "issuer"
        );
        assert_eq!(
            refused(|i| i.issuer = "https://x.example/?a=1".into()),
            "issuer"
        );
        assert_eq!(refused(|i| i.audience = " ".into()), "audience");
        assert_eq!(refused(|i| i.subject = "**".into()), "subject");
        assert_eq!(refused(|i| i.subject = String::new()), "subject");
        assert_eq!(
            refused(|i| {
                i.claims.insert("sub".into(), "x".into());
            }),
            "claims.sub"
        );
        assert_eq!(
            refused(|i| {
                i.claims.insert("bad name".into(), "x".into());
            }),
            "claims.bad name"
        );
        assert_eq!(
            refused(|i| i.token_lifetime = Some("25h".into())),
            "token_lifetime"
        );
        assert_eq!(
            refused(|i| i.token_lifetime = Some("30s".into())),
            "token_lifetime"
        );
        assert_eq!(
            refused(|i| i.token_lifetime = Some("soon".into())),
            "token_lifetime"
        );
        let local = NewWorkloadIdentity {
            issuer: "http://127.0.0.1:8080/issuer".into(),
            ..input()
        };
        assert_eq!(
            validate(local).unwrap().issuer,
            "http://127.0.0.1:8080/issuer"
        );
    }

    fn rule() -> WorkloadIdentity {
        let valid = validate(input()).unwrap();
        WorkloadIdentity {
            id: Uuid::nil(),
            account_id: Uuid::nil(),
            actor_id: Uuid::nil(),
            name: valid.name,
            issuer: valid.issuer,
            audience: valid.audience,
            subject: valid.subject,
            claims: valid.claims,
            token_lifetime_seconds: 3600,
            jwks: None,
            created_at: DateTime::<Utc>::MIN_UTC,
            created_by: None,
            last_used_at: None,
        }
    }

    fn claims(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn claims_match_or_say_which_one_did_not() {
        let matched = match_claims(
            &rule(),
            &claims(
                json!({"sub": "repo:acme/deploy:ref:refs/heads/main", "repository_owner": "acme"}),
            ),
        )
        .unwrap();
        assert_eq!(matched["repository_owner"], "acme");
        assert_eq!(matched["sub"], "repo:acme/deploy:ref:refs/heads/main");
        assert_eq!(
            match_claims(
                &rule(),
                &claims(json!({"sub": "repo:evil/deploy:x", "repository_owner": "acme"}))
            ),
            Err(ClaimMismatch::Subject("repo:evil/deploy:x".into()))
        );
        assert_eq!(
            match_claims(&rule(), &claims(json!({"sub": "repo:acme/deploy:x"}))),
            Err(ClaimMismatch::Missing("repository_owner".into()))
        );
        assert!(matches!(
            match_claims(
                &rule(),
                &claims(json!({"sub": "repo:acme/deploy:x", "repository_owner": "evil"}))
            ),
            Err(ClaimMismatch::Claim { .. })
        ));
        // Lists match by any item; numbers by their text.
        let mut list_rule = rule();
        list_rule.claims = [
            ("groups".to_string(), pattern("deployers")),
            ("run_attempt".to_string(), pattern("1")),
        ]
        .into();
        assert!(match_claims(
            &list_rule,
            &claims(
                json!({"sub": "repo:acme/deploy:x", "groups": ["a", "deployers"], "run_attempt": 1})
            )
        )
        .is_ok());
        assert!(match_claims(
            &list_rule,
            &claims(json!({"sub": "repo:acme/deploy:x", "groups": {"a": 1}, "run_attempt": 1}))
        )
        .is_err());
    }

    #[test]
    fn an_exchanged_token_never_outlives_the_account_cap() {
        let now = DateTime::<Utc>::MIN_UTC + Duration::days(1000);
        let settings = AccountSettings::default();
        assert_eq!(
            exchanged_token_expiry(Duration::hours(2), now, &settings),
            now + Duration::hours(2)
        );
        let short = AccountSettings {
            max_token_lifetime_days: 0,
            ..AccountSettings::default()
        };
        assert_eq!(exchanged_token_expiry(Duration::hours(2), now, &short), now);
    }
}
