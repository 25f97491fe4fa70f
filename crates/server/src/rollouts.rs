//! Rollouts beyond storage: checking what an administrator asks for, converting between the
//! stored, wire and domain forms, the dry run, and the ticker that starts scheduled rollouts,
//! opens waves, pauses rollouts that fail too often and marks finished ones completed.
//!
//! The ticker runs in every server process; each of its changes is a conditional update in the
//! database, so several processes never open the same wave twice.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use semver::Version;
use upkeep_domain::{
    self as domain, Approval, DeadlineRule, LocalDateTime, MaintenanceWindow, RolloutState, RolloutView, Targets,
    WavePlan, WaveStats, WaveStep, WorkstationView, format_duration, next_wave_step, parse_duration, placement,
    wave_by_cuts, wave_cuts,
};
use upkeep_protocol::{self as proto, codes};

use crate::AppState;
use crate::db::{self, NewEvent, RolloutRow};
use crate::error::{ApiError, ApiResult};

/// A checked `RolloutCreate`, in storage form.
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    pub state: &'static str,
    pub starts_at: i64,
    pub deadline: Option<(&'static str, String)>,
    pub waves: Option<(String, i64, i64, i64)>,
    pub window: Option<String>,
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(codes::INVALID_FIELD, field, message)
}

fn parse_instant(field: &'static str, text: &str) -> ApiResult<i64> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            bad(
                field,
                format!("`{text}` is not an RFC 3339 time with an offset (e.g. 2026-12-01T18:00:00-03:00): {e}"),
            )
        })
}

pub fn check_create(create: &proto::RolloutCreate, now: i64) -> ApiResult<RolloutSpec> {
    if create.now && (create.starts_at.is_some() || create.deadline.is_some() || create.maintenance_window.is_some()) {
        return Err(bad(
            "now",
            "an install-now rollout takes no start time, deadline or maintenance window",
        ));
    }
    let starts_at = match &create.starts_at {
        Some(text) => parse_instant("starts_at", text)?,
        None => now,
    };
    let deadline = match &create.deadline {
        None => None,
        Some(_) if create.mandatory => {
            return Err(bad(
                "deadline",
                "a mandatory rollout is required at once; a deadline is for optional ones",
            ));
        }
        Some(proto::Deadline::At(text)) => {
            let at = parse_instant("deadline", text)?;
            if at <= starts_at {
                return Err(bad("deadline", "the deadline is before the rollout starts"));
            }
            Some(("at", at.to_string()))
        }
        Some(proto::Deadline::Local(text)) => {
            let local = LocalDateTime::parse(text).map_err(|e| bad("deadline", e.to_string()))?;
            Some(("local", local.to_string()))
        }
        Some(proto::Deadline::After(text)) => {
            let span = parse_duration(text).map_err(|e| bad("deadline", e.to_string()))?;
            Some(("after", span.to_string()))
        }
    };
    let waves = match &create.waves {
        None => None,
        Some(w) => {
            WavePlan::check_percents(&w.percents).map_err(|e| bad("waves", e.to_string()))?;
            let soak = parse_duration(&w.soak).map_err(|e| bad("soak", e.to_string()))?;
            WavePlan::check_ratio(w.max_failure_ratio).map_err(|e| bad("max_failure_ratio", e.to_string()))?;
            if w.min_sample == 0 {
                return Err(bad("min_sample", "the minimum sample must be at least 1"));
            }
            let percents = w.percents.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let ppm = (w.max_failure_ratio * 1_000_000.0).round() as i64;
            Some((percents, soak, ppm, i64::from(w.min_sample)))
        }
    };
    let window = match &create.maintenance_window {
        None => None,
        Some(text) => Some(
            MaintenanceWindow::parse(text)
                .map_err(|e| bad("maintenance_window", e.to_string()))?
                .as_str()
                .to_owned(),
        ),
    };
    Ok(RolloutSpec {
        state: if starts_at > now { "scheduled" } else { "active" },
        starts_at,
        deadline,
        waves,
        window,
    })
}

fn deadline_rule(row: &RolloutRow) -> Option<DeadlineRule> {
    parse_deadline(row.deadline_kind.as_deref()?, row.deadline_value.as_deref()?)
}

