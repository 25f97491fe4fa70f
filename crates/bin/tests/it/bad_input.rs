//! Bad input gets a clear refusal with a stable code and the field named, and leaves no record
//! and no file behind.

use upkeep_test_support::{Backend, demo_archive, tar_gz};

use crate::api::Api;

use crate::harness::{World, assert_failure, files_below};
use crate::on_each_backend;

fn meta(version: &str) -> serde_json::Value {
    serde_json::json!({ "version": version, "platform": "linux-x86_64", "launch": "bin/demo" })
}

fn assert_nothing_stored(world: &World, expected_blobs: usize) {
    let releases = world.upkeep_json(&["release", "list", "demo", "--json"]);
    let versions: Vec<&str> = releases
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["1.0.0"], "only the one good release is recorded");
    let blobs = files_below(&world.server.data_dir.join("blobs"));
    assert_eq!(blobs.len(), expected_blobs, "stored blobs: {blobs:?}");
    let staged = files_below(&world.server.data_dir.join("tmp"));
    assert!(staged.is_empty(), "staged uploads left behind: {staged:?}");
}

fn bad_input_is_refused_cleanly(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &demo_archive("1.0.0", 0));
    let api = Api::login(world);
    let good = demo_archive("1.0.1", 0);
    let file = world.tmp.path().join("good.tar.gz");
    std::fs::write(&file, &good).expect("write");
    let file = file.to_str().expect("utf-8");

    // Through the CLI: a one-line reason and a non-zero exit.
    let e = assert_failure(
        &world.upkeep(&["release", "upload", "demo", "1.0", file, "--platform", "linux-x86_64"]),
        "non-semver",
    );
    assert!(e.contains("semantic version"), "{e}");
    let e = assert_failure(
        &world.upkeep(&[
            "release",
            "upload",
            "nosuch",
            "1.0.0",
            file,
            "--platform",
            "linux-x86_64",
        ]),
        "unknown product",
    );
    assert!(e.contains("unknown product"), "{e}");
    let e = assert_failure(
        &world.upkeep(&["release", "upload", "demo", "1.0.0", file, "--platform", "linux-x86_64"]),
        "duplicate version",
    );
    assert!(e.contains("already exists"), "{e}");
    // A refusal reaches the CLI even while a large artifact is still on its way.
    let big = world.tmp.path().join("big.tar.gz");
    std::fs::write(&big, demo_archive("1.0.9", 12 * 1024 * 1024)).expect("write");
    let e = assert_failure(
        &world.upkeep(&[
            "release",
            "upload",
            "demo",
            "1.0.0",
            big.to_str().expect("utf-8"),
            "--platform",
            "linux-x86_64",
        ]),
        "large duplicate",
    );
    assert!(e.contains("already exists"), "{e}");
    let empty = world.tmp.path().join("empty.tar.gz");
    std::fs::write(&empty, b"").expect("write");
    let e = assert_failure(
        &world.upkeep(&[
            "release",
            "upload",
            "demo",
            "1.0.2",
            empty.to_str().expect("utf-8"),
            "--platform",
            "linux-x86_64",
        ]),
        "empty file",
    );
    assert!(e.to_lowercase().contains("empty"), "{e}");
    let e = assert_failure(
        &world.upkeep_env(&["release", "list", "demo"], &[("UPKEEP_TOKEN", "upk_forged")]),
        "bad token",
    );
    assert!(e.contains("token"), "{e}");
    let e = assert_failure(
        &world.upkeep(&["rollout", "create", "demo", "1.0.0", "--workstation", "ws-nope"]),
        "unknown workstation",
    );
    assert!(e.contains("approve") || e.contains("unknown workstation"), "{e}");
    let e = assert_failure(
        &world.agent(
            &world.agent_state("x"),
            &["enroll", "--server", &world.server.url, "--token", "upe_forged"],
        ),
        "bad enroll token",
    );
    assert!(e.contains("enrollment token"), "{e}");

    // Straight to the API: the server itself refuses, with the code and the field.
    let (status, body) = api.upload("demo", meta("1.0.2"), "demo.tar.gz", Vec::new());
    assert_eq!(
        (status, body["code"].as_str(), body["field"].as_str()),
        (400, Some("empty_artifact"), Some("artifact")),
        "{body}"
    );
    let (status, body) = api.upload("demo", meta("1.0.2"), "demo.tar.gz", b"this is not gzip".to_vec());
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_archive")),
        "{body}"
    );
    let traversal = tar_gz(&[("bin/demo", b"#!/bin/sh\n", 0o755), ("../../etc/evil", b"x", 0o644)]);
    let (status, body) = api.upload("demo", meta("1.0.2"), "demo.tar.gz", traversal);
    assert_eq!((status, body["code"].as_str()), (422, Some("unsafe_archive")), "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("../../etc/evil"),
        "{body}"
    );
    let (status, body) = api.upload(
        "demo",
        serde_json::json!({ "version": "1.0.2", "platform": "linux-x86_64", "launch": "../bin/demo" }),
        "demo.tar.gz",
        good.clone(),
    );
    assert_eq!((status, body["field"].as_str()), (400, Some("launch")), "{body}");
    let (status, body) = api.upload(
        "demo",
        serde_json::json!({ "version": "1.0.2", "platform": "linux-x86_64", "launch": "bin/missing" }),
        "demo.tar.gz",
        good.clone(),
    );
    assert_eq!((status, body["field"].as_str()), (400, Some("launch")), "{body}");
    let (status, body) = api.upload(
        "demo",
        serde_json::json!({ "version": "1.0.2", "platform": "Linux" }),
        "demo.tar.gz",
        good.clone(),
    );
    assert_eq!((status, body["field"].as_str()), (400, Some("platform")), "{body}");
    let (status, body) = api.upload("demo", meta("1.0.2"), "../demo.tar.gz", good.clone());
    assert_eq!((status, body["field"].as_str()), (400, Some("artifact")), "{body}");
    let (status, body) = api.upload("demo", meta("1.0.2"), "demo.exe", good);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_archive")),
        "{body}"
    );
    let (status, body) = api.post_raw("/api/v1/products", "{\"name\": 5}");
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_json")), "{body}");
    let (status, body) = api.post_raw("/api/v1/products", "{\"name\": \"../etc\"}");
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_name")), "{body}");

    assert_nothing_stored(world, 1);
}
on_each_backend!(bad_input_is_refused_cleanly);

#[test]
fn oversized_upload_is_refused() {
    let world = World::start(Backend::Sqlite, &["--max-upload-bytes", "100000"]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &demo_archive("1.0.0", 0));
    let big = world.tmp.path().join("big.tar.gz");
    std::fs::write(&big, demo_archive("1.0.1", 300_000)).expect("write");
    let e = assert_failure(
        &world.upkeep(&[
            "release",
            "upload",
            "demo",
            "1.0.1",
            big.to_str().expect("utf-8"),
            "--platform",
            "linux-x86_64",
        ]),
        "oversized",
    );
    assert!(e.contains("larger than"), "{e}");
    assert_nothing_stored(&world, 1);
}
