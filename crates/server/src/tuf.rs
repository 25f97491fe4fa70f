//! TUF image-repository metadata, built and signed with `tough`: root, targets, snapshot and
//! timestamp, consistent snapshots, Ed25519 keys, `expires` in whole seconds, sha256 only, flat
//! target names (`<product>_<version>_<platform>.<ext>`) so stock clients and tough agree on the
//! consistent-snapshot URLs.
//!
//! [`publish`] rebuilds an organization's repository from its approved releases (hosted mode: the
//! server holds the four keys in its data folder) whenever an approval changes, and the ticker
//! re-signs it before the timestamp expires. [`routes`] serves it at `/tuf/<organization>/metadata/…`
//! and `/tuf/<organization>/targets/<sha256>.<name>`. Role versions live in the database and only
//! ever increase: `tough` keeps none.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::sign::{Sign, parse_keypair};

#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error("TUF key: {0}")]
    Key(String),
    #[error("TUF metadata: {0}")]
    Metadata(String),
    #[error("TUF metadata files: {0}")]
    Io(#[from] std::io::Error),
}

fn meta(e: impl std::fmt::Display) -> TufError {
    TufError::Metadata(e.to_string())
}

/// The four top-level keys, as PKCS#8 documents (hosted mode keeps them in the data folder).
#[derive(Clone)]
pub struct RepoKeys {
    pub root: Vec<u8>,
    pub targets: Vec<u8>,
    pub snapshot: Vec<u8>,
    pub timestamp: Vec<u8>,
}

impl RepoKeys {
    pub fn generate() -> Result<Self, TufError> {
        let rng = SystemRandom::new();
        let one = || {
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map(|doc| doc.as_ref().to_vec())
                .map_err(|e| TufError::Key(e.to_string()))
        };
        Ok(RepoKeys {
            root: one()?,
            targets: one()?,
            snapshot: one()?,
            timestamp: one()?,
        })
    }
}

/// A key held in memory, for `tough`'s signing.
#[derive(Debug)]
struct MemoryKey(Vec<u8>);

#[tough::async_trait]
impl KeySource for MemoryKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(parse_keypair(&self.0)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("in-memory TUF keys are not written back".into())
    }
}

/// TUF wants whole seconds (python-tuf parses `expires` without fractions).
pub fn whole_seconds(at: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(at.as_second()).unwrap_or(at)
}

fn key_of(pkcs8: &[u8]) -> Result<(Decoded<Hex>, tough::schema::key::Key), TufError> {
    let key = parse_keypair(pkcs8)
        .map_err(|e| TufError::Key(e.to_string()))?
        .tuf_key();
    let id = key.key_id().map_err(|e| TufError::Key(e.to_string()))?;
    Ok((id, key))
}

/// A signed `root.json` listing one key per role, threshold 1.
pub async fn root(keys: &RepoKeys, version: NonZeroU64, expires: jiff::Timestamp) -> Result<Vec<u8>, TufError> {
    let mut all = HashMap::new();
    let mut roles = HashMap::new();
    for (role, pkcs8) in [
        (RoleType::Root, &keys.root),
        (RoleType::Targets, &keys.targets),
        (RoleType::Snapshot, &keys.snapshot),
        (RoleType::Timestamp, &keys.timestamp),
    ] {
        let (id, key) = key_of(pkcs8)?;
        all.insert(id.clone(), key);
        roles.insert(
            role,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
    }
    let root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version,
        expires: whole_seconds(expires),
        keys: all,
        roles,
        _extra: HashMap::new(),
    };
    let signer: Vec<Box<dyn KeySource>> = vec![Box::new(MemoryKey(keys.root.clone()))];
    let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &signer, &SystemRandom::new())
        .await
        .map_err(meta)?;
    Ok(signed.buffer().clone())
}

/// One approved artifact, by its flat target name.
#[derive(Debug, Clone)]
pub struct TargetEntry {
    pub name: String,
    pub sha256: String,
    pub length: u64,
    /// Shown to clients as `custom` (product, version, platform).
    pub custom: HashMap<String, serde_json::Value>,
}

