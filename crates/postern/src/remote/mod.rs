//! The admin CLI: a REST client for a running portal, one module per resource.

pub mod account;
pub mod audit;
pub mod clients;
pub mod groups;
pub mod identity_providers;
pub mod policies;
pub mod resources;
pub mod service_accounts;
pub mod sites;
pub mod tokens;
pub mod webhooks;
pub mod workload_identities;

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{anyhow, bail, Context};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

pub const TOKEN_ENV: &str = "POSTERN_API_TOKEN";

/// How to reach the portal's API; shared by every remote command.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteOpts {
    /// Base URL of the portal's REST API
    #[arg(
        long,
        global = true,
        env = "POSTERN_API_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub api_url: String,
    /// Trust only the CA certificates in this PEM file for an https:// --api-url (a private CA)
    #[arg(long, global = true, env = "POSTERN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Allow sending the API token over plain http:// to a host that is not this machine
    /// (it travels unencrypted: testing only)
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Print the API's JSON (the `data` member) instead of a table, for scripts
    #[arg(long, global = true)]
    pub json: bool,
}

/// An API error answered as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    pub title: String,
    pub detail: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.title),
            None => write!(f, "{}", self.title),
        }
    }
}

impl std::error::Error for Problem {}

/// A REST client authenticated with the API token from `POSTERN_API_TOKEN`.
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `None` for the requests that take no API token (revoking a presented token).
    auth: Option<HeaderValue>,
    pub json: bool,
}

/// A list query: the path, its filters, and how many items to fetch at most.
pub struct ListQuery<'a> {
    pub path: &'a str,
    pub params: Vec<(&'static str, String)>,
    pub limit: Option<usize>,
}

impl<'a> ListQuery<'a> {
    pub fn new(path: &'a str) -> Self {
        Self {
            path,
            params: Vec::new(),
            limit: None,
        }
    }
}

const MAX_PAGE: usize = 100;

impl Client {
    pub fn new(opts: &RemoteOpts) -> anyhow::Result<Self> {
        let token = std::env::var(TOKEN_ENV).unwrap_or_default();
        let token = token.trim();
        if token.is_empty() {
            bail!(
                "set {TOKEN_ENV} to an API token (create one with 'postern api-token create --name NAME')"
            );
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("{TOKEN_ENV} holds characters that no API token has"))?;
        auth.set_sensitive(true);
        Self::build(opts, Some(auth))
    }

    /// A client that sends no API token, for the requests that need none.
    pub fn anonymous(opts: &RemoteOpts) -> anyhow::Result<Self> {
        Self::build(opts, None)
    }

