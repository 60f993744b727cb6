//! SCIM 2.0 (RFC 7643/7644) for people: `/scim/v2/Users` and `/scim/v2/Groups` with an
//! identity provider's SCIM bearer token, so a directory (Okta, Entra ID, …) provisions,
//! changes, deactivates and deletes the people it brings and the groups they are in. It sees
//! and changes only those — never local admins, other providers' people, groups made in the
//! portal or service accounts. Filters: `userName eq "…"`, `externalId eq "…"`,
//! `displayName eq "…"`. Discovery:
//! `ServiceProviderConfig`, `ResourceTypes`, `Schemas` (`discovery`).

mod discovery;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::identity::IdentityProvider;
use postern_domain::Acting;
use postern_store::{
    DirectoryChange, DirectoryGroup, DirectoryGroupChange, DirectoryPerson, DirectoryUser,
    PersonFilter, StoreError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client_addr::source_ip;
use crate::AppState;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_JSON: &str = "application/scim+json";
/// The most resources one list answers.
const MAX_PAGE: i64 = 200;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/scim/v2/ServiceProviderConfig",
            get(service_provider_config),
        )
        .route(
            "/scim/v2/ResourceTypes",
            get(discovery::list_resource_types),
        )
        .route(
            "/scim/v2/ResourceTypes/{id}",
            get(discovery::get_resource_type),
        )
        .route("/scim/v2/Schemas", get(discovery::list_schemas))
        .route("/scim/v2/Schemas/{id}", get(discovery::get_schema))
        .route("/scim/v2/Users", get(list_users).post(create_user))
        .route(
            "/scim/v2/Users/{id}",
            get(get_user)
                .put(replace_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route("/scim/v2/Groups", get(list_groups).post(create_group))
        .route(
            "/scim/v2/Groups/{id}",
            get(get_group)
                .put(replace_group)
                .patch(patch_group)
                .delete(delete_group),
        )
}

/// A SCIM error (`application/scim+json`).
struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }
}

impl From<StoreError> for ScimError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => {
                Self::new(StatusCode::NOT_FOUND, None, format!("no such {what}"))
            }
            StoreError::Conflict(detail) => {
                Self::new(StatusCode::CONFLICT, Some("uniqueness"), detail)
            }
            StoreError::Validation(invalid) => Self::new(
                StatusCode::BAD_REQUEST,
                Some("invalidValue"),
                invalid.to_string(),
            ),
            other => {
                tracing::error!(error = %other, "SCIM request failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error")
            }
        }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = json!(scim_type);
        }
        scim_json(self.status, body)
    }
}

fn scim_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    response
}

/// The provider whose SCIM token the request carries; failures count like failed sign-ins.
async fn directory(
    state: &AppState,
    parts: &Parts,
) -> Result<(IdentityProvider, Acting), ScimError> {
    let ip = source_ip(parts);
    if let Some(retry_after) = state.auth_limiter.check(ip) {
        return Err(ScimError::new(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            format!("too many failed authentications: retry in {retry_after} s"),
        ));
    }
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(provider) = state.store.provider_of_scim_token(token).await? else {
        state.auth_limiter.record_failure(ip);
        return Err(ScimError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "the bearer token is not an identity provider's SCIM token",
        ));
    };
    let acting = Acting {
        actor_id: None,
        token_id: None,
        source_ip: Some(format!(
            "scim:{}{}",
            provider.id,
            ip.map(|ip| format!("@{ip}")).unwrap_or_default()
        )),
    };
    Ok((provider, acting))
}

fn user_resource(user: &DirectoryUser) -> Value {
    let actor = &user.actor;
    let email = actor.email.clone().unwrap_or_default();
    let mut resource = json!({
        "schemas": [USER_SCHEMA],
        "id": actor.id,
        "userName": email,
        "displayName": actor.name,
        "name": {"formatted": actor.name},
        "emails": [{"value": email, "primary": true, "type": "work"}],
        "active": !actor.is_disabled(),
        "meta": {
            "resourceType": "User",
            "created": actor.created_at,
            "lastModified": actor.updated_at,
            "location": format!("/scim/v2/Users/{}", actor.id),
        },
    });
    if let Some(external_id) = &user.external_id {
        resource["externalId"] = json!(external_id);
    }
    resource
}

async fn service_provider_config(State(state): State<AppState>, parts: Parts) -> Response {
    if let Err(err) = directory(&state, &parts).await {
        return err.into_response();
    }
    scim_json(
        StatusCode::OK,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_PAGE},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken", "name": "Bearer token",
                "description": "The identity provider's SCIM token (postern identity-providers scim-token)",
            }],
        }),
    )
}

