//! TUF metadata for upkeep, built, signed and checked with `tough`: Ed25519 keys as PKCS#8
//! documents, `root.json` (which also names the online director key), `targets.json`, and the
//! `snapshot.json`/`timestamp.json` pair over a given targets file.
//!
//! The server uses it to publish each organization's image repository; the administrator's CLI
//! uses the same functions to sign roots and targets offline, so both sides produce byte-for-byte
//! the same kind of metadata. Expiry is in whole seconds (python-tuf parses `expires` without
//! fractions) and sha256 is the only hash.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets, Timestamp,
};
use tough::sign::{Sign, parse_keypair};

pub use tough::schema;

mod director;
pub mod keyfile;
pub use director::{
    DIRECTOR_TYPE, DirectorTarget, DirectorTargets, MAX_DIRECTOR_BYTES, SignedDirector, sign_director, verify_director,
};

/// The root field that carries the director's public key (an extension TUF clients keep as an
/// unrecognized field, covered by the root signature).
pub const DIRECTOR_KEY_FIELD: &str = "x-upkeep-director-key";

pub const SPEC_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error("TUF key: {0}")]
    Key(String),
    #[error("TUF metadata: {0}")]
    Metadata(String),
    #[error("TUF signature check: {0}")]
    Verify(String),
    /// Well signed, but not what may be stored (a version that does not increase, other targets).
    #[error("TUF metadata refused: {0}")]
    Mismatch(String),
}

fn meta(e: impl std::fmt::Display) -> TufError {
    TufError::Metadata(e.to_string())
}

/// A new Ed25519 key as a PKCS#8 document.
pub fn generate_key() -> Result<Vec<u8>, TufError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| TufError::Key(e.to_string()))
}

/// The TUF public key of a PKCS#8 private key, and its key id.
pub fn public_key(pkcs8: &[u8]) -> Result<(Decoded<Hex>, Key), TufError> {
    let key = parse_keypair(pkcs8)
        .map_err(|e| TufError::Key(e.to_string()))?
        .tuf_key();
    let id = key_id(&key)?;
    Ok((id, key))
}

pub fn key_id(key: &Key) -> Result<Decoded<Hex>, TufError> {
    key.key_id().map_err(|e| TufError::Key(e.to_string()))
}

