//! A service account's client devices, on its page: filtered and paged (a fleet on one token has
//! thousands), each with its token, address, version, last sighting and status, and Block /
//! Unblock.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::routing::post;
use axum::Router;
use maud::{html, Markup};
use postern_domain::{Actor, Device, DeviceKind, Token};
use postern_store::{DeviceFilter, Page};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{WebError, WebResult};
use crate::form::{self, Post};
use crate::ui::{self, Confirm};
use crate::WebState;

/// Clients shown per page.
const PAGE_SIZE: u32 = 50;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/actors/{id}/clients/{client_id}/block", post(block))
        .route("/actors/{id}/clients/{client_id}/unblock", post(unblock))
        .route("/actors/{id}/clients/{client_id}/approve", post(approve))
}

/// The clients filter, in the service account page's query string.
#[derive(Deserialize, Default)]
pub struct ClientsQuery {
    /// Name or device id contains.
    #[serde(default)]
    clients_q: String,
    /// A token id.
    #[serde(default)]
    clients_token: String,
    /// `blocked`, `active` (not blocked), `awaiting` (approval) or empty (all).
    #[serde(default)]
    clients_status: String,
    #[serde(default)]
    clients_cursor: Option<String>,
}

impl ClientsQuery {
    fn filter(&self, actor_id: Uuid) -> DeviceFilter {
        DeviceFilter {
            actor_id: Some(actor_id),
            token_id: Uuid::parse_str(&self.clients_token).ok(),
            search: Some(self.clients_q.trim().to_string()).filter(|q| !q.is_empty()),
            blocked: match self.clients_status.as_str() {
                "blocked" => Some(true),
                "active" => Some(false),
                _ => None,
            },
            awaiting_approval: (self.clients_status == "awaiting").then_some(true),
            ..Default::default()
        }
    }

    fn is_filtered(&self) -> bool {
        !self.clients_q.trim().is_empty()
            || !self.clients_token.is_empty()
            || !self.clients_status.is_empty()
    }

    /// This page of the actor's page with the filter, at `cursor`, scrolled to the clients.
    fn href(&self, actor_id: Uuid, cursor: Option<Uuid>) -> String {
        let cursor = cursor.map(|c| c.to_string()).unwrap_or_default();
        let path = ui::href(
            &format!("/actors/{actor_id}"),
            &[
                ("clients_q", self.clients_q.trim()),
                ("clients_token", &self.clients_token),
                ("clients_status", &self.clients_status),
                ("clients_cursor", &cursor),
            ],
        );
        format!("{path}#clients")
    }
}

/// The "Clients" section of a service account's page.
pub async fn section(
    state: &WebState,
    admin: &Admin,
    actor: &Actor,
    tokens: &[Token],
    query: &ClientsQuery,
) -> WebResult<Markup> {
    let account_id = admin.account_id();
    let filter = query.filter(actor.id);
    let cursor = query
        .clients_cursor
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok());
    let store = state.store();
    let page = store
        .list_devices(
            account_id,
            DeviceKind::Client,
            &filter,
            Page {
                limit: PAGE_SIZE,
                cursor,
            },
        )
        .await?;
    let matching = store
        .count_devices(account_id, DeviceKind::Client, &filter)
        .await?;
    let device_ids: Vec<String> = page.items.iter().map(|c| c.device_id.clone()).collect();
    let online = state
        .app
        .hub
        .online_devices(account_id, DeviceKind::Client, &device_ids)
        .await;
    let blocked = store.blocked_among(account_id, &device_ids).await?;
    let token_names: HashMap<Uuid, &str> = tokens.iter().map(|t| (t.id, t.name.as_str())).collect();
    let next = page.next_cursor.map(|c| query.href(actor.id, Some(c)));
    let first = cursor.is_some().then(|| query.href(actor.id, None));
    let rows = Rows {
        admin,
        actor,
        token_names: &token_names,
        online: &online,
        blocked: &blocked,
    };
    Ok(html! {
        section #clients {
            div.section-head {
                h2 { "Clients " span.muted data-testid="clients-count" { "(" (matching) ")" } }
            }
            @if matching > 0 || query.is_filtered() {
                (filter_form(actor, tokens, query))
            }
            @if page.items.is_empty() {
                @if query.is_filtered() {
                    (ui::empty_state("No clients match", "Change the search or the filters, or clear them.",
                        html! { a.btn href={ "/actors/" (actor.id) "#clients" } { "Clear filter" } }))
                } @else {
                    (ui::empty_state("No clients yet",
                        "Start a headless client with one of this account's tokens (POSTERN_TOKEN=… postern-client); it appears here.",
                        html! {}))
                }
            } @else {
                div.table-wrap {
                    table data-testid="clients-table" {
                        thead { tr { th { "Name" } th { "Device id" } th { "Token" } th { "Address" } th { "Version" } th { "Last seen" } th { "Status" } th { span.sr-only { "Actions" } } } }
                        tbody {
                            @for client in &page.items { (rows.row(client)) }
                        }
                    }
                }
                (ui::pager(next, first))
            }
        }
    })
}

