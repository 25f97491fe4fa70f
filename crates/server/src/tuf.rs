//! Each organization's TUF image repository: root, targets, snapshot and timestamp with consistent
//! snapshots, flat target names (`<product>_<version>_<platform>.<ext>`), built with `upkeep-tuf`.
//!
//! Two modes. *Hosted*: the server holds all keys in `<data>/tuf-keys/<organization>/` and
//! [`publish`] re-signs targets from the approved releases whenever an approval changes.
//! *Offline*: `upkeep keys init` moved the root and targets keys to the administrator's machine; the
//! server keeps only the online keys (snapshot, timestamp, director), stores the targets metadata
//! the administrator uploads with each approval after checking its signatures ([`accept_targets`]),
//! and never writes targets itself. Either way the ticker re-signs snapshot and timestamp before
//! they expire. Role versions live in the database and only ever increase.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use upkeep_tuf::keyfile;
use upkeep_tuf::schema::{RoleType, Root, Signed, Targets};
use upkeep_tuf::{OnlineVersions, RootKeys, TargetEntry};

pub use upkeep_tuf::TufError;

/// How long each role's metadata is valid.
const ROOT_LIFETIME_H: i64 = 24 * 365;
const TARGETS_LIFETIME_H: i64 = 24 * 90;
const SNAPSHOT_LIFETIME_H: i64 = 24 * 7;

fn meta(e: impl std::fmt::Display) -> TufError {
    TufError::Metadata(e.to_string())
}

