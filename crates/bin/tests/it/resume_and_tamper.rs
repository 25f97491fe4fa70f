//! Downloads that are cut off resume where they stopped; artifacts altered on the server are
//! refused and leave the installed version alone.

use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use upkeep_test_support::{CuttingProxy, demo_archive};

use crate::harness::{World, assert_failure, files_below};
use crate::on_each_backend;

fn current_version(agent: &std::path::Path) -> Option<String> {
    std::fs::read_link(agent.join("products/demo/current"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn interrupted_download_resumes(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = demo_archive("1.0.0", 3 * 1024 * 1024);
    let size = archive.len() as u64;
    let sha = hex::encode(Sha256::digest(&archive));
    world.publish("demo", "1.0.0", &archive);
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);

    let proxy = CuttingProxy::start(world.server.addr);
    let agent = world.enroll_agent("ws", &proxy.url());

    // The network drops after about 1 MB.
    proxy.cut_after.store(1_000_000, Ordering::Relaxed);
    let cut = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&cut, "update over a connection that drops");
    assert!(stderr.contains("resume"), "{stderr}");
    let part = agent.join("downloads").join(format!("{sha}.part"));
    let kept = std::fs::metadata(&part).expect("partial download kept").len();
    assert!(kept > 100_000 && kept < size, "kept {kept} of {size}");
    assert_eq!(
        current_version(&agent),
        None,
        "nothing installed from a partial download"
    );

    // The network is back: only the rest is sent.
    proxy.cut_after.store(0, Ordering::Relaxed);
    proxy.bytes_down.store(0, Ordering::Relaxed);
    world.agent_ok(&agent, &["update"]);
    let sent = proxy.bytes_down.load(Ordering::Relaxed);
    let rest = size - kept;
    assert!(sent >= rest, "sent {sent} < the {rest} missing bytes");
    assert!(
        sent < rest + 64 * 1024,
        "sent {sent} bytes, but only {rest} were missing of {size}"
    );
    assert_eq!(current_version(&agent).as_deref(), Some("1.0.0"));
    assert!(!part.exists(), "the download is removed once installed");

    let events = world.upkeep_json(&["events", "--json", "--product", "demo"]);
    let downloaded = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "workstation.downloaded")
        .expect("a downloaded event")
        .clone();
    assert_eq!(downloaded["details"]["resumed_from"], kept);
    let failed = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "workstation.failed")
        .expect("the cut was reported");
    assert_eq!(failed["error_code"], "download_failed");
}
on_each_backend!(interrupted_download_resumes);

fn tampered_artifact_is_refused(world: &World) {
    let agent = world.demo_installed("ws");
    assert_eq!(current_version(&agent).as_deref(), Some("1.0.0"));

    let archive = demo_archive("1.0.1", 64 * 1024);
    let sha = hex::encode(Sha256::digest(&archive));
    world.publish("demo", "1.0.1", &archive);
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);

    // Someone alters the stored blob: same size, one byte different.
    let blob = world.server.data_dir.join("blobs/sha256").join(&sha[..2]).join(&sha);
    let mut bytes = std::fs::read(&blob).expect("stored blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("tamper");

    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "update with a tampered artifact");
    assert!(stderr.contains("SHA-256"), "{stderr}");
    assert_eq!(
        current_version(&agent).as_deref(),
        Some("1.0.0"),
        "current must not move"
    );
    assert!(!agent.join("products/demo/versions/1.0.1").exists());
    assert!(
        files_below(&agent.join("downloads")).is_empty(),
        "the bad download is discarded"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");

    let events = world.upkeep_json(&["events", "--json", "--product", "demo"]);
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["type"] == "workstation.failed"
                && e["error_code"] == "digest_mismatch"
                && e["version"] == "1.0.1"),
        "{events}"
    );
}
on_each_backend!(tampered_artifact_is_refused);
