//! Identity providers: how people (users and admins, never service accounts) sign in through an
//! OpenID Connect provider, and what their first sign-in makes of them. Pure.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::ActorType;
use crate::validate::{self, ValidationError};

/// People signed in through a provider stay signed in this long unless it says otherwise.
pub const DEFAULT_PERSON_SESSION: Duration = Duration::hours(12);
/// The longest web session a provider may give.
pub const MAX_PERSON_SESSION: Duration = Duration::days(30);
/// The most identity providers one account holds.
pub const MAX_PROVIDERS_PER_ACCOUNT: usize = 10;
/// How long a sign-in may take between leaving for the provider and coming back.
pub const SIGN_IN_TIMEOUT: Duration = Duration::minutes(10);

/// An OpenID Connect provider people of the account sign in through.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct IdentityProvider {
    pub id: Uuid,
    pub account_id: Uuid,
    /// Shown on the sign-in page: "Sign in with NAME".
    pub name: String,
    /// The issuer; its endpoints and keys come from its discovery document.
    pub issuer: String,
    pub client_id: String,
    /// Whether a client secret is set (it is never shown).
    pub has_client_secret: bool,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The ID token claim that holds the person's email.
    pub email_claim: String,
    /// The ID token claim that lists the person's groups, if any.
    pub groups_claim: Option<String>,
    /// A person in one of these groups (per `groups_claim`) is an admin; anyone else a user.
    pub admin_groups: Vec<String>,
    /// How long people signed in through it stay signed in to the portal, in seconds.
    pub session_lifetime_seconds: u32,
    /// Signing out of the portal also signs the person out at the provider (OpenID Connect
    /// RP-initiated logout, when its discovery document names an `end_session_endpoint`).
    /// Off by default: at most providers that ends the person's sessions in every other
    /// application too.
    pub sign_out_at_provider: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new identity provider, as sent.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIdentityProvider {
    #[schema(max_length = 255, example = "Okta")]
    pub name: String,
    #[schema(max_length = 2048, example = "https://acme.okta.com")]
    pub issuer: String,
    #[schema(max_length = 255)]
    pub client_id: String,
    /// Write-only: kept sealed, never returned.
    #[schema(max_length = 1024)]
    pub client_secret: Option<String>,
    /// Besides `openid` (default: `email`, `profile`).
    pub scopes: Option<Vec<String>>,
    /// Default `email`.
    pub email_claim: Option<String>,
    /// e.g. `groups`.
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// A duration such as `12h` or `7d` (default 12 h, at most 30 days).
    #[schema(example = "12h")]
    pub session_lifetime: Option<String>,
    /// Sign people out at the provider too when they sign out of the portal (default false).
    pub sign_out_at_provider: Option<bool>,
}

/// A checked new identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidIdentityProvider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    pub email_claim: String,
    pub groups_claim: Option<String>,
    pub admin_groups: Vec<String>,
    pub session_lifetime: Duration,
    pub sign_out_at_provider: bool,
}

fn token_like(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters, without spaces or control characters"),
        ));
    }
    Ok(value.to_string())
}

/// Checks a new identity provider; errors name the field.
pub fn validate_provider(
    new: NewIdentityProvider,
) -> Result<ValidIdentityProvider, ValidationError> {
    let name = validate::name("name", &new.name)?;
    let issuer = crate::workload_identity::validate_issuer("issuer", &new.issuer)?;
    let client_id = token_like("client_id", &new.client_id, 255)?;
    let client_secret = new
        .client_secret
        .as_deref()
        .map(|secret| token_like("client_secret", secret, 1024))
        .transpose()?;
    let scopes = match new.scopes {
        None => vec!["email".to_string(), "profile".to_string()],
        Some(scopes) => scopes
            .iter()
            .filter(|scope| scope.trim() != "openid")
            .map(|scope| token_like("scopes", scope, 100))
            .collect::<Result<_, _>>()?,
    };
    if scopes.len() > 20 {
        return Err(ValidationError::new(
            "scopes",
            "must hold at most 20 scopes",
        ));
    }
    let email_claim = match new.email_claim.as_deref() {
        None => "email".to_string(),
        Some(claim) => token_like("email_claim", claim, 64)?,
    };
    let groups_claim = new
        .groups_claim
        .as_deref()
        .map(|claim| token_like("groups_claim", claim, 64))
        .transpose()?;
    let admin_groups: Vec<String> = new
        .admin_groups
        .iter()
        .map(|group| validate::name("admin_groups", group))
        .collect::<Result<_, _>>()?;
    if !admin_groups.is_empty() && groups_claim.is_none() {
        return Err(ValidationError::new(
            "admin_groups",
            "needs groups_claim: the claim that lists a person's groups",
        ));
    }
    let session_lifetime = match new.session_lifetime.as_deref() {
        None => DEFAULT_PERSON_SESSION,
        Some(text) => crate::rules::parse_duration_of("session_lifetime", text)?,
    };
    if session_lifetime < Duration::minutes(5) || session_lifetime > MAX_PERSON_SESSION {
        return Err(ValidationError::new(
            "session_lifetime",
            "must be from 5m to 30d",
        ));
    }
    Ok(ValidIdentityProvider {
        name,
        issuer,
        client_id,
        client_secret,
        scopes,
        email_claim,
        groups_claim,
        admin_groups,
        session_lifetime,
        sign_out_at_provider: new.sign_out_at_provider.unwrap_or(false),
    })
}

