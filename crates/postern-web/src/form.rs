//! Form bodies: the `Post` extractor (session + CSRF check + fields) and field errors.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::Form;
use chrono::{DateTime, NaiveDate, Utc};
use postern_store::StoreError;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::WebError;
use crate::WebState;

/// The fields of a submitted form, in order; a name may repeat (checkbox lists).
#[derive(Debug, Default, Clone)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn new(fields: Vec<(String, String)>) -> Self {
        Self(fields)
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or("")
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    pub fn checked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
}

/// A state-changing request of a signed-in administrator whose CSRF token matched.
pub struct Post {
    pub admin: Admin,
    pub fields: Fields,
}

impl FromRequest<WebState> for Post {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &WebState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let admin = Admin::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let Form(fields) = Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|err| WebError::BadRequest(err.body_text()))?;
        let fields = Fields::new(fields);
        admin.check_csrf(fields.get("_csrf"))?;
        Ok(Post { admin, fields })
    }
}

/// Errors of a form, by field name; "" holds an error about the form as a whole.
#[derive(Debug, Default, Clone)]
pub struct FieldErrors(BTreeMap<String, String>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_insert_with(|| message.into());
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    /// The HTTP status of a page showing this form: 422 when it holds errors.
    pub fn status(&self) -> axum::http::StatusCode {
        if self.is_empty() {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::UNPROCESSABLE_ENTITY
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The message of a form-wide error, or of an error about a field the form does not show.
    pub fn general(&self, shown: &[&str]) -> Option<String> {
        self.0
            .iter()
            .find(|(field, _)| field.is_empty() || !shown.contains(&field.as_str()))
            .map(|(field, message)| {
                if field.is_empty() {
                    message.clone()
                } else {
                    format!("{field}: {message}")
                }
            })
    }

    /// Turns a store error into a field error when it is the user's to fix. `rename` maps the
    /// domain's field names (`filters[0]`, `expires_at`) to this form's inputs.
    pub fn from_store(err: StoreError, rename: impl Fn(&str) -> &str) -> Result<Self, WebError> {
        let mut errors = FieldErrors::default();
        match err {
            StoreError::Validation(err) => {
                let field = err.field.split('[').next().unwrap_or_default();
                errors.add(rename(field), capitalize(&err.message));
            }
            StoreError::Conflict(message) => errors.add(rename("name"), capitalize(&message)),
            other => return Err(other.into()),
        }
        Ok(errors)
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Parses an id from a form field; a bad id is the field's error.
pub fn parse_id(errors: &mut FieldErrors, field: &str, value: &str, what: &str) -> Option<Uuid> {
    if value.trim().is_empty() {
        errors.add(field, format!("Choose a {what}"));
        return None;
    }
    match Uuid::parse_str(value.trim()) {
        Ok(id) => Some(id),
        Err(_) => {
            errors.add(field, format!("Choose a {what} from the list"));
            None
        }
    }
}

/// A token expiry chosen as a date: the token expires at 00:00 UTC on that day.
pub fn parse_expiry(errors: &mut FieldErrors, field: &str, value: &str) -> Option<DateTime<Utc>> {
    match NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d") {
        Ok(date) => date.and_hms_opt(0, 0, 0).map(|naive| naive.and_utc()),
        Err(_) => {
            errors.add(field, "Enter a date (YYYY-MM-DD)");
            None
        }
    }
}

/// Today + 365 days, the default expiry of a new token, as the date input wants it.
pub fn default_expiry_date() -> String {
    (Utc::now().date_naive() + chrono::Duration::days(365))
        .format("%Y-%m-%d")
        .to_string()
}

pub fn parse_path_id(value: &str, what: &'static str) -> Result<Uuid, WebError> {
    Uuid::parse_str(value).map_err(|_| WebError::NotFound(what))
}

/// The "add token" form of a service account or a site.
pub struct TokenForm {
    pub name: String,
    pub expires: String,
    /// Service-account tokens only.
    pub guardrails: Option<GuardrailsForm>,
    pub errors: FieldErrors,
}

/// A service-account token's guardrails as typed in a form.
#[derive(Debug, Clone, Default)]
pub struct GuardrailsForm {
    /// Empty: no limit.
    pub max_clients: String,
    /// Networks separated by commas, spaces or new lines.
    pub allowed_source_cidrs: String,
    pub require_approval: bool,
    pub ephemeral: bool,
}

impl GuardrailsForm {
    pub fn of(guardrails: &postern_domain::TokenGuardrails) -> Self {
        Self {
            max_clients: guardrails
                .max_clients
                .map(|n| n.to_string())
                .unwrap_or_default(),
            allowed_source_cidrs: guardrails
                .allowed_source_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            require_approval: guardrails.require_approval,
            ephemeral: guardrails.ephemeral,
        }
    }

    pub fn read(fields: &Fields) -> Self {
        Self {
            max_clients: fields.get("max_clients").trim().to_string(),
            allowed_source_cidrs: fields.get("allowed_source_cidrs").to_string(),
            require_approval: fields.checked("require_approval"),
            ephemeral: fields.checked("ephemeral"),
        }
    }

    /// The guardrails, or the errors of the fields that are wrong.
    pub fn check(&self, errors: &mut FieldErrors) -> postern_domain::TokenGuardrails {
        let max_clients = match self.max_clients.as_str() {
            "" => None,
            text => match text.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.add(
                        "max_clients",
                        "Enter a whole number, or leave it empty for no limit",
                    );
                    None
                }
            },
        };
        let networks = split_list(&self.allowed_source_cidrs)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        let allowed_source_cidrs =
            match postern_domain::validate::source_networks("allowed_source_cidrs", &networks) {
                Ok(networks) => networks,
                Err(err) => {
                    errors.add("allowed_source_cidrs", capitalize(&err.message));
                    Vec::new()
                }
            };
        let guardrails = postern_domain::TokenGuardrails {
            max_clients,
            allowed_source_cidrs,
            require_approval: self.require_approval,
            ephemeral: self.ephemeral,
        };
        match postern_domain::validate::guardrails(guardrails.clone()) {
            Ok(checked) => checked,
            Err(err) => {
                errors.add(&err.field, capitalize(&err.message));
                guardrails
            }
        }
    }

    /// The fields, for a form that holds them.
    pub fn fields(&self, errors: &FieldErrors) -> maud::Markup {
        maud::html! {
            div data-testid="guardrails" {
                h2.section-title { "Guardrails for a fleet" }
                p.hint { "For one token shared by many machines. All optional; you can change them later." }
                (crate::ui::input_field("max_clients", "Most devices connected at once", &self.max_clients, errors, "number", false, None,
                    Some("The next device is refused (its client exits with code 5). Empty: no limit.")))
                (crate::ui::textarea_field("allowed_source_cidrs", "Allowed source networks", &self.allowed_source_cidrs, errors,
                    "Sessions only from these IP addresses or CIDR ranges, as the portal sees the device; others are refused (code 4). Empty: from anywhere.",
                    "10.0.0.0/8, 203.0.113.7"))
                label.check {
                    input type="checkbox" name="require_approval" value="on" checked[self.require_approval] data-testid="require-approval";
                    span { "Require approval: a new device is granted nothing until an administrator approves it" }
                }
                label.check {
                    input type="checkbox" name="ephemeral" value="on" checked[self.ephemeral] data-testid="ephemeral";
                    span { "Ephemeral devices: removed when they stop, or a while after they vanish (CI jobs, short-lived containers)" }
                }
            }
        }
    }
}

/// Items of a list typed into one field, separated by commas, spaces or new lines.
pub fn split_list(text: &str) -> Vec<&str> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

impl TokenForm {
    /// An empty form whose expiry defaults to a year from today.
    pub fn blank() -> Self {
        Self {
            name: String::new(),
            expires: default_expiry_date(),
            guardrails: None,
            errors: FieldErrors::default(),
        }
    }

    /// A service-account token's form: with its guardrails.
    pub fn blank_with_guardrails() -> Self {
        Self {
            guardrails: Some(GuardrailsForm::default()),
            ..Self::blank()
        }
    }

    /// Reads a posted form and checks it; the request is `Some` when the form holds no error.
    pub async fn read(
        state: &crate::WebState,
        account_id: Uuid,
        fields: &Fields,
        with_guardrails: bool,
    ) -> Result<(Self, Option<postern_store::NewTokenRequest>), WebError> {
        let mut form = Self {
            name: fields.get("name").to_string(),
            expires: fields.get("expires_at").to_string(),
            guardrails: with_guardrails.then(|| GuardrailsForm::read(fields)),
            errors: FieldErrors::default(),
        };
        let expires_at = parse_expiry(&mut form.errors, "expires_at", &form.expires);
        let guardrails = match &form.guardrails {
            Some(guardrails) => guardrails.check(&mut form.errors),
            None => postern_domain::TokenGuardrails::default(),
        };
        precheck_token(
            state,
            account_id,
            &mut form.errors,
            Some(("name", &form.name)),
            expires_at,
        )
        .await?;
        let request = form
            .errors
            .is_empty()
            .then(|| postern_store::NewTokenRequest {
                name: Some(form.name.clone()),
                expires_at,
                guardrails,
                rotated_from: None,
                workload_identity_id: None,
            });
        Ok((form, request))
    }
}

/// Runs the domain's checks on a token name and expiry up front, so that the form shows every
/// error at once rather than the first one the store meets.
pub async fn precheck_token(
    state: &crate::WebState,
    account_id: Uuid,
    errors: &mut FieldErrors,
    name: Option<(&str, &str)>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), WebError> {
    if let Some((field, value)) = name {
        if let Err(err) = postern_domain::validate::name(field, value) {
            errors.add(field, capitalize(&err.message));
        }
    }
    if let Some(expires_at) = expires_at {
        let settings = state.store().get_account(account_id).await?.settings;
        if let Err(err) =
            postern_domain::rules::token_expiry(Utc::now(), Some(expires_at), &settings)
        {
            errors.add("expires_at", capitalize(&err.message));
        }
    }
    Ok(())
}
