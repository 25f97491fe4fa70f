//! The organization's TUF image repository, served by a running upkeep-server, checked by a stock
//! TUF client (python-tuf's `ngclient.Updater`): an approved release can be downloaded and
//! verified; one that is not approved is not listed.

use upkeep_test_support::{Backend, demo_archive, run_sql};

use crate::harness::{World, assert_failure, files_below};
use crate::on_each_backend;

const CLIENT: &str = r#"
import sys, tempfile, urllib.request
from tuf.ngclient import Updater
base, name = sys.argv[1], sys.argv[2]
# Trust on first use here; agents get the root when they enroll.
root = urllib.request.urlopen(base + "/metadata/1.root.json").read()
updater = Updater(metadata_dir=tempfile.mkdtemp(), metadata_base_url=base + "/metadata/",
                  target_base_url=base + "/targets/", target_dir=tempfile.mkdtemp(), bootstrap=root)
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    print("absent")
    sys.exit(0)
path = updater.download_target(info)
print("verified", info.length, info.custom.get("version"))
"#;

pub fn python_tuf(world: &World, name: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", CLIENT, &format!("{}/tuf/default", world.server.url), name])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python-tuf failed (pip install tuf): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn a_stock_tuf_client_verifies_approved_releases(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &demo_archive("1.0.0", 0));
    world.publish("demo", "1.1.0", &demo_archive("1.1.0", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    let listed = python_tuf(world, "demo_1.0.0_linux-x86_64.tar.gz");
    assert!(
        listed.starts_with("verified ") && listed.ends_with(" 1.0.0"),
        "{listed}"
    );
    assert_eq!(
        python_tuf(world, "demo_1.1.0_linux-x86_64.tar.gz"),
        "absent",
        "pending releases are not signed"
    );

    // Disapproving takes it out of the signed targets; approving the next one adds it.
    world.upkeep_ok(&["release", "disapprove", "demo", "1.0.0"]);
    world.upkeep_ok(&["release", "approve", "demo", "1.1.0"]);
    assert_eq!(python_tuf(world, "demo_1.0.0_linux-x86_64.tar.gz"), "absent");
    assert!(python_tuf(world, "demo_1.1.0_linux-x86_64.tar.gz").starts_with("verified "));
}

#[test]
fn a_stock_tuf_client_verifies_approved_releases_sqlite() {
    a_stock_tuf_client_verifies_approved_releases(&World::start(Backend::Sqlite, &[]).expect("sqlite"));
}

#[test]
fn a_stock_tuf_client_verifies_approved_releases_postgres() {
    match World::start(Backend::Postgres, &[]) {
        Some(world) => a_stock_tuf_client_verifies_approved_releases(&world),
        None => eprintln!(
            "PostgreSQL variant not run: set {}",
            upkeep_test_support::DATABASE_URL_ENV
        ),
    }
}

/// Also the director-lists-it-but-the-image-repository-does-not case: the director signs what
/// the (edited) database offers, and the agent still needs the signed targets to list it.
fn an_approval_that_was_not_signed_installs_nothing(world: &World) {
    let agent = world.demo_installed("ws");

    // Someone with the database, but not the signing keys, approves 1.1.0 behind upkeep's back.
    world.publish("demo", "1.1.0", &demo_archive("1.1.0", 0));
    run_sql(
        &world.server.database_url(),
        "UPDATE approvals SET state = 'approved' WHERE release_id = (SELECT id FROM releases WHERE version = '1.1.0')",
    );
    world.upkeep_ok(&["rollout", "create", "demo", "1.1.0", "--all"]);
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update the TUF targets do not list");
    // The director did list it for this workstation: only the image repository stood in the way.
    let checkin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.join("last-checkin.json")).expect("last check-in"))
            .expect("json");
    let director = checkin["response"]["director"].as_str().expect("director metadata");
    assert!(director.contains("demo_1.1.0_linux-x86_64.tar.gz"), "{director}");
    assert!(
        stderr.contains("TUF verification failed") && stderr.contains("demo_1.1.0_linux-x86_64.tar.gz"),
        "{stderr}"
    );
    assert!(
        files_below(&agent.join("downloads")).is_empty(),
        "nothing was even downloaded"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
}
on_each_backend!(an_approval_that_was_not_signed_installs_nothing);

/// A repository that stops being re-signed (a frozen mirror, or a server held back) is refused
/// once its timestamp expires, instead of serving stale approvals forever.
#[test]
fn a_frozen_repository_is_refused() {
    // Timestamps live 3 seconds, and the ticker (which would re-sign them) waits an hour.
    let world = World::start(
        Backend::Sqlite,
        &["--tuf-timestamp-lifetime", "3s", "--rollout-tick", "1h"],
    )
    .expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &demo_archive("1.0.0", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
    let agent = world.enroll_agent("ws", &world.server.url);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update from an expired repository");
    assert!(
        stderr.contains("TUF verification failed") && stderr.to_lowercase().contains("expired"),
        "{stderr}"
    );
    assert!(!agent.join("products/demo/current").exists());
}

/// Replaying older signed metadata (a mirror or a server rolled back) to an agent that has seen
/// newer is refused: TUF versions never go back.
fn replayed_metadata_is_refused(world: &World) {
    let agent = world.demo_installed("ws");
    let url = world.server.database_url();
    run_sql(&url, "CREATE TABLE saved_tuf AS SELECT * FROM tuf_files");

    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    world.agent_ok(&agent, &["update"]);

    // The old, validly signed files come back.
    run_sql(&url, "DELETE FROM tuf_files WHERE filename NOT LIKE '%.root.json'");
    run_sql(
        &url,
        "INSERT INTO tuf_files SELECT * FROM saved_tuf WHERE filename NOT LIKE '%.root.json'",
    );
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all", "--allow-downgrade"]);
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update from replayed metadata");
    assert!(
        stderr.contains("TUF verification failed") && stderr.contains("previously fetched version"),
        "{stderr}"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
}
on_each_backend!(replayed_metadata_is_refused);

/// A root rotation done right (signed by the old and the new root key) is followed by agents; a
/// "rotation" signed by a new key alone is refused.
fn root_rotation_is_followed_and_a_forged_one_refused(world: &World) {
    let agent = world.demo_installed("ws");
    let rotated = world.upkeep_json(&["keys", "rotate-root", "--json"]);
    assert_eq!(rotated["root_version"], 2);
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    world.agent_ok(&agent, &["update"]);
    assert_eq!(
        world.agent_ok(&agent, &["launch", "demo"]).trim(),
        "demo 1.0.1",
        "the agent followed root 2"
    );
    assert!(
        agent.join("tuf").read_dir().is_ok_and(|mut d| d.any(|e| e.is_ok())),
        "tough kept its metadata"
    );

    // Someone who can write the server's files but holds no root key announces root 3.
    let forged = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let (key, root) = stranger_root(3);
            upkeep_tuf::to_json(&upkeep_tuf::sign(root.clone(), &root, &[&key]).await.expect("sign")).expect("json")
        });
    let body = forged.replace('\'', "''");
    run_sql(
        &world.server.database_url(),
        &format!(
            "INSERT INTO tuf_files (organization_id, filename, body, updated_at) VALUES (1, '3.root.json', '{body}', 0)"
        ),
    );
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all", "--allow-downgrade"]);
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update under a forged root");
    assert!(
        stderr.contains("TUF verification failed") && stderr.contains("root"),
        "{stderr}"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
}
on_each_backend!(root_rotation_is_followed_and_a_forged_one_refused);

/// Metadata signed by keys the trusted root does not list is refused, however well formed.
fn metadata_signed_by_an_unknown_key_is_refused(world: &World) {
    let agent = world.demo_installed("ws");
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    // An attacker signs a complete repository listing 1.0.1 — with keys of their own.
    let files = forged_repository(&[target_entry(world, "1.0.1")], 50);
    let url = world.server.database_url();
    run_sql(&url, "DELETE FROM tuf_files WHERE filename NOT LIKE '%.root.json'");
    for (name, body) in &files {
        let body = body.replace('\'', "''");
        run_sql(
            &url,
            &format!(
                "INSERT INTO tuf_files (organization_id, filename, body, updated_at) VALUES (1, '{name}', '{body}', 0)"
            ),
        );
    }
    run_sql(
        &url,
        "UPDATE approvals SET state = 'approved' WHERE release_id = (SELECT id FROM releases WHERE version = '1.0.1')",
    );
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update under metadata signed by an unknown key");
    assert!(
        stderr.contains("TUF verification failed") && stderr.contains("threshold"),
        "{stderr}"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
}
on_each_backend!(metadata_signed_by_an_unknown_key_is_refused);

/// The targets entry of demo VERSION's artifact, as the server lists the release.
pub fn target_entry(world: &World, version: &str) -> upkeep_tuf::TargetEntry {
    let listed = world.upkeep_json(&["release", "list", "demo", "--json"]);
    let artifact = listed
        .as_array()
        .expect("releases")
        .iter()
        .find(|r| r["version"] == version)
        .map(|r| r["artifacts"][0].clone())
        .expect("the release is listed");
    let artifact: upkeep_protocol::Artifact = serde_json::from_value(artifact).expect("an artifact");
    let entry = upkeep_tuf::TargetEntry::of_artifact("demo", version, &artifact);
    assert_eq!(entry.name, format!("demo_{version}_linux-x86_64.tar.gz"));
    entry
}

/// A key of an attacker's own, and a root at `version` naming it for every role.
fn stranger_root(version: u64) -> (Vec<u8>, upkeep_tuf::schema::Root) {
    let key = upkeep_tuf::generate_key().expect("key");
    let public = upkeep_tuf::public_key(&key).expect("public").1;
    let keys = upkeep_tuf::RootKeys {
        root: public.clone(),
        targets: public.clone(),
        snapshot: public.clone(),
        timestamp: public.clone(),
        director: public,
    };
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let version = std::num::NonZeroU64::new(version).expect("version");
    (key, upkeep_tuf::root_metadata(&keys, version, later).expect("root"))
}

/// A whole repository (targets, snapshot, timestamp at `version`) listing `entries`, signed by
/// keys of an attacker's own rather than the organization's.
pub fn forged_repository(entries: &[upkeep_tuf::TargetEntry], version: u64) -> Vec<(String, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
            let v = std::num::NonZeroU64::new(version).expect("version");
            let (key, root) = stranger_root(1);
            let targets = upkeep_tuf::targets_metadata(entries, v, later).expect("targets");
            let targets =
                upkeep_tuf::to_json(&upkeep_tuf::sign(targets, &root, &[&key]).await.expect("sign")).expect("json");
            let online = upkeep_tuf::OnlineVersions {
                snapshot: v,
                timestamp: v,
                snapshot_expires: later,
                timestamp_expires: later,
            };
            let [snapshot, timestamp] = upkeep_tuf::sign_online(&root, &targets, &key, &key, online)
                .await
                .expect("online");
            vec![(format!("{v}.targets.json"), targets), snapshot, timestamp]
        })
}

fn enrollment_file(agent: &std::path::Path) -> std::path::PathBuf {
    agent.join("agent.json")
}

/// The director's answer is for one workstation: a server answering with another one's (here, an
/// agent holding the other's device token, so the server signs for that one) is refused.
fn a_director_answer_for_another_workstation_is_refused(world: &World) {
    let agent = world.demo_installed("ws-a");
    let other = world.enroll_agent("ws-b", &world.server.url);
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(enrollment_file(p)).expect("enrollment")).expect("json")
    };
    let mut mine = read(&agent);
    mine["device_token"] = read(&other)["device_token"].clone();
    std::fs::write(enrollment_file(&agent), mine.to_string()).expect("write");
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update under another workstation's director answer");
    let other_id = read(&other)["workstation_id"].as_str().expect("id").to_owned();
    assert!(
        stderr.contains("TUF verification failed") && stderr.contains(&format!("for workstation {other_id}")),
        "{stderr}"
    );
    assert!(!agent.join("products/demo/versions/1.0.1").exists());
}
on_each_backend!(a_director_answer_for_another_workstation_is_refused);

