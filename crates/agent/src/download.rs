//! Artifact download and verification, from mirrors first and then the server.
//!
//! Mirrors (base URLs from the check-in answer, laid out like the server's `/tuf/` tree) are not
//! trusted: each is asked in order, without the device token, into `downloads/<sha256>.mirror`,
//! reading at most the signed size and hashing on the way. A mirror that errors, answers non-2xx
//! or sends bytes of another size or SHA-256 is warned about, its file discarded, and the next
//! source tried. Only verified bytes are moved to `downloads/<sha256>.part`.
//!
//! From the server, a download goes to `downloads/<sha256>.part`. If that file already holds some
//! bytes (an earlier run was cut off), the agent asks for the rest with `Range: bytes=N-`; a server
//! that answers 200 instead of 206 restarts it from zero. The finished file is checked against the
//! size and SHA-256 of the signed manifest and discarded if either differs. Mirror attempts never
//! touch that file, so a cut-off server download still resumes when every mirror fails.

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
#[derive(Debug, Clone, Default)]
pub struct DownloadOutcome {
    /// Bytes already on disk from an earlier attempt.
    pub resumed_from: u64,
    /// Bytes received in this run from the source that was kept.
    pub received: u64,
    /// Where the verified bytes came from: `server`, a mirror's artifact URL, or `on_disk` (an
    /// earlier run had downloaded it all).
    pub source: String,
    /// Mirrors passed over, with the reason, in the order they were tried.
    pub mirrors_failed: Vec<(String, String)>,
}

/// The URLs of `artifact` on each of `mirrors` (base URLs), in order. A base that does not make
/// an http(s) URL is skipped with a warning: the list comes from the check-in answer, which is
/// not signed.
pub fn mirror_urls(
    mirrors: &[String],
    organization: &str,
    product: &str,
    version: &str,
    artifact: &proto::Artifact,
) -> Vec<String> {
    let name = artifact.target_name(product, version);
    mirrors
        .iter()
        .filter_map(|mirror| {
            let url = proto::mirror_artifact_url(mirror, organization, &artifact.sha256, &name);
            match url::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(url),
                _ => {
                    eprintln!("upkeep-agent: warning: ignoring mirror `{mirror}`: not an http(s) URL");
                    None
                }
            }
        })
        .collect()
}

