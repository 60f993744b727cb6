//! A service account's token: its name and guardrails, changed on their own page.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use postern_domain::{Actor, ActorType, Token, TokenGuardrails};
use postern_store::{TokenHolder, TokenPatch};

use crate::actors::load_actor;
use crate::auth::Admin;
use crate::error::{WebError, WebResult};
use crate::form::{self, FieldErrors, GuardrailsForm, Post};
use crate::ui::{self, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new().route(
        "/actors/{id}/tokens/{token_id}/edit",
        get(edit_page).post(update),
    )
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
