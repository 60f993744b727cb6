//! Sign-in, sessions and CSRF.
//!
//! A session id is 256 random bits, sent only in an `HttpOnly; SameSite=Strict` cookie; the
//! database holds its SHA-256. Each session has a random CSRF token that every state-changing
//! form carries (synchronizer pattern). The sign-in form itself uses a double-submit cookie.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use maud::{html, Markup};
use postern_api::ClientAddr;
use postern_domain::{Acting, Actor, ActorType};
use postern_store::{StoreError, WebSession, DEFAULT_ACCOUNT_SLUG};
use postern_token::SecretString;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::{WebError, WebResult};
use crate::form::{FieldErrors, Fields};
use crate::{ui, WebState};

const SESSION_COOKIE: &str = "postern_session";
const LOGIN_CSRF_COOKIE: &str = "postern_login_csrf";
/// Failed sign-ins allowed per source IP and per email within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The signed-in administrator of a request.
#[derive(Debug, Clone)]
pub struct Admin {
    pub actor: Actor,
    pub session: WebSession,
    pub source_ip: Option<IpAddr>,
    /// Seals the secrets this session is shown once (derived from the cookie's session id).
    pub seal_key: crate::once::SealKey,
}

impl Admin {
    pub fn account_id(&self) -> Uuid {
        self.session.account_id
    }

    pub fn csrf(&self) -> &str {
        &self.session.csrf_token
    }

    /// Who acts, for the audit log.
    pub fn acting(&self) -> Acting {
        Acting {
            actor_id: Some(self.actor.id),
            token_id: None,
            source_ip: self.source_ip.map(|ip| ip.to_string()),
        }
    }

    pub fn check_csrf(&self, submitted: &str) -> Result<(), WebError> {
        check_csrf(&self.session, submitted)
    }
}

/// The form's CSRF token must be the session's (compared in constant time).
fn check_csrf(session: &WebSession, submitted: &str) -> Result<(), WebError> {
    let expected = session.csrf_token.as_bytes();
    if submitted.is_empty() || !bool::from(submitted.as_bytes().ct_eq(expected)) {
        return Err(WebError::Csrf);
    }
    Ok(())
}

impl FromRequestParts<WebState> for Admin {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, WebError> {
        let person = Person::from_request_parts(parts, state).await?;
        // Changing an admin's type ends their admin pages at once; a user has their own page.
        if person.actor.actor_type != ActorType::Admin {
            return Err(WebError::NotAdmin);
        }
        Ok(Admin {
            actor: person.actor,
            session: person.session,
            source_ip: person.source_ip,
            seal_key: person.seal_key,
        })
    }
}

/// The signed-in person of a request: an admin or a user (who signed in through an identity
/// provider).
#[derive(Debug, Clone)]
pub struct Person {
    pub actor: Actor,
    pub session: WebSession,
    pub source_ip: Option<IpAddr>,
    pub seal_key: crate::once::SealKey,
}

impl FromRequestParts<WebState> for Person {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, WebError> {
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(WebError::SignIn);
        };
        let Some(session) = state.store().web_session(&hash_id(&id), Utc::now()).await? else {
            return Err(WebError::SignIn);
        };
        let actor = match state
            .store()
            .get_actor(session.account_id, session.actor_id)
            .await
        {
            Ok(actor) => actor,
            Err(StoreError::NotFound(_)) => return Err(WebError::SignIn),
            Err(err) => return Err(err.into()),
        };
        // Disabling a person (or making them something that never signs in) ends their
        // sessions at once.
        let person = matches!(actor.actor_type, ActorType::Admin | ActorType::User);
        if !person || actor.is_disabled() {
            return Err(WebError::SignIn);
        }
        Ok(Person {
            actor,
            session,
            source_ip: postern_api::source_ip(parts),
            seal_key: crate::once::SealKey::from_session_id(&id),
        })
    }
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
        .filter(|value| !value.is_empty())
}

pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub(crate) fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

