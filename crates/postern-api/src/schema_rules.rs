//! The rules a derived schema cannot state: fields whose allowed values depend on another
//! field (an actor's `type`, a resource's `type`, a filter's `protocol`, a condition's
//! `property`), and the textual formats the parsers accept (port lists, IP ranges, window
//! specs, DNS names, emails). Each listed component of the document becomes a `oneOf` of
//! copies of itself, one per value of its discriminating field, with that branch's rules.
//!
//! Every pattern here describes a subset of what the parser accepts: the tests generate
//! strings from each pattern and parse them with the server's own code. What no pattern can
//! say (a port range's start after its end, a time zone that does not exist, an address in a
//! reserved range, a date in the past) is in `scripts/api-fuzz-hooks.py`.

use serde_json::{json, Map, Value};

const OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const H16: &str = "[0-9A-Fa-f]{1,4}";
const PORT: &str =
    "0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
const DAY: &str = "(?:[Mm]on(?:day)?|[Tt]ue(?:s|sday)?|[Ww]ed(?:s|nesday)?|[Tt]hu(?:r|rs|rsday)?|[Ff]ri(?:day)?|[Ss]at(?:urday)?|[Ss]un(?:day)?)";
const CLOCK: &str = "(?:[01]?[0-9]|2[0-3]):[0-5][0-9]";
const TIME_ZONE: &str = "[A-Z][A-Za-z_]{1,20}(?:/[A-Z][A-Za-z_]{1,20}){0,2}";
/// A DNS label in which `?` stands for one character.
const LABEL: &str = "[A-Za-z0-9_?](?:[A-Za-z0-9_?-]{0,61}[A-Za-z0-9_?])?";

fn ipv4() -> String {
    format!("{OCTET}(?:\\.{OCTET}){{3}}")
}

/// RFC 3986's `IPv6address`, which is what `std::net::Ipv6Addr` parses.
fn ipv6() -> String {
    let ls32 = format!("(?:{H16}:{H16}|{})", ipv4());
    let groups = |n: usize| format!("(?:{H16}:){{{n}}}");
    let head = |max: usize| match max {
        0 => String::new(),
        _ => format!("(?:(?:{H16}:){{0,{}}}{H16})?", max - 1),
    };
    let forms = [
        format!("{}{ls32}", groups(6)),
        format!("::{}{ls32}", groups(5)),
        format!("{}::{}{ls32}", head(1), groups(4)),
        format!("{}::{}{ls32}", head(2), groups(3)),
        format!("{}::{}{ls32}", head(3), groups(2)),
        format!("{}::{H16}:{ls32}", head(4)),
        format!("{}::{ls32}", head(5)),
        format!("{}::{H16}", head(6)),
        format!("{}::", head(7)),
    ];
    format!("(?:{})", forms.join("|"))
}

fn ipv4_range() -> String {
    format!("{}/(?:3[0-2]|[12]?[0-9])", ipv4())
}

fn ipv6_range() -> String {
    format!("{}/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9])", ipv6())
}

/// `80`, `8000-8100`, comma-separated; empty means every port.
fn port_list() -> String {
    let entry = format!("{PORT}(?: *- *{PORT})?");
    format!(" *(?:{entry} *(?:, *{entry} *)*)?")
}

/// `Mon-Fri 09:00-17:00 Europe/Berlin`, `Daily 22:00-06:00 UTC`, `Sat,Sun 00:00-24:00 UTC`.
fn window_spec() -> String {
    let item = format!("{DAY}(?:-{DAY})?");
    let days = format!("(?:[Dd]aily|\\*|{item}(?:, ?{item})*)");
    format!(" *{days} +{CLOCK}-(?:{CLOCK}|24:00) +{TIME_ZONE} *")
}

/// A name, or `*.` / `**.` and a name; `?` stands for one character of a label.
fn dns_name() -> String {
    format!("(?:\\*\\*?\\.)?{LABEL}(?:\\.{LABEL}){{0,6}}\\.?")
}

