//! Rollouts: the list, the create form with every option, and the report.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use serde::Deserialize;
use upkeep_protocol::{self as proto, codes};

use super::{ConsoleForm, PageResult, badge, charts, csrf_field, page, see_other, seg, when};
use crate::AppState;
use crate::admin_api::{self, ApiJson};
use crate::auth::{Admin, Role};
use crate::error::ApiError;

/// Statuses folded into the four parts a progress bar shows.
fn progress_parts(counts: &BTreeMap<String, u64>) -> [(&'static str, u64); 4] {
    let sum = |names: &[&str]| names.iter().map(|n| counts.get(*n).copied().unwrap_or(0)).sum::<u64>();
    [
        ("installed", sum(&["installed"])),
        ("failed", sum(&["failed", "rolled_back", "backup_failed"])),
        (
            "in_progress",
            sum(&[
                "notified",
                "downloading",
                "downloaded",
                "installing",
                "waiting_for_sessions",
                "deferred",
            ]),
        ),
        ("waiting", sum(&["pending", "blocked"])),
    ]
}

/// One progress bar per wave of a rollout.
pub(crate) fn wave_bars(report: &proto::RolloutReport) -> Markup {
    html! {
        @for wave in &report.waves {
            @let label = format!("Wave {} ({}%{})", wave.wave, wave.percent, if wave.open { ", open" } else { ", not open yet" });
            (charts::progress(&label, &progress_parts(&wave.counts), wave.workstations))
        }
    }
}

pub(crate) async fn rollouts_page(State(state): State<AppState>, admin: Admin) -> PageResult {
    let rows = state.db.rollouts(admin.organization_id, None, false).await?;
    let mut rollouts: Vec<proto::Rollout> = rows.iter().map(crate::rollouts::to_proto).collect();
    rollouts.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(page(
        &admin,
        "/rollouts",
        "Rollouts",
        html! {
            @if admin.can(Role::ReleaseManager) { p { a.button href="/rollouts/new" { "New rollout" } } }
            @if rollouts.is_empty() { p { "No rollouts yet." } } @else {
                table {
                    caption { "Rollouts, newest first" }
                    thead { tr { th scope="col" { "#" } th scope="col" { "Release" } th scope="col" { "State" } th scope="col" { "Mandatory" } th scope="col" { "Targets" } th scope="col" { "Created" } } }
                    tbody {
                        @for r in &rollouts {
                            tr {
                                td { a href={ "/rollouts/" (r.id) } { (r.id) } }
                                td { (r.product) " " (r.version) }
                                td { (badge(&r.state)) }
                                td { @if r.mandatory { "yes" } @else { "no" } }
                                td { (targets_text(&r.targets)) }
                                td { (when(&r.created_at)) " by " (r.created_by) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

fn targets_text(t: &proto::RolloutTargets) -> String {
    if t.all {
        return "all workstations".into();
    }
    let mut parts = Vec::new();
    if !t.groups.is_empty() {
        parts.push(format!("groups {}", t.groups.join(", ")));
    }
    if !t.workstations.is_empty() {
        parts.push(format!("{} workstation(s)", t.workstations.len()));
    }
    parts.join("; ")
}

#[derive(Deserialize)]
pub(crate) struct NewQuery {
    product: Option<String>,
    version: Option<String>,
}

pub(crate) async fn new_rollout_page(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<NewQuery>,
) -> PageResult {
    // Every approved release, for the picker.
    let mut approved = Vec::new();
    for product in state.db.list_products(admin.organization_id).await? {
        if let Some(id) = state.db.product_id(admin.organization_id, &product.name).await? {
            for r in state.db.list_releases(admin.organization_id, id, &product.name).await? {
                if r.approval == proto::ApprovalState::Approved {
                    approved.push((product.name.clone(), r.version));
                }
            }
        }
    }
    let chosen = (query.product.unwrap_or_default(), query.version.unwrap_or_default());
    Ok(page(
        &admin,
        "/rollouts",
        "New rollout",
        html! {
            @if approved.is_empty() {
                p { "No approved release yet: approve one on its product's page first." }
            } @else {
                form.stack.wide method="post" action="/rollouts" {
                    (csrf_field(&admin))
                    label for="release" { "Release (approved)" }
                    select id="release" name="release" required {
                        @for (product, version) in &approved {
                            @let value = format!("{product}\u{1f}{version}");
                            option value=(value) selected[*product == chosen.0 && *version == chosen.1] { (product) " " (version) }
                        }
                    }
                    fieldset {
                        legend { "Which workstations" }
                        label.check { input type="checkbox" name="all" value="1"; " All workstations" }
                        label for="groups" { "Groups (comma-separated)" }
                        input id="groups" name="groups" placeholder="finance, branch-sp";
                        label for="workstations" { "Workstation ids (comma- or line-separated)" }
                        textarea id="workstations" name="workstations" rows="2" {}
                    }
                    fieldset {
                        legend { "When" }
                        label.check { input type="checkbox" name="mandatory" value="1"; " Mandatory: the old version cannot be used until this one is installed" }
                        label.check { input type="checkbox" name="now" value="1"; " Install now (mandatory, wakes the agents; no start, deadline or window)" }
                        label for="starts_at" { "Start (RFC 3339, e.g. 2026-12-01T18:00:00Z; empty: now)" }
                        input id="starts_at" name="starts_at";
                        label for="deadline_kind" { "Deadline for an optional update" }
                        select id="deadline_kind" name="deadline_kind" {
                            option value="" { "none" }
                            option value="at" { "at an instant (RFC 3339 with offset)" }
                            option value="local" { "at each workstation's local time (YYYY-MM-DDTHH:MM)" }
                            option value="after" { "after first offered (e.g. 7d, 12h)" }
                        }
                        label for="deadline" { "Deadline value" }
                        input id="deadline" name="deadline";
                        label for="maintenance_window" { "Maintenance window, workstation local time (e.g. Mon-Fri 22:00-06:00)" }
                        input id="maintenance_window" name="maintenance_window";
                    }
                    fieldset {
                        legend { "Waves (optional)" }
                        label for="waves" { "Cumulative shares ending at 100 (e.g. 5,25,100)" }
                        input id="waves" name="waves";
                        label for="soak" { "Soak time between waves (e.g. 30m, 2h)" }
                        input id="soak" name="soak" value="1h";
                        label for="max_failure_ratio" { "Pause above this failure ratio (0–1)" }
                        input id="max_failure_ratio" name="max_failure_ratio" value="0.1" inputmode="decimal";
                        label for="min_sample" { "Judge failures after this many finished installs" }
                        input id="min_sample" name="min_sample" value=(proto::default_min_sample()) inputmode="numeric";
                    }
                    label.check { input type="checkbox" name="allow_downgrade" value="1"; " Also offer it to workstations that have a newer version" }
                    button type="submit" { "Create rollout" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct RolloutForm {
    release: String,
    all: Option<String>,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    workstations: String,
    mandatory: Option<String>,
    now: Option<String>,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    deadline_kind: String,
    #[serde(default)]
    deadline: String,
    #[serde(default)]
    maintenance_window: String,
    #[serde(default)]
    waves: String,
    #[serde(default)]
    soak: String,
    #[serde(default)]
    max_failure_ratio: String,
    #[serde(default)]
    min_sample: String,
    allow_downgrade: Option<String>,
}

fn list(text: &str) -> Vec<String> {
    text.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn nonempty(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The form as the API's request; the API checks every value and names the field at fault.
fn to_request(form: RolloutForm) -> Result<proto::RolloutCreate, ApiError> {
    let (product, version) = form
        .release
        .split_once('\u{1f}')
        .ok_or_else(|| ApiError::bad_request(codes::INVALID_FIELD, "release", "choose a release"))?;
    let deadline = match (form.deadline_kind.as_str(), nonempty(&form.deadline)) {
        ("", _) => None,
        (_, None) => {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "deadline",
                "give the deadline's value",
            ));
        }
        ("at", Some(v)) => Some(proto::Deadline::At(v)),
        ("local", Some(v)) => Some(proto::Deadline::Local(v)),
        ("after", Some(v)) => Some(proto::Deadline::After(v)),
        _ => {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "deadline_kind",
                "unknown deadline kind",
            ));
        }
    };
    let waves = match nonempty(&form.waves) {
        None => None,
        Some(text) => {
            let percents = list(&text)
                .iter()
                .map(|p| p.trim_end_matches('%').parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ApiError::bad_request(codes::INVALID_FIELD, "waves", "waves are whole percents, e.g. 5,25,100")
                })?;
            let max_failure_ratio = form.max_failure_ratio.trim().parse::<f64>().map_err(|_| {
                ApiError::bad_request(
                    codes::INVALID_FIELD,
                    "max_failure_ratio",
                    "a number from 0 to 1, e.g. 0.1",
                )
            })?;
            let min_sample = match nonempty(&form.min_sample) {
                None => proto::default_min_sample(),
                Some(n) => n
                    .parse()
                    .map_err(|_| ApiError::bad_request(codes::INVALID_FIELD, "min_sample", "a whole number"))?,
            };
            Some(proto::Waves {
                percents,
                soak: form.soak.trim().to_owned(),
                max_failure_ratio,
                min_sample,
            })
        }
    };
    Ok(proto::RolloutCreate {
        product: product.to_owned(),
        version: version.to_owned(),
        targets: proto::RolloutTargets {
            all: form.all.is_some(),
            workstations: list(&form.workstations),
            groups: list(&form.groups),
        },
        mandatory: form.mandatory.is_some(),
        starts_at: nonempty(&form.starts_at),
        deadline,
        waves,
        allow_downgrade: form.allow_downgrade.is_some(),
        maintenance_window: nonempty(&form.maintenance_window),
        now: form.now.is_some(),
    })
}

pub(crate) async fn create_rollout(
    State(state): State<AppState>,
    admin: Admin,
    ConsoleForm(form): ConsoleForm<RolloutForm>,
) -> PageResult {
    let request = to_request(form)?;
    let (_, axum::Json(report)) = admin_api::create_rollout(State(state), admin, ApiJson(request)).await?;
    Ok(see_other(&format!("/rollouts/{}", report.rollout.id)))
}

#[derive(Deserialize)]
pub(crate) struct ReportQuery {
    status: Option<String>,
    q: Option<String>,
}

pub(crate) async fn report_page(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<ReportQuery>,
) -> PageResult {
    let id = admin_api::rollout_id(&id)?;
    let report = crate::rollouts::report(&state, admin.organization_id, id).await?;
    let r = &report.rollout;
    let status = query.status.unwrap_or_default();
    let needle = query.q.unwrap_or_default().trim().to_lowercase();
    let shown: Vec<&proto::RolloutWorkstation> = report
        .workstations
        .iter()
        .filter(|w| status.is_empty() || w.status.as_str() == status)
        .filter(|w| {
            needle.is_empty()
                || w.hostname.to_lowercase().contains(&needle)
                || w.workstation_id.to_lowercase().contains(&needle)
        })
        .collect();
    let total: u64 = report.counts.values().sum();
    let live = matches!(r.state.as_str(), "scheduled" | "active" | "paused");
    Ok(page(
        &admin,
        "/rollouts",
        &format!("Rollout {} — {} {}", r.id, r.product, r.version),
        html! {
            p.summary {
                (badge(&r.state))
                @if let Some(reason) = &r.state_reason { " " (reason) }
                " · " @if r.mandatory { "mandatory" } @else { "optional" }
                " · " (targets_text(&r.targets))
                " · starts " (when(&r.starts_at))
                @if let Some(window) = &r.maintenance_window { " · window " (window) }
                " · created by " (r.created_by)
            }
            @if admin.can(Role::ReleaseManager) && live {
                div.actions {
                    @for action in ["pause", "resume", "cancel"] {
                        @let enabled = match action { "pause" => r.state == "active" || r.state == "scheduled", "resume" => r.state == "paused", _ => true };
                        @if enabled {
                            form.inline method="post" action={ "/rollouts/" (r.id) "/" (action) } {
                                (csrf_field(&admin))
                                label.visually-hidden for={ "reason-" (action) } { "Reason to " (action) }
                                input id={ "reason-" (action) } name="reason" placeholder={ "reason to " (action) " (optional)" };
                                button class=(if action == "cancel" { "danger" } else { "secondary" }) type="submit" { (action) }
                            }
                        }
                    }
                }
            }
            h2 { "Progress" }
            (charts::progress("All targeted workstations", &progress_parts(&report.counts), total))
            (wave_bars(&report))
            table.counts {
                caption { "Workstations per status" }
                thead { tr { th scope="col" { "Status" } @for w in &report.waves { th scope="col" { "Wave " (w.wave) } } th scope="col" { "All" } } }
                tbody {
                    @for (name, n) in &report.counts {
                        @if *n > 0 {
                            tr {
                                th scope="row" { (badge(name)) }
                                @for w in &report.waves { td { (w.counts.get(name).copied().unwrap_or(0)) } }
                                td { (n) }
                            }
                        }
                    }
                    tr { th scope="row" { "total" } @for w in &report.waves { td { (w.workstations) } } td { (total) } }
                }
            }
            h2 { "Workstations" }
            form.filters method="get" action={ "/rollouts/" (r.id) } {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "any" }
                    @for s in proto::WorkstationStatus::ALL { option value=(s.as_str()) selected[s.as_str() == status] { (s.as_str().replace('_', " ")) } }
                }
                label for="q" { "Host or id" }
                input id="q" name="q" value=(needle);
                button.secondary type="submit" { "Filter" }
            }
            table.workstations {
                caption { (shown.len()) " of " (report.workstations.len()) " workstations" }
                thead { tr { th scope="col" { "Host" } th scope="col" { "Wave" } th scope="col" { "Status" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "Error" } th scope="col" { "Updated" } } }
                tbody {
                    @for w in &shown {
                        tr {
                            td { a href={ "/workstations/" (seg(&w.workstation_id)) } { (w.hostname) } }
                            td { (w.wave) }
                            td { (badge(w.status.as_str())) }
                            td { (w.from_version.as_deref().unwrap_or("—")) }
                            td { (w.to_version) }
                            td { @if let Some(code) = &w.error_code { code.code { (code) } " " } (w.message.as_deref().unwrap_or("")) }
                            td { (when(&w.updated_at)) }
                        }
                    }
                }
            }
            p { a href={ "/events?rollout=" (r.id) } { "Every event of this rollout" } }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    reason: Option<String>,
}

pub(crate) async fn rollout_action(
    State(state): State<AppState>,
    admin: Admin,
    Path((id, action)): Path<(String, String)>,
    ConsoleForm(form): ConsoleForm<ActionForm>,
) -> PageResult {
    let body = serde_json::to_vec(&proto::RolloutAction {
        reason: form.reason.filter(|r| !r.trim().is_empty()),
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let _ = admin_api::rollout_action(State(state), admin, Path((id.clone(), action)), body.into()).await?;
    Ok(see_other(&format!("/rollouts/{}", seg(&id))))
}
