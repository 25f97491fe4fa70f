//! Offline signing: the organization's root and targets keys live in a folder on the
//! administrator's machine (`upkeep keys init`), never on the server. Approving or disapproving a
//! release signs the new targets metadata here, starting from the targets the server holds only
//! after checking them against the root kept beside the keys, so a compromised server cannot slip
//! a target into what the administrator signs.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use upkeep_protocol as proto;
use upkeep_tuf::TargetEntry;
use upkeep_tuf::schema::{RoleType, Root, Signed, Targets};

use crate::client::Client;

/// How long offline-signed metadata stays valid: renewing it needs the administrator, so long.
const ROOT_LIFETIME_H: i64 = 24 * 365;
const TARGETS_LIFETIME_H: i64 = 24 * 365;

const ROOT_JSON: &str = "root.json";

/// `--keys DIR`, else `<config>/keys/<organization>`.
pub fn keys_dir(given: Option<PathBuf>, organization: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir),
        None => Ok(crate::config::config_dir()?.join("keys").join(organization)),
    }
}

fn in_hours(h: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(h)
}

fn key_path(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}.pk8"))
}

fn write_key(path: &Path, pkcs8: &[u8]) -> anyhow::Result<()> {
    upkeep_tuf::keyfile::write_key(path, pkcs8).with_context(|| format!("creating {}", path.display()))
}

fn read_key(dir: &Path, role: &str) -> anyhow::Result<Vec<u8>> {
    let path = key_path(dir, role);
    upkeep_tuf::keyfile::read_key(&path)?.ok_or_else(|| {
        anyhow!(
            "there is no {role} key at {}; pass --keys DIR where `upkeep keys init` put the keys",
            path.display()
        )
    })
}

/// Writes `text` to `path` through a temporary file, so a crash leaves the old or the new one.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The root kept beside the keys: what this machine trusts.
fn trusted_root(dir: &Path) -> anyhow::Result<Root> {
    let path = dir.join(ROOT_JSON);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(upkeep_tuf::parse::<Root>("root.json", &text)?.signed)
}

pub async fn status(client: &Client) -> anyhow::Result<proto::TufStatus> {
    client.get(&["tuf"], &[]).await
}

