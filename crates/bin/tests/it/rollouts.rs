//! Rollouts that IT administrators can trust: mandatory and optional updates, deadlines in their
//! three time models, scheduled starts, waves, the automatic pause, pause/resume/cancel,
//! overlapping rollouts, maintenance windows, the daemon, the report and the event log.

use std::collections::BTreeMap;
use std::io::BufRead;

use upkeep_test_support::{Backend, demo_archive};

use crate::api::{Api, Device};
use crate::harness::{World, assert_failure, in_seconds, wait_for};
use crate::on_each_backend;

/// Publishes and approves `demo` at each version.
fn releases(world: &World, versions: &[&str]) {
    world.upkeep_ok(&["product", "create", "demo"]);
    for version in versions {
        world.publish("demo", version, &demo_archive(version, 0));
        world.upkeep_ok(&["release", "approve", "demo", version]);
    }
}

fn rollout(world: &World, args: &[&str]) -> i64 {
    let mut full = vec!["rollout", "create"];
    full.extend_from_slice(args);
    full.push("--json");
    let report = world.upkeep_json(&full);
    report["rollout"]["id"].as_i64().expect("rollout id")
}

fn report(world: &World, id: i64) -> serde_json::Value {
    world.upkeep_json(&["rollout", "status", &id.to_string(), "--json"])
}

