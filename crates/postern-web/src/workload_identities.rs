//! A service account's workload identities: the section on its page, the form that adds one,
//! and deleting one (which revokes the tokens exchanged under it).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use postern_domain::workload_identity::NewWorkloadIdentity;
use postern_domain::{Actor, ActorType, WorkloadIdentity};

use crate::actors::load_actor;
use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{self, FieldErrors, Post};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route(
            "/actors/{id}/workload-identities/new",
            get(new_form).post(create),
        )
        .route(
            "/actors/{id}/workload-identities/{workload_identity_id}/delete",
            post(delete),
        )
}

/// Token lifetimes offered on the form (value and label).
const LIFETIMES: [(&str, &str); 6] = [
    ("1h", "1 hour (default)"),
    ("5m", "5 minutes"),
    ("15m", "15 minutes"),
    ("4h", "4 hours"),
    ("12h", "12 hours"),
    ("24h", "24 hours"),
];

fn claims_text(rule: &WorkloadIdentity) -> String {
    rule.claims
        .iter()
        .map(|(claim, pattern)| format!("{claim}={pattern}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The section on a service account's page.
pub async fn section(state: &WebState, admin: &Admin, actor: &Actor) -> WebResult<Markup> {
    let rules = state
        .store()
        .list_workload_identities(admin.account_id(), actor.id)
        .await?;
    let base = format!("/actors/{}/workload-identities", actor.id);
    Ok(html! {
        section data-testid="workload-identities" {
            div.section-head {
                h2 { "Workload identities" }
                @if !actor.is_disabled() {
                    a.btn.btn-sm href={ (base) "/new" } data-testid="add-workload-identity" { (ui::icon_plus()) "Add workload identity" }
                }
            }
            @if rules.is_empty() {
                p.muted data-testid="workload-identities-empty" {
                    "None. A CI job, a Kubernetes pod or a cloud machine can act as this service account with its platform's ID token instead of a stored token: trust its issuer here, and run "
                    code { "postern-client --id-token-file" } "."
                }
            } @else {
                div.table-wrap {
                    table data-testid="workload-identities-table" {
                        thead { tr {
                            th { "Name" } th { "Issuer" } th { "Audience" } th { "Subject" } th { "Claims" }
                            th { "Token lifetime" } th { "Last used" } th { span.sr-only { "Actions" } }
                        } }
                        tbody {
                            @for rule in &rules {
                                @let dialog = format!("delete-wi-{}", rule.id);
                                tr data-testid="workload-identity-row" data-subject=(rule.subject.as_str()) {
                                    td data-label="Name" { span.strong { (rule.name) } }
                                    td data-label="Issuer" { (rule.issuer) @if rule.jwks.is_some() { div.muted.small { "keys kept here" } } }
                                    td data-label="Audience" { code { (rule.audience) } }
                                    td data-label="Subject" { code { (rule.subject.as_str()) } }
                                    td data-label="Claims" { @if rule.claims.is_empty() { span.muted { "None" } } @else { code { (claims_text(rule)) } } }
                                    td data-label="Token lifetime" { (lifetime_text(rule.token_lifetime_seconds)) }
                                    td data-label="Last used" data-testid="workload-identity-last-used" { (ui::opt_time(rule.last_used_at, "Never")) }
                                    td.actions {
                                        button.btn.btn-icon.btn-danger-ghost type="button" data-open=(dialog)
                                            aria-label={ "Delete workload identity " (rule.name) } title="Delete" data-testid="delete-workload-identity" {
                                            (ui::icon_trash())
                                        }
                                        (ui::confirm_dialog(admin, &Confirm {
                                            id: &dialog,
                                            title: "Delete this workload identity?",
                                            text: "Tokens exchanged under it are revoked: the workloads using it are disconnected at once, and their ID tokens earn nothing any more.",
                                            action: &format!("{base}/{}/delete", rule.id),
                                            confirm_label: "Delete",
                                            testid: "delete-workload-identity",
                                        }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn lifetime_text(seconds: u32) -> String {
    match seconds {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s => format!("{} min", s / 60),
    }
}

#[derive(Default)]
struct RuleForm {
    name: String,
    issuer: String,
    audience: String,
    subject: String,
    claims: String,
    token_lifetime: String,
    jwks: String,
    errors: FieldErrors,
}

fn form_page(admin: &Admin, actor: &Actor, form: &RuleForm) -> Response {
    let lifetimes: Vec<(String, String)> = LIFETIMES
        .iter()
        .map(|(value, label)| (value.to_string(), label.to_string()))
        .collect();
    let content = html! {
        form.card.form method="post" action={ "/actors/" (actor.id) "/workload-identities/new" } novalidate data-testid="workload-identity-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "issuer", "audience", "subject", "claims", "token_lifetime", "jwks"]))
            p.hint {
                "ID tokens from this issuer, for this audience, whose subject and claims match, are exchanged for client tokens of "
                strong { (actor.name) } ". In patterns " code { "*" } " stands for any run of characters."
            }
            (ui::input_field("issuer", "Issuer", &form.issuer, &form.errors, "url", true, None,
                Some("Exactly as the tokens name it (iss), e.g. https://token.actions.githubusercontent.com")))
            (ui::input_field("audience", "Audience", &form.audience, &form.errors, "text", true, None,
                Some("The audience the workload asks its token for (aud), e.g. postern")))
            (ui::input_field("subject", "Subject", &form.subject, &form.errors, "text", true, None,
                Some("A pattern over sub, e.g. repo:acme/deploy:ref:refs/heads/main or system:serviceaccount:billing:*")))
            (ui::textarea_field("claims", "Claims", &form.claims, &form.errors,
                "One CLAIM=PATTERN per line, all of which must match, e.g. repository_owner=acme", "repository_owner=acme"))
            (ui::select_field("token_lifetime", "Token lifetime", &lifetimes, &form.token_lifetime, &form.errors, None))
            (ui::textarea_field("jwks", "Issuer's keys (JWKS)", &form.jwks, &form.errors,
                "Only for a portal that cannot reach the issuer: its key set as JSON. Otherwise the keys are fetched through the issuer's discovery document.", "{\"keys\": [...]}"))
            (ui::input_field("name", "Name", &form.name, &form.errors, "text", false, None, None))
            div.form-actions {
                button.btn.btn-primary type="submit" data-testid="create-workload-identity" { (ui::icon_plus()) "Add workload identity" }
                a.btn href={ "/actors/" (actor.id) } { "Cancel" }
            }
        }
    };
    (
        form.errors.status(),
        ui::page(
            admin,
            Nav::Actors,
            "Add workload identity",
            Some((&format!("/actors/{}", actor.id), &actor.name)),
            html! {},
            content,
        ),
    )
        .into_response()
}

async fn service_account(state: &WebState, admin: &Admin, id: &str) -> WebResult<Actor> {
    let actor = load_actor(state, admin, id).await?;
    if actor.actor_type != ActorType::ServiceAccount {
        return Err(crate::error::WebError::NotFound("service account"));
    }
    Ok(actor)
}

async fn new_form(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let actor = service_account(&state, &admin, &id).await?;
    let form = RuleForm {
        audience: "postern".into(),
        token_lifetime: LIFETIMES[0].0.into(),
        ..RuleForm::default()
    };
    Ok(form_page(&admin, &actor, &form))
}

/// Errors about one claim (`claims.NAME`) belong to the claims field.
fn rename(field: &str) -> &str {
    if field.starts_with("claims") {
        "claims"
    } else {
        field
    }
}

/// The claim lines of the form: `CLAIM=PATTERN` each.
fn parse_claims(
    text: &str,
    errors: &mut FieldErrors,
) -> std::collections::BTreeMap<String, String> {
    let mut claims = std::collections::BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        match line.split_once('=') {
            Some((claim, pattern)) => {
                claims.insert(claim.trim().to_string(), pattern.trim().to_string());
            }
            None => errors.add("claims", format!("'{line}' is not CLAIM=PATTERN")),
        }
    }
    claims
}

async fn create(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let actor = service_account(&state, &admin, &id).await?;
    let mut form = RuleForm {
        name: fields.get("name").trim().to_string(),
        issuer: fields.get("issuer").trim().to_string(),
        audience: fields.get("audience").trim().to_string(),
        subject: fields.get("subject").trim().to_string(),
        claims: fields.get("claims").to_string(),
        token_lifetime: fields.get("token_lifetime").to_string(),
        jwks: fields.get("jwks").trim().to_string(),
        errors: FieldErrors::default(),
    };
    let claims = parse_claims(&form.claims, &mut form.errors);
    let jwks = match form.jwks.as_str() {
        "" => None,
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => Some(value),
            Err(err) => {
                form.errors.add("jwks", format!("is not JSON: {err}"));
                None
            }
        },
    };
    if !form.errors.is_empty() {
        return Ok(form_page(&admin, &actor, &form));
    }
    let new = NewWorkloadIdentity {
        name: (!form.name.is_empty()).then(|| form.name.clone()),
        issuer: form.issuer.clone(),
        audience: form.audience.clone(),
        subject: form.subject.clone(),
        claims,
        token_lifetime: Some(form.token_lifetime.clone()),
        jwks,
    };
    let valid = match postern_workload_identity::validate_rule(new) {
        Ok(valid) => valid,
        Err(err) => {
            form.errors = FieldErrors::from_store(err.into(), rename)?;
            return Ok(form_page(&admin, &actor, &form));
        }
    };
    let created = state
        .store()
        .create_workload_identity(admin.account_id(), actor.id, valid, &admin.acting())
        .await;
    match created {
        Ok(_) => Ok(Redirect::to(&format!("/actors/{}", actor.id)).into_response()),
        Err(err) => {
            form.errors = FieldErrors::from_store(err, rename)?;
            Ok(form_page(&admin, &actor, &form))
        }
    }
}

async fn delete(
    State(state): State<WebState>,
    Path((id, rule_id)): Path<(String, String)>,
    Post { admin, .. }: Post,
) -> WebResult<Response> {
    let actor = service_account(&state, &admin, &id).await?;
    let rule_id = form::parse_path_id(&rule_id, "workload identity")?;
    state
        .store()
        .delete_workload_identity(admin.account_id(), actor.id, rule_id, &admin.acting())
        .await?;
    Ok(Redirect::to(&format!("/actors/{}", actor.id)).into_response())
}
