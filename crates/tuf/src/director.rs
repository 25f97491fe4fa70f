//! Director metadata (the idea is Uptane's, kept small): with each check-in that offers an update,
//! the server signs, with its online director key, the exact target files this one workstation
//! may install now, its id, and a counter that only grows. The agent installs a file only if the
//! director lists it AND the image repository's targets list it with the same length and hash,
//! so neither a stolen online key nor edited approvals alone are enough.

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::sign::{Sign, parse_keypair};

use crate::{TufError, canonical, key_id, whole_seconds};

pub const DIRECTOR_TYPE: &str = "upkeep-director";

/// Upper bound on a director document the agent will parse.
pub const MAX_DIRECTOR_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorTarget {
    pub length: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorTargets {
    #[serde(rename = "_type")]
    pub kind: String,
    pub workstation_id: String,
    /// One above the highest the agent reported accepting; an agent refuses one below the highest
    /// it has seen, so an older answer cannot be replayed.
    pub counter: u64,
    pub expires: jiff::Timestamp,
    /// Flat target name → what the file must be.
    pub targets: BTreeMap<String, DirectorTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectorSignature {
    pub keyid: Decoded<Hex>,
    pub sig: Decoded<Hex>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedDirector {
    pub signed: DirectorTargets,
    pub signatures: Vec<DirectorSignature>,
}

/// Signs `body` with the director key; returns the JSON the check-in answer carries.
pub async fn sign_director(mut body: DirectorTargets, pkcs8: &[u8]) -> Result<String, TufError> {
    body.kind = DIRECTOR_TYPE.into();
    body.expires = whole_seconds(body.expires);
    let pair = parse_keypair(pkcs8).map_err(|e| TufError::Key(e.to_string()))?;
    let keyid = key_id(&pair.tuf_key())?;
    let sig = pair
        .sign(&canonical(&body)?, &SystemRandom::new())
        .await
        .map_err(|e| TufError::Key(e.to_string()))?;
    let signed = SignedDirector {
        signed: body,
        signatures: vec![DirectorSignature {
            keyid,
            sig: Decoded::from(sig),
        }],
    };
    serde_json::to_string(&signed).map_err(|e| TufError::Metadata(e.to_string()))
}

/// Checks a director document: signed by `key`, for `workstation_id`, not expired at `now`, and
/// with a counter at least `min_counter`. Returns what it lists.
pub fn verify_director(
    json: &str,
    key: &Key,
    workstation_id: &str,
    min_counter: u64,
    now: jiff::Timestamp,
) -> Result<DirectorTargets, TufError> {
    if json.len() > MAX_DIRECTOR_BYTES {
        return Err(TufError::Verify("the director metadata is larger than 1 MiB".into()));
    }
    let signed: SignedDirector =
        serde_json::from_str(json).map_err(|e| TufError::Verify(format!("the director metadata is not valid: {e}")))?;
    let Key::Ed25519 { keyval, .. } = key else {
        return Err(TufError::Verify("the root's director key is not Ed25519".into()));
    };
    let id = key_id(key)?;
    let message = canonical(&signed.signed)?;
    let public = UnparsedPublicKey::new(&ED25519, keyval.public.as_ref());
    let good = signed
        .signatures
        .iter()
        .any(|s| s.keyid == id && public.verify(&message, &s.sig).is_ok());
    if !good {
        return Err(TufError::Verify(
            "the director metadata is not signed by the director key the root names".into(),
        ));
    }
    let body = signed.signed;
    if body.kind != DIRECTOR_TYPE {
        return Err(TufError::Verify(format!(
            "unexpected director metadata type `{}`",
            body.kind
        )));
    }
    if body.workstation_id != workstation_id {
        return Err(TufError::Verify(format!(
            "the director metadata is for workstation {}, not this one ({workstation_id})",
            body.workstation_id
        )));
    }
    if body.counter < min_counter {
        return Err(TufError::Verify(format!(
            "the director metadata counter went back ({} after {min_counter}): a replayed answer",
            body.counter
        )));
    }
    if body.expires <= now {
        return Err(TufError::Verify(format!(
            "the director metadata expired at {}",
            body.expires
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn director_documents_verify_only_as_signed() {
        let key = crate::generate_key().unwrap();
        let public = crate::public_key(&key).unwrap().1;
        let now = jiff::Timestamp::now();
        let body = DirectorTargets {
            kind: String::new(),
            workstation_id: "ws-a".into(),
            counter: 7,
            expires: now + jiff::SignedDuration::from_hours(1),
            targets: [(
                "demo_1.0.0_linux-x86_64.tar.gz".to_owned(),
                DirectorTarget {
                    length: 3,
                    sha256: "ab".repeat(32),
                },
            )]
            .into_iter()
            .collect(),
        };
        let json = sign_director(body, &key).await.unwrap();
        let ok = verify_director(&json, &public, "ws-a", 7, now).unwrap();
        assert_eq!(ok.targets.len(), 1);
        assert!(
            verify_director(&json, &public, "ws-b", 0, now).is_err(),
            "another workstation"
        );
        assert!(
            verify_director(&json, &public, "ws-a", 8, now).is_err(),
            "counter went back"
        );
        let later = now + jiff::SignedDuration::from_hours(2);
        assert!(verify_director(&json, &public, "ws-a", 0, later).is_err(), "expired");
        let other = crate::public_key(&crate::generate_key().unwrap()).unwrap().1;
        assert!(verify_director(&json, &other, "ws-a", 0, now).is_err(), "another key");
        let tampered = json.replace("\"counter\":7", "\"counter\":9");
        assert!(
            verify_director(&tampered, &public, "ws-a", 0, now).is_err(),
            "changed body"
        );
    }
}
