//! Wire types shared by `upkeep-server`, the `upkeep` CLI and `upkeep-agent`.
//!
//! Everything that crosses HTTP is defined here once, so the three programs cannot drift apart.
//! Times on the wire are RFC 3339 strings in UTC; sizes are bytes; digests are lowercase hex.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod codes;

/// The body of every error response, admin and device API alike.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Stable machine-readable code, e.g. `invalid_version`.
    pub code: String,
    /// One line, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What to do next, when it helps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub user: String,
    pub organization: String,
    pub role: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProductKind {
    /// Runs on workstations.
    #[default]
    Client,
    /// A server-side component.
    Server,
}

impl ProductKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProductKind::Client => "client",
            ProductKind::Server => "server",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(ProductKind::Client),
            "server" => Some(ProductKind::Server),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProductCreate {
    pub name: String,
    #[serde(default)]
    pub kind: ProductKind,
    /// Offer its latest approved releases on the public `/downloads` page.
    #[serde(default)]
    pub public: bool,
}

/// `PATCH /products/{product}`: what to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProductUpdate {
    #[serde(default)]
    pub public: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub kind: ProductKind,
    #[serde(default)]
    pub public: bool,
    pub created_at: String,
}

/// `admin` (everything, users), `release_manager` (products, releases, rollouts) or `viewer`
/// (read only).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    ReleaseManager,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::ReleaseManager, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::ReleaseManager => "release_manager",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// `POST /users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserCreate {
    pub name: String,
    pub role: Role,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

/// `POST /auth/password`: the signed-in user's own password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordChange {
    pub current: String,
    pub new: String,
}

/// The first part (`metadata`) of a release upload; the second part (`artifact`) is the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseUploadMetadata {
    pub version: String,
    pub platform: String,
    #[serde(default)]
    pub notes: Option<String>,
    /// Path of the program to start, relative to the install folder.
    #[serde(default)]
    pub launch: Option<String>,
    /// The release's install manifest (`upkeep.toml`), as text.
    #[serde(default)]
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Disapproved,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Disapproved => "disapproved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ApprovalState::Pending),
            "approved" => Some(ApprovalState::Approved),
            "disapproved" => Some(ApprovalState::Disapproved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub platform: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    /// `tar.gz` or `zip`.
    pub format: String,
    /// For a `tar.gz`: the SHA-256 of its uncompressed tar stream, which a delta rebuilds and is
    /// checked against before use. Absent for other formats and for releases made before deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
    /// The length of that tar stream, the most bytes applying a delta may produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_size: Option<u64>,
}

