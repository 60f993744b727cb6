//! Sites: list, create, delete; gateway tokens (shown once, revoke); gateways and whether they
//! are online.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use postern_domain::{DeviceKind, Site};
use postern_store::{DeviceFilter, Page, TokenHolder};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{self, FieldErrors, Post, TokenForm};
use crate::once::{self, Shown};
use crate::ui::{self, Confirm, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/sites", get(list).post(create))
        .route("/sites/{id}", get(detail))
        .route("/sites/{id}/delete", post(delete))
        .route("/sites/{id}/tokens", post(create_token))
        .route("/sites/{id}/token", get(token_once))
        .route("/sites/{id}/tokens/{token_id}/revoke", post(revoke_token))
}

const ALL: Page = Page {
    limit: 500,
    cursor: None,
};

async fn gateways(
    state: &WebState,
    admin: &Admin,
    site: &Site,
) -> WebResult<Vec<(postern_domain::Device, bool)>> {
    let filter = DeviceFilter {
        site_id: Some(site.id),
        ..Default::default()
    };
    let devices = state
        .store()
        .list_devices(admin.account_id(), DeviceKind::Gateway, &filter, ALL)
        .await?
        .items;
    let ids: Vec<String> = devices.iter().map(|d| d.device_id.clone()).collect();
    let online = state
        .app
        .hub
        .online_devices(admin.account_id(), DeviceKind::Gateway, &ids)
        .await;
    Ok(devices
        .into_iter()
        .map(|d| {
            let is_online = online.contains(&d.device_id);
            (d, is_online)
        })
        .collect())
}

