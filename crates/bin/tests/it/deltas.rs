//! Delta updates end to end: the server builds a patch between two releases after the upload,
//! offers it at check-in and serves it only for an approved target; the agent updates through it
//! (fetching a small part of the artifact), and falls back to the full artifact when the patch
//! is damaged.

use std::path::Path;
use std::sync::atomic::Ordering;

use rand::RngCore;
use upkeep_test_support::{CuttingProxy, tar_gz};

use crate::api::Api;
use crate::harness::{World, device_token, wait_for};
use crate::on_each_backend;

/// 2 MiB of random bytes that stay the same from one version to the next.
const PAYLOAD: usize = 2 * 1024 * 1024;

/// A release of `demo` whose large payload does not change between versions; only the script
/// and a small file of notes do.
fn release(version: &str, payload: &[u8]) -> Vec<u8> {
    let script = format!("#!/bin/sh\necho \"demo {version} $*\"\n");
    let changes = format!("changes in {version}\n").repeat(50);
    tar_gz(&[
        ("bin/demo", script.as_bytes(), 0o755),
        ("data/payload.bin", payload, 0o644),
        ("CHANGES.txt", changes.as_bytes(), 0o644),
    ])
}

fn events(world: &World) -> Vec<serde_json::Value> {
    world
        .upkeep_json(&["events", "--json", "--product", "demo"])
        .as_array()
        .expect("events")
        .clone()
}

/// Waits for the server's background build of the patch to `version` and returns its event.
fn delta_built(world: &World, version: &str) -> serde_json::Value {
    wait_for("the delta to be built", 60, || {
        events(world)
            .into_iter()
            .find(|e| e["type"] == "delta.built" && e["version"] == version)
    })
}

fn downloaded(world: &World, version: &str) -> serde_json::Value {
    events(world)
        .into_iter()
        .find(|e| e["type"] == "workstation.downloaded" && e["version"] == version)
        .unwrap_or_else(|| panic!("no downloaded event for {version}"))
}

/// 1.0.0 installed through `proxy`, 1.0.1 uploaded and its patch built; returns the agent, the
/// new artifact's size and the `delta.built` event.
fn second_release_with_patch(world: &World, proxy: &CuttingProxy) -> (std::path::PathBuf, u64, serde_json::Value) {
    let mut payload = vec![0u8; PAYLOAD];
    rand::thread_rng().fill_bytes(&mut payload);
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &release("1.0.0", &payload));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
    let agent = world.enroll_agent("ws", &proxy.url());
    world.agent_ok(&agent, &["update"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
    assert_eq!(downloaded(world, "1.0.0")["details"]["delta"], "none offered");
    assert!(
        agent.join("products/demo/delta-base/1.0.0.tar").is_file(),
        "the installed version's tar is kept as the next delta's base"
    );

    let next = release("1.0.1", &payload);
    world.publish("demo", "1.0.1", &next);
    let built = delta_built(world, "1.0.1");
    let details = &built["details"];
    assert_eq!(details["from_version"], "1.0.0");
    assert_eq!(details["platform"], "linux-x86_64");
    assert_eq!(details["method"], "bsdiff");
    let patch_size = details["size"].as_u64().expect("patch size");
    assert!(
        patch_size * 20 < next.len() as u64,
        "a {patch_size} byte patch for a {} byte artifact",
        next.len()
    );
    (agent, next.len() as u64, built)
}

/// GETs a device path with the agent's token; returns (status, body length).
fn device_get(world: &World, agent: &Path, path: &str, range: Option<&str>) -> (u16, usize) {
    let api = Api::login(world);
    let url = format!("{}{path}", world.server.url);
    let token = device_token(agent);
    api.block_on(async {
        let mut request = api.http().get(&url).bearer_auth(&token);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("body").len())
    })
}

