//! Web sign-in under attack, over real sockets from several loopback source addresses: parallel
//! attempts cannot slip past the limit (each is counted before its password is checked), an
//! attacker's failures do not lock the real administrator out from another address, and only a
//! few password checks (argon2id, ~19 MiB each) run at once — the excess is told to retry.

mod common;

use std::net::IpAddr;

use common::{admin, login_form, post_login, serve, sign_in, PASSWORD};
use reqwest::StatusCode;

fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source.parse::<IpAddr>().ok())
        .build()
        .unwrap()
}

async fn portal(web: postern_web::WebConfig) -> (tempfile::TempDir, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let store = postern_store::Store::open_sqlite(dir.path()).await.unwrap();
    admin(&store).await;
    let addr = serve(&store, web).await;
    (dir, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_attempts_from_one_address_are_checked_at_most_five_times() {
    let (_dir, addr) = portal(postern_web::WebConfig {
        password_checks: 64,
        ..Default::default()
    })
    .await;
    let attacker = client_from("127.0.0.2");
    let mut forms = Vec::new();
    for _ in 0..40 {
        forms.push(login_form(&attacker, addr).await);
    }
    let attempts = forms
        .iter()
        .map(|form| post_login(&attacker, addr, form, "guess"));
    let answers = futures_util::future::join_all(attempts).await;
    let checked = answers
        .iter()
        .filter(|a| a.status() == StatusCode::UNAUTHORIZED)
        .count();
    let limited = answers
        .iter()
        .filter(|a| a.status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        checked <= 5,
        "{checked} of 40 parallel guesses were checked"
    );
    assert_eq!(checked + limited, 40);

    // The administrator, signing in from elsewhere, is not locked out by them.
    let real = client_from("127.0.0.3");
    let signed_in = sign_in(&real, addr, PASSWORD).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    // And the attacker's address stays paused, even with the right password.
    assert_eq!(
        sign_in(&attacker, addr, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_beyond_the_bound_are_told_to_retry() {
    let (_dir, addr) = portal(postern_web::WebConfig {
        password_checks: 1,
        ..Default::default()
    })
    .await;
    let mut prepared = Vec::new();
    for n in 0..20 {
        let client = client_from(&format!("127.0.1.{}", n + 2));
        let form = login_form(&client, addr).await;
        prepared.push((client, form));
    }
    let attempts = prepared
        .iter()
        .map(|(client, form)| post_login(client, addr, form, "guess"));
    let answers = futures_util::future::join_all(attempts).await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|a| a.status() == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "20 parallel checks ran with room for one");
    assert!(busy
        .iter()
        .all(|a| a.headers().contains_key(reqwest::header::RETRY_AFTER)));
}
