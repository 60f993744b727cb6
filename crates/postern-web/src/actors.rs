//! Actors: the list, Add Actor (service account or user), the service-account detail page with
//! its tokens and clients, edit, disable/enable, delete.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use postern_domain::{Actor, ActorType, GroupKind};
use postern_store::{
    ActorFilter, ActorPatch, MembershipChange, NewActor, NewTokenRequest, Page, TokenHolder,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Admin;
use crate::clients::{self, ClientsQuery};
use crate::error::{WebError, WebResult};
use crate::form::{self, FieldErrors, Fields, Post, TokenForm};
use crate::once::{self, Shown};
use crate::tokens;
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/actors", get(list))
        .route("/actors/new", get(choose_type))
        .route(
            "/actors/new/service-account",
            get(new_service_account).post(create_service_account),
        )
        .route("/actors/new/user", get(new_user).post(create_user))
        .route("/actors/{id}", get(detail))
        .route("/actors/{id}/token", get(token_once))
        .route("/actors/{id}/tokens/new", get(new_token).post(create_token))
        .route("/actors/{id}/tokens/{token_id}/revoke", post(revoke_token))
        .route("/actors/{id}/edit", get(edit).post(update))
        .route("/actors/{id}/disable", post(disable))
        .route("/actors/{id}/enable", post(enable))
        .route("/actors/{id}/delete", post(delete))
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default, rename = "type")]
    actor_type: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: Option<String>,
}

/// Every group of the account, by id.
pub async fn groups_by_id(
    state: &WebState,
    account_id: Uuid,
) -> WebResult<HashMap<Uuid, postern_domain::Group>> {
    let page = Page {
        limit: 500,
        cursor: None,
    };
    let groups = state.store().list_groups(account_id, page).await?;
    Ok(groups.items.into_iter().map(|g| (g.id, g)).collect())
}

/// The groups an administrator may put members in by hand, as (id, name).
pub async fn static_group_options(
    state: &WebState,
    account_id: Uuid,
) -> WebResult<Vec<(String, String)>> {
    let mut groups: Vec<_> = groups_by_id(state, account_id)
        .await?
        .into_values()
        .filter(|g| g.kind == GroupKind::Static)
        .collect();
    groups.sort_by_key(|g| g.name.to_lowercase());
    Ok(groups
        .into_iter()
        .map(|g| (g.id.to_string(), g.name))
        .collect())
}