/// A director answer the agent has seen superseded cannot be replayed to it: each check-in says
/// the highest counter the agent accepted, the server signs above it, and the agent refuses an
/// answer below. Here a proxy between agent and server keeps the answer that offered 1.0.1 and,
/// after the agent has moved on to 1.0.2, plays it back.
fn a_director_counter_that_goes_back_is_refused(world: &World) {
    let agent = world.demo_installed("ws");
    let seen = || -> u64 {
        std::fs::read_to_string(agent.join("tuf/director-counter"))
            .expect("the agent kept the director counter")
            .trim()
            .parse()
            .expect("number")
    };
    let first = seen();
    assert!(first >= 1);
    let proxy = upkeep_test_support::ReplayProxy::start(world.server.addr, "/api/v1/device/checkin", "\"director\":\"");
    let mut enrollment: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(enrollment_file(&agent)).expect("enrollment")).expect("json");
    enrollment["server"] = serde_json::Value::String(proxy.url.clone());
    std::fs::write(enrollment_file(&agent), enrollment.to_string()).expect("write");
    for version in ["1.0.1", "1.0.2"] {
        world.publish("demo", version, &demo_archive(version, 0));
        world.upkeep_ok(&["release", "approve", "demo", version]);
        world.upkeep_ok(&["rollout", "create", "demo", version, "--all"]);
        world.agent_ok(&agent, &["update"]);
    }
    assert!(proxy.has_recorded(), "the proxy kept the answer that offered 1.0.1");
    assert_eq!(
        seen(),
        first + 2,
        "each answer is signed one above what the agent had accepted"
    );
    proxy.replay.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "an update under a replayed director answer");
    assert!(stderr.contains("counter went back"), "{stderr}");
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.2");
}
on_each_backend!(a_director_counter_that_goes_back_is_refused);

