//! The agent's commands: enroll, check, update, status, launch.

use std::process::ExitCode;
use std::time::Duration;

use upkeep_protocol as proto;
use upkeep_protocol::codes::INSTALLED_VERSION_DISAPPROVED;

use crate::client::DeviceClient;
use crate::error::AgentError;
use crate::pipeline;
use crate::progress::{Mode, Progress};
use crate::state::LaunchReminder;
use crate::state::{CachedCheckin, Enrollment, StateDir, write_json};
use crate::{Cli, Command, default_state_dir};

/// How long `launch` waits for the server before deciding on the last instructions it has.
const LAUNCH_CHECKIN_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(cli: Cli) -> Result<ExitCode, AgentError> {
    let state = StateDir::new(cli.state.unwrap_or_else(default_state_dir));
    match cli.command {
        Command::Enroll {
            server,
            token,
            groups,
            force,
            json,
        } => enroll(&state, &server, &token, groups, force, json).await,
        Command::Check { json } => check(&state, json).await,
        Command::Update { products, json, wait } => {
            update(
                &state,
                &products,
                json,
                pipeline::Options {
                    wait_for_sessions: wait,
                },
            )
            .await
        }
        Command::Rollback { product, json } => rollback(&state, &product, json).await,
        Command::Status { json } => status(&state, json),
        Command::Launch { product, json, args } => launch(&state, &product, json, &args).await,
        Command::Daemon { interval, once } => daemon(&state, interval, once).await,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// This machine's offset from UTC now, for local deadlines and maintenance windows.
/// `UPKEEP_AGENT_UTC_OFFSET_MINUTES` overrides it (for machines whose clock zone is wrong).
fn utc_offset_minutes() -> i32 {
    std::env::var("UPKEEP_AGENT_UTC_OFFSET_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| jiff::Zoned::now().offset().seconds() / 60)
}

async fn enroll(
    state: &StateDir,
    server: &str,
    token: &str,
    groups: Vec<String>,
    force: bool,
    json: bool,
) -> Result<ExitCode, AgentError> {
    state.ensure()?;
    if state.enrollment_path().exists() && !force {
        let existing = state.enrollment()?;
        return Err(AgentError::Invalid(format!(
            "already enrolled with {} as {}; use --force to enroll again",
            existing.server, existing.workstation_id
        )));
    }
    let client = DeviceClient::anonymous(server, Some(Duration::from_secs(60)))?;
    let request = proto::EnrollRequest {
        token: token.to_owned(),
        hostname: hostname(),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        agent_version: AGENT_VERSION.to_owned(),
        groups,
    };
    let response: proto::EnrollResponse = client.post_json("/api/v1/device/enroll", &request).await?;
    // The token carries the fingerprint of the root it was made under: a server (or anyone in
    // between) handing over another root is refused before anything is trusted.
    if let (_, Some(fingerprint)) = proto::split_enroll_token(token) {
        let root = response.tuf_root.as_deref().unwrap_or_default();
        if !upkeep_tuf::fingerprint(root).starts_with(&fingerprint.to_ascii_lowercase()) {
            return Err(AgentError::Tuf(
                "the organization's TUF root from the server does not match the fingerprint in the enrollment token; not enrolled"
                    .into(),
            ));
        }
    }
    let enrollment = Enrollment {
        server: client.server().to_owned(),
        workstation_id: response.workstation_id,
        device_token: response.device_token,
        signing_public_key: response.signing_public_key,
        organization: response.organization,
        enrolled_at: jiff::Timestamp::now().to_string(),
        tuf_root: response.tuf_root,
    };
    write_json(&state.enrollment_path(), &enrollment, true)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "workstation_id": enrollment.workstation_id, "server": enrollment.server, "organization": enrollment.organization })
        );
    } else {
        println!(
            "Enrolled with {} as workstation {} (organization {}).",
            enrollment.server, enrollment.workstation_id, enrollment.organization
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks in with the server and keeps the answer for offline use.
async fn checkin(state: &StateDir, client: &DeviceClient) -> Result<proto::CheckinResponse, AgentError> {
    client.flush_outbox(state).await?;
    let request = proto::CheckinRequest {
        hostname: hostname(),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        agent_version: AGENT_VERSION.to_owned(),
        installed: state.installed()?,
        utc_offset_minutes: utc_offset_minutes(),
        director_counter: crate::tuf::director_counter_seen(state),
    };
    let response: proto::CheckinResponse = client.post_json("/api/v1/device/checkin", &request).await?;
    let cached = CachedCheckin {
        received_at: jiff::Timestamp::now().to_string(),
        response: response.clone(),
    };
    write_json(&state.checkin_path(), &cached, true)?;
    Ok(response)
}

fn describe(instruction: &proto::ProductInstruction) -> String {
    let Some(update) = &instruction.update else {
        if let Some(reason) = &instruction.held_back {
            return format!("an update is held back: {reason}");
        }
        return match instruction.action {
            proto::Action::Blocked => format!("BLOCKED (error {INSTALLED_VERSION_DISAPPROVED})"),
            _ if instruction.installed_version.is_some() => "up to date".to_owned(),
            _ => "nothing to do".to_owned(),
        };
    };
    let v = &update.version;
    let mut text = match (instruction.action, update.required_reason.as_deref()) {
        (proto::Action::Blocked, _) => {
            format!("BLOCKED (error {INSTALLED_VERSION_DISAPPROVED}); update to {v} required")
        }
        (_, Some("deadline_passed")) => format!("update to {v} required (the deadline has passed)"),
        (_, Some(_)) => format!("update to {v} required"),
        _ => match &update.deadline {
            Some(deadline) => format!(
                "update to {v} available; required from {deadline} ({})",
                countdown(deadline)
            ),
            None => format!("update to {v} available"),
        },
    };
    if let Some(window) = update.install_window.as_ref().filter(|w| !w.open) {
        text.push_str(&format!(
            "; installs in the maintenance window {} (opens {})",
            window.window,
            countdown(&window.next_open)
        ));
    }
    text
}

async fn check(state: &StateDir, json: bool) -> Result<ExitCode, AgentError> {
    let enrollment = state.enrollment()?;
    let client = DeviceClient::enrolled(&enrollment, Some(Duration::from_secs(60)))?;
    // Report what is really installed: an interrupted update is settled first (unless another
    // agent process is in the middle of one).
    if let Ok(_lock) = state.lock() {
        pipeline::recover_all(state, Some(&client)).await?;
    }
    let response = checkin(state, &client).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).map_err(|e| AgentError::Invalid(e.to_string()))?
        );
    } else if response.instructions.is_empty() {
        println!("Nothing is installed or rolled out to this workstation.");
    } else {
        for i in &response.instructions {
            println!(
                "{:<24} {:<12} {}",
                i.product,
                i.installed_version.as_deref().unwrap_or("-"),
                describe(i)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, serde::Serialize)]
struct UpdateResult {
    product: String,
    from_version: Option<String>,
    version: String,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

async fn update(
    state: &StateDir,
    products: &[String],
    json: bool,
    options: pipeline::Options,
) -> Result<ExitCode, AgentError> {
    let results = update_products(state, products, Mode::detect(json), false, options).await?;
    let failed = results.iter().any(|r| r.outcome == "failed");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).map_err(|e| AgentError::Invalid(e.to_string()))?
        );
    } else {
        print_summary(&results, &mut std::io::stdout());
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_summary(results: &[UpdateResult], out: &mut dyn std::io::Write) {
    if results.is_empty() {
        let _ = writeln!(out, "Everything is up to date.");
    }
    for r in results {
        let _ = match r.outcome {
            "deferred" => writeln!(
                out,
                "{} {} downloaded; {}.",
                r.product,
                r.version,
                r.message.as_deref().unwrap_or("")
            ),
            "installed" => writeln!(
                out,
                "{} {} installed (was {}).",
                r.product,
                r.version,
                r.from_version.as_deref().unwrap_or("not installed")
            ),
            _ => writeln!(
                out,
                "{} {} NOT installed: {}",
                r.product,
                r.version,
                r.message.as_deref().unwrap_or("")
            ),
        };
    }
}

/// Checks in and runs the pipeline for every offered update (or only those of `products`).
async fn update_products(
    state: &StateDir,
    products: &[String],
    mode: Mode,
    only_required: bool,
    options: pipeline::Options,
) -> Result<Vec<UpdateResult>, AgentError> {
    let enrollment = state.enrollment()?;
    let _lock = state.lock()?;
    // No overall timeout: a large download may take long; connect and stalls are bounded.
    let client = DeviceClient::enrolled(&enrollment, None)?;
    pipeline::recover_all(state, Some(&client)).await?;
    let response = checkin(state, &client).await?;
    for named in products {
        if !response.instructions.iter().any(|i| &i.product == named) {
            return Err(AgentError::Invalid(format!(
                "`{named}` is neither installed here nor rolled out to this workstation"
            )));
        }
    }
    let mut results = Vec::new();
    for instruction in &response.instructions {
        if !products.is_empty() && !products.contains(&instruction.product) {
            continue;
        }
        let Some(offer) = &instruction.update else {
            if mode != Mode::Quiet {
                eprintln!("{}: {}", instruction.product, describe(instruction));
            }
            continue;
        };
        if only_required && instruction.action == proto::Action::Offered {
            continue;
        }
        let progress = Progress::new(mode, format!("{} {}", instruction.product, offer.version));
        let applied = pipeline::apply(
            state,
            &enrollment,
            &client,
            pipeline::Offered {
                instruction,
                offer,
                director: response.director.as_deref(),
            },
            &progress,
            options,
        )
        .await;
        let (outcome, error) = match applied {
            Ok(pipeline::Applied::Installed) => ("installed", None),
            Ok(pipeline::Applied::Deferred(message)) => ("deferred", Some(Ok(message))),
            Err(err) => {
                if mode != Mode::Quiet {
                    eprintln!("{}: update to {} failed: {err}", instruction.product, offer.version);
                }
                ("failed", Some(Err(err)))
            }
        };
        let (error_code, message) = match error {
            Some(Ok(message)) => (None, Some(message)),
            Some(Err(err)) => (Some(err.code()), Some(err.to_string())),
            None => (None, None),
        };
        results.push(UpdateResult {
            product: instruction.product.clone(),
            from_version: instruction.installed_version.clone(),
            version: offer.version.clone(),
            outcome,
            error_code,
            message,
        });
    }
    if results.iter().any(|r| r.outcome == "installed") {
        // Tell the server the new inventory now, and keep instructions that match it for
        // `status` and an offline `launch`.
        if let Err(e) = checkin(state, &client).await
            && mode != Mode::Quiet
        {
            eprintln!("upkeep-agent: warning: could not check in after installing: {e}");
        }
    }
    Ok(results)
}

/// "in 2d 3h", "in 5m", "3h ago" for an RFC 3339 time.
pub fn countdown(rfc3339: &str) -> String {
    let Ok(at) = rfc3339.parse::<jiff::Timestamp>() else {
        return String::new();
    };
    let seconds = at.as_second() - jiff::Timestamp::now().as_second();
    let span = seconds.unsigned_abs();
    let text = match span {
        0..60 => format!("{span}s"),
        60..3600 => format!("{}m", span / 60),
        3600..86_400 => format!("{}h {}m", span / 3600, span % 3600 / 60),
        _ => format!("{}d {}h", span / 86_400, span % 86_400 / 3600),
    };
    if seconds >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// `daemon`: check in every `interval` (with jitter), install required updates, report.
async fn daemon(state: &StateDir, interval: Duration, once: bool) -> Result<ExitCode, AgentError> {
    state.enrollment()?;
    eprintln!("upkeep-agent daemon: checking in every {}s", interval.as_secs_f64());
    loop {
        match update_products(state, &[], Mode::Lines, true, pipeline::Options::default()).await {
            Ok(results) => print_summary_if_any(&results),
            // A busy lock means a person is updating right now; the next round will see it done.
            Err(AgentError::Busy { .. }) => {}
            Err(e) => eprintln!("upkeep-agent daemon: {e}"),
        }
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            () = wait_for_work(state, jittered(interval)) => {}
            () = shutdown() => {
                eprintln!("upkeep-agent daemon: stopping");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Waits up to `span` for the server to say a rollout for this workstation appeared or changed
/// (a long poll on the device API), so `rollout create --now` acts at once.
async fn wait_for_work(state: &StateDir, span: Duration) {
    let deadline = tokio::time::Instant::now() + span;
    let client = match state
        .enrollment()
        .and_then(|e| DeviceClient::enrolled(&e, Some(Duration::from_secs(75))))
    {
        Ok(client) => client,
        Err(_) => return tokio::time::sleep_until(deadline).await,
    };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let seconds = left.as_secs().clamp(1, 60);
        let answer = client
            .request(reqwest::Method::GET, &format!("/api/v1/device/wait?timeout={seconds}"))
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == reqwest::StatusCode::OK => return,
            Ok(response) if response.status() == reqwest::StatusCode::NO_CONTENT => {}
            // Unreachable or refusing: just wait out the interval.
            _ => return tokio::time::sleep_until(deadline).await,
        }
    }
}

fn print_summary_if_any(results: &[UpdateResult]) {
    if !results.is_empty() {
        print_summary(results, &mut std::io::stderr());
    }
}

/// ±10% so a fleet started together does not check in together.
fn jittered(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.9 + f64::from(nanos % 1000) / 5000.0;
    interval.mul_f64(factor)
}

async fn shutdown() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn status(state: &StateDir, json: bool) -> Result<ExitCode, AgentError> {
    let enrollment = state.enrollment()?;
    let installed = state.installed()?;
    let cached = state.cached_checkin()?;
    let instruction = |product: &str| {
        cached
            .as_ref()
            .and_then(|c| c.response.instructions.iter().find(|i| i.product == product))
    };
    if json {
        let products: Vec<serde_json::Value> = installed
            .iter()
            .map(|p| {
                serde_json::json!({
                    "product": p.product,
                    "version": p.version,
                    "instruction": instruction(&p.product),
                })
            })
            .collect();
        let body = serde_json::json!({
            "server": enrollment.server,
            "workstation_id": enrollment.workstation_id,
            "organization": enrollment.organization,
            "last_checkin": cached.as_ref().map(|c| c.received_at.clone()),
            "products": products,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).map_err(|e| AgentError::Invalid(e.to_string()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Workstation {} at {} (organization {})",
        enrollment.workstation_id, enrollment.server, enrollment.organization
    );
    println!(
        "Last check-in: {}",
        cached.as_ref().map_or("never", |c| c.received_at.as_str())
    );
    if installed.is_empty() {
        println!("No products installed.");
    }
    for p in &installed {
        let said = instruction(&p.product)
            .map(describe)
            .unwrap_or_else(|| "not checked yet".to_owned());
        println!("{:<24} {:<12} {}", p.product, p.version, said);
    }
    Ok(ExitCode::SUCCESS)
}

async fn launch(state: &StateDir, product: &str, json: bool, args: &[String]) -> Result<ExitCode, AgentError> {
    let enrollment = state.enrollment()?;
    let dir = state.product(product);
    // Ask the server first; when it cannot be reached, the last instructions still hold.
    let client = DeviceClient::enrolled(&enrollment, Some(LAUNCH_CHECKIN_TIMEOUT))?;
    if dir.journal_path().exists() {
        // An update was interrupted, or is running right now in another agent process.
        let _lock = state.lock().map_err(|e| match e {
            AgentError::Busy { .. } => AgentError::Invalid(format!(
                "{product} is being updated right now; start it when that is done"
            )),
            other => other,
        })?;
        pipeline::recover_all(state, Some(&client)).await?;
    }
    let fresh = match checkin(state, &client).await {
        Ok(response) => Some(response),
        Err(AgentError::Unreachable { .. }) => None,
        Err(e) => return Err(e),
    };
    let instructions = match fresh {
        Some(r) => r.instructions,
        None => state
            .cached_checkin()?
            .map(|c| c.response.instructions)
            .unwrap_or_default(),
    };
    let mut current = dir.current_version()?.ok_or_else(|| AgentError::NotInstalled {
        product: product.to_owned(),
    })?;
    let instruction = instructions.iter().find(|i| i.product == product);

    if let Some(i) = instruction {
        let blocked = i.action == proto::Action::Blocked && i.installed_version.as_deref() == Some(current.as_str());
        let must_update = i
            .update
            .as_ref()
            .filter(|_| i.action == proto::Action::Required || blocked);
        match must_update {
            Some(offer) if !json => {
                // A required update, or the fix for a blocked version, is installed before starting.
                eprintln!("{product}: {}; installing it before starting", describe(i));
                // The summary goes to stderr: stdout belongs to the program about to start.
                let results = update_products(
                    state,
                    &[product.to_owned()],
                    Mode::detect(false),
                    false,
                    pipeline::Options::default(),
                )
                .await?;
                print_summary(&results, &mut std::io::stderr());
                current = dir.current_version()?.ok_or_else(|| AgentError::NotInstalled {
                    product: product.to_owned(),
                })?;
                let deferred = results.iter().any(|r| r.product == product && r.outcome == "deferred");
                if current != offer.version {
                    if blocked {
                        return Err(blocked_error(product, &current, i));
                    }
                    // The update was rolled back or waits for its window: the version in place
                    // keeps working rather than leaving the user with nothing.
                    if deferred {
                        eprintln!("{product}: starting {current} until the maintenance window");
                    } else {
                        eprintln!(
                            "{product}: the required update to {} could not be installed; starting {current}",
                            offer.version
                        );
                    }
                }
            }
            Some(offer) => {
                // Scripts get the decision; nothing is installed or started.
                if blocked {
                    return Err(blocked_error(product, &current, i));
                }
                println!(
                    "{}",
                    serde_json::json!({
                        "product": product,
                        "version": current,
                        "allowed": false,
                        "reason": "update_required",
                        "required_update": offer,
                    })
                );
                return Ok(ExitCode::SUCCESS);
            }
            None if blocked => return Err(blocked_error(product, &current, i)),
            None => {
                if let (proto::Action::Offered, Some(_), false) = (i.action, &i.update, json) {
                    eprintln!(
                        "{product}: {}; install it with `upkeep-agent update {product}`",
                        describe(i)
                    );
                }
            }
        }
    }

    let manifest = dir.manifest(&current)?.ok_or_else(|| AgentError::Corrupt {
        path: dir.meta_path(&current),
        reason: "missing".into(),
    })?;
    let launch_path = manifest.launch.clone().ok_or_else(|| AgentError::NoLaunch {
        product: product.to_owned(),
    })?;
    upkeep_domain::validate_relative_path(&launch_path).map_err(|e| AgentError::Invalid(e.to_string()))?;
    // The archive recipe unpacks into its version folder; an installer into its install folder.
    let base = match (&manifest.recipe[..], &manifest.installer) {
        ("command", Some(installer)) => std::path::PathBuf::from(&installer.install_dir),
        _ => dir.version_dir(&current),
    };
    let program = base.join(&launch_path);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "product": product,
                "version": current,
                "program": program,
                "allowed": true,
                "offered_update": instruction.and_then(|i| i.update.as_ref()),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    remind_backup(&dir, &current);
    exec(&program, args)
}

/// The first launch after an update says when the backup was taken, or warns that none was.
fn remind_backup(dir: &crate::state::ProductDir, version: &str) {
    let Ok(Some(reminder)) = crate::state::read_json::<LaunchReminder>(&dir.reminder_path()) else {
        return;
    };
    if reminder.version == version {
        match &reminder.backup {
            Some(b) => eprintln!(
                "Updated to {version}. Backup taken before the update: {} ({} bytes) at {}",
                b.path, b.size, b.taken_at
            ),
            None if reminder.backup_expected => {
                eprintln!("Updated to {version}. Warning: no backup was recorded before the update.")
            }
            None => eprintln!(
                "Updated to {version}. Warning: no backup was taken before this update; make one now if you rely on your data."
            ),
        }
    }
    let _ = std::fs::remove_file(dir.reminder_path());
}

/// `rollback PRODUCT`: back to the previous version on purpose, reported to the server.
async fn rollback(state: &StateDir, product: &str, json: bool) -> Result<ExitCode, AgentError> {
    let enrollment = state.enrollment()?;
    let _lock = state.lock()?;
    let client = DeviceClient::enrolled(&enrollment, Some(Duration::from_secs(10)))?;
    pipeline::recover_all(state, Some(&client)).await?;
    let (from, to) = pipeline::roll_back(&state.product(product))?;
    let report = proto::DeviceReport {
        product: product.to_owned(),
        version: from.clone(),
        status: proto::WorkstationStatus::RolledBack,
        rollout_id: None,
        from_version: Some(from.clone()),
        error_code: None,
        message: Some(format!("rolled back on purpose from {from} to {to}")),
        details: Some(serde_json::json!({ "to_version": to, "requested": true })),
        at: None,
    };
    client.report(state, report).await;
    let _ = checkin(state, &client).await;
    if json {
        println!(
            "{}",
            serde_json::json!({ "product": product, "from_version": from, "version": to })
        );
    } else {
        println!("{product} rolled back from {from} to {to}.");
    }
    Ok(ExitCode::SUCCESS)
}

fn blocked_error(product: &str, version: &str, instruction: &proto::ProductInstruction) -> AgentError {
    let message = instruction
        .block
        .as_ref()
        .map(|b| b.message.clone())
        .unwrap_or_else(|| format!("{product} {version} has been disapproved and must not be used"));
    AgentError::Blocked {
        product: product.to_owned(),
        version: version.to_owned(),
        message,
    }
}

#[cfg(unix)]
fn exec(program: &std::path::Path, args: &[String]) -> Result<ExitCode, AgentError> {
    use std::os::unix::process::CommandExt;
    // Replaces this process, so the product gets the terminal, signals and exit code directly.
    let err = std::process::Command::new(program).args(args).exec();
    Err(AgentError::Launch {
        path: program.to_owned(),
        source: err,
    })
}

#[cfg(not(unix))]
fn exec(program: &std::path::Path, args: &[String]) -> Result<ExitCode, AgentError> {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| AgentError::Launch {
            path: program.to_owned(),
            source: e,
        })?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}
