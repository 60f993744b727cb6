//! `/v1/clients` and `/v1/sites/{id}/gateways`: devices that opened a session, and whether
//! they are online now.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use postern_domain::{Device, DeviceKind};
use postern_store::DeviceFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiQuery, Authed, PageQuery};
use crate::shapes::{Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/clients", get(list_clients))
        .route("/v1/clients/{id}/block", post(block_client))
        .route("/v1/clients/{id}/unblock", post(unblock_client))
        .route("/v1/clients/{id}/approve", post(approve_client))
        .route("/v1/sites/{id}/gateways", get(list_gateways))
}

/// A device, and whether it has a session open with the portal now.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceStatus {
    #[serde(flatten)]
    pub device: Device,
    pub online: bool,
    /// Blocked by an administrator: refused, while its token works for other devices (clients
    /// only; always false for gateways).
    pub blocked: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Only clients of this service account.
    pub actor_id: Option<Uuid>,
    /// Only clients whose latest session used this token.
    pub token_id: Option<Uuid>,
    /// Only the client with this device id (the one it reports, as in `device_id`).
    pub device_id: Option<String>,
    /// Only clients whose name or device id contains this (case-insensitive).
    pub q: Option<String>,
    /// Only blocked clients (`true`), or only the others (`false`).
    pub blocked: Option<bool>,
    /// Only clients waiting for an administrator's approval (`true`: `approved_at` is null),
    /// or only approved ones (`false`).
    pub awaiting_approval: Option<bool>,
    /// Items per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (an id).
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/clients", tag = "devices", params(ClientQuery),
    responses((status = 200, body = List<DeviceStatus>), (status = 401, body = Problem)))]
pub(crate) async fn list_clients(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<ClientQuery>,
) -> Result<Json<List<DeviceStatus>>, ApiError> {
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .page()?;
    let filter = DeviceFilter {
        actor_id: query.actor_id,
        token_id: query.token_id,
        site_id: None,
        device_id: query.device_id,
        search: query.q,
        blocked: query.blocked,
        awaiting_approval: query.awaiting_approval,
    };
    list(&state, &auth, DeviceKind::Client, &filter, page).await
}

#[utoipa::path(get, path = "/v1/sites/{id}/gateways", tag = "sites", params(PageQuery),
    responses((status = 200, body = List<DeviceStatus>), (status = 404, body = Problem)))]
pub(crate) async fn list_gateways(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<DeviceStatus>>, ApiError> {
    let site_id = parse_id("site", &id)?;
    state.store.get_site(auth.account_id(), site_id).await?;
    let filter = DeviceFilter {
        site_id: Some(site_id),
        ..Default::default()
    };
    list(&state, &auth, DeviceKind::Gateway, &filter, query.page()?).await
}

async fn list(
    state: &AppState,
    auth: &Authed,
    kind: DeviceKind,
    filter: &DeviceFilter,
    page: postern_store::Page,
) -> Result<Json<List<DeviceStatus>>, ApiError> {
    let devices = state
        .store
        .list_devices(auth.account_id(), kind, filter, page)
        .await?;
    let ids: Vec<String> = devices.items.iter().map(|d| d.device_id.clone()).collect();
    let online = state
        .hub
        .online_devices(auth.account_id(), kind, &ids)
        .await;
    let blocked = match kind {
        DeviceKind::Client => state.store.blocked_among(auth.account_id(), &ids).await?,
        DeviceKind::Gateway => Default::default(),
    };
    let statuses = postern_store::Paged {
        next_cursor: devices.next_cursor,
        items: devices
            .items
            .into_iter()
            .map(|device| DeviceStatus {
                online: online.contains(&device.device_id),
                blocked: blocked.contains(&device.device_id),
                device,
            })
            .collect(),
    };
    Ok(List::from_page(statuses, page.limit))
}

#[utoipa::path(post, path = "/v1/clients/{id}/block", tag = "devices",
    params(("id" = Uuid, Path, description = "The client's id (from `GET /v1/clients`)")),
    responses((status = 200, body = Data<DeviceStatus>), (status = 404, body = Problem)))]
/// Blocks one client device: its sessions end and its grants are withdrawn at once, on every
/// portal node, and its device id and WireGuard key are refused until it is unblocked; the
/// token keeps working for every other device. Idempotent.
pub(crate) async fn block_client(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<DeviceStatus>>, ApiError> {
    let id = parse_id("client", &id)?;
    let device = state
        .store
        .block_client(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(one(&state, &auth, device, true).await)
}

#[utoipa::path(post, path = "/v1/clients/{id}/unblock", tag = "devices",
    params(("id" = Uuid, Path, description = "The client's id (from `GET /v1/clients`)")),
    responses((status = 200, body = Data<DeviceStatus>), (status = 404, body = Problem)))]
/// Lets a blocked client device connect again. Idempotent.
pub(crate) async fn unblock_client(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<DeviceStatus>>, ApiError> {
    let id = parse_id("client", &id)?;
    let device = state
        .store
        .unblock_client(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(one(&state, &auth, device, false).await)
}

#[utoipa::path(post, path = "/v1/clients/{id}/approve", tag = "devices",
    params(("id" = Uuid, Path, description = "The client's id (from `GET /v1/clients`)")),
    responses((status = 200, body = Data<DeviceStatus>), (status = 404, body = Problem)))]
/// Approves a client device that waits for it (its token requires approval): from now on it
/// is shown and granted what its policies allow, on every portal node. Idempotent.
pub(crate) async fn approve_client(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<DeviceStatus>>, ApiError> {
    let id = parse_id("client", &id)?;
    let device = state
        .store
        .approve_client(auth.account_id(), id, &auth.acting)
        .await?;
    let blocked = state
        .store
        .blocked_among(auth.account_id(), std::slice::from_ref(&device.device_id))
        .await?
        .contains(&device.device_id);
    Ok(one(&state, &auth, device, blocked).await)
}

async fn one(
    state: &AppState,
    auth: &Authed,
    device: Device,
    blocked: bool,
) -> Json<Data<DeviceStatus>> {
    let ids = [device.device_id.clone()];
    let online = state
        .hub
        .online_devices(auth.account_id(), DeviceKind::Client, &ids)
        .await;
    Data::new(DeviceStatus {
        online: !blocked && online.contains(&device.device_id),
        blocked,
        device,
    })
}
