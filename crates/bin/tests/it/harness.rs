//! The world a scenario runs in: a started server, a signed-in CLI, and agents with their own
//! state folders.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use upkeep_test_support::{ADMIN_PASSWORD, Backend, Server, TestDatabase};

pub const SERVER: &str = env!("CARGO_BIN_EXE_upkeep-server");
pub const CLI: &str = env!("CARGO_BIN_EXE_upkeep");
pub const AGENT: &str = env!("CARGO_BIN_EXE_upkeep-agent");

pub struct World {
    pub server: Server,
    pub tmp: tempfile::TempDir,
    config_dir: PathBuf,
}

impl World {
    /// Starts a server on `backend` and signs the CLI in as `admin`; `None` when the backend is
    /// not configured on this machine.
    pub fn start(backend: Backend, server_args: &[&str]) -> Option<World> {
        let database = Arc::new(TestDatabase::create(backend)?);
        let tmp = tempfile::tempdir().expect("temp dir");
        let server = Server::start(
            Path::new(SERVER),
            &tmp.path().join("server-data"),
            database,
            server_args,
        );
        let config_dir = tmp.path().join("cli-config");
        let world = World {
            server,
            tmp,
            config_dir,
        };
        let out = world.upkeep_stdin(
            &[
                "login",
                "--server",
                &world.server.url.clone(),
                "--user",
                "admin",
                "--password-stdin",
            ],
            ADMIN_PASSWORD,
        );
        assert_success(&out, "upkeep login");
        Some(world)
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(CLI);
        command
            .args(args)
            .env("UPKEEP_CONFIG_DIR", &self.config_dir)
            .env_remove("UPKEEP_SERVER")
            .env_remove("UPKEEP_TOKEN")
            .stdin(Stdio::null());
        command
    }

    /// Runs the `upkeep` CLI.
    pub fn upkeep(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run upkeep")
    }

    pub fn upkeep_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.cli_command(args);
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().expect("run upkeep")
    }

    pub fn upkeep_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cli_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run upkeep");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait upkeep")
    }

    /// Runs the CLI, requires success, returns stdout.
    pub fn upkeep_ok(&self, args: &[&str]) -> String {
        let out = self.upkeep(args);
        assert_success(&out, &format!("upkeep {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn upkeep_json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.upkeep_ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("upkeep {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// A new agent state folder.
    pub fn agent_state(&self, name: &str) -> PathBuf {
        self.tmp.path().join("agents").join(name)
    }

    /// The agent command for `state`, in UTC, as on a linux-x86_64 machine.
    pub fn agent_command(&self, state: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(AGENT);
        command
            .arg("--state")
            .arg(state)
            .args(args)
            .env_remove("UPKEEP_AGENT_STATE")
            .env("UPKEEP_AGENT_PLATFORM", "linux-x86_64")
            .env("UPKEEP_AGENT_UTC_OFFSET_MINUTES", "0")
            .stdin(Stdio::null());
        command
    }

    pub fn agent(&self, state: &Path, args: &[&str]) -> Output {
        self.agent_command(state, args).output().expect("run upkeep-agent")
    }

    pub fn agent_ok(&self, state: &Path, args: &[&str]) -> String {
        let out = self.agent(state, args);
        assert_success(&out, &format!("upkeep-agent {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Enrolls a new agent against `server_url` (the server's, unless a proxy stands between).
    pub fn enroll_agent(&self, name: &str, server_url: &str) -> PathBuf {
        let token = self.upkeep_ok(&["enroll-token", "create"]).trim().to_owned();
        assert!(
            token.starts_with("upe_") && token.contains('.'),
            "enroll-token create printed {token:?}"
        );
        let state = self.agent_state(name);
        self.agent_ok(&state, &["enroll", "--server", server_url, "--token", &token]);
        state
    }

    /// Uploads `bytes` (named `filename`) as PRODUCT VERSION with the manifest `toml`, and
    /// approves it.
    pub fn publish_with_manifest(&self, product: &str, version: &str, filename: &str, bytes: &[u8], toml: &str) {
        let file = self.tmp.path().join(format!("{version}-{filename}"));
        std::fs::write(&file, bytes).expect("write artifact");
        let manifest = self.tmp.path().join(format!("{product}-{version}.toml"));
        std::fs::write(&manifest, toml).expect("write manifest");
        self.upkeep_ok(&[
            "release",
            "upload",
            product,
            version,
            file.to_str().expect("utf-8 path"),
            "--platform",
            "linux-x86_64",
            "--manifest",
            manifest.to_str().expect("utf-8 path"),
        ]);
        self.upkeep_ok(&["release", "approve", product, version]);
    }

    /// The common start: product `demo` 1.0.0 published, approved and rolled out to all, and an
    /// agent `name` enrolled that has installed it.
    pub fn demo_installed(&self, name: &str) -> PathBuf {
        self.upkeep_ok(&["product", "create", "demo"]);
        self.publish("demo", "1.0.0", &upkeep_test_support::demo_archive("1.0.0", 0));
        self.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
        self.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
        let agent = self.enroll_agent(name, &self.server.url);
        self.agent_ok(&agent, &["update"]);
        agent
    }

    /// Writes `bytes` as an artifact file and uploads it as PRODUCT VERSION.
    pub fn publish(&self, product: &str, version: &str, bytes: &[u8]) -> String {
        let file = self.tmp.path().join(format!("{product}-{version}.tar.gz"));
        std::fs::write(&file, bytes).expect("write artifact");
        let notes = self.tmp.path().join(format!("{product}-{version}.md"));
        std::fs::write(&notes, format!("# {product} {version}\n\n- Fixes and improvements.\n")).expect("write notes");
        self.upkeep_ok(&[
            "release",
            "upload",
            product,
            version,
            file.to_str().expect("utf-8 path"),
            "--platform",
            "linux-x86_64",
            "--notes",
            notes.to_str().expect("utf-8 path"),
            "--launch",
            "bin/demo",
        ])
    }

    pub fn workstation_id(&self, state: &Path) -> String {
        let status: serde_json::Value =
            serde_json::from_str(&self.agent_ok(state, &["status", "--json"])).expect("status JSON");
        status["workstation_id"].as_str().expect("workstation_id").to_owned()
    }
}

/// The device token an enrolled agent keeps in its state folder.
pub fn device_token(agent: &Path) -> String {
    let enrollment: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.join("agent.json")).expect("agent.json")).expect("enrollment");
    enrollment["device_token"].as_str().expect("device token").to_owned()
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts failure and returns stderr (the one-line reason).
pub fn assert_failure(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file below `dir`, relative.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).to_owned());
            }
        }
    }
    out.sort();
    out
}

/// Polls `probe` every 100 ms until it returns `Some`, or fails after `seconds`.
pub fn wait_for<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what} after {seconds}s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// RFC 3339 for now plus `seconds` (UTC).
pub fn in_seconds(seconds: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)).to_string()
}
