//! Webhooks: list and add them (the signing secret shown once), pause or resume one, send a
//! test event, read its delivery log, delete it.

use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use postern_domain::webhooks::{DeliveryState, Webhook, WebhookDelivery, WebhookEvent};
use postern_store::{NewWebhook, Page, WebhookPatch};

use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{self, FieldErrors, Post};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{id}", get(detail))
        .route("/webhooks/{id}/test", post(send_test))
        .route("/webhooks/{id}/enabled", post(set_enabled))
        .route("/webhooks/{id}/delete", post(delete))
}

/// The events offered on the form (value and label: the event's name).
fn event_options() -> Vec<(String, String)> {
    WebhookEvent::subscribable_names()
        .map(|name| (name.to_string(), name.to_string()))
        .collect()
}

fn events_text(webhook: &Webhook) -> String {
    webhook
        .events
        .iter()
        .map(|event| event.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

struct WebhookForm {
    url: String,
    description: String,
    events: Vec<String>,
    errors: FieldErrors,
}

impl Default for WebhookForm {
    fn default() -> Self {
        Self {
            url: String::new(),
            description: String::new(),
            events: vec!["token.leaked".to_string(), "token.expiring".to_string()],
            errors: FieldErrors::default(),
        }
    }
}

async fn list_page(state: &WebState, admin: &Admin, form: &WebhookForm) -> WebResult<Response> {
    let webhooks = state.store().list_webhooks(admin.account_id()).await?;
    let content = html! {
        form.card.form method="post" action="/webhooks" novalidate data-testid="webhook-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["url", "description", "events"]))
            (ui::input_field("url", "Endpoint URL", &form.url, &form.errors, "url", true, Some("https://hooks.example.com/postern"),
                Some("Events are POSTed here as JSON, signed with the webhook's secret (https://, or http:// to the portal's own host).")))
            (ui::input_field("description", "Description", &form.description, &form.errors, "text", false, None, None))
            (ui::checkbox_list("events", "Events", true, &event_options(), &form.events, &form.errors, html! {}))
            div.form-actions {
                button.btn.btn-primary type="submit" data-testid="create-webhook" { (ui::icon_plus()) "Add webhook" }
            }
        }
        @if webhooks.is_empty() {
            (ui::empty_state("No webhooks yet",
                "A webhook tells another system — a SIEM, a chat channel, your automation — when tokens are created, revoked, leaked or about to expire, and when devices are blocked, approved or removed.",
                html! {}))
        } @else {
            div.table-wrap {
                table data-testid="webhooks-table" {
                    thead { tr { th { "Endpoint" } th { "Events" } th { "State" } th { "Created" } } }
                    tbody {
                        @for webhook in &webhooks {
                            tr data-testid="webhook-row" data-url=(webhook.url) {
                                td data-label="Endpoint" {
                                    a.strong href={ "/webhooks/" (webhook.id) } { (webhook.url) }
                                    @if let Some(description) = &webhook.description { div.muted.small { (description) } }
                                }
                                td data-label="Events" { (events_text(webhook)) }
                                td data-label="State" { (state_badge(webhook)) }
                                td data-label="Created" { (ui::time(webhook.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((
        form.errors.status(),
        ui::page(admin, Nav::Webhooks, "Webhooks", None, html! {}, content),
    )
        .into_response())
}

fn state_badge(webhook: &Webhook) -> Markup {
    if webhook.enabled {
        ui::badge("ok", "Active")
    } else {
        ui::badge("muted", "Paused")
    }
}

async fn list(State(state): State<WebState>, admin: Admin) -> WebResult<Response> {
    list_page(&state, &admin, &WebhookForm::default()).await
}

async fn create(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = WebhookForm {
        url: fields.get("url").trim().to_string(),
        description: fields.get("description").trim().to_string(),
        events: fields
            .all("events")
            .into_iter()
            .map(str::to_string)
            .collect(),
        errors: FieldErrors::default(),
    };
    let new = NewWebhook {
        url: form.url.clone(),
        description: (!form.description.is_empty()).then(|| form.description.clone()),
        events: form.events.clone(),
    };
    let created = state
        .store()
        .create_webhook(admin.account_id(), new, &admin.acting())
        .await;
    let (webhook, secret) = match created {
        Ok(created) => created,
        Err(err) => {
            form.errors = FieldErrors::from_store(err, |field| field)?;
            return list_page(&state, &admin, &form).await;
        }
    };
    // Shown in this answer only: the secret is not kept anywhere it could be read again.
    let content = html! {
        section.card.token-once data-testid="webhook-secret-once" {
            div.alert.alert-warning role="alert" {
                (ui::icon_warning())
                div {
                    strong { "Copy the signing secret now. It will not be shown again." }
                    p { "Your receiver checks each delivery's Postern-Signature header with it (HMAC-SHA-256; see docs/webhooks.md)." }
                }
            }
            dl.facts {
                div { dt { "Endpoint" } dd { (webhook.url) } }
                div { dt { "Events" } dd { (events_text(&webhook)) } }
            }
            label for="webhook-secret" { "Signing secret" }
            div.secret-row {
                input #webhook-secret.secret type="text" readonly value=(secret)
                    data-testid="webhook-secret" spellcheck="false" autocomplete="off";
                button.btn.btn-primary type="button" data-copy="#webhook-secret" data-testid="copy-secret" {
                    (ui::icon_copy()) span { "Copy" }
                }
            }
            a.btn href={ "/webhooks/" (webhook.id) } data-testid="secret-done" { "I have stored the secret — go to the webhook" }
        }
    };
    let page = ui::page(
        &admin,
        Nav::Webhooks,
        "Webhook added",
        Some(("/webhooks", "Webhooks")),
        html! {},
        content,
    );
    Ok(([(CACHE_CONTROL, "no-store")], page).into_response())
}

async fn load(state: &WebState, admin: &Admin, id: &str) -> WebResult<Webhook> {
    let id = form::parse_path_id(id, "webhook")?;
    Ok(state.store().get_webhook(admin.account_id(), id).await?)
}

fn delivery_state(delivery: &WebhookDelivery) -> Markup {
    match delivery.state {
        DeliveryState::Delivered => ui::badge("ok", "Delivered"),
        DeliveryState::Pending if delivery.attempts == 0 => ui::badge("neutral", "Queued"),
        DeliveryState::Pending => ui::badge("warn", "Retrying"),
        DeliveryState::Failed => ui::badge("danger", "Failed"),
    }
}

async fn detail(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let webhook = load(&state, &admin, &id).await?;
    let deliveries = state
        .store()
        .list_deliveries(
            admin.account_id(),
            webhook.id,
            Page {
                limit: 100,
                cursor: None,
            },
        )
        .await?
        .items;
    let base = format!("/webhooks/{}", webhook.id);
    let actions = html! {
        form method="post" action={ (base) "/test" } {
            (ui::csrf(&admin))
            button.btn type="submit" data-testid="send-test" { "Send test event" }
        }
        form method="post" action={ (base) "/enabled" } {
            (ui::csrf(&admin))
            input type="hidden" name="enabled" value=(if webhook.enabled { "false" } else { "true" });
            button.btn type="submit" data-testid="toggle-enabled" { @if webhook.enabled { "Pause" } @else { "Resume" } }
        }
        button.btn.btn-danger-outline type="button" data-open="confirm-delete-webhook" data-testid="delete-webhook" { (ui::icon_trash()) "Delete" }
    };
    let content = html! {
        section.card {
            dl.facts {
                div { dt { "Endpoint" } dd data-testid="webhook-url" { (webhook.url) } }
                div { dt { "Events" } dd data-testid="webhook-events" { (events_text(&webhook)) } }
                div { dt { "State" } dd data-testid="webhook-state" { (state_badge(&webhook)) } }
                @if let Some(description) = &webhook.description { div { dt { "Description" } dd { (description) } } }
                div { dt { "Created" } dd { (ui::time(webhook.created_at)) } }
            }
        }
        section {
            div.section-head { h2 { "Deliveries" } }
            @if deliveries.is_empty() {
                (ui::empty_state("Nothing sent yet", "Each event this webhook is subscribed to appears here with every try's answer. Send a test event to see one.", html! {}))
            } @else {
                div.table-wrap {
                    table data-testid="deliveries-table" {
                        thead { tr { th { "Created" } th { "Event" } th { "State" } th { "Tries" } th { "Last answer" } th { "Next try" } } }
                        tbody {
                            @for delivery in &deliveries {
                                tr data-testid="delivery-row" data-event=(delivery.event_type.as_str()) data-state=(delivery.state.as_str()) {
                                    td data-label="Created" { (ui::time(delivery.created_at)) }
                                    td data-label="Event" { code { (delivery.event_type.as_str()) } }
                                    td data-label="State" { (delivery_state(delivery)) }
                                    td data-label="Tries" { (delivery.attempts) }
                                    td data-label="Last answer" {
                                        @match (&delivery.last_error, delivery.last_status) {
                                            (Some(error), _) => span.muted { (error) },
                                            (None, Some(status)) => { "HTTP " (status) },
                                            (None, None) => span.muted { "-" },
                                        }
                                    }
                                    td data-label="Next try" { (ui::opt_time(delivery.next_attempt_at, "-")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        (ui::confirm_dialog(&admin, &Confirm {
            id: "confirm-delete-webhook",
            title: "Delete this webhook?",
            text: "Its queued deliveries and its delivery log are deleted with it. The receiver is sent nothing more.",
            action: &format!("{base}/delete"),
            confirm_label: "Delete webhook",
            testid: "delete-webhook",
        }))
    };
    Ok(ui::page(
        &admin,
        Nav::Webhooks,
        &webhook.url,
        Some(("/webhooks", "Webhooks")),
        actions,
        content,
    )
    .into_response())
}

async fn send_test(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Response> {
    let webhook = load(&state, &admin, &id).await?;
    state
        .store()
        .send_test_event(admin.account_id(), webhook.id, &admin.acting())
        .await?;
    Ok(Redirect::to(&format!("/webhooks/{}", webhook.id)).into_response())
}

async fn set_enabled(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let webhook = load(&state, &admin, &id).await?;
    let patch = WebhookPatch {
        enabled: Some(fields.get("enabled") == "true"),
        ..WebhookPatch::default()
    };
    state
        .store()
        .update_webhook(admin.account_id(), webhook.id, patch, &admin.acting())
        .await?;
    Ok(Redirect::to(&format!("/webhooks/{}", webhook.id)).into_response())
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Response> {
    let webhook = load(&state, &admin, &id).await?;
    state
        .store()
        .delete_webhook(admin.account_id(), webhook.id, &admin.acting())
        .await?;
    Ok(Redirect::to("/webhooks").into_response())
}
