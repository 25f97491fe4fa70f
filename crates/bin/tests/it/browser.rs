//! The console in a real browser: `tests/browser/console.mjs` drives Debian's Chromium through
//! playwright-core against a real server and a real agent (installed by `.ci/run`: packages
//! `chromium` and `nodejs`, then `npm ci` in `tests/browser`).

use std::path::{Path, PathBuf};
use std::process::Command;

use upkeep_test_support::{ADMIN_PASSWORD, Backend};

use crate::harness::{AGENT, World};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("browser")
}

/// Where the walkthrough's screenshots are kept after the run.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

#[test]
fn console_walkthrough_in_chromium() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules").join("playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix {}` (and `apt-get install chromium`), as .ci/run does",
        dir.display()
    );
    let world = World::start(Backend::Sqlite, &[]).expect("SQLite is always available");
    let agent = world.enroll_agent("desk-1", &world.server.url);
    let artifact = world.tmp.path().join("editor-1.0.0.tar.gz");
    std::fs::write(&artifact, upkeep_test_support::demo_archive("1.0.0", 0)).expect("write artifact");
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);

    let out = Command::new("node")
        .arg(dir.join("console.mjs"))
        .current_dir(&dir)
        .env("UPKEEP_URL", &world.server.url)
        .env("UPKEEP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("UPKEEP_AGENT_BIN", AGENT)
        .env("UPKEEP_AGENT_STATE", &agent)
        .env("UPKEEP_ARTIFACT", &artifact)
        .env("UPKEEP_SCREENSHOTS", &shots)
        .output()
        .expect("run node (install Node.js)");
    assert!(
        out.status.success(),
        "the browser walkthrough failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let screenshots = std::fs::read_dir(&shots)
        .expect("screenshot folder")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(
        screenshots >= 15,
        "only {screenshots} screenshots in {}",
        shots.display()
    );
    println!("screenshots: {}", shots.display());
}