/// TUF wants whole seconds.
pub fn whole_seconds(at: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(at.as_second()).unwrap_or(at)
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

/// Signs `role` with each of `keys` that `holder` lists for that role.
pub async fn sign<T: Role + Serialize + Clone>(role: T, holder: &Root, keys: &[&[u8]]) -> Result<Signed<T>, TufError> {
    let sources: Vec<Box<dyn KeySource>> = keys
        .iter()
        .map(|k| Box::new(MemoryKey(k.to_vec())) as Box<dyn KeySource>)
        .collect();
    let signed = SignedRole::new(role, &KeyHolder::Root(holder.clone()), &sources, &SystemRandom::new())
        .await
        .map_err(meta)?;
    Ok(signed.signed().clone())
}

/// The JSON a client fetches.
pub fn to_json<T: Serialize>(signed: &Signed<T>) -> Result<String, TufError> {
    serde_json::to_string_pretty(signed).map_err(meta)
}

pub fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<Signed<T>, TufError> {
    serde_json::from_str(json).map_err(|e| TufError::Metadata(format!("{what} is not valid TUF metadata: {e}")))
}

/// The public keys a root names, one per role (threshold 1 each).
#[derive(Debug, Clone)]
pub struct RootKeys {
    pub root: Key,
    pub targets: Key,
    pub snapshot: Key,
    pub timestamp: Key,
    pub director: Key,
}

/// An unsigned root listing `keys`.
pub fn root_metadata(keys: &RootKeys, version: NonZeroU64, expires: jiff::Timestamp) -> Result<Root, TufError> {
    let mut all = HashMap::new();
    let mut roles = HashMap::new();
    for (role, key) in [
        (RoleType::Root, &keys.root),
        (RoleType::Targets, &keys.targets),
        (RoleType::Snapshot, &keys.snapshot),
        (RoleType::Timestamp, &keys.timestamp),
    ] {
        let id = key_id(key)?;
        all.insert(id.clone(), key.clone());
        roles.insert(
            role,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
    }
    let mut extra = HashMap::new();
    extra.insert(
        DIRECTOR_KEY_FIELD.to_owned(),
        serde_json::to_value(&keys.director).map_err(meta)?,
    );
    Ok(Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version,
        expires: whole_seconds(expires),
        keys: all,
        roles,
        _extra: extra,
    })
}

/// Root `N+1`: `current` with the keys of some roles replaced and a new expiry.
pub fn successor(current: &Root, replace: &[(RoleType, Key)], expires: jiff::Timestamp) -> Result<Root, TufError> {
    let mut next = current.clone();
    next.version = current
        .version
        .checked_add(1)
        .ok_or_else(|| meta("root version overflow"))?;
    next.expires = whole_seconds(expires);
    for (role, key) in replace {
        let new_id = key_id(key)?;
        next.keys.insert(new_id.clone(), key.clone());
        let keys = next
            .roles
            .get_mut(role)
            .ok_or_else(|| TufError::Metadata(format!("the root names no {role} role")))?;
        keys.keyids = vec![new_id];
    }
    // Drop keys no role names any more.
    let used: std::collections::HashSet<Decoded<Hex>> =
        next.roles.values().flat_map(|r| r.keyids.iter().cloned()).collect();
    next.keys.retain(|id, _| used.contains(id));
    Ok(next)
}

/// The key a root names for `role` (the first, as upkeep uses one key per role).
pub fn role_key(root: &Root, role: RoleType) -> Result<(Decoded<Hex>, Key), TufError> {
    let id = root
        .roles
        .get(&role)
        .and_then(|r| r.keyids.first())
        .ok_or_else(|| TufError::Metadata(format!("the root names no {role} key")))?;
    let key = root
        .keys
        .get(id)
        .ok_or_else(|| TufError::Metadata(format!("the root lists a {role} key id without its key")))?;
    Ok((id.clone(), key.clone()))
}

/// The director's public key named by a root.
pub fn director_key(root: &Root) -> Result<Key, TufError> {
    let value = root
        ._extra
        .get(DIRECTOR_KEY_FIELD)
        .ok_or_else(|| TufError::Metadata("the root names no director key".into()))?;
    serde_json::from_value(value.clone()).map_err(meta)
}

/// Whether `role` carries signatures from `holder`'s keys for it, to its threshold.
pub fn verify<T: Role + Serialize>(holder: &Root, role: &Signed<T>) -> Result<(), TufError> {
    holder
        .verify_role(role)
        .map_err(|e| TufError::Verify(format!("{} metadata: {e}", T::TYPE)))
}

/// Checks that `next` may follow `current` as the trusted root: the very next version, signed to
/// threshold by the old root's keys and by its own.
pub fn verify_root_step(current: &Root, next: &Signed<Root>) -> Result<(), TufError> {
    if next.signed.version.get() != current.version.get() + 1 {
        return Err(TufError::Mismatch(format!(
            "root version {} cannot follow version {}",
            next.signed.version, current.version
        )));
    }
    verify(current, next).map_err(|e| TufError::Verify(format!("not signed by the current root's keys: {e}")))?;
    verify(&next.signed, next).map_err(|e| TufError::Verify(format!("not signed by its own root keys: {e}")))
}

/// One target file by its flat name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    pub name: String,
    pub sha256: String,
    pub length: u64,
    /// Shown to clients as `custom` (product, version, platform; for a `tar.gz` also
    /// [`CONTENT_SHA256`] and [`CONTENT_SIZE`]).
    pub custom: HashMap<String, serde_json::Value>,
}

/// The `custom` key of a `tar.gz` entry naming the SHA-256 of its uncompressed tar stream: signed
/// with the targets, so a delta's result is checked against what the targets key vouched for.
pub const CONTENT_SHA256: &str = "content_sha256";
/// The `custom` key with the length of that stream.
pub const CONTENT_SIZE: &str = "content_size";

impl TargetEntry {
    /// The entry of a release's artifact, with `custom` naming product, version and platform,
    /// and the content digest when the artifact has one.
    pub fn of_artifact(product: &str, version: &str, artifact: &upkeep_protocol::Artifact) -> Self {
        let mut custom: HashMap<String, serde_json::Value> = [
            ("product".to_owned(), serde_json::json!(product)),
            ("version".to_owned(), serde_json::json!(version)),
            ("platform".to_owned(), serde_json::json!(artifact.platform)),
        ]
        .into_iter()
        .collect();
        if let (Some(sha256), Some(size)) = (&artifact.content_sha256, artifact.content_size) {
            custom.insert(CONTENT_SHA256.to_owned(), serde_json::json!(sha256));
            custom.insert(CONTENT_SIZE.to_owned(), serde_json::json!(size));
        }
        TargetEntry {
            name: artifact.target_name(product, version),
            sha256: artifact.sha256.clone(),
            length: artifact.size,
            custom,
        }
    }

