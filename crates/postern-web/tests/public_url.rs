//! The portal's own URL, as it tells identity providers and directories (the OIDC redirect URI,
//! the SCIM base URL): `--public-url` when set, whatever `Host` a request names — behind a proxy
//! a forged `Host` must not become the URI a provider sends codes to.

mod common;

use common::{admin, cookie_of, http, serve, sign_in, PASSWORD};
use reqwest::header::{COOKIE, HOST};

/// The Settings → Identity providers page, asked for with `host` as the request's `Host`.
async fn providers_page(web: postern_web::WebConfig, host: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = postern_store::Store::open_sqlite(dir.path()).await.unwrap();
    admin(&store).await;
    let addr = serve(&store, web).await;
    let http = http();
    let signed_in = sign_in(&http, addr, PASSWORD).await;
    let session = cookie_of(&signed_in, "postern_session").expect("a session cookie");
    let page = http
        .get(format!("http://{addr}/settings/identity-providers"))
        .header(HOST, host)
        .header(COOKIE, format!("postern_session={session}"))
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    page.text().await.unwrap()
}

#[tokio::test]
async fn the_redirect_uri_is_the_public_url_whatever_host_a_request_names() {
    let page = providers_page(
        postern_web::WebConfig {
            public_url: Some("https://postern.example.com".into()),
            ..Default::default()
        },
        "evil.example",
    )
    .await;
    assert!(
        page.contains("https://postern.example.com/auth/oidc/callback"),
        "{page}"
    );
    assert!(!page.contains("evil.example"), "{page}");
}

#[tokio::test]
async fn without_a_public_url_the_redirect_uri_follows_the_host() {
    let page = providers_page(postern_web::WebConfig::default(), "portal.internal:8080").await;
    assert!(
        page.contains("http://portal.internal:8080/auth/oidc/callback"),
        "{page}"
    );
}
