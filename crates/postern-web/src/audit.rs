//! The audit log: newest first, filtered by actor and action, paginated.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use postern_store::{ActorFilter, AuditFilter, Page};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::WebResult;
use crate::ui::{self, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new().route("/audit", get(list))
}

const PAGE_SIZE: u32 = 50;

const ACTIONS: &[&str] = &[
    "actor.create",
    "actor.update",
    "actor.disable",
    "actor.enable",
    "actor.delete",
    "token.create",
    "token.revoke",
    "group.create",
    "group.update",
    "group.delete",
    "group.memberships",
    "site.create",
    "site.update",
    "site.delete",
    "resource.create",
    "resource.update",
    "resource.delete",
    "policy.create",
    "policy.update",
    "policy.delete",
    "account.update",
    "auth.failed",
    "web.sign_in",
    "web.sign_out",
];

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    cursor: Option<String>,
}

async fn list(
    State(state): State<WebState>,
    admin: Admin,
    Query(query): Query<AuditQuery>,
) -> WebResult<Markup> {
    let account_id = admin.account_id();
    let actor_id = Uuid::parse_str(&query.actor).ok();
    let action = Some(query.action.trim().to_string()).filter(|a| !a.is_empty());
    let filter = AuditFilter {
        actor_id,
        action: action.clone(),
        since: None,
        until: None,
    };
    let cursor = query
        .cursor
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok());
    let events = state
        .store()
        .list_audit_events(
            account_id,
            &filter,
            Page {
                limit: PAGE_SIZE,
                cursor,
            },
        )
        .await?;
    let actors = state
        .store()
        .list_actors(
            account_id,
            &ActorFilter::default(),
            Page {
                limit: 500,
                cursor: None,
            },
        )
        .await?
        .items;
    let names: HashMap<Uuid, String> = actors.iter().map(|a| (a.id, a.name.clone())).collect();
    let mut actor_options: Vec<(String, String)> = actors
        .iter()
        .map(|a| (a.id.to_string(), a.name.clone()))
        .collect();
    actor_options.sort_by_key(|a| a.1.to_lowercase());
    let filter = [
        ("actor", query.actor.as_str()),
        ("action", query.action.as_str()),
    ];
    let base = ui::href("/audit", &filter);
    let next = events.next_cursor.map(|c| {
        let cursor = c.to_string();
        ui::href("/audit", &[filter[0], filter[1], ("cursor", &cursor)])
    });
    let first = cursor.is_some().then(|| base.clone());
    let content = html! {
        form.toolbar method="get" action="/audit" role="search" {
            div.field.inline {
                label for="actor" { "Actor" }
                select #actor name="actor" data-testid="filter-actor" data-autosubmit {
                    option value="" { "Any actor" }
                    @for (id, name) in &actor_options {
                        option value=(id) selected[*id == query.actor] { (name) }
                    }
                }
            }
            div.field.inline {
                label for="action" { "Action" }
                select #action name="action" data-testid="filter-action" data-autosubmit {
                    option value="" { "Any action" }
                    @for a in ACTIONS {
                        option value=(a) selected[*a == query.action] { (a) }
                    }
                }
            }
            button.btn type="submit" { "Filter" }
        }
        @if events.items.is_empty() {
            (ui::empty_state("No events", "Nothing matches this filter yet. Every change made through the portal, the API or the CLI is recorded here.", html! {}))
        } @else {
            div.table-wrap {
                table data-testid="audit-table" {
                    thead { tr { th { "When" } th { "Actor" } th { "Action" } th { "Object" } th { "Source IP" } } }
                    tbody {
                        @for event in &events.items {
                            tr data-testid="audit-row" data-action=(event.action) {
                                td data-label="When" { (ui::time(event.occurred_at)) }
                                td data-label="Actor" {
                                    @match event.actor_id {
                                        Some(id) => @match names.get(&id) {
                                            Some(name) => a href={ "/actors/" (id) } { (name) },
                                            None => span.muted { "deleted actor" },
                                        },
                                        None => span.muted { "portal host" },
                                    }
                                }
                                td data-label="Action" { code { (event.action) } }
                                td data-label="Object" {
                                    (event.object_type)
                                    @if let Some(id) = event.object_id { div.muted.small.mono { (id) } }
                                }
                                td data-label="Source IP" { (event.source_ip.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
        (ui::pager(next, first))
    };
    Ok(ui::page(
        &admin,
        Nav::Audit,
        "Audit log",
        None,
        html! {},
        content,
    ))
}