fn parse_deadline(kind: &str, value: &str) -> Option<DeadlineRule> {
    match kind {
        "at" => value.parse().ok().map(DeadlineRule::At),
        "local" => LocalDateTime::parse(value).ok().map(DeadlineRule::Local),
        "after" => value.parse().ok().map(DeadlineRule::After),
        _ => None,
    }
}

fn plan(row: &RolloutRow) -> Option<WavePlan> {
    Some(WavePlan {
        percents: row.percents()?,
        soak_ms: row.soak_ms.unwrap_or(0),
        max_failure_ratio: row.max_failure_ppm.unwrap_or(1_000_000) as f64 / 1_000_000.0,
        min_sample: row.min_sample.and_then(|m| u32::try_from(m).ok()).unwrap_or(1),
    })
}

pub fn to_proto(row: &RolloutRow) -> proto::Rollout {
    let deadline = match (row.deadline_kind.as_deref(), deadline_rule(row)) {
        (Some("at"), Some(DeadlineRule::At(at))) => Some(proto::Deadline::At(db::format_time(at))),
        (Some("local"), Some(DeadlineRule::Local(local))) => Some(proto::Deadline::Local(local.to_string())),
        (Some("after"), Some(DeadlineRule::After(span))) => Some(proto::Deadline::After(format_duration(span))),
        _ => None,
    };
    let waves = plan(row).map(|p| proto::Waves {
        percents: p.percents,
        soak: format_duration(p.soak_ms),
        max_failure_ratio: p.max_failure_ratio,
        min_sample: p.min_sample,
    });
    let opened_waves = match &waves {
        _ if row.state == "scheduled" => 0,
        Some(_) => u32::try_from(row.opened_waves).unwrap_or(0),
        None => 1,
    };
    proto::Rollout {
        id: row.id,
        product: row.product.clone(),
        version: row.version.clone(),
        mandatory: row.mandatory,
        state: row.state.clone(),
        state_reason: row.state_reason.clone(),
        targets: row.targets.clone(),
        starts_at: db::format_time(row.starts_at),
        deadline,
        waves,
        opened_waves,
        allow_downgrade: row.allow_downgrade,
        maintenance_window: row.maintenance_window.clone(),
        created_at: db::format_time(row.created_at),
        created_by: row.created_by.clone(),
    }
}

/// A rollout's targets as the decision reads them.
pub fn domain_targets(targets: &proto::RolloutTargets) -> Targets {
    Targets {
        all: targets.all,
        workstations: targets.workstations.iter().cloned().collect(),
        groups: targets.groups.clone(),
    }
}

pub fn approval(state: proto::ApprovalState) -> Approval {
    match state {
        proto::ApprovalState::Pending => Approval::Pending,
        proto::ApprovalState::Approved => Approval::Approved,
        proto::ApprovalState::Disapproved => Approval::Disapproved,
    }
}

pub fn to_view(row: &RolloutRow) -> Option<RolloutView> {
    Some(RolloutView {
        id: row.id,
        product: row.product.clone(),
        version: Version::parse(&row.version).ok()?,
        approval: approval(row.approval),
        mandatory: row.mandatory,
        state: RolloutState::parse(&row.state)?,
        targets: domain_targets(&row.targets),
        starts_at: row.starts_at,
        waves: row
            .waves
            .as_ref()
            .map(|_| (row.wave_cuts.clone(), u32::try_from(row.opened_waves).unwrap_or(0))),
        deadline: deadline_rule(row),
        allow_downgrade: row.allow_downgrade,
        window: row
            .maintenance_window
            .as_deref()
            .and_then(|w| MaintenanceWindow::parse(w).ok()),
        requires: row
            .requires
            .iter()
            .filter_map(|(p, r)| semver::VersionReq::parse(r).ok().map(|r| (p.clone(), r)))
            .collect(),
    })
}

async fn find(state: &AppState, organization_id: i64, id: i64) -> ApiResult<RolloutRow> {
    state
        .db
        .rollouts(organization_id, Some(id), false)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(codes::UNKNOWN_ROLLOUT, Some("id"), format!("no rollout {id}")))
}

