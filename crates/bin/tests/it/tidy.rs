//! Repository rules that are cheaper to check than to remember.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn architecture_codemap_names_every_crate() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if !text.contains(&format!("### `crates/{name}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md has no codemap heading for: {missing:?}"
    );
}

#[test]
fn readme_starts_with_the_two_commands() {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let head: String = text.lines().take(25).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("cargo run --release --bin upkeep-server -- serve"),
        "README must start with the run command"
    );
    assert!(
        head.contains("cargo test --workspace"),
        "README must start with the test command"
    );
}