#[derive(Deserialize)]
struct ListQuery {
    filter: Option<String>,
    #[serde(rename = "startIndex")]
    start_index: Option<i64>,
    count: Option<i64>,
}

/// `attributes` and `excludedAttributes` (RFC 7644 §3.4.2.5) of a request.
#[derive(Deserialize)]
struct Projection {
    attributes: Option<String>,
    #[serde(rename = "excludedAttributes")]
    excluded_attributes: Option<String>,
}

impl Projection {
    fn wants_members(&self) -> bool {
        wants_members(
            self.attributes.as_deref(),
            self.excluded_attributes.as_deref(),
        )
    }
}

/// Whether an answer carries groups' `members`: the one attribute worth leaving out, as Entra ID
/// asks (`excludedAttributes=members`) when it only looks a group up. Names may be qualified by
/// the schema URN (`urn:…:Group:members`) or a sub-attribute (`members.value`).
fn wants_members(attributes: Option<&str>, excluded: Option<&str>) -> bool {
    let names_members = |list: &str| {
        list.split(',').any(|name| {
            let name = name.trim().rsplit(':').next().unwrap_or_default();
            let name = name.split('.').next().unwrap_or_default();
            name.eq_ignore_ascii_case("members")
        })
    };
    if excluded.is_some_and(names_members) {
        return false;
    }
    attributes.is_none_or(names_members)
}

/// The people a list asks for: `userName eq "…"` or `externalId eq "…"` (the attribute name
/// and operator in any case).
fn person_filter(filter: &str) -> Result<PersonFilter, ScimError> {
    if let Ok(id) = eq_filter(filter, "externalId") {
        return Ok(PersonFilter::ExternalId(id));
    }
    eq_filter(filter, "userName")
        .map(PersonFilter::UserName)
        .map_err(|_| {
            ScimError::new(
                StatusCode::BAD_REQUEST,
                Some("invalidFilter"),
                format!(
                    "only userName eq \"…\" and externalId eq \"…\" are supported, not: {filter}"
                ),
            )
        })
}

/// `ATTRIBUTE eq "value"`, the one filter directories send to find a resource.
fn eq_filter(filter: &str, wanted: &str) -> Result<String, ScimError> {
    let invalid = || {
        ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidFilter"),
            format!("only {wanted} eq \"…\" is supported, not: {filter}"),
        )
    };
    let mut parts = filter.trim().splitn(3, ' ');
    let (Some(attribute), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if !attribute.eq_ignore_ascii_case(wanted) || !op.eq_ignore_ascii_case("eq") {
        return Err(invalid());
    }
    let value = value
        .trim()
        .strip_prefix('"')
        .and_then(|value| value.strip_suffix('"'))
        .ok_or_else(invalid)?;
    Ok(value.to_string())
}

async fn list_users(
    State(state): State<AppState>,
    parts: Parts,
    Query(query): Query<ListQuery>,
) -> Result<Response, ScimError> {
    let (provider, _) = directory(&state, &parts).await?;
    let filter = query.filter.as_deref().map(person_filter).transpose()?;
    let start = query.start_index.unwrap_or(1).max(1);
    let count = query.count.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE);
    let (total, people) = state
        .store
        .directory_people(&provider, filter.as_ref(), start - 1, count)
        .await?;
    let resources: Vec<Value> = people.iter().map(user_resource).collect();
    Ok(list_response(total, start, resources))
}

fn parse_body(body: &Bytes) -> Result<Value, ScimError> {
    serde_json::from_slice(body).map_err(|err| {
        ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            format!("the body is not JSON: {err}"),
        )
    })
}

/// Reads a boolean as directories send it: `true`, or Entra ID's `"True"`.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The display name a User resource gives: `displayName`, `name.formatted`, or given and
/// family names.
fn display_name(user: &Value) -> Option<String> {
    if let Some(name) = user["displayName"]
        .as_str()
        .filter(|n| !n.trim().is_empty())
    {
        return Some(name.to_string());
    }
    if let Some(name) = user["name"]["formatted"]
        .as_str()
        .filter(|n| !n.trim().is_empty())
    {
        return Some(name.to_string());
    }
    let given = user["name"]["givenName"].as_str().unwrap_or_default();
    let family = user["name"]["familyName"].as_str().unwrap_or_default();
    let joined = format!("{given} {family}");
    (!joined.trim().is_empty()).then(|| joined.trim().to_string())
}

