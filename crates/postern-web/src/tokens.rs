//! A service account's token: its name and guardrails, changed on their own page.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use postern_domain::{Actor, ActorType, HolderType, Token, TokenGuardrails};
use postern_store::{Page, TokenFilter, TokenHolder, TokenPatch};
use uuid::Uuid;

use crate::actors::load_actor;
use crate::auth::Admin;
use crate::error::{WebError, WebResult};
use crate::form::{self, FieldErrors, GuardrailsForm, Post};
use crate::once::{self, Shown};
use crate::ui::{self, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route(
            "/actors/{id}/tokens/{token_id}/edit",
            get(edit_page).post(update),
        )
        .route(
            "/actors/{id}/tokens/{token_id}/rotate",
            get(rotate_page).post(rotate),
        )
        .route("/tokens", get(expiring_page))
}

/// The account's warning period for expiring tokens, in days (its setting).
pub async fn warning_days(state: &WebState, account_id: Uuid) -> WebResult<u32> {
    Ok(state
        .store()
        .get_account(account_id)
        .await?
        .settings
        .token_expiry_warning_days)
}

/// A token's state for its row: Revoked, Expired, Rotated (it ends with its overlap window),
/// Exchanged (short-lived by design: its workload renews it), "Expires in N days" within the
/// account's warning period, or Active.
pub fn status_badge(token: &Token, now: DateTime<Utc>, warning_days: u32) -> Markup {
    if token.revoked_at.is_some() {
        return ui::badge("danger", "Revoked");
    }
    if token.expires_at <= now {
        return ui::badge("muted", "Expired");
    }
    if token.successor_id.is_some() {
        return ui::badge("neutral", "Rotated");
    }
    if token.workload_identity_id.is_some() {
        return ui::badge("neutral", "Exchanged");
    }
    if token.expires_at <= now + chrono::Duration::days(i64::from(warning_days)) {
        return ui::badge("warn", &expires_in(token.expires_at, now));
    }
    ui::badge("ok", "Active")
}

/// "Expires today", "Expires in 1 day", "Expires in 12 days".
fn expires_in(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    match (expires_at - now).num_days() {
        0 => "Expires today".to_string(),
        1 => "Expires in 1 day".to_string(),
        days => format!("Expires in {days} days"),
    }
}

#[derive(serde::Deserialize)]
struct ExpiringQuery {
    within: Option<String>,
}

