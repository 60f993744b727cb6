//! The page shell (sidebar layout), form fields, dialogs, badges and icons shared by every page.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::auth::Admin;
use crate::form::FieldErrors;

/// The sidebar entry of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Actors,
    Groups,
    Resources,
    Sites,
    Policies,
    Tokens,
    Audit,
    Webhooks,
    Settings,
}

const NAV: [(Nav, &str, &str); 9] = [
    (Nav::Actors, "/actors", "Actors"),
    (Nav::Groups, "/groups", "Groups"),
    (Nav::Resources, "/resources", "Resources"),
    (Nav::Sites, "/sites", "Sites"),
    (Nav::Policies, "/policies", "Policies"),
    (Nav::Tokens, "/tokens", "Tokens"),
    (Nav::Audit, "/audit", "Audit log"),
    (Nav::Webhooks, "/webhooks", "Webhooks"),
    (Nav::Settings, "/settings", "Settings"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Postern" }
            link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
            link rel="stylesheet" href="/assets/app.css";
            script src="/assets/app.js" defer {}
        }
    }
}

/// A page without the sidebar: sign-in and errors.
pub fn bare_page(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { (body) }
        }
    }
}

/// A page of the console: sidebar, header with title and actions, content.
pub fn page(
    admin: &Admin,
    nav: Nav,
    title: &str,
    breadcrumb: Option<(&str, &str)>,
    actions: Markup,
    content: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                div.shell {
                    input #nav-toggle.nav-toggle type="checkbox" aria-hidden="true" tabindex="-1";
                    header.topbar {
                        label.menu-button for="nav-toggle" aria-label="Menu" { (icon_menu()) }
                        a.brand href="/actors" { (logo()) span { "Postern" } }
                    }
                    nav.sidebar aria-label="Main" {
                        a.brand href="/actors" { (logo()) span { "Postern" } }
                        ul {
                            @for (entry, href, label) in NAV {
                                li {
                                    a href=(href) data-testid={ "nav-" (label.to_lowercase().replace(' ', "-")) }
                                        aria-current=[(entry == nav).then_some("page")] {
                                        (nav_icon(entry)) span { (label) }
                                    }
                                }
                            }
                        }
                        div.sidebar-foot {
                            div.who {
                                span.who-name { (admin.actor.name) }
                                @if let Some(email) = &admin.actor.email {
                                    span.who-email { (email) }
                                }
                            }
                            form method="post" action="/logout" {
                                (csrf(admin))
                                button.btn.btn-ghost.btn-sm type="submit" data-testid="sign-out" { (icon_signout()) "Sign out" }
                            }
                        }
                    }
                    main #main.content tabindex="-1" {
                        @if let Some((href, label)) = breadcrumb {
                            a.breadcrumb href=(href) { "← " (label) }
                        }
                        div.page-head {
                            h1 data-testid="page-title" { (title) }
                            div.page-actions { (actions) }
                        }
                        (content)
                    }
                }
            }
        }
    }
}

pub fn message(title: &str, detail: &str) -> Markup {
    html! {
        main.auth {
            div.auth-card {
                div.auth-brand { (logo()) span { "Postern" } }
                h1 { (title) }
                p { (detail) }
                p { a href="/actors" { "Back to the portal" } }
            }
        }
    }
}

pub fn csrf(admin: &Admin) -> Markup {
    html! { input type="hidden" name="_csrf" value=(admin.csrf()); }
}

fn error_id(name: &str) -> String {
    format!("{name}-error")
}

pub fn field_error(errors: &FieldErrors, name: &str) -> Markup {
    html! {
        @if let Some(message) = errors.get(name) {
            p.field-error id=(error_id(name)) data-testid={ "error-" (name) } { (message) }
        }
    }
}

