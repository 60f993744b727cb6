//! `/v1/webhooks`: an account's webhooks, their delivery log, and test events.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use postern_domain::webhooks::{Webhook, WebhookDelivery, WebhookEvent};
use postern_store::{NewWebhook, WebhookPatch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{double_option, Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/v1/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route("/v1/webhooks/{id}/test", post(send_test_event))
        .route("/v1/webhooks/{id}/deliveries", get(list_deliveries))
}

/// A new webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: `https://…` (plain `http://` only to the portal's own host).
    #[schema(
        min_length = 1,
        max_length = 2048,
        example = "https://hooks.example.com/postern"
    )]
    pub url: String,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// The events it is sent, at least one.
    #[schema(min_items = 1)]
    pub events: Vec<WebhookEvent>,
}

/// What `PATCH` changes; omitted fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[schema(min_length = 1, max_length = 2048)]
    pub url: Option<String>,
    /// `null` clears the description.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
    #[schema(min_items = 1)]
    pub events: Option<Vec<WebhookEvent>>,
    /// `false` pauses deliveries (they wait, and go when it is enabled again).
    pub enabled: Option<bool>,
}

/// A webhook in the one response that carries its signing secret: the one that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// Signs every delivery (`Postern-Signature`). Shown once: it cannot be read again.
    pub secret: String,
}

fn names(events: Vec<WebhookEvent>) -> Vec<String> {
    events
        .into_iter()
        .map(|event| event.as_str().to_string())
        .collect()
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = List<Webhook>)))]
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<Webhook>>, ApiError> {
    let page = query.page()?;
    // At most 20 per account: one read, paged here.
    let webhooks = state.store.list_webhooks(auth.account_id()).await?;
    Ok(List::page_of(webhooks, page, |webhook| webhook.id))
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = Data<WebhookWithSecret>), (status = 422, body = Problem)))]
/// Creates a webhook with a fresh signing secret, returned this once. Audited as
/// `webhook.create`.
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<Data<WebhookWithSecret>>), ApiError> {
    let new = NewWebhook {
        url: body.url,
        description: body.description,
        events: names(body.events),
    };
    let (webhook, secret) = state
        .store
        .create_webhook(auth.account_id(), new, &auth.acting)
        .await?;
    Ok((
        StatusCode::CREATED,
        Data::new(WebhookWithSecret { webhook, secret }),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    responses((status = 200, body = Data<Webhook>), (status = 404, body = Problem)))]
pub(crate) async fn get_webhook(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<Webhook>>, ApiError> {
    let id = parse_id("webhook", &id)?;
    Ok(Data::new(
        state.store.get_webhook(auth.account_id(), id).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhook,
    responses((status = 200, body = Data<Webhook>), (status = 404, body = Problem), (status = 422, body = Problem)))]
/// Changes a webhook; audited as `webhook.update`.
pub(crate) async fn update_webhook(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> Result<Json<Data<Webhook>>, ApiError> {
    let id = parse_id("webhook", &id)?;
    let patch = WebhookPatch {
        url: body.url,
        description: body.description,
        events: body.events.map(names),
        enabled: body.enabled,
    };
    Ok(Data::new(
        state
            .store
            .update_webhook(auth.account_id(), id, patch, &auth.acting)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    responses((status = 204, description = "Deleted with its delivery log"), (status = 404, body = Problem)))]
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("webhook", &id)?;
    state
        .store
        .delete_webhook(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    responses((status = 202, description = "Queued: sent within a second, then retried like any delivery", body = Data<WebhookDelivery>), (status = 404, body = Problem)))]
/// Sends a `webhook.test` event to this webhook (even a disabled one is queued; it goes when
/// enabled). Audited as `webhook.test`.
pub(crate) async fn send_test_event(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Data<WebhookDelivery>>), ApiError> {
    let id = parse_id("webhook", &id)?;
    let delivery = state
        .store
        .send_test_event(auth.account_id(), id, &auth.acting)
        .await?;
    Ok((StatusCode::ACCEPTED, Data::new(delivery)))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = List<WebhookDelivery>), (status = 404, body = Problem)))]
/// The webhook's deliveries, newest first: state, tries, the receiver's last status or error,
/// the next try, and the body sent.
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<WebhookDelivery>>, ApiError> {
    let id = parse_id("webhook", &id)?;
    let page = query.page()?;
    let deliveries = state
        .store
        .list_deliveries(auth.account_id(), id, page)
        .await?;
    Ok(List::from_page(deliveries, page.limit))
}
