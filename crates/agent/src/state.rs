//! The agent's state folder and what it keeps there.
//!
//! ```text
//! STATE/agent.json                 enrollment: server, workstation id, device token, pinned key
//! STATE/last-checkin.json          the last instructions, so `launch` can enforce them offline
//! STATE/outbox.jsonl               reports not yet delivered
//! STATE/agent.lock                 one agent at a time changes products
//! STATE/downloads/<sha256>.part    a download in progress (resumed with HTTP Range)
//! STATE/downloads/<sha256>.mirror  a download from a mirror, moved to `.part` once verified
//! STATE/products/<p>/versions/<v>/ an unpacked version
//! STATE/products/<p>/meta/<v>.json the verified manifest of that version
//! STATE/products/<p>/current       symbolic link to versions/<v>, switched atomically
//! STATE/products/<p>/journal.json  present only while an update is under way (see `pipeline`)
//! STATE/products/<p>/installed.json the version a `command` recipe installed
//! STATE/products/<p>/snapshot/     the install folder as it was before a `command` install
//! STATE/products/<p>/reminder.json the backup to mention at the next launch
//! STATE/products/<p>/delta-base/<v>.tar the verified uncompressed tar of an installed version,
//!                                  the base of the next delta (see `delta`)
//! STATE/downloads/<content>.tar    a version rebuilt from a delta, until it is installed
//! STATE/backups/<p>/               default backup folder (`UPKEEP_BACKUP_DIR` overrides the base)
//! ```
//!
//! Invariant: every file here is written to a temporary name and renamed into place, so a crash
//! leaves either the old or the new content, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use upkeep_protocol as proto;

use crate::error::AgentError;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Enrollment {
    pub server: String,
    pub workstation_id: String,
    pub device_token: String,
    /// Base64 Ed25519 key pinned at enrollment; manifests must verify against it.
    pub signing_public_key: String,
    pub organization: String,
    pub enrolled_at: String,
    /// The organization's TUF root, trusted from enrollment on (rotations it signs are followed).
    #[serde(default)]
    pub tuf_root: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CachedCheckin {
    /// When the agent received it (RFC 3339).
    pub received_at: String,
    pub response: proto::CheckinResponse,
}

/// The version a `command` recipe installed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstalledRecord {
    pub version: String,
    /// The version before it, for `rollback`.
    #[serde(default)]
    pub previous: Option<String>,
}

/// The backup taken before the last update, for the reminder at the next launch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub taken_at: String,
}

/// Left by an update for the next launch: the backup it took, if any.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LaunchReminder {
    pub version: String,
    pub backup: Option<BackupRecord>,
    /// Whether the release declares a backup hook at all.
    pub backup_expected: bool,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        StateDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn enrollment_path(&self) -> PathBuf {
        self.root.join("agent.json")
    }

    pub fn checkin_path(&self) -> PathBuf {
        self.root.join("last-checkin.json")
    }

    pub fn outbox_path(&self) -> PathBuf {
        self.root.join("outbox.jsonl")
    }

    /// Where a product's backups go: `UPKEEP_BACKUP_DIR/<product>`, else `STATE/backups/<product>`.
    pub fn backup_dir(&self, product: &str) -> PathBuf {
        std::env::var_os("UPKEEP_BACKUP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("backups"))
            .join(product)
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    pub fn product(&self, product: &str) -> ProductDir {
        ProductDir {
            root: self.root.join("products").join(product),
        }
    }

    pub fn ensure(&self) -> Result<(), AgentError> {
        fs::create_dir_all(&self.root).map_err(|e| AgentError::io("creating the state folder", &self.root, e))
    }

    pub fn enrollment(&self) -> Result<Enrollment, AgentError> {
        match read_json::<Enrollment>(&self.enrollment_path())? {
            Some(e) => Ok(e),
            None => Err(AgentError::NotEnrolled {
                state: self.root.clone(),
            }),
        }
    }

    pub fn cached_checkin(&self) -> Result<Option<CachedCheckin>, AgentError> {
        read_json(&self.checkin_path())
    }

    /// Products with a `current` link, and the version it points at.
    pub fn installed(&self) -> Result<Vec<proto::InstalledProduct>, AgentError> {
        let products = self.root.join("products");
        let mut out = Vec::new();
        let entries = match fs::read_dir(&products) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(AgentError::io("reading installed products", &products, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| AgentError::io("reading installed products", &products, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if upkeep_domain::validate_name(&name).is_err() {
                continue;
            }
            if let Some(version) = self.product(&name).current_version()? {
                out.push(proto::InstalledProduct { product: name, version });
            }
        }
        out.sort_by(|a, b| a.product.cmp(&b.product));
        Ok(out)
    }

    /// Takes the agent lock, so that two agents never change products at the same time.
    pub fn lock(&self) -> Result<File, AgentError> {
        self.ensure()?;
        let path = self.root.join("agent.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| AgentError::io("opening the lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(AgentError::Busy { lock: path }),
            Err(fs::TryLockError::Error(e)) => Err(AgentError::io("locking", &path, e)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProductDir {
    pub root: PathBuf,
}

impl ProductDir {
    pub fn versions(&self) -> PathBuf {
        self.root.join("versions")
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.versions().join(version)
    }

    pub fn meta_path(&self, version: &str) -> PathBuf {
        self.root.join("meta").join(format!("{version}.json"))
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal.json")
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("snapshot")
    }

    pub fn reminder_path(&self) -> PathBuf {
        self.root.join("reminder.json")
    }

    /// Where the `command` recipe records the version its installer put in place.
    pub fn installed_record(&self) -> PathBuf {
        self.root.join("installed.json")
    }

    /// The installed version: what `current` points at (archive recipe) or what the installer
    /// put in place (command recipe).
    pub fn current_version(&self) -> Result<Option<String>, AgentError> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().and_then(|n| n.to_str()).map(str::to_owned)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(read_json::<InstalledRecord>(&self.installed_record())?.map(|r| r.version))
            }
            Err(e) => Err(AgentError::io("reading the current version", &link, e)),
        }
    }

    pub fn manifest(&self, version: &str) -> Result<Option<proto::ReleaseManifest>, AgentError> {
        read_json(&self.meta_path(version))
    }
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AgentError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("reading", path, e)),
    }
}

/// Writes JSON to a temporary file beside `path`, syncs it, and renames it into place.
pub fn write_json<T: Serialize>(path: &Path, value: &T, private: bool) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| AgentError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes, private)
}

pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), AgentError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| AgentError::io("creating", parent, e))?;
    let tmp = path.with_extension("tmp");
    let mut options = File::options();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(|e| AgentError::io("writing", &tmp, e))?;
    file.write_all(bytes).map_err(|e| AgentError::io("writing", &tmp, e))?;
    file.sync_all().map_err(|e| AgentError::io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| AgentError::io("renaming into place", path, e))?;
    Ok(())
}
