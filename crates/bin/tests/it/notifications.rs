//! A server-component update tells its notification group: e-mails through a real SMTP server
//! (aiosmtpd) and webhooks to a real HTTP listener, signed with HMAC-SHA256.

use hmac::{Hmac, Mac};
use upkeep_test_support::{Backend, SmtpServer, WebhookListener, tar_gz};

use crate::harness::{World, assert_failure, wait_for};

fn crm(version: &str) -> Vec<u8> {
    let script = format!("#!/bin/sh\necho \"crm-server {version}\"\n");
    tar_gz(&[("bin/crm", script.as_bytes(), 0o755)])
}

fn subjects(smtp: &SmtpServer) -> Vec<String> {
    smtp.messages()
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ")).map(str::to_owned))
        .collect()
}

fn server_component_updates_tell_people(backend: Backend) {
    let maildir = tempfile::tempdir().expect("maildir");
    let smtp = SmtpServer::start(maildir.path());
    let hook = WebhookListener::start();
    let url = smtp.url();
    let Some(world) = World::start(
        backend,
        &[
            "--smtp-url",
            &url,
            "--smtp-from",
            "upkeep@example.com",
            "--notify-interval",
            "200ms",
        ],
    ) else {
        eprintln!(
            "PostgreSQL variant not run: set {}",
            upkeep_test_support::DATABASE_URL_ENV
        );
        return;
    };
    world.upkeep_ok(&["product", "create", "crm-server", "--kind", "server"]);
    let group = world.upkeep_json(&[
        "notify",
        "group",
        "create",
        "ops",
        "--email",
        "ops@example.com",
        "--webhook",
        &hook.url,
        "--product",
        "crm-server",
        "--json",
    ]);
    let secret = group["webhook_secret"].as_str().expect("secret shown once").to_owned();
    let health = "launch = \"bin/crm\"\n[health_check]\ncommand = [\"{install_dir}/bin/crm\"]\n";
    world.publish_with_manifest("crm-server", "5.3.1", "crm.tar.gz", &crm("5.3.1"), health);
    let agent = world.enroll_agent("crm-host", &world.server.url);
    let host = world.workstation_id(&agent);
    world.upkeep_ok(&[
        "rollout",
        "create",
        "crm-server",
        "5.3.1",
        "--workstation",
        &host,
        "--mandatory",
    ]);
    world.agent_ok(&agent, &["update"]);

    let got = wait_for("the started and completed e-mails", 20, || {
        let s = subjects(&smtp);
        (s.len() >= 2).then_some(s)
    });
    assert!(
        got[0].contains("crm-server 5.3.1") && got[0].contains("update started"),
        "{got:?}"
    );
    assert!(got[1].contains("update completed"), "{got:?}");
    assert!(smtp.messages()[0].contains("To: ops@example.com"));

    // The server part fails its health check: rolled back, and everyone is told why.
    let failing = "launch = \"bin/crm\"\n[health_check]\ncommand = [\"sh\", \"-c\", \"echo database migration 42 failed >&2; exit 1\"]\n";
    world.publish_with_manifest("crm-server", "5.4.0", "crm.tar.gz", &crm("5.4.0"), failing);
    world.upkeep_ok(&[
        "rollout",
        "create",
        "crm-server",
        "5.4.0",
        "--workstation",
        &host,
        "--mandatory",
    ]);
    assert_failure(&world.agent(&agent, &["update"]), "a failing server update");
    // Run the installed program directly: a launch would retry the required update.
    let program = agent.join("products/crm-server/current/bin/crm");
    let output = std::process::Command::new(&program)
        .output()
        .expect("run the installed server part");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "crm-server 5.3.1",
        "the old version keeps working"
    );
    let got = wait_for("the failure e-mails", 20, || {
        let s = subjects(&smtp);
        (s.len() >= 5).then_some(s)
    });
    assert!(got[2].contains("5.4.0") && got[2].contains("update started"), "{got:?}");
    assert!(got[3].contains("update FAILED"), "{got:?}");
    assert!(got[4].contains("ROLLED BACK"), "{got:?}");
    assert!(
        smtp.messages()[3].contains("database migration 42 failed"),
        "the error goes to support as it is"
    );

    // The same five notices reached the webhook, each signed with the group's secret.
    let requests = wait_for("five webhook calls", 20, || {
        let r = hook.requests();
        (r.len() >= 5).then_some(r)
    });
    let events: Vec<&str> = requests.iter().filter_map(|r| r.header("x-upkeep-event")).collect();
    assert_eq!(events, ["started", "completed", "started", "failed", "rolled_back"]);
    for request in &requests {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(&request.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            request.header("x-upkeep-signature"),
            Some(expected.as_str()),
            "bad signature"
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
        assert_eq!(body["product"], "crm-server");
        assert_eq!(body["workstation_id"], host.as_str());
    }
    let groups = world.upkeep_json(&["notify", "group", "list", "--json"]);
    assert_eq!(groups[0]["delivered"], 10);
}

#[test]
fn server_component_updates_tell_people_sqlite() {
    server_component_updates_tell_people(Backend::Sqlite);
}

#[test]
fn server_component_updates_tell_people_postgres() {
    server_component_updates_tell_people(Backend::Postgres);
}