fn db_err(e: crate::db::DbError) -> TufError {
    TufError::Metadata(e.to_string())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> TufError {
    TufError::Key(format!("{what} {}: {e}", path.display()))
}

/// The keys the server holds for one organization; `root` and `targets` are `None` in offline mode.
pub struct ServerKeys {
    dir: PathBuf,
    pub root: Option<Vec<u8>>,
    pub targets: Option<Vec<u8>>,
    pub snapshot: Vec<u8>,
    pub timestamp: Vec<u8>,
    pub director: Vec<u8>,
}

const ROLES: [&str; 5] = ["root", "targets", "snapshot", "timestamp", "director"];

impl ServerKeys {
    /// Loads the organization's keys, creating all five on first use.
    pub fn load(dir: &Path) -> Result<Self, TufError> {
        let path = |role: &str| dir.join(format!("{role}.pk8"));
        let read = |role: &str| keyfile::read_key(&path(role));
        // The director key is written last: its presence means the set is complete.
        if path("director").exists() {
            let need = |role: &str| read(role)?.ok_or_else(|| TufError::Key(format!("the {role} key is missing")));
            return Ok(ServerKeys {
                dir: dir.to_owned(),
                root: read("root")?,
                targets: read("targets")?,
                snapshot: need("snapshot")?,
                timestamp: need("timestamp")?,
                director: need("director")?,
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut keys = Vec::new();
        for role in ROLES {
            let key = upkeep_tuf::generate_key()?;
            // A set cut short earlier is replaced whole.
            let _ = std::fs::remove_file(path(role));
            keyfile::write_key(&path(role), &key).map_err(|e| io("writing", &path(role), e))?;
            keys.push(key);
        }
        let [root, targets, snapshot, timestamp, director] =
            <[Vec<u8>; 5]>::try_from(keys).map_err(|_| TufError::Key("key set".into()))?;
        Ok(ServerKeys {
            dir: dir.to_owned(),
            root: Some(root),
            targets: Some(targets),
            snapshot,
            timestamp,
            director,
        })
    }

    fn public(pkcs8: &[u8]) -> Result<upkeep_tuf::schema::key::Key, TufError> {
        Ok(upkeep_tuf::public_key(pkcs8)?.1)
    }

    /// The public online keys, as an administrator's root must name them.
    pub fn online_public(&self) -> Result<[(RoleType, upkeep_tuf::schema::key::Key); 2], TufError> {
        Ok([
            (RoleType::Snapshot, Self::public(&self.snapshot)?),
            (RoleType::Timestamp, Self::public(&self.timestamp)?),
        ])
    }

    pub fn director_public(&self) -> Result<upkeep_tuf::schema::key::Key, TufError> {
        Self::public(&self.director)
    }

    /// Forgets a private key the current root no longer trusts the server with.
    fn retire(&mut self, role: &str) -> Result<(), TufError> {
        let path = self.dir.join(format!("{role}.pk8"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path, e)),
        }
        match role {
            "root" => self.root = None,
            "targets" => self.targets = None,
            _ => {}
        }
        Ok(())
    }
}

/// Each organization's director key, read from disk once: the check-in path signs with it
/// whenever it offers an update, and a director key never changes once written
/// ([`ServerKeys::load`] only creates a set that has none yet).
#[derive(Debug, Default)]
pub struct DirectorKeys(std::sync::Mutex<std::collections::HashMap<i64, std::sync::Arc<Vec<u8>>>>);

pub fn director_key(state: &crate::AppState, organization_id: i64) -> Result<std::sync::Arc<Vec<u8>>, TufError> {
    let cached = |map: &std::collections::HashMap<_, std::sync::Arc<Vec<u8>>>| map.get(&organization_id).cloned();
    let lock = || {
        state
            .director_keys
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(key) = cached(&lock()) {
        return Ok(key);
    }
    let key = std::sync::Arc::new(ServerKeys::load(&keys_dir(state, organization_id))?.director);
    Ok(lock().entry(organization_id).or_insert(key).clone())
}

pub fn keys_dir(state: &crate::AppState, organization_id: i64) -> PathBuf {
    state.settings.tuf_keys_dir.join(organization_id.to_string())
}

fn entry(a: &crate::db::ApprovedArtifact) -> TargetEntry {
    TargetEntry::of_artifact(&a.product, &a.version, &a.artifact)
}

fn timestamp_lifetime(state: &crate::AppState) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(state.settings.tuf_timestamp_lifetime)
        .unwrap_or(jiff::SignedDuration::from_hours(24))
}

fn hours_from_now(h: i64) -> jiff::Timestamp {
    upkeep_tuf::whole_seconds(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(h))
}

fn nonzero(v: i64) -> Result<NonZeroU64, TufError> {
    u64::try_from(v)
        .ok()
        .and_then(NonZeroU64::new)
        .ok_or_else(|| meta("role version out of range"))
}

fn as_i64(v: NonZeroU64) -> i64 {
    i64::try_from(v.get()).unwrap_or(i64::MAX)
}

type Versions = std::collections::BTreeMap<String, (i64, i64)>;

/// The organization's repository as stored now.
pub struct Current {
    pub versions: Versions,
    pub root_json: String,
    pub root: Root,
    /// `None` before the first publish of targets.
    pub targets_json: Option<String>,
}

impl Current {
    pub fn version(&self, role: &str) -> i64 {
        self.versions.get(role).map_or(0, |(v, _)| *v)
    }

    /// Whether the server may sign targets (hosted mode).
    pub fn hosted(&self, keys: &ServerKeys) -> bool {
        let listed = upkeep_tuf::role_key(&self.root, RoleType::Targets).ok();
        match (&keys.targets, listed) {
            (Some(own), Some((id, _))) => upkeep_tuf::public_key(own).is_ok_and(|(own_id, _)| own_id == id),
            _ => false,
        }
    }
}

/// Loads the current repository, creating root 1 (hosted mode) if the organization has none.
pub async fn current(state: &crate::AppState, organization_id: i64, keys: &ServerKeys) -> Result<Current, TufError> {
    loop {
        let versions = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
        if let Some((version, _)) = versions.get("root") {
            let file = |name: String| async move { state.db.tuf_file(organization_id, &name).await.map_err(db_err) };
            let root_json = file(format!("{version}.root.json"))
                .await?
                .ok_or_else(|| meta("the current root.json is missing"))?;
            let root = upkeep_tuf::parse::<Root>("root.json", &root_json)?.signed;
            let targets_json = match versions.get("targets") {
                Some((v, _)) => file(format!("{v}.targets.json")).await?,
                None => None,
            };
            return Ok(Current {
                versions,
                root_json,
                root,
                targets_json,
            });
        }
        let root_key = keys
            .root
            .as_deref()
            .ok_or_else(|| TufError::Key("no root yet and no root key to make one".into()))?;
        let all = RootKeys {
            root: ServerKeys::public(root_key)?,
            targets: ServerKeys::public(
                keys.targets
                    .as_deref()
                    .ok_or_else(|| TufError::Key("targets key".into()))?,
            )?,
            snapshot: ServerKeys::public(&keys.snapshot)?,
            timestamp: ServerKeys::public(&keys.timestamp)?,
            director: keys.director_public()?,
        };
        let expires = hours_from_now(ROOT_LIFETIME_H);
        let root = upkeep_tuf::root_metadata(&all, NonZeroU64::MIN, expires)?;
        let json = upkeep_tuf::to_json(&upkeep_tuf::sign(root.clone(), &root, &[root_key]).await?)?;
        let mut next = Versions::new();
        next.insert("root".into(), (1, expires.as_millisecond()));
        // Losing the race to another process is fine: loop and read its root.
        state
            .db
            .store_tuf(organization_id, &versions, &next, &[("1.root.json".into(), json)])
            .await
            .map_err(db_err)?;
    }
}

/// The organization's current root.json, publishing the repository first if it has none yet.
pub async fn current_root(state: &crate::AppState, organization_id: i64) -> Result<String, TufError> {
    let versions = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
    if !versions.contains_key("timestamp") {
        publish(state, organization_id, None).await?;
    }
    Ok(open(state, organization_id).await?.1.root_json)
}

/// The stored root whose fingerprint starts with `fingerprint` (roots are kept forever).
pub async fn root_by_fingerprint(
    state: &crate::AppState,
    organization_id: i64,
    fingerprint: &str,
) -> Result<Option<String>, TufError> {
    let versions = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
    let newest = versions.get("root").map_or(0, |(v, _)| *v);
    for version in (1..=newest).rev() {
        if let Some(json) = state
            .db
            .tuf_file(organization_id, &format!("{version}.root.json"))
            .await
            .map_err(db_err)?
            && upkeep_tuf::fingerprint(&json).starts_with(&fingerprint.to_ascii_lowercase())
        {
            return Ok(Some(json));
        }
    }
    Ok(None)
}

/// The organization's keys and its repository as stored now.
pub async fn open(state: &crate::AppState, organization_id: i64) -> Result<(ServerKeys, Current), TufError> {
    let keys = ServerKeys::load(&keys_dir(state, organization_id))?;
    let now = current(state, organization_id, &keys).await?;
    Ok((keys, now))
}

/// What `GET /api/v1/tuf` shows.
pub async fn status(
    state: &crate::AppState,
    organization_id: i64,
    organization: &str,
) -> Result<upkeep_protocol::TufStatus, TufError> {
    let (keys, now) = open(state, organization_id).await?;
    let mut online_keys = std::collections::BTreeMap::new();
    for (role, key) in keys.online_public()? {
        online_keys.insert(role.to_string(), serde_json::to_value(key).map_err(meta)?);
    }
    online_keys.insert(
        "director".into(),
        serde_json::to_value(keys.director_public()?).map_err(meta)?,
    );
    Ok(upkeep_protocol::TufStatus {
        organization: organization.to_owned(),
        mode: if now.hosted(&keys) { "hosted" } else { "offline" }.into(),
        root: now.root_json,
        targets: now.targets_json,
        online_keys,
    })
}

/// Re-signs the repository. In hosted mode the targets are rebuilt from the approved releases;
/// `uploaded` (offline mode, already checked by [`accept_targets`]) replaces them; otherwise the
/// stored targets stay and only snapshot and timestamp are renewed.
pub async fn publish(state: &crate::AppState, organization_id: i64, uploaded: Option<&str>) -> Result<(), TufError> {
    let keys = ServerKeys::load(&keys_dir(state, organization_id))?;
    // Two processes may publish at once: the loser starts again from the winner's versions.
    for _ in 0..5 {
        let now = current(state, organization_id, &keys).await?;
        let mut next = now.versions.clone();
        let mut files: Vec<(String, String)> = Vec::new();
        let bump = |role: &str| nonzero(now.version(role) + 1);
        let targets_json = match (uploaded, now.hosted(&keys), &keys.targets) {
            (Some(json), _, _) => {
                // Checked again here: another process may have published since it was accepted.
                let targets = upkeep_tuf::parse::<Targets>("targets.json", json)?;
                check_newer(&targets, &now)?;
                let version = targets.signed.version;
                next.insert(
                    "targets".into(),
                    (as_i64(version), targets.signed.expires.as_millisecond()),
                );
                files.push((format!("{version}.targets.json"), json.to_owned()));
                json.to_owned()
            }
            (None, true, Some(targets_key)) => {
                let entries: Vec<TargetEntry> = state
                    .db
                    .approved_artifacts(organization_id)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(entry)
                    .collect();
                let version = bump("targets")?;
                let expires = hours_from_now(TARGETS_LIFETIME_H);
                let targets = upkeep_tuf::targets_metadata(&entries, version, expires)?;
                let json = upkeep_tuf::to_json(&upkeep_tuf::sign(targets, &now.root, &[targets_key]).await?)?;
                next.insert("targets".into(), (as_i64(version), expires.as_millisecond()));
                files.push((format!("{version}.targets.json"), json.clone()));
                json
            }
            (None, _, _) => match &now.targets_json {
                Some(json) => json.clone(),
                // Offline with nothing signed yet: there is nothing to snapshot.
                None => return Ok(()),
            },
        };
        let online = OnlineVersions {
            snapshot: bump("snapshot")?,
            timestamp: bump("timestamp")?,
            snapshot_expires: hours_from_now(SNAPSHOT_LIFETIME_H),
            timestamp_expires: upkeep_tuf::whole_seconds(jiff::Timestamp::now() + timestamp_lifetime(state)),
        };
        let signed = upkeep_tuf::sign_online(&now.root, &targets_json, &keys.snapshot, &keys.timestamp, online).await?;
        files.extend(signed);
        next.insert(
            "snapshot".into(),
            (as_i64(online.snapshot), online.snapshot_expires.as_millisecond()),
        );
        next.insert(
            "timestamp".into(),
            (as_i64(online.timestamp), online.timestamp_expires.as_millisecond()),
        );
        if state
            .db
            .store_tuf(organization_id, &now.versions, &next, &files)
            .await
            .map_err(db_err)?
        {
            tracing::info!(
                organization_id,
                snapshot = online.snapshot.get(),
                "published TUF metadata"
            );
            return Ok(());
        }
        if uploaded.is_some() {
            // Another process published meanwhile; the upload's version may now be stale, so
            // let the administrator sign again rather than guess.
            return Err(TufError::Mismatch(
                "the repository changed while storing; fetch and sign again".into(),
            ));
        }
    }
    Err(TufError::Metadata(
        "could not publish: other server processes kept publishing first".into(),
    ))
}

/// Refuses targets whose version is not above the stored one (a stale or replayed upload).
fn check_newer(targets: &Signed<Targets>, now: &Current) -> Result<(), TufError> {
    if as_i64(targets.signed.version) <= now.version("targets") {
        return Err(TufError::Mismatch(format!(
            "targets version {} is not above the current {}; sign again from the current targets",
            targets.signed.version,
            now.version("targets")
        )));
    }
    Ok(())
}

/// Checks targets metadata an administrator signed offline against the repository `now`: signed
/// to threshold by the targets key its root names, a version above the stored one, and listing
/// exactly `expected`.
pub fn accept_targets(now: &Current, json: &str, expected: &[TargetEntry]) -> Result<(), TufError> {
    let targets = upkeep_tuf::parse::<Targets>("targets", json)?;
    upkeep_tuf::verify(&now.root, &targets)?;
    check_newer(&targets, now)?;
    let listed = upkeep_tuf::entries(&targets.signed);
    let (signed, want) = (upkeep_tuf::files(&listed), upkeep_tuf::files(expected));
    if signed != want {
        let missing: Vec<&str> = want.iter().filter(|w| !signed.contains(w)).map(|w| w.0).collect();
        let extra: Vec<&str> = signed.iter().filter(|s| !want.contains(s)).map(|s| s.0).collect();
        return Err(TufError::Mismatch(format!(
            "the signed targets differ from the approved releases (missing: {missing:?}, not approved: {extra:?})"
        )));
    }
    Ok(())
}

/// The target entries the organization's approvals call for, with `change` applied.
pub async fn expected_entries(
    state: &crate::AppState,
    organization_id: i64,
    release_id: i64,
    approve: bool,
) -> Result<Vec<TargetEntry>, TufError> {
    let mut all: Vec<TargetEntry> = state
        .db
        .approved_artifacts(organization_id)
        .await
        .map_err(db_err)?
        .iter()
        .filter(|a| a.release_id != release_id)
        .map(entry)
        .collect();
    if approve {
        all.extend(
            state
                .db
                .release_artifacts(release_id)
                .await
                .map_err(db_err)?
                .iter()
                .map(entry),
        );
    }
    Ok(all)
}

/// Replaces the root with `root_json` (the next version), uploaded by an administrator. In hosted
/// mode the server adds the old root key's signature itself; offline, the upload must carry it.
/// The new root must keep naming the server's online keys. If it names a targets key the server
/// does not hold, `targets_json` must re-sign the current targets under it. Keys the new root no
/// longer trusts the server with are deleted. Returns the new root version.
pub async fn replace_root(
    state: &crate::AppState,
    organization_id: i64,
    root_json: &str,
    targets_json: Option<&str>,
) -> Result<u64, TufError> {
    let mut keys = ServerKeys::load(&keys_dir(state, organization_id))?;
    let now = current(state, organization_id, &keys).await?;
    let mut next: Signed<Root> = upkeep_tuf::parse("root", root_json)?;
    if let Some(old_root_key) = &keys.root {
        // Co-sign as the current root (only if this key is what the current root names).
        let by_old = upkeep_tuf::sign(next.signed.clone(), &now.root, &[old_root_key]).await?;
        for signature in by_old.signatures {
            if !next.signatures.iter().any(|s| s.keyid == signature.keyid) {
                next.signatures.push(signature);
            }
        }
    }
    upkeep_tuf::verify_root_step(&now.root, &next)?;
    for (role, key) in keys.online_public()? {
        let (_, listed) = upkeep_tuf::role_key(&next.signed, role)?;
        if listed != key {
            return Err(TufError::Mismatch(format!(
                "the new root must name the server's online {role} key"
            )));
        }
    }
    if upkeep_tuf::director_key(&next.signed)? != keys.director_public()? {
        return Err(TufError::Mismatch(
            "the new root must name the server's director key".into(),
        ));
    }
    let holds = |own: &Option<Vec<u8>>, role: RoleType| -> Result<bool, TufError> {
        let (listed, _) = upkeep_tuf::role_key(&next.signed, role)?;
        Ok(match own {
            Some(k) => upkeep_tuf::public_key(k)?.0 == listed,
            None => false,
        })
    };
    let keeps_targets = holds(&keys.targets, RoleType::Targets)?;
    let keeps_root = holds(&keys.root, RoleType::Root)?;
    let targets_key_changed = upkeep_tuf::role_key(&next.signed, RoleType::Targets)?.0
        != upkeep_tuf::role_key(&now.root, RoleType::Targets)?.0;
    let version = next.signed.version;
    let mut versions = now.versions.clone();
    versions.insert("root".into(), (as_i64(version), next.signed.expires.as_millisecond()));
    let files = vec![(format!("{version}.root.json"), upkeep_tuf::to_json(&next)?)];
    let targets = match (targets_json, targets_key_changed) {
        (Some(json), _) => {
            let targets = upkeep_tuf::parse::<Targets>("targets", json)?;
            upkeep_tuf::verify(&next.signed, &targets)?;
            check_newer(&targets, &now)?;
            let expected = upkeep_tuf::entries(&targets_of(&now)?);
            let given = upkeep_tuf::entries(&targets.signed);
            if upkeep_tuf::files(&expected) != upkeep_tuf::files(&given) {
                return Err(TufError::Mismatch(
                    "the targets uploaded with a new root must re-sign the current targets".into(),
                ));
            }
            Some(json.to_owned())
        }
        (None, false) => None,
        (None, true) => {
            return Err(TufError::Mismatch(
                "the new root names a targets key the server does not hold: upload the current targets signed with it"
                    .into(),
            ));
        }
    };
    if !state
        .db
        .store_tuf(organization_id, &now.versions, &versions, &files)
        .await
        .map_err(db_err)?
    {
        return Err(TufError::Metadata(
            "another server process changed the repository meanwhile; try again".into(),
        ));
    }
    if !keeps_root {
        keys.retire("root")?;
    }
    if !keeps_targets {
        keys.retire("targets")?;
    }
    publish(state, organization_id, targets.as_deref()).await?;
    Ok(version.get())
}

fn targets_of(now: &Current) -> Result<Targets, TufError> {
    match &now.targets_json {
        Some(json) => Ok(upkeep_tuf::parse::<Targets>("targets.json", json)?.signed),
        None => upkeep_tuf::targets_metadata(&[], NonZeroU64::MIN, hours_from_now(1)),
    }
}

/// Rotates the organization's root key in hosted mode: root `N+1` lists a new root key and is
/// signed by both the old and the new one, so agents that trust root `N` follow it.
pub async fn rotate_root(state: &crate::AppState, organization_id: i64) -> Result<u64, TufError> {
    let dir = keys_dir(state, organization_id);
    let keys = ServerKeys::load(&dir)?;
    let now = current(state, organization_id, &keys).await?;
    if keys.root.is_none() {
        return Err(TufError::Key(
            "the root key is offline: rotate it with `upkeep keys rotate-root --keys DIR` where it is kept".into(),
        ));
    }
    let new_key = upkeep_tuf::generate_key()?;
    let next = rotated(&now.root, &new_key)?;
    let signed = upkeep_tuf::sign(next.clone(), &next, &[&new_key]).await?;
    // Keep the new key beside the old one until the new root is stored.
    let staged = dir.join("root.pk8.next");
    let _ = std::fs::remove_file(&staged);
    keyfile::write_key(&staged, &new_key).map_err(|e| io("writing", &staged, e))?;
    let version = replace_root(state, organization_id, &upkeep_tuf::to_json(&signed)?, None).await?;
    // `replace_root` retired the old key; the new one takes its place.
    let current_key = dir.join("root.pk8");
    std::fs::rename(&staged, &current_key).map_err(|e| io("installing", &current_key, e))?;
    Ok(version)
}

/// Root `N+1`: the same, with `new_root_key` in place of the root key and a fresh expiry.
pub fn rotated(current: &Root, new_root_key: &[u8]) -> Result<Root, TufError> {
    let (_, key) = upkeep_tuf::public_key(new_root_key)?;
    upkeep_tuf::successor(current, &[(RoleType::Root, key)], hours_from_now(ROOT_LIFETIME_H))
}

/// Re-signs repositories whose timestamp has less than half its lifetime left.
pub async fn refresh_expiring(state: &crate::AppState) -> Result<(), TufError> {
    let half = i64::try_from(state.settings.tuf_timestamp_lifetime.as_millis() / 2).unwrap_or(i64::MAX);
    let soon = crate::db::now_ms().saturating_add(half);
    for organization_id in state.db.organization_ids().await.map_err(db_err)? {
        let versions = state.db.tuf_versions(organization_id).await.map_err(db_err)?;
        if versions.get("timestamp").is_some_and(|(_, expires)| *expires < soon) {
            publish(state, organization_id, None).await?;
        }
    }
    Ok(())
}

pub(crate) fn routes(t: &mut crate::routes::Table) {
    use crate::routes::Access::Public;
    t.route(
        axum::http::Method::GET,
        "/{organization}/metadata/{file}",
        Public,
        metadata_file,
    )
    .route(
        axum::http::Method::GET,
        "/{organization}/targets/{file}",
        Public,
        target_file,
    );
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
        .find(|a| a.artifact.sha256 == sha256 && a.target_name() == name)
        .ok_or_else(|| not_found("target"))?;
    let read = state.blobs.read(&artifact.artifact.sha256, None).await?;
    let builder = axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, read.total);
    read.into_response(builder)
        .map_err(|e| crate::error::ApiError::Internal(format!("building response: {e}")))
}