impl Artifact {
    /// Its flat TUF target name in a release (see [`tuf_target_name`]).
    pub fn target_name(&self, product: &str, version: &str) -> String {
        tuf_target_name(product, version, &self.platform, &self.format, &self.filename)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub product: String,
    pub version: String,
    pub notes: String,
    #[serde(default)]
    pub launch: Option<String>,
    pub recipe: String,
    pub approval: ApprovalState,
    #[serde(default)]
    pub approval_reason: Option<String>,
    pub artifacts: Vec<Artifact>,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApprovalRequest {
    #[serde(default)]
    pub reason: Option<String>,
    /// Offline mode: the organization's new targets metadata, signed on the administrator's
    /// machine, listing the approved releases after this decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<String>,
}

/// `GET /api/v1/tuf`: the organization's image repository as the server holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TufStatus {
    pub organization: String,
    /// `hosted` (the server signs targets) or `offline` (an administrator does).
    pub mode: String,
    /// The current root.json.
    pub root: String,
    /// The current targets.json, if any has been signed yet.
    #[serde(default)]
    pub targets: Option<String>,
    /// The server's online public keys (TUF key objects): `snapshot`, `timestamp`, `director`.
    pub online_keys: BTreeMap<String, serde_json::Value>,
}

/// `POST /api/v1/tuf/root`: the next root, and the current targets re-signed under it when it
/// names a new targets key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TufRootUpload {
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnrollTokenCreate {
    #[serde(default)]
    pub group: Option<String>,
    /// How many workstations may enroll with it; unlimited when absent.
    #[serde(default)]
    pub uses: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollTokenCreated {
    pub token: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub uses: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutTargets {
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub workstations: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutCreate {
    pub product: String,
    pub version: String,
    pub targets: RolloutTargets,
    /// The user cannot keep using the old version: it is installed before the next launch.
    #[serde(default)]
    pub mandatory: bool,
    /// When it starts (RFC 3339); now when absent.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// When an optional update becomes required.
    #[serde(default)]
    pub deadline: Option<Deadline>,
    #[serde(default)]
    pub waves: Option<Waves>,
    /// Offer the release also to workstations that have a newer version.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Installs happen only inside it, in each workstation's local time, e.g. `Mon-Fri 22:00-06:00`.
    #[serde(default)]
    pub maintenance_window: Option<String>,
    /// Install now: required at once, and the targeted agents' daemons are woken instead of
    /// waiting for their next check-in. Takes no start, deadline or window.
    #[serde(default)]
    pub now: bool,
}

/// One explicit time model for deadlines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Deadline {
    /// An absolute instant, RFC 3339 with offset: `2026-12-01T18:00:00-03:00`.
    At(String),
    /// A wall-clock time read in each workstation's own time zone: `2026-12-01T18:00`.
    Local(String),
    /// A span counted from when each workstation was first offered the update: `7d`.
    After(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Waves {
    /// Cumulative shares of the targeted workstations, ending at 100: `[5, 25, 100]`.
    pub percents: Vec<u32>,
    /// How long each wave runs before the next opens: `30m`.
    pub soak: String,
    /// Above this share of failed installs (0–1) in the opened waves, the rollout pauses itself.
    pub max_failure_ratio: f64,
    /// Failures are judged only once this many workstations have finished.
    #[serde(default = "default_min_sample")]
    pub min_sample: u32,
}

pub fn default_min_sample() -> u32 {
    3
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    pub id: i64,
    pub product: String,
    pub version: String,
    pub mandatory: bool,
    /// `scheduled`, `active`, `paused`, `completed` or `cancelled`.
    pub state: String,
    /// Why it is paused or cancelled, when it says.
    #[serde(default)]
    pub state_reason: Option<String>,
    pub targets: RolloutTargets,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub deadline: Option<Deadline>,
    #[serde(default)]
    pub waves: Option<Waves>,
    /// How many waves are open (all of them without waves).
    #[serde(default)]
    pub opened_waves: u32,
    #[serde(default)]
    pub allow_downgrade: bool,
    #[serde(default)]
    pub maintenance_window: Option<String>,
    pub created_at: String,
    pub created_by: String,
}

/// `POST /rollouts/{id}/pause|resume|cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutAction {
    #[serde(default)]
    pub reason: Option<String>,
}

/// What `rollout create --dry-run` reports: the same decision over the current fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutPreview {
    /// Workstations the rollout targets.
    pub targeted: u64,
    /// Of those, per outcome (every key present): `offered`, `required`, `blocked`, `up_to_date`,
    /// `newer_installed`, `held_by_other_rollout`, `not_approved`. Per-wave counts are what the
    /// shares give; the exact machines in each wave are drawn when the rollout is created.
    pub outcomes: BTreeMap<String, u64>,
    pub waves: Vec<WavePreview>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WavePreview {
    /// 1-based.
    pub wave: u32,
    pub percent: u32,
    pub workstations: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaveReport {
    /// 1-based.
    pub wave: u32,
    pub percent: u32,
    pub open: bool,
    pub workstations: u64,
    pub counts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutWorkstation {
    pub workstation_id: String,
    pub hostname: String,
    /// 1-based wave.
    #[serde(default)]
    pub wave: u32,
    pub status: WorkstationStatus,
    #[serde(default)]
    pub from_version: Option<String>,
    pub to_version: String,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    pub updated_at: String,
}

/// The "update process report".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutReport {
    pub rollout: Rollout,
    /// Workstation count per status; every status is present.
    pub counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub waves: Vec<WaveReport>,
    pub workstations: Vec<RolloutWorkstation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workstation {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub groups: Vec<String>,
    /// Installed version per product.
    pub installed: BTreeMap<String, String>,
    pub enrolled_at: String,
    #[serde(default)]
    pub last_checkin_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: String,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub workstation_id: Option<String>,
    #[serde(default)]
    pub rollout_id: Option<i64>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

/// `upkeep notify group create`: who is told about a product's or a rollout's updates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotificationGroupCreate {
    pub name: String,
    #[serde(default)]
    pub emails: Vec<String>,
    /// URLs that receive a signed JSON POST per notice.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Attach to every update of this product…
    #[serde(default)]
    pub product: Option<String>,
    /// …or to one rollout.
    #[serde(default)]
    pub rollout_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationGroup {
    pub name: String,
    pub emails: Vec<String>,
    pub webhooks: Vec<String>,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub rollout_id: Option<i64>,
    pub created_at: String,
    /// Only in the answer to the creation: the key webhook signatures are made with
    /// (`X-Upkeep-Signature: sha256=HEX` over the body, HMAC-SHA256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub given_up: u64,
}

// ---------------------------------------------------------------------------------------------
// Device API
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub workstation_id: String,
    pub device_token: String,
    /// The server's Ed25519 manifest-signing key, base64; the agent pins it.
    pub signing_public_key: String,
    pub organization: String,
    /// The organization's current TUF `root.json`; the agent trusts it from here on and follows
    /// only root rotations it signs.
    #[serde(default)]
    pub tuf_root: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledProduct {
    pub product: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckinRequest {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    #[serde(default)]
    pub installed: Vec<InstalledProduct>,
    /// The workstation's clock offset from UTC, for local deadlines and maintenance windows.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The highest director counter this agent has accepted. The server signs the next answer
    /// with a higher one, so it keeps no per-workstation counter and a check-in writes nothing.
    #[serde(default)]
    pub director_counter: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckinResponse {
    pub server_time: String,
    pub instructions: Vec<ProductInstruction>,
    /// When an update is offered: the director's signed list of the target files this
    /// workstation may install now (JSON, see `upkeep_tuf::SignedDirector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Up to date, or nothing is rolled out.
    None,
    /// An update the user may install when they choose.
    Offered,
    /// An update that must be installed before the product is used again.
    Required,
    /// The installed version must not be used.
    Blocked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProductInstruction {
    pub product: String,
    #[serde(default)]
    pub installed_version: Option<String>,
    pub action: Action,
    /// Set when `action` is `blocked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<Block>,
    /// The update to install, when there is one (also possible alongside a block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateOffer>,
    /// Why a rolled-out update is not offered yet (e.g. a required product is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Block {
    pub code: u32,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateOffer {
    pub rollout_id: i64,
    pub version: String,
    pub mandatory: bool,
    /// Why it is required (`mandatory`, `deadline_passed`, `installed_version_blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_reason: Option<String>,
    /// When this optional update becomes required for this workstation (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Set when the rollout has a maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_window: Option<InstallWindow>,
    pub manifest: SignedManifest,
    /// Base URLs of mirrors holding a copy of the TUF targets tree, to try in order before the
    /// server (the file is at [`mirror_artifact_url`]). Deliberately outside the signed manifest:
    /// mirrors are not trusted, what they serve is checked against the signed size and SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// Patches to this version from earlier ones, served at [`delta_path`]. Unsigned like the
    /// mirrors: what a patch rebuilds is used only when its SHA-256 is the signed `content_sha256`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaOffer>,
}

/// A binary patch from `from_version`'s uncompressed artifact to the offered one's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeltaOffer {
    pub from_version: String,
    pub platform: String,
    /// SHA-256 of the patch file itself.
    pub sha256: String,
    pub size: u64,
    /// How it was made (`zstd` or `bsdiff`, see `upkeep-delta`).
    pub method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallWindow {
    pub window: String,
    /// Whether installs may happen now.
    pub open: bool,
    /// When it next opens (now when open), RFC 3339.
    pub next_open: String,
}

/// A release manifest exactly as the server signed it: the agent verifies `signature` over the
/// bytes of `payload` with the pinned key, and only then parses `payload` as a [`ReleaseManifest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedManifest {
    pub payload: String,
    /// Ed25519 signature over `payload`, base64.
    pub signature: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseManifest {
    pub product: String,
    pub version: String,
    /// How the agent installs it: `archive` or `command`.
    pub recipe: String,
    #[serde(default)]
    pub launch: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// Products this release needs, with a semantic-version requirement each (`>=5.3.1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// How to tell whether someone is still using the product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_probe: Option<SessionProbe>,
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// Run after installing; a failure rolls the install back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Hook>,
    /// For the `command` recipe: the vendor's installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<Installer>,
}

/// A command run by the agent: program and arguments (no shell), with placeholders `{version}`,
/// `{previous_version}`, `{install_dir}`, `{backup_dir}` and `{artifact}`, and a time limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hook {
    pub command: Vec<String>,
    /// `30s`, `5m`, `1h`.
    pub timeout: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hooks {
    /// Must leave a non-empty file in `{backup_dir}`; no backup, no install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Hook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_install: Option<Hook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<Hook>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.backup.is_none() && self.pre_install.is_none() && self.post_install.is_none()
    }
}

/// Who is still using the product: a command that prints one open session per line (nothing when
/// none), or process names to look for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Installer {
    pub command: Vec<String>,
    pub timeout: String,
    /// The folder the installer writes to; snapshotted before and restored on failure.
    pub install_dir: String,
    /// Exit code → `ok`, `reboot_required`, `retry_later` or `failed`; unlisted codes other than
    /// 0 are `failed`.
    #[serde(default)]
    pub exit_codes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum WorkstationStatus {
    Pending,
    Notified,
    Downloading,
    Downloaded,
    Installing,
    Installed,
    Failed,
    RolledBack,
    Deferred,
    Blocked,
    WaitingForSessions,
    BackupFailed,
}

impl WorkstationStatus {
    pub const ALL: [WorkstationStatus; 12] = [
        WorkstationStatus::Pending,
        WorkstationStatus::Notified,
        WorkstationStatus::Downloading,
        WorkstationStatus::Downloaded,
        WorkstationStatus::Installing,
        WorkstationStatus::Installed,
        WorkstationStatus::Failed,
        WorkstationStatus::RolledBack,
        WorkstationStatus::Deferred,
        WorkstationStatus::Blocked,
        WorkstationStatus::WaitingForSessions,
        WorkstationStatus::BackupFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkstationStatus::Pending => "pending",
            WorkstationStatus::Notified => "notified",
            WorkstationStatus::Downloading => "downloading",
            WorkstationStatus::Downloaded => "downloaded",
            WorkstationStatus::Installing => "installing",
            WorkstationStatus::Installed => "installed",
            WorkstationStatus::Failed => "failed",
            WorkstationStatus::RolledBack => "rolled_back",
            WorkstationStatus::Deferred => "deferred",
            WorkstationStatus::Blocked => "blocked",
            WorkstationStatus::WaitingForSessions => "waiting_for_sessions",
            WorkstationStatus::BackupFailed => "backup_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// One step the agent reports; stored as an event and as the workstation's rollout status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceReport {
    pub product: String,
    pub version: String,
    pub status: WorkstationStatus,
    #[serde(default)]
    pub rollout_id: Option<i64>,
    #[serde(default)]
    pub from_version: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
    /// When the agent saw it happen (RFC 3339); reports may be sent late from the agent's outbox.
    #[serde(default)]
    pub at: Option<String>,
}

/// Where the device API serves an artifact, by its SHA-256.
pub fn artifact_path(sha256: &str) -> String {
    format!("/api/v1/device/artifacts/{sha256}")
}

/// Where the device API serves a delta patch, by its SHA-256.
pub fn delta_path(sha256: &str) -> String {
    format!("/api/v1/device/deltas/{sha256}")
}

/// The flat TUF target name of an artifact: `<product>_<version>_<platform>.<ext>`, with the
/// archive format as the extension (or the file's own, or `bin`). Flat, so every TUF client builds
/// the same consistent-snapshot URL.
pub fn tuf_target_name(product: &str, version: &str, platform: &str, format: &str, filename: &str) -> String {
    let ext = match format {
        "tar.gz" | "zip" => format,
        _ => filename.rsplit_once('.').map_or("bin", |(_, e)| e),
    };
    format!("{product}_{version}_{platform}.{ext}")
}

/// How many hex digits of the root's SHA-256 an enrollment token carries.
pub const ROOT_FINGERPRINT_HEX: usize = 32;

/// An enrollment token is `<secret>.<root fingerprint>`: the secret authenticates the workstation,
/// the fingerprint (the first hex digits of the SHA-256 of the organization's root.json when the
/// token was made) lets the agent check the root the server hands it. Tokens without one are
/// accepted (the secret alone).
pub fn split_enroll_token(token: &str) -> (&str, Option<&str>) {
    match token.rsplit_once('.') {
        Some((secret, fingerprint))
            if fingerprint.len() == ROOT_FINGERPRINT_HEX && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            (secret, Some(fingerprint))
        }
        _ => (token, None),
    }
}

/// Where an artifact lies in an organization's TUF tree, relative to the tree's root:
/// `<organization>/targets/<sha256>.<target name>` (consistent snapshots, see [`tuf_target_name`]).
/// The server serves the tree at `/tuf/`; a mirror holds a copy of it.
pub fn tuf_target_path(organization: &str, sha256: &str, target_name: &str) -> String {
    format!("{organization}/targets/{sha256}.{target_name}")
}

/// The URL of an artifact on a mirror whose base URL is `mirror`: the same layout as the server's
/// `/tuf/` tree, so a mirror is filled by copying that tree.
pub fn mirror_artifact_url(mirror: &str, organization: &str, sha256: &str, target_name: &str) -> String {
    format!(
        "{}/{}",
        mirror.trim_end_matches('/'),
        tuf_target_path(organization, sha256, target_name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_has_the_layout_of_the_servers_tuf_tree() {
        let name = tuf_target_name("demo", "1.2.0", "linux-x86_64", "tar.gz", "demo.tar.gz");
        assert_eq!(
            tuf_target_path("default", "ab12", &name),
            "default/targets/ab12.demo_1.2.0_linux-x86_64.tar.gz"
        );
        for base in ["https://cdn.example.com/upkeep", "https://cdn.example.com/upkeep/"] {
            assert_eq!(
                mirror_artifact_url(base, "default", "ab12", &name),
                "https://cdn.example.com/upkeep/default/targets/ab12.demo_1.2.0_linux-x86_64.tar.gz"
            );
        }
    }

    #[test]
    fn offers_without_mirrors_keep_their_old_shape() {
        let offer = UpdateOffer {
            rollout_id: 1,
            version: "1.0.0".into(),
            mandatory: false,
            required_reason: None,
            deadline: None,
            install_window: None,
            manifest: SignedManifest {
                payload: "{}".into(),
                signature: "x".into(),
            },
            mirrors: Vec::new(),
            deltas: Vec::new(),
        };
        let json = serde_json::to_value(&offer).unwrap();
        assert!(json.get("mirrors").is_none(), "{json}");
        assert!(json.get("deltas").is_none(), "{json}");
        let back: UpdateOffer = serde_json::from_value(json).unwrap();
        assert!(back.mirrors.is_empty() && back.deltas.is_empty());
    }
}
