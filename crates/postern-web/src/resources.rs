//! Resources: list, create, edit, delete (type, address, traffic filters, site).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use postern_domain::{Resource, ResourceType};
use postern_policy::{format_ports, parse_ports, Filter, Protocol};
use postern_store::{NewResource, Page, ResourcePatch};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{self, FieldErrors, Fields, Post};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/resources", get(list))
        .route("/resources/new", get(new).post(create))
        .route("/resources/{id}/edit", get(edit).post(update))
        .route("/resources/{id}/delete", post(delete))
}

const ALL: Page = Page {
    limit: 500,
    cursor: None,
};

pub fn describe_filters(filters: &[Filter]) -> String {
    if filters.is_empty() {
        return "All traffic".to_string();
    }
    filters
        .iter()
        .map(|f| {
            let ports = format_ports(&f.ports);
            match (f.protocol, ports.is_empty()) {
                (Protocol::Icmp, _) => "ICMP".to_string(),
                (p, true) => format!("{} (all ports)", p.to_string().to_uppercase()),
                (p, false) => format!("{} {ports}", p.to_string().to_uppercase()),
            }
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

async fn site_names(state: &WebState, admin: &Admin) -> WebResult<Vec<(String, String)>> {
    let sites = state
        .store()
        .list_sites(admin.account_id(), ALL)
        .await?
        .items;
    Ok(sites
        .into_iter()
        .map(|s| (s.id.to_string(), s.name))
        .collect())
}

async fn list(State(state): State<WebState>, admin: Admin) -> WebResult<Markup> {
    let resources = state
        .store()
        .list_resources(admin.account_id(), ALL)
        .await?
        .items;
    let sites: HashMap<String, String> = site_names(&state, &admin).await?.into_iter().collect();
    let has_sites = !sites.is_empty();
    let content = html! {
        @if resources.is_empty() {
            @if has_sites {
                (ui::empty_state("No resources yet",
                    "A resource is an address (a host, a network or a DNS name) that actors reach through a site's gateways.",
                    html! { a.btn.btn-primary href="/resources/new" { (ui::icon_plus()) "Add resource" } }))
            } @else {
                (ui::empty_state("Create a site first",
                    "Resources are served by the gateways of a site. Create a site, then add resources to it.",
                    html! { a.btn.btn-primary href="/sites" { "Go to Sites" } }))
            }
        } @else {
            div.table-wrap {
                table data-testid="resources-table" {
                    thead { tr { th { "Name" } th { "Type" } th { "Address" } th { "Traffic" } th { "Site" } } }
                    tbody {
                        @for resource in &resources {
                            tr data-testid="resource-row" data-name=(resource.name) {
                                td data-label="Name" {
                                    a.strong href={ "/resources/" (resource.id) "/edit" } { (resource.name) }
                                    @if let Some(d) = &resource.description { div.muted.small { (d) } }
                                }
                                td data-label="Type" { (ui::badge("neutral", &resource.resource_type.as_str().to_uppercase())) }
                                td data-label="Address" { code { (resource.address) } }
                                td data-label="Traffic" { (describe_filters(&resource.filters)) }
                                td data-label="Site" {
                                    @match sites.get(&resource.site_id.to_string()) {
                                        Some(name) => a href={ "/sites/" (resource.site_id) } { (name) },
                                        None => span.muted { "—" },
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
        @if has_sites {
            a.btn.btn-primary href="/resources/new" data-testid="add-resource" { (ui::icon_plus()) "Add resource" }
        }
    };
    Ok(ui::page(
        &admin,
        Nav::Resources,
        "Resources",
        None,
        actions,
        content,
    ))
}

#[derive(Default)]
struct ResourceForm {
    resource_type: String,
    name: String,
    address: String,
    description: String,
    site_id: String,
    tcp: bool,
    tcp_ports: String,
    udp: bool,
    udp_ports: String,
    icmp: bool,
    errors: FieldErrors,
}

impl ResourceForm {
    fn from_resource(r: &Resource) -> Self {
        let mut form = ResourceForm {
            resource_type: r.resource_type.as_str().to_string(),
            name: r.name.clone(),
            address: r.address.clone(),
            description: r.description.clone().unwrap_or_default(),
            site_id: r.site_id.to_string(),
            ..Default::default()
        };
        for filter in &r.filters {
            let ports = format_ports(&filter.ports);
            match filter.protocol {
                Protocol::Tcp => (form.tcp, form.tcp_ports) = (true, ports),
                Protocol::Udp => (form.udp, form.udp_ports) = (true, ports),
                Protocol::Icmp => form.icmp = true,
            }
        }
        form
    }

    fn from_fields(fields: &Fields) -> Self {
        ResourceForm {
            resource_type: fields.get("type").to_string(),
            name: fields.get("name").to_string(),
            address: fields.get("address").to_string(),
            description: fields.get("description").to_string(),
            site_id: fields.get("site_id").to_string(),
            tcp: fields.checked("tcp"),
            tcp_ports: fields.get("tcp_ports").to_string(),
            udp: fields.checked("udp"),
            udp_ports: fields.get("udp_ports").to_string(),
            icmp: fields.checked("icmp"),
            errors: FieldErrors::default(),
        }
    }

    /// The parsed values, or `None` with the errors recorded.
    fn parse(&mut self) -> Option<(ResourceType, Uuid, Vec<Filter>)> {
        let resource_type = ResourceType::parse(&self.resource_type);
        if resource_type.is_none() {
            self.errors.add("type", "Choose a type");
        }
        let site_id = form::parse_id(&mut self.errors, "site_id", &self.site_id, "site");
        let mut filters = Vec::new();
        for (enabled, protocol, ports, field) in [
            (self.tcp, Protocol::Tcp, &self.tcp_ports, "tcp_ports"),
            (self.udp, Protocol::Udp, &self.udp_ports, "udp_ports"),
        ] {
            if !enabled {
                continue;
            }
            match parse_ports(ports) {
                Ok(ports) => filters.push(Filter { protocol, ports }),
                Err(err) => self.errors.add(field, err.to_string()),
            }
        }
        if self.icmp {
            filters.push(Filter {
                protocol: Protocol::Icmp,
                ports: Vec::new(),
            });
        }
        Some((resource_type?, site_id?, filters)).filter(|_| self.errors.is_empty())
    }
}

fn rename(field: &str) -> &str {
    match field {
        "filters" => "tcp_ports",
        other => other,
    }
}

async fn form_page(
    state: &WebState,
    admin: &Admin,
    existing: Option<&Resource>,
    form: &ResourceForm,
) -> WebResult<Response> {
    let sites = site_names(state, admin).await?;
    let types = [
        ("cidr".to_string(), "CIDR range (a network)".to_string()),
        ("ip".to_string(), "IP address (one host)".to_string()),
        ("dns".to_string(), "DNS name".to_string()),
        (
            "internet".to_string(),
            "Internet (every other address: the full tunnel)".to_string(),
        ),
    ];
    let action = match existing {
        Some(r) => format!("/resources/{}/edit", r.id),
        None => "/resources/new".to_string(),
    };
    let shown = [
        "type",
        "name",
        "address",
        "description",
        "site_id",
        "tcp_ports",
        "udp_ports",
    ];
    let content = html! {
        form.card.form method="post" action=(action) novalidate data-testid="resource-form" {
            (ui::csrf(admin))
            (ui::form_error(&form.errors, &shown))
            (ui::input_field("name", "Name", &form.name, &form.errors, "text", true, None, None))
            (ui::select_field("type", "Type", &types, &form.resource_type, &form.errors, None))
            (ui::input_field("address", "Address", &form.address, &form.errors, "text", true, None,
                Some("10.20.0.0/16, 10.20.0.5 or db.internal.example.com. Patterns: *.corp.example is one label in front (git.corp.example), **.corp.example any depth and corp.example itself, web-?.corp.example one character; the most specific resource wins. Empty for Internet: one per account, used by clients started with --internet.")))
            (ui::select_field("site_id", "Site", &sites, &form.site_id, &form.errors, Some("Choose a site…")))
            (ui::input_field("description", "Description", &form.description, &form.errors, "text", false, None, None))
            fieldset.field {
                legend { "Traffic filters" }
                p.hint { "Leave every box unchecked to allow all traffic. Ports: 22, 443, 8000-8100; empty means all ports." }
                div.filter-row {
                    label.check { input type="checkbox" name="tcp" value="on" checked[form.tcp] data-testid="filter-tcp"; span { "TCP" } }
                    input type="text" name="tcp_ports" value=(form.tcp_ports) aria-label="TCP ports" placeholder="all ports" data-testid="filter-tcp-ports";
                }
                (ui::field_error(&form.errors, "tcp_ports"))
                div.filter-row {
                    label.check { input type="checkbox" name="udp" value="on" checked[form.udp]; span { "UDP" } }
                    input type="text" name="udp_ports" value=(form.udp_ports) aria-label="UDP ports" placeholder="all ports";
                }
                (ui::field_error(&form.errors, "udp_ports"))
                div.filter-row {
                    label.check { input type="checkbox" name="icmp" value="on" checked[form.icmp]; span { "ICMP (ping)" } }
                }
            }
            div.form-actions {
                a.btn href="/resources" { "Cancel" }
                button.btn.btn-primary type="submit" data-testid="save-resource" {
                    @if existing.is_some() { "Save" } @else { "Create resource" }
                }
            }
        }
        @if let Some(r) = existing {
            (ui::confirm_dialog(admin, &Confirm {
                id: "confirm-delete-resource",
                title: &format!("Delete the resource {}?", r.name),
                text: "Its policies are deleted and access to it ends at once. This cannot be undone.",
                action: &format!("/resources/{}/delete", r.id),
                confirm_label: "Delete resource",
                testid: "delete-resource",
            }))
        }
    };
    let actions = html! {
        @if existing.is_some() {
            button.btn.btn-danger-outline type="button" data-open="confirm-delete-resource" data-testid="delete-resource" { (ui::icon_trash()) "Delete" }
        }
    };
    let title = match existing {
        Some(r) => format!("Edit {}", r.name),
        None => "Add resource".to_string(),
    };
    let status = form.errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Resources,
            &title,
            Some(("/resources", "Resources")),
            actions,
            content,
        ),
    )
        .into_response())
}

async fn new(State(state): State<WebState>, admin: Admin) -> WebResult<Response> {
    let form = ResourceForm {
        resource_type: "cidr".to_string(),
        ..Default::default()
    };
    form_page(&state, &admin, None, &form).await
}

async fn create(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = ResourceForm::from_fields(&fields);
    let Some((resource_type, site_id, filters)) = form.parse() else {
        return form_page(&state, &admin, None, &form).await;
    };
    let new = NewResource {
        resource_type,
        name: form.name.clone(),
        address: form.address.clone(),
        description: Some(form.description.trim().to_string()).filter(|d| !d.is_empty()),
        site_id,
        filters,
    };
    match state
        .store()
        .create_resource(admin.account_id(), new, &admin.acting())
        .await
    {
        Ok(_) => Ok(Redirect::to("/resources").into_response()),
        Err(postern_store::StoreError::NotFound(_)) => {
            form.errors.add("site_id", "Choose a site from the list");
            form_page(&state, &admin, None, &form).await
        }
        Err(err) => {
            form.errors = FieldErrors::from_store(err, rename)?;
            form_page(&state, &admin, None, &form).await
        }
    }
}

async fn load(state: &WebState, admin: &Admin, id: &str) -> WebResult<Resource> {
    let id = form::parse_path_id(id, "resource")?;
    Ok(state.store().get_resource(admin.account_id(), id).await?)
}

async fn edit(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let resource = load(&state, &admin, &id).await?;
    let form = ResourceForm::from_resource(&resource);
    form_page(&state, &admin, Some(&resource), &form).await
}

async fn update(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let resource = load(&state, &admin, &id).await?;
    let mut form = ResourceForm::from_fields(&fields);
    let Some((resource_type, site_id, filters)) = form.parse() else {
        return form_page(&state, &admin, Some(&resource), &form).await;
    };
    let description = form.description.trim().to_string();
    let patch = ResourcePatch {
        resource_type: Some(resource_type),
        name: Some(form.name.clone()),
        address: Some(form.address.clone()),
        description: Some((!description.is_empty()).then_some(description)),
        site_id: Some(site_id),
        filters: Some(filters),
    };
    match state
        .store()
        .update_resource(admin.account_id(), resource.id, patch, &admin.acting())
        .await
    {
        Ok(_) => Ok(Redirect::to("/resources").into_response()),
        Err(postern_store::StoreError::NotFound(_)) => {
            form.errors.add("site_id", "Choose a site from the list");
            form_page(&state, &admin, Some(&resource), &form).await
        }
        Err(err) => {
            form.errors = FieldErrors::from_store(err, rename)?;
            form_page(&state, &admin, Some(&resource), &form).await
        }
    }
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let resource = load(&state, &admin, &id).await?;
    state
        .store()
        .delete_resource(admin.account_id(), resource.id, &admin.acting())
        .await?;
    Ok(Redirect::to("/resources"))
}
