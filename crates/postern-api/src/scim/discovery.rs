//! SCIM discovery (RFC 7644 §4, RFC 7643 §6–7): `/ResourceTypes` and `/Schemas` describe
//! exactly the attributes the portal reads and returns, so a client that configures itself from
//! them (as Entra ID's validator and scim2-client's `discover()` do) sends what is understood.

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{directory, list_response, scim_json, ScimError, GROUP_SCHEMA, USER_SCHEMA};
use crate::AppState;

const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";

/// One attribute of a schema (RFC 7643 §7), with the defaults this portal's attributes share.
fn attribute(name: &str, kind: &str, description: &str) -> Value {
    json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": description,
        "required": false,
        "caseExact": false,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
    })
}

fn with(mut attribute: Value, changes: Value) -> Value {
    if let (Some(target), Some(changes)) = (attribute.as_object_mut(), changes.as_object()) {
        for (key, value) in changes {
            target.insert(key.clone(), value.clone());
        }
    }
    attribute
}

fn user_schema() -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A person the directory brings; the email is the unique user name",
        "attributes": [
            with(
                attribute("userName", "string", "The person's email address, unique in the account"),
                json!({"required": true, "uniqueness": "server"}),
            ),
            attribute("displayName", "string", "The name shown in the portal"),
            with(
                attribute("name", "complex", "The person's name; formatted, else given and family names, becomes the display name when displayName is absent"),
                json!({"subAttributes": [
                    attribute("formatted", "string", "The full name"),
                    attribute("givenName", "string", "The given name"),
                    attribute("familyName", "string", "The family name"),
                ]}),
            ),
            with(
                attribute("emails", "complex", "Email addresses; the primary one (or the first) is the email when userName is not one"),
                json!({"multiValued": true, "subAttributes": [
                    attribute("value", "string", "The address"),
                    attribute("type", "string", "work, home or other"),
                    attribute("primary", "boolean", "Whether this is the primary address"),
                ]}),
            ),
            attribute("active", "boolean", "false disables the person and ends their sessions at once"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{USER_SCHEMA}")},
    })
}

fn group_schema() -> Value {
    let reference = with(
        attribute("$ref", "reference", "The member's URI"),
        json!({"referenceTypes": ["User"], "mutability": "immutable"}),
    );
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A group synced from the directory, read-only in the portal; its members are the directory's people",
        "attributes": [
            with(
                attribute("displayName", "string", "The group's name, unique in the account"),
                json!({"required": true, "uniqueness": "server"}),
            ),
            with(
                attribute("members", "complex", "The people in the group"),
                json!({"multiValued": true, "subAttributes": [
                    with(
                        attribute("value", "string", "The member's user id"),
                        json!({"mutability": "immutable"}),
                    ),
                    with(
                        attribute("display", "string", "The member's display name"),
                        json!({"mutability": "readOnly"}),
                    ),
                    reference,
                ]}),
            ),
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{GROUP_SCHEMA}")},
    })
}

fn schemas() -> [Value; 2] {
    [user_schema(), group_schema()]
}

fn resource_type(name: &str, endpoint: &str, schema: &str, description: &str) -> Value {
    json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": name,
        "name": name,
        "endpoint": endpoint,
        "description": description,
        "schema": schema,
        "schemaExtensions": [],
        "meta": {"resourceType": "ResourceType", "location": format!("/scim/v2/ResourceTypes/{name}")},
    })
}

fn resource_types() -> [Value; 2] {
    [
        resource_type("User", "/Users", USER_SCHEMA, "People"),
        resource_type("Group", "/Groups", GROUP_SCHEMA, "Groups of people"),
    ]
}

fn not_found(what: &str, id: &str) -> ScimError {
    ScimError::new(StatusCode::NOT_FOUND, None, format!("no {what} {id}"))
}

pub(super) async fn list_schemas(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Response, ScimError> {
    directory(&state, &parts).await?;
    Ok(list_response(2, 1, schemas().into()))
}

pub(super) async fn get_schema(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    directory(&state, &parts).await?;
    schemas()
        .into_iter()
        .find(|schema| schema["id"] == id.as_str())
        .map(|schema| scim_json(StatusCode::OK, schema))
        .ok_or_else(|| not_found("schema", &id))
}

pub(super) async fn list_resource_types(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Response, ScimError> {
    directory(&state, &parts).await?;
    Ok(list_response(2, 1, resource_types().into()))
}

pub(super) async fn get_resource_type(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    directory(&state, &parts).await?;
    resource_types()
        .into_iter()
        .find(|resource_type| resource_type["id"] == id.as_str())
        .map(|resource_type| scim_json(StatusCode::OK, resource_type))
        .ok_or_else(|| not_found("resource type", &id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every resource type names a schema that is published, and every attribute carries the
    /// characteristics RFC 7643 §7 lists.
    #[test]
    fn the_published_schemas_are_complete_and_coherent() {
        let schemas = schemas();
        for resource_type in resource_types() {
            assert!(
                schemas.iter().any(|s| s["id"] == resource_type["schema"]),
                "{resource_type}"
            );
        }
        fn check(attribute: &Value) {
            for key in [
                "name",
                "type",
                "multiValued",
                "required",
                "caseExact",
                "mutability",
                "returned",
                "uniqueness",
            ] {
                assert!(attribute.get(key).is_some(), "{key} missing in {attribute}");
            }
            for sub in attribute["subAttributes"].as_array().into_iter().flatten() {
                check(sub);
            }
        }
        for schema in &schemas {
            for attribute in schema["attributes"].as_array().unwrap() {
                check(attribute);
            }
        }
    }
}
