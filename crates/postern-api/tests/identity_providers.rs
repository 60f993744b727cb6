//! Identity providers over a real portal: the client secret is write-only, people signing in
//! are created, linked and kept in line with their groups, and service accounts are never
//! touched — not by a sign-in, not by deleting a provider. (The sign-in flow itself runs in
//! the browser tests against a real OpenID provider.)

mod common;

use common::Portal;
use postern_domain::identity::{IdentityProvider, Person};
use postern_domain::ActorType;
use postern_store::StoreError;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    the_client_secret_is_write_only_and_fields_are_checked,
    people_are_provisioned_linked_and_follow_their_groups,
    service_accounts_are_never_signed_in_or_touched,
    signing_out_at_the_provider_is_set_per_provider_and_keeps_the_id_token_sealed,
);

async fn provider(portal: &Portal) -> (Value, IdentityProvider) {
    let created = portal
        .post(
            "/v1/identity-providers",
            json!({
                "name": "Acme SSO", "issuer": "https://sso.acme.example", "client_id": "postern",
                "client_secret": "very-secret-value", "groups_claim": "groups",
                "admin_groups": ["postern-admins"],
            }),
        )
        .await["data"]
        .clone();
    let id = created["id"].as_str().unwrap().parse().unwrap();
    let stored = portal
        .store
        .get_identity_provider(portal.account_id, id)
        .await
        .unwrap();
    (created, stored)
}