/// The update process report: counts per status and per wave, and a row per workstation.
pub async fn report(state: &AppState, organization_id: i64, id: i64) -> ApiResult<proto::RolloutReport> {
    let row = find(state, organization_id, id).await?;
    let workstations = state.db.rollout_workstations(organization_id, id).await?;
    let zero = || -> BTreeMap<String, u64> {
        proto::WorkstationStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect()
    };
    let mut counts = zero();
    let percents = row.percents().unwrap_or_else(|| vec![100]);
    let opened = if row.state == "scheduled" {
        0
    } else if row.waves.is_some() {
        row.opened_waves
    } else {
        1
    };
    let mut waves: Vec<proto::WaveReport> = percents
        .iter()
        .enumerate()
        .map(|(i, percent)| proto::WaveReport {
            wave: i as u32 + 1,
            percent: *percent,
            open: (i as i64) < opened,
            workstations: 0,
            counts: zero(),
        })
        .collect();
    for w in &workstations {
        *counts.entry(w.status.as_str().to_owned()).or_default() += 1;
        if let Some(wave) = waves.get_mut((w.wave as usize).saturating_sub(1)) {
            wave.workstations += 1;
            *wave.counts.entry(w.status.as_str().to_owned()).or_default() += 1;
        }
    }
    Ok(proto::RolloutReport {
        rollout: to_proto(&row),
        counts,
        waves,
        workstations,
    })
}

/// Changes a rollout's state on an administrator's request.
pub async fn change_state(
    state: &AppState,
    organization_id: i64,
    actor: &str,
    id: i64,
    action: &str,
    reason: Option<&str>,
) -> ApiResult<proto::Rollout> {
    let row = find(state, organization_id, id).await?;
    let current =
        RolloutState::parse(&row.state).ok_or_else(|| ApiError::Internal(format!("rollout state {}", row.state)))?;
    let next = match action {
        "pause" => current.pause(),
        "resume" => current.resume(),
        _ => current.cancel(),
    };
    let done = match action {
        "pause" => "paused",
        "resume" => "resumed",
        _ => "cancelled",
    };
    let Some(next) = next else {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            codes::INVALID_STATE,
            Some("id"),
            format!("rollout {id} is {}; it cannot be {done}", row.state),
        ));
    };
    // A scheduled rollout that is resumed goes back to waiting for its start.
    let next = if next == RolloutState::Active && row.starts_at > db::now_ms() {
        RolloutState::Scheduled
    } else {
        next
    };
    let kind = format!("rollout.{done}");
    // A resumed rollout carries no pause reason.
    let reason = if action == "resume" { None } else { reason };
    let event = NewEvent {
        kind: &kind,
        actor,
        product: Some(&row.product),
        version: Some(&row.version),
        rollout_id: Some(id),
        message: reason,
        ..NewEvent::default()
    };
    let moved = state
        .db
        // Resuming acknowledges the failures seen so far: the threshold applies to new ones.
        .transition_rollout_with(
            organization_id,
            id,
            &[current.as_str()],
            next.as_str(),
            reason,
            &event,
            action == "resume",
        )
        .await?;
    if !moved {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            codes::INVALID_STATE,
            Some("id"),
            format!("rollout {id} changed meanwhile; try again"),
        ));
    }
    state
        .db
        .rollouts(organization_id, Some(id), false)
        .await?
        .first()
        .map(to_proto)
        .ok_or_else(|| ApiError::Internal("rollout vanished".into()))
}

/// One pass over the live rollouts of every organization.
pub async fn tick(state: &AppState) -> Result<(), db::DbError> {
    let changed = tick_rollouts(state).await?;
    if changed {
        // Check-ins decide from cached rollouts: every server process must read them again.
        state.checkin_cache.changed(&state.db).await?;
    }
    Ok(())
}

