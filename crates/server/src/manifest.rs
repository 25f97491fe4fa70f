//! The install manifest a vendor ships with a release (`upkeep.toml`): recipe, launch path,
//! requirements, session probe, hooks, health check and installer. Parsed strictly here (unknown
//! keys are errors, so typos do not pass silently), then carried to agents inside the signed
//! release manifest.

use std::collections::BTreeMap;

use serde::Deserialize;
use upkeep_domain::{parse_duration, validate_name, validate_relative_path};
use upkeep_protocol as proto;

/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// Placeholders a command may use.
pub const PLACEHOLDERS: [&str; 5] = ["version", "previous_version", "install_dir", "backup_dir", "artifact"];

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    recipe: Option<String>,
    #[serde(default)]
    launch: Option<String>,
    #[serde(default)]
    requires: BTreeMap<String, String>,
    #[serde(default)]
    session_probe: Option<Probe>,
    #[serde(default)]
    hooks: HookSet,
    #[serde(default)]
    health_check: Option<Command>,
    #[serde(default)]
    installer: Option<Installer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    command: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout: String,
}

fn default_timeout() -> String {
    "5m".to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookSet {
    backup: Option<Command>,
    pre_install: Option<Command>,
    post_install: Option<Command>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default)]
    processes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Installer {
    command: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout: String,
    install_dir: String,
    #[serde(default)]
    exit_codes: BTreeMap<String, String>,
}

/// What the manifest contributes to the signed release manifest.
#[derive(Debug, Clone, Default)]
pub struct InstallSpec {
    pub recipe: String,
    pub launch: Option<String>,
    pub requires: BTreeMap<String, String>,
    pub session_probe: Option<proto::SessionProbe>,
    pub hooks: proto::Hooks,
    pub health_check: Option<proto::Hook>,
    pub installer: Option<proto::Installer>,
}

impl InstallSpec {
    /// A release uploaded without a manifest: an archive, maybe with a launch path.
    pub fn archive(launch: Option<String>) -> Self {
        InstallSpec {
            recipe: "archive".into(),
            launch,
            ..InstallSpec::default()
        }
    }
}

fn fail(message: impl Into<String>) -> ManifestError {
    ManifestError(message.into())
}

