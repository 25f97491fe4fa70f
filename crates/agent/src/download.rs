//! Resumable artifact download and verification.
//!
//! A download goes to `downloads/<sha256>.part`. If that file already holds some bytes (an earlier
//! run was cut off), the agent asks for the rest with `Range: bytes=N-`; a server that answers 200
//! instead of 206 restarts it from zero. The finished file is checked against the size and SHA-256
//! of the signed manifest and discarded if either differs.

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use upkeep_protocol as proto;

use crate::client::{DeviceClient, check, error_chain};
use crate::error::AgentError;
use crate::progress::Progress;

/// What a download did, for the report.
#[derive(Debug, Clone, Copy)]
pub struct DownloadOutcome {
    /// Bytes already on disk from an earlier attempt.
    pub resumed_from: u64,
    /// Bytes received in this run.
    pub received: u64,
}

pub async fn fetch(
    client: &DeviceClient,
    downloads: &Path,
    artifact: &proto::Artifact,
    progress: &Progress,
) -> Result<(PathBuf, DownloadOutcome), AgentError> {
    tokio::fs::create_dir_all(downloads)
        .await
        .map_err(|e| AgentError::io("creating", downloads, e))?;
    let part = downloads.join(format!("{}.part", artifact.sha256));
    let mut have = match tokio::fs::metadata(&part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    if have > artifact.size {
        // Longer than the real thing: it cannot be a prefix of it.
        remove(&part).await;
        have = 0;
    }
    let resumed_from = have;
    let mut received = 0u64;
    if have < artifact.size {
        let mut request = client.request(reqwest::Method::GET, &proto::artifact_path(&artifact.sha256));
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| client.unreachable(&e))?;
        let response = check(response).await?;
        let mut file = if response.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            tokio::fs::OpenOptions::new().append(true).open(&part).await
        } else {
            have = 0;
            tokio::fs::File::create(&part).await
        }
        .map_err(|e| AgentError::io("opening", &part, e))?;
        progress.start(artifact.size, have);
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Keep what arrived on disk so the next run resumes from there.
                    let _ = file.flush().await;
                    let _ = file.sync_all().await;
                    progress.finish();
                    return Err(AgentError::Download(format!(
                        "{} (kept {have} of {} bytes; run the update again to resume)",
                        error_chain(&e),
                        artifact.size
                    )));
                }
            };
            if have + chunk.len() as u64 > artifact.size {
                drop(file);
                remove(&part).await;
                return Err(AgentError::SizeMismatch {
                    expected: artifact.size,
                    actual: have + chunk.len() as u64,
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| AgentError::io("writing", &part, e))?;
            have += chunk.len() as u64;
            received += chunk.len() as u64;
            progress.set(have);
        }
        file.sync_all().await.map_err(|e| AgentError::io("syncing", &part, e))?;
        progress.finish();
    }
    if have != artifact.size {
        // The connection ended early: keep what arrived so the next run resumes.
        return Err(AgentError::Download(format!(
            "the connection closed after {have} of {} bytes; run the update again to resume",
            artifact.size
        )));
    }
    let actual = sha256_file(&part).await?;
    if actual != artifact.sha256 {
        remove(&part).await;
        return Err(AgentError::DigestMismatch {
            expected: artifact.sha256.clone(),
            actual,
        });
    }
    Ok((part, DownloadOutcome { resumed_from, received }))
}

async fn remove(path: &Path) {
    let _ = tokio::fs::remove_file(path).await;
}

pub async fn sha256_file(path: &Path) -> Result<String, AgentError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&owned).map_err(|e| AgentError::io("reading", &owned, e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let n = file
                .read(&mut buffer)
                .map_err(|e| AgentError::io("reading", &owned, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| AgentError::Invalid(format!("hashing: {e}")))?
}
