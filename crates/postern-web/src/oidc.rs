//! People sign in through an account's OpenID Connect providers: the authorization code flow
//! with PKCE, `state` and `nonce` (openidconnect). The `state` goes to the provider and into a
//! `SameSite=Lax` cookie of this browser; its hash, the nonce and the sealed PKCE verifier wait
//! in the database, taken once when the browser comes back — a wrong state, a replayed
//! callback or one older than ten minutes is refused. The ID token is verified (signature
//! against the provider's keys, issuer, audience, expiry, nonce) before its claims are read.
//! Signing out may go on to the provider's `end_session_endpoint` (RP-initiated logout) when
//! the provider is set to, with the session's ID token as `id_token_hint`.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, HOST, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use maud::{html, Markup};
use openidconnect::core::CoreIdToken;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, LogoutRequest, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout,
    RedirectUrl, Scope,
};
use postern_api::ClientAddr;
use postern_domain::identity::{person_from_claims, IdentityProvider};
use postern_domain::ActorType;
use postern_store::{ProviderSession, StoreError, DEFAULT_ACCOUNT_SLUG};
use postern_token::SecretString;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::auth::{cookie, hash_id, open_session, Person};
use crate::error::{WebError, WebResult};
use crate::{ui, WebState};

/// Carries the sign-in's `state` back from the provider (a top-level cross-site navigation,
/// hence `Lax`).
const FLOW_COOKIE: &str = "postern_oidc_state";
/// Where providers send the browser back; register `<portal URL>/auth/oidc/callback`.
pub const CALLBACK_PATH: &str = "/auth/oidc/callback";
/// Where providers send the browser after signing a person out there; register
/// `<portal URL>/auth/oidc/signed-out` as a post-logout redirect URI.
pub const SIGNED_OUT_PATH: &str = "/auth/oidc/signed-out";
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Sign-ins one address may start in a minute (a person needs a few).
pub const STARTS_PER_MINUTE: u32 = 30;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/auth/oidc/{provider_id}/start", get(start))
        .route(CALLBACK_PATH, get(callback))
        .route(
            SIGNED_OUT_PATH,
            get(|| async { Redirect::to("/login?signed_out=1") }),
        )
        .route("/me", get(me))
}

/// Where the browser goes to be signed out at the provider too, for a session opened through
/// one that is set to (`sign_out_at_provider`): its `end_session_endpoint` with the session's
/// ID token as `id_token_hint`, the client id, and back to [`SIGNED_OUT_PATH`]. `None` when
/// the provider is not set to, is gone, or names no such endpoint — the portal's own session
/// has ended either way.
pub(crate) async fn provider_sign_out_url(
    state: &WebState,
    account_id: uuid::Uuid,
    session: ProviderSession,
    headers: &HeaderMap,
) -> Option<String> {
    let provider = state
        .store()
        .get_identity_provider(account_id, session.provider_id)
        .await
        .ok()
        .filter(|provider| provider.sign_out_at_provider)?;
    let ended = async {
        let issuer = IssuerUrl::new(provider.issuer.clone()).map_err(|err| err.to_string())?;
        let metadata = ProviderMetadataWithLogout::discover_async(
            issuer,
            &http_client().map_err(|err| err.to_string())?,
        )
        .await
        .map_err(|err| format!("cannot read the discovery document: {err}"))?;
        let endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()
            .ok_or("its discovery document names no end_session_endpoint")?;
        let back = PostLogoutRedirectUrl::new(format!(
            "{}{SIGNED_OUT_PATH}",
            portal_url(state, headers).map_err(|err| err.to_string())?
        ))
        .map_err(|err| err.to_string())?;
        let mut request = LogoutRequest::from(endpoint)
            .set_client_id(ClientId::new(provider.client_id.clone()))
            .set_post_logout_redirect_uri(back);
        let hint = session
            .id_token
            .as_ref()
            .and_then(|token| token.expose().parse::<CoreIdToken>().ok());
        if let Some(hint) = &hint {
            request = request.set_id_token_hint(hint);
        }
        Ok::<_, String>(request.http_get_url().to_string())
    }
    .await;
    match ended {
        Ok(url) => Some(url),
        Err(reason) => {
            tracing::warn!(provider = %provider.id, %reason, "cannot sign the person out at the identity provider");
            None
        }
    }
}

