//! The install pipeline, the same for every update:
//!
//! `verify manifest → download (mirrors, then the server, resumable) → verify artifact → session
//! probe → backup hook → pre-install hook → install → health check → post-install hook → report`,
//! and on a failure after the install began: `restore → report rolled_back`.
//!
//! Crash safety: `journal.json` in the product folder is written before each step starts and after
//! it ends (written to a temporary name, synced, renamed). [`recover`] runs before anything else
//! touches a product: an update interrupted before its install step changed nothing and is simply
//! dropped; one interrupted at or after it is rolled back (the archive recipe switches `current`
//! back, the command recipe restores the snapshot of the install folder). So a crash or power loss
//! at any point ends with the old version in place, or — once the journal is gone — the new one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use upkeep_protocol as proto;

use crate::client::DeviceClient;
use crate::delta;
use crate::download;
use crate::error::AgentError;
use crate::hooks::{self, Placeholders};
use crate::install;
use crate::progress::Progress;
use crate::sessions;
use crate::state::{
    BackupRecord, Enrollment, InstalledRecord, LaunchReminder, ProductDir, StateDir, read_json, write_json,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Sessions,
    Backup,
    PreInstall,
    Install,
    HealthCheck,
    PostInstall,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Sessions,
        Step::Backup,
        Step::PreInstall,
        Step::Install,
        Step::HealthCheck,
        Step::PostInstall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Sessions => "sessions",
            Step::Backup => "backup",
            Step::PreInstall => "pre_install",
            Step::Install => "install",
            Step::HealthCheck => "health_check",
            Step::PostInstall => "post_install",
        }
    }
}

/// What is under way for one product.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Journal {
    pub version: String,
    pub previous: Option<String>,
    pub rollout_id: Option<i64>,
    pub recipe: String,
    pub step: Step,
    pub finished: bool,
    /// Command recipe: the install folder, and whether it existed before (its copy is in
    /// `snapshot/`).
    #[serde(default)]
    pub install_dir: Option<PathBuf>,
    #[serde(default)]
    pub had_install_dir: bool,
    /// Command recipe: the copy of the install folder in `snapshot/` is complete.
    #[serde(default)]
    pub snapshot_ready: bool,
}

/// How long `--wait` looks again for sessions to end.
const SESSION_POLL: Duration = Duration::from_secs(1);

/// Retries for an installer that answers `retry_later`, with doubling pauses.
const INSTALLER_RETRIES: u32 = 3;
const INSTALLER_FIRST_PAUSE: Duration = Duration::from_secs(1);

/// Options from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Wait this long for open sessions to end instead of refusing at once.
    pub wait_for_sessions: Option<Duration>,
}

/// What the pipeline did with an update.
pub enum Applied {
    Installed,
    /// Downloaded, but the install waits (the message says for what).
    Deferred(String),
}

struct Run<'a> {
    state: &'a StateDir,
    client: &'a DeviceClient,
    product: &'a str,
    offer: &'a proto::UpdateOffer,
    from_version: Option<String>,
    dir: ProductDir,
}

impl Run<'_> {
    fn report(
        &self,
        status: proto::WorkstationStatus,
        error: Option<&AgentError>,
        details: Option<serde_json::Value>,
    ) -> proto::DeviceReport {
        proto::DeviceReport {
            product: self.product.to_owned(),
            version: self.offer.version.clone(),
            status,
            rollout_id: Some(self.offer.rollout_id),
            from_version: self.from_version.clone(),
            error_code: error.map(AgentError::code),
            message: error.map(ToString::to_string),
            details,
            at: None,
        }
    }

    async fn send(
        &self,
        status: proto::WorkstationStatus,
        error: Option<&AgentError>,
        details: Option<serde_json::Value>,
    ) {
        self.client
            .report(self.state, self.report(status, error, details))
            .await;
    }

    async fn fail<T>(&self, status: proto::WorkstationStatus, err: AgentError) -> Result<T, AgentError> {
        self.send(status, Some(&err), None).await;
        Err(err)
    }

    fn journal(&self, journal: &mut Journal, step: Step, finished: bool) -> Result<(), AgentError> {
        journal.step = step;
        journal.finished = finished;
        write_json(&self.dir.journal_path(), journal, false)?;
        crash_point(step, finished);
        Ok(())
    }
}

