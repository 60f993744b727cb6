//! The web portal on two portal nodes sharing one PostgreSQL database, with no sticky
//! sessions: a secret created through node A is shown once by node B (and then by neither),
//! sealed while it waits; failed sign-ins on node A count on node B.

use std::net::SocketAddr;

use argon2::password_hash::{PasswordHasher, SaltString};
use postern_domain::{Acting, ActorType};
use postern_store::{NewActor, Store};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use sqlx::Connection;

const PASSWORD: &str = "correct horse battery staple";

async fn admin_url() -> Option<String> {
    let url = std::env::var("POSTERN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    match sqlx::PgConnection::connect(&url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            Some(url)
        }
        Err(err) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL at {url} is unreachable under CI=true: {err}"
            );
            eprintln!("\n*** SKIPPED (two web nodes): {url} is unreachable: {err} ***\n");
            None
        }
    }
}

async fn node(url: &str) -> (Store, SocketAddr) {
    let store = Store::connect(url).await.expect("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = postern_api::AppState::new(store.clone());
    let router = postern_api::router(state.clone()).merge(postern_web::router(
        state,
        postern_web::WebConfig::default(),
    ));
    tokio::spawn(async move {
        let _ = postern_api::serve_with(listener, router, std::future::pending()).await;
    });
    (store, addr)
}

fn cookie_of(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let pair = v.split(';').next()?;
            let (key, value) = pair.split_once('=')?;
            (key == name && !value.is_empty()).then(|| value.to_string())
        })
}

/// The value of the first hidden `_csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"_csrf\"").expect("a _csrf field");
    let rest = &page[at..];
    let value = rest.split("value=\"").nth(1).expect("a value");
    value.split('"').next().unwrap().to_string()
}

/// One sign-in attempt on `addr`; the response.
async fn sign_in(http: &reqwest::Client, addr: SocketAddr, password: &str) -> reqwest::Response {
    let page = http
        .get(format!("http://{addr}/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = cookie_of(&page, "postern_login_csrf").expect("login csrf cookie");
    let csrf = csrf_of(&page.text().await.unwrap());
    http.post(format!("http://{addr}/login"))
        .header(COOKIE, format!("postern_login_csrf={login_cookie}"))
        .form(&[
            ("_csrf", csrf.as_str()),
            ("email", "admin@example.com"),
            ("password", password),
            ("account", "default"),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shown_once_secrets_and_sign_in_limits_hold_across_nodes() {
    let Some(admin) = admin_url().await else {
        return;
    };
    let name = format!("postern_web_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("a database URL"),
    };
    let (node_a, addr_a) = node(&url).await;
    let (node_b, addr_b) = node(&url).await;
    let (account, _) = node_a.ensure_default_account().await.unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(
            PASSWORD.as_bytes(),
            &SaltString::generate(&mut rand::rngs::OsRng),
        )
        .unwrap()
        .to_string();
    node_a
        .create_actor(
            account.id,
            NewActor {
                actor_type: ActorType::Admin,
                name: "admin".into(),
                email: Some("admin@example.com".into()),
                password_hash: Some(hash),
                group_ids: Vec::new(),
                token: None,
            },
            &Acting::local_cli(),
        )
        .await
        .unwrap();
    let (runner, _) = node_a
        .create_actor(
            account.id,
            NewActor {
                actor_type: ActorType::ServiceAccount,
                name: "runner".into(),
                email: None,
                password_hash: None,
                group_ids: Vec::new(),
                token: None,
            },
            &Acting::local_cli(),
        )
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Signed in through A; a token created through A.
    let signed_in = sign_in(&http, addr_a, PASSWORD).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let session = format!(
        "postern_session={}",
        cookie_of(&signed_in, "postern_session").expect("a session cookie")
    );
    let form = http
        .get(format!("http://{addr_a}/actors/{}/tokens/new", runner.id))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let csrf = csrf_of(&form.text().await.unwrap());
    let expires_at = (chrono::Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let created = http
        .post(format!("http://{addr_a}/actors/{}/tokens/new", runner.id))
        .header(COOKIE, &session)
        .form(&[
            ("_csrf", csrf.as_str()),
            ("name", "second"),
            ("expires_at", &expires_at),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::SEE_OTHER);
    let page = created.headers()[LOCATION].to_str().unwrap().to_string();

    // While it waits, the database holds it sealed.
    let sealed: String = sqlx::query_scalar("SELECT sealed FROM web_shown_secrets")
        .fetch_one(
            &mut sqlx::PgConnection::connect(&url)
                .await
                .expect("the node's database"),
        )
        .await
        .expect("one waiting secret");
    assert!(!sealed.contains("postern_client_"));

    // Node B shows it (the next request need not go to A), once.
    let shown = http
        .get(format!("http://{addr_b}{page}"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = shown
        .find("postern_client_")
        .expect("node B shows the secret created through node A");
    let secret: String = shown[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    assert!(!sealed.contains(&secret));
    for addr in [addr_a, addr_b] {
        let again = http
            .get(format!("http://{addr}{page}"))
            .header(COOKIE, &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!again.contains("postern_client_"), "shown twice by {addr}");
    }

    // Five failed sign-ins through A: the sixth attempt through B is refused.
    for _ in 0..5 {
        let failed = sign_in(&http, addr_a, "wrong password").await;
        assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = sign_in(&http, addr_b, PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);

    node_a.close().await;
    node_b.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
