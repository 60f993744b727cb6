//! `postern workload-identities`: a service account's trust rules for workload identity
//! federation (ID tokens from CI jobs, Kubernetes, clouds exchanged for short-lived tokens).

use clap::Subcommand;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{object, service_accounts, Client, ListQuery, RemoteOpts};
use crate::output::{self, Table};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: RemoteOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trust ID tokens from an OIDC issuer for a service account
    #[command(after_help = "Examples:\n  \
        # GitHub Actions: the main branch of acme/deploy (the job needs `permissions: id-token: write`)\n  \
        postern workload-identities create --actor ci-deploy \\\n    \
          --issuer https://token.actions.githubusercontent.com --audience postern \\\n    \
          --subject 'repo:acme/deploy:ref:refs/heads/main' --claim repository_owner=acme\n  \
        # A Kubernetes service account (the cluster's issuer; its keys from a file when offline)\n  \
        postern workload-identities create --actor billing --issuer https://kubernetes.default.svc \\\n    \
          --audience postern --subject 'system:serviceaccount:billing:*' --jwks-file cluster-jwks.json\n\n\
        In --subject and --claim patterns `*` stands for any run of characters. The workload runs\n\
        `postern-client --id-token-file FILE` (or --id-token-command CMD). See docs/workload-identity.md.")]
    Create {
        /// The service account (name or id)
        #[arg(long)]
        actor: String,
        /// The OIDC issuer, exactly as its tokens name it (iss)
        #[arg(long)]
        issuer: String,
        /// The audience the tokens must be for (one of their aud)
        #[arg(long)]
        audience: String,
        /// The subject (sub) pattern; `*` for any run of characters, never alone
        #[arg(long)]
        subject: String,
        /// Another claim the tokens must carry, CLAIM=PATTERN (repeatable)
        #[arg(long = "claim", value_name = "CLAIM=PATTERN", value_parser = parse_claim)]
        claims: Vec<(String, String)>,
        /// How long an exchanged token lives, 1m to 24h (default 1h)
        #[arg(long, value_name = "DURATION")]
        token_lifetime: Option<String>,
        /// The issuer's key set (JWKS JSON) for a portal that cannot reach the issuer
        #[arg(long, value_name = "FILE")]
        jwks_file: Option<std::path::PathBuf>,
        /// A name for people (default: the issuer's host and the subject)
        #[arg(long)]
        name: Option<String>,
    },
    /// List a service account's workload identities
    #[command(after_help = "Example:\n  postern workload-identities list --actor ci-deploy")]
    List {
        /// The service account (name or id)
        #[arg(long)]
        actor: String,
    },
    /// Delete a workload identity and revoke the tokens exchanged under it
    #[command(
        after_help = "Example:\n  postern workload-identities delete --actor ci-deploy <WORKLOAD_IDENTITY_ID>"
    )]
    Delete {
        /// The service account (name or id)
        #[arg(long)]
        actor: String,
        /// Id of the workload identity (postern workload-identities list)
        workload_identity_id: Uuid,
    },
}

fn parse_claim(text: &str) -> Result<(String, String), String> {
    let Some((claim, pattern)) = text.split_once('=') else {
        return Err(format!("'{text}' is not CLAIM=PATTERN"));
    };
    Ok((claim.trim().to_string(), pattern.to_string()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::Create {
            actor,
            issuer,
            audience,
            subject,
            claims,
            token_lifetime,
            jwks_file,
            name,
        } => {
            let actor_id = service_accounts::resolve(&client, &actor).await?;
            let jwks = match jwks_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).map_err(|err| {
                        anyhow::anyhow!("cannot read the key set {}: {err}", path.display())
                    })?;
                    Some(serde_json::from_str::<Value>(&text).map_err(|err| {
                        anyhow::anyhow!("the key set {} is not JSON: {err}", path.display())
                    })?)
                }
                None => None,
            };
            let claims: Map<String, Value> = claims
                .into_iter()
                .map(|(claim, pattern)| (claim, Value::String(pattern)))
                .collect();
            let body = object(vec![
                ("name", name.map(Value::String)),
                ("issuer", Some(Value::String(issuer))),
                ("audience", Some(Value::String(audience))),
                ("subject", Some(Value::String(subject))),
                ("claims", Some(Value::Object(claims))),
                ("token_lifetime", token_lifetime.map(Value::String)),
                ("jwks", jwks),
            ]);
            let created = client
                .post(&format!("/v1/actors/{actor_id}/workload-identities"), &body)
                .await?;
            if client.json {
                return output::print_json(&created);
            }
            print_rule(&created)
        }
        Command::List { actor } => {
            let actor_id = service_accounts::resolve(&client, &actor).await?;
            let path = format!("/v1/actors/{actor_id}/workload-identities");
            let rules = client.list(ListQuery::new(&path)).await?;
            if client.json {
                return output::print_json(&Value::Array(rules));
            }
            let mut table = Table::new(&[
                "ID",
                "NAME",
                "ISSUER",
                "AUDIENCE",
                "SUBJECT",
                "CLAIMS",
                "LAST USED",
            ]);
            for rule in &rules {
                table.row(vec![
                    output::text(rule, "id"),
                    output::text(rule, "name"),
                    output::text(rule, "issuer"),
                    output::text(rule, "audience"),
                    output::text(rule, "subject"),
                    claims_text(rule),
                    output::date(rule, "last_used_at", "never"),
                ]);
            }
            table.print()
        }
        Command::Delete {
            actor,
            workload_identity_id,
        } => {
            let actor_id = service_accounts::resolve(&client, &actor).await?;
            let deleted = client
                .delete(&format!(
                    "/v1/actors/{actor_id}/workload-identities/{workload_identity_id}"
                ))
                .await?;
            if client.json {
                return output::print_json(&deleted);
            }
            let revoked = deleted["revoked_tokens"].as_u64().unwrap_or(0);
            println!(
                "Deleted workload identity {workload_identity_id}; {revoked} exchanged token(s) revoked."
            );
            Ok(())
        }
    }
}

fn claims_text(rule: &Value) -> String {
    let Some(claims) = rule["claims"]
        .as_object()
        .filter(|claims| !claims.is_empty())
    else {
        return "-".into();
    };
    claims
        .iter()
        .map(|(claim, pattern)| format!("{claim}={}", pattern.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_rule(rule: &Value) -> anyhow::Result<()> {
    let lifetime = rule["token_lifetime_seconds"].as_u64().unwrap_or(0);
    output::print_fields(&[
        ("id", output::text(rule, "id")),
        ("name", output::text(rule, "name")),
        ("issuer", output::text(rule, "issuer")),
        ("audience", output::text(rule, "audience")),
        ("subject", output::text(rule, "subject")),
        ("claims", claims_text(rule)),
        ("token lifetime", format!("{} min", lifetime / 60)),
        (
            "keys",
            if rule.get("jwks").is_some_and(|jwks| !jwks.is_null()) {
                "kept with the rule".into()
            } else {
                "fetched from the issuer (discovery)".into()
            },
        ),
    ])
}