/// What an update of a provider changes; `None` keeps a field (its issuer stays: people are
/// recognized by that issuer's subjects).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderPatch {
    #[schema(max_length = 255)]
    pub name: Option<String>,
    #[schema(max_length = 255)]
    pub client_id: Option<String>,
    /// Write-only: replaces the sealed secret.
    #[schema(max_length = 1024)]
    pub client_secret: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub email_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub admin_groups: Option<Vec<String>>,
    #[schema(example = "8h")]
    pub session_lifetime: Option<String>,
    pub sign_out_at_provider: Option<bool>,
}

/// A provider with a patch applied, checked like a new one.
pub fn apply_patch(
    provider: &IdentityProvider,
    patch: IdentityProviderPatch,
) -> Result<ValidIdentityProvider, ValidationError> {
    let lifetime = format!("{}s", provider.session_lifetime_seconds);
    let mut valid = validate_provider(NewIdentityProvider {
        name: patch.name.unwrap_or_else(|| provider.name.clone()),
        issuer: provider.issuer.clone(),
        client_id: patch
            .client_id
            .unwrap_or_else(|| provider.client_id.clone()),
        client_secret: patch.client_secret,
        scopes: Some(patch.scopes.unwrap_or_else(|| provider.scopes.clone())),
        email_claim: Some(
            patch
                .email_claim
                .unwrap_or_else(|| provider.email_claim.clone()),
        ),
        groups_claim: patch.groups_claim.or_else(|| provider.groups_claim.clone()),
        admin_groups: patch
            .admin_groups
            .unwrap_or_else(|| provider.admin_groups.clone()),
        session_lifetime: Some(patch.session_lifetime.unwrap_or(lifetime)),
        sign_out_at_provider: Some(
            patch
                .sign_out_at_provider
                .unwrap_or(provider.sign_out_at_provider),
        ),
    })?;
    valid.issuer = provider.issuer.clone();
    Ok(valid)
}

/// Who a verified ID token says the person is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The provider's `sub`: what the person is recognized by on later sign-ins.
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

/// Why a verified ID token does not make a person who may sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersonRefusal {
    #[error("the identity provider's ID token names no subject (sub)")]
    NoSubject,
    #[error("the identity provider gave no email in the '{0}' claim")]
    NoEmail(String),
    #[error("the identity provider says the email {0} is not verified")]
    EmailNotVerified(String),
    #[error("{0}")]
    Invalid(#[from] ValidationError),
}

