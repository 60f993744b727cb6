//! `postern policies`: which group may reach which resource, under which conditions.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use postern_policy::Condition;
use serde_json::{json, Value};

use super::{confirm, groups, object, resources, Client, ListQuery, Names, RemoteOpts};
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
    /// List policies
    #[command(after_help = "Example:\n  postern policies list")]
    List {
        /// Fetch at most this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a policy
    #[command(after_help = "Example:\n  postern policies show <POLICY_ID>")]
    Show {
        /// Id of the policy
        id: uuid::Uuid,
    },
    /// Grant a group access to a resource
    #[command(after_help = "Examples:\n  \
        postern policies create --group engineering --resource gitlab\n  \
        postern policies create --group support --resource crm --time-window 'Mon-Fri 08:00-18:00 Europe/Berlin'\n  \
        postern policies create --group contractors --resource lan --source-ip-in 203.0.113.0/24 --disabled\n\n\
        All conditions must hold; the values of one condition are alternatives.")]
    Create(CreateArgs),
    /// Change a policy; only the given flags change, condition flags replace all conditions
    #[command(after_help = "Example:\n  \
        postern policies update <POLICY_ID> --time-window 'Daily 00:00-24:00 UTC' --description 'always'")]
    Update(UpdateArgs),
    /// Enable a disabled policy
    #[command(after_help = "Example:\n  postern policies enable <POLICY_ID>")]
    Enable {
        /// Id of the policy
        id: uuid::Uuid,
    },
    /// Disable a policy without deleting it
    #[command(after_help = "Example:\n  postern policies disable <POLICY_ID>")]
    Disable {
        /// Id of the policy
        id: uuid::Uuid,
    },
    /// Delete a policy
    #[command(after_help = "Example:\n  postern policies delete <POLICY_ID> --yes")]
    Delete {
        /// Id of the policy
        id: uuid::Uuid,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct ConditionArgs {
    /// Only from these source addresses or CIDR ranges (repeatable)
    #[arg(long, value_name = "CIDR")]
    source_ip_in: Vec<String>,
    /// Never from these source addresses or CIDR ranges (repeatable)
    #[arg(long, value_name = "CIDR")]
    source_ip_not_in: Vec<String>,
    /// Only during this weekly window, like 'Mon-Fri 09:00-17:00 Europe/Berlin' (repeatable, one time zone)
    #[arg(long, value_name = "WINDOW")]
    time_window: Vec<String>,
}

impl ConditionArgs {
    fn is_empty(&self) -> bool {
        self.source_ip_in.is_empty()
            && self.source_ip_not_in.is_empty()
            && self.time_window.is_empty()
    }

    /// The conditions as the API takes them, checked by the policy engine's own parser.
    fn conditions(&self) -> anyhow::Result<Vec<Value>> {
        let mut conditions = Vec::new();
        if !self.source_ip_in.is_empty() {
            conditions.push((
                "--source-ip-in",
                json!({"property": "source_ip", "operator": "in", "values": self.source_ip_in}),
            ));
        }
        if !self.source_ip_not_in.is_empty() {
            conditions.push((
                "--source-ip-not-in",
                json!({"property": "source_ip", "operator": "not_in", "values": self.source_ip_not_in}),
            ));
        }
        if !self.time_window.is_empty() {
            conditions.push((
                "--time-window",
                json!({"property": "time_window", "values": self.time_window}),
            ));
        }
        conditions
            .into_iter()
            .map(|(flag, condition)| {
                serde_json::from_value::<Condition>(condition.clone())
                    .map_err(|err| anyhow!("invalid {flag}: {err}"))?;
                Ok(condition)
            })
            .collect()
    }
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Id or name of the group granted access
    #[arg(long)]
    group: String,
    /// Id or name of the resource
    #[arg(long)]
    resource: String,
    /// Free-text description
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Create the policy disabled
    #[arg(long)]
    disabled: bool,
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// Id of the policy
    id: uuid::Uuid,
    /// Grant to another group (id or name)
    #[arg(long)]
    group: Option<String>,
    /// Apply to another resource (id or name)
    #[arg(long)]
    resource: Option<String>,
    /// New description (empty to clear it)
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Remove every condition
    #[arg(long, conflicts_with_all = ["source_ip_in", "source_ip_not_in", "time_window"])]
    clear_conditions: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Create(create) => {
            create.conditions.conditions()?;
        }
        Command::Update(update) => {
            update.conditions.conditions()?;
        }
        _ => {}
    }
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::List { limit } => list(&client, limit).await,
        Command::Show { id } => {
            let policy = client.get(&format!("/v1/policies/{id}")).await?;
            if client.json {
                return output::print_json(&policy);
            }
            let (groups, resources) = names(&client).await?;
            print_policy(&policy, &groups, &resources)
        }
        Command::Create(create) => {
            let body = json!({
                "group_id": groups::resolve(&client, &create.group).await?,
                "resource_id": resources::resolve(&client, &create.resource).await?,
                "description": create.description,
                "conditions": create.conditions.conditions()?,
                "disabled": create.disabled,
            });
            let policy = client.post("/v1/policies", &body).await?;
            if client.json {
                return output::print_json(&policy);
            }
            eprintln!("policy created");
            println!("{}", output::text(&policy, "id"));
            Ok(())
        }
        Command::Update(update) => self::update(&client, update).await,
        Command::Enable { id } => set_disabled(&client, id, false).await,
        Command::Disable { id } => set_disabled(&client, id, true).await,
        Command::Delete { id, yes } => {
            if !yes {
                confirm(&format!("Delete policy {id}?"))?;
            }
            client.delete(&format!("/v1/policies/{id}")).await?;
            eprintln!("policy {id} deleted");
            Ok(())
        }
    }
}