async fn list_page(
    state: &WebState,
    admin: &Admin,
    name: &str,
    errors: &FieldErrors,
) -> WebResult<Response> {
    let sites = state
        .store()
        .list_sites(admin.account_id(), ALL)
        .await?
        .items;
    let mut rows = Vec::new();
    for site in &sites {
        let gateways = gateways(state, admin, site).await?;
        let online = gateways.iter().filter(|(_, online)| *online).count();
        rows.push((site, gateways.len(), online));
    }
    let content = html! {
        form.card.form.inline-form method="post" action="/sites" novalidate data-testid="site-form" {
            (ui::csrf(admin))
            (ui::form_error(errors, &["name"]))
            (ui::input_field("name", "New site", name, errors, "text", true, None, None))
            button.btn.btn-primary type="submit" data-testid="create-site" { (ui::icon_plus()) "Create site" }
        }
        @if rows.is_empty() {
            (ui::empty_state("No sites yet",
                "A site is a network where gateways run, such as an office or a VPC. Create one, then give its gateways a gateway token.",
                html! {}))
        } @else {
            div.table-wrap {
                table data-testid="sites-table" {
                    thead { tr { th { "Name" } th { "Gateways" } th { "Online" } th { "Created" } } }
                    tbody {
                        @for (site, total, online) in &rows {
                            tr data-testid="site-row" data-name=(site.name) {
                                td data-label="Name" { a.strong href={ "/sites/" (site.id) } { (site.name) } }
                                td data-label="Gateways" { (total) }
                                td data-label="Online" {
                                    @if *online > 0 { (ui::badge("ok", &format!("{online} online"))) }
                                    @else { (ui::badge("muted", "None online")) }
                                }
                                td data-label="Created" { (ui::time(site.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    let status = errors.status();
    Ok((
        status,
        ui::page(admin, Nav::Sites, "Sites", None, html! {}, content),
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
        .create_site(admin.account_id(), name, &admin.acting())
        .await
    {
        Ok(site) => Ok(Redirect::to(&format!("/sites/{}", site.id)).into_response()),
        Err(err) => {
            let errors = FieldErrors::from_store(err, |f| f)?;
            list_page(&state, &admin, name, &errors).await
        }
    }
}

async fn load(state: &WebState, admin: &Admin, id: &str) -> WebResult<Site> {
    let id = form::parse_path_id(id, "site")?;
    Ok(state.store().get_site(admin.account_id(), id).await?)
}

async fn detail_page(
    state: &WebState,
    admin: &Admin,
    site: &Site,
    form: &TokenForm,
) -> WebResult<Response> {
    let account_id = admin.account_id();
    let tokens = state
        .store()
        .list_tokens(account_id, TokenHolder::Site(site.id), ALL)
        .await?
        .items;
    let gateways = gateways(state, admin, site).await?;
    let token_ids: Vec<Uuid> = tokens.iter().map(|t| t.id).collect();
    let token_sessions = state.app.hub.token_sessions(account_id, &token_ids).await;
    let now = chrono::Utc::now();
    let warning_days = crate::tokens::warning_days(state, account_id).await?;
    let base = format!("/sites/{}", site.id);
    let actions = html! {
        button.btn.btn-danger-outline type="button" data-open="confirm-delete-site" data-testid="delete-site" { (ui::icon_trash()) "Delete site" }
    };
    let content = html! {
        section {
            div.section-head { h2 { "Gateway tokens" } }
            form.card.form.inline-form method="post" action={ (base) "/tokens" } novalidate data-testid="gateway-token-form" {
                (ui::csrf(admin))
                (ui::form_error(&form.errors, &["name", "expires_at"]))
                (ui::input_field("name", "Token name", &form.name, &form.errors, "text", true, None, None))
                (ui::input_field("expires_at", "Expires on", &form.expires, &form.errors, "date", true, None, None))
                button.btn.btn-primary type="submit" data-testid="create-gateway-token" { (ui::icon_plus()) "Add gateway token" }
            }
            @if tokens.is_empty() {
                (ui::empty_state("No gateway tokens", "Gateways of this site connect with a gateway token. Add one above.", html! {}))
            } @else {
                div.table-wrap {
                    table data-testid="gateway-tokens-table" {
                        thead { tr { th { "Name" } th { "Created" } th { "Expires" } th { "Last used" } th { "Online" } th { "Status" } th { span.sr-only { "Actions" } } } }
                        tbody {
                            @for token in &tokens {
                                @let revoked = token.revoked_at.is_some();
                                @let dialog = format!("revoke-{}", token.id);
                                tr data-testid="token-row" data-name=(token.name) .revoked[revoked] {
                                    td data-label="Name" { span.strong { (token.name) } }
                                    td data-label="Created" { (ui::time(token.created_at)) }
                                    td data-label="Expires" { (ui::time(token.expires_at)) }
                                    td data-label="Last used" {
                                        (ui::opt_time(token.last_used_at, "Never"))
                                        @if let Some(ip) = &token.last_used_ip { div.muted.small { "from " (ip) } }
                                    }
                                    td data-label="Online" { (token_sessions.get(&token.id).copied().unwrap_or(0)) }
                                    td data-label="Status" data-testid="token-status" {
                                        (crate::tokens::status_badge(token, now, warning_days))
                                    }
                                    td.actions {
                                        @if !revoked {
                                            button.btn.btn-icon.btn-danger-ghost type="button" data-open=(dialog)
                                                aria-label={ "Revoke token " (token.name) } title="Revoke token" data-testid="revoke-token" { (ui::icon_trash()) }
                                            (ui::confirm_dialog(admin, &Confirm {
                                                id: &dialog,
                                                title: "Revoke this gateway token?",
                                                text: "Gateways using it are disconnected at once and cannot connect with it again.",
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
        section {
            div.section-head { h2 { "Gateways" } }
            @if gateways.is_empty() {
                (ui::empty_state("No gateways yet",
                    "Run postern-gateway in this site's network with one of the tokens above; it appears here.",
                    html! {}))
            } @else {
                div.table-wrap {
                    table data-testid="gateways-table" {
                        thead { tr { th { "Name" } th { "Device id" } th { "Version" } th { "Last seen" } th { "Status" } } }
                        tbody {
                            @for (gateway, online) in &gateways {
                                tr {
                                    td data-label="Name" { (gateway.name) }
                                    td data-label="Device id" { code { (gateway.device_id) } }
                                    td data-label="Version" { (gateway.version.as_deref().unwrap_or("—")) }
                                    td data-label="Last seen" {
                                        (ui::time(gateway.last_seen_at))
                                        @if let Some(ip) = &gateway.last_seen_ip { div.muted.small { "from " (ip) } }
                                    }
                                    td data-label="Status" {
                                        @if *online { (ui::badge("ok", "Online")) } @else { (ui::badge("muted", "Offline")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (ui::confirm_dialog(admin, &Confirm {
            id: "confirm-delete-site",
            title: &format!("Delete the site {}?", site.name),
            text: "Its gateway tokens are deleted and its gateways disconnected. A site that still serves resources cannot be deleted.",
            action: &format!("{base}/delete"),
            confirm_label: "Delete site",
            testid: "delete-site",
        }))
    };
    let status = form.errors.status();
    Ok((
        status,
        ui::page(
            admin,
            Nav::Sites,
            &site.name,
            Some(("/sites", "Sites")),
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
    let site = load(&state, &admin, &id).await?;
    let form = TokenForm::blank();
    detail_page(&state, &admin, &site, &form).await
}

async fn delete(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let site = load(&state, &admin, &id).await?;
    state
        .store()
        .delete_site(admin.account_id(), site.id, &admin.acting())
        .await?;
    Ok(Redirect::to("/sites"))
}

async fn create_token(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let site = load(&state, &admin, &id).await?;
    let (mut form, request) = TokenForm::read(&state, admin.account_id(), &fields, false).await?;
    let Some(request) = request else {
        return detail_page(&state, &admin, &site, &form).await;
    };

    match state
        .store()
        .create_token(
            admin.account_id(),
            TokenHolder::Site(site.id),
            request,
            &admin.acting(),
        )
        .await
    {
        Ok(created) => {
            once::put(
                &state,
                &admin,
                site.id,
                Shown {
                    token: created.token,
                    secret: created.secret,
                },
            )
            .await?;
            Ok(Redirect::to(&format!("/sites/{}/token", site.id)).into_response())
        }
        Err(err) => {
            form.errors = FieldErrors::from_store(err, |f| f)?;
            detail_page(&state, &admin, &site, &form).await
        }
    }
}

async fn token_once(
    State(state): State<WebState>,
    admin: Admin,
    Path(id): Path<String>,
) -> WebResult<Response> {
    let site = load(&state, &admin, &id).await?;
    let shown = once::take(&state, &admin, site.id).await?;
    let markup = ui::token_once(
        &admin,
        Nav::Sites,
        &format!("Gateway token for {}", site.name),
        (&format!("/sites/{}", site.id), "back to the site"),
        shown.as_ref(),
        "Give it to the gateway: POSTERN_TOKEN=<token> postern-gateway --api-url <portal URL>.",
    );
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], markup).into_response())
}

async fn revoke_token(
    State(state): State<WebState>,
    Path((id, token_id)): Path<(String, String)>,
    Post { admin, .. }: Post,
) -> WebResult<Redirect> {
    let site = load(&state, &admin, &id).await?;
    let token_id = form::parse_path_id(&token_id, "token")?;
    state
        .store()
        .revoke_token(
            admin.account_id(),
            TokenHolder::Site(site.id),
            token_id,
            &admin.acting(),
        )
        .await?;
    Ok(Redirect::to(&format!("/sites/{}", site.id)))
}
