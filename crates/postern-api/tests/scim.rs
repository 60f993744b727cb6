//! Directory sync over a real portal: SCIM 2.0 requests shaped as Okta and Entra ID send
//! them provision, find, deactivate, reactivate, rename and delete people — only the people
//! of the token's identity provider, never a local admin or a service account.

mod common;

use common::Portal;
use postern_domain::identity::Person;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    a_directory_provisions_and_deprovisions_its_people,
    a_directory_sees_and_touches_only_its_own_people,
    a_directory_syncs_its_groups_which_stay_read_only_here,
);

async fn provider(portal: &Portal) -> (String, String) {
    let created = portal
        .post(
            "/v1/identity-providers",
            json!({"name": "Okta", "issuer": "https://acme.okta.example", "client_id": "postern"}),
        )
        .await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let token = portal
        .post(
            &format!("/v1/identity-providers/{id}/scim-token"),
            json!({}),
        )
        .await["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    (id, token)
}

async fn scim(
    portal: &Portal,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = portal
        .http
        .request(method, format!("{}/scim/v2{path}", portal.base))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/scim+json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    if status != StatusCode::NO_CONTENT {
        assert_eq!(
            response.headers()["content-type"],
            "application/scim+json",
            "{status}"
        );
    }
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn okta_user(email: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": email,
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"primary": true, "value": email, "type": "work"}],
        "displayName": "Ada Lovelace",
        "active": true,
    })
}