fn user_email(user: &Value) -> Option<String> {
    if let Some(name) = user["userName"].as_str().filter(|name| name.contains('@')) {
        return Some(name.to_string());
    }
    let emails = user["emails"].as_array()?;
    emails
        .iter()
        .find(|email| email["primary"] == true)
        .or_else(|| emails.first())
        .and_then(|email| email["value"].as_str())
        .map(str::to_string)
}

async fn create_user(
    State(state): State<AppState>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    let user = parse_body(&body)?;
    let email = user_email(&user).ok_or_else(|| {
        ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidValue"),
            "userName (an email) or emails[].value is required",
        )
    })?;
    let person = DirectoryPerson {
        email,
        name: display_name(&user),
        active: user.get("active").and_then(boolean).unwrap_or(true),
        external_id: user["externalId"].as_str().map(str::to_string),
    };
    let actor = state
        .store
        .provision_person(&provider, person, &acting)
        .await?;
    Ok(scim_json(StatusCode::CREATED, user_resource(&actor)))
}

/// A resource's id from the path; anything else is a resource that is not there.
fn resource_id(id: &str, what: &str) -> Result<Uuid, ScimError> {
    Uuid::parse_str(id)
        .map_err(|_| ScimError::new(StatusCode::NOT_FOUND, None, format!("no such {what}")))
}

async fn get_user(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let (provider, _) = directory(&state, &parts).await?;
    let actor = state
        .store
        .directory_person(&provider, resource_id(&id, "user")?)
        .await?;
    Ok(scim_json(StatusCode::OK, user_resource(&actor)))
}

async fn replace_user(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    let user = parse_body(&body)?;
    let change = DirectoryChange {
        email: user_email(&user),
        name: display_name(&user),
        active: Some(user.get("active").and_then(boolean).unwrap_or(true)),
        external_id: user["externalId"].as_str().map(str::to_string),
    };
    let actor = state
        .store
        .change_person(&provider, resource_id(&id, "user")?, change, &acting)
        .await?;
    Ok(scim_json(StatusCode::OK, user_resource(&actor)))
}

/// Applies one PATCH operation's value at `path` (or, without a path, each attribute of the
/// value) to the change.
fn patch_value(change: &mut DirectoryChange, path: Option<&str>, value: &Value) {
    match path.map(str::to_ascii_lowercase).as_deref() {
        None => {
            if let Some(object) = value.as_object() {
                for (key, inner) in object {
                    patch_value(change, Some(key), inner);
                }
            }
        }
        Some("active") => change.active = boolean(value),
        Some("externalid") => change.external_id = value.as_str().map(str::to_string),
        Some("username") => change.email = value.as_str().map(str::to_string),
        Some("displayname") | Some("name.formatted") => {
            change.name = value.as_str().map(str::to_string)
        }
        Some("name") => change.name = display_name(&json!({ "name": value })),
        Some(path) if path.starts_with("emails") => {
            let email = match value {
                Value::String(text) => Some(text.clone()),
                Value::Array(items) => items
                    .iter()
                    .find_map(|item| item["value"].as_str().map(str::to_string)),
                _ => None,
            };
            if email.is_some() {
                change.email = email;
            }
        }
        _ => {}
    }
}

async fn patch_user(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    let patch = parse_body(&body)?;
    let operations = patch_operations(&patch)?;
    let mut change = DirectoryChange::default();
    for operation in operations {
        let op = op_name(operation);
        match op.as_str() {
            "replace" | "add" => {
                patch_value(&mut change, operation["path"].as_str(), &operation["value"])
            }
            "remove" => {}
            other => {
                return Err(ScimError::new(
                    StatusCode::BAD_REQUEST,
                    Some("invalidSyntax"),
                    format!("unknown PATCH op '{other}'"),
                ))
            }
        }
    }
    let actor = state
        .store
        .change_person(&provider, resource_id(&id, "user")?, change, &acting)
        .await?;
    Ok(scim_json(StatusCode::OK, user_resource(&actor)))
}

