//! What the web portal's process-level tests share: a portal node serving the API and the web
//! portal on a real socket, an administrator, and sign-in over plain HTTP.

#![allow(dead_code)] // each test file uses its part

use std::net::SocketAddr;

use argon2::password_hash::{PasswordHasher, SaltString};
use postern_domain::{Acting, ActorType};
use postern_store::{NewActor, Store};
use reqwest::header::{COOKIE, SET_COOKIE};

pub const PASSWORD: &str = "correct horse battery staple";
pub const ADMIN: &str = "admin@example.com";

/// A portal node on `store`, with `web` as its web configuration.
pub async fn serve(store: &Store, web: postern_web::WebConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = postern_api::AppState::new(store.clone());
    let router = postern_api::router(state.clone()).merge(postern_web::router(state, web));
    tokio::spawn(async move {
        let _ = postern_api::serve_with(listener, router, std::future::pending()).await;
    });
    addr
}

/// A node on the database at `url`, with the default web configuration.
pub async fn node(url: &str) -> (Store, SocketAddr) {
    let store = Store::connect(url).await.expect("node");
    let addr = serve(&store, postern_web::WebConfig::default()).await;
    (store, addr)
}

/// The administrator `ADMIN` with `PASSWORD` in the default account; its id.
pub async fn admin(store: &Store) -> uuid::Uuid {
    let (account, _) = store.ensure_default_account().await.unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(
            PASSWORD.as_bytes(),
            &SaltString::generate(&mut rand::rngs::OsRng),
        )
        .unwrap()
        .to_string();
    let (actor, _) = store
        .create_actor(
            account.id,
            NewActor {
                actor_type: ActorType::Admin,
                name: "admin".into(),
                email: Some(ADMIN.into()),
                password_hash: Some(hash),
                group_ids: Vec::new(),
                token: None,
            },
            &Acting::local_cli(),
        )
        .await
        .unwrap();
    actor.id
}

/// A client that does not follow redirects (sign-in answers 303 with the session cookie).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn cookie_of(response: &reqwest::Response, name: &str) -> Option<String> {
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
pub fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"_csrf\"").expect("a _csrf field");
    let rest = &page[at..];
    let value = rest.split("value=\"").nth(1).expect("a value");
    value.split('"').next().unwrap().to_string()
}

/// A filled sign-in form, ready to post: (login CSRF cookie, form CSRF).
pub async fn login_form(http: &reqwest::Client, addr: SocketAddr) -> (String, String) {
    let page = http
        .get(format!("http://{addr}/login"))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page, "postern_login_csrf").expect("login csrf cookie");
    (cookie, csrf_of(&page.text().await.unwrap()))
}

/// Posts a sign-in form fetched with `login_form`.
pub async fn post_login(
    http: &reqwest::Client,
    addr: SocketAddr,
    form: &(String, String),
    password: &str,
) -> reqwest::Response {
    http.post(format!("http://{addr}/login"))
        .header(COOKIE, format!("postern_login_csrf={}", form.0))
        .form(&[
            ("_csrf", form.1.as_str()),
            ("email", ADMIN),
            ("password", password),
            ("account", "default"),
        ])
        .send()
        .await
        .unwrap()
}

/// One sign-in attempt on `addr`; the response.
pub async fn sign_in(
    http: &reqwest::Client,
    addr: SocketAddr,
    password: &str,
) -> reqwest::Response {
    let form = login_form(http, addr).await;
    post_login(http, addr, &form, password).await
}