pub(crate) fn set_cookie(
    state: &WebState,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> String {
    let mut cookie = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/");
    match max_age {
        Some(seconds) => cookie.push_str(&format!("; Max-Age={seconds}")),
        None => cookie.push_str("; Max-Age=0"),
    }
    if state.config.secure_cookies {
        cookie.push_str("; Secure");
    }
    cookie
}

/// A page saying why the sign-in was not tried, and when to try again (`Retry-After`).
fn retry_later(
    status: StatusCode,
    (title, heading): (&str, &str),
    text: &str,
    after_secs: u64,
) -> Response {
    let body = ui::message(heading, text);
    let mut response = (status, ui::bare_page(title, &body)).into_response();
    if let Ok(value) = after_secs.to_string().parse() {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// What sign-in attempts are counted under: the source address (an IPv6 one by its /64, which
/// one machine usually has whole), and the email together with that address — so that nobody
/// can lock a real administrator out from elsewhere.
fn sign_in_keys(ip: IpAddr, email: &str) -> [String; 2] {
    let network = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(bits))
        }
    };
    [format!("ip:{network}"), format!("email:{email}|{network}")]
}

/// Counts this attempt first (so that parallel attempts cannot all slip under the limit), then
/// says whether the attempts of the window, this one included, are over it. Counted in the
/// database, so that every portal node applies the same limit.
async fn sign_in_over_limit(
    state: &WebState,
    keys: &[String],
    now: chrono::DateTime<Utc>,
) -> Result<bool, StoreError> {
    let since = now - failure_window();
    state
        .store()
        .record_sign_in_attempt(keys, now, since)
        .await?;
    let attempts = state.store().sign_in_attempts(keys, since).await?;
    Ok(attempts > MAX_FAILURES as u64)
}

fn failure_window() -> chrono::Duration {
    chrono::Duration::from_std(FAILURE_WINDOW).unwrap_or_else(|_| chrono::Duration::minutes(15))
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    signed_out: Option<String>,
    /// The account (tenant) whose identity providers the page offers.
    #[serde(default)]
    account: Option<String>,
}

pub async fn login_page(
    State(state): State<WebState>,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    let notice = query.signed_out.is_some().then_some("You have signed out.");
    let form = LoginForm {
        account: query.account.unwrap_or_default(),
        ..LoginForm::default()
    };
    let providers = providers_of(&state, &form.account).await;
    login_response(&state, StatusCode::OK, &form, notice, &providers)
}

#[derive(Default)]
struct LoginForm {
    email: String,
    account: String,
    errors: FieldErrors,
}

/// The identity providers people of the account (`""`: the default one) sign in through.
async fn providers_of(
    state: &WebState,
    slug: &str,
) -> Vec<postern_domain::identity::IdentityProvider> {
    let slug = if slug.is_empty() {
        DEFAULT_ACCOUNT_SLUG
    } else {
        slug
    };
    let Ok(account) = state.store().account_by_slug(slug).await else {
        return Vec::new();
    };
    state
        .store()
        .list_identity_providers(account.id)
        .await
        .unwrap_or_default()
}