pub fn form_error(errors: &FieldErrors, shown: &[&str]) -> Markup {
    html! {
        @if let Some(message) = errors.general(shown) {
            div.alert.alert-error role="alert" data-testid="form-error" { (message) }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn input_field(
    name: &str,
    label: &str,
    value: &str,
    errors: &FieldErrors,
    kind: &str,
    required: bool,
    autocomplete: Option<&str>,
    hint: Option<&str>,
) -> Markup {
    let invalid = errors.get(name).is_some();
    html! {
        div.field.invalid[invalid] {
            label for=(name) { (label) @if !required { span.optional { " (optional)" } } }
            input id=(name) name=(name) type=(kind) value=(value) required[required]
                autocomplete=[autocomplete] aria-invalid=[invalid.then_some("true")]
                aria-describedby=[invalid.then(|| error_id(name))];
            @if let Some(hint) = hint { p.hint { (hint) } }
            (field_error(errors, name))
        }
    }
}

pub fn text_field(
    name: &str,
    label: &str,
    value: &str,
    errors: &FieldErrors,
    kind: &str,
    required: bool,
    autocomplete: Option<&str>,
) -> Markup {
    input_field(
        name,
        label,
        value,
        errors,
        kind,
        required,
        autocomplete,
        None,
    )
}

pub fn password_field(name: &str, label: &str, errors: &FieldErrors, autocomplete: &str) -> Markup {
    input_field(
        name,
        label,
        "",
        errors,
        "password",
        true,
        Some(autocomplete),
        None,
    )
}

pub fn textarea_field(
    name: &str,
    label: &str,
    value: &str,
    errors: &FieldErrors,
    hint: &str,
    placeholder: &str,
) -> Markup {
    let invalid = errors.get(name).is_some();
    html! {
        div.field.invalid[invalid] {
            label for=(name) { (label) span.optional { " (optional)" } }
            textarea id=(name) name=(name) rows="3" placeholder=(placeholder)
                aria-invalid=[invalid.then_some("true")]
                aria-describedby=[invalid.then(|| error_id(name))] { (value) }
            p.hint { (hint) }
            (field_error(errors, name))
        }
    }
}

pub fn select_field(
    name: &str,
    label: &str,
    options: &[(String, String)],
    selected: &str,
    errors: &FieldErrors,
    placeholder: Option<&str>,
) -> Markup {
    let invalid = errors.get(name).is_some();
    html! {
        div.field.invalid[invalid] {
            label for=(name) { (label) }
            select id=(name) name=(name) aria-invalid=[invalid.then_some("true")]
                aria-describedby=[invalid.then(|| error_id(name))] {
                @if let Some(placeholder) = placeholder {
                    option value="" { (placeholder) }
                }
                @for (value, text) in options {
                    option value=(value) selected[value == selected] { (text) }
                }
            }
            (field_error(errors, name))
        }
    }
}

/// Checkboxes for a list of choices, such as groups.
pub fn checkbox_list(
    name: &str,
    legend: &str,
    required: bool,
    options: &[(String, String)],
    checked: &[String],
    errors: &FieldErrors,
    empty: Markup,
) -> Markup {
    html! {
        fieldset.field.invalid[errors.get(name).is_some()] {
            legend { (legend) @if !required { span.optional { " (optional)" } } }
            @if options.is_empty() {
                p.hint { (empty) }
            } @else {
                div.checks {
                    @for (value, text) in options {
                        label.check {
                            input type="checkbox" name=(name) value=(value) checked[checked.contains(value)]
                                data-testid={ "check-" (text) };
                            span { (text) }
                        }
                    }
                }
            }
            (field_error(errors, name))
        }
    }
}

/// A button that opens a confirmation `<dialog>` whose form performs the destructive action.
pub struct Confirm<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    pub action: &'a str,
    pub confirm_label: &'a str,
    pub testid: &'a str,
}

pub fn confirm_dialog(admin: &Admin, c: &Confirm<'_>) -> Markup {
    html! {
        dialog.dialog id=(c.id) aria-labelledby={ (c.id) "-title" } data-testid={ "dialog-" (c.testid) } {
            form method="post" action=(c.action) {
                (csrf(admin))
                h2 id={ (c.id) "-title" } { (c.title) }
                p { (c.text) }
                div.dialog-actions {
                    button.btn type="button" data-close { "Cancel" }
                    button.btn.btn-danger type="submit" data-testid={ "confirm-" (c.testid) } { (c.confirm_label) }
                }
            }
        }
    }
}

pub fn empty_state(title: &str, text: &str, action: Markup) -> Markup {
    html! {
        div.empty data-testid="empty-state" {
            h2 { (title) }
            p { (text) }
            (action)
        }
    }
}

pub fn time(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M UTC")) }
    }
}

pub fn opt_time(t: Option<DateTime<Utc>>, none: &str) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { (none) } },
    }
}