async fn delete_user(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<StatusCode, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    state
        .store
        .delete_person(&provider, resource_id(&id, "user")?, &acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A Group resource; without `members` when they are left out of the answer.
fn group_resource(synced: &DirectoryGroup, with_members: bool) -> Value {
    let group = &synced.group;
    let mut resource = json!({
        "schemas": [GROUP_SCHEMA],
        "id": group.id,
        "displayName": group.name,
        "meta": {
            "resourceType": "Group",
            "created": group.created_at,
            "lastModified": group.updated_at,
            "location": format!("/scim/v2/Groups/{}", group.id),
        },
    });
    if let Some(external_id) = &synced.external_id {
        resource["externalId"] = json!(external_id);
    }
    if with_members {
        let members: Vec<Value> = synced
            .members
            .iter()
            .map(|member| {
                json!({
                    "value": member.actor_id,
                    "display": member.actor_name,
                    "$ref": format!("/scim/v2/Users/{}", member.actor_id),
                })
            })
            .collect();
        resource["members"] = json!(members);
    }
    resource
}

/// The user ids of a `members` value: `[{"value": id}, …]`.
fn member_ids(value: &Value) -> Result<Vec<Uuid>, ScimError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![value],
        Value::Null => Vec::new(),
        _ => {
            return Err(ScimError::new(
                StatusCode::BAD_REQUEST,
                Some("invalidValue"),
                "members is a list of {\"value\": user id}",
            ))
        }
    };
    items
        .into_iter()
        .map(|item| {
            item["value"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| {
                    ScimError::new(
                        StatusCode::BAD_REQUEST,
                        Some("invalidValue"),
                        format!("{item} is not a member reference"),
                    )
                })
        })
        .collect()
}

async fn list_groups(
    State(state): State<AppState>,
    parts: Parts,
    Query(query): Query<ListQuery>,
    Query(projection): Query<Projection>,
) -> Result<Response, ScimError> {
    let (provider, _) = directory(&state, &parts).await?;
    let name = query
        .filter
        .as_deref()
        .map(|filter| eq_filter(filter, "displayName"))
        .transpose()?;
    let start = query.start_index.unwrap_or(1).max(1);
    let count = query.count.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE);
    let (total, groups) = state
        .store
        .directory_groups(&provider, name.as_deref(), start - 1, count)
        .await?;
    let with_members = projection.wants_members();
    let mut resources = Vec::new();
    for mut listed in groups {
        if with_members {
            listed = state.store.with_directory_members(listed).await?;
        }
        resources.push(group_resource(&listed, with_members));
    }
    Ok(list_response(total, start, resources))
}

fn group_name(group: &Value) -> Result<String, ScimError> {
    group["displayName"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            ScimError::new(
                StatusCode::BAD_REQUEST,
                Some("invalidValue"),
                "displayName is required",
            )
        })
}

async fn create_group(
    State(state): State<AppState>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    let group = parse_body(&body)?;
    let name = group_name(&group)?;
    let members = member_ids(&group["members"])?;
    let external_id = group["externalId"].as_str();
    let synced = state
        .store
        .provision_group(&provider, &name, external_id, members, &acting)
        .await?;
    Ok(scim_json(
        StatusCode::CREATED,
        group_resource(&synced, true),
    ))
}

async fn get_group(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    Query(projection): Query<Projection>,
) -> Result<Response, ScimError> {
    let (provider, _) = directory(&state, &parts).await?;
    let synced = state
        .store
        .directory_group(&provider, resource_id(&id, "group")?)
        .await?;
    Ok(scim_json(
        StatusCode::OK,
        group_resource(&synced, projection.wants_members()),
    ))
}

async fn replace_group(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    let group = parse_body(&body)?;
    let change = DirectoryGroupChange {
        name: Some(group_name(&group)?),
        members: Some(member_ids(&group["members"])?),
        external_id: group["externalId"].as_str().map(str::to_string),
        ..DirectoryGroupChange::default()
    };
    let synced = state
        .store
        .change_directory_group(&provider, resource_id(&id, "group")?, change, &acting)
        .await?;
    Ok(scim_json(StatusCode::OK, group_resource(&synced, true)))
}

/// `members[value eq "ID"]`: the member a `remove` names in its path.
fn member_in_path(path: &str) -> Option<Uuid> {
    let inner = path.strip_prefix("members[")?.strip_suffix(']')?;
    eq_filter(inner, "value")
        .ok()
        .and_then(|id| Uuid::parse_str(&id).ok())
}

