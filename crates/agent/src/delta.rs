//! Delta updates, agent side.
//!
//! After every install of a `tar.gz` artifact the agent keeps the verified uncompressed tar of
//! that version (`products/<p>/delta-base/<version>.tar`; the installed and the previous one).
//! When an offer lists a patch from the installed version for this platform, and that base still
//! hashes to the installed artifact's signed `content_sha256`, the agent downloads the patch
//! (resumable, never past its offered size), applies it with the output bounded by the new
//! `content_size`, and uses the result only if its SHA-256 is the new `content_sha256` — which the
//! signed manifest and the organization's signed TUF targets must both name. Any failure is
//! returned as a reason and the caller falls back to the full artifact.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use upkeep_protocol as proto;

use crate::client::DeviceClient;
use crate::download::{self, Wanted};
use crate::error::AgentError;
use crate::install;
use crate::progress::Progress;
use crate::state::{ProductDir, StateDir};

/// What a successful delta produced.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The verified uncompressed tar of the new version, in `downloads/`.
    pub tar: PathBuf,
    pub from_version: String,
    pub method: String,
    pub patch_size: u64,
    /// Patch bytes received in this run.
    pub received: u64,
}

/// Why an offered delta was not used, for the warning and the report (the caller then downloads
/// the full artifact, so the reason is all that is left of the failure).
pub type Reason = String;

/// Everything a delta needs, checked before anything is downloaded.
pub struct Plan<'a> {
    pub offer: &'a proto::DeltaOffer,
    pub base: PathBuf,
    pub content_sha256: String,
    pub content_size: u64,
}

/// The path of the kept base of `version`.
pub fn base_path(dir: &ProductDir, version: &str) -> PathBuf {
    dir.root.join("delta-base").join(format!("{version}.tar"))
}

/// Picks the offered patch from the installed version, if one fits. `Ok(None)`: none was offered
/// from `installed`; `Err`: one was, but it cannot be used here.
pub async fn choose<'a>(
    dir: &ProductDir,
    installed: Option<&str>,
    artifact: &proto::Artifact,
    signed_content: Option<(&str, u64)>,
    offers: &'a [proto::DeltaOffer],
) -> Result<Option<Plan<'a>>, Reason> {
    let Some(installed) = installed else {
        return Ok(None);
    };
    let Some(offer) = offers
        .iter()
        .find(|d| d.from_version == installed && d.platform == artifact.platform)
    else {
        return Ok(None);
    };
    let (Some(content_sha256), Some(content_size)) = (&artifact.content_sha256, artifact.content_size) else {
        return Err("the manifest names no content digest".into());
    };
    // The manifest is signed by the server's key; the targets by the organization's targets key
    // (offline in offline mode). Both must vouch for the same content.
    if signed_content != Some((content_sha256.as_str(), content_size)) {
        return Err("the signed TUF targets do not name the manifest's content digest".into());
    }
    if content_size > upkeep_delta::MAX_INPUT {
        return Err(format!(
            "the new content is {content_size} bytes, above the delta limit"
        ));
    }
    upkeep_delta::Method::parse(&offer.method).map_err(|e| e.to_string())?;
    let installed_content = dir
        .manifest(installed)
        .ok()
        .flatten()
        .and_then(|m| install::pick_artifact(&m, &artifact.platform).ok().cloned())
        .and_then(|a| a.content_sha256)
        .ok_or_else(|| format!("the installed {installed} has no recorded content digest"))?;
    let base = base_path(dir, installed);
    if !base.is_file() {
        return Err(format!("no kept base for {installed}"));
    }
    let actual = download::sha256_file(&base).await.map_err(|e| e.to_string())?;
    if actual != installed_content {
        let _ = fs::remove_file(&base);
        return Err(format!("the kept base of {installed} has changed (SHA-256 {actual})"));
    }
    Ok(Some(Plan {
        offer,
        base,
        content_sha256: content_sha256.clone(),
        content_size,
    }))
}

