//! Several `upkeep-server` processes over one database and one data folder, as behind a load
//! balancer: check-ins are answered from each process's memory, yet what an administrator changes
//! through one process reaches the check-ins answered by another.

use std::path::Path;

use upkeep_test_support::{Server, demo_archive};

use crate::harness::{SERVER, World, wait_for};
use crate::on_each_backend;

/// The first instruction of a check-in through the agent's server.
fn instruction(world: &World, agent: &Path) -> serde_json::Value {
    let body: serde_json::Value =
        serde_json::from_str(&world.agent_ok(agent, &["check", "--json"])).expect("check JSON");
    body["instructions"][0].clone()
}

fn a_change_through_one_server_reaches_check_ins_at_another(world: &World) {
    let agent = world.demo_installed("ws");
    let other = Server::start(
        Path::new(SERVER),
        &world.server.data_dir,
        world.server.database.clone(),
        &["--last-checkin-precision", "1s", "--cache-refresh", "250ms"],
    );
    let enrollment = agent.join("agent.json");
    let mut settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&enrollment).expect("enrollment")).expect("json");
    settings["server"] = serde_json::Value::String(other.url.clone());
    std::fs::write(&enrollment, settings.to_string()).expect("write enrollment");

    // The other process has now cached this organization's rollouts: nothing to do.
    assert_eq!(instruction(world, &agent)["action"], "none");
    let workstation = world.workstation_id(&agent);
    let stored_checkin = || {
        world.upkeep_json(&["workstation", "show", &workstation, "--json"])["last_checkin_at"]
            .as_str()
            .map(str::to_owned)
    };
    let before = stored_checkin();

    // A new release rolled out through the first process is offered by the second.
    world.publish("demo", "1.0.1", &demo_archive("1.0.1", 0));
    world.upkeep_ok(&["release", "approve", "demo", "1.0.1"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.1", "--all"]);
    wait_for("the other server to offer 1.0.1", 10, || {
        let i = instruction(world, &agent);
        (i["action"] == "offered" && i["update"]["version"] == "1.0.1").then_some(())
    });

    // And a disapproval of the installed version blocks it there too.
    world.upkeep_ok(&["release", "disapprove", "demo", "1.0.0", "--reason", "breaks printing"]);
    wait_for("the other server to block 1.0.0", 10, || {
        let i = instruction(world, &agent);
        (i["action"] == "blocked" && i["block"]["code"] == 2028).then_some(())
    });

    // Check-in times collected by the other process reach the shared database in a batch.
    wait_for("the other server's check-in time to be stored", 15, || {
        let _ = instruction(world, &agent);
        (stored_checkin() != before).then_some(())
    });
}
on_each_backend!(
    a_change_through_one_server_reaches_check_ins_at_another,
    ["--last-checkin-precision", "1s"]
);