/// Starts, advances, pauses and completes rollouts; true when any of them changed.
async fn tick_rollouts(state: &AppState) -> Result<bool, db::DbError> {
    let now = db::now_ms();
    let mut changed = false;
    for (id, organization_id) in state.db.rollouts_to_tick().await? {
        let Some(row) = state
            .db
            .rollouts(organization_id, Some(id), false)
            .await?
            .into_iter()
            .next()
        else {
            continue;
        };
        let event = |kind: &'static str, message: Option<&'static str>| NewEvent {
            kind,
            actor: "upkeep",
            product: None,
            version: None,
            rollout_id: Some(id),
            message,
            ..NewEvent::default()
        };
        if row.state == "scheduled" {
            if now >= row.starts_at {
                let mut e = event("rollout.started", None);
                e.product = Some(&row.product);
                e.version = Some(&row.version);
                changed |= state
                    .db
                    .transition_rollout(organization_id, id, &["scheduled"], "active", None, &e)
                    .await?;
            }
            continue;
        }
        let total_waves = row.percents().map_or(1, |p| p.len() as i64);
        if let Some(plan) = plan(&row) {
            let opened = row.opened_waves;
            let counts = state.db.wave_counts(id, opened, true).await?;
            let get = |s: &str| counts.get(s).copied().unwrap_or(0);
            let stats = WaveStats {
                installed: get("installed"),
                failed: get("failed") + get("rolled_back"),
            };
            match next_wave_step(
                &plan,
                u32::try_from(opened).unwrap_or(0),
                row.wave_opened_at,
                now,
                stats,
            ) {
                WaveStep::Nothing => {}
                WaveStep::Open(wave) => {
                    let message = format!(
                        "wave {} of {} opened ({}%)",
                        wave + 1,
                        plan.percents.len(),
                        plan.percents[wave as usize]
                    );
                    let mut e = event("rollout.wave_opened", None);
                    e.product = Some(&row.product);
                    e.version = Some(&row.version);
                    e.message = Some(&message);
                    e.details = Some(
                        serde_json::json!({ "wave": wave + 1, "percent": plan.percents[wave as usize], "installed": stats.installed, "failed": stats.failed }),
                    );
                    if state.db.open_wave(organization_id, id, opened, &e).await? {
                        changed = true;
                        tracing::info!(rollout = id, wave = wave + 1, "opened wave");
                    }
                    continue;
                }
                WaveStep::Pause { ratio } => {
                    let reason = format!(
                        "paused itself: {} of {} finished installs failed ({:.0}%, more than the {:.0}% allowed)",
                        stats.failed,
                        stats.installed + stats.failed,
                        ratio * 100.0,
                        plan.max_failure_ratio * 100.0
                    );
                    let mut e = event("rollout.paused", None);
                    e.product = Some(&row.product);
                    e.version = Some(&row.version);
                    e.message = Some(&reason);
                    e.details = Some(
                        serde_json::json!({ "failure_ratio": ratio, "failed": stats.failed, "installed": stats.installed, "automatic": true }),
                    );
                    if state
                        .db
                        .transition_rollout(organization_id, id, &["active"], "paused", Some(&reason), &e)
                        .await?
                    {
                        changed = true;
                        tracing::warn!(rollout = id, ratio, "rollout paused itself");
                        let notice = crate::notify::paused_notice(&row.product, &row.version, id, &reason);
                        state.db.notify(organization_id, &notice).await?;
                    }
                    continue;
                }
            }
        }
        // Completed: every wave open and every targeted workstation installed.
        if row.opened_waves >= total_waves || row.waves.is_none() {
            let counts = state.db.wave_counts(id, i64::MAX, false).await?;
            let total: u64 = counts.values().sum();
            if total > 0 && counts.get("installed").copied().unwrap_or(0) == total {
                let mut e = event("rollout.completed", None);
                e.product = Some(&row.product);
                e.version = Some(&row.version);
                changed |= state
                    .db
                    .transition_rollout(organization_id, id, &["active"], "completed", None, &e)
                    .await?;
            }
        }
    }
    Ok(changed)
}

/// Runs [`tick`] every `interval` until the process ends.
pub fn spawn_ticker(state: AppState, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            if let Err(e) = tick(&state).await {
                tracing::error!(error = %e, "rollout ticker");
            }
            if let Err(e) = crate::tuf::refresh_expiring(&state).await {
                tracing::error!(error = %e, "re-signing TUF metadata");
            }
        }
    })
}

/// Every outcome a preview counts, so scripts always find each key.
const PREVIEW_OUTCOMES: [&str; 7] = [
    "offered",
    "required",
    "blocked",
    "up_to_date",
    "newer_installed",
    "held_by_other_rollout",
    "not_approved",
];