fn check(world: &World, agent: &std::path::Path) -> serde_json::Value {
    let body: serde_json::Value =
        serde_json::from_str(&world.agent_ok(agent, &["check", "--json"])).expect("check JSON");
    body["instructions"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Enrolls `n` simulated workstations (device API, no agent processes), `groups` each.
fn devices(api: &Api, n: usize, groups: &[&str]) -> Vec<Device> {
    let token = api.enroll_token(u32::try_from(n).expect("count"));
    let (http, base) = (api.http().clone(), api.base.clone());
    api.block_on(async {
        let mut all = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
            let batch = chunk.iter().map(|i| {
                let (http, base, token) = (&http, &base, &token);
                async move { Device::enroll(http, base, token, &format!("host-{i:05}"), groups).await }
            });
            all.extend(futures::future::join_all(batch).await);
        }
        all
    })
}

fn offered_version(instructions: &[serde_json::Value]) -> Option<String> {
    instructions
        .first()
        .and_then(|i| i["update"]["version"].as_str())
        .map(str::to_owned)
}

fn mandatory_optional_and_deadlines(world: &World) {
    releases(world, &["1.0.0", "1.0.1", "1.0.2"]);
    rollout(world, &["demo", "1.0.0", "--all"]);
    let agent = world.enroll_agent("ws", &world.server.url);

    // Optional: offered, and the program starts with the old (here: no) version kept working.
    let offered = check(world, &agent);
    assert_eq!(offered["action"], "offered");
    world.agent_ok(&agent, &["update"]);

    // Optional with a deadline a few seconds away: launch starts 1.0.0 and says when 1.0.1 is due.
    let id = rollout(world, &["demo", "1.0.1", "--all", "--deadline", &in_seconds(4)]);
    let before = check(world, &agent);
    assert_eq!(before["action"], "offered", "{before}");
    assert!(
        before["update"]["deadline"].is_string(),
        "the offer carries its deadline: {before}"
    );
    let launched = world.agent(&agent, &["launch", "demo"]);
    assert_eq!(String::from_utf8_lossy(&launched.stdout).trim(), "demo 1.0.0");
    assert!(
        String::from_utf8_lossy(&launched.stderr).contains("required from"),
        "countdown shown"
    );

    // Once it passes, the offer is a requirement and launch installs first.
    let after = wait_for("the deadline to pass", 20, || {
        let i = check(world, &agent);
        (i["action"] == "required").then_some(i)
    });
    assert_eq!(after["update"]["required_reason"], "deadline_passed");
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.1");
    assert_eq!(report(world, id)["counts"]["installed"], 1);

    // Mandatory: required at once; `launch --json` tells a script it may not start.
    rollout(world, &["demo", "1.0.2", "--all", "--mandatory"]);
    let required = check(world, &agent);
    assert_eq!(
        (
            required["action"].as_str(),
            required["update"]["required_reason"].as_str()
        ),
        (Some("required"), Some("mandatory"))
    );
    let decision: serde_json::Value =
        serde_json::from_str(&world.agent_ok(&agent, &["launch", "demo", "--json"])).expect("JSON");
    assert_eq!(decision["allowed"], false);
    assert_eq!(decision["required_update"]["version"], "1.0.2");
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.2");
}
on_each_backend!(mandatory_optional_and_deadlines, ["--rollout-tick", "200ms"]);

fn deadline_time_models(world: &World) {
    releases(world, &["1.0.0", "1.1.0"]);
    let api = Api::login(world);
    let devices = devices(&api, 1, &[]);
    let device = &devices[0];

    // Counted from the first offer: seven days from now for this workstation.
    rollout(world, &["demo", "1.0.0", "--all", "--deadline-after", "7d"]);
    let offer = device.checkin(&api, &[]);
    let deadline: jiff::Timestamp = offer[0]["update"]["deadline"]
        .as_str()
        .expect("deadline")
        .parse()
        .expect("RFC 3339");
    let in_days = (deadline - jiff::Timestamp::now())
        .total(jiff::Unit::Hour)
        .expect("hours")
        / 24.0;
    assert!(
        (6.99..=7.0).contains(&in_days),
        "deadline {deadline} is {in_days} days away"
    );
    // The first offer is what counts: checking in again does not move it.
    assert_eq!(
        device.checkin(&api, &[])[0]["update"]["deadline"],
        offer[0]["update"]["deadline"]
    );

    // A wall-clock deadline one hour from now (read as UTC) has passed for a workstation two hours
    // east of UTC, and not for one in UTC.
    let local = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_zoned(jiff::tz::TimeZone::UTC);
    let local = local.strftime("%Y-%m-%dT%H:%M").to_string();
    rollout(world, &["demo", "1.1.0", "--all", "--deadline-local", &local]);
    let body = |offset: i32| serde_json::json!({ "hostname": "h", "os": "linux", "arch": "x86_64", "agent_version": "0.1.0", "installed": [], "utc_offset_minutes": offset });
    let (_, utc) = api.post("/api/v1/device/checkin", Some(&device.token), &body(0));
    let (_, east) = api.post("/api/v1/device/checkin", Some(&device.token), &body(120));
    assert_eq!(utc["instructions"][0]["action"], "offered", "{utc}");
    assert_eq!(east["instructions"][0]["action"], "required", "{east}");
    assert_eq!(east["instructions"][0]["update"]["required_reason"], "deadline_passed");
}
on_each_backend!(deadline_time_models);

fn scheduled_rollout_waits_for_its_start(world: &World) {
    releases(world, &["1.0.0"]);
    let api = Api::login(world);
    let device = devices(&api, 1, &[]).remove(0);
    let id = rollout(world, &["demo", "1.0.0", "--all", "--start", &in_seconds(3)]);
    assert_eq!(report(world, id)["rollout"]["state"], "scheduled");
    assert!(device.checkin(&api, &[]).is_empty(), "nothing before the start");
    wait_for("the start", 20, || offered_version(&device.checkin(&api, &[])));
    wait_for("the state to become active", 10, || {
        (report(world, id)["rollout"]["state"] == "active").then_some(())
    });
}
on_each_backend!(scheduled_rollout_waits_for_its_start, ["--rollout-tick", "200ms"]);

/// Workstation id → 1-based wave, from the report.
fn waves_by_workstation(report: &serde_json::Value) -> BTreeMap<String, u64> {
    report["workstations"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|w| {
            (
                w["workstation_id"].as_str().expect("id").to_owned(),
                w["wave"].as_u64().expect("wave"),
            )
        })
        .collect()
}

fn waves_open_in_order(world: &World) {
    releases(world, &["1.0.0"]);
    let api = Api::login(world);
    let fleet = devices(&api, 40, &[]);
    let id = rollout(
        world,
        &[
            "demo",
            "1.0.0",
            "--all",
            "--waves",
            "10,50,100",
            "--soak",
            "2s",
            "--max-failure-ratio",
            "0.5",
        ],
    );
    let first = report(world, id);
    assert_eq!(first["rollout"]["opened_waves"], 1);
    let waves = waves_by_workstation(&first);
    assert_eq!(waves.len(), 40);
    let mut sizes = [0; 3];
    for wave in waves.values() {
        sizes[usize::try_from(*wave).expect("wave") - 1] += 1;
    }
    assert_eq!(sizes, [4, 16, 20], "10% / 50% / 100% of 40 machines");

    for opened in 1..=3u64 {
        wait_for(&format!("{opened} open waves"), 30, || {
            (report(world, id)["rollout"]["opened_waves"] == opened).then_some(())
        });
        for device in &fleet {
            let offered = offered_version(&device.checkin(&api, &[])).is_some();
            let wave = waves[&device.id];
            // The next wave may open between the two reads; never may a later one be early.
            if wave <= opened {
                assert!(
                    offered || wave == opened + 1,
                    "{} in wave {wave} not offered with {opened} open",
                    device.id
                );
            } else if wave > opened + 1 {
                assert!(!offered, "{} in wave {wave} offered with only {opened} open", device.id);
            }
        }
    }
    let events = world.upkeep_json(&[
        "events",
        "--json",
        "--rollout",
        &id.to_string(),
        "--type",
        "rollout.wave_opened",
    ]);
    let opened: Vec<u64> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["details"]["wave"].as_u64())
        .collect();
    assert_eq!(opened, [2, 3]);
}
on_each_backend!(waves_open_in_order, ["--rollout-tick", "200ms"]);

