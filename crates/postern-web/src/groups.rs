//! Groups: list, create, rename, delete, and their members.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use postern_domain::{Group, GroupKind};
use postern_store::{ActorFilter, MembershipChange, Page};

use crate::auth::Admin;
use crate::error::{WebError, WebResult};
use crate::form::{self, FieldErrors, Post};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/groups", get(list).post(create))
        .route("/groups/{id}", get(detail))
        .route("/groups/{id}/rename", post(rename))
        .route("/groups/{id}/delete", post(delete))
        .route("/groups/{id}/members", post(add_member))
        .route("/groups/{id}/members/remove", post(remove_member))
}

const ALL: Page = Page {
    limit: 500,
    cursor: None,
};

async fn list_page(
    state: &WebState,
    admin: &Admin,
    name: &str,
    errors: &FieldErrors,
) -> WebResult<Response> {
    let groups = state.store().list_groups(admin.account_id(), ALL).await?;
    let content = html! {
        form.card.form.inline-form method="post" action="/groups" novalidate data-testid="group-form" {
            (ui::csrf(admin))
            (ui::form_error(errors, &["name"]))
            (ui::input_field("name", "New group", name, errors, "text", true, None, None))
            button.btn.btn-primary type="submit" data-testid="create-group" { (ui::icon_plus()) "Create group" }
        }
        @if groups.items.iter().all(|g| g.kind == GroupKind::Everyone) {
            (ui::empty_state("No groups of your own yet",
                "Groups collect actors so that one policy grants them access to a resource. Create one above, then add members.",
                html! {}))
        }
        div.table-wrap {
            table data-testid="groups-table" {
                thead { tr { th { "Name" } th { "Kind" } th { "Members" } th { "Created" } } }
                tbody {
                    @for group in &groups.items {
                        tr data-testid="group-row" data-name=(group.name) {
                            td data-label="Name" { a.strong href={ "/groups/" (group.id) } { (group.name) } }
                            td data-label="Kind" {
                                @match group.kind {
                                    GroupKind::Everyone => (ui::badge("neutral", "Built-in")),
                                    GroupKind::Directory => span title="Synced from a directory (SCIM): read-only here" { (ui::badge("neutral", "Directory")) },
                                    GroupKind::Static => (ui::badge("neutral", "Static")),
                                }
                            }
                            td data-label="Members" { (group.member_count) }
                            td data-label="Created" { (ui::time(group.created_at)) }
                        }
                    }
                }
            }
        }
    };
    let status = errors.status();
    Ok((
        status,
        ui::page(admin, Nav::Groups, "Groups", None, html! {}, content),
    )
        .into_response())
}

async fn list(State(state): State<WebState>, admin: Admin) -> WebResult<Response> {
    list_page(&state, &admin, "", &FieldErrors::default()).await
}

async fn create(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let name = fields.get("name");
    match state
        .store()
        .create_group(admin.account_id(), name, &admin.acting())
        .await
    {
        Ok(group) => Ok(Redirect::to(&format!("/groups/{}", group.id)).into_response()),
        Err(err) => {
            let errors = FieldErrors::from_store(err, |f| f)?;
            list_page(&state, &admin, name, &errors).await
        }
    }
}

async fn load(state: &WebState, admin: &Admin, id: &str) -> WebResult<Group> {
    let id = form::parse_path_id(id, "group")?;
    Ok(state.store().get_group(admin.account_id(), id).await?)
}