fn person(subject: &str, email: &str, groups: &[&str]) -> Person {
    Person {
        subject: subject.into(),
        email: email.into(),
        name: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

async fn the_client_secret_is_write_only_and_fields_are_checked(portal: &Portal) {
    let (created, stored) = provider(portal).await;
    assert_eq!(created["has_client_secret"], true);
    assert_eq!(created["session_lifetime_seconds"], 43200);
    let listed = portal.get("/v1/identity-providers").await;
    let audit = portal
        .get("/v1/audit-events?action=identity_provider.create")
        .await;
    for text in [created.to_string(), listed.to_string(), audit.to_string()] {
        assert!(!text.contains("very-secret-value"), "{text}");
    }
    let secret = portal
        .store
        .identity_provider_secret(portal.account_id, stored.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.expose(), "very-secret-value");
    for (body, field) in [
        (
            json!({"name": "x", "issuer": "http://sso.example", "client_id": "c"}),
            "issuer",
        ),
        (
            json!({"name": "x", "issuer": "https://sso.example", "client_id": " "}),
            "client_id",
        ),
        (
            json!({"name": "x", "issuer": "https://sso.example", "client_id": "c", "admin_groups": ["a"]}),
            "admin_groups",
        ),
        (
            json!({"name": "x", "issuer": "https://sso.example", "client_id": "c", "session_lifetime": "60d"}),
            "session_lifetime",
        ),
    ] {
        let (status, problem) = portal
            .call(Method::POST, "/v1/identity-providers", Some(body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
}

async fn people_are_provisioned_linked_and_follow_their_groups(portal: &Portal) {
    let (_, provider) = provider(portal).await;
    let store = &portal.store;
    // A new person: a user, in Everyone.
    let ada = store
        .sign_in_person(
            &provider,
            &person("00u1", "ada@example.com", &["eng"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ada.actor_type, ActorType::User);
    let groups = portal.get("/v1/groups").await;
    let everyone = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "everyone")
        .unwrap()["id"]
        .clone();
    let members = portal
        .get(&format!(
            "/v1/groups/{}/memberships",
            everyone.as_str().unwrap()
        ))
        .await;
    assert!(
        members.to_string().contains(&ada.id.to_string()),
        "{members}"
    );
    // The same subject again (even with another email): the same person, made an admin by
    // their new group.
    let again = store
        .sign_in_person(
            &provider,
            &person("00u1", "ada.lovelace@example.com", &["postern-admins"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again.id, ada.id);
    assert_eq!(again.actor_type, ActorType::Admin);
    // An existing admin with a password is linked by email, not duplicated.
    let existing = portal
        .post(
            "/v1/actors",
            json!({"type": "admin", "name": "Grace", "email": "grace@example.com"}),
        )
        .await["data"]["id"]
        .clone();
    let grace = store
        .sign_in_person(
            &provider,
            &person("00u2", "grace@example.com", &["postern-admins"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(grace.id.to_string(), existing.as_str().unwrap());
    // A local admin who also has a password keeps their role whatever the provider's groups
    // say: a provider cannot lock the account out.
    let (local, _) = store
        .create_actor(
            portal.account_id,
            postern_store::NewActor {
                actor_type: ActorType::Admin,
                name: "Local".into(),
                email: Some("local@example.com".into()),
                password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
                group_ids: vec![],
                token: None,
            },
            &postern_domain::Acting::local_cli(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let signed_in = store
            .sign_in_person(
                &provider,
                &person("00u3", "local@example.com", &["eng"]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(signed_in.id, local.id);
        assert_eq!(signed_in.actor_type, ActorType::Admin, "never demoted");
    }
    // A disabled person is refused.
    portal
        .call(
            Method::PATCH,
            &format!("/v1/actors/{}", grace.id),
            Some(json!({"disabled": true})),
        )
        .await;
    let refused = store
        .sign_in_person(
            &provider,
            &person("00u2", "grace@example.com", &["postern-admins"]),
            None,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
}

async fn service_accounts_are_never_signed_in_or_touched(portal: &Portal) {
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "ci", "token": {"name": "t"}}),
        )
        .await;
    let sa_id = sa["data"]["id"].as_str().unwrap().to_string();
    let before_actor = portal.get(&format!("/v1/actors/{sa_id}")).await;
    let before = portal.get(&format!("/v1/actors/{sa_id}/tokens")).await;
    let (created, provider) = provider(portal).await;
    // A person named like the service account, even an admin by group, is a person.
    let person = portal
        .store
        .sign_in_person(
            &provider,
            &person("ci", "ci@example.com", &["postern-admins"]),
            None,
        )
        .await
        .unwrap();
    assert_ne!(person.id.to_string(), sa_id);
    assert_eq!(person.actor_type, ActorType::Admin);
    // Changing the provider (its session lifetime, groups, secret): the same.
    let (status, changed) = portal
        .call(
            Method::PATCH,
            &format!("/v1/identity-providers/{}", created["id"].as_str().unwrap()),
            Some(json!({"session_lifetime": "1h", "admin_groups": [], "client_secret": "rotated-secret", "name": "Acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["data"]["session_lifetime_seconds"], 3600);
    assert_eq!(changed["data"]["issuer"], "https://sso.acme.example");
    assert!(!changed.to_string().contains("rotated-secret"));
    let secret = portal
        .store
        .identity_provider_secret(portal.account_id, provider.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.expose(), "rotated-secret");
    assert_eq!(
        portal.get(&format!("/v1/actors/{sa_id}")).await,
        before_actor
    );
    assert_eq!(
        portal.get(&format!("/v1/actors/{sa_id}/tokens")).await["data"],
        before["data"]
    );
    // Deleting the provider: the service account, its token and its sessions stay.
    let (status, _) = portal
        .call(
            Method::DELETE,
            &format!("/v1/identity-providers/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        portal.get(&format!("/v1/actors/{sa_id}")).await,
        before_actor
    );
    let after = portal.get(&format!("/v1/actors/{sa_id}/tokens")).await;
    assert_eq!(before["data"], after["data"]);
    let secret = sa["token"]["secret"].as_str().unwrap();
    let principal = portal
        .store
        .authenticate(
            secret,
            postern_token::TokenKind::Client,
            postern_store::TokenUse::default(),
        )
        .await;
    assert!(principal.is_ok(), "the service account's token still works");
    // The person stays too; only signing in through the provider is gone.
    let (status, _) = portal
        .call(Method::GET, &format!("/v1/actors/{}", person.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn signing_out_at_the_provider_is_set_per_provider_and_keeps_the_id_token_sealed(
    portal: &Portal,
) {
    let (created, stored) = provider(portal).await;
    assert_eq!(created["sign_out_at_provider"], false, "off by default");
    let path = format!("/v1/identity-providers/{}", stored.id);
    let (status, on) = portal
        .call(
            Method::PATCH,
            &path,
            Some(json!({"sign_out_at_provider": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["data"]["sign_out_at_provider"], true);
    let (_, renamed) = portal
        .call(Method::PATCH, &path, Some(json!({"name": "Acme"})))
        .await;
    assert_eq!(renamed["data"]["sign_out_at_provider"], true, "kept");
    let (status, refused) = portal
        .call(
            Method::PATCH,
            &path,
            Some(json!({"sign_out_at_provider": "yes"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");

    // A web session opened through the provider keeps its ID token (sealed) and hands it back,
    // with the provider, when it ends — once.
    let person = portal
        .store
        .sign_in_person(&stored, &person("00u9", "kim@acme.example", &[]), None)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let session = postern_store::WebSession {
        id_hash: "ab".repeat(32),
        account_id: portal.account_id,
        actor_id: person.id,
        csrf_token: "csrf".into(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        source_ip: None,
        user_agent: None,
        identity_provider_id: Some(stored.id),
    };
    let id_token = postern_token::SecretString::new("eyJhbGciOi.the-id-token.sig".into());
    portal
        .store
        .create_web_session(&session, Some(&id_token))
        .await
        .unwrap();
    let acting = postern_domain::Acting::local_cli();
    let ended = portal
        .store
        .delete_web_session(&session.id_hash, &acting)
        .await
        .unwrap()
        .expect("a session opened through a provider");
    assert_eq!(ended.provider_id, stored.id);
    assert_eq!(
        ended.id_token.as_ref().map(|token| token.expose()),
        Some("eyJhbGciOi.the-id-token.sig")
    );
    assert!(portal
        .store
        .delete_web_session(&session.id_hash, &acting)
        .await
        .unwrap()
        .is_none());
}