/// Crash injection for the recovery tests: `UPKEEP_AGENT_CRASH_AT=install:started` makes the
/// agent kill itself (SIGKILL, like a power cut) right after journaling that point.
fn crash_point(step: Step, finished: bool) {
    let Ok(at) = std::env::var("UPKEEP_AGENT_CRASH_AT") else {
        return;
    };
    let here = format!("{}:{}", step.as_str(), if finished { "finished" } else { "started" });
    if at == here {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        // If `kill` is missing, stop as abruptly as we can.
        std::process::abort();
    }
}

/// One offered update, as the check-in answered it.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    pub instruction: &'a proto::ProductInstruction,
    pub offer: &'a proto::UpdateOffer,
    /// The check-in's director metadata.
    pub director: Option<&'a str>,
}

/// Runs the whole pipeline for one offered update.
pub async fn apply(
    state: &StateDir,
    enrollment: &Enrollment,
    client: &DeviceClient,
    offered: Offered<'_>,
    progress: &Progress,
    options: Options,
) -> Result<Applied, AgentError> {
    let Offered {
        instruction,
        offer,
        director,
    } = offered;
    let product = instruction.product.as_str();
    let run = Run {
        state,
        client,
        product,
        offer,
        from_version: instruction.installed_version.clone(),
        dir: state.product(product),
    };
    use proto::WorkstationStatus as S;

    let manifest =
        match install::verify_manifest(&offer.manifest, &enrollment.signing_public_key, product, &offer.version) {
            Ok(m) => m,
            Err(e) => return run.fail(S::Failed, e).await,
        };
    let artifact = match install::pick_artifact(&manifest, &install::platform()) {
        Ok(a) => a.clone(),
        Err(e) => return run.fail(S::Failed, e).await,
    };
    // The organization's signed TUF targets must list this very file, or nothing is fetched.
    let listed = match crate::tuf::check_listed(state, enrollment, product, &offer.version, &artifact, director).await {
        Ok(listed) => listed,
        Err(e) => return run.fail(S::Failed, e).await,
    };

    run.send(S::Downloading, None, None).await;
    let obtained = match obtain(&run, enrollment, &manifest, &artifact, &listed, progress).await {
        Ok(obtained) => obtained,
        Err(e) => return run.fail(S::Failed, e).await,
    };
    let Obtained { file, rebuilt, details } = obtained;
    run.send(S::Downloaded, None, Some(details)).await;

    if let Some(window) = offer.install_window.as_ref().filter(|w| !w.open) {
        // Downloaded and verified ahead; the install waits for the maintenance window.
        let message = format!(
            "waiting for the maintenance window {} (opens {})",
            window.window, window.next_open
        );
        progress.note(&message);
        let mut deferred = run.report(S::Deferred, None, None);
        deferred.message = Some(message.clone());
        client.report(state, deferred).await;
        return Ok(Applied::Deferred(message));
    }

    let previous = run.dir.current_version()?;
    let backup_dir = state.backup_dir(product);
    let install_dir = match (&manifest.recipe[..], &manifest.installer) {
        ("command", Some(installer)) => PathBuf::from(&installer.install_dir),
        _ => run.dir.version_dir(&manifest.version),
    };
    let vars = Placeholders(
        [
            ("version", manifest.version.clone()),
            ("previous_version", previous.clone().unwrap_or_default()),
            ("install_dir", install_dir.display().to_string()),
            ("backup_dir", backup_dir.display().to_string()),
            ("artifact", file.display().to_string()),
        ]
        .into_iter()
        .collect(),
    );
    let mut journal = Journal {
        version: manifest.version.clone(),
        previous: previous.clone(),
        rollout_id: Some(offer.rollout_id),
        recipe: manifest.recipe.clone(),
        step: Step::Sessions,
        finished: false,
        install_dir: (manifest.recipe == "command").then(|| install_dir.clone()),
        had_install_dir: install_dir.exists(),
        snapshot_ready: false,
    };
    // Before the install step nothing has changed: a failure just ends the update.
    let give_up = |run: &Run<'_>| {
        let _ = fs::remove_file(run.dir.journal_path());
    };

    // Sessions: nobody may be using the product.
    run.journal(&mut journal, Step::Sessions, false)?;
    if let Some(probe) = &manifest.session_probe {
        let mut waited = Duration::ZERO;
        loop {
            let open = match sessions::open_sessions(probe, &vars).await {
                Ok(open) => open,
                Err(e) => {
                    give_up(&run);
                    return run.fail(S::Failed, e).await;
                }
            };
            if open.is_empty() {
                break;
            }
            let err = AgentError::SessionsOpen {
                product: product.to_owned(),
                sessions: open,
            };
            match options.wait_for_sessions {
                Some(limit) if waited < limit => {
                    if waited.is_zero() {
                        progress.note(&format!("{err}; waiting up to {}s", limit.as_secs()));
                        run.send(S::WaitingForSessions, Some(&err), None).await;
                    }
                    tokio::time::sleep(SESSION_POLL).await;
                    waited += SESSION_POLL;
                }
                _ => {
                    give_up(&run);
                    return run.fail(S::WaitingForSessions, err).await;
                }
            }
        }
    }
    run.journal(&mut journal, Step::Sessions, true)?;

    // Backup: no backup, no install (when the release asks for one).
    run.journal(&mut journal, Step::Backup, false)?;
    let backup = match &manifest.hooks.backup {
        None => None,
        Some(hook) => match take_backup(hook, &backup_dir, &vars).await {
            Ok(record) => {
                progress.note(&format!("backup {} ({} bytes)", record.path, record.size));
                Some(record)
            }
            Err(e) => {
                give_up(&run);
                return run.fail(S::BackupFailed, e).await;
            }
        },
    };
    run.journal(&mut journal, Step::Backup, true)?;

    run.journal(&mut journal, Step::PreInstall, false)?;
    let mut outputs = serde_json::Map::new();
    if let Some(hook) = &manifest.hooks.pre_install {
        match run_checked("the pre-install hook", hook, &vars).await {
            Ok(output) => {
                outputs.insert("pre_install".into(), output.into());
            }
            Err(e) => {
                give_up(&run);
                return run.fail(S::Failed, e).await;
            }
        }
    }
    run.journal(&mut journal, Step::PreInstall, true)?;

    run.send(S::Installing, None, Some(serde_json::json!({ "backup": backup })))
        .await;

    // From here on a failure restores the previous state.
    let format = if rebuilt {
        Some(upkeep_archive::Format::Tar)
    } else {
        upkeep_archive::Format::parse(&artifact.format)
    };
    let result = install_and_check(
        &run,
        &mut journal,
        &manifest,
        &artifact,
        format,
        &file,
        &vars,
        &mut outputs,
    )
    .await;
    if let Err((step, err)) = result {
        if rebuilt {
            // Rebuilt here from a patch, not a download that could resume.
            let _ = fs::remove_file(&file);
        }
        // Two reports, as it happened: the failure, then the rollback.
        run.send(
            S::Failed,
            Some(&err),
            Some(serde_json::json!({ "step": step.as_str() })),
        )
        .await;
        let restored = restore(&run.dir, &journal);
        if restored.is_ok() {
            let _ = fs::remove_file(run.dir.journal_path());
        }
        // Otherwise the journal stays, so the next start tries the restore again.
        let restored_to = match restored {
            Ok(()) => previous.clone().unwrap_or_else(|| "not installed".into()),
            Err(e) => format!("(restore failed: {e})"),
        };
        let rolled_back = AgentError::RolledBack {
            step: step.as_str(),
            message: err.to_string(),
            restored: restored_to,
        };
        progress.note(&rolled_back.to_string());
        let mut report = run.report(
            S::RolledBack,
            Some(&rolled_back),
            Some(serde_json::Value::Object(outputs)),
        );
        report.error_code = Some(err.code());
        client.report(state, report).await;
        return Err(rolled_back);
    }
    let _ = fs::remove_file(run.dir.journal_path());
    if manifest.recipe == "archive" {
        install::prune(&run.dir, &manifest.version, previous.as_deref());
        if let Err(e) = delta::keep_base(
            &run.dir,
            &manifest.version,
            previous.as_deref(),
            &artifact,
            &file,
            rebuilt,
        ) {
            // Only the next update's delta is lost: it falls back to the full artifact.
            eprintln!("upkeep-agent: warning: {product}: not keeping a delta base: {e}");
        }
    }
    let _ = fs::remove_file(&file);
    let reminder = LaunchReminder {
        version: manifest.version.clone(),
        backup: backup.clone(),
        backup_expected: manifest.hooks.backup.is_some(),
    };
    write_json(&run.dir.reminder_path(), &reminder, false)?;
    progress.note(&format!(
        "installed; was {}",
        previous.as_deref().unwrap_or("not installed")
    ));
    outputs.insert("previous_version".into(), serde_json::json!(previous));
    outputs.insert("backup".into(), serde_json::json!(backup));
    run.send(S::Installed, None, Some(serde_json::Value::Object(outputs)))
        .await;
    Ok(Applied::Installed)
}