/// Downloads and applies the planned patch; returns the verified tar.
pub async fn rebuild(
    client: &DeviceClient,
    state: &StateDir,
    plan: &Plan<'_>,
    progress: &Progress,
) -> Result<Rebuilt, Reason> {
    let downloads = state.downloads();
    fs::create_dir_all(&downloads).map_err(|e| e.to_string())?;
    let tar = downloads.join(format!("{}.tar", plan.content_sha256));
    let done = |received| Rebuilt {
        tar: tar.clone(),
        from_version: plan.offer.from_version.clone(),
        method: plan.offer.method.clone(),
        patch_size: plan.offer.size,
        received,
    };
    // Rebuilt by an earlier run that then waited (a maintenance window): reuse it if it verifies.
    if tar.is_file() && download::sha256_file(&tar).await.ok().as_deref() == Some(plan.content_sha256.as_str()) {
        return Ok(done(0));
    }
    let patch = downloads.join(format!("{}.part", plan.offer.sha256));
    let wanted = Wanted {
        path: proto::delta_path(&plan.offer.sha256),
        size: plan.offer.size,
        sha256: &plan.offer.sha256,
    };
    progress.note(&format!(
        "downloading a {} byte patch from {}",
        plan.offer.size, plan.offer.from_version
    ));
    let (_, received) = download::from_server(client, &patch, &wanted, progress)
        .await
        .map_err(|e| match e {
            AgentError::DigestMismatch { expected, actual } => {
                format!("the patch's SHA-256 is {actual}, the offer says {expected}")
            }
            other => format!("downloading the patch: {other}"),
        })?;
    let (base, method, sha256, size, out) = (
        plan.base.clone(),
        plan.offer.method.clone(),
        plan.content_sha256.clone(),
        plan.content_size,
        tar.clone(),
    );
    let patch_file = patch.clone();
    let applied = tokio::task::spawn_blocking(move || apply(&base, &patch_file, &method, &out, &sha256, size))
        .await
        .map_err(|e| format!("patch task: {e}"))
        .and_then(|r| r);
    // A patch that did not rebuild the signed content is of no further use.
    let _ = fs::remove_file(&patch);
    applied?;
    Ok(done(received))
}

