//! Settings → Identity providers: the OpenID Connect providers people sign in through — listed,
//! added (the client secret is sealed and never shown again), deleted.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use postern_domain::identity::{
    apply_patch, validate_provider, IdentityProvider, IdentityProviderPatch, NewIdentityProvider,
};

use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{self, FieldErrors, Post};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/settings/identity-providers", get(list).post(create))
        .route(
            "/settings/identity-providers/{id}",
            get(edit_page).post(update),
        )
        .route("/settings/identity-providers/{id}/delete", post(delete))
        .route(
            "/settings/identity-providers/{id}/scim-token",
            post(scim_token),
        )
}

#[derive(Default)]
struct ProviderForm {
    name: String,
    issuer: String,
    client_id: String,
    scopes: String,
    groups_claim: String,
    admin_groups: String,
    session_lifetime: String,
    sign_out_at_provider: bool,
    errors: FieldErrors,
}

const LIFETIMES: [(&str, &str); 5] = [
    ("12h", "12 hours (default)"),
    ("1h", "1 hour"),
    ("8h", "8 hours"),
    ("1d", "1 day"),
    ("7d", "7 days"),
];

async fn list_page(
    state: &WebState,
    admin: &Admin,
    form: &ProviderForm,
    headers: &HeaderMap,
) -> WebResult<Response> {
    let providers = state
        .store()
        .list_identity_providers(admin.account_id())
        .await?;
    let portal_url = crate::oidc::portal_url(state, headers)?;
    let callback = format!("{portal_url}{}", crate::oidc::CALLBACK_PATH);
    let signed_out = signed_out_url(state, headers)?;
    let lifetimes: Vec<(String, String)> = LIFETIMES
        .iter()
        .map(|(value, label)| (value.to_string(), label.to_string()))
        .collect();
    let content = html! {
        @if providers.is_empty() {
            (ui::empty_state("No identity providers",
                "People sign in with a password only. Add your OpenID Connect provider (Okta, Entra ID, Google, Keycloak…) and they sign in through it: their first sign-in creates them, as admins when their group says so. Service accounts never sign in through it.",
                html! {}))
        } @else {
            div.table-wrap {
                table data-testid="identity-providers-table" {
                    thead { tr { th { "Name" } th { "Issuer" } th { "Client ID" } th { "Admin groups" } th { "Sessions" } th { span.sr-only { "Actions" } } } }
                    tbody {
                        @for provider in &providers {
                            @let dialog = format!("delete-idp-{}", provider.id);
                            tr data-testid="identity-provider-row" data-name=(provider.name) {
                                td data-label="Name" { a.strong href={ "/settings/identity-providers/" (provider.id) } data-testid="edit-identity-provider" { (provider.name) } }
                                td data-label="Issuer" { (provider.issuer) }
                                td data-label="Client ID" { code { (provider.client_id) } }
                                td data-label="Admin groups" { @if provider.admin_groups.is_empty() { span.muted { "None" } } @else { (provider.admin_groups.join(", ")) } }
                                td data-label="Sessions" { (provider.session_lifetime_seconds / 3600) " h" }
                                td.actions {
                                    form method="post" action={ "/settings/identity-providers/" (provider.id) "/scim-token" } {
                                        (ui::csrf(admin))
                                        button.btn.btn-small type="submit" data-testid="scim-token" title="A token for directory sync (SCIM 2.0); replaces the previous one" { "SCIM token" }
                                    }
                                    button.btn.btn-icon.btn-danger-ghost type="button" data-open=(dialog)
                                        aria-label={ "Delete " (provider.name) } title="Delete" data-testid="delete-identity-provider" { (ui::icon_trash()) }
                                    (ui::confirm_dialog(admin, &Confirm {
                                        id: &dialog,
                                        title: &format!("Delete {}?", provider.name),
                                        text: "Nobody signs in through it any more, and the portal sessions it opened end. The people it created stay, and service accounts are not touched.",
                                        action: &format!("/settings/identity-providers/{}/delete", provider.id),
                                        confirm_label: "Delete",
                                        testid: "delete-identity-provider",
                                    }))
                                }
                            }
                        }
                    }
                }
            }
        }
        form.card.form method="post" action="/settings/identity-providers" novalidate data-testid="identity-provider-form" {
            (ui::csrf(admin))
            h2.section-title { "Add an identity provider" }
            p.hint { "Register " code data-testid="callback-url" { (callback) } " as the redirect URI of a web application at the provider, then fill in what it gives you." }
            (ui::form_error(&form.errors, &["name", "issuer", "client_id", "client_secret", "scopes", "groups_claim", "admin_groups", "session_lifetime"]))
            (ui::input_field("name", "Name", &form.name, &form.errors, "text", true, None, Some("On the sign-in page: \u{201c}Sign in with NAME\u{201d}.")))
            (ui::input_field("issuer", "Issuer", &form.issuer, &form.errors, "url", true, None, Some("e.g. https://acme.okta.com — its discovery document names its endpoints and keys.")))
            (ui::input_field("client_id", "Client ID", &form.client_id, &form.errors, "text", true, None, None))
            (ui::input_field("client_secret", "Client secret", "", &form.errors, "password", false, Some("off"), Some("Kept sealed; it is never shown again.")))
            (ui::input_field("scopes", "Scopes", &form.scopes, &form.errors, "text", false, None, Some("Asked for besides openid, separated by spaces; add the one that releases the groups claim if the provider needs it.")))
            (ui::input_field("groups_claim", "Groups claim", &form.groups_claim, &form.errors, "text", false, None, Some("The ID token claim that lists a person's groups, e.g. groups.")))
            (ui::input_field("admin_groups", "Admin groups", &form.admin_groups, &form.errors, "text", false, None, Some("Comma-separated: members of these groups are admins; everyone else is a user.")))
            (ui::select_field("session_lifetime", "Portal sessions last", &lifetimes, &form.session_lifetime, &form.errors, None))
            (sign_out_checkbox(form, &signed_out))
            div.form-actions {
                button.btn.btn-primary type="submit" data-testid="create-identity-provider" { (ui::icon_plus()) "Add identity provider" }
            }
        }
    };
    Ok((
        form.errors.status(),
        ui::page(
            admin,
            Nav::Settings,
            "Identity providers",
            Some(("/settings", "Settings")),
            html! {},
            content,
        ),
    )
        .into_response())
}