async fn list(
    State(state): State<WebState>,
    admin: Admin,
    Query(query): Query<ListQuery>,
) -> WebResult<Markup> {
    let account_id = admin.account_id();
    let actor_type = ActorType::parse(&query.actor_type);
    let filter = ActorFilter {
        actor_type,
        name_contains: Some(query.q.trim().to_string()).filter(|q| !q.is_empty()),
    };
    let cursor = query
        .cursor
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok());
    let actors = state
        .store()
        .list_actors(account_id, &filter, Page { limit: 50, cursor })
        .await?;
    let groups = groups_by_id(&state, account_id).await?;
    let mut rows = Vec::new();
    for actor in &actors.items {
        let mut names: Vec<String> = state
            .store()
            .actor_group_ids(account_id, actor.id)
            .await?
            .iter()
            .filter_map(|id| groups.get(id).map(|g| g.name.clone()))
            .collect();
        names.sort();
        rows.push((actor, names));
    }
    let filtered = actor_type.is_some() || filter.name_contains.is_some();
    let next = actors.next_cursor.map(|c| {
        ui::href(
            "/actors",
            &[
                ("type", &query.actor_type),
                ("q", &query.q),
                ("cursor", &c.to_string()),
            ],
        )
    });
    let types = [
        ("", "All types"),
        ("service_account", "Service accounts"),
        ("user", "Users"),
        ("admin", "Admins"),
        ("api_client", "API clients"),
    ];
    let content = html! {
        form.toolbar method="get" action="/actors" role="search" {
            div.field.inline {
                label for="type" { "Type" }
                select #type name="type" data-testid="filter-type" data-autosubmit {
                    @for (value, text) in types {
                        option value=(value) selected[value == query.actor_type] { (text) }
                    }
                }
            }
            div.field.inline.grow {
                label for="q" { "Search by name" }
                input #q type="search" name="q" value=(query.q) placeholder="Name contains…" data-testid="filter-q";
            }
            button.btn type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            @if filtered {
                (ui::empty_state("No actors match", "Change the type or the search, or clear the filter.",
                    html! { a.btn href="/actors" { "Clear filter" } }))
            } @else {
                (ui::empty_state("No actors yet",
                    "Add a service account for a server, CI runner or device, or a user for a person.",
                    html! { a.btn.btn-primary href="/actors/new" { (ui::icon_plus()) "Add Actor" } }))
            }
        } @else {
            div.table-wrap {
                table data-testid="actors-table" {
                    thead { tr { th { "Name" } th { "Type" } th { "Groups" } th { "Status" } th { "Last seen" } } }
                    tbody {
                        @for (actor, names) in &rows {
                            tr data-testid="actor-row" data-name=(actor.name) {
                                td data-label="Name" {
                                    a.strong href={ "/actors/" (actor.id) } { (actor.name) }
                                    @if let Some(email) = &actor.email { div.muted.small { (email) } }
                                }
                                td data-label="Type" { (ui::badge("neutral", ui::actor_type_label(actor.actor_type))) }
                                td data-label="Groups" {
                                    @if names.is_empty() { span.muted { "—" } }
                                    @for name in names { span.chip { (name) } }
                                }
                                td data-label="Status" { (status_badge(actor)) }
                                td data-label="Last seen" { (ui::opt_time(actor.last_seen_at, "Never")) }
                            }
                        }
                    }
                }
            }
            (ui::pager(next, query.cursor.is_some().then(|| "/actors".to_string())))
        }
    };
    let actions = html! {
        a.btn.btn-primary href="/actors/new" data-testid="add-actor" { (ui::icon_plus()) "Add Actor" }
    };
    Ok(ui::page(
        &admin,
        Nav::Actors,
        "Actors",
        None,
        actions,
        content,
    ))
}

fn status_badge(actor: &Actor) -> Markup {
    if actor.is_disabled() {
        ui::badge("muted", "Disabled")
    } else {
        ui::badge("ok", "Active")
    }
}

async fn choose_type(admin: Admin) -> Markup {
    let content = html! {
        div.choices {
            a.choice href="/actors/new/service-account" data-testid="type-service-account" {
                h2 { "Service Account" }
                p { "A machine — server, CI runner, IoT device — that connects with a long-lived token instead of a person signing in." }
            }
            a.choice href="/actors/new/user" data-testid="type-user" {
                h2 { "User" }
                p { "A person, identified by an email address. Users join the Everyone group." }
            }
        }
    };
    ui::page(
        &admin,
        Nav::Actors,
        "Add Actor",
        Some(("/actors", "Actors")),
        html! {},
        content,
    )
}

#[derive(Default)]
struct ServiceAccountForm {
    name: String,
    group_ids: Vec<String>,
    token_name: String,
    expires: String,
    errors: FieldErrors,
}