fn login_response(
    state: &WebState,
    status: StatusCode,
    form: &LoginForm,
    notice: Option<&str>,
    providers: &[postern_domain::identity::IdentityProvider],
) -> Response {
    let csrf = random_hex();
    let account = if form.account.is_empty() {
        DEFAULT_ACCOUNT_SLUG
    } else {
        form.account.as_str()
    };
    let body: Markup = html! {
        main.auth {
            div.auth-card {
                div.auth-brand { (ui::logo()) span { "Postern" } }
                h1 { "Sign in to the admin portal" }
                @if let Some(notice) = notice { p.notice role="status" { (notice) } }
                @if let Some(error) = form.errors.get("") {
                    div.alert.alert-error role="alert" data-testid="login-error" { (error) }
                }
                @if !providers.is_empty() {
                    div.providers {
                        @for provider in providers {
                            a.btn.btn-block href={ "/auth/oidc/" (provider.id) "/start?account=" (account) }
                                data-testid="sign-in-provider" data-name=(provider.name) { "Sign in with " (provider.name) }
                        }
                    }
                    p.hint.or { "or with a password" }
                }
                form method="post" action="/login" novalidate {
                    input type="hidden" name="_csrf" value=(csrf);
                    (ui::text_field("email", "Email", &form.email, &form.errors, "email", true, Some("username")))
                    (ui::password_field("password", "Password", &form.errors, "current-password"))
                    details.more {
                        summary { "Another account" }
                        (ui::text_field("account", "Account", account, &form.errors, "text", false, None))
                        p.hint { "The account (tenant) slug. Most portals have only " code { "default" } "." }
                    }
                    button.btn.btn-primary.btn-block type="submit" data-testid="sign-in" { "Sign in" }
                }
            }
        }
    };
    let mut response = (status, ui::bare_page("Sign in", &body)).into_response();
    if let Ok(value) = set_cookie(state, LOGIN_CSRF_COOKIE, &csrf, Some(3600)).parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response.headers_mut().insert(
        CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// A hash to verify against when the email is unknown, so that an unknown email takes as long
/// as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(b"postern-dummy-password", &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

fn verify_password(password: &str, hash: Option<&str>) -> bool {
    let hash = hash.unwrap_or_else(|| dummy_hash());
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

pub async fn login(
    State(state): State<WebState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> WebResult<Response> {
    let fields = Fields::new(fields);
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    let submitted = fields.get("_csrf");
    if expected.is_empty() || !bool::from(submitted.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(WebError::Csrf);
    }
    let email = fields.get("email").trim().to_ascii_lowercase();
    let account_slug = match fields.get("account").trim() {
        "" => DEFAULT_ACCOUNT_SLUG,
        slug => slug,
    };
    let mut form = LoginForm {
        email: email.clone(),
        account: account_slug.to_string(),
        errors: FieldErrors::default(),
    };
    if email.is_empty() {
        form.errors.add("email", "Enter your email address");
    }
    if fields.get("password").is_empty() {
        form.errors.add("password", "Enter your password");
    }
    if !form.errors.is_empty() {
        let providers = providers_of(&state, &form.account).await;
        return Ok(login_response(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            &form,
            None,
            &providers,
        ));
    }
    let keys = sign_in_keys(ip, &email);
    let now = Utc::now();
    if sign_in_over_limit(&state, &keys, now).await? {
        tracing::warn!(source_ip = %ip, "web sign-in rate limited");
        return Ok(retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            ("Too many attempts", "Too many failed sign-ins"),
            "Sign-in is paused for this address or email after repeated failures. Try again in 15 minutes.",
            FAILURE_WINDOW.as_secs(),
        ));
    }
    let account = match state.store().account_by_slug(account_slug).await {
        Ok(account) => Some(account),
        Err(StoreError::NotFound(_)) => None,
        Err(err) => return Err(err.into()),
    };
    let found = match &account {
        Some(account) => state.store().actor_by_email(account.id, &email).await?,
        None => None,
    };
    // Each check holds ~19 MiB for a moment: only a few at once; the excess is told to retry.
    let Ok(_checking) = state.password_checks.clone().try_acquire_owned() else {
        tracing::warn!(source_ip = %ip, "web sign-in refused: every password check is busy");
        return Ok(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            ("Busy", "The portal is busy"),
            "Too many sign-ins are being checked right now. Try again in a moment.",
            1,
        ));
    };
    let password = fields.get("password").to_string();
    let hash = found.as_ref().and_then(|(_, hash)| hash.clone());
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, hash.as_deref()))
        .await
        .unwrap_or(false);
    let admin = match found {
        Some((actor, _))
            if verified && actor.actor_type == ActorType::Admin && !actor.is_disabled() =>
        {
            actor
        }
        _ => {
            tracing::info!(source_ip = %ip, "web sign-in failed");
            if let Err(err) = state
                .store()
                .record_failed_auth(
                    account.as_ref().map(|a| a.id),
                    None,
                    Some(ip.to_string()),
                    "web_sign_in",
                )
                .await
            {
                tracing::warn!(error = %err, "could not record a failed sign-in");
            }
            form.errors.add(
                "",
                "The email or password is not right, or this account may not sign in here.",
            );
            let providers = providers_of(&state, &form.account).await;
            return Ok(login_response(
                &state,
                StatusCode::UNAUTHORIZED,
                &form,
                None,
                &providers,
            ));
        }
    };
    state.store().forget_sign_in_attempt(&keys, now).await?;
    let lifetime = state.config.session_lifetime;
    let session_cookie = open_session(&state, &admin, ip, &headers, lifetime, None).await?;
    tracing::info!(actor_id = %admin.id, source_ip = %ip, "web sign-in");
    let mut response = Redirect::to("/actors").into_response();
    for cookie in [
        session_cookie,
        set_cookie(&state, LOGIN_CSRF_COOKIE, "", None),
    ] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// Opens a web session for `actor` lasting `lifetime` (through the identity provider `through`
/// names, with the ID token to keep for signing out there); returns the session cookie to set.
pub(crate) async fn open_session(
    state: &WebState,
    actor: &Actor,
    ip: IpAddr,
    headers: &HeaderMap,
    lifetime: Duration,
    through: Option<(Uuid, Option<SecretString>)>,
) -> WebResult<String> {
    let (identity_provider_id, id_token) = through.unzip();
    let id = random_hex();
    let created_at = Utc::now();
    let session = WebSession {
        id_hash: hash_id(&id),
        account_id: actor.account_id,
        actor_id: actor.id,
        csrf_token: random_hex(),
        created_at,
        expires_at: created_at
            + chrono::Duration::from_std(lifetime).unwrap_or_else(|_| chrono::Duration::hours(12)),
        source_ip: Some(ip.to_string()),
        user_agent: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(255).collect()),
        identity_provider_id,
    };
    state
        .store()
        .create_web_session(&session, id_token.flatten().as_ref())
        .await?;
    Ok(set_cookie(
        state,
        SESSION_COOKIE,
        &id,
        Some(lifetime.as_secs()),
    ))
}