fn update_through_a_delta(world: &World) {
    let proxy = CuttingProxy::start(world.server.addr);
    let (agent, artifact_size, built) = second_release_with_patch(world, &proxy);
    let patch_sha = built["details"]["sha256"].as_str().expect("patch sha256").to_owned();
    let patch_size = built["details"]["size"].as_u64().expect("patch size");

    // The patch leads to a release nobody approved yet: not served.
    let path = upkeep_protocol::delta_path(&patch_sha);
    assert_eq!(device_get(world, &agent, &path, None).0, 404);
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    assert_eq!(
        device_get(world, &agent, &path, None),
        (200, usize::try_from(patch_size).expect("size"))
    );
    // Ranges work as for artifacts, so a cut-off patch download resumes.
    assert_eq!(device_get(world, &agent, &path, Some("bytes=10-")).0, 206);

    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    let check = world.agent_ok(&agent, &["check", "--json"]);
    assert!(check.contains(&patch_sha), "the offer lists the patch: {check}");

    proxy.bytes_down.store(0, Ordering::Relaxed);
    world.agent_ok(&agent, &["update"]);
    let sent = proxy.bytes_down.load(Ordering::Relaxed);
    assert!(
        sent * 10 < artifact_size,
        "the update moved {sent} bytes for a {artifact_size} byte artifact"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");

    let event = downloaded(world, "1.0.1");
    let details = &event["details"];
    assert_eq!(details["delta"], "used", "{event}");
    assert_eq!(details["delta_from"], "1.0.0");
    assert_eq!(details["fetched"], patch_size);
    // The base moves on to the new version; the previous one is kept for a rollback.
    let bases = agent.join("products/demo/delta-base");
    assert!(bases.join("1.0.1.tar").is_file() && bases.join("1.0.0.tar").is_file());
    assert!(
        crate::harness::files_below(&agent.join("downloads")).is_empty(),
        "nothing is left in downloads"
    );
}
on_each_backend!(update_through_a_delta);

fn corrupt_delta_falls_back_to_the_full_artifact(world: &World) {
    let proxy = CuttingProxy::start(world.server.addr);
    let (agent, artifact_size, built) = second_release_with_patch(world, &proxy);
    let patch_sha = built["details"]["sha256"].as_str().expect("patch sha256").to_owned();

    // Someone damages the stored patch: same length, bytes flipped.
    let blob = world
        .server
        .data_dir
        .join("blobs/sha256")
        .join(&patch_sha[..2])
        .join(&patch_sha);
    let mut bytes = std::fs::read(&blob).expect("stored patch");
    for i in (0..bytes.len()).step_by(7) {
        bytes[i] ^= 0x55;
    }
    std::fs::write(&blob, &bytes).expect("damage the patch");

    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    proxy.bytes_down.store(0, Ordering::Relaxed);
    let out = world.agent(&agent, &["update"]);
    crate::harness::assert_success(&out, "update with a damaged patch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delta update not used"), "{stderr}");
    assert!(
        proxy.bytes_down.load(Ordering::Relaxed) >= artifact_size,
        "the full artifact was downloaded"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");

    let event = downloaded(world, "1.0.1");
    let details = &event["details"];
    let delta = details["delta"].as_str().expect("the delta's fate is reported");
    assert!(delta.starts_with("failed: ") && delta.contains("SHA-256"), "{event}");
    assert_eq!(details["fetched"], artifact_size);
    // The full install keeps its own verified base for the next delta.
    assert!(agent.join("products/demo/delta-base/1.0.1.tar").is_file());
}
on_each_backend!(corrupt_delta_falls_back_to_the_full_artifact);

fn no_patches_when_turned_off(world: &World) {
    let payload = vec![7u8; 64 * 1024];
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &release("1.0.0", &payload));
    world.publish("demo", "1.0.1", &release("1.0.1", &payload));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    let agent = world.enroll_agent("ws", &world.server.url);
    let check = world.agent_ok(&agent, &["check", "--json"]);
    assert!(!check.contains("\"deltas\""), "{check}");
    assert!(!events(world).iter().any(|e| e["type"] == "delta.built"));
}
on_each_backend!(no_patches_when_turned_off, ["--delta-from-releases", "0"]);

fn changed_base_falls_back_to_the_full_artifact(world: &World) {
    let proxy = CuttingProxy::start(world.server.addr);
    let (agent, artifact_size, _) = second_release_with_patch(world, &proxy);
    // The kept base no longer matches what was installed (disk trouble, a curious user).
    let base = agent.join("products/demo/delta-base/1.0.0.tar");
    let mut bytes = std::fs::read(&base).expect("kept base");
    bytes[1000] ^= 1;
    std::fs::write(&base, &bytes).expect("change the base");

    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    proxy.bytes_down.store(0, Ordering::Relaxed);
    world.agent_ok(&agent, &["update"]);
    assert!(proxy.bytes_down.load(Ordering::Relaxed) >= artifact_size);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
    let event = downloaded(world, "1.0.1");
    let delta = event["details"]["delta"]
        .as_str()
        .expect("the delta's fate is reported");
    assert!(delta.contains("kept base of 1.0.0 has changed"), "{event}");
    assert!(!base.exists(), "a base that no longer verifies is dropped");
}
on_each_backend!(changed_base_falls_back_to_the_full_artifact);