/// `upkeep keys init`: moves the organization's root and targets keys to `dir`. Returns the new
/// root version.
pub async fn init(client: &Client, dir: &Path) -> anyhow::Result<u64> {
    let status = status(client).await?;
    if status.mode == "offline" {
        bail!(
            "{} already signs offline; its keys are wherever `upkeep keys init` was run",
            status.organization
        );
    }
    if key_path(dir, "root").exists() || key_path(dir, "targets").exists() {
        bail!(
            "{} already holds keys; pick an empty folder with --keys DIR",
            dir.display()
        );
    }
    let current: Signed<Root> = upkeep_tuf::parse("the server's root.json", &status.root)?;
    // The server's current targets must verify under its current root before they are re-signed.
    let targets = match &status.targets {
        Some(json) => {
            let targets: Signed<Targets> = upkeep_tuf::parse("the server's targets.json", json)?;
            upkeep_tuf::verify(&current.signed, &targets)?;
            targets.signed
        }
        None => upkeep_tuf::targets_metadata(&[], std::num::NonZeroU64::MIN, in_hours(1))?,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Keys are on disk before anything is sent: a failed upload loses nothing.
    let root_key = upkeep_tuf::generate_key()?;
    let targets_key = upkeep_tuf::generate_key()?;
    write_key(&key_path(dir, "root"), &root_key)?;
    write_key(&key_path(dir, "targets"), &targets_key)?;
    let next = upkeep_tuf::successor(
        &current.signed,
        &[
            (RoleType::Root, upkeep_tuf::public_key(&root_key)?.1),
            (RoleType::Targets, upkeep_tuf::public_key(&targets_key)?.1),
        ],
        in_hours(ROOT_LIFETIME_H),
    )?;
    // The server adds the old (hosted) root key's signature; this one is the new key's.
    let signed_root = upkeep_tuf::sign(next.clone(), &next, &[&root_key]).await?;
    let resigned = upkeep_tuf::targets_metadata(
        &upkeep_tuf::entries(&targets),
        targets
            .version
            .checked_add(1)
            .ok_or_else(|| anyhow!("targets version overflow"))?,
        in_hours(TARGETS_LIFETIME_H),
    )?;
    let signed_targets = upkeep_tuf::sign(resigned, &next, &[&targets_key]).await?;
    let answer: serde_json::Value = client
        .post(
            &["tuf", "root"],
            &proto::TufRootUpload {
                root: upkeep_tuf::to_json(&signed_root)?,
                targets: Some(upkeep_tuf::to_json(&signed_targets)?),
            },
        )
        .await?;
    // What this machine trusts from now on: the root as the server stored it (with both signatures).
    let stored = self::status(client).await?.root;
    write_atomic(&dir.join(ROOT_JSON), &stored)?;
    answer["root_version"]
        .as_u64()
        .ok_or_else(|| anyhow!("the server did not say which root version it stored"))
}

/// Checks that the server's root is the one kept in `dir` (offline, only this machine can change it).
fn check_same_root(dir: &Path, status: &proto::TufStatus) -> anyhow::Result<Root> {
    if !dir.join(ROOT_JSON).is_file() {
        bail!(
            "{} signs offline and {} holds no keys from `upkeep keys init`; pass --keys DIR where they are kept",
            status.organization,
            dir.display()
        );
    }
    let trusted = trusted_root(dir)?;
    let theirs = upkeep_tuf::parse::<Root>("the server's root.json", &status.root)?.signed;
    if theirs != trusted {
        bail!(
            "the server's root (version {}) is not the one kept in {} (version {}); refusing to sign",
            theirs.version,
            dir.display(),
            trusted.version
        );
    }
    Ok(trusted)
}

/// Signs the targets that follow approving (`approve`) or disapproving one release.
pub async fn sign_decision(
    client: &Client,
    dir: &Path,
    status: &proto::TufStatus,
    product: &str,
    version: &str,
    approve: bool,
) -> anyhow::Result<String> {
    let root = check_same_root(dir, status)?;
    let targets_key = read_key(dir, "targets")?;
    let current = match &status.targets {
        Some(json) => {
            let targets: Signed<Targets> = upkeep_tuf::parse("the server's targets.json", json)?;
            upkeep_tuf::verify(&root, &targets)
                .context("the server's targets are not signed with this organization's targets key")?;
            targets.signed
        }
        None => bail!("the server holds no signed targets yet; run `upkeep keys init` again"),
    };
    let releases: Vec<proto::Release> = client.get(&["products", product, "releases"], &[]).await?;
    let release = releases
        .iter()
        .find(|r| r.version == version)
        .ok_or_else(|| anyhow!("{product} has no version {version}"))?;
    let mine: Vec<TargetEntry> = release
        .artifacts
        .iter()
        .map(|a| TargetEntry::of_artifact(product, version, a))
        .collect();
    let mut entries: Vec<TargetEntry> = upkeep_tuf::entries(&current)
        .into_iter()
        .filter(|e| !mine.iter().any(|m| m.name == e.name))
        .collect();
    if approve {
        for entry in &mine {
            eprintln!(
                "signing {} ({} bytes, sha256 {})",
                entry.name, entry.length, entry.sha256
            );
        }
        entries.extend(mine);
    }
    let next = upkeep_tuf::targets_metadata(
        &entries,
        current
            .version
            .checked_add(1)
            .ok_or_else(|| anyhow!("targets version overflow"))?,
        in_hours(TARGETS_LIFETIME_H),
    )?;
    Ok(upkeep_tuf::to_json(
        &upkeep_tuf::sign(next, &root, &[&targets_key]).await?,
    )?)
}

/// `upkeep keys rotate-root` in offline mode: a new root key, the next root signed by the old and
/// the new one. Returns the new root version.
pub async fn rotate_root(client: &Client, dir: &Path, status: &proto::TufStatus) -> anyhow::Result<u64> {
    let current = check_same_root(dir, status)?;
    let old_key = read_key(dir, "root")?;
    let new_key = upkeep_tuf::generate_key()?;
    let staged = dir.join("root.pk8.next");
    let _ = std::fs::remove_file(&staged);
    write_key(&staged, &new_key)?;
    let next = upkeep_tuf::successor(
        &current,
        &[(RoleType::Root, upkeep_tuf::public_key(&new_key)?.1)],
        in_hours(ROOT_LIFETIME_H),
    )?;
    let mut signed = upkeep_tuf::sign(next.clone(), &next, &[&new_key]).await?;
    signed
        .signatures
        .extend(upkeep_tuf::sign(next.clone(), &current, &[&old_key]).await?.signatures);
    let json = upkeep_tuf::to_json(&signed)?;
    let answer: serde_json::Value = client
        .post(
            &["tuf", "root"],
            &proto::TufRootUpload {
                root: json.clone(),
                targets: None,
            },
        )
        .await?;
    let version = current.version.get();
    std::fs::rename(key_path(dir, "root"), dir.join(format!("root-{version}.pk8.retired")))
        .context("retiring the old root key")?;
    std::fs::rename(&staged, key_path(dir, "root")).context("installing the new root key")?;
    write_atomic(&dir.join(ROOT_JSON), &json)?;
    answer["root_version"]
        .as_u64()
        .ok_or_else(|| anyhow!("the server did not say which root version it stored"))
}
