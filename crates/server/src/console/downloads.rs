//! The public download page: for each public client product, the latest approved release per
//! platform, served by the same resumable artifact path the agents use. No sign-in.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use maud::html;
use semver::Version;
use upkeep_protocol::codes;

use super::{PageResult, bare_page, human_size, markdown, seg};
use crate::AppState;
use crate::blobs::is_sha256_hex;
use crate::db::PublicDownload;
use crate::error::ApiError;

/// (organization, product) → platform → the newest approved release's artifact.
fn latest(downloads: Vec<PublicDownload>) -> BTreeMap<(String, String), BTreeMap<String, PublicDownload>> {
    let mut out: BTreeMap<(String, String), BTreeMap<String, PublicDownload>> = BTreeMap::new();
    for d in downloads {
        let Ok(version) = Version::parse(&d.version) else {
            continue;
        };
        let platforms = out.entry((d.organization.clone(), d.product.clone())).or_default();
        let newer = platforms
            .get(&d.artifact.platform)
            .is_none_or(|have| Version::parse(&have.version).is_ok_and(|v| version > v));
        if newer {
            platforms.insert(d.artifact.platform.clone(), d);
        }
    }
    out
}

pub(crate) async fn downloads_page(State(state): State<AppState>) -> PageResult {
    let products = latest(state.db.public_downloads().await?);
    let several_orgs = products
        .keys()
        .map(|(o, _)| o)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    Ok(bare_page(
        "Downloads",
        html! {
            h1 { "Downloads" }
            @if products.is_empty() {
                p { "Nothing is offered for download yet." }
            }
            @for ((organization, product), platforms) in &products {
                section.download {
                    h2 { (product) @if several_orgs { " " span.muted { "(" (organization) ")" } } }
                    @for (platform, d) in platforms {
                        article.artifact {
                            h3 { (product) " " (d.version) " for " (platform) }
                            p {
                                a.button href={ "/downloads/" (d.artifact.sha256) "/" (seg(&d.artifact.filename)) } download=(d.artifact.filename) {
                                    "Download " (d.artifact.filename)
                                }
                                " " span.muted { (human_size(d.artifact.size)) }
                            }
                            p { "SHA-256: " code.hash { (d.artifact.sha256) } }
                            @if !d.notes.trim().is_empty() {
                                details open {
                                    summary { "Release notes" }
                                    div.notes { (markdown::render(&d.notes)) }
                                }
                            }
                        }
                    }
                }
            }
            p.muted { "Installed copies keep themselves up to date through upkeep-agent. " a href="/login" { "Administrators sign in here" } "." }
        },
    ))
}

pub(crate) async fn download(
    State(state): State<AppState>,
    Path((sha256, _filename)): Path<(String, String)>,
    headers: HeaderMap,
) -> PageResult {
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::bad_request(codes::INVALID_FIELD, "sha256", "not a lowercase hex SHA-256 digest").into());
    }
    let (size, filename) =
        state.db.public_artifact(&sha256).await?.ok_or_else(|| {
            ApiError::not_found(codes::NOT_FOUND, Some("sha256"), "no public download with this digest")
        })?;
    Ok(crate::device_api::send_artifact(&state, &sha256, size, &headers, Some(&filename)).await?)
}
