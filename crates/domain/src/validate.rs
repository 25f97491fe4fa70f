//! Validation of names, versions, platforms and relative paths that come from users or devices.

use semver::Version;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("`{value}` is not a semantic version (expected MAJOR.MINOR.PATCH, e.g. 1.4.2): {reason}")]
    Version { value: String, reason: String },
    #[error("`{value}` is not a valid name: {reason}")]
    Name { value: String, reason: &'static str },
    #[error("`{value}` is not a valid platform: expected OS-ARCH such as linux-x86_64")]
    Platform { value: String },
    #[error("`{value}` is not a safe relative path: {reason}")]
    Path { value: String, reason: &'static str },
}

/// Longest name, path or platform accepted anywhere.
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_PATH_LEN: usize = 1024;

pub fn parse_version(value: &str) -> Result<Version, ValidationError> {
    if value.len() > MAX_NAME_LEN {
        return Err(ValidationError::Version {
            value: value.chars().take(MAX_NAME_LEN).collect(),
            reason: "too long".into(),
        });
    }
    Version::parse(value).map_err(|err| ValidationError::Version {
        value: value.to_owned(),
        reason: err.to_string(),
    })
}

/// Product, group and organization names: 1–64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(value: &str) -> Result<(), ValidationError> {
    let fail = |reason| {
        Err(ValidationError::Name {
            value: value.chars().take(MAX_NAME_LEN).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > MAX_NAME_LEN {
        return fail("it is longer than 64 characters");
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return fail("it must start with a letter or a digit");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return fail("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Platforms look like `linux-x86_64`, `windows-x86_64`, `macos-aarch64`, or `any`.
pub fn validate_platform(value: &str) -> Result<(), ValidationError> {
    let ok = value == "any"
        || (value.len() <= MAX_NAME_LEN
            && value.split_once('-').is_some_and(|(os, arch)| {
                !os.is_empty()
                    && !arch.is_empty()
                    && os.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && arch
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Platform {
            value: value.chars().take(MAX_NAME_LEN).collect(),
        })
    }
}

/// A path that stays inside the folder it is joined to: relative, no `..`, no empty or `.`-only
/// components, no backslashes or drive letters (so it means the same on every platform).
pub fn validate_relative_path(value: &str) -> Result<(), ValidationError> {
    let fail = |reason| {
        Err(ValidationError::Path {
            value: value.chars().take(MAX_PATH_LEN).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > MAX_PATH_LEN {
        return fail("it is longer than 1024 bytes");
    }
    if value.starts_with('/') {
        return fail("it is absolute");
    }
    if value.contains('\\') || value.contains(':') || value.contains('\0') {
        return fail("it contains '\\', ':' or a NUL byte");
    }
    for component in value.split('/') {
        match component {
            "" | "." => return fail("it has an empty or '.' component"),
            ".." => return fail("it climbs out with '..'"),
            _ => {}
        }
    }
    Ok(())
}

/// The path of an archive entry in the form used inside an install folder: leading `./` and a
/// trailing `/` removed. `Ok(None)` is the archive's root entry itself (`./`), which is skipped.
pub fn normalize_archive_path(raw: &str) -> Result<Option<String>, ValidationError> {
    let mut path = raw;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let path = path.trim_end_matches('/');
    if path.is_empty() || path == "." {
        return Ok(None);
    }
    validate_relative_path(path)?;
    Ok(Some(path.to_owned()))
}

/// True when a symbolic link stored at `entry` (a normalized relative path) pointing at `target`
/// resolves to a place inside the install folder.
pub fn link_stays_inside(entry: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\\') || target.contains(':') {
        return false;
    }
    // Depth of the folder holding the link.
    let mut depth: i64 = entry.split('/').count() as i64 - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(parse_version("1.0.0").is_ok());
        assert!(parse_version("1.0.0-rc.1+build.5").is_ok());
        assert!(matches!(parse_version("1.0"), Err(ValidationError::Version { .. })));
        assert!(parse_version("v1.0.0").is_err());
        assert!(parse_version(&"1".repeat(100)).is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("erp-fiscal").is_ok());
        assert!(validate_name("CRM.Desktop_2").is_ok());
        for bad in ["", "-x", "a b", "a/b", "ção", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn platforms() {
        for good in ["linux-x86_64", "windows-x86_64", "macos-aarch64", "any"] {
            assert!(validate_platform(good).is_ok(), "{good}");
        }
        for bad in ["linux", "-x86", "Linux-x86_64", "linux-x86_64-", "linux-x/86", ""] {
            assert!(validate_platform(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn archive_paths() {
        assert_eq!(normalize_archive_path("./").unwrap(), None);
        assert_eq!(
            normalize_archive_path("./bin/demo").unwrap().as_deref(),
            Some("bin/demo")
        );
        assert_eq!(normalize_archive_path("bin/").unwrap().as_deref(), Some("bin"));
        assert!(normalize_archive_path("../evil").is_err());
        assert!(normalize_archive_path("/etc/passwd").is_err());
        assert!(normalize_archive_path("a/../../evil").is_err());
    }

    #[test]
    fn links() {
        assert!(link_stays_inside("bin/demo", "../lib/demo"));
        assert!(link_stays_inside("demo", "lib/x"));
        assert!(!link_stays_inside("demo", "../x"));
        assert!(!link_stays_inside("bin/demo", "../../x"));
        assert!(!link_stays_inside("bin/demo", "/etc/passwd"));
    }

    #[test]
    fn relative_paths() {
        for good in ["bin/demo", "demo", "a/b/c.sh", "..hidden/x", "x..y"] {
            assert!(validate_relative_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "C:/x",
            "a\\b",
            "a/..",
        ] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
