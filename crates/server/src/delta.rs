//! Delta updates, server side: after a release upload commits, a background task builds a patch
//! to it from each of the last K releases of the same product and platform (`--delta-from-releases`),
//! on the *uncompressed* tar streams (gzip hides the similarity), stores it in the blob store
//! under its SHA-256 and records it in `deltas`; check-ins then offer the patches next to the full
//! artifact.
//!
//! Several server processes may share the database: each pair is claimed with a conditional
//! insert, so only one of them builds it. Builds run one at a time per process, because both
//! payloads are held in memory (at most [`upkeep_delta::MAX_INPUT`] each).
//!
//! Nothing here is trusted by the agent: it uses what a patch rebuilds only when the result's
//! SHA-256 equals the signed `content_sha256`, and falls back to the full artifact otherwise.

use std::path::Path;
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use upkeep_delta::Method;
use upkeep_protocol::codes;

use crate::AppState;
use crate::auth::Device;
use crate::blobs::BlobError;
use crate::db::{DbError, DeltaClaim, DeltaSource, NewDelta};
use crate::error::ApiError;

/// A patch must be smaller than this share of the full artifact to be worth offering.
const MAX_PATCH_SHARE: f64 = 0.9;

/// A claim still `building` after this long belongs to a process that died; another may take it
/// (zstd built about 1 to 3 MB of payload per second in `bench/delta`, so a 2 GiB pair can take
/// most of an hour).
const STALE_CLAIM_MS: i64 = 6 * 60 * 60 * 1000;

/// One build at a time in this process: it holds two payloads in memory.
static BUILDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

#[derive(Debug, thiserror::Error)]
pub enum DeltaBuildError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("archive: {0}")]
    Archive(#[from] upkeep_archive::ArchiveError),
    #[error(transparent)]
    Delta(#[from] upkeep_delta::DeltaError),
    #[error("the uncompressed {version} has SHA-256 {actual}, the release records {expected}")]
    ContentMismatch {
        version: String,
        expected: String,
        actual: String,
    },
    #[error("build task: {0}")]
    Task(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// `GET /api/v1/device/deltas/{sha256}`: a patch, whole or a range of it, when it leads to a
/// release approved in the workstation's organization.
pub(crate) async fn download(
    State(state): State<AppState>,
    device: Device,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::device_api::check_digest(&sha256)?;
    let size = state
        .db
        .delta_downloadable(device.organization_id, &sha256)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                codes::NOT_FOUND,
                Some("sha256"),
                "no patch to an approved release with this digest",
            )
        })?;
    crate::device_api::send_artifact(&state, &sha256, size, &headers, None).await
}

/// Builds the patches to a just-uploaded release in the background.
pub(crate) fn spawn_build(state: AppState, release_id: i64) {
    if state.settings.delta_from_releases == 0 {
        return;
    }
    tokio::spawn(async move {
        match build_for_release(&state, release_id).await {
            Ok(built) if built > 0 => tracing::info!(release_id, built, "delta patches built"),
            Ok(_) => {}
            Err(e) => tracing::warn!(release_id, error = %e, "building delta patches failed"),
        }
    });
}

