//! The `archive` install recipe: verify the signed manifest, unpack into
//! `versions/<version>/` (via a staging folder), then switch `current` atomically.
//!
//! Crash safety: unpacking happens beside the live version and is renamed into place only when
//! complete; the switch itself is one `rename` of a symbolic link; `journal.json` records the
//! previous version while the switch is in flight so [`recover`] can finish or undo it.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use upkeep_protocol as proto;

use crate::error::AgentError;
use crate::state::{ProductDir, write_json};

/// Versions kept on disk per product, the current one included; older ones are pruned.
pub const KEEP_VERSIONS: usize = 3;

/// Checks `signed` against the pinned key and returns the manifest it vouches for.
pub fn verify_manifest(
    signed: &proto::SignedManifest,
    public_key_b64: &str,
    product: &str,
    offered: &str,
) -> Result<proto::ReleaseManifest, AgentError> {
    let invalid = || AgentError::SignatureInvalid {
        product: product.to_owned(),
        version: offered.to_owned(),
    };
    let key_bytes: [u8; 32] = STANDARD
        .decode(public_key_b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(invalid)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| invalid())?;
    let signature_bytes: [u8; 64] = STANDARD
        .decode(&signed.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(invalid)?;
    key.verify_strict(signed.payload.as_bytes(), &Signature::from_bytes(&signature_bytes))
        .map_err(|_| invalid())?;
    let manifest: proto::ReleaseManifest = serde_json::from_str(&signed.payload).map_err(|_| invalid())?;
    if manifest.product != product || manifest.version != offered {
        return Err(AgentError::ManifestMismatch {
            product: product.to_owned(),
            offered: offered.to_owned(),
            signed: format!("{} {}", manifest.product, manifest.version),
        });
    }
    if manifest.recipe != "archive" && !(manifest.recipe == "command" && manifest.installer.is_some()) {
        return Err(AgentError::Invalid(format!(
            "install recipe `{}` is not supported by this agent",
            manifest.recipe
        )));
    }
    upkeep_domain::parse_version(&manifest.version).map_err(|e| AgentError::Invalid(e.to_string()))?;
    if let Some(launch) = &manifest.launch {
        upkeep_domain::validate_relative_path(launch).map_err(|e| AgentError::Invalid(e.to_string()))?;
    }
    Ok(manifest)
}

/// This machine's platform name, e.g. `linux-x86_64`; `UPKEEP_AGENT_PLATFORM` overrides it.
pub fn platform() -> String {
    std::env::var("UPKEEP_AGENT_PLATFORM")
        .unwrap_or_else(|_| format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH))
}

pub fn pick_artifact<'a>(
    manifest: &'a proto::ReleaseManifest,
    platform: &str,
) -> Result<&'a proto::Artifact, AgentError> {
    manifest
        .artifacts
        .iter()
        .find(|a| a.platform == platform)
        .or_else(|| manifest.artifacts.iter().find(|a| a.platform == "any"))
        .ok_or_else(|| AgentError::NoArtifact {
            product: manifest.product.clone(),
            version: manifest.version.clone(),
            platform: platform.to_owned(),
        })
}

/// Unpacks `archive` into `versions/<version>/` (through a staging folder, so the version folder
/// is complete or absent) and writes its manifest beside it. `current` does not move.
pub fn unpack_version(
    dir: &ProductDir,
    manifest: &proto::ReleaseManifest,
    archive: &Path,
    format: upkeep_archive::Format,
) -> Result<(), AgentError> {
    let versions = dir.versions();
    fs::create_dir_all(&versions).map_err(|e| AgentError::io("creating", &versions, e))?;
    let staging = versions.join(format!(".staging-{}", manifest.version));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| AgentError::io("clearing", &staging, e))?;
    }
    fs::create_dir_all(&staging).map_err(|e| AgentError::io("creating", &staging, e))?;
    let unpacked = upkeep_archive::unpack(archive, format, &staging)
        .map_err(|e| match e {
            upkeep_archive::ArchiveError::Unsafe { entry, reason } => AgentError::UnsafeArchive { entry, reason },
            other => AgentError::Unpack(other.to_string()),
        })
        .and_then(|()| match &manifest.launch {
            Some(launch) if !staging.join(launch).is_file() => Err(AgentError::LaunchMissing(launch.clone())),
            _ => Ok(()),
        });
    if let Err(e) = unpacked {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let target = dir.version_dir(&manifest.version);
    if target.exists() && dir.current_version()?.as_deref() != Some(manifest.version.as_str()) {
        fs::remove_dir_all(&target).map_err(|e| AgentError::io("replacing", &target, e))?;
    }
    if target.exists() {
        // Reinstalling the running version: keep the folder in use.
        let _ = fs::remove_dir_all(&staging);
    } else {
        fs::rename(&staging, &target).map_err(|e| AgentError::io("moving into place", &target, e))?;
    }
    write_json(&dir.meta_path(&manifest.version), manifest, false)
}

/// Removes `current` (the product had no earlier version to go back to).
pub fn remove_current(dir: &ProductDir) -> Result<(), AgentError> {
    match fs::remove_file(dir.current_link()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io("removing", &dir.current_link(), e)),
    }
}

