//! The account's settings: its name, the longest token lifetime, how early expiring tokens
//! are flagged, and how long vanished
//! ephemeral devices and long-unseen devices are kept.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::html;
use postern_domain::{Account, AccountSettings};

use crate::auth::Admin;
use crate::error::WebResult;
use crate::form::{FieldErrors, Fields, Post};
use crate::ui::{self, Nav};
use crate::WebState;

pub fn routes() -> Router<WebState> {
    Router::new().route("/settings", get(show).post(update))
}

struct SettingsForm {
    name: String,
    max_token_lifetime_days: String,
    ephemeral_device_timeout_seconds: String,
    stale_device_days: String,
    token_expiry_warning_days: String,
    errors: FieldErrors,
}

impl SettingsForm {
    fn of(account: &Account) -> Self {
        let settings = &account.settings;
        Self {
            name: account.name.clone(),
            max_token_lifetime_days: settings.max_token_lifetime_days.to_string(),
            ephemeral_device_timeout_seconds: settings.ephemeral_device_timeout_seconds.to_string(),
            stale_device_days: settings.stale_device_days.to_string(),
            token_expiry_warning_days: settings.token_expiry_warning_days.to_string(),
            errors: FieldErrors::default(),
        }
    }

    fn read(fields: &Fields) -> Self {
        Self {
            name: fields.get("name").to_string(),
            max_token_lifetime_days: fields.get("max_token_lifetime_days").trim().to_string(),
            ephemeral_device_timeout_seconds: fields
                .get("ephemeral_device_timeout_seconds")
                .trim()
                .to_string(),
            stale_device_days: fields.get("stale_device_days").trim().to_string(),
            token_expiry_warning_days: fields.get("token_expiry_warning_days").trim().to_string(),
            errors: FieldErrors::default(),
        }
    }

    /// The settings, or `None` with an error on each field that is not a whole number.
    fn settings(&mut self) -> Option<AccountSettings> {
        let fields = [
            ("max_token_lifetime_days", &self.max_token_lifetime_days),
            (
                "ephemeral_device_timeout_seconds",
                &self.ephemeral_device_timeout_seconds,
            ),
            ("stale_device_days", &self.stale_device_days),
            ("token_expiry_warning_days", &self.token_expiry_warning_days),
        ];
        let numbers = fields.map(|(field, text)| (field, text.parse::<u32>().ok()));
        for (field, number) in numbers {
            if number.is_none() {
                self.errors.add(field, "Enter a whole number");
            }
        }
        let [(_, Some(max_token_lifetime_days)), (_, Some(ephemeral_device_timeout_seconds)), (_, Some(stale_device_days)), (_, Some(token_expiry_warning_days))] =
            numbers
        else {
            return None;
        };
        Some(AccountSettings {
            max_token_lifetime_days,
            ephemeral_device_timeout_seconds,
            stale_device_days,
            token_expiry_warning_days,
        })
    }
}

fn page(admin: &Admin, form: &SettingsForm, saved: bool) -> Response {
    const FIELDS: [&str; 5] = [
        "name",
        "max_token_lifetime_days",
        "token_expiry_warning_days",
        "ephemeral_device_timeout_seconds",
        "stale_device_days",
    ];
    let content = html! {
        form.card.form method="post" action="/settings" novalidate data-testid="settings-form" {
            (ui::csrf(admin))
            @if saved { p.notice role="status" data-testid="settings-saved" { "Settings saved." } }
            (ui::form_error(&form.errors, &FIELDS))
            (ui::input_field("name", "Account name", &form.name, &form.errors, "text", true, None, None))
            h2.section-title { "Tokens" }
            (ui::input_field("max_token_lifetime_days", "Longest token lifetime (days)", &form.max_token_lifetime_days, &form.errors, "number", true, None,
                Some("New tokens may live at most this long (1 to 36500).")))
            (ui::input_field("token_expiry_warning_days", "Warn of expiring tokens (days before)", &form.token_expiry_warning_days, &form.errors, "number", true, None,
                Some("Tokens expiring within this many days are marked and listed on the Tokens page (1 to 365; default 30).")))
            h2.section-title { "Devices" }
            (ui::input_field("ephemeral_device_timeout_seconds", "Remove vanished ephemeral devices after (seconds)", &form.ephemeral_device_timeout_seconds, &form.errors, "number", true, None,
                Some("An ephemeral device that stopped without saying goodbye (it crashed, or lost its network) is removed this long after its last session ended (1 to 2592000; default 600).")))
            (ui::input_field("stale_device_days", "Remove devices unseen for (days)", &form.stale_device_days, &form.errors, "number", true, None,
                Some("Any device not seen for this long is removed; it registers again if it comes back (1 to 3650; default 90).")))
            div.form-actions {
                button.btn.btn-primary type="submit" data-testid="save-settings" { "Save" }
            }
        }
        section.card {
            h2.section-title { "Sign-in" }
            p { "People can sign in through your OpenID Connect provider. "
                a href="/settings/identity-providers" data-testid="identity-providers-link" { "Identity providers" } }
        }
    };
    (
        form.errors.status(),
        ui::page(admin, Nav::Settings, "Settings", None, html! {}, content),
    )
        .into_response()
}

async fn show(
    State(state): State<WebState>,
    admin: Admin,
    query: axum::extract::Query<std::collections::HashMap<String, String>>,
) -> WebResult<Response> {
    let account = state.store().get_account(admin.account_id()).await?;
    let saved = query.get("saved").is_some();
    Ok(page(&admin, &SettingsForm::of(&account), saved))
}

async fn update(
    State(state): State<WebState>,
    Post { admin, fields }: Post,
) -> WebResult<Response> {
    let mut form = SettingsForm::read(&fields);
    let Some(settings) = form.settings() else {
        return Ok(page(&admin, &form, false));
    };
    let updated = state
        .store()
        .update_account(
            admin.account_id(),
            Some(form.name.as_str()),
            Some(settings),
            &admin.acting(),
        )
        .await;
    if let Err(err) = updated {
        form.errors = FieldErrors::from_store(err, |field| {
            field.strip_prefix("settings.").unwrap_or(field)
        })?;
        return Ok(page(&admin, &form, false));
    }
    Ok(Redirect::to("/settings?saved=1").into_response())
}
