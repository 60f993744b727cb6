//! `/v1/audit-events`: the account's audit log, newest first.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postern_domain::AuditEvent;
use postern_store::AuditFilter;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiQuery, Authed, PageQuery};
use crate::shapes::List;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/audit-events", get(list_audit_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events by this actor.
    pub actor_id: Option<Uuid>,
    /// Only this action, such as `token.revoke` or `auth.failed`.
    pub action: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only events before this instant (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Items per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (an id).
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit-events", tag = "audit", params(AuditQuery),
    responses((status = 200, body = List<AuditEvent>), (status = 401, body = Problem)))]
pub(crate) async fn list_audit_events(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<List<AuditEvent>>, ApiError> {
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .page()?;
    let filter = AuditFilter {
        actor_id: query.actor_id,
        action: query.action,
        since: query.since,
        until: query.until,
    };
    let events = state
        .store
        .list_audit_events(auth.account_id(), &filter, page)
        .await?;
    Ok(List::from_page(events, page.limit))
}
