//! `postern resources`: addresses reachable through a site, with traffic filters.

use anyhow::{anyhow, bail};
use clap::{Subcommand, ValueEnum};
use postern_domain::{validate, ResourceType};
use postern_policy::Filter;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{confirm, object, sites, Client, ListQuery, Names, RemoteOpts};
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
    /// List resources
    #[command(after_help = "Example:\n  postern resources list")]
    List {
        /// Fetch at most this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a resource
    #[command(after_help = "Example:\n  postern resources show gitlab")]
    Show {
        /// Id or name of the resource
        id: String,
    },
    /// Create a resource
    #[command(after_help = "Examples:\n  \
        postern resources create --type dns --name gitlab --address gitlab.corp.example --site office-berlin --filter tcp:22,443\n  \
        postern resources create --type cidr --name lan --address 10.20.0.0/16 --site office-berlin --filter udp:53 --filter icmp\n  \
        postern resources create --type internet --name internet --site frankfurt\n\n\
        Without --filter every protocol and port is allowed. An internet resource (one per \
        account) is the full tunnel: every address no other resource covers, through the site's \
        gateways, for clients started with --internet.")]
    Create(CreateArgs),
    /// Change a resource; only the given flags change
    #[command(after_help = "Examples:\n  \
        postern resources update gitlab --filter tcp:443\n  \
        postern resources update lan --address 10.20.0.0/15 --clear-filters")]
    Update(UpdateArgs),
    /// Delete a resource (its policies go with it)
    #[command(after_help = "Example:\n  postern resources delete gitlab --yes")]
    Delete {
        /// Id or name of the resource
        id: String,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TypeArg {
    Cidr,
    Ip,
    Dns,
    /// Every address no other resource covers (no --address)
    Internet,
}

impl TypeArg {
    fn domain(self) -> ResourceType {
        match self {
            TypeArg::Cidr => ResourceType::Cidr,
            TypeArg::Ip => ResourceType::Ip,
            TypeArg::Dns => ResourceType::Dns,
            TypeArg::Internet => ResourceType::Internet,
        }
    }
}

#[derive(clap::Args)]
struct CreateArgs {
    /// What --address is: a CIDR range, a single IP address, or a DNS name (wildcards
    /// allowed); or internet, the full tunnel (no --address)
    #[arg(long = "type", value_enum)]
    resource_type: TypeArg,
    /// Name of the resource
    #[arg(long)]
    name: String,
    /// The address, such as 10.0.0.0/24, 10.0.0.7 or db.corp.example. DNS patterns:
    /// *.corp.example matches one label in front (git.corp.example, not a.git.corp.example),
    /// **.corp.example any depth and corp.example itself, web-?.corp.example one character
    /// (web-1, not web-10); when several match a name the most specific wins (exact, then ?,
    /// then *, then **). Required except for --type internet
    #[arg(long, default_value = "")]
    address: String,
    /// Id or name of the site that reaches the address
    #[arg(long)]
    site: String,
    /// Free-text description
    #[arg(long)]
    description: Option<String>,
    /// Allowed traffic: tcp:PORTS, udp:PORTS, tcp, udp or icmp (repeatable); PORTS like 80,443,8000-8100
    #[arg(long = "filter", value_name = "PROTO[:PORTS]")]
    filters: Vec<String>,
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// Id or name of the resource
    id: String,
    /// New type (then --address is required, except for internet)
    #[arg(long = "type", value_enum)]
    resource_type: Option<TypeArg>,
    /// New name
    #[arg(long)]
    name: Option<String>,
    /// New address
    #[arg(long)]
    address: Option<String>,
    /// Move to another site (id or name)
    #[arg(long)]
    site: Option<String>,
    /// New description (empty to clear it)
    #[arg(long)]
    description: Option<String>,
    /// Replace the filters: tcp:PORTS, udp:PORTS, tcp, udp or icmp (repeatable)
    #[arg(
        long = "filter",
        value_name = "PROTO[:PORTS]",
        conflicts_with = "clear_filters"
    )]
    filters: Vec<String>,
    /// Remove every filter: all traffic to the address is allowed
    #[arg(long)]
    clear_filters: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Create(create) = &args.command {
        validate_address(create.resource_type.domain(), &create.address)?;
        parse_filters(&create.filters)?;
    }
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::List { limit } => list(&client, limit).await,
        Command::Show { id } => {
            let id = resolve(&client, &id).await?;
            let resource = client.get(&format!("/v1/resources/{id}")).await?;
            if client.json {
                return output::print_json(&resource);
            }
            print_resource(&resource, &client.names("/v1/sites").await?)
        }
        Command::Create(create) => {
            let site_id = sites::resolve(&client, &create.site).await?;
            let body = json!({
                "type": create.resource_type.domain().as_str(),
                "name": create.name,
                "address": validate_address(create.resource_type.domain(), &create.address)?,
                "site_id": site_id,
                "description": create.description,
                "filters": parse_filters(&create.filters)?,
            });
            let resource = client.post("/v1/resources", &body).await?;
            if client.json {
                return output::print_json(&resource);
            }
            eprintln!("resource '{}' created", output::text(&resource, "name"));
            println!("{}", output::text(&resource, "id"));
            Ok(())
        }
        Command::Update(update) => self::update(&client, update).await,
        Command::Delete { id, yes } => {
            let id = resolve(&client, &id).await?;
            if !yes {
                confirm(&format!("Delete resource {id} and its policies?"))?;
            }
            client.delete(&format!("/v1/resources/{id}")).await?;
            eprintln!("resource {id} deleted");
            Ok(())
        }
    }
}

/// The id of the resource named or identified by `input`.
pub async fn resolve(client: &Client, input: &str) -> anyhow::Result<Uuid> {
    client
        .resolve(ListQuery::new("/v1/resources"), "resource", input)
        .await
}

