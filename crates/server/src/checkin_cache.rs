//! What check-ins read, kept in memory so that a check-in which changes nothing costs no
//! database query and no database write.
//!
//! - Per organization, a [`Snapshot`]: the live rollouts as the decision sees them, every
//!   release's approval, and the signed manifest and director targets of each rollout's release.
//!   A snapshot is tagged with the check-in generation (a counter in the database) it was built
//!   under and is rebuilt once the generation moves. Every change that a decision reads bumps the
//!   generation: each state-changing admin request (the route table's guard), and the rollout
//!   ticker when it starts, pauses, completes a rollout or opens a wave. A background task reads
//!   the generation every [`CacheSettings::refresh`], so a change made through another server
//!   process reaches this one within that time.
//! - Per device token, the workstation: id, organization, groups, first offers, and the facts it
//!   last reported. Facts are written only when a check-in reports different ones; the check-in
//!   time alone is collected and written in batches, at most once per
//!   [`CacheSettings::last_checkin_precision`] per workstation. Entries are reloaded after
//!   [`CacheSettings::device_ttl`], which bounds how stale stored facts can be when one
//!   workstation's check-ins alternate between server processes.
//!
//! Invariant: nothing here is the only copy of anything: a process that drops this cache (or
//! never had it) rebuilds it from the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use upkeep_domain::{Approval, RolloutView};
use upkeep_protocol as proto;

use crate::db::{self, Database, DbError, DeviceFacts};
use crate::rollouts;

#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// How often the database's check-in generation is read (the longest a change made through
    /// another server process goes unseen here).
    pub refresh: Duration,
    /// A workstation's check-in time is stored at most this often.
    pub last_checkin_precision: Duration,
    /// How long a workstation's cached entry is used before it is read again.
    pub device_ttl: Duration,
    /// Most workstations kept; beyond it the device cache starts over.
    pub device_capacity: usize,
    /// Whether offers list patches (`--delta-from-releases` above 0).
    pub offer_deltas: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            refresh: Duration::from_millis(250),
            last_checkin_precision: Duration::from_secs(60),
            device_ttl: Duration::from_secs(600),
            device_capacity: 2_000_000,
            offer_deltas: true,
        }
    }
}

/// An organization's data every check-in reads.
pub struct Snapshot {
    generation: i64,
    pub rollouts: Vec<RolloutView>,
    /// product → version → approval, for every release of the organization.
    approvals: HashMap<String, HashMap<String, Approval>>,
    /// product → version of each live rollout's release → what an offer of it carries.
    offers: HashMap<String, HashMap<String, Arc<ReleaseOffer>>>,
}

impl Snapshot {
    pub fn approval(&self, product: &str, version: &str) -> Option<Approval> {
        self.approvals.get(product)?.get(version).copied()
    }

    pub fn offer(&self, product: &str, version: &str) -> Option<&Arc<ReleaseOffer>> {
        self.offers.get(product)?.get(version)
    }
}

/// A release as an update offer carries it.
pub struct ReleaseOffer {
    pub manifest: proto::SignedManifest,
    /// The release's target files, as the director lists them.
    pub director_targets: BTreeMap<String, upkeep_tuf::DirectorTarget>,
    /// Patches to the release from earlier ones.
    pub deltas: Vec<proto::DeltaOffer>,
}

/// An enrolled workstation, as check-ins and the other device routes need it.
pub struct CachedDevice {
    pub workstation_id: String,
    pub organization_id: i64,
    pub groups: Vec<String>,
    /// When the entry is read again; spread over the second half of the TTL so that entries
    /// loaded together (after a restart) do not all expire together.
    expires_at: i64,
    state: Mutex<DeviceState>,
}

struct DeviceState {
    facts: DeviceFacts,
    first_offered: BTreeMap<i64, i64>,
    /// The check-in time last stored (or queued to be).
    last_checkin_stored: Option<i64>,
    /// The director metadata last signed for this workstation.
    director: Option<SignedDirector>,
}

/// Signed director metadata, reused while the agent reports the same counter and is offered the
/// same files (an agent that leaves an optional update pending asks again every few minutes).
struct SignedDirector {
    counter: u64,
    targets: BTreeMap<String, upkeep_tuf::DirectorTarget>,
    signed_at: i64,
    document: Arc<str>,
}

/// How long a signed director document is handed out again (it is valid far longer).
const DIRECTOR_REUSE_MS: i64 = 60 * 60 * 1000;

impl CachedDevice {
    fn state(&self) -> std::sync::MutexGuard<'_, DeviceState> {
        // The state is plain data: a panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When each rollout first offered this workstation its update.
    pub fn first_offered(&self) -> BTreeMap<i64, i64> {
        self.state().first_offered.clone()
    }