fn filter_form(actor: &Actor, tokens: &[Token], query: &ClientsQuery) -> Markup {
    let statuses = [
        ("", "All"),
        ("active", "Not blocked"),
        ("blocked", "Blocked"),
        ("awaiting", "Awaiting approval"),
    ];
    html! {
        form.toolbar method="get" action={ "/actors/" (actor.id) "#clients" } role="search" data-testid="clients-filter" {
            div.field.inline.grow {
                label for="clients_q" { "Search" }
                input #clients_q type="search" name="clients_q" value=(query.clients_q)
                    placeholder="Name or device id contains…" data-testid="clients-q";
            }
            div.field.inline {
                label for="clients_token" { "Token" }
                select #clients_token name="clients_token" data-testid="clients-token" data-autosubmit {
                    option value="" selected[query.clients_token.is_empty()] { "All tokens" }
                    @for token in tokens {
                        @let id = token.id.to_string();
                        option value=(id) selected[id == query.clients_token] { (token.name) }
                    }
                }
            }
            div.field.inline {
                label for="clients_status" { "Status" }
                select #clients_status name="clients_status" data-testid="clients-status" data-autosubmit {
                    @for (value, text) in statuses {
                        option value=(value) selected[value == query.clients_status] { (text) }
                    }
                }
            }
            button.btn type="submit" data-testid="clients-apply" { "Filter" }
        }
    }
}

/// What each row needs besides its device.
struct Rows<'a> {
    admin: &'a Admin,
    actor: &'a Actor,
    token_names: &'a HashMap<Uuid, &'a str>,
    online: &'a std::collections::HashSet<String>,
    blocked: &'a std::collections::HashSet<String>,
}

impl Rows<'_> {
    fn row(&self, client: &Device) -> Markup {
        let blocked = self.blocked.contains(&client.device_id);
        let base = format!("/actors/{}/clients/{}", self.actor.id, client.id);
        let dialog = format!("confirm-block-{}", client.id);
        html! {
            tr data-testid="client-row" data-name=(client.name) {
                td data-label="Name" {
                    (client.name)
                    @if client.ephemeral { " " (ui::badge("neutral", "Ephemeral")) }
                }
                td data-label="Device id" { code { (client.device_id) } }
                td data-label="Token" {
                    @match client.token_id.and_then(|id| self.token_names.get(&id)) {
                        Some(name) => (name),
                        None => span.muted { "—" },
                    }
                }
                td data-label="Address" { (client.ipv4.to_string()) }
                td data-label="Version" { (client.version.as_deref().unwrap_or("—")) }
                td data-label="Last seen" {
                    (ui::time(client.last_seen_at))
                    @if let Some(ip) = &client.last_seen_ip { div.muted.small { "from " (ip) } }
                }
                td data-label="Status" data-testid="client-status" {
                    @if blocked { (ui::badge("danger", "Blocked")) }
                    @else if client.approved_at.is_none() { (ui::badge("warn", "Awaiting approval")) }
                    @else if self.online.contains(&client.device_id) { (ui::badge("ok", "Online")) }
                    @else { (ui::badge("muted", "Offline")) }
                }
                td.actions {
                    @if client.approved_at.is_none() && !blocked {
                        form method="post" action={ (base) "/approve" } {
                            (ui::csrf(self.admin))
                            button.btn.btn-small.btn-primary type="submit"
                                aria-label={ "Approve client " (client.name) } data-testid="approve-client" { "Approve" }
                        }
                    }
                    @if blocked {
                        form method="post" action={ (base) "/unblock" } {
                            (ui::csrf(self.admin))
                            button.btn.btn-small type="submit" data-testid="unblock-client" { "Unblock" }
                        }
                    } @else {
                        button.btn.btn-small.btn-danger-ghost type="button" data-open=(dialog)
                            aria-label={ "Block client " (client.name) } data-testid="block-client" { "Block" }
                        (ui::confirm_dialog(self.admin, &Confirm {
                            id: &dialog,
                            title: &format!("Block {}?", client.name),
                            text: "Its session ends and its access is withdrawn at once, and this device (its id and its key) cannot connect again until you unblock it. The token keeps working for the service account's other devices.",
                            action: &format!("{base}/block"),
                            confirm_label: "Block device",
                            testid: "block",
                        }))
                    }
                }
            }
        }
    }
}

async fn block(
    State(state): State<WebState>,
    Path((id, client_id)): Path<(String, String)>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    set_blocked(&state, &admin, &id, &client_id, true).await
}

async fn unblock(
    State(state): State<WebState>,
    Path((id, client_id)): Path<(String, String)>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    set_blocked(&state, &admin, &id, &client_id, false).await
}

async fn approve(
    State(state): State<WebState>,
    Path((id, client_id)): Path<(String, String)>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let (actor_id, client) = actor_client(&state, &admin, &id, &client_id).await?;
    state
        .store()
        .approve_client(admin.account_id(), client.id, &admin.acting())
        .await?;
    Ok(Redirect::to(&format!("/actors/{actor_id}#clients")))
}

/// One of the service account's client devices, by the ids in a path.
async fn actor_client(
    state: &WebState,
    admin: &Admin,
    id: &str,
    client_id: &str,
) -> WebResult<(Uuid, Device)> {
    let actor_id = form::parse_path_id(id, "actor")?;
    let client_id = form::parse_path_id(client_id, "client")?;
    let client = state
        .store()
        .get_client(admin.account_id(), client_id)
        .await?;
    if client.actor_id != Some(actor_id) {
        return Err(WebError::NotFound("client"));
    }
    Ok((actor_id, client))
}

/// Blocks or unblocks one of the service account's client devices.
async fn set_blocked(
    state: &WebState,
    admin: &Admin,
    id: &str,
    client_id: &str,
    blocked: bool,
) -> WebResult<Redirect> {
    let (actor_id, client) = actor_client(state, admin, id, client_id).await?;
    let store = state.store();
    match blocked {
        true => {
            store
                .block_client(admin.account_id(), client.id, &admin.acting())
                .await?
        }
        false => {
            store
                .unblock_client(admin.account_id(), client.id, &admin.acting())
                .await?
        }
    };
    Ok(Redirect::to(&format!("/actors/{actor_id}#clients")))
}