/// The enrollment token carries the fingerprint of the root it was made under: an agent handed
/// another root does not enroll, and one enrolled after a rotation starts from the pinned root
/// and follows the chain.
fn the_enrollment_token_pins_the_root(world: &World) {
    let token = world
        .upkeep_ok(&["enroll-token", "create", "--uses", "3"])
        .trim()
        .to_owned();
    let (_, fingerprint) = token.rsplit_once('.').expect("a fingerprint after the secret");
    assert_eq!(fingerprint.len(), 32, "{token}");

    // A different fingerprint (as if the root handed over were another one) is refused.
    let flipped = if fingerprint.starts_with('0') { "1" } else { "0" };
    let altered = format!("{}{flipped}{}", &token[..token.len() - 32], &fingerprint[1..]);
    let state = world.agent_state("ws-altered");
    let refused = world.agent(&state, &["enroll", "--server", &world.server.url, "--token", &altered]);
    let stderr = assert_failure(&refused, "enrolling under a root that does not match the token");
    assert!(stderr.contains("does not match the fingerprint"), "{stderr}");
    assert!(!state.join("agent.json").exists(), "nothing was trusted");

    // The root rotates after the token was made; the agent still gets (and checks) the pinned one.
    world.upkeep_ok(&["keys", "rotate-root"]);
    let agent = world.agent_state("ws");
    world.agent_ok(&agent, &["enroll", "--server", &world.server.url, "--token", &token]);
    let enrollment: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.join("agent.json")).expect("agent.json")).expect("json");
    let pinned: serde_json::Value =
        serde_json::from_str(enrollment["tuf_root"].as_str().expect("root")).expect("root json");
    assert_eq!(pinned["signed"]["version"], 1, "the root the token was made under");
    world.upkeep_ok(&["product", "create", "demo"]);
    world.publish("demo", "1.0.0", &demo_archive("1.0.0", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
    world.agent_ok(&agent, &["update"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
}
on_each_backend!(the_enrollment_token_pins_the_root);