/// Applies `patch` to `base` into `out` (through a temporary file), bounded by `size`, and keeps
/// the result only if its SHA-256 is `sha256` and its length `size`.
fn apply(base: &Path, patch: &Path, method: &str, out: &Path, sha256: &str, size: u64) -> Result<(), Reason> {
    let method = upkeep_delta::Method::parse(method).map_err(|e| e.to_string())?;
    let old = fs::read(base).map_err(|e| format!("reading {}: {e}", base.display()))?;
    let patch_bytes = fs::read(patch).map_err(|e| format!("reading {}: {e}", patch.display()))?;
    let tmp = out.with_extension("tar.tmp");
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let mut writer = HashingWriter {
            inner: BufWriter::new(file),
            hasher: Sha256::new(),
        };
        let written = upkeep_delta::apply(method, &old, &patch_bytes, &mut writer, size).map_err(|e| e.to_string())?;
        let actual = hex::encode(writer.hasher.finalize());
        if written != size || actual != sha256 {
            return Err(format!(
                "the patched result ({written} bytes, SHA-256 {actual}) is not the signed content ({size} bytes, SHA-256 {sha256})"
            ));
        }
        let file = writer.inner.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        fs::rename(&tmp, out).map_err(|e| format!("moving into place {}: {e}", out.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// After an install: keeps the uncompressed tar of `version` as the base for its next delta
/// (moving `rebuilt` into place, or decompressing the installed `.tar.gz` and checking it against
/// the signed content digest), and removes bases other than `version` and `previous`.
pub fn keep_base(
    dir: &ProductDir,
    version: &str,
    previous: Option<&str>,
    artifact: &proto::Artifact,
    installed_from: &Path,
    rebuilt: bool,
) -> Result<(), AgentError> {
    let (Some(sha256), Some(size)) = (&artifact.content_sha256, artifact.content_size) else {
        return Ok(());
    };
    let target = base_path(dir, version);
    let folder = dir.root.join("delta-base");
    fs::create_dir_all(&folder).map_err(|e| AgentError::io("creating", &folder, e))?;
    if rebuilt {
        // Already verified against the signed content digest.
        fs::rename(installed_from, &target).map_err(|e| AgentError::io("keeping", &target, e))?;
    } else if artifact.format == "tar.gz" && size <= upkeep_delta::MAX_INPUT {
        let tmp = target.with_extension("tar.tmp");
        let kept = (|| {
            let file = File::create(&tmp).map_err(|e| AgentError::io("writing", &tmp, e))?;
            let mut writer = BufWriter::new(file);
            let content = upkeep_archive::decompress(installed_from, &mut writer, size)
                .map_err(|e| AgentError::Unpack(e.to_string()))?;
            if content.sha256 != *sha256 || content.size != size {
                return Err(AgentError::DigestMismatch {
                    expected: sha256.clone(),
                    actual: content.sha256,
                });
            }
            let file = writer
                .into_inner()
                .map_err(|e| AgentError::io("writing", &tmp, e.into_error()))?;
            file.sync_all().map_err(|e| AgentError::io("syncing", &tmp, e))?;
            fs::rename(&tmp, &target).map_err(|e| AgentError::io("renaming into place", &target, e))
        })();
        if kept.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        kept?;
    }
    prune_bases(dir, version, previous);
    Ok(())
}

/// Removes kept bases other than `version` and `previous`.
pub fn prune_bases(dir: &ProductDir, version: &str, previous: Option<&str>) {
    let Ok(entries) = fs::read_dir(dir.root.join("delta-base")) else {
        return;
    };
    let keep = [Some(version), previous];
    for entry in entries.flatten() {
        let name = entry.file_name();
        let kept = name
            .to_str()
            .and_then(|n| n.strip_suffix(".tar"))
            .is_some_and(|v| keep.contains(&Some(v)));
        if !kept {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_installed_and_previous_bases_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ProductDir {
            root: tmp.path().to_owned(),
        };
        let folder = tmp.path().join("delta-base");
        fs::create_dir_all(&folder).unwrap();
        for name in ["1.0.0.tar", "1.1.0.tar", "1.2.0.tar", "1.2.0.tar.tmp"] {
            fs::write(folder.join(name), b"x").unwrap();
        }
        prune_bases(&dir, "1.2.0", Some("1.1.0"));
        let mut left: Vec<String> = fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1.1.0.tar", "1.2.0.tar"]);
    }

    #[test]
    fn a_result_that_is_not_the_signed_content_is_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let old = vec![3u8; 100_000];
        let mut new = old.clone();
        new[50_000] = 9;
        let patch = upkeep_delta::build(upkeep_delta::Method::Zstd, &old, &new).unwrap();
        let (base, patch_path, out) = (
            tmp.path().join("base.tar"),
            tmp.path().join("p.part"),
            tmp.path().join("new.tar"),
        );
        fs::write(&base, &old).unwrap();
        fs::write(&patch_path, &patch).unwrap();
        let good = hex::encode(Sha256::digest(&new));
        let size = new.len() as u64;
        let wrong = "0".repeat(64);
        assert!(apply(&base, &patch_path, "zstd", &out, &wrong, size).is_err());
        assert!(!out.exists() && !out.with_extension("tar.tmp").exists());
        assert!(apply(&base, &patch_path, "zstd", &out, &good, size - 1).is_err());
        assert!(!out.exists());
        apply(&base, &patch_path, "zstd", &out, &good, size).unwrap();
        assert_eq!(fs::read(&out).unwrap(), new);
    }
}