fn failures_pause_the_rollout(world: &World) {
    releases(world, &["1.0.0"]);
    let api = Api::login(world);
    let fleet = devices(&api, 30, &[]);
    let id = rollout(
        world,
        &[
            "demo",
            "1.0.0",
            "--all",
            "--waves",
            "50,100",
            "--soak",
            "1h",
            "--max-failure-ratio",
            "0.2",
            "--min-sample",
            "2",
        ],
    );
    let waves = waves_by_workstation(&report(world, id));
    let first: Vec<&Device> = fleet.iter().filter(|d| waves[&d.id] == 1).collect();
    assert_eq!(first.len(), 15, "half of 30 machines");
    for device in &first {
        assert!(offered_version(&device.checkin(&api, &[])).is_some());
    }
    // One failure alone is below the minimum sample: no pause.
    first[0].report(&api, id, "1.0.0", "failed");
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(report(world, id)["rollout"]["state"], "active");
    first[1].report(&api, id, "1.0.0", "failed");
    let paused = wait_for("the automatic pause", 20, || {
        let r = report(world, id);
        (r["rollout"]["state"] == "paused").then_some(r)
    });
    assert!(
        paused["rollout"]["state_reason"]
            .as_str()
            .unwrap_or("")
            .contains("paused itself"),
        "{paused}"
    );
    assert!(
        first[2]
            .checkin(&api, &[])
            .first()
            .is_none_or(|i| i["update"].is_null()),
        "nothing further is offered"
    );
    let events = world.upkeep_json(&[
        "events",
        "--json",
        "--rollout",
        &id.to_string(),
        "--type",
        "rollout.paused",
    ]);
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events[0]["actor"], "upkeep");

    // Resuming acknowledges the failures so far: it stays active and delivers again.
    world.upkeep_ok(&["rollout", "resume", &id.to_string()]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(report(world, id)["rollout"]["state"], "active");
    assert!(offered_version(&first[2].checkin(&api, &[])).is_some());
}
on_each_backend!(failures_pause_the_rollout, ["--rollout-tick", "200ms"]);

fn pause_resume_cancel(world: &World) {
    releases(world, &["1.0.0"]);
    let api = Api::login(world);
    let device = devices(&api, 1, &[]).remove(0);
    let id = rollout(world, &["demo", "1.0.0", "--all"]).to_string();
    assert!(offered_version(&device.checkin(&api, &[])).is_some());
    world.upkeep_ok(&["rollout", "pause", &id, "--reason", "support calls"]);
    assert_eq!(
        offered_version(&device.checkin(&api, &[])),
        None,
        "paused rollouts deliver nothing"
    );
    world.upkeep_ok(&["rollout", "resume", &id]);
    assert_eq!(offered_version(&device.checkin(&api, &[])).as_deref(), Some("1.0.0"));
    world.upkeep_ok(&["rollout", "cancel", &id]);
    assert_eq!(offered_version(&device.checkin(&api, &[])), None);
    let again = assert_failure(&world.upkeep(&["rollout", "resume", &id]), "resume a cancelled rollout");
    assert!(again.contains("cancelled"), "{again}");
    let kinds: Vec<String> = world
        .upkeep_json(&["events", "--json", "--rollout", &id, "--type", "rollout"])
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds,
        [
            "rollout.created",
            "rollout.paused",
            "rollout.resumed",
            "rollout.cancelled"
        ]
    );
}
on_each_backend!(pause_resume_cancel);

