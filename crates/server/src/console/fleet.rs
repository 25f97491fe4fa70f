//! The dashboard, workstations, events (with CSV export) and notification groups.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;
use upkeep_protocol::{self as proto, codes};

use super::rollouts::wave_bars;
use super::{ConsoleForm, PageResult, badge, charts, csrf_field, page, seg, when};
use crate::AppState;
use crate::admin_api::{self, ApiJson, EventQuery};
use crate::auth::{Admin, Role};
use crate::db::EventFilter;
use crate::error::ApiError;

pub(crate) async fn dashboard(State(state): State<AppState>, admin: Admin) -> PageResult {
    let org = admin.organization_id;
    let fleet = state.db.workstation_count(org).await?;
    // Newest version first in each product's chart.
    let distribution: Vec<(String, Vec<(String, u64)>)> = state
        .db
        .version_distribution(org)
        .await?
        .into_iter()
        .map(|(product, versions)| {
            let mut rows: Vec<(String, u64)> = versions
                .into_iter()
                .map(|(v, n)| (v, u64::try_from(n).unwrap_or(0)))
                .collect();
            rows.sort_by(|a, b| {
                semver::Version::parse(&b.0)
                    .ok()
                    .cmp(&semver::Version::parse(&a.0).ok())
            });
            (product, rows)
        })
        .collect();
    let live = state.db.rollouts(org, None, true).await?;
    let mut reports = Vec::new();
    for row in &live {
        reports.push(crate::rollouts::report(&state, org, row.id).await?);
    }
    let failures = state
        .db
        .list_events(
            org,
            &EventFilter {
                limit: 10,
                errors_only: true,
                ..EventFilter::default()
            },
        )
        .await?;
    Ok(page(
        &admin,
        "/",
        "Dashboard",
        html! {
            div.tiles {
                div.tile { span.big { (fleet) } span { "workstations enrolled" } }
                div.tile { span.big { (reports.len()) } span { "active rollouts" } }
                div.tile { span.big { (failures.len()) } span { "recent failures" } }
            }
            h2 { "Installed versions" }
            @if distribution.is_empty() { p.muted { "No workstation has reported an installed product yet." } }
            @for (product, rows) in &distribution {
                (charts::bar_chart(&format!("{product}: workstations per installed version"), rows, ("workstation", "workstations")))
            }
            h2 { "Active rollouts" }
            @if reports.is_empty() { p.muted { "None." } }
            @for report in &reports {
                @let r = &report.rollout;
                section.rollout {
                    h3 { a href={ "/rollouts/" (r.id) } { "#" (r.id) " " (r.product) " " (r.version) } " " (badge(&r.state)) }
                    (wave_bars(report))
                }
            }
            h2 { "Recent failures" }
            @if failures.is_empty() { p.muted { "None." } } @else {
                table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "Workstation" } th scope="col" { "Release" } th scope="col" { "Error" } } }
                    tbody {
                        @for e in failures.iter().rev() {
                            tr {
                                td { (when(&e.at)) }
                                td { (e.kind) }
                                td { @if let Some(w) = &e.workstation_id { a href={ "/workstations/" (seg(w)) } { (w) } } }
                                td { (e.product.as_deref().unwrap_or("")) " " (e.version.as_deref().unwrap_or("")) }
                                td { @if let Some(c) = &e.error_code { code.code { (c) } " " } (e.message.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    q: Option<String>,
}

pub(crate) async fn workstations_page(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<SearchQuery>,
) -> PageResult {
    let all = state.db.list_workstations(admin.organization_id, None).await?;
    let needle = query.q.unwrap_or_default().trim().to_lowercase();
    let shown: Vec<&proto::Workstation> = all
        .iter()
        .filter(|w| {
            needle.is_empty()
                || w.hostname.to_lowercase().contains(&needle)
                || w.id.to_lowercase().contains(&needle)
                || w.groups.iter().any(|g| g.to_lowercase().contains(&needle))
                || w.installed
                    .iter()
                    .any(|(p, v)| format!("{p} {v}").to_lowercase().contains(&needle))
        })
        .collect();
    Ok(page(
        &admin,
        "/workstations",
        "Workstations",
        html! {
            form.filters method="get" action="/workstations" role="search" {
                label for="q" { "Search host, id, group or installed product" }
                input id="q" name="q" type="search" value=(needle);
                button.secondary type="submit" { "Search" }
            }
            table {
                caption { (shown.len()) " of " (all.len()) " workstations" }
                thead { tr { th scope="col" { "Host" } th scope="col" { "System" } th scope="col" { "Groups" } th scope="col" { "Installed" } th scope="col" { "Agent" } th scope="col" { "Last check-in" } } }
                tbody {
                    @for w in &shown {
                        tr {
                            td { a href={ "/workstations/" (seg(&w.id)) } { (w.hostname) } }
                            td { (w.os) " " (w.arch) }
                            td { (w.groups.join(", ")) }
                            td { @for (p, v) in &w.installed { (p) " " (v) br; } }
                            td { (w.agent_version) }
                            td { (w.last_checkin_at.as_deref().map(when).unwrap_or_else(|| "never".into())) }
                        }
                    }
                }
            }
        },
    ))
}

pub(crate) async fn workstation_page(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> PageResult {
    let found = state.db.list_workstations(admin.organization_id, Some(&id)).await?;
    let w = found
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(codes::UNKNOWN_WORKSTATION, Some("id"), format!("no workstation `{id}`")))?;
    let history = state
        .db
        .list_events(
            admin.organization_id,
            &EventFilter {
                workstation: Some(id.clone()),
                limit: 200,
                ..EventFilter::default()
            },
        )
        .await?;
    Ok(page(
        &admin,
        "/workstations",
        &format!("Workstation {}", w.hostname),
        html! {
            dl.facts {
                dt { "Id" } dd { code { (w.id) } }
                dt { "System" } dd { (w.os) " " (w.arch) }
                dt { "Agent" } dd { (w.agent_version) }
                dt { "Groups" } dd { @if w.groups.is_empty() { "none" } @else { (w.groups.join(", ")) } }
                dt { "Enrolled" } dd { (when(&w.enrolled_at)) }
                dt { "Last check-in" } dd { (w.last_checkin_at.as_deref().map(when).unwrap_or_else(|| "never".into())) }
            }
            h2 { "Installed versions" }
            @if w.installed.is_empty() { p.muted { "Nothing reported yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Product" } th scope="col" { "Version" } } }
                    tbody { @for (p, v) in &w.installed { tr { td { (p) } td { (v) } } } }
                }
            }
            h2 { "History" }
            (events_table(&history))
        },
    ))
}

fn events_table(events: &[proto::Event]) -> maud::Markup {
    html! {
        @if events.is_empty() { p.muted { "No events." } } @else {
            table.events {
                thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "By" } th scope="col" { "Release" } th scope="col" { "Workstation" } th scope="col" { "Rollout" } th scope="col" { "Message" } } }
                tbody {
                    @for e in events.iter().rev() {
                        tr {
                            td { (when(&e.at)) }
                            td { (e.kind) }
                            td { (e.actor) }
                            td { (e.product.as_deref().unwrap_or("")) " " (e.version.as_deref().unwrap_or("")) }
                            td { @if let Some(w) = &e.workstation_id { a href={ "/workstations/" (seg(w)) } { (w) } } }
                            td { @if let Some(r) = e.rollout_id { a href={ "/rollouts/" (r) } { (r) } } }
                            td { @if let Some(c) = &e.error_code { code.code { (c) } " " } (e.message.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// The filter fields the events page and its CSV export share, echoed back into the form.
#[derive(Deserialize, Default, Clone)]
pub(crate) struct EventsForm {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    workstation: String,
    #[serde(default)]
    rollout: String,
    #[serde(default)]
    since: String,
}

impl EventsForm {
    fn query(&self, limit: i64) -> EventQuery {
        EventQuery {
            product: Some(self.product.clone()),
            workstation: Some(self.workstation.clone()),
            rollout: Some(self.rollout.clone()),
            since: Some(self.since.clone()),
            kind: Some(self.kind.clone()),
            after: None,
            limit: Some(limit),
        }
    }

    fn encoded(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("type", &self.kind)
            .append_pair("product", &self.product)
            .append_pair("workstation", &self.workstation)
            .append_pair("rollout", &self.rollout)
            .append_pair("since", &self.since)
            .finish()
    }
}

pub(crate) async fn events_page(
    State(state): State<AppState>,
    admin: Admin,
    Query(form): Query<EventsForm>,
) -> PageResult {
    let filter = form.query(500).filter()?;
    let events = state.db.list_events(admin.organization_id, &filter).await?;
    Ok(page(
        &admin,
        "/events",
        "Events",
        html! {
            form.filters method="get" action="/events" {
                label for="type" { "Type or family (e.g. workstation.failed, rollout)" }
                input id="type" name="type" value=(form.kind);
                label for="product" { "Product" }
                input id="product" name="product" value=(form.product);
                label for="workstation" { "Workstation id" }
                input id="workstation" name="workstation" value=(form.workstation);
                label for="rollout" { "Rollout #" }
                input id="rollout" name="rollout" value=(form.rollout) inputmode="numeric";
                label for="since" { "Since (date or RFC 3339)" }
                input id="since" name="since" value=(form.since) placeholder="2026-11-01";
                button.secondary type="submit" { "Filter" }
            }
            p { a.button href={ "/events.csv?" (form.encoded()) } download="upkeep-events.csv" { "Export as CSV" } " " span.muted { "(the newest 10,000 matching events)" } }
            p.muted { "Showing the newest " (events.len()) " matching events, newest first." }
            (events_table(&events))
        },
    ))
}

/// A cell a spreadsheet would run as a formula is prefixed with `'`.
fn csv_cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

pub(crate) async fn events_csv(
    State(state): State<AppState>,
    admin: Admin,
    Query(form): Query<EventsForm>,
) -> PageResult {
    let filter = form.query(10_000).filter()?;
    let events = state.db.list_events(admin.organization_id, &filter).await?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| ApiError::Internal(format!("writing CSV: {e}"));
    writer
        .write_record([
            "id",
            "at",
            "type",
            "actor",
            "product",
            "version",
            "workstation_id",
            "rollout_id",
            "error_code",
            "message",
            "details",
        ])
        .map_err(csv_error)?;
    for e in &events {
        let details = e.details.as_ref().map(ToString::to_string).unwrap_or_default();
        writer
            .write_record([
                e.id.to_string(),
                e.at.clone(),
                csv_cell(&e.kind),
                csv_cell(&e.actor),
                csv_cell(e.product.as_deref().unwrap_or("")),
                csv_cell(e.version.as_deref().unwrap_or("")),
                csv_cell(e.workstation_id.as_deref().unwrap_or("")),
                e.rollout_id.map(|r| r.to_string()).unwrap_or_default(),
                csv_cell(e.error_code.as_deref().unwrap_or("")),
                csv_cell(e.message.as_deref().unwrap_or("")),
                csv_cell(&details),
            ])
            .map_err(csv_error)?;
    }
    let body = writer
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"upkeep-events.csv\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

pub(crate) async fn groups_page(State(state): State<AppState>, admin: Admin) -> PageResult {
    let groups = state.db.notification_groups(admin.organization_id).await?;
    Ok(groups_view(&admin, &groups, None))
}

fn groups_view(
    admin: &Admin,
    groups: &[proto::NotificationGroup],
    created: Option<&proto::NotificationGroup>,
) -> axum::response::Response {
    page(
        admin,
        "/notification-groups",
        "Notification groups",
        html! {
            @if let Some(group) = created {
                div.notice role="status" {
                    p { "Group " strong { (group.name) } " created." }
                    @if let Some(secret) = &group.webhook_secret {
                        p { "Webhook signing key (shown only now; webhooks carry " code { "X-Upkeep-Signature: sha256=HMAC" } "): " code.hash { (secret) } }
                    }
                }
            }
            @if groups.is_empty() { p { "No notification groups yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "E-mail" } th scope="col" { "Webhooks" } th scope="col" { "For" } th scope="col" { "Delivered / pending / given up" } } }
                    tbody {
                        @for g in groups {
                            tr {
                                td { (g.name) }
                                td { (g.emails.join(", ")) }
                                td { (g.webhooks.join(", ")) }
                                td {
                                    @if let Some(p) = &g.product { "product " (p) }
                                    @if let Some(r) = g.rollout_id { "rollout #" (r) }
                                }
                                td { (g.delivered) " / " (g.pending) " / " (g.given_up) }
                            }
                        }
                    }
                }
            }
            @if admin.can(Role::Admin) {
                h2 { "New group" }
                form.stack method="post" action="/notification-groups" {
                    (csrf_field(admin))
                    label for="name" { "Name" }
                    input id="name" name="name" required;
                    label for="emails" { "E-mail addresses (comma- or line-separated)" }
                    textarea id="emails" name="emails" rows="2" {}
                    label for="webhooks" { "Webhook URLs (comma- or line-separated)" }
                    textarea id="webhooks" name="webhooks" rows="2" {}
                    label for="product" { "Every update of product" }
                    input id="product" name="product";
                    label for="rollout" { "…or one rollout #" }
                    input id="rollout" name="rollout" inputmode="numeric";
                    button type="submit" { "Create group" }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct GroupForm {
    name: String,
    #[serde(default)]
    emails: String,
    #[serde(default)]
    webhooks: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    rollout: String,
}

pub(crate) async fn create_group(
    State(state): State<AppState>,
    admin: Admin,
    ConsoleForm(form): ConsoleForm<GroupForm>,
) -> PageResult {
    let split = |t: &str| -> Vec<String> {
        t.split([',', '\n', '\r'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let rollout_id = match form.rollout.trim() {
        "" => None,
        id => Some(admin_api::rollout_id(id).map_err(|_| {
            ApiError::bad_request(codes::INVALID_FIELD, "rollout", format!("`{id}` is not a rollout id"))
        })?),
    };
    let request = proto::NotificationGroupCreate {
        name: form.name.trim().to_owned(),
        emails: split(&form.emails),
        webhooks: split(&form.webhooks),
        product: Some(form.product.trim().to_owned()).filter(|p| !p.is_empty()),
        rollout_id,
    };
    let (_, axum::Json(created)) =
        admin_api::create_notification_group(State(state.clone()), admin.clone(), ApiJson(request)).await?;
    let groups = state.db.notification_groups(admin.organization_id).await?;
    Ok(groups_view(&admin, &groups, Some(&created)))
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn formulas_are_defused() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_cell("workstation.failed"), "workstation.failed");
    }
}
