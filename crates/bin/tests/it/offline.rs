//! Offline signing: after `upkeep keys init` the root and targets keys live only in the
//! administrator's folder. Approvals must carry targets signed there; a server whose database
//! (and online keys) an attacker controls cannot get an agent to install anything else.

use upkeep_test_support::{demo_archive, run_sql};

use crate::api::Api;
use crate::harness::{World, assert_failure, files_below};
use crate::on_each_backend;
use crate::tuf::{forged_repository, target_entry};

fn offline_approval_and_a_compromised_server(world: &World) {
    // An agent enrolled while the server still held every key (root 1) follows the move.
    let agent = world.demo_installed("ws");
    let keys = world.tmp.path().join("admin-keys");
    let keys_arg = keys.to_str().expect("utf-8 path");
    let init = world.upkeep_ok(&["keys", "init", "--keys", keys_arg]);
    assert!(init.contains("Offline signing is on"), "{init}");
    for file in ["root.pk8", "targets.pk8", "root.json"] {
        assert!(keys.join(file).is_file(), "{file} is kept beside the keys");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("targets.pk8"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the targets key is readable by its owner only");
    }
    let server_keys = world.server.data_dir.join("keys/tuf/1");
    assert!(server_keys.join("snapshot.pk8").is_file(), "online keys stay");
    assert!(
        !server_keys.join("root.pk8").exists() && !server_keys.join("targets.pk8").exists(),
        "the server no longer holds the root or targets key"
    );
    let again = world.upkeep(&["keys", "init", "--keys", keys_arg]);
    assert!(assert_failure(&again, "a second keys init").contains("already signs offline"));

    // Approving now needs the keys.
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    let api = Api::login(world);
    let (status, body) = api.post(
        "/api/v1/products/demo/releases/1.0.1/approve",
        None,
        &serde_json::json!({}),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("signature_required")),
        "{body}"
    );
    assert_eq!(body["field"], "targets");
    let elsewhere = world.tmp.path().join("no-keys-here");
    let refused = world.upkeep(&[
        "release",
        "approve",
        "demo",
        "1.0.1",
        "--keys",
        elsewhere.to_str().expect("utf-8 path"),
    ]);
    assert!(assert_failure(&refused, "approving without the keys").contains("--keys"));

    // Targets signed by any other key are refused, with nothing recorded.
    let entry = target_entry(world, "1.0.1");
    let forged = forged_repository(std::slice::from_ref(&entry), 90);
    let (status, body) = api.post(
        "/api/v1/products/demo/releases/1.0.1/approve",
        None,
        &serde_json::json!({ "targets": forged[0].1 }),
    );
    assert_eq!((status, body["code"].as_str()), (422, Some("bad_signature")), "{body}");
    assert_eq!(target_entry(world, "1.0.1"), entry, "the release is unchanged");
    let listed = world.upkeep_json(&["release", "list", "demo", "--json"]);
    assert!(
        listed
            .as_array()
            .expect("releases")
            .iter()
            .any(|r| r["version"] == "1.0.1" && r["approval"] == "pending"),
        "a refused approval records nothing: {listed}"
    );

    // With the keys it works, and the agent (trusting root 1) installs it.
    let approved = world.upkeep_ok(&["release", "approve", "demo", "1.0.1", "--keys", keys_arg]);
    assert!(approved.contains("Approved demo 1.0.1"), "{approved}");
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    world.agent_ok(&agent, &["update"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
    // A stock TUF client walks root 1 → 2 and verifies the offline-signed targets too.
    let verified = crate::tuf::python_tuf(world, "demo_1.0.1_linux-x86_64.tar.gz");
    assert!(
        verified.starts_with("verified ") && verified.ends_with(" 1.0.1"),
        "{verified}"
    );

    // The server is compromised: its database is edited to approve 1.1.0, and the ticker re-signs
    // snapshot and timestamp with the online keys it still holds.
    world.publish("demo", "1.1.0", &demo_archive("1.1.0", 0));
    let url = world.server.database_url();
    run_sql(
        &url,
        "UPDATE approvals SET state = 'approved' WHERE release_id = (SELECT id FROM releases WHERE version = '1.1.0')",
    );
    world.upkeep_ok(&["rollout", "create", "demo", "1.1.0", "--all"]);
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an approval made in the database");
    assert!(
        stderr.contains("TUF verification failed") && stderr.contains("demo_1.1.0_linux-x86_64.tar.gz"),
        "{stderr}"
    );

    // The attacker goes further: new targets listing 1.1.0, signed with a key of their own, stored
    // as the current version; the server signs snapshot and timestamp over them.
    let forged = forged_repository(&[entry, target_entry(world, "1.1.0")], 90);
    let (name, body) = &forged[0];
    run_sql(
        &url,
        &format!(
            "INSERT INTO tuf_files (organization_id, filename, body, updated_at) VALUES (1, '{name}', '{}', 0)",
            body.replace('\'', "''")
        ),
    );
    run_sql(&url, "UPDATE tuf_versions SET version = 90 WHERE role = 'targets'");
    // Wait for the ticker to re-sign snapshot and timestamp over the forged targets.
    let base = format!("{}/tuf/default/metadata", world.server.url);
    let fetch = |name: String| -> Option<serde_json::Value> {
        api.block_on(async {
            let response = api.http().get(format!("{base}/{name}")).send().await.ok()?;
            response.json().await.ok()
        })
    };
    crate::harness::wait_for("the forged targets to be snapshotted", 30, || {
        let timestamp = fetch("timestamp.json".into())?;
        let version = timestamp["signed"]["meta"]["snapshot.json"]["version"].as_u64()?;
        let snapshot = fetch(format!("{version}.snapshot.json"))?;
        (snapshot["signed"]["meta"]["targets.json"]["version"] == 90).then_some(())
    });
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update under targets signed by the wrong key");
    assert!(stderr.contains("TUF verification failed"), "{stderr}");
    assert!(
        !agent.join("products/demo/versions/1.1.0").exists(),
        "1.1.0 was not installed"
    );
    assert!(
        files_below(&agent.join("downloads")).is_empty(),
        "nothing of 1.1.0 was even downloaded"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");

    // And the administrator's next signature does not build on the forged targets.
    world.publish("demo", "1.2.0", &demo_archive("1.2.0", 0));
    let refused = world.upkeep(&["release", "approve", "demo", "1.2.0", "--keys", keys_arg]);
    let stderr = assert_failure(&refused, "signing on top of forged targets");
    assert!(
        stderr.contains("not signed with this organization's targets key"),
        "{stderr}"
    );
}
on_each_backend!(
    offline_approval_and_a_compromised_server,
    ["--tuf-timestamp-lifetime", "4s", "--rollout-tick", "500ms"]
);

/// Offline, the root key rotates on the administrator's machine; agents follow the new root.
fn offline_root_rotation(world: &World) {
    let agent = world.demo_installed("ws");
    let keys = world.tmp.path().join("admin-keys");
    let keys_arg = keys.to_str().expect("utf-8 path");
    world.upkeep_ok(&["keys", "init", "--keys", keys_arg]);
    let hosted = world.upkeep(&[
        "keys",
        "rotate-root",
        "--keys",
        world.tmp.path().join("x").to_str().expect("utf-8"),
    ]);
    assert!(
        assert_failure(&hosted, "rotating without the keys").contains("--keys DIR"),
        "the rotation needs the folder holding the keys"
    );
    let rotated = world.upkeep_json(&["keys", "rotate-root", "--keys", keys_arg, "--json"]);
    assert_eq!(
        rotated["root_version"], 3,
        "root 2 moved the keys offline, root 3 rotated"
    );
    let retired: Vec<_> = files_below(&keys)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".retired"))
        .collect();
    assert_eq!(retired.len(), 1, "the old root key is kept, marked retired");
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1", "--keys", keys_arg]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    world.agent_ok(&agent, &["update"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
}
on_each_backend!(offline_root_rotation);