    pub fn set_first_offered(&self, first_offered: BTreeMap<i64, i64>) {
        self.state().first_offered = first_offered;
    }

    /// The director metadata signed earlier for the same counter and files, if still fresh.
    pub fn signed_director(
        &self,
        counter: u64,
        targets: &BTreeMap<String, upkeep_tuf::DirectorTarget>,
        now: i64,
    ) -> Option<Arc<str>> {
        let state = self.state();
        let kept = state.director.as_ref()?;
        (kept.counter == counter && kept.targets == *targets && now.saturating_sub(kept.signed_at) < DIRECTOR_REUSE_MS)
            .then(|| kept.document.clone())
    }

    pub fn keep_director(
        &self,
        counter: u64,
        targets: BTreeMap<String, upkeep_tuf::DirectorTarget>,
        now: i64,
        document: Arc<str>,
    ) {
        self.state().director = Some(SignedDirector {
            counter,
            targets,
            signed_at: now,
            document,
        });
    }
}

pub struct CheckinCache {
    settings: CacheSettings,
    /// The newest generation seen in the database.
    generation: AtomicI64,
    organizations: RwLock<HashMap<i64, Arc<Snapshot>>>,
    /// One snapshot build at a time, so a burst of check-ins after a change reads once.
    building: tokio::sync::Mutex<()>,
    devices: RwLock<HashMap<[u8; 32], Arc<CachedDevice>, DigestHasher>>,
    /// Check-in times waiting to be stored.
    seen: Mutex<Vec<(String, i64)>>,
}