    fn build(opts: &RemoteOpts, auth: Option<HeaderValue>) -> anyhow::Result<Self> {
        let base = opts.api_url.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|err| anyhow!("invalid --api-url '{base}': {err}"))?;
        let host = url.host_str().unwrap_or_default();
        match url.scheme() {
            "https" => {}
            "http" if opts.insecure || postern_protocol::transport::is_loopback_host(host) => {}
            "http" => bail!(
                "refusing to send the API token unencrypted to {host}: use an https:// --api-url \
                 (plain http:// is only allowed to this machine, or with --insecure)"
            ),
            _ => bail!("invalid --api-url '{base}': it must start with http:// or https://"),
        }
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("postern-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("the CA file {} is not PEM certificates", path.display())
            })?;
            if certificates.is_empty() {
                bail!(
                    "the CA file {} holds no PEM 'CERTIFICATE' block",
                    path.display()
                );
            }
            http = http.tls_built_in_root_certs(false);
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http.build().context("cannot set up the HTTP client")?;
        Ok(Self {
            http,
            base,
            auth,
            json: opts.json,
        })
    }

    /// GET of a single object: its `data`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.data(Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.data(Method::POST, path, &[], Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.data(Method::PATCH, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.data(Method::DELETE, path, &[], None).await
    }

    /// The whole response body of a request, for responses that carry more than `data`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).query(params);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        tracing::debug!(%method, %url, "API request");
        let response = request.send().await.map_err(|err| self.send_error(err))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("cannot read the portal's answer to {method} {path}"))?;
        if !status.is_success() {
            return Err(problem(status, &bytes).into());
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the portal's answer to {method} {path} is not JSON"))
    }

    /// Every item of a paginated list, following `metadata.next_cursor`.
    pub async fn list(&self, query: ListQuery<'_>) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        if query.limit == Some(0) {
            return Ok(items);
        }
        let mut cursor: Option<String> = None;
        loop {
            let mut params = query.params.clone();
            if let Some(limit) = query.limit {
                params.push((
                    "limit",
                    limit.saturating_sub(items.len()).min(MAX_PAGE).to_string(),
                ));
            }
            if let Some(cursor) = &cursor {
                params.push(("cursor", cursor.clone()));
            }
            let body = self.request(Method::GET, query.path, &params, None).await?;
            let page = match body.get("data") {
                Some(Value::Array(page)) => page.clone(),
                _ => bail!(
                    "the portal's answer to GET {} has no list in 'data'",
                    query.path
                ),
            };
            let fetched = page.len();
            items.extend(page);
            if let Some(limit) = query.limit {
                if items.len() >= limit {
                    items.truncate(limit);
                    return Ok(items);
                }
            }
            cursor = body
                .pointer("/metadata/next_cursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            if cursor.is_none() || fetched == 0 {
                return Ok(items);
            }
        }
    }

    /// Names by id of every object in the list at `path`, to show names instead of ids.
    pub async fn names(&self, path: &str) -> anyhow::Result<Names> {
        let items = self.list(ListQuery::new(path)).await?;
        Ok(Names(
            items
                .iter()
                .filter_map(|item| {
                    let id = item.get("id")?.as_str()?;
                    let name = item.get("name")?.as_str()?;
                    Some((id.to_string(), name.to_string()))
                })
                .collect(),
        ))
    }

    /// The id of the object named or identified by `input` in the list at `path`.
    pub async fn resolve(
        &self,
        query: ListQuery<'_>,
        what: &str,
        input: &str,
    ) -> anyhow::Result<Uuid> {
        if let Ok(id) = Uuid::parse_str(input.trim()) {
            return Ok(id);
        }
        let items = self.list(query).await?;
        let name_of = |item: &Value| item.get("name").and_then(Value::as_str).map(str::to_string);
        let exact: Vec<&Value> = items
            .iter()
            .filter(|item| name_of(item).as_deref() == Some(input))
            .collect();
        let matches = if exact.is_empty() {
            items
                .iter()
                .filter(|item| name_of(item).is_some_and(|n| n.eq_ignore_ascii_case(input)))
                .collect()
        } else {
            exact
        };
        match matches.as_slice() {
            [one] => id_of(one),
            [] => {
                let names: Vec<String> = items.iter().filter_map(name_of).collect();
                let known = if names.is_empty() {
                    "there are none".to_string()
                } else {
                    format!("{what}s: {}", names.join(", "))
                };
                bail!("no {what} named '{input}' ({known})")
            }
            _ => bail!("more than one {what} is named '{input}': use its id"),
        }
    }

    async fn data(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let body = self.request(method, path, params, body).await?;
        Ok(match body {
            Value::Object(mut fields) => fields.remove("data").unwrap_or(Value::Object(fields)),
            other => other,
        })
    }

    fn send_error(&self, err: reqwest::Error) -> anyhow::Error {
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        if let Some(tls) = causes.iter().find(|cause| cause.contains("certificate")) {
            return anyhow!(
                "the portal at {} is not trusted: {tls} (for a private CA, pass --ca-file)",
                self.base
            );
        }
        if err.is_connect() || err.is_timeout() {
            return anyhow!(
                "cannot reach the portal at {}: is `postern serve` running?",
                self.base
            );
        }
        anyhow!("request to the portal at {} failed: {err}", self.base)
    }
}

/// Object names by id.
#[derive(Default)]
pub struct Names(HashMap<String, String>);

impl Names {
    /// The name of the object whose id is in `value[key]`, or the id when it is unknown.
    pub fn of(&self, value: &Value, key: &str) -> String {
        let id = crate::output::text(value, key);
        self.0.get(&id).cloned().unwrap_or(id)
    }
}

/// A JSON object of the pairs that have a value: absent options are left out, not sent as null.
pub fn object(pairs: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key.to_string(), v)))
            .collect(),
    )
}

/// An instant as the API expects it.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

pub fn id_of(item: &Value) -> anyhow::Result<Uuid> {
    item.get("id")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok())
        .context("the portal answered an object without an id")
}

/// Asks for confirmation on a terminal; refuses without one (scripts must pass --yes).
pub fn confirm(question: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{question} Refusing without confirmation: pass --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        return Ok(());
    }
    bail!("cancelled")
}

fn problem(status: StatusCode, body: &[u8]) -> Problem {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |key: &str| {
        parsed
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let title = field("title")
        .or_else(|| status.canonical_reason().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let mut detail = field("detail");
    if detail.is_none() && parsed.is_none() && !body.is_empty() {
        detail = Some(String::from_utf8_lossy(body).chars().take(300).collect());
    }
    if let (Some(name), Some(text)) = (field("field"), detail.as_mut()) {
        if !text.contains(&name) {
            *text = format!("{name}: {text}");
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        let hint = format!(
            "check {TOKEN_ENV} (create a token with 'postern api-token create --name NAME')"
        );
        detail = Some(match detail {
            Some(text) => format!("{text} ({hint})"),
            None => hint,
        });
    }
    Problem { title, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_title_detail_and_field() {
        let body = br#"{"type":"about:blank","title":"Invalid input","status":422,"detail":"must not be empty","field":"name"}"#;
        let p = problem(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(p.to_string(), "Invalid input: name: must not be empty");
        let p = problem(StatusCode::NOT_FOUND, b"");
        assert_eq!(p.to_string(), "Not Found");
    }
}
