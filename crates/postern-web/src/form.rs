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
    pub errors: FieldErrors,
}

impl TokenForm {
    /// An empty form whose expiry defaults to a year from today.
    pub fn blank() -> Self {
        Self {
            name: String::new(),
            expires: default_expiry_date(),
            errors: FieldErrors::default(),
        }
    }

    /// Reads a posted form and checks it; the request is `Some` when the form holds no error.
    pub async fn read(
        state: &crate::WebState,
        account_id: Uuid,
        fields: &Fields,
    ) -> Result<(Self, Option<postern_store::NewTokenRequest>), WebError> {
        let mut form = Self {
            name: fields.get("name").to_string(),
            expires: fields.get("expires_at").to_string(),
            errors: FieldErrors::default(),
        };
        let expires_at = parse_expiry(&mut form.errors, "expires_at", &form.expires);
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