/// Points `current` at `versions/<version>` with one atomic rename.
pub fn switch_current(dir: &ProductDir, version: &str) -> Result<(), AgentError> {
    let link = dir.current_link();
    let tmp = dir.root.join("current.new");
    let _ = fs::remove_file(&tmp);
    let target = PathBuf::from("versions").join(version);
    make_link(&target, &tmp).map_err(|e| AgentError::io("linking", &tmp, e))?;
    fs::rename(&tmp, &link).map_err(|e| AgentError::io("switching", &link, e))?;
    if let Ok(d) = fs::File::open(&dir.root) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn make_link(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

/// Removes versions beyond the newest [`KEEP_VERSIONS`], never the current or previous one.
pub fn prune(dir: &ProductDir, current: &str, previous: Option<&str>) {
    let Ok(entries) = fs::read_dir(dir.versions()) else {
        return;
    };
    let mut versions: Vec<semver::Version> = entries
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()
                .and_then(|n| semver::Version::parse(n).ok())
        })
        .collect();
    versions.sort();
    let excess = versions.len().saturating_sub(KEEP_VERSIONS);
    for version in versions.into_iter().take(excess) {
        let name = version.to_string();
        if name == current || Some(name.as_str()) == previous {
            continue;
        }
        let _ = fs::remove_dir_all(dir.version_dir(&name));
        let _ = fs::remove_file(dir.meta_path(&name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Regular);
            // Write the raw name so hostile names reach the archive unchanged.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn manifest(version: &str, launch: Option<&str>) -> proto::ReleaseManifest {
        proto::ReleaseManifest {
            product: "demo".into(),
            version: version.into(),
            recipe: "archive".into(),
            launch: launch.map(Into::into),
            ..proto::ReleaseManifest::default()
        }
    }

    fn install(dir: &ProductDir, manifest: &proto::ReleaseManifest, archive: &Path) -> Result<(), AgentError> {
        unpack_version(dir, manifest, archive, upkeep_archive::Format::TarGz)?;
        switch_current(dir, &manifest.version)
    }

    #[test]
    fn unpacks_switches_and_refuses_traversal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ProductDir {
            root: tmp.path().join("products/demo"),
        };
        let good = tmp.path().join("good.tar.gz");
        fs::write(&good, tar_gz(&[("./bin/demo", b"#!/bin/sh\necho hi\n")])).unwrap();
        install(&dir, &manifest("1.0.0", Some("bin/demo")), &good).unwrap();
        assert_eq!(dir.current_version().unwrap().as_deref(), Some("1.0.0"));
        assert!(dir.current_link().join("bin/demo").is_file());

        let evil = tmp.path().join("evil.tar.gz");
        fs::write(&evil, tar_gz(&[("../../escaped", b"x")])).unwrap();
        let err = install(&dir, &manifest("1.0.1", None), &evil).unwrap_err();
        assert!(matches!(err, AgentError::UnsafeArchive { .. }), "{err}");
        assert!(!tmp.path().join("escaped").exists());
        assert!(!tmp.path().join("products/escaped").exists());
        assert_eq!(dir.current_version().unwrap().as_deref(), Some("1.0.0"));
        assert!(!dir.version_dir("1.0.1").exists());
        assert!(!dir.versions().join(".staging-1.0.1").exists());
    }

    #[test]
    fn missing_launch_path_unpacks_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ProductDir {
            root: tmp.path().join("p"),
        };
        let archive = tmp.path().join("a.tar.gz");
        fs::write(&archive, tar_gz(&[("other", b"x")])).unwrap();
        let err = install(&dir, &manifest("1.0.0", Some("bin/demo")), &archive).unwrap_err();
        assert!(matches!(err, AgentError::LaunchMissing(_)));
        assert_eq!(dir.current_version().unwrap(), None);
        assert!(!dir.version_dir("1.0.0").exists());
    }

    #[test]
    fn signature_is_checked() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = STANDARD.encode(key.verifying_key().to_bytes());
        let payload = serde_json::to_string(&manifest("1.0.0", None)).unwrap();
        let signed = proto::SignedManifest {
            signature: STANDARD.encode(key.sign(payload.as_bytes()).to_bytes()),
            payload: payload.clone(),
        };
        assert!(verify_manifest(&signed, &public, "demo", "1.0.0").is_ok());
        assert!(matches!(
            verify_manifest(&signed, &public, "demo", "2.0.0"),
            Err(AgentError::ManifestMismatch { .. })
        ));
        let tampered = proto::SignedManifest {
            payload: payload.replace("1.0.0", "9.0.0"),
            ..signed.clone()
        };
        assert!(matches!(
            verify_manifest(&tampered, &public, "demo", "9.0.0"),
            Err(AgentError::SignatureInvalid { .. })
        ));
        let other = STANDARD.encode(SigningKey::from_bytes(&[8u8; 32]).verifying_key().to_bytes());
        assert!(matches!(
            verify_manifest(&signed, &other, "demo", "1.0.0"),
            Err(AgentError::SignatureInvalid { .. })
        ));
    }
}
