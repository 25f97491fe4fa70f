//! The server's Ed25519 manifest-signing key. Agents pin its public half at enrollment and refuse
//! any release manifest it did not sign.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use upkeep_protocol::{ReleaseManifest, SignedManifest};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reading signing key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("writing signing key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("signing key {path} is not 32 bytes of base64")]
    Malformed { path: String },
    #[error("encoding manifest: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Clone)]
pub struct ManifestSigner {
    key: SigningKey,
}

impl ManifestSigner {
    /// Loads the key from `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = STANDARD
                    .decode(text.trim())
                    .map_err(|_| SigningError::Malformed { path: shown.clone() })?;
                let secret: [u8; 32] = bytes.try_into().map_err(|_| SigningError::Malformed { path: shown })?;
                Ok(ManifestSigner {
                    key: SigningKey::from_bytes(&secret),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| SigningError::Write {
                        path: shown.clone(),
                        source,
                    })?;
                }
                upkeep_tuf::keyfile::write_private(path, STANDARD.encode(key.to_bytes()).as_bytes())
                    .map_err(|source| SigningError::Write { path: shown, source })?;
                Ok(ManifestSigner { key })
            }
            Err(source) => Err(SigningError::Read { path: shown, source }),
        }
    }

    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, manifest: &ReleaseManifest) -> Result<SignedManifest, SigningError> {
        let payload = serde_json::to_string(manifest)?;
        let signature = self.key.sign(payload.as_bytes());
        Ok(SignedManifest {
            payload,
            signature: STANDARD.encode(signature.to_bytes()),
        })
    }
}