pub async fn logout(
    State(state): State<WebState>,
    person: Person,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> WebResult<Response> {
    check_csrf(&person.session, Fields::new(fields).get("_csrf"))?;
    let acting = Acting {
        actor_id: Some(person.actor.id),
        token_id: None,
        source_ip: person.source_ip.map(|ip| ip.to_string()),
    };
    let ended = state
        .store()
        .delete_web_session(&person.session.id_hash, &acting)
        .await?;
    let at_provider = match ended {
        Some(provider_session) => {
            crate::oidc::provider_sign_out_url(
                &state,
                person.actor.account_id,
                provider_session,
                &headers,
            )
            .await
        }
        None => None,
    };
    let mut response = match at_provider {
        Some(url) => crate::oidc::moving_on(
            "Signed out",
            html! { "Signing you out at your identity provider too. " },
            &url,
        ),
        None => Redirect::to("/login?signed_out=1").into_response(),
    };
    if let Ok(value) = set_cookie(&state, SESSION_COOKIE, "", None).parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod sign_in_key_tests {
    use super::*;

    #[test]
    fn an_ipv6_machine_is_one_key_by_its_64_and_the_email_goes_with_the_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(sign_in_keys(a, "x@y"), sign_in_keys(b, "x@y"));
        assert_ne!(sign_in_keys(a, "x@y"), sign_in_keys(other, "x@y"));
        assert_eq!(sign_in_keys(a, "x@y")[0], "ip:2001:db8:1:2::/64");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            sign_in_keys(v4, "admin@example.com"),
            [
                "ip:192.0.2.7".to_string(),
                "email:admin@example.com|192.0.2.7".to_string()
            ]
        );
    }
}
