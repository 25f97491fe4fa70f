//! One function per command: check the input, call the server, print the answer.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use jiff::Timestamp;
use reqwest::multipart::{Form, Part};
use upkeep_domain::{LocalDateTime, MaintenanceWindow, WavePlan, parse_duration};
use upkeep_protocol as proto;

use crate::client::{Client, TransportError};
use crate::config::{self, show};
use crate::offline;
use crate::output::{Columns, Table, countdown, emit, emit_json, emit_while_read, or_dash, size, time, truncate};
use crate::{
    Command, EnrollTokenCommand, EventsArgs, Hinted, KeysCommand, Kind, LoginArgs, NotifyCommand, NotifyGroupCommand,
    ProductCommand, ReleaseCommand, RoleArg, RolloutCommand, RolloutCreateArgs, UploadArgs, UserCommand,
    WorkstationCommand, upload,
};

/// The server refuses release notes above this size; saying so before the upload saves sending
/// the whole artifact for nothing.
const MAX_NOTES_BYTES: u64 = 1024 * 1024;

/// How much of a workstation's error message fits in the rollout status table; `--json` has all.
const ERROR_CELL_CHARS: usize = 60;

/// How much of a paused rollout's reason fits in the rollout list; `rollout status` has all.
const REASON_CELL_CHARS: usize = 60;

/// How often `events --follow` asks for new events.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How many events `events --follow` asks for at a time; a full page is followed at once by the
/// next, so a burst is caught up on without waiting.
const FOLLOW_PAGE: u32 = 1000;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Login(args) => login(args).await,
        Command::Product(command) => product(command).await,
        Command::User(command) => user(command).await,
        Command::Release(command) => release(command).await,
        Command::EnrollToken(command) => enroll_token(command).await,
        Command::Rollout(command) => rollout(command).await,
        Command::Workstation(command) => workstation(command).await,
        Command::Events(args) => events(args).await,
        Command::Notify(NotifyCommand::Group(command)) => notify_group(command).await,
        Command::Keys(command) => keys(command).await,
    }
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    let (version, json, how) = match command {
        KeysCommand::Init { keys, json } => {
            let status = offline::status(&client).await?;
            let dir = offline::keys_dir(keys, &status.organization)?;
            let version = offline::init(&client, &dir).await?;
            let how = format!(
                "Offline signing is on: the root and targets keys are in {} (back that folder up and keep it off the server).\n\
                 Root version {version} names them; approve releases from here with: upkeep release approve PRODUCT VERSION --keys {}",
                dir.display(),
                dir.display()
            );
            (version, json, how)
        }
        KeysCommand::RotateRoot { keys, json } => {
            let status = offline::status(&client).await?;
            let version = if status.mode == "offline" {
                let dir = offline::keys_dir(keys, &status.organization)?;
                offline::rotate_root(&client, &dir, &status).await?
            } else {
                let answer: serde_json::Value = client.post(&["tuf", "rotate-root"], &serde_json::json!({})).await?;
                answer["root_version"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("the server did not say which root version it stored"))?
            };
            let how = format!(
                "Root key rotated: root version {version} is signed by the old and the new key; agents follow it at their next check."
            );
            (version, json, how)
        }
    };
    if json {
        return emit_json(&serde_json::json!({ "root_version": version }));
    }
    emit(&how)
}

/// The targets metadata to send with an approval decision: signed here in offline mode, none in
/// hosted mode (the server signs).
async fn decision_targets(
    client: &Client,
    keys: Option<std::path::PathBuf>,
    product: &str,
    version: &str,
    approve: bool,
) -> anyhow::Result<Option<String>> {
    let status = offline::status(client).await?;
    if status.mode != "offline" {
        return Ok(None);
    }
    let dir = offline::keys_dir(keys, &status.organization)?;
    offline::sign_decision(client, &dir, &status, product, version, approve)
        .await
        .map(Some)
}

/// A client for the server and token from the environment or the saved sign-in.
fn signed_in() -> anyhow::Result<Client> {
    let credentials = config::credentials()?;
    Client::new(credentials.server, Some(credentials.token))
}

// ---------------------------------------------------------------------------------------------
// login
// ---------------------------------------------------------------------------------------------

async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let server = config::parse_server_url(&args.server)?;
    if !args.password_stdin {
        return Err(Hinted::new(
            "the password is only read from stdin: add --password-stdin",
            "printf '%s\\n' \"$PASSWORD\" | upkeep login --server URL --user NAME --password-stdin",
        )
        .into());
    }
    let password = read_password()?;
    let client = Client::new(server.clone(), None)?;
    let response: proto::LoginResponse = client
        .post(
            &["auth", "login"],
            &proto::LoginRequest {
                user: args.user,
                password,
            },
        )
        .await?;
    let saved = config::Config {
        server: show(&server).to_owned(),
        token: response.token,
        user: response.user.clone(),
    };
    config::save(&config::config_dir()?, &saved)?;
    emit(&format!("Signed in to {} as {}", show(&server), response.user))
}

/// The first line of stdin, without its line ending; everything else on it is kept, spaces
/// included, since they may be part of the password.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "Password (shown as you type): ");
        let _ = stderr.flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line
        .strip_suffix('\n')
        .map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
    if password.is_empty() {
        bail!("no password on stdin");
    }
    Ok(password.to_owned())
}

// ---------------------------------------------------------------------------------------------
// products
// ---------------------------------------------------------------------------------------------