async fn service_account_page(
    state: &WebState,
    admin: &Admin,
    form: &ServiceAccountForm,
) -> WebResult<Response> {
    let groups = static_group_options(state, admin.account_id()).await?;
    let content = html! {
        form.card.form method="post" action="/actors/new/service-account" novalidate data-testid="sa-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "group_ids", "token_name", "expires_at"]))
            (ui::input_field("name", "Name", &form.name, &form.errors, "text", true, None,
                Some("For example ci-runner or backup-server.")))
            (ui::checkbox_list("group_ids", "Groups", false, &groups, &form.group_ids, &form.errors,
                html! { "No groups yet. " a href="/groups" { "Create a group" } " to grant access through policies." }))
            h2.section-title { "Initial token" }
            (ui::input_field("token_name", "Token name", &form.token_name, &form.errors, "text", false, None,
                Some("Defaults to \u{201c}default\u{201d}.")))
            (ui::input_field("expires_at", "Expires on", &form.expires, &form.errors, "date", true, None,
                Some("The token stops working at 00:00 UTC on this day. Default: one year from today.")))
            div.form-actions {
                a.btn href="/actors/new" { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="create-service-account" { "Create service account" }
            }
        }
    };
    let status = form.errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Actors,
            "Add Service Account",
            Some(("/actors/new", "Add Actor")),
            html! {},
            content,
        ),
    )
        .into_response())
}

async fn new_service_account(State(state): State<WebState>, admin: Admin) -> WebResult<Response> {
    let form = ServiceAccountForm {
        expires: form::default_expiry_date(),
        ..Default::default()
    };
    service_account_page(&state, &admin, &form).await
}

fn parse_group_ids(fields: &Fields, errors: &mut FieldErrors) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for value in fields.all("group_ids") {
        match Uuid::parse_str(value) {
            Ok(id) => ids.push(id),
            Err(_) => errors.add("group_ids", "Choose groups from the list"),
        }
    }
    ids
}

fn rename_token_field(field: &str) -> &str {
    match field {
        "token" | "token.name" => "token_name",
        other => other,
    }
}

async fn create_service_account(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = ServiceAccountForm {
        name: fields.get("name").to_string(),
        group_ids: fields
            .all("group_ids")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        token_name: fields.get("token_name").to_string(),
        expires: fields.get("expires_at").to_string(),
        errors: FieldErrors::default(),
    };
    let group_ids = parse_group_ids(&fields, &mut form.errors);
    let expires_at = form::parse_expiry(&mut form.errors, "expires_at", &form.expires);
    let token_name = form.token_name.trim();
    let token_check = (!token_name.is_empty()).then_some(("token_name", token_name));
    form::precheck_token(
        &state,
        admin.account_id(),
        &mut form.errors,
        token_check,
        expires_at,
    )
    .await?;
    form::precheck_token(
        &state,
        admin.account_id(),
        &mut form.errors,
        Some(("name", &form.name)),
        None,
    )
    .await?;
    if !form.errors.is_empty() {
        return service_account_page(&state, &admin, &form).await;
    }
    let token_name = form.token_name.trim();
    let new = NewActor {
        actor_type: ActorType::ServiceAccount,
        name: form.name.clone(),
        email: None,
        password_hash: None,
        group_ids,
        token: Some(NewTokenRequest {
            name: (!token_name.is_empty()).then(|| token_name.to_string()),
            expires_at,
            guardrails: Default::default(),
            rotated_from: None,
            workload_identity_id: None,
        }),
    };
    let created = state
        .store()
        .create_actor(admin.account_id(), new, &admin.acting())
        .await;
    let (actor, token) = match created {
        Ok(created) => created,
        Err(err) => {
            form.errors = FieldErrors::from_store(err, rename_token_field)?;
            return service_account_page(&state, &admin, &form).await;
        }
    };
    if let Some(created) = token {
        once::put(
            &state,
            &admin,
            actor.id,
            Shown {
                token: created.token,
                secret: created.secret,
            },
        )
        .await?;
    }
    Ok(Redirect::to(&format!("/actors/{}/token", actor.id)).into_response())
}

#[derive(Default)]
struct UserForm {
    name: String,
    email: String,
    group_ids: Vec<String>,
    errors: FieldErrors,
}