async fn a_directory_provisions_and_deprovisions_its_people(portal: &Portal) {
    let (provider_id, token) = provider(portal).await;
    let (status, error) = scim(portal, "postern_scim_nope", Method::GET, "/Users", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );

    let (status, config) = scim(portal, &token, Method::GET, "/ServiceProviderConfig", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["patch"]["supported"], true);

    // Discovery: the resource types name the schemas, which are published; both need the token.
    let (status, _) = scim(portal, "postern_scim_nope", Method::GET, "/Schemas", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, types) = scim(portal, &token, Method::GET, "/ResourceTypes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(types["totalResults"], 2);
    for resource_type in types["Resources"].as_array().unwrap() {
        let schema = resource_type["schema"].as_str().unwrap();
        let (status, found) = scim(
            portal,
            &token,
            Method::GET,
            &format!("/Schemas/{schema}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{schema}");
        assert_eq!(found["id"], schema);
        let (status, again) = scim(
            portal,
            &token,
            Method::GET,
            &format!("/ResourceTypes/{}", resource_type["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&again, resource_type);
    }
    let (status, schemas) = scim(portal, &token, Method::GET, "/Schemas", None).await;
    assert_eq!(status, StatusCode::OK);
    let user_attributes: Vec<&str> = schemas["Resources"][0]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attribute| attribute["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        user_attributes,
        ["userName", "displayName", "name", "emails", "active"]
    );
    let (status, missing) = scim(portal, &token, Method::GET, "/Schemas/urn:nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["status"], "404");

    // Okta: does the user exist? No: create them.
    let (status, found) = scim(
        portal,
        &token,
        Method::GET,
        "/Users?filter=userName%20eq%20%22ada%40example.com%22&startIndex=1&count=100",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["totalResults"], 0);
    let (status, ada) = scim(
        portal,
        &token,
        Method::POST,
        "/Users",
        Some(okta_user("ada@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ada}");
    let id = ada["id"].as_str().unwrap().to_string();
    assert_eq!(ada["userName"], "ada@example.com");
    assert_eq!(ada["active"], true);
    let actor = portal.get(&format!("/v1/actors/{id}")).await;
    assert_eq!(actor["data"]["type"], "user");
    assert_eq!(actor["data"]["name"], "Ada Lovelace");
    let (status, again) = scim(
        portal,
        &token,
        Method::POST,
        "/Users",
        Some(okta_user("ada@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["scimType"], "uniqueness");
    let (_, found) = scim(
        portal,
        &token,
        Method::GET,
        "/Users?filter=userName%20eq%20%22ada%40example.com%22",
        None,
    )
    .await;
    assert_eq!(found["totalResults"], 1);
    assert_eq!(found["Resources"][0]["id"], id.as_str());
    let (status, _) = scim(
        portal,
        &token,
        Method::GET,
        "/Users?filter=emails%20co%20%22x%22",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Okta deactivates (a PATCH without a path); the person is disabled at once.
    let okta_deactivate = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"active": false}}],
    });
    let (status, patched) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(okta_deactivate),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["active"], false);
    let actor = portal.get(&format!("/v1/actors/{id}")).await;
    assert!(actor["data"]["disabled_at"].is_string(), "{actor}");
    // Entra ID reactivates (a path and a string boolean), then renames with PUT.
    let entra_activate = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "True"}],
    });
    let (_, patched) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(entra_activate),
    )
    .await;
    assert_eq!(patched["active"], true);
    let mut renamed = okta_user("ada@example.com");
    renamed["displayName"] = json!("Ada King");
    let (status, replaced) = scim(
        portal,
        &token,
        Method::PUT,
        &format!("/Users/{id}"),
        Some(renamed),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["displayName"], "Ada King");

    // A new email: changed and audited with the change, in one step; back again.
    let new_email = |email: &str| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "userName", "value": email}],
        })
    };
    let (status, moved) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(new_email("ada.king@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["userName"], "ada.king@example.com");
    let audit = portal.get("/v1/audit-events?action=actor.update").await;
    let changed_email = audit["data"].as_array().unwrap().iter().any(|event| {
        event["object_id"] == id.as_str()
            && event["before"]["email"] == "ada@example.com"
            && event["after"]["email"] == "ada.king@example.com"
    });
    assert!(changed_email, "{audit}");
    let (status, _) = scim(
        portal,
        &token,
        Method::POST,
        "/Users",
        Some(okta_user("grace@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, taken) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(new_email("grace@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{taken}");
    let (status, _) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(new_email("ada@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Entra ID keeps its own id for a person (externalId): returned as given, searchable,
    // changed by PATCH.
    let mut entra = okta_user("alan@example.com");
    entra["externalId"] = json!("alan.t");
    let (status, alan) = scim(portal, &token, Method::POST, "/Users", Some(entra)).await;
    assert_eq!(status, StatusCode::CREATED, "{alan}");
    assert_eq!(alan["externalId"], "alan.t");
    let alan_id = alan["id"].as_str().unwrap().to_string();
    let (_, found) = scim(
        portal,
        &token,
        Method::GET,
        "/Users?filter=externalId%20eq%20%22alan.t%22",
        None,
    )
    .await;
    assert_eq!(found["totalResults"], 1, "{found}");
    assert_eq!(found["Resources"][0]["id"], alan_id.as_str());
    let (status, patched) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Users/{alan_id}"),
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "externalId", "value": "aturing"}],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let (_, fetched) = scim(
        portal,
        &token,
        Method::GET,
        &format!("/Users/{alan_id}"),
        None,
    )
    .await;
    assert_eq!(fetched["externalId"], "aturing");
    let (_, none) = scim(
        portal,
        &token,
        Method::GET,
        "/Users?filter=externalId%20eq%20%22alan.t%22",
        None,
    )
    .await;
    assert_eq!(none["totalResults"], 0);
    let (_, without) = scim(portal, &token, Method::GET, &format!("/Users/{id}"), None).await;
    assert!(without.get("externalId").is_none(), "{without}");

    // Signing in through the provider later finds the provisioned person by email.
    let provider = portal
        .store
        .get_identity_provider(portal.account_id, provider_id.parse().unwrap())
        .await
        .unwrap();
    let signed_in = portal
        .store
        .sign_in_person(
            &provider,
            &Person {
                subject: "00u1".into(),
                email: "ada@example.com".into(),
                name: "Ada".into(),
                groups: vec![],
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(signed_in.id.to_string(), id);

    // Deprovisioned: gone.
    let (status, _) = scim(
        portal,
        &token,
        Method::DELETE,
        &format!("/Users/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = scim(portal, &token, Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = portal
        .call(Method::GET, &format!("/v1/actors/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A new token replaces the old one.
    let (_, newer) = provider_token(portal, &provider_id).await;
    let (status, _) = scim(portal, &token, Method::GET, "/Users", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = scim(portal, &newer, Method::GET, "/Users", None).await;
    assert_eq!(status, StatusCode::OK);
    let audit = portal
        .get("/v1/audit-events?action=identity_provider.scim_token")
        .await;
    assert!(
        !audit.to_string().contains(&newer),
        "the token is never in the audit log"
    );
}

async fn provider_token(portal: &Portal, provider_id: &str) -> (StatusCode, String) {
    let (status, body) = portal
        .call(
            Method::POST,
            &format!("/v1/identity-providers/{provider_id}/scim-token"),
            None,
        )
        .await;
    (
        status,
        body["data"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn a_directory_sees_and_touches_only_its_own_people(portal: &Portal) {
    let (_, token) = provider(portal).await;
    let (_, other_token) = provider(portal).await;
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "ci", "token": {"name": "t"}}),
        )
        .await;
    let sa_id = sa["data"]["id"].as_str().unwrap().to_string();
    let admin = portal
        .post(
            "/v1/actors",
            json!({"type": "admin", "name": "Local", "email": "local@example.com"}),
        )
        .await;
    let admin_id = admin["data"]["id"].as_str().unwrap().to_string();
    let (_, mine) = scim(
        portal,
        &token,
        Method::POST,
        "/Users",
        Some(okta_user("mine@example.com")),
    )
    .await;
    let (_, listed) = scim(portal, &token, Method::GET, "/Users", None).await;
    assert_eq!(listed["totalResults"], 1, "{listed}");
    assert_eq!(listed["Resources"][0]["id"], mine["id"]);
    let (_, theirs) = scim(portal, &other_token, Method::GET, "/Users", None).await;
    assert_eq!(
        theirs["totalResults"], 0,
        "another provider's directory sees none of them"
    );
    // A local admin's email cannot be taken over.
    let (status, _) = scim(
        portal,
        &token,
        Method::POST,
        "/Users",
        Some(okta_user("local@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let deactivate = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}],
    });
    for id in [&sa_id, &admin_id, mine["id"].as_str().unwrap()] {
        let as_other = scim(
            portal,
            &other_token,
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(deactivate.clone()),
        )
        .await;
        assert_eq!(as_other.0, StatusCode::NOT_FOUND, "{id}");
    }
    for id in [&sa_id, &admin_id] {
        for method in [Method::GET, Method::DELETE] {
            let (status, _) = scim(portal, &token, method, &format!("/Users/{id}"), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
    }
    let actor = portal.get(&format!("/v1/actors/{sa_id}")).await;
    assert!(actor["data"]["disabled_at"].is_null());
    let secret = sa["token"]["secret"].as_str().unwrap();
    assert!(portal
        .store
        .authenticate(
            secret,
            postern_token::TokenKind::Client,
            postern_store::TokenUse::default()
        )
        .await
        .is_ok());
}

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

async fn a_directory_syncs_its_groups_which_stay_read_only_here(portal: &Portal) {
    let (_, token) = provider(portal).await;
    let (_, other_token) = provider(portal).await;
    let mut people = Vec::new();
    for email in ["ada@example.com", "bob@example.com", "cy@example.com"] {
        let (_, user) = scim(
            portal,
            &token,
            Method::POST,
            "/Users",
            Some(okta_user(email)),
        )
        .await;
        people.push(user["id"].as_str().unwrap().to_string());
    }
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "ci"}),
        )
        .await;
    let sa_id = sa["data"]["id"].as_str().unwrap().to_string();

    // Okta pushes a group with two members.
    let (status, group) = scim(
        portal,
        &token,
        Method::POST,
        "/Groups",
        Some(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "engineering",
            "externalId": "8f1c-eng",
            "members": [{"value": people[0]}, {"value": people[1]}],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["externalId"], "8f1c-eng");
    let id = group["id"].as_str().unwrap().to_string();
    assert_eq!(group["members"].as_array().unwrap().len(), 2);
    let listed = portal.get(&format!("/v1/groups/{id}")).await;
    assert_eq!(listed["data"]["kind"], "directory");
    let (_, found) = scim(
        portal,
        &token,
        Method::GET,
        "/Groups?filter=displayName%20eq%20%22engineering%22",
        None,
    )
    .await;
    assert_eq!(found["totalResults"], 1);
    assert_eq!(
        found["Resources"][0]["members"].as_array().unwrap().len(),
        2
    );
    // Entra ID looks groups up without their members.
    let (_, bare) = scim(
        portal,
        &token,
        Method::GET,
        "/Groups?filter=displayName%20eq%20%22engineering%22&excludedAttributes=members",
        None,
    )
    .await;
    assert_eq!(bare["Resources"][0]["displayName"], "engineering");
    assert_eq!(bare["Resources"][0]["externalId"], "8f1c-eng");
    assert!(bare["Resources"][0].get("members").is_none(), "{bare}");
    let (_, bare) = scim(
        portal,
        &token,
        Method::GET,
        &format!("/Groups/{id}?excludedAttributes=members"),
        None,
    )
    .await;
    assert!(
        bare.get("members").is_none() && bare["id"] == id.as_str(),
        "{bare}"
    );
    let (status, moved) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Groups/{id}"),
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "externalId", "value": "8f1c-eng-2"}],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["externalId"], "8f1c-eng-2");
    assert_eq!(
        moved["members"].as_array().unwrap().len(),
        2,
        "members kept"
    );
    let (_, none) = scim(portal, &other_token, Method::GET, "/Groups", None).await;
    assert_eq!(none["totalResults"], 0, "another directory sees none of it");

    // Members added and removed as Okta and Entra ID do, then renamed.
    let (status, changed) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Groups/{id}"),
        Some(patch(json!([
            {"op": "add", "path": "members", "value": [{"value": people[2]}]},
            {"op": "remove", "path": format!("members[value eq \"{}\"]", people[0])},
        ]))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let mut members: Vec<String> = changed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    members.sort();
    let mut expected = vec![people[1].clone(), people[2].clone()];
    expected.sort();
    assert_eq!(members, expected);
    let (_, changed) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Groups/{id}"),
        Some(patch(json!([
            {"op": "Remove", "path": "members", "value": [{"value": people[1]}]},
            {"op": "Replace", "path": "displayName", "value": "platform"},
        ]))),
    )
    .await;
    assert_eq!(changed["displayName"], "platform");
    assert_eq!(changed["members"].as_array().unwrap().len(), 1);

    // A service account is never a member of a synced group, through SCIM or the API; the
    // group is not renamed, deleted or changed by hand either.
    let (status, refused) = scim(
        portal,
        &token,
        Method::PATCH,
        &format!("/Groups/{id}"),
        Some(patch(
            json!([{"op": "add", "path": "members", "value": [{"value": sa_id}]}]),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, problem) = portal
        .call(
            Method::PATCH,
            &format!("/v1/groups/{id}/memberships"),
            Some(json!({"add": [sa_id]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("synced from a directory"));
    let (status, _) = portal
        .call(
            Method::PATCH,
            &format!("/v1/groups/{id}"),
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = portal
        .call(Method::DELETE, &format!("/v1/groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Nor does a directory reach a group made here.
    let manual = portal.post("/v1/groups", json!({"name": "ops"})).await;
    let manual_id = manual["data"]["id"].as_str().unwrap();
    let (status, _) = scim(
        portal,
        &token,
        Method::DELETE,
        &format!("/Groups/{manual_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleted by the directory.
    let (status, _) = scim(
        portal,
        &token,
        Method::DELETE,
        &format!("/Groups/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = portal
        .call(Method::GET, &format!("/v1/groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