#[allow(clippy::too_many_arguments)]
async fn install_and_check(
    run: &Run<'_>,
    journal: &mut Journal,
    manifest: &proto::ReleaseManifest,
    artifact: &proto::Artifact,
    format: Option<upkeep_archive::Format>,
    file: &Path,
    vars: &Placeholders,
    outputs: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), (Step, AgentError)> {
    if manifest.recipe == "command" && journal.had_install_dir {
        // Snapshot first, completely, under a temporary name: restore trusts only a whole copy.
        if let Some(install_dir) = journal.install_dir.clone() {
            let (tmp, snapshot) = (run.dir.root.join("snapshot.tmp"), run.dir.snapshot_dir());
            let _ = fs::remove_dir_all(&tmp);
            copy_tree(&install_dir, &tmp)
                .map_err(|e| (Step::Install, AgentError::io("snapshotting", &install_dir, e)))?;
            let _ = fs::remove_dir_all(&snapshot);
            fs::rename(&tmp, &snapshot).map_err(|e| (Step::Install, AgentError::io("snapshotting", &snapshot, e)))?;
            journal.snapshot_ready = true;
        }
    }
    run.journal(journal, Step::Install, false)
        .map_err(|e| (Step::Install, e))?;
    match manifest.recipe.as_str() {
        "command" => install_command(run, journal, manifest, vars, outputs)
            .await
            .map_err(|e| (Step::Install, e))?,
        _ => {
            let format = format.ok_or_else(|| {
                (
                    Step::Install,
                    AgentError::Unpack(format!("unknown archive format `{}`", artifact.format)),
                )
            })?;
            let (dir, m, f) = (run.dir.clone(), manifest.clone(), file.to_owned());
            tokio::task::spawn_blocking(move || {
                install::unpack_version(&dir, &m, &f, format)?;
                install::switch_current(&dir, &m.version)
            })
            .await
            .map_err(|e| (Step::Install, AgentError::Invalid(format!("install task: {e}"))))?
            .map_err(|e| (Step::Install, e))?;
        }
    }
    run.journal(journal, Step::Install, true)
        .map_err(|e| (Step::Install, e))?;

    for (step, what, hook) in [
        (Step::HealthCheck, "the health check", &manifest.health_check),
        (Step::PostInstall, "the post-install hook", &manifest.hooks.post_install),
    ] {
        run.journal(journal, step, false).map_err(|e| (step, e))?;
        if let Some(hook) = hook {
            let output = run_checked(what, hook, vars).await.map_err(|e| (step, e))?;
            outputs.insert(step.as_str().into(), output.into());
        }
        run.journal(journal, step, true).map_err(|e| (step, e))?;
    }
    Ok(())
}

