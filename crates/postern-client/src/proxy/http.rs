//! An HTTP proxy for tools that honour `HTTPS_PROXY` / `HTTP_PROXY`: `CONNECT host:port` opens
//! a tunnelled connection (HTTPS and anything else), and a request with an absolute URI
//! (`GET http://host/path`) is forwarded as HTTP/1.1 over a connection through the tunnel.
//! hyper speaks HTTP on both sides; a refusal is an HTTP error whose body says why.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use postern_netstack::ConnectError;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::{Proxies, Refusal, Target};

type Body = BoxBody<Bytes, hyper::Error>;

/// Clients served at once; more are closed at once.
const MAX_CLIENTS: usize = 1024;
/// Headers that are about the hop to this proxy, not for the resource.
const HOP_HEADERS: [&str; 6] = [
    "proxy-authorization",
    "proxy-connection",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
];

pub async fn serve(listener: TcpListener, proxies: Proxies) {
    if let Ok(address) = listener.local_addr() {
        proxies.listening(format!("http {address}"));
    }
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            debug!(%client, "too many HTTP proxy clients: one closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxies = proxies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let proxies = proxies.clone();
                async move { Ok::<_, Infallible>(handle(request, client, proxies).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(err) = served {
                debug!(%client, "HTTP proxy client: {err}");
            }
            drop(permit);
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    client: SocketAddr,
    proxies: Proxies,
) -> Response<Body> {
    if let Some(credentials) = proxies.credentials() {
        let given = request
            .headers()
            .get(PROXY_AUTHORIZATION)
            .and_then(basic_credentials);
        let accepted = given.is_some_and(|(user, password)| credentials.accepts(&user, &password));
        if !accepted {
            let mut response = text(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "this proxy needs a user name and password\n".to_string(),
            );
            response.headers_mut().insert(
                PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"postern-client\""),
            );
            return response;
        }
    }
    if request.method() == Method::CONNECT {
        return connect(request, client, proxies).await;
    }
    forward(request, client, proxies).await
}

/// `CONNECT host:port`: 200, then the client's bytes go through as they are.
async fn connect(
    request: Request<Incoming>,
    client: SocketAddr,
    proxies: Proxies,
) -> Response<Body> {
    let Some(target) = request
        .uri()
        .authority()
        .and_then(|authority| Target::parse(authority.as_str()))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "CONNECT needs host:port\n".to_string(),
        );
    };
    let (connection, resource) = match proxies.open(&target).await {
        Ok(opened) => opened,
        Err(refusal) => return refused(client, &target, &refusal),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let local = TokioIo::new(upgraded);
                proxies
                    .relay("http", local, client, &target, connection, &resource)
                    .await;
            }
            Err(err) => debug!(%client, "CONNECT upgrade failed: {err}"),
        }
    });
    Response::new(empty())
}

/// `GET http://host/path` and the like: sent on over a connection through the tunnel.
async fn forward(
    mut request: Request<Incoming>,
    client: SocketAddr,
    proxies: Proxies,
) -> Response<Body> {
    let uri = request.uri().clone();
    let (Some(host), Some("http")) = (uri.host(), uri.scheme_str()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "this is a proxy: send CONNECT host:port, or an absolute http:// URI\n".to_string(),
        );
    };
    let port = uri.port_u16().unwrap_or(80);
    let target = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Target::Address(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(host.trim_matches(['[', ']']).to_ascii_lowercase(), port),
    };
    let (connection, resource) = match proxies.open(&target).await {
        Ok(opened) => opened,
        Err(refusal) => return refused(client, &target, &refusal),
    };
    let (mut sender, driver) =
        match hyper::client::conn::http1::handshake(TokioIo::new(connection)).await {
            Ok(pair) => pair,
            Err(err) => return text(StatusCode::BAD_GATEWAY, format!("{target}: {err}\n")),
        };
    tokio::spawn(async move {
        if let Err(err) = driver.await {
            debug!("forwarded HTTP connection: {err}");
        }
    });
    let origin_form = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_default();
    *request.uri_mut() = origin_form;
    for header in HOP_HEADERS {
        request.headers_mut().remove(header);
    }
    if !request.headers().contains_key(HOST) {
        if let Some(authority) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(HOST, authority);
        }
    }
    debug!(%client, %target, resource = %resource.name, "HTTP request forwarded");
    match sender.send_request(request).await {
        Ok(response) => response.map(|body| body.boxed()),
        Err(err) => text(StatusCode::BAD_GATEWAY, format!("{target}: {err}\n")),
    }
}

/// The HTTP error that says why.
fn refused(client: SocketAddr, target: &Target, refusal: &Refusal) -> Response<Body> {
    info!(%client, %target, "HTTP proxy request refused: {refusal}");
    let status = match refusal {
        Refusal::NoResource(_) | Refusal::Filtered { .. } => StatusCode::FORBIDDEN,
        Refusal::Unresolved(_) | Refusal::Connect(ConnectError::Refused(_)) => {
            StatusCode::BAD_GATEWAY
        }
        Refusal::TimedOut(_) | Refusal::Connect(ConnectError::TimedOut(_)) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        Refusal::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    text(status, format!("postern-client: {target}: {refusal}\n"))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// `Basic base64(user:password)`.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}