/// At startup: builds again the patches whose builder died (a claim left `building`).
pub(crate) fn spawn_resume(state: AppState) {
    if state.settings.delta_from_releases == 0 {
        return;
    }
    tokio::spawn(async move {
        let stale_before = crate::db::now_ms() - STALE_CLAIM_MS;
        match state.db.stale_delta_targets(stale_before).await {
            Ok(releases) => {
                for release_id in releases {
                    spawn_build(state.clone(), release_id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for interrupted delta builds failed"),
        }
    });
}

/// Builds every missing patch to `release_id` from the last `--delta-from-releases` releases of
/// the same product and platform; returns how many this process built.
pub async fn build_for_release(state: &AppState, release_id: i64) -> Result<usize, DeltaBuildError> {
    let mut built = 0;
    for to in state.db.delta_targets(release_id).await? {
        let Ok(to_version) = semver::Version::parse(&to.version) else {
            continue;
        };
        let mut sources: Vec<(semver::Version, DeltaSource)> = state
            .db
            .delta_sources(to.product_id, release_id, &to.artifact.platform)
            .await?
            .into_iter()
            .filter_map(|s| Some((semver::Version::parse(&s.version).ok()?, s)))
            .filter(|(v, _)| *v < to_version)
            .collect();
        sources.sort_by(|a, b| b.0.cmp(&a.0));
        sources.truncate(state.settings.delta_from_releases);
        // The new payload is read once, when the first pair is claimed.
        let mut new_payload: Option<Vec<u8>> = None;
        for (_, from) in &sources {
            let stale_before = crate::db::now_ms() - STALE_CLAIM_MS;
            let DeltaClaim::Claimed(id) = state.db.claim_delta(from, &to, stale_before).await? else {
                continue;
            };
            let _permit = BUILDS
                .acquire()
                .await
                .map_err(|e| DeltaBuildError::Task(e.to_string()))?;
            match build_pair(state, id, from, &to, &mut new_payload).await {
                Ok(true) => built += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(from = %from.version, to = %to.version, platform = %to.artifact.platform, error = %e, "delta build failed");
                    state.db.skip_delta(id, "failed", &e.to_string()).await?;
                }
            }
        }
    }
    Ok(built)
}

/// Builds one claimed pair; `Ok(false)` when it was skipped (and recorded so).
async fn build_pair(
    state: &AppState,
    id: i64,
    from: &DeltaSource,
    to: &DeltaSource,
    new_payload: &mut Option<Vec<u8>>,
) -> Result<bool, DeltaBuildError> {
    let skip = |reason: String| async move {
        tracing::info!(from = %from.version, to = %to.version, platform = %to.artifact.platform, %reason, "delta skipped");
        state.db.skip_delta(id, "skipped", &reason).await.map(|()| false)
    };
    for side in [from, to] {
        let size = side.artifact.content_size.unwrap_or(u64::MAX);
        if size > upkeep_delta::MAX_INPUT {
            return Ok(skip(format!(
                "{} is {size} bytes uncompressed, above the limit of {}",
                side.version,
                upkeep_delta::MAX_INPUT
            ))
            .await?);
        }
    }
    let old = payload(state, from).await?;
    let new = match new_payload.take() {
        Some(bytes) => bytes,
        None => payload(state, to).await?,
    };
    let started = Instant::now();
    let method = Method::for_sizes(old.len() as u64, new.len() as u64);
    // The payloads go to the blocking pool and come back, so the new one serves the next pair.
    let (patch, new) = tokio::task::spawn_blocking(move || (upkeep_delta::build(method, &old, &new), new))
        .await
        .map_err(|e| DeltaBuildError::Task(e.to_string()))?;
    *new_payload = Some(new);
    let patch = patch?;
    let build_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let worth = (to.artifact.size as f64 * MAX_PATCH_SHARE) as u64;
    if patch.len() as u64 >= worth {
        return Ok(skip(format!(
            "the patch ({} bytes) is not smaller than {}% of the artifact ({} bytes)",
            patch.len(),
            (MAX_PATCH_SHARE * 100.0) as u32,
            to.artifact.size
        ))
        .await?);
    }
    let sha256 = hex::encode(Sha256::digest(&patch));
    store(state, &sha256, &patch).await?;
    state
        .db
        .finish_delta(
            id,
            &NewDelta {
                method: method.as_str(),
                sha256: &sha256,
                size: patch.len() as u64,
                build_ms,
                from,
                to,
            },
        )
        .await?;
    // Offers are answered from the check-in cache: every server process must see the new patch.
    state.checkin_cache.changed(&state.db).await?;
    tracing::info!(from = %from.version, to = %to.version, platform = %to.artifact.platform, method = method.as_str(), size = patch.len(), artifact_size = to.artifact.size, build_ms, "delta built");
    Ok(true)
}

/// The uncompressed tar stream of a release's artifact, checked against its recorded content.
async fn payload(state: &AppState, source: &DeltaSource) -> Result<Vec<u8>, DeltaBuildError> {
    let artifact = &source.artifact;
    let staged = state.settings.staged("delta-").await?;
    let mut file = tokio::fs::File::create(&staged).await?;
    let mut read = state.blobs.read(&artifact.sha256, None).await?;
    while let Some(chunk) = read.stream.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    drop(file);
    let limit = artifact.content_size.unwrap_or(0);
    let path = staged.to_path_buf();
    let (content, bytes) = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
        upkeep_archive::decompress(&path, &mut bytes, limit).map(|content| (content, bytes))
    })
    .await
    .map_err(|e| DeltaBuildError::Task(e.to_string()))??;
    let expected = artifact.content_sha256.clone().unwrap_or_default();
    if content.sha256 != expected {
        return Err(DeltaBuildError::ContentMismatch {
            version: source.version.clone(),
            expected,
            actual: content.sha256,
        });
    }
    Ok(bytes)
}

async fn store(state: &AppState, sha256: &str, patch: &[u8]) -> Result<(), DeltaBuildError> {
    if state.blobs.exists(sha256).await? {
        return Ok(());
    }
    let staged = state.settings.staged("patch-").await?;
    tokio::fs::write(&staged, patch).await?;
    state.blobs.put_file(sha256, Path::new(&staged)).await?;
    Ok(())
}