/// The verified bytes to install and what the `downloaded` report says of them.
struct Obtained {
    file: PathBuf,
    /// `file` is the uncompressed tar a delta rebuilt, not the artifact.
    rebuilt: bool,
    details: serde_json::Value,
}

/// Rebuilds the new version from a patch when one is offered from the installed version and
/// everything checks out; otherwise (or on any failure) downloads the full artifact.
async fn obtain(
    run: &Run<'_>,
    enrollment: &Enrollment,
    manifest: &proto::ReleaseManifest,
    artifact: &proto::Artifact,
    listed: &crate::tuf::Listed,
    progress: &Progress,
) -> Result<Obtained, AgentError> {
    // What became of the delta path, for the report; none for artifacts that never have patches.
    let mut delta_note = None;
    if manifest.recipe == "archive" && artifact.format == "tar.gz" {
        let installed = run.dir.current_version()?;
        let signed = listed.content.as_ref().map(|(sha256, size)| (sha256.as_str(), *size));
        let attempt = match delta::choose(&run.dir, installed.as_deref(), artifact, signed, &run.offer.deltas).await {
            Ok(None) => None,
            Ok(Some(plan)) => Some(delta::rebuild(run.client, run.state, &plan, progress).await),
            Err(reason) => Some(Err(reason)),
        };
        match attempt {
            None => delta_note = Some("none offered".to_owned()),
            Some(Ok(rebuilt)) => {
                progress.note(&format!(
                    "rebuilt from {} with a {} byte patch; SHA-256 of the content verified",
                    rebuilt.from_version, rebuilt.patch_size
                ));
                let details = serde_json::json!({
                    "sha256": artifact.sha256, "size": artifact.size, "source": "server",
                    "delta": "used", "delta_from": rebuilt.from_version, "delta_method": rebuilt.method,
                    "delta_size": rebuilt.patch_size, "fetched": rebuilt.received,
                });
                return Ok(Obtained {
                    file: rebuilt.tar,
                    rebuilt: true,
                    details,
                });
            }
            Some(Err(reason)) => {
                eprintln!(
                    "upkeep-agent: warning: {}: delta update not used: {reason}; downloading the full artifact",
                    run.product
                );
                delta_note = Some(format!("failed: {reason}"));
            }
        }
    }
    let mirrors = download::mirror_urls(
        &run.offer.mirrors,
        &enrollment.organization,
        run.product,
        &run.offer.version,
        artifact,
    );
    let (file, outcome) = download::fetch(run.client, &run.state.downloads(), artifact, &mirrors, progress).await?;
    progress.note(&format!(
        "verified {} bytes, SHA-256 {}",
        artifact.size, artifact.sha256
    ));
    let mut details = serde_json::json!({ "sha256": artifact.sha256, "size": artifact.size, "resumed_from": outcome.resumed_from, "received": outcome.received, "fetched": outcome.received, "source": outcome.source });
    if let Some(note) = delta_note {
        details["delta"] = note.into();
    }
    if !outcome.mirrors_failed.is_empty() {
        // Tells the administrator which mirror is broken or hostile.
        details["mirrors_failed"] = outcome
            .mirrors_failed
            .iter()
            .map(|(mirror, reason)| serde_json::json!({ "mirror": mirror, "reason": reason }))
            .collect();
    }
    Ok(Obtained {
        file,
        rebuilt: false,
        details,
    })
}