async fn detail_page(
    state: &WebState,
    admin: &Admin,
    group: &Group,
    name: &str,
    errors: &FieldErrors,
) -> WebResult<Response> {
    let account_id = admin.account_id();
    let members = state
        .store()
        .list_memberships(account_id, group.id, ALL)
        .await?
        .items;
    let actors = state
        .store()
        .list_actors(account_id, &ActorFilter::default(), ALL)
        .await?
        .items;
    let candidates: Vec<(String, String)> = actors
        .iter()
        .filter(|a| !members.iter().any(|m| m.actor_id == a.id))
        .map(|a| {
            (
                a.id.to_string(),
                format!("{} ({})", a.name, ui::actor_type_label(a.actor_type)),
            )
        })
        .collect();
    let editable = group.kind == GroupKind::Static;
    let base = format!("/groups/{}", group.id);
    let actions = html! {
        @if editable {
            button.btn.btn-danger-outline type="button" data-open="confirm-delete-group" data-testid="delete-group" { (ui::icon_trash()) "Delete group" }
        }
    };
    let content = html! {
        @if editable {
            form.card.form.inline-form method="post" action={ (base) "/rename" } novalidate {
                (ui::csrf(admin))
                (ui::form_error(errors, &["name", "add"]))
                (ui::input_field("name", "Name", name, errors, "text", true, None, None))
                button.btn type="submit" data-testid="rename-group" { "Rename" }
            }
        } @else if group.kind == GroupKind::Directory {
            div.alert.alert-info data-testid="directory-group" { "This group is synced from your directory (SCIM): its name and members change there. Policies may grant it access; service accounts go in groups made here." }
        } @else {
            div.alert.alert-info { "Everyone is managed by the portal: every user and admin belongs to it, and machines never do." }
        }
        section {
            div.section-head { h2 { "Members" } }
            @if editable {
                @if candidates.is_empty() {
                    p.hint { "Every actor of the account is a member already. " a href="/actors/new" { "Add an actor" } "." }
                } @else {
                    form.inline-form.card method="post" action={ (base) "/members" } {
                        (ui::csrf(admin))
                        (ui::select_field("actor_id", "Add a member", &candidates, "", errors, Some("Choose an actor…")))
                        button.btn.btn-primary type="submit" data-testid="add-member" { (ui::icon_plus()) "Add member" }
                    }
                }
            }
            @if members.is_empty() {
                (ui::empty_state("No members yet", "Add users or service accounts above; policies on this group then apply to them.", html! {}))
            } @else {
                div.table-wrap {
                    table data-testid="members-table" {
                        thead { tr { th { "Name" } th { "Type" } th { "Member since" } th { span.sr-only { "Actions" } } } }
                        tbody {
                            @for member in &members {
                                tr data-testid="member-row" data-name=(member.actor_name) {
                                    td data-label="Name" { a.strong href={ "/actors/" (member.actor_id) } { (member.actor_name) } }
                                    td data-label="Type" { (ui::badge("neutral", ui::actor_type_label(member.actor_type))) }
                                    td data-label="Member since" { (ui::time(member.created_at)) }
                                    td.actions {
                                        @if editable {
                                            form method="post" action={ (base) "/members/remove" } {
                                                (ui::csrf(admin))
                                                input type="hidden" name="actor_id" value=(member.actor_id);
                                                button.btn.btn-sm type="submit" data-testid="remove-member" aria-label={ "Remove " (member.actor_name) } { "Remove" }
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
        @if editable {
            (ui::confirm_dialog(admin, &Confirm {
                id: "confirm-delete-group",
                title: &format!("Delete the group {}?", group.name),
                text: "Its memberships and the policies that grant it access are deleted; members lose that access at once. This cannot be undone.",
                action: &format!("{base}/delete"),
                confirm_label: "Delete group",
                testid: "delete-group",
            }))
        }
    };
    let status = errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Groups,
            &group.name,
            Some(("/groups", "Groups")),
            actions,
            content,
        ),
    )
        .into_response())
}

async fn detail(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let group = load(&state, &admin, &id).await?;
    detail_page(&state, &admin, &group, &group.name, &FieldErrors::default()).await
}

async fn rename(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let group = load(&state, &admin, &id).await?;
    let name = fields.get("name");
    match state
        .store()
        .rename_group(admin.account_id(), group.id, name, &admin.acting())
        .await
    {
        Ok(group) => Ok(Redirect::to(&format!("/groups/{}", group.id)).into_response()),
        Err(err) => {
            let errors = FieldErrors::from_store(err, |f| f)?;
            detail_page(&state, &admin, &group, name, &errors).await
        }
    }
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let group = load(&state, &admin, &id).await?;
    state
        .store()
        .delete_group(admin.account_id(), group.id, &admin.acting())
        .await?;
    Ok(Redirect::to("/groups"))
}

async fn change(
    state: &WebState,
    admin: &Admin,
    id: &str,
    add: bool,
    actor_id: &str,
) -> WebResult<Response> {
    let group = load(state, admin, id).await?;
    let mut errors = FieldErrors::default();
    let Some(actor_id) = form::parse_id(&mut errors, "actor_id", actor_id, "member") else {
        return detail_page(state, admin, &group, &group.name, &errors).await;
    };
    let change = if add {
        MembershipChange {
            add: vec![actor_id],
            remove: vec![],
        }
    } else {
        MembershipChange {
            add: vec![],
            remove: vec![actor_id],
        }
    };
    match state
        .store()
        .change_memberships(admin.account_id(), group.id, change, &admin.acting())
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/groups/{}", group.id)).into_response()),
        Err(err) => {
            let errors = FieldErrors::from_store(err, |f| match f {
                "add" | "remove" => "actor_id",
                other => other,
            })?;
            detail_page(state, admin, &group, &group.name, &errors).await
        }
    }
}

async fn add_member(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    change(&state, &admin, &id, true, fields.get("actor_id")).await
}

async fn remove_member(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    change(&state, &admin, &id, false, fields.get("actor_id"))
        .await
        .map_err(|err| match err {
            WebError::Store(postern_store::StoreError::Validation(v)) => {
                WebError::BadRequest(v.message)
            }
            other => other,
        })
}
