//! End-to-end tests: real `postern` processes over real sockets, each with its own data dir.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{api_token, postern, postern_with_input, str_of, Portal};
use serde_json::Value;

fn data_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("utf-8 temp dir").to_string();
    (dir, path)
}

#[test]
fn api_token_create_prints_one_token_that_drives_the_cli() {
    let (_dir, path) = data_dir();
    let run = postern(
        &[
            "api-token",
            "create",
            "--name",
            "admin-cli",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .ok();
    assert_eq!(run.stdout.lines().count(), 1, "stdout: {:?}", run.stdout);
    assert!(run.stdout.ends_with('\n'));
    let token = run.stdout.trim();
    assert!(token.starts_with("postern_api_"), "{token}");
    assert_eq!(token.len(), "postern_api_".len() + 71);
    assert!(
        run.stderr.contains("API token for 'admin-cli' created"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("shown once"), "{}", run.stderr);
    assert!(!run.stderr.contains(token), "the token leaked to stderr");

    let portal = Portal::start(&["--data-dir", &path]);
    let list = portal
        .cli(token, &["service-accounts", "list", "--json"])
        .ok();
    assert_eq!(list.json(), Value::Array(vec![]));
    assert!(
        !portal.log().contains(token),
        "the token leaked to the server log"
    );
}

#[test]
fn api_token_create_json_and_expiry() {
    let (_dir, path) = data_dir();
    let run = postern(
        &[
            "api-token",
            "create",
            "--name",
            "terraform",
            "--expires-in",
            "90d",
            "--json",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .ok();
    let body = run.json();
    assert_eq!(str_of(&body["actor"], "type"), "api_client");
    assert_eq!(str_of(&body["actor"], "name"), "terraform");
    assert!(str_of(&body["token"], "secret").starts_with("postern_api_"));
    assert_eq!(str_of(&body["token"], "kind"), "api");
    let expires = parse_time(str_of(&body["token"], "expires_at"));
    assert_close(expires, Utc::now() + Duration::days(90));

    postern(
        &[
            "api-token",
            "create",
            "--name",
            "x",
            "--expires-at",
            "2001-01-01T00:00:00Z",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .fails_with(&["--expires-at", "in the past"]);
    postern(
        &[
            "api-token",
            "create",
            "--name",
            "x",
            "--expires-in",
            "5x",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .fails_with(&["--expires-in", "5x"]);
    postern(
        &[
            "api-token",
            "create",
            "--name",
            "x",
            "--account",
            "nosuch",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .fails_with(&["no account with slug 'nosuch' (accounts: default)"]);
}

#[test]
fn serve_tells_how_to_create_the_first_admin_and_stops_on_sigterm() {
    let (_dir, path) = data_dir();
    let portal = Portal::start(&["--data-dir", &path]);
    let log = portal.log();
    assert!(
        log.contains(&format!(
            "no administrators yet: create an API token with 'postern api-token create --name admin-cli --data-dir {path}'"
        )),
        "{log}"
    );
    assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
    assert_eq!(portal.terminate(), Some(0));

    api_token(std::path::Path::new(&path));
    let portal = Portal::start(&["--data-dir", &path]);
    assert!(
        !portal.log().contains("no administrators yet"),
        "{}",
        portal.log()
    );
}

#[test]
fn serve_reports_a_port_in_use() {
    let (_dir, path) = data_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = postern(&["serve", "--listen", &addr, "--data-dir", &path], &[]);
    run.fails_with(&[
        &format!("cannot listen on {addr}: address in use"),
        "--listen",
    ]);
}

#[test]
fn serve_refuses_a_github_keys_file_that_is_not_githubs() {
    let (dir, path) = data_dir();
    let keys = dir.path().join("github-keys.json");
    std::fs::write(
        &keys,
        r#"{"public_keys": [{"key_identifier": "k1", "key": "not a key"}]}"#,
    )
    .expect("write");
    let keys = keys.to_str().expect("utf-8");
    postern(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &path,
            "--github-secret-scanning-keys",
            keys,
        ],
        &[],
    )
    .fails_with(&[
        "github-keys.json",
        "key 'k1' is not a PEM-encoded P-256 public key",
    ]);
    postern(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &path,
            "--github-secret-scanning-keys",
            "/nonexistent/keys.json",
        ],
        &[],
    )
    .fails_with(&["cannot read the GitHub secret-scanning keys file /nonexistent/keys.json"]);
}

#[test]
fn service_account_round_trip() {
    let (_dir, path) = data_dir();
    let token = api_token(std::path::Path::new(&path));
    let portal = Portal::start(&["--data-dir", &path]);
    let cli = |args: &[&str]| portal.cli(&token, args);

    let group_id = cli(&["groups", "create", "engineering"])
        .ok()
        .stdout
        .trim()
        .to_string();
    uuid::Uuid::parse_str(&group_id).expect("groups create prints the id");

    let created = cli(&[
        "service-accounts",
        "create",
        "ci-runner",
        "--group",
        "engineering",
        "--expires-in",
        "30d",
    ])
    .ok();
    let secret = created.last_line().to_string();
    assert!(secret.starts_with("postern_client_"), "{}", created.stdout);
    assert_eq!(
        created.stdout.matches(&secret).count(),
        1,
        "the secret is printed once"
    );
    assert!(created
        .stderr
        .contains("Copy this token now: it is shown once and cannot be read again."));
    assert!(created.stdout.contains("ci-runner"));

    let listed = cli(&["sa", "list"]).ok();
    assert!(
        listed.stdout.contains("ci-runner") && listed.stdout.contains("active"),
        "{}",
        listed.stdout
    );
    let listed = cli(&["service-accounts", "list", "--name", "RUNNER", "--json"])
        .ok()
        .json();
    let actors = listed.as_array().expect("list");
    assert_eq!(actors.len(), 1);
    let actor_id = str_of(&actors[0], "id").to_string();
    assert!(cli(&["sa", "list", "--name", "nomatch", "--json"])
        .ok()
        .json()
        .as_array()
        .is_some_and(Vec::is_empty));

    let members = cli(&["groups", "members", &group_id, "--json"]).ok().json();
    assert_eq!(str_of(&members[0], "actor_id"), actor_id);
    let groups = cli(&["groups", "list", "--json"]).ok().json();
    let engineering = groups
        .as_array()
        .expect("list")
        .iter()
        .find(|g| g["name"] == "engineering")
        .cloned();
    assert_eq!(
        engineering.map(|g| g["member_count"].clone()),
        Some(1.into())
    );

    let tokens = cli(&["tokens", "list", "--actor", &actor_id, "--json"])
        .ok()
        .json();
    assert_eq!(tokens.as_array().map(Vec::len), Some(1));
    assert_close(
        parse_time(str_of(&tokens[0], "expires_at")),
        Utc::now() + Duration::days(30),
    );
    assert!(
        tokens[0].get("secret").is_none(),
        "listed tokens carry no secret"
    );

    let second = cli(&[
        "tokens",
        "create",
        "--actor",
        &actor_id,
        "--name",
        "second",
        "--expires-in",
        "7d",
    ])
    .ok();
    assert!(second.last_line().starts_with("postern_client_"));
    assert_ne!(second.last_line(), secret);
    let tokens = cli(&["tokens", "list", "--actor", &actor_id, "--json"])
        .ok()
        .json();
    let tokens = tokens.as_array().expect("list").clone();
    assert_eq!(tokens.len(), 2);
    let first_id = str_of(&tokens[0], "id").to_string();

    cli(&["tokens", "revoke", "--actor", &actor_id, &first_id]).ok();
    let tokens = cli(&["tokens", "list", "--actor", &actor_id, "--json"])
        .ok()
        .json();
    let revoked = tokens
        .as_array()
        .expect("list")
        .iter()
        .filter(|t| !t["revoked_at"].is_null())
        .count();
    assert_eq!(revoked, 1);
    let table = cli(&["tokens", "list", "--actor", &actor_id]).ok().stdout;
    assert!(
        table.contains("revoked") && table.contains("active") && table.contains("never"),
        "{table}"
    );

    // Rotation: the successor's secret last, once; the old token's row says it was rotated.
    let second_id = str_of(&tokens[1], "id").to_string();
    let rotated = cli(&[
        "tokens",
        "rotate",
        "--actor",
        &actor_id,
        &second_id,
        "--overlap",
        "2h",
    ])
    .ok();
    let successor = rotated.last_line().to_string();
    assert!(
        successor.starts_with("postern_client_"),
        "{}",
        rotated.stdout
    );
    assert!(
        rotated.stdout.contains("second (rotated "),
        "{}",
        rotated.stdout
    );
    assert!(
        rotated.stderr.contains("keeps working until"),
        "{}",
        rotated.stderr
    );
    let table = cli(&["tokens", "list", "--actor", &actor_id]).ok().stdout;
    assert!(table.contains("rotated, 0 moved"), "{table}");
    cli(&["tokens", "rotate", "--actor", &actor_id, &second_id])
        .fails_with(&["already rotated", "rotate the successor"]);
    cli(&[
        "tokens",
        "rotate",
        "--actor",
        &actor_id,
        &second_id,
        "--overlap",
        "soon",
    ])
    .fails_with(&["overlap", "not a duration"]);
    let tokens = cli(&["tokens", "list", "--actor", &actor_id, "--json"])
        .ok()
        .json();
    let successor_row = tokens
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["rotated_from"] == second_id.as_str())
        .cloned()
        .expect("the successor is listed");
    let again = cli(&[
        "tokens",
        "rotate",
        "--actor",
        &actor_id,
        str_of(&successor_row, "id"),
        "--json",
    ])
    .ok()
    .json();
    assert!(str_of(&again["successor"], "secret").starts_with("postern_client_"));

    assert_eq!(again["rotated"]["id"], successor_row["id"]);

    // Workload identities: a trust rule for GitHub Actions, listed, refused when it would
    // trust everyone, deleted.
    let issuer = "https://token.actions.githubusercontent.com";
    let create_rule = |subject: &str, more: &[&str]| {
        let mut args = vec![
            "workload-identities",
            "create",
            "--actor",
            &actor_id,
            "--issuer",
            issuer,
            "--audience",
            "postern",
            "--subject",
            subject,
        ];
        args.extend_from_slice(more);
        cli(&args)
    };
    let main_branch = "repo:acme/deploy:ref:refs/heads/main";
    let created = create_rule(
        main_branch,
        &[
            "--claim",
            "repository_owner=acme",
            "--token-lifetime",
            "30m",
        ],
    )
    .ok();
    assert!(
        created.stdout.contains("repository_owner=acme"),
        "{}",
        created.stdout
    );
    assert!(created.stdout.contains("30 min"), "{}", created.stdout);
    let list = ["workload-identities", "list", "--actor", &actor_id];
    let rules = cli(&[&list[..], &["--json"]].concat()).ok().json();
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    assert_eq!(str_of(&rules[0], "issuer"), issuer);
    let table = cli(&list).ok().stdout;
    assert!(
        table.contains(main_branch) && table.contains("never"),
        "{table}"
    );
    create_rule("*", &[]).fails_with(&["subject", "every workload"]);
    create_rule("repo:x/*", &["--claim", "no-equals-sign"]).usage_error(&["CLAIM=PATTERN"]);
    let rule_id = str_of(&rules[0], "id");
    let deleted = cli(&[
        "workload-identities",
        "delete",
        "--actor",
        &actor_id,
        rule_id,
    ])
    .ok();
    assert!(
        deleted.stdout.contains("0 exchanged token(s) revoked"),
        "{}",
        deleted.stdout
    );

    // Identity providers: the secret from standard input, never printed back.
    let env = [
        ("POSTERN_API_URL", portal.url.as_str()),
        ("POSTERN_API_TOKEN", token.as_str()),
    ];
    let created = postern_with_input(
        &[
            "identity-providers",
            "create",
            "--name",
            "Acme SSO",
            "--issuer",
            "https://acme.okta.example",
            "--client-id",
            "0oa1b2c3",
            "--client-secret-stdin",
            "--groups-claim",
            "groups",
            "--admin-group",
            "postern-admins",
        ],
        &env,
        Some("s3cret-from-stdin\n"),
    )
    .ok();
    assert!(
        created.stdout.contains("set (sealed)"),
        "{}",
        created.stdout
    );
    assert!(!created.stdout.contains("s3cret-from-stdin"));
    let providers = cli(&["identity-providers", "list", "--json"]).ok().json();
    assert_eq!(str_of(&providers[0], "name"), "Acme SSO");
    assert!(!providers.to_string().contains("s3cret"));
    let table = cli(&["identity-providers", "list"]).ok().stdout;
    assert!(table.contains("postern-admins"), "{table}");
    cli(&[
        "identity-providers",
        "create",
        "--name",
        "x",
        "--issuer",
        "https://x.example",
        "--client-id",
        "c",
        "--admin-group",
        "admins",
    ])
    .fails_with(&["admin_groups", "groups_claim"]);
    let updated = cli(&[
        "identity-providers",
        "update",
        str_of(&providers[0], "id"),
        "--session-lifetime",
        "8h",
        "--no-admin-groups",
        "--sign-out-at-provider",
        "true",
    ])
    .ok();
    assert!(updated.stdout.contains("8 h"), "{}", updated.stdout);
    assert!(
        updated.stdout.contains("/auth/oidc/signed-out"),
        "{}",
        updated.stdout
    );
    assert!(
        !updated.stdout.contains("postern-admins"),
        "{}",
        updated.stdout
    );
    let scim = cli(&[
        "identity-providers",
        "scim-token",
        str_of(&providers[0], "id"),
    ])
    .ok();
    assert!(
        scim.last_line().starts_with("postern_scim_"),
        "{}",
        scim.stdout
    );
    let deleted = cli(&["identity-providers", "delete", str_of(&providers[0], "id")]).ok();
    assert!(deleted.stdout.contains("Deleted identity provider"));

    cli(&["tokens", "revoke-all", "--actor", &actor_id]).fails_with(&["--yes"]);
    let all = cli(&["tokens", "revoke-all", "--actor", &actor_id, "--yes"]).ok();
    assert_eq!(
        all.stdout.trim(),
        "3",
        "the rotated token and two successors"
    );

    cli(&["sa", "disable", &actor_id]).ok();
    let shown = cli(&["sa", "show", &actor_id, "--json"]).ok().json();
    assert!(!shown["actor"]["disabled_at"].is_null());
    assert_eq!(shown["tokens"].as_array().map(Vec::len), Some(4));
    assert!(cli(&["sa", "show", "ci-runner"])
        .ok()
        .stdout
        .contains("disabled"));
    cli(&["sa", "enable", "ci-runner"]).ok();
    let shown = cli(&["sa", "show", &actor_id, "--json"]).ok().json();
    assert!(shown["actor"]["disabled_at"].is_null());

    let site_id = cli(&["sites", "create", "office-berlin"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let gateway = cli(&[
        "sites",
        "gateway-tokens",
        "create",
        "office-berlin",
        "--name",
        "gw-1",
        "--expires-in",
        "1y",
    ])
    .ok();
    assert!(
        gateway.last_line().starts_with("postern_gateway_"),
        "{}",
        gateway.stdout
    );
    let gateway_tokens = cli(&["sites", "gateway-tokens", "list", &site_id, "--json"])
        .ok()
        .json();
    assert_eq!(gateway_tokens.as_array().map(Vec::len), Some(1));
    let gateway_id = str_of(&gateway_tokens[0], "id").to_string();
    cli(&["sites", "gateway-tokens", "revoke", &site_id, &gateway_id]).ok();
    let gateway_tokens = cli(&["sites", "gateway-tokens", "list", &site_id, "--json"])
        .ok()
        .json();
    assert!(!gateway_tokens[0]["revoked_at"].is_null());

    let resource_id = cli(&[
        "resources",
        "create",
        "--type",
        "cidr",
        "--name",
        "lan",
        "--address",
        "10.20.0.0/16",
        "--site",
        "office-berlin",
        "--filter",
        "tcp:80,443",
        "--filter",
        "icmp",
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    let resource = cli(&["resources", "show", &resource_id, "--json"])
        .ok()
        .json();
    assert_eq!(str_of(&resource, "site_id"), site_id);
    assert_eq!(resource["filters"][0]["protocol"], "tcp");
    assert_eq!(resource["filters"].as_array().map(Vec::len), Some(2));
    cli(&[
        "resources",
        "update",
        "lan",
        "--filter",
        "udp:53",
        "--description",
        "office LAN",
    ])
    .ok();
    let resource = cli(&["resources", "show", "lan", "--json"]).ok().json();
    assert_eq!(resource["filters"][0]["protocol"], "udp");
    assert_eq!(resource["description"], "office LAN");
    assert!(cli(&["resources", "list"]).ok().stdout.contains("udp:53"));

    let policy_id = cli(&[
        "policies",
        "create",
        "--group",
        "engineering",
        "--resource",
        "lan",
        "--time-window",
        "Mon-Fri 09:00-17:00 Europe/Berlin",
        "--source-ip-in",
        "192.0.2.0/24",
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    let policy = cli(&["policies", "show", &policy_id, "--json"]).ok().json();
    let conditions = policy["conditions"].as_array().expect("conditions").clone();
    assert!(
        conditions.iter().any(|c| c["property"] == "time_window"
            && c["values"][0] == "Mon-Fri 09:00-17:00 Europe/Berlin"),
        "{policy}"
    );
    assert_eq!(str_of(&policy, "group_id"), group_id);
    cli(&["policies", "disable", &policy_id]).ok();
    assert_eq!(
        cli(&["policies", "show", &policy_id, "--json"]).ok().json()["disabled"],
        true
    );
    cli(&["policies", "enable", &policy_id]).ok();
    assert_eq!(
        cli(&["policies", "show", &policy_id, "--json"]).ok().json()["disabled"],
        false
    );
    assert!(cli(&["policies", "list"])
        .ok()
        .stdout
        .contains("time_window Mon-Fri 09:00-17:00 Europe/Berlin"));

    let events = cli(&["audit", "--json"]).ok().json();
    let actions: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "actor.create",
        "token.create",
        "token.revoke",
        "site.create",
        "resource.create",
        "policy.create",
    ] {
        assert!(actions.contains(&action), "no {action} in {actions:?}");
    }
    let limited = cli(&["audit", "--limit", "3", "--json"]).ok().json();
    assert_eq!(limited.as_array().map(Vec::len), Some(3));
    let revokes = cli(&["audit", "--action", "token.revoke", "--json"])
        .ok()
        .json();
    assert!(revokes
        .as_array()
        .is_some_and(|e| !e.is_empty() && e.iter().all(|e| e["action"] == "token.revoke")));
    assert!(cli(&["audit"]).ok().stdout.contains("policy.create"));

    cli(&["sa", "delete", &actor_id]).fails_with(&["--yes"]);
    cli(&["sa", "delete", &actor_id, "--yes"]).ok();
    assert_eq!(
        cli(&["sa", "list", "--json"]).ok().json(),
        Value::Array(vec![])
    );

    let log = portal.log();
    for leaked in [&token, &secret] {
        assert!(
            !log.contains(leaked.as_str()),
            "a secret leaked to the server log"
        );
    }
}

#[test]
fn lists_follow_pagination() {
    let (_dir, path) = data_dir();
    let token = api_token(std::path::Path::new(&path));
    let portal = Portal::start(&["--data-dir", &path]);
    for index in 0..55 {
        portal
            .cli(&token, &["groups", "create", &format!("group-{index:02}")])
            .ok();
    }
    let all = portal
        .cli(&token, &["groups", "list", "--json"])
        .ok()
        .json();
    // 55 created plus the built-in Everyone group; the API's default page is 50.
    assert_eq!(all.as_array().map(Vec::len), Some(56));
    let some = portal
        .cli(&token, &["groups", "list", "--limit", "7", "--json"])
        .ok()
        .json();
    assert_eq!(some.as_array().map(Vec::len), Some(7));
}

#[test]
fn bad_input_is_refused_with_a_message_naming_the_problem() {
    let (_dir, path) = data_dir();
    let token = api_token(std::path::Path::new(&path));
    let portal = Portal::start(&["--data-dir", &path]);
    let cli = |args: &[&str]| portal.cli(&token, args);

    cli(&["sa", "create", "x", "--expires-in", "0d"]).fails_with(&[
        "--expires-in",
        "0d",
        "longer than zero",
    ]);
    cli(&["sa", "create", "x", "--group", "nosuch"]).fails_with(&["no group named 'nosuch'"]);
    cli(&["sites", "create", "hq"]).ok();
    cli(&[
        "resources",
        "create",
        "--type",
        "cidr",
        "--name",
        "n",
        "--address",
        "10.0.0.1/8",
        "--site",
        "hq",
    ])
    .fails_with(&["--address", "10.0.0.1/8", "10.0.0.0/8"]);
    cli(&[
        "resources",
        "create",
        "--type",
        "cidr",
        "--name",
        "n",
        "--address",
        "10.0.0.0/8",
        "--site",
        "hq",
        "--filter",
        "tcp:0",
    ])
    .fails_with(&["--filter", "tcp:0"]);
    cli(&["groups", "create", "g"]).ok();
    cli(&[
        "resources",
        "create",
        "--type",
        "ip",
        "--name",
        "r",
        "--address",
        "10.0.0.1",
        "--site",
        "hq",
    ])
    .ok();
    cli(&[
        "policies",
        "create",
        "--group",
        "g",
        "--resource",
        "r",
        "--source-ip-in",
        "10.0.0.0/33",
    ])
    .fails_with(&["--source-ip-in", "10.0.0.0/33"]);
    cli(&[
        "policies",
        "create",
        "--group",
        "g",
        "--resource",
        "r",
        "--time-window",
        "Mon-Fri 09:00-17:00 Mars/Olympus",
    ])
    .fails_with(&["--time-window", "Mars/Olympus"]);
    // Rejected by the API itself: problem+json becomes "error: <title>: <detail>".
    let run = cli(&["groups", "create", "   "]).fails_with(&["error: "]);
    assert!(run.stderr.contains("name"), "{}", run.stderr);
    cli(&["sa", "show", &uuid::Uuid::now_v7().to_string()]).fails_with(&["error: "]);
    cli(&[
        "tokens",
        "create",
        "--actor",
        &uuid::Uuid::now_v7().to_string(),
    ])
    .fails_with(&["error: "]);
    cli(&["account", "update", "--max-token-lifetime-days", "0"])
        .fails_with(&["error: ", "max_token_lifetime_days"]);

    portal
        .cli("postern_api_not_a_real_token", &["groups", "list"])
        .fails_with(&["error: ", "POSTERN_API_TOKEN"]);
}

#[test]
fn missing_token_and_unreachable_portal_are_clear_errors() {
    postern(&["service-accounts", "list"], &[]).fails_with(&[
        "set POSTERN_API_TOKEN to an API token (create one with 'postern api-token create --name NAME')",
    ]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    postern(
        &["groups", "list"],
        &[
            ("POSTERN_API_URL", &url),
            ("POSTERN_API_TOKEN", "postern_api_x"),
        ],
    )
    .fails_with(&[&format!(
        "cannot reach the portal at {url}: is `postern serve` running?"
    )]);
}

#[test]
fn account_commands_local_and_remote() {
    let (_dir, path) = data_dir();
    postern(
        &[
            "account",
            "create",
            "--slug",
            "acme",
            "--name",
            "Acme Corp",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .ok();
    postern(
        &["account", "create", "--slug", "acme", "--data-dir", &path],
        &[],
    )
    .fails_with(&["acme"]);
    postern(
        &[
            "account",
            "create",
            "--slug",
            "Bad Slug",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .fails_with(&["slug"]);
    let accounts = postern(&["account", "list", "--json", "--data-dir", &path], &[])
        .ok()
        .json();
    let slugs: Vec<&str> = accounts
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["slug"].as_str())
        .collect();
    assert_eq!(slugs, ["default", "acme"]);
    assert!(postern(&["account", "list", "--data-dir", &path], &[])
        .ok()
        .stdout
        .contains("Acme Corp"));
    postern(
        &[
            "api-token",
            "create",
            "--name",
            "x",
            "--account",
            "nope",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .fails_with(&["no account with slug 'nope' (accounts: default, acme)"]);

    let run = postern(
        &[
            "api-token",
            "create",
            "--name",
            "acme-cli",
            "--account",
            "acme",
            "--data-dir",
            &path,
        ],
        &[],
    )
    .ok();
    let token = run.stdout.trim().to_string();
    let portal = Portal::start(&["--data-dir", &path]);
    let account = portal
        .cli(&token, &["account", "show", "--json"])
        .ok()
        .json();
    assert_eq!(account["slug"], "acme");
    portal
        .cli(
            &token,
            &[
                "account",
                "update",
                "--name",
                "Acme Inc",
                "--max-token-lifetime-days",
                "20",
            ],
        )
        .ok();
    let shown = portal.cli(&token, &["account", "show"]).ok().stdout;
    assert!(
        shown.contains("Acme Inc") && shown.contains("20"),
        "{shown}"
    );
    portal
        .cli(&token, &["sa", "create", "too-long", "--expires-in", "30d"])
        .fails_with(&["error: ", "20 days"]);

    // Tokens expiring within the account's warning period, across holders.
    portal
        .cli(&token, &["sa", "create", "soon", "--expires-in", "5d"])
        .ok();
    let expiring = portal.cli(&token, &["tokens", "expiring"]).ok().stdout;
    assert!(
        expiring.contains("soon (service account)") && expiring.contains("4 days"),
        "{expiring}"
    );
    let listed = portal
        .cli(&token, &["tokens", "expiring", "--within", "10d", "--json"])
        .ok()
        .json();
    let holders: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["holder_name"].as_str())
        .collect();
    assert_eq!(holders, ["soon"], "{listed:#}");
    portal
        .cli(
            &token,
            &["account", "update", "--token-expiry-warning-days", "3"],
        )
        .ok();
    let shown = portal.cli(&token, &["account", "show"]).ok().stdout;
    assert!(shown.contains("token expiry warning (days)"), "{shown}");
    let run = portal.cli(&token, &["tokens", "expiring"]).ok();
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("no live token expires"),
        "{}",
        run.stderr
    );
    portal
        .cli(
            &token,
            &["account", "update", "--token-expiry-warning-days", "0"],
        )
        .fails_with(&["token_expiry_warning_days", "between 1 and 365"]);
}

#[test]
fn admin_create_hashes_the_password() {
    let (_dir, path) = data_dir();
    let args = [
        "admin",
        "create",
        "--email",
        "Ada@Example.com",
        "--name",
        "Ada",
        "--data-dir",
        &path,
    ];
    postern_with_input(&args, &[], Some("short\n")).fails_with(&["too short", "12"]);
    let run = postern_with_input(&args, &[], Some("a long enough password\n")).ok();
    uuid::Uuid::parse_str(run.stdout.trim()).expect("admin create prints the id");
    postern_with_input(&args, &[], Some("a long enough password\n")).fails_with(&["email"]);
    postern_with_input(
        &["admin", "create", "--email", "nope", "--data-dir", &path],
        &[],
        Some("a long enough password\n"),
    )
    .fails_with(&["--email"]);
    // An administrator exists now: the server no longer asks for one.
    let portal = Portal::start(&["--data-dir", &path]);
    assert!(
        !portal.log().contains("no administrators yet"),
        "{}",
        portal.log()
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["api-token", "create"],
        &["admin", "create"],
        &["account", "create"],
        &["account", "list"],
        &["account", "show"],
        &["account", "update"],
        &["service-accounts", "create"],
        &["sa", "list"],
        &["sa", "delete"],
        &["tokens", "create"],
        &["tokens", "revoke-all"],
        &["tokens", "expiring"],
        &["tokens", "revoke-presented"],
        &["webhooks"],
        &["webhooks", "create"],
        &["webhooks", "deliveries"],
        &["workload-identities"],
        &["workload-identities", "create"],
        &["workload-identities", "list"],
        &["workload-identities", "delete"],
        &["identity-providers"],
        &["identity-providers", "create"],
        &["identity-providers", "list"],
        &["identity-providers", "delete"],
        &["identity-providers", "scim-token"],
        &["identity-providers", "update"],
        &["groups", "add-member"],
        &["sites", "gateway-tokens", "create"],
        &["resources", "create"],
        &["policies", "create"],
        &["audit"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = postern(&args, &[]).ok();
        assert!(
            run.stdout.contains("postern "),
            "no example in {args:?} --help:\n{}",
            run.stdout
        );
        assert!(run.stdout.contains("Usage:"), "{}", run.stdout);
    }
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[track_caller]
fn assert_close(actual: DateTime<Utc>, expected: DateTime<Utc>) {
    let gap = (actual - expected).num_seconds().abs();
    assert!(gap < 300, "{actual} is not close to {expected}");
}
