//! The install pipeline with the real agent: session probe and `--wait`, backups, hooks, health
//! checks, rollback for both recipes, crash recovery at every step, and `requires`.

use std::path::Path;

use upkeep_test_support::{Backend, demo_archive, tar_gz};

use crate::harness::{World, assert_failure, wait_for};
use crate::on_each_backend;

fn current(agent: &Path) -> Option<String> {
    std::fs::read_link(agent.join("products/demo/current"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn rollout_report(world: &World, id: &str) -> serde_json::Value {
    world.upkeep_json(&["rollout", "status", id, "--json"])
}

fn roll_out(world: &World, version: &str) -> String {
    let report = world.upkeep_json(&["rollout", "create", "demo", version, "--all", "--json"]);
    report["rollout"]["id"].as_i64().expect("id").to_string()
}

fn manifest(extra: &str) -> String {
    format!("launch = \"bin/demo\"\n{extra}")
}

fn sessions_block_the_install_until_they_end(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    let sessions = world.tmp.path().join("sessions.txt");
    std::fs::write(&sessions, "alice on terminal 3\n").expect("sessions");
    let toml = manifest(&format!(
        "[session_probe]\ncommand = [\"sh\", \"-c\", \"cat {} 2>/dev/null || true\"]\ntimeout = \"10s\"\n",
        sessions.display()
    ));
    world.publish_with_manifest("demo", "1.0.0", "demo.tar.gz", &demo_archive("1.0.0", 0), &toml);
    let id = roll_out(world, "1.0.0");
    let agent = world.enroll_agent("ws", &world.server.url);

    let refused = world.agent(&agent, &["update"]);
    let stderr = assert_failure(&refused, "update with an open session");
    assert!(stderr.contains("alice on terminal 3"), "{stderr}");
    assert_eq!(current(&agent), None);
    let report = rollout_report(world, &id);
    assert_eq!(report["counts"]["waiting_for_sessions"], 1, "{report}");
    assert_eq!(report["workstations"][0]["error_code"], "sessions_open");

    // With --wait it proceeds as soon as the session ends.
    let waiting = world
        .agent_command(&agent, &["update", "--wait", "30s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("update --wait");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(current(&agent), None, "installed while the session was open");
    std::fs::remove_file(&sessions).expect("end the session");
    let status = waiting.wait_with_output().expect("wait").status;
    assert!(status.success(), "{status:?}");
    assert_eq!(current(&agent).as_deref(), Some("1.0.0"));
}
on_each_backend!(sessions_block_the_install_until_they_end);

fn backups_gate_the_install(world: &World) {
    let agent = world.demo_installed("ws");

    // A backup hook that fails, and one that leaves an empty file: nothing changes.
    for (version, hook) in [("1.0.1", "exit 4"), ("1.0.2", "touch {backup_dir}/empty.bak")] {
        let toml = manifest(&format!("[hooks.backup]\ncommand = [\"sh\", \"-c\", \"{hook}\"]\n"));
        world.publish_with_manifest("demo", version, "demo.tar.gz", &demo_archive(version, 0), &toml);
        let id = roll_out(world, version);
        let stderr = assert_failure(&world.agent(&agent, &["update"]), "update with a failing backup");
        assert!(stderr.contains("backup failed"), "{stderr}");
        assert_eq!(current(&agent).as_deref(), Some("1.0.0"));
        assert!(!agent.join("products/demo/versions").join(version).exists());
        assert_eq!(rollout_report(world, &id)["counts"]["backup_failed"], 1);
    }

    // A working backup is recorded with its size and SHA-256, and shown at the next launch.
    let toml = manifest(
        "[hooks.backup]\ncommand = [\"sh\", \"-c\", \"echo all companies > {backup_dir}/erp-{previous_version}.bak\"]\n",
    );
    world.publish_with_manifest("demo", "1.0.3", "demo.tar.gz", &demo_archive("1.0.3", 0), &toml);
    roll_out(world, "1.0.3");
    world.agent_ok(&agent, &["update"]);
    let backup = agent.join("backups/demo/erp-1.0.0.bak");
    assert_eq!(
        std::fs::read_to_string(&backup).expect("backup file"),
        "all companies\n"
    );
    let events = world.upkeep_json(&["events", "--json", "--type", "workstation.installed"]);
    let last = events
        .as_array()
        .and_then(|e| e.last())
        .expect("installed event")
        .clone();
    assert_eq!(last["details"]["backup"]["path"], backup.display().to_string());
    assert_eq!(last["details"]["backup"]["size"], 14);
    assert_eq!(last["details"]["backup"]["sha256"].as_str().map(str::len), Some(64));
    let launched = world.agent(&agent, &["launch", "demo"]);
    assert!(
        String::from_utf8_lossy(&launched.stderr).contains("Backup taken before the update"),
        "reminder shown"
    );
    let again = world.agent(&agent, &["launch", "demo"]);
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("Backup taken"),
        "only once"
    );
}
on_each_backend!(backups_gate_the_install);

fn failed_health_checks_roll_back_archives(world: &World) {
    let agent = world.demo_installed("ws");

    let toml = manifest(
        "[health_check]\ncommand = [\"sh\", \"-c\", \"{install_dir}/bin/demo | grep -q healthy\"]\n[hooks.pre_install]\ncommand = [\"true\"]\n",
    );
    world.publish_with_manifest("demo", "1.1.0", "demo.tar.gz", &demo_archive("1.1.0", 0), &toml);
    let id = roll_out(world, "1.1.0");
    let stderr = assert_failure(&world.agent(&agent, &["update"]), "update with a failing health check");
    assert!(stderr.contains("rolled back"), "{stderr}");
    assert_eq!(current(&agent).as_deref(), Some("1.0.0"));
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
    let report = rollout_report(world, &id);
    assert_eq!(report["counts"]["rolled_back"], 1, "{report}");
    assert_eq!(report["workstations"][0]["error_code"], "hook_failed");
}
on_each_backend!(failed_health_checks_roll_back_archives);

fn failed_archive_installs_roll_back(world: &World) {
    let agent = world.demo_installed("ws");
    world.publish_with_manifest("demo", "1.2.0", "demo.tar.gz", &demo_archive("1.2.0", 0), &manifest(""));
    let id = roll_out(world, "1.2.0");
    // The version folder cannot be made (a file stands in its place): the install step fails.
    std::fs::write(agent.join("products/demo/versions/1.2.0"), b"in the way").expect("obstacle");
    let stderr = assert_failure(
        &world.agent(&agent, &["update"]),
        "an install that cannot write its folder",
    );
    assert!(
        stderr.contains("install failed") && stderr.contains("rolled back"),
        "{stderr}"
    );
    assert_eq!(current(&agent).as_deref(), Some("1.0.0"));
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
    assert_eq!(rollout_report(world, &id)["counts"]["rolled_back"], 1);
}
on_each_backend!(failed_archive_installs_roll_back);

#[test]
fn install_now_wakes_the_daemon() {
    let world = World::start(Backend::Sqlite, &[]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "crm-server", "--kind", "server"]);
    world.publish_with_manifest(
        "crm-server",
        "5.3.1",
        "crm.tar.gz",
        &tar_gz(&[("bin/crm", b"#!/bin/sh\necho crm\n", 0o755)]),
        "launch = \"bin/crm\"\n",
    );
    let agent = world.enroll_agent("crm-host", &world.server.url);
    let host = world.workstation_id(&agent);
    let mut daemon = world
        .agent_command(&agent, &["daemon", "--interval", "1h"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    let checked_in = || world.upkeep_json(&["workstation", "show", &host, "--json"])["last_checkin_at"].is_string();
    wait_for("the daemon's first round", 20, || checked_in().then_some(()));
    let started = std::time::Instant::now();
    world.upkeep_ok(&[
        "rollout",
        "create",
        "crm-server",
        "5.3.1",
        "--workstation",
        &host,
        "--now",
    ]);
    wait_for("the install-now update", 20, || {
        agent.join("products/crm-server/versions/5.3.1").exists().then_some(())
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "woken, not at the next hourly check-in"
    );
}

/// An installer (a shell script as the artifact) that writes VERSION into the install folder, or
/// fails when told to.
fn installer(version: &str, exit: i32) -> Vec<u8> {
    format!("#!/bin/sh\nset -e\nmkdir -p \"$1/bin\"\nprintf '#!/bin/sh\\necho \"demo {version}\"\\n' > \"$1/bin/demo\"\nchmod +x \"$1/bin/demo\"\necho {version} > \"$1/VERSION\"\nexit {exit}\n").into_bytes()
}

fn command_installs_are_snapshotted_and_restored(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    let install_dir = world.tmp.path().join("opt-demo");
    let toml = |health: &str| {
        format!(
            "recipe = \"command\"\nlaunch = \"bin/demo\"\n[installer]\ncommand = [\"sh\", \"{{artifact}}\", \"{{install_dir}}\"]\ninstall_dir = \"{}\"\nexit_codes = {{ 100 = \"reboot_required\" }}\n{health}",
            install_dir.display()
        )
    };
    world.publish_with_manifest("demo", "1.0.0", "install.sh", &installer("1.0.0", 100), &toml(""));
    roll_out(world, "1.0.0");
    let agent = world.enroll_agent("ws", &world.server.url);
    world.agent_ok(&agent, &["update"]);
    assert_eq!(
        std::fs::read_to_string(install_dir.join("VERSION"))
            .expect("installed")
            .trim(),
        "1.0.0"
    );
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");

    // A failing installer and a failing health check both put the old folder back.
    for (version, exit, health) in [
        ("1.1.0", 1, ""),
        ("1.2.0", 0, "[health_check]\ncommand = [\"false\"]\n"),
    ] {
        world.publish_with_manifest("demo", version, "install.sh", &installer(version, exit), &toml(health));
        let id = roll_out(world, version);
        let stderr = assert_failure(&world.agent(&agent, &["update"]), "a failing command install");
        assert!(stderr.contains("rolled back"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(install_dir.join("VERSION"))
                .expect("restored")
                .trim(),
            "1.0.0"
        );
        assert_eq!(rollout_report(world, &id)["counts"]["rolled_back"], 1);
        assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
    }

    // A good update, then back on purpose: the folder as it was before it.
    world.publish_with_manifest("demo", "1.3.0", "install.sh", &installer("1.3.0", 0), &toml(""));
    roll_out(world, "1.3.0");
    world.agent_ok(&agent, &["update"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.3.0");
    let back = world.agent_ok(&agent, &["rollback", "demo"]);
    assert!(back.contains("from 1.3.0 to 1.0.0"), "{back}");
    assert_eq!(
        std::fs::read_to_string(install_dir.join("VERSION"))
            .expect("restored")
            .trim(),
        "1.0.0"
    );
    let again = assert_failure(&world.agent(&agent, &["rollback", "demo"]), "a second rollback");
    assert!(again.contains("no earlier version"), "{again}");
}
on_each_backend!(command_installs_are_snapshotted_and_restored);

#[test]
fn a_crash_at_any_step_leaves_one_whole_version() {
    let world = World::start(Backend::Sqlite, &[]).expect("sqlite");
    let agent = world.demo_installed("ws");
    let hooks = "[session_probe]\ncommand = [\"true\"]\n[hooks.backup]\ncommand = [\"sh\", \"-c\", \"echo x > {backup_dir}/b-{version}\"]\n\
                 [hooks.pre_install]\ncommand = [\"true\"]\n[hooks.post_install]\ncommand = [\"true\"]\n[health_check]\ncommand = [\"{install_dir}/bin/demo\"]\n";
    world.publish_with_manifest(
        "demo",
        "1.0.1",
        "demo.tar.gz",
        &demo_archive("1.0.1", 0),
        &manifest(hooks),
    );
    roll_out(&world, "1.0.1");

    for step in [
        "sessions",
        "backup",
        "pre_install",
        "install",
        "health_check",
        "post_install",
    ] {
        for phase in ["started", "finished"] {
            let at = format!("{step}:{phase}");
            let crashed = world
                .agent_command(&agent, &["update"])
                .env("UPKEEP_AGENT_CRASH_AT", &at)
                .output()
                .expect("update");
            assert!(!crashed.status.success(), "{at}: the agent was supposed to die");
            assert!(
                agent.join("products/demo/journal.json").exists(),
                "{at}: no journal left behind"
            );
            // The next start finds the old version whole and working…
            assert_eq!(
                world.agent_ok(&agent, &["launch", "demo"]).trim(),
                "demo 1.0.0",
                "after a crash at {at}"
            );
            assert!(
                !agent.join("products/demo/journal.json").exists(),
                "{at}: recovery left the journal"
            );
            // …and the update then goes through.
            world.agent_ok(&agent, &["update"]);
            assert_eq!(
                world.agent_ok(&agent, &["launch", "demo"]).trim(),
                "demo 1.0.1",
                "update after a crash at {at}"
            );
            let back = world.agent_ok(&agent, &["rollback", "demo"]);
            assert!(back.contains("rolled back from 1.0.1 to 1.0.0"), "{back}");
        }
    }
    let events = world.upkeep_json(&["events", "--json", "--limit", "5000"]);
    let interrupted = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["error_code"] == "interrupted")
        .count();
    assert_eq!(interrupted, 12, "every interruption is reported");
}

fn requirements_hold_updates_back(world: &World) {
    world.upkeep_ok(&["product", "create", "demo"]);
    world.upkeep_ok(&["product", "create", "crm-server", "--kind", "server"]);
    world.publish_with_manifest(
        "demo",
        "2.0.0",
        "demo.tar.gz",
        &demo_archive("2.0.0", 0),
        &manifest("[requires]\ncrm-server = \">=5.3.1\"\n"),
    );
    roll_out(world, "2.0.0");
    let agent = world.enroll_agent("ws", &world.server.url);
    let check: serde_json::Value = serde_json::from_str(&world.agent_ok(&agent, &["check", "--json"])).expect("check");
    let demo = check["instructions"]
        .as_array()
        .expect("instructions")
        .iter()
        .find(|i| i["product"] == "demo")
        .expect("demo")
        .clone();
    assert!(demo["update"].is_null(), "{demo}");
    assert_eq!(demo["held_back"], "needs crm-server >=5.3.1; it is not installed");
    assert!(world.agent_ok(&agent, &["check"]).contains("held back"));

    let server = tar_gz(&[("bin/crm", b"#!/bin/sh\necho crm\n", 0o755)]);
    world.publish_with_manifest("crm-server", "5.3.1", "crm.tar.gz", &server, "launch = \"bin/crm\"\n");
    world.upkeep_ok(&["rollout", "create", "crm-server", "5.3.1", "--all"]);
    world.agent_ok(&agent, &["update", "crm-server"]);
    wait_for("demo to be offered", 10, || {
        let check: serde_json::Value = serde_json::from_str(&world.agent_ok(&agent, &["check", "--json"])).ok()?;
        check["instructions"]
            .as_array()?
            .iter()
            .any(|i| i["product"] == "demo" && i["update"]["version"] == "2.0.0")
            .then_some(())
    });
}
on_each_backend!(requirements_hold_updates_back);

#[test]
fn manifests_are_checked_at_upload() {
    let world = World::start(Backend::Sqlite, &[]).expect("sqlite");
    world.upkeep_ok(&["product", "create", "demo"]);
    let bad = world.tmp.path().join("bad.toml");
    let archive = world.tmp.path().join("demo.tar.gz");
    std::fs::write(&archive, demo_archive("1.0.0", 0)).expect("archive");
    for (toml, says) in [
        ("lunch = \"bin/demo\"", "unknown field"),
        (
            "[hooks.backup]\ncommand = [\"sh\", \"{backupdir}\"]",
            "unknown placeholder",
        ),
        ("[requires]\ncrm = \"newest\"", "requires.crm"),
    ] {
        std::fs::write(&bad, toml).expect("manifest");
        let e = assert_failure(
            &world.upkeep(&[
                "release",
                "upload",
                "demo",
                "1.0.0",
                archive.to_str().expect("utf-8"),
                "--platform",
                "linux-x86_64",
                "--manifest",
                bad.to_str().expect("utf-8"),
            ]),
            toml,
        );
        assert!(e.contains(says) && e.contains("invalid_manifest"), "{toml}: {e}");
    }
    assert_eq!(
        world
            .upkeep_json(&["release", "list", "demo", "--json"])
            .as_array()
            .map(Vec::len),
        Some(0)
    );
}