async fn update(client: &Client, args: UpdateArgs) -> anyhow::Result<()> {
    let conditions = if args.clear_conditions {
        Some(Value::Array(Vec::new()))
    } else if args.conditions.is_empty() {
        None
    } else {
        Some(Value::Array(args.conditions.conditions()?))
    };
    let group_id = match &args.group {
        Some(group) => Some(json!(groups::resolve(client, group).await?)),
        None => None,
    };
    let resource_id = match &args.resource {
        Some(resource) => Some(json!(resources::resolve(client, resource).await?)),
        None => None,
    };
    let body = object(vec![
        ("group_id", group_id),
        ("resource_id", resource_id),
        ("description", args.description.map(nullable)),
        ("conditions", conditions),
    ]);
    if body.as_object().is_some_and(|fields| fields.is_empty()) {
        bail!("nothing to change: give at least one of --group, --resource, --description, a condition flag, --clear-conditions");
    }
    let policy = client
        .patch(&format!("/v1/policies/{}", args.id), &body)
        .await?;
    if client.json {
        return output::print_json(&policy);
    }
    eprintln!("policy {} updated", args.id);
    Ok(())
}

async fn set_disabled(client: &Client, id: uuid::Uuid, disabled: bool) -> anyhow::Result<()> {
    let policy = client
        .patch(
            &format!("/v1/policies/{id}"),
            &json!({ "disabled": disabled }),
        )
        .await?;
    if client.json {
        return output::print_json(&policy);
    }
    let verb = if disabled { "disabled" } else { "enabled" };
    eprintln!("policy {id} {verb}");
    Ok(())
}

async fn list(client: &Client, limit: Option<usize>) -> anyhow::Result<()> {
    let mut query = ListQuery::new("/v1/policies");
    query.limit = limit;
    let policies = client.list(query).await?;
    if client.json {
        return output::print_json(&Value::Array(policies));
    }
    let (groups, resources) = names(client).await?;
    let mut table = Table::new(&[
        "ID",
        "GROUP",
        "RESOURCE",
        "STATUS",
        "CONDITIONS",
        "DESCRIPTION",
    ]);
    for policy in &policies {
        table.row(vec![
            output::text(policy, "id"),
            groups.of(policy, "group_id"),
            resources.of(policy, "resource_id"),
            policy_status(policy).to_string(),
            format_conditions(policy),
            output::text(policy, "description"),
        ]);
    }
    table.print()
}

async fn names(client: &Client) -> anyhow::Result<(Names, Names)> {
    Ok((
        client.names("/v1/groups").await?,
        client.names("/v1/resources").await?,
    ))
}

fn print_policy(policy: &Value, groups: &Names, resources: &Names) -> anyhow::Result<()> {
    output::print_fields(&[
        ("id", output::text(policy, "id")),
        ("group", groups.of(policy, "group_id")),
        ("resource", resources.of(policy, "resource_id")),
        ("status", policy_status(policy).to_string()),
        ("conditions", format_conditions(policy)),
        ("description", output::text(policy, "description")),
        ("created", output::date(policy, "created_at", "-")),
        ("updated", output::date(policy, "updated_at", "-")),
    ])
}

fn policy_status(policy: &Value) -> &'static str {
    if policy.get("disabled").and_then(Value::as_bool) == Some(true) {
        "disabled"
    } else {
        "enabled"
    }
}

/// `source_ip in 10.0.0.0/8; time_window Mon-Fri 09:00-17:00 Europe/Berlin`, or `none`.
fn format_conditions(policy: &Value) -> String {
    let conditions = policy
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if conditions.is_empty() {
        return "none".to_string();
    }
    conditions
        .iter()
        .map(|condition| {
            let values: Vec<String> = condition
                .get("values")
                .and_then(Value::as_array)
                .map(|values| {
                    values
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let mut text = output::text(condition, "property");
            if let Some(operator) = condition.get("operator").and_then(Value::as_str) {
                text = format!("{text} {operator}");
            }
            format!("{text} {}", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An empty `--description ""` clears the description.
fn nullable(text: String) -> Value {
    if text.trim().is_empty() {
        Value::Null
    } else {
        Value::String(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ip_in: &[&str], window: &[&str]) -> ConditionArgs {
        ConditionArgs {
            source_ip_in: ip_in.iter().map(|s| s.to_string()).collect(),
            source_ip_not_in: Vec::new(),
            time_window: window.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn conditions_are_built_and_checked() {
        let ok = args(&["10.0.0.0/8"], &["Mon-Fri 09:00-17:00 Europe/Berlin"]).conditions();
        assert_eq!(ok.map(|c| c.len()).ok(), Some(2));
        let bad_ip = args(&["10.0.0.0/33"], &[]).conditions();
        assert!(bad_ip.is_err_and(|e| e.to_string().contains("--source-ip-in")));
        let bad_zone = args(&[], &["Mon-Fri 09:00-17:00 Mars/Olympus"]).conditions();
        assert!(bad_zone.is_err_and(|e| e.to_string().contains("Mars/Olympus")));
    }
}