/// `tcp:80,443` → `{"protocol":"tcp","ports":"80,443"}`, checked by the policy engine's rules.
fn parse_filters(specs: &[String]) -> anyhow::Result<Vec<Value>> {
    specs.iter().map(|spec| parse_filter(spec)).collect()
}

fn parse_filter(spec: &str) -> anyhow::Result<Value> {
    let (protocol, ports) = match spec.trim().split_once(':') {
        Some((protocol, ports)) => (protocol.trim().to_ascii_lowercase(), Some(ports.trim())),
        None => (spec.trim().to_ascii_lowercase(), None),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "icmp") {
        bail!("invalid --filter '{spec}': the protocol must be tcp, udp or icmp");
    }
    let filter = object(vec![
        ("protocol", Some(Value::String(protocol))),
        ("ports", ports.map(|p| Value::String(p.to_string()))),
    ]);
    serde_json::from_value::<Filter>(filter.clone())
        .map_err(|err| anyhow!("invalid --filter '{spec}': {err}"))?;
    Ok(filter)
}

fn validate_address(resource_type: ResourceType, address: &str) -> anyhow::Result<String> {
    validate::resource_address("address", resource_type, address)
        .map_err(|err| anyhow!("invalid --address: {}", err.message))
}

async fn update(client: &Client, args: UpdateArgs) -> anyhow::Result<()> {
    let filters = if args.clear_filters {
        Some(Value::Array(Vec::new()))
    } else if args.filters.is_empty() {
        None
    } else {
        Some(Value::Array(parse_filters(&args.filters)?))
    };
    let id = resolve(client, &args.id).await?;
    let path = format!("/v1/resources/{id}");
    let address = match (&args.address, args.resource_type) {
        (Some(address), Some(resource_type)) => {
            Some(validate_address(resource_type.domain(), address)?)
        }
        (Some(address), None) => {
            let current = client.get(&path).await?;
            let current_type = current
                .get("type")
                .and_then(Value::as_str)
                .and_then(ResourceType::parse);
            match current_type {
                Some(resource_type) => Some(validate_address(resource_type, address)?),
                None => Some(address.clone()),
            }
        }
        (None, Some(TypeArg::Internet)) => None,
        (None, Some(_)) => bail!("--type needs --address (the new type's address)"),
        (None, None) => None,
    };
    let site_id = match &args.site {
        Some(site) => Some(json!(sites::resolve(client, site).await?)),
        None => None,
    };
    let body = object(vec![
        (
            "type",
            args.resource_type.map(|t| json!(t.domain().as_str())),
        ),
        ("name", args.name.map(Value::String)),
        ("address", address.map(Value::String)),
        ("site_id", site_id),
        ("description", args.description.map(nullable)),
        ("filters", filters),
    ]);
    if body.as_object().is_some_and(|fields| fields.is_empty()) {
        bail!("nothing to change: give at least one of --name, --address, --type, --site, --description, --filter, --clear-filters");
    }
    let resource = client.patch(&path, &body).await?;
    if client.json {
        return output::print_json(&resource);
    }
    eprintln!("resource '{}' updated", output::text(&resource, "name"));
    Ok(())
}

async fn list(client: &Client, limit: Option<usize>) -> anyhow::Result<()> {
    let mut query = ListQuery::new("/v1/resources");
    query.limit = limit;
    let resources = client.list(query).await?;
    if client.json {
        return output::print_json(&Value::Array(resources));
    }
    let sites = client.names("/v1/sites").await?;
    let mut table = Table::new(&["ID", "NAME", "TYPE", "ADDRESS", "SITE", "FILTERS"]);
    for resource in &resources {
        table.row(vec![
            output::text(resource, "id"),
            output::text(resource, "name"),
            output::text(resource, "type"),
            output::text(resource, "address"),
            sites.of(resource, "site_id"),
            format_filters(resource),
        ]);
    }
    table.print()
}

fn print_resource(resource: &Value, sites: &Names) -> anyhow::Result<()> {
    output::print_fields(&[
        ("id", output::text(resource, "id")),
        ("name", output::text(resource, "name")),
        ("type", output::text(resource, "type")),
        ("address", output::text(resource, "address")),
        ("site", sites.of(resource, "site_id")),
        ("description", output::text(resource, "description")),
        ("filters", format_filters(resource)),
        ("created", output::date(resource, "created_at", "-")),
        ("updated", output::date(resource, "updated_at", "-")),
    ])
}

/// `tcp:80,443 icmp`, or `all traffic` when there is no filter.
fn format_filters(resource: &Value) -> String {
    let filters = resource
        .get("filters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if filters.is_empty() {
        return "all traffic".to_string();
    }
    filters
        .iter()
        .map(|filter| {
            let protocol = output::text(filter, "protocol");
            match filter.get("ports").and_then(Value::as_str) {
                Some(ports) if !ports.is_empty() => format!("{protocol}:{ports}"),
                _ => protocol,
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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

    #[test]
    fn filters_parse_and_validate() {
        assert_eq!(
            parse_filter("tcp:80,443").ok(),
            Some(json!({"protocol": "tcp", "ports": "80,443"}))
        );
        assert_eq!(parse_filter("icmp").ok(), Some(json!({"protocol": "icmp"})));
        assert_eq!(
            parse_filter("UDP:53").ok(),
            Some(json!({"protocol": "udp", "ports": "53"}))
        );
        assert!(parse_filter("icmp:8").is_err());
        assert!(parse_filter("tcp:0").is_err());
        assert!(parse_filter("tcp:99999").is_err());
        assert!(parse_filter("sctp:80").is_err());
    }
}