    /// The content digest and length `custom` names, when it names both.
    pub fn content(&self) -> Option<(&str, u64)> {
        content_of(&self.custom)
    }

    fn to_target(&self) -> Result<Target, TufError> {
        let sha = hex::decode(&self.sha256).map_err(meta)?;
        Ok(Target {
            length: self.length,
            hashes: Hashes {
                sha256: Decoded::from(sha),
                _extra: HashMap::new(),
            },
            custom: self.custom.clone(),
            _extra: HashMap::new(),
        })
    }
}

/// The content digest and length in a target's `custom` metadata, when it names both.
pub fn content_of(custom: &HashMap<String, serde_json::Value>) -> Option<(&str, u64)> {
    Some((
        custom.get(CONTENT_SHA256)?.as_str()?,
        custom.get(CONTENT_SIZE)?.as_u64()?,
    ))
}

/// The entries a targets file lists, sorted by name.
pub fn entries(targets: &Targets) -> Vec<TargetEntry> {
    let mut all: Vec<TargetEntry> = targets
        .targets
        .iter()
        .map(|(name, t)| TargetEntry {
            name: name.raw().to_owned(),
            sha256: hex::encode(&*t.hashes.sha256),
            length: t.length,
            custom: t.custom.clone(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// What `entries` name — each file's name, SHA-256 and length, sorted — leaving `custom` aside:
/// two lists with the same files admit the same bytes.
pub fn files(entries: &[TargetEntry]) -> Vec<(&str, &str, u64)> {
    let mut all: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.sha256.as_str(), e.length))
        .collect();
    all.sort_unstable();
    all
}

/// An unsigned targets role listing `entries`.
pub fn targets_metadata(
    entries: &[TargetEntry],
    version: NonZeroU64,
    expires: jiff::Timestamp,
) -> Result<Targets, TufError> {
    let mut targets = Targets::new(SPEC_VERSION.into(), version, whole_seconds(expires));
    // No delegations: an empty object would only add a field stock clients must parse.
    targets.delegations = None;
    for entry in entries {
        let name = tough::TargetName::new(entry.name.clone()).map_err(meta)?;
        targets.targets.insert(name, entry.to_target()?);
    }
    Ok(targets)
}

/// Versions and expiry of snapshot and timestamp.
#[derive(Debug, Clone, Copy)]
pub struct OnlineVersions {
    pub snapshot: NonZeroU64,
    pub timestamp: NonZeroU64,
    pub snapshot_expires: jiff::Timestamp,
    pub timestamp_expires: jiff::Timestamp,
}

/// Signs snapshot (naming `targets_json`'s version) and timestamp (naming the snapshot's version,
/// length and hash) with the online keys. Returns `(V.snapshot.json, body)` and
/// `(timestamp.json, body)`.
pub async fn sign_online(
    root: &Root,
    targets_json: &str,
    snapshot_key: &[u8],
    timestamp_key: &[u8],
    versions: OnlineVersions,
) -> Result<[(String, String); 2], TufError> {
    let targets: Signed<Targets> = parse("targets.json", targets_json)?;
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.into(),
        versions.snapshot,
        whole_seconds(versions.snapshot_expires),
    );
    snapshot.meta.insert(
        "targets.json".into(),
        Metafile {
            length: None,
            hashes: None,
            version: targets.signed.version,
            _extra: HashMap::new(),
        },
    );
    let snapshot_json = to_json(&sign(snapshot, root, &[snapshot_key]).await?)?;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.into(),
        versions.timestamp,
        whole_seconds(versions.timestamp_expires),
    );
    timestamp.meta.insert(
        "snapshot.json".into(),
        Metafile {
            length: Some(snapshot_json.len() as u64),
            hashes: Some(Hashes {
                sha256: Decoded::from(Sha256::digest(snapshot_json.as_bytes()).to_vec()),
                _extra: HashMap::new(),
            }),
            version: versions.snapshot,
            _extra: HashMap::new(),
        },
    );
    let timestamp_json = to_json(&sign(timestamp, root, &[timestamp_key]).await?)?;
    Ok([
        (format!("{}.snapshot.json", versions.snapshot), snapshot_json),
        ("timestamp.json".into(), timestamp_json),
    ])
}

/// The canonical-JSON bytes a signature covers (for the director's own metadata).
pub fn canonical<T: Serialize>(value: &T) -> Result<Vec<u8>, TufError> {
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(meta)?;
    Ok(data)
}