async fn user_page(state: &WebState, admin: &Admin, form: &UserForm) -> WebResult<Response> {
    let groups = static_group_options(state, admin.account_id()).await?;
    let content = html! {
        form.card.form method="post" action="/actors/new/user" novalidate {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "email", "group_ids"]))
            (ui::text_field("name", "Name", &form.name, &form.errors, "text", true, None))
            (ui::text_field("email", "Email", &form.email, &form.errors, "email", true, None))
            (ui::checkbox_list("group_ids", "Groups", false, &groups, &form.group_ids, &form.errors,
                html! { "No groups yet. Users always belong to Everyone." }))
            div.form-actions {
                a.btn href="/actors/new" { "Cancel" }
                button.btn.btn-primary type="submit" { "Create user" }
            }
        }
    };
    let status = form.errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Actors,
            "Add User",
            Some(("/actors/new", "Add Actor")),
            html! {},
            content,
        ),
    )
        .into_response())
}

async fn new_user(State(state): State<WebState>, admin: Admin) -> WebResult<Response> {
    user_page(&state, &admin, &UserForm::default()).await
}

async fn create_user(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = UserForm {
        name: fields.get("name").to_string(),
        email: fields.get("email").to_string(),
        group_ids: fields
            .all("group_ids")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        errors: FieldErrors::default(),
    };
    let group_ids = parse_group_ids(&fields, &mut form.errors);
    if !form.errors.is_empty() {
        return user_page(&state, &admin, &form).await;
    }
    let new = NewActor {
        actor_type: ActorType::User,
        name: form.name.clone(),
        email: Some(form.email.clone()),
        password_hash: None,
        group_ids,
        token: None,
    };
    match state
        .store()
        .create_actor(admin.account_id(), new, &admin.acting())
        .await
    {
        Ok((actor, _)) => Ok(Redirect::to(&format!("/actors/{}", actor.id)).into_response()),
        Err(err) => {
            form.errors = FieldErrors::from_store(err, |f| match f {
                "name" if form.email.is_empty() => "email",
                other => other,
            })?;
            user_page(&state, &admin, &form).await
        }
    }
}

pub(crate) async fn load_actor(state: &WebState, admin: &Admin, id: &str) -> WebResult<Actor> {
    let id = form::parse_path_id(id, "actor")?;
    Ok(state.store().get_actor(admin.account_id(), id).await?)
}