fn overlapping_rollouts_follow_the_rule(world: &World) {
    releases(world, &["1.0.0", "1.1.0", "1.2.0", "1.3.0"]);
    let api = Api::login(world);
    let lab = devices(&api, 1, &["lab"]).remove(0);
    let other = devices(&api, 1, &[]).remove(0);

    // Newest start wins, whatever the targeting.
    rollout(world, &["demo", "1.1.0", "--workstation", &lab.id]);
    rollout(world, &["demo", "1.2.0", "--group", "lab"]);
    assert_eq!(offered_version(&lab.checkin(&api, &[])).as_deref(), Some("1.2.0"));
    assert!(other.checkin(&api, &[]).is_empty(), "not targeted");

    // The newest rollout offers an older version: no downgrade for a newer install…
    rollout(world, &["demo", "1.0.0", "--all"]);
    assert_eq!(offered_version(&lab.checkin(&api, &[("demo", "1.2.0")])), None);
    assert_eq!(offered_version(&other.checkin(&api, &[])).as_deref(), Some("1.0.0"));
    // …unless the rollout allows it.
    rollout(world, &["demo", "1.0.0", "--workstation", &lab.id, "--allow-downgrade"]);
    assert_eq!(
        offered_version(&lab.checkin(&api, &[("demo", "1.2.0")])).as_deref(),
        Some("1.0.0")
    );

    // At an equal start, an explicit workstation list beats a group.
    let start = in_seconds(2);
    rollout(world, &["demo", "1.3.0", "--group", "lab", "--start", &start]);
    rollout(world, &["demo", "1.1.0", "--workstation", &lab.id, "--start", &start]);
    let version = wait_for("the scheduled rollouts", 20, || {
        offered_version(&lab.checkin(&api, &[])).filter(|v| v != "1.0.0")
    });
    assert_eq!(version, "1.1.0");
}
on_each_backend!(overlapping_rollouts_follow_the_rule);