async fn list(
    State(state): State<WebState>,
    admin: Admin,
    headers: HeaderMap,
) -> WebResult<Response> {
    let form = ProviderForm {
        session_lifetime: LIFETIMES[0].0.into(),
        scopes: "email profile".into(),
        ..ProviderForm::default()
    };
    list_page(&state, &admin, &form, &headers).await
}

async fn create(
    State(state): State<WebState>,
    headers: HeaderMap,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = ProviderForm {
        name: fields.get("name").trim().to_string(),
        issuer: fields.get("issuer").trim().to_string(),
        client_id: fields.get("client_id").trim().to_string(),
        scopes: fields.get("scopes").to_string(),
        groups_claim: fields.get("groups_claim").trim().to_string(),
        admin_groups: fields.get("admin_groups").to_string(),
        session_lifetime: fields.get("session_lifetime").to_string(),
        sign_out_at_provider: fields.checked("sign_out_at_provider"),
        errors: FieldErrors::default(),
    };
    let optional = |text: &str| (!text.trim().is_empty()).then(|| text.trim().to_string());
    let new = NewIdentityProvider {
        name: form.name.clone(),
        issuer: form.issuer.clone(),
        client_id: form.client_id.clone(),
        client_secret: optional(fields.get("client_secret")),
        scopes: Some(
            form::split_list(&form.scopes)
                .into_iter()
                .map(str::to_string)
                .collect(),
        ),
        email_claim: None,
        groups_claim: optional(&form.groups_claim),
        admin_groups: form
            .admin_groups
            .split(',')
            .map(str::trim)
            .filter(|group| !group.is_empty())
            .map(str::to_string)
            .collect(),
        session_lifetime: Some(form.session_lifetime.clone()),
        sign_out_at_provider: Some(form.sign_out_at_provider),
    };
    let created = match validate_provider(new) {
        Ok(valid) => {
            state
                .store()
                .create_identity_provider(admin.account_id(), valid, &admin.acting())
                .await
        }
        Err(err) => Err(err.into()),
    };
    match created {
        Ok(_) => Ok(Redirect::to("/settings/identity-providers").into_response()),
        Err(err) => {
            form.errors = FieldErrors::from_store(err, |field| field)?;
            list_page(&state, &admin, &form, &headers).await
        }
    }
}