async fn detail(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
    Query(clients_query): Query<ClientsQuery>,
) -> WebResult<Markup> {
    let actor = load_actor(&state, &admin, &id).await?;
    let account_id = admin.account_id();
    let groups = groups_by_id(&state, account_id).await?;
    let mut group_names: Vec<(Uuid, String)> = state
        .store()
        .actor_group_ids(account_id, actor.id)
        .await?
        .iter()
        .filter_map(|id| groups.get(id).map(|g| (g.id, g.name.clone())))
        .collect();
    group_names.sort_by(|a, b| a.1.cmp(&b.1));
    let holds_tokens = actor.actor_type.token_kind().is_some();
    let tokens = if holds_tokens {
        state
            .store()
            .list_tokens(
                account_id,
                TokenHolder::Actor(actor.id),
                Page {
                    limit: 500,
                    cursor: None,
                },
            )
            .await?
            .items
    } else {
        Vec::new()
    };
    let mut names: HashMap<Uuid, String> = HashMap::new();
    for token in &tokens {
        if let Some(by) = token.created_by {
            if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(by) {
                let name = match state.store().get_actor(account_id, by).await {
                    Ok(actor) => actor.name,
                    Err(_) => "deleted actor".to_string(),
                };
                slot.insert(name);
            }
        }
    }
    let token_ids: Vec<Uuid> = tokens.iter().map(|t| t.id).collect();
    let token_sessions = state.app.hub.token_sessions(account_id, &token_ids).await;
    let mut clients_moved: HashMap<Uuid, u64> = HashMap::new();
    for token in tokens.iter().filter(|t| t.revoked_at.is_none()) {
        if let Some(successor) = token.successor_id {
            let moved = state
                .store()
                .clients_on_token(account_id, successor)
                .await?;
            clients_moved.insert(token.id, moved);
        }
    }
    let clients = match actor.actor_type {
        ActorType::ServiceAccount => {
            Some(clients::section(&state, &admin, &actor, &tokens, &clients_query).await?)
        }
        _ => None,
    };
    let workload_identities = match actor.actor_type {
        ActorType::ServiceAccount => {
            Some(crate::workload_identities::section(&state, &admin, &actor).await?)
        }
        _ => None,
    };
    let now = chrono::Utc::now();
    let warning_days = crate::tokens::warning_days(&state, account_id).await?;
    let disabled = actor.is_disabled();
    let base = format!("/actors/{}", actor.id);
    let menu = html! {
        details.menu data-testid="actor-menu" {
            summary.btn.btn-icon aria-label="Actions" title="Actions" data-testid="actor-menu-button" { (ui::icon_dots()) }
            div.menu-list role="menu" {
                @if holds_tokens && !disabled {
                    a role="menuitem" href={ (base) "/tokens/new" } data-testid="menu-add-token" { "Add Token" }
                }
                a role="menuitem" href={ (base) "/edit" } data-testid="menu-edit" { "Edit" }
                @if disabled {
                    form method="post" action={ (base) "/enable" } {
                        (ui::csrf(&admin))
                        button role="menuitem" type="submit" data-testid="menu-enable" { "Enable" }
                    }
                } @else {
                    button role="menuitem" type="button" data-open="confirm-disable" data-testid="menu-disable" { "Disable" }
                }
                button.danger role="menuitem" type="button" data-open="confirm-delete" data-testid="menu-delete" { "Delete" }
            }
        }
    };
    let content = html! {
        section.card {
            dl.facts {
                div { dt { "Type" } dd { (ui::badge("neutral", ui::actor_type_label(actor.actor_type))) } }
                div { dt { "Status" } dd data-testid="actor-status" { (status_badge(&actor)) } }
                @if let Some(email) = &actor.email { div { dt { "Email" } dd { (email) } } }
                div { dt { "Groups" } dd data-testid="actor-groups" {
                    @if group_names.is_empty() { span.muted { "None" } }
                    @for (id, name) in &group_names { a.chip href={ "/groups/" (id) } { (name) } }
                } }
                div { dt { "Created" } dd { (ui::time(actor.created_at)) } }
                div { dt { "Last seen" } dd data-testid="actor-last-seen" { (ui::opt_time(actor.last_seen_at, "Never")) } }
            }
        }
        @if holds_tokens {
            section {
                div.section-head {
                    h2 { "Tokens" }
                    @if !disabled {
                        a.btn.btn-sm href={ (base) "/tokens/new" } { (ui::icon_plus()) "Add Token" }
                    }
                }
                @if tokens.is_empty() {
                    (ui::empty_state("No tokens", "This account cannot connect until it has a token. Use Add Token to create one.", html! {}))
                } @else {
                    div.table-wrap {
                        table data-testid="tokens-table" {
                            thead { tr {
                                th { "Name" } th { "Created" } th { "Created by" } th { "Expires" }
                                th { "Last used" } th { "Clients online" } th { "Guardrails" } th { "Status" } th { span.sr-only { "Actions" } }
                            } }
                            tbody {
                                @for token in &tokens {
                                    @let revoked = token.revoked_at.is_some();
                                    @let expired = !revoked && token.expires_at <= now;
                                    @let dialog = format!("revoke-{}", token.id);
                                    tr data-testid="token-row" data-name=(token.name) data-state=(if revoked { "revoked" } else if expired { "expired" } else { "active" }) .revoked[revoked] {
                                        td data-label="Name" { span.strong { (token.name) } }
                                        td data-label="Created" { (ui::time(token.created_at)) }
                                        td data-label="Created by" {
                                            @match token.created_by.and_then(|id| names.get(&id)) {
                                                Some(name) => (name),
                                                None => span.muted { "Portal host (CLI)" },
                                            }
                                        }
                                        td data-label="Expires" { (ui::time(token.expires_at)) }
                                        td data-label="Last used" {
                                            (ui::opt_time(token.last_used_at, "Never"))
                                            @if let Some(ip) = &token.last_used_ip { div.muted.small { "from " (ip) } }
                                        }
                                        td data-label="Clients online" data-testid="token-online" {
                                            (token_sessions.get(&token.id).copied().unwrap_or(0))
                                            @if let Some(max) = token.guardrails.max_clients { span.muted { " / " (max) } }
                                        }
                                        td data-label="Guardrails" data-testid="token-guardrails" { (tokens::guardrails_summary(&token.guardrails)) }
                                        td data-label="Status" data-testid="token-status" {
                                            (tokens::status_badge(token, now, warning_days))
                                            @if let (Some(moved), false) = (clients_moved.get(&token.id), expired) {
                                                div.muted.small data-testid="token-rotation" {
                                                    (moved) " client" (if *moved == 1 { "" } else { "s" }) " moved; "
                                                    (token_sessions.get(&token.id).copied().unwrap_or(0)) " still on it; it stops "
                                                    (ui::time(token.expires_at))
                                                }
                                            }
                                        }
                                        td.actions {
                                            @if !revoked && actor.actor_type == ActorType::ServiceAccount {
                                                a.btn.btn-small href={ (base) "/tokens/" (token.id) "/edit" }
                                                    aria-label={ "Edit token " (token.name) } data-testid="edit-token" { "Edit" }
                                            }
                                            @if !revoked && !expired && token.successor_id.is_none() && actor.actor_type == ActorType::ServiceAccount {
                                                a.btn.btn-small href={ (base) "/tokens/" (token.id) "/rotate" }
                                                    aria-label={ "Rotate token " (token.name) } data-testid="rotate-token" { "Rotate" }
                                            }
                                            @if !revoked {
                                                button.btn.btn-icon.btn-danger-ghost type="button" data-open=(dialog)
                                                    aria-label={ "Revoke token " (token.name) } title="Revoke token" data-testid="revoke-token" {
                                                    (ui::icon_trash())
                                                }
                                                (ui::confirm_dialog(&admin, &Confirm {
                                                    id: &dialog,
                                                    title: "Revoke this token?",
                                                    text: &format!("Clients using the token \u{201c}{}\u{201d} are disconnected at once and cannot connect with it again. This cannot be undone.", token.name),
                                                    action: &format!("{base}/tokens/{}/revoke", token.id),
                                                    confirm_label: "Revoke token",
                                                    testid: "revoke",
                                                }))
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(section) = workload_identities { (section) }
        @if let Some(clients) = clients { (clients) }
        (ui::confirm_dialog(&admin, &Confirm {
            id: "confirm-disable",
            title: &format!("Disable {}?", actor.name),
            text: "Its tokens stop working at once and connected clients are disconnected. You can enable it again later.",
            action: &format!("{base}/disable"),
            confirm_label: "Disable",
            testid: "disable",
        }))
        (ui::confirm_dialog(&admin, &Confirm {
            id: "confirm-delete",
            title: &format!("Delete {}?", actor.name),
            text: "The actor, its tokens and its group memberships are deleted; clients are disconnected. The audit log keeps the record. This cannot be undone.",
            action: &format!("{base}/delete"),
            confirm_label: "Delete",
            testid: "delete",
        }))
    };
    Ok(ui::page(
        &admin,
        Nav::Actors,
        &actor.name,
        Some(("/actors", "Actors")),
        menu,
        content,
    ))
}

async fn token_once(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let actor = load_actor(&state, &admin, &id).await?;
    let shown = once::take(&state, &admin, actor.id).await?;
    let markup = ui::token_once(
        &admin,
        Nav::Actors,
        &format!("Token for {}", actor.name),
        (&format!("/actors/{}", actor.id), "go to the service account"),
        shown.as_ref(),
        "Give it to the headless client: POSTERN_TOKEN=<token> postern-client --no-tunnel --api-url <portal URL> (or put it in /etc/postern/token, mode 0600). One token may be used by many clients at once.",
    );
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], markup).into_response())
}

fn token_page(admin: &Admin, actor: &Actor, form: &TokenForm) -> Response {
    let content = html! {
        form.card.form method="post" action={ "/actors/" (actor.id) "/tokens/new" } novalidate data-testid="token-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "expires_at", "max_clients", "allowed_source_cidrs"]))
            (ui::input_field("name", "Token name", &form.name, &form.errors, "text", true, None,
                Some("Say where it is used, e.g. fleet-eu or rotation-2025.")))
            (ui::input_field("expires_at", "Expires on", &form.expires, &form.errors, "date", true, None,
                Some("The token stops working at 00:00 UTC on this day.")))
            @if let Some(guardrails) = &form.guardrails { (guardrails.fields(&form.errors)) }
            div.form-actions {
                a.btn href={ "/actors/" (actor.id) } { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="create-token" { "Create token" }
            }
        }
    };
    let status = form.errors.status();
    (
        status,
        ui::page(
            admin,
            Nav::Actors,
            &format!("Add Token to {}", actor.name),
            Some((&format!("/actors/{}", actor.id), &actor.name)),
            html! {},
            content,
        ),
    )
        .into_response()
}

async fn new_token(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let actor = load_actor(&state, &admin, &id).await?;
    let form = match actor.actor_type {
        ActorType::ServiceAccount => TokenForm::blank_with_guardrails(),
        _ => TokenForm::blank(),
    };
    Ok(token_page(&admin, &actor, &form))
}

async fn create_token(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let actor = load_actor(&state, &admin, &id).await?;
    let with_guardrails = actor.actor_type == ActorType::ServiceAccount;
    let (mut form, request) =
        TokenForm::read(&state, admin.account_id(), &fields, with_guardrails).await?;
    let Some(request) = request else {
        return Ok(token_page(&admin, &actor, &form));
    };

    match state
        .store()
        .create_token(
            admin.account_id(),
            TokenHolder::Actor(actor.id),
            request,
            &admin.acting(),
        )
        .await
    {
        Ok(created) => {
            once::put(
                &state,
                &admin,
                actor.id,
                Shown {
                    token: created.token,
                    secret: created.secret,
                },
            )
            .await?;
            Ok(Redirect::to(&format!("/actors/{}/token", actor.id)).into_response())
        }
        Err(err) => {
            form.errors = FieldErrors::from_store(err, |f| f)?;
            Ok(token_page(&admin, &actor, &form))
        }
    }
}

async fn revoke_token(
    State(state): State<WebState>,
    Path((id, token_id)): Path<(String, String)>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let actor = load_actor(&state, &admin, &id).await?;
    let token_id = form::parse_path_id(&token_id, "token")?;
    state
        .store()
        .revoke_token(
            admin.account_id(),
            TokenHolder::Actor(actor.id),
            token_id,
            &admin.acting(),
        )
        .await?;
    Ok(Redirect::to(&format!("/actors/{}", actor.id)))
}

struct EditForm {
    name: String,
    group_ids: Vec<String>,
    errors: FieldErrors,
}

async fn edit_page(
    state: &WebState,
    admin: &Admin,
    actor: &Actor,
    form: &EditForm,
) -> WebResult<Response> {
    let groups = static_group_options(state, admin.account_id()).await?;
    let content = html! {
        form.card.form method="post" action={ "/actors/" (actor.id) "/edit" } novalidate {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &["name", "group_ids"]))
            (ui::text_field("name", "Name", &form.name, &form.errors, "text", true, None))
            (ui::checkbox_list("group_ids", "Groups", false, &groups, &form.group_ids, &form.errors,
                html! { "No groups yet. " a href="/groups" { "Create a group" } }))
            div.form-actions {
                a.btn href={ "/actors/" (actor.id) } { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="save-actor" { "Save" }
            }
        }
    };
    let status = form.errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Actors,
            &format!("Edit {}", actor.name),
            Some((&format!("/actors/{}", actor.id), &actor.name)),
            html! {},
            content,
        ),
    )
        .into_response())
}

async fn edit(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let actor = load_actor(&state, &admin, &id).await?;
    let group_ids = state
        .store()
        .actor_group_ids(admin.account_id(), actor.id)
        .await?;
    let form = EditForm {
        name: actor.name.clone(),
        group_ids: group_ids.iter().map(Uuid::to_string).collect(),
        errors: FieldErrors::default(),
    };
    edit_page(&state, &admin, &actor, &form).await
}

async fn update(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let actor = load_actor(&state, &admin, &id).await?;
    let account_id = admin.account_id();
    let mut form = EditForm {
        name: fields.get("name").to_string(),
        group_ids: fields
            .all("group_ids")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        errors: FieldErrors::default(),
    };
    let wanted = parse_group_ids(&fields, &mut form.errors);
    if !form.errors.is_empty() {
        return edit_page(&state, &admin, &actor, &form).await;
    }
    let patch = ActorPatch {
        name: Some(form.name.clone()),
        ..ActorPatch::default()
    };
    if let Err(err) = state
        .store()
        .update_actor(account_id, actor.id, patch, &admin.acting())
        .await
    {
        form.errors = FieldErrors::from_store(err, |f| f)?;
        return edit_page(&state, &admin, &actor, &form).await;
    }
    let statics = static_group_options(&state, account_id).await?;
    let current = state.store().actor_group_ids(account_id, actor.id).await?;
    for (group, _) in &statics {
        let Ok(group_id) = Uuid::parse_str(group) else {
            continue;
        };
        let change = match (current.contains(&group_id), wanted.contains(&group_id)) {
            (false, true) => MembershipChange {
                add: vec![actor.id],
                remove: vec![],
            },
            (true, false) => MembershipChange {
                add: vec![],
                remove: vec![actor.id],
            },
            _ => continue,
        };
        state
            .store()
            .change_memberships(account_id, group_id, change, &admin.acting())
            .await?;
    }
    Ok(Redirect::to(&format!("/actors/{}", actor.id)).into_response())
}

async fn set_disabled(
    state: &WebState,
    admin: &Admin,
    id: &str,
    disabled: bool,
) -> WebResult<Redirect> {
    let actor = load_actor(state, admin, id).await?;
    if disabled && actor.id == admin.actor.id {
        return Err(WebError::BadRequest(
            "You cannot disable yourself.".to_string(),
        ));
    }
    let patch = ActorPatch {
        disabled: Some(disabled),
        ..ActorPatch::default()
    };
    state
        .store()
        .update_actor(admin.account_id(), actor.id, patch, &admin.acting())
        .await?;
    Ok(Redirect::to(&format!("/actors/{}", actor.id)))
}

async fn disable(
    State(state): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> WebResult<Redirect> {
    set_disabled(&state, &post.admin, &id, true).await
}

async fn enable(
    State(state): State<WebState>,
    Path(id): Path<String>,
    post: Post,
) -> WebResult<Redirect> {
    set_disabled(&state, &post.admin, &id, false).await
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let actor = load_actor(&state, &admin, &id).await?;
    if actor.id == admin.actor.id {
        return Err(WebError::BadRequest(
            "You cannot delete yourself.".to_string(),
        ));
    }
    state
        .store()
        .delete_actor(admin.account_id(), actor.id, &admin.acting())
        .await?;
    Ok(Redirect::to("/actors"))
}