fn dry_run_changes_nothing(world: &World) {
    releases(world, &["1.0.0", "1.1.0"]);
    let api = Api::login(world);
    let fleet = devices(&api, 4, &["lab"]);
    fleet[0].checkin(&api, &[("demo", "1.1.0")]);
    fleet[1].checkin(&api, &[("demo", "1.0.0")]);
    world.upkeep_ok(&["release", "disapprove", "demo", "1.0.0"]);
    let preview = world.upkeep_json(&[
        "rollout",
        "create",
        "demo",
        "1.1.0",
        "--group",
        "lab",
        "--mandatory",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(preview["targeted"], 4);
    let outcomes = &preview["outcomes"];
    assert_eq!(
        (
            outcomes["up_to_date"].as_u64(),
            outcomes["blocked"].as_u64(),
            outcomes["required"].as_u64(),
            outcomes["offered"].as_u64()
        ),
        (Some(1), Some(1), Some(2), Some(0)),
        "{preview}"
    );
    let text = world.upkeep_ok(&["rollout", "create", "demo", "1.1.0", "--group", "lab", "--dry-run"]);
    assert!(text.contains("Nothing was changed"), "{text}");
    assert_eq!(
        world
            .upkeep_json(&["rollout", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert!(fleet[2].checkin(&api, &[]).is_empty());
}
on_each_backend!(dry_run_changes_nothing);

fn report_counts_match_the_agents(world: &World) {
    releases(world, &["1.0.0"]);
    let agents: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| world.enroll_agent(n, &world.server.url))
        .collect();
    let id = rollout(world, &["demo", "1.0.0", "--all"]);
    assert_eq!(report(world, id)["counts"]["pending"], 3);
    world.agent_ok(&agents[0], &["update"]);
    world.agent_ok(&agents[1], &["update"]);
    world.agent_ok(&agents[2], &["check"]);
    let r = report(world, id);
    assert_eq!(
        (
            r["counts"]["installed"].as_u64(),
            r["counts"]["notified"].as_u64(),
            r["counts"]["pending"].as_u64()
        ),
        (Some(2), Some(1), Some(0)),
        "{r}"
    );
    for agent in &agents {
        let status: serde_json::Value =
            serde_json::from_str(&world.agent_ok(agent, &["status", "--json"])).expect("status");
        let id = status["workstation_id"].as_str().expect("id");
        let row = r["workstations"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|w| w["workstation_id"] == id)
            .expect("row")
            .clone();
        let installed = status["products"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["version"] == "1.0.0"));
        assert_eq!(row["status"] == "installed", installed, "{row} vs {status}");
    }
}
on_each_backend!(report_counts_match_the_agents);

fn maintenance_window_defers_the_install(world: &World) {
    releases(world, &["1.0.0"]);
    let agent = world.enroll_agent("ws", &world.server.url);
    // A window on a day three days from today (UTC) is closed now.
    let day = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(72))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%a")
        .to_string();
    let id = rollout(
        world,
        &[
            "demo",
            "1.0.0",
            "--all",
            "--mandatory",
            "--maintenance-window",
            &format!("{day} 01:00-02:00"),
        ],
    );
    let instruction = check(world, &agent);
    assert_eq!(instruction["update"]["install_window"]["open"], false, "{instruction}");
    let out = world.agent_ok(&agent, &["update"]);
    assert!(out.contains("maintenance window"), "{out}");
    assert!(
        !agent.join("products/demo/current").exists(),
        "nothing installed outside the window"
    );
    assert_eq!(report(world, id)["counts"]["deferred"], 1);
}
on_each_backend!(maintenance_window_defers_the_install);

#[test]
fn daemon_installs_required_updates() {
    // Check-in times stored to the second, so the test sees the daemon's next check-ins.
    let world = World::start(Backend::Sqlite, &["--last-checkin-precision", "1s"]).expect("sqlite");
    releases(&world, &["1.0.0", "1.0.1"]);
    let agent = world.enroll_agent("ws", &world.server.url);
    rollout(&world, &["demo", "1.0.0", "--all", "--mandatory"]);
    let mut daemon = world
        .agent_command(&agent, &["daemon", "--interval", "1s"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    wait_for("the daemon to install 1.0.0", 30, || {
        agent.join("products/demo/versions/1.0.0").exists().then_some(())
    });
    // Optional updates are the user's choice: the daemon leaves them.
    rollout(&world, &["demo", "1.0.1", "--all"]);
    let workstation = world.workstation_id(&agent);
    let checkins = || {
        world.upkeep_json(&["workstation", "show", &workstation, "--json"])["last_checkin_at"]
            .as_str()
            .map(str::to_owned)
    };
    let seen = checkins();
    wait_for("two more check-ins", 20, || (checkins() != seen).then_some(()));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        !agent.join("products/demo/versions/1.0.1").exists(),
        "the daemon installed an optional update"
    );
}

#[test]
fn ten_thousand_workstations_fall_into_their_waves() {
    let world = World::start(Backend::Sqlite, &[]).expect("sqlite");
    releases(&world, &["1.0.0"]);
    let api = Api::login(&world);
    let fleet = devices(&api, 10_000, &[]);
    assert_eq!(fleet.len(), 10_000);
    let id = rollout(
        &world,
        &[
            "demo",
            "1.0.0",
            "--all",
            "--waves",
            "5,25,100",
            "--soak",
            "1h",
            "--max-failure-ratio",
            "0.1",
        ],
    );
    let r = report(&world, id);
    let sizes: Vec<u64> = r["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| w["workstations"].as_u64().expect("n"))
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 10_000);
    for (size, share) in sizes.iter().zip([5u64, 20, 75]) {
        let expected = share * 100;
        assert!(
            size.abs_diff(expected) <= 100,
            "wave sizes {sizes:?}: {size} is more than 1 point from {share}%"
        );
    }
    // The waves are cut over the fleet targeted at creation, so the shares are exact.
    assert_eq!(sizes, [500, 2000, 7500]);
}

#[test]
fn events_filter_and_follow() {
    let world = World::start(Backend::Sqlite, &[]).expect("sqlite");
    releases(&world, &["1.0.0", "1.0.1"]);
    let id = rollout(&world, &["demo", "1.0.0", "--all"]);
    let only: Vec<serde_json::Value> = world
        .upkeep_json(&["events", "--json", "--type", "release"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !only.is_empty()
            && only
                .iter()
                .all(|e| e["type"].as_str().is_some_and(|t| t.starts_with("release.")))
    );
    let since = world.upkeep_json(&["events", "--json", "--since", &in_seconds(3600)]);
    assert_eq!(since.as_array().map(Vec::len), Some(0), "nothing in the future");

    let mut follow = std::process::Command::new(crate::harness::CLI)
        .args(["events", "--follow", "--json", "--type", "rollout"])
        .env("UPKEEP_CONFIG_DIR", world.tmp.path().join("cli-config"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: serde_json::Value = serde_json::from_str(
        &rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("existing event"),
    )
    .expect("JSON line");
    assert_eq!(first["type"], "rollout.created");
    world.upkeep_ok(&["rollout", "pause", &id.to_string()]);
    let next: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(std::time::Duration::from_secs(10)).expect("new event"))
            .expect("JSON line");
    assert_eq!(next["type"], "rollout.paused");
    let _ = follow.kill();
    let _ = follow.wait();
}
