//! Running the commands a release declares (hooks, session probe, health check, installer):
//! placeholders filled in, no shell in between, a time limit, and the output kept (bounded) for
//! the event log.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use upkeep_protocol as proto;

/// Output kept per command: the end, where errors usually are.
const KEEP_OUTPUT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{what} could not start `{program}`: {reason}")]
    Start {
        what: String,
        program: String,
        reason: String,
    },
    #[error("{what} did not finish within {timeout}; it was stopped")]
    Timeout { what: String, timeout: String },
    #[error("{what} has a bad timeout `{timeout}`")]
    BadTimeout { what: String, timeout: String },
}

/// What a command did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookOutcome {
    /// `None` when it was ended by a signal.
    pub exit_code: Option<i32>,
    /// The end of stdout and stderr together.
    pub output: String,
}

impl HookOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Values for `{version}`, `{previous_version}`, `{install_dir}`, `{backup_dir}`, `{artifact}`.
#[derive(Debug, Clone, Default)]
pub struct Placeholders(pub BTreeMap<&'static str, String>);

impl Placeholders {
    pub fn fill(&self, arg: &str) -> String {
        let mut out = arg.to_owned();
        for (name, value) in &self.0 {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }
}

pub fn timeout_of(what: &str, timeout: &str) -> Result<Duration, HookError> {
    upkeep_domain::parse_duration(timeout)
        .map(|ms| Duration::from_millis(ms.unsigned_abs()))
        .map_err(|_| HookError::BadTimeout {
            what: what.to_owned(),
            timeout: timeout.to_owned(),
        })
}

/// Runs `hook` with placeholders filled. Both output pipes are read at once into bounded buffers
/// (a chatty command never blocks on a full pipe, and never fills memory); a command that outlives
/// its timeout is killed together with everything it started.
pub async fn run(what: &str, hook: &proto::Hook, vars: &Placeholders) -> Result<HookOutcome, HookError> {
    let limit = timeout_of(what, &hook.timeout)?;
    let args: Vec<String> = hook.command.iter().map(|a| vars.fill(a)).collect();
    let Some((program, rest)) = args.split_first() else {
        return Err(HookError::Start {
            what: what.to_owned(),
            program: String::new(),
            reason: "empty command".into(),
        });
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(|e| HookError::Start {
        what: what.to_owned(),
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let sink = output.clone();
        readers.push(tokio::spawn(async move {
            let mut pipe = pipe;
            let mut buffer = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut all) = sink.lock() {
                    all.extend_from_slice(&buffer[..n]);
                    if all.len() > 2 * KEEP_OUTPUT {
                        let cut = all.len() - KEEP_OUTPUT;
                        all.drain(..cut);
                    }
                }
            }
        }));
    }
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            kill_group(&mut child).await;
            for reader in &readers {
                reader.abort();
            }
            return Err(HookError::Timeout {
                what: what.to_owned(),
                timeout: hook.timeout.clone(),
            });
        }
    };
    // Something the command started in the background may hold the pipes open: give the readers a
    // moment, then stop listening.
    let grace = tokio::time::sleep(std::time::Duration::from_secs(2));
    tokio::pin!(grace);
    for reader in &mut readers {
        tokio::select! {
            _ = &mut *reader => {}
            () = &mut grace => reader.abort(),
        }
    }
    let bytes = output.lock().map(|all| all.clone()).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if text.len() > KEEP_OUTPUT {
        let cut = text.len() - KEEP_OUTPUT;
        let cut = (cut..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text = format!("…{}", &text[cut..]);
    }
    Ok(HookOutcome {
        exit_code: status.and_then(|s| s.code()),
        output: text,
    })
}

/// Kills the command and everything in its process group.
async fn kill_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // `--` keeps the negative process-group id from being read as an option (without it,
        // `kill -9 -PID` can signal every process).
        let _ = tokio::process::Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status()
            .await;
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(args: &[&str], timeout: &str) -> proto::Hook {
        proto::Hook {
            command: args.iter().map(|a| (*a).to_owned()).collect(),
            timeout: timeout.into(),
        }
    }

    #[tokio::test]
    async fn placeholders_output_and_exit_codes() {
        let vars = Placeholders([("version", "1.2.3".to_owned())].into_iter().collect());
        let done = run(
            "hook",
            &hook(&["sh", "-c", "echo v={version}; echo oops >&2; exit 3"], "5s"),
            &vars,
        )
        .await
        .unwrap();
        assert_eq!(done.exit_code, Some(3));
        assert!(
            done.output.contains("v=1.2.3") && done.output.contains("oops"),
            "{}",
            done.output
        );
        assert!(!done.succeeded());
    }

    #[tokio::test]
    async fn timeouts_stop_the_command() {
        let started = std::time::Instant::now();
        let err = run("slow hook", &hook(&["sleep", "10"], "1s"), &Placeholders::default())
            .await
            .unwrap_err();
        assert!(matches!(err, HookError::Timeout { .. }));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn chatty_commands_do_not_block() {
        // 400 KB on stderr alone would fill a pipe nobody reads.
        let done = run(
            "chatty",
            &hook(
                &["sh", "-c", "head -c 400000 /dev/zero | tr '\\0' x >&2; echo end"],
                "10s",
            ),
            &Placeholders::default(),
        )
        .await
        .unwrap();
        assert!(done.succeeded());
        assert!(done.output.len() <= KEEP_OUTPUT + 4, "kept {} bytes", done.output.len());
    }

    #[tokio::test]
    async fn background_children_do_not_hold_the_hook() {
        let started = std::time::Instant::now();
        let done = run(
            "starter",
            &hook(&["sh", "-c", "sleep 30 & echo started"], "20s"),
            &Placeholders::default(),
        )
        .await
        .unwrap();
        assert!(done.succeeded() && done.output.contains("started"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the background child"
        );
    }

    #[tokio::test]
    async fn missing_programs_are_named() {
        let err = run("hook", &hook(&["/nonexistent/program"], "1s"), &Placeholders::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/program"));
    }
}
