//! Directory sync against a real portal process, driven by a SCIM client of another project:
//! python-scim's `scim2-client`, which checks every answer against the SCIM 2.0 schemas
//! (`e2e/scim/directory.py`). Needs `pip install 'scim2-client[httpx2]'`; required under CI.

mod common;
#[macro_use]
#[path = "common/e2e.rs"]
mod e2e;

use std::process::Command;

use common::{string, Portal};
use e2e::{Api, Backend, Database};
use serde_json::json;

fn python_has_scim_client() -> bool {
    Command::new("python3")
        .args(["-c", "import scim2_client.engines.httpx2, scim2_models"])
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn a_scim_client_library_provisions_and_deprovisions_people_and_groups() {
    if !python_has_scim_client() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs python3 with scim2-client (pip install 'scim2-client[httpx2]')"
        );
        eprintln!(
            "SKIPPED: python3 with scim2-client is missing (pip install 'scim2-client[httpx2]')"
        );
        return;
    }
    let Some(db) = Database::create(Backend::Sqlite) else {
        return;
    };
    let portal = Portal::start(&db.args());
    let api = Api::new(&portal.url, &db.api_token());
    let provider = api.post(
        "/v1/identity-providers",
        json!({"name": "Okta", "issuer": "https://acme.okta.example", "client_id": "postern"}),
    );
    let provider_id = string(&provider["data"], "id");
    let token = api.post(
        &format!("/v1/identity-providers/{provider_id}/scim-token"),
        json!({}),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e/scim/directory.py");
    let run = Command::new("python3")
        .arg(script)
        .env("POSTERN_SCIM_URL", format!("{}/scim/v2", portal.url))
        .env("POSTERN_SCIM_TOKEN", string(&token["data"], "token"))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok: the user is gone"), "{stdout}");
    assert!(
        stdout.contains("ok: a discovering client reads the user with the published schema"),
        "{stdout}"
    );
    // Everything it did is in the audit log, attributed to the directory.
    let audit = api.get("/v1/audit-events?action=actor.create");
    assert!(
        audit.to_string().contains(&format!("scim:{provider_id}")),
        "{audit}"
    );
}