/// What the rollout would do to the current fleet, changing nothing.
pub async fn preview(
    state: &AppState,
    organization_id: i64,
    create: &proto::RolloutCreate,
    spec: &RolloutSpec,
    release_approval: proto::ApprovalState,
) -> ApiResult<proto::RolloutPreview> {
    let now = db::now_ms();
    let version = Version::parse(&create.version).map_err(|e| bad("version", e.to_string()))?;
    let percents: Vec<u32> = create.waves.as_ref().map_or_else(|| vec![100], |w| w.percents.clone());
    // The real id is not known yet; placements are hashed with a stand-in, so the per-wave
    // counts are exact but which machines fall in which wave may differ.
    let stand_in = i64::MAX;
    let new = RolloutView {
        id: stand_in,
        product: create.product.clone(),
        version: version.clone(),
        approval: approval(release_approval),
        mandatory: create.mandatory,
        state: RolloutState::Active,
        targets: domain_targets(&create.targets),
        starts_at: spec.starts_at.max(now),
        waves: None,
        deadline: spec
            .deadline
            .as_ref()
            .and_then(|(kind, value)| parse_deadline(kind, value)),
        allow_downgrade: create.allow_downgrade,
        window: spec.window.as_deref().and_then(|w| MaintenanceWindow::parse(w).ok()),
        requires: Vec::new(),
    };
    let mut rollouts: Vec<RolloutView> = state
        .db
        .rollouts(organization_id, None, true)
        .await?
        .iter()
        .filter_map(to_view)
        .collect();
    rollouts.push(new.clone());
    let approvals = state.db.approval_map(organization_id).await?;
    let workstations = state.db.list_workstations(organization_id, None).await?;
    let mut outcomes: BTreeMap<String, u64> = PREVIEW_OUTCOMES.iter().map(|o| ((*o).to_owned(), 0)).collect();
    let mut waves = vec![0u64; percents.len()];
    let mut targeted = 0;
    let no_first_offers = BTreeMap::new();
    let in_target = |ws: &&proto::Workstation| new.targets.includes(&ws.id, &ws.groups);
    let cuts = wave_cuts(
        &percents,
        workstations
            .iter()
            .filter(in_target)
            .map(|ws| placement(stand_in, &ws.id))
            .collect(),
    );
    for ws in workstations.iter().filter(in_target) {
        targeted += 1;
        let wave = wave_by_cuts(&cuts, placement(stand_in, &ws.id)) as usize;
        if let Some(n) = waves.get_mut(wave) {
            *n += 1;
        }
        let installed: BTreeMap<String, Version> = ws
            .installed
            .iter()
            .filter_map(|(p, v)| Version::parse(v).ok().map(|v| (p.clone(), v)))
            .collect();
        let installed_approvals: BTreeMap<String, Approval> = ws
            .installed
            .iter()
            .filter_map(|(p, v)| {
                approvals
                    .get(&(p.clone(), v.clone()))
                    .map(|a| (p.clone(), approval(*a)))
            })
            .collect();
        let view = WorkstationView {
            id: &ws.id,
            groups: &ws.groups,
            installed: &installed,
            installed_approvals: &installed_approvals,
            first_offered: &no_first_offers,
            utc_offset_minutes: 0,
            now: new.starts_at,
        };
        let outcome = match domain::effective_rollout(&view, &create.product, &rollouts) {
            Some(r) if r.id != stand_in => "held_by_other_rollout",
            None => "not_approved",
            Some(_) => {
                let decision = domain::decide(&view, &rollouts)
                    .into_iter()
                    .find(|d| d.product == create.product);
                match decision {
                    Some(d) if d.block.is_some() => "blocked",
                    Some(d) if d.update.as_ref().is_some_and(|u| u.required.is_some()) => "required",
                    Some(d) if d.update.is_some() => "offered",
                    _ => match installed.get(&create.product) {
                        Some(v) if *v > version => "newer_installed",
                        _ => "up_to_date",
                    },
                }
            }
        };
        *outcomes.entry(outcome.to_owned()).or_default() += 1;
    }
    Ok(proto::RolloutPreview {
        targeted,
        outcomes,
        waves: percents
            .iter()
            .zip(waves)
            .enumerate()
            .map(|(i, (percent, workstations))| proto::WavePreview {
                wave: i as u32 + 1,
                percent: *percent,
                workstations,
            })
            .collect(),
    })
}