fn http_client() -> Result<openidconnect::reqwest::Client, WebError> {
    openidconnect::reqwest::Client::builder()
        // Following redirects would let a provider's answer send the portal anywhere.
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|err| WebError::BadRequest(format!("cannot set up HTTPS: {err}")))
}

/// The portal's own URL as the browser reaches it (`https` when its cookies are `Secure`):
/// the redirect URI providers send people back to, and the SCIM base URL.
pub(crate) fn portal_url(state: &WebState, headers: &HeaderMap) -> Result<String, WebError> {
    if let Some(public_url) = &state.config.public_url {
        return Ok(public_url.clone());
    }
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| !host.is_empty() && !host.contains(['/', '@', ' ']))
        .ok_or_else(|| WebError::BadRequest("the request names no host".into()))?;
    let scheme = if state.config.secure_cookies {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{host}"))
}

fn redirect_url(state: &WebState, headers: &HeaderMap) -> Result<RedirectUrl, WebError> {
    RedirectUrl::new(format!("{}{CALLBACK_PATH}", portal_url(state, headers)?))
        .map_err(|err| WebError::BadRequest(format!("the portal's URL: {err}")))
}

/// A page that tells the person why the sign-in failed, with the way back.
fn failed(status: StatusCode, reason: &str) -> Response {
    tracing::info!(%reason, "a sign-in through an identity provider failed");
    let body = html! {
        main.auth {
            div.auth-card {
                div.auth-brand { (ui::logo()) span { "Postern" } }
                h1 { "Sign-in failed" }
                div.alert.alert-error role="alert" data-testid="sign-in-failed" { (reason) }
                a.btn.btn-primary.btn-block href="/login" { "Back to sign-in" }
            }
        }
    };
    let mut response = (status, ui::bare_page("Sign-in failed", &body)).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn client_for(
    state: &WebState,
    provider: &IdentityProvider,
    redirect: RedirectUrl,
    http: &openidconnect::reqwest::Client,
) -> Result<
    openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    String,
> {
    let issuer = IssuerUrl::new(provider.issuer.clone()).map_err(|err| err.to_string())?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|err| {
            format!(
                "cannot read the discovery document of {}: {err}",
                provider.issuer
            )
        })?;
    let secret = state
        .store()
        .identity_provider_secret(provider.account_id, provider.id)
        .await
        .map_err(|err| err.to_string())?
        .map(|secret| ClientSecret::new(secret.expose().to_string()));
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.client_id.clone()),
        secret,
    )
    .set_redirect_uri(redirect))
}

#[derive(Deserialize)]
struct StartQuery {
    account: Option<String>,
}

