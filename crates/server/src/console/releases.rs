//! Products, releases (upload, notes, approve/disapprove) and the server components page.

use axum::extract::{Multipart, Path, Query, State};
use maud::{Markup, html};
use semver::Version;
use serde::Deserialize;
use upkeep_protocol::{self as proto, codes};

use super::{
    ConsoleForm, PageResult, badge, csrf_field, csrf_value, human_size, markdown, page, see_other, seg, when, when_ms,
};
use crate::AppState;
use crate::admin_api::{self, ApiJson, UploadShape};
use crate::auth::{Admin, Role};
use crate::error::ApiError;

async fn product_or_404(state: &AppState, admin: &Admin, name: &str) -> Result<(i64, proto::Product), ApiError> {
    let products = state.db.list_products(admin.organization_id).await?;
    let product = products.into_iter().find(|p| p.name == name).ok_or_else(|| {
        ApiError::not_found(
            codes::UNKNOWN_PRODUCT,
            Some("product"),
            format!("unknown product `{name}`"),
        )
    })?;
    let id = state
        .db
        .product_id(admin.organization_id, name)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("product `{name}` vanished")))?;
    Ok((id, product))
}

/// Newest first, by semantic version.
fn newest_first(releases: &mut [proto::Release]) {
    releases.sort_by(|a, b| {
        let va = Version::parse(&a.version).ok();
        let vb = Version::parse(&b.version).ok();
        vb.cmp(&va)
    });
}

