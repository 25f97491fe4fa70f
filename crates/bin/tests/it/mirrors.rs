//! Artifacts downloaded from mirrors: a good mirror carries the download instead of the server, a
//! hostile or broken one is passed over and cannot get its bytes installed, and a bad `--mirror`
//! stops the server at startup. Mirrors are real HTTP servers; the agent and server are the real
//! binaries.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use upkeep_protocol as proto;
use upkeep_test_support::{
    Backend, CuttingProxy, HostileMirror, Hostility, ReceivedRequest, StaticMirror, demo_archive, http_get_bytes,
};

use crate::harness::{SERVER, World, assert_failure, files_below};

/// Publishes, approves and rolls out demo VERSION built with `padding` random bytes; returns the
/// archive.
fn release(world: &World, version: &str, padding: usize) -> Vec<u8> {
    let archive = demo_archive(version, padding);
    world.publish("demo", version, &archive);
    world.upkeep_ok(&["release", "approve", "demo", version]);
    world.upkeep_ok(&["rollout", "create", "demo", version, "--all"]);
    archive
}

/// The artifact's path below a mirror (and below the server's `/tuf/`), for the agent's
/// organization.
fn target_path(agent: &Path, version: &str, archive: &[u8]) -> String {
    let enrollment: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.join("agent.json")).expect("agent.json")).expect("enrollment JSON");
    let organization = enrollment["organization"].as_str().expect("organization");
    let name = proto::tuf_target_name("demo", version, "linux-x86_64", "tar.gz", "demo.tar.gz");
    proto::tuf_target_path(organization, &hex::encode(Sha256::digest(archive)), &name)
}

/// Every file of a `.tar.gz`, by path.
fn archive_files(archive: &[u8]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().expect("archive entries") {
        let mut entry = entry.expect("archive entry");
        let path = entry.path().expect("entry path").into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("entry bytes");
        files.insert(path, bytes);
    }
    files
}

/// Asserts that the agent's current version of demo is exactly the files of `archive`.
fn assert_installed(agent: &Path, archive: &[u8]) {
    let current = agent.join("products/demo/current");
    let installed: BTreeMap<PathBuf, Vec<u8>> = files_below(&current)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(current.join(&f)).expect("installed file");
            (f, bytes)
        })
        .collect();
    let expected = archive_files(archive);
    assert_eq!(
        installed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "installed files"
    );
    for (path, bytes) in &expected {
        assert!(installed[path] == *bytes, "{} differs from the release", path.display());
    }
}

fn assert_no_token(requests: &[ReceivedRequest]) {
    for request in requests {
        assert_eq!(
            request.header("authorization"),
            None,
            "a mirror was sent a credential: {request:?}"
        );
    }
}

/// The details of the agent's `workstation.downloaded` report for demo VERSION.
fn downloaded_details(world: &World, version: &str) -> serde_json::Value {
    let events = world.upkeep_json(&["events", "--json", "--product", "demo"]);
    events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "workstation.downloaded" && e["version"] == version)
        .unwrap_or_else(|| panic!("no downloaded event for {version}: {events}"))["details"]
        .clone()
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}/upkeep")
}