/// Leaves for the provider's authorization endpoint.
async fn start(
    State(state): State<WebState>,
    ClientAddr(ip): ClientAddr,
    Path(provider_id): Path<String>,
    Query(query): Query<StartQuery>,
    headers: HeaderMap,
) -> WebResult<Response> {
    if state.sign_in_starts.check(ip).is_some() {
        return Ok(failed(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins were started from this address: try again in a minute.",
        ));
    }
    state.sign_in_starts.record_failure(ip);
    let provider_id = crate::form::parse_path_id(&provider_id, "identity provider")?;
    let slug = query.account.as_deref().unwrap_or(DEFAULT_ACCOUNT_SLUG);
    let account = match state.store().account_by_slug(slug).await {
        Ok(account) => account,
        Err(StoreError::NotFound(_)) => return Err(WebError::NotFound("account")),
        Err(err) => return Err(err.into()),
    };
    let provider = state
        .store()
        .get_identity_provider(account.id, provider_id)
        .await?;
    let http = http_client()?;
    let redirect = redirect_url(&state, &headers)?;
    let client = match client_for(&state, &provider, redirect, &http).await {
        Ok(client) => client,
        Err(reason) => return Ok(failed(StatusCode::BAD_GATEWAY, &reason)),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    for scope in &provider.scopes {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, csrf, nonce) = request.set_pkce_challenge(challenge).url();
    let verifier = postern_token::SecretString::new(verifier.secret().clone());
    state
        .store()
        .begin_sign_in(
            account.id,
            provider.id,
            &hash_id(csrf.secret()),
            nonce.secret(),
            &verifier,
        )
        .await?;
    let mut response = Redirect::to(url.as_str()).into_response();
    let mut flow = format!(
        "{FLOW_COOKIE}={}; HttpOnly; SameSite=Lax; Path=/auth/oidc; Max-Age={}",
        csrf.secret(),
        postern_domain::identity::SIGN_IN_TIMEOUT.num_seconds()
    );
    if state.config.secure_cookies {
        flow.push_str("; Secure");
    }
    if let Ok(value) = flow.parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The claims of an ID token the verifier accepted (its payload, as JSON).
fn payload_claims(id_token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Back from the provider: checks the state, redeems the code, verifies the ID token, signs
/// the person in.
async fn callback(
    State(state): State<WebState>,
    ClientAddr(ip): ClientAddr,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> WebResult<Response> {
    if let Some(error) = &query.error {
        let detail = query.error_description.as_deref().unwrap_or_default();
        return Ok(failed(
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider refused the sign-in: {error} {detail}"),
        ));
    }
    let (Some(code), Some(returned_state)) = (&query.code, &query.state) else {
        return Ok(failed(
            StatusCode::BAD_REQUEST,
            "The identity provider sent no code or state back.",
        ));
    };
    let expected = cookie(&headers, FLOW_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(returned_state.as_bytes())) {
        return Ok(failed(
            StatusCode::BAD_REQUEST,
            "This sign-in did not start in this browser (its state does not match): start again from the sign-in page.",
        ));
    }
    let Some(pending) = state.store().take_sign_in(&hash_id(returned_state)).await? else {
        return Ok(failed(
            StatusCode::BAD_REQUEST,
            "This sign-in was already used or is older than ten minutes: start again from the sign-in page.",
        ));
    };
    let provider = state
        .store()
        .get_identity_provider(pending.account_id, pending.provider_id)
        .await?;
    let http = http_client()?;
    let redirect = redirect_url(&state, &headers)?;
    let client = match client_for(&state, &provider, redirect, &http).await {
        Ok(client) => client,
        Err(reason) => return Ok(failed(StatusCode::BAD_GATEWAY, &reason)),
    };
    let exchange = match client.exchange_code(AuthorizationCode::new(code.clone())) {
        Ok(exchange) => exchange,
        Err(err) => {
            return Ok(failed(
                StatusCode::BAD_GATEWAY,
                &format!("The identity provider has no token endpoint: {err}"),
            ))
        }
    };
    let tokens = match exchange
        .set_pkce_verifier(PkceCodeVerifier::new(
            pending.pkce_verifier.expose().to_string(),
        ))
        .request_async(&http)
        .await
    {
        Ok(tokens) => tokens,
        Err(err) => {
            return Ok(failed(
                StatusCode::UNAUTHORIZED,
                &format!("The identity provider did not redeem the sign-in's code: {err}"),
            ))
        }
    };
    let Some(id_token) = openidconnect::TokenResponse::id_token(&tokens) else {
        return Ok(failed(
            StatusCode::UNAUTHORIZED,
            "The identity provider answered without an ID token.",
        ));
    };
    let verifier = client.id_token_verifier();
    if let Err(err) = id_token.claims(&verifier, &Nonce::new(pending.nonce.clone())) {
        return Ok(failed(
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider's ID token is refused: {err}"),
        ));
    }
    let Some(claims) = payload_claims(&id_token.to_string()) else {
        return Ok(failed(
            StatusCode::UNAUTHORIZED,
            "The identity provider's ID token has no readable claims.",
        ));
    };
    let person = match person_from_claims(&provider, &claims) {
        Ok(person) => person,
        Err(refusal) => return Ok(failed(StatusCode::FORBIDDEN, &refusal.to_string())),
    };
    let actor = match state
        .store()
        .sign_in_person(&provider, &person, Some(ip.to_string()))
        .await
    {
        Ok(actor) => actor,
        Err(StoreError::Conflict(reason)) => {
            return Ok(failed(
                StatusCode::FORBIDDEN,
                &format!("You may not sign in: {reason}."),
            ))
        }
        Err(err) => return Err(err.into()),
    };
    let lifetime = Duration::from_secs(u64::from(provider.session_lifetime_seconds));
    // The ID token is kept (sealed) only to be handed back at sign-out.
    let kept_id_token = provider
        .sign_out_at_provider
        .then(|| SecretString::new(id_token.to_string()));
    let session = open_session(
        &state,
        &actor,
        ip,
        &headers,
        lifetime,
        Some((provider.id, kept_id_token)),
    )
    .await?;
    tracing::info!(actor_id = %actor.id, provider = %provider.id, source_ip = %ip, "web sign-in through an identity provider");
    let destination = if actor.actor_type == ActorType::Admin {
        "/actors"
    } else {
        "/me"
    };
    // The session cookie is SameSite=Strict: a redirect that continues the provider's
    // cross-site navigation would not carry it, so the page moves on from this site itself.
    let mut response = moving_on(
        "Signed in",
        html! { "Welcome, " (actor.name) ". " },
        destination,
    );
    let headers = response.headers_mut();
    for value in [
        session,
        format!("{FLOW_COOKIE}=; HttpOnly; SameSite=Lax; Path=/auth/oidc; Max-Age=0"),
    ] {
        if let Ok(value) = value.parse() {
            headers.append(SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// A page that moves the browser on to `destination` by itself (`Refresh`), with a link.
/// Used where a redirect cannot be: after the provider's cross-site navigation (the session
/// cookie is `SameSite=Strict`), and from the sign-out form to the provider's sign-out (the
/// pages' CSP keeps form submissions, redirects included, on this site).
pub(crate) fn moving_on(title: &str, text: Markup, destination: &str) -> Response {
    let body = html! {
        main.auth {
            div.auth-card {
                div.auth-brand { (ui::logo()) span { "Postern" } }
                h1 { (title) }
                p { (text) a href=(destination) data-testid="continue" { "Continue" } }
            }
        }
    };
    let mut response = ui::bare_page(title, &body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("0;url={destination}")) {
        headers.insert("refresh", value);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A person's own page: who they are here, their groups, and how their devices connect.
async fn me(State(state): State<WebState>, person: Person) -> WebResult<Response> {
    let groups = crate::actors::groups_by_id(&state, person.actor.account_id).await?;
    let mut names: Vec<String> = state
        .store()
        .actor_group_ids(person.actor.account_id, person.actor.id)
        .await?
        .iter()
        .filter_map(|id| groups.get(id).map(|group| group.name.clone()))
        .collect();
    names.sort();
    let admin = person.actor.actor_type == ActorType::Admin;
    let body = html! {
        main.auth {
            div.auth-card data-testid="me" {
                div.auth-brand { (ui::logo()) span { "Postern" } }
                h1 data-testid="me-name" { (person.actor.name) }
                dl.facts {
                    div { dt { "Email" } dd data-testid="me-email" { (person.actor.email.as_deref().unwrap_or("")) } }
                    div { dt { "Role" } dd data-testid="me-role" { (ui::badge("neutral", ui::actor_type_label(person.actor.actor_type))) } }
                    div { dt { "Groups" } dd data-testid="me-groups" { (names.join(", ")) } }
                }
                @if admin {
                    a.btn.btn-primary.btn-block href="/actors" { "Go to the admin portal" }
                }
                form method="post" action="/logout" {
                    input type="hidden" name="_csrf" value=(person.session.csrf_token);
                    button.btn.btn-block type="submit" data-testid="sign-out" { "Sign out" }
                }
            }
        }
    };
    Ok(ui::bare_page("Your account", &body).into_response())
}