/// The person a verified ID token's claims describe, per the provider's settings.
pub fn person_from_claims(
    provider: &IdentityProvider,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Person, PersonRefusal> {
    let text = |name: &str| claims.get(name).and_then(|value| value.as_str());
    let subject = text("sub")
        .filter(|sub| !sub.is_empty())
        .ok_or(PersonRefusal::NoSubject)?
        .to_string();
    let email_text = text(&provider.email_claim)
        .ok_or_else(|| PersonRefusal::NoEmail(provider.email_claim.clone()))?;
    let email = validate::email("email", email_text)?;
    if claims.get("email_verified").and_then(|v| v.as_bool()) == Some(false) {
        return Err(PersonRefusal::EmailNotVerified(email));
    }
    let name = text("name")
        .or_else(|| text("preferred_username"))
        .unwrap_or(&email);
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(validate::MAX_NAME_LEN)
        .collect();
    let groups = match provider
        .groups_claim
        .as_deref()
        .and_then(|claim| claims.get(claim))
    {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .take(1000)
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Ok(Person {
        subject,
        email,
        name: if name.trim().is_empty() {
            email_text.to_string()
        } else {
            name
        },
        groups,
    })
}

/// What a person is in the portal: an admin when one of their groups is an admin group.
pub fn person_type(provider: &IdentityProvider, person: &Person) -> ActorType {
    let admin = person
        .groups
        .iter()
        .any(|group| provider.admin_groups.contains(group));
    if admin {
        ActorType::Admin
    } else {
        ActorType::User
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> IdentityProvider {
        let valid = validate_provider(NewIdentityProvider {
            name: "Okta".into(),
            issuer: "https://acme.okta.com".into(),
            client_id: "postern".into(),
            client_secret: Some("s3cret".into()),
            groups_claim: Some("groups".into()),
            admin_groups: vec!["postern-admins".into()],
            ..Default::default()
        })
        .unwrap();
        IdentityProvider {
            id: Uuid::nil(),
            account_id: Uuid::nil(),
            name: valid.name,
            issuer: valid.issuer,
            client_id: valid.client_id,
            has_client_secret: true,
            scopes: valid.scopes,
            email_claim: valid.email_claim,
            groups_claim: valid.groups_claim,
            admin_groups: valid.admin_groups,
            session_lifetime_seconds: 43200,
            sign_out_at_provider: valid.sign_out_at_provider,
            created_at: DateTime::<Utc>::MIN_UTC,
            updated_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    fn claims(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_provider_is_checked_field_by_field() {
        let valid = validate_provider(NewIdentityProvider {
            name: "Okta".into(),
            issuer: "https://acme.okta.com".into(),
            client_id: "postern".into(),
            scopes: Some(vec!["openid".into(), "email".into(), "groups".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            valid.scopes,
            ["email", "groups"],
            "openid is always asked for"
        );
        assert_eq!(valid.email_claim, "email");
        assert_eq!(valid.session_lifetime, Duration::hours(12));
        let refused = |change: fn(&mut NewIdentityProvider)| {
            let mut new = NewIdentityProvider {
                name: "Okta".into(),
                issuer: "https://acme.okta.com".into(),
                client_id: "postern".into(),
                ..Default::default()
            };
            change(&mut new);
            validate_provider(new).unwrap_err().field
        };
        assert_eq!(
            refused(|n| n.issuer = "http://acme.okta.com".into()),
            "issuer"
        );
        assert_eq!(refused(|n| n.client_id = " ".into()), "client_id");
        assert_eq!(
            refused(|n| n.admin_groups = vec!["admins".into()]),
            "admin_groups"
        );
        assert_eq!(
            refused(|n| n.session_lifetime = Some("31d".into())),
            "session_lifetime"
        );
        assert_eq!(refused(|n| n.name = String::new()), "name");
    }

    #[test]
    fn claims_make_a_person_and_groups_make_an_admin() {
        let provider = provider();
        let person = person_from_claims(
            &provider,
            &claims(json!({"sub": "00u1", "email": "Ada@Example.com", "name": "Ada", "groups": ["eng", "postern-admins"]})),
        )
        .unwrap();
        assert_eq!(person.email, "ada@example.com");
        assert_eq!(person.groups, ["eng", "postern-admins"]);
        assert_eq!(person_type(&provider, &person), ActorType::Admin);
        let user = person_from_claims(
            &provider,
            &claims(json!({"sub": "00u2", "email": "bob@example.com", "groups": "eng"})),
        )
        .unwrap();
        assert_eq!(user.name, "bob@example.com");
        assert_eq!(person_type(&provider, &user), ActorType::User);
        assert_eq!(
            person_from_claims(&provider, &claims(json!({"sub": "00u3"}))),
            Err(PersonRefusal::NoEmail("email".into()))
        );
        assert!(matches!(
            person_from_claims(
                &provider,
                &claims(
                    json!({"sub": "00u3", "email": "eve@example.com", "email_verified": false})
                )
            ),
            Err(PersonRefusal::EmailNotVerified(_))
        ));
    }

    #[test]
    fn signing_out_at_the_provider_is_off_until_asked_and_kept_by_other_patches() {
        let mut provider = provider();
        assert!(!provider.sign_out_at_provider);
        let on = apply_patch(
            &provider,
            IdentityProviderPatch {
                sign_out_at_provider: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(on.sign_out_at_provider);
        provider.sign_out_at_provider = true;
        let renamed = apply_patch(
            &provider,
            IdentityProviderPatch {
                name: Some("Okta EU".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(renamed.sign_out_at_provider, "kept");
    }
}