/// Versions and expiry for targets, snapshot and timestamp.
#[derive(Debug, Clone, Copy)]
pub struct RoleVersions {
    pub targets: NonZeroU64,
    pub snapshot: NonZeroU64,
    pub timestamp: NonZeroU64,
    pub targets_expires: jiff::Timestamp,
    pub snapshot_expires: jiff::Timestamp,
    pub timestamp_expires: jiff::Timestamp,
}

/// The signed metadata files of a repository, by the file name clients fetch
/// (`N.root.json`, `V.targets.json`, `V.snapshot.json`, `timestamp.json`).
pub async fn sign_repository(
    root_json: &[u8],
    keys: &RepoKeys,
    targets: &[TargetEntry],
    versions: RoleVersions,
) -> Result<Vec<(String, Vec<u8>)>, TufError> {
    // tough's editor starts from a root file.
    let work = tempfile::tempdir()?;
    let root_path = work.path().join("root.json");
    std::fs::write(&root_path, root_json)?;
    let mut editor = RepositoryEditor::new(&root_path).await.map_err(meta)?;
    for entry in targets {
        let sha = hex::decode(&entry.sha256).map_err(meta)?;
        let target = Target {
            length: entry.length,
            hashes: Hashes {
                sha256: Decoded::from(sha),
                _extra: HashMap::new(),
            },
            custom: entry.custom.clone(),
            _extra: HashMap::new(),
        };
        editor.add_target(entry.name.clone(), target).map_err(meta)?;
    }
    editor
        .targets_version(versions.targets)
        .map_err(meta)?
        .targets_expires(whole_seconds(versions.targets_expires))
        .map_err(meta)?
        .snapshot_version(versions.snapshot)
        .snapshot_expires(whole_seconds(versions.snapshot_expires))
        .timestamp_version(versions.timestamp)
        .timestamp_expires(whole_seconds(versions.timestamp_expires));
    let signers: Vec<Box<dyn KeySource>> = vec![
        Box::new(MemoryKey(keys.targets.clone())),
        Box::new(MemoryKey(keys.snapshot.clone())),
        Box::new(MemoryKey(keys.timestamp.clone())),
    ];
    let signed = editor.sign(&signers).await.map_err(meta)?;
    let out = work.path().join("metadata");
    signed.write(&out).await.map_err(meta)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&out)? {
        let entry = entry?;
        files.push((
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path())?,
        ));
    }
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// Publishing and serving
// ---------------------------------------------------------------------------------------------

/// How long each role's metadata is valid.
const ROOT_LIFETIME_H: i64 = 24 * 365;
const TARGETS_LIFETIME_H: i64 = 24 * 90;
const SNAPSHOT_LIFETIME_H: i64 = 24 * 7;

/// The flat target name of an artifact: `<product>_<version>_<platform>.<ext>`.
pub fn target_name(a: &crate::db::ApprovedArtifact) -> String {
    upkeep_protocol::tuf_target_name(&a.product, &a.version, &a.platform, &a.format, &a.filename)
}

/// Loads the organization's hosted keys, creating them on first use.
pub fn hosted_keys(dir: &std::path::Path) -> Result<RepoKeys, TufError> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let path = |role: &str| dir.join(format!("{role}.pk8"));
    if path("root").exists() {
        let read = |role: &str| -> Result<Vec<u8>, TufError> {
            let text = std::fs::read_to_string(path(role))?;
            STANDARD
                .decode(text.trim())
                .map_err(|e| TufError::Key(format!("{role} key: {e}")))
        };
        return Ok(RepoKeys {
            root: read("root")?,
            targets: read("targets")?,
            snapshot: read("snapshot")?,
            timestamp: read("timestamp")?,
        });
    }
    let keys = RepoKeys::generate()?;
    std::fs::create_dir_all(dir)?;
    for (role, key) in [
        ("targets", &keys.targets),
        ("snapshot", &keys.snapshot),
        ("timestamp", &keys.timestamp),
        ("root", &keys.root),
    ] {
        // Root last: its presence means the set is complete.
        crate::signing::write_private(&path(role), STANDARD.encode(key).as_bytes())?;
    }
    Ok(keys)
}

fn timestamp_lifetime(state: &crate::AppState) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(state.settings.tuf_timestamp_lifetime)
        .unwrap_or(jiff::SignedDuration::from_hours(24))
}

