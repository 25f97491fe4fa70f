//! The whole path of an update: publish → approve → roll out → enroll → update → launch, twice,
//! and the blocking of a disapproved version online and offline.

use sha2::{Digest, Sha256};
use upkeep_test_support::{CuttingProxy, demo_archive};

use crate::harness::{World, assert_failure, assert_success};
use crate::on_each_backend;

fn instructions(world: &World, state: &std::path::Path) -> Vec<serde_json::Value> {
    let check: serde_json::Value =
        serde_json::from_str(&world.agent_ok(state, &["check", "--json"])).expect("check JSON");
    check["instructions"].as_array().cloned().unwrap_or_default()
}

fn publish_approve_roll_out_update_launch(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = demo_archive("1.0.0", 0);
    let printed = world.publish("demo", "1.0.0", &archive);
    let sha = hex::encode(Sha256::digest(&archive));
    assert!(
        printed.contains(&sha),
        "upload should print the SHA-256 {sha}: {printed}"
    );

    let agent = world.enroll_agent("ws1", &world.server.url);

    // Pending: it cannot be rolled out, and nothing is offered.
    let refused = assert_failure(
        &world.upkeep(&["rollout", "create", "demo", "1.0.0", "--all"]),
        "rollout of a pending release",
    );
    assert!(refused.contains("approve"), "{refused}");
    assert!(instructions(world, &agent).is_empty());

    // Approved but not rolled out: still nothing.
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    assert!(instructions(world, &agent).is_empty());

    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
    let offered = instructions(world, &agent);
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(offered[0]["action"], "offered");
    assert_eq!(offered[0]["update"]["version"], "1.0.0");

    let updated = world.agent(&agent, &["update"]);
    assert_success(&updated, "first update");
    let launched = world.agent_ok(&agent, &["launch", "demo", "--", "hello"]);
    assert_eq!(launched.trim(), "demo 1.0.0 hello");

    // The next version, mandatory, to this one workstation.
    let workstation = world.workstation_id(&agent);
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&[
        "rollout",
        "create",
        "demo",
        "1.0.1",
        "--workstation",
        &workstation,
        "--mandatory",
    ]);
    let required = instructions(world, &agent);
    assert_eq!(required[0]["action"], "required");
    world.agent_ok(&agent, &["update", "demo"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
    assert_eq!(
        instructions(world, &agent)[0]["action"],
        "none",
        "up to date after the update"
    );

    let workstations = world.upkeep_json(&["workstation", "list", "--json"]);
    let list = workstations.as_array().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], workstation.as_str());
    assert_eq!(list[0]["installed"]["demo"], "1.0.1");

    let events = world.upkeep_json(&["events", "--json", "--workstation", &workstation]);
    let installed: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "workstation.installed")
        .filter_map(|e| e["version"].as_str())
        .collect();
    assert_eq!(installed, ["1.0.0", "1.0.1"]);
    let all = world.upkeep_json(&["events", "--json", "--product", "demo"]);
    let kinds: Vec<&str> = all
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for kind in [
        "release.uploaded",
        "release.approved",
        "rollout.created",
        "workstation.downloading",
        "workstation.downloaded",
        "workstation.installing",
        "workstation.installed",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }

    let report = world.upkeep_json(&["rollout", "status", "2", "--json"]);
    assert_eq!(report["counts"]["installed"], 1, "{report}");
    assert_eq!(report["workstations"][0]["from_version"], "1.0.0");
    assert_eq!(report["workstations"][0]["to_version"], "1.0.1");

    let releases = world.upkeep_json(&["release", "list", "demo", "--json"]);
    let versions: Vec<&str> = releases
        .as_array()
        .expect("releases")
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.0.1"]);
}
on_each_backend!(publish_approve_roll_out_update_launch);

fn disapproved_version_is_blocked(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &demo_archive("1.0.0", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);

    // Agent `a` reaches the server through a proxy we can take away, to go offline.
    let proxy = CuttingProxy::start(world.server.addr);
    let a = world.enroll_agent("a", &proxy.url());
    let b = world.enroll_agent("b", &world.server.url);
    for agent in [&a, &b] {
        world.agent_ok(agent, &["update"]);
        assert_eq!(world.agent_ok(agent, &["launch", "demo"]).trim(), "demo 1.0.0");
    }

    world.upkeep_ok(&[
        "release",
        "disapprove",
        "demo",
        "1.0.0",
        "--reason",
        "corrupts the cash register",
    ]);
    let blocked = world.agent(&a, &["launch", "demo"]);
    let stderr = assert_failure(&blocked, "launch of a disapproved version");
    assert!(stderr.contains("2028"), "{stderr}");
    assert_eq!(blocked.status.code(), Some(3));
    assert!(blocked.stdout.is_empty(), "the program must not start");
    let check = instructions(world, &a);
    assert_eq!(check[0]["action"], "blocked");
    assert_eq!(check[0]["block"]["code"], 2028);

    // Offline, the block still holds.
    drop(proxy);
    let offline = world.agent(&a, &["launch", "demo", "--json"]);
    assert_eq!(offline.status.code(), Some(3));
    let body: serde_json::Value = serde_json::from_slice(&offline.stdout).expect("launch --json prints JSON");
    assert_eq!(body["error"]["code"], "2028");

    // A fixed release rolled out is installed before the program starts.
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    assert_eq!(world.agent_ok(&b, &["launch", "demo"]).trim(), "demo 1.0.1");

    // With the server itself stopped, `a` still refuses its disapproved version.
    world.server.stop();
    let stopped = world.agent(&a, &["launch", "demo"]);
    assert_eq!(stopped.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("2028"));
}
on_each_backend!(disapproved_version_is_blocked);