/// A new SCIM token, shown in this answer only.
async fn scim_token(
    State(state): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Post { admin, .. }: Post,
) -> WebResult<Response> {
    let id = form::parse_path_id(&id, "identity provider")?;
    let provider = state
        .store()
        .get_identity_provider(admin.account_id(), id)
        .await?;
    let token = state
        .store()
        .create_scim_token(admin.account_id(), id, &admin.acting())
        .await?;
    let scim_url = format!("{}/scim/v2", crate::oidc::portal_url(&state, &headers)?);
    let content = html! {
        section.card.token-once data-testid="scim-token-once" {
            div.alert.alert-warning role="alert" {
                (ui::icon_warning())
                div {
                    strong { "Copy the token now. It will not be shown again." }
                    p { "Any previous SCIM token of " (provider.name) " has stopped working." }
                }
            }
            dl.facts {
                div { dt { "SCIM base URL" } dd { code data-testid="scim-base-url" { (scim_url) } } }
                div { dt { "Unique identifier" } dd { code { "userName" } " (the email)" } }
            }
            label for="scim-token" { "Bearer token" }
            div.secret-row {
                input #scim-token.secret type="text" readonly value=(token)
                    data-testid="scim-token-value" spellcheck="false" autocomplete="off";
                button.btn.btn-primary type="button" data-copy="#scim-token" { (ui::icon_copy()) span { "Copy" } }
            }
            a.btn href="/settings/identity-providers" data-testid="scim-token-done" { "I have stored the token" }
        }
    };
    let page = ui::page(
        &admin,
        Nav::Settings,
        "SCIM token",
        Some(("/settings/identity-providers", "Identity providers")),
        html! {},
        content,
    );
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], page).into_response())
}

fn edit_form(
    admin: &Admin,
    provider: &IdentityProvider,
    form: &ProviderForm,
    signed_out: &str,
) -> Response {
    let mut lifetimes: Vec<(String, String)> = LIFETIMES
        .iter()
        .map(|(value, label)| (value.to_string(), label.to_string()))
        .collect();
    if !lifetimes
        .iter()
        .any(|(value, _)| *value == form.session_lifetime)
    {
        lifetimes.insert(
            0,
            (form.session_lifetime.clone(), form.session_lifetime.clone()),
        );
    }
    let content = html! {
        form.card.form method="post" action={ "/settings/identity-providers/" (provider.id) } novalidate data-testid="identity-provider-edit" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "client_id", "client_secret", "scopes", "groups_claim", "admin_groups", "session_lifetime"]))
            dl.facts { div { dt { "Issuer" } dd { (provider.issuer) } } }
            (ui::input_field("name", "Name", &form.name, &form.errors, "text", true, None, None))
            (ui::input_field("client_id", "Client ID", &form.client_id, &form.errors, "text", true, None, None))
            (ui::input_field("client_secret", "New client secret", "", &form.errors, "password", false, Some("off"), Some("Leave empty to keep the current one.")))
            (ui::input_field("scopes", "Scopes", &form.scopes, &form.errors, "text", false, None, None))
            (ui::input_field("groups_claim", "Groups claim", &form.groups_claim, &form.errors, "text", false, None, None))
            (ui::input_field("admin_groups", "Admin groups", &form.admin_groups, &form.errors, "text", false, None, Some("Comma-separated.")))
            (ui::select_field("session_lifetime", "Portal sessions last", &lifetimes, &form.session_lifetime, &form.errors, None))
            (sign_out_checkbox(form, signed_out))
            div.form-actions {
                a.btn href="/settings/identity-providers" { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="save-identity-provider" { "Save" }
            }
        }
    };
    (
        form.errors.status(),
        ui::page(
            admin,
            Nav::Settings,
            &provider.name,
            Some(("/settings/identity-providers", "Identity providers")),
            html! {},
            content,
        ),
    )
        .into_response()
}