/// Rebuilds and re-signs the organization's repository from its approved releases.
pub async fn publish(state: &crate::AppState, organization_id: i64) -> Result<(), TufError> {
    let db_err = |e: crate::db::DbError| TufError::Metadata(e.to_string());
    let keys = hosted_keys(&state.settings.tuf_keys_dir.join(organization_id.to_string()))?;
    // Two processes may publish at once: the loser starts again from the winner's versions.
    for _ in 0..5 {
        let current = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
        let now = jiff::Timestamp::now();
        let hours = |h: i64| whole_seconds(now + jiff::SignedDuration::from_hours(h));
        let mut files: Vec<(String, String)> = Vec::new();
        let mut next = current.clone();
        let root_json = match current.get("root") {
            Some((version, _)) => state
                .db
                .tuf_file(organization_id, &format!("{version}.root.json"))
                .await
                .map_err(db_err)?
                .ok_or_else(|| TufError::Metadata("the current root.json is missing".into()))?
                .into_bytes(),
            None => {
                let expires = hours(ROOT_LIFETIME_H);
                let json = root(&keys, NonZeroU64::MIN, expires).await?;
                files.push(("1.root.json".into(), String::from_utf8_lossy(&json).into_owned()));
                next.insert("root".into(), (1, expires.as_millisecond()));
                json
            }
        };
        let bump = |role: &str| -> Result<NonZeroU64, TufError> {
            let v = current.get(role).map_or(0, |(v, _)| *v) + 1;
            NonZeroU64::new(u64::try_from(v).unwrap_or(1)).ok_or_else(|| TufError::Metadata("version overflow".into()))
        };
        let versions = RoleVersions {
            targets: bump("targets")?,
            snapshot: bump("snapshot")?,
            timestamp: bump("timestamp")?,
            targets_expires: hours(TARGETS_LIFETIME_H),
            snapshot_expires: hours(SNAPSHOT_LIFETIME_H),
            timestamp_expires: whole_seconds(now + timestamp_lifetime(state)),
        };
        let entries: Vec<TargetEntry> = state
            .db
            .approved_artifacts(organization_id)
            .await
            .map_err(db_err)?
            .iter()
            .map(|a| TargetEntry {
                name: target_name(a),
                sha256: a.sha256.clone(),
                length: a.size,
                custom: [
                    ("product".to_owned(), serde_json::json!(a.product)),
                    ("version".to_owned(), serde_json::json!(a.version)),
                    ("platform".to_owned(), serde_json::json!(a.platform)),
                ]
                .into_iter()
                .collect(),
            })
            .collect();
        for (name, bytes) in sign_repository(&root_json, &keys, &entries, versions).await? {
            // The root is already stored under its version.
            if !name.ends_with(".root.json") {
                files.push((name, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        let as_i64 = |v: NonZeroU64| i64::try_from(v.get()).unwrap_or(i64::MAX);
        next.insert(
            "targets".into(),
            (as_i64(versions.targets), versions.targets_expires.as_millisecond()),
        );
        next.insert(
            "snapshot".into(),
            (as_i64(versions.snapshot), versions.snapshot_expires.as_millisecond()),
        );
        next.insert(
            "timestamp".into(),
            (as_i64(versions.timestamp), versions.timestamp_expires.as_millisecond()),
        );
        if state
            .db
            .store_tuf(organization_id, &current, &next, &files)
            .await
            .map_err(db_err)?
        {
            tracing::info!(
                organization_id,
                targets = entries.len(),
                version = versions.targets.get(),
                "published TUF metadata"
            );
            return Ok(());
        }
    }
    Err(TufError::Metadata(
        "could not publish: other server processes kept publishing first".into(),
    ))
}

/// Rotates the organization's root key (hosted mode): root `N+1` lists a new root key and is
/// signed by both the old and the new one, so agents that trust root `N` follow it; then the rest
/// of the repository is re-signed under it. Returns the new root version.
pub async fn rotate_root(state: &crate::AppState, organization_id: i64) -> Result<u64, TufError> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let db_err = |e: crate::db::DbError| TufError::Metadata(e.to_string());
    let dir = state.settings.tuf_keys_dir.join(organization_id.to_string());
    // Make sure a repository (and its root 1) exists first.
    if !state
        .db
        .tuf_versions(organization_id)
        .await
        .map_err(db_err)?
        .contains_key("root")
    {
        publish(state, organization_id).await?;
    }
    let keys = hosted_keys(&dir)?;
    let versions = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
    let (version, _) = *versions
        .get("root")
        .ok_or_else(|| TufError::Metadata("no root yet".into()))?;
    let old_json = state
        .db
        .tuf_file(organization_id, &format!("{version}.root.json"))
        .await
        .map_err(db_err)?
        .ok_or_else(|| TufError::Metadata("the current root.json is missing".into()))?;
    let old: tough::schema::Signed<Root> = serde_json::from_str(&old_json).map_err(meta)?;
    let new_key = RepoKeys::generate()?.root;
    let (old_id, _) = key_of(&keys.root)?;
    let (new_id, new_public) = key_of(&new_key)?;
    let mut root = old.signed.clone();
    let next = u64::try_from(version)
        .ok()
        .and_then(|v| NonZeroU64::new(v + 1))
        .ok_or_else(|| meta("root version"))?;
    root.version = next;
    root.expires = whole_seconds(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(ROOT_LIFETIME_H));
    root.keys.remove(&old_id);
    root.keys.insert(new_id.clone(), new_public);
    root.roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids: vec![new_id],
            threshold: NonZeroU64::MIN,
            _extra: HashMap::new(),
        },
    );
    let rng = SystemRandom::new();
    let by_new: Vec<Box<dyn KeySource>> = vec![Box::new(MemoryKey(new_key.clone()))];
    let by_old: Vec<Box<dyn KeySource>> = vec![Box::new(MemoryKey(keys.root.clone()))];
    let signed_new = SignedRole::new(root.clone(), &KeyHolder::Root(root.clone()), &by_new, &rng)
        .await
        .map_err(meta)?;
    let signed_old = SignedRole::new(root.clone(), &KeyHolder::Root(old.signed.clone()), &by_old, &rng)
        .await
        .map_err(meta)?;
    let mut both = signed_new.signed().clone();
    both.signatures.extend(signed_old.signed().signatures.iter().cloned());
    let json = serde_json::to_string_pretty(&both).map_err(meta)?;
    // Keep the old key beside the new one until the new root is stored.
    std::fs::rename(dir.join("root.pk8"), dir.join(format!("root-{version}.pk8.retired")))?;
    crate::signing::write_private(&dir.join("root.pk8"), STANDARD.encode(&new_key).as_bytes())?;
    let mut updated = versions.clone();
    updated.insert("root".into(), (version + 1, root.expires.as_millisecond()));
    let stored = state
        .db
        .store_tuf(
            organization_id,
            &versions,
            &updated,
            &[(format!("{}.root.json", version + 1), json)],
        )
        .await
        .map_err(db_err)?;
    if !stored {
        return Err(TufError::Metadata(
            "another server process changed the repository meanwhile; try again".into(),
        ));
    }
    publish(state, organization_id).await?;
    Ok(next.get())
}

/// Re-signs repositories whose timestamp has less than half its lifetime left.
pub async fn refresh_expiring(state: &crate::AppState) -> Result<(), TufError> {
    let db_err = |e: crate::db::DbError| TufError::Metadata(e.to_string());
    let half = i64::try_from(state.settings.tuf_timestamp_lifetime.as_millis() / 2).unwrap_or(i64::MAX);
    let soon = crate::db::now_ms().saturating_add(half);
    for organization_id in state.db.organization_ids().await.map_err(db_err)? {
        let versions = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
        if versions.get("timestamp").is_some_and(|(_, expires)| *expires < soon) {
            publish(state, organization_id).await?;
        }
    }
    Ok(())
}

pub fn routes() -> axum::Router<crate::AppState> {
    axum::Router::new()
        .route("/{organization}/metadata/{file}", axum::routing::get(metadata_file))
        .route("/{organization}/targets/{file}", axum::routing::get(target_file))
}

fn not_found(what: &str) -> crate::error::ApiError {
    crate::error::ApiError::not_found(upkeep_protocol::codes::NOT_FOUND, None, format!("no such TUF {what}"))
}

async fn organization(state: &crate::AppState, name: &str) -> Result<i64, crate::error::ApiError> {
    state
        .db
        .organization_id(name)
        .await?
        .ok_or_else(|| not_found("repository"))
}

async fn metadata_file(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    axum::extract::Path((org, file)): axum::extract::Path<(String, String)>,
) -> Result<axum::response::Response, crate::error::ApiError> {
    use axum::response::IntoResponse;
    let organization_id = organization(&state, &org).await?;
    let body = state
        .db
        .tuf_file(organization_id, &file)
        .await?
        .ok_or_else(|| not_found("metadata file"))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `<sha256>.<target name>`: served only when that name is an approved artifact with that digest.
async fn target_file(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    axum::extract::Path((org, file)): axum::extract::Path<(String, String)>,
) -> Result<axum::response::Response, crate::error::ApiError> {
    let organization_id = organization(&state, &org).await?;
    let (sha256, name) = file.split_once('.').ok_or_else(|| not_found("target"))?;
    let artifact = state
        .db
        .approved_artifacts(organization_id)
        .await?
        .into_iter()
        .find(|a| a.sha256 == sha256 && target_name(a) == name)
        .ok_or_else(|| not_found("target"))?;
    let read = state.blobs.read(&artifact.sha256, None).await?;
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, read.total)
        .body(axum::body::Body::from_stream(read.stream))
        .map_err(|e| crate::error::ApiError::Internal(format!("building response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    async fn collect<S, E>(stream: S) -> Result<Vec<u8>, E>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>>,
    {
        futures::TryStreamExt::try_fold(stream, Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
    }

    #[tokio::test]
    async fn a_stock_client_verifies_what_we_sign() {
        let keys = RepoKeys::generate().unwrap();
        let in_a_year = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365);
        let root_json = root(&keys, NonZeroU64::MIN, in_a_year).await.unwrap();
        let payload = b"demo 1.0.0 installer bytes".to_vec();
        let sha = hex::encode(Sha256::digest(&payload));
        let name = "demo_1.0.0_linux-x86_64.tar.gz";
        let entry = TargetEntry {
            name: name.into(),
            sha256: sha.clone(),
            length: payload.len() as u64,
            custom: HashMap::new(),
        };
        let v = NonZeroU64::MIN;
        let versions = RoleVersions {
            targets: v,
            snapshot: v,
            timestamp: v,
            targets_expires: in_a_year,
            snapshot_expires: in_a_year,
            timestamp_expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
        };
        let files = sign_repository(&root_json, &keys, &[entry], versions).await.unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
        );
        let timestamp = String::from_utf8(files[3].1.clone()).unwrap();
        assert!(
            !timestamp.contains(".000"),
            "expires must be whole seconds: {timestamp}"
        );

        // Serve it as files and load it with tough's own client, from the root alone.
        let dir = tempfile::tempdir().unwrap();
        let (metadata, targets) = (dir.path().join("metadata"), dir.path().join("targets"));
        std::fs::create_dir_all(&metadata).unwrap();
        std::fs::create_dir_all(&targets).unwrap();
        for (file, bytes) in &files {
            std::fs::write(metadata.join(file), bytes).unwrap();
        }
        std::fs::write(targets.join(format!("{sha}.{name}")), &payload).unwrap();
        let url = |p: &std::path::Path| url::Url::from_directory_path(p).unwrap();
        let repo = tough::RepositoryLoader::new(&root_json, url(&metadata), url(&targets))
            .load()
            .await
            .unwrap();
        let target = tough::TargetName::new(name).unwrap();
        let stream = repo.read_target(&target).await.unwrap().expect("listed");
        assert_eq!(collect(stream).await.unwrap(), payload);

        // Bytes that differ from what targets.json lists are refused.
        std::fs::write(targets.join(format!("{sha}.{name}")), b"demo 1.0.0 installer BYTES").unwrap();
        let stream = repo.read_target(&target).await.unwrap().expect("listed");
        assert!(collect(stream).await.is_err());

        // Metadata signed by a key the root does not list is refused.
        let stranger = RepoKeys::generate().unwrap();
        let forged = sign_repository(
            &root_json,
            &RepoKeys {
                root: keys.root.clone(),
                ..stranger
            },
            &[],
            versions,
        )
        .await;
        assert!(
            forged.is_err(),
            "tough refuses to sign roles with keys the root does not list"
        );
    }
}
