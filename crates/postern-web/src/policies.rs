//! Policies: list, create, edit, disable/enable, delete; conditions on the source IP and on
//! time windows.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use ipnet::IpNet;
use maud::{html, Markup};
use postern_domain::Policy;
use postern_policy::{Condition, IpOperator, TimeWindow};
use postern_store::{NewPolicy, Page, PolicyPatch};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{self, FieldErrors, Fields, Post};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/policies", get(list))
        .route("/policies/new", get(new).post(create))
        .route("/policies/{id}/edit", get(edit).post(update))
        .route("/policies/{id}/disable", post(disable))
        .route("/policies/{id}/enable", post(enable))
        .route("/policies/{id}/delete", post(delete))
}

const ALL: Page = Page {
    limit: 500,
    cursor: None,
};

pub fn describe_conditions(conditions: &[Condition]) -> Vec<String> {
    conditions
        .iter()
        .map(|c| match c {
            Condition::SourceIp { operator, ranges } => {
                let ranges: Vec<String> = ranges.iter().map(IpNet::to_string).collect();
                let op = match operator {
                    IpOperator::In => "Source IP in",
                    IpOperator::NotIn => "Source IP not in",
                };
                format!("{op} {}", ranges.join(", "))
            }
            Condition::TimeWindow(window) => format!("During {}", window.specs().join("; ")),
        })
        .collect()
}

struct Names {
    groups: HashMap<Uuid, String>,
    resources: HashMap<Uuid, String>,
}

async fn names(state: &WebState, admin: &Admin) -> WebResult<Names> {
    let account_id = admin.account_id();
    let groups = state.store().list_groups(account_id, ALL).await?.items;
    let resources = state.store().list_resources(account_id, ALL).await?.items;
    Ok(Names {
        groups: groups.into_iter().map(|g| (g.id, g.name)).collect(),
        resources: resources.into_iter().map(|r| (r.id, r.name)).collect(),
    })
}

fn sorted_options(map: &HashMap<Uuid, String>) -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = map
        .iter()
        .map(|(id, name)| (id.to_string(), name.clone()))
        .collect();
    options.sort_by_key(|a| a.1.to_lowercase());
    options
}