/// A webhook endpoint: `https://` to a host name (its last label starts with a letter, or it
/// would be read as an IPv4 address), or `http://` to this machine; a port and a plain path.
fn webhook_url() -> String {
    let label = "[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?";
    let last = "[a-z](?:[a-z0-9-]{0,20}[a-z0-9])?";
    format!(
        "(?:https://(?:{label}\\.){{0,3}}{last}|http://(?:localhost|127\\.0\\.0\\.1))(?::[1-9][0-9]{{0,3}})?(?:/[A-Za-z0-9._~-]{{0,40}}){{0,4}}"
    )
}

/// ASCII only: the server bounds an email's bytes, JSON Schema its characters.
fn email() -> String {
    "[!-?A-~]{1,64}@[!-\\-/-~][!-~]{0,60}\\.[!-~]{0,60}[!-\\-/-~]".to_string()
}

/// A display name: no control character, something visible, and whitespace around it that the
/// server trims (only the ASCII whitespace both JSON Schema's and Rust's rules agree on).
fn display_name() -> String {
    let edge = "[\\t\\n\\u000b\\u000c\\r ]*";
    let free = "[^\\u0000-\\u001f\\u007f-\\u009f]*";
    format!("{edge}{free}[^\\s\\u0000-\\u001f\\u007f-\\u009f]{free}{edge}")
}

/// Every bounded `name` of a request body is a display name.
fn name_patterns(components: &mut Map<String, Value>) {
    let names = components
        .values_mut()
        .filter_map(|schema| schema.pointer_mut("/properties/name"))
        .filter_map(Value::as_object_mut)
        .filter(|name| name.contains_key("maxLength"));
    for name in names {
        name.insert("pattern".into(), anchored(&display_name()));
    }
}

/// Something besides `*` and whitespace, without control characters: a subject pattern that
/// does not trust every workload of its issuer.
fn subject_pattern() -> String {
    let free = "[^\\u0000-\\u001f\\u007f-\\u009f]*";
    format!("{free}[^*\\s\\u0000-\\u001f\\u007f-\\u009f]{free}")
}

/// Printable ASCII without spaces: client ids, secrets, scopes and claim names.
fn ascii_word(max: usize) -> String {
    format!("[!-~]{{1,{max}}}")
}

/// The trust rules' and identity providers' fields: issuers like webhook URLs, subjects that
/// name something, claim names, durations within their bounds. (What depends on another field —
/// `admin_groups` needs `groups_claim` — and a key set's contents are in the fuzzer's hooks.)
fn identity_patterns(components: &mut Map<String, Value>) {
    let set = |properties: &mut Value, field: &str, pattern: &str| {
        if let Some(field) = properties.get_mut(field).and_then(Value::as_object_mut) {
            field.insert("pattern".into(), anchored(pattern));
        }
    };
    if let Some(properties) = components
        .get_mut("NewWorkloadIdentity")
        .and_then(|c| c.pointer_mut("/properties"))
    {
        set(properties, "issuer", &webhook_url());
        set(properties, "audience", &display_name());
        set(properties, "subject", &subject_pattern());
        set(
            properties,
            "token_lifetime",
            "(?:(?:[1-9]|[1-5][0-9])m|(?:[1-9]|1[0-9]|2[0-4])h)",
        );
        if let Some(claims) = properties.get_mut("claims").and_then(Value::as_object_mut) {
            claims.insert("maxProperties".into(), json!(16));
            claims.insert(
                "propertyNames".into(),
                json!({"pattern": "^[A-Za-z0-9_.:-]{1,64}$"}),
            );
            claims.insert(
                "additionalProperties".into(),
                json!({"type": "string", "maxLength": 255,
                       "pattern": anchored("[^\\u0000-\\u001f\\u007f-\\u009f]+")}),
            );
        }
    }
    for component in ["NewIdentityProvider", "IdentityProviderPatch"] {
        let Some(properties) = components
            .get_mut(component)
            .and_then(|c| c.pointer_mut("/properties"))
        else {
            continue;
        };
        {
            set(properties, "issuer", &webhook_url());
            set(properties, "client_id", &ascii_word(255));
            set(properties, "client_secret", &ascii_word(1024));
            set(properties, "email_claim", &ascii_word(64));
            set(properties, "groups_claim", &ascii_word(64));
            set(
                properties,
                "session_lifetime",
                "(?:(?:[5-9]|[1-5][0-9])m|(?:[1-9]|1[0-9]|2[0-4])h|(?:[1-9]|[12][0-9]|30)d)",
            );
            if let Some(scopes) = properties.get_mut("scopes").and_then(Value::as_object_mut) {
                scopes.insert("maxItems".into(), json!(20));
                scopes.insert(
                    "items".into(),
                    json!({"type": "string", "pattern": anchored(&ascii_word(100))}),
                );
            }
            if let Some(groups) = properties
                .get_mut("admin_groups")
                .and_then(Value::as_object_mut)
            {
                groups.insert(
                "items".into(),
                json!({"type": "string", "maxLength": 255, "pattern": anchored(&display_name())}),
            );
            }
        }
    }
}