#[test]
fn a_hostile_mirror_is_passed_over_and_the_real_bytes_are_installed() {
    let hostile = HostileMirror::start(Hostility::WrongBytes);
    let dead = dead_url();
    let world = World::start(Backend::Sqlite, &["--mirror", &hostile.url, "--mirror", &dead]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = release(&world, "1.0.0", 256 * 1024);
    // Right length, wrong bytes: only the SHA-256 can tell.
    hostile.length.store(archive.len() as u64, Ordering::Relaxed);
    let agent = world.enroll_agent("ws", &world.server.url);

    let out = world.agent(&agent, &["update"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "update failed: {stderr}");
    assert_installed(&agent, &archive);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");

    // The hostile mirror was asked first, for the artifact's path, without the device token, and
    // sent all its bytes: they were read and refused, not simply never fetched.
    let requests = hostile.requests();
    assert!(!requests.is_empty(), "the hostile mirror was never asked");
    let path = format!("/{}", target_path(&agent, "1.0.0", &archive));
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, path);
    assert_no_token(&requests);
    assert_eq!(hostile.bytes_sent.load(Ordering::Relaxed), archive.len() as u64);

    // Each source passed over is named, with the reason.
    assert!(
        stderr.contains(&format!("warning: mirror {}{path} failed", hostile.url)) && stderr.contains("SHA-256"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("warning: mirror {dead}{path} failed")),
        "{stderr}"
    );
    let details = downloaded_details(&world, "1.0.0");
    assert_eq!(details["source"], "server", "{details}");
    let failed = details["mirrors_failed"].as_array().expect("mirrors_failed");
    assert_eq!(failed.len(), 2, "{details}");
    assert_eq!(failed[0]["mirror"], format!("{}{path}", hostile.url));
    assert!(
        failed[0]["reason"].as_str().is_some_and(|r| r.contains("SHA-256")),
        "{details}"
    );
    assert_eq!(failed[1]["mirror"], format!("{dead}{path}"));
    assert!(
        files_below(&agent.join("downloads")).is_empty(),
        "the hostile bytes were discarded"
    );
}

#[test]
fn an_endless_mirror_is_cut_off_at_the_signed_size() {
    let endless = HostileMirror::start(Hostility::Endless);
    let world = World::start(Backend::Sqlite, &["--mirror", &endless.url]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = release(&world, "1.0.0", 1024 * 1024);
    let agent = world.enroll_agent("ws", &world.server.url);

    let out = world.agent(&agent, &["update"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "update failed: {stderr}");
    assert_installed(&agent, &archive);
    assert!(!endless.requests().is_empty(), "the endless mirror was never asked");
    assert!(
        stderr.contains(&format!("warning: mirror {}/", endless.url)) && stderr.contains("bytes"),
        "{stderr}"
    );
    // The agent hung up once the mirror went past the signed size; what else was sent sat in
    // socket buffers.
    let sent = endless.bytes_sent.load(Ordering::Relaxed);
    let size = archive.len() as u64;
    assert!(
        sent < size + 32 * 1024 * 1024,
        "the mirror sent {sent} bytes for a {size}-byte artifact before the agent hung up"
    );
}

#[test]
fn a_good_mirror_carries_the_download_instead_of_the_server() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mirror = StaticMirror::start(tmp.path());
    // A mirror below a path, as on a CDN.
    let base = format!("{}/upkeep/", mirror.url);
    let world = World::start(Backend::Sqlite, &["--mirror", &base]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = release(&world, "1.0.0", 2 * 1024 * 1024);
    let size = archive.len() as u64;

    // Every byte the agent gets from the upkeep server goes through this proxy.
    let proxy = CuttingProxy::start(world.server.addr);
    let agent = world.enroll_agent("ws", &proxy.url());

    // Fill the mirror the way an operator would: copy the file from the server's TUF tree.
    let path = target_path(&agent, "1.0.0", &archive);
    let (status, bytes) = http_get_bytes(world.server.addr, &format!("/tuf/{path}")).expect("GET the target");
    assert_eq!(status, 200);
    assert!(bytes == archive, "the server's TUF tree serves the release");
    let file = tmp.path().join("upkeep").join(&path);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mirror folders");
    std::fs::write(&file, &bytes).expect("fill the mirror");

    proxy.bytes_down.store(0, Ordering::Relaxed);
    let out = world.agent(&agent, &["update"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "update failed: {stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_installed(&agent, &archive);

    // The artifact came from the mirror: all of it from there, and only the check-in, TUF
    // metadata and reports (a few KiB) from the server.
    let from_server = proxy.bytes_down.load(Ordering::Relaxed);
    assert!(
        from_server < 256 * 1024,
        "the server sent {from_server} bytes for a {size}-byte artifact the mirror holds"
    );
    assert_eq!(mirror.bytes_sent.load(Ordering::Relaxed), size);
    let requests = mirror.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, format!("/upkeep/{path}"));
    assert_no_token(&requests);
    let details = downloaded_details(&world, "1.0.0");
    assert_eq!(details["source"], format!("{}/upkeep/{path}", mirror.url), "{details}");
    assert!(details.get("mirrors_failed").is_none(), "{details}");
}

/// Mirror attempts never touch a cut-off server download: when the mirrors fail again, the next
/// run still resumes it with `Range`.
#[test]
fn a_cut_server_download_still_resumes_past_a_failing_mirror() {
    let hostile = HostileMirror::start(Hostility::WrongBytes);
    let world = World::start(Backend::Sqlite, &["--mirror", &hostile.url]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = release(&world, "1.0.0", 3 * 1024 * 1024);
    let size = archive.len() as u64;
    hostile.length.store(size, Ordering::Relaxed);
    let proxy = CuttingProxy::start(world.server.addr);
    let agent = world.enroll_agent("ws", &proxy.url());

    proxy.cut_after.store(1_000_000, Ordering::Relaxed);
    let cut = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&cut, "update over a connection that drops");
    assert!(stderr.contains("resume"), "{stderr}");
    let part = agent
        .join("downloads")
        .join(format!("{}.part", hex::encode(Sha256::digest(&archive))));
    let kept = std::fs::metadata(&part).expect("partial download kept").len();
    assert!(kept > 100_000 && kept < size, "kept {kept} of {size}");

    proxy.cut_after.store(0, Ordering::Relaxed);
    proxy.bytes_down.store(0, Ordering::Relaxed);
    world.agent_ok(&agent, &["update"]);
    let sent = proxy.bytes_down.load(Ordering::Relaxed);
    let rest = size - kept;
    assert!(
        sent >= rest && sent < rest + 64 * 1024,
        "sent {sent} bytes, but only {rest} were missing of {size}"
    );
    assert!(hostile.requests().len() >= 2, "the mirror was tried on both runs");
    assert_installed(&agent, &archive);
    assert_eq!(downloaded_details(&world, "1.0.0")["resumed_from"], kept);
}

/// Runs `upkeep-server serve` with `args` and `env`; it must exit (non-zero) by itself.
fn serve_must_refuse(args: &[&str], env: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let mut command = std::process::Command::new(SERVER);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(args)
        .env_remove("UPKEEP_MIRRORS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start upkeep-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("upkeep-server {args:?} {env:?} kept running instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("stderr");
    }
    assert!(!status.success(), "{args:?} {env:?}: exited with {status}");
    assert!(!data.exists(), "nothing is set up before the options are checked");
    stderr
}

#[test]
fn a_bad_mirror_url_stops_the_server_at_startup() {
    for bad in [
        "ftp://mirror.example.com/upkeep",
        "mirror.example.com/upkeep",
        "/srv/upkeep-mirror",
        "https://cdn.example.com/upkeep?token=x",
    ] {
        let stderr = serve_must_refuse(&["--mirror", "https://good.example.com/upkeep", "--mirror", bad], &[]);
        assert!(stderr.contains("--mirror") && stderr.contains(bad), "{bad}: {stderr}");
    }
    let stderr = serve_must_refuse(
        &[],
        &[(
            "UPKEEP_MIRRORS",
            "https://good.example.com/upkeep,ftp://mirror.example.com/upkeep",
        )],
    );
    assert!(
        stderr.contains("--mirror") && stderr.contains("ftp://mirror.example.com/upkeep"),
        "{stderr}"
    );
}