fn check_command(what: &str, command: &[String], timeout: &str) -> Result<proto::Hook, ManifestError> {
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(fail(format!(
            "{what}: the command is empty; give the program and its arguments as a list"
        )));
    }
    if command.len() > 64 || command.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
        return Err(fail(format!(
            "{what}: at most 64 arguments of at most 4096 bytes, without NUL"
        )));
    }
    for arg in command {
        let mut rest = arg.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open + 1..open + close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(fail(format!(
                    "{what}: unknown placeholder {{{name}}}; use {}",
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            rest = &rest[open + close + 1..];
        }
    }
    parse_duration(timeout).map_err(|e| fail(format!("{what}: timeout: {e}")))?;
    Ok(proto::Hook {
        command: command.to_vec(),
        timeout: timeout.to_owned(),
    })
}

/// Parses and checks `upkeep.toml`.
pub fn parse(text: &str) -> Result<InstallSpec, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(fail("the manifest is larger than 64 KiB"));
    }
    let file: File = toml::from_str(text).map_err(|e| fail(e.to_string().trim().replace('\n', " ")))?;
    let recipe = file.recipe.unwrap_or_else(|| "archive".into());
    match (recipe.as_str(), &file.installer) {
        ("archive", None) | ("command", Some(_)) => {}
        ("archive", Some(_)) => return Err(fail("recipe `archive` takes no [installer]; use recipe = \"command\"")),
        ("command", None) => {
            return Err(fail(
                "recipe `command` needs an [installer] with its command and install_dir",
            ));
        }
        (other, _) => return Err(fail(format!("recipe `{other}` is unknown; use `archive` or `command`"))),
    }
    if let Some(launch) = &file.launch {
        validate_relative_path(launch).map_err(|e| fail(format!("launch: {e}")))?;
    }
    for (product, requirement) in &file.requires {
        validate_name(product).map_err(|e| fail(format!("requires: {e}")))?;
        semver::VersionReq::parse(requirement).map_err(|e| {
            fail(format!(
                "requires.{product}: `{requirement}` is not a version requirement (e.g. \">=5.3.1\"): {e}"
            ))
        })?;
    }
    let session_probe = match file.session_probe {
        None => None,
        Some(probe) => {
            if probe.command.is_none() && probe.processes.is_empty() {
                return Err(fail("session_probe: give a command, process names, or both"));
            }
            if probe.processes.len() > 64 || probe.processes.iter().any(|p| p.is_empty() || p.len() > 255) {
                return Err(fail("session_probe.processes: 1–64 names of 1–255 bytes"));
            }
            let command = probe
                .command
                .map(|c| check_command("session_probe", &c, &probe.timeout))
                .transpose()?;
            Some(proto::SessionProbe {
                command,
                processes: probe.processes,
            })
        }
    };
    let hook = |what: &str, c: Option<Command>| c.map(|c| check_command(what, &c.command, &c.timeout)).transpose();
    let hooks = proto::Hooks {
        backup: hook("hooks.backup", file.hooks.backup)?,
        pre_install: hook("hooks.pre_install", file.hooks.pre_install)?,
        post_install: hook("hooks.post_install", file.hooks.post_install)?,
    };
    let health_check = hook("health_check", file.health_check)?;
    let installer = match file.installer {
        None => None,
        Some(installer) => {
            let checked = check_command("installer", &installer.command, &installer.timeout)?;
            let dir = installer.install_dir.trim();
            let absolute = dir.starts_with('/') || (dir.len() > 2 && dir.as_bytes()[1] == b':');
            if !absolute || dir.contains("..") {
                return Err(fail("installer.install_dir must be an absolute path without `..`"));
            }
            for (code, outcome) in &installer.exit_codes {
                code.parse::<i32>()
                    .map_err(|_| fail(format!("installer.exit_codes: `{code}` is not an exit code")))?;
                if !["ok", "reboot_required", "retry_later", "failed"].contains(&outcome.as_str()) {
                    return Err(fail(format!(
                        "installer.exit_codes.{code}: `{outcome}`; use ok, reboot_required, retry_later or failed"
                    )));
                }
            }
            Some(proto::Installer {
                command: checked.command,
                timeout: checked.timeout,
                install_dir: dir.to_owned(),
                exit_codes: installer.exit_codes,
            })
        }
    };
    Ok(InstallSpec {
        recipe,
        launch: file.launch,
        requires: file.requires,
        session_probe,
        hooks,
        health_check,
        installer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest() {
        let spec = parse(
            r#"
            launch = "bin/erp"
            [requires]
            crm-server = ">=5.3.1"
            [session_probe]
            command = ["sh", "-c", "cat {install_dir}/sessions.txt"]
            processes = ["erp"]
            [hooks.backup]
            command = ["sh", "-c", "dump > {backup_dir}/erp-{version}.sql"]
            timeout = "30m"
            [health_check]
            command = ["{install_dir}/bin/erp", "--self-test"]
            "#,
        )
        .unwrap();
        assert_eq!(spec.recipe, "archive");
        assert_eq!(spec.requires["crm-server"], ">=5.3.1");
        assert_eq!(spec.hooks.backup.unwrap().timeout, "30m");
        assert_eq!(spec.health_check.unwrap().timeout, "5m");
        assert_eq!(spec.session_probe.unwrap().processes, ["erp"]);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("lunch = \"x\"", "unknown field"),
            ("[hooks.backup]\ncommand = []", "empty"),
            (
                "[hooks.backup]\ncommand = [\"x\", \"{dir}\"]",
                "unknown placeholder {dir}",
            ),
            ("[hooks.backup]\ncommand = [\"x\"]\ntimeout = \"soon\"", "timeout"),
            ("[requires]\ncrm = \"about 5\"", "requires.crm"),
            ("recipe = \"command\"", "needs an [installer]"),
            ("recipe = \"msi\"", "unknown"),
            ("launch = \"../x\"", "launch"),
            (
                "recipe = \"command\"\n[installer]\ncommand = [\"x\"]\ninstall_dir = \"relative\"",
                "absolute",
            ),
            (
                "recipe = \"command\"\n[installer]\ncommand = [\"x\"]\ninstall_dir = \"/opt/x\"\nexit_codes = { 3010 = \"maybe\" }",
                "exit_codes",
            ),
            ("[session_probe]", "give a command"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