async fn list(State(state): State<WebState>, admin: Admin) -> WebResult<Markup> {
    let policies = state
        .store()
        .list_policies(admin.account_id(), ALL)
        .await?
        .items;
    let names = names(&state, &admin).await?;
    let content = html! {
        @if policies.is_empty() {
            @if names.resources.is_empty() {
                (ui::empty_state("Add a resource first",
                    "A policy grants a group access to a resource. Create a resource, then a policy for it.",
                    html! { a.btn.btn-primary href="/resources" { "Go to Resources" } }))
            } @else {
                (ui::empty_state("No policies yet",
                    "Nobody can reach a resource until a policy grants a group access to it.",
                    html! { a.btn.btn-primary href="/policies/new" { (ui::icon_plus()) "Add policy" } }))
            }
        } @else {
            div.table-wrap {
                table data-testid="policies-table" {
                    thead { tr { th { "Group" } th { "Resource" } th { "Conditions" } th { "Status" } th { span.sr-only { "Actions" } } } }
                    tbody {
                        @for policy in &policies {
                            @let group = names.groups.get(&policy.group_id).map(String::as_str).unwrap_or("—");
                            @let resource = names.resources.get(&policy.resource_id).map(String::as_str).unwrap_or("—");
                            tr data-testid="policy-row" data-group=(group) data-resource=(resource) {
                                td data-label="Group" { a href={ "/groups/" (policy.group_id) } { (group) } }
                                td data-label="Resource" {
                                    a href={ "/resources/" (policy.resource_id) "/edit" } { (resource) }
                                    @if let Some(d) = &policy.description { div.muted.small { (d) } }
                                }
                                td data-label="Conditions" {
                                    @let conditions = describe_conditions(&policy.conditions);
                                    @if conditions.is_empty() { span.muted { "Always" } }
                                    @for c in &conditions { div.small { (c) } }
                                }
                                td data-label="Status" data-testid="policy-status" {
                                    @if policy.disabled { (ui::badge("muted", "Disabled")) } @else { (ui::badge("ok", "Enabled")) }
                                }
                                td.actions {
                                    a.btn.btn-sm href={ "/policies/" (policy.id) "/edit" } { "Edit" }
                                    form method="post" action={ "/policies/" (policy.id) (if policy.disabled { "/enable" } else { "/disable" }) } {
                                        (ui::csrf(&admin))
                                        button.btn.btn-sm type="submit" data-testid="toggle-policy" {
                                            @if policy.disabled { "Enable" } @else { "Disable" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let actions = html! {
        @if !names.resources.is_empty() {
            a.btn.btn-primary href="/policies/new" data-testid="add-policy" { (ui::icon_plus()) "Add policy" }
        }
    };
    Ok(ui::page(
        &admin,
        Nav::Policies,
        "Policies",
        None,
        actions,
        content,
    ))
}

#[derive(Default)]
struct PolicyForm {
    group_id: String,
    resource_id: String,
    description: String,
    ip_operator: String,
    ip_ranges: String,
    time_windows: String,
    disabled: bool,
    errors: FieldErrors,
}

impl PolicyForm {
    fn from_policy(p: &Policy) -> Self {
        let mut form = PolicyForm {
            group_id: p.group_id.to_string(),
            resource_id: p.resource_id.to_string(),
            description: p.description.clone().unwrap_or_default(),
            ip_operator: "in".to_string(),
            disabled: p.disabled,
            ..Default::default()
        };
        for condition in &p.conditions {
            match condition {
                Condition::SourceIp { operator, ranges } => {
                    form.ip_operator = match operator {
                        IpOperator::In => "in",
                        IpOperator::NotIn => "not_in",
                    }
                    .to_string();
                    form.ip_ranges = ranges
                        .iter()
                        .map(IpNet::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                }
                Condition::TimeWindow(window) => form.time_windows = window.specs().join("\n"),
            }
        }
        form
    }

    fn from_fields(fields: &Fields) -> Self {
        PolicyForm {
            group_id: fields.get("group_id").to_string(),
            resource_id: fields.get("resource_id").to_string(),
            description: fields.get("description").to_string(),
            ip_operator: fields.get("ip_operator").to_string(),
            ip_ranges: fields.get("ip_ranges").to_string(),
            time_windows: fields.get("time_windows").to_string(),
            disabled: fields.checked("disabled"),
            errors: FieldErrors::default(),
        }
    }

    fn parse(&mut self) -> Option<(Uuid, Uuid, Vec<Condition>)> {
        let group_id = form::parse_id(&mut self.errors, "group_id", &self.group_id, "group");
        let resource_id = form::parse_id(
            &mut self.errors,
            "resource_id",
            &self.resource_id,
            "resource",
        );
        let mut conditions = Vec::new();
        let ranges: Result<Vec<IpNet>, String> = crate::form::split_list(&self.ip_ranges)
            .into_iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{s}' is not an IP address or CIDR range"))
            })
            .collect();
        match ranges {
            Ok(ranges) if ranges.is_empty() => {}
            Ok(ranges) => {
                let operator = if self.ip_operator == "not_in" {
                    IpOperator::NotIn
                } else {
                    IpOperator::In
                };
                conditions.push(Condition::SourceIp { operator, ranges });
            }
            Err(message) => self.errors.add("ip_ranges", message),
        }
        let specs: Vec<&str> = self
            .time_windows
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !specs.is_empty() {
            match TimeWindow::from_specs(specs) {
                Ok(window) => conditions.push(Condition::TimeWindow(window)),
                Err(err) => self.errors.add("time_windows", err.to_string()),
            }
        }
        Some((group_id?, resource_id?, conditions)).filter(|_| self.errors.is_empty())
    }
}

fn rename(field: &str) -> &str {
    match field {
        "conditions" => "ip_ranges",
        other => other,
    }
}

async fn form_page(
    state: &WebState,
    admin: &Admin,
    existing: Option<&Policy>,
    form: &PolicyForm,
) -> WebResult<Response> {
    let names = names(state, admin).await?;
    let groups = sorted_options(&names.groups);
    let resources = sorted_options(&names.resources);
    let operators = [
        ("in".to_string(), "is in".to_string()),
        ("not_in".to_string(), "is not in".to_string()),
    ];
    let action = match existing {
        Some(p) => format!("/policies/{}/edit", p.id),
        None => "/policies/new".to_string(),
    };
    let shown = [
        "group_id",
        "resource_id",
        "description",
        "ip_ranges",
        "time_windows",
    ];
    let content = html! {
        form.card.form method="post" action=(action) novalidate data-testid="policy-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &shown))
            (ui::select_field("group_id", "Group", &groups, &form.group_id, &form.errors, Some("Choose a group…")))
            (ui::select_field("resource_id", "Resource", &resources, &form.resource_id, &form.errors, Some("Choose a resource…")))
            (ui::input_field("description", "Description", &form.description, &form.errors, "text", false, None, None))
            h2.section-title { "Conditions" }
            p.hint { "All conditions must hold. Leave both empty to grant access at all times from anywhere." }
            div.field-pair {
                (ui::select_field("ip_operator", "Source IP", &operators, &form.ip_operator, &form.errors, None))
                (ui::textarea_field("ip_ranges", "Ranges", &form.ip_ranges, &form.errors,
                    "IP addresses or CIDR ranges, separated by commas or new lines.", "10.0.0.0/8, 203.0.113.7"))
            }
            (ui::textarea_field("time_windows", "Time windows", &form.time_windows, &form.errors,
                "One per line: days, hours and an IANA time zone, e.g. Mon-Fri 09:00-17:00 Europe/Berlin. All lines must use the same time zone.",
                "Mon-Fri 09:00-17:00 Europe/Berlin"))
            label.check {
                input type="checkbox" name="disabled" value="on" checked[form.disabled];
                span { "Disabled (the policy grants nothing until enabled)" }
            }
            div.form-actions {
                a.btn href="/policies" { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="save-policy" {
                    @if existing.is_some() { "Save" } @else { "Create policy" }
                }
            }
        }
        @if let Some(p) = existing {
            (ui::confirm_dialog(admin, &Confirm {
                id: "confirm-delete-policy",
                title: "Delete this policy?",
                text: "The access it grants ends at once. This cannot be undone.",
                action: &format!("/policies/{}/delete", p.id),
                confirm_label: "Delete policy",
                testid: "delete-policy",
            }))
        }
    };
    let actions = html! {
        @if existing.is_some() {
            button.btn.btn-danger-outline type="button" data-open="confirm-delete-policy" data-testid="delete-policy" { (ui::icon_trash()) "Delete" }
        }
    };
    let title = if existing.is_some() {
        "Edit policy"
    } else {
        "Add policy"
    };
    let status = form.errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Policies,
            title,
            Some(("/policies", "Policies")),
            actions,
            content,
        ),
    )
        .into_response())
}

async fn new(State(state): State<WebState>, admin: Admin) -> WebResult<Response> {
    let form = PolicyForm {
        ip_operator: "in".to_string(),
        ..Default::default()
    };
    form_page(&state, &admin, None, &form).await
}

fn not_found_field(
    err: postern_store::StoreError,
    errors: &mut FieldErrors,
) -> Option<postern_store::StoreError> {
    match err {
        postern_store::StoreError::NotFound(what) => {
            let field = if what == "group" {
                "group_id"
            } else {
                "resource_id"
            };
            errors.add(field, format!("Choose a {what} from the list"));
            None
        }
        other => Some(other),
    }
}

async fn create(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = PolicyForm::from_fields(&fields);
    let Some((group_id, resource_id, conditions)) = form.parse() else {
        return form_page(&state, &admin, None, &form).await;
    };
    let new = NewPolicy {
        group_id,
        resource_id,
        description: Some(form.description.trim().to_string()).filter(|d| !d.is_empty()),
        conditions,
        disabled: form.disabled,
    };
    match state
        .store()
        .create_policy(admin.account_id(), new, &admin.acting())
        .await
    {
        Ok(_) => Ok(Redirect::to("/policies").into_response()),
        Err(err) => {
            if let Some(err) = not_found_field(err, &mut form.errors) {
                form.errors = FieldErrors::from_store(err, rename)?;
            }
            form_page(&state, &admin, None, &form).await
        }
    }
}

async fn load(state: &WebState, admin: &Admin, id: &str) -> WebResult<Policy> {
    let id = form::parse_path_id(id, "policy")?;
    Ok(state.store().get_policy(admin.account_id(), id).await?)
}

async fn edit(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let policy = load(&state, &admin, &id).await?;
    form_page(
        &state,
        &admin,
        Some(&policy),
        &PolicyForm::from_policy(&policy),
    )
    .await
}

async fn update(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let policy = load(&state, &admin, &id).await?;
    let mut form = PolicyForm::from_fields(&fields);
    let Some((group_id, resource_id, conditions)) = form.parse() else {
        return form_page(&state, &admin, Some(&policy), &form).await;
    };
    let description = form.description.trim().to_string();
    let patch = PolicyPatch {
        group_id: Some(group_id),
        resource_id: Some(resource_id),
        description: Some((!description.is_empty()).then_some(description)),
        conditions: Some(conditions),
        disabled: Some(form.disabled),
    };
    match state
        .store()
        .update_policy(admin.account_id(), policy.id, patch, &admin.acting())
        .await
    {
        Ok(_) => Ok(Redirect::to("/policies").into_response()),
        Err(err) => {
            if let Some(err) = not_found_field(err, &mut form.errors) {
                form.errors = FieldErrors::from_store(err, rename)?;
            }
            form_page(&state, &admin, Some(&policy), &form).await
        }
    }
}

async fn set_disabled(
    state: &WebState,
    admin: &Admin,
    id: &str,
    disabled: bool,
) -> WebResult<Redirect> {
    let policy = load(state, admin, id).await?;
    let patch = PolicyPatch {
        disabled: Some(disabled),
        ..Default::default()
    };
    state
        .store()
        .update_policy(admin.account_id(), policy.id, patch, &admin.acting())
        .await?;
    Ok(Redirect::to("/policies"))
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
    let policy = load(&state, &admin, &id).await?;
    state
        .store()
        .delete_policy(admin.account_id(), policy.id, &admin.acting())
        .await?;
    Ok(Redirect::to("/policies"))
}
