//! The session probe: who is still using a product. A release may give a command that prints one
//! open session per line (nothing when none) and process names to look for; both are checked.

use upkeep_protocol as proto;

use crate::error::AgentError;
use crate::hooks::{self, Placeholders};

/// The open sessions, one description each; empty when nobody is in.
pub async fn open_sessions(probe: &proto::SessionProbe, vars: &Placeholders) -> Result<Vec<String>, AgentError> {
    let mut sessions = Vec::new();
    if let Some(command) = &probe.command {
        let outcome = hooks::run("the session probe", command, vars)
            .await
            .map_err(|e| AgentError::Hook(e.to_string()))?;
        if !outcome.succeeded() {
            return Err(AgentError::Hook(format!(
                "the session probe failed (exit {:?}): {}",
                outcome.exit_code,
                outcome.output.trim()
            )));
        }
        sessions.extend(
            outcome
                .output
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    if !probe.processes.is_empty() {
        sessions.extend(running_processes(&probe.processes));
    }
    Ok(sessions)
}

/// Processes whose name is one of `names`, as `name (pid N)`.
fn running_processes(names: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        // The kernel keeps only the first 15 bytes of a process name.
        if names
            .iter()
            .any(|n| n == comm || (n.len() > 15 && n.as_bytes().get(..15) == Some(comm.as_bytes())))
        {
            found.push(format!("{comm} (pid {pid})"));
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_lines_are_sessions() {
        let probe = proto::SessionProbe {
            command: Some(proto::Hook {
                command: vec!["printf".into(), "alice\\n\\nbob\\n".into()],
                timeout: "5s".into(),
            }),
            processes: vec![],
        };
        assert_eq!(
            open_sessions(&probe, &Placeholders::default()).await.unwrap(),
            ["alice", "bob"]
        );
    }

    #[test]
    fn finds_running_processes() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        // Right after the fork the child may not carry its new name yet.
        let mine = format!("pid {}", child.id());
        let mut found = Vec::new();
        for _ in 0..50 {
            found = running_processes(&["sleep".to_owned()]);
            if found.iter().any(|f| f.contains(&mine)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.iter().any(|f| f.contains(&format!("pid {}", child.id()))),
            "{found:?}"
        );
    }
}