fn anchored(pattern: &str) -> Value {
    json!(format!("^{pattern}$"))
}

fn ip_or_range_schema() -> Value {
    json!({"anyOf": [
        {"type": "string", "format": "ipv4"},
        {"type": "string", "format": "ipv6"},
        {"type": "string", "pattern": anchored(&ipv4_range())},
        {"type": "string", "pattern": anchored(&ipv6_range())},
    ]})
}

/// One branch: the component with `discriminator` limited to `values` (none: absent or
/// `null`), each property of `patch` replacing the component's own (keeping its description;
/// `null` removes it), and `required` added to the required fields.
struct Branch {
    values: &'static [&'static str],
    patch: Value,
    required: &'static [&'static str],
}

fn split_by(component: &mut Value, discriminator: &str, branches: Vec<Branch>) {
    let Some(base) = component.as_object().cloned() else {
        return;
    };
    let one_of: Vec<Value> = branches
        .into_iter()
        .map(|branch| {
            let mut schema = base.clone();
            schema.remove("description");
            let mut properties = schema
                .remove("properties")
                .and_then(|p| match p {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .unwrap_or_default();
            let mut required: Vec<Value> = schema
                .remove("required")
                .and_then(|r| r.as_array().cloned())
                .unwrap_or_default();
            let tag = match branch.values {
                [] => json!({"type": "null"}),
                values => {
                    required.push(json!(discriminator));
                    json!({"type": "string", "enum": values})
                }
            };
            properties.insert(discriminator.to_string(), tag);
            for (field, rule) in branch.patch.as_object().into_iter().flatten() {
                let description = properties
                    .get(field)
                    .and_then(|old| old.get("description"))
                    .cloned();
                match (rule, description) {
                    (Value::Null, _) => {
                        properties.remove(field);
                    }
                    (Value::Object(rule), Some(description)) => {
                        let mut rule = rule.clone();
                        rule.entry("description").or_insert(description);
                        properties.insert(field.clone(), Value::Object(rule));
                    }
                    (rule, _) => {
                        properties.insert(field.clone(), rule.clone());
                    }
                }
            }
            required.extend(branch.required.iter().map(|field| json!(field)));
            let mut seen = std::collections::BTreeSet::new();
            required.retain(|field| seen.insert(field.to_string()));
            schema.insert("properties".into(), Value::Object(properties));
            if !required.is_empty() {
                schema.insert("required".into(), Value::Array(required));
            }
            Value::Object(schema)
        })
        .collect();
    let mut replaced = Map::new();
    if let Some(description) = base.get("description") {
        replaced.insert("description".into(), description.clone());
    }
    replaced.insert("oneOf".into(), Value::Array(one_of));
    *component = Value::Object(replaced);
}

/// The Internet resource's one address, or nothing (it is optional for that type).
const INTERNET_PATTERN: &str = "^ *(0\\.0\\.0\\.0/0 *, *::/0 *)?$";
/// The Internet resource's one address, given.
const INTERNET_ADDRESS_PATTERN: &str = "^ *0\\.0\\.0\\.0/0 *, *::/0 *$";

fn resource_address_branches() -> Vec<Branch> {
    vec![
        Branch {
            values: &["ip"],
            patch: json!({"address": {"type": "string",
                "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}}),
            required: &["address"],
        },
        Branch {
            values: &["cidr"],
            patch: json!({"address": {"type": "string",
                "anyOf": [{"pattern": anchored(&ipv4_range())}, {"pattern": anchored(&ipv6_range())}]}}),
            required: &["address"],
        },
        Branch {
            values: &["dns"],
            patch: json!({"address": {"type": "string", "maxLength": 253, "pattern": anchored(&dns_name())}}),
            required: &["address"],
        },
        Branch {
            values: &["internet"],
            patch: json!({"address": {"type": ["string", "null"], "pattern": INTERNET_PATTERN}}),
            required: &[],
        },
    ]
}

/// Applies every rule to the document's components.
pub(crate) fn apply(document: &mut Value) {
    let Some(components) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    name_patterns(components);
    identity_patterns(components);
    for component in ["CreateWebhook", "UpdateWebhook"] {
        let Some(properties) = components
            .get_mut(component)
            .and_then(|c| c.pointer_mut("/properties"))
        else {
            continue;
        };
        if let Some(url) = properties.get_mut("url").and_then(Value::as_object_mut) {
            url.insert("pattern".into(), anchored(&webhook_url()));
        }
        // `webhook.test` is an event a webhook is sent on request, not one to subscribe to.
        if let Some(events) = properties.get_mut("events").and_then(Value::as_object_mut) {
            let subscribable: Vec<&str> =
                postern_domain::webhooks::WebhookEvent::subscribable_names().collect();
            events.insert(
                "items".into(),
                json!({"type": "string", "enum": subscribable}),
            );
        }
    }
    for component in ["TokenRequest", "UpdateToken"] {
        if let Some(networks) = components
            .get_mut(component)
            .and_then(|c| c.pointer_mut("/properties/allowed_source_cidrs"))
        {
            networks["items"] = ip_or_range_schema();
        }
    }
    if let Some(actor) = components.get_mut("CreateActor") {
        split_by(
            actor,
            "type",
            vec![
                Branch {
                    values: &["user", "admin"],
                    patch: json!({"email": {"type": "string", "maxLength": 255, "pattern": anchored(&format!(" *{} *", email()))},
                        "token": null}),
                    required: &["email"],
                },
                Branch {
                    values: &["service_account", "api_client"],
                    patch: json!({"email": null}),
                    required: &[],
                },
            ],
        );
    }
    if let Some(resource) = components.get_mut("CreateResource") {
        split_by(resource, "type", resource_address_branches());
    }
    if let Some(resource) = components.get_mut("UpdateResource") {
        let mut branches = resource_address_branches();
        // A new type keeps the stored address unless one is given.
        for branch in &mut branches {
            branch.required = &[];
        }
        // Without a type, the address is checked against the stored one.
        branches.push(Branch {
            values: &[],
            patch: json!({"address": {"type": ["string", "null"], "anyOf": [
                {"type": "null"}, {"format": "ipv4"}, {"format": "ipv6"},
                {"pattern": anchored(&ipv4_range())}, {"pattern": anchored(&ipv6_range())},
                {"pattern": anchored(&dns_name())}, {"pattern": INTERNET_ADDRESS_PATTERN}]}}),
            required: &[],
        });
        split_by(resource, "type", branches);
    }
    if let Some(filter) = components.get_mut("Filter") {
        split_by(
            filter,
            "protocol",
            vec![
                Branch {
                    values: &["tcp", "udp"],
                    patch: json!({"ports": {"type": ["string", "null"],
                        "pattern": anchored(&port_list()), "example": "80,443,8000-8100"}}),
                    required: &[],
                },
                Branch {
                    values: &["icmp"],
                    patch: json!({"ports": {"type": ["string", "null"], "pattern": "^ *$",
                        "description": "ICMP has no ports: omitted, null or empty."}}),
                    required: &[],
                },
            ],
        );
    }
    if let Some(condition) = components.get_mut("Condition") {
        split_by(
            condition,
            "property",
            vec![
                Branch {
                    values: &["source_ip"],
                    patch: json!({
                        "operator": {"type": "string", "enum": ["in", "not_in"]},
                        "values": {"type": "array", "minItems": 1, "items": ip_or_range_schema(),
                            "example": ["10.0.0.0/8", "192.168.1.7"]},
                    }),
                    required: &["operator"],
                },
                Branch {
                    values: &["time_window"],
                    patch: json!({
                        "operator": {"type": "null"},
                        "values": {"type": "array", "minItems": 1,
                            "items": {"type": "string", "pattern": anchored(&window_spec())},
                            "example": ["Mon-Fri 09:00-17:00 Europe/Berlin"]},
                    }),
                    required: &[],
                },
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_domain::model::ResourceType;
    use proptest::prelude::*;
    use proptest::string::string_regex;

    fn strings(pattern: &str) -> impl Strategy<Value = String> {
        string_regex(pattern).expect("the pattern compiles")
    }

    proptest! {
        #[test]
        fn every_ipv4_and_ipv6_range_of_the_patterns_parses(
            v4 in strings(&ipv4_range()),
            v6 in strings(&ipv6_range()),
            address in strings(&ipv6()),
        ) {
            prop_assert!(v4.parse::<ipnet::IpNet>().is_ok(), "{v4}");
            prop_assert!(v6.parse::<ipnet::IpNet>().is_ok(), "{v6}");
            prop_assert!(address.parse::<std::net::Ipv6Addr>().is_ok(), "{address}");
        }

        #[test]
        fn every_port_list_of_the_pattern_parses_unless_a_range_is_reversed(
            ports in strings(&port_list()),
        ) {
            match postern_policy::filter::parse_ports(&ports) {
                Ok(_) | Err(postern_policy::filter::FilterError::StartAfterEnd(_)) => {}
                Err(error) => prop_assert!(false, "{ports:?}: {error}"),
            }
        }

        #[test]
        fn every_window_spec_of_the_pattern_parses_unless_its_zone_is_unknown(
            spec in strings(&window_spec()),
        ) {
            use postern_policy::condition::ConditionError;
            match postern_policy::condition::parse_window_spec(&spec) {
                Ok(_) | Err(ConditionError::UnknownTimeZone(_) | ConditionError::EmptyWindow(_)) => {}
                Err(error) => prop_assert!(false, "{spec:?}: {error}"),
            }
        }

        #[test]
        fn every_display_name_of_the_pattern_is_valid(name in strings(&display_name())) {
            prop_assume!(name.trim().chars().count() <= 255);
            prop_assert!(postern_domain::validate::name("name", &name).is_ok(), "{name:?}");
        }

        #[test]
        fn every_webhook_url_of_the_pattern_is_valid(url in strings(&webhook_url())) {
            prop_assert!(
                postern_domain::webhooks::validate_url("url", &url).is_ok(),
                "{url:?}"
            );
        }

        #[test]
        fn every_dns_name_and_email_of_the_patterns_is_valid(
            name in strings(&dns_name()),
            address in strings(&email()),
        ) {
            prop_assume!(name.trim_end_matches('.').len() <= 253);
            prop_assert!(
                postern_domain::validate::resource_address("address", ResourceType::Dns, &name).is_ok(),
                "{name:?}"
            );
            prop_assert!(postern_domain::validate::email("email", &address).is_ok(), "{address:?}");
        }
    }

    #[test]
    fn a_split_component_keeps_its_fields_per_branch() {
        let document = crate::openapi::openapi_json();
        let actor = &document["components"]["schemas"]["CreateActor"]["oneOf"];
        assert_eq!(actor[0]["required"], json!(["type", "name", "email"]));
        assert!(actor[0]["properties"].get("token").is_none());
        assert!(actor[1]["properties"].get("email").is_none());
        for component in ["GroupBody", "SiteBody", "UpdateAccount", "TokenRequest"] {
            let name = &document["components"]["schemas"][component]["properties"]["name"];
            assert_eq!(name["pattern"], anchored(&display_name()), "{component}");
        }
        assert_eq!(
            actor[1]["properties"]["name"]["pattern"],
            anchored(&display_name())
        );
        for component in ["TokenRequest", "UpdateToken"] {
            let networks =
                &document["components"]["schemas"][component]["properties"]["allowed_source_cidrs"];
            assert_eq!(networks["items"], ip_or_range_schema(), "{component}");
            assert_eq!(networks["maxItems"], json!(64), "{component}");
        }
        let filter = &document["components"]["schemas"]["Filter"]["oneOf"];
        assert_eq!(filter[1]["properties"]["protocol"]["enum"], json!(["icmp"]));
        assert_eq!(filter[1]["properties"]["ports"]["pattern"], json!("^ *$"));
        let update = &document["components"]["schemas"]["UpdateResource"]["oneOf"];
        assert_eq!(update[4]["properties"]["type"], json!({"type": "null"}));
        assert_eq!(update[0]["required"], json!(["type"]));
    }
}
