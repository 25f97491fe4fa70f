//! Stable error codes. Scripts match on these; never change the meaning of one.

/// The installed version has been disapproved: it must not be launched.
pub const INSTALLED_VERSION_DISAPPROVED: u32 = 2028;

pub const INVALID_JSON: &str = "invalid_json";
pub const INVALID_FIELD: &str = "invalid_field";
pub const INVALID_VERSION: &str = "invalid_version";
pub const INVALID_NAME: &str = "invalid_name";
pub const INVALID_PATH: &str = "invalid_path";
pub const UNAUTHORIZED: &str = "unauthorized";
pub const FORBIDDEN: &str = "forbidden";
pub const NOT_FOUND: &str = "not_found";
pub const UNKNOWN_PRODUCT: &str = "unknown_product";
pub const UNKNOWN_RELEASE: &str = "unknown_release";
pub const UNKNOWN_ROLLOUT: &str = "unknown_rollout";
pub const UNKNOWN_WORKSTATION: &str = "unknown_workstation";
pub const PRODUCT_EXISTS: &str = "product_exists";
pub const VERSION_EXISTS: &str = "version_exists";
pub const RELEASE_NOT_APPROVED: &str = "release_not_approved";
pub const EMPTY_ARTIFACT: &str = "empty_artifact";
pub const ARTIFACT_TOO_LARGE: &str = "artifact_too_large";
pub const UNSAFE_ARCHIVE: &str = "unsafe_archive";
pub const INVALID_ARCHIVE: &str = "invalid_archive";
pub const INVALID_MANIFEST: &str = "invalid_manifest";
pub const INVALID_UPLOAD: &str = "invalid_upload";
pub const INVALID_TOKEN: &str = "invalid_token";
pub const RANGE_NOT_SATISFIABLE: &str = "range_not_satisfiable";
pub const INVALID_STATE: &str = "invalid_state";
pub const INTERNAL: &str = "internal";
/// Offline mode: the approval must carry targets metadata signed on the administrator's machine.
pub const SIGNATURE_REQUIRED: &str = "signature_required";
/// Uploaded TUF metadata is not signed to threshold by the keys the current root names.
pub const BAD_SIGNATURE: &str = "bad_signature";
/// Uploaded TUF metadata is well signed but says something else than it must (version, targets).
pub const TUF_MISMATCH: &str = "tuf_mismatch";
/// A state-changing console request came without the session's CSRF token.
pub const CSRF_FAILED: &str = "csrf_failed";
pub const USER_EXISTS: &str = "user_exists";
pub const UNKNOWN_USER: &str = "unknown_user";