async fn edit_page(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let id = form::parse_path_id(&id, "identity provider")?;
    let provider = state
        .store()
        .get_identity_provider(admin.account_id(), id)
        .await?;
    let form = ProviderForm {
        name: provider.name.clone(),
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        scopes: provider.scopes.join(" "),
        groups_claim: provider.groups_claim.clone().unwrap_or_default(),
        admin_groups: provider.admin_groups.join(", "),
        session_lifetime: lifetime_text(provider.session_lifetime_seconds),
        sign_out_at_provider: provider.sign_out_at_provider,
        errors: FieldErrors::default(),
    };
    Ok(edit_form(
        &admin,
        &provider,
        &form,
        &signed_out_url(&state, &headers)?,
    ))
}

fn sign_out_checkbox(form: &ProviderForm, signed_out: &str) -> Markup {
    html! {
        label.check {
            input type="checkbox" name="sign_out_at_provider" value="on" checked[form.sign_out_at_provider] data-testid="sign-out-at-provider";
            span { "Sign out at the provider too: signing out of the portal goes on to the provider's sign-out (at most providers that ends the person's other applications' sessions as well). Register " code { (signed_out) } " as a post-logout redirect URI." }
        }
    }
}

/// The post-logout redirect URI to register at a provider.
fn signed_out_url(state: &WebState, headers: &HeaderMap) -> WebResult<String> {
    Ok(format!(
        "{}{}",
        crate::oidc::portal_url(state, headers)?,
        crate::oidc::SIGNED_OUT_PATH
    ))
}

/// A session lifetime as the form's durations write it.
fn lifetime_text(seconds: u32) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    }
}

async fn update(
    State(state): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let id = form::parse_path_id(&id, "identity provider")?;
    let provider = state
        .store()
        .get_identity_provider(admin.account_id(), id)
        .await?;
    let mut form = ProviderForm {
        name: fields.get("name").trim().to_string(),
        issuer: provider.issuer.clone(),
        client_id: fields.get("client_id").trim().to_string(),
        scopes: fields.get("scopes").to_string(),
        groups_claim: fields.get("groups_claim").trim().to_string(),
        admin_groups: fields.get("admin_groups").to_string(),
        session_lifetime: fields.get("session_lifetime").to_string(),
        sign_out_at_provider: fields.checked("sign_out_at_provider"),
        errors: FieldErrors::default(),
    };
    let optional = |text: &str| (!text.trim().is_empty()).then(|| text.trim().to_string());
    let patch = IdentityProviderPatch {
        name: Some(form.name.clone()),
        client_id: Some(form.client_id.clone()),
        client_secret: optional(fields.get("client_secret")),
        scopes: Some(
            form::split_list(&form.scopes)
                .into_iter()
                .map(str::to_string)
                .collect(),
        ),
        email_claim: None,
        groups_claim: optional(&form.groups_claim),
        admin_groups: Some(
            form.admin_groups
                .split(',')
                .map(str::trim)
                .filter(|group| !group.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        session_lifetime: Some(form.session_lifetime.clone()),
        sign_out_at_provider: Some(form.sign_out_at_provider),
    };
    let updated = match apply_patch(&provider, patch) {
        Ok(valid) => {
            state
                .store()
                .update_identity_provider(admin.account_id(), id, valid, &admin.acting())
                .await
        }
        Err(err) => Err(err.into()),
    };
    match updated {
        Ok(_) => Ok(Redirect::to("/settings/identity-providers").into_response()),
        Err(err) => {
            form.errors = FieldErrors::from_store(err, |field| field)?;
            Ok(edit_form(
                &admin,
                &provider,
                &form,
                &signed_out_url(&state, &headers)?,
            ))
        }
    }
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Response> {
    let id = form::parse_path_id(&id, "identity provider")?;
    state
        .store()
        .delete_identity_provider(admin.account_id(), id, &admin.acting())
        .await?;
    Ok(Redirect::to("/settings/identity-providers").into_response())
}