/// The SHA-256 fingerprint of a root file, as carried in enrollment tokens.
pub fn fingerprint(root_json: &str) -> String {
    hex::encode(Sha256::digest(root_json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_hours(h: i64) -> jiff::Timestamp {
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(h)
    }

    #[test]
    fn a_tar_gz_entry_carries_its_content_digest_through_signed_targets() {
        let mut artifact = upkeep_protocol::Artifact {
            platform: "linux-x86_64".into(),
            filename: "demo.tar.gz".into(),
            sha256: "ab".repeat(32),
            size: 10,
            format: "tar.gz".into(),
            content_sha256: Some("cd".repeat(32)),
            content_size: Some(20),
        };
        let entry = TargetEntry::of_artifact("demo", "1.0.0", &artifact);
        assert_eq!(entry.content(), Some(("cd".repeat(32).as_str(), 20)));
        let targets = targets_metadata(std::slice::from_ref(&entry), NonZeroU64::MIN, in_hours(1)).unwrap();
        assert_eq!(entries(&targets), [entry]);

        artifact.content_sha256 = None;
        let without = TargetEntry::of_artifact("demo", "1.0.0", &artifact);
        assert_eq!(without.content(), None);
        assert!(!without.custom.contains_key(CONTENT_SHA256) && !without.custom.contains_key(CONTENT_SIZE));
    }

    #[tokio::test]
    async fn roots_targets_and_online_roles_verify() {
        let [root_k, targets_k, snap_k, time_k, dir_k] = std::array::from_fn(|_| generate_key().unwrap());
        let keys = RootKeys {
            root: public_key(&root_k).unwrap().1,
            targets: public_key(&targets_k).unwrap().1,
            snapshot: public_key(&snap_k).unwrap().1,
            timestamp: public_key(&time_k).unwrap().1,
            director: public_key(&dir_k).unwrap().1,
        };
        let root = root_metadata(&keys, NonZeroU64::MIN, in_hours(24)).unwrap();
        let signed_root = sign(root.clone(), &root, &[&root_k]).await.unwrap();
        verify(&root, &signed_root).unwrap();
        assert_eq!(director_key(&root).unwrap(), keys.director);

        let entry = TargetEntry {
            name: "demo_1.0.0_linux-x86_64.tar.gz".into(),
            sha256: "ab".repeat(32),
            length: 42,
            custom: HashMap::new(),
        };
        let targets = targets_metadata(std::slice::from_ref(&entry), NonZeroU64::MIN, in_hours(24)).unwrap();
        let signed = sign(targets.clone(), &root, &[&targets_k]).await.unwrap();
        verify(&root, &signed).unwrap();
        assert_eq!(entries(&signed.signed), [entry]);
        // Signed by another key: tough refuses to sign, and a signature from a stranger fails.
        assert!(sign(targets.clone(), &root, &[&snap_k]).await.is_err());
        let mut forged = signed.clone();
        forged.signed.version = NonZeroU64::new(2).unwrap();
        assert!(verify(&root, &forged).is_err(), "a changed body no longer verifies");

        let one = NonZeroU64::MIN;
        let [snapshot, timestamp] = sign_online(
            &root,
            &to_json(&signed).unwrap(),
            &snap_k,
            &time_k,
            OnlineVersions {
                snapshot: one,
                timestamp: one,
                snapshot_expires: in_hours(1),
                timestamp_expires: in_hours(1),
            },
        )
        .await
        .unwrap();
        assert_eq!(snapshot.0, "1.snapshot.json");
        assert_eq!(timestamp.0, "timestamp.json");
        assert!(!timestamp.1.contains(".000"), "whole seconds");

        // A rotation is accepted only when signed by both the old and the new root keys.
        let new_root_k = generate_key().unwrap();
        let mut next = root.clone();
        next.version = NonZeroU64::new(2).unwrap();
        next.keys.remove(&key_id(&keys.root).unwrap());
        let (new_id, new_key) = public_key(&new_root_k).unwrap();
        next.keys.insert(new_id.clone(), new_key);
        next.roles.get_mut(&RoleType::Root).unwrap().keyids = vec![new_id];
        let by_new = sign(next.clone(), &next, &[&new_root_k]).await.unwrap();
        assert!(verify_root_step(&root, &by_new).is_err(), "new key alone");
        let by_old = sign(next.clone(), &root, &[&root_k]).await.unwrap();
        let mut both = by_new.clone();
        both.signatures.extend(by_old.signatures);
        verify_root_step(&root, &both).unwrap();
    }
}