/// Fetches `artifact` into `downloads`, trying each of `mirrors` (artifact URLs, see
/// [`mirror_urls`]) in order and then the server, and returns the verified file.
pub async fn fetch(
    client: &DeviceClient,
    downloads: &Path,
    artifact: &proto::Artifact,
    mirrors: &[String],
    progress: &Progress,
) -> Result<(PathBuf, DownloadOutcome), AgentError> {
    tokio::fs::create_dir_all(downloads)
        .await
        .map_err(|e| AgentError::io("creating", downloads, e))?;
    let part = downloads.join(format!("{}.part", artifact.sha256));
    let on_disk = match tokio::fs::metadata(&part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    // Already complete (downloaded ahead of a maintenance window, or verified by an earlier run
    // that stopped later): nothing to fetch if it still verifies.
    if on_disk == artifact.size {
        if sha256_file(&part).await? == artifact.sha256 {
            let outcome = DownloadOutcome {
                resumed_from: on_disk,
                source: "on_disk".into(),
                ..DownloadOutcome::default()
            };
            return Ok((part, outcome));
        }
        remove(&part).await;
    }

    let mut mirrors_failed = Vec::new();
    if !mirrors.is_empty() {
        let http = crate::client::mirror_http_client()?;
        let staging = downloads.join(format!("{}.mirror", artifact.sha256));
        for (i, url) in mirrors.iter().enumerate() {
            progress.note(&format!("downloading from mirror {url}"));
            let refused = match from_mirror(&http, &staging, artifact, url, progress).await {
                Ok(Attempt::Verified(received)) => {
                    // Verified bytes replace whatever partial server download was kept.
                    tokio::fs::rename(&staging, &part)
                        .await
                        .map_err(|e| AgentError::io("moving into place", &part, e))?;
                    let outcome = DownloadOutcome {
                        resumed_from: 0,
                        received,
                        source: url.clone(),
                        mirrors_failed,
                    };
                    return Ok((part, outcome));
                }
                Ok(Attempt::Refused(e)) => e,
                Err(local) => {
                    // Our own disk failed, not the mirror: another source would fare no better.
                    remove(&staging).await;
                    return Err(local);
                }
            };
            remove(&staging).await;
            let next = mirrors.get(i + 1).map_or("the server", String::as_str);
            eprintln!("upkeep-agent: warning: mirror {url} failed: {refused}; trying {next}");
            mirrors_failed.push((url.clone(), refused.to_string()));
        }
    }

    let (resumed_from, received) = from_server(client, &part, &Wanted::artifact(artifact), progress).await?;
    let outcome = DownloadOutcome {
        resumed_from,
        received,
        source: "server".into(),
        mirrors_failed,
    };
    Ok((part, outcome))
}

/// How one mirror did; a local failure (our disk) is the `Err` of the surrounding `Result`.
enum Attempt {
    /// The bytes in the staging file match the signed size and SHA-256; this many were received.
    Verified(u64),
    /// The mirror failed or sent other bytes; the staging file holds nothing worth keeping.
    Refused(AgentError),
}

/// Downloads `url` into `staging` from zero, never writing more than the signed size, and checks
/// the SHA-256 of what arrived.
async fn from_mirror(
    http: &reqwest::Client,
    staging: &Path,
    artifact: &proto::Artifact,
    url: &str,
    progress: &Progress,
) -> Result<Attempt, AgentError> {
    let refused = |e| Ok(Attempt::Refused(e));
    // A plain GET: no device token and no Range, so an untrusted mirror learns nothing of ours.
    let response = match http.get(url).send().await {
        Ok(response) => response,
        Err(e) => return refused(AgentError::Download(error_chain(&e))),
    };
    if response.status() != reqwest::StatusCode::OK {
        return refused(AgentError::Download(format!("HTTP {}", response.status())));
    }
    if let Some(announced) = response.content_length()
        && announced != artifact.size
    {
        return refused(AgentError::SizeMismatch {
            expected: artifact.size,
            actual: announced,
        });
    }
    let mut file = tokio::fs::File::create(staging)
        .await
        .map_err(|e| AgentError::io("creating", staging, e))?;
    let mut hasher = Sha256::new();
    let mut have = 0u64;
    progress.start(artifact.size, 0);
    let mut stream = response.bytes_stream();
    let result = loop {
        let chunk = match stream.next().await {
            None => break None,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => break Some(AgentError::Download(error_chain(&e))),
        };
        let after = have + chunk.len() as u64;
        if after > artifact.size {
            // Stop reading: a mirror may send without end.
            break Some(AgentError::Download(format!(
                "the mirror sent more than the signed {} bytes",
                artifact.size
            )));
        }
        if let Err(e) = file.write_all(&chunk).await {
            progress.finish();
            return Err(AgentError::io("writing", staging, e));
        }
        hasher.update(&chunk);
        have = after;
        progress.set(have);
    };
    progress.finish();
    if let Some(e) = result {
        return refused(e);
    }
    if have != artifact.size {
        return refused(AgentError::SizeMismatch {
            expected: artifact.size,
            actual: have,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != artifact.sha256 {
        return refused(AgentError::DigestMismatch {
            expected: artifact.sha256.clone(),
            actual,
        });
    }
    file.sync_all()
        .await
        .map_err(|e| AgentError::io("syncing", staging, e))?;
    Ok(Attempt::Verified(have))
}

/// A file the server serves by digest: where, how long, and its SHA-256.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// The device API path.
    pub path: String,
    pub size: u64,
    pub sha256: &'a str,
}

impl<'a> Wanted<'a> {
    pub fn artifact(artifact: &'a proto::Artifact) -> Self {
        Wanted {
            path: proto::artifact_path(&artifact.sha256),
            size: artifact.size,
            sha256: &artifact.sha256,
        }
    }
}

/// Downloads `wanted` from the server into `part`, resuming what is there, never past its size;
/// returns (resumed from, received).
pub async fn from_server(
    client: &DeviceClient,
    part: &Path,
    wanted: &Wanted<'_>,
    progress: &Progress,
) -> Result<(u64, u64), AgentError> {
    let mut have = match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    if have > wanted.size {
        // Longer than the real thing: it cannot be a prefix of it.
        remove(part).await;
        have = 0;
    }
    let resumed_from = have;
    let mut received = 0u64;
    if have < wanted.size {
        let mut request = client.request(reqwest::Method::GET, &wanted.path);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| client.unreachable(&e))?;
        let response = check(response).await?;
        let mut file = if response.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            tokio::fs::OpenOptions::new().append(true).open(part).await
        } else {
            have = 0;
            tokio::fs::File::create(part).await
        }
        .map_err(|e| AgentError::io("opening", part, e))?;
        progress.start(wanted.size, have);
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
                        wanted.size
                    )));
                }
            };
            if have + chunk.len() as u64 > wanted.size {
                drop(file);
                remove(part).await;
                progress.finish();
                return Err(AgentError::SizeMismatch {
                    expected: wanted.size,
                    actual: have + chunk.len() as u64,
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| AgentError::io("writing", part, e))?;
            have += chunk.len() as u64;
            received += chunk.len() as u64;
            progress.set(have);
        }
        file.sync_all().await.map_err(|e| AgentError::io("syncing", part, e))?;
        progress.finish();
    }
    if have != wanted.size {
        // The connection ended early: keep what arrived so the next run resumes.
        return Err(AgentError::Download(format!(
            "the connection closed after {have} of {} bytes; run the update again to resume",
            wanted.size
        )));
    }
    let actual = sha256_file(part).await?;
    if actual != wanted.sha256 {
        remove(part).await;
        return Err(AgentError::DigestMismatch {
            expected: wanted.sha256.to_owned(),
            actual,
        });
    }
    Ok((resumed_from, received))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_follow_the_tuf_layout_and_skip_what_is_not_http() {
        let artifact = proto::Artifact {
            platform: "linux-x86_64".into(),
            filename: "demo-1.2.0.tar.gz".into(),
            sha256: "ab12".into(),
            size: 10,
            format: "tar.gz".into(),
            content_sha256: None,
            content_size: None,
        };
        let mirrors = [
            "https://cdn.example.com/upkeep/".to_owned(),
            "file:///srv/mirror".to_owned(),
            "not a url".to_owned(),
            "http://10.1.0.5".to_owned(),
        ];
        assert_eq!(
            mirror_urls(&mirrors, "default", "demo", "1.2.0", &artifact),
            [
                "https://cdn.example.com/upkeep/default/targets/ab12.demo_1.2.0_linux-x86_64.tar.gz",
                "http://10.1.0.5/default/targets/ab12.demo_1.2.0_linux-x86_64.tar.gz",
            ]
        );
    }
}