/// Runs a hook and requires exit code 0; returns its output.
async fn run_checked(what: &str, hook: &proto::Hook, vars: &Placeholders) -> Result<String, AgentError> {
    let outcome = hooks::run(what, hook, vars)
        .await
        .map_err(|e| AgentError::Hook(e.to_string()))?;
    if outcome.succeeded() {
        Ok(outcome.output)
    } else {
        Err(AgentError::Hook(format!(
            "{what} failed (exit {:?}): {}",
            outcome.exit_code,
            outcome.output.trim()
        )))
    }
}

/// Runs the backup hook into `dir` and returns the file it made: the newest file written there
/// since the hook started, which must not be empty.
async fn take_backup(hook: &proto::Hook, dir: &Path, vars: &Placeholders) -> Result<BackupRecord, AgentError> {
    fs::create_dir_all(dir).map_err(|e| AgentError::BackupFailed(format!("cannot create {}: {e}", dir.display())))?;
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    run_checked("the backup hook", hook, vars)
        .await
        .map_err(|e| AgentError::BackupFailed(e.to_string()))?;
    let newest = fs::read_dir(dir)
        .map_err(|e| AgentError::BackupFailed(format!("cannot read {}: {e}", dir.display())))?
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?;
            (meta.is_file() && modified >= started).then_some((modified, e.path(), meta.len()))
        })
        .max_by_key(|(modified, _, _)| *modified);
    let Some((_, path, size)) = newest else {
        return Err(AgentError::BackupFailed(format!(
            "the hook wrote no file into {}",
            dir.display()
        )));
    };
    if size == 0 {
        return Err(AgentError::BackupFailed(format!("{} is empty", path.display())));
    }
    let sha256 = download::sha256_file(&path)
        .await
        .map_err(|e| AgentError::BackupFailed(e.to_string()))?;
    Ok(BackupRecord {
        path: path.display().to_string(),
        size,
        sha256,
        taken_at: jiff::Timestamp::now().to_string(),
    })
}