impl CheckinCache {
    pub fn new(settings: CacheSettings) -> Self {
        CheckinCache {
            settings,
            generation: AtomicI64::new(i64::MIN),
            organizations: RwLock::default(),
            building: tokio::sync::Mutex::new(()),
            devices: RwLock::default(),
            seen: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The workstation a device token belongs to, or `None` for an unknown token.
    pub async fn device(&self, db: &Database, token: &str) -> Result<Option<Arc<CachedDevice>>, DbError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = db::now_ms();
        if let Some(found) = read(&self.devices).get(&key)
            && now < found.expires_at
        {
            return Ok(Some(found.clone()));
        }
        let Some(stored) = db.device_by_token(&hex::encode(key)).await? else {
            return Ok(None);
        };
        let device = Arc::new(CachedDevice {
            workstation_id: stored.id,
            organization_id: stored.organization_id,
            groups: stored.groups,
            expires_at: now.saturating_add(jittered(self.settings.device_ttl)),
            state: Mutex::new(DeviceState {
                facts: stored.facts,
                first_offered: stored.first_offered,
                last_checkin_stored: stored.last_checkin_at,
                director: None,
            }),
        });
        let mut devices = write(&self.devices);
        if devices.len() >= self.settings.device_capacity {
            devices.clear();
        }
        devices.insert(key, device.clone());
        Ok(Some(device))
    }

    /// Records a check-in: the facts when they differ from the stored ones (now), otherwise only
    /// the time (later, in a batch).
    pub async fn record_checkin(
        &self,
        db: &Database,
        device: &CachedDevice,
        request: &proto::CheckinRequest,
        now: i64,
    ) -> Result<(), DbError> {
        let precision = i64::try_from(self.settings.last_checkin_precision.as_millis()).unwrap_or(i64::MAX);
        {
            let mut state = device.state();
            if state.facts.same_as(request) {
                if state
                    .last_checkin_stored
                    .is_none_or(|t| now.saturating_sub(t) >= precision)
                {
                    state.last_checkin_stored = Some(now);
                    drop(state);
                    lock(&self.seen).push((device.workstation_id.clone(), now));
                }
                return Ok(());
            }
        }
        let facts = DeviceFacts::of(request);
        db.record_facts(device.organization_id, &device.workstation_id, &facts, now)
            .await?;
        let mut state = device.state();
        state.facts = facts;
        state.last_checkin_stored = Some(now);
        Ok(())
    }

    /// Stores the check-in times collected so far.
    pub async fn flush(&self, db: &Database) -> Result<(), DbError> {
        let batch = std::mem::take(&mut *lock(&self.seen));
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = db.record_last_checkins(&batch).await {
            // Keep them for the next try, within bounds.
            let mut seen = lock(&self.seen);
            if seen.len() + batch.len() <= self.settings.device_capacity {
                seen.extend(batch);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The organization's snapshot, built anew when the generation has moved.
    pub async fn snapshot(&self, db: &Database, organization_id: i64) -> Result<Arc<Snapshot>, DbError> {
        if let Some(current) = self.current(organization_id) {
            return Ok(current);
        }
        let _building = self.building.lock().await;
        if let Some(current) = self.current(organization_id) {
            return Ok(current);
        }
        // Read the generation first: whatever changes after this read bumps it again.
        let generation = db.checkin_generation().await?;
        self.generation.fetch_max(generation, Ordering::SeqCst);
        let snapshot = Arc::new(build(db, organization_id, generation, self.settings.offer_deltas).await?);
        write(&self.organizations).insert(organization_id, snapshot.clone());
        Ok(snapshot)
    }

    fn current(&self, organization_id: i64) -> Option<Arc<Snapshot>> {
        let generation = self.generation.load(Ordering::SeqCst);
        read(&self.organizations)
            .get(&organization_id)
            .filter(|s| s.generation == generation)
            .cloned()
    }

    /// Marks cached decisions stale here and, through the database, in every other process.
    pub async fn changed(&self, db: &Database) -> Result<(), DbError> {
        let next = db.bump_checkin_generation().await?;
        self.generation.fetch_max(next, Ordering::SeqCst);
        Ok(())
    }

    /// Reads the database's generation (picking up other processes' changes) and stores the
    /// collected check-in times.
    pub async fn refresh(&self, db: &Database) -> Result<(), DbError> {
        crate::telemetry::checkin_cache(read(&self.devices).len(), lock(&self.seen).len());
        let generation = db.checkin_generation().await?;
        self.generation.fetch_max(generation, Ordering::SeqCst);
        self.flush(db).await
    }
}

/// Runs [`CheckinCache::refresh`] until the process ends.
pub fn spawn_refresher(state: crate::AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(state.checkin_cache.settings().refresh);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            if let Err(e) = state.checkin_cache.refresh(&state.db).await {
                tracing::error!(error = %e, "refreshing the check-in cache");
            }
        }
    })
}

async fn build(db: &Database, organization_id: i64, generation: i64, offer_deltas: bool) -> Result<Snapshot, DbError> {
    let rows = db.rollouts(organization_id, None, true).await?;
    let rollouts: Vec<RolloutView> = rows.iter().filter_map(rollouts::to_view).collect();
    let mut approvals: HashMap<String, HashMap<String, Approval>> = HashMap::new();
    for ((product, version), state) in db.approval_map(organization_id).await? {
        approvals
            .entry(product)
            .or_default()
            .insert(version, rollouts::approval(state));
    }
    let mut offers: HashMap<String, HashMap<String, Arc<ReleaseOffer>>> = HashMap::new();
    for rollout in &rollouts {
        let version = rollout.version.to_string();
        if offers.get(&rollout.product).is_some_and(|v| v.contains_key(&version)) {
            continue;
        }
        let Some(manifest) = db.signed_manifest(organization_id, &rollout.product, &version).await? else {
            continue;
        };
        let director_targets = director_targets(&manifest)?;
        let deltas = if offer_deltas {
            db.delta_offers(organization_id, &rollout.product, &version).await?
        } else {
            Vec::new()
        };
        offers.entry(rollout.product.clone()).or_default().insert(
            version,
            Arc::new(ReleaseOffer {
                manifest,
                director_targets,
                deltas,
            }),
        );
    }
    Ok(Snapshot {
        generation,
        rollouts,
        approvals,
        offers,
    })
}

/// The target files of a release, as the director lists them for a workstation it is offered to.
fn director_targets(manifest: &proto::SignedManifest) -> Result<BTreeMap<String, upkeep_tuf::DirectorTarget>, DbError> {
    let parsed: proto::ReleaseManifest =
        serde_json::from_str(&manifest.payload).map_err(|e| DbError::Corrupt(format!("stored manifest: {e}")))?;
    Ok(parsed
        .artifacts
        .iter()
        .map(|a| {
            (
                a.target_name(&parsed.product, &parsed.version),
                upkeep_tuf::DirectorTarget {
                    length: a.size,
                    sha256: a.sha256.clone(),
                },
            )
        })
        .collect())
}

/// Half to all of `ttl`, in milliseconds.
fn jittered(ttl: Duration) -> i64 {
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2).max(2);
    rand::Rng::gen_range(&mut rand::thread_rng(), ms / 2..=ms)
}

/// The device map's keys are SHA-256 digests already: their first bytes are a fine hash, and
/// hashing them again costs more than the lookup.
#[derive(Clone, Copy, Default)]
struct DigestHasher;

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = FirstBytes;

    fn build_hasher(&self) -> FirstBytes {
        FirstBytes(0)
    }
}

#[derive(Default)]
struct FirstBytes(u64);

impl std::hash::Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` hashes as its length, then its bytes: keep the first 8 digest bytes.
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(first);
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}
