//! The agent's errors. Each has a stable code, reported to the server and printed with `--json`.

use std::path::{Path, PathBuf};

use upkeep_protocol::codes::INSTALLED_VERSION_DISAPPROVED;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this agent is not enrolled (state folder {}); run `upkeep-agent enroll --server URL --token T`", state.display())]
    NotEnrolled { state: PathBuf },
    #[error("another upkeep-agent is working on this state folder (lock {}); try again when it is done", lock.display())]
    Busy { lock: PathBuf },
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("the server refused: {message} [{code}]")]
    Server {
        status: u16,
        code: String,
        message: String,
        hint: Option<String>,
    },
    #[error("the release manifest of {product} {version} is not signed by this server's key; refusing it")]
    SignatureInvalid { product: String, version: String },
    #[error("the server offered {product} {offered} but its signed manifest says {signed}; refusing it")]
    ManifestMismatch {
        product: String,
        offered: String,
        signed: String,
    },
    #[error("{product} {version} has no artifact for platform {platform}")]
    NoArtifact {
        product: String,
        version: String,
        platform: String,
    },
    #[error("the downloaded artifact has {actual} bytes, the signed manifest says {expected}; discarded it")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("the downloaded artifact's SHA-256 is {actual}, the signed manifest says {expected}; discarded it")]
    DigestMismatch { expected: String, actual: String },
    #[error("download failed: {0}")]
    Download(String),
    #[error("unsafe archive entry `{entry}`: {reason}; nothing was installed")]
    UnsafeArchive { entry: String, reason: String },
    #[error("cannot unpack the archive: {0}; nothing was installed")]
    Unpack(String),
    #[error("the launch path `{0}` is missing from the new version; nothing was installed")]
    LaunchMissing(String),
    #[error("{product} is not installed")]
    NotInstalled { product: String },
    #[error("error {}: {message}", INSTALLED_VERSION_DISAPPROVED)]
    Blocked {
        product: String,
        version: String,
        message: String,
    },
    #[error("{product} has no launch path; the release did not declare one (upload it with --launch)")]
    NoLaunch { product: String },
    #[error("starting {}: {source}", path.display())]
    Launch { path: PathBuf, source: std::io::Error },
    #[error("TUF verification failed: {0}; nothing was installed")]
    Tuf(String),
    #[error("{0}")]
    Hook(String),
    #[error("{} still in use: {}; close it, or run the update with --wait", product, sessions.join(", "))]
    SessionsOpen { product: String, sessions: Vec<String> },
    #[error("the backup failed: {0}; nothing was installed")]
    BackupFailed(String),
    #[error("{step} failed: {message}; rolled back to {restored}")]
    RolledBack {
        step: &'static str,
        message: String,
        restored: String,
    },
    #[error("the installer asks to try again later (exit {0})")]
    RetryLater(i32),
    #[error("no earlier version of {product} to go back to")]
    NothingToRollBack { product: String },
    #[error("{0}")]
    Invalid(String),
}

impl AgentError {
    pub fn io(context: &'static str, path: &Path, source: std::io::Error) -> Self {
        AgentError::Io {
            context,
            path: path.to_owned(),
            source,
        }
    }

    /// Stable code for reports and `--json`.
    pub fn code(&self) -> String {
        match self {
            AgentError::NotEnrolled { .. } => "not_enrolled".into(),
            AgentError::Busy { .. } => "busy".into(),
            AgentError::Io { .. } => "io_error".into(),
            AgentError::Corrupt { .. } => "corrupt_state".into(),
            AgentError::Unreachable { .. } => "unreachable".into(),
            AgentError::Server { code, .. } => code.clone(),
            AgentError::SignatureInvalid { .. } => "signature_invalid".into(),
            AgentError::ManifestMismatch { .. } => "manifest_mismatch".into(),
            AgentError::NoArtifact { .. } => "no_artifact".into(),
            AgentError::SizeMismatch { .. } => "size_mismatch".into(),
            AgentError::DigestMismatch { .. } => "digest_mismatch".into(),
            AgentError::Download(_) => "download_failed".into(),
            AgentError::UnsafeArchive { .. } => "unsafe_archive".into(),
            AgentError::Unpack(_) => "unpack_failed".into(),
            AgentError::LaunchMissing(_) => "launch_missing".into(),
            AgentError::NotInstalled { .. } => "not_installed".into(),
            AgentError::Blocked { .. } => INSTALLED_VERSION_DISAPPROVED.to_string(),
            AgentError::NoLaunch { .. } => "no_launch_path".into(),
            AgentError::Launch { .. } => "launch_failed".into(),
            AgentError::Tuf(_) => "tuf_verification_failed".into(),
            AgentError::Hook(_) => "hook_failed".into(),
            AgentError::SessionsOpen { .. } => "sessions_open".into(),
            AgentError::BackupFailed(_) => "backup_failed".into(),
            AgentError::RolledBack { .. } => "rolled_back".into(),
            AgentError::RetryLater(_) => "retry_later".into(),
            AgentError::NothingToRollBack { .. } => "nothing_to_roll_back".into(),
            AgentError::Invalid(_) => "invalid".into(),
        }
    }

    /// Process exit code: 3 for a blocked version, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Blocked { .. } => 3,
            _ => 1,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            AgentError::Server { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }
}