pub fn badge(kind: &str, text: &str) -> Markup {
    html! { span class={ "badge badge-" (kind) } { (text) } }
}

pub fn actor_type_label(actor_type: postern_domain::ActorType) -> &'static str {
    match actor_type {
        postern_domain::ActorType::User => "User",
        postern_domain::ActorType::Admin => "Admin",
        postern_domain::ActorType::ServiceAccount => "Service account",
        postern_domain::ActorType::ApiClient => "API client",
    }
}

/// `path?key=value&...` with the non-empty values, URL-encoded.
pub fn href(path: &str, params: &[(&str, &str)]) -> String {
    let set: Vec<(&str, &str)> = params
        .iter()
        .copied()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    match serde_urlencoded::to_string(&set) {
        Ok(query) if !query.is_empty() => format!("{path}?{query}"),
        _ => path.to_string(),
    }
}

/// A "Next page" link when there is one.
pub fn pager(next: Option<String>, first: Option<String>) -> Markup {
    html! {
        @if next.is_some() || first.is_some() {
            nav.pager aria-label="Pages" {
                @if let Some(first) = first { a.btn.btn-sm href=(first) data-testid="page-first" { "← First page" } }
                @if let Some(next) = next { a.btn.btn-sm href=(next) data-testid="page-next" { "Next page →" } }
            }
        }
    }
}

fn svg(path: &str) -> Markup {
    html! {
        svg.icon viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor"
            stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false" {
            (PreEscaped(path))
        }
    }
}

pub fn logo() -> Markup {
    html! {
        svg.logo viewBox="0 0 32 32" width="28" height="28" aria-hidden="true" focusable="false" {
            rect width="32" height="32" rx="8" fill="#3b5bdb" {}
            path d="M10 25V11a6 6 0 0 1 12 0v14" fill="none" stroke="#fff" stroke-width="2.6" stroke-linecap="round" {}
            circle cx="16" cy="18" r="2.2" fill="#fff" {}
        }
    }
}

fn nav_icon(nav: Nav) -> Markup {
    svg(match nav {
        Nav::Actors => {
            r#"<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0 1 13 0"/><path d="M16 4.5a3.5 3.5 0 0 1 0 7"/><path d="M18 14.5a6.5 6.5 0 0 1 3.5 5.5"/>"#
        }
        Nav::Groups => {
            r#"<rect x="3" y="3" width="7" height="7" rx="1.5"/><rect x="14" y="3" width="7" height="7" rx="1.5"/><rect x="3" y="14" width="7" height="7" rx="1.5"/><rect x="14" y="14" width="7" height="7" rx="1.5"/>"#
        }
        Nav::Resources => {
            r#"<rect x="3" y="4" width="18" height="6" rx="1.5"/><rect x="3" y="14" width="18" height="6" rx="1.5"/><path d="M7 7h.01M7 17h.01"/>"#
        }
        Nav::Sites => {
            r#"<path d="M12 21s-7-6.1-7-11.5a7 7 0 0 1 14 0C19 14.9 12 21 12 21z"/><circle cx="12" cy="9.5" r="2.5"/>"#
        }
        Nav::Policies => {
            r#"<path d="M12 3l8 3v6c0 4.5-3.4 8.3-8 9-4.6-.7-8-4.5-8-9V6z"/><path d="M9 12l2 2 4-4"/>"#
        }
        Nav::Tokens => r#"<circle cx="8" cy="15" r="4"/><path d="M11 12l9-9M16 7l3 3M14 9l2 2"/>"#,
        Nav::Audit => {
            r#"<path d="M6 3h9l4 4v14H6z"/><path d="M14 3v5h5"/><path d="M9 13h7M9 17h7"/>"#
        }
        Nav::Webhooks => {
            r#"<circle cx="6" cy="17" r="2.5"/><circle cx="18" cy="17" r="2.5"/><circle cx="12" cy="6" r="2.5"/><path d="M10.8 8.2L7.2 14.8M13.2 8.2l3.6 6.6M8.5 17h7"/>"#
        }
        Nav::Settings => {
            r#"<circle cx="12" cy="12" r="3"/><path d="M12 2v3M12 19v3M2 12h3M19 12h3M4.9 4.9l2.1 2.1M17 17l2.1 2.1M4.9 19.1L7 17M17 7l2.1-2.1"/>"#
        }
    })
}