/// The command recipe: snapshot the install folder, run the installer (retrying when it asks to),
/// and record the installed version.
async fn install_command(
    run: &Run<'_>,
    journal: &mut Journal,
    manifest: &proto::ReleaseManifest,
    vars: &Placeholders,
    outputs: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), AgentError> {
    let installer = manifest
        .installer
        .as_ref()
        .ok_or_else(|| AgentError::Invalid("recipe `command` without an installer".into()))?;
    let hook = proto::Hook {
        command: installer.command.clone(),
        timeout: installer.timeout.clone(),
    };
    let mut pause = INSTALLER_FIRST_PAUSE;
    for attempt in 1..=INSTALLER_RETRIES + 1 {
        let outcome = hooks::run("the installer", &hook, vars)
            .await
            .map_err(|e| AgentError::Hook(e.to_string()))?;
        let code = outcome.exit_code.unwrap_or(-1);
        let verdict = installer
            .exit_codes
            .get(&code.to_string())
            .map(String::as_str)
            .unwrap_or(if code == 0 { "ok" } else { "failed" });
        outputs.insert(
            "installer".into(),
            serde_json::json!({ "exit_code": code, "outcome": verdict, "output": outcome.output, "attempt": attempt }),
        );
        match verdict {
            "ok" | "reboot_required" => {
                let record = InstalledRecord {
                    version: manifest.version.clone(),
                    previous: journal.previous.clone(),
                };
                write_json(&run.dir.installed_record(), &record, false)?;
                write_json(&run.dir.meta_path(&manifest.version), manifest, false)?;
                return Ok(());
            }
            "retry_later" if attempt <= INSTALLER_RETRIES => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            "retry_later" => return Err(AgentError::RetryLater(code)),
            _ => {
                return Err(AgentError::Hook(format!(
                    "the installer failed (exit {code}): {}",
                    outcome.output.trim()
                )));
            }
        }
    }
    Err(AgentError::RetryLater(-1))
}

/// Puts back what the interrupted or failed install changed.
fn restore(dir: &ProductDir, journal: &Journal) -> Result<(), AgentError> {
    match (journal.recipe.as_str(), &journal.install_dir) {
        ("command", Some(_)) if journal.had_install_dir && !journal.snapshot_ready => {
            // The snapshot was not complete, so the installer never ran: the folder is untouched.
        }
        ("command", Some(install_dir)) => {
            if install_dir.exists() {
                fs::remove_dir_all(install_dir).map_err(|e| AgentError::io("removing", install_dir, e))?;
            }
            let snapshot = dir.snapshot_dir();
            if journal.had_install_dir {
                copy_tree(&snapshot, install_dir).map_err(|e| AgentError::io("restoring", install_dir, e))?;
            }
            match &journal.previous {
                Some(previous) => write_json(
                    &dir.installed_record(),
                    &InstalledRecord {
                        version: previous.clone(),
                        previous: None,
                    },
                    false,
                )?,
                None => {
                    let _ = fs::remove_file(dir.installed_record());
                }
            }
        }
        _ => {
            match &journal.previous {
                Some(previous) => install::switch_current(dir, previous)?,
                None => install::remove_current(dir)?,
            }
            if journal.previous.as_deref() != Some(journal.version.as_str()) {
                let _ = fs::remove_dir_all(dir.version_dir(&journal.version));
                let _ = fs::remove_dir_all(dir.versions().join(format!(".staging-{}", journal.version)));
            }
        }
    }
    Ok(())
}

