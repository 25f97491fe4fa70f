//! Private key files, as both the server (hosted and online keys) and the administrator's CLI
//! (offline keys) keep them: base64 of the PKCS#8 document, readable by the owner only, never
//! overwritten in place.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::TufError;

/// Creates `path` with `contents`, readable and writable by its owner only; fails if it exists.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes a PKCS#8 key to a new file at `path`.
pub fn write_key(path: &Path, pkcs8: &[u8]) -> std::io::Result<()> {
    write_private(path, STANDARD.encode(pkcs8).as_bytes())
}

/// Reads the key at `path`; `None` when there is no such file.
pub fn read_key(path: &Path) -> Result<Option<Vec<u8>>, TufError> {
    match std::fs::read_to_string(path) {
        Ok(text) => STANDARD
            .decode(text.trim())
            .map(Some)
            .map_err(|e| TufError::Key(format!("{} is not a key written by upkeep: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TufError::Key(format!("reading {}: {e}", path.display()))),
    }
}