pub fn icon_dots() -> Markup {
    html! {
        svg.icon viewBox="0 0 24 24" width="20" height="20" fill="currentColor" aria-hidden="true" focusable="false" {
            circle cx="12" cy="5" r="2" {} circle cx="12" cy="12" r="2" {} circle cx="12" cy="19" r="2" {}
        }
    }
}

pub fn icon_trash() -> Markup {
    svg(
        r#"<path d="M4 7h16"/><path d="M10 11v6M14 11v6"/><path d="M6 7l1 13h10l1-13"/><path d="M9 7V4h6v3"/>"#,
    )
}

pub fn icon_plus() -> Markup {
    svg(r#"<path d="M12 5v14M5 12h14"/>"#)
}

pub fn icon_copy() -> Markup {
    svg(r#"<rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V5a2 2 0 0 1 2-2h8"/>"#)
}

pub fn icon_warning() -> Markup {
    svg(r#"<path d="M12 3l10 18H2z"/><path d="M12 10v5M12 18h.01"/>"#)
}

fn icon_menu() -> Markup {
    svg(r#"<path d="M4 6h16M4 12h16M4 18h16"/>"#)
}

fn icon_signout() -> Markup {
    svg(r#"<path d="M15 4h4v16h-4"/><path d="M10 8l-4 4 4 4"/><path d="M6 12h10"/>"#)
}

/// The page that shows a token's secret, once.
pub fn token_once(
    admin: &Admin,
    nav: Nav,
    title: &str,
    back: (&str, &str),
    shown: Option<&crate::once::Shown>,
    usage: &str,
) -> Markup {
    let content = match shown {
        Some(shown) => html! {
            section.card.token-once data-testid="token-once" {
                div.alert.alert-warning role="alert" {
                    (icon_warning())
                    div {
                        strong { "Copy this token now. It will not be shown again." }
                        p { "Store it somewhere safe, such as a secrets manager. If you leave this page without copying it, you will have to create a new token." }
                    }
                }
                dl.facts {
                    div { dt { "Token name" } dd { (shown.token.name) } }
                    div { dt { "Expires" } dd { (time(shown.token.expires_at)) } }
                }
                label for="token-secret" { "Token" }
                div.secret-row {
                    input #token-secret.secret type="text" readonly value=(shown.secret.expose())
                        data-testid="token-secret" spellcheck="false" autocomplete="off";
                    button.btn.btn-primary type="button" data-copy="#token-secret" data-testid="copy-token" {
                        (icon_copy()) span { "Copy" }
                    }
                }
                p.hint { (usage) }
                a.btn href=(back.0) data-testid="token-done" { "I have stored the token — " (back.1) }
            }
        },
        None => html! {
            section.card data-testid="token-gone" {
                h2 { "This token is no longer shown" }
                p { "A token is shown once, right after it is created. If it was not stored, revoke it and add a new one." }
                a.btn href=(back.0) { (back.1) }
            }
        },
    };
    page(admin, nav, title, None, html! {}, content)
}