async fn product(command: ProductCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    match command {
        ProductCommand::Create {
            name,
            kind,
            public,
            json,
        } => {
            let kind = match kind {
                Kind::Client => proto::ProductKind::Client,
                Kind::Server => proto::ProductKind::Server,
            };
            let product: proto::Product = client
                .post(&["products"], &proto::ProductCreate { name, kind, public })
                .await?;
            if json {
                return emit_json(&product);
            }
            emit(&format!("Created product {} ({})", product.name, product.kind.as_str()))
        }
        ProductCommand::Update { name, public, json } => {
            let product: proto::Product = client
                .patch(&["products", &name], &proto::ProductUpdate { public: Some(public) })
                .await?;
            if json {
                return emit_json(&product);
            }
            emit(&format!(
                "{} is {} on the download page",
                product.name,
                if product.public { "offered" } else { "not offered" }
            ))
        }
        ProductCommand::List { json } => {
            let products: Vec<proto::Product> = client.get(&["products"], &[]).await?;
            if json {
                return emit_json(&products);
            }
            if products.is_empty() {
                return emit("No products yet; create one with `upkeep product create NAME`.");
            }
            let mut table = Table::new(&["NAME", "KIND", "PUBLIC", "CREATED"]);
            for p in &products {
                table.row([
                    p.name.clone(),
                    p.kind.as_str().to_owned(),
                    if p.public { "yes" } else { "no" }.to_owned(),
                    time(&p.created_at),
                ]);
            }
            emit(&table.render())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// users
// ---------------------------------------------------------------------------------------------

async fn user(command: UserCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    match command {
        UserCommand::Create {
            name,
            role,
            password_stdin,
            json,
        } => {
            if !password_stdin {
                return Err(Hinted::new(
                    "the password is only read from stdin: add --password-stdin",
                    "printf '%s\\n' \"$PASSWORD\" | upkeep user create NAME --role viewer --password-stdin",
                )
                .into());
            }
            let password = read_password()?;
            let role = match role {
                RoleArg::Admin => proto::Role::Admin,
                RoleArg::ReleaseManager => proto::Role::ReleaseManager,
                RoleArg::Viewer => proto::Role::Viewer,
            };
            let user: proto::User = client
                .post(&["users"], &proto::UserCreate { name, role, password })
                .await?;
            if json {
                return emit_json(&user);
            }
            emit(&format!("Created user {} ({})", user.name, user.role.as_str()))
        }
        UserCommand::List { json } => {
            let users: Vec<proto::User> = client.get(&["users"], &[]).await?;
            if json {
                return emit_json(&users);
            }
            let mut table = Table::new(&["NAME", "ROLE", "CREATED"]);
            for u in &users {
                table.row([u.name.clone(), u.role.as_str().to_owned(), time(&u.created_at)]);
            }
            emit(&table.render())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// releases
// ---------------------------------------------------------------------------------------------

async fn release_upload(client: &Client, args: UploadArgs) -> anyhow::Result<()> {
    // Everything that can be checked here is, before a byte goes out.
    let artifact = upload::check(&args.file)?;
    let notes = args.notes.as_deref().map(read_notes).transpose()?;
    let metadata = proto::ReleaseUploadMetadata {
        version: args.version.clone(),
        platform: args.platform.clone(),
        notes,
        launch: args.launch,
        manifest: args.manifest.as_deref().map(read_manifest).transpose()?,
    };

    let segments = ["products", args.product.as_str(), "releases"];
    let (body, tally) = upload::open(&artifact, std::io::stderr().is_terminal()).await?;
    let form = upload_form(&metadata, Part::stream_with_length(body, artifact.size), &artifact.name)?;
    let result: anyhow::Result<proto::Release> = client.post_form(&segments, form).await;
    let sent = upload::finish(&tally);
    let release = match result {
        Ok(release) => release,
        Err(err) if err.downcast_ref::<TransportError>().is_some_and(|t| t.connected) => {
            return Err(upload_broke(err));
        }
        Err(err) => return Err(err),
    };

    // The server hashed what it received; a mismatch means the bytes changed on the way.
    let stored = release
        .artifacts
        .iter()
        .find(|a| a.platform == args.platform)
        .or(release.artifacts.first())
        .context("the server's answer lists no artifact")?;
    if stored.sha256 != sent.sha256 || stored.size != artifact.size {
        return Err(Hinted::new(
            format!(
                "the server stored {} bytes with SHA-256 {}, but {} has {} bytes with SHA-256 {}: the upload was damaged",
                stored.size,
                stored.sha256,
                artifact.path.display(),
                artifact.size,
                sent.sha256
            ),
            format!("do not approve it: run `upkeep release disapprove {0} {1}` and upload the archive as a new version", release.product, release.version),
        )
        .into());
    }
    if args.json {
        return emit_json(&release);
    }
    let mut details = Table::headerless();
    details.row(["  file", &stored.filename]);
    details.row(["  format", &stored.format]);
    details.row([
        "  size".to_owned(),
        format!("{} bytes ({})", stored.size, size(stored.size)),
    ]);
    details.row(["  sha256", &stored.sha256]);
    emit(&format!(
        "Uploaded {} {} for {}; it is {} approval.\n{}Approve it with: upkeep release approve {} {}",
        release.product,
        release.version,
        stored.platform,
        if release.approval == proto::ApprovalState::Pending {
            "pending"
        } else {
            release.approval.as_str()
        },
        details.render(),
        release.product,
        release.version
    ))
}

/// The upload's two parts; the server reads `metadata` first so it can refuse a bad version
/// before the artifact.
fn upload_form(metadata: &proto::ReleaseUploadMetadata, artifact: Part, file_name: &str) -> anyhow::Result<Form> {
    Ok(Form::new()
        .part(
            "metadata",
            Part::text(serde_json::to_string(metadata)?).mime_str("application/json")?,
        )
        .part(
            "artifact",
            artifact
                .file_name(file_name.to_owned())
                .mime_str("application/octet-stream")?,
        ))
}

/// An upload whose connection broke: the server reads the rest of a refused upload (up to its
/// limit, or 64 MiB) before answering, so this happens mostly when the file is far too large.
fn upload_broke(original: anyhow::Error) -> anyhow::Error {
    Hinted::new(
        format!("{original:#}"),
        "the server may have refused the artifact part way, e.g. for being larger than its upload limit (`upkeep-server serve --max-upload-bytes`)",
    )
    .into()
}

/// The server refuses manifests above this size.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

fn read_manifest(path: &Path) -> anyhow::Result<String> {
    let context = || format!("reading the manifest {}", path.display());
    let metadata = std::fs::metadata(path).with_context(context)?;
    if metadata.len() > MAX_MANIFEST_BYTES {
        bail!("the manifest {} is larger than 64 KiB", path.display());
    }
    std::fs::read_to_string(path).with_context(context)
}

fn read_notes(path: &Path) -> anyhow::Result<String> {
    let context = || format!("reading release notes {}", path.display());
    let metadata = std::fs::metadata(path).with_context(context)?;
    if metadata.len() > MAX_NOTES_BYTES {
        bail!("release notes {} are larger than 1 MiB", path.display());
    }
    std::fs::read_to_string(path).with_context(context)
}

async fn release(command: ReleaseCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    match command {
        ReleaseCommand::Upload(args) => release_upload(&client, args).await,
        ReleaseCommand::Approve {
            product,
            version,
            keys,
            json,
        } => {
            let targets = decision_targets(&client, keys, &product, &version, true).await?;
            let release: proto::Release = client
                .post(
                    &["products", &product, "releases", &version, "approve"],
                    &proto::ApprovalRequest { reason: None, targets },
                )
                .await?;
            if json {
                return emit_json(&release);
            }
            emit(&format!(
                "Approved {0} {1}. Roll it out with: upkeep rollout create {0} {1} --all",
                release.product, release.version
            ))
        }
        ReleaseCommand::Disapprove {
            product,
            version,
            reason,
            keys,
            json,
        } => {
            let targets = decision_targets(&client, keys, &product, &version, false).await?;
            let release: proto::Release = client
                .post(
                    &["products", &product, "releases", &version, "disapprove"],
                    &proto::ApprovalRequest { reason, targets },
                )
                .await?;
            if json {
                return emit_json(&release);
            }
            let because = release
                .approval_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            emit(&format!(
                "Disapproved {} {}{because}. Workstations that have it installed are told not to launch it.",
                release.product, release.version
            ))
        }
        ReleaseCommand::List { product, json } => {
            let releases: Vec<proto::Release> = client.get(&["products", &product, "releases"], &[]).await?;
            if json {
                return emit_json(&releases);
            }
            if releases.is_empty() {
                return emit(&format!(
                    "No releases of {product} yet; upload one with `upkeep release upload {product} VERSION FILE --platform PLATFORM`."
                ));
            }
            let mut table = Table::new(&["VERSION", "APPROVAL", "PLATFORMS", "SIZE", "CREATED"]);
            for r in &releases {
                let platforms: Vec<&str> = r.artifacts.iter().map(|a| a.platform.as_str()).collect();
                let sizes: Vec<String> = r.artifacts.iter().map(|a| size(a.size)).collect();
                table.row([
                    r.version.clone(),
                    r.approval.as_str().to_owned(),
                    platforms.join(","),
                    sizes.join(","),
                    time(&r.created_at),
                ]);
            }
            emit(&table.render())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// enrollment tokens
// ---------------------------------------------------------------------------------------------

async fn enroll_token(command: EnrollTokenCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    let EnrollTokenCommand::Create { group, uses, json } = command;
    let created: proto::EnrollTokenCreated = client
        .post(&["enroll-tokens"], &proto::EnrollTokenCreate { group, uses })
        .await?;
    if json {
        return emit_json(&created);
    }
    // Only the token, so that `TOKEN=$(upkeep enroll-token create)` captures exactly it.
    emit(&created.token)
}

// ---------------------------------------------------------------------------------------------
// rollouts
// ---------------------------------------------------------------------------------------------

/// The request `rollout create` sends, checked here first so a typo is reported before anything
/// reaches the server, with the flag it came from. The server checks it all again.
fn rollout_request(args: &RolloutCreateArgs, now: Timestamp) -> anyhow::Result<proto::RolloutCreate> {
    let start = args.start.as_deref().map(|t| instant("--start", t)).transpose()?;
    let deadline = if let Some(text) = &args.deadline {
        let at = instant("--deadline", text).map_err(|err| {
            // A time without an offset is what --deadline-local takes: point there.
            if LocalDateTime::parse(text).is_ok() {
                Hinted::new(
                    format!("{err:#}"),
                    format!(
                        "for {} in each workstation's own time zone, use --deadline-local {}",
                        text.trim(),
                        text.trim()
                    ),
                )
                .into()
            } else {
                err
            }
        })?;
        let begins = start.unwrap_or(now);
        if at <= begins {
            bail!(
                "--deadline: {} is not after the rollout starts ({})",
                time(&at.to_string()),
                time(&begins.to_string())
            );
        }
        Some(proto::Deadline::At(text.trim().to_owned()))
    } else if let Some(text) = &args.deadline_local {
        LocalDateTime::parse(text).map_err(|e| anyhow!("--deadline-local: {e}"))?;
        Some(proto::Deadline::Local(text.trim().to_owned()))
    } else if let Some(text) = &args.deadline_after {
        parse_duration(text).map_err(|e| anyhow!("--deadline-after: {e}"))?;
        Some(proto::Deadline::After(text.trim().to_owned()))
    } else {
        None
    };
    let waves = match &args.waves {
        None => None,
        Some(text) => {
            let percents = WavePlan::parse_percents(text).map_err(|e| anyhow!("--waves: {e}"))?;
            // clap makes --soak and --max-failure-ratio come with --waves.
            let soak = args.soak.as_deref().unwrap_or_default();
            parse_duration(soak).map_err(|e| anyhow!("--soak: {e}"))?;
            let ratio = failure_ratio(args.max_failure_ratio.as_deref().unwrap_or_default())?;
            Some(proto::Waves {
                percents,
                soak: soak.trim().to_owned(),
                max_failure_ratio: ratio,
                min_sample: args.min_sample.unwrap_or_else(proto::default_min_sample),
            })
        }
    };
    if let Some(window) = &args.maintenance_window {
        MaintenanceWindow::parse(window).map_err(|e| anyhow!("--maintenance-window: {e}"))?;
    }
    Ok(proto::RolloutCreate {
        product: args.product.clone(),
        version: args.version.clone(),
        targets: proto::RolloutTargets {
            all: args.all,
            workstations: args.workstations.clone(),
            groups: args.groups.clone(),
        },
        mandatory: args.mandatory,
        starts_at: args.start.as_deref().map(|t| t.trim().to_owned()),
        deadline,
        waves,
        allow_downgrade: args.allow_downgrade,
        maintenance_window: args.maintenance_window.as_deref().map(|w| w.trim().to_owned()),
        now: args.now,
    })
}

/// An RFC 3339 time with an offset, as the server takes it.
fn instant(flag: &str, text: &str) -> anyhow::Result<Timestamp> {
    text.trim().parse::<Timestamp>().map_err(|_| {
        anyhow!(
            "{flag}: `{}` is not an RFC 3339 time with an offset, e.g. 2026-12-01T18:00:00-03:00 or 2026-12-01T21:00:00Z",
            truncate(text, 40)
        )
    })
}

/// `--max-failure-ratio`: a fraction from 0 to 1 (`0.1`) or a percentage (`10%`).
fn failure_ratio(text: &str) -> anyhow::Result<f64> {
    let trimmed = text.trim();
    let (number, scale) = match trimmed.strip_suffix('%') {
        Some(percent) => (percent.trim(), 100.0),
        None => (trimmed, 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && (0.0..=scale).contains(&n) => Ok(n / scale),
        _ => bail!(
            "--max-failure-ratio: `{}` is not a share of failures; use a fraction from 0 to 1 (0.1) or a percentage (10%)",
            truncate(text, 40)
        ),
    }
}

async fn rollout_create(client: &Client, args: RolloutCreateArgs) -> anyhow::Result<()> {
    let request = rollout_request(&args, Timestamp::now())?;
    if args.dry_run {
        let preview: proto::RolloutPreview = client.post(&["rollouts", "preview"], &request).await?;
        if args.json {
            return emit_json(&preview);
        }
        return emit(&preview_text(&preview, &request));
    }
    let report: proto::RolloutReport = client.post(&["rollouts"], &request).await?;
    if args.json {
        return emit_json(&report);
    }
    let r = &report.rollout;
    let targeted = report.workstations.len();
    let mut out = format!(
        "Rollout {} created: {} {} to {} ({})\n",
        r.id,
        r.product,
        r.version,
        targets_sentence(&r.targets),
        mandatory(r.mandatory),
    );
    for line in option_lines(r, Timestamp::now()) {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(&format!(
        "{targeted} workstation{} targeted now; follow it with: upkeep rollout status {}",
        plural(targeted as u64),
        r.id
    ));
    emit(&out)
}

/// Outcomes in the order an administrator reads them: what will happen, then what will not and
/// why. One the CLI does not know yet still shows, at the end.
const OUTCOME_ORDER: [&str; 8] = [
    "offered",
    "required",
    "blocked",
    "waiting_for_wave",
    "up_to_date",
    "newer_installed",
    "held_by_other_rollout",
    "not_approved",
];

/// The dry run for people.
fn preview_text(preview: &proto::RolloutPreview, request: &proto::RolloutCreate) -> String {
    let mut out = format!(
        "{} workstation{} targeted{}\n",
        preview.targeted,
        plural(preview.targeted),
        if preview.outcomes.is_empty() { "" } else { ":" }
    );
    let outcomes: Vec<(&str, u64)> = OUTCOME_ORDER
        .iter()
        .filter_map(|o| preview.outcomes.get(*o).map(|n| (*o, *n)))
        .chain(
            preview
                .outcomes
                .iter()
                .filter(|(o, _)| !OUTCOME_ORDER.contains(&o.as_str()))
                .map(|(o, n)| (o.as_str(), *n)),
        )
        .collect();
    let width = outcomes.iter().map(|(_, n)| n.to_string().len()).max().unwrap_or(0);
    for (outcome, n) in outcomes {
        out.push_str(&format!("  {n:>width$} {}\n", outcome.replace('_', " ")));
    }
    if preview.outcomes.get("not_approved").is_some_and(|n| *n > 0) {
        out.push_str(&format!(
            "  ({0} {1} is not approved; approve it before rolling it out: upkeep release approve {0} {1})\n",
            request.product, request.version
        ));
    }
    // Without waves the server reports one wave holding everyone: nothing to add.
    if request.waves.is_some() {
        for w in &preview.waves {
            out.push_str(&format!(
                "wave {} ({}%): {} workstation{}\n",
                w.wave,
                w.percent,
                w.workstations,
                plural(w.workstations)
            ));
        }
        out.push_str("  (which workstation lands in which wave is drawn when the rollout is created; counts may differ a little)\n");
    }
    out.push_str("Nothing was changed (dry run).");
    out
}

async fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    match command {
        RolloutCommand::Create(args) => rollout_create(&client, *args).await,
        RolloutCommand::List { json } => {
            let rollouts: Vec<proto::Rollout> = client.get(&["rollouts"], &[]).await?;
            if json {
                return emit_json(&rollouts);
            }
            if rollouts.is_empty() {
                return emit("No rollouts yet; start one with `upkeep rollout create PRODUCT VERSION --all`.");
            }
            emit(&rollout_list(&rollouts))
        }
        RolloutCommand::Status { id, json } => {
            let report: proto::RolloutReport = client.get(&["rollouts", &id.to_string()], &[]).await?;
            if json {
                return emit_json(&report);
            }
            emit(&rollout_status(&report, Timestamp::now()))
        }
        RolloutCommand::Pause { id, reason, json } => rollout_action(&client, id, "pause", reason, json).await,
        RolloutCommand::Resume { id, json } => rollout_action(&client, id, "resume", None, json).await,
        RolloutCommand::Cancel { id, reason, json } => rollout_action(&client, id, "cancel", reason, json).await,
    }
}

async fn rollout_action(
    client: &Client,
    id: i64,
    action: &str,
    reason: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let rollout: proto::Rollout = client
        .post(&["rollouts", &id.to_string(), action], &proto::RolloutAction { reason })
        .await?;
    if json {
        return emit_json(&rollout);
    }
    let mut text = action_text(&rollout, action, Timestamp::now());
    if action == "resume" && rollout.waves.is_some() {
        text.push_str("\nFailures so far are acknowledged; only new ones count against --max-failure-ratio.");
    }
    emit(&text)
}

/// What `pause`, `resume` and `cancel` say after the server did it.
fn action_text(r: &proto::Rollout, action: &str, now: Timestamp) -> String {
    let because = r
        .state_reason
        .as_deref()
        .filter(|_| action != "resume")
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    match action {
        "pause" => format!(
            "Rollout {0} paused{because}. Resume it with: upkeep rollout resume {0}",
            r.id
        ),
        "resume" if r.state == "scheduled" => format!(
            "Rollout {} resumed; it is scheduled to start at {}.",
            r.id,
            when(&r.starts_at, now)
        ),
        "resume" => format!("Rollout {} resumed; it is {}.", r.id, r.state),
        _ => format!("Rollout {} cancelled{because}.", r.id),
    }
}

fn rollout_list(rollouts: &[proto::Rollout]) -> String {
    let reasons = rollouts.iter().any(|r| paused_reason(r).is_some());
    let mut header = vec![
        "ID",
        "PRODUCT",
        "VERSION",
        "STATE",
        "WAVES",
        "MANDATORY",
        "TARGETS",
        "CREATED",
    ];
    if reasons {
        header.push("REASON");
    }
    let mut table = Table::new(&header);
    for r in rollouts {
        let mut row = vec![
            r.id.to_string(),
            r.product.clone(),
            r.version.clone(),
            r.state.clone(),
            waves_cell(r),
            if r.mandatory { "yes" } else { "no" }.to_owned(),
            targets_cell(&r.targets),
            time(&r.created_at),
        ];
        if reasons {
            row.push(paused_reason(r).map_or_else(String::new, |reason| truncate(reason, REASON_CELL_CHARS)));
        }
        table.row(row);
    }
    table.render()
}

/// The reason a paused rollout gives, for the list.
fn paused_reason(r: &proto::Rollout) -> Option<&str> {
    r.state_reason
        .as_deref()
        .filter(|reason| r.state == "paused" && !reason.is_empty())
}

/// `2/3 open`, or `-` without waves.
fn waves_cell(r: &proto::Rollout) -> String {
    match &r.waves {
        Some(w) => format!(
            "{}/{} open",
            r.opened_waves.min(w.percents.len() as u32),
            w.percents.len()
        ),
        None => "-".to_owned(),
    }
}

/// The settings beyond product, version and targets, one phrase each: the start when it is
/// ahead, the deadline, the waves, the maintenance window and downgrades.
fn option_lines(r: &proto::Rollout, now: Timestamp) -> Vec<String> {
    let mut lines = Vec::new();
    let start_ahead = r.starts_at.parse::<Timestamp>().is_ok_and(|t| t > now);
    if r.state == "scheduled" || (r.state == "paused" && start_ahead) {
        lines.push(format!("scheduled to start at {}", when(&r.starts_at, now)));
    }
    match &r.deadline {
        Some(proto::Deadline::At(at)) => {
            lines.push(format!("deadline {}", when(at, now)));
        }
        Some(proto::Deadline::Local(local)) => lines.push(format!(
            "deadline at {} in each workstation's local time",
            local_time(local)
        )),
        Some(proto::Deadline::After(span)) => {
            lines.push(format!(
                "deadline {span} after each workstation is first offered the update"
            ));
        }
        None => {}
    }
    if let Some(w) = &r.waves {
        let steps: Vec<String> = w.percents.iter().map(|p| format!("{p}%")).collect();
        let pauses = if w.max_failure_ratio >= 1.0 {
            "never pauses for failures".to_owned()
        } else if w.max_failure_ratio <= 0.0 {
            format!("pauses at any failure (after {} finished)", w.min_sample)
        } else {
            format!(
                "pauses above {} failures (after {} finished)",
                percent(w.max_failure_ratio),
                w.min_sample
            )
        };
        lines.push(format!("waves {}, {} soak, {pauses}", steps.join(" → "), w.soak));
    }
    if let Some(window) = &r.maintenance_window {
        lines.push(format!(
            "installs only during {window}, in each workstation's local time"
        ));
    }
    if r.allow_downgrade {
        lines.push("downgrades allowed: also offered where a newer version is installed".to_owned());
    }
    lines
}

/// An RFC 3339 time from the server in local time with how far off it is: `2026-12-01
/// 18:00:00, in 6d 4h`. A time that does not parse is shown as it came, without the countdown.
fn when(rfc3339: &str, now: Timestamp) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(at) => format!("{}, {}", time(rfc3339), countdown(at, now)),
        Err(_) => time(rfc3339),
    }
}

/// `2026-12-01T18:00:00` as `2026-12-01 18:00`: the seconds only when they are not zero.
fn local_time(text: &str) -> String {
    let spaced = text.replacen('T', " ", 1);
    match spaced.strip_suffix(":00") {
        Some(minutes) if minutes.matches(':').count() == 1 => minutes.to_owned(),
        _ => spaced,
    }
}

/// A ratio as a percentage, with a decimal only when it needs one: `10%`, `12.5%`.
fn percent(ratio: f64) -> String {
    let text = format!("{:.1}", ratio * 100.0);
    format!("{}%", text.strip_suffix(".0").unwrap_or(&text))
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Statuses with their counts in lifecycle order, zeros left out; a status this CLI does not
/// know yet still shows, at the end.
fn status_counts(counts: &std::collections::BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let known = proto::WorkstationStatus::ALL.map(|s| s.as_str());
    known
        .iter()
        .filter_map(|s| counts.get_key_value(*s))
        .chain(counts.iter().filter(|(s, _)| !known.contains(&s.as_str())))
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (s.as_str(), *n))
        .collect()
}

/// The "update process report": what was rolled out and how, how far it got per wave, and where
/// each workstation stands.
fn rollout_status(report: &proto::RolloutReport, now: Timestamp) -> String {
    let r = &report.rollout;
    let mut out = format!(
        "Rollout {}: {} {} to {}, {}, {}; created {} by {}\n",
        r.id,
        r.product,
        r.version,
        targets_sentence(&r.targets),
        mandatory(r.mandatory),
        r.state,
        time(&r.created_at),
        r.created_by
    );
    for line in option_lines(r, now) {
        out.push_str(&format!("  {line}\n"));
    }
    if let Some(reason) = r.state_reason.as_deref().filter(|reason| !reason.is_empty()) {
        // The server's own reasons start with the state ("paused itself: …"); an
        // administrator's are free text.
        if reason.starts_with(r.state.as_str()) {
            out.push_str(&format!("{reason}\n"));
        } else {
            out.push_str(&format!("{}: {reason}\n", r.state));
        }
    }
    let counts: Vec<String> = status_counts(&report.counts)
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    if counts.is_empty() && report.workstations.is_empty() {
        out.push_str("No workstations are targeted yet.\n");
        return out;
    }
    out.push_str(&counts.join(", "));
    out.push_str("\n\n");
    // Without waves the server reports a single wave holding everyone: nothing to add.
    let has_waves = r.waves.is_some();
    if has_waves && !report.waves.is_empty() {
        out.push_str(&wave_table(&report.waves));
        out.push('\n');
    }
    let mut header = vec!["WORKSTATION", "HOSTNAME"];
    if has_waves {
        header.push("WAVE");
    }
    header.extend(["STATUS", "FROM", "TO", "ERROR", "UPDATED"]);
    let mut table = Table::new(&header);
    for w in &report.workstations {
        let error = match (&w.error_code, &w.message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(text), None) | (None, Some(text)) => text.clone(),
            (None, None) => String::new(),
        };
        let mut row = vec![w.workstation_id.clone(), w.hostname.clone()];
        if has_waves {
            row.push(w.wave.to_string());
        }
        row.extend([
            w.status.as_str().to_owned(),
            or_dash(w.from_version.as_deref()),
            w.to_version.clone(),
            or_dash(Some(&truncate(&error, ERROR_CELL_CHARS))),
            time(&w.updated_at),
        ]);
        table.row(row);
    }
    out.push_str(&table.render());
    out
}

/// One row per wave, with a column for each status some wave has workstations in.
fn wave_table(waves: &[proto::WaveReport]) -> String {
    let mut total = std::collections::BTreeMap::new();
    for w in waves {
        for (status, n) in &w.counts {
            *total.entry(status.clone()).or_insert(0) += n;
        }
    }
    let statuses: Vec<String> = status_counts(&total).iter().map(|(s, _)| (*s).to_owned()).collect();
    let upper: Vec<String> = statuses.iter().map(|s| s.to_uppercase()).collect();
    let mut header = vec!["WAVE", "SHARE", "OPEN", "WORKSTATIONS"];
    header.extend(upper.iter().map(String::as_str));
    let mut table = Table::new(&header);
    for w in waves {
        let mut row = vec![
            w.wave.to_string(),
            format!("{}%", w.percent),
            if w.open { "yes" } else { "no" }.to_owned(),
            w.workstations.to_string(),
        ];
        row.extend(
            statuses
                .iter()
                .map(|s| w.counts.get(s).copied().unwrap_or(0).to_string()),
        );
        table.row(row);
    }
    table.render()
}

fn mandatory(mandatory: bool) -> &'static str {
    if mandatory { "mandatory" } else { "optional" }
}

/// Targets as a phrase: "all workstations", "workstations a, b and group lab".
fn targets_sentence(targets: &proto::RolloutTargets) -> String {
    if targets.all {
        return "all workstations".to_owned();
    }
    let mut parts = Vec::new();
    for (one, many, list) in [
        ("workstation", "workstations", &targets.workstations),
        ("group", "groups", &targets.groups),
    ] {
        if !list.is_empty() {
            parts.push(format!(
                "{} {}",
                if list.len() == 1 { one } else { many },
                list.join(", ")
            ));
        }
    }
    if parts.is_empty() {
        "no workstations".to_owned()
    } else {
        parts.join(" and ")
    }
}

/// Targets in a table cell: `all`, or `ws:a,ws:b,group:lab`.
fn targets_cell(targets: &proto::RolloutTargets) -> String {
    if targets.all {
        return "all".to_owned();
    }
    let cells: Vec<String> = targets
        .workstations
        .iter()
        .map(|w| format!("ws:{w}"))
        .chain(targets.groups.iter().map(|g| format!("group:{g}")))
        .collect();
    cells.join(",")
}

// ---------------------------------------------------------------------------------------------
// workstations and events
// ---------------------------------------------------------------------------------------------

async fn workstation(command: WorkstationCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    match command {
        WorkstationCommand::List { json } => {
            let workstations: Vec<proto::Workstation> = client.get(&["workstations"], &[]).await?;
            if json {
                return emit_json(&workstations);
            }
            if workstations.is_empty() {
                return emit("No workstations have enrolled yet; give them a token from `upkeep enroll-token create`.");
            }
            let mut table = Table::new(&[
                "ID",
                "HOSTNAME",
                "OS/ARCH",
                "AGENT",
                "GROUPS",
                "INSTALLED",
                "LAST CHECK-IN",
            ]);
            for w in &workstations {
                let installed: Vec<String> = w.installed.iter().map(|(p, v)| format!("{p}={v}")).collect();
                table.row([
                    w.id.clone(),
                    w.hostname.clone(),
                    format!("{}/{}", w.os, w.arch),
                    w.agent_version.clone(),
                    or_dash(Some(&w.groups.join(","))),
                    or_dash(Some(&installed.join(","))),
                    w.last_checkin_at.as_deref().map_or_else(|| "never".to_owned(), time),
                ]);
            }
            emit(&table.render())
        }
        WorkstationCommand::Show { id, json } => {
            let w: proto::Workstation = client.get(&["workstations", &id], &[]).await?;
            if json {
                return emit_json(&w);
            }
            let mut table = Table::headerless();
            table.row(["ID:", &w.id]);
            table.row(["Hostname:", &w.hostname]);
            table.row(["OS/arch:".to_owned(), format!("{}/{}", w.os, w.arch)]);
            table.row(["Agent:", &w.agent_version]);
            table.row(["Groups:".to_owned(), or_dash(Some(&w.groups.join(", ")))]);
            table.row(["Enrolled:".to_owned(), time(&w.enrolled_at)]);
            table.row([
                "Last check-in:".to_owned(),
                w.last_checkin_at.as_deref().map_or_else(|| "never".to_owned(), time),
            ]);
            table.row(["Installed:", if w.installed.is_empty() { "nothing yet" } else { "" }]);
            for (product, version) in &w.installed {
                table.row([format!("  {product}"), version.clone()]);
            }
            emit(&table.render())
        }
    }
}

async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let client = signed_in()?;
    let now = Timestamp::now();
    let since = args
        .since
        .as_deref()
        .map(|s| since(s, now, &jiff::tz::TimeZone::system()))
        .transpose()?;
    // Unset filters are left out of the query rather than sent empty.
    let filters: Vec<(&str, String)> = [
        ("product", args.product.clone()),
        ("workstation", args.workstation.clone()),
        ("rollout", args.rollout.map(|id| id.to_string())),
        ("type", args.kind.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let mut query = filters.clone();
    query.extend(since.map(|t| ("since", t.to_string())));
    query.extend(args.limit.map(|n| ("limit", n.to_string())));
    if args.follow {
        return follow(&client, &args, filters, query, since.filter(|t| *t > now)).await;
    }
    let events: Vec<proto::Event> = client.get(&["events"], &query).await?;
    if args.json {
        return emit_json(&events);
    }
    if events.is_empty() {
        return emit("No events.");
    }
    // One line per event, aligned like a table but without a header: it reads like a log.
    let mut table = Table::headerless();
    for e in &events {
        table.row(event_cells(e));
    }
    emit(&table.render())
}

/// `--since`: a span back from `now` (`90m`, `1h`, `7d`), an RFC 3339 time, or a date and time
/// without an offset, read in `zone` as the tables show times (`2026-05-01 09:00`, `2026-05-01`).
fn since(text: &str, now: Timestamp, zone: &jiff::tz::TimeZone) -> anyhow::Result<Timestamp> {
    let trimmed = text.trim();
    if let Ok(ms) = parse_duration(trimmed) {
        return jiff::SignedDuration::from_millis(ms)
            .checked_neg()
            .and_then(|back| now.checked_add(back).ok())
            .ok_or_else(|| anyhow!("--since: `{}` reaches back too far", truncate(text, 40)));
    }
    if let Ok(at) = trimmed.parse::<Timestamp>() {
        return Ok(at);
    }
    let civil = trimmed.parse::<jiff::civil::DateTime>().or_else(|_| {
        trimmed
            .parse::<jiff::civil::Date>()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    });
    if let Ok(at) = civil.and_then(|dt| dt.to_zoned(zone.clone())) {
        return Ok(at.timestamp());
    }
    Err(anyhow!(
        "--since: `{}` is neither a span back from now (30m, 1h, 7d) nor a time (2026-05-01T09:00:00Z, or \"2026-05-01 09:00\" in local time)",
        truncate(text, 40)
    ))
}

/// `events --follow`: the matching events so far, then new ones as they come, until Ctrl-C (exit
/// 0) or until nobody reads the output any more.
///
/// New events are asked for by id (`after`), oldest first. `--since` is left out of those
/// requests unless it is still ahead: a late report from an agent that was offline keeps the
/// time it happened, and it is still news.
async fn follow(
    client: &Client,
    args: &EventsArgs,
    filters: Vec<(&str, String)>,
    first: Vec<(&str, String)>,
    since_ahead: Option<Timestamp>,
) -> anyhow::Result<()> {
    let mut printer = EventPrinter {
        json: args.json,
        columns: Columns::default(),
    };
    let watch = async {
        // The newest event of all, before the filtered ones: if none match yet, new ones are
        // still told apart from old ones.
        let newest: Vec<proto::Event> = client.get(&["events"], &[("limit", "1".to_owned())]).await?;
        let events: Vec<proto::Event> = client.get(&["events"], &first).await?;
        let mut last = events.iter().chain(&newest).map(|e| e.id).max().unwrap_or(0);
        if !printer.print(&events)? {
            return Ok(());
        }
        let mut query = filters;
        query.extend(since_ahead.map(|t| ("since", t.to_string())));
        query.push(("limit", FOLLOW_PAGE.to_string()));
        let mut unreachable = false;
        loop {
            let mut page = query.clone();
            page.push(("after", last.to_string()));
            let events: Vec<proto::Event> = match client.get(&["events"], &page).await {
                Ok(events) => events,
                // A server restart or a network hiccup should not end a watch: say so once,
                // and keep trying.
                Err(err) if err.downcast_ref::<TransportError>().is_some() => {
                    if !unreachable {
                        warn(&format!("{err:#}; trying again every second"));
                        unreachable = true;
                    }
                    tokio::time::sleep(FOLLOW_INTERVAL).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            if unreachable {
                warn("reached the server again");
                unreachable = false;
            }
            last = events.iter().map(|e| e.id).max().unwrap_or(last).max(last);
            if !printer.print(&events)? {
                return Ok(());
            }
            if events.len() < FOLLOW_PAGE as usize {
                tokio::time::sleep(FOLLOW_INTERVAL).await;
            }
        }
    };
    tokio::select! {
        result = watch => result,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("watching for Ctrl-C")?;
            Ok(())
        }
    }
}

/// Prints followed events as they come: aligned lines, or one JSON object per line.
struct EventPrinter {
    json: bool,
    columns: Columns,
}

impl EventPrinter {
    /// `Ok(false)` when stdout was closed and there is no point going on.
    fn print(&mut self, events: &[proto::Event]) -> anyhow::Result<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        let text = if self.json {
            let mut lines = String::new();
            for e in events {
                lines.push_str(&serde_json::to_string(e)?);
                lines.push('\n');
            }
            lines
        } else {
            let rows: Vec<Vec<String>> = events.iter().map(|e| event_cells(e).to_vec()).collect();
            self.columns.render(&rows)
        };
        emit_while_read(&text)
    }
}

/// One event as a log line's cells: time, type, actor, subject, details.
fn event_cells(e: &proto::Event) -> [String; 5] {
    let subject = [e.product.as_deref(), e.version.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let mut details = Vec::new();
    // Workstations act under their own id; naming it twice adds nothing.
    if let Some(ws) = e.workstation_id.as_ref().filter(|ws| **ws != e.actor) {
        details.push(format!("workstation={ws}"));
    }
    if let Some(rollout) = e.rollout_id {
        details.push(format!("rollout={rollout}"));
    }
    if let Some(code) = &e.error_code {
        details.push(format!("error={code}"));
    }
    if let Some(message) = &e.message {
        details.push(message.clone());
    }
    [
        time(&e.at),
        e.kind.clone(),
        e.actor.clone(),
        or_dash(Some(&subject)),
        details.join(" "),
    ]
}

/// A line on stderr that is not an error: the command goes on.
fn warn(message: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "upkeep: {}", crate::output::printable(message));
}

// ---------------------------------------------------------------------------------------------
// notifications
// ---------------------------------------------------------------------------------------------

async fn notify_group(command: NotifyGroupCommand) -> anyhow::Result<()> {
    let client = signed_in()?;
    match command {
        NotifyGroupCommand::Create {
            name,
            emails,
            webhooks,
            product,
            rollout,
            json,
        } => {
            let request = proto::NotificationGroupCreate {
                name,
                emails,
                webhooks,
                product,
                rollout_id: rollout,
            };
            let group: proto::NotificationGroup = client.post(&["notification-groups"], &request).await?;
            if json {
                return emit_json(&group);
            }
            let attached = match (&group.product, group.rollout_id) {
                (Some(p), _) => format!("updates of {p}"),
                (None, Some(id)) => format!("rollout {id}"),
                (None, None) => "nothing".to_owned(),
            };
            let mut text = format!(
                "Notification group {} created for {attached}: {} e-mail address(es), {} webhook(s).",
                group.name,
                group.emails.len(),
                group.webhooks.len()
            );
            if let (Some(secret), false) = (&group.webhook_secret, group.webhooks.is_empty()) {
                text.push_str(&format!(
                    "\nWebhook secret (shown only now): {secret}\nEach POST carries X-Upkeep-Signature: sha256=HMAC-SHA256(secret, body) in hex."
                ));
            }
            emit(&text)
        }
        NotifyGroupCommand::List { json } => {
            let groups: Vec<proto::NotificationGroup> = client.get(&["notification-groups"], &[]).await?;
            if json {
                return emit_json(&groups);
            }
            let mut table = Table::new(&["NAME", "FOR", "E-MAILS", "WEBHOOKS", "DELIVERED", "PENDING", "GIVEN UP"]);
            for g in &groups {
                let target = match (&g.product, g.rollout_id) {
                    (Some(p), _) => p.clone(),
                    (None, Some(id)) => format!("rollout {id}"),
                    _ => "-".into(),
                };
                table.row([
                    g.name.clone(),
                    target,
                    g.emails.join(", "),
                    g.webhooks.len().to_string(),
                    g.delivered.to_string(),
                    g.pending.to_string(),
                    g.given_up.to_string(),
                ]);
            }
            emit(&table.render())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_well() {
        let all = proto::RolloutTargets {
            all: true,
            ..Default::default()
        };
        assert_eq!(
            (targets_sentence(&all).as_str(), targets_cell(&all).as_str()),
            ("all workstations", "all")
        );
        let some = proto::RolloutTargets {
            all: false,
            workstations: vec!["a".into(), "b".into()],
            groups: vec!["lab".into()],
        };
        assert_eq!(targets_sentence(&some), "workstations a, b and group lab");
        assert_eq!(targets_cell(&some), "ws:a,ws:b,group:lab");
    }

    #[test]
    fn rollout_status_lists_non_zero_counts_in_lifecycle_order() {
        let report: proto::RolloutReport = serde_json::from_value(serde_json::json!({
            "rollout": { "id": 7, "product": "demo", "version": "1.0.0", "mandatory": true, "state": "active",
                         "targets": { "all": true }, "created_at": "bad time", "created_by": "admin" },
            "counts": { "failed": 1, "installed": 2, "pending": 0, "weird": 3 },
            "workstations": [{ "workstation_id": "w1", "hostname": "pc1", "status": "failed", "from_version": null,
                               "to_version": "1.0.0", "error_code": "E1", "message": "disk full", "updated_at": "bad time" }]
        }))
        .unwrap();
        let text = rollout_status(&report, Timestamp::now());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Rollout 7: demo 1.0.0 to all workstations, mandatory, active; created bad time by admin"
        );
        assert_eq!(lines[1], "installed 2, failed 1, weird 3");
        assert!(lines[3].starts_with("WORKSTATION"), "{text}");
        assert!(!lines[3].contains("WAVE"), "no waves, no wave column: {text}");
        assert!(lines[4].contains("E1: disk full"), "{text}");
    }

    const NOW: &str = "2026-05-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    /// `rollout create demo 1.0.0 --all` plus `extra`, as clap would parse it.
    fn create_args(extra: &[&str]) -> RolloutCreateArgs {
        use clap::Parser;
        let cli =
            crate::Cli::try_parse_from([&["upkeep", "rollout", "create", "demo", "1.0.0", "--all"], extra].concat())
                .unwrap();
        match cli.command {
            Command::Rollout(RolloutCommand::Create(args)) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn request(extra: &[&str]) -> anyhow::Result<proto::RolloutCreate> {
        rollout_request(&create_args(extra), now())
    }

    fn error(extra: &[&str]) -> String {
        format!("{:#}", request(extra).unwrap_err())
    }

    #[test]
    fn rollout_requests_carry_every_option() {
        let plain = request(&[]).unwrap();
        assert!(plain.starts_at.is_none() && plain.deadline.is_none() && plain.waves.is_none());
        assert!(!plain.allow_downgrade && plain.maintenance_window.is_none());

        let full = request(&[
            "--start",
            "2026-05-02T08:00:00+02:00",
            "--deadline",
            " 2026-05-09T08:00:00Z",
            "--waves",
            "5,25,100",
            "--soak",
            "30m",
            "--max-failure-ratio",
            "10%",
            "--allow-downgrade",
            "--maintenance-window",
            "Mon-Fri 22:00-06:00",
        ])
        .unwrap();
        assert_eq!(full.starts_at.as_deref(), Some("2026-05-02T08:00:00+02:00"));
        assert_eq!(full.deadline, Some(proto::Deadline::At("2026-05-09T08:00:00Z".into())));
        assert_eq!(
            full.waves,
            Some(proto::Waves {
                percents: vec![5, 25, 100],
                soak: "30m".into(),
                max_failure_ratio: 0.1,
                min_sample: 3,
            })
        );
        assert!(full.allow_downgrade);
        assert_eq!(full.maintenance_window.as_deref(), Some("Mon-Fri 22:00-06:00"));

        let local = request(&["--deadline-local", "2026-12-01T18:00"]).unwrap();
        assert_eq!(local.deadline, Some(proto::Deadline::Local("2026-12-01T18:00".into())));
        let after = request(&["--deadline-after", "7d"]).unwrap();
        assert_eq!(after.deadline, Some(proto::Deadline::After("7d".into())));
        let sample = request(&[
            "--waves",
            "50,100",
            "--soak",
            "1h",
            "--max-failure-ratio",
            "0",
            "--min-sample",
            "10",
        ])
        .unwrap();
        assert_eq!(
            sample.waves.map(|w| (w.min_sample, w.max_failure_ratio)),
            Some((10, 0.0))
        );

        // The body is what the server reads.
        let body = serde_json::to_value(&local).unwrap();
        assert_eq!(body["deadline"], serde_json::json!({ "local": "2026-12-01T18:00" }));
    }

    #[test]
    fn bad_rollout_options_name_their_flag() {
        let cases: [(&[&str], &str); 10] = [
            (&["--start", "tomorrow"], "--start: `tomorrow` is not an RFC 3339 time"),
            (
                &["--start", "2026-05-02T08:00"],
                "--start: `2026-05-02T08:00` is not an RFC 3339",
            ),
            (&["--deadline", "2026-04-30T00:00:00Z"], "--deadline: "),
            (
                &["--start", "2026-06-01T00:00:00Z", "--deadline", "2026-05-09T00:00:00Z"],
                "is not after the rollout starts",
            ),
            (
                &["--deadline-local", "2026-12-01"],
                "--deadline-local: `2026-12-01` is not a local date",
            ),
            (
                &["--deadline-after", "7 days"],
                "--deadline-after: `7 days` is not a duration",
            ),
            (
                &["--waves", "25,5", "--soak", "1h", "--max-failure-ratio", "0.1"],
                "--waves: `25,5` is not a wave plan",
            ),
            (
                &["--waves", "5,100", "--soak", "soon", "--max-failure-ratio", "0.1"],
                "--soak: `soon` is not a duration",
            ),
            (
                &["--waves", "5,100", "--soak", "1h", "--max-failure-ratio", "1.5"],
                "--max-failure-ratio: `1.5` is not a share",
            ),
            (
                &["--maintenance-window", "nights"],
                "--maintenance-window: `nights` is not a maintenance window",
            ),
        ];
        for (extra, expected) in cases {
            let message = error(extra);
            assert!(message.contains(expected), "{extra:?}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn failure_ratios_are_fractions_or_percentages() {
        assert_eq!(failure_ratio("0.1").unwrap(), 0.1);
        assert_eq!(failure_ratio("10%").unwrap(), 0.1);
        assert_eq!(failure_ratio(" 12.5 % ").unwrap(), 0.125);
        assert_eq!(failure_ratio("0").unwrap(), 0.0);
        assert_eq!(failure_ratio("1").unwrap(), 1.0);
        assert_eq!(failure_ratio("100%").unwrap(), 1.0);
        for bad in ["", "10", "-0.1", "101%", "NaN", "inf", "ten", "%"] {
            assert!(failure_ratio(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn since_takes_spans_instants_and_local_times() {
        let zone = jiff::tz::TimeZone::fixed(jiff::tz::offset(-3));
        let at = |text: &str| since(text, now(), &zone).map(|t| t.to_string());
        assert_eq!(at("1h").unwrap(), "2026-05-01T11:00:00Z");
        assert_eq!(at("90m").unwrap(), "2026-05-01T10:30:00Z");
        assert_eq!(at("1h30m").unwrap(), "2026-05-01T10:30:00Z");
        assert_eq!(at("7d").unwrap(), "2026-04-24T12:00:00Z");
        assert_eq!(at("2w").unwrap(), "2026-04-17T12:00:00Z");
        assert_eq!(at("2026-04-30T09:00:00Z").unwrap(), "2026-04-30T09:00:00Z");
        assert_eq!(at("2026-04-30T09:00:00-03:00").unwrap(), "2026-04-30T12:00:00Z");
        // Without an offset: the zone's wall clock, like the tables show.
        assert_eq!(at("2026-04-30 09:00").unwrap(), "2026-04-30T12:00:00Z");
        assert_eq!(at("2026-04-30T09:00:30").unwrap(), "2026-04-30T12:00:30Z");
        assert_eq!(at("2026-04-30").unwrap(), "2026-04-30T03:00:00Z");
        for bad in ["", "1", "0s", "yesterday", "-1h", "2026-13-01", "100000000000d"] {
            let message = format!("{:#}", at(bad).unwrap_err());
            assert!(message.starts_with("--since: "), "{bad:?}: {message}");
        }
    }

    fn rollout(extra: serde_json::Value) -> proto::Rollout {
        let mut base = serde_json::json!({
            "id": 4, "product": "demo", "version": "1.0.0", "mandatory": false, "state": "active",
            "targets": { "all": true }, "starts_at": "2026-05-01T11:00:00Z", "opened_waves": 1,
            "created_at": "2026-05-01T11:00:00Z", "created_by": "admin"
        });
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn options_are_described_in_words() {
        assert!(option_lines(&rollout(serde_json::json!({})), now()).is_empty());

        let r = rollout(serde_json::json!({
            "state": "scheduled",
            "starts_at": "2026-05-01T14:05:00Z",
            "deadline": { "at": "2026-05-03T15:05:00Z" },
            "waves": { "percents": [5, 25, 100], "soak": "30m", "max_failure_ratio": 0.1, "min_sample": 3 },
            "maintenance_window": "Mon-Fri 22:00-06:00",
            "allow_downgrade": true
        }));
        let lines = option_lines(&r, now());
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[0].starts_with("scheduled to start at 2026-05-0"), "{}", lines[0]);
        assert!(lines[0].ends_with(", in 2h 5m"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("deadline 2026-05-0") && lines[1].ends_with(", in 2d 3h"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2],
            "waves 5% → 25% → 100%, 30m soak, pauses above 10% failures (after 3 finished)"
        );
        assert_eq!(
            lines[3],
            "installs only during Mon-Fri 22:00-06:00, in each workstation's local time"
        );
        assert_eq!(
            lines[4],
            "downgrades allowed: also offered where a newer version is installed"
        );

        let local = rollout(serde_json::json!({ "deadline": { "local": "2026-12-01T18:00:00" } }));
        assert_eq!(
            option_lines(&local, now()),
            ["deadline at 2026-12-01 18:00 in each workstation's local time"]
        );
        let after = rollout(serde_json::json!({ "deadline": { "after": "7d" } }));
        assert_eq!(
            option_lines(&after, now()),
            ["deadline 7d after each workstation is first offered the update"]
        );
        let passed = rollout(serde_json::json!({ "deadline": { "at": "2026-05-01T09:00:00Z" } }));
        assert!(option_lines(&passed, now())[0].ends_with(", 3h ago"));
        let odd = rollout(serde_json::json!({ "deadline": { "at": "someday" } }));
        assert_eq!(option_lines(&odd, now()), ["deadline someday"]);

        let edges = |ratio: f64| {
            let r = rollout(serde_json::json!({
                "waves": { "percents": [100], "soak": "1h", "max_failure_ratio": ratio, "min_sample": 1 }
            }));
            option_lines(&r, now()).remove(0)
        };
        assert_eq!(
            edges(0.0),
            "waves 100%, 1h soak, pauses at any failure (after 1 finished)"
        );
        assert_eq!(
            edges(0.125),
            "waves 100%, 1h soak, pauses above 12.5% failures (after 1 finished)"
        );
        assert_eq!(edges(1.0), "waves 100%, 1h soak, never pauses for failures");

        // A paused rollout whose start is still ahead says when it would start.
        let paused = rollout(serde_json::json!({ "state": "paused", "starts_at": "2026-05-01T13:00:00Z" }));
        assert_eq!(option_lines(&paused, now()).len(), 1);
        let started = rollout(serde_json::json!({ "state": "paused" }));
        assert!(option_lines(&started, now()).is_empty());
    }

    #[test]
    fn small_formats() {
        assert_eq!(local_time("2026-12-01T18:00:00"), "2026-12-01 18:00");
        assert_eq!(local_time("2026-12-01T18:00:30"), "2026-12-01 18:00:30");
        assert_eq!(local_time("2026-12-01T18:00"), "2026-12-01 18:00");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(1.0 / 3.0), "33.3%");
        assert_eq!(waves_cell(&rollout(serde_json::json!({}))), "-");
        let waved = rollout(serde_json::json!({
            "opened_waves": 2,
            "waves": { "percents": [5, 25, 100], "soak": "1h", "max_failure_ratio": 0.1 }
        }));
        assert_eq!(waves_cell(&waved), "2/3 open");
    }

    #[test]
    fn actions_say_what_happened() {
        let paused = rollout(serde_json::json!({ "state": "paused", "state_reason": "freeze" }));
        assert_eq!(
            action_text(&paused, "pause", now()),
            "Rollout 4 paused (freeze). Resume it with: upkeep rollout resume 4"
        );
        let active = rollout(serde_json::json!({}));
        assert_eq!(
            action_text(&active, "resume", now()),
            "Rollout 4 resumed; it is active."
        );
        let scheduled = rollout(serde_json::json!({ "state": "scheduled", "starts_at": "2026-05-01T14:00:00Z" }));
        assert!(action_text(&scheduled, "resume", now()).ends_with(", in 2h."));
        let cancelled = rollout(serde_json::json!({ "state": "cancelled" }));
        assert_eq!(action_text(&cancelled, "cancel", now()), "Rollout 4 cancelled.");
    }

    #[test]
    fn the_list_shows_waves_and_why_a_rollout_paused() {
        let plain = rollout_list(&[rollout(serde_json::json!({}))]);
        assert!(
            plain.starts_with("ID  PRODUCT  VERSION  STATE   WAVES  MANDATORY"),
            "{plain}"
        );
        assert!(!plain.contains("REASON"), "{plain}");
        let list = rollout_list(&[
            rollout(serde_json::json!({})),
            rollout(serde_json::json!({
                "id": 5, "state": "paused", "state_reason": "paused itself: 2 of 3 finished installs failed",
                "opened_waves": 2, "waves": { "percents": [5, 25, 100], "soak": "1h", "max_failure_ratio": 0.1 }
            })),
        ]);
        let lines: Vec<&str> = list.lines().collect();
        assert!(lines[0].ends_with("CREATED              REASON"), "{list}");
        assert!(lines[2].contains("paused  2/3 open"), "{list}");
        assert!(
            lines[2].ends_with("paused itself: 2 of 3 finished installs failed"),
            "{list}"
        );
    }

    #[test]
    fn the_dry_run_counts_outcomes_and_waves() {
        let preview: proto::RolloutPreview = serde_json::from_value(serde_json::json!({
            "targeted": 12,
            "outcomes": { "up_to_date": 1, "held_by_other_rollout": 1, "offered": 10, "zz_new": 0 },
            "waves": [
                { "wave": 1, "percent": 5, "workstations": 1 },
                { "wave": 2, "percent": 100, "workstations": 11 }
            ]
        }))
        .unwrap();
        let mut waved = request(&["--waves", "5,100", "--soak", "1h", "--max-failure-ratio", "0.1"]).unwrap();
        assert_eq!(
            preview_text(&preview, &waved),
            [
                "12 workstations targeted:",
                "  10 offered",
                "   1 up to date",
                "   1 held by other rollout",
                "   0 zz new",
                "wave 1 (5%): 1 workstation",
                "wave 2 (100%): 11 workstations",
                "  (which workstation lands in which wave is drawn when the rollout is created; counts may differ a little)",
                "Nothing was changed (dry run).",
            ]
            .join("\n")
        );
        let empty = proto::RolloutPreview {
            targeted: 0,
            outcomes: Default::default(),
            waves: vec![],
        };
        waved.waves = None;
        assert_eq!(
            preview_text(&empty, &waved),
            "0 workstations targeted\nNothing was changed (dry run)."
        );
        let unapproved = proto::RolloutPreview {
            targeted: 1,
            outcomes: [("not_approved".to_owned(), 1)].into(),
            waves: vec![],
        };
        assert!(preview_text(&unapproved, &waved).contains(
            "\n  (demo 1.0.0 is not approved; approve it before rolling it out: upkeep release approve demo 1.0.0)\n"
        ));
    }

    #[test]
    fn rollout_status_shows_options_reason_and_waves() {
        let report: proto::RolloutReport = serde_json::from_value(serde_json::json!({
            "rollout": {
                "id": 9, "product": "demo", "version": "2.0.0", "mandatory": false, "state": "paused",
                "state_reason": "paused itself: 2 of 3 finished installs failed (67%, more than the 10% allowed)",
                "targets": { "groups": ["lab"] }, "starts_at": "2026-05-01T10:00:00Z",
                "deadline": { "after": "7d" },
                "waves": { "percents": [50, 100], "soak": "30m", "max_failure_ratio": 0.1, "min_sample": 3 },
                "opened_waves": 1, "created_at": "2026-05-01T10:00:00Z", "created_by": "admin"
            },
            "counts": { "installed": 1, "failed": 2, "pending": 1 },
            "waves": [
                { "wave": 1, "percent": 50, "open": true, "workstations": 3,
                  "counts": { "installed": 1, "failed": 2, "pending": 0 } },
                { "wave": 2, "percent": 100, "open": false, "workstations": 1,
                  "counts": { "installed": 0, "failed": 0, "pending": 1 } }
            ],
            "workstations": [
                { "workstation_id": "w1", "hostname": "pc1", "wave": 1, "status": "failed",
                  "to_version": "2.0.0", "error_code": "E1", "updated_at": "2026-05-01T10:00:00Z" },
                { "workstation_id": "w4", "hostname": "pc4", "wave": 2, "status": "pending",
                  "to_version": "2.0.0", "updated_at": "2026-05-01T10:00:00Z" }
            ]
        }))
        .unwrap();
        let text = rollout_status(&report, now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("Rollout 9: demo 2.0.0 to group lab, optional, paused;"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            "  deadline 7d after each workstation is first offered the update"
        );
        assert_eq!(
            lines[2],
            "  waves 50% → 100%, 30m soak, pauses above 10% failures (after 3 finished)"
        );
        assert_eq!(
            lines[3],
            "paused itself: 2 of 3 finished installs failed (67%, more than the 10% allowed)"
        );
        assert_eq!(lines[4], "pending 1, installed 1, failed 2");
        assert_eq!(lines[6], "WAVE  SHARE  OPEN  WORKSTATIONS  PENDING  INSTALLED  FAILED");
        assert_eq!(lines[7], "1     50%    yes   3             0        1          2");
        assert_eq!(lines[8], "2     100%   no    1             1        0          0");
        assert!(lines[10].starts_with("WORKSTATION  HOSTNAME  WAVE  STATUS"), "{text}");
        assert!(lines[11].starts_with("w1           pc1       1     failed"), "{text}");

        // An administrator's own reason is free text: say which state it explains.
        let mut manual = report.clone();
        manual.rollout.state_reason = Some("change freeze".into());
        assert!(rollout_status(&manual, now()).contains("\npaused: change freeze\n"));
    }

    #[test]
    fn events_read_like_a_log() {
        let event: proto::Event = serde_json::from_value(serde_json::json!({
            "id": 1, "at": "bad time", "type": "workstation.failed", "actor": "w1", "product": "demo",
            "version": "1.0.0", "workstation_id": "w1", "rollout_id": 3, "error_code": "E1", "message": "disk\nfull"
        }))
        .unwrap();
        assert_eq!(
            event_cells(&event),
            [
                "bad time",
                "workstation.failed",
                "w1",
                "demo 1.0.0",
                "rollout=3 error=E1 disk\nfull"
            ]
        );
    }
}