/// What [`recover`] found and did.
pub struct Recovered {
    pub journal: Journal,
    pub rolled_back: bool,
}

/// Finishes the business of an update that a crash interrupted (see the module docs).
pub fn recover(dir: &ProductDir) -> Result<Option<Recovered>, AgentError> {
    let Some(journal) = read_json::<Journal>(&dir.journal_path())? else {
        return Ok(None);
    };
    let touched = journal.step >= Step::Install;
    if touched {
        restore(dir, &journal)?;
    }
    fs::remove_file(dir.journal_path()).map_err(|e| AgentError::io("removing", &dir.journal_path(), e))?;
    Ok(Some(Recovered {
        journal,
        rolled_back: touched,
    }))
}

/// Recovers every product, reporting what was undone.
pub async fn recover_all(state: &StateDir, client: Option<&DeviceClient>) -> Result<(), AgentError> {
    let products = state.root().join("products");
    let Ok(entries) = fs::read_dir(&products) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(recovered) = recover(&state.product(&name))? else {
            continue;
        };
        let j = &recovered.journal;
        let message = format!(
            "the update to {} was interrupted at {} and {}",
            j.version,
            j.step.as_str(),
            if recovered.rolled_back {
                "rolled back"
            } else {
                "dropped; nothing had changed"
            }
        );
        eprintln!("upkeep-agent: {name}: {message}");
        if let Some(client) = client {
            let status = if recovered.rolled_back {
                proto::WorkstationStatus::RolledBack
            } else {
                proto::WorkstationStatus::Failed
            };
            let report = proto::DeviceReport {
                product: name.clone(),
                version: j.version.clone(),
                status,
                rollout_id: j.rollout_id,
                from_version: j.previous.clone(),
                error_code: Some("interrupted".into()),
                message: Some(message),
                details: Some(serde_json::json!({ "step": j.step.as_str(), "finished": j.finished })),
                at: None,
            };
            client.report(state, report).await;
        }
    }
    Ok(())
}

/// `rollback PRODUCT`: back to the previous version on purpose.
pub fn roll_back(dir: &ProductDir) -> Result<(String, String), AgentError> {
    let current = dir.current_version()?.ok_or_else(|| AgentError::NotInstalled {
        product: product_name(dir),
    })?;
    if let Some(record) = read_json::<InstalledRecord>(&dir.installed_record())? {
        // The command recipe keeps the install folder as it was before the last install.
        let nothing = || AgentError::NothingToRollBack {
            product: product_name(dir),
        };
        let previous = record.previous.ok_or_else(nothing)?;
        let snapshot = dir.snapshot_dir();
        let install_dir = dir
            .manifest(&current)?
            .and_then(|m| m.installer)
            .map(|i| PathBuf::from(i.install_dir))
            .ok_or_else(nothing)?;
        if !snapshot.is_dir() {
            return Err(nothing());
        }
        if install_dir.exists() {
            fs::remove_dir_all(&install_dir).map_err(|e| AgentError::io("removing", &install_dir, e))?;
        }
        copy_tree(&snapshot, &install_dir).map_err(|e| AgentError::io("restoring", &install_dir, e))?;
        write_json(
            &dir.installed_record(),
            &InstalledRecord {
                version: previous.clone(),
                previous: None,
            },
            false,
        )?;
        let _ = fs::remove_dir_all(&snapshot);
        return Ok((current, previous));
    }
    let mut versions: Vec<semver::Version> = fs::read_dir(dir.versions())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| semver::Version::parse(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    let current_version = semver::Version::parse(&current).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let previous = versions
        .into_iter()
        .rfind(|v| *v < current_version && dir.meta_path(&v.to_string()).is_file())
        .ok_or_else(|| AgentError::NothingToRollBack {
            product: product_name(dir),
        })?
        .to_string();
    install::switch_current(dir, &previous)?;
    Ok((current, previous))
}

fn product_name(dir: &ProductDir) -> String {
    dir.root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies a folder tree, keeping links as links and permissions.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
