//! `postern groups`: groups of actors and their members.

use clap::Subcommand;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{confirm, Client, ListQuery, RemoteOpts};
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
    /// List groups with their member counts
    #[command(after_help = "Example:\n  postern groups list --json")]
    List {
        /// Fetch at most this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Create a group
    #[command(after_help = "Example:\n  postern groups create engineering")]
    Create {
        /// Name of the group
        name: String,
    },
    /// Rename a group
    #[command(after_help = "Example:\n  postern groups rename engineering platform-engineering")]
    Rename {
        /// Id or name of the group
        id: String,
        /// The new name
        name: String,
    },
    /// Delete a group (its policies go with it)
    #[command(after_help = "Example:\n  postern groups delete engineering --yes")]
    Delete {
        /// Id or name of the group
        id: String,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// List a group's members
    #[command(after_help = "Example:\n  postern groups members engineering")]
    Members {
        /// Id or name of the group
        id: String,
    },
    /// Add actors to a group
    #[command(
        name = "add-member",
        after_help = "Example:\n  postern groups add-member engineering <ACTOR_ID> <ACTOR_ID>"
    )]
    AddMember {
        /// Id or name of the group
        id: String,
        /// Ids of the actors to add
        #[arg(required = true)]
        actor_ids: Vec<Uuid>,
    },
    /// Remove actors from a group
    #[command(
        name = "remove-member",
        after_help = "Example:\n  postern groups remove-member engineering <ACTOR_ID>"
    )]
    RemoveMember {
        /// Id or name of the group
        id: String,
        /// Ids of the actors to remove
        #[arg(required = true)]
        actor_ids: Vec<Uuid>,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::List { limit } => list(&client, limit).await,
        Command::Create { name } => {
            let group = client.post("/v1/groups", &json!({ "name": name })).await?;
            print_group(&client, &group, "created")
        }
        Command::Rename { id, name } => {
            let id = resolve(&client, &id).await?;
            let group = client
                .patch(&format!("/v1/groups/{id}"), &json!({ "name": name }))
                .await?;
            print_group(&client, &group, "renamed")
        }
        Command::Delete { id, yes } => {
            let id = resolve(&client, &id).await?;
            if !yes {
                confirm(&format!("Delete group {id}?"))?;
            }
            client.delete(&format!("/v1/groups/{id}")).await?;
            eprintln!("group {id} deleted");
            Ok(())
        }
        Command::Members { id } => members(&client, &id).await,
        Command::AddMember { id, actor_ids } => {
            change(&client, &id, json!({ "add": actor_ids, "remove": [] })).await
        }
        Command::RemoveMember { id, actor_ids } => {
            change(&client, &id, json!({ "add": [], "remove": actor_ids })).await
        }
    }
}

/// The id of the group named or identified by `input`.
pub async fn resolve(client: &Client, input: &str) -> anyhow::Result<Uuid> {
    client
        .resolve(ListQuery::new("/v1/groups"), "group", input)
        .await
}

async fn list(client: &Client, limit: Option<usize>) -> anyhow::Result<()> {
    let mut query = ListQuery::new("/v1/groups");
    query.limit = limit;
    let groups = client.list(query).await?;
    if client.json {
        return output::print_json(&Value::Array(groups));
    }
    let mut table = Table::new(&["ID", "NAME", "KIND", "MEMBERS"]);
    for group in &groups {
        table.row(vec![
            output::text(group, "id"),
            output::text(group, "name"),
            output::text(group, "kind"),
            output::text(group, "member_count"),
        ]);
    }
    table.print()
}

async fn members(client: &Client, input: &str) -> anyhow::Result<()> {
    let id = resolve(client, input).await?;
    let members = client
        .list(ListQuery::new(&format!("/v1/groups/{id}/memberships")))
        .await?;
    if client.json {
        return output::print_json(&Value::Array(members));
    }
    print_members(&members)
}

async fn change(client: &Client, input: &str, body: Value) -> anyhow::Result<()> {
    let id = resolve(client, input).await?;
    let result = client
        .patch(&format!("/v1/groups/{id}/memberships"), &body)
        .await?;
    if client.json {
        return output::print_json(&result);
    }
    match result.as_array() {
        Some(members) => print_members(members),
        None => {
            eprintln!("memberships of group {id} changed");
            Ok(())
        }
    }
}

fn print_group(client: &Client, group: &Value, verb: &str) -> anyhow::Result<()> {
    if client.json {
        return output::print_json(group);
    }
    eprintln!("group '{}' {verb}", output::text(group, "name"));
    println!("{}", output::text(group, "id"));
    Ok(())
}

fn print_members(members: &[Value]) -> anyhow::Result<()> {
    let mut table = Table::new(&["ACTOR ID", "NAME", "TYPE", "SINCE"]);
    for member in members {
        table.row(vec![
            output::text(member, "actor_id"),
            output::text(member, "actor_name"),
            output::text(member, "actor_type"),
            output::date(member, "created_at", "-"),
        ]);
    }
    table.print()
}