/// The account's live tokens, of every holder, that expire within the warning period (or
/// `?within=DAYS`), the soonest first.
async fn expiring_page(
    State(state): State<WebState>,
    admin: Admin,
    Query(query): Query<ExpiringQuery>,
) -> WebResult<Markup> {
    let account_id = admin.account_id();
    let settings = state.store().get_account(account_id).await?.settings;
    let within = query
        .within
        .as_deref()
        .and_then(|days| days.trim().parse::<u32>().ok())
        .filter(|days| (1..=3650).contains(days))
        .unwrap_or(settings.token_expiry_warning_days);
    let now = Utc::now();
    let filter = TokenFilter {
        now,
        expires_before: Some(now + chrono::Duration::days(i64::from(within))),
        kind: None,
        include_revoked: false,
        include_expired: false,
        include_rotated: false,
    };
    let mut held = state
        .store()
        .list_account_tokens(
            account_id,
            &filter,
            Page {
                limit: 500,
                cursor: None,
            },
        )
        .await?;
    held.items.sort_by_key(|held| held.token.expires_at);
    let token_ids: Vec<Uuid> = held.items.iter().map(|held| held.token.id).collect();
    let sessions = state.app.hub.token_sessions(account_id, &token_ids).await;
    let content = html! {
        form.card.form.inline-form method="get" action="/tokens" data-testid="expiring-filter" {
            (ui::input_field("within", "Expiring within (days)", &within.to_string(), &FieldErrors::default(), "number", false, None,
                Some(&format!("The account warns {} days ahead (Settings).", settings.token_expiry_warning_days))))
            button.btn type="submit" { "Show" }
        }
        @if held.items.is_empty() {
            (ui::empty_state(&format!("No token expires in the next {within} days"), "Tokens expiring within the warning period appear here, whoever holds them.", html! {}))
        } @else {
            @if held.next_cursor.is_some() {
                p.notice role="status" { "Showing the first 500 tokens; narrow the period to see the soonest." }
            }
            div.table-wrap {
                table data-testid="expiring-tokens-table" {
                    thead { tr {
                        th { "Expires" } th { "Token" } th { "Holder" } th { "Kind" } th { "Clients online" } th { "Last used" }
                    } }
                    tbody {
                        @for held in &held.items {
                            @let token = &held.token;
                            tr data-testid="expiring-token-row" data-name=(token.name) {
                                td data-label="Expires" {
                                    (ui::badge("warn", &expires_in(token.expires_at, now)))
                                    div.muted.small { (ui::time(token.expires_at)) }
                                }
                                td data-label="Token" { span.strong { (token.name) } }
                                td data-label="Holder" {
                                    @match (token.actor_id, token.site_id) {
                                        (Some(actor_id), _) => a href={ "/actors/" (actor_id) } { (held.holder_name) },
                                        (_, Some(site_id)) => a href={ "/sites/" (site_id) } { (held.holder_name) },
                                        _ => (held.holder_name),
                                    }
                                    div.muted.small { (holder_label(held.holder_type)) }
                                }
                                td data-label="Kind" { (token.kind.as_str()) }
                                td data-label="Clients online" { (sessions.get(&token.id).copied().unwrap_or(0)) }
                                td data-label="Last used" { (ui::opt_time(token.last_used_at, "Never")) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(ui::page(
        &admin,
        Nav::Tokens,
        "Expiring tokens",
        None,
        html! {},
        content,
    ))
}

fn holder_label(holder: HolderType) -> &'static str {
    match holder {
        HolderType::User => "User",
        HolderType::Admin => "Admin",
        HolderType::ServiceAccount => "Service account",
        HolderType::ApiClient => "API client",
        HolderType::Site => "Site (gateway token)",
    }
}

/// The guardrails in a table cell: "≤ 5 devices · 10.0.0.0/8 · approval", or "None".
pub fn guardrails_summary(guardrails: &TokenGuardrails) -> Markup {
    let mut parts = Vec::new();
    if let Some(max) = guardrails.max_clients {
        parts.push(format!(
            "at most {max} device{}",
            if max == 1 { "" } else { "s" }
        ));
    }
    match guardrails.allowed_source_cidrs.as_slice() {
        [] => {}
        [one] => parts.push(format!("from {one}")),
        [first, rest @ ..] => parts.push(format!("from {first} and {} more", rest.len())),
    }
    if guardrails.require_approval {
        parts.push("approval required".to_string());
    }
    if guardrails.ephemeral {
        parts.push("ephemeral devices".to_string());
    }
    html! {
        @if parts.is_empty() { span.muted { "None" } }
        @else { (parts.join(" · ")) }
    }
}

struct EditForm {
    name: String,
    guardrails: GuardrailsForm,
    errors: FieldErrors,
}

async fn load(
    state: &WebState,
    admin: &Admin,
    id: &str,
    token_id: &str,
) -> WebResult<(Actor, Token)> {
    let actor = load_actor(state, admin, id).await?;
    if actor.actor_type != ActorType::ServiceAccount {
        return Err(WebError::NotFound("token"));
    }
    let token_id = form::parse_path_id(token_id, "token")?;
    let token = state
        .store()
        .get_token(admin.account_id(), TokenHolder::Actor(actor.id), token_id)
        .await?;
    Ok((actor, token))
}

fn page(admin: &Admin, actor: &Actor, token: &Token, form: &EditForm) -> Response {
    let back = format!("/actors/{}", actor.id);
    let content = html! {
        form.card.form method="post" action={ (back) "/tokens/" (token.id) "/edit" } novalidate data-testid="token-edit-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "max_clients", "allowed_source_cidrs"]))
            (ui::input_field("name", "Token name", &form.name, &form.errors, "text", true, None, None))
            p.hint { "Changes apply at once to the devices connected with this token: those outside new networks are disconnected; a lower limit refuses new devices and leaves the connected ones be." }
            (form.guardrails.fields(&form.errors))
            div.form-actions {
                a.btn href=(back) { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="save-token" { "Save" }
            }
        }
    };
    (
        form.errors.status(),
        ui::page(
            admin,
            Nav::Actors,
            &format!("Token {}", token.name),
            Some((&back, &actor.name)),
            html! {},
            content,
        ),
    )
        .into_response()
}

async fn edit_page(
    State(state): State<WebState>,
    admin: Admin,
    Path((id, token_id)): Path<(String, String)>,
) -> WebResult<Response> {
    let (actor, token) = load(&state, &admin, &id, &token_id).await?;
    let form = EditForm {
        name: token.name.clone(),
        guardrails: GuardrailsForm::of(&token.guardrails),
        errors: FieldErrors::default(),
    };
    Ok(page(&admin, &actor, &token, &form))
}

async fn update(
    State(state): State<WebState>,
    Path((id, token_id)): Path<(String, String)>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let (actor, token) = load(&state, &admin, &id, &token_id).await?;
    let mut form = EditForm {
        name: fields.get("name").to_string(),
        guardrails: GuardrailsForm::read(&fields),
        errors: FieldErrors::default(),
    };
    form::precheck_token(
        &state,
        admin.account_id(),
        &mut form.errors,
        Some(("name", &form.name)),
        None,
    )
    .await?;
    let guardrails = form.guardrails.check(&mut form.errors);
    if !form.errors.is_empty() {
        return Ok(page(&admin, &actor, &token, &form));
    }
    let patch = TokenPatch {
        name: Some(form.name.clone()),
        max_clients: Some(guardrails.max_clients),
        allowed_source_cidrs: Some(guardrails.allowed_source_cidrs),
        require_approval: Some(guardrails.require_approval),
        ephemeral: Some(guardrails.ephemeral),
    };
    let updated = state
        .store()
        .update_token(
            admin.account_id(),
            TokenHolder::Actor(actor.id),
            token.id,
            patch,
            &admin.acting(),
        )
        .await;
    if let Err(err) = updated {
        form.errors = FieldErrors::from_store(err, |f| f)?;
        return Ok(page(&admin, &actor, &token, &form));
    }
    Ok(Redirect::to(&format!("/actors/{}", actor.id)).into_response())
}

/// The overlap windows the rotation form offers, the default first.
const OVERLAPS: [(&str, &str); 5] = [
    ("24h", "24 hours (default)"),
    ("1h", "1 hour"),
    ("12h", "12 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
];

fn rotate_form(
    admin: &Admin,
    actor: &Actor,
    token: &Token,
    overlap: &str,
    errors: &FieldErrors,
) -> Response {
    let back = format!("/actors/{}", actor.id);
    let options: Vec<(String, String)> = OVERLAPS
        .iter()
        .map(|(value, text)| (value.to_string(), text.to_string()))
        .collect();
    let content = html! {
        form.card.form method="post" action={ (back) "/tokens/" (token.id) "/rotate" } novalidate data-testid="token-rotate-form" {
            (ui::csrf(admin))
            (ui::form_error(errors, &["overlap", "name"]))
            p { "A successor of \u{201c}" (token.name) "\u{201d} is created with the same guardrails and shown once. "
                "Every client connected with this token is handed the successor, writes it to its token file and reconnects with it, keeping its tunnels. "
                "This token keeps working until the end of the window, then stops." }
            (ui::select_field("overlap", "Keep the old token working for", &options, overlap, errors, None))
            p.hint { "A client offline during the whole window, or started with POSTERN_TOKEN, needs the new token by hand." }
            div.form-actions {
                a.btn href=(back) { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="confirm-rotate" { "Rotate token" }
            }
        }
    };
    (
        errors.status(),
        ui::page(
            admin,
            Nav::Actors,
            &format!("Rotate token {}", token.name),
            Some((&back, &actor.name)),
            html! {},
            content,
        ),
    )
        .into_response()
}

async fn rotate_page(
    State(state): State<WebState>,
    admin: Admin,
    Path((id, token_id)): Path<(String, String)>,
) -> WebResult<Response> {
    let (actor, token) = load(&state, &admin, &id, &token_id).await?;
    Ok(rotate_form(
        &admin,
        &actor,
        &token,
        OVERLAPS[0].0,
        &FieldErrors::default(),
    ))
}

async fn rotate(
    State(state): State<WebState>,
    Path((id, token_id)): Path<(String, String)>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let (actor, token) = load(&state, &admin, &id, &token_id).await?;
    let overlap_text = fields.get("overlap").to_string();
    let overlap = match postern_domain::rules::parse_duration_of("overlap", &overlap_text) {
        Ok(overlap) => overlap,
        Err(err) => {
            let errors = FieldErrors::from_store(err.into(), |f| f)?;
            return Ok(rotate_form(&admin, &actor, &token, &overlap_text, &errors));
        }
    };
    let rotated = state
        .store()
        .rotate_token(
            admin.account_id(),
            TokenHolder::Actor(actor.id),
            token.id,
            Some(overlap),
            &admin.acting(),
        )
        .await;
    match rotated {
        Ok(rotated) => {
            once::put(
                &state,
                &admin,
                actor.id,
                Shown {
                    token: rotated.successor.token,
                    secret: rotated.successor.secret,
                },
            )
            .await?;
            Ok(Redirect::to(&format!("/actors/{}/token", actor.id)).into_response())
        }
        Err(err) => {
            let errors = FieldErrors::from_store(err, |f| f)?;
            Ok(rotate_form(&admin, &actor, &token, &overlap_text, &errors))
        }
    }
}