async fn patch_group(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    let patch = parse_body(&body)?;
    let operations = patch_operations(&patch)?;
    let mut change = DirectoryGroupChange::default();
    for operation in operations {
        let op = op_name(operation);
        let path = operation["path"].as_str().unwrap_or_default();
        let value = &operation["value"];
        match (op.as_str(), path.to_ascii_lowercase().as_str()) {
            ("add", "members") => change.add.extend(member_ids(value)?),
            ("remove", "members") => change.remove.extend(member_ids(value)?),
            ("remove", lower) if lower.starts_with("members[") => {
                let member = member_in_path(path).ok_or_else(|| {
                    ScimError::new(
                        StatusCode::BAD_REQUEST,
                        Some("invalidPath"),
                        format!("cannot read the member in {path}"),
                    )
                })?;
                change.remove.push(member);
            }
            ("replace", "members") => change.members = Some(member_ids(value)?),
            ("replace", "displayname") => change.name = value.as_str().map(str::to_string),
            ("replace" | "add", "externalid") => {
                change.external_id = value.as_str().map(str::to_string)
            }
            ("replace", "") => {
                if let Some(name) = value["displayName"].as_str() {
                    change.name = Some(name.to_string());
                }
                if let Some(external_id) = value["externalId"].as_str() {
                    change.external_id = Some(external_id.to_string());
                }
                if value.get("members").is_some() {
                    change.members = Some(member_ids(&value["members"])?);
                }
            }
            ("add" | "replace" | "remove", _) => {}
            (other, _) => {
                return Err(ScimError::new(
                    StatusCode::BAD_REQUEST,
                    Some("invalidSyntax"),
                    format!("unknown PATCH op '{other}'"),
                ))
            }
        }
    }
    let synced = state
        .store
        .change_directory_group(&provider, resource_id(&id, "group")?, change, &acting)
        .await?;
    Ok(scim_json(StatusCode::OK, group_resource(&synced, true)))
}

async fn delete_group(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<StatusCode, ScimError> {
    let (provider, acting) = directory(&state, &parts).await?;
    state
        .store
        .delete_directory_group(&provider, resource_id(&id, "group")?, &acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A `ListResponse` of one page.
fn list_response(total: i64, start: i64, resources: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

/// A PATCH operation's `op`, in lower case (Entra ID writes `Replace`).
fn op_name(operation: &Value) -> String {
    operation["op"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The operations of a PATCH body (`PatchOp` with `Operations`).
fn patch_operations(patch: &Value) -> Result<&Vec<Value>, ScimError> {
    let schemas_ok = patch["schemas"]
        .as_array()
        .is_some_and(|schemas| schemas.iter().any(|schema| schema == PATCH_SCHEMA));
    patch["Operations"]
        .as_array()
        .filter(|_| schemas_ok)
        .ok_or_else(|| {
            ScimError::new(
                StatusCode::BAD_REQUEST,
                Some("invalidSyntax"),
                format!("a PATCH body is a {PATCH_SCHEMA} with Operations"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_left_out_when_asked() {
        assert!(wants_members(None, None));
        assert!(!wants_members(None, Some("members")));
        assert!(!wants_members(
            None,
            Some("urn:ietf:params:scim:schemas:core:2.0:Group:members")
        ));
        assert!(!wants_members(None, Some("displayName, Members")));
        assert!(wants_members(None, Some("displayName")));
        assert!(!wants_members(Some("displayName"), None));
        assert!(wants_members(Some("displayName,members.value"), None));
    }

    #[test]
    fn only_username_and_external_id_eq_filters_are_understood() {
        assert_eq!(
            person_filter(r#"userName eq "ada@example.com""#).ok(),
            Some(PersonFilter::UserName("ada@example.com".into()))
        );
        assert_eq!(
            person_filter(r#"USERNAME EQ "a b@example.com""#).ok(),
            Some(PersonFilter::UserName("a b@example.com".into()))
        );
        assert_eq!(
            person_filter(r#"externalId eq "ada""#).ok(),
            Some(PersonFilter::ExternalId("ada".into()))
        );
        assert!(person_filter(r#"userName co "ada""#).is_err());
        assert!(person_filter(r#"emails eq "x""#).is_err());
        assert!(person_filter("userName eq ada").is_err());
    }

    #[test]
    fn patches_as_okta_and_entra_send_them() {
        let mut change = DirectoryChange::default();
        patch_value(
            &mut change,
            None,
            &json!({"active": false, "displayName": "Ada L"}),
        );
        assert_eq!(change.active, Some(false));
        assert_eq!(change.name.as_deref(), Some("Ada L"));
        let mut change = DirectoryChange::default();
        patch_value(&mut change, Some("active"), &json!("False"));
        patch_value(
            &mut change,
            Some("emails[type eq \"work\"].value"),
            &json!("new@example.com"),
        );
        patch_value(
            &mut change,
            Some("name"),
            &json!({"givenName": "Ada", "familyName": "Byron"}),
        );
        assert_eq!(change.active, Some(false));
        assert_eq!(change.email.as_deref(), Some("new@example.com"));
        assert_eq!(change.name.as_deref(), Some("Ada Byron"));
    }
}