pub(crate) async fn products_page(State(state): State<AppState>, admin: Admin) -> PageResult {
    let products = state.db.list_products(admin.organization_id).await?;
    Ok(page(
        &admin,
        "/products",
        "Products",
        html! {
            @if products.is_empty() {
                p { "No products yet." }
            } @else {
                table {
                    caption { "Products and their releases" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "On /downloads" } th scope="col" { "Created" } } }
                    tbody {
                        @for p in &products {
                            tr {
                                td { a href={ "/products/" (seg(&p.name)) } { (p.name) } }
                                td { (p.kind.as_str()) }
                                td { @if p.public { "yes" } @else { "no" } }
                                td { (when(&p.created_at)) }
                            }
                        }
                    }
                }
            }
            @if admin.can(Role::ReleaseManager) {
                h2 { "New product" }
                form.stack method="post" action="/products" {
                    (csrf_field(&admin))
                    label for="name" { "Name (letters, digits, dot, dash, underscore)" }
                    input id="name" name="name" required;
                    label for="kind" { "Kind" }
                    select id="kind" name="kind" {
                        option value="client" { "client — runs on workstations" }
                        option value="server" { "server — a server-side component" }
                    }
                    label.check { input type="checkbox" name="public" value="1"; " Offer its latest approved installers on the public download page" }
                    button type="submit" { "Create product" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct ProductForm {
    name: String,
    kind: String,
    public: Option<String>,
}

pub(crate) async fn create_product(
    State(state): State<AppState>,
    admin: Admin,
    ConsoleForm(form): ConsoleForm<ProductForm>,
) -> PageResult {
    let kind = proto::ProductKind::parse(&form.kind)
        .ok_or_else(|| ApiError::bad_request(codes::INVALID_FIELD, "kind", "kind is client or server"))?;
    let name = form.name.trim().to_owned();
    let _ = admin_api::create_product(
        State(state),
        admin,
        ApiJson(proto::ProductCreate {
            name: name.clone(),
            kind,
            public: form.public.is_some(),
        }),
    )
    .await?;
    Ok(see_other(&format!("/products/{}", seg(&name))))
}

#[derive(Deserialize)]
pub(crate) struct PublicForm {
    public: String,
}

pub(crate) async fn set_public(
    State(state): State<AppState>,
    admin: Admin,
    Path(product): Path<String>,
    ConsoleForm(form): ConsoleForm<PublicForm>,
) -> PageResult {
    let _ = admin_api::update_product(
        State(state),
        admin,
        Path(product.clone()),
        ApiJson(proto::ProductUpdate {
            public: Some(form.public == "1"),
        }),
    )
    .await?;
    Ok(see_other(&format!("/products/{}", seg(&product))))
}

pub(crate) async fn product_page(State(state): State<AppState>, admin: Admin, Path(name): Path<String>) -> PageResult {
    let (id, product) = product_or_404(&state, &admin, &name).await?;
    let mut releases = state.db.list_releases(admin.organization_id, id, &name).await?;
    newest_first(&mut releases);
    let base = format!("/products/{}", seg(&name));
    Ok(page(
        &admin,
        "/products",
        &format!("Product {name}"),
        html! {
            p {
                "Kind: " strong { (product.kind.as_str()) } ". "
                @if product.public { "Its latest approved installers are on the " a href="/downloads" { "public download page" } "." }
                @else { "Not on the public download page." }
            }
            @if admin.can(Role::ReleaseManager) && product.kind == proto::ProductKind::Client {
                form.inline method="post" action={ (base) "/public" } {
                    (csrf_field(&admin))
                    input type="hidden" name="public" value=(if product.public { "0" } else { "1" });
                    button.secondary type="submit" { @if product.public { "Remove from the download page" } @else { "Offer on the download page" } }
                }
            }
            h2 { "Releases" }
            @if releases.is_empty() { p { "No releases yet." } } @else {
                table {
                    caption { "Releases of " (name) ", newest first" }
                    thead { tr { th scope="col" { "Version" } th scope="col" { "Approval" } th scope="col" { "Platforms" } th scope="col" { "Uploaded" } } }
                    tbody {
                        @for r in &releases {
                            tr {
                                td { a href={ (base) "/releases/" (seg(&r.version)) } { (r.version) } }
                                td { (badge(r.approval.as_str())) }
                                td { @for a in &r.artifacts { (a.platform) " (" (human_size(a.size)) ") " } }
                                td { (when(&r.created_at)) }
                            }
                        }
                    }
                }
            }
            @if admin.can(Role::ReleaseManager) { (upload_form(&admin, &base)) }
        },
    ))
}

fn upload_form(admin: &Admin, base: &str) -> Markup {
    // The CSRF token rides in the action's query: a multipart body is streamed to disk, not
    // read up front by the guard.
    let action = format!("{base}/releases?csrf={}", csrf_value(admin));
    html! {
        h2 { "Upload a release" }
        form.stack method="post" action=(action) enctype="multipart/form-data" data-upload {
            label for="version" { "Version (semantic, e.g. 2.4.0)" }
            input id="version" name="version" required;
            label for="platform" { "Platform (e.g. linux-x86_64, windows-x86_64, any)" }
            input id="platform" name="platform" required value="any";
            label for="notes" { "Release notes (Markdown)" }
            textarea id="notes" name="notes" rows="6" {}
            label for="launch" { "Program to launch, relative to the install folder (optional)" }
            input id="launch" name="launch";
            label for="manifest" { "Install manifest, upkeep.toml (optional; without it the archive recipe is used)" }
            textarea id="manifest" name="manifest" rows="4" {}
            label for="artifact" { "Installer or archive (.tar.gz, .zip, or any file with a manifest's command recipe)" }
            input id="artifact" name="artifact" type="file" required;
            div.upload-progress hidden {
                progress max="100" value="0" aria-label="Upload progress" {}
                span.upload-status role="status" aria-live="polite" {}
            }
            button type="submit" { "Upload" }
        }
    }
}

pub(crate) async fn upload(
    State(state): State<AppState>,
    admin: Admin,
    Path(product): Path<String>,
    multipart: Multipart,
) -> PageResult {
    let release = admin_api::upload(&state, &admin, product.clone(), multipart, UploadShape::Form).await?;
    Ok(see_other(&format!(
        "/products/{}/releases/{}",
        seg(&product),
        seg(&release.version)
    )))
}

pub(crate) async fn release_page(
    State(state): State<AppState>,
    admin: Admin,
    Path((name, version)): Path<(String, String)>,
) -> PageResult {
    let (id, _) = product_or_404(&state, &admin, &name).await?;
    let releases = state.db.list_releases(admin.organization_id, id, &name).await?;
    let release = releases.into_iter().find(|r| r.version == version).ok_or_else(|| {
        ApiError::not_found(
            codes::UNKNOWN_RELEASE,
            Some("version"),
            format!("{name} has no release {version}"),
        )
    })?;
    let base = format!("/products/{}/releases/{}", seg(&name), seg(&version));
    Ok(page(
        &admin,
        "/products",
        &format!("{name} {version}"),
        html! {
            p.approval {
                "Approval: " (badge(release.approval.as_str()))
                @if let Some(reason) = &release.approval_reason { " — " (reason) }
            }
            p.muted { "Uploaded " (when(&release.created_at)) " · recipe " (release.recipe)
                @if let Some(launch) = &release.launch { " · launches " code { (launch) } } }
            h2 { "Release notes" }
            @if release.notes.trim().is_empty() { p.muted { "No release notes." } }
            @else { div.notes { (markdown::render(&release.notes)) } }
            h2 { "Artifacts" }
            table {
                thead { tr { th scope="col" { "Platform" } th scope="col" { "File" } th scope="col" { "Size" } th scope="col" { "SHA-256" } } }
                tbody {
                    @for a in &release.artifacts {
                        tr { td { (a.platform) } td { (a.filename) } td { (human_size(a.size)) } td { code.hash { (a.sha256) } } }
                    }
                }
            }
            @if admin.can(Role::ReleaseManager) {
                h2 { "Decision" }
                p.muted { "Approving makes the release available to rollouts; it does not deploy it. Disapproving a version stops clients that have it installed from starting it." }
                div.decisions {
                    form.stack method="post" action={ (base) "/approve" } {
                        (csrf_field(&admin))
                        label for="approve-reason" { "Reason (optional)" }
                        input id="approve-reason" name="reason";
                        button type="submit" disabled[release.approval == proto::ApprovalState::Approved] { "Approve" }
                    }
                    form.stack method="post" action={ (base) "/disapprove" } {
                        (csrf_field(&admin))
                        label for="disapprove-reason" { "Reason" }
                        input id="disapprove-reason" name="reason" required;
                        button.danger type="submit" disabled[release.approval == proto::ApprovalState::Disapproved] { "Disapprove" }
                    }
                }
                @if release.approval == proto::ApprovalState::Approved {
                    p { a.button href={ "/rollouts/new?product=" (seg(&name)) "&version=" (seg(&version)) } { "Create a rollout of this release" } }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct DecisionForm {
    reason: Option<String>,
}

pub(crate) async fn decide(
    State(state): State<AppState>,
    admin: Admin,
    Path((product, version, decision)): Path<(String, String, String)>,
    ConsoleForm(form): ConsoleForm<DecisionForm>,
) -> PageResult {
    let approval = match decision.as_str() {
        "approve" => proto::ApprovalState::Approved,
        "disapprove" => proto::ApprovalState::Disapproved,
        _ => {
            return Err(
                ApiError::not_found(codes::NOT_FOUND, Some("decision"), "decide with approve or disapprove").into(),
            );
        }
    };
    let request = proto::ApprovalRequest {
        reason: form.reason.filter(|r| !r.trim().is_empty()),
        targets: None,
    };
    let _ = admin_api::set_approval(&state, &admin, &product, &version, approval, &request).await?;
    Ok(see_other(&format!(
        "/products/{}/releases/{}",
        seg(&product),
        seg(&version)
    )))
}

#[derive(Deserialize)]
pub(crate) struct ComponentsQuery {
    checked: Option<String>,
}

/// Seed 002's update page: each server-side component's installed and newest approved version,
/// its notes, "Install" and "Refresh".
pub(crate) async fn components_page(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<ComponentsQuery>,
) -> PageResult {
    let products = state.db.list_products(admin.organization_id).await?;
    let mut sections = Vec::new();
    for product in products.iter().filter(|p| p.kind == proto::ProductKind::Server) {
        let id = state
            .db
            .product_id(admin.organization_id, &product.name)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("product `{}` vanished", product.name)))?;
        let mut releases = state.db.list_releases(admin.organization_id, id, &product.name).await?;
        newest_first(&mut releases);
        let newest = releases
            .into_iter()
            .find(|r| r.approval == proto::ApprovalState::Approved);
        let hosts = state.db.component_hosts(admin.organization_id, &product.name).await?;
        let filter = crate::db::EventFilter {
            product: Some(product.name.clone()),
            limit: 5,
            errors_only: true,
            ..Default::default()
        };
        let failures = state.db.list_events(admin.organization_id, &filter).await?;
        sections.push((product.name.clone(), newest, hosts, failures));
    }
    let checked = query.checked.is_some();
    Ok(page(
        &admin,
        "/components",
        "Server components",
        html! {
            form.inline method="get" action="/components" {
                input type="hidden" name="checked" value="1";
                button.secondary type="submit" { "Refresh" }
                @if checked { span.muted role="status" { " Checked at " (when_ms(crate::db::now_ms())) "." } }
            }
            @if sections.is_empty() {
                p { "No server-side components. Create a product of kind " code { "server" } " and install it with " code { "upkeep-agent" } " on the server host." }
            }
            @for (name, newest, hosts, failures) in &sections {
                section.component {
                    h2 { (name) }
                    @match newest {
                        None => { p { "No approved release yet." } }
                        Some(release) => {
                            p { "Newest approved version: " strong { (release.version) } " (" (when(&release.created_at)) ")" }
                            @if !release.notes.trim().is_empty() { div.notes { (markdown::render(&release.notes)) } }
                        }
                    }
                    @if hosts.is_empty() {
                        p.muted { "No host reports it installed yet." }
                    } @else {
                        table {
                            caption { "Hosts running " (name) }
                            thead { tr { th scope="col" { "Host" } th scope="col" { "Installed" } th scope="col" { "State" } th scope="col" { "Last check-in" } } }
                            tbody {
                                @for host in hosts {
                                    @let current = newest.as_ref().is_none_or(|r| host.installed.as_deref() == Some(r.version.as_str()));
                                    tr {
                                        td { a href={ "/workstations/" (seg(&host.workstation_id)) } { (host.hostname) } }
                                        td { (host.installed.as_deref().unwrap_or("—")) }
                                        td { (badge(if current { "up to date" } else { "update available" })) }
                                        td { (host.last_checkin_at.map(when_ms).unwrap_or_else(|| "never".into())) }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(release) = newest {
                        @let outdated = hosts.iter().any(|h| h.installed.as_deref() != Some(release.version.as_str()));
                        @if admin.can(Role::ReleaseManager) && outdated {
                            form.inline method="post" action={ "/components/" (seg(name)) "/install" } {
                                (csrf_field(&admin))
                                input type="hidden" name="version" value=(release.version);
                                button type="submit" { "Install " (release.version) }
                            }
                            p.muted { "Installs at once on every host above: the agent backs up, installs, checks health and rolls back on failure. The notification groups of " (name) " get an e-mail when it starts and when it ends." }
                        }
                    }
                    @if !failures.is_empty() {
                        h3 { "Recent errors (send these to support)" }
                        ul.failures {
                            @for e in failures {
                                li {
                                    (when(&e.at)) " — " (e.kind) " "
                                    @if let Some(code) = &e.error_code { code.code { (code) } " " }
                                    (e.message.as_deref().unwrap_or(""))
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct InstallForm {
    version: String,
}

/// "Install": a mandatory rollout of that version, now, to every host that has the component.
pub(crate) async fn install_component(
    State(state): State<AppState>,
    admin: Admin,
    Path(product): Path<String>,
    ConsoleForm(form): ConsoleForm<InstallForm>,
) -> PageResult {
    let hosts = state.db.component_hosts(admin.organization_id, &product).await?;
    let targets: Vec<String> = hosts
        .into_iter()
        .filter(|h| h.installed.as_deref() != Some(form.version.as_str()))
        .map(|h| h.workstation_id)
        .collect();
    if targets.is_empty() {
        return Err(ApiError::conflict(
            codes::INVALID_STATE,
            Some("version"),
            format!("every host already runs {product} {}", form.version),
        )
        .into());
    }
    let (_, axum::Json(report)) = admin_api::create_rollout(
        State(state),
        admin,
        ApiJson(proto::RolloutCreate {
            product,
            version: form.version,
            targets: proto::RolloutTargets {
                all: false,
                workstations: targets,
                groups: Vec::new(),
            },
            mandatory: true,
            starts_at: None,
            deadline: None,
            waves: None,
            allow_downgrade: false,
            maintenance_window: None,
            now: true,
        }),
    )
    .await?;
    Ok(see_other(&format!("/rollouts/{}", report.rollout.id)))
}
