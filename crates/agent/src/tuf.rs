//! TUF verification with `tough`'s client: the organization's image repository is loaded from the
//! root trusted at enrollment (rollback, freeze and key checks are `tough`'s, with its metadata
//! kept in `STATE/tuf/` so versions never go back), and an artifact is accepted only when both the
//! director metadata of this check-in (signed by the director key the root names, for this
//! workstation, with a counter that never goes back) and the image repository's signed targets
//! list it under its name with the same length and SHA-256.

use std::time::Duration;

use upkeep_protocol as proto;

use crate::error::AgentError;

/// Upper bounds on metadata a server (or anyone in between) can make the agent read. Targets may
/// be long: one entry per approved artifact.
const LIMITS: tough::Limits = tough::Limits {
    max_root_size: 512 * 1024,
    max_targets_size: 16 * 1024 * 1024,
    max_timestamp_size: 64 * 1024,
    max_snapshot_size: 1024 * 1024,
    max_root_updates: 1024,
};
use crate::state::{Enrollment, StateDir};

/// What the signed targets say of an artifact beyond its length and hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// The SHA-256 and length of its uncompressed tar stream, when the entry names them.
    pub content: Option<(String, u64)>,
}

/// Refuses `artifact` unless the organization's signed TUF targets list it, byte for byte.
pub async fn check_listed(
    state: &StateDir,
    enrollment: &Enrollment,
    product: &str,
    version: &str,
    artifact: &proto::Artifact,
    director: Option<&str>,
) -> Result<Listed, AgentError> {
    let root = enrollment.tuf_root.as_deref().ok_or_else(|| {
        AgentError::Tuf("this agent was enrolled without the organization's TUF root; enroll it again".into())
    })?;
    let base = format!(
        "{}/tuf/{}/",
        enrollment.server.trim_end_matches('/'),
        enrollment.organization
    );
    let url = |path: &str| {
        url::Url::parse(&format!("{base}{path}")).map_err(|e| AgentError::Tuf(format!("repository URL: {e}")))
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let datastore = state.root().join("tuf");
    std::fs::create_dir_all(&datastore).map_err(|e| AgentError::io("creating", &datastore, e))?;
    let transport = tough::HttpTransportBuilder::new()
        .timeout(Duration::from_secs(60))
        .tries(3)
        .build();
    let repository = tough::RepositoryLoader::new(&root.as_bytes(), url("metadata/")?, url("targets/")?)
        .transport(transport)
        .limits(LIMITS)
        .datastore(datastore)
        .load()
        .await
        .map_err(|e| AgentError::Tuf(crate::client::error_chain(&e)))?;
    let name = artifact.target_name(product, version);
    check_director(state, enrollment, &repository.root().signed, director, &name, artifact)?;
    let target_name = tough::TargetName::new(name.clone()).map_err(|e| AgentError::Tuf(e.to_string()))?;
    let listed = repository
        .targets()
        .signed
        .targets
        .get(&target_name)
        .ok_or_else(|| AgentError::Tuf(format!("the signed targets do not list {name}; it was not approved")))?;
    let sha256 = hex::encode(&*listed.hashes.sha256);
    if listed.length != artifact.size || sha256 != artifact.sha256 {
        return Err(AgentError::Tuf(format!(
            "the signed targets list {name} with {} bytes and SHA-256 {sha256}, the offer says {} bytes and {}",
            listed.length, artifact.size, artifact.sha256
        )));
    }
    Ok(Listed {
        content: upkeep_tuf::content_of(&listed.custom).map(|(sha256, size)| (sha256.to_owned(), size)),
    })
}

/// The director must list `name` for this workstation, with this artifact's length and hash, in
/// metadata no older than any seen before.
fn director_counter_path(state: &StateDir) -> std::path::PathBuf {
    state.root().join("tuf").join("director-counter")
}

/// The highest director counter accepted so far (0 before the first). Sent with each check-in so
/// the server can sign its answer with a higher one; answers below it are refused as replays.
pub fn director_counter_seen(state: &StateDir) -> u64 {
    std::fs::read_to_string(director_counter_path(state))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn check_director(
    state: &StateDir,
    enrollment: &Enrollment,
    root: &tough::schema::Root,
    director: Option<&str>,
    name: &str,
    artifact: &proto::Artifact,
) -> Result<(), AgentError> {
    let json = director.ok_or_else(|| AgentError::Tuf("the check-in answer carries no director metadata".into()))?;
    let key = upkeep_tuf::director_key(root).map_err(|e| AgentError::Tuf(e.to_string()))?;
    let counter_path = director_counter_path(state);
    let seen = director_counter_seen(state);
    let listed = upkeep_tuf::verify_director(json, &key, &enrollment.workstation_id, seen, jiff::Timestamp::now())
        .map_err(|e| AgentError::Tuf(e.to_string()))?;
    let target = listed
        .targets
        .get(name)
        .ok_or_else(|| AgentError::Tuf(format!("the director does not list {name} for this workstation")))?;
    if target.length != artifact.size || target.sha256 != artifact.sha256 {
        return Err(AgentError::Tuf(format!(
            "the director lists {name} with {} bytes and SHA-256 {}, the offer says {} bytes and {}",
            target.length, target.sha256, artifact.size, artifact.sha256
        )));
    }
    if listed.counter > seen {
        crate::state::write_atomic(&counter_path, listed.counter.to_string().as_bytes(), false)?;
    }
    Ok(())
}
